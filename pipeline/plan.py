"""``stylize plan JOB.yaml``: what a job would do and cost, before anything is spent.

Reads the job (the same ``--set`` overrides as ``run``), lists its inputs and styles, and
says, without starting Ray and without writing anything: the contents, styles and items; how
many are already done in the output; the image shapes after resizing (aspect buckets and
their counts, from the headers of up to ``SAMPLE`` contents); the memory per image and the
batch per GPU; and an estimate of GPU-hours and wall time for N workers, from the measured
per-image-iteration costs below (``infra/gpu-results/``) or, with ``--calibrate``, from a
few iterations timed on this machine.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipeline import manifest, resume, storage
from pipeline.jobconfig import JobConfig
from pipeline.runfolder import RunFolder

SAMPLE = 500  # contents whose image header is read for the shapes (the rest extrapolated)
# Measured ms per image-iteration (gatys2016 layers, the engine's default precision), by the
# longest side of a square image: infra/gpu-results/ (H200 2026-12-04: bf16, one compiled
# objective; H100 2026-11-27: an older engine) and this project's 2-core CPU (fp32, batch 4).
COSTS_MS: dict[str, dict[int, float]] = {
    "h200": {224: 0.363, 512: 1.78, 1024: 10.8},
    "h100": {512: 3.47, 1024: 26.1},
    "cpu": {64: 40.0},
}
# A step's cost against gram's (the figures above), by style loss: wasserstein2 measured 1.1-1.25x
# on the CPU (256 and 512 px, infra/compare_losses.py); on a GPU estimated from its Newton-Schulz
# square root (about 29 GFLOP of float64 per image-iteration, at most 67 TFLOP/s on an H100 or
# H200: at least 0.43 ms beside gram's 1.78 ms at 512 px), not measured.
LOSS_FACTOR: dict[str, dict[str, float]] = {
    "wasserstein2": {"cpu": 1.2, "gpu": 1.3},
}
# GPU memory per image at one step (bf16, history 10: peak_memory_per_image of the H200 run),
# MiB per pixel; and each device's memory.
MIB_PER_PIXEL = 413.2 / (512 * 512)
DEVICE_MIB = {"h200": 143_155, "h100": 81_559, "cpu": None}
COMPILE_S = 25.0  # one compiled graph per image shape per worker (H200)


def _ms_per_iteration(table: Mapping[int, float], pixels: float) -> float:
    """Interpolated in log-log between the measured sizes (cost ~ pixels^k), extrapolated
    with the nearest segment's exponent (linear in pixels with one point)."""
    pts = sorted((s * s, ms) for s, ms in table.items())
    if len(pts) == 1:
        return pts[0][1] * pixels / pts[0][0]
    lo, hi = pts[0], pts[1]
    for a, b in zip(pts, pts[1:]):
        lo, hi = a, b
        if pixels <= b[0]:
            break
    k = math.log(hi[1] / lo[1]) / math.log(hi[0] / lo[0])
    return lo[1] * (pixels / lo[0]) ** k


def _shape(width: int, height: int, size: int, bucket: bool) -> tuple[int, int]:
    """(width, height) after the engine's resize (longest side ``size``)."""
    from stylize.images import bucket_shape

    if bucket:
        return bucket_shape(width, height, size)
    scale = size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _header_size(uri: str, options: Mapping[str, Any]) -> tuple[int, int] | None:
    from PIL import Image

    try:
        fs, path = storage.get_fs(uri, options)
        with fs.open(path, "rb") as f, Image.open(f) as img:
            w, h = img.size
            if img.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF rotation by 90 degrees
                w, h = h, w
            return w, h
    except Exception:  # noqa: BLE001 - unreadable: a failed row at run time, not a shape here
        return None


