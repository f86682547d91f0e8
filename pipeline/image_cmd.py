"""``stylize image``: one content image, one or more styles, one output file.

Every StyleConfig field is an option (``--content-weight``, ``--style-layers`` ...), generated
from the config class so that defaults, allowed values and checks live in one place
(stylize/config.py). Bad input exits with code 2 and one line naming the file or option; no
traceback. ``--content``, ``--style``, ``--mask``, ``--output`` and ``--weights`` take local
paths or fsspec URLs (``s3://``, ``gs://``, ``pkg://`` ...), read and written through
:mod:`pipeline.storage`. The engine (:class:`stylize.engine.Stylizer`) does the work; this
module parses, reads, writes and prints.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import typing
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from pipeline import storage
from pipeline.errors import Interrupted, OutputError, UsageError
from pipeline.shell import LOGGED, Context, Parser, logging_to_stderr, run_reported, verbosity
from stylize.common import EXIT_OK, one_line, write_atomic
from stylize.config import (
    BIT_DEPTH_16_FORMATS,
    BIT_DEPTHS,
    PRESETS,
    StyleConfig,
    bit_depth_problem,
    resolve_config,
)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
PROG = "stylize image"

ReadBytes = Callable[[str], bytes]  # a URI's whole content; OSError (or ValueError) if not
WriteBytes = Callable[[str, bytes], None]  # a whole file, atomically: never half-written


def _write_url(uri: str, data: bytes) -> None:
    storage.write_bytes(uri, data, atomic=True)


_HELP = {
    "size": "longest side of the output in pixels",
    "iterations": "optimizer steps per scale",
    "init": "noise | content | PATH of an init image",
    "weights": "caffe | torchvision | PATH or URL of a state dict",
    "scales": "coarse to fine: fractions of --size, e.g. 0.5,1.0 (each --iterations), or "
    "SIDE:ITERATIONS pairs, e.g. 256:400,512:150 (the last side is the size)",
    "style_loss": "Gram matrices (the paper), Gaussian 2-Wasserstein distance, or "
    "per-channel mean and std",
    "style_scale": "style image size relative to the content's",
    "device": "auto | cpu | cuda | cuda:N | mps",
}


def _allowed(annotation: Any) -> tuple[Any, ...]:
    """The values a Literal option allows (also inside Optional/Annotated), else ()."""
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    for arg in typing.get_args(annotation):
        found = _allowed(arg)
        if found:
            return found
    return ()


def _option_help(name: str, default: object) -> str:
    """An engine option's help: what it is, its allowed values (from the config's types),
    its preset default."""
    allowed = _allowed(StyleConfig.model_fields[name].annotation)
    what = _HELP.get(name, "")
    if allowed and name != "layers":
        what = f"{' | '.join(map(str, allowed))}{': ' + what if what else ''}"
    return f"{what} (preset default: {default})".strip()


def _engine_fields() -> list[tuple[str, object, bool]]:
    """(name, default, is a bool) of every engine option except ``preset``: the one place
    that reads StyleConfig's fields."""
    return [
        (name, f.default, f.annotation is bool)
        for name, f in StyleConfig.model_fields.items()
        if name != "preset"
    ]


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description="Stylize one image (Gatys et al. 2015).")
    p.add_argument("--content", required=True, help="content image (path or URL)")
    p.add_argument(
        "--style",
        action="append",
        required=True,
        help="style image, path or URL (repeat for a blend)",
    )
    p.add_argument("--style-weights", type=float, nargs="+", help="blend weight per --style")
    p.add_argument(
        "--mask",
        action=_MaskAction,
        default=[],
        help="greyscale mask image for the --style before it: white where that style applies "
        "(soft masks blend); with masks every --style needs one and each paints its own region "
        "instead of a blend; one --style with one --mask: that style only there, the rest "
        "keeps the content. A binary mask and its inverse (white/black swapped) give a "
        "{foreground, background} pair",
    )
    p.add_argument(
        "--output", "-o", required=True, help="output file (path or URL): .png .jpg .webp .tif"
    )
    p.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality (1-100)")
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON object on stdout: output, width, height, iterations, total_loss, "
        "content_loss, style_loss, seconds, device (on an error: exit_code and error)",
    )
    p.add_argument(
        "--bit-depth",
        type=int,
        default=8,
        choices=BIT_DEPTHS,
        help=f"8, or 16 for {'/'.join(BIT_DEPTH_16_FORMATS)}",
    )
    p.add_argument(
        "--save-every",
        type=int,
        default=0,
        help="also save the image every N steps next to the output",
    )
    p.add_argument("--preset", default="gatys2016", help=f"one of: {', '.join(PRESETS)}")
    for name, default, is_bool in _engine_fields():
        flag = "--" + name.replace("_", "-")
        if is_bool:
            p.add_argument(
                flag,
                default=None,
                nargs="?",
                const="true",
                metavar="BOOL",
                help=f"default from the preset ({default})",
            )
        else:
            p.add_argument(
                flag,
                default=None,
                metavar=name.split("_")[-1].upper(),
                help=_option_help(name, default),
            )
    return p


