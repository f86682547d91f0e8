"""``stylize bench``: the engine's throughput against the plain loop, in one run
(:func:`stylize.bench.bench` measures; this module parses and prints).

Prints one ``key value`` line per figure, or with ``--json`` one JSON line; the progress
(warm-up, timings) goes to stderr as ``bench: ...`` lines. A bad command line is a
:class:`~pipeline.errors.UsageError` (exit 2, one line), reported with every other error by
``pipeline.cli.main``. ``python -m pipeline.bench_cmd`` runs the same command, its errors
reported alike (:func:`pipeline.shell.run_alone`), without loading the pipeline's libraries
(Ray, fsspec, pyarrow): infra/gpu_check.py does.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from pipeline.shell import Parser, run_alone
from stylize.bench import BenchOptions, bench
from stylize.config import PRECISIONS, PRESETS

_DEFAULTS = BenchOptions()
_OUTPUT_OPTIONS = ("verbose", "quiet", "debug")  # every command's (pipeline.shell.Parser)


def build_parser() -> argparse.ArgumentParser:
    """The options of ``stylize bench``; the defaults are :class:`BenchOptions`'."""
    d = _DEFAULTS
    p = Parser(
        prog="stylize bench",
        description="Throughput of the engine against the plain loop, in one run.",
    )
    p.add_argument(
        "--images", type=int, default=d.images, help="number of images (bundled, cycled)"
    )
    p.add_argument("--size", type=int, default=d.size, help="images are size x size")
    p.add_argument("--iterations", type=int, default=d.iterations)
    p.add_argument("--batch", type=int, default=d.batch, help="batch size; 0 = from device memory")
    p.add_argument("--precision", default=d.precision, choices=PRECISIONS)
    p.add_argument("--device", default=d.device)
    p.add_argument("--preset", default=d.preset, choices=tuple(PRESETS))
    p.add_argument("--init", default=d.init, help="noise | content (default: content)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network")
    p.add_argument(
        "--repeats", type=int, default=d.repeats, help="timed runs; the median is reported"
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=d.warmup,
        metavar="N",
        help="iterations of the untimed warm-up run (compilation happens there)",
    )
    p.add_argument(
        "--baseline-images",
        type=int,
        default=d.baseline_images,
        metavar="N",
        help="run the baseline on the first N images only (default: all; 0: skip "
        "it). Losses are compared over those N",
    )
    p.add_argument(
        "--profile",
        type=int,
        default=d.profile,
        metavar="K",
        help="then profile K steps of one batch: time per phase of a step, the "
        "device's busy share, the top kernels (default 0: no profile)",
    )
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    return p


def parse_options(argv: Sequence[str] | None = None) -> tuple[BenchOptions, bool]:
    """``stylize bench``'s command line as (the bench's options, ``--json``); a bad one is a
    :class:`~pipeline.errors.UsageError`."""
    args = vars(build_parser().parse_args(argv))
    as_json = args.pop("json")
    for name in _OUTPUT_OPTIONS:  # what stderr shows: the shell's, not the bench's
        del args[name]
    return BenchOptions(**args), as_json


def _progress(line: str) -> None:
    print(f"bench: {line}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``stylize bench ARGV``: the figures on stdout, exit code 0; errors raise (a
    :class:`~stylize.common.StylizeError` with its exit code) for the caller to report."""
    opts, as_json = parse_options(argv)
    result = bench(opts, progress=_progress)
    if as_json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:28s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(run_alone("bench", main))
