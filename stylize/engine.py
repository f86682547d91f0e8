"""The engine: VGG-19 loaded once, style targets cached, batches of images optimised.

``Stylizer(cfg)`` owns a device, a frozen VGG-19 and a cache of style Gram targets keyed by
(style key, size); ``stylize_batch`` solves one problem per content image. ``stylize()`` is
the one-call API on PIL images or tensors.
"""

from __future__ import annotations

import contextlib
import uuid
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from stylize import color
from stylize.config import NOISE_SPECTRA, ConfigError, StyleConfig, resolve_config
from stylize.images import load_image, resize_bucket, resize_longest, to_tensor
from stylize.losses import GatysLoss, gram, layer_weights
from stylize.model import ReadBytes, build_vgg
from stylize.optim import Stopping, optimize


@dataclass(frozen=True, eq=False)
class Style:
    """One target style: one or more images (3, H, W) in 0..255, blended by weight.

    ``key`` names the style for the target cache: two Styles with one key must be equal.
    """

    key: str
    images: tuple[torch.Tensor, ...]
    weights: tuple[float, ...] | None = None  # None: equal

    def blend(self) -> list[float]:
        w = self.weights or tuple(1.0 for _ in self.images)
        if len(w) != len(self.images) or any(v < 0 for v in w) or sum(w) <= 0:
            raise ValueError(f"style {self.key!r}: {len(w)} blend weights for "
                             f"{len(self.images)} images; weights must be >= 0, not all 0")
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
    steps: int
    losses: tuple[float, ...]  # total loss per image
    active: int  # images still optimising
    pixels: torch.Tensor  # (B, 3, h, w) current images, 0..255, on the device; do not modify


Callback = Callable[[StepInfo], None]


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device: {name} is not available on this machine (no CUDA GPU); "
                          f"use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None)
                              and torch.backends.mps.is_available()):
        raise ConfigError("--device: mps is not available on this machine; use cpu or auto")
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def _sample_images() -> list[torch.Tensor]:
    from importlib import resources

    folder = resources.files("stylize") / "samples"
    return [load_image(str(p), size=256) for p in sorted(folder.iterdir(), key=str)
            if str(p).endswith(".jpg")]