def calibrate(job: JobConfig, side: int, iterations: int = 3) -> tuple[str, float]:
    """(device, ms per image-iteration) timed on this machine at ``side`` px."""
    import torch

    from stylize.engine import Style, Stylizer

    cfg = job.stylize.replace(
        size=side, iterations=iterations + 1, scales=None, early_stopping=False
    )
    engine = Stylizer(cfg)
    content = torch.rand(3, side, side) * 255
    style = Style("calibrate", (torch.rand(3, side, side) * 255,))
    engine.stylize_batch([content], [style])  # warm-up (and compile)
    t0 = time.perf_counter()
    engine.stylize_batch([content], [style])
    ms = (time.perf_counter() - t0) * 1000 / (iterations + 1)
    return str(engine.device), ms


def _default_device(job: JobConfig) -> str:
    """cpu for ``stylize.device: cpu``, and for a local run (``ray.address`` null or inline)
    on a machine without CUDA; else the H200 figures."""
    if job.stylize.device == "cpu":
        return "cpu"
    if job.ray.address in (None, "inline") and job.stylize.device == "auto":
        import torch

        return "h200" if torch.cuda.is_available() else "cpu"
    return "h200"


def make_plan(
    job: JobConfig,
    workers: int = 1,
    device: str | None = None,
    calibrated_ms: tuple[int, float] | None = None,
) -> dict[str, Any]:
    """The plan as plain JSON-able values (see the module docstring)."""
    from pipeline import driver

    state = driver.plan(job, probe=False)
    job = state.job
    cfg = job.stylize
    items = driver.trial(driver.job_items(state), job.limit)
    # what the output already holds (read only: damaged files are named, not moved)
    damage = manifest.Damage(job.output, job.storage_options)
    rows = manifest.read_parts(job.output, job.storage_options, damage=damage)
    done_ok = set()
    if rows.num_rows:
        import pyarrow.compute as pc

        done_ok = set(rows.filter(pc.equal(rows["status"], "ok"))["item_id"].to_pylist())
    left = [i for i in items if i.item_id not in done_ok]
    # shapes after resizing, from a reproducible sample of the contents
    contents = [c for c in state.listing.contents if not c.problem]
    sample = contents if len(contents) <= SAMPLE else random.Random(0).sample(contents, SAMPLE)
    with ThreadPoolExecutor(16) as pool:
        sizes = list(pool.map(lambda c: _header_size(c.uri, job.storage_options), sample))
    shapes = Counter(_shape(w, h, cfg.size, cfg.bucket) for s in sizes if s for w, h in [s])
    unreadable = sum(s is None for s in sizes)
    scale = len(contents) / max(1, len(sample))
    seen = sum(shapes.values()) or 1
    # cost per item: every scale of the schedule at its share of the pixels
    kind = device or _default_device(job)
    table = COSTS_MS.get(kind, COSTS_MS["h200"])
    if calibrated_ms is not None:
        table = {calibrated_ms[0]: calibrated_ms[1]}
    # the calibration ran the job's own settings, its loss included
    factors = LOSS_FACTOR.get(cfg.style_loss, {}) if calibrated_ms is None else {}
    factor = factors.get("cpu" if kind == "cpu" else "gpu", 1.0)
    item_ms = 0.0
    for (w, h), n in shapes.items():
        per = sum(it * _ms_per_iteration(table, w * h * f * f) for f, it in cfg.schedule)
        item_ms += factor * per * n / seen
    iterations = sum(it for _, it in cfg.schedule)
    gpu_h = item_ms * len(left) / 3.6e6
    startup_s = COMPILE_S * len(shapes) if kind != "cpu" else 0.0
    largest = max((w * h for w, h in shapes), default=cfg.size * cfg.size)
    per_image_mib = largest * MIB_PER_PIXEL * (1 + cfg.history_size / 100)
    total_mib = DEVICE_MIB.get(kind)
    return {
        "command": "plan",
        "exit_code": 0,
        "output": job.output,
        "contents": len(state.listing.contents),
        "skipped": len(state.listing.skipped),
        "skipped_why": dict(Counter(s.reason for s in state.listing.skipped)),
        "styles": [s.name for s in state.styles],
        "masks": None if job.masks is None else job.masks.model_dump(exclude_defaults=True),
        "artfid_weights": job.artfid_weights,
        "items": len(items),
        "already_done": len(items) - len(left),
        "left": len(left),
        "unreadable_in_output": damage.lines(),
        "would_refuse": _would_refuse(state),
        "size": cfg.size,
        "iterations_per_item": iterations,
        "shapes": [
            {"width": w, "height": h, "contents": round(n * scale)}
            for (w, h), n in shapes.most_common()
        ],
        "headers_unreadable": unreadable,
        "memory_per_image_mib": round(per_image_mib),
        "batch_per_gpu": (max(1, int(0.8 * total_mib / per_image_mib)) if total_mib else None),
        "device": kind,
        "cost_source": (
            "calibrated on this machine"
            if calibrated_ms
            else f"measured figures for {kind} (pipeline/plan.py COSTS_MS)"
            + (
                f", {cfg.style_loss} x{factor} ({'measured' if kind == 'cpu' else 'estimated'})"
                if factor != 1.0
                else ""
            )
        ),
        "seconds_per_item": round(item_ms / 1000, 3),
        "gpu_hours": round(gpu_h, 6),
        "workers": workers,
        "wall_hours": round(gpu_h / max(1, workers) + startup_s / 3600, 6),
    }


