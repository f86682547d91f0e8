"""The loss and the objective: the Gram loss's one-product gradient against autograd's, its
split reduction against one product, layouts and dtypes kept; each style loss (gram,
wasserstein2, mean_std) against its formula, its gradient (gradcheck), zero at its target,
batch-independent; and the compiled objective (network and loss as one function) against the
eager one, loss and gradient, for each style loss."""

import pytest
import torch

from stylize import bench, losses
from stylize.config import STYLE_LOSSES, resolve_config
from stylize.engine import Style, Stylizer
from stylize.images import decode_image, to_tensor


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


# ------------------------------------------------------------------- every style loss

CPU = torch.device("cpu")


def _style_target(kind, style_features, dtype=torch.float64):
    spec = losses.STYLE_KINDS[kind]
    return spec.target(spec.statistics(style_features.detach()), CPU, dtype)


def _sqrtm(a):
    """Symmetric PSD square root, float64 (the test's own, independent of the engine's)."""
    lam, vec = torch.linalg.eigh((a + a.mT) / 2)
    return vec @ torch.diag_embed(lam.clamp_min(0).sqrt()) @ vec.mT


def reference_style_loss(kind, f, g):
    """The loss of features f against style features g, (B, C, H, W) each, from the formulas
    (docs/engine.md, "Style losses"), in float64, one image at a time."""
    out = []
    for x, y in zip(f.double(), g.double()):
        c = x.shape[0]
        x, y = x.reshape(c, -1), y.reshape(c, -1)
        if kind == "gram":
            gx, gy = x @ x.T / x.numel(), y @ y.T / y.numel()
            out.append((gx - gy).pow(2).mean())
            continue
        m2 = y @ y.T / y.shape[1]
        eps = losses.EPS_RELATIVE * m2.diagonal().mean() + 1e-12
        scale = m2.norm() / c**4
        mx, my = x.mean(1), y.mean(1)
        sx = torch.cov(x, correction=0) + eps * torch.eye(c, dtype=x.dtype)
        sy = torch.cov(y, correction=0) + eps * torch.eye(c, dtype=x.dtype)
        if kind == "mean_std":
            d2 = (mx - my).pow(2).sum() + (sx.diagonal().sqrt() - sy.diagonal().sqrt()).pow(2).sum()
        else:
            root = _sqrtm(sy)
            d2 = (mx - my).pow(2).sum() + (sx + sy - 2 * _sqrtm(root @ sx @ root)).trace()
            d2 = losses.W2_BALANCE * d2  # wasserstein2's measured share against gram
        out.append(scale * d2)
    return torch.stack(out)


def test_style_kinds_are_the_configs_choices():
    assert tuple(losses.STYLE_KINDS) == STYLE_LOSSES


@pytest.fixture(params=["eigh", "newton"])
def w2_root(request, monkeypatch):
    """wasserstein2's tr(P^1/2) both ways: the eigenvalues (a CPU's) and Newton-Schulz (a
    GPU's), forced here on the CPU."""
    monkeypatch.setattr(losses, "W2_ROOT", request.param)
    return request.param


@pytest.mark.parametrize("kind", STYLE_LOSSES)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_style_loss_is_its_formula_and_its_gradient_is_right(kind, layout, w2_root):
    if kind != "wasserstein2" and w2_root != "eigh":
        pytest.skip("only wasserstein2 takes a matrix square root")
    f = _features(layout, shape=(3, 6, 5, 4))
    g = _features(torch.contiguous_format, shape=(3, 6, 7, 5), seed=5)  # another size: fine
    target = _style_target(kind, g)
    loss = losses.STYLE_KINDS[kind].loss
    ours = loss(f, *target)
    assert ours.shape == (3,) and ours.dtype == torch.float64
    torch.testing.assert_close(ours, reference_style_loss(kind, f.detach(), g), rtol=1e-9, atol=0)
    assert torch.autograd.gradcheck(lambda x: loss(x, *target), (f,))
    (grad,) = torch.autograd.grad(ours.sum(), f)
    assert grad.is_contiguous(memory_format=layout)


@pytest.mark.parametrize("kind", STYLE_LOSSES)
def test_style_loss_is_zero_at_its_target_and_positive_away(kind):
    g = _features(torch.contiguous_format, shape=(2, 8, 6, 5), seed=3)
    target = _style_target(kind, g)
    loss = losses.STYLE_KINDS[kind].loss
    away = loss(_features(torch.contiguous_format, shape=(2, 8, 6, 5), seed=4).detach(), *target)
    assert (away > 0).all()
    at = loss(g.detach(), *target)
    assert (at.abs() < 1e-9 * away).all()
    # the same positions in another order, and the same features in fp32 (the engine's
    # statistics): still at the target, to rounding
    shuffled = g.detach().flip(-1).transpose(-1, -2).contiguous()
    assert (loss(shuffled, *target).abs() < 1e-9 * away).all()
    target32 = _style_target(kind, g.float())
    at32 = loss(g.detach().float(), *target32)
    assert at32.dtype == torch.float32 and (at32.abs() < 1e-4 * away).all()


@pytest.mark.parametrize("kind", STYLE_LOSSES)
def test_style_loss_of_a_batch_is_each_image_alone(kind):
    f = _features(torch.channels_last, shape=(3, 8, 6, 5))
    g = _features(torch.contiguous_format, shape=(3, 8, 6, 5), seed=7)
    target = _style_target(kind, g)
    loss = losses.STYLE_KINDS[kind].loss
    batch = loss(f, *target)
    (g_batch,) = torch.autograd.grad(batch.sum(), f)
    for i in range(3):
        fi = f.detach()[i : i + 1].clone().requires_grad_(True)
        alone = loss(fi, *(t[i : i + 1] for t in target))
        (g_alone,) = torch.autograd.grad(alone.sum(), fi)
        torch.testing.assert_close(alone, batch[i : i + 1], rtol=1e-12, atol=0)
        torch.testing.assert_close(g_alone, g_batch[i : i + 1], rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("kind", ["wasserstein2", "mean_std"])
def test_gaussian_losses_are_finite_on_degenerate_features(kind, w2_root):
    """More channels than positions (a deep layer at a small size), a dead channel, a constant
    image: covariances of low rank, zero variances. The loss and its gradient stay finite."""
    g = _features(torch.contiguous_format, shape=(2, 16, 2, 2), seed=1).detach()
    g[:, 3] = 0  # a channel dead in the style
    f = _features(torch.contiguous_format, shape=(2, 16, 2, 2), dtype=torch.float32)
    with torch.no_grad():
        f[0] = 1.0  # one image constant: every variance 0
        f[1, 5] = 0
    for dtype in (torch.float64, torch.float32):
        target = _style_target(kind, g.float(), dtype)
        loss = losses.STYLE_KINDS[kind].loss(f, *target)
        (grad,) = torch.autograd.grad(loss.sum(), f)
        assert torch.isfinite(loss).all() and (loss > 0).all()
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_newton_schulz_gives_the_eigenvalues_loss_and_gradient_on_vgg_statistics(monkeypatch):
    """What a GPU computes (Newton-Schulz) against what a CPU does (the eigenvalues), on real
    VGG-19 features in every style layer: a photo against a painting, from noise and from the
    photo (covariances with condition numbers of 1e7-1e9, as at 256 and 512 px)."""
    contents, style = _engine_inputs(1, size=96)
    engine = Stylizer(resolve_config(size=96, device="cpu", compile=False))
    layers = engine.cfg.style_layers
    gen = torch.Generator().manual_seed(0)
    starts = {"photo": contents[0][None], "noise": torch.rand(1, 3, 96, 96, generator=gen) * 255}
    spec = losses.STYLE_KINDS["wasserstein2"]
    with torch.no_grad():
        style_features = engine.features(style.images[0][None], layers)
        start_features = {k: engine.features(x, layers) for k, x in starts.items()}
    for layer in layers:
        target = spec.target(spec.statistics(style_features[layer]), CPU, torch.float64)
        for start, features in start_features.items():
            got = {}
            for root in ("eigh", "newton"):
                monkeypatch.setattr(losses, "W2_ROOT", root)
                f = features[layer].detach().clone().requires_grad_(True)
                value = spec.loss(f, *target)
                (grad,) = torch.autograd.grad(value.sum(), f)
                got[root] = value.detach(), grad
            (v_e, g_e), (v_n, g_n) = got["eigh"], got["newton"]
            where = f"{layer} from {start}"
            torch.testing.assert_close(v_n, v_e, rtol=1e-6, atol=0, msg=where)
            assert (g_n - g_e).norm() / g_e.norm() < 1e-4, where


def test_newton_schulz_converges_at_a_condition_number_of_1e10():
    """The scaled iteration against the eigenvalues on SPD matrices whose spectrum spans 1e10
    (the most its fixed schedule is made for): tr(P^1/2) and P^-1/2 to
    1e-10 and 1e-6 in NEWTON_STEPS steps (30 plain steps: 1e-7 and 2% off here)."""
    gen = torch.Generator().manual_seed(3)
    c, batch = 48, 3
    q, _ = torch.linalg.qr(torch.randn(batch, c, c, generator=gen, dtype=torch.float64))
    lam = torch.logspace(-10, 0, c, dtype=torch.float64).expand(batch, c) * torch.tensor(
        [[1.0], [7.5], [1e4]], dtype=torch.float64
    )  # three scales: the iteration normalises by ||P||_F
    p = (q * lam[:, None, :]) @ q.transpose(1, 2)
    p = ((p + p.transpose(1, 2)) / 2).requires_grad_(True)
    value = losses._TraceSqrtNewton.apply(p)
    (grad,) = torch.autograd.grad(value.sum(), p)
    want = lam.sqrt().sum(1)
    inverse_root = (q / lam.sqrt()[:, None, :]) @ q.transpose(1, 2)
    torch.testing.assert_close(value.detach(), want, rtol=1e-10, atol=0)
    assert ((2 * grad - inverse_root).norm() / inverse_root.norm()) < 1e-6


@pytest.mark.parametrize("kind", ["wasserstein2", "mean_std"])
def test_gaussian_losses_of_bf16_features_keep_dtype_and_layout(kind):
    f64 = _features(torch.channels_last, torch.float64, shape=(2, 16, 12, 10))
    f = f64.detach().to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    f.requires_grad_(True)
    g = _features(torch.contiguous_format, torch.float32, shape=(2, 16, 9, 9), seed=2)
    target = _style_target(kind, g)
    loss = losses.STYLE_KINDS[kind].loss(f, *target)
    assert loss.dtype == torch.float32
    (grad,) = torch.autograd.grad(loss.sum(), f)
    assert grad.dtype == torch.bfloat16 and grad.is_contiguous(memory_format=torch.channels_last)
    ref_f = f.detach().double().requires_grad_(True)
    ref = losses.STYLE_KINDS[kind].loss(ref_f, *target)
    (g_ref,) = torch.autograd.grad(ref.sum(), ref_f)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=0)
    assert ((grad.double() - g_ref).norm() / g_ref.norm()) < 1e-2


