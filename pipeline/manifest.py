"""Manifests: one row per work item, failures included, under an explicit pyarrow schema.

The driver is the only writer. Layout of an output folder (names: :mod:`pipeline.runfolder`)::

    {output}/_manifest/job.json             what this folder was made with (resume check)
    {output}/_manifest/part-NNNNN.parquet   one per finished shard, written whole and last
    {output}/_manifest/.tmp-*               a write in progress (or a crashed one): never
                                            read as a part, removed by the next run
    {output}/manifest.parquet               at the end: every item of the job, in job order
    {output}/run.json                       resolved config, versions, weights, cluster, timings

Everything read back is checked (:class:`Damage`): a file that cannot be decoded or lacks the
manifest's columns is moved aside to ``_quarantine/`` by a run (what it held is recomputed or
rebuilt from the parts) and named by ``status`` and ``report``, which show the rest.
"""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.items import WorkItem
from pipeline.redact import escape_controls, redact_text, redact_uri, show_undecodable
from pipeline.rows import COLUMNS, STATUSES, TRANSIENT_STATUSES, make_row, now  # noqa: F401
from pipeline.runfolder import RunFolder, shard_of_part
from stylize.common import StylizeError
from stylize.figures import FIGURES

log = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("content_uri", pa.string(), nullable=False),  # credentials stripped
        pa.field("style", pa.string(), nullable=False),
        pa.field("output_uri", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # one of STATUSES
        pa.field("error_message", pa.string()),  # null when ok
        pa.field("attempt", pa.int32(), nullable=False),  # 1 = first try
        pa.field("width", pa.int32()),  # of the output, pixels
        pa.field("height", pa.int32()),
        pa.field("iterations", pa.int32()),
        pa.field("content_loss", pa.float64()),
        pa.field("style_loss", pa.float64()),
        pa.field("tv_loss", pa.float64()),
        pa.field("total_loss", pa.float64()),
        pa.field("duration_s", pa.float64()),  # this item's share of its batch's time
        pa.field("started_at", pa.timestamp("us", tz="UTC")),
        pa.field("finished_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("worker", pa.string()),  # node/actor/device
        pa.field("params_hash", pa.string(), nullable=False),
        pa.field("shard", pa.int32(), nullable=False),
        # The content's URI as bytes, only where it is not valid UTF-8 (a Linux file name with
        # bytes like \xff): content_uri then shows those bytes as \xNN escapes.
        pa.field("content_uri_bytes", pa.binary()),
        # Total loss at the engine's progress steps, at most a few dozen values (losstrace.py);
        # null where no trace could be kept (failures, parts of older runs).
        pa.field("loss_trace", pa.list_(pa.float32())),
        # Quality figures in fixed layers and normalisations (stylize.figures), comparable
        # across runs; null where not taken (failures, parts of older runs).
        pa.field("content_distance", pa.float64()),
        pa.field("gram_distance", pa.float64()),
        pa.field("w2_distance", pa.float64()),
        pa.field("color_distance", pa.float64()),
        # The item's mask (job key masks), credentials stripped; null without one (and in
        # parts of older runs).
        pa.field("mask_uri", pa.string()),
    ]
)
if tuple(SCHEMA.names) != COLUMNS:  # pragma: no cover - a column added in one place only
    raise ImportError("pipeline.manifest.SCHEMA and pipeline.rows.Row name other columns")
if not set(FIGURES) <= set(COLUMNS):  # pragma: no cover - a figure added in one place only
    raise ImportError("stylize.figures.FIGURES are not all columns of pipeline.rows.Row")
_TEXT_COLUMNS = ("content_uri", "style", "output_uri", "error_message", "worker", "mask_uri")

# ``stylize quality OUTPUT`` (pipeline.quality_cmd): the figures recomputed from a run folder's
# files, one row per ok item; error says why an item has none.
QUALITY_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("style", pa.string(), nullable=False),
        *(pa.field(f, pa.float64()) for f in FIGURES),
        pa.field("error", pa.string()),
    ]
)


def clean_row(row: Mapping[str, Any], secrets: Sequence[str] = ()) -> dict[str, Any]:
    """What may reach a manifest: no credentials, and text that is valid UTF-8."""
    out = dict(row)
    uri = out.get("content_uri")
    if out.get("content_uri_bytes") is None and isinstance(uri, str) and _not_utf8(uri):
        out["content_uri_bytes"] = redact_uri(uri).encode("utf-8", "surrogateescape")
    for key in _TEXT_COLUMNS:
        value = out.get(key)
        if isinstance(value, str):
            out[key] = show_undecodable(
                redact_text(value, secrets) if key == "error_message" else redact_uri(value)
            )
    return out


