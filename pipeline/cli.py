"""The ``stylize`` command.

    stylize run CONFIG.yaml [--set key.sub=value ...] [--mode resume|overwrite] [--json]
    stylize grid --contents URI... --styles URI... --output URL [options] [--json]
    stylize status OUTPUT [--json]
    stylize schema         the JSON Schema of a job file (configs/job.schema.json)
    stylize image ...      one image (pipeline.image_cmd)
    stylize bench ...      throughput figures (pipeline.bench_cmd)
    stylize quality ...    quality figures (pipeline.quality_cmd)
    stylize bench-pipeline the driver at scale, stand-in workers (pipeline.bench)
    stylize --version | -V

Every command takes ``-v`` (debug lines, Ray's own warnings), ``-q`` (warnings and errors
only) and ``--debug`` (tracebacks, for developers), before or after its name. stdout carries
the result (the summary, or with ``--json`` one JSON object); stderr the progress, notices and
errors, through ``logging`` (pipeline.shell.logging_to_stderr).

Exit codes (stylize.common, pipeline.errors): 0 every item ok; 1 the job ran and some items
failed; 2 usage or configuration error, found before any work; 3 infrastructure failure
during the run (resumable); 130/143 interrupted. Errors are one line on stderr, never a
traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from typing import IO, Any

from pipeline import api, manifest
from pipeline.errors import RESUME_HINT, UsageError, install_signal_handlers
from pipeline.jobconfig import (
    MODES,
    JobConfig,
    apply_overrides,
    job_from_mapping,
    job_schema,
)
from pipeline.redact import secret_values
from pipeline.runfolder import RunFolder
from pipeline.shell import (
    LOGGED,
    Context,
    Parser,
    delegate,
    logging_to_stderr,
    print_error,
    print_json,
    run_reported,
    verbosity,
)
from pipeline.status import NoRunError, print_status, summarize, to_json
from stylize.common import DISTRIBUTION, EXIT_OK, EXIT_USAGE

log = logging.getLogger("pipeline.cli")  # not __name__: "__main__" under python -m

USAGE = """usage: stylize COMMAND [options] ...

commands:
  plan CONFIG.yaml [--set KEY=VALUE ...] [--workers N] [--calibrate] [--json]
                  what a job would do and cost, before anything is spent
  run CONFIG.yaml [--set KEY=VALUE ...] [--mode resume|overwrite] [--limit N]
                  [--takeover] [--json]
                  run a job described in YAML (e.g. configs/demo.yaml)
  grid --contents URI... --styles URI... --output URL [--preset P --size N ...]
                  every content under every style, and a labelled contact sheet
  status OUTPUT [--json]
                  counts, failures, throughput and what is left in a run folder
  schema          the JSON Schema of a job file (editors complete and check YAML with it)
  image ...       stylize one image (stylize image --help)
  bench ...       measure throughput (stylize bench --help)
  quality OUTPUT [--device D] [--limit N] [--json]
                  a run folder's quality figures recomputed (medians per style)
  quality ...     no folder: judged losses, speckle, borders, figures on the samples (--help)
  bench-pipeline  the driver at scale with stand-in workers (--help)
  report OUTPUT [--open] [--storage-option KEY=VALUE ...]
                  the HTML report of a run folder (OUTPUT/report/index.html)

options (before or after the command):
  -V, --version   the version of stylize, Ray, PyTorch and Python
  -v, --verbose   debug lines and Ray's own warnings on stderr
  -q, --quiet     only warnings and errors on stderr (no progress)
  --debug         show Python tracebacks
  --json          (run, plan, grid, status) the summary as one JSON object on stdout

exit codes: 0 all items ok, 1 some items failed, 2 usage or configuration error,
            3 infrastructure failure during the run (resumable), 130/143 interrupted"""

_OUTPUT_FLAG = re.compile(r"^(-v+|--verbose|-q|--quiet|--debug)$")


def version() -> str:
    """``stylize 0.1.0 (ray ..., torch ..., python ...)``: read from the installed
    distributions' metadata, without importing them."""

    def v(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return (
        f"stylize {v(DISTRIBUTION)} (ray {v('ray')}, torch {v('torch')}, "
        f"python {platform.python_version()})"
    )


# ---------------------------------------------------------------------------------- parsers


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json",
        action="store_true",
        help="the summary as one JSON object on stdout (the text goes to stderr)",
    )


