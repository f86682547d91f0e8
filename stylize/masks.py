"""Spatial control (Gatys et al. 2017, "Controlling Perceptual Factors in Neural Style
Transfer"): styles confined to regions of the picture by guidance masks.

A region is a (style, mask) pair; a mask is a greyscale tensor (H, W) in 0..1 at the content's
size (white: this style applies; soft masks weigh positions in between). The style targets stay
the statistics of the whole style image (cached as without masks); what changes is the output's
side: per layer its *guided* statistics, every position weighed by the region's mask there,

    G_r = F diag(w_r) F^T / C,  w_r = m_r / sum(m_r)

(the Gram matrix of ``losses.gram`` when m_r is 1 everywhere), and for ``wasserstein2`` and
``mean_std`` the m_r-weighted mean, second moment and variances. Each layer's mask is the mask
area-resized to the layer, then eroded (a min-pool) by a radius that grows with the depth of the
layer (``erosion_radius``) against the positions no region covers: a deep neuron whose receptive
field reaches into a part without a style does not count for the style beside it, so the style
does not bleed into a part that keeps its content. Where two styled regions meet, a boundary
neuron counts for both, each weighing it by its own mask there: eroding both sides there would
leave a seam (16 to 32 px wide at 512 px) where no style applies at the deep layers and the
content shows through as a pale strip. A region too small to survive its erosion keeps its
un-eroded mask.

Each region's loss is weighted by its share of the picture (the mean of its un-eroded mask over
the layer's positions): with one white mask the loss is the unmasked one; where no mask covers,
there is no style loss (the content loss keeps that part close to the content).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from stylize.config import LAYER_NAMES
from stylize.losses import (
    GatysLoss,
    _wide,
    content_loss,
    mean_std_distance,
    total_variation,
    wasserstein2_distance,
)

# The erosion of a layer's mask, as a fraction of the half-width of the layer's receptive field
# (in the layer's own positions). 1 would be the paper's "inside" guidance (a neuron counts only
# if its whole receptive field is inside the region); the receptive field's effective part is
# much narrower than its full extent, and a full erosion removes small regions at small sizes.
EROSION = 0.5


def receptive_field(layer: str) -> tuple[int, int]:
    """(receptive field in input pixels, stride in input pixels) of a VGG-19 layer."""
    rf, jump = 1, 1
    for name in LAYER_NAMES:
        if name.startswith("conv"):
            rf += 2 * jump  # 3x3, stride 1
        elif name.startswith("pool"):
            rf += jump  # 2x2, stride 2
            jump *= 2
        if name == layer:
            return rf, jump
    raise ValueError(f"unknown layer {layer!r}")


def erosion_radius(layer: str, erosion: float = EROSION) -> int:
    """Positions of the layer by which its mask is eroded: ``erosion`` x the half-width of its
    receptive field in its own positions (relu1_1: 0, relu2_1..relu3_1: 1, relu4_1..relu5_1:
    2, i.e. 0, 2, 4, 16 and 32 input pixels)."""
    rf, jump = receptive_field(layer)
    return int(round(erosion * (rf - 1) / 2 / jump))


def mask_tensor(img: Image.Image | torch.Tensor) -> torch.Tensor:
    """A mask (H, W) float 0..1 from a PIL image (greyscale of it: white 1) or a tensor
    (H, W), (1, H, W) or (3, H, W) in 0..1 (channels averaged)."""
    if isinstance(img, Image.Image):
        grey = img.convert("L")
        t = torch.frombuffer(bytearray(grey.tobytes()), dtype=torch.uint8)
        return t.view(grey.height, grey.width).float() / 255.0
    t = torch.as_tensor(img).float()
    if t.dim() == 3:
        t = t.mean(0)
    if t.dim() != 2:
        raise ValueError(f"a mask is (H, W) in 0..1, got shape {tuple(img.shape)}")
    return t.clamp(0, 1)


MASK_ASPECT_TOLERANCE = 0.02  # a mask's aspect ratio may differ from its content's this much


def checked_mask(
    img: Image.Image,
    name: str,
    shape: tuple[int, int],
    content_size: tuple[int, int],
    foreground: bool = True,
    background: bool = False,
) -> torch.Tensor:
    """A content's mask from its image: greyscale in 0..1 (white 1; a label map of only 0 and
    1 is read as black and white), resized to the content's working ``shape`` (h, w).
    ``content_size``: the content's own (width, height), whose aspect ratio the mask must
    have. ImageError for another aspect ratio, or a mask under which no styled side
    (``foreground``: white, ``background``: black) covers anything."""
    from stylize.images import ImageError

    (mw, mh), (cw, ch) = img.size, content_size
    if abs(mw - mh * cw / ch) > max(1.0, MASK_ASPECT_TOLERANCE * mw):
        raise ImageError(
            f"{name}: {mw}x{mh}, not the aspect ratio of its content ({cw}x{ch}); "
            "is it the mask of another image?"
        )
    m = mask_tensor(img)
    if float(m.max()) <= 1.5 / 255:  # 0/1 labels (a segmentation map saved as is)
        m = (m > 0).float()
    m = resize_masks(m[None, None], *shape)[0, 0]
    covered = (foreground and float(m.max()) > 0.5 / 255) or (
        background and float(m.min()) < 1 - 0.5 / 255
    )
    if not covered:
        side = " and ".join(
            w
            for w, on in (("white (foreground)", foreground), ("black (background)", background))
            if on
        )
        raise ImageError(
            f"{name}: blank: no {side} anywhere, so the output would be the content; "
            "white marks the foreground, black the background"
        )
    return m


def resize_masks(masks: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, R, H, W) masks -> (B, R, h, w), bilinear (antialiased when shrinking), 0..1."""
    if tuple(masks.shape[-2:]) == (h, w):
        return masks
    out = F.interpolate(
        masks, size=(h, w), mode="bilinear", align_corners=False, antialias=h < masks.shape[-2]
    )
    return out.clamp(0, 1)


