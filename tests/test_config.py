"""Tests for stylize.config: presets, overrides, and the errors for bad values."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from stylize import config
from stylize.config import (
    OPTIMIZERS,
    POOLINGS,
    PRESERVE_COLORS,
    PRESETS,
    STYLE_LOSSES,
    ConfigError,
    StyleConfig,
    config_from_mapping,
    resolve_config,
)
from stylize.losses import layer_weights
from stylize.model import TAP_NAMES

GATYS_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


# ---------------------------------------------------------------------------------- presets


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_resolves(name):
    cfg = resolve_config(name)
    assert isinstance(cfg, StyleConfig)
    assert cfg.preset == name
    for option, value in PRESETS[name].items():
        assert getattr(cfg, option) == value, option


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_keeps_one_scale_and_the_paper_presets_the_gram_loss(name):
    cfg = resolve_config(name)
    assert cfg.scales == (1.0,) and cfg.schedule == ((1.0, cfg.iterations),)
    # quality: the measured choice (docs/engine.md, "Presets"); the paper's otherwise
    assert cfg.style_loss == ("wasserstein2" if name == "quality" else "gram")


def test_the_quality_preset_is_gatys2016_with_the_wasserstein2_loss():
    quality, paper = resolve_config("quality"), resolve_config("gatys2016")
    assert quality.model_copy(update={"preset": "gatys2016", "style_loss": "gram"}) == paper


def test_default_preset_is_gatys2016():
    assert resolve_config() == resolve_config("gatys2016") == StyleConfig()


def test_gatys2016_is_the_paper():
    cfg = resolve_config("gatys2016")
    assert cfg.content_layers == ("relu4_2",)
    assert cfg.style_layers == GATYS_STYLE_LAYERS
    weights = layer_weights(cfg.style_layers, cfg.style_layer_weights)
    assert len(set(weights.values())) == 1  # all five layers count equally
    assert cfg.pooling == "avg"
    assert cfg.init == "noise"
    assert cfg.optimizer == "lbfgs"
    assert cfg.content_weight / cfg.style_weight == pytest.approx(1e-3)  # alpha/beta
    assert cfg.preserve_colors == "none" and cfg.scales == (1.0,)
    assert not cfg.early_stopping


def test_gatys2016_starts_from_smooth_noise():
    """The one departure from the paper (docs/engine.md, "Picture quality"): smooth, not white, noise."""
    cfg = resolve_config("gatys2016")
    assert (cfg.noise_spectrum, cfg.noise_scale) == ("smooth", 0.03)
    assert (cfg.padding, cfg.margin) == ("zeros", 0.0)  # VGG's own padding, nothing cropped


def test_neural_style_preset_values():
    """jcjohnson/neural-style's defaults, as documented in config.py."""
    cfg = resolve_config("neural-style")
    assert cfg.iterations == 1000
    assert cfg.content_weight == 5.0 and cfg.style_weight == 100.0
    assert cfg.tv_weight == pytest.approx(1e-3 * 0.5 * 3 * 512 * 512, rel=1e-3)  # sum -> mean
    assert cfg.pooling == "max"
    assert cfg.init == "noise"
    assert cfg.noise_scale * 255.0 == pytest.approx(0.001)  # torch.randn(...) * 0.001
    assert cfg.noise_spectrum == "white"
    assert cfg.optimizer == "lbfgs" and cfg.effective_lr == 1.0
    assert cfg.history_size == 100
    assert cfg.content_layers == ("relu4_2",)
    assert cfg.style_layers == GATYS_STYLE_LAYERS


def test_neural_style_preset_per_layer_weights_match_neural_style():
    cfg = resolve_config("neural-style")
    content = layer_weights(cfg.content_layers, cfg.content_layer_weights)
    style = layer_weights(cfg.style_layers, cfg.style_layer_weights)
    assert {k: cfg.content_weight * w for k, w in content.items()} == {"relu4_2": 5.0}
    assert {k: cfg.style_weight * w for k, w in style.items()} == {
        k: pytest.approx(100.0) for k in GATYS_STYLE_LAYERS
    }


