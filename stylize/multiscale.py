"""One chunk of same-size images optimised scale by scale (``cfg.schedule``, coarse to fine):
at each scale the canvas (the contents resized, a reflected margin around them), the start
image (``init``, then the last scale's result resized), the batch's loss, the batched
optimiser; progress leaves through the callback as ``StepInfo``; each image's result, its
margin cropped, as an ``ItemResult``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from stylize import color
from stylize.batchloss import Engine as LossEngine
from stylize.batchloss import batch_loss
from stylize.canvas import crop, margin_pixels, pad, resize, scale_shape, start_image
from stylize.config import StyleConfig
from stylize.losses import GatysLoss
from stylize.masks import stack_masks
from stylize.objective import Objective
from stylize.optim import StepHook, Stopping, optimize
from stylize.records import Callback, ItemResult, Regions, StepInfo, Style

Step = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]


class Engine(LossEngine, Protocol):
    """What a chunk's run needs of a ``Stylizer``."""

    objective: Objective


def optimize_chunk(
    engine: Engine,
    contents: Sequence[torch.Tensor],
    styles: Sequence[Style],
    callback: Callback | None,
    init: Sequence[torch.Tensor] | None,
    iterations: int | None,
    cfg: StyleConfig,
    regions: Sequence[Regions | None] | None = None,
) -> list[ItemResult]:
    """Stylize one chunk (``Stylizer.stylize_batch``'s arguments, sliced) on the engine's
    device, under its numerics."""
    schedule = (
        cfg.schedule if not iterations else tuple((scale, iterations) for scale, _ in cfg.schedule)
    )
    device = engine.device
    full = torch.stack([c.float() for c in contents]).to(device)  # (B, 3, H, W)
    grey = cfg.preserve_colors == "luminance"
    target = color.luminance(full) if grey else full
    x = None if init is None else torch.stack([i.float() for i in init]).to(device)
    used = torch.zeros(len(contents), dtype=torch.long, device=device)
    taps = cfg.content_layers + cfg.style_layers
    for si, (scale, steps) in enumerate(schedule):
        h, w = scale_shape(full.shape[-2], full.shape[-1], scale)
        m = margin_pixels(cfg.margin, h, w)
        content = pad(resize(target, h, w), m)  # (B, 3, h + 2m, w + 2m)
        x = (
            _uncovered_kept(
                start_image(content, h + 2 * m, w + 2 * m, cfg, device), content, regions, m
            )
            if x is None
            else pad(resize(x, h, w), m)
        )
        loss = batch_loss(engine, content, styles, cfg, max(h, w), regions, m)
        out = optimize(
            x,
            _step(engine.objective, loss, taps),
            steps,
            cfg.optimizer,
            cfg.effective_lr,
            cfg.history_size,
            Stopping(cfg.early_stopping, cfg.tolerance, cfg.window),
            _hook(callback, si, len(schedule), steps, m),
            cfg.log_every,
            narrow=_narrow(engine.objective, loss, taps),
        )
        x, used = crop(out.pixels, m), used + out.iterations
    assert x is not None, "a schedule has at least one scale"
    losses = out.losses
    if m:  # report the losses of the picture delivered, without its margin
        with torch.no_grad():
            x = x.contiguous()
            loss = batch_loss(engine, crop(content, m), styles, cfg, max(h, w), regions)
            losses = loss(engine.features(x, taps), x)
    pixels = color.combine_luminance(x, full) if grey else x
    total, content_l, style_l, tv = (t.tolist() for t in losses)
    images = pixels.clamp(0, 255).cpu()
    return [
        ItemResult(images[i], int(used[i]), content_l[i], style_l[i], tv[i], total[i])
        for i in range(len(contents))
    ]


def _uncovered_kept(
    start: torch.Tensor,
    content: torch.Tensor,
    regions: Sequence[Regions | None] | None,
    m: int,
) -> torch.Tensor:
    """The start image with the content where no region's mask covers (spatial control): the
    content loss alone rebuilds such a part from noise only slowly, while the styled regions'
    loss, much larger, sets L-BFGS's steps (on three photos at 256 px, 150 steps from noise,
    the unstyled half ended 9-20x further from the photo in relu4_2 than a content-only run).
    Soft masks blend the two; images without regions, and ``init: content``, are unchanged."""
    if regions is None or all(r is None for r in regions):
        return start
    hh, ww = content.shape[-2] - 2 * m, content.shape[-1] - 2 * m
    cover = torch.ones(content.shape[0], 1, hh, ww)
    for i, r in enumerate(regions):
        if r is not None:
            cover[i, 0] = stack_masks([r], hh, ww)[0].sum(0).clamp(0, 1)
    cover = pad(cover.to(start.device, start.dtype), m)
    return start * cover + content.to(start.dtype) * (1 - cover)


def _step(objective: Objective, loss: GatysLoss, taps: tuple[str, ...]) -> Step:
    """The loss of pixels (B, 3, h, w) as the optimiser calls it."""
    return lambda px: objective(px, loss, taps)


def _narrow(
    objective: Objective, loss: GatysLoss, taps: tuple[str, ...]
) -> Callable[[torch.Tensor], Step]:
    """The step of the images ``rows`` of this batch only (images that stopped leave it)."""
    return lambda rows: _step(objective, loss.select(rows), taps)


def _hook(
    callback: Callback | None, scale: int, scales: int, steps: int, margin: int = 0
) -> StepHook | None:
    if callback is None:
        return None

    def hook(step: int, losses: torch.Tensor, active: torch.Tensor, pixels: torch.Tensor) -> None:
        callback(
            StepInfo(
                scale,
                scales,
                step,
                steps,
                tuple(losses.tolist()),
                int(active.sum()),
                crop(pixels, margin),
            )
        )

    return hook