def _not_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def raw_content_uri(row: Mapping[str, Any]) -> str:
    """The content URI as listed (surrogate-escaped where it is not UTF-8), credentials
    stripped: equal to ``redact_uri(content.uri)``."""
    raw = row.get("content_uri_bytes")
    return raw.decode("utf-8", "surrogateescape") if raw is not None else row["content_uri"]


def to_table(rows: Iterable[Mapping[str, Any]], secrets: Sequence[str] = ()) -> pa.Table:
    """Rows as a table of :data:`SCHEMA`; ``secrets``: values masked in error messages."""
    return pa.Table.from_pylist([clean_row(r, secrets) for r in rows], schema=SCHEMA)


def _to_parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


@dataclass(frozen=True)
class Unreadable:
    """A file of a run folder that could not be read back: why, and where it went."""

    uri: str
    why: str
    moved_to: str | None = None  # its quarantine URI, when a run moved it aside


class DamagedFile(StylizeError, ValueError):
    """A file of a run folder cannot be read back (raised where no :class:`Damage` collects)."""


# What decoding bytes already in memory may raise (pyarrow raises OSError for a bad footer);
# storage errors happen before, while reading, and are never taken for damage.
_DECODE_ERRORS = (
    pa.ArrowException,
    OSError,
    ValueError,
    TypeError,
    KeyError,
    EOFError,
    UnicodeDecodeError,
)


def _why(e: BaseException) -> str:
    return escape_controls(f"{type(e).__name__}: {' '.join(str(e).split())[:200]}")


class Damage:
    """Collects the damaged files met while reading a run folder back. ``repair`` (a run,
    which owns the folder): each is moved to ``_quarantine/STAMP/`` at once, never deleted,
    and named in one warning line; without (status, report): only listed."""

    def __init__(self, output: str, options: Mapping[str, Any], repair: bool = False):
        self.folder = RunFolder(output)
        self.options = options
        self.repair = repair
        self.found: list[Unreadable] = []
        self._stamp = now().strftime("%Y%m%dT%H%M%SZ")
        self._lock = threading.Lock()

    def add(self, uri: str, why: str, then: str = "") -> None:
        """``uri`` is damaged because ``why``; ``then``: what the run does about it."""
        with self._lock:
            if any(u.uri == uri for u in self.found):
                return
            moved = None
            if self.repair and storage.exists(uri, self.options):
                moved = self.folder.quarantined(uri, self._stamp)
                storage.move(uri, moved, self.options)
            self.found.append(Unreadable(uri, why, moved))
        if self.repair:
            rel = self.folder.relative
            log.warning(
                "%s is damaged (%s)%s%s",
                rel(uri),
                why,
                f": moved to {rel(moved)}" if moved else "",
                f"; {then}" if then else "",
            )

    def lines(self) -> list[str]:
        """One line per damaged file, for status and report."""
        return [
            f"{self.folder.relative(u.uri)}: {u.why}"
            + (f" (moved to {self.folder.relative(u.moved_to)})" if u.moved_to else "")
            for u in self.found
        ]

    def __bool__(self) -> bool:
        return bool(self.found)


def _damaged(damage: Damage | None, uri: str, why: str, then: str = "") -> None:
    if damage is None:
        raise DamagedFile(f"{uri}: cannot be read back ({why})")
    damage.add(uri, why, then)


_REQUIRED = tuple(f.name for f in SCHEMA if not f.nullable)
_STATUS_SET = pa.array(STATUSES, pa.string())


def _read_parquet(data: bytes) -> pa.Table:
    """Manifest rows from Parquet bytes, checked: the required columns all present and
    filled, known status values. ValueError or an Arrow error otherwise."""
    # ParquetFile rather than read_table: the dataset layer behind read_table costs ~3x more
    # per small file, which is most of a resume's time over thousands of parts
    table = _conform(pq.ParquetFile(io.BytesIO(data)).read())
    empty = [n for n in _REQUIRED if table[n].null_count]
    if empty:
        raise ValueError(f"not a manifest: no values in {', '.join(empty)}")
    if pc.any(pc.invert(pc.is_in(table["status"], value_set=_STATUS_SET))).as_py():
        raise ValueError("not a manifest: unknown status values")
    return table


