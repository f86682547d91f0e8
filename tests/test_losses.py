"""The loss and the objective: the Gram loss's one-product gradient against autograd's, its
split reduction against one product, layouts and dtypes kept, and the compiled objective (network
and loss as one function) against the eager one, loss and gradient."""

import pytest
import torch

from stylize import losses
from stylize.config import resolve_config
from stylize.engine import Style, Stylizer
from stylize.images import decode_image, to_tensor
from stylize import bench


def plain_style_loss(f, target):
    b, c, h, w = f.shape
    m = f.reshape(b, c, h * w)
    g = torch.bmm(m, m.transpose(1, 2)) / (c * h * w)
    return (g - target).pow(2).flatten(1).mean(1)


def _features(layout, dtype=torch.float64, shape=(3, 8, 6, 5), seed=0):
    gen = torch.Generator().manual_seed(seed)
    f = torch.randn(*shape, generator=gen, dtype=torch.float64).relu().to(dtype)
    return f.contiguous(memory_format=layout).requires_grad_(True)


def _target(c, b=3, seed=1):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(b, c, c, generator=gen, dtype=torch.float64) * 0.1
    return a @ a.transpose(1, 2)  # symmetric, as Gram targets are


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_gram_loss_gradient_is_autograds(layout):
    f = _features(layout)
    target = _target(8)
    weights = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)  # a different upstream per image
    ours = losses.style_loss(f, target)
    (g_ours,) = torch.autograd.grad((ours * weights).sum(), f)
    ref_f = f.detach().clone().requires_grad_(True)
    ref = plain_style_loss(ref_f, target)
    (g_ref,) = torch.autograd.grad((ref * weights).sum(), ref_f)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-14)
    # the gradient comes back in the features' layout: no copy before the network's backward
    assert g_ours.is_contiguous(memory_format=layout)
    assert torch.autograd.gradcheck(lambda x: losses.style_loss(x, target), (f,))


def test_split_gram_equals_one_product():
    # rows of positions (channels-last), n = 128 * 128 = 16384: split in 4 slices of 4096
    f = _features(torch.channels_last, torch.float32, shape=(2, 16, 128, 128))
    rows, channels_last = losses._rows(f.detach())
    assert channels_last and losses._split(rows.shape[1]) == 4
    split = losses._gram_fp32(rows, True, split=True)
    whole = losses._gram_fp32(rows, True, split=False)
    torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-5)
    # a size with few divisors still splits exactly (k divides n), or not at all
    for n in (262144, 65536, 4096, 1000, 4099 * 3, 97):
        k = losses._split(n)
        assert n % k == 0 and 1 <= k <= max(1, n // losses.SPLIT_DEPTH)


def test_bf16_features_keep_dtype_and_accumulate_in_fp32():
    f64 = _features(torch.channels_last, torch.float64, shape=(2, 16, 12, 10))
    f = f64.detach().to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    f.requires_grad_(True)
    target = _target(16, b=2)
    loss = losses.style_loss(f, target.float())
    assert loss.dtype == torch.float32
    (g,) = torch.autograd.grad(loss.sum(), f)
    assert g.dtype == torch.bfloat16 and g.is_contiguous(memory_format=torch.channels_last)
    # the reference on the same (bf16-rounded) values in float64: fp32 accumulation keeps the
    # loss exact to fp32 rounding; the gradient is rounded to bf16 (8 bits) once
    ref_f = f.detach().double().requires_grad_(True)
    ref = plain_style_loss(ref_f, target)
    (g_ref,) = torch.autograd.grad(ref.sum(), ref_f)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=0)
    assert ((g.double() - g_ref).norm() / g_ref.norm()) < 1e-2


def _engine_inputs(n=2, size=32):
    contents = [bench.square(r, size) for r in bench.sample_bytes(n)]
    style = Style("starry", (to_tensor(decode_image(bench.sample_bytes(6)[-1])),))
    return contents, style


def test_compiled_objective_equals_eager_loss_and_gradient():
    pytest.importorskip("torch._inductor")
    contents, style = _engine_inputs(3)
    cfg = resolve_config(size=32, device="cpu", compile=True, tv_weight=1e-3)
    engine = Stylizer(cfg)
    content = torch.stack(contents)
    loss = engine.loss_for(content, [style] * 3)
    taps = cfg.content_layers + cfg.style_layers
    gen = torch.Generator().manual_seed(0)
    x = (content + 20 * torch.randn(content.shape, generator=gen)).clamp(0, 255)
    results = {}
    for name in ("compiled", "eager"):
        if name == "eager":
            engine.objective._compiled = None
        px = x.clone().requires_grad_(True)
        with engine.numerics():
            total, *parts = engine.objective(px, loss, taps)
        (grad,) = torch.autograd.grad(total.sum(), px)
        results[name] = (total.detach(), [p.detach() for p in parts], grad)
        if name == "compiled":
            assert engine.compiled, "the objective fell back to eager"
    (t_c, p_c, g_c), (t_e, p_e, g_e) = results["compiled"], results["eager"]
    torch.testing.assert_close(t_c, t_e, rtol=1e-4, atol=0)
    for a, b in zip(p_c, p_e):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert ((g_c - g_e).norm() / g_e.norm()) < 1e-4
    # the eager objective is the loss module applied to the features
    with torch.no_grad():
        direct = loss(engine.features(x, taps), x)[0]
    torch.testing.assert_close(direct, t_e, rtol=1e-5, atol=0)
