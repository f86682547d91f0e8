"""Exit codes of the ``stylize`` command and the exceptions that map onto them.

Every error of ours is a :class:`~stylize.common.StylizeError` carrying its exit code (the
engine's: bad options, images, weights; the pipeline's: a job file, storage, a lease; the
command's: :class:`UsageError`, :class:`OutputError`); ``pipeline.cli.main`` reports any of
them with one ``except``, as one line.

The exit code is a contract with whoever runs the job (a person, a scheduler, ``ray job``):

====  ==========================================================================
0     every item ok
1     the job ran and some items failed (their rows say why)
2     usage or configuration, found before work starts (nothing was computed)
3     infrastructure failed during the run (storage gone, cluster lost): resumable
130   interrupted by SIGINT (Ctrl-C), 143 by SIGTERM: what finished is kept
====  ==========================================================================
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from stylize.common import EXIT_FAILED, EXIT_INFRA, EXIT_OK, EXIT_USAGE, StylizeError  # noqa: F401

RESUME_HINT = "run the same command to resume"


class UsageError(StylizeError):
    """A bad command line, option or input, found before any work: one line, exit code 2."""


class OutputError(StylizeError, OSError):
    """The output of ``stylize image`` (or a snapshot) could not be written, after the work:
    exit code 3 (nothing to resume: run the command again)."""

    exit_code = EXIT_INFRA


class InfraError(StylizeError, RuntimeError):
    """Infrastructure failed during the run (storage gone, cluster lost); exit 3."""

    exit_code = EXIT_INFRA
    resumable = True


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; a BaseException so that no ``except Exception`` eats it.
    ``line``: the command's own account of what it kept (``stylize image``: where the last
    iterate is), for the one line it leaves; None: a job's (finished items are kept)."""

    def __init__(self, signum: int, line: str | None = None):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.line = line

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


received: int | None = None  # the signal that arrived, for code that sees it wrapped


def raise_interrupted(signum: int, frame) -> None:  # a signal handler
    global received
    received = signum
    raise Interrupted(signum)


def reraise_if_interrupted() -> None:
    """Inside ``except Exception``: a signal raised in C code (Ray's) comes out wrapped in
    a SystemError; give it back its meaning."""
    if received is not None:
        raise Interrupted(received) from None


def install_signal_handlers() -> None:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread. Called again after
    ``ray.init``, which installs a SIGTERM handler of its own (a bare exit)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, raise_interrupted)


def signal_handlers() -> dict[int, Any]:
    """The SIGINT and SIGTERM handlers now in place, for :func:`restore_signal_handlers`."""
    return {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}


def restore_signal_handlers(saved: dict[int, Any]) -> None:
    """Put back the handlers that were in place before ``ray.init`` (which installs a SIGTERM
    handler of its own, a bare exit) and ``ray.shutdown`` (which sets the default action
    back though Python still names the old handler): this package's under the command, the
    calling program's own under ``pipeline.run``. Only the main thread may set them."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, handler in saved.items():
        if handler is not None:
            signal.signal(sig, handler)
