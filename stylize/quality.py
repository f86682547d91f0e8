"""``python -m stylize.quality``: how the pictures look, in figures anyone can rerun.

For photo x painting pairs (the bundled samples, or ``--pair CONTENT STYLE``) and each init
(noise, content), stylizes with a preset and prints per image:

- the judged losses: content, style and total (alpha * content + beta * style) of the
  delivered 8-bit image, scored in fp32 by the paper's network (zero padding, no TV term), so
  that every setting is judged by the objective of record;
- ``speckle``: the mean absolute 4-neighbour Laplacian of the chroma (each RGB channel minus
  the pixel's mean of the three), on the image downscaled to 256 px if larger. Fine colour
  noise scores high (white noise of std 25.5: 74); the paintings score 6-26;
- ``border``: the largest mean difference, in levels, between an outermost pixel row or column
  and the four next to it (one channel, one side);
- ``noise_corr``: the correlation of the image's high-frequency part (minus a Gaussian blur
  of sigma 1 px) with that of the initial noise, for noise init.

and the quality figures of every result (:mod:`stylize.figures`: content, Gram, Wasserstein-2
and colour distances), taken as the pipeline's worker takes them, with their time per item
(``figures_s``; per init ``figures_cost``: their time over the optimisation's, the share they
add to a run (``figures_cost_cpu``: the same in this process's CPU time, which a busy machine
disturbs less), and ``figures_steps_median``: their time in optimisation steps of the item;
the style statistics, once per style and size, apart as ``style_stats_s``).

``--json`` ends with one JSON object; ``--size``, ``--iterations`` and ``--pairs`` make a quick
run possible, and ``--set key=value`` changes any engine option (``--set noise_scale=0.1``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
import torch.nn.functional as F

from stylize.figures import FIGURES, FigureTaker

if TYPE_CHECKING:  # imported where used: the command starts without the engine
    from stylize.config import StyleConfig
    from stylize.engine import Stylizer

SPECKLE_SIZE = 256  # the speckle figure is taken on the image downscaled to this longest side


def _at_size(img: torch.Tensor, size: int | None) -> torch.Tensor:
    """Downscaled so the longest side is at most ``size`` (smaller images are left alone:
    upscaling would smooth the speckle away)."""
    if size is None or max(img.shape[-2:]) <= size:
        return img
    h, w = img.shape[-2:]
    s = size / max(h, w)
    return (
        F.interpolate(
            img[None].float(),
            size=(max(1, round(h * s)), max(1, round(w * s))),
            mode="bicubic",
            align_corners=False,
            antialias=s < 1,
        )[0]
        .clamp(0, 255)
        .round()
    )


def laplacian(x: torch.Tensor) -> torch.Tensor:
    """(C, H, W) -> (C, H-2, W-2): 4 x centre minus the four neighbours."""
    c = x[:, 1:-1, 1:-1]
    return 4 * c - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:]


def speckle(img: torch.Tensor, size: int | None = SPECKLE_SIZE) -> float:
    """Colour speckle of an image (3, H, W) in 0..255: the mean absolute 4-neighbour Laplacian
    of its chroma (each RGB channel minus the pixel's mean of the three), on the image
    downscaled to a longest side of ``size`` if it is larger."""
    x = _at_size(img.float(), size)
    chroma = x - x.mean(0, keepdim=True)
    return laplacian(chroma).abs().mean().item()


def high_pass(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """(C, H, W) minus its Gaussian blur (sigma in pixels, reflected borders)."""
    r = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x)
    c = x.shape[0]
    y = F.pad(x[None].float(), (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return x.float() - y[0]


def noise_correlation(img: torch.Tensor, noise: torch.Tensor) -> float:
    """Pearson correlation of the high-frequency parts of an image and of its initial noise,
    both (3, H, W) (the noise is resized to the image if needed)."""
    if noise.shape[-2:] != img.shape[-2:]:
        noise = F.interpolate(
            noise[None].float(), size=img.shape[-2:], mode="bicubic", align_corners=False
        )[0]
    a, b = high_pass(img).flatten(), high_pass(noise).flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-12)).item())


def border(img: torch.Tensor, inner: int = 4) -> float:
    """Largest mean difference, in levels, between an outermost row or column and the
    ``inner`` rows/columns next to it, over the four sides and three channels."""
    x = img.float()
    sides = [
        (x[:, 0], x[:, 1 : 1 + inner].mean(1)),
        (x[:, -1], x[:, -1 - inner : -1].mean(1)),
        (x[:, :, 0], x[:, :, 1 : 1 + inner].mean(2)),
        (x[:, :, -1], x[:, :, -1 - inner : -1].mean(2)),
    ]
    return max((edge - near).mean(1).abs().max().item() for edge, near in sides)


# ------------------------------------------------------------------------------ the runner

PHOTOS = ("tubingen", "coffee", "chelsea")
PAINTINGS = ("starry_night", "the_scream", "shipwreck")
# Diagonals first, so that --pairs 3 already uses every photo and every painting once.
PAIRS = tuple((PHOTOS[i], PAINTINGS[(i + k) % 3]) for k in range(3) for i in range(3))
INITS = ("noise", "content")


def sample_path(name: str) -> str:
    return str(resources.files("stylize") / "samples" / f"{name}.jpg")


def judge_config(cfg: StyleConfig) -> StyleConfig:
    """The objective of record for a run's config: the same layers and weights, scored in
    fp32 by the paper's network (zero padding), without the total-variation term."""
    return cfg.replace(
        precision="fp32",
        compile=False,
        tv_weight=0.0,
        padding="zeros",
        init="content",
        scales=(1.0,),
        early_stopping=False,
    )


def judged_losses(
    judge: Stylizer, pixels: torch.Tensor, contents: torch.Tensor, styles: Any
) -> list[dict[str, float]]:
    """Content, style and total loss of images (B, 3, H, W), rounded to 8 bits first."""
    x = pixels.clamp(0, 255).round().to(judge.device)
    with torch.no_grad():
        loss = judge.loss_for(contents.to(judge.device), styles)
        total, content, style, _ = loss(judge.features(x), x)
    return [
        dict(content_loss=c, style_loss=s, total_loss=t)
        for t, c, s in zip(total.tolist(), content.tolist(), style.tolist())
    ]


def image_figures(img: torch.Tensor, noise: torch.Tensor | None = None) -> dict[str, Any]:
    """The picture figures of one image (3, H, W) in 0..255 (rounded to 8 bits first)."""
    img = img.clamp(0, 255).round()
    return dict(
        speckle=speckle(img),
        border=border(img),
        noise_corr=None if noise is None else noise_correlation(img, noise),
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    from stylize.config import resolve_config
    from stylize.canvas import start_noise
    from stylize.engine import Style, Stylizer
    from stylize.images import decode_image, from_tensor, to_tensor

    overrides = dict(_parse_set(s) for s in args.set)
    base = resolve_config(
        args.preset,
        size=args.size,
        iterations=args.iterations,
        device=args.device,
        precision=args.precision,
        seed=args.seed,
        log_every=args.iterations,
        **overrides,
    )
    path: Callable[[str], str]
    if args.pair:
        pairs = [tuple(p) for p in args.pair]
        path = str
    else:
        pairs = list(PAIRS[: args.pairs])
        path = sample_path
    judge = Stylizer(judge_config(base))
    decoded = {n: decode_image(path(n)) for pair in pairs for n in pair}
    contents = {n: judge.prepare_content(decoded[n], exact=True) for n, _ in pairs}
    styles = {n: Style(n, (to_tensor(decoded[n]),)) for _, n in pairs}
    inputs = [
        dict(
            image=Path(n).stem,
            role=role,
            **image_figures(
                contents[n] if role == "content" else judge.prepare_content(decoded[n], exact=True)
            ),
        )
        for role, names in (
            ("content", dict.fromkeys(c for c, _ in pairs)),
            ("style", dict.fromkeys(s for _, s in pairs)),
        )
        for n in names
    ]
    out_dir = Path(args.out) if args.out else None
    stats_s = 0.0  # the figures' style statistics: once per style and size, apart
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for init in args.init.split(","):
        cfg = base.replace(init=init)
        engine = Stylizer(cfg)
        taker = FigureTaker.for_engine(engine)  # as the pipeline's worker takes them
        by_content: dict[str, list[str]] = {}
        for c, s in pairs:
            by_content.setdefault(c, []).append(s)
        for c, style_names in by_content.items():
            batch = [contents[c]] * len(style_names)
            batch_styles = [styles[s] for s in style_names]
            if engine.device.type == "cuda":
                torch.cuda.synchronize(engine.device)
            t0, c0 = time.perf_counter(), time.process_time()
            results = engine.stylize_batch(batch, batch_styles)
            seconds = (time.perf_counter() - t0) / len(results)
            cpu = (time.process_time() - c0) / len(results)
            t0 = time.perf_counter()
            for st in batch_styles:
                taker.style(st, max(contents[c].shape[-2:]))
            stats_s += _synced(engine, t0)
            t0, c0 = time.perf_counter(), time.process_time()
            pixels = torch.stack([r.image for r in results])
            figures = taker.take(pixels, torch.stack(batch), batch_styles, [c] * len(batch))
            figures_s = _synced(engine, t0) / len(results)
            figures_cpu = (time.process_time() - c0) / len(results)
            h, w = contents[c].shape[-2:]
            noise = start_noise(cfg, h, w) if init == "noise" else None
            judged = judged_losses(judge, pixels, torch.stack(batch), batch_styles)
            for s, r, j, fig in zip(style_names, results, judged, figures):
                row = dict(
                    content=Path(c).stem,
                    style=Path(s).stem,
                    init=init,
                    **j,
                    **image_figures(r.image, noise),
                    **fig,
                    iterations=r.iterations,
                    seconds=round(seconds, 2),
                    figures_s=round(figures_s, 4),
                    cpu_s=round(cpu, 2),  # this process's CPU time: on a shared machine
                    figures_cpu_s=round(figures_cpu, 4),  # steadier than the wall clock
                )
                rows.append(row)
                _print_row(row, args.json)
                if out_dir:
                    name = f"{init}-{row['content']}-{row['style']}.png"
                    from_tensor(r.image).save(out_dir / name)
    return dict(
        preset=base.preset,
        size=base.size,
        iterations=base.iterations,
        device=str(judge.device),
        precision=engine.precision,
        overrides=overrides,
        inputs=inputs,
        rows=rows,
        summary=summarize(rows),
        style_stats_s=round(stats_s, 3),
    )


def _synced(engine: Stylizer, t0: float) -> float:
    """Seconds since ``t0`` once the engine's device has finished its work."""
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)
    return time.perf_counter() - t0


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per init: geometric means of the judged losses, worst and mean picture figures."""
    out = {}
    for init in dict.fromkeys(r["init"] for r in rows):
        rs = [r for r in rows if r["init"] == init]
        s: dict[str, Any] = {
            f"{k}_geomean": math.exp(statistics.fmean(math.log(max(r[k], 1e-30)) for r in rs))
            for k in ("content_loss", "style_loss", "total_loss")
        }
        s.update(
            speckle_mean=statistics.fmean(r["speckle"] for r in rs),
            speckle_max=max(r["speckle"] for r in rs),
            border_mean=statistics.fmean(r["border"] for r in rs),
            border_max=max(r["border"] for r in rs),
        )
        corr = [abs(r["noise_corr"]) for r in rs if r["noise_corr"] is not None]
        s["noise_corr_max"] = max(corr) if corr else None
        for f in FIGURES:
            found = [r[f] for r in rs if r.get(f) is not None]
            s[f"{f}_median"] = statistics.median(found) if found else None
        # the quality figures' time per item over the optimisation's (their cost in a run)
        spent = sum(r["seconds"] for r in rs)
        s["figures_cost"] = sum(r.get("figures_s", 0.0) for r in rs) / spent if spent else None
        cpu = sum(r.get("cpu_s", 0.0) for r in rs)
        s["figures_cost_cpu"] = sum(r.get("figures_cpu_s", 0.0) for r in rs) / cpu if cpu else None
        # ... and in optimisation steps of the same item: what the share is for any run length
        steps = [r["figures_s"] * r["iterations"] / r["seconds"] for r in rs if r["seconds"] > 0]
        s["figures_steps_median"] = statistics.median(steps) if steps else None
        out[init] = s
    return out


def _print_row(row: dict[str, Any], quiet: bool) -> None:
    corr = "-" if row["noise_corr"] is None else f"{row['noise_corr']:+.3f}"
    print(
        f"{row['init']:8s} {row['content']:>12s} x {row['style']:<14s} "
        f"content {row['content_loss']:10.5g}  style {row['style_loss']:8.4g}  "
        f"total {row['total_loss']:10.5g}  speckle {row['speckle']:5.1f}  "
        f"border {row['border']:5.1f}  noise_corr {corr}  "
        + "  ".join(f"{f} {_fmt(row.get(f))}" for f in FIGURES)
        + f"  ({row['seconds']:.1f} s, figures {row.get('figures_s', 0.0):.3f} s)",
        flush=True,
        file=sys.stderr if quiet else sys.stdout,
    )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _parse_set(text: str) -> tuple[str, object]:
    import yaml

    if "=" not in text:
        raise SystemExit(f"stylize quality: error: --set {text!r}: expected key=value")
    key, value = text.split("=", 1)
    return key.strip().replace("-", "_"), yaml.safe_load(value)


def build_parser() -> argparse.ArgumentParser:
    from stylize.config import PRECISIONS, PRESETS

    p = argparse.ArgumentParser(
        prog="stylize quality",
        description=__doc__.splitlines()[0],
        epilog="With a run folder (stylize quality OUTPUT ...), the quality figures of its "
        "items are recomputed instead: stylize quality OUTPUT --help.",
    )
    p.add_argument("--preset", default="gatys2016", choices=tuple(PRESETS))
    p.add_argument("--size", type=int, default=256, help="longest side, pixels")
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument(
        "--pairs",
        type=int,
        default=len(PAIRS),
        help=f"how many bundled photo x painting pairs (1-{len(PAIRS)})",
    )
    p.add_argument(
        "--pair",
        nargs=2,
        action="append",
        metavar=("CONTENT", "STYLE"),
        help="image files instead of the bundled samples (repeatable)",
    )
    p.add_argument("--init", default=",".join(INITS), help="noise,content (comma list)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any engine option, e.g. --set noise_scale=0.1 (repeatable)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=PRECISIONS)
    p.add_argument("--out", help="folder to save the pictures in (PNG)")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from stylize.config import ConfigError
    from stylize.model import WeightsError

    args = build_parser().parse_args(argv)
    if not 1 <= args.pairs <= len(PAIRS):
        print(
            f"stylize quality: error: --pairs: 1 to {len(PAIRS)}, got {args.pairs}", file=sys.stderr
        )
        return 2
    try:
        result = run(args)
    except (ConfigError, WeightsError, ValueError, OSError) as e:
        print(f"stylize quality: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        for init, s in result["summary"].items():
            print(f"{init}: " + ", ".join(f"{k} {v:.4g}" for k, v in s.items() if v is not None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
