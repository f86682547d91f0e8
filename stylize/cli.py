"""``stylize image``: one content image, one or more styles, one output file.

Every StyleConfig field is an option (``--content-weight``, ``--style-layers`` ...), generated
from the dataclass so that defaults and checks live in one place (stylize/config.py). Bad
input exits with code 2 and one line naming the file or option; no traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from pathlib import Path
from typing import Sequence

from stylize.config import PRESETS, ConfigError, StyleConfig, resolve_config

EXIT_USAGE = 2


class UsageError(Exception):
    """A bad command line or input: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        raise UsageError(message)


_HELP = {
    "size": "longest side of the output in pixels",
    "iterations": "optimizer steps per scale",
    "init": "noise | content | PATH of an init image",
    "weights": "caffe | torchvision | PATH or URL of a state dict",
    "scales": "coarse-to-fine fractions, e.g. 0.5,1.0",
    "style_scale": "style image size relative to the content's",
    "preserve_colors": "none | luminance | histogram",
    "device": "auto | cpu | cuda | mps",
}


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="stylize image", description="Stylize one image (Gatys et al. 2015).")
    p.add_argument("--content", required=True, help="content image")
    p.add_argument("--style", action="append", required=True,
                   help="style image (repeat for a blend)")
    p.add_argument("--style-weights", type=float, nargs="+", help="blend weight per --style")
    p.add_argument("--output", "-o", required=True, help="output file: .png .jpg .webp .tif")
    p.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality (1-100)")
    p.add_argument("--bit-depth", type=int, default=8, help="8, or 16 for PNG/TIFF")
    p.add_argument("--save-every", type=int, default=0,
                   help="also save the image every N steps next to the output")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--preset", default="gatys2016", help=f"one of: {', '.join(PRESETS)}")
    for f in dataclasses.fields(StyleConfig):
        if f.name in ("preset",):
            continue
        flag = "--" + f.name.replace("_", "-")
        if str(f.type) == "bool":
            p.add_argument(flag, default=None, nargs="?", const="true", metavar="BOOL",
                           help=f"default from the preset ({f.default})")
        else:
            p.add_argument(flag, default=None, metavar=f.name.split("_")[-1].upper(),
                           help=f"{_HELP.get(f.name, '')} (preset default: {f.default})".strip())
    return p


def image_main(argv: Sequence[str] | None = None, read_bytes=None) -> int:
    """Entry point of ``stylize image``; ``read_bytes`` opens weight URLs (see model.py)."""
    try:
        return _run(build_parser().parse_args(argv), read_bytes)
    except (UsageError, ConfigError) as e:
        print(f"stylize image: error: {e}", file=sys.stderr)
        return EXIT_USAGE


def _run(args: argparse.Namespace, read_bytes) -> int:
    from stylize.engine import Stylizer, Style
    from stylize.images import ImageError, decode_image, encode_image, format_from_path, to_tensor
    from stylize.model import WeightsError

    fields = {f.name for f in dataclasses.fields(StyleConfig)} - {"preset"}
    overrides = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    cfg = resolve_config(args.preset, **overrides)
    if args.save_every > 0:  # snapshots are taken at progress callbacks
        cfg = cfg.replace(log_every=math.gcd(cfg.log_every, args.save_every))
    try:
        fmt = format_from_path(args.output)
        encode_image(_tiny(), fmt, args.quality, args.bit_depth)  # checks quality/bit depth
    except ImageError as e:
        raise UsageError(f"--output: {e}") from None
    out_dir = Path(args.output).resolve().parent
    if not out_dir.is_dir() or not os.access(out_dir, os.W_OK):
        raise UsageError(f"--output: folder {out_dir} does not exist or is not writable")
    if args.style_weights and len(args.style_weights) != len(args.style):
        raise UsageError(f"--style-weights: {len(args.style_weights)} weights for "
                         f"{len(args.style)} --style images")
    if args.save_every < 0:
        raise UsageError("--save-every: must be >= 0")
    try:
        content = decode_image(args.content)
        styles = tuple(to_tensor(decode_image(s)) for s in args.style)
        if cfg.init not in ("noise", "content"):
            decode_image(cfg.init, name=f"--init {cfg.init}")
    except ImageError as e:
        raise UsageError(str(e)) from None
    try:
        engine = Stylizer(cfg, read_bytes=read_bytes)
    except WeightsError as e:
        raise UsageError(str(e)) from None
    pixels = engine.prepare_content(content, exact=True)  # one image: nothing to batch with
    style = Style("cli", styles, tuple(args.style_weights) if args.style_weights else None)
    progress = _Progress(cfg, args, fmt)
    try:
        result = engine.stylize_batch([pixels], [style], callback=progress)[0]
    finally:
        progress.close()
    data = encode_image(result.image, fmt, args.quality, args.bit_depth)
    Path(args.output).write_bytes(data)
    h, w = result.image.shape[-2:]
    print(f"wrote {args.output} ({w}x{h}, {result.iterations} iterations, "
          f"loss {result.total_loss:.4g}: content {result.content_loss:.4g}, "
          f"style {result.style_loss:.4g})")
    return 0


def _tiny():
    import torch

    return torch.zeros(3, 2, 2)


class _Progress:
    """A tqdm bar over all steps of all scales, and --save-every snapshots."""

    def __init__(self, cfg: StyleConfig, args: argparse.Namespace, fmt: str):
        from tqdm import tqdm

        self.every, self.output, self.fmt = args.save_every, Path(args.output), fmt
        self.steps = cfg.iterations
        self.bar = tqdm(total=cfg.iterations * len(cfg.scales), unit="step",
                        disable=args.quiet, dynamic_ncols=True, file=sys.stderr)
        self.done = 0
        self.saved = 0

    def __call__(self, info) -> None:
        pos = info.scale * info.steps + info.step
        self.bar.update(pos - self.done)
        self.done = pos
        self.bar.set_postfix(loss=f"{info.losses[0]:.4g}", scale=f"{info.scale + 1}/{info.scales}")
        if self.every and pos // self.every > self.saved:
            from stylize.images import encode_image

            self.saved = pos // self.every
            path = self.output.with_name(f"{self.output.stem}_{pos:05d}{self.output.suffix}")
            path.write_bytes(encode_image(info.pixels[0].detach().clamp(0, 255).cpu(), self.fmt))

    def close(self) -> None:
        self.bar.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m stylize.cli ...`` runs ``stylize image`` (the pipeline adds run/grid/status)."""
    return image_main(argv)


if __name__ == "__main__":
    sys.exit(main())
