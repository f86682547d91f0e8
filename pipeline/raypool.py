"""The Ray layer of the scheduler: starts actors, submits calls, waits, kills. No decisions.

Every decision (what to send where, what a death or a timeout means) is the policy's
(:mod:`pipeline.scheduler`); this module turns its actions into actor calls and Ray's answers
into its events. Ray failures that are not one actor's death (the cluster's control plane
gone) end the run with :class:`~pipeline.errors.InfraError` (exit 3, resumable).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import IO, TYPE_CHECKING, Any, Callable, Mapping

import ray

from pipeline.errors import InfraError, reraise_if_interrupted
from pipeline.items import StyleRef, WorkItem
from pipeline.scheduler import (Action, Prepare, Scheduler, Start, Stop,
                                short_error)

if TYPE_CHECKING:
    from pipeline.worker import WorkerSpec

RowsCallback = Callable[[int, list[dict]], None]  # (shard id, rows of the whole shard)
SubmitHook = Callable[[str, dict, list[WorkItem]], None]  # (call, worker info, items)
POLL_S = 1.0
WAIT_NOTICE_S = 30.0  # while no worker is ready, say so this often
log = logging.getLogger(__name__)

_DEAD = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
         ray.exceptions.ObjectLostError)


class RayExecutor:
    """Carries out a :class:`Scheduler`'s actions on Ray actors until every shard is done."""

    def __init__(self, spec: "WorkerSpec", styles: Mapping[str, StyleRef],
                 actor_options: Mapping[str, Any], on_shard: RowsCallback,
                 on_submit: SubmitHook | None = None, stream: IO[str] | None = None,
                 worker_class: type | None = None):
        if worker_class is None:  # imported here: a stand-in worker needs no torch
            from pipeline.worker import StyleWorker as worker_class
        # the actor: the plain class, one call at a time, never restarted by Ray (a death
        # is the policy's event)
        self.actor_class = ray.remote(max_restarts=0, max_task_retries=0)(worker_class)
        self.spec, self.styles = spec, dict(styles)
        self.actor_options = dict(actor_options)
        self.on_shard, self.on_submit = on_shard, on_submit
        self.stream = stream or sys.stderr
        self.actors: dict[int, Any] = {}
        self.refs: dict[int, Any] = {}  # worker id -> the call in flight
        self.calls: dict[int, Action] = {}
        self.cache_stats: list[dict] = []  # each stopped worker's style-target cache figures

    def run(self, policy: Scheduler) -> list[dict]:
        """Returns the info of every worker that became ready."""
        try:
            self._act(policy, policy.begin(time.monotonic()))
            notice = time.monotonic()
            while not policy.finished:
                self._step(policy)
                if policy.waiting_for_workers() and not policy.infos \
                        and time.monotonic() - notice > WAIT_NOTICE_S:
                    notice = time.monotonic()
                    log.info("waiting for %d worker(s) of %s; %s",
                             policy.waiting_for_workers(), self.actor_options,
                             describe_resources())
        finally:
            # idle workers can still say how their caches did: asked all at once
            self._keep_stats([a for wid, a in self.actors.items() if wid not in self.refs])
            for actor in self.actors.values():
                _kill(actor)
            self.actors.clear()
        return policy.infos

    def _keep_stats(self, actors: list[Any]) -> None:
        refs = []
        for actor in actors:
            try:
                refs.append(actor.cache_stats.remote())
            except Exception:  # noqa: BLE001 - figures only
                pass
        if not refs:
            return
        try:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=10)
        except Exception:  # noqa: BLE001
            return
        for ref in ready:
            try:
                self.cache_stats.append(ray.get(ref))
            except Exception:  # noqa: BLE001 - figures only; a stand-in worker has none
                pass

    def _step(self, policy: Scheduler) -> None:
        deadline = policy.next_deadline()
        timeout = POLL_S if deadline is None else \
            max(0.0, min(deadline - time.monotonic(), POLL_S))
        refs = list(self.refs.values())
        if refs:
            try:
                ray.wait(refs, num_returns=1, timeout=timeout)
                # then everything ready now, so that no finished call is taken for a late one
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            except Exception as e:  # noqa: BLE001 - the control plane, not one actor
                reraise_if_interrupted()
                raise InfraError(f"lost the Ray cluster: {short_error(e)}") from None
            finished = {r.hex() for r in ready}
            for wid, ref in list(self.refs.items()):
                if ref.hex() in finished and self.refs.get(wid) is ref:
                    self._collect(policy, wid, ref)
        else:
            time.sleep(timeout)
        self._act(policy, policy.tick(time.monotonic()))
        for shard_id, rows in policy.completed():
            self.on_shard(shard_id, rows)

    def _collect(self, policy: Scheduler, wid: int, ref: Any) -> None:
        del self.refs[wid]
        call = self.calls.pop(wid)
        t = time.monotonic()
        try:
            result = ray.get(ref)
        except _DEAD as e:
            self._act(policy, policy.died(wid, short_error(e), t))
            return
        except ray.exceptions.RayTaskError as e:  # the worker's own code raised
            self._act(policy, policy.raised(wid, short_error(e), t))
            return
        if isinstance(call, Start):
            self._act(policy, policy.ready(wid, result, t))
        else:
            self._act(policy, policy.returned(wid, result, t))

    def _act(self, policy: Scheduler, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Stop):
                busy = self.refs.pop(a.worker, None) is not None
                self.calls.pop(a.worker, None)
                actor = self.actors.pop(a.worker, None)
                if actor is not None:
                    if not busy:
                        self._keep_stats([actor])
                    _kill(actor)
                continue
            if isinstance(a, Start):
                actor = self.actor_class.options(**self.actor_options).remote(self.spec)
                self.actors[a.worker] = actor
                ref = actor.info.remote()
            elif isinstance(a, Prepare):
                ref = self.actors[a.worker].prepare.remote(a.shard, self.styles,
                                                           dict(a.attempts), a.isolate)
                self._hook(policy, "prepare", a.worker, [i.item_id for i in a.shard.items])
            else:
                ref = self.actors[a.worker].run_batch.remote(list(a.item_ids))
                self._hook(policy, "batch", a.worker, list(a.item_ids))
            self.refs[a.worker], self.calls[a.worker] = ref, a

    def _hook(self, policy: Scheduler, call: str, wid: int, ids: list[str]) -> None:
        if self.on_submit is None:  # tests use it to kill a worker mid-shard
            return
        w = policy.workers[wid]
        by_id = {i.item_id: i for i in w.task.shard.items}
        self.on_submit(call, dict(w.info or {}), [by_id[i] for i in ids])


def _kill(actor: Any) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001 - already gone, or the cluster is: nothing to free
        pass


def describe_resources() -> str:
    """What the cluster has, for messages about workers that do not start."""
    try:
        total, free = ray.cluster_resources(), ray.available_resources()
    except Exception as e:  # noqa: BLE001
        return f"cluster resources unknown ({short_error(e)})"
    keys = ("CPU", "GPU", "memory")
    fmt = lambda r: ", ".join(f"{k} {r.get(k, 0):g}" if k != "memory" else  # noqa: E731
                              f"memory {r.get(k, 0) / 2**30:.1f} GiB" for k in keys)
    return f"the cluster has {fmt(total)} ({fmt(free)} free)"
