"""End-to-end tests of stylize.engine on the real VGG-19 (caffe weights), CPU, tiny images.

What a user checks: the loss falls, the output moves towards the style in a fixed feature
space, an image comes out the same alone or inside a batch, the options do what they say,
the one-call API returns what it was given, and out-of-memory halves the batch.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from engine_helpers import (  # noqa: F401 (fixtures)
    GRAM_LAYERS,
    engines,
    gram_distance,
    per_image_features,
    reuse_caffe_weights,
    sample,
    sample_exact,
    sample_path,
    w2_distance,
)
from PIL import Image

from stylize.api import stylize
from stylize.canvas import start_noise
from stylize.common import write_atomic
from stylize.config import STYLE_LOSSES, resolve_config
from stylize.engine import ItemResult, StepInfo, Style, Stylizer
from stylize.images import decode_image, encode_image, resize_longest
from stylize.model import build_vgg

pytestmark = pytest.mark.usefixtures("reuse_caffe_weights")

H, W = 24, 32  # one shape for every batch test


@pytest.fixture(scope="module")
def starry() -> Style:
    return Style("starry", (sample("starry_night", 96),))


def batch_inputs() -> tuple[list[torch.Tensor], list[Style]]:
    """Three contents of one size, three styles of three different sizes and aspects."""
    contents = [sample_exact(n, H, W) for n in ("tubingen", "chelsea", "coffee")]
    styles = [
        Style("starry_night", (sample("starry_night", 64),)),  # 64 x 40, landscape
        Style("the_scream", (sample("the_scream", 80),)),  # 63 x 80, portrait
        Style("shipwreck", (sample("shipwreck", 48),)),
    ]  # 48 x 33
    return contents, styles


class Recorder:
    """A progress callback that keeps what it is given."""

    def __init__(self):
        self.steps: list[StepInfo] = []

    def __call__(self, info: StepInfo) -> None:
        self.steps.append(info)


# ------------------------------------------------------------------------------ the loss


@pytest.mark.parametrize(
    "optimizer, init", [("lbfgs", "content"), ("adam", "content"), ("adam", "noise")]
)
def test_loss_decreases(engines, starry, optimizer, init):
    st = engines(optimizer=optimizer, init=init, iterations=15, size=32)
    rec = Recorder()
    (result,) = st.stylize_batch([sample_exact("tubingen", H, W)], [starry], rec)
    initial = rec.steps[0].losses[0]  # the first report carries the loss at the start
    assert rec.steps[0].step == 1
    assert result.iterations == 15
    assert result.total_loss < 0.4 * initial
    assert result.total_loss == pytest.approx(
        st.cfg.content_weight * result.content_loss + st.cfg.style_weight * result.style_loss,
        rel=1e-4,
    )


@pytest.mark.slow
def test_lbfgs_loss_decreases_from_noise_for_every_seed(engines, starry):
    finals = {}
    for seed in range(4):
        st = engines(init="noise", seed=seed, iterations=20, size=32)
        rec = Recorder()
        (result,) = st.stylize_batch([sample_exact("tubingen", H, W)], [starry], rec)
        finals[seed] = result.total_loss / rec.steps[0].losses[0]
    assert all(ratio < 0.5 for ratio in finals.values()), finals


@pytest.mark.slow
def test_output_moves_to_the_style_in_a_fixed_feature_space(engines):
    """The output's Gram distance to the style falls well below the content's, measured by
    a network the engine does not use (max pooling, equal layers, normalised per layer)."""
    st = engines(init="content", iterations=40, size=48)
    content = sample("tubingen", 48)  # 48 x 36
    style = sample("starry_night", 48)  # the engine's style target at this size
    (result,) = st.stylize_batch([content], [Style("starry48", (style,))])
    judge, _ = build_vgg("caffe", GRAM_LAYERS, "max")
    before = gram_distance(judge, content, style)
    after = gram_distance(judge, result.image, style)
    assert after < 0.5 * before, (before, after)


@pytest.mark.parametrize("init", ["noise", "content"])
@pytest.mark.slow
def test_wasserstein2_moves_the_output_to_the_style_in_w2(engines, init):
    """With style_loss wasserstein2 the output's W2 distance to the style (the test's own
    formula, a network the engine does not use) falls from the start's."""
    st = engines(init=init, iterations=30, size=48, style_loss="wasserstein2")
    content = sample("tubingen", 48)  # 48 x 36
    style = sample("starry_night", 48)
    rec = Recorder()
    (result,) = st.stylize_batch([content], [Style("starry48", (style,))], rec)
    assert result.total_loss < 0.5 * rec.steps[0].losses[0]
    judge, _ = build_vgg("caffe", GRAM_LAYERS, "max")
    start = start_noise(st.cfg, *content.shape[-2:]) if init == "noise" else content
    before = w2_distance(judge, start, style)
    after = w2_distance(judge, result.image, style)
    assert after < 0.6 * before, (before, after)


