"""Engine settings: one frozen pydantic model, the presets, and the allowed values.

Every option can override a preset: ``resolve_config("fast", size=256)``; in a mapping (a job
file's ``stylize:``) the preset is a key like the others. The choices are ``Literal``s built
from the constants the code uses, every default is written once (on the model), and a bad
value is reported with the option's name and the allowed values.

The options fall in two groups (NETWORK_OPTIONS): what builds the network (weights, pooling,
padding, preprocessing, normalisation, device, precision, compile) and what each image's
optimisation uses (everything else: layers, weights, iterations, init, scales, ...). A loaded
``Stylizer`` serves any per-image options whose network part equals its own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from stylize.common import StylizeError, describe_validation_errors

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

Optimizer = Literal["lbfgs", "adam"]
OPTIMIZERS: tuple[Optimizer, ...] = get_args(Optimizer)
Pooling = Literal["max", "avg"]
POOLINGS: tuple[Pooling, ...] = get_args(Pooling)
Padding = Literal["zeros", "reflect", "replicate"]  # of conv1_1, the layer that sees the pixels
PADDINGS: tuple[Padding, ...] = get_args(Padding)
Preprocessing = Literal["caffe", "torchvision"]
PREPROCESSINGS: tuple[Preprocessing, ...] = get_args(Preprocessing)
PreserveColors = Literal["none", "luminance", "histogram"]
PRESERVE_COLORS: tuple[PreserveColors, ...] = get_args(PreserveColors)
# What a style layer's loss compares (stylize/losses.py; docs/engine.md, "Style losses"): the
# Gram matrices (the paper's), the Gaussians of the features (squared 2-Wasserstein distance of
# their means and covariances), or the per-channel means and standard deviations.
StyleLoss = Literal["gram", "wasserstein2", "mean_std"]
STYLE_LOSSES: tuple[StyleLoss, ...] = get_args(StyleLoss)
# The initial noise's amplitude spectrum, 1/f^exponent: white is flat (the paper's), natural
# falls like a photograph's (1/f), smooth twice as fast (1/f^2).
NOISE_SPECTRA = {"white": 0.0, "natural": 1.0, "smooth": 2.0}
Precision = Literal["auto", "fp32", "tf32", "bf16"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
DEVICES = ("auto", "cpu", "cuda", "mps")  # "cuda:N" is accepted too
OutputFormat = Literal["png", "jpeg", "webp", "tiff"]
OUTPUT_FORMATS: tuple[OutputFormat, ...] = get_args(OutputFormat)
BitDepth = Literal[8, 16]
BIT_DEPTHS: tuple[BitDepth, ...] = get_args(BitDepth)
BIT_DEPTH_16_FORMATS = ("png", "tiff")


def bit_depth_problem(bit_depth: int, fmt: str) -> str | None:
    """Why ``bit_depth`` cannot be written as ``fmt`` (None: it can): the one check of 16-bit
    output (the encoder, ``stylize image``, a job file), each caller naming its option first."""
    if bit_depth == 16 and fmt not in BIT_DEPTH_16_FORMATS:
        allowed = ", ".join(BIT_DEPTH_16_FORMATS)
        return f"16 is only for {allowed}, not {fmt}; use 8 or another format"
    return None


PRESETS: dict[str, dict[str, Any]] = {
    # Gatys, Ecker & Bethge (2015/2016): relu4_2 content, relu1_1..relu5_1 equal, avg pooling,
    # white-noise init, L-BFGS, alpha/beta = 1e-3.
    "gatys2016": {},
    # jcjohnson/neural-style defaults. Its content and style losses are normalised as ours,
    # and every style layer gets the full style weight. Its TV loss is 0.5 * strength * a sum
    # of squares where ours is a mean: 1e-3 * 0.5 * 3 * 512 * 512 = 393 matches it at 512 px.
    "neural-style": dict(
        iterations=1000,
        content_weight=5.0,
        style_weight=100.0,
        tv_weight=393.0,
        style_layer_weights=(1.0, 1.0, 1.0, 1.0, 1.0),
        pooling="max",
        init="noise",
        noise_scale=0.001 / 255,
        noise_spectrum="white",  # its randn * 0.001, in pixel units
        optimizer="lbfgs",
        history_size=100,
    ),
    # Throughput: start from the content, stop each image once its loss improves by less
    # than 2% over 20 steps. On 8 images at 64 px that happened after 279-347 steps (mean
    # 315) at 1.11x the loss of all 500 (docs/engine.md, "Presets").
    "fast": dict(
        iterations=500,
        init="content",
        early_stopping=True,
        tolerance=2e-2,
        window=20,
        pooling="max",
    ),
    # gatys2016 with the wasserstein2 style loss (issue 22's measurements): at equal iterations,
    # on held-out photo x painting pairs (infra/compare_losses.py, judged by stylize.figures), its
    # Wasserstein-2 style distance was 0.79-0.94x gram's and its content distance 0.67-0.85x
    # (256 px, three pairs; 512 px, two; CPU). A GPU step costs more than gram's (docs/engine.md).
    "quality": dict(style_loss="wasserstein2"),
}

if TYPE_CHECKING:  # computed names: type checkers see str, pydantic (and the schema) the names
    TapName = str
    PresetName = str
    NoiseSpectrum = str
else:
    TapName = Literal[TAP_NAMES]
    PresetName = Literal[tuple(PRESETS)]
    NoiseSpectrum = Literal[tuple(NOISE_SPECTRA)]


class ConfigError(StylizeError, ValueError):
    """A bad option value. The message names the option and the allowed values."""


def _words(value: Any) -> Any:
    """``"relu1_1,relu2_1"`` or ``"relu1_1 relu2_1"`` (a command-line flag) as a list."""
    if isinstance(value, str):
        return [s for s in value.replace(",", " ").split() if s]
    if isinstance(value, (int, float)):
        return [value]
    return value


def _scale_words(value: Any) -> Any:
    """``scales`` from a string: ``"0.5,1.0"`` (fractions), ``"256:400,512:150"`` (side:iterations
    pairs) or a JSON list (``"[[256, 400], [512, 150]]"``); a number as a list of one."""
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            return json.loads(value)
        except ValueError:
            return value  # reported as not a list
    words = _words(value)
    if isinstance(words, list) and any(isinstance(w, str) and ":" in w for w in words):
        return [w.split(":") if isinstance(w, str) else w for w in words]
    return words


Layers = Annotated[tuple[TapName, ...], BeforeValidator(_words), Field(min_length=1)]
Floats = Annotated[tuple[float, ...], BeforeValidator(_words)]
# fractions of `size`, each with `iterations`; or (longest side in pixels, iterations) pairs
Scales = Annotated[tuple[float, ...] | tuple[tuple[int, int], ...], BeforeValidator(_scale_words)]
SCALES_FORMS = (
    "increasing fractions in (0, 1] ending in 1.0 (0.5,1.0), or [side, iterations] "
    "pairs, sides in pixels increasing, the last the size (256:400,512:150)"
)
Positive = Annotated[int, Field(ge=1)]
NonNegative = Annotated[float, Field(ge=0)]
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:\d+)?)$"


# The options that build the network; the rest are per image.
class NetworkOptions(BaseModel):
    """What a ``Stylizer`` builds its VGG-19 from: two configs with equal NetworkOptions can
    share one loaded network."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    weights: str
    pooling: str
    padding: str
    preprocessing: str | None
    normalize: bool
    device: str
    precision: str
    compile: bool