def _run_parser() -> argparse.ArgumentParser:
    p = Parser(prog="stylize run", description="Run a stylization job described in YAML.")
    p.add_argument("config", help="job file (YAML)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key, e.g. --set stylize.size=256 --set ray.num_workers=2",
    )
    p.add_argument("--mode", choices=MODES, help="resume (default) or overwrite")
    p.add_argument(
        "--limit",
        type=int,
        metavar="N",
        help="a trial: only N items, the same ones every time, into the same output "
        "(the full run later resumes them); also the job key limit",
    )
    _takeover_flag(p)
    _json_flag(p)
    return p


def _takeover_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--takeover",
        action="store_true",
        help="take the output folder from another driver that is gone (its lease "
        "is taken over by itself once its heartbeat is lease_timeout_s old)",
    )


def _grid_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="stylize grid",
        description="Stylize every content under every style; write a contact sheet.",
    )
    p.add_argument(
        "--contents",
        nargs="+",
        required=True,
        help="content images, or one folder / glob / .txt list",
    )
    p.add_argument("--styles", nargs="+", required=True, help="style images, or one folder")
    p.add_argument("--output", required=True, help="output folder (path or URL)")
    p.add_argument("--preset", help="engine preset (gatys2016, neural-style, fast, quality)")
    p.add_argument("--size", type=int, help="longest side of the outputs, pixels")
    p.add_argument("--iterations", type=int, help="optimizer steps")
    p.add_argument("--cell-size", type=int, default=256, help="grid thumbnail size, pixels")
    p.add_argument("--rows-per-page", type=int, default=8, help="contents per grid page")
    p.add_argument("--cols-per-page", type=int, default=8, help="styles per grid page")
    p.add_argument("--workers", help="number of Ray workers (default: auto)")
    p.add_argument("--format", default="png", help="output format: png jpeg webp tiff")
    p.add_argument("--mode", choices=MODES, default="resume")
    _takeover_flag(p)
    p.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="OPTION=[V1,V2..]",
        help="sweep an engine option, e.g. --sweep style_weight=[1e3,1e4] (repeat "
        "for a second axis): the grid is laid out on the sweep's axes",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other job key, e.g. --set stylize.style_weight=1e4",
    )
    _json_flag(p)
    return p


def _plan_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="stylize plan",
        description=(
            "What a job would do and cost, without starting Ray or writing anything: contents, "
            "styles, items, how many are done, image shapes, memory, an estimate of GPU-hours."
        ),
    )
    p.add_argument("config", help="job file (YAML)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key, as for stylize run",
    )
    p.add_argument("--limit", type=int, metavar="N", help="plan a trial of N items")
    p.add_argument("--workers", type=int, default=1, help="workers (GPUs) for the wall time")
    p.add_argument(
        "--device",
        choices=("h200", "h100", "cpu"),
        help="whose measured costs (default: h200, or cpu for stylize.device: cpu)",
    )
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="time a few iterations on this machine instead (loads VGG-19)",
    )
    _json_flag(p)
    return p


def _plan(args: argparse.Namespace, ctx: Context) -> int:
    from pipeline.plan import calibrate, make_plan, print_plan

    job = api.load(args.config, args.overrides, limit=args.limit)
    ctx.secrets = secret_values(job.storage_options)
    side = min(job.stylize.size, 256)
    measured = (side, calibrate(job, side)[1]) if args.calibrate else None
    plan = make_plan(job, workers=args.workers, device=args.device, calibrated_ms=measured)
    if args.json:
        _print_json(plan, ctx)
    else:
        print_plan(plan, sys.stdout)
    return EXIT_OK


def _status_parser() -> argparse.ArgumentParser:
    p = Parser(prog="stylize status", description="Summarise a run folder from its manifests.")
    p.add_argument("output", help="the job's output folder (path or URL)")
    p.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fsspec option, e.g. endpoint_url=http://127.0.0.1:9000",
    )
    _json_flag(p)
    return p


def _schema_parser() -> argparse.ArgumentParser:
    return Parser(
        prog="stylize schema",
        description=(
            "Print the JSON Schema of a job file (configs/job.schema.json is this output; the "
            "shipped configs name it in their first line, for editors)."
        ),
    )


# --------------------------------------------------------------------------------- commands