@pytest.mark.parametrize("kind", STYLE_LOSSES)
def test_every_style_loss_lowers_its_loss_and_reports_it(engines, starry, kind):
    st = engines(init="content", iterations=10, size=32, style_loss=kind)
    rec = Recorder()
    (result,) = st.stylize_batch([sample_exact("tubingen", H, W)], [starry], rec)
    assert result.style_loss > 0 and result.total_loss < rec.steps[0].losses[0]
    assert result.total_loss == pytest.approx(
        st.cfg.content_weight * result.content_loss + st.cfg.style_weight * result.style_loss,
        rel=1e-4,
    )


def test_style_targets_are_cached_per_style_loss(engines, starry):
    st = engines(size=32)
    before = dict(st.targets.computed)
    gram = st.style_targets(starry, 32)
    w2 = st.style_targets(starry, 32, options=st.cfg.replace(style_loss="wasserstein2"))
    again = st.style_targets(starry, 32, options=st.cfg.replace(style_loss="wasserstein2"))
    assert again is w2 and gram is not w2
    assert st.targets.computed["starry"] - before.get("starry", 0) <= 2
    c = gram["relu1_1"][0].shape[0]
    mean, cov, root, eps, scale = w2["relu1_1"]
    assert mean.shape == (c,) and cov.shape == root.shape == (c, c) and eps.shape == ()
    torch.testing.assert_close(root @ root, cov, rtol=1e-9, atol=1e-9 * cov.abs().max().item())
    m2 = cov - eps * torch.eye(c, dtype=cov.dtype) + torch.outer(mean, mean)
    # the Gram matrix is the second moment over C, in fp32
    torch.testing.assert_close(m2.float() / c, gram["relu1_1"][0], rtol=1e-4, atol=1e-4)


def test_wasserstein2_on_a_gpu_with_slow_float64_says_so_once(starry, monkeypatch):
    """A T4, L4 or A10G runs float64 at 1/32-1/64 of fp32: the first wasserstein2 targets an
    engine makes say that gram is the fast choice there (the device's answer is faked: this
    machine has no GPU); gram says nothing, and neither does a GPU with full-rate float64."""
    from stylize import engine as engine_module
    from stylize import runtime

    monkeypatch.setattr(engine_module, "slow_float64", lambda device: "Tesla T4")
    st = Stylizer(resolve_config(size=32, device="cpu"))
    w2 = st.cfg.replace(style_loss="wasserstein2")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        st.style_targets(starry, 32)  # gram
        st.style_targets(starry, 32, options=w2)
        st.style_targets(starry, 48, options=w2)
    messages = [str(w.message) for w in said]
    assert len(messages) == 1 and "Tesla T4" in messages[0] and "gram" in messages[0]
    assert runtime.slow_float64(torch.device("cpu")) is None
    assert (9, 0) in runtime.FULL_RATE_FLOAT64 and (8, 9) not in runtime.FULL_RATE_FLOAT64


def test_blended_gaussian_targets_are_the_pooled_features_moments(engines):
    """A blend of a style with itself is that style; the blend of two is the moments of their
    features pooled (weighted), not the mean of their covariances."""
    a, b = sample("starry_night", 48), sample("the_scream", 48)
    st = engines(size=32, style_loss="mean_std")
    one = st.style_targets(Style("a", (a,)), 32)
    twice = st.style_targets(Style("a+a", (a, a), (1.0, 3.0)), 32)
    just_b = st.style_targets(Style("b", (b,)), 32)
    both = st.style_targets(Style("a+b", (a, b)), 32)
    for layer in GRAM_LAYERS:
        torch.testing.assert_close(twice[layer], one[layer])
        (ma, sa, *_), (mb, sb, *_), (m, s, *_) = one[layer], just_b[layer], both[layer]
        torch.testing.assert_close(m, (ma + mb) / 2)
        second = ((sa.pow(2) + ma.pow(2)) + (sb.pow(2) + mb.pow(2))) / 2  # E[x^2] + eps
        torch.testing.assert_close(s.pow(2), second - m.pow(2), rtol=1e-6, atol=1e-6)


