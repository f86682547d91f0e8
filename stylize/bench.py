"""Throughput of the engine against the plain loop, in one run (``stylize bench``, whose
command line is :mod:`pipeline.bench_cmd`'s; :func:`bench` here measures and returns the figures).

Stylizes N images end to end (decode, resize, optimise, encode) with the chosen settings,
then the same images (or the first ``--baseline-images`` of them) with the plain baseline:
fp32, batch 1, eager, no early stopping, same iterations. On CUDA the baseline and the scoring
run in strict fp32 (TF32 off for cuDNN and matmuls; PyTorch's default lets cuDNN use TF32).
Both final images are scored with the same fp32 Gatys loss, so ``final_loss`` and
``baseline_final_loss`` (means over the images both ran) compare quality. Progress leaves
through a callback (the command prints it on stderr). ``profile=K`` adds where the time of
K steps of one batch goes (``profile``: each phase of a step, the device's busy share, the
top kernels), from ``torch.profiler``.
"""

from __future__ import annotations

import dataclasses
import resource
import statistics
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

import torch

from stylize.config import resolve_config
from stylize.engine import Style, Stylizer
from stylize.images import decode_image, encode_image, resize_to, to_tensor
from stylize.optim import PHASES

SAMPLES = ("tubingen", "coffee", "chelsea", "shipwreck", "the_scream", "starry_night")


def sample_bytes(n: int) -> list[bytes]:
    """N encoded sample images (bundled photos and paintings, cycled)."""
    folder = resources.files("stylize") / "samples"
    return [(folder / f"{SAMPLES[i % len(SAMPLES)]}.jpg").read_bytes() for i in range(n)]


def square(raw: bytes, size: int) -> torch.Tensor:
    """Decode, centre-crop to a square and resize to size x size: (3, size, size)."""
    img = decode_image(raw)
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    return to_tensor(resize_to(img.crop((left, top, left + side, top + side)), size, size))


def run_once(
    engine: Stylizer,
    raws: list[bytes],
    style: Style,
    size: int,
    batch: int,
    iterations: int | None = None,
) -> tuple[float, list[torch.Tensor], list[int]]:
    """Stylize all images end to end; returns (seconds, outputs, iterations used)."""
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    outputs: list[torch.Tensor] = []
    used: list[int] = []
    for i in range(0, len(raws), batch):
        contents = [square(r, size) for r in raws[i : i + batch]]
        results = engine.stylize_batch(contents, [style] * len(contents), iterations=iterations)
        for r in results:
            encode_image(r.image, "png")
            outputs.append(r.image)
            used.append(r.iterations)
    return time.perf_counter() - t0, outputs, used


def dynamo_graphs() -> int | None:
    """Graphs torch.compile has built in this process so far (None if unknown)."""
    try:
        from torch._dynamo.utils import counters
    except Exception:  # noqa: BLE001 - no dynamo: nothing compiled
        return None
    return int(counters["stats"]["unique_graphs"])


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    """What a bench run varies (``stylize bench --help`` says the same per option)."""

    images: int = 8  # bundled samples, cycled
    size: int = 64  # images are size x size
    iterations: int = 50
    batch: int = 4  # 0: from device memory
    precision: str = "auto"
    device: str = "auto"
    preset: str = "gatys2016"
    init: str = "content"  # noise | content
    compile: bool = False
    repeats: int = 1  # timed runs; the median is reported
    warmup: int = 3  # iterations of the untimed warm-up run (compilation happens there)
    baseline_images: int | None = None  # the baseline on the first N only (None: all; 0: none)
    profile: int = 0  # then profile K steps of one batch (0: no profile)


