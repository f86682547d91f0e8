"""Style losses and scale schedules compared by the quality figures (stylize.figures, a fixed
network and fixed layers, not the engine's own loss), on content x style pairs you name.

    python infra/compare_losses.py --pair photo.jpg painting.jpg [--pair ...] --size 256 \
        --iterations 300 [--device cpu] [--schedule 128:300,256:100] [--json]

For each pair: ``gram``, ``wasserstein2`` and ``mean_std`` (``--losses``) at the same
iterations, and, with ``--schedule``, that schedule under ``gram`` against one scale at
``--size``: the four
figures, seconds and ms per image-iteration; then the medians and the ratios the targets of
issue 22 ask for (W2 distance wasserstein2/gram, content distance wasserstein2/gram, time
schedule/single).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from stylize import figures as fg
from stylize.config import resolve_config
from stylize.engine import Style, Stylizer
from stylize.images import decode_image, to_tensor


def _run(
    engine: Stylizer,
    cfg: Any,
    content_path: str,
    style_path: str,
    judge: Stylizer,
    stats: dict[tuple[str, int], Any],
) -> dict[str, Any]:
    content = engine.prepare_content(decode_image(content_path), exact=True)
    style_img = to_tensor(decode_image(style_path))
    t0 = _synced(engine)
    result = engine.stylize_batch([content], [Style(style_path, (style_img,))], options=cfg)[0]
    seconds = _synced(engine) - t0
    side = max(content.shape[-2:])
    if (style_path, side) not in stats:
        stats[style_path, side] = fg.style_stats(judge.features, [style_img], [1.0], side)
    figs = fg.figures(judge.features, result.image[None], content[None], [stats[style_path, side]])
    steps = sum(n for _, n in cfg.schedule)
    return {**figs[0], "seconds": seconds, "ms_per_iteration": 1000 * seconds / steps}


def _synced(engine: Stylizer) -> float:
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)
    return time.perf_counter()


LOSSES = ("gram", "wasserstein2", "mean_std")


def compare(
    pairs: list[tuple[str, str]],
    size: int,
    iterations: int,
    device: str = "auto",
    schedule: str | None = None,
    losses: tuple[str, ...] = LOSSES,
    progress: Any = None,
    **options: Any,
) -> dict[str, Any]:
    """Every pair under each loss (and the schedule): {"runs", "medians", "ratios"}.
    ``options``: more engine options for every variant (precision, compile, ...)."""
    stats: dict[tuple[str, int], Any] = {}
    runs: dict[str, list[dict[str, Any]]] = {}
    base = dict(size=size, iterations=iterations, device=device, seed=0, **options)
    variants = {loss: resolve_config("gatys2016", style_loss=loss, **base) for loss in losses}
    if schedule:
        steps = [tuple(int(v) for v in s.split(":")) for s in schedule.split(",")]
        sched = dict(base, size=steps[-1][0], scales=[list(x) for x in steps])
        variants["schedule"] = resolve_config("gatys2016", **sched)
    # one network for every variant (their options differ per call), the judge's when it is
    engine = Stylizer(next(iter(variants.values())))
    judge = engine if fg.same_network(engine.cfg) else Stylizer(fg.network_config(device))
    for content, style in pairs:
        for name, cfg in variants.items():
            row = _run(engine, cfg, content, style, judge, stats)
            runs.setdefault(name, []).append(row)
            if progress:
                progress(f"{name:13s} {content} x {style}: " + ", ".join(
                    f"{k} {v:.4g}" for k, v in row.items()))  # fmt: skip
    med = {
        name: {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        for name, rows in runs.items()
    }
    ratios: dict[str, float] = {}
    if "gram" in med and "wasserstein2" in med:
        w2, gram = med["wasserstein2"], med["gram"]
        ratios["w2_distance wasserstein2/gram"] = w2["w2_distance"] / gram["w2_distance"]
        ratios["content_distance wasserstein2/gram"] = (
            w2["content_distance"] / gram["content_distance"]
        )
        ratios["ms_per_iteration wasserstein2/gram"] = (
            w2["ms_per_iteration"] / gram["ms_per_iteration"]
        )
    if "schedule" in med and "gram" in med:
        ratios["seconds schedule/single"] = med["schedule"]["seconds"] / med["gram"]["seconds"]
        for f in fg.FIGURES:
            ratios[f"{f} schedule/single"] = med["schedule"][f] / med["gram"][f]
    return {"runs": runs, "medians": med, "ratios": ratios}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pair", nargs=2, action="append", required=True, metavar=("CONTENT", "STYLE"))
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--device", default="auto")
    p.add_argument("--schedule", help="e.g. 128:300,256:100 (compared with one scale)")
    p.add_argument("--losses", default=",".join(LOSSES), help="of gram,wasserstein2,mean_std")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    out = compare(
        [tuple(x) for x in args.pair],
        args.size,
        args.iterations,
        args.device,
        args.schedule,
        tuple(x for x in args.losses.split(",") if x),
        progress=None if args.json else (lambda line: print(line, flush=True)),
    )
    if args.json:
        print(json.dumps({"medians": out["medians"], "ratios": out["ratios"]}))
    else:
        for name, m in out["medians"].items():
            print(f"median {name:13s} " + ", ".join(f"{k} {v:.4g}" for k, v in m.items()))
        for k, v in out["ratios"].items():
            print(f"{k}: {v:.3f}")


if __name__ == "__main__":
    main()