def main(
    argv: Sequence[str] | None = None,
    read_bytes: ReadBytes = storage.read_bytes,
    write_bytes: WriteBytes = _write_url,
) -> int:
    """``stylize image`` for a Python caller: :func:`run`, its errors reported as the
    command reports them (:func:`pipeline.shell.run_reported`: one line, and with ``--json``
    the object on stdout; exit codes 0, 2, 3, 130 and 143)."""
    args = list(sys.argv[1:] if argv is None else argv)
    ctx = Context("image", debug="--debug" in args)
    return run_reported(ctx, lambda: run(args, ctx, read_bytes, write_bytes))


def run(
    argv: Sequence[str],
    ctx: Context,
    read_bytes: ReadBytes = storage.read_bytes,
    write_bytes: WriteBytes = _write_url,
) -> int:
    """The command ``stylize image ARGV``: its exit code; errors raise (a
    :class:`~stylize.common.StylizeError` with its exit code, :class:`Interrupted` with the
    line to leave), for ``pipeline.cli.main`` to report; once the command line is parsed
    ``ctx.json`` says whether they also go to stdout as JSON. ``read_bytes(uri)`` reads URLs
    (content, styles, masks, weights) and ``write_bytes(uri, data)`` writes the output and
    snapshots: fsspec's (``s3://``, ``gs://``, ``pkg://`` ...) unless a caller passes its
    own."""
    args = build_parser().parse_args(argv)
    level = verbosity(args)
    ctx.json = args.json
    with logging_to_stderr(level, LOGGED), _signals_stop():
        try:
            return _run(args, _Files(read_bytes, write_bytes))
        except Interrupted as e:  # before or after the optimisation: nothing to keep
            if e.line is not None:
                raise
            raise Interrupted(e.signum, f"{e}; nothing was written") from None


@contextlib.contextmanager
def _signals_stop() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`~pipeline.errors.Interrupted` while the command runs
    (main thread only); the handlers before are put back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in saved:
        signal.signal(s, stop)
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def is_url(path: str) -> bool:
    return "://" in path


@dataclasses.dataclass(frozen=True)
class _Files:
    """Reads and atomic writes: local paths here, URLs through the caller's hooks."""

    read_url: ReadBytes
    write_url: WriteBytes

    def read(self, uri: str, what: str) -> bytes | str:
        """A local path as is (decode_image reads it), a URL's bytes."""
        if not is_url(uri):
            return uri
        try:
            return self.read_url(uri)
        except (OSError, ValueError, ImportError) as e:  # missing, refused, unknown scheme
            raise UsageError(f"{what} {uri}: cannot read ({one_line(e, 300)})") from None

    def check_writable(self, uri: str) -> None:
        """A local output's folder exists and is writable (found before any work). A URL is
        only written at the end."""
        if is_url(uri):
            return
        folder = os.path.dirname(os.path.abspath(uri))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise UsageError(f"--output: folder {folder} does not exist or is not writable")

    def write(self, uri: str, data: bytes) -> None:
        try:
            if is_url(uri):
                self.write_url(uri, data)
            else:
                write_atomic(uri, data)
        except (OSError, ValueError, ImportError) as e:  # storage gone, disk full, no s3fs
            raise OutputError(f"cannot write {uri}: {one_line(e, 300)}") from None


