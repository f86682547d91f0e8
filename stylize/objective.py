"""The objective of one optimisation step as one function: pixels -> VGG-19 features ->
Gatys loss, per image.

Network and loss are traced together by torch.compile (``compile: true``), so the features
stay in the network's dtype and layout (bf16, channels-last on a GPU) from the convolutions
into the losses and back: no tangent is copied or cast between an eager part and a compiled
one. Only the optimisation's gradient steps run compiled; targets, scores and final losses
(no gradient) run eager, once per batch, so torch.compile builds graphs for one call site.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn

from stylize.losses import GatysLoss, gatys
from stylize.runtime import compile_function


def network(
    model: nn.Module,
    pixels: torch.Tensor,
    taps: Sequence[str],
    amp: torch.dtype | None,
    layout: torch.memory_format,
) -> dict[str, torch.Tensor]:
    """``{tap: activation}`` of pixels (B, 3, H, W): the network in memory ``layout``, under
    autocast to ``amp`` (None: its own dtype)."""
    with torch.autocast(pixels.device.type, dtype=amp, enabled=amp is not None):
        out: dict[str, torch.Tensor] = model(pixels.contiguous(memory_format=layout), tuple(taps))
        return out


def evaluate(
    model: nn.Module,
    pixels: torch.Tensor,
    taps: tuple[str, ...],
    content_targets: dict[str, torch.Tensor],
    style_targets: dict[str, tuple[torch.Tensor, ...]],
    weights: torch.Tensor,
    use_tv: bool,
    style_kind: str,
    amp: torch.dtype | None,
    layout: torch.memory_format,
) -> tuple[torch.Tensor, ...]:
    """(total, content, style, tv), each (B,), of pixels (B, 3, H, W) in 0..255: the
    ``network`` features, the losses in fp32 (losses.gatys)."""
    feats = network(model, pixels, taps, amp, layout)
    return gatys(feats, pixels, content_targets, style_targets, weights, use_tv, style_kind)


class Objective:
    """``objective(pixels, loss, taps)``: the Gatys loss of pixels under a network, compiled
    with ``compile`` where gradients are taken (eager otherwise, or once the compiler failed).

    The batch dimension of every input is marked dynamic: one graph serves every batch of 2
    or more images (images that stop early leave the batch), one more serves a batch of 1.
    Each image shape (height, width), tap set and style loss builds its own; the layer
    weights, alpha, beta and the TV weight are a tensor input, so a sweep over them builds none.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        amp: torch.dtype | None,
        layout: torch.memory_format,
        compile: bool,
    ):
        self.model, self.amp, self.layout = model, amp, layout
        self._compiled = compile_function(evaluate) if compile else None

    @property
    def compiled(self) -> bool:
        """The gradient steps run compiled (False: asked for eager, or the compiler failed)."""
        return self._compiled is not None

    def __call__(
        self, pixels: torch.Tensor, loss: GatysLoss, taps: Sequence[str]
    ) -> tuple[torch.Tensor, ...]:
        if loss.guided:  # regions (masks.GuidedGatysLoss): eager, its own forward
            feats = network(self.model, pixels, tuple(taps), self.amp, self.layout)
            return loss.forward(feats, pixels)
        content, style, weights, use_tv, kind = loss.terms()
        args = (
            self.model,
            pixels,
            tuple(taps),
            content,
            style,
            weights,
            use_tv,
            kind,
            self.amp,
            self.layout,
        )
        if self._compiled is None or not torch.is_grad_enabled():
            return evaluate(*args)
        if pixels.shape[0] > 1:  # a batch of 1 is specialised by torch.compile anyway
            for t in (pixels, *content.values(), *(x for ts in style.values() for x in ts)):
                torch._dynamo.mark_dynamic(t, 0)
        try:
            return self._compiled(*args)
        except Exception as e:  # a compiler failure must not cost the job: run eager
            if isinstance(e, torch.OutOfMemoryError):
                raise
            warnings.warn(
                f"torch.compile failed ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); running eager",
                stacklevel=2,
            )
            self._compiled = None
            return evaluate(*args)
