"""Where and how the engine computes: the device, the precision, TF32 scoped to the engine's
calls, and the compile policy (one compiled objective; eager when the compiler fails)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import torch

from stylize.config import ConfigError

F = TypeVar("F", bound=Callable[..., Any])

# Graphs torch.compile may build for the objective (image shapes x batch of 1 or more x tap
# sets) before it gives up and runs eager: the aspect buckets of one size, and a few sizes.
COMPILED_GRAPHS = 64


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"--device: {name} is not available on this machine (no CUDA GPU); "
            f"use --device cpu or auto"
        )
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ConfigError("--device: mps is not available on this machine; use cpu or auto")
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


# CUDA compute capabilities whose float64 runs at half their fp32 rate (P100, V100, A100,
# H100/H200, B200); every other GPU runs it at 1/32 to 1/64 (T4, A10G, L4, L40S, RTX cards)
FULL_RATE_FLOAT64 = frozenset({(6, 0), (7, 0), (8, 0), (9, 0), (10, 0)})


def slow_float64(device: torch.device) -> str | None:
    """The name of a CUDA ``device`` whose float64 is slow (1/32 to 1/64 of its fp32: what
    wasserstein2's square root runs in), else None."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device) in FULL_RATE_FLOAT64:
        return None
    return str(torch.cuda.get_device_name(device))


def memory_format(device: torch.device) -> torch.memory_format:
    """Channels-last on CUDA (cuDNN's fast layout for bf16 and TF32 convolutions)."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def amp_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of the network under a precision (None: no autocast)."""
    return torch.bfloat16 if precision == "bf16" else None


@contextlib.contextmanager
def numerics(precision: str, compiled: bool) -> Iterator[None]:
    """TF32 on for ``precision: tf32``, off for ``fp32`` (PyTorch lets cuDNN use TF32 by
    default), only for the duration of the engine's work; the caller's flags come back.
    With ``bf16`` the convolutions run in bf16 under autocast and the fp32 matmuls left, the
    Gram matrices, use TF32: their inputs are bf16 features, exact in TF32, so the products
    accumulate in fp32 as the paper's would. With ``compiled``, torch.compile may build
    COMPILED_GRAPHS graphs meanwhile."""
    matmul_tf32, cudnn_tf32 = {"tf32": (True, True), "fp32": (False, False), "bf16": (True, None)}[
        precision
    ]
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (matmul.allow_tf32, cudnn.allow_tf32)
    matmul.allow_tf32 = matmul_tf32
    cudnn.allow_tf32 = saved[1] if cudnn_tf32 is None else cudnn_tf32
    try:
        with graph_limit() if compiled else contextlib.nullcontext():
            yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved


def graph_limit() -> AbstractContextManager[None]:
    """torch.compile's graph limit raised to COMPILED_GRAPHS for the duration of a call
    (``recompile_limit`` since PyTorch 2.6, ``cache_size_limit`` before)."""
    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    limit: dict[str, Any] = {name: COMPILED_GRAPHS}
    return cfg.patch(**limit)  # type: ignore[no-any-return]


def compile_function(fn: F) -> F | None:
    """``torch.compile(fn)``, or None where torch.compile is unavailable (with a warning)."""
    try:
        return torch.compile(fn)  # type: ignore[return-value]
    except Exception as e:  # noqa: BLE001 - any failure: the engine runs eager
        warnings.warn(
            f"torch.compile unavailable ({type(e).__name__}); running eager", stacklevel=2
        )
        return None


def free_device_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
