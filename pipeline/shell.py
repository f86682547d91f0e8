"""What every ``stylize`` command shares: its argument parser (a bad command line is a
:class:`~pipeline.errors.UsageError`, one line), ``-v``/``-q``/``--debug``, where log lines
go (stderr, as ``stylize: message``) and the one line a failed command leaves
(:func:`run_reported`: the one ``except`` that ``pipeline.cli.main`` runs every command
under, and a command called on its own, ``python -m pipeline.bench_cmd`` or
``pipeline.image_cmd.main``, too).

The engine (``stylize/``) only raises and logs; this module alone decides what reaches the
terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn, TextIO

from pipeline import errors
from pipeline.errors import Interrupted, UsageError
from pipeline.redact import redact_text
from stylize.common import EXIT_INFRA, StylizeError, escape_controls, one_line

LOGGED = ("stylize", "pipeline")  # the packages whose lines -v/-q show or hide


class Parser(argparse.ArgumentParser):
    """The argument parser of every ``stylize`` command: a bad command line raises
    :class:`UsageError` (one line, no usage block), and ``-v``, ``-q`` and ``--debug`` are
    options of every command."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        add_output_options(self)

    def error(self, message: str) -> NoReturn:  # argparse's hook
        raise UsageError(message)


def add_output_options(p: argparse.ArgumentParser) -> None:
    """``-v``, ``-q`` and ``--debug``: what the command says on stderr."""
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more on stderr: debug lines (and for jobs, Ray's own warnings)",
    )
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="only warnings and errors on stderr: no progress or notices",
    )
    p.add_argument("--debug", action="store_true", help="show Python tracebacks")


def verbosity(args: argparse.Namespace) -> int:
    """-1 with ``-q``, else the number of ``-v``."""
    if args.quiet and args.verbose:
        raise UsageError("-q/--quiet and -v/--verbose: choose one")
    return -1 if args.quiet else int(args.verbose)