# -------------------------------------------------------------------- batch independence


def _alone_and_batched(st: Stylizer):
    contents, styles = batch_inputs()
    per_image_features(st)
    batched = st.stylize_batch(contents, styles)
    alone = [st.stylize_batch([c], [s])[0] for c, s in zip(contents, styles)]
    return alone, batched


def _assert_same(alone: list[ItemResult], batched: list[ItemResult]) -> None:
    for a, b in zip(alone, batched, strict=True):
        assert a.iterations == b.iterations
        torch.testing.assert_close(b.image, a.image, rtol=0, atol=1e-3)
        assert b.total_loss == pytest.approx(a.total_loss, rel=1e-5)


@pytest.mark.parametrize(
    "optimizer, kind", [("lbfgs", "gram"), ("adam", "gram"), ("lbfgs", "wasserstein2")]
)
@pytest.mark.slow
def test_batch_of_three_equals_each_alone(optimizer, kind):
    st = Stylizer(
        resolve_config(
            device="cpu",
            optimizer=optimizer,
            init="content",
            iterations=10,
            size=32,
            style_loss=kind,
        )
    )
    alone, batched = _alone_and_batched(st)
    assert all(r.iterations == 10 for r in batched)
    _assert_same(alone, batched)
    assert len({round(r.total_loss) for r in batched}) == 3  # three different problems


@pytest.mark.slow
def test_batch_with_early_stopping_equals_each_alone():
    """Each image stops on its own: the batch goes on for the others while the images that
    converged stay frozen, and each reports its own iteration count. The first image is its
    own style, so it starts at the optimum (zero gradient) and stops at once; the other two
    stop when their loss stalls (10% over 3 steps), at points of their own."""
    st = Stylizer(
        resolve_config(
            device="cpu",
            init="content",
            iterations=30,
            size=32,
            early_stopping=True,
            tolerance=0.1,
            window=3,
            log_every=1,
        )
    )
    contents, styles = batch_inputs()
    contents[0] = sample_exact("the_scream", H, W)
    styles[0] = Style("itself", (contents[0],))
    per_image_features(st)
    batched = st.stylize_batch(contents, styles)
    alone = [st.stylize_batch([c], [s])[0] for c, s in zip(contents, styles)]
    used = [r.iterations for r in batched]
    assert used[0] == 1 and min(used[1:]) > 3, used
    assert min(used[1:]) < 30, used  # the window criterion stopped one of them early
    torch.testing.assert_close(batched[0].image, contents[0])  # stopped where it started
    _assert_same(alone, batched)


def test_stopped_images_leave_the_batch():
    """Early stopping saves work, not just iterations: once an image has stopped, the network
    runs on the others only (checked every ``window`` steps), and every image still comes
    back with its pixels, its loss and its own iteration count."""
    st = Stylizer(
        resolve_config(
            device="cpu",
            init="content",
            iterations=12,
            size=32,
            early_stopping=True,
            tolerance=1e-6,
            window=4,
            log_every=6,
        )
    )
    contents, styles = batch_inputs()
    contents[0] = sample_exact("the_scream", H, W)
    styles[0] = Style("itself", (contents[0],))  # at its optimum: its loss cannot fall
    network = st.model.forward  # every pass of the network: features and objective
    sizes = []

    def forward(pixels, taps=None):
        sizes.append(pixels.shape[0])
        return network(pixels, taps)

    st.model.forward = forward
    results = st.stylize_batch(contents, styles)
    # The first image stops within the first two windows; the check at step 8 drops it.
    # Three style Grams and the content targets; steps 1-8 with three images, steps 9-12 and
    # the final loss with two; then the losses of all three at their returned pixels.
    used = [r.iterations for r in results]
    assert 5 <= used[0] <= 8 and used[1:] == [12, 12], used
    assert sizes == [1, 1, 1, 3] + [3] * 8 + [2] * 5 + [3], str(sizes)
    torch.testing.assert_close(results[0].image, contents[0])
    assert results[0].total_loss == pytest.approx(0, abs=1e-6)
    assert all(r.total_loss > 0 for r in results[1:])