def _conform(table: pa.Table) -> pa.Table:
    """The manifest's columns, typed, first (null where a part predates a column), then the
    job's own columns as written (a sweep's keys, a list input's columns)."""
    if table.schema.equals(SCHEMA):  # written by this version: nothing to add or cast
        return table
    for field in SCHEMA:  # parts written before a column existed
        if field.name not in table.column_names:
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    extra = [n for n in table.column_names if n not in SCHEMA.names]
    return pa.Table.from_arrays(
        [*table.select(SCHEMA.names).cast(SCHEMA).columns, *table.select(extra).columns],
        schema=pa.schema([*SCHEMA, *(table.schema.field(n) for n in extra)]),
    )


def _file_equals(
    uri: str,
    table: pa.Table,
    options: Mapping[str, Any],
    damage: Damage | None = None,
    batch_rows: int = 1 << 16,
) -> bool:
    """Whether the Parquet file ``uri`` holds exactly ``table`` (as read_manifest reads it),
    compared batch by batch: a million-row manifest is never held twice. A file that cannot
    be decoded is damaged (and moved aside, when ``damage`` repairs)."""
    if not storage.exists(uri, options):
        return False
    data = storage.read_bytes(uri, options)
    try:
        f = pq.ParquetFile(io.BytesIO(data))
        if f.metadata.num_rows != table.num_rows:
            return False
        start = 0
        for batch in f.iter_batches(batch_size=batch_rows):
            old = _conform(pa.Table.from_batches([batch]))
            if not old.equals(table.slice(start, old.num_rows)):
                return False
            start += old.num_rows
        return start == table.num_rows
    except _DECODE_ERRORS as e:
        _damaged(damage, uri, _why(e), "written again from the parts")
        return False


def write_part(
    output: str,
    shard: int,
    rows: Sequence[Mapping[str, Any]],
    options: Mapping[str, Any],
    secrets: Sequence[str] = (),
) -> pa.Table:
    """Write the shard's part; returns the table written (the driver keeps it, columnar,
    rather than the row dicts: a million items fit in a few hundred MB)."""
    table = to_table(rows, secrets)
    uri = RunFolder(output).part(shard)
    try:  # created, never overwritten: a part id is never written by two drivers
        storage.write_bytes(uri, _to_parquet(table), options, atomic=True, exclusive=True)
    except FileExistsError:
        raise storage.StorageError(
            f"{uri} exists: another driver wrote this part (two drivers on one output folder)"
        ) from None
    return table


class ShardTables:
    """The rows of the parts a run writes, columnar, in shard order (= job order). Each
    contiguous run of MERGE finished shards becomes one block: a million rows in a few hundred
    blocks rather than thousands of small tables, whose many small buffers cost the driver
    ~75% more memory than their data."""

    MERGE = 64

    def __init__(self, first: int):
        self._next = first  # the first shard id not merged into a block yet
        self._pending: dict[int, pa.Table] = {}
        self._blocks: list[pa.Table] = []

    def add(self, shard_id: int, table: pa.Table) -> None:
        self._pending[shard_id] = table
        end = self._next
        while end in self._pending:
            end += 1
        if end - self._next >= self.MERGE:
            run = [self._pending.pop(i) for i in range(self._next, end)]
            self._blocks.append(pa.concat_tables(run).combine_chunks())
            self._next = end

    def tables(self) -> list[pa.Table]:
        return self._blocks + [self._pending[i] for i in sorted(self._pending)]

    def __bool__(self) -> bool:
        return bool(self._blocks or self._pending)


def part_ids(output: str, options: Mapping[str, Any]) -> list[int]:
    """Shard ids of the finished parts; temporary files never count."""
    names = storage.listdir(RunFolder(output).manifest_dir, options)
    return sorted(i for n in names if (i := shard_of_part(n)) is not None)


def remove_stale_temporaries(output: str, options: Mapping[str, Any]) -> int:
    """Remove what crashed or interrupted writes left in the run's own folders (the root,
    ``_manifest``, ``report``, ``shards``): the driver holds the folder's lease and is their
    only writer, so at the start of a run every temporary file there is stale. Returns how
    many."""
    n = 0
    for folder in RunFolder(output).temporary_dirs:
        for name in storage.listdir(folder, options):
            if name.startswith(storage.TMP_PREFIX):
                storage.remove(storage.join(folder, name), options)
                n += 1
    return n


