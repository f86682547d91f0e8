"""How the pictures look, in figures anyone can rerun (``stylize quality``, whose command line
is :mod:`pipeline.quality_cmd`'s; :func:`run` here does the work and returns the figures).

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

:class:`QualityOptions` holds what a run varies: ``size``, ``iterations`` and ``pairs`` make a
quick run possible, and ``overrides`` changes any engine option (``noise_scale=0.1``).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


@dataclasses.dataclass(frozen=True)
class QualityOptions:
    """What a quality run varies (``stylize quality --help`` says the same per option)."""

    preset: str = "gatys2016"
    size: int = 256  # longest side, pixels
    iterations: int = 300
    pairs: int = len(PAIRS)  # how many of the bundled photo x painting pairs (PAIRS' order)
    pair: tuple[tuple[str, str], ...] = ()  # (content, style) image files instead
    inits: tuple[str, ...] = INITS
    overrides: Mapping[str, object] = dataclasses.field(default_factory=dict)  # engine options
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    out: str | None = None  # folder to save the pictures in (PNG)


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


def run(
    opts: QualityOptions, on_row: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Stylize the pairs with each init and take every figure: the inputs' picture figures,
    one row per result (``on_row`` sees each as it comes), per init a summary. Raises the
    engine's errors (ConfigError, WeightsError, ImageError) and OSError for a missing file."""
    from stylize.canvas import start_noise
    from stylize.config import resolve_config
    from stylize.engine import Style, Stylizer
    from stylize.images import decode_image, from_tensor, to_tensor

    overrides = dict(opts.overrides)
    base = resolve_config(
        opts.preset,
        size=opts.size,
        iterations=opts.iterations,
        device=opts.device,
        precision=opts.precision,
        seed=opts.seed,
        log_every=opts.iterations,
        **overrides,
    )
    path: Callable[[str], str]
    if opts.pair:
        pairs = list(opts.pair)
        path = str
    else:
        pairs = list(PAIRS[: opts.pairs])
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
    out_dir = Path(opts.out) if opts.out else None
    stats_s = 0.0  # the figures' style statistics: once per style and size, apart
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for init in opts.inits:
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
                if on_row is not None:
                    on_row(row)
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
