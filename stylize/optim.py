"""Batched optimizers: B independent problems solved at once, all state on the device.

The objective returns one loss per image, shape (B,). Since image i's loss depends on image
i's pixels only, the gradient of the summed loss is each image's own gradient, and every
piece of optimizer state below is kept per image (history, curvature scale, step, mask):
an image gets the same result alone as inside any batch.

L-BFGS follows ``torch.optim.LBFGS(max_iter=1, line_search_fn=None)`` stepped once per
evaluation (what neural-style and pastiche do), with one departure: torch's first step is
min(1, 1/|g|_1) * lr, which for a loss of this scale moves pixels by ~1e-9, so the first
pair's y = g1 - g0 is mostly rounding noise and poisons the curvature estimate. Here the
first step has an RMS of FIRST_STEP_PIXELS; measured at 128 px / 200 steps it reaches a
lower style and content loss than torch's rule. Then steps of lr; a pair (s, y) with
s.y <= 1e-10 is not used. Without a line search, a step from white noise at small sizes can
multiply the loss by 1e4 and leave a curvature pair that stalls the rest of the run; such a
step (loss grown more than GROWTH_LIMIT times) is undone and retried ten times shorter, at
the cost of the one evaluation that found it. From the content it never triggered in our
runs. No host synchronisation inside the loop: the only sync points are the progress
callbacks, every ``log_every`` steps, and with early stopping the check that drops finished
images from the batch, every ``min(log_every, window)`` steps.

The direction is the two-loop recursion's, computed in compact form: the history is one
tensor per batch (each image's m steps and m gradient changes), and a step reads it twice, in one batched matmul each (its products with
the gradient and the new y, then the sum of the pairs weighted by coefficients that two
m x m triangular solves per image give), where the two-loop recursion launched ~6m kernels
(4m of them over the full image) and moved ~10 m N floats; see ``BatchedLBFGS._direction``.
Measured per step at B = 4, N = 3 x 128 x 128: H200 3.7 -> 1.7 ms (m = 20), 15.9 -> 1.7 ms
(m = 100); 2-core CPU 6.3 -> 4.5 ms, 26 -> 16 ms. At B = 16, 512 x 512 on the H200:
5.3 -> 5.1 ms (m = 20), 27.6 -> 7.6 ms (m = 100), far from a read of the history at
memory speed (0.9 ms at m = 20): the first pass is one long product per image, a handful of
thread blocks on a GPU. On a GPU each image's history is now held in slices of
CHUNK values whose products run side by side (B N / CHUNK of them) and are summed (not yet
measured on a GPU). These products run in full fp32 even where the engine turned TF32 on,
and on blocks padded so that an image's result does not depend on the batch it is in
(BatchedLBFGS).

Both optimizers keep the pixels in 0..255 (projection after each step; for L-BFGS the pair
stores the move actually made). Unconstrained, a few percent of the pixels leave the range
and the delivered (clamped) image has a much higher loss than the one optimised: measured on
8 images at 64 px, 1.3-1.6x for gatys2016 at 200 steps and 5.8x for the fast preset at 500,
where the projected run delivers the loss it reaches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch.profiler import record_function

Objective = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]  # x -> (total (B,), *parts)
StepHook = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]

FIRST_STEP_PIXELS = 1.0  # RMS size of the first L-BFGS step, in pixel units (0..255)
GROWTH_LIMIT = 2.0  # an L-BFGS step that multiplies an image's loss by more is undone
PIXEL_RANGE = (0.0, 255.0)  # every step is projected into it: the pixels an output can hold
# Profiler ranges of one step (forward and loss, gradient, optimiser update): `stylize bench
# --profile` reports the time of each; outside a profiler they cost a few microseconds.
PHASES = ("optimize.objective", "optimize.backward", "optimize.step")


ALIGN = 16  # elements: lengths of the per-image blocks that BLAS/LAPACK see (64 bytes or more)


def _aligned(n: int) -> int:
    """n rounded up to a multiple of ALIGN."""
    return -(-n // ALIGN) * ALIGN


# Values per slice of an image in the history's products on a GPU. One product per image
# (a 2 x 2m result over N = 786,432 values at 512 px) is a handful of thread blocks on a GPU
# of 132 multiprocessors; in slices of CHUNK values, B x N / CHUNK products fill it, and their
# partial sums are added in the history's dtype. On a CPU one slice (MKL splits the work).
CHUNK = 16384


def _slices(n: int, device: torch.device, chunk: int | None = None) -> tuple[int, int]:
    """(k, L): an image of n values held as k slices of L values (k L >= n, L a multiple of
    ALIGN): one slice on a CPU, slices of ``chunk`` (default CHUNK) on a GPU."""
    chunk = chunk or (CHUNK if device.type == "cuda" else None)
    if not chunk or n <= chunk:
        return 1, _aligned(n)
    length = _aligned(chunk)
    return -(-n // length), length


class _Previous(NamedTuple):
    """What L-BFGS keeps of its last step, per image: the gradient, the move, the loss."""

    g: torch.Tensor  # (B, N)
    step: torch.Tensor  # (B, N)
    loss: torch.Tensor  # (B,)


class BatchedLBFGS:
    """Per-image limited-memory BFGS over flattened images x (B, N).

    The history is one tensor per batch, ``hist`` (B, K, 2m, L): each image in K slices of L
    values (N' = K L >= N; one slice on a CPU, ``_slices``); rows 0..m-1 are the steps s,
    rows m..2m-1 the gradient changes y, both ring buffers indexed by slot (pair k goes to
    slot k % m); ``s`` and ``y`` give them as (B, m, N). Beside it, per image and in slot order,
    rho (B, M) and the small products SY[i, j] = s_i . y_j and YY[i, j] = y_i . y_j
    (B, M, M), kept up to date a column (and for YY a row) per new pair. SY is only ever
    needed where pair j is not older than pair i, the entries its new column sets; the
    others are left stale.

    N' and M are N and m rounded up to a multiple of ALIGN, the extra values zero (slots
    m..M-1 are never written: rho = 0). This keeps images independent to the bit on the
    CPU: MKL's gemm and trsm round differently depending on where a matrix starts in memory,
    and L-BFGS amplifies a last-bit difference to pixel levels within a few dozen steps
    (alone vs in a batch: 0.65 levels after 22 steps at 24 x 32, measured). With every
    per-image block a multiple of 64 bytes long, each image's blocks start 64-byte aligned
    in a batch as alone, and the results agree bit for bit (measured with MKL 2024.2 at 1 to
    8 threads, m and N odd or not; tests/test_optim.py checks it); the two-loop recursion's
    dot products, ATen reductions, did not depend on alignment.
    """

    def __init__(self, x: torch.Tensor, history_size: int, lr: float, chunk: int | None = None):
        b, n = x.shape
        m, mp = history_size, _aligned(history_size)
        self.m, self.n, self.lr = m, n, lr
        self.k, self.length = _slices(n, x.device, chunk)
        # (B, K, 2m, L): s (rows < m), then y, each image in K slices
        self.hist = x.new_zeros(b, self.k, 2 * m, self.length)
        self.gy = x.new_zeros(b, self.k, 2, self.length)  # pass 1's right side: g, y
        self.sy = x.new_zeros(b, mp, mp)  # (B, M, M) s_i . y_j, slot order, j not older
        self.yy = x.new_zeros(b, mp, mp)  # (B, M, M) y_i . y_j, slot order
        self.rho = x.new_zeros(b, mp)  # (B, M); 0 marks an unused pair
        self.h_diag = x.new_ones(b)  # (B,) initial inverse-Hessian scale
        self.written = 0  # pairs written so far (same for every image; masked by rho)
        self.shrink = x.new_ones(b)  # (B,) step factor, < 1 after a rejected step
        self.prev: _Previous | None = None  # the last step: its g, move and loss
        # Age order for each k = written % m, built once on the device: _age[k] (M,) the slot
        # at each age, oldest first: the M - m padding slots, then the ring from slot k (the
        # oldest pair, or the first unwritten slot) on; _ring[k] the same with the padding
        # read from slot m - 1 (for vectors of m; rho = 0 there, any finite value will do);
        # _place[k] (m,) the age of each ring slot.
        lead = mp - m
        age = torch.arange(mp, device=x.device)
        k = torch.arange(m, device=x.device)[:, None]
        self._age = torch.where(age < lead, m + age, (k + age - lead) % m)  # (m, M)
        self._ring = self._age.clamp(max=m - 1)
        self._place = lead + (torch.arange(m, device=x.device) - k) % m  # (m, m)

    @property
    def s(self) -> torch.Tensor:
        """(B, m, N) the steps (a view of ``hist`` when it has one slice, else a copy)."""
        return self._rows(slice(0, self.m))

    @property
    def y(self) -> torch.Tensor:
        """(B, m, N) the gradient changes (a view of ``hist`` when it has one slice)."""
        return self._rows(slice(self.m, 2 * self.m))

    def _rows(self, rows: slice) -> torch.Tensor:
        h = self.hist[:, :, rows]  # (B, K, r, L)
        return h.transpose(1, 2).reshape(h.shape[0], h.shape[2], -1)[..., : self.n]

    def _put(self, into: torch.Tensor, row: int, v: torch.Tensor) -> None:
        """Write v (B, N) as row ``row`` of ``into`` (B, K, r, L), slice by slice."""
        if self.k == 1:
            into[:, 0, row, : self.n] = v
        else:
            pad = self.k * self.length - self.n
            into[:, :, row] = torch.nn.functional.pad(v, (0, pad)).view(-1, self.k, self.length)

    @torch.no_grad()
    def step(
        self, x: torch.Tensor, g: torch.Tensor, loss: torch.Tensor, active: torch.Tensor
    ) -> None:
        """Move x (B, N) in place along the L-BFGS direction for gradient g at loss (B,);
        frozen where not active."""
        prev = self.prev
        with _exact_matmul(x.device):
            if prev is not None:
                # Safeguard (no line search): a step that multiplied an image's loss by more
                # than GROWTH_LIMIT is undone and retried 10x shorter; its pair is not kept
                # (y = 0).
                bad = loss > prev.loss * GROWTH_LIMIT
                x.sub_(prev.step * bad[:, None])
                g = torch.where(bad[:, None], prev.g, g)
                loss = torch.where(bad, prev.loss, loss)
                self.shrink = torch.where(bad, self.shrink * 0.1, 1.0)
                y = g - prev.g
                slot = self.written % self.m
                self._put(self.hist, slot, prev.step)  # s
                self._put(self.hist, self.m + slot, y)
                self._put(self.gy, 0, g)
                self._put(self.gy, 1, y)
                p = self._products(slot)  # pass 1 over the history
                ys, yy = p[:, 1, slot], p[:, 1, self.m + slot]  # (B,)
                ok = ys > 1e-10
                self.rho[:, slot] = torch.where(ok, 1.0 / torch.where(ok, ys, 1.0), 0.0)
                self.h_diag = torch.where(ok, ys / yy.clamp_min(1e-30), self.h_diag)
                self.written += 1
                d = self._direction(g, p)  # pass 2
            else:
                d = g * -self.h_diag[:, None]  # no pair yet: -H g with H = h_diag I
        if prev is None:
            # First step: RMS of FIRST_STEP_PIXELS; see the module docstring.
            rms = g.pow(2).mean(1).sqrt().clamp_min(1e-30)
            t = FIRST_STEP_PIXELS / rms * self.lr  # (B,)
        else:
            t = self.lr * self.shrink
        before = x.clone()
        x.addcmul_(d, (t * active)[:, None]).clamp_(*PIXEL_RANGE)
        step = before.neg_().add_(x)  # the move actually made, so that (s, y) stay consistent
        self.prev = _Previous(g.clone(), step, loss.clone())

    def select(self, rows: torch.Tensor) -> None:
        """Keep the state of the images ``rows`` (K,) only, in that order."""
        self.hist, self.gy = self.hist[rows], self.gy[rows]
        self.sy, self.yy, self.rho = self.sy[rows], self.yy[rows], self.rho[rows]
        self.h_diag, self.shrink = self.h_diag[rows], self.shrink[rows]
        if self.prev is not None:
            self.prev = _Previous(*(t[rows] for t in self.prev))

    @torch.no_grad()
    def settle(self, x: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """After the last step: undo it where it made the loss worse (the safeguard above).
        Returns the images that were moved back."""
        if self.prev is None:
            return torch.zeros_like(loss, dtype=torch.bool)
        bad = loss > self.prev.loss * GROWTH_LIMIT
        x.sub_(self.prev.step * bad[:, None])
        return bad

    def _products(self, slot: int) -> torch.Tensor:
        """Pass 1, once the new pair is in ``slot`` and [g, y] in ``gy``: one batched matmul
        [g, y] (B K, 2, L) @ hist^T (B K, L, 2m), summed over the K slices -> (B, 2, 2m),
        returned: [S g, Y g] for the
        direction (row 0); the new column S y of SY (its diagonal entry is s.y) and the new
        row and column Y y of YY (diagonal y.y) (row 1), stored. The new row of SY,
        s . y_j for the older pairs j, is never used: the compact form needs s_i . y_j for
        pairs j newer than i only. (This operand order, and pass 2's, run at about the
        speed of a read of the history on MKL; hist @ [g, y] is slower, and the transposed
        pass 2 hist^T @ coef 15 times slower.)"""
        m, (b, k) = self.m, self.hist.shape[:2]
        p = torch.bmm(self.gy.view(b * k, 2, -1), self.hist.view(b * k, 2 * m, -1).mT)
        p = p.view(b, k, 2, 2 * m).sum(1)
        self.sy[:, :m, slot] = p[:, 1, :m]  # s_i . y_new
        self.yy[:, :m, slot] = p[:, 1, m:]
        self.yy[:, slot, :m] = p[:, 1, m:]
        return p

    def _direction(self, g: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """-H g (B, N) for gradient g (B, N), given pass 1's products p (B, 2, 2m).

        The two-loop recursion in compact form (Byrd, Nocedal and Schnabel 1994), same
        result: with the pairs ordered oldest first (unwritten and padding slots, rho = 0,
        count as the oldest), D = diag(rho), h = h_diag and U the strictly upper part of SY,
        the first loop's coefficients solve (I + D U) a = -D S g, and the second loop's
        c = a - b solve (I + D U^T) c = a + h D (Y g + YY a); then
        -H g = -h g + S^T c - h Y^T a. A pair with rho = 0 gets a = c = 0 and adds nothing,
        as in the loops. Two unit-triangular M x M solves per image, then ONE batched matmul
        over the history (pass 2): with pass 1, the history is read twice per step
        (4 m N floats) where the two-loop read and wrote ~10 m N in 4 m full-size kernels
        (~6 m in all). No host synchronisation: the age order is an index on the device.
        """
        m, k = self.m, self.written % self.m  # slot k holds the oldest pair (or none yet)
        age, ring, place = self._age[k], self._ring[k], self._place[k]
        rho = self.rho[:, age]  # (B, M), age order from here on
        sy = self.sy[:, age[:, None], age]  # (B, M, M)
        yy = self.yy[:, age[:, None], age]
        sg, yg = p[:, 0, :m][:, ring, None], p[:, 0, m:][:, ring, None]  # (B, M, 1) S g, Y g
        h = self.h_diag[:, None, None]  # (B, 1, 1)
        dr = rho[..., None]  # (B, M, 1): D as a row scale
        # Only the strict triangle of each matrix is read (unitriangular): D U, D U^T.
        a = torch.linalg.solve_triangular(dr * sy, -dr * sg, upper=True, unitriangular=True)
        # Y r0 with r0 = -h (g + Y^T a). Product and sum, not bmm: on the CPU a matmul this
        # small rounds differently for a batch of 1 (its own path), a sum does not.
        z = (yy * a.mT).sum(2, keepdim=True).add_(yg).mul_(-h)
        c = torch.linalg.solve_triangular(
            (sy * rho[:, None, :]).mT, a - dr * z, upper=False, unitriangular=True
        )
        coef = torch.cat((c, a.mul_(-h)), 2)[:, place]  # (B, m, 2) [c, -h a], slot order
        b, k = self.hist.shape[:2]
        coef = coef.mT.reshape(b, 1, 1, 2 * m).expand(b, k, 1, 2 * m).reshape(b * k, 1, 2 * m)
        d = torch.bmm(coef, self.hist.view(b * k, 2 * m, -1)).view(b, -1)  # (B, N')
        return d[:, : self.n].addcmul_(g, self.h_diag[:, None], value=-1.0)  # (B, N)


class BatchedAdam:
    """Adam on (B, N); element-wise, hence per image. Frozen images keep their pixels."""

    def __init__(
        self,
        x: torch.Tensor,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        self.lr, self.betas, self.eps = lr, betas, eps
        self.m1 = torch.zeros_like(x)
        self.m2 = torch.zeros_like(x)
        self.t = x.new_zeros(x.shape[0])  # (B,) steps taken by each image

    @torch.no_grad()
    def step(
        self, x: torch.Tensor, g: torch.Tensor, loss: torch.Tensor, active: torch.Tensor
    ) -> None:
        b1, b2 = self.betas
        a = active[:, None]
        self.t += active
        self.m1 = torch.where(a, b1 * self.m1 + (1 - b1) * g, self.m1)
        self.m2 = torch.where(a, b2 * self.m2 + (1 - b2) * g * g, self.m2)
        t = self.t.clamp_min(1)[:, None]
        m_hat = self.m1 / (1 - b1**t)
        v_hat = self.m2 / (1 - b2**t)
        x.sub_(a * self.lr * m_hat / (v_hat.sqrt() + self.eps)).clamp_(*PIXEL_RANGE)

    def select(self, rows: torch.Tensor) -> None:
        self.m1, self.m2, self.t = self.m1[rows], self.m2[rows], self.t[rows]

    def settle(self, x: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(loss, dtype=torch.bool)


@dataclass(frozen=True)
class Stopping:
    """Per-image early stopping: the relative loss change over ``window`` steps < tolerance."""

    enabled: bool = False
    tolerance: float = 1e-3
    window: int = 20


@dataclass
class Outcome:
    pixels: torch.Tensor  # (B, 3, H, W)
    iterations: torch.Tensor  # (B,) evaluations each image used
    losses: tuple[torch.Tensor, ...]  # (total, *parts) at the returned pixels, each (B,)


def optimize(
    x0: torch.Tensor,
    objective: Objective,
    iterations: int,
    optimizer: str,
    lr: float,
    history_size: int = 20,
    stopping: Stopping = Stopping(),
    hook: StepHook | None = None,
    log_every: int = 10,
    narrow: Callable[[torch.Tensor], Objective] | None = None,
) -> Outcome:
    """Minimise objective(x) for a batch of images x0 (B, 3, H, W), each independently.

    ``hook(step, losses (B,), active (B,), pixels)`` runs every ``log_every`` steps and at the
    end; it and the early-stopping check are the only places that read values back to the
    host. With ``stopping`` enabled, the loop ends once every image has converged, checked
    every ``min(log_every, window)`` steps (one sync each). Given ``narrow(rows)``, the
    objective for the images ``rows`` (K,) of the batch, images that have stopped also leave
    the batch at those checks, so they cost nothing more while the others go on.
    """
    bsz = x0.shape[0]
    out = x0.detach().float().clamp(*PIXEL_RANGE).contiguous()  # (B, 3, H, W) all images
    x = out.clone()  # (K, 3, H, W) the images still in the batch
    flat = x.view(bsz, -1)  # (K, N) view sharing storage with x
    opt = BatchedLBFGS(flat, history_size, lr) if optimizer == "lbfgs" else BatchedAdam(flat, lr)
    rows = torch.arange(bsz, device=x.device)  # (K,) batch index of each image still in x
    active = torch.ones(bsz, dtype=torch.bool, device=x.device)  # (K,)
    used = torch.zeros(bsz, dtype=torch.long, device=x.device)  # (B,)
    last = torch.zeros(bsz, device=x.device)  # (B,) total loss of each image, for the hook
    recent = torch.full((bsz, stopping.window), float("inf"), device=x.device)  # (K, window)
    check_every = min(log_every, stopping.window) if stopping.enabled else log_every
    step_objective = objective
    for it in range(iterations):
        x.requires_grad_(True)
        with record_function(PHASES[0]):
            total = step_objective(x)[0]
        with record_function(PHASES[1]):
            (grad,) = torch.autograd.grad(total.sum(), x)
        x.requires_grad_(False)
        with torch.no_grad(), record_function(PHASES[2]):
            used[rows] += active
            if stopping.enabled:
                old = recent[:, it % stopping.window]
                rel = (old - total) / total.abs().clamp_min(1e-12)
                active &= ~((rel < stopping.tolerance) & torch.isfinite(old))
                recent[:, it % stopping.window] = total.detach()
            g = grad.reshape(len(rows), -1).float()
            active &= g.abs().amax(1) > 1e-7  # torch.optim.LBFGS's tolerance_grad
            opt.step(flat, g, total.detach(), active)
        final = it == iterations - 1
        if hook is not None and ((it + 1) % log_every == 0 or it == 0 or final):
            out[rows], last[rows] = x, total.detach()
            hook(it + 1, last, _scatter(active, rows, bsz), out)  # sync point
        if (it + 1) % check_every == 0 and not final:
            keep = active.nonzero().squeeze(1)  # sync point
            if len(keep) == 0:
                break
            if narrow is not None and len(keep) < len(rows):
                # A stopped image's last step was masked to zero (and a bad one before it
                # undone), so its pixels are final: store them and drop it from the batch.
                out[rows], last[rows] = x, total.detach()
                rows, active, recent = rows[keep], active[keep], recent[keep]
                x = x[keep].contiguous()
                flat = x.view(len(rows), -1)
                opt.select(keep)
                step_objective = narrow(rows)
    with torch.no_grad():
        losses = tuple(t.detach() for t in step_objective(x))
        moved = opt.settle(flat, losses[0])
        out[rows] = x
        if len(rows) < bsz or bool(moved.any()):  # sync point, once
            losses = tuple(t.detach() for t in objective(out))
    return Outcome(out, used, losses)


def _scatter(active: torch.Tensor, rows: torch.Tensor, bsz: int) -> torch.Tensor:
    """(K,) flags of the images still in the batch -> (B,) flags, False for the others."""
    full = torch.zeros(bsz, dtype=torch.bool, device=active.device)
    full[rows] = active
    return full


@contextlib.contextmanager
def _exact_matmul(device: torch.device) -> Iterator[None]:
    """The optimiser's products in full fp32 (or the state's dtype): TF32 off (the engine
    turns it on for its bf16 and tf32 precisions, around the whole run) and no autocast.
    L-BFGS's curvature s.y and the direction's sum over the history would lose 13 bits of
    each factor in TF32, where the dots of the two-loop recursion never used it."""
    matmul = torch.backends.cuda.matmul
    was = matmul.allow_tf32
    if was:
        matmul.allow_tf32 = False
    try:
        with torch.autocast(device.type, enabled=False):
            yield
    finally:
        if was:
            matmul.allow_tf32 = True
