"""One loaded engine, many per-image options: what a sweep and a worker rely on.

A ``Stylizer`` is built from the network options; every call may bring other per-image
options (layers, weights, iterations, seed...) and gets the same pixels as an engine built
for them. Style targets are kept in a bounded LRU cache. TF32 is scoped to the engine's calls.
"""

from __future__ import annotations

import pytest
import torch
from engine_helpers import reuse_caffe_weights, sample, sample_exact  # noqa: F401 (fixture)

from stylize.config import resolve_config
from stylize.engine import Style, Stylizer

pytestmark = pytest.mark.usefixtures("reuse_caffe_weights")

BASE = dict(device="cpu", size=32, iterations=6, init="content", log_every=3)


def _inputs():
    return [sample_exact("tubingen", 24, 32)], [Style("starry", (sample("starry_night", 48),))]


@pytest.mark.slow
def test_per_call_options_give_what_an_engine_built_for_them_gives():
    loaded = Stylizer(resolve_config(**BASE))
    contents, styles = _inputs()
    for change in (
        {"style_layers": ("relu1_1", "relu2_1")},
        {"style_weight": 1e4},
        {"iterations": 3, "init": "noise", "seed": 3},
    ):
        opts = resolve_config(**{**BASE, **change})
        got = loaded.stylize_batch(contents, styles, options=opts)[0]
        want = Stylizer(opts).stylize_batch(contents, styles)[0]
        torch.testing.assert_close(got.image, want.image)
        assert got.total_loss == pytest.approx(want.total_loss, rel=1e-5)
        assert got.iterations == want.iterations
    # and the engine's own options are untouched by the calls before
    again = loaded.stylize_batch(contents, styles)[0]
    fresh = Stylizer(resolve_config(**BASE)).stylize_batch(contents, styles)[0]
    torch.testing.assert_close(again.image, fresh.image)


def test_options_needing_another_network_are_refused():
    loaded = Stylizer(resolve_config(**BASE))
    contents, styles = _inputs()
    with pytest.raises(ValueError, match="pooling"):
        loaded.stylize_batch(contents, styles, options=resolve_config(**BASE, pooling="max"))


def test_style_targets_are_an_lru_bounded_by_bytes():
    st = Stylizer(resolve_config(**BASE), target_cache_bytes=1)  # room for one entry only
    a = Style("a", (sample("starry_night", 48),))
    b = Style("b", (sample("the_scream", 48),))
    for style in (a, a, b, a):
        st.style_targets(style, 32)
    stats = st.targets.stats()
    assert stats["styles_cached"] == 1  # b was dropped for a
    assert stats["hits"] == 1 and stats["misses"] == 3
    assert st.targets.computed == {"a": 2, "b": 1}
    roomy = Stylizer(resolve_config(**BASE))
    for style in (a, a, b, a):
        roomy.style_targets(style, 32)
    assert roomy.targets.computed == {"a": 1, "b": 1} and roomy.targets.stats()["hits"] == 2
    assert 0 < roomy.targets.nbytes <= roomy.targets.limit


@pytest.mark.parametrize(
    "precision, during", [("tf32", (True, True)), ("fp32", (False, False)), ("bf16", (True, None))]
)
def test_tf32_flags_are_set_during_the_engines_calls_only(precision, during):
    """(matmul, cuDNN) TF32 flags while the engine works; None: the caller's, untouched."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (matmul.allow_tf32, cudnn.allow_tf32)
    try:
        for before in ((False, False), (True, True)):
            matmul.allow_tf32, cudnn.allow_tf32 = before
            st = Stylizer(resolve_config(**BASE, precision=precision))
            assert (matmul.allow_tf32, cudnn.allow_tf32) == before  # built: as it was
            seen = []
            contents, styles = _inputs()
            st.stylize_batch(
                contents,
                styles,
                callback=lambda info, seen=seen: seen.append((matmul.allow_tf32, cudnn.allow_tf32)),
            )
            expected = tuple(b if d is None else d for d, b in zip(during, before))
            assert seen and all(s == expected for s in seen)
            assert (matmul.allow_tf32, cudnn.allow_tf32) == before  # restored
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved
