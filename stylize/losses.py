"""The Gatys loss, per image: content (feature MSE), style (Gram MSE by default; or the
Gaussian losses ``wasserstein2`` and ``mean_std``, see ``STYLE_KINDS``), total variation.

Every loss returns one value per image, shape (B,), so a batch is B independent problems:
the gradient of their sum w.r.t. image i is the gradient of loss i alone.

Normalisation (where it departs from the paper): the paper's content loss is a sum of
squared errors and its style loss E_l = 1/(4 N_l^2 M_l^2) sum (G - A)^2 with unnormalised
Gram matrices, which makes the content/style balance depend on the image size. Here the
content loss is the *mean* squared feature error, a Gram matrix is F F^T / (N_l M_l)
(N_l channels, M_l positions) and E_l is the mean squared Gram error: the balance no longer
depends on the size, and alpha/beta keeps the paper's meaning. These are jcjohnson/
neural-style's normalisations, so its weights carry over unchanged.

Numerics and layout: the losses take the features in the dtype and memory layout the network
produced (bf16 and channels-last on a GPU) and accumulate in fp32; their gradients go back in
that same dtype and layout, so nothing is copied or cast between the network and its loss.
The Gram loss has a gradient of one matrix product (``GramLoss``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# Positions per slice when a Gram's reduction is split (see ``_split``): deep enough that each
# slice's product runs at full speed, shallow enough that the slices fill a GPU at relu1_1.
SPLIT_DEPTH = 4096


def _wide(x: torch.Tensor) -> torch.Tensor:
    """x in fp32 at least (bf16/fp16 upcast, exactly; float64 kept)."""
    return x if x.dtype == torch.float64 else x.float()


def _rows(features: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Features (B, C, H, W) as a matrix per image without a copy: (B, HW, C) rows of
    positions when they are channels-last in memory (True), else (B, C, HW) (False)."""
    b, c, h, w = features.shape
    if c > 1 and h * w > 1 and features.is_contiguous(memory_format=torch.channels_last):
        return features.permute(0, 2, 3, 1).reshape(b, h * w, c), True
    return features.reshape(b, c, h * w), False


