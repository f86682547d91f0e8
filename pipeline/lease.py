"""One driver per run folder at a time: the lease ``_lease.json`` (see pipeline.runfolder).

A run takes the lease once its job is validated and before it touches the folder; it holds it
to the end (whatever the exit code) and renews it from a heartbeat thread every
``HEARTBEAT_S``. The lease is one small JSON object written whole through fsspec (an object
store publishes a PUT whole; locally a new lease is created exclusively), so it works the
same on a laptop folder and on s3://.

A second driver on the folder finds the lease and stops with exit 2, naming the owner (host,
pid, start, last heartbeat) and how to take over: ``--takeover`` once the owner is gone, or
nothing at all once the heartbeat is older than the job's ``lease_timeout_s`` (or, on the
owner's own host, as soon as its process is gone). A driver whose lease was taken over stops
before its next manifest part (exit 3, its parts kept), and parts are created, never
overwritten: two owners can never write the same part id.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pipeline import storage
from pipeline.errors import InfraError
from pipeline.redact import escape_controls
from pipeline.runfolder import LEASE_FILE, RunFolder
from stylize.common import StylizeError

HEARTBEAT_S = 10.0  # how often the owner renews the lease
DEFAULT_TIMEOUT_S = 120.0  # a heartbeat older than this: the owner is gone (lease_timeout_s)
SETTLE_S = 0.5  # between writing a new lease and reading it back (two takers at once)
log = logging.getLogger(__name__)


class LeaseHeld(StylizeError):
    """Another driver owns the run folder (exit 2: nothing was done)."""


class LeaseLost(InfraError):
    """This driver's lease was taken over while it ran (exit 3: its parts are kept)."""

    resumable = False  # the other driver goes on


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="seconds")


@dataclass(frozen=True)
class Owner:
    """What a lease says about the driver that holds it."""

    id: str
    host: str
    pid: int
    started_at: str
    heartbeat_at: str
    command: str = ""

    @classmethod
    def parse(cls, data: bytes) -> Owner | None:
        """None for a lease that cannot be read (cut short, hand-edited): treated as gone."""
        try:
            d = json.loads(data)
            return cls(
                str(d["id"]),
                str(d["host"]),
                int(d["pid"]),
                str(d["started_at"]),
                str(d["heartbeat_at"]),
                str(d.get("command", "")),
            )
        except (ValueError, TypeError, KeyError):
            return None

    def age_s(self) -> float:
        """Seconds since the last heartbeat (a clock skew between hosts adds to it)."""
        try:
            beat = datetime.fromisoformat(self.heartbeat_at)
        except ValueError:
            return float("inf")
        return (_now() - beat).total_seconds()

    def gone_here(self) -> bool:
        """The owner ran on this host and its process no longer exists."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except OSError:  # exists, owned by someone else
            return False
        return False

    def describe(self) -> str:
        return escape_controls(
            f"{self.host} pid {self.pid}, running since {self.started_at}, "
            f"last heartbeat {self.age_s():.0f} s ago"
        )


class Lease:
    """The lease of one run folder, taken by :meth:`acquire`, renewed by a heartbeat thread
    until :meth:`release`. Use as a context manager."""

    def __init__(
        self,
        output: str,
        options: Mapping[str, Any],
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        takeover: bool = False,
        command: str = "stylize run",
    ):
        self.uri = RunFolder(output).lease
        self.output = output
        self.options = options
        self.timeout_s = timeout_s
        self.takeover = takeover
        self.me = Owner(
            uuid.uuid4().hex, socket.gethostname(), os.getpid(), _iso(_now()), _iso(_now()), command
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: Owner | None = None

    # ---------------------------------------------------------------- taking and giving back

    def read(self) -> Owner | None:
        if not storage.exists(self.uri, self.options):
            return None
        try:
            return Owner.parse(storage.read_bytes(self.uri, self.options)) or Owner(
                "?", "?", -1, "?", "?"
            )
        except FileNotFoundError:  # released between the two calls
            return None

    def _write(self, exclusive: bool = False) -> None:
        data = json.dumps(self.me.__dict__, indent=1).encode()
        storage.write_bytes(self.uri, data, self.options, atomic=True, exclusive=exclusive)

    def acquire(self) -> Lease:
        held = self.read()
        if held is not None and held.id != "?":
            stale = held.age_s() > self.timeout_s or held.gone_here()
            if not (stale or self.takeover):
                raise LeaseHeld(
                    f"output {self.output} is being run by another driver ({held.describe()}); "
                    f"wait for it to finish, or, if it is gone, rerun with --takeover (taken "
                    f"over by itself once its heartbeat is {self.timeout_s:g} s old: "
                    "lease_timeout_s)"
                )
            log.warning(
                "taking over %s from %s (%s)",
                LEASE_FILE,
                held.describe(),
                "--takeover"
                if not stale
                else "its process is gone"
                if held.gone_here()
                else "heartbeat too old",
            )
        try:
            self._write(exclusive=held is None)
        except FileExistsError:  # another driver created it a moment ago
            raise LeaseHeld(
                f"output {self.output} was just taken by another driver "
                f"({(self.read() or self.me).describe()})"
            ) from None
        time.sleep(SETTLE_S if not storage.is_local(storage.get_fs(self.uri)[0]) else 0)
        now = self.read()
        if now is None or now.id != self.me.id:  # two takers wrote at once: the last one won
            raise LeaseHeld(
                f"output {self.output} was just taken by another driver "
                f"({now.describe() if now else 'unknown'})"
            )
        self._thread = threading.Thread(target=self._beat, name="stylize-lease", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still ours (never another's)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=HEARTBEAT_S)
            self._thread = None
        try:
            held = self.read()
            if held is not None and held.id == self.me.id:
                storage.remove(self.uri, self.options)
        except storage.StorageError as e:  # storage gone: the lease goes stale by itself
            log.warning(
                "could not remove %s (%s); it goes stale after %g s", LEASE_FILE, e, self.timeout_s
            )

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    # ------------------------------------------------------------------------ while it runs

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                held = self.read()
                if held is not None and held.id not in (self.me.id, "?"):
                    self._lost = held
                    return
                self.me = Owner(**{**self.me.__dict__, "heartbeat_at": _iso(_now())})
                self._write()
            except Exception as e:  # noqa: BLE001 - storage trouble: the next beat tries again
                log.debug("lease heartbeat failed: %s", e)

    def check(self) -> None:
        """Before each manifest part: stop (LeaseLost) if another driver took the folder."""
        held = self._lost or self.read()
        if held is not None and held.id not in (self.me.id, "?"):
            self._lost = held
            raise LeaseLost(
                f"another driver took over output {self.output} "
                f"({held.describe()}); this one stops, every part it wrote is kept"
            )


def holder(output: str, options: Mapping[str, Any]) -> Owner | None:
    """Who holds the run folder's lease now (None: nobody); for ``stylize status``."""
    return Lease(output, options).read()
