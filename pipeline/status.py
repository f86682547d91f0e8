"""``stylize status OUTPUT``: what a run folder holds, from its manifests alone.

The summary is computed on the manifest's columns (no row objects), so that it stays quick on
a run of millions of items; ``--json`` prints it as one JSON object (:func:`to_json`).
"""

from __future__ import annotations

from typing import IO, Any, Mapping

import pyarrow.compute as pc

from pipeline import manifest, storage
from pipeline.runfolder import MANIFEST_DIR, MANIFEST_FILE, RunFolder

FAILURES_SHOWN = 50  # failed rows listed by the summary (the manifest has them all)
_FAILURE_FIELDS = ("status", "style", "content_uri", "output_uri", "error_message", "attempt")


class NoRunError(FileNotFoundError):
    """The folder holds no run (no manifest part, no manifest.parquet)."""

    @classmethod
    def at(cls, output: str) -> NoRunError:
        return cls(f"{output}: no run here (no {MANIFEST_DIR}/ and no {MANIFEST_FILE})")


def summarize(output: str, options: Mapping[str, Any] | None = None,
              max_failures: int = FAILURES_SHOWN) -> dict[str, Any]:
    """Counts by status, the first failures, throughput and what is left, as plain
    JSON-able values (``failures``: the first ``max_failures`` failed rows, a few fields
    each; ``failed``: how many there are)."""
    options = dict(options or {})
    output = storage.canonical(output)
    folder = RunFolder(output)
    table = manifest.read_parts(output, options)
    if table.num_rows == 0:
        table = manifest.read_manifest(output, options) or table
    job = manifest.read_json(folder.job_json, options)
    run = manifest.read_json(folder.run_json, options)
    if table.num_rows == 0 and job is None:
        raise NoRunError.at(output)
    done = table.num_rows
    total = (job or {}).get("items_total", done)
    counts = ({s: n for s, n in zip(*[c.to_pylist() for c in
                                      pc.value_counts(table["status"]).flatten()])}
              if done else {})
    ok = pc.equal(table["status"], "ok")
    n_ok = counts.get("ok", 0)
    failed = table.filter(pc.invert(ok)).select(list(_FAILURE_FIELDS))
    start, end = pc.min(table["started_at"]).as_py(), pc.max(table["finished_at"]).as_py()
    span = (end - start).total_seconds() if start is not None and end is not None else 0.0
    busy = pc.sum(table.filter(ok)["duration_s"]).as_py() or 0.0
    manifest_uri = folder.manifest_file
    report = folder.report_index
    complete = storage.exists(manifest_uri, options) and done >= total
    return {
        "output": output,
        "total": total,
        "done": done,
        "left": max(0, total - done),
        "complete": complete,
        "counts": dict(sorted(counts.items())),
        "failed": done - n_ok,
        "failures": failed.slice(0, max_failures).to_pylist(),
        "images_per_hour": round(3600.0 * done / span, 1) if span > 0 else None,
        "seconds_per_image": round(busy / n_ok, 3) if n_ok else None,
        "manifest": manifest_uri if complete else None,
        "parts": folder.manifest_dir,
        "run_info": folder.run_json if run is not None else None,
        "run_exit_code": (run or {}).get("exit_code"),
        "report": report if storage.exists(report, options) else None,
    }


def to_json(info: Mapping[str, Any]) -> dict[str, Any]:
    """The ``stylize status --json`` object: the summary and the command's exit code."""
    return {"command": "status", "exit_code": 0, **info}


def print_status(info: Mapping[str, Any], stream: IO[str]) -> None:
    print(f"run:       {info['output']}", file=stream)
    print(f"items:     {info['done']} of {info['total']} done, {info['left']} left"
          f"{'' if info['left'] else ' (finished)'}", file=stream)
    for status, n in info["counts"].items():
        print(f"  {status:<15} {n}", file=stream)
    if info["images_per_hour"] is not None:
        per = info["seconds_per_image"]
        print(f"throughput: {info['images_per_hour']:.1f} items/h over the run's span"
              f"{f', {per:.2f} s of worker time per ok image' if per is not None else ''}",
              file=stream)
    failures = info["failures"]
    if failures:
        print(f"failures ({info['failed']}):", file=stream)
        for r in failures:
            print(f"  {r['status']:<15} {r['style']}: {r['error_message']}", file=stream)
        if info["failed"] > len(failures):
            print(f"  ... and {info['failed'] - len(failures)} more (see the manifest)",
                  file=stream)
    if info["manifest"]:
        print(f"manifest:  {info['manifest']}", file=stream)
    if info.get("report"):
        print(f"report:    {info['report']} (stylize report {info['output']} rewrites it)",
              file=stream)
    else:
        print(f"report:    none yet; stylize report {info['output']} writes it", file=stream)
