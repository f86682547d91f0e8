"""Progress on the driver: one tqdm bar on a terminal, log lines otherwise.

Both only when this module's logger is enabled for INFO (the ``stylize`` command's default;
``-q`` turns it off, and a program that calls ``run_job`` decides through ``logging``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import IO

log = logging.getLogger(__name__)


class Progress:
    """Items done/total, failures, images/hour and ETA (rates count this run's items only).

    ``stream``: where a bar would go; a bar is drawn only if it is a terminal, otherwise a
    line is logged every ``interval_s`` seconds and at the end."""

    def __init__(
        self,
        total: int,
        done: int = 0,
        failed: int = 0,
        stream: IO[str] | None = None,
        interval_s: float = 10.0,
    ):
        self.total, self.done, self.failed, self.new = total, done, failed, 0
        self.interval_s = interval_s
        self.t0 = self._last = time.monotonic()
        self.enabled = log.isEnabledFor(logging.INFO)
        self.bar = None
        stream = stream or sys.stderr
        if self.enabled and getattr(stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                initial=done,
                unit="img",
                file=stream,
                dynamic_ncols=True,
                smoothing=0.1,
            )
        else:
            self._log(force=True)

    def update(self, rows: Iterable[Mapping]) -> None:
        rows = list(rows)
        self.new += len(rows)
        self.done += len(rows)
        self.failed += sum(r["status"] != "ok" for r in rows)
        if self.bar is not None:
            self.bar.set_postfix_str(f"failed {self.failed}, {self.rate:.0f} img/h", refresh=False)
            self.bar.update(len(rows))
        else:
            self._log()

    @property
    def rate(self) -> float:
        """Images per hour in this run."""
        elapsed = time.monotonic() - self.t0
        return 3600.0 * self.new / elapsed if elapsed > 0 else 0.0

    def _eta(self) -> str:
        left = self.total - self.done
        if left <= 0:
            return "0:00:00"
        if self.rate <= 0:
            return "?"
        return str(timedelta(seconds=round(3600.0 * left / self.rate)))

    def _log(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (
            not force and now - self._last < self.interval_s and self.done < self.total
        ):
            return
        self._last = now
        log.info(
            "%d/%d items, %d failed, %.0f img/h, ETA %s",
            self.done,
            self.total,
            self.failed,
            self.rate,
            self._eta(),
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
