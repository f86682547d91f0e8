"""Engine settings: one frozen dataclass, the presets, and the allowed values.

Every option can override a preset: ``resolve_config("fast", size=256)``. The allowed values
listed in error messages come from the same constants the code checks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

CONTENT_LAYERS_GATYS = ("relu4_2",)
STYLE_LAYERS_GATYS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")



def _layer_names() -> tuple[str, ...]:
    names = []
    for b, n_convs in enumerate((2, 2, 4, 4, 4), start=1):  # VGG-19's blocks of convolutions
        for c in range(1, n_convs + 1):
            names += [f"conv{b}_{c}", f"relu{b}_{c}"]
        names.append(f"pool{b}")
    return tuple(names)


# torchvision's vgg19().features: 16 convolutions, each followed by a ReLU, 5 max pools.
LAYER_NAMES = _layer_names()  # index i is features[i]
TAP_NAMES = tuple(n for n in LAYER_NAMES if not n.startswith("pool"))
CONV_NAMES = tuple(n for n in LAYER_NAMES if n.startswith("conv"))

OPTIMIZERS = ("lbfgs", "adam")
POOLINGS = ("max", "avg")
PADDINGS = ("zeros", "reflect", "replicate")  # of conv1_1, the layer that sees the pixels
WEIGHT_SOURCES = ("caffe", "torchvision")  # or a path / fsspec-style URL to a state dict
PREPROCESSINGS = ("caffe", "torchvision")
PRESERVE_COLORS = ("none", "luminance", "histogram")
INIT_KINDS = ("noise", "content")  # or a path to an image
# The initial noise's amplitude spectrum, 1/f^exponent: white is flat (the paper's), natural
# falls like a photograph's (1/f), smooth twice as fast (1/f^2).
NOISE_SPECTRA = {"white": 0.0, "natural": 1.0, "smooth": 2.0}
PRECISIONS = ("auto", "fp32", "tf32", "bf16")
DEVICES = ("auto", "cpu", "cuda", "mps")  # "cuda:N" is accepted too
OUTPUT_FORMATS = ("png", "jpeg", "webp", "tiff")
BIT_DEPTHS = (8, 16)
BIT_DEPTH_16_FORMATS = ("png", "tiff")


class ConfigError(ValueError):
    """A bad option value. The message names the option and the allowed values."""


@dataclass(frozen=True)
class StyleConfig:
    """Everything the engine needs to stylize one image. Defaults are the ``gatys2016`` preset.

    Loss normalisation (see README, "Losses"): content loss is the mean squared error of the
    features; a Gram matrix is F F^T / (C H W); the style loss of a layer is the mean squared
    error of the Gram matrices. ``style_weight / content_weight`` is then the paper's beta/alpha.
    """

    preset: str = "gatys2016"
    size: int = 512  # longest side of the output, pixels
    iterations: int = 500  # function/gradient evaluations per scale
    content_layers: tuple[str, ...] = CONTENT_LAYERS_GATYS
    content_layer_weights: tuple[float, ...] | None = None  # None: equal
    style_layers: tuple[str, ...] = STYLE_LAYERS_GATYS
    style_layer_weights: tuple[float, ...] | None = None  # None: equal (the paper's w_l = 1/5)
    content_weight: float = 1.0  # alpha
    style_weight: float = 1e3  # beta; alpha/beta = 1e-3 as in the paper's Fig. 2
    tv_weight: float = 0.0
    init: str = "noise"  # noise | content | path of an image
    # The paper starts from white noise; white noise of std 0.1 * 255 was still half there
    # after 300-500 L-BFGS steps, as fine colour speckle. Smooth noise of std 0.03 * 255 ends
    # at the same loss without it (README, "Picture quality"); white, 0.1 is the old start.
    noise_scale: float = 0.03  # std of the initial noise around mid-grey, as a fraction of 255
    noise_spectrum: str = "smooth"  # white | natural | smooth: see NOISE_SPECTRA
    optimizer: str = "lbfgs"
    lr: float | None = None  # None: 1.0 for lbfgs, 10.0 (pixel units) for adam
    # L-BFGS pairs kept per image. The paper does not say; 20 reaches the same losses as 100
    # at 128 px / 200 steps (README, "Losses") and reads 5x less memory per step.
    history_size: int = 20
    pooling: str = "avg"  # the paper replaces max pooling by average pooling
    padding: str = "zeros"  # conv1_1's padding; deeper layers always pad with zeros
    margin: float = 0.0  # optimised around the picture, then cropped: fraction of the longest side
    weights: str = "caffe"
    preprocessing: str | None = None  # only for a weights path/URL: caffe | torchvision
    normalize: bool = False  # rescale filters to mean activation 1 (the paper's normalisation)
    style_scale: float = 1.0  # style image longest side relative to the content's
    preserve_colors: str = "none"
    scales: tuple[float, ...] = (1.0,)  # coarse-to-fine fractions of size, last must be 1.0
    early_stopping: bool = False
    tolerance: float = 1e-3  # relative loss change over `window` steps that counts as converged
    window: int = 20
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 on CUDA GPUs that support it, else fp32
    compile: bool = False  # torch.compile the network (falls back to eager if it fails)
    bucket: bool = True  # snap contents to aspect buckets so mixed photos batch (images.py)
    batch_size: int = 0  # 0: chosen from free device memory (1 per batch on the CPU: 4)
    log_every: int = 10  # steps between progress callbacks (each one is a device sync)

    def __post_init__(self) -> None:
        _validate(self)

    def replace(self, **changes: Any) -> "StyleConfig":
        """A copy with some options changed (validated; the preset is not re-applied)."""
        return StyleConfig(**_coerce({**self.to_dict(), **changes}))

    @property
    def effective_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return 1.0 if self.optimizer == "lbfgs" else 10.0

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


PRESETS: dict[str, dict[str, Any]] = {
    # Gatys, Ecker & Bethge (2015/2016): relu4_2 content, relu1_1..relu5_1 equal, avg pooling,
    # white-noise init, L-BFGS, alpha/beta = 1e-3.
    "gatys2016": {},
    # jcjohnson/neural-style defaults. Its content and style losses are normalised as ours,
    # and every style layer gets the full style weight. Its TV loss is 0.5 * strength * a sum
    # of squares where ours is a mean: 1e-3 * 0.5 * 3 * 512 * 512 = 393 matches it at 512 px.
    "neural-style": dict(
        iterations=1000, content_weight=5.0, style_weight=100.0, tv_weight=393.0,
        style_layer_weights=(1.0, 1.0, 1.0, 1.0, 1.0), pooling="max", init="noise",
        noise_scale=0.001 / 255, noise_spectrum="white",  # its randn * 0.001, in pixel units
        optimizer="lbfgs", history_size=100,
    ),
    # Throughput: start from the content, stop each image once its loss improves by less
    # than 2% over 20 steps. On 8 images at 64 px that happened after 279-347 steps (mean
    # 315) at 1.11x the loss of all 500 (README, "Presets").
    "fast": dict(
        iterations=500, init="content", early_stopping=True, tolerance=2e-2, window=20,
        pooling="max",
    ),
}


def resolve_config(preset: str | None = None, **overrides: Any) -> StyleConfig:
    """Build a config from a preset (default ``gatys2016``) and option overrides.

    Raises ConfigError naming the option for an unknown option or a bad value.
    """
    preset = preset or "gatys2016"
    if preset not in PRESETS:
        raise ConfigError(f"--preset: unknown preset {preset!r}; allowed: {', '.join(PRESETS)}")
    names = {f.name for f in dataclasses.fields(StyleConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r}; allowed: {', '.join(sorted(names))}")
    values: dict[str, Any] = dict(PRESETS[preset])
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["preset"] = preset
    return StyleConfig(**_coerce(values))


def config_from_mapping(data: Mapping[str, Any]) -> StyleConfig:
    """A config from a plain mapping (YAML), with ``preset`` as one of its keys."""
    data = dict(data)
    return resolve_config(data.pop("preset", None), **data)


_TUPLE_FIELDS = ("content_layers", "content_layer_weights", "style_layers",
                 "style_layer_weights", "scales")


def _coerce(values: dict[str, Any]) -> dict[str, Any]:
    out = dict(values)
    for name in _TUPLE_FIELDS:
        v = out.get(name)
        if v is None:
            continue
        if isinstance(v, str):
            v = [s for s in v.replace(",", " ").split() if s]
        if not isinstance(v, (list, tuple)):
            v = [v]
        out[name] = tuple(v)
    types = {f.name: f.type for f in dataclasses.fields(StyleConfig)}
    for name, v in list(out.items()):
        t = str(types.get(name, ""))
        try:
            if t == "int" and not isinstance(v, bool):
                out[name] = _to_int(v)
            elif t.startswith("float") and v is not None:
                out[name] = float(v)
            elif t == "bool" and isinstance(v, str):
                if v.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(v)
                out[name] = v.lower() in ("true", "1", "yes")
            elif name in ("scales", "content_layer_weights", "style_layer_weights") and v is not None:
                out[name] = tuple(float(x) for x in v)
        except (TypeError, ValueError):
            raise ConfigError(f"--{_flag(name)}: expected {t.split(' ')[0]}, got {v!r}") from None
    return out


def _to_int(v: Any) -> int:
    if isinstance(v, float) and not v.is_integer():
        raise ValueError(v)
    return int(v)


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"--{_flag(name)}: {value!r} is not allowed; allowed: {', '.join(allowed)}")


def _positive(name: str, value: float, zero_ok: bool = False) -> None:
    if value < 0 or (value == 0 and not zero_ok):
        raise ConfigError(f"--{_flag(name)}: must be {'>= 0' if zero_ok else '> 0'}, got {value!r}")


def _validate(c: StyleConfig) -> None:
    _choice("preset", c.preset, tuple(PRESETS))
    _choice("optimizer", c.optimizer, OPTIMIZERS)
    _choice("pooling", c.pooling, POOLINGS)
    _choice("padding", c.padding, PADDINGS)
    _choice("noise_spectrum", c.noise_spectrum, tuple(NOISE_SPECTRA))
    _choice("preserve_colors", c.preserve_colors, PRESERVE_COLORS)
    _choice("precision", c.precision, PRECISIONS)
    if not (c.device in DEVICES or c.device.startswith("cuda:")):
        _choice("device", c.device, DEVICES)
    if c.weights not in WEIGHT_SOURCES and not c.weights:
        _choice("weights", c.weights, WEIGHT_SOURCES)
    if c.preprocessing is not None:
        _choice("preprocessing", c.preprocessing, PREPROCESSINGS)
    for name in ("size", "iterations", "history_size", "window", "log_every"):
        _positive(name, getattr(c, name))
    if c.size < 16:
        raise ConfigError(f"--size: must be at least 16 pixels, got {c.size}")
    for name in ("content_weight", "style_weight", "tv_weight", "tolerance", "noise_scale"):
        _positive(name, getattr(c, name), zero_ok=True)
    _positive("style_scale", c.style_scale)
    if not 0 <= c.margin <= 0.25:
        raise ConfigError(f"--margin: a fraction of the size from 0 to 0.25, got {c.margin}")
    _positive("batch_size", c.batch_size, zero_ok=True)
    if c.lr is not None:
        _positive("lr", c.lr)
    for name in ("content_layers", "style_layers"):
        layers = getattr(c, name)
        if not layers:
            raise ConfigError(f"--{_flag(name)}: at least one layer is needed")
        for layer in layers:
            if layer not in TAP_NAMES:
                raise ConfigError(f"--{_flag(name)}: unknown layer {layer!r}; allowed: "
                                  f"{', '.join(TAP_NAMES)}")
    for name, layers in (("content_layer_weights", c.content_layers),
                         ("style_layer_weights", c.style_layers)):
        w = getattr(c, name)
        if w is not None and len(w) != len(layers):
            raise ConfigError(f"--{_flag(name)}: {len(w)} weights for {len(layers)} layers")
    if not c.scales or any(not 0 < s <= 1 for s in c.scales) or c.scales[-1] != 1.0 \
            or list(c.scales) != sorted(c.scales):
        raise ConfigError(f"--scales: increasing fractions in (0, 1] ending in 1.0, got {c.scales}")
    if c.init not in INIT_KINDS and not c.init:
        _choice("init", c.init, INIT_KINDS)

