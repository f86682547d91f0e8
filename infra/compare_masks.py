"""Spatial control measured against the targets of issue 22, on content x style x style
triples you name, with masks made here (never the tests' masks): the left part of the picture
for the first style, the right part for the second, split by a straight line ``--tilt`` pixels
off vertical (0: a vertical line).

    python infra/compare_masks.py --triple photo.jpg a.jpg b.jpg [--triple ...] --size 256 \
        --iterations 200 [--device cpu] [--json] [--save DIR]

Three runs per triple (the run's own preset, ``gram`` unless ``--style-loss``):

- ``two``: a on the left, b on the right;
- ``one``: a on the left, no style on the right (that part keeps its content);
- ``none``: no style anywhere (``style_weight`` 0: the content rebuilt from the same start, the
  reference for what "keeps its content" can reach in as many iterations).

The judge is ``stylize.figures``' fixed network and layers, with its own region statistics
taken here on crops (not the engine's guided losses):

- ``own/other``: per side of ``two``, the Gram and Wasserstein-2 distances of that side's crop
  (``--margin`` pixels kept off the boundary) to its own style over those to the other style
  (the target: at most 0.5);
- ``band_px`` (vertical cuts only): windows ``--window`` pixels wide and as high as the
  picture slide across ``two`` (every ``--stride`` pixels); a window is won by a style when its
  Gram distance in relu1_1..relu3_1 is at most half the other's. The band is the run of pixels
  between the innermost window won by the left style without a break from the left edge and
  the innermost won by the right style from the right edge, less one window width (a window
  that only touches the boundary still spans it): the pixels where neither style wins (0: a
  clean cut at this window width; null: a side won no window at its edge);
- ``kept``: the content distance (relu4_2) of the right crop of ``one`` over that of ``none``
  (the target: at most 1.2), and over that of ``two`` for scale.

Prints a line per triple and the medians; ``--save DIR`` writes the three pictures per triple.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from stylize import figures as fg
from stylize.config import resolve_config
from stylize.engine import Style, Stylizer
from stylize.images import decode_image, from_tensor, to_tensor

SHALLOW = ("relu1_1", "relu2_1", "relu3_1")


def split_masks(h: int, w: int, tilt: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(left mask, right mask, boundary column per row) for a line from x = w/2 - tilt/2 at the
    top to x = w/2 + tilt/2 at the bottom."""
    rows = torch.arange(h, dtype=torch.float64)[:, None]
    cut = w / 2 + tilt * (rows / max(h - 1, 1) - 0.5)
    left = (torch.arange(w, dtype=torch.float64)[None, :] + 0.5 < cut).float()
    return left, 1.0 - left, cut[:, 0]


def _crop_figures(
    judge: Stylizer, x: torch.Tensor, c: torch.Tensor, stats: fg.StyleStats
) -> dict[str, Any]:
    return fg.figures(judge.features, x[None], c[None], [stats])[0]


def _window_gram_distance(
    feats: dict[str, torch.Tensor], x0: int, x1: int, stats: fg.StyleStats, width: int
) -> float:
    """Gram distance of the columns [x0, x1) of an image (its features ``feats``) to a style,
    averaged over the shallow layers."""
    out = []
    for layer in SHALLOW:
        f = feats[layer][0].double()
        step = width / f.shape[-1]
        a, b = int(x0 / step), max(int(math.ceil(x1 / step)), int(x0 / step) + 1)
        part = f[:, :, a:b].reshape(f.shape[0], -1)
        g = part @ part.T / part.shape[1]
        target = stats.layers[layer].gram.double()
        out.append(float(((g - target) ** 2).sum() / (target**2).sum()))
    return sum(out) / len(out)


def band(
    judge: Stylizer,
    x: torch.Tensor,
    sa: fg.StyleStats,
    sb: fg.StyleStats,
    window: int,
    stride: int,
    cut: float,
) -> dict[str, Any]:
    """The pixels around the boundary (at column ``cut``) where neither style wins (see the
    module's docstring), and the distance profile."""
    w = x.shape[-1]
    with torch.no_grad():
        feats = judge.features(x.round().clamp(0, 255)[None], SHALLOW)
    profile = []
    for x0 in range(0, w - window + 1, stride):
        da = _window_gram_distance(feats, x0, x0 + window, sa, w)
        db = _window_gram_distance(feats, x0, x0 + window, sb, w)
        profile.append((x0 + window / 2, da, db))
    left_won = [c for c, da, db in profile if da <= 0.5 * db]
    right_won = [c for c, da, db in profile if db <= 0.5 * da]
    # innermost wins reached from each edge without a break
    inner_left = None
    for c, da, db in profile:
        if da <= 0.5 * db:
            inner_left = c
        else:
            break
    inner_right = None
    for c, da, db in reversed(profile):
        if db <= 0.5 * da:
            inner_right = c
        else:
            break
    width = None  # no side won from its edge: no band to speak of
    if inner_left is not None and inner_right is not None:
        width = max(0.0, inner_right - inner_left - window)
    return {
        "band_px": width,
        "inner_left": inner_left,
        "inner_right": inner_right,
        "cut": cut,
        "windows_left_won": len(left_won),
        "windows_right_won": len(right_won),
        "windows": len(profile),
    }


