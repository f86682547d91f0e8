"""The worker: where URIs become pixels and pixels become files. One per GPU (or CPU slot).

``StyleWorker`` is a plain class that imports no Ray: ``pipeline.raypool`` makes it an actor,
``pipeline.inline`` runs it in this process. The scheduler talks to it in two steps per
shard, so that it always knows which items are on the device when something goes wrong:

1. ``prepare(shard, ...)`` reads and decodes the shard's contents (decode failures become rows
   right away) and groups same-size images into batches, returned as lists of item ids;
2. ``run_batch(item_ids)`` stylizes one batch, writes each output and returns its rows.

Reading, decoding, encoding and writing run in a small pool of CPU threads.

The VGG-19 is loaded once per worker; the engine caches style Gram targets by (style key,
size) in an LRU bounded by bytes, so a style is analysed once per worker and size, not once
per image (the driver groups items by style into shards where the assignment allows). Items
of a sweep carry their point: one loaded network serves every point's options. A style that
cannot be decoded fails its items' rows (failed_decode), not the job: with tens of thousands
of styles the driver decodes only a sample up front.

After each batch the worker takes the quality figures of its outputs (stylize.figures: one
forward pass of the outputs, one of contents not met before, style statistics once per style
and size) on the engine's network when it is the figures' fixed one, else on a second VGG-19
loaded once; a figure that cannot be taken is a null column, never a failed item.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline import storage
from pipeline.items import Shard, StyleRef, WorkItem
from pipeline.losstrace import LossTrace
from pipeline.rows import Row, make_row, now
from stylize.common import describe_error, one_line
from stylize.config import StyleConfig

if TYPE_CHECKING:  # the engine (torch) loads in the worker, not in the driver that imports this
    import torch

DEFAULT_MAX_BATCH = 16  # items per run_batch call when the engine's batch_size is 0 (auto)
DECODED_STYLES = 64  # decoded style images kept per worker (their targets are cached apart)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, shipped once when it starts (no driver globals)."""

    stylize: StyleConfig
    params_hash: str
    output_format: str = "png"
    output_quality: int = 95
    output_bit_depth: int = 8
    storage_options: Mapping[str, Any] | None = None
    threads: int = 0  # torch CPU threads; 0: leave torch's default
    io_retry_s: float = storage.DEFAULT_RETRY_S  # storage outages ridden out per operation
    points: tuple[Mapping[str, Any], ...] = ({},)  # the sweep's points: WorkItem.point indexes
    target_cache_bytes: int | None = None  # None: the engine's default (from device memory)


class CallTimeout(Exception):
    """The call ran past its deadline (in-process runs, where nothing can kill the call)."""


def plan_batches(
    sizes: Mapping[str, tuple[int, ...]],
    order: Sequence[str],
    max_batch: int,
    isolate: frozenset[str] = frozenset(),
) -> list[list[str]]:
    """Group item ids into batches of one key of ``sizes`` (the engine's requirement: one size;
    the worker's: one sweep point too), at most ``max_batch`` each, in first-seen order; ids in
    ``isolate`` go alone (suspects of a crash)."""
    groups: dict[tuple[int, ...], list[str]] = {}
    batches: list[list[str]] = []
    for item_id in order:
        if item_id not in sizes:
            continue
        if item_id in isolate:
            batches.append([item_id])
            continue
        group = groups.setdefault(sizes[item_id], [])
        group.append(item_id)
        if len(group) == max_batch:
            batches.append(list(group))
            group.clear()
    batches += [g for g in groups.values() if g]
    return batches


def gpu_left_unused(gpus: Sequence[str], device: torch.device) -> str | None:
    """The warning for a worker that was given GPUs but runs on the CPU (e.g. an NVIDIA
    driver too old for this PyTorch's CUDA build); None when there is nothing to say."""
    if not gpus or device.type != "cpu":
        return None
    import torch

    try:
        torch.cuda.init()
        why = "torch.cuda.is_available() is False"
    except Exception as e:  # noqa: BLE001 - its message is the reason
        why = one_line(e, 300)
    return (
        f"given GPU {','.join(gpus)} but running on the CPU, ~50x slower ({why}); this "
        f"PyTorch is built for CUDA {torch.version.cuda}: the node's NVIDIA driver must "
        "support it (nvidia-smi prints the highest CUDA version it supports)"
    )