def test_fast_preset_values():
    cfg = resolve_config("fast")
    assert cfg.init == "content"
    assert cfg.early_stopping and cfg.pooling == "max"
    # At most the paper preset's iterations; images stop once the loss improves < 2% / 20 steps.
    assert cfg.iterations == resolve_config("gatys2016").iterations
    assert (cfg.tolerance, cfg.window) == (2e-2, 20)


def test_overrides_win_over_the_preset():
    cfg = resolve_config("fast", iterations=7, init="noise", pooling="avg", size=64)
    assert (cfg.iterations, cfg.init, cfg.pooling, cfg.size) == (7, "noise", "avg", 64)
    assert cfg.early_stopping and cfg.preset == "fast"  # the rest of the preset stays


def test_none_override_keeps_the_preset_value():
    assert resolve_config("fast", iterations=None).iterations == PRESETS["fast"]["iterations"]


def test_string_values_are_coerced():
    cfg = resolve_config(
        size="64",
        style_weight="1e4",
        early_stopping="yes",
        style_layers="relu1_1, relu2_1",
        scales="0.5 1.0",
    )
    assert cfg.size == 64 and cfg.style_weight == 1e4 and cfg.early_stopping is True
    assert cfg.style_layers == ("relu1_1", "relu2_1")
    assert cfg.scales == (0.5, 1.0)


def test_round_trip_through_a_mapping():
    cfg = resolve_config("fast", size=64, scales=(0.5, 1.0), style_layer_weights=(1, 2, 3, 4, 5))
    assert config_from_mapping(cfg.to_dict()) == cfg
    assert cfg.replace() == cfg
    assert cfg.replace(size=32).size == 32


def test_effective_lr_depends_on_the_optimizer():
    assert resolve_config(optimizer="lbfgs").effective_lr == 1.0
    assert resolve_config(optimizer="adam").effective_lr == 10.0
    assert resolve_config(optimizer="adam", lr=3.0).effective_lr == 3.0


def test_config_is_frozen():
    with pytest.raises(ValidationError):  # frozen
        resolve_config().size = 3  # type: ignore[misc]


# ----------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    "option, value, allowed",
    [
        ("optimizer", "sgd", OPTIMIZERS),
        ("pooling", "min", POOLINGS),
        ("preserve_colors", "yes", PRESERVE_COLORS),
        ("precision", "fp8", config.PRECISIONS),
        ("device", "tpu", config.DEVICES),
        ("style_layers", ("relu9_1",), TAP_NAMES),
        ("content_layers", ("fc7",), TAP_NAMES),
        ("style_loss", "sliced", STYLE_LOSSES),
    ],
)
def test_bad_choice_names_the_option_and_lists_the_allowed_values(option, value, allowed):
    with pytest.raises(ConfigError) as err:
        resolve_config(**{option: value})
    message = str(err.value)
    assert "\n" not in message
    assert option.replace("_", "-") in message
    listed = message.split("allowed:")[1]
    assert [s.strip() for s in listed.split(",")] == list(allowed)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ConfigError, match="preset") as err:
        resolve_config("picasso")
    assert all(name in str(err.value) for name in PRESETS)


def test_unknown_option_is_named_and_options_are_listed():
    with pytest.raises(ConfigError, match="'colour'") as err:
        resolve_config(colour="blue")
    for name in StyleConfig.model_fields:
        assert name in str(err.value)


def test_unknown_key_in_a_mapping_is_an_error():
    with pytest.raises(ConfigError, match="'iteration'"):
        config_from_mapping({"preset": "fast", "iteration": 3})


@pytest.mark.parametrize(
    "option", ["content_weight", "style_weight", "tv_weight", "tolerance", "noise_scale"]
)
def test_negative_weights_are_refused(option):
    with pytest.raises(ConfigError, match=f"--{option.replace('_', '-')}: must be >= 0"):
        resolve_config(**{option: -1})
    assert getattr(resolve_config(**{option: 0}), option) == 0  # zero is a valid weight


@pytest.mark.parametrize("scales", [(1.0, 0.5), (0.5,), (0.0, 1.0), (0.5, 1.5), ()])
def test_bad_scales(scales):
    with pytest.raises(ConfigError, match="--scales"):
        resolve_config(scales=scales)