@dataclass(frozen=True)
class MaskOptions:
    """What a measurement varies (the command line's options)."""

    size: int = 256
    iterations: int = 200
    device: str = "auto"
    preset: str = "gatys2016"
    style_loss: str | None = None
    tilt: int = 0
    margin: int = 16
    window: int = 32
    stride: int = 8
    save: str | None = None
    engine: dict[str, Any] = field(default_factory=dict)  # more engine options


def measure(
    triples: list[tuple[str, str, str]], args: MaskOptions, progress: Any = None
) -> dict[str, Any]:
    """Every triple's row (see the module's docstring) and the medians of their figures."""
    engine = Stylizer(_config(args))  # one network for every run
    judge = engine if fg.same_network(engine.cfg) else Stylizer(fg.network_config(args.device))
    rows = []
    for c, a, b in triples:
        rows.append(run_triple(args, engine, judge, c, a, b))
        if progress:
            progress(rows[-1])
    keys = [k for k in rows[0] if any(isinstance(r.get(k), float) for r in rows)]
    med = {
        k: statistics.median(vs) if (vs := [r[k] for r in rows if r.get(k) is not None]) else None
        for k in keys
    }
    return {"rows": rows, "medians": med}


def _ratio(a: dict[str, Any], b: dict[str, Any], key: str, key_b: str = "") -> float | None:
    """a[key] / b[key_b or key]; None where either is missing (a crop too small to measure)."""
    x, y = a.get(key), b.get(key_b or key)
    return None if x is None or not y else x / y


def _config(args: MaskOptions) -> Any:
    base = dict(size=args.size, iterations=args.iterations, device=args.device, seed=0)
    if args.style_loss:
        base["style_loss"] = args.style_loss
    return resolve_config(args.preset, **base, **args.engine)


def run_triple(
    args: MaskOptions,
    engine: Stylizer,
    judge: Stylizer,
    content_path: str,
    a_path: str,
    b_path: str,
) -> dict[str, Any]:
    cfg = engine.cfg
    content = engine.prepare_content(decode_image(content_path), exact=True)
    h, w = (int(s) for s in content.shape[-2:])
    left, right, cuts = split_masks(h, w, args.tilt)
    sa = Style(a_path, (to_tensor(decode_image(a_path)),))
    sb = Style(b_path, (to_tensor(decode_image(b_path)),))
    timings: dict[str, float] = {}

    def go(name: str, regions: Any, options: Any = None) -> torch.Tensor:
        t0 = time.perf_counter()
        res = engine.stylize_batch(
            [content], [sa], regions=None if regions is None else [regions], options=options
        )[0]
        timings[name] = time.perf_counter() - t0
        return res.image

    two = go("two", [(sa, left), (sb, right)])
    one = go("one", [(sa, left)])
    none = go("none", None, cfg.replace(style_weight=0.0))
    side = max(h, w)
    st_a = fg.style_stats(judge.features, sa.images, [1.0], side)
    st_b = fg.style_stats(judge.features, sb.images, [1.0], side)
    m = args.margin
    lo, hi = int(cuts.min()), int(math.ceil(cuts.max()))
    crops = {"left": slice(0, max(lo - m, 1)), "right": slice(min(hi + m, w - 1), w)}
    row: dict[str, Any] = {"content": content_path, "a": a_path, "b": b_path, "size": [h, w]}
    for side_name, sl, own, other in (
        ("left", crops["left"], st_a, st_b),
        ("right", crops["right"], st_b, st_a),
    ):
        f_own = _crop_figures(judge, two[..., sl], content[..., sl], own)
        f_other = _crop_figures(judge, two[..., sl], content[..., sl], other)
        row[f"{side_name} gram own/other"] = _ratio(f_own, f_other, "gram_distance")
        row[f"{side_name} w2 own/other"] = _ratio(f_own, f_other, "w2_distance")
    if args.tilt == 0:
        row.update(band(judge, two, st_a, st_b, args.window, args.stride, float(cuts[0])))
    sl = crops["right"]
    kept = {
        name: _crop_figures(judge, img[..., sl], content[..., sl], st_a)["content_distance"]
        for name, img in (("one", one), ("none", none), ("two", two))
    }
    row["kept one/none"] = _ratio(kept, kept, "one", "none")
    row["kept two/none"] = _ratio(kept, kept, "two", "none")
    row["content_distance right (one, none)"] = [kept["one"], kept["none"]]
    row["seconds"] = timings
    if args.save:
        out = Path(args.save)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"{Path(content_path).stem}-{Path(a_path).stem}-{Path(b_path).stem}"
        for name, img in (("two", two), ("one", one), ("none", none)):
            from_tensor(img).save(out / f"{stem}-{name}.png")
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--triple", nargs=3, action="append", required=True, metavar=("C", "A", "B"))
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--device", default="auto")
    p.add_argument("--preset", default="gatys2016")
    p.add_argument("--style-loss", dest="style_loss", default=None)
    p.add_argument("--tilt", type=int, default=0)
    p.add_argument("--margin", type=int, default=16)
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--stride", type=int, default=8)
    p.add_argument("--save", default=None)
    p.add_argument("--json", action="store_true")
    args = vars(p.parse_args())
    triples = [tuple(t) for t in args.pop("triple")]
    as_json = args.pop("json")
    out = measure(
        triples,
        MaskOptions(**args),
        progress=lambda row: print(json.dumps(row) if as_json else _line(row), flush=True),
    )
    print(json.dumps({"medians": out["medians"]}) if as_json else "median " + _line(out["medians"]))


def _line(row: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())


if __name__ == "__main__":
    main()
