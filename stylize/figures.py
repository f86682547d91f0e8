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

Items with spatial control (``stylize.masks``: regions, each a style and a mask (H, W) in
0..1) get region-aware style figures: ``gram_distance``, ``w2_distance`` and
``color_distance`` are the area-weighted mean, over the regions that have a style (a region
left to its content has none and does not count), of the figure of the output restricted to
the region against that region's style. Restricted: the output's Gram matrix, mean and
covariance in each layer are taken over the region's positions only, each position weighted
by the mask area-resized to the layer (``masks.layer_guides``, the engine's resizing) and
normalised to sum 1 (a soft mask weighs positions in between; with a white or a uniform mask
these are the unmasked statistics), and the colour histogram counts each pixel with its mask
value. The area weights are the regions' mask means at the output's size; the style's
statistics stay the whole style image's, as the engine's targets. ``content_distance`` stays
the whole picture's (the content loss covers the whole picture, masks or not).

The layer masks are not eroded (:data:`MASK_EROSION`), unlike the engine's guidance
(``masks.EROSION``: half the receptive field's half-width, relu5_1 2 positions, against the
parts without a style). The engine erodes so that optimising a styled side does not pull on a
part kept as the content through the deep neurons that see both; a figure pulls on nothing,
and it needs every position it can get at the deep layers: at small sizes an eroded half keeps
only a few positions, those at the picture's edge (at 96 x 128, 2 of relu5_1's 8 columns),
whose statistics are far from any painting's. Measured on
the left half of The Starry Night beside the right half of The Scream: the engine's erosion
took the regional Gram figure from 0.26 to 0.43 at 96 x 128, +2% at 192 x 256 and -14% at
384 x 512. So a boundary position counts for each side as much as its mask covers it there.

