"""``stylize status OUTPUT``: what a run folder holds, from its manifests alone.

The summary is computed on the manifest's columns (no row objects), so that it stays quick on
a run of millions of items; ``--json`` prints it as one JSON object (:func:`to_json`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, Any

import pyarrow.compute as pc

from pipeline import lease, manifest, storage
from pipeline.redact import escape_controls
from pipeline.runfolder import MANIFEST_DIR, MANIFEST_FILE, RunFolder

FAILURES_SHOWN = 50  # failed rows listed by the summary (the manifest has them all)
_FAILURE_FIELDS = ("status", "style", "content_uri", "output_uri", "error_message", "attempt")


class NoRunError(FileNotFoundError):
    """The folder holds no run (no manifest part, no manifest.parquet)."""

    @classmethod
    def at(cls, output: str) -> NoRunError:
        return cls(f"{output}: no run here (no {MANIFEST_DIR}/ and no {MANIFEST_FILE})")


def summarize(
    output: str, options: Mapping[str, Any] | None = None, max_failures: int = FAILURES_SHOWN
) -> dict[str, Any]:
    """Counts by status, the first failures, throughput and what is left, as plain
    JSON-able values (``failures``: the first ``max_failures`` failed rows, a few fields
    each; ``failed``: how many there are; ``images_per_hour``: :func:`manifest.throughput`,
    the figure run.json and the report show)."""
    options = dict(options or {})
    output = storage.canonical(output)
    folder = RunFolder(output)
    damage = manifest.Damage(output, options)  # listed, not moved: status only reads
    table = manifest.read_parts(output, options, damage=damage)
    if table.num_rows == 0:
        table = manifest.read_manifest(output, options, damage) or table
    job = manifest.read_json(folder.job_json, options, damage)
    run = manifest.read_json(folder.run_json, options, damage)
    if table.num_rows == 0 and job is None and not damage:
        raise NoRunError.at(output)
    owner = lease.holder(output, options)
    done = table.num_rows
    total = (job or {}).get("items_total", done)
    counts = (
        {s: n for s, n in zip(*[c.to_pylist() for c in pc.value_counts(table["status"]).flatten()])}
        if done
        else {}
    )
    ok = pc.equal(table["status"], "ok")
    n_ok = counts.get("ok", 0)
    failed = table.filter(pc.invert(ok)).select(list(_FAILURE_FIELDS))
    rate = manifest.throughput(table)
    timings = (run or {}).get("timings") or {}
    busy = pc.sum(table.filter(ok)["duration_s"]).as_py() or 0.0
    manifest_uri = folder.manifest_file
    report = folder.report_index
    complete = manifest.manifest_intact(output, options, damage) and done >= total
    return {
        "output": output,
        "total": total,
        "done": done,
        "left": max(0, total - done),
        "complete": complete,
        "counts": dict(sorted(counts.items())),
        "failed": done - n_ok,
        "failures": failed.slice(0, max_failures).to_pylist(),
        # the run's throughput (manifest.THROUGHPUT_LABEL), as run.json and the report
        "images_per_hour": rate.images_per_hour,
        "span_s": rate.span_s,
        # the last stylize run that computed items: its wall time, listing included
        "wall_s": timings.get("wall_s"),
        "command_images_per_hour": timings.get("command_images_per_hour"),
        "seconds_per_image": round(busy / n_ok, 3) if n_ok else None,
        "manifest": manifest_uri if complete else None,
        "parts": folder.manifest_dir,
        "run_info": folder.run_json if run is not None else None,
        "run_exit_code": (run or {}).get("exit_code"),
        "report": report if storage.exists(report, options) else None,
        # files that could not be read back (the next run moves them to quarantine)
        "unreadable": damage.lines(),
        "running": None
        if owner is None
        else {
            "host": owner.host,
            "pid": owner.pid,
            "started_at": owner.started_at,
            "heartbeat_age_s": round(owner.age_s(), 1),
        },
    }


def to_json(info: Mapping[str, Any]) -> dict[str, Any]:
    """The ``stylize status --json`` object: the summary and the command's exit code."""
    return {"command": "status", "exit_code": 0, **info}


def throughput_lines(figures: Mapping[str, Any]) -> list[str]:
    """The run's throughput and the last command's wall time in words, from run.json's
    timings or a status summary (the same keys)."""
    lines = []
    if figures.get("images_per_hour") is not None:
        per = figures.get("seconds_per_image")
        lines.append(
            f"throughput: {figures['images_per_hour']:,.1f} "
            f"{manifest.THROUGHPUT_LABEL}"
            f"{f'; {per:.2f} s of worker time per ok image' if per else ''}"
        )
    if figures.get("wall_s") is not None:
        rate = figures.get("command_images_per_hour")
        lines.append(
            f"command:    {figures['wall_s']:,.1f} s wall, listing included"
            f"{f'; {rate:,.1f} ok images/h' if rate is not None else ''} (the last "
            "stylize run that computed items)"
        )
    return lines


def print_status(info: Mapping[str, Any], stream: IO[str]) -> None:
    """The summary for people; every value from data with its control characters escaped."""

    def say(line: str) -> None:
        print(escape_controls(line), file=stream)

    say(f"run:       {info['output']}")
    running = info.get("running")
    if running:
        say(
            f"running:   now, by {running['host']} pid {running['pid']} (since "
            f"{running['started_at']}, heartbeat {running['heartbeat_age_s']:.0f} s ago)"
        )
    for line in info.get("unreadable") or ():
        say(f"unreadable: {line}")
    say(
        f"items:     {info['done']} of {info['total']} done, {info['left']} left"
        f"{'' if info['left'] else ' (finished)'}"
    )
    for status, n in info["counts"].items():
        say(f"  {status:<15} {n}")
    for line in throughput_lines(info):
        say(line)
    failures = info["failures"]
    if failures:
        say(f"failures ({info['failed']}):")
        for r in failures:
            say(f"  {r['status']:<15} {r['style']}: {r['error_message']}")
        if info["failed"] > len(failures):
            say(f"  ... and {info['failed'] - len(failures)} more (see the manifest)")
    if info["manifest"]:
        say(f"manifest:  {info['manifest']}")
    if info.get("report"):
        say(f"report:    {info['report']} (stylize report {info['output']} rewrites it)")
    else:
        say(f"report:    none yet; stylize report {info['output']} writes it")