def _grid_job(args: argparse.Namespace):
    stylize: dict[str, Any] = {}
    for key in ("preset", "size", "iterations"):
        if getattr(args, key) is not None:
            stylize[key] = getattr(args, key)
    raw: dict[str, Any] = {
        "input": args.contents[0] if len(args.contents) == 1 else list(args.contents),
        "styles": args.styles[0] if len(args.styles) == 1 else list(args.styles),
        "output": args.output,
        "stylize": stylize,
        "mode": args.mode,
        "output_format": args.format,
        "grid": {
            "cell_size": args.cell_size,
            "rows_per_page": args.rows_per_page,
            "cols_per_page": args.cols_per_page,
        },
    }
    if args.workers is not None:
        raw["ray"] = {"num_workers": args.workers}
    sweeps = [f"sweep.{s}" for s in args.sweep]
    return job_from_mapping(apply_overrides(raw, [*sweeps, *args.overrides]))


def _run(args: argparse.Namespace, ctx: Context) -> int:
    job = api.load(args.config, args.overrides, mode=args.mode, limit=args.limit)
    return _run_job(job, args, ctx)


def _grid(args: argparse.Namespace, ctx: Context) -> int:
    return _run_job(_grid_job(args), args, ctx)


def _run_job(job: JobConfig, args: argparse.Namespace, ctx: Context) -> int:
    """``pipeline.run`` (:mod:`pipeline.api`), with the command's streams: the summary on
    stdout (on stderr with ``--json``, which prints one object instead)."""
    ctx.secrets = secret_values(job.storage_options)
    log.debug("%s", version())
    log.debug("job: %s", json.dumps(job.to_dict(), sort_keys=True, default=str))
    with results_only_on_stdout() as out:
        if args.json:  # the text summary is for people: stderr, or nowhere with -q
            stream = None if args.quiet else sys.stderr
        else:
            stream = out
        result = api.run(job, takeover=args.takeover, stream=stream)
    if args.json:
        _print_json({"command": ctx.command, **run_json(result, job.storage_options)}, ctx)
    return result.exit_code


@contextlib.contextmanager
def results_only_on_stdout() -> Iterator[IO[str]]:
    """While a job runs, stdout carries nothing but its results: whatever else would write
    there (Ray's worker and raylet lines, a library's print, C code writing to descriptor 1)
    goes to stderr. Yields the stream that reaches the real stdout."""
    out = sys.stdout
    out.flush()
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):  # a stream in memory (tests): no descriptor
        fd = None
    saved = None
    if fd == 1:
        saved = os.dup(1)
        os.dup2(2, 1)
        out = open(
            saved,
            "w",
            encoding=sys.stdout.encoding,
            errors="backslashreplace",
            buffering=1,
            closefd=False,
        )
    before, sys.stdout = sys.stdout, sys.stderr
    try:
        yield out
    finally:
        sys.stdout = before
        if saved is not None:
            out.flush()
            sys.stderr.flush()
            os.dup2(saved, 1)
            os.close(saved)


def run_json(result, options) -> dict[str, Any]:
    """The ``stylize run --json`` object, from the JobResult and the run.json just written:
    ``images_per_hour`` and ``span_s`` are the run's throughput (manifest.throughput, the
    figure status and the report show), ``wall_s`` and ``command_images_per_hour`` the last
    stylize run that computed items (this one, unless it computed nothing)."""
    run_info = RunFolder(result.output).run_json
    run = manifest.read_json(run_info, options) or {}
    timings = run.get("timings") or {}
    total = sum(result.counts.values())
    return {
        "exit_code": result.exit_code,
        "output": result.output,
        "total": total,
        "counts": dict(sorted(result.counts.items())),
        "failed": total - result.counts.get("ok", 0),
        "computed": result.computed,
        "resumed": total - result.computed,
        "images_per_hour": timings.get("images_per_hour"),
        "span_s": timings.get("span_s"),
        "wall_s": timings.get("wall_s"),
        "command_images_per_hour": timings.get("command_images_per_hour"),
        "manifest": result.manifest_uri,
        "run_info": run_info,
        "grids": list(result.grid_uris),
        "report": result.report_uri,
    }


def _status(args: argparse.Namespace, ctx: Context) -> int:
    options = apply_overrides({}, args.storage_option)
    ctx.secrets = secret_values(options)
    try:
        info = summarize(args.output, options)
    except NoRunError as e:
        raise UsageError(str(e)) from None
    if args.json:
        _print_json(to_json(info), ctx)
    else:
        print_status(info, sys.stdout)
    return EXIT_OK