Cost (:class:`FigureTaker`, as the pipeline's worker uses it): per batch one forward pass of
the outputs to relu5_1, one to relu4_2 of each content not met before (a content under k
styles goes through once), per style layer one batched eigen-decomposition (C x C; for a
masked item, one per item batched over its regions), and the style's statistics once per
style and size. A figure that cannot be taken is None, never an error
(``FigureTaker.take``); a masked item's style figures are guarded item by item.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where the figures are taken: the names and meanings
    import torch  # are read by the report, which runs without it

    from stylize.config import StyleConfig
    from stylize.engine import Style, Stylizer
    from stylize.records import Regions

CONTENT_LAYER = "relu4_2"
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
TAPS = (*STYLE_LAYERS, CONTENT_LAYER)
HISTOGRAM_BINS = 32
# The figures' layer masks are area-resized, not eroded (the engine's are: masks.EROSION); why:
# the module's docstring
MASK_EROSION = 0.0
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


def histogram(pixels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """(3, BINS) normalised per-channel histograms of an image (3, H, W) in 0..255; with
    ``weights`` (H, W) >= 0, not all 0 (a region's mask), each pixel counts its weight."""
    import torch

    x = pixels.detach().float().clamp(0, 255).reshape(3, -1)
    idx = (x * (HISTOGRAM_BINS / 256.0)).long().clamp_(0, HISTOGRAM_BINS - 1)
    counts = torch.zeros(3, HISTOGRAM_BINS, dtype=torch.float64, device=x.device)
    if weights is None:
        each = torch.ones_like(idx, dtype=torch.float64)
    else:
        each = weights.to(x.device, torch.float64).reshape(1, -1).expand(3, -1).contiguous()
    counts.scatter_add_(1, idx, each)
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


# One item's regions as the figures take them (spatial control, ``stylize.masks``): pairs of
# (the region's style statistics, its mask (H, W) in 0..1), the regions that have a style only.
RegionStats = Sequence[tuple[StyleStats, "torch.Tensor"]]


def figures(
    features: Features,
    outputs: torch.Tensor,
    contents: torch.Tensor,
    styles: Sequence[StyleStats],
    regions: Sequence[RegionStats | None] | None = None,
) -> list[dict[str, float | None]]:
    """The figures of each output (B, 3, H, W) against its content (B, 3, H, W, same size)
    and style, outputs rounded to 8 bits first (what is delivered). ``regions``: per output,
    its regions (its style figures are then region-aware, see the module's docstring, and its
    entry of ``styles`` is not used for them) or None (the whole picture against its style).
    Two forward passes (the outputs, the contents); :class:`FigureTaker` spares the second
    where it can."""
    import torch

    with torch.no_grad():
        fc = features(contents.float(), (CONTENT_LAYER,))[CONTENT_LAYER]
        return _figures(features, outputs, fc, styles, regions=regions)


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


def _gram_distance(gram: torch.Tensor, stats: Sequence[LayerStats]) -> torch.Tensor:
    """(B,) ||G - G_s||^2 / ||G_s||^2 of Gram matrices (B, C, C) and one style layer each."""
    import torch

    target = torch.stack([s.gram.to(gram.device) for s in stats])
    return (gram - target).pow(2).sum((1, 2)) / target.pow(2).sum((1, 2))


def _w2_distance(
    mean: torch.Tensor, cov: torch.Tensor, stats: Sequence[LayerStats]
) -> torch.Tensor:
    """(B,) squared W2 distance over the style's tr(S_s) + |mu_s|^2 of Gaussians (means (B, C),
    covariances (B, C, C)) and one style layer each."""
    import torch

    root = torch.stack([s.cov_sqrt.to(cov.device) for s in stats])  # (B, C, C)
    cross = root @ cov @ root
    # tr((S_s^1/2 S_x S_s^1/2)^1/2): the square roots of its eigenvalues, summed
    traces = torch.linalg.eigvalsh((cross + cross.mT) / 2).clamp_min(0).sqrt().sum(-1)
    s_mean = torch.stack([s.mean.to(mean.device) for s in stats])
    s_trace = mean.new_tensor([s.cov_trace for s in stats])
    scale = mean.new_tensor([s.scale for s in stats]).clamp_min(1e-30)
    d2 = (mean - s_mean).pow(2).sum(1) + cov.diagonal(0, 1, 2).sum(1) + s_trace
    distance: torch.Tensor = (d2 - 2 * traces).clamp_min(0) / scale
    return distance


def _colour_distance(
    x: torch.Tensor, style: StyleStats, weights: torch.Tensor | None = None
) -> float:
    """Half the L1 distance of the histograms of x (3, H, W) (``weights``: a region's mask
    (H, W)) and of the style, averaged over the channels."""
    hist = histogram(x, weights)
    return float(0.5 * (hist - style.histogram.to(x.device)).abs().sum(1).mean())


def _guided_moments(
    feat: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Gram per position (R, C, C), mean (R, C), covariance (R, C, C)) in fp64 of one image's
    features (C, H, W) under R regions' position weights (R, H*W), each summing to 1:
    :func:`_moments` with weights (the same with weights 1/N), one region at a time."""
    import torch

    f = feat.reshape(feat.shape[0], -1).float()  # (C, N)
    grams, means, covs = [], [], []
    for w in weights.to(f):  # (N,)
        mean = f @ w  # (C,)
        centred = (f - mean[:, None]) * w.sqrt()  # (C, N)
        cov = (centred @ centred.T).double()  # (C, C)
        mean64 = mean.double()
        grams.append(cov + torch.outer(mean64, mean64))
        means.append(mean64)
        covs.append(cov)
    return torch.stack(grams), torch.stack(means), torch.stack(covs)


def _in_two(
    name: str,
    n: int,
    plain: tuple[list[int], Callable[[], list[float]]],
    masked: tuple[list[int], Callable[[int], float]],
    failed: list[str],
) -> list[float | None]:
    """One figure of n items: the plain items' (indices, computed together, guarded
    together) and each masked item's (computed and guarded one by one)."""
    values: list[float | None] = [None] * n
    (whole_idx, whole), (region_idx, by_region) = plain, masked
    if whole_idx:
        for i, v in zip(whole_idx, _guarded(name, len(whole_idx), whole, failed)):
            values[i] = v
    for i in region_idx:
        values[i] = _guarded(f"{name} (regions)", 1, partial(_one, by_region, i), failed)[0]
    return values


def _one(compute: Callable[[int], float], i: int) -> list[float]:
    return [compute(i)]


class _RegionFigures:
    """The region-aware style figures of one masked item: its regions that cover some of the
    picture, their masks at the output's size, and its guided moments per layer (kept between
    the Gram and the W2 figures)."""

    def __init__(self, regions: RegionStats, h: int, w: int, device: torch.device):
        import torch

        from stylize.masks import mask_tensor, resize_masks

        if not regions:
            raise ValueError("no region has a style")
        masks = torch.stack(
            [resize_masks(mask_tensor(m)[None, None].float(), h, w)[0, 0] for _, m in regions]
        ).to(device)  # (R, H, W)
        areas: list[float] = masks.mean((1, 2)).tolist()
        kept = [r for r, a in enumerate(areas) if a > 0]
        if not kept:
            raise ValueError("the masks of the regions with a style are all black")
        self.styles = [regions[r][0] for r in kept]
        self.masks = masks[kept]  # (R, H, W) in 0..1
        self.areas = [areas[r] for r in kept]  # each region's weight: its mask's mean
        self._moments: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def mean(self, per_region: Sequence[float]) -> float:
        """The area-weighted mean of one value per region."""
        return sum(a * v for a, v in zip(self.areas, per_region)) / sum(self.areas)

    def moments(
        self, feat: torch.Tensor, layer: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The guided moments of the item's features (C, h, w) at ``layer``, per region, under
        its masks area-resized to the layer as the engine's, not eroded (module docstring)."""
        from stylize.masks import layer_guides

        if layer not in self._moments:
            h, w = feat.shape[-2:]
            shape = (int(h), int(w))
            weights, _ = layer_guides(self.masks[None], shape, layer, MASK_EROSION)  # (1, R, h*w)
            self._moments[layer] = _guided_moments(feat, weights[0])
        return self._moments[layer]

    def colour(self, x: torch.Tensor) -> float:
        """``color_distance`` of the picture x (3, H, W): each region's histogram, weighted by
        its mask (not eroded), against its style's."""
        return self.mean([_colour_distance(x, s, m) for s, m in zip(self.styles, self.masks)])

    def gram(self, fx: Mapping[str, torch.Tensor], i: int) -> float:
        """``gram_distance`` of item ``i`` of the outputs' features ``fx``."""
        per_layer = []
        for layer in STYLE_LAYERS:
            g = self.moments(fx[layer][i], layer)[0]  # (R, C, C)
            per_layer.append(_gram_distance(g, [s.layers[layer] for s in self.styles]))
        return self.mean(_mean_of_layers(per_layer))

    def w2(self, fx: Mapping[str, torch.Tensor], i: int) -> float:
        """``w2_distance`` of item ``i`` of the outputs' features ``fx``."""
        per_layer = []
        for layer in STYLE_LAYERS:
            _, mean, cov = self.moments(fx[layer][i], layer)  # (R, C), (R, C, C)
            per_layer.append(_w2_distance(mean, cov, [s.layers[layer] for s in self.styles]))
        return self.mean(_mean_of_layers(per_layer))


def _figures(
    features: Features,
    outputs: torch.Tensor,
    content_feats: torch.Tensor,
    styles: Sequence[StyleStats],
    failed: list[str] | None = None,
    regions: Sequence[RegionStats | None] | None = None,
) -> list[dict[str, float | None]]:
    """The figures of outputs (B, 3, H, W) given their contents' CONTENT_LAYER features
    (B, C, h, w): one forward pass, to relu5_1. ``failed`` collects what could not be taken;
    ``regions`` as :func:`figures`'."""
    import torch

    failed = [] if failed is None else failed
    n = len(styles)
    guides = list(regions) if regions is not None else [None] * n
    plain = [i for i in range(n) if guides[i] is None]  # the whole picture against its style
    masked = [i for i in range(n) if guides[i] is not None]  # region-aware style figures
    x = outputs.detach().float().clamp(0, 255).round()  # the delivered 8-bit picture
    fx: dict[str, torch.Tensor] | None = None  # the outputs' features (after the colours)

    def both(
        name: str, whole: Callable[[], list[float]], by_region: Callable[[int], float]
    ) -> list[float | None]:
        return _in_two(name, n, (plain, whole), (masked, by_region), failed)

    made: dict[int, _RegionFigures] = {}

    def region(i: int) -> _RegionFigures:
        if i not in made:
            given = guides[i]
            assert given is not None
            made[i] = _RegionFigures(given, int(x.shape[-2]), int(x.shape[-1]), x.device)
        return made[i]

    moments: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def layer_moments(layer: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if layer not in moments:
            assert fx is not None
            per = [_moments(fx[layer][i]) for i in plain]
            moments[layer] = tuple(torch.stack(parts) for parts in zip(*per))  # type: ignore[assignment]
        return moments[layer]

    def gram() -> list[float]:
        per_layer = []
        for layer in STYLE_LAYERS:
            g = layer_moments(layer)[0]  # (B, C, C)
            per_layer.append(_gram_distance(g, [styles[i].layers[layer] for i in plain]))
        return _mean_of_layers(per_layer)

    def w2() -> list[float]:
        per_layer = []
        for layer in STYLE_LAYERS:
            _, mean, cov = layer_moments(layer)  # (B, C), (B, C, C)
            per_layer.append(_w2_distance(mean, cov, [styles[i].layers[layer] for i in plain]))
        return _mean_of_layers(per_layer)

    colour = both(
        "color_distance",
        lambda: [_colour_distance(x[i], styles[i]) for i in plain],
        lambda i: region(i).colour(x[i]),
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

    if fx is None:
        nothing: list[float | None] = [None] * n
        found = {"content_distance": nothing, "gram_distance": nothing, "w2_distance": nothing}
    else:
        feats = fx
        found = {
            "content_distance": _guarded("content_distance", n, content, failed),
            "gram_distance": both("gram_distance", gram, lambda i: region(i).gram(feats, i)),
            "w2_distance": both("w2_distance", w2, lambda i: region(i).w2(feats, i)),
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
        regions: Sequence[Regions | None] | None = None,
    ) -> list[dict[str, float | None]]:
        """The figures of outputs (B, 3, H, W) against their contents (B, 3, H, W) and engine
        styles; ``keys`` name the contents (equal keys: equal contents) so that their
        features are kept; ``regions``: per output, the engine's regions (``Regions``: the
        (style, mask) pairs of the regions with a style) for region-aware style figures, or
        None (see :func:`figures`). Never raises: what cannot be taken is None
        (``self.failed`` says why). A batch the device has no memory for is taken in halves."""
        self.failed = []
        return self._take(outputs, contents, styles, keys, regions)

    def _take(
        self,
        outputs: torch.Tensor,
        contents: torch.Tensor,
        styles: Sequence[Style],
        keys: Sequence[Hashable] | None,
        regions: Sequence[Regions | None] | None = None,
    ) -> list[dict[str, float | None]]:
        import torch

        n = len(styles)
        failed: list[str] = []
        try:
            with torch.no_grad():
                side = max(int(outputs.shape[-2]), int(outputs.shape[-1]))
                stats = [self.style(s, side) for s in styles]
                guides = None
                if regions is not None:
                    guides = [
                        None if r is None else [(self.style(s, side), m) for s, m in r]
                        for r in regions
                    ]
                content_feats = self._content_features(contents, keys)
                found = _figures(self.features, outputs, content_feats, stats, failed, guides)
        except Exception as e:  # noqa: BLE001 - a figure never fails an item
            failed.append(f"{type(e).__name__}: {' '.join(str(e).split())[:200]}")
            found = [dict.fromkeys(FIGURES) for _ in range(n)]
        if n > 1 and any("out of memory" in f.lower() for f in failed):
            h = n // 2
            first, second = (None, None) if regions is None else (regions[:h], regions[h:])
            return [
                *self._take(outputs[:h], contents[:h], styles[:h], keys and keys[:h], first),
                *self._take(outputs[h:], contents[h:], styles[h:], keys and keys[h:], second),
            ]
        self.failed += failed
        return found
