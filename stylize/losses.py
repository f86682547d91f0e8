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
"""

from __future__ import annotations

import torch
from torch import nn


def gram(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, C), F F^T / (C H W), accumulated in fp32."""
    b, c, h, w = features.shape
    f = features.reshape(b, c, h * w).float()  # (B, C, HW)
    with torch.autocast(f.device.type, enabled=False):  # keep the products in fp32
        return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


def total_variation(pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B,): mean squared difference of neighbouring pixels."""
    dx = (pixels[..., :, 1:] - pixels[..., :, :-1]).pow(2).mean(dim=(1, 2, 3))
    dy = (pixels[..., 1:, :] - pixels[..., :-1, :]).pow(2).mean(dim=(1, 2, 3))
    return dx + dy


class ContentLoss(nn.Module):
    """Mean squared error to a per-image target activation (B, C, H, W)."""

    def __init__(self, target: torch.Tensor):
        super().__init__()
        self.register_buffer("target", target.float())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (features.float() - self.target).pow(2).flatten(1).mean(1)  # (B,)


class StyleLoss(nn.Module):
    """Mean squared error between Gram matrices; target (B, C, C), one per image."""

    def __init__(self, target_gram: torch.Tensor):
        super().__init__()
        self.register_buffer("target", target_gram.float())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (gram(features) - self.target).pow(2).flatten(1).mean(1)  # (B,)


class GatysLoss(nn.Module):
    """alpha * sum_l w_l content_l + beta * sum_l w_l style_l + tv * TV, per image.

    ``forward(features, pixels)`` returns (total, content, style, tv), each (B,); the content
    and style parts are weighted by their layer weights but not by alpha/beta.
    """

    def __init__(self, content_targets: dict[str, torch.Tensor],
                 style_grams: dict[str, torch.Tensor],
                 content_layer_weights: dict[str, float], style_layer_weights: dict[str, float],
                 content_weight: float, style_weight: float, tv_weight: float):
        super().__init__()
        self.content = nn.ModuleDict({k: ContentLoss(v) for k, v in content_targets.items()})
        self.style = nn.ModuleDict({k: StyleLoss(v) for k, v in style_grams.items()})
        self.cw, self.sw = dict(content_layer_weights), dict(style_layer_weights)
        self.alpha, self.beta, self.tv_weight = content_weight, style_weight, tv_weight

    def forward(self, features: dict[str, torch.Tensor], pixels: torch.Tensor):
        content = sum(self.cw[k] * m(features[k]) for k, m in self.content.items())
        style = sum(self.sw[k] * m(features[k]) for k, m in self.style.items())
        tv = total_variation(pixels.float()) if self.tv_weight else pixels.new_zeros(
            pixels.shape[0], dtype=torch.float32)
        total = self.alpha * content + self.beta * style + self.tv_weight * tv
        return total, content, style, tv

    def select(self, rows: torch.Tensor) -> "GatysLoss":
        """The same loss for a subset of the batch: ``rows`` (K,) indexes the images."""
        return GatysLoss({k: m.target[rows] for k, m in self.content.items()},
                         {k: m.target[rows] for k, m in self.style.items()},
                         self.cw, self.sw, self.alpha, self.beta, self.tv_weight)


def layer_weights(layers: tuple[str, ...], weights: tuple[float, ...] | None) -> dict[str, float]:
    """Explicit weights, or equal weights summing to 1 (the paper's w_l = 1/5)."""
    if weights is None:
        weights = tuple(1.0 / len(layers) for _ in layers)
    return dict(zip(layers, weights))
