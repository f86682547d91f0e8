"""Tests for the picture figures (stylize.quality), the smooth initial noise, the first layer's
padding and the cropped margin: CPU, 32-64 px, a few iterations."""

from __future__ import annotations

import json

import pytest
import torch
from engine_helpers import (  # noqa: F401 (fixtures)
    engines,
    reuse_caffe_weights,
    sample,
    sample_exact,
)

from pipeline import quality_cmd
from pipeline.cli import main as cli_main
from stylize import quality
from stylize.canvas import initial_noise, start_noise
from stylize.config import ConfigError, resolve_config
from stylize.engine import Style
from stylize.figures import FIGURES
from stylize.model import build_vgg

pytestmark = pytest.mark.usefixtures("reuse_caffe_weights")

H, W = 48, 64


def white(std: float, seed: int = 0, shape=(3, H, W)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * std


# ------------------------------------------------------------------------------ the figures


def test_speckle_of_a_flat_image_is_zero():
    assert quality.speckle(torch.full((3, H, W), 93.0)) == 0.0
    ramp = torch.linspace(0, 255, W).expand(3, H, W)  # a grey ramp: no chroma at all
    assert quality.speckle(ramp) == pytest.approx(0.0, abs=1e-4)


def test_speckle_sees_colour_noise_not_grey_noise():
    colour = 127.5 + white(25.5)
    grey = 127.5 + white(25.5, shape=(1, H, W)).expand(3, H, W)  # same noise in R, G and B
    # |Laplacian| of i.i.d. chroma noise: sqrt(2/pi) * sqrt(20) * sqrt(2/3) * 25.5 = 74.4
    assert quality.speckle(colour) == pytest.approx(74.4, rel=0.05)
    assert quality.speckle(grey) == pytest.approx(0.0, abs=1e-3)


def test_speckle_is_taken_at_256_px():
    big = 127.5 + white(25.5, shape=(3, 512, 512))
    assert quality.speckle(big) < 0.6 * quality.speckle(big, size=None)  # averaged down


def test_border_figure_finds_a_bright_outer_row():
    img = torch.full((3, H, W), 100.0)
    assert quality.border(img) == 0.0
    img[1, :, -1] = 130.0  # the rightmost column, green only
    assert quality.border(img) == pytest.approx(30.0)


def test_noise_correlation():
    noise = white(25.5)
    assert quality.noise_correlation(127.5 + noise, noise) == pytest.approx(1.0, abs=1e-5)
    assert abs(quality.noise_correlation(127.5 + white(25.5, seed=1), noise)) < 0.05
    half = sample_exact("tubingen", H, W) + 0.5 * noise
    assert 0.3 < quality.noise_correlation(half, noise) < 0.9


# ------------------------------------------------------------------------ the initial noise


def test_default_noise_has_far_less_fine_colour_than_white_noise():
    new = initial_noise(resolve_config(), H, W)
    old = initial_noise(resolve_config(noise_spectrum="white", noise_scale=0.1), H, W)
    assert quality.speckle(old) > 60
    assert quality.speckle(new) < 0.02 * quality.speckle(old)
    # its high-frequency energy: a tiny fraction of the old one's
    assert (
        quality.high_pass(new - 127.5).pow(2).mean()
        < 1e-3 * quality.high_pass(old - 127.5).pow(2).mean()
    )


@pytest.mark.parametrize("spectrum", ["white", "natural", "smooth"])
def test_noise_is_seeded_centred_and_scaled(spectrum):
    cfg = resolve_config(noise_spectrum=spectrum, noise_scale=0.05)
    a, b = initial_noise(cfg, H, W), initial_noise(cfg, H, W)
    assert torch.equal(a, b)
    assert not torch.equal(a, initial_noise(cfg.replace(seed=1), H, W))
    assert a.mean().item() == pytest.approx(127.5, abs=1.0 if spectrum == "white" else 1e-3)
    assert a.std(dim=(1, 2)).tolist() == pytest.approx([0.05 * 255] * 3, rel=0.05)


def test_white_noise_is_the_old_stream():
    """noise_spectrum=white, noise_scale=0.1 reproduces the former default exactly."""
    cfg = resolve_config(noise_spectrum="white", noise_scale=0.1, seed=3)
    old = 127.5 + torch.randn(3, H, W, generator=torch.Generator().manual_seed(3)) * 25.5
    assert torch.equal(initial_noise(cfg, H, W), old)


def test_start_noise_is_what_the_first_scale_and_margin_see():
    cfg = resolve_config(scales=(0.5, 1.0), margin=0.1)
    n = start_noise(cfg, H, W)
    assert n.shape == (3, 24, 32)
    m = 3  # round(0.1 * 32)
    torch.testing.assert_close(n, initial_noise(cfg, 24 + 2 * m, 32 + 2 * m)[:, m:-m, m:-m])


# ------------------------------------------------------------------------------- padding


@pytest.mark.parametrize("mode", ["reflect", "replicate"])
def test_first_layer_padding_changes_the_border_only(mode):
    """conv1_1 reads the pixels; its padding changes relu1_1 on the outermost positions only
    and deeper taps in a band whose width grows with the receptive field, never inside."""
    x = torch.stack([sample_exact("tubingen", H, W)])
    taps = ("relu1_1", "relu2_1", "relu3_1")
    zeros, _ = build_vgg("caffe", taps, "avg")
    other, _ = build_vgg("caffe", taps, "avg", padding=mode)
    a, b = zeros(x), other(x)
    inner = {"relu1_1": 1, "relu2_1": 3, "relu3_1": 3}  # border band in that tap's positions
    for tap, k in inner.items():
        torch.testing.assert_close(a[tap][..., k:-k, k:-k], b[tap][..., k:-k, k:-k])
        assert (a[tap] - b[tap]).abs().amax() > 1.0  # the border did change
    # only conv1_1 pads differently
    assert [c.padding_mode for c in other.conv_layers()] == [mode] + ["zeros"] * 4


def test_bad_padding_and_margin_are_config_errors():
    with pytest.raises(ConfigError, match="--padding: 'wrap'.*zeros, reflect, replicate"):
        resolve_config(padding="wrap")
    with pytest.raises(ConfigError, match="--margin"):
        resolve_config(margin=0.5)
    with pytest.raises(ConfigError, match="--noise-spectrum: 'pink'.*white, natural, smooth"):
        resolve_config(noise_spectrum="pink")


# ------------------------------------------------------------------------ stylizing from noise


class Recorder:
    def __init__(self):
        self.steps = []

    def __call__(self, info):
        self.steps.append(info)


@pytest.mark.slow
def test_short_stylization_from_the_default_noise_lowers_the_loss(engines):
    st = engines(iterations=20, size=W, log_every=5)
    content = sample_exact("tubingen", H, W)
    style = Style("starry", (sample("starry_night", 64),))
    rec = Recorder()
    (result,) = st.stylize_batch([content], [style], rec)
    assert result.total_loss < 0.3 * rec.steps[0].losses[0]
    assert rec.steps[0].pixels.shape == (1, 3, H, W)


def test_margin_is_optimised_then_cropped(engines):
    st = engines(iterations=6, size=W, log_every=3, margin=0.1)
    content = sample_exact("tubingen", H, W)
    style = Style("starry", (sample("starry_night", 64),))
    rec = Recorder()
    (result,) = st.stylize_batch([content], [style], rec)
    assert result.image.shape == content.shape
    assert {tuple(s.pixels.shape) for s in rec.steps} == {(1, 3, H, W)}
    # the losses reported are those of the delivered picture, not of the padded canvas
    assert result.total_loss == pytest.approx(
        st.evaluate([result.image], [content], [style])[0], rel=1e-4
    )
    assert rec.steps[-1].losses[0] != pytest.approx(result.total_loss, rel=1e-3)


# ------------------------------------------------------------------------------ the command


def test_quality_command_prints_every_figure(capsys, reuse_caffe_weights):
    code = quality_cmd.main(
        ["--size", "32", "--iterations", "3", "--pairs", "1", "--device", "cpu", "--json"]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = {r["init"]: r for r in result["rows"]}
    assert set(rows) == {"noise", "content"}
    assert (rows["noise"]["content"], rows["noise"]["style"]) == ("tubingen", "starry_night")
    for r in rows.values():
        assert r["total_loss"] == pytest.approx(r["content_loss"] + 1e3 * r["style_loss"], rel=1e-4)
        assert r["speckle"] >= 0 and r["border"] >= 0 and r["iterations"] == 3
    assert rows["noise"]["noise_corr"] is not None and rows["content"]["noise_corr"] is None
    assert {i["image"] for i in result["inputs"]} == {"tubingen", "starry_night"}
    assert set(result["summary"]) == {"noise", "content"}
    # the quality figures of each result, and what they cost next to the optimisation
    for r in rows.values():
        assert all(r[f] is not None and r[f] >= 0 for f in FIGURES), r
        assert r["figures_s"] > 0 and r["figures_cpu_s"] > 0
    # three steps of a noise start leave it far from the photo, nearer from content init
    assert rows["content"]["content_distance"] < rows["noise"]["content_distance"]
    for s in result["summary"].values():
        assert s["figures_cost"] > 0 and s["figures_steps_median"] > 0
        assert s["content_distance_median"] is not None


def test_quality_command_judges_with_the_paper_network():
    cfg = quality.judge_config(
        resolve_config(padding="reflect", tv_weight=5.0, margin=0.05, precision="bf16")
    )
    assert (cfg.padding, cfg.tv_weight, cfg.precision) == ("zeros", 0.0, "fp32")


def test_quality_command_usage_errors(capsys):
    assert cli_main(["quality", "--pairs", "0"]) == 2
    assert capsys.readouterr().err == "stylize quality: error: --pairs: 1 to 9, got 0\n"
    assert cli_main(["quality", "--set", "padding=wrap", "--size", "32", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stylize quality: error: ") and "padding" in err
    assert err.count("\n") == 1
    assert cli_main(["quality", "--set", "padding"]) == 2  # not key=value: one line too
    err = capsys.readouterr().err
    assert err == "stylize quality: error: --set 'padding': expected key=value\n"
