"""``stylize status OUTPUT``: what a run folder holds, from its manifests alone."""

from __future__ import annotations

from collections import Counter
from typing import IO, Any, Mapping

from pipeline import manifest, storage


class NoRunError(FileNotFoundError):
    """The folder holds no run (no manifest part, no manifest.parquet)."""


def summarize(output: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Counts by status, failures, throughput and what is left, as a plain dict."""
    options = dict(options or {})
    output = storage.canonical(output)
    table = manifest.read_parts(output, options)
    if table.num_rows == 0:
        table = manifest.read_manifest(output, options) or table
    job = manifest.read_json(manifest.job_uri(output), options)
    if table.num_rows == 0 and job is None:
        raise NoRunError(f"{output}: no run here (no _manifest/ and no manifest.parquet)")
    rows = table.to_pylist()
    total = (job or {}).get("items_total", len(rows))
    counts = dict(Counter(r["status"] for r in rows))
    ok = [r for r in rows if r["status"] == "ok"]
    starts = [r["started_at"] for r in rows if r["started_at"] is not None]
    ends = [r["finished_at"] for r in rows]
    span = (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0
    busy = sum(r["duration_s"] or 0.0 for r in ok)
    return {
        "output": output,
        "total": total,
        "done": len(rows),
        "left": max(0, total - len(rows)),
        "counts": counts,
        "failures": [r for r in rows if r["status"] != "ok"],
        "images_per_hour": 3600.0 * len(rows) / span if span > 0 else None,
        "seconds_per_image": busy / len(ok) if ok else None,
        "complete": storage.exists(storage.join(output, "manifest.parquet"), options)
        and len(rows) >= total,
    }


def print_status(info: Mapping[str, Any], stream: IO[str], max_failures: int = 50) -> None:
    print(f"run:       {info['output']}", file=stream)
    print(f"items:     {info['done']} of {info['total']} done, {info['left']} left"
          f"{'' if info['left'] else ' (finished)'}", file=stream)
    for status, n in sorted(info["counts"].items()):
        print(f"  {status:<15} {n}", file=stream)
    if info["images_per_hour"] is not None:
        per = info["seconds_per_image"]
        print(f"throughput: {info['images_per_hour']:.1f} items/h over the run's span"
              f"{f', {per:.2f} s of worker time per ok image' if per is not None else ''}",
              file=stream)
    failures = info["failures"]
    if failures:
        print(f"failures ({len(failures)}):", file=stream)
        for r in failures[:max_failures]:
            print(f"  {r['status']:<15} {r['style']}: {r['error_message']}", file=stream)
        if len(failures) > max_failures:
            print(f"  ... and {len(failures) - max_failures} more", file=stream)
