"""The driver: one job from config to manifest, in four phases over one :class:`RunState`.

1. plan: validate and list (exit 2 on any problem, before any GPU work or any write);
2. resume (:mod:`pipeline.resume`): take the output folder's lease, check what it holds
   (resume / refuse / overwrite; damaged files to quarantine, stale temporaries removed),
   the work items and the shards not yet finished (and earlier transient failures);
3. run: the scheduler on Ray actors (:mod:`pipeline.raypool`) or in this process
   (:mod:`pipeline.inline`), one manifest part per finished shard;
4. finish (:mod:`pipeline.finish`): manifest.parquet, grid, run.json, report, summary.

Storage or the cluster failing during the run: InfraError (exit 3), every part written so
far kept. Where the outputs go (files or shard tars) is the container's business
(:mod:`pipeline.containers`).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import IO

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import containers, manifest, resume, storage
from pipeline.errors import InfraError
from pipeline.finish import finish
from pipeline.items import Plan, WorkItem, make_items, make_shards
from pipeline.jobconfig import JobConfig
from pipeline.lease import Lease
from pipeline.progress import Progress
from pipeline.redact import secret_values
from pipeline.rows import Row
from pipeline.runfolder import RunFolder
from pipeline.runstate import ExtraColumns, JobResult, RunState
from pipeline.sources import check_styles_load, list_inputs, list_styles
from pipeline.storage import StorageError
from pipeline.worker import WorkerSpec

__all__ = ["JobResult", "run_job"]
SubmitHook = Callable[[str, dict, list], None]  # (call, worker info, items): a test hook
log = logging.getLogger(__name__)


def run_job(
    job: JobConfig,
    *,
    stream: IO[str] | None = None,
    on_submit: SubmitHook | None = None,
    worker_class: type | None = None,
    takeover: bool = False,
) -> JobResult:
    """Run a job to the end. Raises JobConfigError/SourceError/StorageError (exit 2) for a
    problem found up front, LeaseHeld (exit 2) when another driver runs the output folder,
    InfraError (exit 3) when storage or the cluster fails during the run, Interrupted on
    SIGINT/SIGTERM; per-item failures are manifest rows (exit 1). ``takeover``: take the
    folder's lease from a driver that is gone. ``on_submit`` and ``worker_class`` (a
    stand-in for StyleWorker) are for tests and the pipeline benchmark."""
    state = plan(job)
    job = state.job
    lease = Lease(job.output, job.storage_options, timeout_s=job.lease_timeout_s, takeover=takeover)
    lease.acquire()
    try:
        load(state)
        run(state, lease, on_submit, worker_class)
        try:
            return finish(state, stream or sys.stdout)
        except StorageError as e:
            raise InfraError(
                f"cannot write the run's final files: {e}; every finished item is kept in its part"
            ) from None
    finally:
        lease.release()


# ------------------------------------------------------------------------------- 1. plan


def _assignment(job: JobConfig, n_styles: int) -> Plan:
    return Plan(job.assignment(n_styles), job.layout, job.sweep_points(), job.point_hashes())


def plan(job: JobConfig, probe: bool = True) -> RunState:
    """Validate the job and list its inputs and styles: nothing is written (but, with
    ``probe``, a probe file, to know the output is writable)."""
    job = job.replace(output=storage.canonical(job.output))
    storage.set_retry_budget(job.io_retry_s)
    t_start, started_at = time.monotonic(), manifest.now()
    listing = list_inputs(job)
    for line in listing.report():
        log.warning("%s", line)
    styles = list_styles(job)
    check_styles_load(styles, job.storage_options)
    if probe:
        storage.check_writable(job.output, job.storage_options, RunFolder(job.output).manifest_dir)
    _assignment(job, len(styles))  # its errors before anything is touched
    return RunState(
        job,
        listing,
        styles,
        containers.for_job(job),
        resume.fingerprint(job, styles, listing.identity),
        t_start,
        started_at,
    )


# ----------------------------------------------------------------------------- 2. resume


def load(s: RunState) -> None:
    """What the folder holds (under the lease): refuse another job, quarantine what is
    damaged, then the items, what is kept and the shards left to do."""
    job, options = s.job, s.job.storage_options
    s.damage = manifest.Damage(job.output, options, repair=True)
    previous = resume.check_folder(job, s.fingerprint, s.damage, s.container)
    manifest.remove_stale_temporaries(job.output, options)
    s.container.clean()
    s.items = s.container.stage(job_items(s))
    manifest.write_json(
        RunFolder(job.output).job_json,
        {"fingerprint": s.fingerprint, "items_total": len(s.items)},
        options,
    )
    if job.limit is not None and job.limit < len(s.items):
        s.items = trial(s.items, job.limit)
        log.info(
            "a trial: %d of the job's items (limit: %d); the full run resumes them",
            len(s.items),
            job.limit,
        )
    ids = pa.array([i.item_id for i in s.items], pa.string())
    s.kept, s.tries = resume.previous_rows(job, previous, ids)
    done = pc.is_in(ids, value_set=s.kept["item_id"]).to_pylist()
    s.todo = [i for i, d in zip(s.items, done) if not d]
    if job.assign != "all":  # one style per shard where possible: its targets computed once
        s.todo.sort(key=lambda i: (i.style, i.index))
    first = max(manifest.part_ids(job.output, options), default=-1) + 1
    s.shards = make_shards(s.todo, job.shard_size, first_id=first)
    s.new_tables = manifest.ShardTables(first)
    s.extra = ExtraColumns(job, s.listing, s.items)
    s.t_listed = time.monotonic()
    if s.tries:
        log.info(
            "trying %d earlier failure(s) again (retry_failed: %s)", len(s.tries), job.retry_failed
        )


def job_items(s: RunState) -> list[WorkItem]:
    """Every work item of the job (content x style x sweep point), in job order."""
    job = s.job
    return make_items(
        s.listing.contents,
        s.styles,
        job.output,
        job.output_format,
        job.params_hash,
        _assignment(job, len(s.styles)),
    )


def trial(items: list[WorkItem], n: int | None) -> list[WorkItem]:
    """``n`` of the job's items, the same ones every time (the smallest item ids: a stable,
    even draw over contents and styles, as ids are hashes), in job order; all without
    ``n`` or with ``n`` at least their number."""
    if n is None or n >= len(items):
        return items
    chosen = set(sorted(i.item_id for i in items)[:n])
    return [i for i in items if i.item_id in chosen]


# -------------------------------------------------------------------------------- 3. run


def spec(job: JobConfig, threads: int) -> WorkerSpec:
    """What every worker is built from (``threads``: torch threads; 0 = torch's default)."""
    cache = None if job.target_cache_mb is None else int(job.target_cache_mb * 2**20)
    return WorkerSpec(
        job.stylize,
        job.params_hash,
        job.output_format,
        job.output_quality,
        job.output_bit_depth,
        dict(job.storage_options),
        threads=threads,
        io_retry_s=job.io_retry_s,
        points=tuple(job.sweep_points()),
        target_cache_bytes=cache,
    )


def run(
    s: RunState, lease: Lease, on_submit: SubmitHook | None = None, worker_class: type | None = None
) -> None:
    """The shards left, on Ray or in this process; each finished shard sealed by its
    container and recorded in its manifest part as it comes."""
    job, options = s.job, s.job.storage_options
    n_kept = len(s.items) - len(s.todo)
    kept_ok = pc.sum(pc.equal(s.kept["status"], "ok")).as_py() or 0
    progress = Progress(len(s.items), n_kept, n_kept - kept_ok, stream=sys.stderr)
    secrets = secret_values(options)
    extra = s.extra.for_row if s.extra else (lambda item_id: {})

    def on_shard(shard_id: int, rows: list[Row]) -> None:
        lease.check()  # another driver took the folder over: stop before writing
        try:
            rows = s.container.seal(shard_id, rows, extra, secrets)
        except StorageError as e:
            raise InfraError(
                f"cannot write the tar of shard {shard_id}: {e}; the "
                f"{progress.new} items recorded so far are kept"
            ) from None
        try:
            s.new_tables.add(
                shard_id, manifest.write_part(job.output, shard_id, rows, options, secrets)
            )
        except StorageError as e:
            raise InfraError(
                f"cannot write the manifest part of shard {shard_id}: {e}; the "
                f"{progress.new} items recorded so far are kept"
            ) from None
        progress.update(rows)

    styles = {st.name: st for st in s.styles}
    policy_args = {
        "max_attempts": job.max_attempts,
        "item_timeout_s": job.item_timeout_s,
        "startup_timeout_s": job.ray.startup_timeout_s,
        "tries": s.tries,
    }
    try:
        if s.shards and job.ray.address == "inline":
            from pipeline import inline

            s.workers, s.cache_stats, s.cluster = inline.run(
                s.shards, spec(job, threads=0), styles, on_shard, policy_args, worker_class
            )
        elif s.shards:
            from pipeline import raypool  # imports Ray: only when the job uses it

            s.workers, s.cache_stats, s.cluster = raypool.run(
                job,
                s.shards,
                lambda threads: spec(job, threads),
                styles,
                on_shard,
                policy_args,
                on_submit,
                worker_class,
            )
    finally:
        progress.close()
    s.t_run = time.monotonic()
    s.container.finish()
