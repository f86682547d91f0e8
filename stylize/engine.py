"""The engine: VGG-19 loaded once, style targets cached, batches of images optimised.

``Stylizer(cfg)`` owns a device, a frozen VGG-19 built from ``cfg.network`` and a bounded
(LRU by bytes) cache of style Gram targets keyed by (style key, size); ``stylize_batch``
solves one problem per content image, with ``cfg`` or with per-call ``options`` that share its
network (another iteration count, seed, layer set, weights...: no reload). ``stylize()`` is
the one-call API on PIL images or tensors.
"""

from __future__ import annotations

import contextlib
import uuid
from collections import OrderedDict
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from stylize import color
from stylize.config import NOISE_SPECTRA, TAP_NAMES, ConfigError, StyleConfig, resolve_config
from stylize.images import load_image, resize_bucket, resize_longest, to_tensor
from stylize.losses import GatysLoss, gram, layer_weights
from stylize.model import ReadBytes, build_vgg
from stylize.optim import Stopping, optimize


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


DEFAULT_CPU_CACHE_BYTES = 1 << 30  # style targets kept on a CPU (a GPU: a tenth of its memory)


class TargetCache:
    """Style Gram targets, least recently used dropped first once they pass ``limit`` bytes.

    ``computed`` counts the targets computed (per style key), ``hits``/``misses`` the lookups:
    with a style per shard, a style's targets are computed once per worker and size.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.nbytes = 0
        self.hits = self.misses = 0
        self.computed: dict[str, int] = {}
        self._entries: OrderedDict[tuple, dict[str, torch.Tensor]] = OrderedDict()

    def get(self, key: tuple, layers: Sequence[str]) -> dict[str, torch.Tensor] | None:
        entry = self._entries.get(key)
        if entry is None or any(layer not in entry for layer in layers):
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def put(self, key: tuple, grams: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        old = self._entries.pop(key, {})
        self.nbytes -= _nbytes(old)
        entry = {**old, **grams}
        self._entries[key] = entry
        self.nbytes += _nbytes(entry)
        self.computed[key[0]] = self.computed.get(key[0], 0) + 1
        while self.nbytes > self.limit and len(self._entries) > 1:
            _, dropped = self._entries.popitem(last=False)
            self.nbytes -= _nbytes(dropped)
        return entry

    def forget(self, style_key: str) -> None:
        for k in [k for k in self._entries if k[0] == style_key]:
            self.nbytes -= _nbytes(self._entries.pop(k))

    def stats(self) -> dict[str, float]:
        lookups = self.hits + self.misses
        return {"styles_cached": len({k[0] for k in self._entries}), "bytes": self.nbytes,
                "limit_bytes": self.limit, "hits": self.hits, "misses": self.misses,
                "hit_rate": round(self.hits / lookups, 4) if lookups else None,
                "targets_computed": sum(self.computed.values()),
                "styles_computed": len(self.computed),
                "max_computed_per_style": max(self.computed.values(), default=0)}


def _nbytes(grams: dict[str, torch.Tensor]) -> int:
    return sum(g.numel() * g.element_size() for g in grams.values())


class Stylizer:
    """A VGG-19 on a device, and the style targets computed so far.

    Built from ``cfg.network``; every call may pass ``options`` with other per-image settings
    (the network part must be the same). ``target_cache_bytes`` bounds the style targets kept
    (default: a tenth of the GPU's memory, 1 GiB on a CPU).
    """

    def __init__(self, cfg: StyleConfig | None = None, read_bytes: ReadBytes | None = None,
                 target_cache_bytes: int | None = None):
        self.cfg = cfg = cfg or resolve_config()
        self.network = cfg.network
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        # Every layer is built, so that any per-image layer set is served; a forward pass
        # stops at the deepest layer it is asked for.
        model, self.weights_hash = build_vgg(
            cfg.weights, TAP_NAMES, cfg.pooling, cfg.preprocessing, cfg.normalize, read_bytes,
            normalize_images=_sample_images, padding=cfg.padding)
        # Device, dtype and autocast are settled here once; the loop has no branches on them.
        # TF32 is scoped to this engine's calls (numerics()), never left set process-wide.
        self.memory_format = (torch.channels_last if self.device.type == "cuda"
                              else torch.contiguous_format)
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16)
                         if self.precision == "bf16" else contextlib.nullcontext())
        self._net = self.model
        if cfg.compile:
            self._net = _compile(self.model)
        if target_cache_bytes is None:
            target_cache_bytes = (torch.cuda.get_device_properties(self.device).total_memory // 10
                                  if self.device.type == "cuda" else DEFAULT_CPU_CACHE_BYTES)
        self.targets = TargetCache(target_cache_bytes)
        # images per chunk, learnt per (shape, what sets the memory of an image there)
        self._batch_limit: dict[tuple, int] = {}

    def options(self, options: StyleConfig | None) -> StyleConfig:
        """``options`` (default: the engine's config), checked to fit the loaded network."""
        if options is None or options is self.cfg:
            return self.cfg
        if options.network != self.network:
            diff = {k: v for k, v in options.network.model_dump().items()
                    if getattr(self.network, k) != v}
            raise ValueError(f"options {diff} need another network than this Stylizer's; "
                             "build a Stylizer with them")
        return options

    @contextlib.contextmanager
    def numerics(self):
        """TF32 on for ``precision: tf32``, off for ``fp32`` (PyTorch lets cuDNN use TF32 by
        default), only for the duration of this engine's work; the caller's flags come back.
        With ``bf16`` the convolutions run in bf16 under autocast and the fp32 matmuls left,
        the Gram matrices, use TF32: their inputs are bf16 features, exact in TF32, so only
        the gradient's product is rounded (to 10 bits, finer than bf16's 8), and TF32 runs on
        tensor cores where IEEE fp32 does not. A compiled network may build COMPILED_GRAPHS
        graphs meanwhile."""
        matmul_tf32, cudnn_tf32 = {"tf32": (True, True), "fp32": (False, False),
                                   "bf16": (True, None)}[self.precision]
        matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
        saved = (matmul.allow_tf32, cudnn.allow_tf32)
        matmul.allow_tf32 = matmul_tf32
        cudnn.allow_tf32 = saved[1] if cudnn_tf32 is None else cudnn_tf32
        try:
            with _graph_limit() if self._net is not self.model else contextlib.nullcontext():
                yield
        finally:
            matmul.allow_tf32, cudnn.allow_tf32 = saved

    # ------------------------------------------------------------------------------ inputs
    def prepare_content(self, img: Image.Image, exact: bool = False,
                        options: StyleConfig | None = None) -> torch.Tensor:
        """A decoded image resized for the engine: (3, h, w) in 0..255, longest side ``size``.

        With ``bucket`` (and not ``exact``) the shape snaps to an aspect bucket, so that
        images of slightly different aspect ratios share a batch (images.bucket_shape).
        """
        opts = self.options(options)
        if opts.bucket and not exact:
            return to_tensor(resize_bucket(img, opts.size))
        return to_tensor(resize_longest(img, opts.size))

    def features(self, pixels: torch.Tensor, taps: Sequence[str] | None = None,
                 compiled: bool = False) -> dict[str, torch.Tensor]:
        """``{layer: activation}`` of ``taps`` (default: the config's content and style
        layers).

        ``compiled`` runs the compiled network (with ``compile``) where gradients are taken:
        the optimisation's steps. Everything else (targets, scores, batch sizing) runs once per
        batch, eager, so that torch.compile builds graphs for one call site only; there, the
        batch dimension is dynamic (one graph for every batch of 2 or more, one for batches of
        1), so images that stop early and leave the batch do not recompile it. Each image
        shape (height, width) still builds its own (torch.compile specialises them), up to
        COMPILED_GRAPHS per network (torch.compile's default, 8, would quietly run eager
        after four aspect buckets); each costs a compilation, so compile pays with ``bucket``
        (a few aspect buckets) and one size, not with every aspect ratio of a collection.
        """
        taps = tuple(dict.fromkeys(taps or self.cfg.content_layers + self.cfg.style_layers))
        pixels = pixels.to(self.device, memory_format=self.memory_format)
        with self.autocast:
            if not (compiled and torch.is_grad_enabled()) or self._net is self.model:
                return self.model(pixels, taps)
            if pixels.shape[0] > 1:  # a batch of 1 is specialised by torch.compile anyway
                torch._dynamo.mark_dynamic(pixels, 0)
            try:
                return self._net(pixels, taps)
            except Exception as e:  # a compiler failure must not cost the job: run eager
                if isinstance(e, torch.OutOfMemoryError):
                    raise
                warnings.warn(f"torch.compile failed ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); running eager")
                self._net = self.model
                return self.model(pixels, taps)

    @torch.no_grad()
    def style_grams(self, style: Style, longest: int, content: torch.Tensor | None = None,
                    options: StyleConfig | None = None) -> dict[str, torch.Tensor]:
        """Blended Gram targets {layer: (C, C)} of a style for a content of this longest side.

        Cached (LRU, ``self.targets``) by (key, style side) unless they depend on the content
        (colour preservation); layers missing from a cached entry are added to it.
        """
        opts = self.options(options)
        side = max(16, round(longest * opts.style_scale))
        key = (style.key, side)
        if content is None:
            cached = self.targets.get(key, opts.style_layers)
            if cached is not None:
                return cached
        out: dict[str, torch.Tensor] = {}
        with self.numerics():
            for img, w in zip(style.images, style.blend()):
                img = _resize_longest_tensor(img.float(), side, min_short=16).to(self.device)
                if opts.preserve_colors == "histogram":
                    img = color.match_histogram(img, content.to(self.device))
                elif opts.preserve_colors == "luminance":
                    grey = color.luminance(content.to(self.device))
                    img = color.match_luminance(color.luminance(img), grey)
                feats = self.features(img.unsqueeze(0), opts.style_layers)
                for layer in opts.style_layers:
                    out[layer] = out.get(layer, 0) + w * gram(feats[layer])[0]
        if content is None:
            return self.targets.put(key, out)
        return out

    def forget(self, key: str) -> None:
        """Drop the cached targets of a style (all sizes)."""
        self.targets.forget(key)

    # ---------------------------------------------------------------------------- batches
    def stylize_batch(self, contents: Sequence[torch.Tensor], styles: Sequence[Style],
                      callback: Callback | None = None,
                      init: Sequence[torch.Tensor] | None = None,
                      iterations: int | None = None,
                      options: StyleConfig | None = None) -> list[ItemResult]:
        """Stylize same-size contents (3, H, W) in 0..255, ``styles[i]`` for ``contents[i]``,
        with ``options`` (default: the engine's config; same network, see ``options()``).

        Splits into device-sized chunks; on out-of-memory a chunk is halved and retried. A
        single image that does not fit raises ``torch.OutOfMemoryError``. ``iterations``
        overrides the options' for this call; ``init`` gives start images (default: ``init``).
        """
        opts = self.options(options)
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
            n = min(self._chunk_size(shape, opts), len(contents) - start)
            try:
                with self.numerics():
                    results += self._optimize_chunk(
                        contents[start:start + n], styles[start:start + n], callback,
                        None if init is None else init[start:start + n], iterations, opts)
            except torch.OutOfMemoryError:
                if n == 1:
                    raise
                self._batch_limit[_memory_key(shape, opts)] = n // 2
                _free_device_memory(self.device)
                continue
            start += n
        return results

    def batch_limit(self, shape: tuple[int, int], options: StyleConfig | None = None) -> int:
        """Images per chunk at this (h, w): learnt (measured, or halved after out of memory),
        else ``batch_size``, else measured against free GPU memory (4 on a CPU)."""
        return self._chunk_size(tuple(shape), self.options(options))

    def _chunk_size(self, shape: tuple[int, int], opts: StyleConfig) -> int:
        learnt = self._batch_limit.get(_memory_key(shape, opts))
        if learnt:  # measured, or halved after out-of-memory
            return learnt
        if opts.batch_size:
            return opts.batch_size
        if self.device.type != "cuda":
            return 4
        return self._measure_batch_limit(shape, opts)

    def _measure_batch_limit(self, shape: tuple[int, int], opts: StyleConfig) -> int:
        """Peak memory of one image at this shape (run eager: a compiled network needs less),
        measured once, against free memory."""
        torch.cuda.synchronize(self.device)
        before = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        x = torch.zeros(1, 3, *shape, device=self.device, requires_grad=True)
        feats = self.features(x, opts.content_layers + opts.style_layers)
        sum(f.float().pow(2).mean() for f in feats.values()).backward()
        per_image = torch.cuda.max_memory_allocated(self.device) - before
        hist = 2 * opts.history_size * 3 * shape[0] * shape[1] * 4  # L-BFGS (s, y) pairs
        del x, feats
        # Free for this process: what the device has free plus what PyTorch's allocator holds
        # cached but unused (it reuses that before asking the device for more).
        free = torch.cuda.mem_get_info(self.device)[0] + (
            torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device))
        limit = max(1, min(64, int(0.8 * free / (per_image * 1.5 + hist))))
        self._batch_limit[_memory_key(shape, opts)] = limit
        return limit

    def _optimize_chunk(self, contents, styles, callback, init, iterations,
                        cfg: StyleConfig) -> list[ItemResult]:
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
            x = (self._initial(content, h + 2 * m, w + 2 * m, cfg) if x is None
                 else _pad(_resize(x, h, w), m))
            loss = self.loss_for(content, styles, longest=max(h, w), options=cfg)
            taps = cfg.content_layers + cfg.style_layers
            hook = _hook(callback, si, len(cfg.scales), iterations, m)
            out = optimize(
                x, self._objective(loss, taps), iterations, cfg.optimizer,
                cfg.effective_lr, cfg.history_size,
                Stopping(cfg.early_stopping, cfg.tolerance, cfg.window), hook, cfg.log_every,
                narrow=lambda rows, loss=loss: self._objective(loss.select(rows), taps))
            x, used = _crop(out.pixels, m), used + out.iterations
        losses = out.losses
        if m:  # report the losses of the picture delivered, without its margin
            with torch.no_grad():
                x = x.contiguous()
                losses = self.loss_for(_crop(content, m), styles, options=cfg)(
                    self.features(x, taps), x)
        pixels = color.combine_luminance(x, full) if grey else x
        total, content_l, style_l, tv = (t.tolist() for t in losses)
        images = pixels.clamp(0, 255).cpu()
        return [ItemResult(images[i], int(used[i]), content_l[i], style_l[i], tv[i], total[i])
                for i in range(len(contents))]

    def _objective(self, loss: GatysLoss, taps: tuple[str, ...]):
        return lambda px: loss(self.features(px, taps, compiled=True), px)

    @torch.no_grad()
    def loss_for(self, content: torch.Tensor, styles: Sequence[Style],
                 longest: int | None = None, options: StyleConfig | None = None) -> GatysLoss:
        """The loss module for a batch of contents (B, 3, h, w), one style each; the style
        images are scaled for a content of longest side ``longest`` (default: the content's)."""
        cfg = self.options(options)
        per_image = cfg.preserve_colors != "none"
        longest = longest or max(content.shape[-2:])
        grams = [self.style_grams(s, longest, content[i] if per_image else None, cfg)
                 for i, s in enumerate(styles)]
        cfeats = self.features(content, cfg.content_layers)
        return GatysLoss(
            {k: cfeats[k].float() for k in cfg.content_layers},
            {k: torch.stack([g[k] for g in grams]) for k in cfg.style_layers},
            layer_weights(cfg.content_layers, cfg.content_layer_weights),
            layer_weights(cfg.style_layers, cfg.style_layer_weights),
            cfg.content_weight, cfg.style_weight, cfg.tv_weight)

    @torch.no_grad()
    def evaluate(self, pixels: Sequence[torch.Tensor], contents: Sequence[torch.Tensor],
                 styles: Sequence[Style], options: StyleConfig | None = None) -> list[float]:
        """Total Gatys loss of finished images (3, H, W) against their contents and styles."""
        cfg = self.options(options)
        content = torch.stack([c.float() for c in contents]).to(self.device)
        x = torch.stack([p.float() for p in pixels]).to(self.device)
        with self.numerics():
            loss = self.loss_for(content, styles, options=cfg)
            return loss(self.features(x, cfg.content_layers + cfg.style_layers), x)[0].tolist()

    def _initial(self, content: torch.Tensor, h: int, w: int, cfg: StyleConfig) -> torch.Tensor:
        init = cfg.init
        if init == "content":
            return content.clone()
        if init == "noise":
            noise = initial_noise(cfg, h, w)  # (3, h, w), the same for every image
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


def _memory_key(shape: tuple[int, int], opts: StyleConfig) -> tuple:
    """What sets an image's memory at a shape: the layers it taps, its L-BFGS history."""
    return (*shape, opts.history_size, opts.content_layers + opts.style_layers)


def scale_shape(h: int, w: int, scale: float) -> tuple[int, int]:
    """(h, w) of an image at one of the coarse-to-fine ``scales``."""
    return max(16, round(h * scale)), max(16, round(w * scale))


# Graphs torch.compile may build for the network (image shapes x batch of 1 or more) before
# it gives up and runs eager: the aspect buckets of one size, and a few sizes (scales).
COMPILED_GRAPHS = 64


def _graph_limit():
    """torch.compile's graph limit raised to COMPILED_GRAPHS for the duration of a call
    (``recompile_limit`` since PyTorch 2.6, ``cache_size_limit`` before)."""
    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    return cfg.patch(**{name: COMPILED_GRAPHS})


def _compile(model):
    try:
        return torch.compile(model)
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
