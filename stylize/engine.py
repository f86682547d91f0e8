"""The engine: VGG-19 loaded once, style targets cached, batches of images optimised.

``Stylizer(cfg)`` owns a device, a frozen VGG-19 built from ``cfg.network``, the objective
(network and loss as one function, compiled with ``compile``) and a bounded (LRU by bytes)
cache of style targets keyed by (style key, size, style loss); ``stylize_batch`` solves one problem
per content image, with ``cfg`` or with per-call ``options`` that share its network (another
iteration count, seed, layer set, weights...: no reload), in device-sized chunks halved on
out-of-memory.

Beside it: ``stylize.api`` (the one-call ``stylize()``), ``stylize.runtime`` (device,
precision, compile policy), ``stylize.objective`` (the step's function), ``stylize.targets``
(the target cache), ``stylize.canvas`` (scales, margins, starting noise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ContextManager, Sequence

import torch
from PIL import Image

from stylize import color
from stylize.canvas import (
    crop,
    initial_noise,
    margin_pixels,
    pad,
    resize,
    resize_longest_tensor,
    scale_shape,
)
from stylize.config import TAP_NAMES, StyleConfig, resolve_config
from stylize.images import load_image, resize_bucket, resize_longest, to_tensor
from stylize.losses import STYLE_KINDS, GatysLoss, content_loss, layer_weights
from stylize.masks import GuidedGatysLoss, layer_guides, stack_masks
from stylize.model import ReadBytes, build_vgg
from stylize.objective import Objective, network
from stylize.optim import StepHook, Stopping, optimize
from stylize.runtime import (
    amp_dtype,
    free_device_memory,
    memory_format,
    numerics,
    resolve_device,
    resolve_precision,
)
from stylize.targets import DEFAULT_CPU_CACHE_BYTES, Target, TargetCache


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
            raise ValueError(
                f"style {self.key!r}: {len(w)} blend weights for "
                f"{len(self.images)} images; weights must be >= 0, not all 0"
            )
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
    steps: int  # evaluations of this scale (cfg.schedule)
    losses: tuple[float, ...]  # total loss per image
    active: int  # images still optimising
    pixels: torch.Tensor  # (B, 3, h, w) current images, 0..255, on the device; do not modify


Callback = Callable[[StepInfo], None]

# One image's regions (spatial control, ``stylize.masks``): (style, mask) pairs, each mask a
# greyscale (H, W) in 0..1 at the content's size (white: the style applies).
Regions = Sequence[tuple["Style", torch.Tensor]]


def _sample_images() -> list[torch.Tensor]:
    from importlib import resources

    folder = resources.files("stylize") / "samples"
    return [
        load_image(str(p), size=256)
        for p in sorted(folder.iterdir(), key=str)
        if str(p).endswith(".jpg")
    ]


class Stylizer:
    """A VGG-19 on a device, and the style targets computed so far.

    Built from ``cfg.network``; every call may pass ``options`` with other per-image settings
    (the network part must be the same). ``target_cache_bytes`` bounds the style targets kept
    (default: a tenth of the GPU's memory, 1 GiB on a CPU).
    """

    def __init__(
        self,
        cfg: StyleConfig | None = None,
        read_bytes: ReadBytes | None = None,
        target_cache_bytes: int | None = None,
    ):
        self.cfg = cfg = cfg or resolve_config()
        self.network = cfg.network
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        # Every layer is built, so that any per-image layer set is served; a forward pass
        # stops at the deepest layer it is asked for.
        model, self.weights_hash = build_vgg(
            cfg.weights,
            TAP_NAMES,
            cfg.pooling,
            cfg.preprocessing,
            cfg.normalize,
            read_bytes,
            normalize_images=_sample_images,
            padding=cfg.padding,
        )
        # Device, dtype and layout are settled here once; the loop has no branches on them.
        # TF32 is scoped to this engine's calls (numerics()), never left set process-wide.
        self.memory_format = memory_format(self.device)
        self.model = model.to(self.device, memory_format=self.memory_format)  # type: ignore[call-overload]
        self.objective = Objective(
            self.model, amp_dtype(self.precision), self.memory_format, cfg.compile
        )
        # the dtype of the Gaussian style losses' matrix part (losses.py): MPS has no float64
        self.stats_dtype = torch.float32 if self.device.type == "mps" else torch.float64
        if target_cache_bytes is None:
            target_cache_bytes = (
                torch.cuda.get_device_properties(self.device).total_memory // 10
                if self.device.type == "cuda"
                else DEFAULT_CPU_CACHE_BYTES
            )
        self.targets = TargetCache(target_cache_bytes)
        # images per chunk, learnt per (shape, what sets the memory of an image there)
        self._batch_limit: dict[tuple[object, ...], int] = {}

    def options(self, options: StyleConfig | None) -> StyleConfig:
        """``options`` (default: the engine's config), checked to fit the loaded network."""
        if options is None or options is self.cfg:
            return self.cfg
        if options.network != self.network:
            diff = {
                k: v
                for k, v in options.network.model_dump().items()
                if getattr(self.network, k) != v
            }
            raise ValueError(
                f"options {diff} need another network than this Stylizer's; "
                "build a Stylizer with them"
            )
        return options

    @property
    def compiled(self) -> bool:
        """The optimisation's steps run compiled (``compile``, and the compiler has not failed)."""
        return self.objective.compiled

    def numerics(self) -> ContextManager[None]:
        """This engine's TF32 flags and compile graph limit, for the duration of its work
        (runtime.numerics)."""
        return numerics(self.precision, self.objective.compiled)

    # ------------------------------------------------------------------------------ inputs
    def prepare_content(
        self, img: Image.Image, exact: bool = False, options: StyleConfig | None = None
    ) -> torch.Tensor:
        """A decoded image resized for the engine: (3, h, w) in 0..255, longest side ``size``.

        With ``bucket`` (and not ``exact``) the shape snaps to an aspect bucket, so that
        images of slightly different aspect ratios share a batch (images.bucket_shape).
        """
        opts = self.options(options)
        if opts.bucket and not exact:
            return to_tensor(resize_bucket(img, opts.size))
        return to_tensor(resize_longest(img, opts.size))

    def features(
        self, pixels: torch.Tensor, taps: Sequence[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """``{layer: activation}`` of ``taps`` (default: the config's content and style
        layers), eager (the optimisation's steps run through ``self.objective``)."""
        taps = tuple(dict.fromkeys(taps or self.cfg.content_layers + self.cfg.style_layers))
        return network(
            self.model, pixels.to(self.device), taps, self.objective.amp, self.memory_format
        )

    @torch.no_grad()
    def style_targets(
        self,
        style: Style,
        longest: int,
        content: torch.Tensor | None = None,
        options: StyleConfig | None = None,
    ) -> dict[str, Target]:
        """Blended style targets {layer: tuple} of a style for a content of this longest side:
        what the options' ``style_loss`` compares with (gram: (Gram (C, C),); see
        losses.STYLE_KINDS), without a batch dimension.

        Blended styles average their statistics (Gram matrices; or means and second moments,
        the moments of the pooled features) before the target is made from them. Cached (LRU,
        ``self.targets``) by (key, style side, style loss) unless they depend on the content
        (colour preservation); layers missing from a cached entry are added to it.
        """
        opts = self.options(options)
        kind = STYLE_KINDS[opts.style_loss]
        side = max(16, round(longest * opts.style_scale))
        key = (style.key, side, opts.style_loss)
        if content is None:
            cached = self.targets.get(key, opts.style_layers)
            if cached is not None:
                return cached
        stats: dict[str, tuple[torch.Tensor, ...]] = {}
        with self.numerics():
            for img, w in zip(style.images, style.blend()):
                img = resize_longest_tensor(img.float(), side, min_short=16).to(self.device)
                if opts.preserve_colors == "histogram":
                    assert content is not None  # colour preservation passes the content
                    img = color.match_histogram(img, content.to(self.device))
                elif opts.preserve_colors == "luminance":
                    assert content is not None
                    grey = color.luminance(content.to(self.device))
                    img = color.match_luminance(color.luminance(img), grey)
                feats = self.features(img.unsqueeze(0), opts.style_layers)
                for layer in opts.style_layers:
                    mine = kind.statistics(feats[layer])  # each (1, ...)
                    before = stats.get(layer)
                    stats[layer] = tuple(
                        w * x if before is None else before[i] + w * x for i, x in enumerate(mine)
                    )
        out = {
            layer: tuple(t[0] for t in kind.target(s, self.device, self.stats_dtype))
            for layer, s in stats.items()
        }
        if content is None:
            return self.targets.put(key, out)
        return out

    def forget(self, key: str) -> None:
        """Drop the cached targets of a style (all sizes)."""
        self.targets.forget(key)

    # ---------------------------------------------------------------------------- batches
    def stylize_batch(
        self,
        contents: Sequence[torch.Tensor],
        styles: Sequence[Style],
        callback: Callback | None = None,
        init: Sequence[torch.Tensor] | None = None,
        iterations: int | None = None,
        options: StyleConfig | None = None,
        regions: Sequence[Regions | None] | None = None,
    ) -> list[ItemResult]:
        """Stylize same-size contents (3, H, W) in 0..255, ``styles[i]`` for ``contents[i]``,
        with ``options`` (default: the engine's config; same network, see ``options()``).

        ``regions`` (spatial control, ``stylize.masks``): per image None (``styles[i]`` over the
        whole picture) or (style, mask) pairs that replace ``styles[i]`` (then unused): each
        mask a greyscale tensor (H, W) in 0..1 (resized to the content's size), white where its
        style applies; where no mask covers there is no style loss. A batch with regions runs
        its steps eager (not compiled), with fewer images per chunk.

        Splits into device-sized chunks; on out-of-memory a chunk is halved and retried. A
        single image that does not fit raises ``torch.OutOfMemoryError``. ``iterations``
        overrides the options' for this call, at every scale (those of ``scales`` pairs too);
        ``init`` gives start images (default: ``init``).
        """
        opts = self.options(options)
        if len(contents) != len(styles):
            raise ValueError(f"{len(contents)} contents but {len(styles)} styles")
        if regions is not None and len(regions) != len(contents):
            raise ValueError(f"{len(contents)} contents but {len(regions)} region lists")
        if regions is not None and all(r is None for r in regions):
            regions = None  # the default path
        if regions is not None and any(r is not None and not r for r in regions):
            raise ValueError("an image's regions: at least one (style, mask) pair")
        if not contents:
            return []
        nreg = max((len(r) for r in regions or () if r is not None), default=0)
        shape = (int(contents[0].shape[-2]), int(contents[0].shape[-1]))
        if any(tuple(c.shape[-2:]) != shape for c in contents):
            raise ValueError("stylize_batch needs contents of one size; group them first")
        results: list[ItemResult] = []
        start = 0
        while start < len(contents):
            n = min(self._chunk_size(shape, opts, nreg), len(contents) - start)
            try:
                with self.numerics():
                    results += self._optimize_chunk(
                        contents[start : start + n],
                        styles[start : start + n],
                        callback,
                        None if init is None else init[start : start + n],
                        iterations,
                        opts,
                        None if regions is None else regions[start : start + n],
                    )
            except torch.OutOfMemoryError:
                if n == 1:
                    raise
                self._batch_limit[_memory_key(shape, opts, nreg)] = n // 2
                free_device_memory(self.device)
                continue
            start += n
        return results

    def batch_limit(self, shape: tuple[int, int], options: StyleConfig | None = None) -> int:
        """Images per chunk at this (h, w): learnt (measured, or halved after out of memory),
        else ``batch_size``, else measured against free GPU memory (4 on a CPU)."""
        return self._chunk_size((int(shape[0]), int(shape[1])), self.options(options))

    def _chunk_size(self, shape: tuple[int, int], opts: StyleConfig, regions: int = 0) -> int:
        learnt = self._batch_limit.get(_memory_key(shape, opts, regions))
        if learnt:  # measured, or halved after out-of-memory
            return learnt
        if regions:  # guided statistics: about a copy of the features per region
            return max(1, self._chunk_size(shape, opts) // (regions + 1))
        if opts.batch_size:
            return opts.batch_size
        if self.device.type != "cuda":
            return 4
        return self._measure_batch_limit(shape, opts)

    def _measure_batch_limit(self, shape: tuple[int, int], opts: StyleConfig) -> int:
        """Peak memory of one image's step at this shape (the objective's losses, run eager:
        compiled, a step needs less), measured once, against free memory."""
        torch.cuda.synchronize(self.device)
        before = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        x = torch.zeros(1, 3, *shape, device=self.device, requires_grad=True)
        feats = self.features(x, opts.content_layers + opts.style_layers)
        kind = STYLE_KINDS[opts.style_loss]
        losses = [
            content_loss(feats[k], torch.zeros_like(feats[k], dtype=torch.float32))
            for k in opts.content_layers
        ]
        for k in opts.style_layers:  # against its own statistics: a target of the right kind
            own = kind.target(kind.statistics(feats[k].detach()), self.device, self.stats_dtype)
            losses.append(kind.loss(feats[k], *own))
        torch.stack(losses).sum().backward()  # type: ignore[no-untyped-call]
        per_image = torch.cuda.max_memory_allocated(self.device) - before
        hist = 2 * opts.history_size * 3 * shape[0] * shape[1] * 4  # L-BFGS (s, y) pairs
        del x, feats
        # Free for this process: what the device has free plus what PyTorch's allocator holds
        # cached but unused (it reuses that before asking the device for more).
        free = torch.cuda.mem_get_info(self.device)[0] + (
            torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        )
        limit = max(1, min(64, int(0.8 * free / (per_image * 1.5 + hist))))
        self._batch_limit[_memory_key(shape, opts)] = limit
        return limit

    def _optimize_chunk(
        self,
        contents: Sequence[torch.Tensor],
        styles: Sequence[Style],
        callback: Callback | None,
        init: Sequence[torch.Tensor] | None,
        iterations: int | None,
        cfg: StyleConfig,
        regions: Sequence[Regions | None] | None = None,
    ) -> list[ItemResult]:
        schedule = (
            cfg.schedule
            if not iterations
            else tuple((scale, iterations) for scale, _ in cfg.schedule)
        )
        full = torch.stack([c.float() for c in contents]).to(self.device)  # (B, 3, H, W)
        grey = cfg.preserve_colors == "luminance"
        target = color.luminance(full) if grey else full
        x = None if init is None else torch.stack([i.float() for i in init]).to(self.device)
        used = torch.zeros(len(contents), dtype=torch.long, device=self.device)
        for si, (scale, steps) in enumerate(schedule):
            h, w = scale_shape(full.shape[-2], full.shape[-1], scale)
            m = margin_pixels(cfg.margin, h, w)
            content = pad(resize(target, h, w), m)  # (B, 3, h + 2m, w + 2m)
            x = (
                self._initial(content, h + 2 * m, w + 2 * m, cfg)
                if x is None
                else pad(resize(x, h, w), m)
            )
            loss = self.loss_for(
                content, styles, longest=max(h, w), options=cfg, regions=regions, margin=m
            )
            taps = cfg.content_layers + cfg.style_layers
            hook = _hook(callback, si, len(schedule), steps, m)
            out = optimize(
                x,
                self._objective(loss, taps),
                steps,
                cfg.optimizer,
                cfg.effective_lr,
                cfg.history_size,
                Stopping(cfg.early_stopping, cfg.tolerance, cfg.window),
                hook,
                cfg.log_every,
                narrow=self._narrow(loss, taps),
            )
            x, used = crop(out.pixels, m), used + out.iterations
        assert x is not None, "a schedule has at least one scale"
        losses = out.losses
        if m:  # report the losses of the picture delivered, without its margin
            with torch.no_grad():
                x = x.contiguous()
                losses = self.loss_for(crop(content, m), styles, options=cfg, regions=regions)(
                    self.features(x, taps), x
                )
        pixels = color.combine_luminance(x, full) if grey else x
        total, content_l, style_l, tv = (t.tolist() for t in losses)
        images = pixels.clamp(0, 255).cpu()
        return [
            ItemResult(images[i], int(used[i]), content_l[i], style_l[i], tv[i], total[i])
            for i in range(len(contents))
        ]

    def _objective(
        self, loss: GatysLoss, taps: tuple[str, ...]
    ) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
        return lambda px: self.objective(px, loss, taps)

    def _narrow(
        self, loss: GatysLoss, taps: tuple[str, ...]
    ) -> Callable[[torch.Tensor], Callable[[torch.Tensor], tuple[torch.Tensor, ...]]]:
        """The objective of the images ``rows`` of this batch only (images that stopped)."""
        return lambda rows: self._objective(loss.select(rows), taps)

    @torch.no_grad()
    def loss_for(
        self,
        content: torch.Tensor,
        styles: Sequence[Style],
        longest: int | None = None,
        options: StyleConfig | None = None,
        regions: Sequence[Regions | None] | None = None,
        margin: int = 0,
    ) -> GatysLoss:
        """The loss module for a batch of contents (B, 3, h, w), one style each; the style
        images are scaled for a content of longest side ``longest`` (default: the content's).

        With ``regions`` (see ``stylize_batch``) a ``masks.GuidedGatysLoss``; the contents
        carry a reflected ``margin``, the masks (resized to the picture) get the same."""
        cfg = self.options(options)
        per_image = cfg.preserve_colors != "none"
        longest = longest or max(content.shape[-2:])
        if regions is not None and any(r is not None for r in regions):
            return self._guided_loss(content, styles, regions, longest, cfg, margin)
        targets = [
            self.style_targets(s, longest, content[i] if per_image else None, cfg)
            for i, s in enumerate(styles)
        ]
        cfeats = self.features(content, cfg.content_layers)
        return GatysLoss(
            {k: cfeats[k].float() for k in cfg.content_layers},
            {
                k: tuple(torch.stack(parts) for parts in zip(*(t[k] for t in targets)))
                for k in cfg.style_layers
            },
            layer_weights(cfg.content_layers, cfg.content_layer_weights),
            layer_weights(cfg.style_layers, cfg.style_layer_weights),
            cfg.content_weight,
            cfg.style_weight,
            cfg.tv_weight,
            cfg.style_loss,
        )

    def _guided_loss(
        self,
        content: torch.Tensor,
        styles: Sequence[Style],
        regions: Sequence[Regions | None],
        longest: int,
        cfg: StyleConfig,
        margin: int,
    ) -> GuidedGatysLoss:
        per_image = cfg.preserve_colors != "none"
        ones = torch.ones(1, 1)
        rows: list[Regions] = [
            r if r is not None else [(s, ones)] for r, s in zip(regions, styles, strict=True)
        ]
        h, w = content.shape[-2] - 2 * margin, content.shape[-1] - 2 * margin
        masks = pad(stack_masks(rows, h, w).to(self.device), margin)  # (B, R, H, W)
        targets = [
            [self.style_targets(s, longest, content[i] if per_image else None, cfg) for s, _ in row]
            for i, row in enumerate(rows)
        ]
        nreg = masks.shape[1]
        feats = self.features(content, cfg.content_layers + cfg.style_layers)
        style_targets = {  # (B, R, ...): a row with fewer regions repeats its last (mask 0)
            k: tuple(
                torch.stack(
                    [
                        torch.stack([t[min(r, len(t) - 1)][k][j] for r in range(nreg)])
                        for t in targets
                    ]
                )
                for j in range(len(targets[0][0][k]))
            )
            for k in cfg.style_layers
        }
        guides = {
            k: layer_guides(masks, (int(feats[k].shape[-2]), int(feats[k].shape[-1])), k)
            for k in cfg.style_layers
        }
        return GuidedGatysLoss(
            {k: feats[k].float() for k in cfg.content_layers},
            style_targets,
            guides,
            layer_weights(cfg.content_layers, cfg.content_layer_weights),
            layer_weights(cfg.style_layers, cfg.style_layer_weights),
            cfg.content_weight,
            cfg.style_weight,
            cfg.tv_weight,
            cfg.style_loss,
        )

    @torch.no_grad()
    def evaluate(
        self,
        pixels: Sequence[torch.Tensor],
        contents: Sequence[torch.Tensor],
        styles: Sequence[Style],
        options: StyleConfig | None = None,
        regions: Sequence[Regions | None] | None = None,
    ) -> list[float]:
        """Total Gatys loss of finished images (3, H, W) against their contents and styles
        (and ``regions``, see ``stylize_batch``)."""
        cfg = self.options(options)
        content = torch.stack([c.float() for c in contents]).to(self.device)
        x = torch.stack([p.float() for p in pixels]).to(self.device)
        with self.numerics():
            loss = self.loss_for(content, styles, options=cfg, regions=regions)
            total = loss(self.features(x, cfg.content_layers + cfg.style_layers), x)[0]
            return [float(v) for v in total.tolist()]

    def _initial(self, content: torch.Tensor, h: int, w: int, cfg: StyleConfig) -> torch.Tensor:
        init = cfg.init
        if init == "content":
            return content.clone()
        if init == "noise":
            noise = initial_noise(cfg, h, w)  # (3, h, w), the same for every image
            return noise.expand(content.shape[0], -1, -1, -1).to(self.device)
        img = load_image(init)  # a path: resized to each content's size
        return resize(img.unsqueeze(0).to(self.device), h, w).expand_as(content).clone()


def _memory_key(shape: tuple[int, int], opts: StyleConfig, regions: int = 0) -> tuple[object, ...]:
    """What sets an image's memory at a shape: the layers it taps, its L-BFGS history, its
    style loss (and its regions, where it has masks)."""
    key = (*shape, opts.history_size, opts.content_layers + opts.style_layers, opts.style_loss)
    return (*key, "regions", regions) if regions else key


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
