"""Tests of stylize.optim's L-BFGS on small synthetic problems (CPU, float64, fast).

BatchedLBFGS computes its direction in compact form (two passes over one (B, 2m, N) history
tensor and small m x m triangular solves). TwoLoopLBFGS below is the optimiser as it was
before, with the classic two-loop recursion over separate s, y ring buffers: both are run
step by step on the same problems and must give the same iterates.
"""

from __future__ import annotations

import pytest
import torch

from stylize import optim
from stylize.optim import FIRST_STEP_PIXELS, GROWTH_LIMIT, PIXEL_RANGE, BatchedLBFGS

N = 300  # values per image
B = 3


class TwoLoopLBFGS:
    """Reference: stylize.optim.BatchedLBFGS before the compact form, two-loop recursion."""

    def __init__(self, x: torch.Tensor, history_size: int, lr: float):
        b, n = x.shape
        self.m, self.lr = history_size, lr
        self.s = x.new_zeros(b, history_size, n)
        self.y = x.new_zeros(b, history_size, n)
        self.rho = x.new_zeros(b, history_size)
        self.h_diag = x.new_ones(b)
        self.written = 0
        self.shrink = x.new_ones(b)
        self.prev_g = self.prev_step = self.prev_loss = None

    @torch.no_grad()
    def step(self, x, g, loss, active):
        if self.prev_g is not None:
            bad = loss > self.prev_loss * GROWTH_LIMIT
            x.sub_(self.prev_step * bad[:, None])
            g = torch.where(bad[:, None], self.prev_g, g)
            loss = torch.where(bad, self.prev_loss, loss)
            self.shrink = torch.where(bad, self.shrink * 0.1, 1.0)
            y = g - self.prev_g
            s = self.prev_step
            ys = torch.linalg.vecdot(y, s)
            ok = ys > 1e-10
            slot = self.written % self.m
            self.s[:, slot] = s
            self.y[:, slot] = y
            self.rho[:, slot] = torch.where(ok, 1.0 / torch.where(ok, ys, 1.0), 0.0)
            self.h_diag = torch.where(
                ok, ys / torch.linalg.vecdot(y, y).clamp_min(1e-30), self.h_diag
            )
            self.written += 1
        d = self._direction(g)
        if self.prev_g is None:
            rms = g.pow(2).mean(1).sqrt().clamp_min(1e-30)
            t = FIRST_STEP_PIXELS / rms * self.lr
        else:
            t = self.lr * self.shrink
        before = x.clone()
        x.addcmul_(d, (t * active)[:, None]).clamp_(*PIXEL_RANGE)
        step = before.neg_().add_(x)
        self.prev_g, self.prev_step, self.prev_loss = g.clone(), step, loss.clone()

    def _direction(self, g):
        n = min(self.written, self.m)
        newest_first = [(self.written - 1 - i) % self.m for i in range(n)]
        q = -g
        alphas = []
        for i in newest_first:
            a = self.rho[:, i] * torch.linalg.vecdot(self.s[:, i], q)
            q.addcmul_(self.y[:, i], a[:, None], value=-1.0)
            alphas.append(a)
        r = q.mul_(self.h_diag[:, None])
        for i, a in zip(reversed(newest_first), reversed(alphas)):
            b = self.rho[:, i] * torch.linalg.vecdot(self.y[:, i], r)
            r.addcmul_(self.s[:, i], (a - b)[:, None])
        return r


# ------------------------------------------------------------------------------ problems


def _problem(n_images: int = B, dtype=torch.float64, seed: int = 0, targets=(20.0, 235.0)):
    """Per image: targets c uniform in ``targets``, weights w, quartic and log-cosh
    strengths; all different per image. Start: noise in 0..255."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = targets
    c = lo + torch.rand(n_images, N, generator=gen, dtype=dtype) * (hi - lo)
    w = 0.2 + 2 * torch.rand(n_images, N, generator=gen, dtype=dtype)
    q = torch.tensor([1e-5, 3e-5, 1e-4, 2e-5, 5e-5][:n_images], dtype=dtype)
    k = torch.tensor([5.0, 0.0, 20.0, 10.0, 1.0][:n_images], dtype=dtype)
    x0 = torch.rand(n_images, N, generator=gen, dtype=dtype) * 255
    return x0, (c, w, q, k)


def _loss_and_grad(x: torch.Tensor, params, rows=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth, non-quadratic, one loss per image (B,) and its gradient (B, N)."""
    c, w, q, k = (p if rows is None else p[rows] for p in params)
    x = x.detach().requires_grad_(True)
    e = x - c
    loss = (w * e**2).sum(1) + q * (e**4).sum(1) + k * torch.log(torch.cosh(e / 10)).sum(1)
    (g,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), g


