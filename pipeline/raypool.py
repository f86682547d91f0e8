"""The Ray executor: joins or starts Ray (:func:`run`), then carries out the scheduler's
actions on actors: starts them, submits calls, waits, kills. No decisions. The only module of
the pipeline that imports ``ray`` (besides the Ray Data stage).

Every decision (what to send where, what a death or a timeout means) is the policy's
(:mod:`pipeline.scheduler`); this module turns its actions into actor calls and Ray's answers
into its events. Ray failures that are not one actor's death (the cluster's control plane
gone) end the run with :class:`~pipeline.errors.InfraError` (exit 3, resumable).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

import ray

from pipeline.errors import (
    InfraError,
    reraise_if_interrupted,
    restore_signal_handlers,
    signal_handlers,
)
from pipeline.items import Shard, StyleRef, WorkItem
from pipeline.jobconfig import JobConfig, JobConfigError
from pipeline.rows import Row
from pipeline.scheduler import (
    Action,
    Prepare,
    Scheduler,
    Start,
    Stop,
    WorkerStartError,
    short_error,
)

if TYPE_CHECKING:
    from pipeline.worker import WorkerSpec

RowsCallback = Callable[[int, list[Row]], None]  # (shard id, rows of the whole shard)
SubmitHook = Callable[[str, dict, list[WorkItem]], None]  # (call, worker info, items)
POLL_S = 1.0
WAIT_NOTICE_S = 30.0  # while no worker is ready, say so this often
log = logging.getLogger(__name__)

_DEAD = (
    ray.exceptions.RayActorError,
    ray.exceptions.ActorUnavailableError,
    ray.exceptions.ObjectLostError,
)


class RayExecutor:
    """Carries out a :class:`Scheduler`'s actions on Ray actors until every shard is done."""

    def __init__(
        self,
        spec: WorkerSpec,
        styles: Mapping[str, StyleRef],
        actor_options: Mapping[str, Any],
        on_shard: RowsCallback,
        on_submit: SubmitHook | None = None,
        stream: IO[str] | None = None,
        worker_class: type | None = None,
    ):
        if worker_class is None:  # imported here: a stand-in worker needs no torch
            from pipeline.worker import StyleWorker

            worker_class = StyleWorker
        # the actor: the plain class, one call at a time, never restarted by Ray (a death
        # is the policy's event)
        self.actor_class: Any = ray.remote(max_restarts=0, max_task_retries=0)(worker_class)
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
                if (
                    policy.waiting_for_workers()
                    and not policy.infos
                    and time.monotonic() - notice > WAIT_NOTICE_S
                ):
                    notice = time.monotonic()
                    log.info(
                        "waiting for %d worker(s) of %s; %s",
                        policy.waiting_for_workers(),
                        self.actor_options,
                        describe_resources(),
                    )
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
        timeout = POLL_S if deadline is None else max(0.0, min(deadline - time.monotonic(), POLL_S))
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
                ref = self.actors[a.worker].prepare.remote(
                    a.shard, self.styles, dict(a.attempts), a.isolate
                )
                self._hook(policy, "prepare", a.worker, [i.item_id for i in a.shard.items])
            else:
                ref = self.actors[a.worker].run_batch.remote(list(a.item_ids))
                self._hook(policy, "batch", a.worker, list(a.item_ids))
            self.refs[a.worker], self.calls[a.worker] = ref, a

    def _hook(self, policy: Scheduler, call: str, wid: int, ids: list[str]) -> None:
        if self.on_submit is None:  # tests use it to kill a worker mid-shard
            return
        info, by_id = policy.call_of(wid)
        self.on_submit(call, info, [by_id[i] for i in ids])


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
    fmt = lambda r: ", ".join(
        f"{k} {r.get(k, 0):g}"
        if k != "memory"
        # noqa: E731
        else f"memory {r.get(k, 0) / 2**30:.1f} GiB"
        for k in keys
    )
    return f"the cluster has {fmt(total)} ({fmt(free)} free)"


# ------------------------------------------------------------------------- joining Ray


def _init_ray(job: JobConfig) -> bool:
    """Connect to (or start) Ray; True if this call started it (and must shut it down).

    ``address: null`` always starts a private local instance (``address="local"``), even with
    a cluster on the machine or ``RAY_ADDRESS`` set; any other address must answer within
    CONNECT_TIMEOUT_S or the job stops with a configuration error naming it."""
    if ray.is_initialized():
        return False
    # Ray's own warnings (token auth, /dev/shm size ...) only with -v (this logger at DEBUG)
    common: dict[str, Any] = dict(
        include_dashboard=False,
        logging_level=logging.WARNING if log.isEnabledFor(logging.DEBUG) else logging.ERROR,
    )
    if job.ray.address is None:
        ray.init(address="local", num_cpus=os.cpu_count() or 1, **common)
        return True
    address = job.ray.address
    _check_reachable(os.environ.get("RAY_ADDRESS") or address if address == "auto" else address)
    _use_saved_token()
    try:
        ray.init(address=address, **common)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as e:
        raise JobConfigError(
            f"ray.address {job.ray.address!r}: cannot join the cluster: "
            f"{' '.join(str(e).split())[:300]}"
        ) from None
    return True


CONNECT_TIMEOUT_S = 20.0


