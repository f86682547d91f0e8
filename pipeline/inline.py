"""The scheduler's executor for ``ray.address: inline``: one worker in this process, no Ray.

The same policy as on a cluster (:mod:`pipeline.scheduler`), so rows, retries and timeouts
mean the same; what differs is what a process can do to itself: a call past its deadline is
stopped at the engine's next progress step (nothing can kill a running call here), and a
crash of the worker is a crash of the whole run. For ``memory://`` URLs, debugging, and GPU
machines without Ray.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from pipeline.items import StyleRef
from pipeline.rows import Row
from pipeline.scheduler import Prepare, RunBatch, Scheduler, Start, Stop, short_error
from pipeline.worker import CallTimeout, StyleWorker, WorkerSpec

RowsCallback = Callable[[int, list[Row]], None]


class InlineExecutor:
    """Carries out a :class:`Scheduler`'s actions by calling a :class:`StyleWorker`."""

    def __init__(
        self,
        spec: WorkerSpec,
        styles: Mapping[str, StyleRef],
        on_shard: RowsCallback,
        make_worker: Callable[[WorkerSpec], StyleWorker] = StyleWorker,
    ):
        self.spec, self.styles, self.on_shard = spec, dict(styles), on_shard
        self.make_worker = make_worker
        self.engine: StyleWorker | None = None  # kept across restarts: VGG-19 loads once
        self.cache_stats: list[dict] = []  # the worker's style-target cache figures

    def run(self, policy: Scheduler) -> list[dict]:
        pending = list(policy.begin(time.monotonic()))
        while pending:
            action = pending.pop(0)
            pending += self._do(policy, action)
            for shard_id, rows in policy.completed():
                self.on_shard(shard_id, rows)
        if not policy.finished:
            raise RuntimeError("inline executor: the scheduler stopped with work left")
        stats = getattr(self.engine, "cache_stats", None)
        self.cache_stats = [stats()] if stats else []
        return policy.infos

    def _do(self, policy: Scheduler, action) -> list:
        if isinstance(action, Stop):
            return []
        wid = action.worker
        if isinstance(action, Start):
            try:
                if self.engine is None:
                    self.engine = self.make_worker(self.spec)
                info = self.engine.info()
            except Exception as e:  # noqa: BLE001 - reported like a worker that died starting
                return policy.died(wid, short_error(e), time.monotonic())
            return policy.ready(wid, info, time.monotonic())
        engine = self.engine
        assert engine is not None, "the scheduler sends work only to a started worker"
        engine.deadline = policy.deadline_of(wid)
        result: Any  # (rows, batches) of a prepare, rows of a batch
        try:
            if isinstance(action, Prepare):
                result = engine.prepare(action.shard, self.styles, action.attempts, action.isolate)
            else:
                assert isinstance(action, RunBatch)
                result = engine.run_batch(list(action.item_ids))
        except CallTimeout:
            return policy.tick(max(time.monotonic(), policy.deadline_of(wid) + 1e-3))
        except Exception as e:  # noqa: BLE001 - the worker's own code raised
            return policy.raised(wid, short_error(e), time.monotonic())
        finally:
            engine.deadline = None
        return policy.returned(wid, result, time.monotonic())


def run(
    shards: list,
    spec: WorkerSpec,
    styles: Mapping[str, StyleRef],
    on_shard: RowsCallback,
    policy_args: Mapping,
    worker_class: type | None = None,
) -> tuple[list[dict], list[dict], dict[str, float]]:
    """Every shard in this process: (the worker's info, its style target cache figures, no
    cluster resources), as :func:`pipeline.raypool.run` returns them."""
    policy = Scheduler(shards, num_workers=1, **policy_args)
    executor = InlineExecutor(spec, styles, on_shard, worker_class or StyleWorker)
    workers = executor.run(policy)
    return workers, executor.cache_stats, {}