def _active(it: int, n: int = B) -> torch.Tensor:
    """Image 0 frozen for steps 10..14, image 2 for good from step 40: frozen steps make
    pairs with s = 0, y = 0 that are rejected."""
    a = torch.ones(n, dtype=torch.bool)
    if 10 <= it < 15:
        a[0] = False
    if it >= 40 and n > 2:
        a[2] = False
    return a


def _spike(loss: torch.Tensor, it: int) -> torch.Tensor:
    """Image 1's loss reported far too high at step 25: the GROWTH_LIMIT safeguard undoes
    the step before it, and the pair that step makes (y = 0) is rejected."""
    if it == 25:
        loss = loss.clone()
        loss[1] += 1e9
    return loss


def _run_both(
    history_size: int,
    steps: int = 60,
    lr: float = 1.0,
    targets=(20.0, 235.0),
    chunk: int | None = None,
):
    x0, params = _problem(targets=targets)
    xs = [x0.clone(), x0.clone()]
    opts = [
        BatchedLBFGS(xs[0], history_size, lr, chunk=chunk),
        TwoLoopLBFGS(xs[1], history_size, lr),
    ]
    rejected = torch.zeros(B, dtype=torch.long)
    shrunk = torch.zeros(B, dtype=torch.bool)
    clamped = 0
    used = torch.zeros(B, dtype=torch.long)
    for it in range(steps):
        for x, opt in zip(xs, opts):
            loss, g = _loss_and_grad(x, params)
            opt.step(x, g, _spike(loss, it), _active(it))
        new, ref = opts
        clamped += int(((xs[0] == 0) | (xs[0] == 255)).sum())
        torch.testing.assert_close(
            xs[0], xs[1], rtol=1e-9, atol=1e-9, msg=lambda m, it=it: f"step {it}: {m}"
        )
        # Near convergence s is a difference of nearly equal iterates: rho = 1 / s.y and
        # h_diag carry the iterates' rounding differences amplified, hence looser.
        rho = new.rho[:, :history_size]  # then padding, never written
        assert torch.equal(rho == 0, ref.rho == 0)  # the same pairs rejected
        torch.testing.assert_close(rho, ref.rho, rtol=1e-6, atol=0)
        torch.testing.assert_close(new.h_diag, ref.h_diag, rtol=1e-6, atol=0)
        assert torch.equal(new.shrink, ref.shrink)
        if it:
            rejected += new.rho[:, (new.written - 1) % history_size] == 0
            used += new.rho[:, (new.written - 1) % history_size] != 0
            shrunk |= new.shrink < 1
    return xs, opts, rejected, used, shrunk, clamped, params


# ------------------------------------------------------------------------------ the tests


