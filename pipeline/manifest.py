"""Manifests: one row per work item, failures included, under an explicit pyarrow schema.

The driver is the only writer. Layout of an output folder::

    {output}/_manifest/job.json             what this folder was made with (resume check)
    {output}/_manifest/part-NNNNN.parquet   one per finished shard, written whole and last
    {output}/manifest.parquet               at the end: every item of the job, in job order
    {output}/run.json                       resolved config, versions, weights, cluster, timings
"""

from __future__ import annotations

import io
import json
import re
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.items import WorkItem

STATUSES = ("ok", "failed_decode", "failed_oom", "failed_timeout", "failed_crash", "failed_other")

SCHEMA = pa.schema([
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("content_uri", pa.string(), nullable=False),
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
])
COLUMNS = tuple(SCHEMA.names)
_PART = re.compile(r"part-(\d+)\.parquet$")


def now() -> datetime:
    return datetime.now(timezone.utc)


def make_row(item: WorkItem, status: str, *, params_hash: str, shard: int, attempt: int,
             error_message: str | None = None, started_at: datetime | None = None,
             finished_at: datetime | None = None, **values: Any) -> dict[str, Any]:
    """A manifest row for ``item``; ``values`` fill the measurement columns."""
    if status not in STATUSES:
        raise ValueError(f"status {status!r}; allowed: {', '.join(STATUSES)}")
    unknown = set(values) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown manifest columns: {sorted(unknown)}")
    row = {c: None for c in COLUMNS}
    row.update(values)
    row.update(item_id=item.item_id, content_uri=item.content_uri, style=item.style,
               output_uri=item.output_uri, status=status, error_message=error_message,
               attempt=attempt, started_at=started_at, finished_at=finished_at or now(),
               params_hash=params_hash, shard=shard)
    return row


def to_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist([dict(r) for r in rows], schema=SCHEMA)


def _to_parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _read_parquet(data: bytes) -> pa.Table:
    return pq.read_table(io.BytesIO(data)).cast(SCHEMA)


def part_uri(output: str, shard: int) -> str:
    return storage.join(output, "_manifest", f"part-{shard:05d}.parquet")


def write_part(output: str, shard: int, rows: Sequence[Mapping[str, Any]],
               options: Mapping[str, Any]) -> None:
    storage.write_bytes(part_uri(output, shard), _to_parquet(to_table(rows)), options,
                        atomic=True)


def part_ids(output: str, options: Mapping[str, Any]) -> list[int]:
    fs, path = storage.get_fs(storage.join(output, "_manifest"), options)
    if not fs.exists(path):
        return []
    return sorted(int(m.group(1)) for p in fs.ls(path, detail=False)
                  if (m := _PART.search(p)))


def read_parts(output: str, options: Mapping[str, Any]) -> pa.Table:
    """Every finished shard's rows; for an item in several parts, the newest part wins."""
    tables = [_read_parquet(storage.read_bytes(part_uri(output, i), options))
              for i in part_ids(output, options)]
    if not tables:
        return SCHEMA.empty_table()
    rows: dict[str, dict[str, Any]] = {}
    for t in tables:  # ascending shard ids: later parts overwrite earlier rows
        for r in t.to_pylist():
            rows[r["item_id"]] = r
    return to_table(rows.values())


def read_manifest(output: str, options: Mapping[str, Any]) -> pa.Table | None:
    uri = storage.join(output, "manifest.parquet")
    if not storage.exists(uri, options):
        return None
    return _read_parquet(storage.read_bytes(uri, options))


def write_manifest(output: str, items: Sequence[WorkItem], done: Mapping[str, Mapping[str, Any]],
                   options: Mapping[str, Any]) -> tuple[pa.Table, bool]:
    """``manifest.parquet`` with the rows of ``items`` (job order) found in ``done``.

    Not rewritten when its rows are already exactly these: a resumed run that computed nothing
    leaves the file untouched. Returns the table and whether the file was written.
    """
    table = to_table(done[i.item_id] for i in items if i.item_id in done)
    old = read_manifest(output, options)
    if old is not None and old.equals(table):
        return table, False
    storage.write_bytes(storage.join(output, "manifest.parquet"), _to_parquet(table), options,
                        atomic=True)
    return table, True


def read_json(uri: str, options: Mapping[str, Any]) -> dict[str, Any] | None:
    if not storage.exists(uri, options):
        return None
    return json.loads(storage.read_bytes(uri, options))


def write_json(uri: str, data: Mapping[str, Any], options: Mapping[str, Any]) -> None:
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    storage.write_bytes(uri, text.encode(), options, atomic=True)


def job_uri(output: str) -> str:
    return storage.join(output, "_manifest", "job.json")


def run_uri(output: str) -> str:
    return storage.join(output, "run.json")


def clear_run(output: str, options: Mapping[str, Any]) -> None:
    """Forget a previous run (``mode: overwrite``): the files this package owns, not images."""
    storage.remove(storage.join(output, "_manifest"), options, recursive=True)
    for name in ("manifest.parquet", "run.json"):
        storage.remove(storage.join(output, name), options)