def load_mask(
    data: bytes,
    name: str,
    shape: tuple[int, int],
    content_size: tuple[int, int],
    foreground: bool = True,
    background: bool = False,
) -> torch.Tensor:
    """A content's mask from its file's bytes (:func:`stylize.masks.checked_mask`: greyscale
    in 0..1 at the content's working ``shape``, its aspect and coverage checked); ImageError
    (a failed_decode row) for a file that is not an image or cannot guide."""
    from stylize.images import decode_image
    from stylize.masks import checked_mask

    img = decode_image(data, name=name)
    return checked_mask(img, name, shape, content_size, foreground, background)


def _message(e: BaseException) -> str:
    return one_line(e) if isinstance(e, storage.StorageUnavailable) else describe_error(e)


def _status(e: BaseException) -> str:
    """The row status of an exception raised while reading or writing an item."""
    return "failed_io" if isinstance(e, storage.StorageUnavailable) else "failed_other"


class StyleWorker:
    """Loads the engine once; turns shards of work items into outputs and manifest rows."""

    def __init__(self, spec: WorkerSpec):
        import torch

        from stylize.engine import Stylizer

        if spec.threads > 0:
            torch.set_num_threads(spec.threads)
        storage.set_retry_budget(spec.io_retry_s)
        self.spec = spec
        self.deadline: float | None = None  # monotonic; checked at each progress step
        self.options = dict(spec.storage_options or {})
        self.stylizer = Stylizer(
            spec.stylize, read_bytes=self._read, target_cache_bytes=spec.target_cache_bytes
        )
        self._options = [spec.stylize.replace(**p) if p else spec.stylize for p in spec.points]
        self._styles: OrderedDict[str, Any] = OrderedDict()  # style key -> engine Style
        # stylize.figures.FigureTaker, made at first use (an exception: it could not be)
        self._figure_taker: Any = None
        self._broken: dict[str, Exception] = {}  # style key -> why it is not an image
        self._prepared: dict[str, tuple[WorkItem, Any, int, int]] = {}
        self._masks: dict[str, Any] = {}  # item id -> its mask (h, w), for run_batch
        self._label = self._make_label()
        self._io = ThreadPoolExecutor(max(2, spec.threads or 2), thread_name_prefix="io")

    def _read(self, uri: str) -> bytes:
        return storage.read_bytes(uri, self.options)

    def _make_label(self) -> str:
        node, actor, gpus = socket.gethostname(), "", []
        ray = sys.modules.get("ray")  # imported by the process iff it is a Ray actor
        if ray is not None and ray.is_initialized():  # never start Ray from here
            ctx = ray.get_runtime_context()
            actor = (ctx.get_actor_id() or "")[:8]
            node = ray.util.get_node_ip_address() or ctx.get_node_id()[:8]
            gpus = [str(g) for g in ray.get_gpu_ids()]
        device = str(self.stylizer.device)
        unused = gpu_left_unused(gpus, self.stylizer.device)
        if unused:
            log.warning("%s", unused)
            device = f"cpu (GPU {','.join(gpus)} unused)"
        return f"{node}/{actor or 'pid' + str(os.getpid())}/{device}"

    def info(self) -> dict[str, Any]:
        """Who this worker is: pid (for fault tests), label, device and weights hash."""
        return {
            "pid": os.getpid(),
            "worker": self._label,
            "device": str(self.stylizer.device),
            "weights_hash": self.stylizer.weights_hash,
        }

    def cache_stats(self) -> dict[str, Any]:
        """The style-target cache's figures (hits, targets computed per style, bytes)."""
        return self.stylizer.targets.stats()

    @property
    def max_batch(self) -> int:
        return self.spec.stylize.batch_size or DEFAULT_MAX_BATCH

    # ------------------------------------------------------------------------------ step 1
    def prepare(
        self,
        shard: Shard,
        styles: Mapping[str, StyleRef],
        attempts: Mapping[str, int],
        isolate: frozenset[str] = frozenset(),
    ) -> tuple[list[Row], list[list[str]]]:
        """Read and decode the shard's contents. Returns the rows of items that failed here
        and the batches (lists of item ids) for :meth:`run_batch`."""
        from stylize.images import ImageError, decode_image

        self._prepared.clear()
        self._masks.clear()
        self._shard, self._attempts, self._style_refs = shard.shard_id, dict(attempts), styles
        rows: list[Row] = []
        sizes: dict[str, tuple[int, int, int]] = {}
        originals: dict[tuple[str, int, bool], tuple[int, int]] = {}  # (width, height)

        def shape_key(item: WorkItem) -> tuple[str, int, bool]:
            opts = self._options[item.point]
            return item.content_uri, opts.size, opts.bucket

        def load(key: tuple[str, int, bool]) -> Any:
            uri = key[0]
            try:
                img = decode_image(self._read(uri), name=uri)
                originals[key] = img.size
                return self.stylizer.prepare_content(img, options=self._options_for(key))
            except Exception as e:  # noqa: BLE001 - a bad input is a row, never a crash
                return e

        # Read and decode in CPU threads (Pillow and zlib release the GIL); (content uri,
        # size) -> tensor or exception, once per content for all its styles and points.
        keys = list(dict.fromkeys(shape_key(i) for i in shard.items if not i.problem))
        started = now()
        decoded = dict(zip(keys, self._io.map(load, keys)))
        masks = self._load_masks(shard.items, decoded, originals, shape_key)
        for item in shard.items:
            if item.problem:  # known when listed (a dangling link, a loop): nothing to read
                rows.append(
                    self._row(
                        item,
                        "failed_other",
                        started,
                        error_message=f"{item.content_uri}: {item.problem}",
                    )
                )
                continue
            value = decoded[shape_key(item)]
            if isinstance(value, Exception):
                status = "failed_decode" if isinstance(value, ImageError) else _status(value)
                msg = (
                    str(value)
                    if isinstance(value, ImageError)
                    else f"{item.content_uri}: {_message(value)}"
                )
                rows.append(self._row(item, status, started, error_message=msg))
                continue
            if item.mask is not None:
                mask = masks[self._mask_key(item, value)]
                if isinstance(mask, Exception):
                    bad = isinstance(mask, ImageError)
                    msg = str(mask) if bad else f"mask {item.mask.uri}: {_message(mask)}"
                    status = "failed_decode" if bad else _status(mask)
                    rows.append(self._row(item, status, started, error_message=msg))
                    continue
                self._masks[item.item_id] = mask
            h, w = value.shape[-2:]
            self._prepared[item.item_id] = (item, value, int(w), int(h))
            sizes[item.item_id] = (int(h), int(w), item.point)  # one batch: one size, one point
        order = [i.item_id for i in shard.items]
        return rows, plan_batches(sizes, order, self.max_batch, frozenset(isolate))

    @staticmethod
    def _mask_key(item: WorkItem, content: Any) -> tuple[str, int, int, str | None, str | None]:
        assert item.mask is not None
        h, w = content.shape[-2:]
        return item.mask.uri, int(h), int(w), item.mask.foreground, item.mask.background

    def _load_masks(
        self,
        items: Sequence[WorkItem],
        decoded: Mapping[Any, Any],
        originals: Mapping[Any, tuple[int, int]],
        shape_key: Any,
    ) -> dict[tuple[str, int, int, str | None, str | None], Any]:
        """The masks of the items whose contents decoded, read and resized to their content's
        working size in the CPU threads: mask key -> (h, w) tensor, or the exception."""
        wanted: dict[tuple[str, int, int, str | None, str | None], tuple[int, int]] = {}
        for item in items:
            content = None if item.problem or item.mask is None else decoded[shape_key(item)]
            if content is not None and not isinstance(content, Exception):
                wanted[self._mask_key(item, content)] = originals[shape_key(item)]

        def load(key: tuple[str, int, int, str | None, str | None]) -> Any:
            uri, h, w, fg, bg = key
            try:
                return load_mask(
                    self._read(uri),
                    f"mask {uri}",
                    (h, w),
                    wanted[key],
                    fg is not None,
                    bg is not None,
                )
            except Exception as e:  # noqa: BLE001 - a bad mask is a row, never a crash
                return e

        return dict(zip(wanted, self._io.map(load, wanted)))

    def _regions(self, item: WorkItem) -> list[tuple[Any, Any]] | None:
        """The item's (style, mask) regions for the engine: the foreground's style on the
        mask, the background's on its inverse; None without a mask."""
        if item.mask is None:
            return None
        mask = self._masks[item.item_id]
        fg, bg = item.mask.foreground, item.mask.background
        return [
            *([(self._style(fg), mask)] if fg is not None else []),
            *([(self._style(bg), 1 - mask)] if bg is not None else []),
        ]

    def _options_for(self, key: tuple[str, int, bool]):
        return next(o for o in self._options if (o.size, o.bucket) == key[1:])

    # ------------------------------------------------------------------------------ step 2
    def run_batch(self, item_ids: Sequence[str]) -> list[Row]:
        """Stylize prepared items of one size and point together; write outputs; one row
        per item."""
        from stylize.images import ImageError

        entries = [self._prepared.pop(i) for i in item_ids]
        taken = list(entries)
        started, t0 = now(), time.perf_counter()
        failed, styles, regions = [], [], []
        for e in taken:  # a style that cannot be read fails its items only
            mask = e[0].mask
            sides = (mask.foreground, mask.background) if mask is not None else ()
            name = e[0].style
            try:
                for name in (e[0].style, *(n for n in sides if n is not None)):
                    self._style(name)  # decoded once per worker, each side's style too
                styles.append(self._style(e[0].style))
                regions.append(self._regions(e[0]))
            except Exception as err:  # noqa: BLE001 - a row with the reason
                entries.remove(e)
                bad = isinstance(err, ImageError)
                failed.append(
                    self._row(
                        e[0],
                        "failed_decode" if bad else _status(err),
                        started,
                        error_message=f"style {name}: {err if bad else _message(err)}",
                    )
                )
        if not entries:
            return failed
        trace = LossTrace(len(entries))

        def progress(step) -> None:
            self._check_deadline(step)
            trace(step)

        try:
            results = self.stylizer.stylize_batch(
                [e[1] for e in entries],
                styles,
                progress,
                options=self._options[entries[0][0].point],
                regions=regions if any(r is not None for r in regions) else None,
            )
        except CallTimeout:
            for entry in taken:  # the scheduler decides; the items stay prepared
                self._prepared[entry[0].item_id] = entry
            raise
        except Exception as e:  # noqa: BLE001 - OOM and the rest become rows
            import torch

            if isinstance(e, torch.OutOfMemoryError) and self.stylizer.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(entries) > 1:  # find out which item it was: each alone
                rows = failed
                for entry in entries:
                    self._prepared[entry[0].item_id] = entry
                    rows += self.run_batch([entry[0].item_id])
                return rows
            status = "failed_oom" if isinstance(e, torch.OutOfMemoryError) else _status(e)
            item = entries[0][0]
            msg = (
                f"{item.content_uri}: out of device memory at {entries[0][2]}x{entries[0][3]} "
                f"even alone; lower stylize.size"
                if status == "failed_oom"
                else f"{item.content_uri}: {_message(e)}"
            )
            return [*failed, self._row(item, status, started, error_message=msg)]
        share = (time.perf_counter() - t0) / len(entries)
        figures = self._figures(entries, results, styles, regions)
        # Encode and write in CPU threads, all of them before the rows go back.
        return failed + list(
            self._io.map(
                lambda e: self._write(e[0][0], e[1], started, share, e[2], e[3]),
                zip(entries, results, trace.traces(), figures),
            )
        )

    def _figures(
        self,
        entries: list[Any],
        results: list[Any],
        styles: list[Any],
        regions: Sequence[Any] | None = None,
    ) -> list[Any]:
        """Each result's quality figures (stylize.figures): one forward pass of the batch's
        outputs, one of its contents not met before; None where a figure could not be taken
        (a figure never fails an item). ``regions``: each item's engine regions (its mask's
        styled sides, as the engine was given them) or None: a masked item's style figures
        are its regions' against their styles, weighted by area."""
        try:
            import torch

            from stylize.figures import FigureTaker

            if self._figure_taker is None:
                try:  # the figures' network: loaded once; if it cannot be, never tried again
                    self._figure_taker = FigureTaker.for_engine(self.stylizer)
                except Exception as e:  # noqa: BLE001 - said once; the rows carry nulls
                    log.warning("quality figures off for this worker: %s", e)
                    self._figure_taker = e
            taker = self._figure_taker
            if isinstance(taker, Exception):
                return [None] * len(results)
            keys = [
                (e[0].content_uri, self._options[e[0].point].size, self._options[e[0].point].bucket)
                for e in entries
            ]
            found = taker.take(
                torch.stack([r.image for r in results]),
                torch.stack([e[1] for e in entries]),
                styles,
                keys,
                regions if regions is not None and any(r is not None for r in regions) else None,
            )
            if taker.failed:
                log.warning(
                    "quality figures not all taken for %d item(s): %s",
                    len(results),
                    "; ".join(taker.failed),
                )
            return found
        except Exception as e:  # noqa: BLE001 - logged; the rows carry null figures
            log.warning("quality figures not taken for %d item(s): %s", len(results), e)
            return [None] * len(results)

    def process(
        self,
        shard: Shard,
        styles: Mapping[str, StyleRef],
        attempts: Mapping[str, int] | None = None,
    ) -> list[Row]:
        """Both steps for a whole shard (no Ray, no fault handling): one row per item."""
        attempts = attempts or {i.item_id: 1 for i in shard.items}
        rows, batches = self.prepare(shard, styles, attempts)
        for batch in batches:
            rows += self.run_batch(batch)
        return rows

    # ------------------------------------------------------------------------------ helpers
    def _check_deadline(self, step) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise CallTimeout(f"past the deadline at step {step.step}")

    def _style(self, name: str):
        from stylize.engine import Style
        from stylize.images import ImageError, decode_image, to_tensor

        ref = self._style_refs[name]
        if ref.key in self._broken:  # not an image: known, not read again for each item
            raise self._broken[ref.key]
        if ref.key in self._styles:
            self._styles.move_to_end(ref.key)
        else:
            try:
                images = tuple(to_tensor(decode_image(self._read(u), name=u)) for u in ref.uris)
            except ImageError as e:
                self._broken[ref.key] = e
                raise
            self._styles[ref.key] = Style(key=ref.key, images=images, weights=ref.weights)
            if len(self._styles) > DECODED_STYLES:
                self._styles.popitem(last=False)
        return self._styles[ref.key]

    def _write(
        self,
        item: WorkItem,
        result,
        started,
        duration: float,
        loss_trace: list[float] | None = None,
        figures: dict[str, float] | None = None,
    ) -> Row:
        from stylize.images import encode_image

        h, w = result.image.shape[-2:]
        values = dict(
            width=int(w),
            height=int(h),
            iterations=int(result.iterations),
            content_loss=float(result.content_loss),
            style_loss=float(result.style_loss),
            tv_loss=float(result.tv_loss),
            total_loss=float(result.total_loss),
            duration_s=duration,
            loss_trace=loss_trace,
            **(figures or {}),
        )
        try:
            data = encode_image(
                result.image,
                self.spec.output_format,
                self.spec.output_quality,
                self.spec.output_bit_depth,
            )
            storage.write_bytes(item.output_uri, data, self.options, atomic=True)
        except Exception as e:  # noqa: BLE001 - an unwritable output is a row with a message
            return self._row(
                item,
                _status(e),
                started,
                error_message=f"{item.output_uri}: {_message(e)}",
                **values,
            )
        return self._row(item, "ok", started, **values)

    def _row(self, item: WorkItem, status: str, started: Any, **values: Any) -> Row:
        return make_row(
            item,
            status,
            shard=self._shard,
            attempt=self._attempts.get(item.item_id, 1),
            started_at=started,
            worker=self._label,
            **values,
        )