def _schema(args: argparse.Namespace, ctx: Context) -> int:
    print(json.dumps(job_schema(), indent=2))
    return EXIT_OK


def _print_json(obj: dict[str, Any], ctx: Context) -> None:
    print_json(obj, ctx.secrets)


_PARSERS = {
    "run": _run_parser,
    "plan": _plan_parser,
    "grid": _grid_parser,
    "status": _status_parser,
    "schema": _schema_parser,
}
_HANDLERS: dict[str, Callable[[argparse.Namespace, Context], int]] = {
    "run": _run,
    "plan": _plan,
    "grid": _grid,
    "status": _status,
    "schema": _schema,
}
_COMMANDS = (*_PARSERS, "image")  # image: pipeline.image_cmd parses its own (and its --json)
_DELEGATED = ("bench", "quality", "bench-pipeline", "report")  # parsers live with their code
_JSON_COMMANDS = ("run", "plan", "grid", "status")


def _delegated(command: str) -> Callable[[list[str]], int]:
    if command == "bench":
        from pipeline.bench_cmd import main as bench_main

        return bench_main
    if command == "quality":  # a run folder's figures, or the engine's check on samples
        from pipeline.quality_cmd import main as quality_main

        return quality_main
    if command == "report":
        from pipeline.report import main as report_main

        return report_main
    from pipeline.bench import main as bench_pipeline_main

    return bench_pipeline_main


# ------------------------------------------------------------------------------------- main


def _split(argv: list[str]) -> tuple[list[str], str | None, list[str]]:
    """(options before the command, the command, the rest)."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 1
    return argv[:i], (argv[i] if i < len(argv) else None), argv[i + 1 :]


def _before_the_command(lead: list[str], command: str | None) -> int | None:
    """``--version``, ``--help``, or a bad or missing command: the exit code; else None."""
    if any(a in ("-V", "--version") for a in lead):
        print(version())
        return EXIT_OK
    if any(a in ("-h", "--help") for a in lead) or command == "help":
        print(USAGE)
        return EXIT_OK
    bad = [a for a in lead if not _OUTPUT_FLAG.match(a)]
    if command is None or bad or command not in _COMMANDS + _DELEGATED:
        what = (
            f"unknown option {bad[0]!r}"
            if bad
            else "no command given"
            if command is None
            else f"unknown command {command!r}; one of {', '.join(_COMMANDS + _DELEGATED)}"
        )
        print_error("stylize", f"{what} (stylize --help)")
        if command is None:
            print(USAGE, file=sys.stderr)
        return EXIT_USAGE
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """``stylize ARGV``: the exit code. Every command's errors come up to the one ``except``
    (:func:`pipeline.shell.run_reported`) and leave one line each."""
    argv = list(sys.argv[1:] if argv is None else argv)
    lead, command, rest = _split(argv)
    done = _before_the_command(lead, command)
    if done is not None or command is None:
        return EXIT_USAGE if done is None else done
    rest = lead + rest  # -v/-q/--debug before the command count as the command's own
    ctx = Context(
        command,
        json_out="--json" in rest and command in _JSON_COMMANDS,
        resume=f"; {RESUME_HINT}" if command in ("run", "grid") else "",
        debug="--debug" in rest,
    )
    return run_reported(ctx, lambda: _dispatch(command, rest, ctx))


def _dispatch(command: str, rest: list[str], ctx: Context) -> int:
    """Run ``command`` with its arguments ``rest``; errors go up to :func:`main`."""
    if command == "image":  # its own parser, --json and Ctrl-C (pipeline.image_cmd)
        from pipeline.image_cmd import run as image_run

        return image_run(rest, ctx)
    if command in _DELEGATED:
        return delegate(f"stylize {command}", _delegated(command), rest)
    make_parser, run_command = _PARSERS[command], _HANDLERS[command]
    args = make_parser().parse_args(rest)
    level = verbosity(args)
    if level > 0:  # every worker's lines, not "[repeated 3x across cluster]"
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    with logging_to_stderr(level, LOGGED):
        if command in ("run", "grid"):
            install_signal_handlers()
        return run_command(args, ctx)


if __name__ == "__main__":
    sys.exit(main())