NETWORK_OPTIONS = tuple(NetworkOptions.model_fields)  # the options that build the network


class StyleConfig(BaseModel):
    """Everything the engine needs to stylize one image. Defaults are the ``gatys2016`` preset.

    Loss normalisation (see docs/engine.md, "Losses"): content loss is the mean squared error of the
    features; a Gram matrix is F F^T / (C H W); the style loss of a layer is the mean squared
    error of the Gram matrices. ``style_weight / content_weight`` is then the paper's beta/alpha.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", title="engine options")

    preset: PresetName = Field(
        "gatys2016", description=("named defaults; the other keys override it")
    )
    # -- the network (NETWORK_OPTIONS)
    weights: str = Field(
        "caffe", min_length=1, description=("caffe | torchvision | path or URL of a state dict")
    )
    pooling: Pooling = Field(
        "avg", description=("the paper replaces max pooling by average pooling")
    )
    padding: Padding = Field(
        "zeros", description=("conv1_1's padding; deeper layers always pad with zeros")
    )
    preprocessing: Preprocessing | None = Field(None, description=("only for a weights path/URL"))
    normalize: bool = Field(
        False, description=("rescale filters to mean activation 1 (the paper's normalisation)")
    )
    device: Annotated[str, Field(pattern=DEVICE_PATTERN)] = Field(
        "auto", description="auto | cpu | cuda | cuda:N | mps"
    )
    precision: Precision = Field(
        "auto",
        description=(
            "auto: bf16 on CUDA GPUs that support it, else fp32 (fp32 on CUDA: no TF32 either)"
        ),
    )
    compile: bool = Field(
        False, description=("torch.compile the network (falls back to eager if it fails)")
    )
    # -- each image's optimisation
    size: int = Field(512, ge=16, description="longest side of the output, pixels")
    iterations: Positive = Field(
        500,
        description=(
            "function/gradient evaluations per scale (scales given as pairs carry their own)"
        ),
    )
    content_layers: Layers = CONTENT_LAYERS_GATYS
    content_layer_weights: Floats | None = Field(None, description="null: equal")
    style_layers: Layers = STYLE_LAYERS_GATYS
    style_layer_weights: Floats | None = Field(
        None, description=("null: equal (the paper's w_l = 1/5)")
    )
    content_weight: NonNegative = Field(1.0, description="alpha")
    style_weight: NonNegative = Field(
        1e3, description=("beta; alpha/beta = 1e-3 as in the paper's Fig. 2")
    )
    tv_weight: NonNegative = 0.0
    style_loss: StyleLoss = Field(
        "gram",
        description=(
            "what a style layer compares: gram (the paper), wasserstein2 (feature means and "
            "covariances), mean_std (per-channel mean and std)"
        ),
    )
    init: str = Field("noise", min_length=1, description="noise | content | path of an image")
    # The paper starts from white noise; white noise of std 0.1 * 255 was still half there
    # after 300-500 L-BFGS steps, as fine colour speckle. Smooth noise of std 0.03 * 255 ends
    # at the same loss without it (docs/engine.md, "Picture quality"); white, 0.1 is the old start.
    noise_scale: NonNegative = Field(
        0.03, description=("std of the initial noise around mid-grey, as a fraction of 255")
    )
    noise_spectrum: NoiseSpectrum = Field(
        "smooth",
        description=(
            "amplitude spectrum of the initial noise: white (flat), natural (1/f), smooth (1/f^2)"
        ),
    )
    optimizer: Optimizer = "lbfgs"
    lr: Annotated[float, Field(gt=0)] | None = Field(
        None, description=("null: 1.0 for lbfgs, 10.0 (pixel units) for adam")
    )
    # L-BFGS pairs kept per image. The paper does not say; 20 reaches the same losses as 100
    # at 128 px / 200 steps (docs/engine.md, "Losses") and reads 5x less memory per step.
    history_size: Positive = Field(20, description="L-BFGS pairs kept per image")
    margin: float = Field(
        0.0,
        ge=0,
        le=0.25,
        description=("optimised around the picture, then cropped: fraction of the longest side"),
    )
    style_scale: float = Field(
        1.0, gt=0, description=("style image longest side relative to the content's")
    )
    preserve_colors: PreserveColors = "none"
    scales: Scales = Field(
        (1.0,),
        description=(
            "coarse to fine: fractions of size, increasing, the last 1.0, each run for "
            "`iterations`; or [longest side in pixels, iterations] pairs, sides increasing, the "
            "last the size (which it sets when size is not given)"
        ),
    )
    early_stopping: bool = False
    tolerance: NonNegative = Field(
        1e-3, description=("relative loss change over `window` steps that counts as converged")
    )
    window: Positive = 20
    seed: int = 0
    bucket: bool = Field(
        True, description=("snap contents to aspect buckets so mixed photos batch")
    )
    batch_size: int = Field(
        0, ge=0, description=("0: chosen from free device memory (4 on the CPU)")
    )
    log_every: Positive = Field(
        10, description=("steps between progress callbacks (each one is a device sync)")
    )

    @model_validator(mode="before")
    @classmethod
    def _preset_defaults(cls, data: Any) -> Any:
        """The preset's values under the given ones (a null value means: the default)."""
        if not isinstance(data, Mapping):
            return data
        given = {k: v for k, v in data.items() if v is not None}
        preset = given.get("preset", "gatys2016")
        if "size" not in given:  # pairs of (side, iterations): the last side is the size
            last = _last_side(given.get("scales"))
            if last is not None:
                given["size"] = last
        return {**PRESETS.get(preset, {}), **given} if isinstance(preset, str) else given

    @field_validator("scales", mode="wrap")
    @classmethod
    def _scales(cls, value: Any, handler: Any) -> tuple[Any, ...]:
        try:
            v: tuple[Any, ...] = handler(value)
        except ValidationError:
            raise ValueError(f"{SCALES_FORMS}; got {_scale_words(value)!r}") from None
        if v and isinstance(v[0], tuple):
            sides = [side for side, _ in v]
            if any(side < 16 for side in sides) or any(n < 1 for _, n in v):
                raise ValueError(
                    f"[side, iterations] pairs need sides >= 16 pixels and "
                    f"iterations >= 1, got {[list(p) for p in v]}"
                )
            if any(b <= a for a, b in zip(sides, sides[1:])):
                raise ValueError(
                    f"[side, iterations] pairs need increasing sides, coarse to "
                    f"fine, got sides {sides}"
                )
        elif not v or any(not 0 < s <= 1 for s in v) or v[-1] != 1.0 or list(v) != sorted(v):
            raise ValueError(f"increasing fractions in (0, 1] ending in 1.0, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _across_options(self) -> StyleConfig:
        for name, layers in (
            ("content_layer_weights", self.content_layers),
            ("style_layer_weights", self.style_layers),
        ):
            w = getattr(self, name)
            if w is not None and len(w) != len(layers):
                raise ValueError(f"{name}: {len(w)} weights for {len(layers)} layers")
        if isinstance(self.scales[0], tuple) and self.scales[-1][0] != self.size:
            raise ValueError(
                f"scales: the last side ({self.scales[-1][0]}) is the output's, "
                f"but size is {self.size}; make them equal, or leave size out"
            )
        return self

    @property
    def schedule(self) -> tuple[tuple[float, int], ...]:
        """(fraction of ``size``, iterations) of each scale, coarse to fine."""
        if isinstance(self.scales[0], tuple):
            return tuple((side / self.size, n) for side, n in self.scales)
        return tuple((s, self.iterations) for s in self.scales)

    def replace(self, **changes: Any) -> StyleConfig:
        """A copy with some options changed, validated; an option changed to None takes the
        preset's value, as in a job file."""
        return _validated({**self.to_dict(), **changes})

    @property
    def network(self) -> NetworkOptions:
        """The options that build the network."""
        return NetworkOptions(**{k: getattr(self, k) for k in NETWORK_OPTIONS})

    @property
    def effective_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return 1.0 if self.optimizer == "lbfgs" else 10.0

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _last_side(scales: Any) -> Any:
    """The last side of ``scales`` given as [side, iterations] pairs (None: another form)."""
    words = _scale_words(scales)
    if (
        isinstance(words, (list, tuple))
        and words
        and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in words)
    ):
        last = words[-1][0]
        if isinstance(last, int) or (isinstance(last, str) and last.strip().isdigit()):
            return last
    return None