# ---------------------------------------------------------------------------- the options


def test_multiscale_returns_full_size_and_counts_every_scale(engines):
    st = engines(init="content", iterations=4, size=48, scales=(0.5, 1.0))
    rec = Recorder()
    content = sample_exact("tubingen", 32, 48)
    scream = Style("scream", (sample("the_scream", 96),))
    (result,) = st.stylize_batch([content], [scream], rec)
    assert result.image.shape == (3, 32, 48)
    assert result.iterations == 8
    assert [(s.scale, s.scales) for s in (rec.steps[0], rec.steps[-1])] == [(0, 2), (1, 2)]
    shapes = {s.scale: tuple(s.pixels.shape) for s in rec.steps}
    assert shapes == {0: (1, 3, 16, 24), 1: (1, 3, 32, 48)}
    # The fine scale starts from the coarse result, not from the content.
    single = engines(init="content", iterations=4, size=48)
    rec1 = Recorder()
    single.stylize_batch([content], [scream], rec1)
    fine_start = next(s for s in rec.steps if s.scale == 1).losses[0]
    assert fine_start != pytest.approx(rec1.steps[0].losses[0], rel=1e-3)


@pytest.mark.slow
def test_a_scale_schedule_runs_each_scale_for_its_own_iterations(engines):
    """scales as (longest side, iterations) pairs: 24 px for 3 steps, then 48 px for 5."""
    st = engines(init="content", size=48, scales=((24, 3), (48, 5)), log_every=1)
    assert st.cfg.schedule == ((0.5, 3), (1.0, 5))
    rec = Recorder()
    content = sample_exact("tubingen", 32, 48)
    scream = Style("scream", (sample("the_scream", 96),))
    (result,) = st.stylize_batch([content], [scream], rec)
    assert result.image.shape == (3, 32, 48)
    assert result.iterations == 8
    by_scale = {}
    for s in rec.steps:
        by_scale.setdefault(s.scale, []).append((s.step, s.steps, tuple(s.pixels.shape), s.scales))
    assert [max(v) for v in by_scale.values()] == [
        (3, 3, (1, 3, 16, 24), 2),
        (5, 5, (1, 3, 32, 48), 2),
    ]
    # the same as the fractions 0.5, 1.0 when the iterations are equal; an override of the
    # call's iterations applies to every scale
    pairs = engines(init="content", size=48, scales="24:4,48:4")
    fractions = engines(init="content", size=48, scales=(0.5, 1.0), iterations=4)
    (a,) = pairs.stylize_batch([content], [scream])
    (b,) = fractions.stylize_batch([content], [scream])
    torch.testing.assert_close(a.image, b.image, rtol=0, atol=0)
    (c,) = st.stylize_batch([content], [scream], iterations=2)
    assert c.iterations == 4


def test_style_scale_changes_the_targets(engines, starry):
    half = engines(style_scale=0.5)
    full = engines()
    grams_half = half.style_targets(starry, 64)
    # The style is seen at half the content's size: the same as a content of half the size.
    for layer, (g,) in full.style_targets(starry, 32).items():
        torch.testing.assert_close(grams_half[layer][0], g)
    assert not torch.allclose(
        grams_half["relu3_1"][0], full.style_targets(starry, 64)["relu3_1"][0], rtol=1e-2
    )


def test_init_from_an_image_path(engines, tmp_path):
    start = sample_exact("the_scream", H, W)
    path = tmp_path / "start.png"
    write_atomic(path, encode_image(start, "png"))
    # Adam's first step moves every pixel by at most lr: the output is the start image.
    st = engines(init=str(path), optimizer="adam", lr=1e-3, iterations=1, size=32)
    content = sample_exact("tubingen", H, W)
    (result,) = st.stylize_batch([content], [Style("s", (sample("starry_night", 32),))])
    torch.testing.assert_close(result.image, start, rtol=0, atol=2e-3)
    assert (result.image - content).abs().mean() > 20


def test_noise_init_is_seeded_and_scaled(engines):
    content = sample_exact("tubingen", H, W)
    style = Style("s", (sample("starry_night", 32),))
    outs = {}
    for seed in (0, 0, 1):
        st = engines(
            init="noise",
            seed=seed,
            optimizer="adam",
            lr=1e-3,
            iterations=1,
            noise_scale=0.1,
            size=32,
        )
        outs.setdefault(seed, []).append(st.stylize_batch([content], [style])[0].image)
    torch.testing.assert_close(outs[0][0], outs[0][1])
    assert (outs[0][0] - outs[1][0]).abs().mean() > 5
    noise = outs[0][0]
    assert noise.mean().item() == pytest.approx(127.5, abs=3)
    assert noise.std().item() == pytest.approx(0.1 * 255, rel=0.15)