def read_parts(
    output: str, options: Mapping[str, Any], workers: int = 16, damage: Damage | None = None
) -> pa.Table:
    """Every finished shard's rows; for an item in several parts, the newest part wins.
    Parts are read concurrently (object stores answer each GET with latency). A part that
    cannot be read back is left out and given to ``damage`` (DamagedFile without)."""
    from concurrent.futures import ThreadPoolExecutor

    ids = part_ids(output, options)
    if not ids:
        return SCHEMA.empty_table()
    folder = RunFolder(output)

    def one(shard: int) -> pa.Table | None:
        return _read_checked(folder.part(shard), options, damage, "its items are computed again")

    def read(group: Sequence[int]) -> pa.Table:  # a few parts as one block (less memory)
        tables = [t for i in group if (t := one(i)) is not None]
        return pa.concat_tables(tables).combine_chunks() if tables else SCHEMA.empty_table()

    size = max(1, min(ShardTables.MERGE, len(ids) // max(1, workers)))
    groups = [ids[i : i + size] for i in range(0, len(ids), size)]
    with ThreadPoolExecutor(max(1, min(workers, len(groups)))) as pool:
        tables = list(pool.map(read, groups))
    table = pa.concat_tables(tables, promote_options="default")  # ascending shard ids
    if len(ids) == 1 or pc.count_distinct(table["item_id"]).as_py() == table.num_rows:
        return table
    # an item in several parts (a retried failure): keep its last row
    last = {item: n for n, item in enumerate(table["item_id"].to_pylist())}
    return table.take(pa.array(sorted(last.values()), pa.int64()))


def read_manifest(
    output: str, options: Mapping[str, Any], damage: Damage | None = None
) -> pa.Table | None:
    """``manifest.parquet``; None when there is none or it is damaged (given to ``damage``)."""
    uri = RunFolder(output).manifest_file
    if not storage.exists(uri, options):
        return None
    return _read_checked(uri, options, damage, "written again from the parts")


def _read_checked(
    uri: str, options: Mapping[str, Any], damage: Damage | None, then: str
) -> pa.Table | None:
    """Manifest rows of the Parquet file ``uri``; None when it is damaged (given to
    ``damage`` with ``then``). Storage errors are raised: they are not damage."""
    data = storage.read_bytes(uri, options)
    try:
        return _read_parquet(data)
    except _DECODE_ERRORS as e:
        _damaged(damage, uri, _why(e), then)
        return None


def manifest_intact(output: str, options: Mapping[str, Any], damage: Damage | None = None) -> bool:
    """Whether ``manifest.parquet`` exists and its footer reads as a manifest (ranged reads
    of its end only: ``status`` of a million-item run stays quick)."""
    uri = RunFolder(output).manifest_file
    if not storage.exists(uri, options):
        return False
    fs, path = storage.get_fs(uri, options)
    try:
        with fs.open(path, "rb") as f:
            names = pq.ParquetFile(f).schema_arrow.names
        missing = [n for n in _REQUIRED if n not in names]
        if missing:
            raise ValueError(f"not a manifest: no column {missing[0]}")
        return True
    except storage.StorageError:
        raise
    except _DECODE_ERRORS as e:
        _damaged(damage, uri, _why(e), "written again from the parts")
        return False


def write_manifest(
    output: str,
    items: Sequence[WorkItem],
    rows: pa.Table,
    options: Mapping[str, Any],
    extend: Callable[[pa.Table], pa.Table] | None = None,
    damage: Damage | None = None,
) -> tuple[pa.Table, bool]:
    """``manifest.parquet``: the rows of ``items`` found in ``rows`` (one per item), in job
    order, with the columns ``extend`` adds (a sweep's keys, a list input's columns). Not
    rewritten when its rows are already exactly these: a resumed run that computed nothing
    leaves the file untouched. Returns the table and whether the file was written."""
    # vectorised (a million items: seconds in Python, a fraction of a second here): each
    # row's item position, null for rows of no item (sorted last, then cut off)
    where = pc.index_in(
        rows["item_id"], value_set=pa.array([i.item_id for i in items], pa.string())
    )
    position = pc.take(pa.array([i.index for i in items], pa.int64()), where)
    if (
        position.null_count == 0
        and pc.all(
            pc.greater_equal(position.slice(1), position.slice(0, max(0, len(position) - 1)))
        ).as_py()
        is not False
    ):
        table = rows  # already in job order (a fresh run's parts): no copy
    else:
        order = pc.sort_indices(pc.fill_null(position, 2**63 - 1))  # stable
        table = rows.take(order.slice(0, len(position) - position.null_count))
    if extend is not None:
        table = extend(table)
    uri = RunFolder(output).manifest_file
    if _file_equals(uri, table, options, damage):
        return table, False
    storage.write_bytes(uri, _to_parquet(table), options, atomic=True)
    return table, True


def read_json(
    uri: str, options: Mapping[str, Any], damage: Damage | None = None, then: str = ""
) -> dict[str, Any] | None:
    """A JSON object file of the run; None when there is none or it is damaged (given to
    ``damage``, with ``then``: what the caller does instead)."""
    if not storage.exists(uri, options):
        return None
    data = storage.read_bytes(uri, options)
    try:
        value = json.loads(data)
        if not isinstance(value, dict):
            raise ValueError(f"a JSON {type(value).__name__}, not an object")
        return value
    except _DECODE_ERRORS as e:
        _damaged(damage, uri, _why(e), then)
        return None


def write_quality(
    output: str, rows: Sequence[Mapping[str, Any]], options: Mapping[str, Any]
) -> str:
    """The recomputed figures (rows of :data:`QUALITY_SCHEMA`), written whole; returns the URI."""
    table = pa.Table.from_pylist(
        [{c: r.get(c) for c in QUALITY_SCHEMA.names} for r in rows], schema=QUALITY_SCHEMA
    )
    uri = RunFolder(output).quality_file
    storage.write_bytes(uri, _to_parquet(table), options, atomic=True)
    return uri


def read_quality(
    output: str, options: Mapping[str, Any], damage: Damage | None = None
) -> pa.Table | None:
    """The recomputed figures of ``stylize quality``; None when there are none or the file is
    damaged (given to ``damage``: ``stylize quality`` writes it again)."""
    uri = RunFolder(output).quality_file
    if not storage.exists(uri, options):
        return None
    data = storage.read_bytes(uri, options)
    try:
        table = pq.ParquetFile(io.BytesIO(data)).read()
        return table.select(QUALITY_SCHEMA.names).cast(QUALITY_SCHEMA)
    except _DECODE_ERRORS as e:
        _damaged(damage, uri, _why(e), "stylize quality OUTPUT writes it again")
        return None


def with_quality(table: pa.Table, quality: pa.Table | None) -> pa.Table:
    """``table`` (manifest rows) with its null figures filled from ``quality`` (recomputed
    figures, by item_id): rows of runs made before the figures existed get them; a figure
    the run took itself is kept."""
    if quality is None or quality.num_rows == 0 or table.num_rows == 0:
        return table
    where = pc.index_in(table["item_id"], value_set=quality["item_id"].combine_chunks())
    for f in FIGURES:
        found = pc.take(quality[f].combine_chunks(), where)
        i = table.schema.get_field_index(f)
        table = table.set_column(i, table.schema.field(i), pc.coalesce(table[f], found))
    return table


def write_json(uri: str, data: Mapping[str, Any], options: Mapping[str, Any]) -> None:
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    storage.write_bytes(uri, text.encode(), options, atomic=True)


def clear_run(output: str, options: Mapping[str, Any]) -> None:
    """Forget a previous run (``mode: overwrite``): the files this package owns, not images."""
    folder = RunFolder(output)
    storage.remove(folder.manifest_dir, options, recursive=True)
    for uri in (folder.manifest_file, folder.run_json):
        storage.remove(uri, options)


# The run's throughput, defined here once: finish (run.json, the summary), the command's
# --json, status and the report all show this figure, under this label.
THROUGHPUT_LABEL = "ok images/h, first start to last finish"


@dataclass(frozen=True)
class Throughput:
    """ok images per hour of wall time from the first item started to the last one finished,
    over every row of a manifest (all statuses: time spent on failures is wall time too)."""

    ok: int
    span_s: float | None  # first started_at to last finished_at; None without timestamps
    images_per_hour: float | None  # ok / span, to 0.1; None when the span is not positive


def throughput(table: pa.Table) -> Throughput:
    """The run's :class:`Throughput` from its manifest rows (or its parts' rows). A row
    without started_at (a timeout, a crash: the scheduler wrote it) still ends the span; the
    span starts at the first finished_at when no row has a start."""
    if table.num_rows == 0:
        return Throughput(0, None, None)
    ok = pc.sum(pc.cast(pc.equal(table["status"], "ok"), pa.int64())).as_py() or 0
    start, end = pc.min(table["started_at"]).as_py(), pc.max(table["finished_at"]).as_py()
    if start is None:
        start = pc.min(table["finished_at"]).as_py()
    if start is None or end is None:
        return Throughput(ok, None, None)
    span = (end - start).total_seconds()
    rate = round(3600.0 * ok / span, 1) if span > 0 else None
    return Throughput(ok, round(span, 3), rate)
