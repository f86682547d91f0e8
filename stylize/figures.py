"""Quality figures of a stylized image, in fixed layers and normalisations: comparable across
runs whatever their own loss, layers, weights or size.

For an output x, its content c and its style s (a blend: its images' statistics averaged
with the blend weights), through the engine's VGG-19 (eager, features in fp64):

- ``content_distance``: ||F(x) - F(c)||^2 / ||F(c)||^2 at relu4_2 (0: the content's
  features exactly);
- ``gram_distance``: mean over relu1_1..relu5_1 of ||G(x) - G(s)||^2 / ||G(s)||^2, with
  G = F F^T / N the Gram matrix per position (0: the style's Gram matrices);
- ``w2_distance``: mean over the same layers of the squared 2-Wasserstein distance between
  the Gaussians of the features, |mu_x - mu_s|^2 + tr(S_x + S_s - 2 (S_s^1/2 S_x
  S_s^1/2)^1/2), divided by the style's tr(S_s) + |mu_s|^2 (0: the style's means and
  covariances);
- ``color_distance``: half the L1 distance between the 32-bin histograms of each RGB
  channel of x and of s, averaged over the channels (0: the same colour distribution, 1:
  disjoint).

The network is always :data:`NETWORK` (the paper's), whatever the run's pooling, padding or
precision, so that the figures of runs with different settings compare. The style's
statistics are taken with its longest side at the output's (as the engine's
default ``style_scale: 1``) and can be kept per style (:class:`StyleStats`). The cost is two
forward passes per item (output and content) and a few small eigen-decompositions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:  # torch is imported where the figures are taken: the names and meanings
    import torch  # are read by the report, which runs without it

    from stylize.config import StyleConfig

CONTENT_LAYER = "relu4_2"
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
TAPS = (*STYLE_LAYERS, CONTENT_LAYER)
HISTOGRAM_BINS = 32
FIGURES = ("content_distance", "gram_distance", "w2_distance", "color_distance")
MEANINGS = {
    "content_distance": "how far the result's relu4_2 features are from the photo's "
    "(relative; 0 = the photo's)",
    "gram_distance": "how far its Gram matrices in relu1_1..relu5_1 are from the style's "
    "(relative; 0 = the style's)",
    "w2_distance": "the Wasserstein-2 distance of its feature Gaussians to the style's "
    "(relative; 0 = the style's)",
    "color_distance": "how different its colour histogram is from the style's "
    "(0 = the same, 1 = disjoint)",
}

Features = Callable[["torch.Tensor", Sequence[str]], "dict[str, torch.Tensor]"]
# The network the figures are taken with, whatever the run's: the paper's (caffe VGG-19
# weights, average pooling, zero padding, no filter rescaling), in fp32.
NETWORK = {"weights": "caffe", "pooling": "avg", "padding": "zeros", "normalize": False}


def network_config(device: str = "auto") -> StyleConfig:
    """The engine options of :data:`NETWORK` (a ``Stylizer`` of them takes the figures)."""
    from stylize.config import resolve_config

    return resolve_config("gatys2016", device=device, precision="fp32", compile=False, **NETWORK)


def same_network(cfg: StyleConfig) -> bool:
    """Whether a run's engine is the figures' network (its features can be used as they are)."""
    fixed = network_config(cfg.device)
    keys = (*NETWORK, "preprocessing")
    return all(getattr(cfg, k) == getattr(fixed, k) for k in keys) and cfg.precision != "bf16"


@dataclass(frozen=True)
class LayerStats:
    gram: torch.Tensor  # (C, C)
    mean: torch.Tensor  # (C,)
    cov_sqrt: torch.Tensor  # (C, C) S^1/2
    cov_trace: float
    scale: float  # tr(S) + |mu|^2


@dataclass(frozen=True)
class StyleStats:
    """A style's statistics in the fixed layers, and its colour histogram."""

    layers: dict[str, LayerStats]
    histogram: torch.Tensor  # (3, HISTOGRAM_BINS), each row sums to 1


def _rows(feat: torch.Tensor) -> torch.Tensor:
    """(1, C, H, W) or (C, H, W) -> (C, N) in fp64."""
    f = feat.reshape(feat.shape[-3], -1)
    return f.double()


