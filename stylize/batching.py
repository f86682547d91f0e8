"""How many images a chunk holds: learnt per image shape and per what sets an image's memory
there (``memory_key``), else ``batch_size``, else measured once against free GPU memory (4 on
a CPU); on out-of-memory a chunk is halved, the size learnt, and the chunk run again."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from stylize.config import StyleConfig
from stylize.losses import STYLE_KINDS, content_loss
from stylize.runtime import free_device_memory

T = TypeVar("T")
Shape = tuple[int, int]
Features = Callable[[torch.Tensor, Sequence[str]], dict[str, torch.Tensor]]


def memory_key(shape: Shape, opts: StyleConfig, regions: int = 0) -> tuple[object, ...]:
    """What sets an image's memory at a shape: the layers it taps, its L-BFGS history, its
    style loss (and its regions, where it has masks)."""
    key = (*shape, opts.history_size, opts.content_layers + opts.style_layers, opts.style_loss)
    return (*key, "regions", regions) if regions else key


class BatchLimits:
    """Images per chunk on one device, learnt per ``memory_key``. ``features`` is the
    engine's network (what a measurement runs), ``stats_dtype`` its Gaussian targets' dtype."""

    def __init__(self, device: torch.device, features: Features, stats_dtype: torch.dtype):
        self.device, self.features, self.stats_dtype = device, features, stats_dtype
        self.learnt: dict[tuple[object, ...], int] = {}

    def size(self, shape: Shape, opts: StyleConfig, regions: int = 0) -> int:
        """Images per chunk at this (h, w) (with ``regions`` masks per image at the most)."""
        learnt = self.learnt.get(memory_key(shape, opts, regions))
        if learnt:  # measured, or halved after out-of-memory
            return learnt
        if regions:  # guided statistics: about a copy of the features per region
            return max(1, self.size(shape, opts) // (regions + 1))
        if opts.batch_size:
            return opts.batch_size
        if self.device.type != "cuda":
            return 4
        return self.measure(shape, opts)

    def run(
        self,
        count: int,
        shape: Shape,
        opts: StyleConfig,
        regions: int,
        chunk: Callable[[slice], list[T]],
    ) -> list[T]:
        """``chunk(part)`` over ``count`` items in chunks of ``size``; a chunk that runs out
        of memory is halved (learnt) and run again; one image that does not fit raises
        ``torch.OutOfMemoryError``."""
        results: list[T] = []
        start = 0
        while start < count:
            n = min(self.size(shape, opts, regions), count - start)
            try:
                results += chunk(slice(start, start + n))
            except torch.OutOfMemoryError:
                if n == 1:
                    raise
                self.learnt[memory_key(shape, opts, regions)] = n // 2
                free_device_memory(self.device)
                continue
            start += n
        return results

    def measure(self, shape: Shape, opts: StyleConfig) -> int:
        """Peak memory of one image's step at this shape (the objective's losses, run eager:
        compiled, a step needs less), measured once, against free memory."""
        torch.cuda.synchronize(self.device)
        before = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        x = torch.zeros(1, 3, *shape, device=self.device, requires_grad=True)
        feats = self.features(x, opts.content_layers + opts.style_layers)
        kind = STYLE_KINDS[opts.style_loss]
        losses = [
            content_loss(feats[k], torch.zeros_like(feats[k], dtype=torch.float32))
            for k in opts.content_layers
        ]
        for k in opts.style_layers:  # against its own statistics: a target of the right kind
            own = kind.target(kind.statistics(feats[k].detach()), self.device, self.stats_dtype)
            losses.append(kind.loss(feats[k], *own))
        torch.stack(losses).sum().backward()  # type: ignore[no-untyped-call]
        per_image = torch.cuda.max_memory_allocated(self.device) - before
        hist = 2 * opts.history_size * 3 * shape[0] * shape[1] * 4  # L-BFGS (s, y) pairs
        del x, feats
        # Free for this process: what the device has free plus what PyTorch's allocator holds
        # cached but unused (it reuses that before asking the device for more).
        free = torch.cuda.mem_get_info(self.device)[0] + (
            torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        )
        limit = max(1, min(64, int(0.8 * free / (per_image * 1.5 + hist))))
        self.learnt[memory_key(shape, opts)] = limit
        return limit