@pytest.mark.parametrize(
    "history_size, targets",
    [(1, (20.0, 235.0)), (5, (20.0, 235.0)), (100, (20.0, 235.0)), (5, (-20.0, 280.0))],
)
def test_compact_form_gives_the_two_loop_iterates(history_size, targets):
    """m = 5 < 60 steps: the ring wraps; m = 100: never full; m = 1: no triangle at all.
    Targets out of the range: ~15% of the values end clamped, where the gradient stays
    large. (With m = 100 that run is chaotic: the two-loop recursion itself, started from
    x0 (1 + 1e-15), strays ~1e-8 from its own iterates by step 60; hence m = 5 there.)"""
    xs, (new, ref), rejected, used, shrunk, clamped, params = _run_both(
        history_size, targets=targets
    )
    assert new.hist.shape == (B, 1, 2 * history_size, 304) and new.hist.dtype == torch.float64
    assert new.s.data_ptr() == new.hist.data_ptr()  # s and y are views of the one tensor
    assert new.s.shape == new.y.shape == (B, history_size, N)
    assert not new.hist[..., N:].any() and not new.rho[:, history_size:].any()  # padding
    torch.testing.assert_close(new.s, ref.s, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(new.y, ref.y, rtol=1e-9, atol=1e-9)
    assert (clamped > 0) == (targets[0] < 0)  # the projection bites in that case only
    # The cases the run is meant to have gone through: frozen images' pairs (image 0 for
    # 5 steps, image 2 for the last 20) and image 1's undone step are rejected.
    assert rejected[0] >= 5 and rejected[2] >= 19 and rejected[1] >= 1
    assert shrunk[1]  # (the quartic overshoots now and then too: others may have shrunk)
    assert (used >= 10).all()  # and many pairs are used
    # Not trivially equal: the problems moved (and converged well) from the start.
    loss0, _ = _loss_and_grad(_problem(targets=targets)[0], params)
    loss, _ = _loss_and_grad(xs[0], params)
    assert (loss < 0.01 * loss0).all()


@pytest.mark.parametrize("history_size, chunk", [(5, 64), (100, 64), (5, 100)])
def test_history_in_slices_gives_the_two_loop_iterates(history_size, chunk):
    """The GPU's layout (each image's history in slices whose products are summed, here
    forced on the CPU): N = 300 values in 5 slices of 64 (20 zeros of padding), or 3 of 112
    (a chunk that is no multiple of 16 is rounded up); the same iterates as the two-loop."""
    xs, (new, ref), rejected, used, shrunk, *_ = _run_both(history_size, chunk=chunk)
    k, length = new.k, new.length
    assert length % 16 == 0 and k == -(-N // length) and k > 1
    assert new.hist.shape == (B, k, 2 * history_size, length)
    assert not new.hist.transpose(1, 2).reshape(B, 2 * history_size, -1)[..., N:].any()
    torch.testing.assert_close(new.s, ref.s, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(new.y, ref.y, rtol=1e-9, atol=1e-9)
    assert rejected[0] >= 5 and rejected[2] >= 19 and rejected[1] >= 1 and shrunk[1]
    assert (used >= 10).all()


@pytest.mark.parametrize("steps", [4, 23])
def test_small_products_are_kept_up_to_date(steps):
    """YY and SY, updated a column (and YY a row) per step, equal the products of the
    history: YY everywhere, SY = s_i . y_j where pair j is not older than pair i."""
    m = 5
    _, (new, _), *_ = _run_both(m, steps=steps)
    assert new.sy.shape == new.yy.shape == (B, 16, 16)  # padded to ALIGN, zero there
    assert not new.sy[:, m:].any() and not new.sy[:, :, m:].any() and not new.yy[:, m:].any()
    yy = new.y @ new.y.transpose(1, 2)
    torch.testing.assert_close(new.yy[:, :m, :m], yy, rtol=1e-12, atol=1e-9)
    age = (torch.arange(m) - new.written) % m  # 0: the oldest slot (or an unwritten one)
    kept = age[None, :] >= age[:, None]  # (i, j): pair j not older than pair i
    sy = new.s @ new.y.transpose(1, 2)
    torch.testing.assert_close(new.sy[:, :m, :m] * kept, sy * kept, rtol=1e-12, atol=1e-9)


def test_state_follows_the_dtype_of_x():
    x = torch.zeros(2, 10, dtype=torch.float32)
    opt = BatchedLBFGS(x, 4, 1.0)
    assert {t.dtype for t in (opt.hist, opt.sy, opt.yy, opt.rho, opt.h_diag)} == {torch.float32}


@pytest.mark.parametrize("history_size, chunk", [(5, None), (100, None), (5, 64)])
def test_select_mid_run_keeps_the_remaining_images_iterates(history_size, chunk):
    """After dropping image 1 (and swapping the others), images 2 and 0 go on exactly as in
    the full batch (also with the history in slices, as on a GPU)."""
    x0, params = _problem()
    full, part = x0.clone(), x0.clone()
    opt_full = BatchedLBFGS(full, history_size, 1.0, chunk=chunk)
    opt_part = BatchedLBFGS(part, history_size, 1.0, chunk=chunk)
    rows = torch.tensor([2, 0])
    for it in range(50):
        loss, g = _loss_and_grad(full, params)
        opt_full.step(full, g, loss, torch.ones(B, dtype=torch.bool))
        if it == 17:
            part = part[rows].contiguous()
            opt_part.select(rows)
            assert opt_part.hist.shape[0] == opt_part.sy.shape[0] == 2
        sel = None if it < 17 else rows
        loss, g = _loss_and_grad(part, params, sel)
        opt_part.step(part, g, loss, torch.ones(len(part), dtype=torch.bool))
        expect = full if it < 17 else full[rows]
        torch.testing.assert_close(part, expect, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "n, history_size", [(3 * 17 * 23, 5), (3 * 17 * 23, 33), (3 * 24 * 32, 20)]
)
def test_an_image_alone_moves_as_in_a_batch_to_the_bit(n, history_size):
    """float32 as in the engine, sizes that are no multiple of 16 values: BLAS rounds by
    where a block starts in memory, which the padding keeps the same alone and in a batch.
    L-BFGS amplifies any last-bit difference (the engine's tests see it as pixel levels)."""
    gen = torch.Generator().manual_seed(3)
    c = torch.rand(B, n, generator=gen) * 215 + 20
    w = 0.2 + 2 * torch.rand(B, n, generator=gen)
    x0 = torch.rand(B, n, generator=gen) * 255

    def loss_and_grad(x, rows):
        e = x - c[rows]
        return (w[rows] * e**2 + 1e-4 * e**4).sum(1), 2 * w[rows] * e + 4e-4 * e**3

    every = torch.arange(B)
    xs = {None: x0.clone()} | {i: x0[i : i + 1].clone() for i in range(B)}
    opts = {i: BatchedLBFGS(x, history_size, 1.0) for i, x in xs.items()}
    for _ in range(40):
        for i, x in xs.items():
            loss, g = loss_and_grad(x, every if i is None else every[i : i + 1])
            opts[i].step(x, g, loss, torch.ones(len(x), dtype=torch.bool))
        for i in range(B):
            assert torch.equal(xs[i][0], xs[None][i])


def test_products_run_without_tf32_and_restore_the_flag(monkeypatch):
    """The engine turns TF32 on around the run for bf16/tf32: the optimiser's matmuls must
    not use it (on a GPU they would), and the caller's flag comes back."""
    matmul = torch.backends.cuda.matmul
    seen = []
    bmm = torch.bmm

    def spy(*args, **kwargs):
        seen.append(matmul.allow_tf32)
        return bmm(*args, **kwargs)

    monkeypatch.setattr(torch, "bmm", spy)
    saved = matmul.allow_tf32
    try:
        matmul.allow_tf32 = True
        x0, params = _problem()
        opt = BatchedLBFGS(x0, 3, 1.0)
        for _ in range(4):
            loss, g = _loss_and_grad(x0, params)
            opt.step(x0, g, loss, torch.ones(B, dtype=torch.bool))
        assert matmul.allow_tf32 is True
    finally:
        matmul.allow_tf32 = saved
    assert seen and not any(seen)


# ----------------------------------------------------------------- through optimize(...)


def _image_problem(n_images: int, seed: int = 1):
    """Images (B, 3, 10, 10) and an objective of them (B,), per image as above."""
    x0, params = _problem(n_images, dtype=torch.float32, seed=seed)

    def objective_for(rows):
        c, w, q, k = (p[rows] for p in params)

        def objective(x):
            e = x.reshape(len(c), -1) - c
            return (
                (w * e**2).sum(1) + q * (e**4).sum(1) + k * torch.log(torch.cosh(e / 10)).sum(1),
            )

        return objective

    return x0.reshape(n_images, 3, 10, 10), objective_for


def test_optimize_lbfgs_lowers_the_loss_and_an_image_alone_equals_the_batch():
    x0, objective_for = _image_problem(B)
    everyone = torch.arange(B)
    out = optim.optimize(x0, objective_for(everyone), 40, "lbfgs", 1.0, history_size=5)
    (before,) = objective_for(everyone)(x0.clamp(*PIXEL_RANGE))
    assert (out.losses[0] < 0.01 * before).all()
    assert (out.iterations <= 40).all()  # images stop where the gradient vanishes
    for i in range(B):
        alone = optim.optimize(
            x0[i : i + 1], objective_for(everyone[i : i + 1]), 40, "lbfgs", 1.0, history_size=5
        )
        torch.testing.assert_close(alone.pixels[0], out.pixels[i], rtol=1e-5, atol=1e-3)
        torch.testing.assert_close(alone.losses[0][0], out.losses[0][i], rtol=1e-4, atol=1e-3)
