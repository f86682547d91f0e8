"""Issue 22's figures (style losses, scale schedules, masks, the quality figures' cost) in one
process, ending with one JSON line: gpu-check's ``controls`` step, or alone:

    python infra/gpu_check_controls.py IMAGES_DIR [--cpu]

IMAGES_DIR holds the held-out images named below (../shared/images; on the device machine a
copy carried with the tree). On a GPU at the issue's 512 px; with ``--cpu`` a dry run at tiny
sizes (the figures then mean nothing; it checks that the step runs).

- ``cost``: ms per image-iteration of ``gram``, ``wasserstein2`` and ``mean_std`` on one batch
  of bundled samples (no early stop, the engine's default precision, eager), and the quality
  figures' time (``stylize.figures.FigureTaker``, as the worker takes them) over the ``gram``
  batch's optimisation time (the target: under 5%); and ``wasserstein2`` with the CPU's
  square root (eigenvalues) instead of the GPU's (Newton-Schulz), on fewer iterations;
- ``losses``: ``infra/compare_losses.py`` on the held-out pairs: ``gram`` against
  ``wasserstein2`` at equal iterations, and a two-scale schedule against one scale;
- ``masks``: ``infra/compare_masks.py`` on the held-out triples (own/other style distance per
  side, the boundary band in pixels, the unstyled side's content distance).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import compare_losses  # noqa: E402 - infra/ is not a package
import compare_masks  # noqa: E402

from stylize import losses  # noqa: E402
from stylize.bench import sample_bytes, square  # noqa: E402
from stylize.config import resolve_config  # noqa: E402
from stylize.engine import Style, Stylizer  # noqa: E402
from stylize.figures import FigureTaker  # noqa: E402
from stylize.images import decode_image, to_tensor  # noqa: E402

PAIRS = [
    ("golden_gate.jpg", "shipwreck.jpg"),
    ("chelsea.png", "seated-nude.jpg"),
    ("hoovertowernight.jpg", "frida_kahlo.jpg"),
]
TRIPLES = [
    ("golden_gate.jpg", "shipwreck.jpg", "frida_kahlo.jpg"),
    ("chelsea.png", "seated-nude.jpg", "woman-with-hat-matisse.jpg"),
    ("hoovertowernight.jpg", "frida_kahlo.jpg", "escher_sphere.jpg"),
]
# (size, iterations) per measurement; the schedule ends at the size of the single scale
GPU = {"cost": (512, 16, 60), "losses": (512, 300), "schedule": "256:400,512:150",
       "single": 500, "masks": (512, 300)}  # fmt: skip
CPU = {"cost": (32, 2, 2), "losses": (32, 2), "schedule": "16:2,32:1", "single": 2,
       "masks": (64, 2)}  # fmt: skip


def _synced(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def cost(size: int, images: int, iterations: int, device: str) -> dict[str, Any]:
    """ms per image-iteration per style loss on one batch, and the figures' share."""
    raws = sample_bytes(images)
    contents = [square(r, size) for r in raws]
    style = Style("starry_night", (to_tensor(decode_image(sample_bytes(6)[-1])),))
    out: dict[str, Any] = {"size": size, "images": images, "iterations": iterations}
    cfgs = {
        loss: resolve_config(
            "gatys2016",
            size=size,
            iterations=iterations,
            device=device,
            seed=0,
            style_loss=loss,
            early_stopping=False,
            batch_size=images,
        )  # fmt: skip
        for loss in ("gram", "wasserstein2", "mean_std")
    }
    # wasserstein2 with the eigenvalues' square root (a CPU's) instead of Newton-Schulz (a
    # GPU's): what the GPU's choice saves, on fewer iterations (it may be many times slower)
    cfgs["wasserstein2 eigh"] = cfgs["wasserstein2"].model_copy(
        update={"iterations": max(2, iterations // 6)}
    )
    engine = Stylizer(cfgs["gram"])  # one network; the loss is an option per call
    out["precision"] = engine.precision
    for loss, cfg in cfgs.items():
        losses.W2_ROOT = "eigh" if loss.endswith(" eigh") else "auto"
        engine.stylize_batch(contents[:1], [style], iterations=2, options=cfg)  # warm-up
        t0 = _synced(engine.device)
        results = engine.stylize_batch(contents, [style] * images, options=cfg)
        seconds = _synced(engine.device) - t0
        out[f"ms_per_image_iter {loss}"] = 1000 * seconds / (images * cfg.iterations)
        if loss == "gram":
            taker = FigureTaker.for_engine(engine)
            outputs = torch.stack([r.image for r in results])
            batch = torch.stack(contents).to(outputs.device)
            taker.take(outputs[:1], batch[:1], [style])  # warm-up (style statistics)
            t0 = _synced(engine.device)
            taker.take(outputs, batch, [style] * images)
            figures_s = _synced(engine.device) - t0
            out["figures_s"] = figures_s
            out["figures share of the run"] = figures_s / seconds
            out["figures share at 500 it"] = figures_s / (seconds * 500 / iterations)
    gram = out["ms_per_image_iter gram"]
    out["ms ratio wasserstein2/gram"] = out["ms_per_image_iter wasserstein2"] / gram
    out["ms ratio mean_std/gram"] = out["ms_per_image_iter mean_std"] / gram
    out["ms ratio wasserstein2 eigh/gram"] = out["ms_per_image_iter wasserstein2 eigh"] / gram
    losses.W2_ROOT = "auto"
    return out


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    folder, cpu = argv[0], "--cpu" in argv[1:]
    mode = CPU if cpu else GPU
    device = "cpu" if cpu else "cuda"
    pairs_named, triples_named = (PAIRS[:1], TRIPLES[:1]) if cpu else (PAIRS, TRIPLES)
    missing = [n for t in TRIPLES + PAIRS for n in t if not os.path.exists(os.path.join(folder, n))]
    if missing:
        print(f"controls: not in {folder}: {', '.join(sorted(set(missing)))}", file=sys.stderr)
        print(json.dumps({"status": f"skipped: held-out images not in {folder}"}))
        return 0

    def path(name: str) -> str:
        return os.path.join(folder, name)

    def say(line: Any) -> None:
        print(line if isinstance(line, str) else json.dumps(line), file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    result: dict[str, Any] = {"device": device}
    result["cost"] = cost(*mode["cost"], device)
    say(result["cost"])
    size, iterations = mode["losses"]
    pairs = [(path(c), path(s)) for c, s in pairs_named]
    losses = compare_losses.compare(
        pairs, size, iterations, device, losses=("gram", "wasserstein2"), progress=say
    )
    result["losses"] = {"size": size, "iterations": iterations, "medians": losses["medians"],
                        "ratios": losses["ratios"]}  # fmt: skip
    # the schedule against one scale at the paper's iterations
    sched = compare_losses.compare(
        pairs, size, mode["single"], device, mode["schedule"], losses=("gram",), progress=say
    )
    result["schedule"] = {"schedule": mode["schedule"], "single_iterations": mode["single"],
                          "medians": sched["medians"], "ratios": sched["ratios"]}  # fmt: skip
    size, iterations = mode["masks"]
    masks = compare_masks.measure(
        [(path(c), path(a), path(b)) for c, a, b in triples_named],
        compare_masks.MaskOptions(size=size, iterations=iterations, device=device),
        progress=say,
    )
    result["masks"] = {"size": size, "iterations": iterations, "rows": masks["rows"],
                       "medians": masks["medians"]}  # fmt: skip
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["summary"] = summary(result)
    print(json.dumps(result, default=str))
    return 0


def summary(r: dict[str, Any]) -> dict[str, Any]:
    """The figures the issue's targets name, flat."""
    lr, sr, mm = r["losses"]["ratios"], r["schedule"]["ratios"], r["masks"]["medians"]
    own = [v for k, v in mm.items() if "own/other" in k and v is not None]
    return {
        "w2_distance wasserstein2/gram": lr.get("w2_distance wasserstein2/gram"),
        "content_distance wasserstein2/gram": lr.get("content_distance wasserstein2/gram"),
        "ms ratio wasserstein2/gram": r["cost"]["ms ratio wasserstein2/gram"],
        "ms ratio wasserstein2 eigh/gram": r["cost"].get("ms ratio wasserstein2 eigh/gram"),
        "seconds schedule/single": sr.get("seconds schedule/single"),
        "gram_distance schedule/single": sr.get("gram_distance schedule/single"),
        "content_distance schedule/single": sr.get("content_distance schedule/single"),
        "mask own/other (worst side)": max(own) if own else None,
        "mask band_px": mm.get("band_px"),
        "mask kept one/none": mm.get("kept one/none"),
        "figures share at 500 it": r["cost"]["figures share at 500 it"],
    }


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