def _split(n: int) -> int:
    """Slices of the positions' reduction: the divisor k of n nearest to n / SPLIT_DEPTH.

    One product per image at relu1_1 (C = 64, n = 262,144 at 512 px) is one 64x64 output tile:
    a GPU of 132 multiprocessors gets a handful of thread blocks per batch and runs at a few
    percent of its speed. Split into k slices (k x more, shallower products, summed in fp32)
    it fills the GPU. k depends on n only, never on the batch size, so a compiled graph does
    not depend on how many images are in the batch."""
    want = max(1, n // SPLIT_DEPTH)
    best = 1
    for k in range(1, want + 1):
        if n % k == 0:
            best = k
    return best


def _gram_fp32(rows: torch.Tensor, channels_last: bool, split: bool) -> torch.Tensor:
    """(B, C, C) Gram sums in fp32 of a (B, HW, C) or (B, C, HW) matrix (any float dtype:
    bf16 is exact in TF32 and in fp32, so the products accumulate in fp32 either way)."""
    f = _wide(rows)
    with torch.autocast(f.device.type, enabled=False):
        if not channels_last:
            return torch.bmm(f, f.transpose(1, 2))
        b, n, c = f.shape
        k = _split(n) if split else 1
        if k == 1:
            return torch.bmm(f.transpose(1, 2), f)
        parts = f.reshape(b * k, n // k, c)  # a view: rows of positions are contiguous
        return torch.bmm(parts.transpose(1, 2), parts).view(b, k, c, c).sum(1)


def _gram(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(Gram (B, C, C) in fp32, the features as a matrix per image, whether its rows are
    positions): what ``gram`` returns and ``GramLoss`` keeps for its gradient."""
    b, c, h, w = features.shape
    rows, channels_last = _rows(features)
    return _gram_fp32(rows, channels_last, features.is_cuda) / (c * h * w), rows, channels_last


def _times_rows(
    d: torch.Tensor, rows: torch.Tensor, shape: tuple[int, ...], channels_last: bool
) -> torch.Tensor:
    """D F for a symmetric D (B, C, C) and features F (B, C, H, W) kept as ``rows`` (see
    ``_rows``): the gradient of a Gram-like product, in the features' layout."""
    b, c, h, w = shape
    with torch.autocast(rows.device.type, enabled=False):
        if channels_last:  # (B, HW, C) @ (B, C, C): channels-last, as the features were
            return torch.bmm(rows, d).view(b, h, w, c).permute(0, 3, 1, 2)
        return torch.bmm(d, rows).view(b, c, h, w)  # (B, C, C) @ (B, C, HW): contiguous


def gram(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, C), F F^T / (C H W), accumulated in fp32."""
    return _gram(features)[0]


class GramLoss(torch.autograd.Function):
    """Mean squared error between the Gram matrix of features (B, C, H, W) and a target
    (B, C, C), per image: (B,).

    Forward: the Gram in fp32 (split over positions on a GPU, see ``_split``). Backward: one
    product, dL/dF = F (E + E^T) 2 / (C^3 HW) with E = G - A (autograd's would be two products
    and a transposed add), in the features' own dtype and layout."""

    @staticmethod
    def forward(ctx: Any, features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        g, rows, channels_last = _gram(features)
        err = g - target
        ctx.save_for_backward(rows, err)
        ctx.meta = (features.shape, channels_last)
        return err.pow(2).mean(dim=(1, 2))

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:
        rows, err = ctx.saved_tensors
        (b, c, h, w), channels_last = ctx.meta
        scale = _wide(grad_out) * (2.0 / (c**3 * h * w))  # (B,)
        d = ((err + err.transpose(1, 2)) * scale[:, None, None]).to(rows.dtype)  # (B, C, C)
        return _times_rows(d, rows, (b, c, h, w), channels_last), None


def style_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) mean squared Gram error of features (B, C, H, W) against targets (B, C, C)."""
    out: torch.Tensor = GramLoss.apply(features, target)
    return out


# -- the Gaussian style losses: wasserstein2 and mean_std
#
# Both compare the features of a layer as a Gaussian: mean mu and covariance S over positions
# (mean_std: the diagonal of S only). wasserstein2 is the squared 2-Wasserstein distance
#   W2^2 = |mu - mu_t|^2 + tr(S + S_t - 2 (S_t^1/2 S S_t^1/2)^1/2),
# mean_std the same distance between Gaussians of diagonal covariance,
#   |mu - mu_t|^2 + |sigma - sigma_t|^2.
# Normalisation: both are multiplied by ||E[x x^T]_t||_F / C^4, the Frobenius norm of the
# style's second moment (C x its Gram matrix) over C^4, so that one style_weight gives a style
# term the size of the Gram term. Why: the Gram loss is ||E[x x^T] - E[x x^T]_t||_F^2 / C^4;
# a small change d of a second moment's square root M^1/2 changes M by M^1/2 d + d M^1/2, so
# the Gram loss is quadratic in d like W2^2, with a factor of the size of M's eigenvalues
# (up to the top one, which dominates for ReLU features: their mean is large). ||M_t||_F is
# close to that top eigenvalue, and it is the factor the measurements chose: on the bundled
# samples at 128 px (noise, content and other-painting starts, relu1_1..relu5_1) the Gram loss
# was 0.4-1.0x the wasserstein2 loss and 0.5-1.9x the mean_std loss, layer by layer.
# Numerics: the statistics are accumulated in fp32 (from bf16 features too); wasserstein2's
# matrix part runs in its target's dtype (float64 where the device has it: fp32 would round
# the small eigenvalues of a product of covariances away, and TF32 more so). Both sides'
# variances get EPS_RELATIVE x the style's mean squared activation added, which keeps the loss
# 0 at the target and bounds the square root's gradient, whose eigenvalues would otherwise reach
# 0 (dead channels; a deep layer with fewer positions than channels, at small sizes).
EPS_RELATIVE = 1e-3


def _wide_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class SecondMoment(torch.autograd.Function):
    """E[x x^T] over the positions of features (B, C, H, W): (B, C, C) in fp32 (C x the Gram
    matrix, split on a GPU as it is). Backward like ``GramLoss``'s: one product, in the
    features' dtype and layout."""

    @staticmethod
    def forward(ctx: Any, features: torch.Tensor) -> torch.Tensor:
        rows, channels_last = _rows(features)
        ctx.save_for_backward(rows)
        ctx.meta = (features.shape, channels_last)
        n = features.shape[2] * features.shape[3]
        return _gram_fp32(rows, channels_last, features.is_cuda) / n

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (rows,) = ctx.saved_tensors
        shape, channels_last = ctx.meta
        d = ((grad + grad.transpose(1, 2)) / (shape[2] * shape[3])).to(rows.dtype)  # (B, C, C)
        return _times_rows(d, rows, shape, channels_last)


def moments(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (B, C), E[x x^T] (B, C, C)) of features (B, C, H, W) over positions, accumulated
    in fp32, returned in float64 on the CPU: what a style image gives the Gaussian targets (the
    moments of a blend of styles are the weighted mean of theirs)."""
    mean = features.mean(dim=(2, 3), dtype=_wide_dtype(features))
    return mean.to("cpu", torch.float64), SecondMoment.apply(features).to("cpu", torch.float64)


# wasserstein2's share of the style term against gram's at one style_weight: measured by the
# quality figures on two held-out photo x painting pairs at 256 px, 200 L-BFGS steps from
# noise (infra/compare_losses.py), at 1 its content distance was 1.7-1.9x gram's; at 0.1 it is
# 0.77-0.85x gram's with a W2 distance still 0.85-0.92x gram's (0.3: 1.24-1.31x).
W2_BALANCE = 0.1


def _eps_and_scale(m2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The variance regularisation and the loss scale of a style's second moment (B, C, C):
    each (B,)."""
    c = m2.shape[-1]
    eps = EPS_RELATIVE * m2.diagonal(dim1=1, dim2=2).mean(1) + 1e-12
    return eps, torch.linalg.matrix_norm(m2) / c**4


def wasserstein2_target(
    stats: tuple[torch.Tensor, torch.Tensor], device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, ...]:
    """(mean (B, C), covariance S_t + eps I (B, C, C), its square root (B, C, C), eps (B,),
    scale (B,)) from moments, in ``dtype`` on ``device``: the square root computed once, by
    an eigendecomposition in float64."""
    mean, m2 = (t.double() for t in stats)
    eps, scale = _eps_and_scale(m2)
    scale = scale * W2_BALANCE
    eye = torch.eye(m2.shape[-1], dtype=m2.dtype, device=m2.device)
    cov = m2 - mean[:, :, None] * mean[:, None, :] + eps[:, None, None] * eye
    cov = (cov + cov.transpose(1, 2)) / 2
    lam, vec = torch.linalg.eigh(cov)
    root = (vec * lam.clamp_min(0).sqrt()[:, None, :]) @ vec.transpose(1, 2)
    return tuple(t.to(device, dtype) for t in (mean, cov, root, eps, scale))


# tr(P^1/2) of wasserstein2's P = R S R (R = S_t^1/2), each iteration: ``auto`` takes the
# eigenvalues on a CPU (LAPACK's, fast there) and Newton-Schulz on a CUDA GPU, where a batch of
# C x C eigendecompositions (C up to 512) is cuSOLVER's batched Jacobi solver, far slower than
# the matrix products Newton-Schulz is made of. ``eigh`` and ``newton`` force one (the tests).
W2_ROOT = "auto"
# Newton-Schulz steps, each scaled (Chen & Chow 2014, "A stable scaling of Newton-Schulz for
# improving the sign function computation of a Hermitian matrix"): from a lower bound of the
# spectrum (NEWTON_LOW), each step takes the cubic that lifts the smallest eigenvalues fastest
# (2.6x a step where the plain one gives 1.5x) while keeping all of them in range. On VGG-19
# statistics of a held-out photo and painting (golden_gate x shipwreck, noise and photo
# starts, 96 and 512 px, relu1_1..relu5_1; condition numbers 1e7-1e9) 16 scaled steps gave
# tr(P^1/2) and P^-1/2 as the eigenvalues do to 2e-12 and 2e-8, as 30 plain steps did (3e-12,
# 2e-8; 14 scaled: 3e-7; 12: 3e-2); on a spectrum spanning 1e10 (tests/test_losses.py) to
# 1e-12 and 3e-8, where 30 plain steps are off by 1e-7 and 2e-2. Each step is 3 products of
# C x C in float64: 16 steps instead of 30 cut the square root's work per image-iteration
# (whatever its size) from about 53 to 29 GFLOP.
NEWTON_STEPS = 16
# The lower bound the scaling assumes, of the singular values (eigenvalues^1/2) of P / ||P||_F:
# one fixed schedule of coefficients for every matrix (Python numbers: the compiled graph has
# the plain iteration's shape), exact in 16 steps for condition numbers up to 1e10; the real
# ones measured 1e7-1e9 (the bound eps / ||P||_F^1/2 was 3e-5 to 2e-4). A matrix below it (not
# seen) loses accuracy gradually, as the plain iteration did beyond 1e9.
NEWTON_LOW = 1e-5


def _newton_coefficients(low: float, steps: int) -> tuple[tuple[float, float], ...]:
    """Each step's (c1, c3) of T = c1 I - c3 Z Y: with a = (3 / (1 + l + l^2))^1/2, c1 = 3a/2
    and c3 = a^3/2, l then lifted to a l (3 - a^2 l^2) / 2 (Chen & Chow's scaling)."""
    out = []
    for _ in range(steps):
        a = math.sqrt(3 / (1 + low + low * low))
        out.append((1.5 * a, 0.5 * a**3))
        low = min(1.0, 0.5 * a * low * (3 - a * a * low * low))
    return tuple(out)


NEWTON_COEFFICIENTS = _newton_coefficients(NEWTON_LOW, NEWTON_STEPS)


class _TraceSqrtNewton(torch.autograd.Function):
    """tr(P^1/2) of symmetric positive definite matrices P (..., C, C), by the coupled
    Newton-Schulz iteration (Higham 2008, "Functions of Matrices", 6.3) with Chen & Chow's
    scaling: with A = P / ||P||_F (eigenvalues in (0, 1]), Y_0 = A, Z_0 = I, each step
    T = c1 I - c3 Z Y, Y <- Y T, Z <- T Z (:data:`NEWTON_COEFFICIENTS`: the square roots of
    the eigenvalues of Z Y stay in [l, 1] while l rises to 1; c1 = 3/2, c3 = 1/2 is the plain
    iteration); Y tends to A^1/2 and Z to A^-1/2: matrix products only, batched. The gradient
    is P^-1/2 / 2, which the iteration gives too (nothing is differentiated through it)."""

    @staticmethod
    def forward(ctx: Any, p: torch.Tensor) -> torch.Tensor:
        norm = torch.linalg.matrix_norm(p)[..., None, None]  # >= the top eigenvalue
        eye = torch.eye(p.shape[-1], dtype=p.dtype, device=p.device)
        y, z = p / norm, eye.expand_as(p)
        for c1, c3 in NEWTON_COEFFICIENTS:
            t = c1 * eye - c3 * (z @ y)
            y, z = y @ t, t @ z
        ctx.save_for_backward(z / norm.sqrt())  # P^-1/2
        out: torch.Tensor = y.diagonal(dim1=-2, dim2=-1).sum(-1) * norm[..., 0, 0].sqrt()
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        inverse_root: torch.Tensor = ctx.saved_tensors[0]
        half = 0.25 * grad[..., None, None] * inverse_root
        return half + half.transpose(-1, -2)  # symmetric: P is


def trace_sqrt(p: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
    """(...) tr(P^1/2) of symmetric P (..., C, C) >= floor I (``floor`` (...)), differentiable:
    by :data:`W2_ROOT` (the eigenvalues, each at least ``floor``, or Newton-Schulz)."""
    p = (p + p.transpose(-1, -2)) / 2  # symmetric to rounding: exactly so for both
    if W2_ROOT == "newton" or (W2_ROOT == "auto" and p.device.type == "cuda"):
        out: torch.Tensor = _TraceSqrtNewton.apply(p)
        return out
    lam = torch.linalg.eigvalsh(p)  # (..., C)
    lam = torch.maximum(lam, floor[..., None])  # rounding below the bound: no 1/sqrt(0)
    return lam.sqrt().sum(-1)


def wasserstein2_distance(
    mu: torch.Tensor, m2: torch.Tensor, target: tuple[torch.Tensor, ...]
) -> torch.Tensor:
    """(...) scaled squared 2-Wasserstein distance between the Gaussian of moments (mean
    ``mu`` (..., C), second moment ``m2`` (..., C, C), both in the target's dtype) and a
    ``wasserstein2_target`` with the same leading dimensions ((B,), or (B, R) for regions).

    tr((R S R)^1/2) (:func:`trace_sqrt`) is the sum of the square roots of the eigenvalues of
    R S R (symmetric; autograd's gradient of eigenvalues alone needs no eigenvalue gaps, so
    repeated ones are safe), or on a GPU Newton-Schulz's. Call with autocast off."""
    mean, cov, root, eps, scale = target
    eye = torch.eye(mu.shape[-1], dtype=cov.dtype, device=mu.device)
    s = (
        m2 - mu[..., :, None] * mu[..., None, :] + eps[..., None, None] * eye
    )  # (..., C, C) covariance, regularised as the target's
    p = root @ s @ root  # (..., C, C), >= eps^2 I
    d2 = (
        (mu - mean).pow(2).sum(-1)
        + s.diagonal(dim1=-2, dim2=-1).sum(-1)
        + cov.diagonal(dim1=-2, dim2=-1).sum(-1)
        - 2 * trace_sqrt(p, eps**2)
    )  # (...)
    out: torch.Tensor = scale * d2.clamp_min(0)
    return out


def wasserstein2_loss(
    features: torch.Tensor,
    mean: torch.Tensor,
    cov: torch.Tensor,
    root: torch.Tensor,
    eps: torch.Tensor,
    scale: torch.Tensor,
) -> torch.Tensor:
    """(B,) scaled squared 2-Wasserstein distance between the Gaussian of features
    (B, C, H, W) and a target (``wasserstein2_target``; ``wasserstein2_distance``)."""
    dt = cov.dtype
    with torch.autocast(features.device.type, enabled=False):
        mu = features.mean(dim=(2, 3), dtype=_wide_dtype(features)).to(dt)  # (B, C)
        m2 = SecondMoment.apply(features).to(dt)  # (B, C, C)
        d2 = wasserstein2_distance(mu, m2, (mean, cov, root, eps, scale))
        return d2.to(_wide_dtype(features))


def mean_std_target(
    stats: tuple[torch.Tensor, torch.Tensor], device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, ...]:
    """(mean (B, C), std (B, C), eps (B,), scale (B,)) from moments, in ``dtype`` on
    ``device``; the variances regularised by eps as the features' are."""
    mean, m2 = (t.double() for t in stats)
    eps, scale = _eps_and_scale(m2)
    var = (m2.diagonal(dim1=1, dim2=2) - mean.pow(2)).clamp_min(0)
    std = (var + eps[:, None]).sqrt()
    return tuple(t.to(device, dtype) for t in (mean, std, eps, scale))


def mean_std_distance(
    mu: torch.Tensor, var: torch.Tensor, target: tuple[torch.Tensor, ...]
) -> torch.Tensor:
    """(...) scaled squared differences of per-channel means ``mu`` and variances ``var``
    (..., C) and a ``mean_std_target`` with the same leading dimensions ((B,), or (B, R) for
    regions); the variances regularised by eps as the target's. In the target's dtype; call
    with autocast off."""
    mean, std, eps, scale = target
    dt = std.dtype
    sd = (var.to(dt) + eps[..., None]).sqrt()
    d2 = (mu.to(dt) - mean).pow(2).sum(-1) + (sd - std).pow(2).sum(-1)  # (...)
    out: torch.Tensor = scale * d2
    return out


def mean_std_loss(
    features: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    eps: torch.Tensor,
    scale: torch.Tensor,
) -> torch.Tensor:
    """(B,) scaled squared differences of the per-channel means and standard deviations of
    features (B, C, H, W) and a target (``mean_std_target``; ``mean_std_distance``)."""
    with torch.autocast(features.device.type, enabled=False):
        var, mu = torch.var_mean(_wide(features), dim=(2, 3), correction=0)  # (B, C) each
        d2 = mean_std_distance(mu, var, (mean, std, eps, scale))
        return d2.to(_wide_dtype(features))


@dataclass(frozen=True)
class StyleKind:
    """One ``style_loss``: what a style image contributes per layer (``statistics`` of its
    features (B, C, H, W), averaged over blended style images), the target made from that once
    per style (``target(stats, device, dtype)``, a tuple of tensors with a batch dimension), and
    the loss of features against it (``loss(features, *target)`` -> (B,))."""

    statistics: Callable[[torch.Tensor], tuple[torch.Tensor, ...]]
    target: Callable[..., tuple[torch.Tensor, ...]]
    loss: Callable[..., torch.Tensor]


def _gram_statistics(features: torch.Tensor) -> tuple[torch.Tensor]:
    return (gram(features),)


def _gram_target(
    stats: tuple[torch.Tensor], device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor]:
    return stats  # fp32 on the device, as gram() made it


STYLE_KINDS = {  # keyed by config.STYLE_LOSSES
    "gram": StyleKind(_gram_statistics, _gram_target, style_loss),
    "wasserstein2": StyleKind(moments, wasserstein2_target, wasserstein2_loss),
    "mean_std": StyleKind(moments, mean_std_target, mean_std_loss),
}


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) mean squared error of features against a target of their shape, in fp32."""
    return (_wide(features) - target).pow(2).flatten(1).mean(1)


def total_variation(pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B,): mean squared difference of neighbouring pixels."""
    dx = (pixels[..., :, 1:] - pixels[..., :, :-1]).pow(2).mean(dim=(1, 2, 3))
    dy = (pixels[..., 1:, :] - pixels[..., :-1, :]).pow(2).mean(dim=(1, 2, 3))
    return dx + dy


def gatys(
    features: dict[str, torch.Tensor],
    pixels: torch.Tensor,
    content_targets: dict[str, torch.Tensor],
    style_targets: dict[str, tuple[torch.Tensor, ...]],
    weights: torch.Tensor,
    use_tv: bool,
    style_kind: str = "gram",
) -> tuple[torch.Tensor, ...]:
    """(total, content, style, tv), each (B,): the whole loss as one pure function of tensors
    (what a compiled objective traces). ``weights`` (fp32): the content layers' weights,
    then the style layers', then alpha, beta and the TV weight, in the targets' order; held as
    a tensor so that another weight (a sweep) does not build another compiled graph. Each
    style target is the tuple that ``STYLE_KINDS[style_kind].loss`` takes after the features
    (for ``gram``: the Gram matrices (B, C, C))."""
    nc, ns = len(content_targets), len(style_targets)
    layer_style = STYLE_KINDS[style_kind].loss  # a setting, fixed per compiled graph
    content = sum(
        weights[i] * content_loss(features[k], t)
        for i, (k, t) in enumerate(content_targets.items())
    )
    style = sum(
        weights[nc + i] * layer_style(features[k], *t)
        for i, (k, t) in enumerate(style_targets.items())
    )
    zero = pixels.new_zeros(pixels.shape[0], dtype=torch.float32)
    content = zero + content  # (B,) also without content layers
    style = zero + style
    tv = total_variation(pixels.float()) if use_tv else zero
    alpha, beta, tv_weight = weights[nc + ns], weights[nc + ns + 1], weights[nc + ns + 2]
    total = alpha * content + beta * style + tv_weight * tv
    return total, content, style, tv


class GatysLoss(nn.Module):
    """alpha * sum_l w_l content_l + beta * sum_l w_l style_l + tv * TV, per image.

    Holds the targets of one batch: content activations (B, C, H, W) and, per style layer,
    the tuple of tensors its ``style_kind`` compares with (gram: the Gram matrices (B, C, C);
    see ``STYLE_KINDS``). ``forward(features, pixels)`` returns (total, content, style, tv),
    each (B,); the content and style parts are weighted by their layer weights but not by
    alpha/beta. ``terms()`` gives the same loss as tensors for ``gatys`` (the compiled path).
    """

    guided = False  # masks.GuidedGatysLoss: regions, run eager by the Objective

    def __init__(
        self,
        content_targets: dict[str, torch.Tensor],
        style_targets: dict[str, tuple[torch.Tensor, ...]],
        content_layer_weights: dict[str, float],
        style_layer_weights: dict[str, float],
        content_weight: float,
        style_weight: float,
        tv_weight: float,
        style_kind: str = "gram",
    ):
        super().__init__()
        self.content_targets = {k: v.float() for k, v in content_targets.items()}
        self.style_targets = {k: tuple(v) for k, v in style_targets.items()}
        self.style_kind = style_kind
        self.cw, self.sw = dict(content_layer_weights), dict(style_layer_weights)
        self.alpha, self.beta, self.tv_weight = content_weight, style_weight, tv_weight
        first = [*self.content_targets.values(), *(t[0] for t in self.style_targets.values())]
        device = first[0].device if first else torch.device("cpu")
        self.weights = torch.tensor(
            [self.cw[k] for k in self.content_targets]
            + [self.sw[k] for k in self.style_targets]
            + [content_weight, style_weight, tv_weight],
            dtype=torch.float32,
            device=device,
        )

    def terms(
        self,
    ) -> tuple[
        dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, ...]], torch.Tensor, bool, str
    ]:
        """(content targets, style targets, weights, use_tv, style kind): ``gatys``'s
        arguments."""
        return (
            self.content_targets,
            self.style_targets,
            self.weights,
            bool(self.tv_weight),
            self.style_kind,
        )

    def forward(
        self, features: dict[str, torch.Tensor], pixels: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        return gatys(features, pixels, *self.terms())

    def select(self, rows: torch.Tensor) -> GatysLoss:
        """The same loss for a subset of the batch: ``rows`` (K,) indexes the images."""
        return GatysLoss(
            {k: t[rows] for k, t in self.content_targets.items()},
            {k: tuple(x[rows] for x in t) for k, t in self.style_targets.items()},
            self.cw,
            self.sw,
            self.alpha,
            self.beta,
            self.tv_weight,
            self.style_kind,
        )


def layer_weights(layers: tuple[str, ...], weights: tuple[float, ...] | None) -> dict[str, float]:
    """Explicit weights, or equal weights summing to 1 (the paper's w_l = 1/5)."""
    if weights is None:
        weights = tuple(1.0 / len(layers) for _ in layers)
    return dict(zip(layers, weights))