class Stylizer:
    """A VGG-19 on a device, and the style targets computed so far."""

    def __init__(self, cfg: StyleConfig | None = None, read_bytes: ReadBytes | None = None):
        self.cfg = cfg = cfg or resolve_config()
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        taps = cfg.content_layers + cfg.style_layers
        model, self.weights_hash = build_vgg(
            cfg.weights, taps, cfg.pooling, cfg.preprocessing, cfg.normalize, read_bytes,
            normalize_images=_sample_images, padding=cfg.padding)
        # Device, dtype and autocast are settled here once; the loop has no branches on them.
        if self.device.type == "cuda" and self.precision == "tf32":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.memory_format = (torch.channels_last if self.device.type == "cuda"
                              else torch.contiguous_format)
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16)
                         if self.precision == "bf16" else contextlib.nullcontext())
        self._net = self.model
        if cfg.compile:
            self._net = _compile(self.model)
        self._grams: dict[tuple, dict[str, torch.Tensor]] = {}
        self._batch_limit: dict[tuple[int, int], int] = {}
        self.content_w = layer_weights(cfg.content_layers, cfg.content_layer_weights)
        self.style_w = layer_weights(cfg.style_layers, cfg.style_layer_weights)

    # ------------------------------------------------------------------------------ inputs
    def prepare_content(self, img: Image.Image, exact: bool = False) -> torch.Tensor:
        """A decoded image resized for the engine: (3, h, w) in 0..255, longest side cfg.size.

        With ``cfg.bucket`` (and not ``exact``) the shape snaps to an aspect bucket, so that
        images of slightly different aspect ratios share a batch (images.bucket_shape).
        """
        if self.cfg.bucket and not exact:
            return to_tensor(resize_bucket(img, self.cfg.size))
        return to_tensor(resize_longest(img, self.cfg.size))

    def features(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        pixels = pixels.to(self.device, memory_format=self.memory_format)
        with self.autocast:
            if self._net is self.model:
                return self.model(pixels)
            try:
                return self._net(pixels)
            except Exception as e:  # a compiler failure must not cost the job: run eager
                if isinstance(e, torch.OutOfMemoryError):
                    raise
                warnings.warn(f"torch.compile failed ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); running eager")
                self._net = self.model
                return self.model(pixels)

    @torch.no_grad()
    def style_grams(self, style: Style, longest: int,
                    content: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Blended Gram targets {layer: (C, C)} of a style for a content of this longest side.

        Cached by (key, size) unless they depend on the content (colour preservation).
        """
        key = (style.key, longest)
        if content is None and key in self._grams:
            return self._grams[key]
        side = max(16, round(longest * self.cfg.style_scale))
        out: dict[str, torch.Tensor] = {}
        for img, w in zip(style.images, style.blend()):
            img = _resize_longest_tensor(img.float(), side, min_short=16).to(self.device)
            if self.cfg.preserve_colors == "histogram":
                img = color.match_histogram(img, content.to(self.device))
            elif self.cfg.preserve_colors == "luminance":
                grey = color.luminance(content.to(self.device))
                img = color.match_luminance(color.luminance(img), grey)
            feats = self.features(img.unsqueeze(0))
            for layer in self.cfg.style_layers:
                out[layer] = out.get(layer, 0) + w * gram(feats[layer])[0]
        if content is None:
            self._grams[key] = out
        return out

    def forget(self, key: str) -> None:
        """Drop the cached targets of a style (all sizes)."""
        for k in [k for k in self._grams if k[0] == key]:
            del self._grams[k]

    # ---------------------------------------------------------------------------- batches
    def stylize_batch(self, contents: Sequence[torch.Tensor], styles: Sequence[Style],
                      callback: Callback | None = None,
                      init: Sequence[torch.Tensor] | None = None,
                      iterations: int | None = None) -> list[ItemResult]:
        """Stylize same-size contents (3, H, W) in 0..255, ``styles[i]`` for ``contents[i]``.

        Splits into device-sized chunks; on out-of-memory a chunk is halved and retried. A
        single image that does not fit raises ``torch.OutOfMemoryError``. ``iterations``
        overrides cfg.iterations for this call; ``init`` gives start images (default cfg.init).
        """
        if len(contents) != len(styles):
            raise ValueError(f"{len(contents)} contents but {len(styles)} styles")
        if not contents:
            return []
        shape = tuple(contents[0].shape[-2:])
        if any(tuple(c.shape[-2:]) != shape for c in contents):
            raise ValueError("stylize_batch needs contents of one size; group them first")
        results: list[ItemResult] = []
        start = 0
        while start < len(contents):
            n = min(self._chunk_size(shape, len(contents) - start), len(contents) - start)
            try:
                results += self._optimize_chunk(
                    contents[start:start + n], styles[start:start + n], callback,
                    None if init is None else init[start:start + n], iterations)
            except torch.OutOfMemoryError:
                if n == 1:
                    raise
                self._batch_limit[shape] = n // 2
                _free_device_memory(self.device)
                continue
            start += n
        return results

    def _chunk_size(self, shape: tuple[int, int], pending: int) -> int:
        if shape in self._batch_limit:  # learnt: measured, or halved after out-of-memory
            return self._batch_limit[shape]
        if self.cfg.batch_size:
            return self.cfg.batch_size
        if self.device.type != "cuda":
            return 4
        return self._measure_batch_limit(shape)

    def _measure_batch_limit(self, shape: tuple[int, int]) -> int:
        """Peak memory of one image at this shape, measured once, against free memory."""
        torch.cuda.synchronize(self.device)
        before = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        x = torch.zeros(1, 3, *shape, device=self.device, requires_grad=True)
        feats = self.features(x)
        sum(f.float().pow(2).mean() for f in feats.values()).backward()
        per_image = torch.cuda.max_memory_allocated(self.device) - before
        hist = 2 * self.cfg.history_size * 3 * shape[0] * shape[1] * 4  # L-BFGS (s, y) pairs
        del x, feats
        free, _ = torch.cuda.mem_get_info(self.device)
        limit = max(1, min(64, int(0.8 * free / (per_image * 1.5 + hist))))
        self._batch_limit[shape] = limit
        return limit

    def _optimize_chunk(self, contents, styles, callback, init,
                        iterations=None) -> list[ItemResult]:
        cfg = self.cfg
        iterations = iterations or cfg.iterations
        full = torch.stack([c.float() for c in contents]).to(self.device)  # (B, 3, H, W)
        grey = cfg.preserve_colors == "luminance"
        target = color.luminance(full) if grey else full
        x = None if init is None else torch.stack([i.float() for i in init]).to(self.device)
        used = torch.zeros(len(contents), dtype=torch.long, device=self.device)
        for si, scale in enumerate(cfg.scales):
            h, w = scale_shape(*full.shape[-2:], scale)
            m = margin_pixels(cfg.margin, h, w)
            content = _pad(_resize(target, h, w), m)  # (B, 3, h + 2m, w + 2m)
            x = (self._initial(content, h + 2 * m, w + 2 * m) if x is None
                 else _pad(_resize(x, h, w), m))
            loss = self.loss_for(content, styles, longest=max(h, w))
            hook = _hook(callback, si, len(cfg.scales), iterations, m)
            out = optimize(
                x, self._objective(loss), iterations, cfg.optimizer,
                cfg.effective_lr, cfg.history_size,
                Stopping(cfg.early_stopping, cfg.tolerance, cfg.window), hook, cfg.log_every,
                narrow=lambda rows, loss=loss: self._objective(loss.select(rows)))
            x, used = _crop(out.pixels, m), used + out.iterations
        losses = out.losses
        if m:  # report the losses of the picture delivered, without its margin
            with torch.no_grad():
                x = x.contiguous()
                losses = self.loss_for(_crop(content, m), styles)(self.features(x), x)
        pixels = color.combine_luminance(x, full) if grey else x
        total, content_l, style_l, tv = (t.tolist() for t in losses)
        images = pixels.clamp(0, 255).cpu()
        return [ItemResult(images[i], int(used[i]), content_l[i], style_l[i], tv[i], total[i])
                for i in range(len(contents))]

    def _objective(self, loss: GatysLoss):
        return lambda px: loss(self.features(px), px)

    @torch.no_grad()
    def loss_for(self, content: torch.Tensor, styles: Sequence[Style],
                 longest: int | None = None) -> GatysLoss:
        """The loss module for a batch of contents (B, 3, h, w), one style each; the style
        images are scaled for a content of longest side ``longest`` (default: the content's)."""
        cfg = self.cfg
        per_image = cfg.preserve_colors != "none"
        longest = longest or max(content.shape[-2:])
        grams = [self.style_grams(s, longest, content[i] if per_image else None)
                 for i, s in enumerate(styles)]
        cfeats = self.features(content)
        return GatysLoss(
            {k: cfeats[k].float() for k in cfg.content_layers},
            {k: torch.stack([g[k] for g in grams]) for k in cfg.style_layers},
            self.content_w, self.style_w, cfg.content_weight, cfg.style_weight, cfg.tv_weight)

    @torch.no_grad()
    def evaluate(self, pixels: Sequence[torch.Tensor], contents: Sequence[torch.Tensor],
                 styles: Sequence[Style]) -> list[float]:
        """Total Gatys loss of finished images (3, H, W) against their contents and styles."""
        content = torch.stack([c.float() for c in contents]).to(self.device)
        x = torch.stack([p.float() for p in pixels]).to(self.device)
        return self.loss_for(content, styles)(self.features(x), x)[0].tolist()

    def _initial(self, content: torch.Tensor, h: int, w: int) -> torch.Tensor:
        init = self.cfg.init
        if init == "content":
            return content.clone()
        if init == "noise":
            noise = initial_noise(self.cfg, h, w)  # (3, h, w), the same for every image
            return noise.expand(content.shape[0], -1, -1, -1).to(self.device)
        img = load_image(init)  # a path: resized to each content's size
        return _resize(img.unsqueeze(0).to(self.device), h, w).expand_as(content).clone()


def initial_noise(cfg: StyleConfig, h: int, w: int) -> torch.Tensor:
    """The start image of ``init: noise``: (3, h, w) pixels, mid-grey plus seeded noise of
    std ``noise_scale * 255`` per channel with the amplitude spectrum ``noise_spectrum``.

    Drawn on the CPU, so a seed gives the same start on every device.
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    noise = torch.randn(3, h, w, generator=gen)  # (3, h, w), unit std
    exponent = NOISE_SPECTRA[cfg.noise_spectrum]
    if exponent:
        freq = torch.fft.rfft2(noise)  # (3, h, w // 2 + 1)
        f = torch.hypot(torch.fft.fftfreq(h)[:, None], torch.fft.rfftfreq(w)[None, :])
        freq = freq / f.clamp_min(1.0 / max(h, w)) ** exponent
        freq[:, 0, 0] = 0  # no offset: the mean stays mid-grey
        noise = torch.fft.irfft2(freq, s=(h, w))
        noise = noise / noise.std(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    return 127.5 + noise * (cfg.noise_scale * 255.0)


def start_noise(cfg: StyleConfig, h: int, w: int) -> torch.Tensor:
    """The initial noise of a (h, w) picture as its pixels see it: drawn at the first of the
    ``scales`` with the ``margin`` around it, margin cropped. (3, h0, w0)."""
    h0, w0 = scale_shape(h, w, cfg.scales[0])
    m = margin_pixels(cfg.margin, h0, w0)
    return _crop(initial_noise(cfg, h0 + 2 * m, w0 + 2 * m), m)


def scale_shape(h: int, w: int, scale: float) -> tuple[int, int]:
    """(h, w) of an image at one of the coarse-to-fine ``scales``."""
    return max(16, round(h * scale)), max(16, round(w * scale))


def _compile(model):
    try:
        return torch.compile(model, dynamic=False)
    except Exception as e:
        warnings.warn(f"torch.compile unavailable ({type(e).__name__}); running eager")
        return model


def margin_pixels(margin: float, h: int, w: int) -> int:
    """The margin of a (h, w) image in pixels: reflection padding needs it below h and w."""
    return min(round(margin * max(h, w)), h - 1, w - 1)


def _pad(x: torch.Tensor, m: int) -> torch.Tensor:
    return F.pad(x, (m, m, m, m), mode="reflect") if m else x


def _crop(x: torch.Tensor, m: int) -> torch.Tensor:
    return x[..., m:x.shape[-2] - m, m:x.shape[-1] - m] if m else x


def _hook(callback: Callback | None, scale: int, scales: int, steps: int, margin: int = 0):
    if callback is None:
        return None

    def hook(step, losses, active, pixels):
        callback(StepInfo(scale, scales, step, steps, tuple(losses.tolist()),
                          int(active.sum()), _crop(pixels, margin)))
    return hook


def _resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    if tuple(x.shape[-2:]) == (h, w):
        return x
    return F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False,
                         antialias=h < x.shape[-2])


def _resize_longest_tensor(img: torch.Tensor, side: int, min_short: int = 1) -> torch.Tensor:
    """Longest side ``side``; the shorter at least ``min_short`` (VGG pools 4 times)."""
    h, w = img.shape[-2:]
    s = max(side / max(h, w), min_short / min(h, w))
    return _resize(img.unsqueeze(0), max(1, round(h * s)), max(1, round(w * s)))[0]


def _free_device_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------- one-call API

def stylize(content, styles, config: StyleConfig | None = None, *,
            style_weights: Sequence[float] | None = None, callback: Callback | None = None,
            stylizer: Stylizer | None = None, **overrides):
    """Stylize one image. ``content`` and each style: a PIL image, or a float tensor
    (3, H, W) in 0..1 (torchvision's convention). Returns the same kind as ``content``.

    ``config`` (or a preset name and options as ``**overrides``, e.g. ``size=256``) sets the
    engine; pass ``stylizer`` to reuse a loaded network across calls.
    """
    if stylizer is not None:
        if overrides or (config is not None and config != stylizer.cfg):
            raise ValueError("with stylizer=, the options are the stylizer's own config; "
                             "build a Stylizer with the config you want")
        config = stylizer.cfg
    elif config is None:
        config = resolve_config(overrides.pop("preset", None), **overrides)
    elif overrides:
        config = config.replace(**overrides)
    engine = stylizer or Stylizer(config)
    styles = styles if isinstance(styles, (list, tuple)) else [styles]
    as_pil = isinstance(content, Image.Image)
    c = _as_pixels(content)
    c = _resize_longest_tensor(c, config.size)
    # A key of its own per call: the images may differ from the last call's.
    style = Style(f"api-{uuid.uuid4().hex}", tuple(_as_pixels(s) for s in styles),
                  tuple(style_weights) if style_weights else None)
    try:
        result = engine.stylize_batch([c], [style], callback)[0]
    finally:
        engine.forget(style.key)
    if as_pil:
        from stylize.images import from_tensor
        return from_tensor(result.image)
    return result.image / 255.0


def _as_pixels(img) -> torch.Tensor:
    if isinstance(img, Image.Image):
        return to_tensor(img.convert("RGB"))
    t = torch.as_tensor(img).float()
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 3 or t.shape[0] != 3:
        raise ValueError(f"expected an image tensor (3, H, W) in 0..1, got shape {tuple(t.shape)}")
    return t * 255.0
