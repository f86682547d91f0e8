"""The engine as a Ray Data stage: ``ds.map_batches(StylizeBatch, fn_constructor_kwargs=...)``.

For pipelines that already hold their images in a Ray Dataset (``read_binary_files``,
``read_images``, ``read_parquet``, ``from_items``) and write with Ray Data's own writers. The
stage is an adapter around the product's :class:`~pipeline.worker.StyleWorker`, not a second
engine: a batch's rows become work items (:func:`pipeline.items.make_items`, so ``assign``
draws exactly as a job does), their bytes are handed to the worker under ``memory://`` URIs
private to the call, and the worker decodes, groups same-size images into batches, stylizes,
encodes and makes the rows, with the statuses of the manifest. So an output equals the one
``stylize run`` makes at the same settings: the starting noise comes from ``stylize.seed``
alone (the same for every image; ``stylize.canvas.initial_noise``), and an image's result does
not depend on what it is batched with.

Per input row, one output row per style it gets (``assign``): the encoded image
(:data:`OUTPUT_COLUMN`, null when failed), then the manifest's ``style``, ``status``,
``error_message``, sizes, losses, ``iterations``, ``duration_s`` and ``worker``, typed as in
:data:`pipeline.manifest.SCHEMA`; every other input column is passed through. A row that
cannot be decoded, is not an image or does not fit in memory is a failed row, never an
exception; a stage set up wrongly (a bad key, a missing column) raises at once.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from pipeline import manifest
from pipeline.items import FORMAT_EXTENSIONS, Content, Plan, Shard, StyleRef, WorkItem, make_items
from pipeline.jobconfig import JobConfig, JobConfigError, job_from_mapping
from pipeline.redact import secret_values
from pipeline.rows import make_row
from pipeline.sources import check_styles_load, list_styles
from stylize.figures import FIGURES

if TYPE_CHECKING:
    import numpy as np

# The keys of a job file that mean something here; the others (input, output, shards,
# resume, ray, grid, report, layout, container, sweep) belong to `stylize run`.
JOB_KEYS = (
    "styles",
    "stylize",
    "assign",
    "output_format",
    "output_quality",
    "output_bit_depth",
    "storage_options",
    "io_retry_s",
    "target_cache_mb",
)
IMAGE_COLUMNS = ("bytes", "image")  # read_binary_files' encoded column, read_images' decoded
OUTPUT_COLUMN = "stylized"
ROW_COLUMNS = (
    "style",
    "status",
    "error_message",
    "width",
    "height",
    "iterations",
    "content_loss",
    "style_loss",
    "tv_loss",
    "total_loss",
    "duration_s",
    "worker",
    *FIGURES,  # the quality figures the worker takes anyway (null when not taken)
)
OUTPUT_SCHEMA = pa.schema(
    [
        pa.field(OUTPUT_COLUMN, pa.binary()),
        *(manifest.SCHEMA.field(c).with_nullable(True) for c in ROW_COLUMNS),
    ]
)
_MEMORY_ROOT = "memory://stylize-raydata"
_PLACEHOLDER = "<ray data>"  # a job's input and output: the Dataset's business here


@dataclass(frozen=True)
class StageSettings:
    """The validated job keys of a stage: what every actor builds its worker from."""

    job: JobConfig
    styles: tuple[StyleRef, ...]
    plan: Plan


def check_settings(**job_keys: Any) -> StageSettings:
    """Validate a stage's job keys as ``stylize run`` validates a job file's (JobConfigError,
    one line per problem; SourceError for styles that cannot be listed or decoded). Call it on
    the driver to fail before any actor starts; each actor calls it again."""
    foreign = [k for k in job_keys if k not in JOB_KEYS and k in JobConfig.model_fields]
    if foreign:
        raise JobConfigError(
            "\n".join(
                f"{k}: a key of `stylize run` jobs, not of the Ray Data stage (its job keys: "
                f"{', '.join(JOB_KEYS)})"
                for k in foreign
            )
        )
    job = job_from_mapping({"input": _PLACEHOLDER, "output": _PLACEHOLDER, **job_keys})
    styles = tuple(list_styles(job))
    check_styles_load(list(styles), job.storage_options)
    plan = Plan(job.assignment(len(styles)), point_hashes=(job.params_hash,))
    return StageSettings(job, styles, plan)


class StylizeBatch:
    """A callable class for ``Dataset.map_batches``: VGG-19 loaded and style targets cached
    once per actor, every batch stylized through the product's worker.

    ``job_keys`` are a job file's keys (:data:`JOB_KEYS`): ``styles`` in any form a job takes,
    ``stylize`` the engine options, ``assign`` (``all``, ``column``: the row's ``style``
    column, ``{random: k, seed: s}``), ``output_format`` and the rest, with the job's defaults.

    ``image_column``: the encoded (bytes) or decoded (HWC uint8 array) images; default
    ``bytes``, else ``image``. ``id_column`` keys ``assign: random``'s draw and names a row in
    error messages; ``relative_to`` is cut from its front (a scheme is ignored), so that a
    path column gives the relative path that ``stylize run`` draws from. ``keep_input`` passes
    the input images through as well.
    """

    def __init__(
        self,
        *,
        image_column: str | None = None,
        id_column: str = "path",
        relative_to: str | None = None,
        keep_input: bool = False,
        **job_keys: Any,
    ):
        from pipeline.worker import StyleWorker, WorkerSpec

        self.settings = s = check_settings(**job_keys)
        job = s.job
        self.image_column, self.id_column, self.keep_input = image_column, id_column, keep_input
        self.root = _without_scheme(relative_to).rstrip("/") + "/" if relative_to else ""
        self.styles = {r.name: r for r in s.styles}
        self.ext = FORMAT_EXTENSIONS[job.output_format]
        self.secrets = secret_values(job.storage_options)
        cache = None if job.target_cache_mb is None else int(job.target_cache_mb * 2**20)
        self.worker = StyleWorker(
            WorkerSpec(
                job.stylize,
                job.params_hash,
                job.output_format,
                job.output_quality,
                job.output_bit_depth,
                dict(job.storage_options),
                io_retry_s=job.io_retry_s,
                target_cache_bytes=cache,
            )
        )
        self.label = self.worker.info()["worker"]  # node/actor/device
        self._lock = threading.Lock()  # one worker: one batch at a time

    def __call__(self, batch: Any) -> pa.Table:
        """One batch in any of Ray Data's formats -> a pyarrow Table, a row per (row, style)."""
        table = _as_table(batch)
        column = self._image_column(table)
        assign = self.settings.plan.assign
        consumed = [column] * (not self.keep_input) + ["style"] * (assign == "column")
        passed = table.drop_columns(consumed)
        clash = sorted(set(passed.column_names) & set(OUTPUT_SCHEMA.names))
        if clash:
            raise ValueError(
                f"input columns {clash} would be overwritten by the stage's output "
                "columns; rename them (Dataset.rename_columns)"
                + (
                    ""
                    if "style" not in clash
                    else ", or pass assign='column' to stylize each row with its style"
                )
            )
        ids = self._ids(table, isinstance(assign, tuple))
        names = table.column("style").to_pylist() if assign == "column" else [None] * len(ids)
        with self._lock:
            rows, index = self._stylize(_images(table, column), ids, names)
        passed = passed.take(pa.array(index, pa.int64()))
        made = [pa.array([r[f.name] for r in rows], f.type) for f in OUTPUT_SCHEMA]
        return pa.Table.from_arrays(
            [*passed.columns, *made], schema=pa.schema([*passed.schema, *OUTPUT_SCHEMA])
        )

    # ------------------------------------------------------------------------------ helpers
    def _image_column(self, table: pa.Table) -> str:
        if self.image_column is not None:
            if self.image_column not in table.column_names:
                raise ValueError(
                    f"image_column {self.image_column!r} is not a column of the "
                    f"batch (columns: {', '.join(table.column_names)})"
                )
            return self.image_column
        found = [c for c in IMAGE_COLUMNS if c in table.column_names]
        if not found:
            raise ValueError(
                f"no image column in the batch (columns: "
                f"{', '.join(table.column_names)}): expected `bytes` (encoded, as "
                "read_binary_files gives) or `image` (decoded, as read_images "
                "gives); name yours with image_column="
            )
        return found[0]

    def _ids(self, table: pa.Table, needed: bool) -> list[str | None]:
        """Each row's id as its id column gives it (None: the batch has no such column)."""
        if self.id_column not in table.column_names:
            if needed:
                raise ValueError(
                    f"assign: random draws each row's styles from its id column "
                    f"{self.id_column!r}, which the batch lacks (columns: "
                    f"{', '.join(table.column_names)}); read with include_paths=True, or name "
                    "another column with id_column="
                )
            return [None] * table.num_rows
        return [None if v is None else str(v) for v in table.column(self.id_column).to_pylist()]

    def _stylize(
        self, images: Sequence[Any], ids: Sequence[str | None], names: Sequence[Any]
    ) -> tuple[list[dict], list[int]]:
        """(output rows, the input row of each) for one batch, through the worker."""
        from fsspec.implementations.memory import MemoryFileSystem

        fs = MemoryFileSystem()  # one store per process; this call's files under its own root
        root = f"{_MEMORY_ROOT}/{uuid.uuid4().hex}"
        try:
            contents, labels, failed = self._contents(fs, root, images, ids, names)
            job = self.settings.job
            items = make_items(
                contents,
                list(self.styles.values()),
                root,
                job.output_format,
                job.params_hash,
                self.settings.plan,
            )
            items = [replace(it, output_uri=f"{root}/out/{it.index}.{self.ext}") for it in items]
            todo = tuple(it for it in items if it.content_uri not in failed)
            done = (
                {r["item_id"]: r for r in self.worker.process(Shard(0, todo), self.styles)}
                if todo
                else {}
            )
            rows = [
                self._output_row(
                    fs,
                    it,
                    done.get(it.item_id) or _failed(it, failed[it.content_uri], self.label),
                    labels[it.content_uri],
                )
                for it in items
            ]
            row_of = {c.uri: c.row for c in contents}
            return rows, [row_of[it.content_uri] for it in items]
        finally:
            if fs.exists(root):
                fs.rm(root, recursive=True)

    def _contents(
        self, fs, root: str, images: Sequence[Any], ids: Sequence[str | None], names: Sequence[Any]
    ) -> tuple[list[Content], dict[str, str], dict[str, str]]:
        """The batch's rows as contents under ``root`` (their bytes written there), the label
        of each (its id, for messages) and the rows that are no image at all (uri -> why)."""
        contents, labels, failed = [], {}, {}
        for i, (value, rid) in enumerate(zip(images, ids, strict=True)):
            uri = f"{root}/{i}.img"  # ".img": no URI is a prefix of another in a message
            labels[uri] = rid if rid is not None else f"row {i} of its batch"
            try:
                fs.pipe_file(uri, _encoded(value))
            except ValueError as e:
                failed[uri] = f"{labels[uri]}: {e}"
            # the draw's key: what `stylize run` calls the content's relative path
            rel = _relative(rid, self.root) if rid is not None else str(i)
            style = None if names[i] is None else str(names[i])
            contents.append(Content(uri, rel, "", style=style, row=i))
        return contents, labels, failed

    def _output_row(self, fs, item: WorkItem, row: Mapping[str, Any], label: str) -> dict:
        out = {c: row.get(c) for c in ROW_COLUMNS}
        if out["error_message"]:  # the private URI is not the user's name for the row
            out["error_message"] = manifest.clean_row(
                {"error_message": out["error_message"].replace(item.content_uri, label)},
                self.secrets,
            )["error_message"]
        out[OUTPUT_COLUMN] = fs.cat_file(item.output_uri) if row["status"] == "ok" else None
        return out