class _Stderr(logging.StreamHandler):
    """A handler on whatever ``sys.stderr`` is when a record comes (tests swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


class _Format(logging.Formatter):
    """``stylize: message``; warnings and errors say so."""

    def format(self, record: logging.LogRecord) -> str:
        # the message on one line of its own whatever a name in it holds; a traceback (-v,
        # --debug) keeps its lines
        text = escape_controls(record.getMessage())
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text = f"{text}\n{record.exc_text}"
        if record.levelno >= logging.WARNING:
            return f"stylize: {record.levelname.lower()}: {text}"
        return f"stylize: {text}"


@contextlib.contextmanager
def logging_to_stderr(level: int, packages: Sequence[str] = ("stylize",)) -> Iterator[None]:
    """While a command runs, the log lines of ``packages`` (and other libraries' warnings) go
    to stderr as ``stylize: message``. ``level``: -1 (``-q``) warnings and errors; 0 progress
    and notices too; 1 or more (``-v``) debug lines. Library code only logs; this is the one
    place that decides where lines go. Undone on exit (tests call commands in-process)."""
    handler = _Stderr()
    handler.setFormatter(_Format("%(message)s"))
    loggers = [logging.getLogger(name) for name in packages]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel({-1: logging.WARNING, 0: logging.INFO}.get(level, logging.DEBUG))
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        for lg, was in zip(loggers, before):
            lg.setLevel(was)


def print_error(prog: str, message: str, kind: str = "error") -> None:
    """The one line a failed command leaves on stderr (not through logging: ``-q`` keeps
    it)."""
    print(f"{prog}: {kind}: {escape_controls(message)}", file=sys.stderr)


def print_json(obj: dict[str, Any], secrets: Sequence[str] = ()) -> None:
    """One JSON object on one line of stdout, ``secrets`` masked."""
    print(redact_text(json.dumps(obj, default=str), secrets), flush=True)


def delegate(
    prog: str, main: Callable[[list[str]], int], argv: list[str], packages: Sequence[str] = LOGGED
) -> int:
    """Run a command whose parser lives with its code (``main(argv)``): ``-v``, ``-q`` and
    ``--debug`` (which may come before the command's name) taken off ``argv`` first, and
    the log lines of ``packages`` on stderr at that level while it runs."""
    opts, rest = Parser(prog=prog, add_help=False).parse_known_args(argv)
    with logging_to_stderr(verbosity(opts), packages):
        return main(rest)


class Context:
    """What the lines of a failed command need to know of it: its name, the secrets to mask
    (found on the way), whether stdout takes JSON (the command may say so once its command
    line is parsed), how to end an interrupted run's line, whether to show tracebacks."""

    def __init__(
        self, command: str, *, json_out: bool = False, resume: str = "", debug: bool = False
    ):
        self.command = command
        self.prog = f"stylize {command}"
        self.secrets: list[str] = []  # values to mask (from the job's storage_options)
        self.json = json_out
        self.resume = resume  # "" or "; run the same command to resume"
        self.debug = debug  # --debug: our errors (but usage errors) and bugs raise

    def fail(self, code: int, text: str, kind: str = "error") -> int:
        """``code``, after ``text`` on stderr (a job file's problems one line each) and, with
        JSON on stdout, the object that says the same."""
        lines = _problem_lines(redact_text(text, self.secrets))
        for line in lines:
            print_error(self.prog, line, kind)
        if self.json:
            print_json(
                {"command": self.command, "exit_code": code, kind: "\n".join(lines)}, self.secrets
            )
        return code


def run_reported(ctx: Context, body: Callable[[], int]) -> int:
    """``body()``'s exit code, or the exit code of what it raised after one line on stderr
    (:meth:`Context.fail`): a :class:`~stylize.common.StylizeError` its own (every error of
    ours), :class:`~pipeline.errors.Interrupted` 128 + the signal, anything else 3 with its
    traceback in a file. ``--help`` (SystemExit) its code."""
    resume = ctx.resume
    try:
        return body()
    except SystemExit as e:  # --help of a subcommand
        return int(e.code or 0)
    except Interrupted as e:
        line = e.line if e.line is not None else f"{e}; finished items are kept{resume}"
        return ctx.fail(e.exit_code, line, "interrupted")
    except StylizeError as e:  # every error of ours: its exit code, one line
        if ctx.debug and not isinstance(e, UsageError):
            raise
        hint = f"{resume} once it is back" if e.resumable else ""
        return ctx.fail(e.exit_code, f"{e}{hint}")
    except Exception as e:  # noqa: BLE001 - a bug or an unforeseen failure: one line + a log
        if ctx.debug:
            raise
        if errors.received is not None:  # a signal that C code wrapped in another exception
            return ctx.fail(
                128 + errors.received, f"finished items are kept{resume}", "interrupted"
            )
        path = _write_traceback(e, ctx.secrets)
        return ctx.fail(
            EXIT_INFRA,
            f"unexpected {type(e).__name__}: {one_line(e, 300)} (traceback in {path}){resume}",
        )


def run_alone(
    command: str, main: Callable[[list[str]], int], argv: Sequence[str] | None = None
) -> int:
    """``python -m pipeline.<module>``: the command ``stylize COMMAND`` runs (its ``main``),
    with the same output options, log lines and one-line errors, without loading what
    ``pipeline.cli`` loads."""
    args = list(sys.argv[1:] if argv is None else argv)
    ctx = Context(command, debug="--debug" in args)
    return run_reported(ctx, lambda: delegate(ctx.prog, main, args))


_PROBLEMS = re.compile(r"^(?P<where>.+): \d+ problems:$")


def _problem_lines(text: str) -> list[str]:
    """A job file's problems, one self-contained line each (``job.yaml: 3 problems:`` and
    three lines become three ``job.yaml: ...`` lines, as a compiler reports)."""
    first, *more = text.splitlines() or [""]
    found = _PROBLEMS.match(first)
    return [f"{found['where']}: {p}" for p in more] if found and more else [first, *more]


def _write_traceback(e: BaseException, secrets: Sequence[str]) -> str:
    fd, path = tempfile.mkstemp(prefix="stylize-error-", suffix=".log")
    with os.fdopen(fd, "w") as f:
        f.write(redact_text("".join(traceback.format_exception(e)), secrets))
    return path
