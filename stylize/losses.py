"""The Gatys loss, per image: content (feature MSE), style (Gram MSE), total variation.

Every loss returns one value per image, shape (B,), so a batch is B independent problems:
the gradient of their sum w.r.t. image i is the gradient of loss i alone.

Normalisation (where it departs from the paper): the paper's content loss is a sum of
squared errors and its style loss E_l = 1/(4 N_l^2 M_l^2) sum (G - A)^2 with unnormalised
Gram matrices, which makes the content/style balance depend on the image size. Here the
content loss is the *mean* squared feature error, a Gram matrix is F F^T / (N_l M_l)
(N_l channels, M_l positions) and E_l is the mean squared Gram error: the balance no longer
depends on the size, and alpha/beta keeps the paper's meaning. These are jcjohnson/
neural-style's normalisations, so its weights carry over unchanged.

Numerics and layout: the losses take the features in the dtype and memory layout the network
produced (bf16 and channels-last on a GPU) and accumulate in fp32; their gradients go back in
that same dtype and layout, so nothing is copied or cast between the network and its loss.
The Gram loss has a gradient of one matrix product (``GramLoss``).
"""

from __future__ import annotations

import torch
from torch import nn

# Positions per slice when a Gram's reduction is split (see ``_split``): deep enough that each
# slice's product runs at full speed, shallow enough that the slices fill a GPU at relu1_1.
SPLIT_DEPTH = 4096


def _wide(x: torch.Tensor) -> torch.Tensor:
    """x in fp32 at least (bf16/fp16 upcast, exactly; float64 kept)."""
    return x if x.dtype == torch.float64 else x.float()


