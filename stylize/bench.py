"""``python -m stylize.bench``: throughput of the engine against the plain loop, in one run.

Stylizes N images end to end (decode, resize, optimise, encode) with the chosen settings,
then the same images with the plain baseline: fp32, batch 1, eager, no early stopping, same
iterations. Both final images are scored with the same fp32 Gatys loss, so ``final_loss``
and ``baseline_final_loss`` compare quality. With ``--json`` the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import statistics
import sys
import time
from importlib import resources

import torch

from stylize.config import PRECISIONS, PRESETS, resolve_config
from stylize.engine import Style, Stylizer
from stylize.images import decode_image, encode_image, resize_to, to_tensor

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


def run_once(engine: Stylizer, raws: list[bytes], style: Style, size: int, batch: int,
             iterations: int | None = None):
    """Stylize all images end to end; returns (seconds, outputs, iterations used)."""
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    outputs, used = [], []
    for i in range(0, len(raws), batch):
        contents = [square(r, size) for r in raws[i:i + batch]]
        results = engine.stylize_batch(contents, [style] * len(contents), iterations=iterations)
        for r in results:
            encode_image(r.image, "png")
            outputs.append(r.image)
            used.append(r.iterations)
    return time.perf_counter() - t0, outputs, used


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def bench(args: argparse.Namespace) -> dict:
    opts = dict(size=args.size, iterations=args.iterations, device=args.device, seed=0,
                log_every=max(args.iterations, 1))
    if args.init:
        opts["init"] = args.init
    cfg = resolve_config(args.preset, precision=args.precision, batch_size=args.batch,
                         compile=args.compile, **opts)
    base_cfg = resolve_config(args.preset, precision="fp32", batch_size=1, compile=False,
                              early_stopping=False, **opts)
    raws = sample_bytes(args.images)
    style_img = to_tensor(decode_image(sample_bytes(6)[-1]))  # The Starry Night
    style = Style("starry_night", (style_img,))
    contents = [square(r, args.size) for r in raws]

    def measure(c, batch):
        engine = Stylizer(c)
        # A short warm-up on the same engine: kernels, autotuning, compilation.
        run_once(engine, raws[:batch], style, args.size, batch, iterations=3)
        if engine.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(engine.device)
        times, outs, used = [], None, None
        for _ in range(args.repeats):
            t, outs, used = run_once(engine, raws, style, args.size, batch)
            times.append(t)
        return engine, statistics.median(times), outs, used

    engine, t_new, out_new, used_new = measure(cfg, args.batch or len(raws))
    peak = peak_memory_mb(engine.device)
    baseline, t_base, out_base, used_base = measure(base_cfg, 1)
    styles = [style] * len(raws)
    loss_new = statistics.mean(baseline.evaluate(out_new, contents, styles))
    loss_base = statistics.mean(baseline.evaluate(out_base, contents, styles))
    image_iters = len(raws) * args.iterations
    ms = 1000 * t_new / image_iters
    ms_base = 1000 * t_base / image_iters
    device = engine.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {
        "device": str(device), "device_name": name, "preset": args.preset, "size": args.size,
        "iterations": args.iterations, "images": len(raws), "batch": engine._chunk_size(
            (args.size, args.size), len(raws)) if not args.batch else args.batch,
        "precision": engine.precision, "compile": args.compile, "repeats": args.repeats,
        "ms_per_image_iter": round(ms, 4), "baseline_ms_per_image_iter": round(ms_base, 4),
        "speedup": round(ms_base / ms, 3), "images_per_hour": round(3.6e6 / (ms * args.iterations), 1),
        "peak_memory_mb": round(peak, 1), "final_loss": loss_new,
        "baseline_final_loss": loss_base, "loss_ratio": round(loss_new / loss_base, 5),
        "mean_iterations": statistics.mean(used_new),
        "baseline_mean_iterations": statistics.mean(used_base),
        "torch": torch.__version__,
    }


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stylize bench", description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=8, help="number of images (bundled, cycled)")
    p.add_argument("--size", type=int, default=64, help="images are size x size")
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--batch", type=int, default=4, help="batch size; 0 = from device memory")
    p.add_argument("--precision", default="auto", choices=PRECISIONS)
    p.add_argument("--device", default="auto")
    p.add_argument("--preset", default="gatys2016", choices=tuple(PRESETS))
    p.add_argument("--init", default="content", help="noise | content (default: content)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network")
    p.add_argument("--repeats", type=int, default=1, help="timed runs; the median is reported")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    result = bench(args)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:28s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
