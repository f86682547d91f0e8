"""What every ``stylize`` command shares: its argument parser (a bad command line is a
:class:`~pipeline.errors.UsageError`, one line), ``-v``/``-q``/``--debug``, where log lines
go (stderr, as ``stylize: message``) and the one line a failed command leaves.

The engine (``stylize/``) only raises and logs; this module alone decides what reaches the
terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn, TextIO

from pipeline.errors import UsageError
from stylize.common import escape_controls


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