def _failed(item: WorkItem, message: str, worker: str) -> Mapping[str, Any]:
    return make_row(item, "failed_decode", shard=0, attempt=1, error_message=message, worker=worker)


def _as_table(batch: Any) -> pa.Table:
    """A batch of any Ray Data format (pyarrow Table, pandas DataFrame, dict of numpy arrays)
    as a pyarrow Table; arrays of images become Ray's tensor columns."""
    if isinstance(batch, pa.Table):
        return batch
    from ray.data.block import BlockAccessor

    block = BlockAccessor.batch_to_block(batch) if isinstance(batch, Mapping) else batch
    return BlockAccessor.for_block(block).to_arrow()


def _images(table: pa.Table, column: str) -> Sequence[Any]:
    """The column's values: bytes (binary column) or HWC arrays (a tensor column)."""
    kind = table.schema.field(column).type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return table.column(column).to_pylist()
    if isinstance(kind, pa.ExtensionType):  # Ray's tensor columns, fixed or variable shape
        from ray.data.block import BlockAccessor

        return list(BlockAccessor.for_block(table.select([column])).to_numpy(column))
    return table.column(column).to_pylist()  # not images: each row fails, saying what it is


def _encoded(value: Any) -> bytes:
    """Bytes the worker decodes: encoded images as they are, a decoded array as a lossless
    PNG (so it goes through the same decoding, alpha and all). ValueError: not an image."""
    import numpy as np

    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if value is None:
        raise ValueError("no image (null)")
    if isinstance(value, np.ndarray):
        return _png(value)
    raise ValueError(
        f"not an image: a {type(value).__name__}, not encoded bytes or an (H, W, C) uint8 array"
    )


def _png(a: np.ndarray) -> bytes:
    import io

    from PIL import Image

    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if (
        a.dtype.name != "uint8"
        or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4)))
        or 0 in a.shape
    ):
        raise ValueError(
            f"not an image: an array of shape {a.shape} and dtype {a.dtype}; "
            "expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8"
        )
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG", compress_level=0)  # lossless; read back at once
    return buf.getvalue()


def _without_scheme(uri: str) -> str:
    """``s3://bucket/x`` -> ``bucket/x``, as Ray Data writes paths."""
    return uri.split("://", 1)[1] if "://" in uri else uri


def _relative(value: str, root: str) -> str:
    value = _without_scheme(value)
    return value[len(root) :] if root and value.startswith(root) else value
