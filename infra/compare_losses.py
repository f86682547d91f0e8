"""Style losses and scale schedules compared by the quality figures (stylize.figures, a fixed
network and fixed layers, not the engine's own loss), on content x style pairs you name.

    python infra/compare_losses.py --pair photo.jpg painting.jpg [--pair ...] --size 256 \
        --iterations 300 [--device cpu] [--schedule 128:300,256:100] [--json]

For each pair: ``gram`` and ``wasserstein2`` (and ``mean_std``) at the same iterations, and,
with ``--schedule``, that schedule under ``gram`` against one scale at ``--size``: the four
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

from stylize import figures as fg
from stylize.config import resolve_config
from stylize.engine import Style, Stylizer
from stylize.images import decode_image, to_tensor


def _run(
    cfg: Any, content_path: str, style_path: str, judge: Stylizer, stats: dict[str, Any]
) -> dict[str, Any]:
    engine = Stylizer(cfg)
    content = engine.prepare_content(decode_image(content_path), exact=True)
    style_img = to_tensor(decode_image(style_path))
    t0 = time.perf_counter()
    result = engine.stylize_batch([content], [Style(style_path, (style_img,))])[0]
    seconds = time.perf_counter() - t0
    side = max(content.shape[-2:])
    if (style_path, side) not in stats:
        stats[style_path, side] = fg.style_stats(judge.features, [style_img], [1.0], side)
    figs = fg.figures(judge.features, result.image[None], content[None], [stats[style_path, side]])
    steps = sum(n for _, n in cfg.schedule)
    return {**figs[0], "seconds": seconds, "ms_per_iteration": 1000 * seconds / steps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pair", nargs=2, action="append", required=True, metavar=("CONTENT", "STYLE"))
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--device", default="auto")
    p.add_argument("--schedule", help="e.g. 128:300,256:100 (compared with one scale)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    judge = Stylizer(fg.network_config(args.device))
    stats: dict[str, Any] = {}
    runs: dict[str, list[dict[str, Any]]] = {}
    base = dict(size=args.size, iterations=args.iterations, device=args.device, seed=0)
    variants = {loss: resolve_config("gatys2016", style_loss=loss, **base) for loss in
                ("gram", "wasserstein2", "mean_std")}  # fmt: skip
    if args.schedule:
        pairs = [tuple(int(v) for v in s.split(":")) for s in args.schedule.split(",")]
        sched = dict(base, size=pairs[-1][0], scales=[list(x) for x in pairs])
        variants["schedule"] = resolve_config("gatys2016", **sched)
    for content, style in args.pair:
        for name, cfg in variants.items():
            row = _run(cfg, content, style, judge, stats)
            runs.setdefault(name, []).append(row)
            if not args.json:
                print(f"{name:13s} {content} x {style}: " + ", ".join(
                    f"{k} {v:.4g}" for k, v in row.items()))  # fmt: skip
    med = {
        name: {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        for name, rows in runs.items()
    }
    ratios = {
        "w2_distance wasserstein2/gram": med["wasserstein2"]["w2_distance"]
        / med["gram"]["w2_distance"],
        "content_distance wasserstein2/gram": med["wasserstein2"]["content_distance"]
        / med["gram"]["content_distance"],
        "ms_per_iteration wasserstein2/gram": med["wasserstein2"]["ms_per_iteration"]
        / med["gram"]["ms_per_iteration"],
    }
    if "schedule" in med:
        ratios["seconds schedule/single"] = med["schedule"]["seconds"] / med["gram"]["seconds"]
        for f in fg.FIGURES:
            ratios[f"{f} schedule/single"] = med["schedule"][f] / med["gram"][f]
    if args.json:
        print(json.dumps({"medians": med, "ratios": ratios}))
    else:
        for name, m in med.items():
            print(f"median {name:13s} " + ", ".join(f"{k} {v:.4g}" for k, v in m.items()))
        for k, v in ratios.items():
            print(f"{k}: {v:.3f}")


if __name__ == "__main__":
    main()
