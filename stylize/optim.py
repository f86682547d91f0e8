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

Both optimizers keep the pixels in 0..255 (projection after each step; for L-BFGS the pair
stores the move actually made). Unconstrained, a few percent of the pixels leave the range
and the delivered (clamped) image has a much higher loss than the one optimised: measured on
8 images at 64 px, 1.3-1.6x for gatys2016 at 200 steps and 5.8x for the fast preset at 500,
where the projected run delivers the loss it reaches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

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


class BatchedLBFGS:
    """Per-image limited-memory BFGS over flattened images x (B, N)."""

    def __init__(self, x: torch.Tensor, history_size: int, lr: float):
        b, n = x.shape
        self.m, self.lr = history_size, lr
        self.s = x.new_zeros(b, history_size, n)  # (B, m, N) ring buffer of steps
        self.y = x.new_zeros(b, history_size, n)  # (B, m, N) ring buffer of gradient changes
        self.rho = x.new_zeros(b, history_size)  # (B, m); 0 marks an unused pair
        self.h_diag = x.new_ones(b)  # (B,) initial inverse-Hessian scale
        self.written = 0  # pairs written so far (same for every image; masked by rho)
        self.shrink = x.new_ones(b)  # (B,) step factor, < 1 after a rejected step
        self.prev_g: torch.Tensor | None = None
        self.prev_step: torch.Tensor | None = None
        self.prev_loss: torch.Tensor | None = None

    @torch.no_grad()
    def step(self, x: torch.Tensor, g: torch.Tensor, loss: torch.Tensor,
             active: torch.Tensor) -> None:
        """Move x (B, N) in place along the L-BFGS direction for gradient g at loss (B,);
        frozen where not active."""
        if self.prev_g is not None:
            # Safeguard (no line search): a step that multiplied an image's loss by more than
            # GROWTH_LIMIT is undone and retried 10x shorter; its pair is not kept (y = 0).
            bad = loss > self.prev_loss * GROWTH_LIMIT
            x.sub_(self.prev_step * bad[:, None])
            g = torch.where(bad[:, None], self.prev_g, g)
            loss = torch.where(bad, self.prev_loss, loss)
            self.shrink = torch.where(bad, self.shrink * 0.1, 1.0)
            y = g - self.prev_g
            s = self.prev_step
            ys = torch.linalg.vecdot(y, s)  # (B,)
            ok = ys > 1e-10
            slot = self.written % self.m
            self.s[:, slot] = s
            self.y[:, slot] = y
            self.rho[:, slot] = torch.where(ok, 1.0 / torch.where(ok, ys, 1.0), 0.0)
            self.h_diag = torch.where(ok, ys / torch.linalg.vecdot(y, y).clamp_min(1e-30),
                                      self.h_diag)
            self.written += 1
        d = self._direction(g)
        if self.prev_g is None:
            # First step: RMS of FIRST_STEP_PIXELS; see the module docstring.
            rms = g.pow(2).mean(1).sqrt().clamp_min(1e-30)
            t = FIRST_STEP_PIXELS / rms * self.lr  # (B,)
        else:
            t = self.lr * self.shrink
        before = x.clone()
        x.addcmul_(d, (t * active)[:, None]).clamp_(*PIXEL_RANGE)
        step = before.neg_().add_(x)  # the move actually made, so that (s, y) stay consistent
        self.prev_g, self.prev_step, self.prev_loss = g.clone(), step, loss.clone()

    def select(self, rows: torch.Tensor) -> None:
        """Keep the state of the images ``rows`` (K,) only, in that order."""
        self.s, self.y, self.rho = self.s[rows], self.y[rows], self.rho[rows]
        self.h_diag, self.shrink = self.h_diag[rows], self.shrink[rows]
        if self.prev_g is not None:
            self.prev_g, self.prev_step = self.prev_g[rows], self.prev_step[rows]
            self.prev_loss = self.prev_loss[rows]

    @torch.no_grad()
    def settle(self, x: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """After the last step: undo it where it made the loss worse (the safeguard above).
        Returns the images that were moved back."""
        if self.prev_g is None:
            return torch.zeros_like(loss, dtype=torch.bool)
        bad = loss > self.prev_loss * GROWTH_LIMIT
        x.sub_(self.prev_step * bad[:, None])
        return bad

    def _direction(self, g: torch.Tensor) -> torch.Tensor:
        """Two-loop recursion, vectorised over the batch; returns -H g, shape (B, N).

        Each pair costs one dot product and one fused multiply-add per loop (one kernel
        each), in place: the history is read twice per step and nothing else is allocated.
        """
        n = min(self.written, self.m)
        newest_first = [(self.written - 1 - i) % self.m for i in range(n)]
        q = -g
        alphas = []
        for i in newest_first:
            a = self.rho[:, i] * torch.linalg.vecdot(self.s[:, i], q)  # (B,)
            q.addcmul_(self.y[:, i], a[:, None], value=-1.0)
            alphas.append(a)
        r = q.mul_(self.h_diag[:, None])
        for i, a in zip(reversed(newest_first), reversed(alphas)):
            b = self.rho[:, i] * torch.linalg.vecdot(self.y[:, i], r)
            r.addcmul_(self.s[:, i], (a - b)[:, None])
        return r


class BatchedAdam:
    """Adam on (B, N); element-wise, hence per image. Frozen images keep their pixels."""

    def __init__(self, x: torch.Tensor, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.lr, self.betas, self.eps = lr, betas, eps
        self.m1 = torch.zeros_like(x)
        self.m2 = torch.zeros_like(x)
        self.t = x.new_zeros(x.shape[0])  # (B,) steps taken by each image

    @torch.no_grad()
    def step(self, x: torch.Tensor, g: torch.Tensor, loss: torch.Tensor,
             active: torch.Tensor) -> None:
        b1, b2 = self.betas
        a = active[:, None]
        self.t += active
        self.m1 = torch.where(a, b1 * self.m1 + (1 - b1) * g, self.m1)
        self.m2 = torch.where(a, b2 * self.m2 + (1 - b2) * g * g, self.m2)
        t = self.t.clamp_min(1)[:, None]
        m_hat = self.m1 / (1 - b1 ** t)
        v_hat = self.m2 / (1 - b2 ** t)
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


def optimize(x0: torch.Tensor, objective: Objective, iterations: int, optimizer: str,
             lr: float, history_size: int = 20, stopping: Stopping = Stopping(),
             hook: StepHook | None = None, log_every: int = 10,
             narrow: Callable[[torch.Tensor], Objective] | None = None) -> Outcome:
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
    opt = (BatchedLBFGS(flat, history_size, lr) if optimizer == "lbfgs"
           else BatchedAdam(flat, lr))
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