def stack_masks(
    regions: Sequence[Sequence[tuple[Any, torch.Tensor]]], h: int, w: int
) -> torch.Tensor:
    """(B, R, h, w) masks of per-row regions (R: the most regions of a row; rows with fewer
    have all-zero masks after theirs), each mask resized to (h, w)."""
    r = max(len(row) for row in regions)
    out = torch.zeros(len(regions), r, h, w)
    for i, row in enumerate(regions):
        for j, (_, m) in enumerate(row):
            t = mask_tensor(m)
            out[i, j] = resize_masks(t[None, None], h, w)[0, 0]
    return out


def layer_guides(
    masks: torch.Tensor, shape: tuple[int, int], layer: str, erosion: float = EROSION
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights (B, R, h*w), shares (B, R)) of masks (B, R, H, W) at a layer of feature size
    ``shape``: the mask area-resized and eroded against the positions no region covers (the
    min-pool of the regions' summed coverage, capped at the mask), normalised to sum 1 per
    region (all 0 where a region is empty); the share is the mean of the un-eroded resized
    mask."""
    m = F.adaptive_avg_pool2d(masks.float(), shape).clamp(0, 1)  # area interpolation
    shares = m.mean(dim=(2, 3))
    r = erosion_radius(layer, erosion)
    if r:  # eroded where no style applies, not where another region's style does
        covered = m.sum(1, keepdim=True).clamp(max=1)
        eroded = torch.minimum(m, -F.max_pool2d(-covered, 2 * r + 1, stride=1, padding=r))
    else:
        eroded = m
    kept = eroded.sum(dim=(2, 3), keepdim=True)
    eroded = torch.where(kept > 0.5, eroded, m)  # too small to erode: the region unchanged
    flat = eroded.flatten(2)
    total = flat.sum(-1, keepdim=True)
    return flat / total.clamp_min(1e-12), shares


# -- guided losses: each (features (B, C, H, W), weights (B, R, N), target tensors (B, R, ...))
# -> (B, R); the statistics weighted per region, in fp32 at least, autocast off.


def _second(f: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(B, R, C, C) weighted second moments sum_n w_rn f_n f_n^T of f (B, C, N)."""
    return torch.einsum("bcn,brn,bdn->brcd", f, w, f)


def _mean(f: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(B, R, C) weighted means sum_n w_rn f_n of f (B, C, N)."""
    return torch.einsum("bcn,brn->brc", f, w)


def _flat(features: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (B, C, N) in fp32 at least, the weights in their dtype)."""
    f = _wide(features).flatten(2)
    return f, w.to(f.dtype)


def guided_gram_loss(features: torch.Tensor, w: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    f, wf = _flat(features, w)
    with torch.autocast(f.device.type, enabled=False):
        g = _second(f, wf) / f.shape[1]
        return (g - target).pow(2).mean(dim=(2, 3))


def guided_wasserstein2_loss(
    features: torch.Tensor,
    w: torch.Tensor,
    mean: torch.Tensor,
    cov: torch.Tensor,
    root: torch.Tensor,
    eps: torch.Tensor,
    scale: torch.Tensor,
) -> torch.Tensor:
    f, wf = _flat(features, w)
    with torch.autocast(f.device.type, enabled=False):
        mu, m2 = _mean(f, wf).to(cov.dtype), _second(f, wf).to(cov.dtype)
        return wasserstein2_distance(mu, m2, (mean, cov, root, eps, scale)).to(f.dtype)


def guided_mean_std_loss(
    features: torch.Tensor,
    w: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    eps: torch.Tensor,
    scale: torch.Tensor,
) -> torch.Tensor:
    f, wf = _flat(features, w)
    with torch.autocast(f.device.type, enabled=False):
        mu = _mean(f, wf)
        var = (_mean(f * f, wf) - mu.pow(2)).clamp_min(0)
        return mean_std_distance(mu, var, (mean, std, eps, scale)).to(f.dtype)


GUIDED_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "gram": guided_gram_loss,
    "wasserstein2": guided_wasserstein2_loss,
    "mean_std": guided_mean_std_loss,
}


class GuidedGatysLoss(GatysLoss):
    """``GatysLoss`` with regions: each style target (B, R, ...) is one region's (R: regions
    per image), compared with the output's statistics guided by that region's layer weights
    (``layer_guides``), weighted by its share. Runs eager (``Objective``)."""

    guided = True

    def __init__(
        self,
        content_targets: dict[str, torch.Tensor],
        style_targets: dict[str, tuple[torch.Tensor, ...]],
        guides: dict[str, tuple[torch.Tensor, torch.Tensor]],
        content_layer_weights: dict[str, float],
        style_layer_weights: dict[str, float],
        content_weight: float,
        style_weight: float,
        tv_weight: float,
        style_kind: str = "gram",
    ):
        super().__init__(
            content_targets,
            style_targets,
            content_layer_weights,
            style_layer_weights,
            content_weight,
            style_weight,
            tv_weight,
            style_kind,
        )
        self.guides = dict(guides)

    def forward(
        self, features: dict[str, torch.Tensor], pixels: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        nc, ns = len(self.content_targets), len(self.style_targets)
        weights = self.weights
        layer_style = GUIDED_LOSSES[self.style_kind]
        zero = pixels.new_zeros(pixels.shape[0], dtype=torch.float32)
        content = zero + sum(
            weights[i] * content_loss(features[k], t)
            for i, (k, t) in enumerate(self.content_targets.items())
        )
        style = zero
        for i, (k, t) in enumerate(self.style_targets.items()):
            w, shares = self.guides[k]
            per_region = layer_style(features[k], w, *t)  # (B, R)
            style = style + weights[nc + i] * (shares * per_region).sum(1).float()
        tv = total_variation(pixels.float()) if self.tv_weight else zero
        alpha, beta, tv_weight = weights[nc + ns], weights[nc + ns + 1], weights[nc + ns + 2]
        total = alpha * content + beta * style + tv_weight * tv
        return total, content, style, tv

    def select(self, rows: torch.Tensor) -> GuidedGatysLoss:
        return GuidedGatysLoss(
            {k: t[rows] for k, t in self.content_targets.items()},
            {k: tuple(x[rows] for x in t) for k, t in self.style_targets.items()},
            {k: (w[rows], s[rows]) for k, (w, s) in self.guides.items()},
            self.cw,
            self.sw,
            self.alpha,
            self.beta,
            self.tv_weight,
            self.style_kind,
        )