def option_names() -> tuple[str, ...]:
    """Every engine option, in declaration order (``preset`` first)."""
    return tuple(StyleConfig.model_fields)


def resolve_config(preset: str | None = None, **overrides: Any) -> StyleConfig:
    """Build a config from a preset (default ``gatys2016``) and option overrides (None: the
    preset's value). Raises ConfigError, one line per bad option, naming it."""
    return _validated({**overrides, "preset": preset})


def config_from_mapping(data: Mapping[str, Any]) -> StyleConfig:
    """A config from a plain mapping (YAML), with ``preset`` as one of its keys."""
    return _validated(dict(data))


def _validated(values: Mapping[str, Any]) -> StyleConfig:
    try:
        return StyleConfig.model_validate(values)
    except ValidationError as e:
        raise ConfigError("\n".join(describe_config_errors(e))) from None


def describe_config_errors(e: ValidationError) -> list[str]:
    """One line per problem, as a command-line user reads it: ``--size: ...`` (the
    formatter of every model, with the engine's own words for presets, layers and devices)."""

    def word(name: str, err: Mapping[str, Any]) -> str | None:
        given = err.get("input")
        if err["type"] == "literal_error" and name == "preset":
            return f"unknown preset {given!r}; allowed: {', '.join(PRESETS)}"
        if err["type"] == "literal_error" and name.endswith("layers"):
            return f"unknown layer {given!r}; allowed: {', '.join(TAP_NAMES)}"
        if err["type"] == "string_pattern_mismatch" and name == "device":
            allowed = ", ".join(DEVICES)
            return f"{given!r} is not allowed (cuda:N is accepted too); allowed: {allowed}"
        return None

    return describe_validation_errors(e, StyleConfig, flags=True, word=word)
