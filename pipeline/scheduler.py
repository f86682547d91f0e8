"""The scheduling policy: which shard goes to which worker, and what a fault means.

A state machine in the sans-I/O style: it never touches Ray, a clock or a file. An executor
(``pipeline.raypool`` for Ray actors, ``pipeline.inline`` for this process) reports events —
a worker became ready, a call returned, raised, died, the time is now T — and carries out the
actions the policy returns: start a worker, send it a call, stop it. Rows of finished shards
come out of :meth:`Scheduler.completed`.

Each worker does one call at a time (``prepare`` a shard, then ``batch`` per batch), so the
policy knows which items were on the device when something went wrong:

- a worker died (crash, killed process, lost node) during a call: each item of that call gets
  a strike; an item with ``max_attempts`` strikes is ``failed_crash``; the rest of the shard
  goes back to the queue for another (new, if need be) worker, with the suspects in batches
  of their own so that the item that keeps killing workers is found and the others finish;
- a call past its deadline (``item_timeout_s`` per item in it): the worker is stopped; a lone
  item is ``failed_timeout``, several are retried alone so that each gets its own clock;
- the worker's code raised (a bug, not a fault of the item): the call's items are
  ``failed_other`` rows, never a retry loop; a worker that returns no row for an item, too;
- a worker that fails to start is replaced, up to ``max_attempts`` per wanted worker; one not
  ready after ``startup_timeout_s`` while none has started means the resources never came:
  :class:`WorkerStartError` at once (waiting again would only wait again).

Strikes only grow and batches only shrink, so every shard ends.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pipeline.items import Shard, WorkItem
from pipeline.rows import Row, make_row, now
from stylize.common import StylizeError, one_line


class WorkerStartError(StylizeError, RuntimeError):
    """No worker could be started; the message says what was asked and what was there."""


# ------------------------------------------------------------------------------- actions
@dataclass(frozen=True)
class Start:
    """Start worker ``worker`` (an id chosen by the policy); report ready/start failure."""

    worker: int


@dataclass(frozen=True)
class Prepare:
    """Call ``prepare(shard, attempts, isolate)`` on the worker."""

    worker: int
    shard: Shard
    attempts: Mapping[str, int]
    isolate: frozenset[str]


@dataclass(frozen=True)
class RunBatch:
    """Call ``run_batch(item_ids)`` on the worker."""

    worker: int
    item_ids: tuple[str, ...]


@dataclass(frozen=True)
class Stop:
    """Kill the worker (dead, hung or no longer needed)."""

    worker: int


Action = Start | Prepare | RunBatch | Stop


# --------------------------------------------------------------------------------- state
@dataclass
class _Task:
    """What is left of one shard, handed to one worker."""

    shard: Shard
    isolate: frozenset[str] = frozenset()


@dataclass
class _Worker:
    call: str = "start"  # start | idle | prepare | batch
    info: dict | None = None
    task: _Task | None = None
    batches: list[list[str]] = field(default_factory=list)
    batch: list[str] = field(default_factory=list)
    deadline: float = 0.0

    @property
    def shard(self) -> Shard:
        """The shard of the task this worker is busy with (only asked of a busy worker)."""
        assert self.task is not None, "an idle worker has no shard"
        return self.task.shard


class Scheduler:
    """Shards in, rows out; see the module docstring for what each event means."""

    def __init__(
        self,
        shards: Sequence[Shard],
        *,
        num_workers: int,
        max_attempts: int,
        item_timeout_s: float,
        startup_timeout_s: float,
        tries: Mapping[str, int] | None = None,
        describe: Callable[[], str] = str,
        clock: Callable[[], datetime] = now,
    ):
        self.clock = clock  # the wall clock of failure rows' finished_at (handed in)
        self.shards = {s.shard_id: s for s in shards}
        self.num_workers = max(1, num_workers)
        self.max_attempts, self.item_timeout_s = max_attempts, item_timeout_s
        self.startup_timeout_s = startup_timeout_s
        self.describe = describe  # what was asked for and what is there, for start errors
        self.queue: deque[_Task] = deque(_Task(s) for s in shards)
        self.rows: dict[int, dict[str, Row | None]] = {}  # None: sent out
        self.tries: dict[str, int] = dict(tries or {})  # earlier runs' attempts count too
        self.strikes: dict[str, int] = {}
        self.startup_errors: list[str] = []
        self.workers: dict[int, _Worker] = {}
        self.infos: list[dict] = []  # every worker that became ready
        self._next_id = 0
        self._completed: list[tuple[int, list[Row]]] = []
        self._known: dict[int, frozenset[str]] = {}  # item ids of each unfinished shard
        self._left = len(self.shards)

    # ------------------------------------------------------------------------ queries
    @property
    def finished(self) -> bool:
        return self._left == 0

    def done(self, shard_id: int) -> bool:
        return len(self.rows.get(shard_id, {})) == len(self.shards[shard_id].items)

    def next_deadline(self) -> float | None:
        busy = [w.deadline for w in self.workers.values() if w.call != "idle"]
        return min(busy) if busy else None

    def deadline_of(self, wid: int) -> float:
        """When the call in flight on worker ``wid`` is past its time (monotonic seconds)."""
        return self.workers[wid].deadline

    def call_of(self, wid: int) -> tuple[dict, dict[str, WorkItem]]:
        """(worker ``wid``'s info, the items of its current shard by id): for executors'
        hooks."""
        w = self.workers[wid]
        return dict(w.info or {}), ({i.item_id: i for i in w.shard.items} if w.task else {})

    def waiting_for_workers(self) -> int:
        """Workers asked for but not ready yet."""
        return sum(w.call == "start" for w in self.workers.values())

    def completed(self) -> list[tuple[int, list[Row]]]:
        """Shards finished since the last call, with all their rows (each shard once)."""
        out, self._completed = self._completed, []
        return out

    # ------------------------------------------------------------------------- events
    def begin(self, t: float) -> list[Action]:
        return self._fill(t)

    def ready(self, wid: int, info: dict, t: float) -> list[Action]:
        w = self.workers[wid]
        w.call, w.info = "idle", dict(info)
        self.infos.append(w.info)
        return self._fill(t)

    def returned(self, wid: int, result: Any, t: float) -> list[Action]:
        """The worker's call returned: (rows, batches) for prepare, rows for a batch."""
        w = self.workers[wid]
        if w.call == "prepare":
            rows, batches = result if result is not None else ([], [])
            w.batches = [list(b) for b in batches]
            self._record(w.shard.shard_id, rows or [])
        else:
            self._record(w.shard.shard_id, result or [])
        return self._next(wid, t) + self._fill(t)

    def raised(self, wid: int, message: str, t: float) -> list[Action]:
        """The worker's own code raised: a bug, recorded as rows, never retried forever."""
        w = self.workers[wid]
        if w.call == "start":
            return self.died(wid, message, t)
        self._fail(w, w.batch, "failed_other", message)
        return self._next(wid, t) + self._fill(t)

    def died(self, wid: int, message: str, t: float) -> list[Action]:
        """The worker is gone (crash, killed process, lost node) during its call."""
        w = self.workers.pop(wid)
        actions: list[Action] = [Stop(wid)]
        if w.call == "start":
            self.startup_errors.append(message)
            return actions + self._fill(t)
        if w.task is not None:
            suspects = list(w.batch)
            for item_id in suspects:
                self.strikes[item_id] = self.strikes.get(item_id, 0) + 1
            out = [i for i in suspects if self.strikes[i] >= self.max_attempts]
            self._fail(
                w,
                out,
                "failed_crash",
                f"its worker died {self.max_attempts} times while processing it (last: {message})",
            )
            self._requeue(w, suspects, split=w.call == "prepare")
        return actions + self._fill(t)

    def tick(self, t: float) -> list[Action]:
        """Calls and starts past their deadline at time ``t``."""
        actions: list[Action] = []
        for wid in [i for i, w in self.workers.items() if w.call != "idle" and t > w.deadline]:
            w = self.workers.pop(wid)
            actions.append(Stop(wid))
            if w.call == "start":
                if not self.infos:
                    raise WorkerStartError(
                        f"no worker ready after ray.startup_timeout_s="
                        f"{self.startup_timeout_s:g} s; {self.describe()}"
                    )
                self.startup_errors.append(f"worker not ready after {self.startup_timeout_s:g} s")
                continue
            if len(w.batch) == 1:
                self._fail(
                    w,
                    w.batch,
                    "failed_timeout",
                    f"still running after item_timeout_s={self.item_timeout_s:g} s",
                )
            self._requeue(w, w.batch, split=True)
        return actions + (self._fill(t) if actions else [])

    # ---------------------------------------------------------------------- decisions
    def _fill(self, t: float) -> list[Action]:
        """Hand queued tasks to idle workers; start workers while there is work for them."""
        actions: list[Action] = []
        for wid, w in self.workers.items():
            if w.call == "idle" and self.queue:
                actions.append(self._prepare(wid, w, self.queue.popleft(), t))
        if self.finished or not self.queue:
            if self.finished:  # nothing left anywhere: stop every worker
                actions += [Stop(wid) for wid in self.workers]
                self.workers.clear()
            return actions
        busy = sum(w.task is not None for w in self.workers.values())
        wanted = min(self.num_workers, len(self.queue) + busy)
        while len(self.workers) < wanted:
            if len(self.startup_errors) >= self.max_attempts * self.num_workers:
                if self.workers:
                    break  # carry on with the workers that did start
                raise WorkerStartError(
                    f"no worker could start ({len(self.startup_errors)} tries; "
                    f"{self.describe()}): {self.startup_errors[-1]}"
                )
            wid, self._next_id = self._next_id, self._next_id + 1
            self.workers[wid] = _Worker(deadline=t + self.startup_timeout_s)
            actions.append(Start(wid))
        return actions

    def _prepare(self, wid: int, w: _Worker, task: _Task, t: float) -> Prepare:
        done = self.rows.get(task.shard.shard_id, {})
        items = tuple(i for i in task.shard.items if i.item_id not in done)
        w.task, w.batches = _Task(Shard(task.shard.shard_id, items), task.isolate), []
        for i in items:
            self.tries[i.item_id] = self.tries.get(i.item_id, 0) + 1
        self._busy(w, "prepare", [i.item_id for i in items], t)
        return Prepare(
            wid, w.shard, {i.item_id: self.tries[i.item_id] for i in items}, task.isolate
        )

    def _busy(self, w: _Worker, call: str, ids: list[str], t: float) -> None:
        w.call, w.batch = call, ids
        w.deadline = t + self.item_timeout_s * max(1, len(ids))

    def _next(self, wid: int, t: float) -> list[Action]:
        """The worker's next batch, or free it once its task has no batch left."""
        w = self.workers[wid]
        if w.batches:
            batch = w.batches.pop(0)
            self._busy(w, "batch", batch, t)
            return [RunBatch(wid, tuple(batch))]
        done = self.rows.get(w.shard.shard_id, {})
        left = [i.item_id for i in w.shard.items if i.item_id not in done]
        if left:  # the worker returned no row for these: a bug, recorded once
            self._fail(w, left, "failed_other", "the worker returned no result")
        w.call, w.task, w.batch = "idle", None, []
        return []

    def _requeue(self, w: _Worker, suspects: list[str], split: bool) -> None:
        """Put the unfinished rest of the worker's task back; suspects go alone next time."""
        shard_id = w.shard.shard_id
        left = [i for i in w.shard.items if i.item_id not in self.rows.get(shard_id, {})]
        assert w.task is not None
        isolate = w.task.isolate | frozenset(suspects)
        if split and len(suspects) > 1 and w.call == "prepare":
            for item in left:  # who broke the prepare step? each item on its own
                self.queue.appendleft(_Task(Shard(shard_id, (item,)), isolate))
        elif left:
            self.queue.appendleft(_Task(Shard(shard_id, tuple(left)), isolate))
        w.task = None

    # --------------------------------------------------------------------------- rows
    def _fail(self, w: _Worker, item_ids: Sequence[str], status: str, message: str) -> None:
        by_id: dict[str, WorkItem] = {i.item_id: i for i in w.shard.items}
        worker = (w.info or {}).get("worker")
        rows = [
            make_row(
                by_id[i],
                status,
                shard=w.shard.shard_id,
                attempt=self.tries.get(i, 1),
                error_message=f"{by_id[i].content_uri}: {message}",
                worker=worker,
                finished_at=self.clock(),
            )
            for i in item_ids
            if i in by_id
        ]
        self._record(w.shard.shard_id, rows)

    def _record(self, shard_id: int, rows: Sequence[Row]) -> None:
        if not rows or self.done(shard_id):  # a finished shard's rows went out already
            return
        known = self._known.get(shard_id)
        if known is None:  # once per shard, not once per batch (a large shard is many)
            known = self._known[shard_id] = frozenset(
                i.item_id for i in self.shards[shard_id].items
            )
        bucket = self.rows.setdefault(shard_id, {})
        for r in rows:
            if r["item_id"] in known:
                bucket[r["item_id"]] = r
        if self.done(shard_id):
            # in the shard's item order (batches group items by size): a fresh run's parts
            # are then in job order, and the final manifest needs no reordering copy
            ordered = [bucket[i.item_id] for i in self.shards[shard_id].items]
            self._completed.append((shard_id, [r for r in ordered if r is not None]))
            self._left -= 1
            # A million items: hold no row of a finished shard (they go out once, through
            # completed()), only which items are done; nor their attempt counts.
            self.rows[shard_id] = dict.fromkeys(known)
            del self._known[shard_id]
            for item_id in known:
                self.tries.pop(item_id, None)


def short_error(e: BaseException) -> str:
    """One line for a row: the exception's type and its last non-empty line (Ray wraps the
    worker's traceback into the message; its last line says what happened)."""
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {one_line(lines[-1] if lines else '(no message)')}"[:300]