def _moments(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Gram per position, mean, covariance) of features (C, N)."""
    import torch

    n = f.shape[1]
    gram = f @ f.T / n
    mean = f.mean(1)
    cov = gram - torch.outer(mean, mean)
    return gram, mean, cov


def _sqrtm(m: torch.Tensor) -> torch.Tensor:
    import torch

    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return torch.matmul(vecs * vals.clamp_min(0).sqrt(), vecs.T)


def histogram(pixels: torch.Tensor) -> torch.Tensor:
    """(3, BINS) normalised per-channel histograms of an image (3, H, W) in 0..255."""
    import torch

    x = pixels.detach().float().clamp(0, 255).reshape(3, -1)
    idx = (x * (HISTOGRAM_BINS / 256.0)).long().clamp_(0, HISTOGRAM_BINS - 1)
    counts = torch.zeros(3, HISTOGRAM_BINS, dtype=torch.float64, device=x.device)
    counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
    return counts / counts.sum(1, keepdim=True)


def _at_side(img: torch.Tensor, side: int) -> torch.Tensor:
    import torch.nn.functional as F

    h, w = img.shape[-2:]
    s = side / max(h, w)
    size = (max(16, round(h * s)), max(16, round(w * s)))
    return F.interpolate(img[None].float(), size=size, mode="area" if s < 1 else "bicubic")[0]


def style_stats(
    features: Features,
    images: Sequence[torch.Tensor],
    weights: Sequence[float],
    side: int,
) -> StyleStats:
    """The statistics of a style (its images (3, H, W) in 0..255, blended with ``weights``)
    at longest side ``side``."""
    import torch

    with torch.no_grad():
        return _style_stats(features, images, weights, side)


def _style_stats(
    features: Features,
    images: Sequence[torch.Tensor],
    weights: Sequence[float],
    side: int,
) -> StyleStats:
    import torch

    total = float(sum(weights))
    acc: dict[str, list[torch.Tensor]] = {}
    hist = None
    for img, w in zip(images, weights):
        share = w / total
        scaled = _at_side(img, side).clamp(0, 255)
        feats = features(scaled[None], STYLE_LAYERS)
        for layer in STYLE_LAYERS:
            gram, mean, _ = _moments(_rows(feats[layer]))
            parts = acc.setdefault(layer, [torch.zeros_like(gram), torch.zeros_like(mean)])
            parts[0] += share * gram
            parts[1] += share * mean
        h = histogram(scaled)
        hist = share * h if hist is None else hist + share * h
    layers = {}
    for layer, (gram, mean) in acc.items():
        cov = gram - torch.outer(mean, mean)
        trace = float(torch.trace(cov))
        layers[layer] = LayerStats(gram, mean, _sqrtm(cov), trace, trace + float(mean @ mean))
    assert hist is not None, "a style has at least one image"
    return StyleStats(layers, hist)


def figures(
    features: Features,
    outputs: torch.Tensor,
    contents: torch.Tensor,
    styles: Sequence[StyleStats],
) -> list[dict[str, float]]:
    """The figures of each output (B, 3, H, W) against its content (B, 3, H, W, same size)
    and style, outputs rounded to 8 bits first (what is delivered)."""
    import torch

    with torch.no_grad():
        return _figures(features, outputs, contents, styles)


def _figures(
    features: Features,
    outputs: torch.Tensor,
    contents: torch.Tensor,
    styles: Sequence[StyleStats],
) -> list[dict[str, float]]:
    import torch

    x = outputs.detach().float().clamp(0, 255).round()
    fx = features(x, TAPS)
    fc = features(contents.float(), (CONTENT_LAYER,))
    out = []
    for i, style in enumerate(styles):
        a, b = _rows(fx[CONTENT_LAYER][i]), _rows(fc[CONTENT_LAYER][i])
        content = float((a - b).pow(2).sum() / b.pow(2).sum().clamp_min(1e-30))
        grams, w2s = [], []
        for layer in STYLE_LAYERS:
            s = style.layers[layer]
            gram, mean, cov = _moments(_rows(fx[layer][i]))
            grams.append(float((gram - s.gram).pow(2).sum() / s.gram.pow(2).sum()))
            cross = s.cov_sqrt @ cov @ s.cov_sqrt
            root = torch.linalg.eigvalsh((cross + cross.T) / 2).clamp_min(0).sqrt().sum()
            w2 = (mean - s.mean).pow(2).sum() + torch.trace(cov) + s.cov_trace - 2 * root
            w2s.append(max(0.0, float(w2)) / max(s.scale, 1e-30))
        colour = float(0.5 * (histogram(x[i]) - style.histogram).abs().sum(1).mean())
        out.append(
            {
                "content_distance": content,
                "gram_distance": sum(grams) / len(grams),
                "w2_distance": sum(w2s) / len(w2s),
                "color_distance": colour,
            }
        )
    return out
