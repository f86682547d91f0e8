"""``stylize quality OUTPUT``: the quality figures (:mod:`stylize.figures`) of every ok item
of a run folder, recomputed from its files (outputs, contents, styles): for runs made before
the figures existed, or to compare runs with the same network. Writes
``_manifest/quality.parquet`` (item_id, style, the figures) and prints the median per style.

``stylize quality`` has two modes, told apart by a positional argument (:func:`is_folder_call`):
with a folder (anywhere among the options) it is this command; without one it is the
engine's picture-quality check on the bundled samples or ``--pair`` files
(:mod:`stylize.quality`, whose options take no positional argument).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any, Mapping, Sequence

import pyarrow.compute as pc

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


def is_folder_call(argv: Sequence[str]) -> bool:
    """Whether ``stylize quality ARGV`` names a folder: a bare word that is no option's value
    (the options of both modes counted), or anything after ``--``."""
    from stylize.quality import build_parser

    values: dict[str, int] = {}  # option -> how many values follow it
    for parser in (build_parser(), _parser()):
        for action in parser._actions:
            n = action.nargs
            count = 0 if n == 0 else n if isinstance(n, int) else 1
            values.update(dict.fromkeys(action.option_strings, count))
    skip = 0
    for word in argv:
        if skip:
            skip -= 1
        elif word == "--":
            return True
        elif word.startswith("-") and word != "-":
            skip = 0 if "=" in word else values.get(word, 0)
        else:
            return True
    return False


def recompute(
    output: str, options: Mapping[str, Any], device: str = "auto", limit: int | None = None
) -> list[dict[str, Any]]:
    """The figures of the folder's ok items: one row of ``manifest.QUALITY_SCHEMA`` each
    (item_id, style, FIGURES, error: why a figure is missing)."""
    from stylize import figures as fg
    from stylize.engine import Style, Stylizer
    from stylize.images import decode_image, resize_to, to_tensor

    table = manifest.read_manifest(output, options)
    if table is None or table.num_rows == 0:  # an unfinished run: its parts
        table = manifest.read_parts(output, options)
    job = manifest.read_json(RunFolder(output).job_json, options) or {}
    if table.num_rows == 0 and not job:
        raise NoRunError.at(output)
    ok = table.filter(pc.equal(table["status"], "ok"))
    rows = ok.slice(0, limit).to_pylist() if limit is not None else ok.to_pylist()
    refs = (job.get("fingerprint") or {}).get("styles") or {}
    taker = fg.FigureTaker(Stylizer(fg.network_config(device)).features)
    styles: dict[str, Style | Exception] = {}

    def style(name: str) -> Style:
        if name not in styles:
            try:
                ref = refs.get(name)
                if ref is None:
                    raise KeyError(f"style {name!r} is not in the run's job file")
                images = tuple(
                    to_tensor(decode_image(storage.read_bytes(u, options), name=u))
                    for u in ref["uris"]
                )
                styles[name] = Style(name, images, tuple(ref["weights"]))
            except Exception as e:  # noqa: BLE001 - its items get the reason, read once
                styles[name] = e
        found = styles[name]
        if isinstance(found, Exception):
            raise found
        return found

    out: list[dict[str, Any]] = []
    for r in rows:
        values: dict[str, Any] = {"item_id": r["item_id"], "style": r["style"]}
        try:
            result = to_tensor(decode_image(read_member(r["output_uri"], options)))
            h, w = result.shape[-2:]
            photo = decode_image(storage.read_bytes(manifest.raw_content_uri(r), options))
            content = to_tensor(resize_to(photo, w, h))  # as the engine sized it
            values.update(taker.take(result[None], content[None], [style(r["style"])])[0])
            if taker.failed:
                values["error"] = "; ".join(taker.failed)
        except Exception as e:  # noqa: BLE001 - a row without figures, and why
            values["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
        out.append(values)
    return out


def medians(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Per style, the median of each figure over the items that have it."""
    out: dict[str, dict[str, float | None]] = {}
    for style in sorted({r["style"] for r in rows}):
        mine = [r for r in rows if r["style"] == style]
        out[style] = {
            f: (
                statistics.median(v)
                if (v := [r[f] for r in mine if r.get(f) is not None])
                else None
            )
            for f in FIGURES
        }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    options = apply_overrides({}, args.storage_option)
    try:
        rows = recompute(args.output, options, args.device, args.limit)
    except NoRunError as e:
        raise UsageError(str(e)) from None
    target = manifest.write_quality(args.output, rows, options)
    found = medians(rows)
    failed = sum(1 for r in rows if r.get("error"))
    if args.json:
        print(json.dumps({"items": len(rows), "failed": failed, "file": target, "styles": found}))
        return 0
    width = max([5, *(len(s) for s in found)])
    print(f"{'style':{width}s}  " + "  ".join(f"{f:>16s}" for f in FIGURES))
    for style, figs in found.items():
        cells = "  ".join(f"{'-' if v is None else f'{v:.4g}':>16s}" for v in figs.values())
        print(f"{style:{width}s}  {cells}")
    print(f"{len(rows)} items ({failed} without all figures); written to {target}")
    for f in FIGURES:
        print(f"  {f}: {MEANINGS[f]}", file=sys.stderr)
    return 0
