"""Quality figures of a stylized image, in fixed layers and normalisations: comparable across
runs whatever their own loss, layers, weights or size.

For an output x (rounded to 8 bits: the picture delivered), its content c (at the output's
size) and its style s (a blend: its images' statistics averaged with the blend weights),
through :data:`NETWORK` (eager, fp32; covariances and the matrices after them in fp64):

- ``content_distance``: ||F(x) - F(c)||^2 / ||F(c)||^2 at relu4_2, i.e. the mean squared
  error of the features divided by the content's mean squared feature, so that sizes compare
  (0: the content's features exactly; 1: as far as no features at all);
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
default ``style_scale: 1``) and can be kept per style (:class:`StyleStats`).

Cost (:class:`FigureTaker`, as the pipeline's worker uses it): per batch one forward pass of
the outputs to relu5_1, one to relu4_2 of each content not met before (a content under k
styles goes through once), per style layer one batched eigen-decomposition (C x C), and the
style's statistics once per style and size. A figure that cannot be taken is None, never an
error (``FigureTaker.take``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where the figures are taken: the names and meanings
    import torch  # are read by the report, which runs without it

    from stylize.config import StyleConfig
    from stylize.engine import Style, Stylizer

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


def _moments(feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Gram per position, mean, covariance) in fp64 of one image's features (C, H, W).
    The products are taken in fp32 on centred features (no cancellation), then widened."""
    import torch

    f = feat.reshape(feat.shape[0], -1).float()  # (C, N)
    mean = f.mean(1)
    centred = f - mean[:, None]
    cov = (centred @ centred.T / f.shape[1]).double()  # (C, C)
    mean64 = mean.double()
    return cov + torch.outer(mean64, mean64), mean64, cov


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
    at longest side ``side``: the weighted means of its images' Gram matrices and feature
    means (the moments of the pooled features), and of their histograms."""
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
            gram, mean, _ = _moments(feats[layer][0])
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
) -> list[dict[str, float | None]]:
    """The figures of each output (B, 3, H, W) against its content (B, 3, H, W, same size)
    and style, outputs rounded to 8 bits first (what is delivered). Two forward passes (the
    outputs, the contents); :class:`FigureTaker` spares the second where it can."""
    import torch

    with torch.no_grad():
        fc = features(contents.float(), (CONTENT_LAYER,))[CONTENT_LAYER]
        return _figures(features, outputs, fc, styles)


def _guarded(
    name: str, n: int, compute: Callable[[], list[float]], failed: list[str]
) -> list[float | None]:
    """``compute()`` (one value per item), or n Nones when it raises: a figure that cannot
    be taken never takes the others with it. ``failed`` collects the reasons."""
    try:
        return list(compute())
    except Exception as e:  # noqa: BLE001 - the caller logs; the rows get nulls
        failed.append(f"{name}: {type(e).__name__}: {' '.join(str(e).split())[:200]}")
        return [None] * n


def _mean_of_layers(per_layer: list[torch.Tensor]) -> list[float]:
    """Per item, the mean over the layers (equal weights) of (B,) values per layer."""
    import torch

    values: list[float] = torch.stack(per_layer).mean(0).tolist()
    return values


def _figures(
    features: Features,
    outputs: torch.Tensor,
    content_feats: torch.Tensor,
    styles: Sequence[StyleStats],
    failed: list[str] | None = None,
) -> list[dict[str, float | None]]:
    """The figures of outputs (B, 3, H, W) given their contents' CONTENT_LAYER features
    (B, C, h, w): one forward pass, to relu5_1. ``failed`` collects what could not be taken."""
    import torch

    failed = [] if failed is None else failed
    n = len(styles)
    x = outputs.detach().float().clamp(0, 255).round()  # the delivered 8-bit picture
    colour = _guarded(
        "color_distance",
        n,
        lambda: [
            float(0.5 * (histogram(x[i]) - styles[i].histogram.to(x.device)).abs().sum(1).mean())
            for i in range(n)
        ],
        failed,
    )
    try:
        fx = features(x, TAPS)  # the one forward pass of the outputs
    except Exception as e:  # noqa: BLE001 - e.g. out of memory: the network figures are null
        failed.append(f"network: {type(e).__name__}: {' '.join(str(e).split())[:200]}")
        fx = None

    def content() -> list[float]:
        assert fx is not None
        a = fx[CONTENT_LAYER].flatten(1).double()  # (B, C*h*w)
        b = content_feats.to(a.device).flatten(1).double()
        return ((a - b).pow(2).sum(1) / b.pow(2).sum(1).clamp_min(1e-30)).tolist()

    moments: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def layer_moments(layer: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if layer not in moments:
            assert fx is not None
            per = [_moments(fx[layer][i]) for i in range(n)]
            moments[layer] = tuple(torch.stack(parts) for parts in zip(*per))  # type: ignore[assignment]
        return moments[layer]

    def gram() -> list[float]:
        per_layer = []
        for layer in STYLE_LAYERS:
            g = layer_moments(layer)[0]  # (B, C, C)
            target = torch.stack([s.layers[layer].gram.to(g.device) for s in styles])
            per_layer.append((g - target).pow(2).sum((1, 2)) / target.pow(2).sum((1, 2)))
        return _mean_of_layers(per_layer)

    def w2() -> list[float]:
        per_layer = []
        for layer in STYLE_LAYERS:
            _, mean, cov = layer_moments(layer)  # (B, C), (B, C, C)
            stats = [s.layers[layer] for s in styles]
            root = torch.stack([s.cov_sqrt.to(cov.device) for s in stats])  # (B, C, C)
            cross = root @ cov @ root
            # tr((S_s^1/2 S_x S_s^1/2)^1/2): the square roots of its eigenvalues, summed
            traces = torch.linalg.eigvalsh((cross + cross.mT) / 2).clamp_min(0).sqrt().sum(-1)
            s_mean = torch.stack([s.mean.to(mean.device) for s in stats])
            s_trace = mean.new_tensor([s.cov_trace for s in stats])
            scale = mean.new_tensor([s.scale for s in stats]).clamp_min(1e-30)
            d2 = (mean - s_mean).pow(2).sum(1) + cov.diagonal(0, 1, 2).sum(1) + s_trace
            per_layer.append((d2 - 2 * traces).clamp_min(0) / scale)
        return _mean_of_layers(per_layer)

    if fx is None:
        nothing: list[float | None] = [None] * n
        found = {"content_distance": nothing, "gram_distance": nothing, "w2_distance": nothing}
    else:
        found = {
            "content_distance": _guarded("content_distance", n, content, failed),
            "gram_distance": _guarded("gram_distance", n, gram, failed),
            "w2_distance": _guarded("w2_distance", n, w2, failed),
        }
    found["color_distance"] = colour
    return [{f: found[f][i] for f in FIGURES} for i in range(n)]


class FigureTaker:
    """Takes the figures of batches with one network (``features``), keeping what repeats:
    each style's statistics per (style key, side), and the CONTENT_LAYER features of recent
    contents per key (a content under several styles is read through the network once).

    Per batch: one forward pass of the outputs, one of the contents not seen yet (each
    distinct content once), the style statistics of the styles not seen yet at this size,
    and per style layer a batched eigen-decomposition (C x C, for Wasserstein-2).
    """

    def __init__(self, features: Features, max_styles: int = 64, content_bytes: int = 256 << 20):
        self.features = features
        self.max_styles = max_styles
        self.content_bytes = content_bytes
        self._styles: OrderedDict[tuple[str, int], StyleStats] = OrderedDict()
        self._contents: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self._held = 0  # bytes in self._contents
        self.failed: list[str] = []  # what the last take() could not compute, and why

    @classmethod
    def for_engine(cls, engine: Stylizer, **kwargs: Any) -> FigureTaker:
        """A taker on ``engine``'s own network when it is :data:`NETWORK`, else on a second
        VGG-19 of :data:`NETWORK` on the same device (loaded here, once)."""
        from stylize.engine import Stylizer

        net = engine if same_network(engine.cfg) else Stylizer(network_config(str(engine.device)))
        return cls(net.features, **kwargs)

    def style(self, style: Style, side: int) -> StyleStats:
        """The statistics of an engine ``Style`` at longest side ``side`` (cached)."""
        key = (style.key, int(side))
        if key in self._styles:
            self._styles.move_to_end(key)
        else:
            self._styles[key] = style_stats(self.features, style.images, style.blend(), side)
            while len(self._styles) > self.max_styles:
                self._styles.popitem(last=False)
        return self._styles[key]

    def _content_features(
        self, contents: torch.Tensor, keys: Sequence[Hashable] | None
    ) -> torch.Tensor:
        """(B, C, h, w) CONTENT_LAYER features of contents (B, 3, H, W); ``keys`` name them
        (None: none is kept). Distinct new contents go through the network together."""
        import torch

        if keys is None:
            return self.features(contents.float(), (CONTENT_LAYER,))[CONTENT_LAYER]
        shape = tuple(contents.shape[-2:])
        named = [(k, shape) for k in keys]
        new = {k: i for i, k in reversed(list(enumerate(named))) if k not in self._contents}
        if new:
            feats = self.features(contents[list(new.values())].float(), (CONTENT_LAYER,))
            for k, f in zip(new, feats[CONTENT_LAYER]):
                self._contents[k] = f
                self._held += f.numel() * f.element_size()
        picked = torch.stack([self._contents[k] for k in named])
        for k in named:
            self._contents.move_to_end(k)
        while self._held > self.content_bytes and len(self._contents) > len(set(named)):
            _, f = self._contents.popitem(last=False)
            self._held -= f.numel() * f.element_size()
        return picked

    def take(
        self,
        outputs: torch.Tensor,
        contents: torch.Tensor,
        styles: Sequence[Style],
        keys: Sequence[Hashable] | None = None,
    ) -> list[dict[str, float | None]]:
        """The figures of outputs (B, 3, H, W) against their contents (B, 3, H, W) and engine
        styles; ``keys`` name the contents (equal keys: equal contents) so that their
        features are kept. Never raises: what cannot be taken is None (``self.failed``
        says why). A batch the device has no memory for is taken in halves."""
        self.failed = []
        return self._take(outputs, contents, styles, keys)

    def _take(
        self,
        outputs: torch.Tensor,
        contents: torch.Tensor,
        styles: Sequence[Style],
        keys: Sequence[Hashable] | None,
    ) -> list[dict[str, float | None]]:
        import torch

        n = len(styles)
        failed: list[str] = []
        try:
            with torch.no_grad():
                side = max(int(outputs.shape[-2]), int(outputs.shape[-1]))
                stats = [self.style(s, side) for s in styles]
                content_feats = self._content_features(contents, keys)
                found = _figures(self.features, outputs, content_feats, stats, failed)
        except Exception as e:  # noqa: BLE001 - a figure never fails an item
            failed.append(f"{type(e).__name__}: {' '.join(str(e).split())[:200]}")
            found = [dict.fromkeys(FIGURES) for _ in range(n)]
        if n > 1 and any("out of memory" in f.lower() for f in failed):
            h = n // 2
            return [
                *self._take(outputs[:h], contents[:h], styles[:h], keys and keys[:h]),
                *self._take(outputs[h:], contents[h:], styles[h:], keys and keys[h:]),
            ]
        self.failed += failed
        return found
