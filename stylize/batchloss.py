"""The loss of one batch: the contents' features, each image's style targets stacked into a
batch, the layer weights and alpha, beta, TV (``GatysLoss``); with regions (``stylize.masks``)
the targets per region and each style layer's guides from the masks (``GuidedGatysLoss``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from stylize.canvas import pad
from stylize.config import StyleConfig
from stylize.losses import GatysLoss, layer_weights
from stylize.masks import GuidedGatysLoss, layer_guides, stack_masks
from stylize.records import Regions, Style
from stylize.targets import Target

StyleTargets = dict[str, tuple[torch.Tensor, ...]]  # {layer: target tensors (B, ...)}


class Engine(Protocol):
    """What a batch's loss needs of a ``Stylizer``."""

    device: torch.device

    def features(self, pixels: torch.Tensor, taps: Sequence[str]) -> dict[str, torch.Tensor]: ...

    def style_targets(
        self, style: Style, longest: int, content: torch.Tensor | None, options: StyleConfig
    ) -> dict[str, Target]: ...


@torch.no_grad()
def batch_loss(
    engine: Engine,
    content: torch.Tensor,
    styles: Sequence[Style],
    cfg: StyleConfig,
    longest: int,
    regions: Sequence[Regions | None] | None = None,
    margin: int = 0,
) -> GatysLoss:
    """The loss of contents (B, 3, h, w), ``styles[i]`` for image i at a content's longest
    side ``longest``; with ``regions`` (``Stylizer.stylize_batch``) a ``GuidedGatysLoss``, the
    masks padded by the contents' reflected ``margin``."""
    if regions is not None and any(r is not None for r in regions):
        return _guided(engine, content, styles, regions, cfg, longest, margin)
    per_image = cfg.preserve_colors != "none"
    targets = [
        engine.style_targets(s, longest, content[i] if per_image else None, cfg)
        for i, s in enumerate(styles)
    ]
    feats = engine.features(content, cfg.content_layers)
    stacked = {
        k: tuple(torch.stack(parts) for parts in zip(*(t[k] for t in targets)))
        for k in cfg.style_layers
    }
    return _loss(cfg, feats, stacked)


def _guided(
    engine: Engine,
    content: torch.Tensor,
    styles: Sequence[Style],
    regions: Sequence[Regions | None],
    cfg: StyleConfig,
    longest: int,
    margin: int,
) -> GatysLoss:
    per_image = cfg.preserve_colors != "none"
    ones = torch.ones(1, 1)
    rows: list[Regions] = [
        r if r is not None else [(s, ones)] for r, s in zip(regions, styles, strict=True)
    ]
    h, w = content.shape[-2] - 2 * margin, content.shape[-1] - 2 * margin
    masks = pad(stack_masks(rows, h, w).to(engine.device), margin)  # (B, R, H, W)
    targets = [
        [engine.style_targets(s, longest, content[i] if per_image else None, cfg) for s, _ in row]
        for i, row in enumerate(rows)
    ]
    nreg = masks.shape[1]
    feats = engine.features(content, cfg.content_layers + cfg.style_layers)
    stacked = {  # (B, R, ...): a row with fewer regions repeats its last (mask 0)
        k: tuple(
            torch.stack(
                [torch.stack([t[min(r, len(t) - 1)][k][j] for r in range(nreg)]) for t in targets]
            )
            for j in range(len(targets[0][0][k]))
        )
        for k in cfg.style_layers
    }
    guides = {
        k: layer_guides(masks, (int(feats[k].shape[-2]), int(feats[k].shape[-1])), k)
        for k in cfg.style_layers
    }
    return _loss(cfg, feats, stacked, guides)


def _loss(
    cfg: StyleConfig,
    feats: dict[str, torch.Tensor],
    style_targets: StyleTargets,
    guides: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> GatysLoss:
    """The loss module of content features and stacked style targets, weighted as ``cfg``
    says (guided where there are ``guides``)."""
    content_targets = {k: feats[k].float() for k in cfg.content_layers}
    weights = (
        layer_weights(cfg.content_layers, cfg.content_layer_weights),
        layer_weights(cfg.style_layers, cfg.style_layer_weights),
        cfg.content_weight,
        cfg.style_weight,
        cfg.tv_weight,
    )
    if guides is None:
        return GatysLoss(content_targets, style_targets, *weights, cfg.style_loss)
    return GuidedGatysLoss(content_targets, style_targets, guides, *weights, cfg.style_loss)
