"""Tests for stylize.color and the engine's original-colour modes."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import (  # noqa: F401 (fixtures)
    engines,
    per_image_features,
    reuse_caffe_weights,
    sample,
    sample_exact,
)

from stylize import color
from stylize.config import resolve_config
from stylize.engine import Style, Stylizer

H, W = 24, 32

pytestmark = pytest.mark.usefixtures("reuse_caffe_weights")


def _pixels(seed: int, shape=(3, 8, 10)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 255


# ------------------------------------------------------------------------------ the maths


def test_yiq_round_trip():
    x = _pixels(0, (2, 3, 5, 7))
    torch.testing.assert_close(color.yiq_to_rgb(color.rgb_to_yiq(x)), x, rtol=0, atol=1e-3)
    torch.testing.assert_close(color.yiq_to_rgb(color.rgb_to_yiq(x[0])), x[0], rtol=0, atol=1e-3)


def test_grey_has_no_chroma():
    grey = torch.full((3, 2, 2), 77.0)
    yiq = color.rgb_to_yiq(grey)
    torch.testing.assert_close(yiq[0], grey[0])
    torch.testing.assert_close(yiq[1:], torch.zeros(2, 2, 2), rtol=0, atol=1e-4)


def test_luminance_is_y_on_three_channels():
    x = _pixels(1)
    lum = color.luminance(x)
    assert lum.shape == x.shape
    y = 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]
    for c in range(3):
        torch.testing.assert_close(lum[c], y)
    torch.testing.assert_close(color.luminance(lum), lum)  # grey stays grey


def test_combine_luminance_takes_y_from_one_and_chroma_from_the_other():
    stylized, content = _pixels(2), _pixels(3)
    out = color.rgb_to_yiq(color.combine_luminance(stylized, content))
    torch.testing.assert_close(out[0], color.rgb_to_yiq(stylized)[0], rtol=0, atol=1e-3)
    torch.testing.assert_close(out[1:], color.rgb_to_yiq(content)[1:], rtol=0, atol=1e-3)


def test_match_luminance_takes_the_contents_mean_and_std():
    style, content = color.luminance(_pixels(4)), color.luminance(_pixels(5, (3, 6, 6)) / 3)
    out = color.match_luminance(style, content)
    assert out.mean().item() == pytest.approx(content.mean().item(), abs=1e-3)
    assert out.std().item() == pytest.approx(content.std().item(), rel=1e-4)


def test_match_histogram_takes_the_contents_mean_and_covariance():
    # Mid-range images, so that clamping to 0..255 does not get in the way.
    style = 60 + 0.5 * sample("starry_night", 40)
    content = 60 + 0.5 * sample("chelsea", 32)
    out = color.match_histogram(style, content)
    assert out.shape == style.shape and out.dtype == style.dtype
    flat_out, flat_c = out.reshape(3, -1).double(), content.reshape(3, -1).double()
    torch.testing.assert_close(flat_out.mean(1), flat_c.mean(1), rtol=0, atol=0.05)
    torch.testing.assert_close(torch.cov(flat_out), torch.cov(flat_c), rtol=0.01, atol=0.5)
    # The structure is the style's: the new colours are an affine map of the old ones.
    corr = torch.corrcoef(
        torch.stack([color.luminance(out)[0].flatten(), color.luminance(style)[0].flatten()])
    )[0, 1]
    assert corr > 0.8


# ------------------------------------------------------------------------------ the engine


def test_luminance_mode_keeps_the_contents_chroma(engines):
    content = sample_exact("chelsea", H, W)
    st = engines(init="content", iterations=15, size=32, preserve_colors="luminance")
    (result,) = st.stylize_batch([content], [Style("starry", (sample("starry_night", 64),))])
    out_yiq, c_yiq = color.rgb_to_yiq(result.image), color.rgb_to_yiq(content)
    inside = ((result.image > 0) & (result.image < 255)).all(0)  # pixels not clamped
    assert inside.float().mean() > 0.8
    torch.testing.assert_close(out_yiq[1:, inside], c_yiq[1:, inside], rtol=0, atol=1e-2)
    assert (out_yiq[0] - c_yiq[0]).abs().mean() > 5  # the luminance was stylized


@pytest.mark.slow
def test_histogram_mode_keeps_the_contents_colours(engines):
    content = sample_exact("chelsea", H, W)  # warm browns
    style = Style("starry", (sample("starry_night", 64),))  # blues
    mean = content.mean((1, 2))
    distance = {}
    for mode in ("none", "histogram"):
        st = engines(init="content", iterations=15, size=32, preserve_colors=mode)
        (result,) = st.stylize_batch([content], [style])
        distance[mode] = (result.image.mean((1, 2)) - mean).norm().item()
    assert distance["histogram"] < 0.5 * distance["none"], distance


@pytest.mark.parametrize("mode", ["histogram", "luminance"])
def test_colour_targets_are_per_image_in_a_batch(mode):
    """With colour preservation the style targets depend on each content: two contents
    sharing a style in one batch get the same results as each alone."""
    st = Stylizer(
        resolve_config(device="cpu", init="content", iterations=5, size=32, preserve_colors=mode)
    )
    per_image_features(st)
    contents = [sample_exact("chelsea", H, W), sample_exact("tubingen", H, W)]
    style = Style("starry", (sample("starry_night", 64),))
    batched = st.stylize_batch(contents, [style, style])
    for c, b in zip(contents, batched):
        (a,) = st.stylize_batch([c], [style])
        torch.testing.assert_close(b.image, a.image, rtol=0, atol=1e-3)
    assert (batched[0].image - batched[1].image).abs().mean() > 5