@pytest.mark.parametrize("kind", ["wasserstein2", "mean_std"])
def test_gaussian_distances_from_moments_are_the_losses_at_any_leading_dimensions(kind):
    """The Gaussian losses' arithmetic, in one place (the guided losses of stylize.masks use it
    too): from the features' moments it gives the loss of the features; with leading
    dimensions (B, R) each row alone."""
    f = _features(torch.contiguous_format, shape=(3, 6, 5, 4)).detach()
    target = _style_target(kind, _features(torch.contiguous_format, shape=(3, 6, 7, 5), seed=5))
    flat = f.flatten(2)  # (B, C, N)
    mu = flat.mean(-1)  # (B, C)
    if kind == "wasserstein2":
        distance, second = losses.wasserstein2_distance, flat @ flat.mT / flat.shape[-1]
    else:
        distance, second = losses.mean_std_distance, flat.var(-1, correction=0)
    d = distance(mu, second, target)
    torch.testing.assert_close(d, losses.STYLE_KINDS[kind].loss(f, *target), rtol=1e-10, atol=0)

    def regions(t):  # (B, ...) -> (B, 2, ...): two regions per image, alike
        return torch.stack([t, t], 1)

    per_region = distance(regions(mu), regions(second), tuple(regions(t) for t in target))
    assert per_region.shape == (3, 2)
    torch.testing.assert_close(per_region, regions(d), rtol=1e-10, atol=0)


def test_gram_statistics_and_target_are_the_gram_matrix():
    f = _features(torch.contiguous_format, torch.float32)
    (t,) = _style_target("gram", f, torch.float64)
    assert t.dtype == torch.float32  # the Gram loss's targets stay fp32, as before
    torch.testing.assert_close(t, losses.gram(f.detach()), rtol=0, atol=0)


def _engine_inputs(n=2, size=32):
    contents = [bench.square(r, size) for r in bench.sample_bytes(n)]
    style = Style("starry", (to_tensor(decode_image(bench.sample_bytes(6)[-1])),))
    return contents, style


@pytest.mark.parametrize("kind", [*STYLE_LOSSES, "wasserstein2 newton"])
@pytest.mark.slow
def test_compiled_objective_equals_eager_loss_and_gradient(kind, monkeypatch):
    pytest.importorskip("torch._inductor")
    if kind.endswith(" newton"):  # a GPU's square root, traced into the compiled graph
        kind = kind.split()[0]
        monkeypatch.setattr(losses, "W2_ROOT", "newton")
    contents, style = _engine_inputs(3)
    cfg = resolve_config(size=32, device="cpu", compile=True, tv_weight=1e-3, style_loss=kind)
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
