"""The ``stylize`` command.

    stylize run CONFIG.yaml [--set key.sub=value ...] [--mode resume|overwrite]
    stylize grid --contents URI... --styles URI... --output URL [options]
    stylize status OUTPUT
    stylize image ...      one image (stylize.cli)
    stylize bench ...      throughput figures (stylize.bench)
    stylize quality ...    quality figures (stylize.quality)
    stylize bench-pipeline the driver at scale, stand-in workers (pipeline.bench)

Exit codes (pipeline.errors): 0 every item ok; 1 the job ran and some items failed (summary
printed); 2 usage or configuration error, found before any work; 3 infrastructure failure
during the run (resumable); 130/143 interrupted. Errors are one line on stderr, never a
traceback (``--debug`` re-raises, for developers).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import traceback
from typing import Any, Sequence

from pipeline import errors
from pipeline.errors import (EXIT_INFRA, EXIT_USAGE, RESUME_HINT, InfraError, Interrupted,
                             install_signal_handlers)
from pipeline.jobconfig import MODES, JobConfigError, apply_overrides, job_from_mapping, load_job
from pipeline.redact import redact_text
from pipeline.sources import SourceError
from pipeline.storage import StorageError, StorageUnavailable

USAGE = """usage: stylize COMMAND ...

commands:
  run CONFIG.yaml [--set KEY=VALUE ...] [--mode resume|overwrite]
                  run a job described in YAML (e.g. configs/demo.yaml)
  grid --contents URI... --styles URI... --output URL [--preset P --size N ...]
                  every content under every style, and a labelled contact sheet
  status OUTPUT   counts, failures, throughput and what is left in a run folder
  image ...       stylize one image (stylize image --help)
  bench ...       measure throughput (stylize bench --help)
  quality ...     judged losses, colour speckle and borders on the samples (--help)
  bench-pipeline  the driver at scale with stand-in workers (--help)

options: --debug (before the command) shows Python tracebacks

exit codes: 0 all items ok, 1 some items failed, 2 usage or configuration error,
            3 infrastructure failure during the run (resumable), 130/143 interrupted"""



class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block, no traceback
        raise UsageError(f"{self.prog}: {message}")


def _run_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="stylize run", description="Run a stylization job described in YAML.")
    p.add_argument("config", help="job file (YAML)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key, e.g. --set stylize.size=256 --set ray.num_workers=2")
    p.add_argument("--mode", choices=MODES, help="resume (default) or overwrite")
    return p


def _grid_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="stylize grid",
                description="Stylize every content under every style; write a contact sheet.")
    p.add_argument("--contents", nargs="+", required=True,
                   help="content images, or one folder / glob / .txt list")
    p.add_argument("--styles", nargs="+", required=True, help="style images, or one folder")
    p.add_argument("--output", required=True, help="output folder (path or URL)")
    p.add_argument("--preset", help="engine preset (gatys2016, neural-style, fast)")
    p.add_argument("--size", type=int, help="longest side of the outputs, pixels")
    p.add_argument("--iterations", type=int, help="optimizer steps")
    p.add_argument("--cell-size", type=int, default=256, help="grid thumbnail size, pixels")
    p.add_argument("--rows-per-page", type=int, default=8, help="contents per grid page")
    p.add_argument("--cols-per-page", type=int, default=8, help="styles per grid page")
    p.add_argument("--workers", help="number of Ray workers (default: auto)")
    p.add_argument("--format", default="png", help="output format: png jpeg webp tiff")
    p.add_argument("--mode", choices=MODES, default="resume")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any other job key, e.g. --set stylize.style_weight=1e4")
    return p


def _status_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="stylize status", description="Summarise a run folder from its manifests.")
    p.add_argument("output", help="the job's output folder (path or URL)")
    p.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                   help="fsspec option, e.g. endpoint_url=http://127.0.0.1:9000")
    return p


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
        "grid": {"cell_size": args.cell_size, "rows_per_page": args.rows_per_page,
                 "cols_per_page": args.cols_per_page},
    }
    if args.workers is not None:
        raw["ray"] = {"num_workers": args.workers}
    return job_from_mapping(apply_overrides(raw, args.overrides))


def _status(args: argparse.Namespace) -> int:
    from pipeline.status import NoRunError, print_status, summarize

    options = apply_overrides({}, args.storage_option)
    try:
        info = summarize(args.output, options)
    except NoRunError as e:
        raise UsageError(str(e)) from None
    print_status(info, sys.stdout)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv[:1]
    argv = argv[1:] if debug else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else EXIT_USAGE
    command, rest = argv[0], argv[1:]
    if command == "image":
        from pipeline.storage import read_bytes
        from stylize.cli import image_main

        return image_main(rest, read_bytes=read_bytes)  # --weights s3://... through fsspec
    if command == "bench":
        from stylize.bench import main as bench_main

        return bench_main(rest)
    if command == "quality":
        from stylize.quality import main as quality_main

        return quality_main(rest)
    if command == "bench-pipeline":
        from pipeline.bench import main as bench_pipeline_main

        return bench_pipeline_main(rest)
    secrets: list[str] = []  # values to mask in any message (from the job's storage_options)

    def fail(code: int, text: str) -> int:
        print(f"stylize {command}: {redact_text(text, secrets)}", file=sys.stderr)
        return code

    try:
        install_signal_handlers()
        from pipeline.driver import run_job  # imports torch: not needed for --help
        from pipeline.scheduler import WorkerStartError

        if command == "run":
            args = _run_parser().parse_args(rest)
            job = load_job(args.config, args.overrides, args.mode)
            secrets = _secrets(job)
            return run_job(job).exit_code
        if command == "grid":
            job = _grid_job(_grid_parser().parse_args(rest))
            secrets = _secrets(job)
            return run_job(job).exit_code
        if command == "status":
            return _status(_status_parser().parse_args(rest))
        raise UsageError(f"stylize: unknown command {command!r}; one of run, grid, status, "
                         "image, bench, quality, bench-pipeline (stylize --help)")
    except UsageError as e:
        print(redact_text(str(e), secrets), file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as e:  # --help of a subcommand
        return int(e.code or 0)
    except Interrupted as e:
        return fail(e.exit_code, f"interrupted ({e}); finished items are kept; {RESUME_HINT}")
    except (InfraError, StorageUnavailable) as e:
        if debug:
            raise
        return fail(EXIT_INFRA, f"error: {e}; {RESUME_HINT} once it is back")
    except (JobConfigError, SourceError, StorageError, WorkerStartError) as e:
        if debug:
            raise
        return fail(EXIT_USAGE, f"error: {e}")
    except Exception as e:  # noqa: BLE001 - a bug or an unforeseen failure: one line + a log
        if debug:
            raise
        if errors.received is not None:  # a signal that C code wrapped in another exception
            return fail(128 + errors.received, f"interrupted; finished items are kept; "
                                               f"{RESUME_HINT}")
        log = _write_traceback(e, secrets)
        return fail(EXIT_INFRA, f"unexpected error: {type(e).__name__}: "
                                f"{' '.join(str(e).split())[:300]} (traceback in {log}); "
                                f"{RESUME_HINT}")


def _secrets(job) -> list[str]:
    from pipeline.redact import secret_values

    return secret_values(job.storage_options)


def _write_traceback(e: BaseException, secrets: Sequence[str]) -> str:
    fd, path = tempfile.mkstemp(prefix="stylize-error-", suffix=".log")
    with os.fdopen(fd, "w") as f:
        f.write(redact_text("".join(traceback.format_exception(e)), secrets))
    return path


if __name__ == "__main__":
    sys.exit(main())