def _rows(features: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Features (B, C, H, W) as a matrix per image without a copy: (B, HW, C) rows of
    positions when they are channels-last in memory (True), else (B, C, HW) (False)."""
    b, c, h, w = features.shape
    if c > 1 and h * w > 1 and features.is_contiguous(
            memory_format=torch.channels_last):
        return features.permute(0, 2, 3, 1).reshape(b, h * w, c), True
    return features.reshape(b, c, h * w), False


def _split(n: int) -> int:
    """Slices of the positions' reduction: the divisor k of n nearest to n / SPLIT_DEPTH.

    One product per image at relu1_1 (C = 64, n = 262,144 at 512 px) is one 64x64 output tile:
    a GPU of 132 multiprocessors gets a handful of thread blocks per batch and runs at a few
    percent of its speed. Split into k slices (k x more, shallower products, summed in fp32)
    it fills the GPU. k depends on n only, never on the batch size, so a compiled graph does
    not depend on how many images are in the batch."""
    want = max(1, n // SPLIT_DEPTH)
    best = 1
    for k in range(1, want + 1):
        if n % k == 0:
            best = k
    return best


def _gram_fp32(rows: torch.Tensor, channels_last: bool, split: bool) -> torch.Tensor:
    """(B, C, C) Gram sums in fp32 of a (B, HW, C) or (B, C, HW) matrix (any float dtype:
    bf16 is exact in TF32 and in fp32, so the products accumulate in fp32 either way)."""
    f = _wide(rows)
    with torch.autocast(f.device.type, enabled=False):
        if not channels_last:
            return torch.bmm(f, f.transpose(1, 2))
        b, n, c = f.shape
        k = _split(n) if split else 1
        if k == 1:
            return torch.bmm(f.transpose(1, 2), f)
        parts = f.reshape(b * k, n // k, c)  # a view: rows of positions are contiguous
        return torch.bmm(parts.transpose(1, 2), parts).view(b, k, c, c).sum(1)


def _gram(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(Gram (B, C, C) in fp32, the features as a matrix per image, whether its rows are
    positions): what ``gram`` returns and ``GramLoss`` keeps for its gradient."""
    b, c, h, w = features.shape
    rows, channels_last = _rows(features)
    return _gram_fp32(rows, channels_last, features.is_cuda) / (c * h * w), rows, channels_last


def gram(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, C), F F^T / (C H W), accumulated in fp32."""
    return _gram(features)[0]


class GramLoss(torch.autograd.Function):
    """Mean squared error between the Gram matrix of features (B, C, H, W) and a target
    (B, C, C), per image: (B,).

    Forward: the Gram in fp32 (split over positions on a GPU, see ``_split``). Backward: one
    product, dL/dF = F (E + E^T) 2 / (C^3 HW) with E = G - A (autograd's would be two products
    and a transposed add), in the features' own dtype and layout."""

    @staticmethod
    def forward(ctx, features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        g, rows, channels_last = _gram(features)
        err = g - target
        ctx.save_for_backward(rows, err)
        ctx.meta = (features.shape, channels_last)
        return err.pow(2).mean(dim=(1, 2))

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        rows, err = ctx.saved_tensors
        (b, c, h, w), channels_last = ctx.meta
        scale = _wide(grad_out) * (2.0 / (c ** 3 * h * w))  # (B,)
        d = ((err + err.transpose(1, 2)) * scale[:, None, None]).to(rows.dtype)  # (B, C, C)
        with torch.autocast(rows.device.type, enabled=False):
            if channels_last:  # (B, HW, C) @ (B, C, C): channels-last, as the features were
                grad = torch.bmm(rows, d).view(b, h, w, c).permute(0, 3, 1, 2)
            else:  # (B, C, C) @ (B, C, HW): contiguous
                grad = torch.bmm(d, rows).view(b, c, h, w)
        return grad, None


def style_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) mean squared Gram error of features (B, C, H, W) against targets (B, C, C)."""
    return GramLoss.apply(features, target)


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) mean squared error of features against a target of their shape, in fp32."""
    return (_wide(features) - target).pow(2).flatten(1).mean(1)


def total_variation(pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B,): mean squared difference of neighbouring pixels."""
    dx = (pixels[..., :, 1:] - pixels[..., :, :-1]).pow(2).mean(dim=(1, 2, 3))
    dy = (pixels[..., 1:, :] - pixels[..., :-1, :]).pow(2).mean(dim=(1, 2, 3))
    return dx + dy


def gatys(features: dict[str, torch.Tensor], pixels: torch.Tensor,
          content_targets: dict[str, torch.Tensor], style_targets: dict[str, torch.Tensor],
          weights: torch.Tensor, use_tv: bool) -> tuple[torch.Tensor, ...]:
    """(total, content, style, tv), each (B,): the whole loss as one pure function of tensors
    (what a compiled objective traces). ``weights`` (fp32): the content layers' weights,
    then the style layers', then alpha, beta and the TV weight, in the targets' order; held as
    a tensor so that another weight (a sweep) does not build another compiled graph."""
    nc, ns = len(content_targets), len(style_targets)
    content = sum(weights[i] * content_loss(features[k], t)
                  for i, (k, t) in enumerate(content_targets.items()))
    style = sum(weights[nc + i] * style_loss(features[k], t)
                for i, (k, t) in enumerate(style_targets.items()))
    zero = pixels.new_zeros(pixels.shape[0], dtype=torch.float32)
    content = zero + content  # (B,) also without content layers
    style = zero + style
    tv = total_variation(pixels.float()) if use_tv else zero
    alpha, beta, tv_weight = weights[nc + ns], weights[nc + ns + 1], weights[nc + ns + 2]
    total = alpha * content + beta * style + tv_weight * tv
    return total, content, style, tv


class GatysLoss(nn.Module):
    """alpha * sum_l w_l content_l + beta * sum_l w_l style_l + tv * TV, per image.

    Holds the targets of one batch: content activations (B, C, H, W) and style Grams
    (B, C, C), as buffers. ``forward(features, pixels)`` returns (total, content, style, tv),
    each (B,); the content and style parts are weighted by their layer weights but not by
    alpha/beta. ``terms()`` gives the same loss as tensors for ``gatys`` (the compiled path).
    """

    def __init__(self, content_targets: dict[str, torch.Tensor],
                 style_grams: dict[str, torch.Tensor],
                 content_layer_weights: dict[str, float], style_layer_weights: dict[str, float],
                 content_weight: float, style_weight: float, tv_weight: float):
        super().__init__()
        self.content_targets = {k: v.float() for k, v in content_targets.items()}
        self.style_targets = {k: v.float() for k, v in style_grams.items()}
        self.cw, self.sw = dict(content_layer_weights), dict(style_layer_weights)
        self.alpha, self.beta, self.tv_weight = content_weight, style_weight, tv_weight
        device = next(iter({**self.content_targets, **self.style_targets}.values()),
                      torch.zeros(0)).device
        self.weights = torch.tensor(
            [self.cw[k] for k in self.content_targets] + [self.sw[k] for k in self.style_targets]
            + [content_weight, style_weight, tv_weight], dtype=torch.float32, device=device)

    def terms(self) -> tuple[dict, dict, torch.Tensor, bool]:
        """(content targets, style targets, weights, use_tv): ``gatys``'s arguments."""
        return self.content_targets, self.style_targets, self.weights, bool(self.tv_weight)

    def forward(self, features: dict[str, torch.Tensor], pixels: torch.Tensor):
        return gatys(features, pixels, *self.terms())

    def select(self, rows: torch.Tensor) -> "GatysLoss":
        """The same loss for a subset of the batch: ``rows`` (K,) indexes the images."""
        return GatysLoss({k: t[rows] for k, t in self.content_targets.items()},
                         {k: t[rows] for k, t in self.style_targets.items()},
                         self.cw, self.sw, self.alpha, self.beta, self.tv_weight)


def layer_weights(layers: tuple[str, ...], weights: tuple[float, ...] | None) -> dict[str, float]:
    """Explicit weights, or equal weights summing to 1 (the paper's w_l = 1/5)."""
    if weights is None:
        weights = tuple(1.0 / len(layers) for _ in layers)
    return dict(zip(layers, weights))