def bench(args: BenchOptions, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time the engine with ``args``' settings, then the plain fp32 baseline, on the same
    images; score both with the same fp32 loss. ``progress(line)`` hears what is being done
    (warm-up, timings). Returns the figures (one flat dict, ``profile`` nested)."""

    def _log(msg: str) -> None:
        if progress is not None:
            progress(msg)

    opts: dict[str, Any] = dict(
        size=args.size,
        iterations=args.iterations,
        device=args.device,
        seed=0,
        log_every=max(args.iterations, 1),
    )
    if args.init:
        opts["init"] = args.init
    cfg = resolve_config(
        args.preset, precision=args.precision, batch_size=args.batch, compile=args.compile, **opts
    )
    base_cfg = resolve_config(
        args.preset, precision="fp32", batch_size=1, compile=False, early_stopping=False, **opts
    )
    raws = sample_bytes(args.images)
    n_base = (
        len(raws) if args.baseline_images is None else max(0, min(args.baseline_images, len(raws)))
    )
    style_img = to_tensor(decode_image(sample_bytes(6)[-1]))  # The Starry Night
    style = Style("starry_night", (style_img,))
    contents = [square(r, args.size) for r in raws]

    def measure(
        engine: Stylizer, batch: int, images: list[bytes], label: str
    ) -> tuple[float, list[torch.Tensor], list[int], float, tuple[int | None, int | None]]:
        # A short warm-up on the same engine: kernels, autotuning, compilation.
        graphs0, t0 = dynamo_graphs(), time.perf_counter()
        if args.warmup:
            run_once(engine, images[:batch], style, args.size, batch, iterations=args.warmup)
        warmup = time.perf_counter() - t0
        graphs = None if graphs0 is None else (dynamo_graphs() or 0) - graphs0
        _log(
            f"{label}: warm-up {warmup:.1f} s ({graphs} graphs compiled); "
            f"timing {len(images)} images x {args.iterations} iterations"
        )
        if engine.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(engine.device)
        times: list[float] = []
        outs: list[torch.Tensor] = []
        used: list[int] = []
        for _ in range(args.repeats):
            t, outs, used = run_once(engine, images, style, args.size, batch)
            times.append(t)
        # Graphs compiled while timed: a recompile (new batch size, shape) costs seconds.
        timed = None if graphs0 is None else (dynamo_graphs() or 0) - graphs0 - (graphs or 0)
        _log(f"{label}: {statistics.median(times):.2f} s ({timed} graphs compiled while timed)")
        return statistics.median(times), outs, used, warmup, (graphs, timed)

    engine = Stylizer(cfg)
    t_new, out_new, used_new, warmup, graphs = measure(
        engine, args.batch or len(raws), raws, "new path"
    )
    peak = peak_memory_mb(engine.device)
    batch = args.batch or engine.batch_limit((args.size, args.size))
    prof = profile_steps(engine, contents[:batch], style, args.profile) if args.profile else None
    # fp32: IEEE fp32 on CUDA too (the engine turns TF32 off while it works)
    baseline = Stylizer(base_cfg)  # also the scorer: the same fp32 loss for both
    if n_base:
        t_base, out_base, used_base, _, _ = measure(baseline, 1, raws[:n_base], "baseline")
    styles = [style] * len(raws)
    losses_new = baseline.evaluate(out_new, contents, styles)
    losses_base = baseline.evaluate(out_base, contents[:n_base], styles[:n_base]) if n_base else []
    loss_new = statistics.mean(losses_new)
    loss_new_common = statistics.mean(losses_new[:n_base]) if n_base else None
    loss_base = statistics.mean(losses_base) if n_base else None
    image_iters = len(raws) * args.iterations
    ms = 1000 * t_new / image_iters
    ms_base = 1000 * t_base / (n_base * args.iterations) if n_base else None
    device = engine.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {
        "device": str(device),
        "device_name": name,
        "preset": args.preset,
        "size": args.size,
        "iterations": args.iterations,
        "images": len(raws),
        "batch": min(batch, len(raws)),
        "precision": engine.precision,
        "compile": args.compile,
        "compiled": engine.compiled,
        "repeats": args.repeats,
        "ms_per_image_iter": round(ms, 4),
        "ms_per_image_iter_done": round(1000 * t_new / max(sum(used_new), 1), 4),
        "baseline_ms_per_image_iter": None if ms_base is None else round(ms_base, 4),
        "speedup": None if ms_base is None else round(ms_base / ms, 3),
        "images_per_hour": round(3.6e6 / (ms * args.iterations), 1),
        "baseline_images_per_hour": None
        if ms_base is None
        else round(3.6e6 / (ms_base * args.iterations), 1),
        "seconds": round(t_new, 3),
        "warmup_s": round(warmup, 3),
        "graphs_compiled_warmup": graphs[0],
        "graphs_compiled_timed": graphs[1],
        "peak_memory_mb": round(peak, 1),
        "final_loss": loss_new,
        "final_loss_common": loss_new_common,
        "baseline_final_loss": loss_base,
        "loss_ratio": None
        if loss_base is None or loss_new_common is None
        else round(loss_new_common / loss_base, 5),
        "baseline_images": n_base,
        "baseline_precision": "fp32 (TF32 off)" if device.type == "cuda" else "fp32",
        "mean_iterations": statistics.mean(used_new),
        "baseline_mean_iterations": statistics.mean(used_base) if n_base else None,
        "torch": torch.__version__,
        "profile": prof,
    }


def profile_steps(
    engine: Stylizer, contents: list[torch.Tensor], style: Style, iterations: int, top: int = 12
) -> dict[str, Any]:
    """Where the time of ``iterations`` steps of one batch goes, per image-iteration: the
    phases of a step (stylize.optim.PHASES: forward and loss, gradient, update), the share of
    the wall time the device was busy, and the ``top`` kernels (operators on a CPU)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = engine.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize(engine.device)
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        engine.stylize_batch(contents, [style] * len(contents), iterations=iterations)
        if cuda:
            torch.cuda.synchronize(engine.device)
    wall_us = (time.perf_counter() - t0) * 1e6
    events = prof.key_averages()  # grouped by name, device type and user annotation
    own, under = (
        ("self_device_time_total", "device_time_total")
        if cuda
        else ("self_cpu_time_total", "cpu_time_total")
    )
    kind = DeviceType.CUDA if cuda else DeviceType.CPU  # kernels on CUDA, operators on a CPU
    per = 1000 * len(contents) * iterations  # microseconds -> ms per image-iteration
    kernels = sorted(
        (
            e
            for e in events
            if e.device_type == kind
            and not getattr(e, "is_user_annotation", False)
            and e.key not in PHASES
            and getattr(e, own) > 0
        ),
        key=lambda e: getattr(e, own),
        reverse=True,
    )
    spent = sum(getattr(e, own) for e in kernels) or 1
    phases = {
        name.split(".")[-1]: round(getattr(e, under) / per, 4)
        for name in PHASES
        for e in events
        if e.key == name and e.device_type == DeviceType.CPU
    }
    if cuda and phases:  # the gradient's kernels run on autograd's own thread, outside its
        # range: on CUDA "backward" is every kernel outside the other two phases (so also
        # the batch's targets and final losses, a small share of K steps)
        phases["backward"] = round(
            max(0.0, spent / per - phases.get("objective", 0.0) - phases.get("step", 0.0)), 4
        )
    return {
        "images": len(contents),
        "iterations": iterations,
        "timer": "device" if cuda else "cpu",
        "wall_ms_per_image_iter": round(wall_us / per, 4),
        "phases_ms_per_image_iter": phases,
        "device_busy_share": round(spent / wall_us, 3) if cuda else None,
        "top": [
            {
                "name": e.key[:120],
                "calls": e.count,
                "ms_per_image_iter": round(getattr(e, own) / per, 4),
                "share": round(getattr(e, own) / spent, 3),
            }
            for e in kernels[:top]
        ],
    }


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"
