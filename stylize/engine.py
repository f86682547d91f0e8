"""The engine: VGG-19 loaded once, style targets cached, batches of images optimised.

``Stylizer(cfg)`` owns a device, a frozen VGG-19 built from ``cfg.network``, the objective
(network and loss as one function, compiled with ``compile``) and a bounded (LRU by bytes)
cache of style targets keyed by (style key, size, style loss); ``stylize_batch`` solves one problem
per content image, with ``cfg`` or with per-call ``options`` that share its network (another
iteration count, seed, layer set, weights...: no reload), in device-sized chunks halved on
out-of-memory.

Beside it: ``stylize.api`` (the one-call ``stylize()``), ``stylize.records`` (``Style``,
``ItemResult``, ``StepInfo``: importable from here), ``stylize.runtime`` (device, precision,
compile policy), ``stylize.batching`` (images per chunk, out-of-memory halving),
``stylize.multiscale`` (one chunk, scale by scale), ``stylize.batchloss`` (a batch's loss,
guided with regions), ``stylize.objective`` (the step's function), ``stylize.targets`` (the
target cache), ``stylize.canvas`` (scales, margins, the start image).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from contextlib import AbstractContextManager

import torch
from PIL import Image

from stylize import color
from stylize.batching import BatchLimits
from stylize.batchloss import batch_loss
from stylize.canvas import resize_longest_tensor
from stylize.config import TAP_NAMES, StyleConfig, resolve_config
from stylize.images import load_image, resize_bucket, resize_longest, to_tensor
from stylize.losses import STYLE_KINDS, GatysLoss
from stylize.model import ReadBytes, build_vgg
from stylize.multiscale import optimize_chunk
from stylize.objective import Objective, network
from stylize.records import Callback, ItemResult, Regions, StepInfo, Style
from stylize.runtime import (
    amp_dtype,
    memory_format,
    numerics,
    resolve_device,
    resolve_precision,
    slow_float64,
)
from stylize.targets import DEFAULT_CPU_CACHE_BYTES, Target, TargetCache

__all__ = ["Callback", "ItemResult", "Regions", "StepInfo", "Style", "Stylizer"]


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
        # a GPU with slow float64 (its name): said once, at the first wasserstein2 targets
        self._slow_float64 = slow_float64(self.device)
        if target_cache_bytes is None:
            target_cache_bytes = (
                torch.cuda.get_device_properties(self.device).total_memory // 10
                if self.device.type == "cuda"
                else DEFAULT_CPU_CACHE_BYTES
            )
        self.targets = TargetCache(target_cache_bytes)
        # images per chunk, learnt per (shape, what sets the memory of an image there)
        self.limits = BatchLimits(self.device, self.features, self.stats_dtype)

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

    def numerics(self) -> AbstractContextManager[None]:
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
        if opts.style_loss == "wasserstein2" and self._slow_float64:
            warnings.warn(
                f"style_loss wasserstein2 on {self._slow_float64}: its square root runs in "
                "float64, 1/32 to 1/64 of this GPU's fp32 rate, so each step costs several "
                "Gram steps; gram or mean_std is the fast choice here",
                stacklevel=2,
            )
            self._slow_float64 = None
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

        def chunk(part: slice) -> list[ItemResult]:
            with self.numerics():
                return self._optimize_chunk(
                    contents[part],
                    styles[part],
                    callback,
                    None if init is None else init[part],
                    iterations,
                    opts,
                    None if regions is None else regions[part],
                )

        return self.limits.run(len(contents), shape, opts, nreg, chunk)

    def batch_limit(self, shape: tuple[int, int], options: StyleConfig | None = None) -> int:
        """Images per chunk at this (h, w): learnt (measured, or halved after out of memory),
        else ``batch_size``, else measured against free GPU memory (4 on a CPU)."""
        return self.limits.size((int(shape[0]), int(shape[1])), self.options(options))

    # one chunk, under this engine's numerics (stylize_batch calls it through self)
    _optimize_chunk = optimize_chunk

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
        longest = longest or max(content.shape[-2:])
        return batch_loss(self, content, styles, cfg, longest, regions, margin)

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