@pytest.mark.parametrize(
    "value",
    [
        ((256, 400), (512, 150)),
        [[256, 400], [512, 150]],
        "256:400,512:150",
        "256:400 512:150",
        "[[256, 400], [512, 150]]",
        [["256", "400"], [512.0, 150]],
    ],
)
def test_scales_as_side_and_iterations_pairs(value):
    cfg = resolve_config(scales=value)
    assert cfg.scales == ((256, 400), (512, 150))
    assert cfg.size == 512  # the default, and the last side
    assert cfg.schedule == ((0.5, 400), (1.0, 150))
    assert config_from_mapping(cfg.to_dict()) == cfg
    assert cfg.to_dict()["scales"] == [[256, 400], [512, 150]]


def test_pairs_set_the_size_when_it_is_not_given():
    cfg = resolve_config("fast", scales="128:50,256:20")
    assert cfg.size == 256 and cfg.schedule == ((0.5, 50), (1.0, 20))
    assert config_from_mapping({"scales": [[100, 3], [300, 4]]}).size == 300
    assert resolve_config(scales="128:50,256:20", size=256).size == 256
    with pytest.raises(ConfigError, match=r"^--scales: the last side \(256\) .* size is 512"):
        resolve_config(scales="128:50,256:20", size=512)
    with pytest.raises(ConfigError, match="--scales: the last side"):
        resolve_config(size=512).replace(scales=((128, 5), (256, 5)))


def test_fractions_keep_their_form_and_meaning():
    cfg = resolve_config(scales="0.25,0.5,1", iterations=7, size=64)
    assert cfg.scales == (0.25, 0.5, 1.0) and cfg.size == 64
    assert cfg.schedule == ((0.25, 7), (0.5, 7), (1.0, 7))
    assert cfg.to_dict()["scales"] == [0.25, 0.5, 1.0]


@pytest.mark.parametrize(
    "value, message",
    [
        ([[512, 1], [256, 2]], "increasing sides"),
        ([[256, 1], [256, 2]], "increasing sides"),
        ([[8, 1], [512, 2]], "sides >= 16 pixels and iterations >= 1"),
        ([[256, 0], [512, 2]], "sides >= 16 pixels and iterations >= 1"),
        ([[256, 4], 1.0], "or [side, iterations] pairs"),
        ([[256, 4, 2]], "or [side, iterations] pairs"),
        ([[256.5, 4]], "or [side, iterations] pairs"),
        ("256:x,512:2", "or [side, iterations] pairs"),
        ("[[256, 4]", "or [side, iterations] pairs"),
    ],
)
def test_bad_scale_pairs_are_one_line_naming_scales(value, message):
    with pytest.raises(ConfigError) as err:
        resolve_config(scales=value)
    text = str(err.value)
    assert "\n" not in text and text.startswith("--scales: ") and message in text


@pytest.mark.parametrize(
    "option, value",
    [
        ("size", 8),
        ("size", "big"),
        ("iterations", 0),
        ("history_size", 0),
        ("window", 0),
        ("style_scale", 0),
        ("lr", 0),
        ("batch_size", -1),
        ("log_every", 0),
        ("early_stopping", "maybe"),
        ("iterations", 2.5),
    ],
)
def test_bad_numbers_name_the_option(option, value):
    with pytest.raises(ConfigError, match=f"^--{option.replace('_', '-')}:"):
        resolve_config(**{option: value})


def test_layer_weights_must_match_the_layers():
    with pytest.raises(ConfigError, match="--style-layer-weights: 2 weights for 5 layers"):
        resolve_config(style_layer_weights=(1.0, 2.0))
    cfg = resolve_config(style_layers=("relu1_1", "relu2_1"), style_layer_weights=(1, 3))
    assert layer_weights(cfg.style_layers, cfg.style_layer_weights) == {
        "relu1_1": 1.0,
        "relu2_1": 3.0,
    }


def test_replace_validates():
    with pytest.raises(ConfigError, match="--optimizer"):
        resolve_config().replace(optimizer="newton")


def test_weights_source_and_init_accept_paths():
    cfg = resolve_config(weights="/models/vgg19.pth", init="/images/start.png")
    assert cfg.weights == "/models/vgg19.pth" and cfg.init == "/images/start.png"
    with pytest.raises(ConfigError, match="--weights"):
        resolve_config(weights="")
