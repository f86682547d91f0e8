"""``stylize quality OUTPUT``: the quality figures (:mod:`stylize.figures`) of every ok item
of a run folder, recomputed from its files (outputs, contents, styles): for runs made before
the figures existed, or to compare runs with the same network. Writes
``_manifest/quality.parquet`` (item_id, style, the figures) and prints the median per style.

(``stylize quality`` without a folder is the engine's own picture-quality check,
:mod:`stylize.quality`.)
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
from typing import Any, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import manifest, storage
from pipeline.jobconfig import apply_overrides
from pipeline.runfolder import RunFolder
from pipeline.status import NoRunError
from pipeline.webdataset import read_member
from stylize.cli import Parser, UsageError
from stylize.figures import FIGURES, MEANINGS


def _parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="stylize quality",
        description="Recompute the quality figures of a run folder's ok items (stylize.figures) "
        "and print their medians per style.",
    )
    p.add_argument("output", help="the run folder (path or URL)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--limit", type=int, help="only the first N ok items")
    p.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true", help="the medians as one JSON object")
    return p


def recompute(
    output: str, options: Mapping[str, Any], device: str = "auto", limit: int | None = None
) -> pa.Table:
    """The figures of the folder's ok items (a table: item_id, style, FIGURES)."""
    from stylize import figures as fg
    from stylize.engine import Stylizer
    from stylize.images import decode_image, resize_to, to_tensor

    folder = RunFolder(output)
    table = manifest.read_manifest(output, options)
    job = manifest.read_json(folder.job_json, options) or {}
    if table is None:
        raise NoRunError(f"{output}: no manifest (not a finished run folder)")
    rows = [r for r in table.to_pylist() if r["status"] == "ok"][:limit]
    styles = (job.get("fingerprint") or {}).get("styles") or {}
    engine = Stylizer(fg.network_config(device))
    stats: dict[tuple[str, int], Any] = {}
    out: list[dict[str, Any]] = []
    for r in rows:
        values: dict[str, Any] = {"item_id": r["item_id"], "style": r["style"]}
        try:
            result = to_tensor(decode_image(read_member(r["output_uri"], options)))
            h, w = result.shape[-2:]
            photo = decode_image(storage.read_bytes(r["content_uri"], options))
            content = to_tensor(resize_to(photo, w, h))  # as the engine sized it
            key = (r["style"], max(h, w))
            if key not in stats:
                ref = styles[r["style"]]
                images = [
                    to_tensor(decode_image(storage.read_bytes(u, options))) for u in ref["uris"]
                ]
                stats[key] = fg.style_stats(engine.features, images, ref["weights"], max(h, w))
            values.update(fg.figures(engine.features, result[None], content[None], [stats[key]])[0])
        except Exception as e:  # noqa: BLE001 - a row without figures, and why
            values["error"] = f"{type(e).__name__}: {e}"
        out.append(values)
    columns = ["item_id", "style", *FIGURES, "error"]
    return pa.Table.from_pylist(
        [{c: v.get(c) for c in columns} for v in out],
        schema=pa.schema(
            [
                ("item_id", pa.string()),
                ("style", pa.string()),
                *((f, pa.float64()) for f in FIGURES),
                ("error", pa.string()),
            ]
        ),
    )


def medians(table: pa.Table) -> dict[str, dict[str, float | None]]:
    """Per style, the median of each figure over the items that have it."""
    out: dict[str, dict[str, float | None]] = {}
    rows = table.to_pylist()
    for style in sorted({r["style"] for r in rows}):
        mine = [r for r in rows if r["style"] == style]
        out[style] = {
            f: (statistics.median(v) if (v := [r[f] for r in mine if r[f] is not None]) else None)
            for f in FIGURES
        }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    options = apply_overrides({}, args.storage_option)
    try:
        table = recompute(args.output, options, args.device, args.limit)
    except NoRunError as e:
        raise UsageError(str(e)) from None
    buf = io.BytesIO()
    pq.write_table(table, buf)
    target = RunFolder(args.output).quality_file
    storage.write_bytes(target, buf.getvalue(), options, atomic=True)
    found = medians(table)
    failed = sum(1 for e in table["error"].to_pylist() if e)
    if args.json:
        print(
            json.dumps({"items": table.num_rows, "failed": failed, "file": target, "styles": found})
        )
        return 0
    width = max([5, *(len(s) for s in found)])
    print(f"{'style':{width}s}  " + "  ".join(f"{f:>16s}" for f in FIGURES))
    for style, figs in found.items():
        cells = "  ".join(f"{'-' if v is None else f'{v:.4g}':>16s}" for v in figs.values())
        print(f"{style:{width}s}  {cells}")
    print(f"{table.num_rows} items ({failed} without figures); written to {target}")
    for f in FIGURES:
        print(f"  {f}: {MEANINGS[f]}", file=sys.stderr)
    return 0