def test_blend_weights(engines):
    a, b = sample("starry_night", 48), sample("the_scream", 48)
    st = engines(init="content", iterations=3, size=32)
    first_only = st.style_targets(Style("a-only", (a,)), 32)
    weighted = st.style_targets(Style("a+0b", (a, b), (1.0, 0.0)), 32)
    equal = st.style_targets(Style("a+b", (a, b), (2.0, 2.0)), 32)
    just_b = st.style_targets(Style("b", (b,)), 32)
    for layer in GRAM_LAYERS:
        torch.testing.assert_close(weighted[layer], first_only[layer])
        torch.testing.assert_close(equal[layer][0], (first_only[layer][0] + just_b[layer][0]) / 2)

    content = sample_exact("tubingen", H, W)
    (r_weighted,) = st.stylize_batch([content], [Style("a,b 1:0", (a, b), (1.0, 0.0))])
    (r_first,) = st.stylize_batch([content], [Style("a", (a,))])
    (r_equal,) = st.stylize_batch([content], [Style("a,b", (a, b))])
    torch.testing.assert_close(r_weighted.image, r_first.image, rtol=0, atol=1e-3)
    assert (r_equal.image - r_first.image).abs().max() > 1


def test_bad_blend_weights():
    a = sample("starry_night", 32)
    for weights in [(1.0,), (-1.0, 2.0), (0.0, 0.0)]:
        with pytest.raises(ValueError, match="weights"):
            Style("x", (a, a), weights).blend()


def test_progress_callback(engines, starry):
    st = engines(init="content", iterations=12, log_every=5, size=32)
    rec = Recorder()
    contents = [sample_exact("tubingen", H, W), sample_exact("coffee", H, W)]
    st.stylize_batch(contents, [starry, starry], rec)
    assert all(isinstance(s, StepInfo) for s in rec.steps)
    steps = [s.step for s in rec.steps]
    assert steps[0] == 1 and steps[-1] == 12
    assert all(0 < b - a <= 5 for a, b in zip(steps, steps[1:])), steps  # every log_every
    assert len(steps) >= 3
    last = rec.steps[-1]
    assert last.step == last.steps == 12
    assert all(len(s.losses) == 2 and s.active <= 2 for s in rec.steps)
    assert last.pixels.shape == (2, 3, H, W)


def test_small_size_with_a_wide_style(engines, starry):
    st = engines(init="content", iterations=1, size=16)
    (result,) = st.stylize_batch([sample_exact("tubingen", 16, 16)], [starry])
    assert result.image.shape == (3, 16, 16)


def test_batch_needs_one_size_and_one_style_per_content(engines, starry):
    st = engines(init="content", iterations=1, size=32)
    with pytest.raises(ValueError, match="styles"):
        st.stylize_batch([sample_exact("tubingen", H, W)], [starry, starry])
    with pytest.raises(ValueError, match="size"):
        st.stylize_batch(
            [sample_exact("tubingen", H, W), sample_exact("coffee", 16, 16)], [starry, starry]
        )
    assert st.stylize_batch([], []) == []


# --------------------------------------------------------------------------- one-call API


def test_stylize_pil_in_pil_out():
    content = decode_image(sample_path("tubingen"))  # 384 x 288
    style = decode_image(sample_path("the_scream"))
    out = stylize(content, style, size=32, iterations=5)
    assert isinstance(out, Image.Image) and out.mode == "RGB"
    assert out.size == resize_longest(content, 32).size == (32, 24)


def test_stylize_tensor_in_tensor_out(engines):
    st = engines(init="content", iterations=5, size=32)
    content = sample("tubingen") / 255.0  # (3, 288, 384) in 0..1, torchvision's convention
    style = sample("starry_night", 64) / 255.0
    out = stylize(content, [style, style], st.cfg, style_weights=[1, 2], stylizer=st)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert out.shape == (3, 24, 32)
    assert 0 <= out.min() and out.max() <= 1
    assert out.std() > 0.05
    with pytest.raises(ValueError, match="3, H, W"):
        stylize(torch.rand(4, 8, 8), style, st.cfg, stylizer=st)


