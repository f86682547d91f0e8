"""The actor pool: feeds shards to workers and turns every fault into rows, never a hang.

Each actor does one call at a time (``prepare`` a shard, then ``run_batch`` per batch), so
the driver knows which items were on the device when an actor died or ran out of time:

- actor died (crash, killed process, lost node) during a call: each item of that call gets
  a strike; an item with ``max_attempts`` strikes is ``failed_crash``; the rest of the shard
  goes back to the queue for another (new, if need be) actor, with the suspects in batches of
  their own so that the item that keeps killing workers is found and the others finish;
- a call past its deadline (``item_timeout_s`` per item in it): the actor is killed; a lone
  item is ``failed_timeout``, several are retried alone so that each gets its own clock.

Strikes only grow and batches only shrink, so every shard ends.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import ray

from pipeline.items import Shard, StyleRef, WorkItem
from pipeline.manifest import make_row, now
from pipeline.worker import StyleActor, StyleWorker, WorkerSpec

RowsCallback = Callable[[int, list[dict]], None]  # (shard id, rows of the whole shard)
SubmitHook = Callable[[str, dict, list[WorkItem]], None]  # (call, worker info, items)
_POLL_S = 1.0


class WorkerStartError(RuntimeError):
    """No worker could be started; the message says what was asked and what was there."""


@dataclass
class _Task:
    """What is left of one shard, handed to one actor."""

    shard: Shard
    isolate: frozenset[str] = frozenset()


@dataclass
class _Slot:
    actor: Any
    info: dict | None = None
    ref: Any = None  # the call in flight
    call: str = "ready"  # ready | prepare | batch
    task: _Task | None = None
    batches: list[list[str]] = field(default_factory=list)
    batch: list[str] = field(default_factory=list)
    deadline: float = 0.0


@dataclass
class PoolState:
    """Driver bookkeeping: final rows per shard, tries and strikes per item."""

    shards: dict[int, Shard]
    rows: dict[int, dict[str, dict]] = field(default_factory=dict)
    tries: dict[str, int] = field(default_factory=dict)
    strikes: dict[str, int] = field(default_factory=dict)
    started_workers: int = 0
    startup_errors: list[str] = field(default_factory=list)

    def done(self, shard_id: int) -> bool:
        return len(self.rows.get(shard_id, {})) == len(self.shards[shard_id].items)


class ActorPool:
    """Runs shards on Ray actors; calls ``on_shard`` with a shard's rows as it completes."""

    def __init__(self, spec: WorkerSpec, styles: Mapping[str, StyleRef], *, num_workers: int,
                 actor_options: Mapping[str, Any], max_attempts: int, item_timeout_s: float,
                 startup_timeout_s: float, on_shard: RowsCallback,
                 on_submit: SubmitHook | None = None):
        self.spec, self.styles = spec, dict(styles)
        self.num_workers, self.actor_options = num_workers, dict(actor_options)
        self.max_attempts, self.item_timeout_s = max_attempts, item_timeout_s
        self.startup_timeout_s = startup_timeout_s
        self.on_shard, self.on_submit = on_shard, on_submit
        self.worker_infos: list[dict] = []

    # -------------------------------------------------------------------------------- run
    def run(self, shards: Sequence[Shard]) -> PoolState:
        state = PoolState({s.shard_id: s for s in shards})
        queue = deque(_Task(s) for s in shards)
        slots: list[_Slot] = []
        try:
            for _ in range(min(self.num_workers, len(shards))):
                slots.append(self._start(state))
            while not all(state.done(s.shard_id) for s in shards):
                self._assign(state, queue, slots)
                self._top_up(state, queue, slots)
                self._wait(state, queue, slots)
        finally:
            for slot in slots:
                ray.kill(slot.actor, no_restart=True)
        return state

    def _start(self, state: PoolState) -> _Slot:
        actor = StyleActor.options(**self.actor_options).remote(self.spec)
        state.started_workers += 1
        return _Slot(actor, ref=actor.info.remote(), call="ready",
                     deadline=time.monotonic() + self.startup_timeout_s)

    def _top_up(self, state: PoolState, queue: deque, slots: list[_Slot]) -> None:
        """Replace dead actors while there is work; give up when none can start."""
        if not queue:
            return
        wanted = min(self.num_workers, len(queue) + sum(s.task is not None for s in slots))
        while len(slots) < wanted:
            if len(state.startup_errors) >= self.max_attempts * max(1, self.num_workers):
                if slots:
                    return  # carry on with the workers that did start
                raise WorkerStartError(
                    f"no worker could start ({len(state.startup_errors)} tries, each asking for "
                    f"{self.actor_options}; the cluster has {ray.cluster_resources()}): "
                    f"{state.startup_errors[-1]}")
            slots.append(self._start(state))

    def _assign(self, state: PoolState, queue: deque, slots: list[_Slot]) -> None:
        for slot in slots:
            if slot.info is None or slot.ref is not None or not queue:
                continue
            task = queue.popleft()
            done = state.rows.get(task.shard.shard_id, {})
            items = [i for i in task.shard.items if i.item_id not in done]
            task = _Task(Shard(task.shard.shard_id, tuple(items)), task.isolate)
            for i in items:
                state.tries[i.item_id] = state.tries.get(i.item_id, 0) + 1
            attempts = {i.item_id: state.tries[i.item_id] for i in items}
            slot.task, slot.batches = task, []
            self._call(slot, "prepare", [i.item_id for i in items],
                       slot.actor.prepare.remote(task.shard, self.styles, attempts, task.isolate))

    def _call(self, slot: _Slot, call: str, ids: list[str], ref: Any) -> None:
        slot.call, slot.ref, slot.batch = call, ref, ids
        slot.deadline = time.monotonic() + self.item_timeout_s * max(1, len(ids))
        if self.on_submit is not None:  # tests use it to kill a worker mid-shard
            by_id = {i.item_id: i for i in slot.task.shard.items}
            self.on_submit(call, dict(slot.info or {}), [by_id[i] for i in ids])

    # ------------------------------------------------------------------------------- wait
    def _wait(self, state: PoolState, queue: deque, slots: list[_Slot]) -> None:
        busy = [s for s in slots if s.ref is not None]
        if not busy:
            if not queue:
                raise RuntimeError("pool: unfinished shards but no work queued or in flight")
            return
        timeout = max(0.0, min(min(s.deadline for s in busy) - time.monotonic(), _POLL_S))
        refs = [s.ref for s in busy]
        ray.wait(refs, num_returns=1, timeout=timeout)
        # then everything that is ready now, so that no finished call is taken for a late one
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        finished = {r.hex() for r in ready}
        for slot in busy:
            if slot.ref.hex() in finished:
                self._collect(state, queue, slots, slot)
            elif time.monotonic() > slot.deadline:
                self._expired(state, queue, slots, slot)

    def _collect(self, state: PoolState, queue: deque, slots: list[_Slot], slot: _Slot) -> None:
        ref, slot.ref = slot.ref, None
        try:
            result = ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
            self._died(state, queue, slots, slot, e)
            return
        except ray.exceptions.RayTaskError as e:  # a bug in the worker: rows, not a retry loop
            if slot.call == "ready":
                self._died(state, queue, slots, slot, e)
                return
            self._fail(state, slot, slot.batch, "failed_other", _short(e))
            self._next(state, slot)
            return
        if slot.call == "ready":
            slot.info = result
            self.worker_infos.append(result)
        elif slot.call == "prepare":
            rows, slot.batches = result
            self._record(state, slot.task.shard.shard_id, rows)
            self._next(state, slot)
        else:
            self._record(state, slot.task.shard.shard_id, result)
            self._next(state, slot)

    def _next(self, state: PoolState, slot: _Slot) -> None:
        """Submit the task's next batch, or free the slot."""
        if slot.batches:
            batch = slot.batches.pop(0)
            self._call(slot, "batch", batch, slot.actor.run_batch.remote(batch))
            return
        done = state.rows.get(slot.task.shard.shard_id, {})
        left = [i.item_id for i in slot.task.shard.items if i.item_id not in done]
        if left:  # the worker returned no row for these: a bug, recorded, never retried forever
            self._fail(state, slot, left, "failed_other", "the worker returned no result")
        slot.task, slot.batch = None, []

    def _died(self, state: PoolState, queue: deque, slots: list[_Slot], slot: _Slot,
              error: Exception) -> None:
        slots.remove(slot)
        ray.kill(slot.actor, no_restart=True)
        if slot.call == "ready":
            state.startup_errors.append(_short(error))
            return
        suspects = list(slot.batch)
        for item_id in suspects:
            state.strikes[item_id] = state.strikes.get(item_id, 0) + 1
        out = [i for i in suspects if state.strikes[i] >= self.max_attempts]
        self._fail(state, slot, out, "failed_crash",
                   f"its worker died {self.max_attempts} times while processing it "
                   f"(last: {_short(error)})")
        self._requeue(state, queue, slot, suspects, split=slot.call == "prepare")

    def _expired(self, state: PoolState, queue: deque, slots: list[_Slot], slot: _Slot) -> None:
        slots.remove(slot)
        ray.kill(slot.actor, no_restart=True)
        if slot.call == "ready":
            state.startup_errors.append(f"worker not ready after {self.startup_timeout_s:.0f} s "
                                        f"(asked for {self.actor_options})")
            return
        if len(slot.batch) == 1:
            self._fail(state, slot, slot.batch, "failed_timeout",
                       f"still running after item_timeout_s={self.item_timeout_s:g} s")
        self._requeue(state, queue, slot, slot.batch, split=True)

    def _requeue(self, state: PoolState, queue: deque, slot: _Slot, suspects: list[str],
                 split: bool) -> None:
        """Put the unfinished rest of the slot's task back; suspects go alone next time."""
        shard_id = slot.task.shard.shard_id
        left = [i for i in slot.task.shard.items if i.item_id not in state.rows.get(shard_id, {})]
        isolate = slot.task.isolate | frozenset(suspects)
        if split and len(suspects) > 1 and slot.call == "prepare":
            for item in left:  # who broke the prepare step? each item on its own
                queue.appendleft(_Task(Shard(shard_id, (item,)), isolate))
        elif left:
            queue.appendleft(_Task(Shard(shard_id, tuple(left)), isolate))
        slot.task = None

    # ------------------------------------------------------------------------------- rows
    def _fail(self, state: PoolState, slot: _Slot, item_ids: Sequence[str], status: str,
              message: str) -> None:
        by_id: dict[str, WorkItem] = {i.item_id: i for i in slot.task.shard.items}
        worker = (slot.info or {}).get("worker")
        rows = [make_row(by_id[i], status, params_hash=self.spec.params_hash,
                         shard=slot.task.shard.shard_id, attempt=state.tries.get(i, 1),
                         error_message=f"{by_id[i].content_uri}: {message}", worker=worker,
                         finished_at=now()) for i in item_ids]
        self._record(state, slot.task.shard.shard_id, rows)

    def _record(self, state: PoolState, shard_id: int, rows: list[dict]) -> None:
        if not rows:
            return
        bucket = state.rows.setdefault(shard_id, {})
        was_done = state.done(shard_id)
        for r in rows:
            bucket[r["item_id"]] = r
        if not was_done and state.done(shard_id):
            self.on_shard(shard_id, list(bucket.values()))


def _short(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = lines[-1] if lines else type(e).__name__
    return f"{type(e).__name__}: {text}"[:300]


def run_inline(spec: WorkerSpec, styles: Mapping[str, StyleRef], shards: Sequence[Shard],
               on_shard: RowsCallback) -> list[dict]:
    """All shards in this process, one after the other (``ray.address: inline``): no Ray, so
    no retries or timeouts; for memory:// and debugging."""
    worker = StyleWorker(spec)
    for shard in shards:
        on_shard(shard.shard_id, worker.process(shard, styles))
    return [worker.info()]