def _check_output(args: argparse.Namespace) -> str:
    """The output format from --output's extension, with --quality and --bit-depth checked
    against it (the allowed values are stylize.config's)."""
    from stylize.images import ImageError, format_from_path

    try:
        fmt = format_from_path(args.output)
    except ImageError as e:
        raise UsageError(f"--output: {e}") from None
    if not 1 <= args.quality <= 100:
        raise UsageError(f"--quality: 1 to 100, got {args.quality}")
    problem = bit_depth_problem(args.bit_depth, fmt)
    if problem:
        raise UsageError(f"--bit-depth: {problem}")
    return fmt


class _MaskAction(argparse.Action):
    """--mask: (index of the --style before it, mask) pairs; -1 when no --style precedes."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        seen = len(getattr(namespace, "style", None) or [])
        setattr(namespace, self.dest, [*getattr(namespace, self.dest, []), (seen - 1, values)])


def _check_masks(args: argparse.Namespace) -> list[str]:
    """The --mask of each --style (empty without masks); a usage error unless each --style
    is followed by exactly one --mask."""
    if not args.mask:
        return []
    owners = [i for i, _ in args.mask]
    if owners != list(range(len(args.style))):
        raise UsageError(
            f"--mask: {len(args.mask)} masks for {len(args.style)} --style images; "
            "give each --style one --mask, right after it"
        )
    if args.style_weights:
        raise UsageError("--style-weights blend styles; with --mask each style has its region")
    return [m for _, m in args.mask]


def _run(args: argparse.Namespace, files: _Files) -> int:
    from stylize.engine import Style, Stylizer
    from stylize.images import ImageError, decode_image, encode_image, to_tensor
    from stylize.masks import checked_mask
    from stylize.model import WeightsError

    names = {name for name, _, _ in _engine_fields()}
    overrides = {k: v for k, v in vars(args).items() if k in names and v is not None}
    cfg = resolve_config(args.preset, **overrides)
    if args.save_every > 0:  # snapshots are taken at progress callbacks
        cfg = cfg.replace(log_every=math.gcd(cfg.log_every, args.save_every))
    fmt = _check_output(args)
    files.check_writable(args.output)
    if args.style_weights and len(args.style_weights) != len(args.style):
        raise UsageError(
            f"--style-weights: {len(args.style_weights)} weights for "
            f"{len(args.style)} --style images"
        )
    if args.save_every < 0:
        raise UsageError("--save-every: must be >= 0")
    mask_uris = _check_masks(args)
    try:
        content = decode_image(files.read(args.content, "--content"), name=args.content)
        styles = tuple(
            to_tensor(decode_image(files.read(s, "--style"), name=s)) for s in args.style
        )
        masks = [decode_image(files.read(m, "--mask"), name=m) for m in mask_uris]
        if cfg.init not in ("noise", "content"):
            decode_image(cfg.init, name=f"--init {cfg.init}")
    except ImageError as e:
        raise UsageError(str(e)) from None
    try:
        engine = Stylizer(cfg, read_bytes=files.read_url)
    except WeightsError as e:
        raise UsageError(str(e)) from None
    log.debug(
        "engine: device %s, precision %s, weights %s (%s); options %s",
        engine.device,
        engine.precision,
        cfg.weights,
        engine.weights_hash,
        cfg.to_dict(),
    )
    pixels = engine.prepare_content(content, exact=True)  # one image: nothing to batch with
    style = Style("cli", styles, tuple(args.style_weights) if args.style_weights else None)
    try:  # each mask as a job's: the content's aspect, something to style, 0/1 labels read
        h, w = pixels.shape[-2:]
        regions = (
            [
                (Style(f"cli-{i}", (img,)), checked_mask(m, uri, (h, w), content.size))
                for i, (img, m, uri) in enumerate(zip(styles, masks, mask_uris, strict=True))
            ]
            if masks
            else []
        )
    except ImageError as e:
        raise UsageError(str(e)) from None
    progress = _Progress(cfg, args, fmt, files)
    t0 = time.monotonic()
    try:
        result = engine.stylize_batch(
            [pixels], [style], callback=progress, regions=[regions] if regions else None
        )[0]
    except Interrupted as e:
        _interrupted(args, e, progress, fmt, files)
    finally:
        progress.close()
    files.write(args.output, encode_image(result.image, fmt, args.quality, args.bit_depth))
    h, w = result.image.shape[-2:]
    summary = {
        "command": "image",
        "exit_code": EXIT_OK,
        "output": args.output,
        "width": w,
        "height": h,
        "iterations": result.iterations,
        "total_loss": result.total_loss,
        "content_loss": result.content_loss,
        "style_loss": result.style_loss,
        "seconds": round(time.monotonic() - t0, 3),
        "device": str(engine.device),
    }
    if args.json:
        print(json.dumps(summary), flush=True)
    else:
        print(
            f"wrote {args.output} ({w}x{h}, {result.iterations} iterations, "
            f"loss {result.total_loss:.4g}: content {result.content_loss:.4g}, "
            f"style {result.style_loss:.4g})"
        )
    return EXIT_OK


def interrupted_path(output: str) -> str:
    """``out.png`` -> ``out.interrupted.png`` beside it (a path or a URL)."""
    root, ext = os.path.splitext(output)
    return f"{root}.interrupted{ext}"


def _interrupted(
    args: argparse.Namespace, e: Interrupted, progress: _Progress, fmt: str, files: _Files
) -> NoReturn:
    """Ctrl-C (or SIGTERM) during the optimisation: the last iterate the progress saw is
    written next to the output, named so; the line to leave says where."""
    from stylize.images import encode_image

    last, step = progress.last, progress.done
    if last is None:
        raise Interrupted(e.signum, f"{e} before the first step; nothing was written") from None
    path = interrupted_path(args.output)
    files.write(path, encode_image(last, fmt, args.quality, args.bit_depth))
    raise Interrupted(
        e.signum, f"{e} at step {step} of {progress.total}; the last iterate is in {path}"
    ) from None


def snapshot_path(output: str, step: int) -> str:
    """``out.png`` -> ``out_00020.png`` beside it (a path or a URL)."""
    root, ext = os.path.splitext(output)
    return f"{root}_{step:05d}{ext}"


class _Progress:
    """A tqdm bar over all steps of all scales (not with -q), and --save-every snapshots."""

    def __init__(self, cfg: StyleConfig, args: argparse.Namespace, fmt: str, files: _Files):
        from tqdm import tqdm

        self.every, self.output, self.fmt, self.files = args.save_every, args.output, fmt, files
        steps = [n for _, n in cfg.schedule]
        self.before = [sum(steps[:i]) for i in range(len(steps))]  # steps of earlier scales
        self.bar = tqdm(
            total=sum(steps),
            unit="step",
            disable=not log.isEnabledFor(logging.INFO),
            dynamic_ncols=True,
            file=sys.stderr,
        )
        self.done = 0
        self.saved = 0
        self.total = sum(steps)
        self.last: torch.Tensor | None = None  # the latest iterate, on the CPU (Ctrl-C keeps it)

    def __call__(self, info: Any) -> None:  # stylize.engine.StepInfo
        pos = self.before[info.scale] + info.step
        self.bar.update(pos - self.done)
        self.done = pos
        self.bar.set_postfix(loss=f"{info.losses[0]:.4g}", scale=f"{info.scale + 1}/{info.scales}")
        self.last = info.pixels[0].detach().clamp(0, 255).cpu()
        if self.every and pos // self.every > self.saved:
            from stylize.images import encode_image

            self.saved = pos // self.every
            self.files.write(snapshot_path(self.output, pos), encode_image(self.last, self.fmt))

    def close(self) -> None:
        self.bar.close()
