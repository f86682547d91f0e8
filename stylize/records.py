"""What goes into the engine and what comes out of it: a ``Style`` (decoded images, blended),
an image's ``Regions`` (spatial control), the ``StepInfo`` each logging step sends to the
callback, and an ``ItemResult`` per image. Importable from ``stylize.engine`` as well."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class Style:
    """A style as the engine uses it: one or more decoded images (3, H, W) in 0..255,
    blended by weight; no URIs (the pipeline's ``StyleRef`` names the files).

    ``key`` names the style for the target cache: two Styles with one key must be equal.
    """

    key: str
    images: tuple[torch.Tensor, ...]
    weights: tuple[float, ...] | None = None  # None: equal

    def blend(self) -> list[float]:
        w = self.weights or tuple(1.0 for _ in self.images)
        if len(w) != len(self.images) or any(v < 0 for v in w) or sum(w) <= 0:
            raise ValueError(
                f"style {self.key!r}: {len(w)} blend weights for "
                f"{len(self.images)} images; weights must be >= 0, not all 0"
            )
        return [v / sum(w) for v in w]


@dataclass(frozen=True)
class ItemResult:
    image: torch.Tensor  # (3, H, W) float 0..255 on the CPU
    iterations: int  # evaluations used, all scales together
    content_loss: float  # sum_l w_l content_l (before alpha)
    style_loss: float  # sum_l w_l style_l (before beta)
    tv_loss: float
    total_loss: float  # alpha * content + beta * style + tv_weight * tv


@dataclass(frozen=True)
class StepInfo:
    """What leaves the optimiser at each logging step (a device sync)."""

    scale: int  # 0-based index into cfg.scales
    scales: int
    step: int  # evaluations done at this scale
    steps: int  # evaluations of this scale (cfg.schedule)
    losses: tuple[float, ...]  # total loss per image
    active: int  # images still optimising
    pixels: torch.Tensor  # (B, 3, h, w) current images, 0..255, on the device; do not modify


Callback = Callable[[StepInfo], None]

# One image's regions (spatial control, ``stylize.masks``): (style, mask) pairs, each mask a
# greyscale (H, W) in 0..1 at the content's size (white: the style applies).
Regions = Sequence[tuple[Style, torch.Tensor]]
