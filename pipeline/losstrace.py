"""A short loss trace per item, gathered from the engine's progress callback.

The engine calls back every ``log_every`` steps with the total loss of each image of the
chunk it is optimising (``StepInfo.losses``). ``stylize_batch`` may split a worker's batch into
chunks, and halve and restart a chunk that ran out of memory; the callback does not say which
chunk it is in. A chunk starts with the first step of its first scale; a chunk that failed is
followed by its restart at half its size. Traces go to items only when the chunks seen tile
the batch exactly; otherwise every item of the batch gets none (never another item's curve).

An image's trace stops when its loss stops changing (early stopping leaves its last value in
the callback), and is cut to at most ``points`` evenly spaced values, first and last kept: the
manifest's ``loss_trace`` column, drawn by the report.
"""

from __future__ import annotations

import math
from typing import Any

TRACE_POINTS = 24  # floats per item: 4 bytes each, ~100 MB for a million items


class LossTrace:
    """Callable on each ``StepInfo`` of one ``stylize_batch`` call of ``n`` images."""

    def __init__(self, n: int, points: int = TRACE_POINTS):
        self.n, self.points = n, points
        self._chunks: list[dict[str, Any]] = []  # {size, complete, values: [losses tuple]}

    def __call__(self, step) -> None:
        if step.scale == 0 and step.step == 1:  # the first callback of a chunk
            self._chunks.append({"size": len(step.losses), "complete": False, "values": []})
        if not self._chunks:
            return
        chunk = self._chunks[-1]
        chunk["values"].append(step.losses)
        chunk["complete"] = step.scale == step.scales - 1 and (
            step.step >= step.steps or step.active == 0
        )

    def traces(self) -> list[list[float] | None]:
        """One trace per image of the batch, in batch order (all None if unattributable)."""
        out: list[list[float] | None] = [None] * self.n
        offset = 0
        for i, chunk in enumerate(self._chunks):
            after = self._chunks[i + 1] if i + 1 < len(self._chunks) else None
            if after is not None and not chunk["complete"] and after["size"] == chunk["size"] // 2:
                continue  # ran out of memory: restarted at half the size
            if offset + chunk["size"] > self.n:
                return [None] * self.n
            for j in range(chunk["size"]):
                out[offset + j] = shorten([v[j] for v in chunk["values"]], self.points)
            offset += chunk["size"]
        return out if offset == self.n else [None] * self.n


def shorten(values: list[float], points: int) -> list[float]:
    """Trailing repeats (an image that stopped) dropped, then at most ``points`` values
    spaced evenly over the rest, the first and the last kept."""
    end = len(values)
    while end > 1 and values[end - 1] == values[end - 2]:
        end -= 1
    values = [float(v) if math.isfinite(v) else float("nan") for v in values[:end]]
    if len(values) <= points:
        return values
    step = (len(values) - 1) / (points - 1)
    return [values[round(k * step)] for k in range(points)]