def test_stylize_callback_reports_progress(engines):
    st = engines(init="content", iterations=5, size=32)
    rec = Recorder()
    stylize(
        sample("tubingen") / 255,
        sample("starry_night", 32) / 255,
        st.cfg,
        stylizer=st,
        callback=rec,
    )
    assert rec.steps and rec.steps[-1].step == 5


def test_stylize_with_a_stylizer_uses_its_size(engines, monkeypatch):
    st = engines(init="content", iterations=1, size=32)
    seen = []

    def spy(contents, styles, *args, **kwargs):  # what would be optimised, without the work
        seen.append(tuple(contents[0].shape))
        return [ItemResult(contents[0], 0, 0.0, 0.0, 0.0, 0.0)]

    monkeypatch.setattr(st, "stylize_batch", spy)
    out = stylize(
        decode_image(sample_path("tubingen")), decode_image(sample_path("coffee")), stylizer=st
    )
    assert seen == [(3, 24, 32)]
    assert out.size == (32, 24)


def test_stylize_reused_stylizer_forgets_the_previous_style(engines):
    options = dict(init="content", iterations=3, size=48, scales=(0.5, 1.0))
    reused = engines(**options)
    content = sample("tubingen") / 255
    first, second = sample("the_scream", 48) / 255, sample("coffee", 48) / 255
    stylize(content, first, reused.cfg, stylizer=reused)
    out = stylize(content, second, reused.cfg, stylizer=reused)
    fresh = Stylizer(reused.cfg)
    expected = stylize(content, second, fresh.cfg, stylizer=fresh)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)


# --------------------------------------------------------------------------- out of memory


def _oom_above(monkeypatch, limit: int) -> list[int]:
    """Make chunks of more than ``limit`` images fail as a GPU does; returns the chunk sizes."""
    original = Stylizer._optimize_chunk
    sizes: list[int] = []

    def chunk(self, contents, *args, **kwargs):
        sizes.append(len(contents))
        if len(sizes) > 20:
            raise RuntimeError("retrying forever")
        if len(contents) > limit:
            raise torch.OutOfMemoryError("simulated")
        return original(self, contents, *args, **kwargs)

    monkeypatch.setattr(Stylizer, "_optimize_chunk", chunk)
    return sizes


def test_out_of_memory_halves_the_chunk(monkeypatch, starry):
    st = Stylizer(resolve_config(device="cpu", init="content", iterations=2, size=32, batch_size=0))
    sizes = _oom_above(monkeypatch, 2)
    contents = [sample_exact(n, H, W) for n in ("tubingen", "chelsea", "coffee", "shipwreck")]
    results = st.stylize_batch(contents, [starry] * 4)
    assert sizes == [4, 2, 2]  # the CPU's default chunk of 4, then halves
    assert st.batch_limit((H, W)) == 2  # learnt
    assert len(results) == 4 and all(r.iterations == 2 for r in results)
    for c, r in zip(contents, results):  # each result belongs to its own content
        assert r.image.shape == c.shape
    assert results[0].total_loss != pytest.approx(results[1].total_loss)
    sizes.clear()
    st.stylize_batch(contents[:3], [starry] * 3)  # the limit is remembered for this shape
    assert sizes == [2, 1]


def test_out_of_memory_on_one_image_is_raised(monkeypatch, starry):
    st = Stylizer(resolve_config(device="cpu", init="content", iterations=1, size=32))
    sizes = _oom_above(monkeypatch, 0)
    with pytest.raises(torch.OutOfMemoryError):
        st.stylize_batch([sample_exact("tubingen", H, W)], [starry])
    assert sizes == [1]
    sizes.clear()
    with pytest.raises(torch.OutOfMemoryError):
        st.stylize_batch([sample_exact("tubingen", H, W)] * 3, [starry] * 3)
    assert sizes == [3, 1]


def test_out_of_memory_halves_an_explicit_batch_size(monkeypatch, starry):
    st = Stylizer(resolve_config(device="cpu", init="content", iterations=1, size=32, batch_size=4))
    sizes = _oom_above(monkeypatch, 2)
    contents = [sample_exact("tubingen", H, W)] * 4
    assert len(st.stylize_batch(contents, [starry] * 4)) == 4
    assert sizes == [4, 2, 2]