def _would_refuse(state) -> str | None:
    """Why ``stylize run`` would refuse this output folder (another job made it), or None."""
    old = manifest.read_json(
        RunFolder(state.job.output).job_json,
        state.job.storage_options,
        manifest.Damage(state.job.output, {}),
    )
    if not old or state.job.mode == "overwrite":
        return None
    return "; ".join(resume.changed(old, state.fingerprint)[:5]) or None


def _hours(h: float) -> str:
    """A duration given in hours, in the unit that reads best (s, min, h)."""
    if h < 1 / 60:
        return f"{h * 3600:.0f} s"
    return f"{h * 60:.0f} min" if h < 1 else f"{h:.1f} h"


def print_plan(p: Mapping[str, Any], stream) -> None:
    from pipeline.redact import escape_controls

    def say(line: str) -> None:
        print(escape_controls(line), file=stream)

    say(f"output:    {p['output']}")
    say(
        f"contents:  {p['contents']}"
        + (
            f" ({p['skipped']} skipped: "
            + "; ".join(f"{n} {why}" for why, n in p["skipped_why"].items())
            + ")"
            if p["skipped"]
            else ""
        )
    )
    say(
        f"styles:    {len(p['styles'])} ({', '.join(p['styles'][:8])}"
        f"{', ...' if len(p['styles']) > 8 else ''})"
    )
    masks = p.get("masks")
    if masks:
        source = f"column {masks['column']}" if masks.get("column") else f"folder {masks['folder']}"
        say(
            f"masks:     from {source}; foreground (white): {masks.get('foreground') or 'content'}"
            f", background (black): {masks.get('background') or 'content'}; one item per content"
        )
    if p.get("artfid_weights"):
        say(
            f"artfid:    at the end, over the ok items, in the driver (weights from "
            f"{p['artfid_weights']})"
        )
    say(f"items:     {p['items']}: {p['already_done']} already done, {p['left']} left")
    if p["would_refuse"]:
        say(
            f"refused:   the output holds another job ({p['would_refuse']}); use --mode "
            "overwrite or another output"
        )
    for line in p["unreadable_in_output"]:
        say(f"damaged:   {line} (the run moves it to quarantine and redoes it)")
    say(f"shapes:    at {p['size']} px, {p['iterations_per_item']} iterations per item:")
    for s in p["shapes"][:10]:
        n = s["contents"]
        say(f"  {s['width']}x{s['height']}  {n} content{'' if n == 1 else 's'}")
    if len(p["shapes"]) > 10:
        say(f"  ... and {len(p['shapes']) - 10} more shapes")
    batch = p["batch_per_gpu"]
    say(
        f"memory:    ~{p['memory_per_image_mib']} MiB per image"
        + (f", batch of ~{batch} per GPU ({p['device']})" if batch else "")
    )
    say(
        f"estimate:  {p['seconds_per_item']:.2f} s per item on {p['device']} "
        f"({p['cost_source']}): {_hours(p['gpu_hours'])} of device time, about "
        f"{_hours(p['wall_hours'])} with {p['workers']} worker(s)"
    )
