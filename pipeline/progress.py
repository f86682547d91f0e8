"""Progress on the driver: one tqdm bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time
from datetime import timedelta
from typing import IO, Iterable, Mapping


class Progress:
    """Items done/total, failures, images/hour and ETA (rates count this run's items only)."""

    def __init__(self, total: int, done: int = 0, failed: int = 0,
                 stream: IO[str] | None = None, interval_s: float = 10.0):
        self.stream = stream or sys.stderr
        self.total, self.done, self.failed, self.new = total, done, failed, 0
        self.interval_s = interval_s
        self.t0 = self._last = time.monotonic()
        self.bar = None
        if getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit="img", file=self.stream,
                            dynamic_ncols=True, smoothing=0.1)
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
        if not force and now - self._last < self.interval_s and self.done < self.total:
            return
        self._last = now
        print(f"stylize: {self.done}/{self.total} items, {self.failed} failed, "
              f"{self.rate:.0f} img/h, ETA {self._eta()}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