def _use_saved_token() -> None:
    """Ray 2.60 clusters require the token that ``ray start`` saved; ``ray.init`` loads it
    by itself only for ``address=None``, not for an explicit address (RAY_ADDRESS included)."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # another Ray version: it handles tokens its own way
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _check_reachable(address: str) -> None:
    """A TCP connection to HOST:PORT of the address (``ray.init`` would retry for minutes)."""
    import socket
    from urllib.parse import urlsplit

    if address == "auto":
        return  # ray.init finds the local cluster or fails at once
    target = urlsplit(address if "://" in address else f"ray://{address}")
    if not target.hostname or not target.port:
        return
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while True:
        try:
            with socket.create_connection((target.hostname, target.port), timeout=5):
                return
        except OSError as e:
            if time.monotonic() > deadline:
                raise JobConfigError(
                    f"ray.address {address!r}: nothing answers at {target.hostname}:"
                    f"{target.port} ({e.strerror or e}) after {CONNECT_TIMEOUT_S:g} s; start "
                    "the cluster first, or use ray.address: null for a local run"
                ) from None
            time.sleep(1.0)


def _actors(job: JobConfig, shards: int) -> tuple[int, dict[str, float], int]:
    """(number of workers, actor resource options, torch threads per worker).

    GPU workers when the cluster has GPUs. A joined cluster without any: with
    ``stylize.device: auto``, CPU workers (said on stderr); with ``device: cuda``, GPU workers
    anyway, for an autoscaler to bring GPU nodes (the job says every 30 s what it waits for,
    and stops after ``ray.startup_timeout_s``)."""
    res = ray.cluster_resources()
    cpus = job.ray.cpus_per_worker
    gpus = job.ray.gpus_per_worker if job.stylize.device != "cpu" else 0
    wait_for_gpus = job.ray.address is not None and job.stylize.device.startswith("cuda")
    if gpus > 0 and (res.get("GPU", 0) > 0 or wait_for_gpus):
        options = {"num_gpus": gpus, "num_cpus": cpus}
        auto = max(1, int(res.get("GPU", 0) // gpus))
        if res.get("GPU", 0) == 0:
            log.info(
                "no GPU in the cluster yet; asking for GPU workers of %s (stylize.device: "
                "%s); waiting up to ray.startup_timeout_s=%g s for the autoscaler",
                options,
                job.ray.address and job.stylize.device,
                job.ray.startup_timeout_s,
            )
    else:
        options = {"num_gpus": 0, "num_cpus": cpus}
        auto = int(res.get("CPU", 1) // cpus)
        if gpus > 0 and job.ray.address is not None:
            log.warning(
                "no GPU in the cluster (CPU %g, GPU 0): running CPU workers; set "
                "stylize.device: cuda to wait for GPU nodes instead",
                res.get("CPU", 0),
            )
    n = auto if job.ray.num_workers == "auto" else int(job.ray.num_workers)
    if job.ray.address is None and n > auto:  # an embedded instance never grows
        log.warning(
            "ray.num_workers=%d but this machine fits %d workers of %s; using %d",
            n,
            max(auto, 1),
            options,
            max(auto, 1),
        )
        n = auto
    return max(1, min(n, shards)), options, max(1, int(cpus))


def run(
    job: JobConfig,
    shards: list[Shard],
    spec_for: Callable[[int], WorkerSpec],
    styles: Mapping[str, StyleRef],
    on_shard: RowsCallback,
    policy_args: Mapping[str, Any],
    on_submit: SubmitHook | None = None,
    worker_class: type | None = None,
) -> tuple[list[dict], list[dict], dict[str, float]]:
    """Every shard on Ray actors: (the info of every worker that was ready, their style
    target cache figures, the cluster's resources). A private instance started here is shut
    down at the end, whatever happens. ``spec_for(threads)``: the workers' spec."""
    handlers = signal_handlers()
    started_ray = _init_ray(job)
    restore_signal_handlers(handlers)  # ray.init put in a SIGTERM handler of its own
    try:
        cluster = dict(ray.cluster_resources())
        n, actor_options, threads = _actors(job, len(shards))
        policy = Scheduler(
            shards,
            num_workers=n,
            **policy_args,
            describe=lambda: f"each asking for {actor_options}; {describe_resources()}",
        )
        executor = RayExecutor(
            spec_for(threads), styles, actor_options, on_shard, on_submit, worker_class=worker_class
        )
        try:
            try:
                workers = executor.run(policy)
            finally:
                cache_stats = executor.cache_stats
        except WorkerStartError as e:
            if policy.infos:  # workers ran, then none could be had: the cluster
                raise InfraError(f"lost every worker: {e}") from None
            raise
        return workers, cache_stats, cluster
    finally:
        if started_ray:
            ray.shutdown()
            # ray.shutdown puts back the default SIGTERM action (a silent exit): set the
            # handlers again, so that a signal during the final writes is one line (under
            # the command) and leaves no stray file
            restore_signal_handlers(handlers)


@contextlib.contextmanager
def local_instance(
    num_cpus: int, serializers: Sequence[tuple[type, Callable, Callable]] = (), **options: Any
) -> Iterator[None]:
    """A private local Ray instance for a benchmark (quiet, no dashboard, workers' lines not
    forwarded), with custom ``(class, serializer, deserializer)``s; shut down at the end."""
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        logging_level=logging.ERROR,
        log_to_driver=False,
        **options,
    )
    try:
        for cls, serializer, deserializer in serializers:
            ray.util.register_serializer(cls, serializer=serializer, deserializer=deserializer)
        yield
    finally:
        ray.shutdown()
