"""``stylize quality``, in two modes told apart by a positional argument
(:func:`is_folder_call`):

- ``stylize quality OUTPUT`` (a folder anywhere among the options): the quality figures
  (:mod:`stylize.figures`) of every ok item of a run folder, recomputed from its files
  (outputs, contents, styles): for runs made before the figures existed, or to compare runs
  with the same network. Writes ``_manifest/quality.parquet`` (item_id, style, the figures)
  and prints the median per style; with ``--artfid DIR`` also the run's ArtFID
  (:func:`run_artfid`, which the finish phase calls too for the job key ``artfid_weights``).
- ``stylize quality [--pairs N] [--pair CONTENT STYLE] ...`` (no positional argument): the
  engine's picture-quality check (:func:`stylize.quality.run`) on the bundled samples or
  ``--pair`` files: one line per result, a summary per init, or with ``--json`` one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import manifest, storage
from pipeline.errors import UsageError
from pipeline.jobconfig import apply_overrides, artfid_weight_files
from pipeline.redact import redact_text, secret_values
from pipeline.runfolder import RunFolder
from pipeline.shell import Parser
from pipeline.status import NoRunError
from pipeline.webdataset import read_member
from stylize.figures import FIGURES, MEANINGS
from stylize.quality import INITS, PAIRS, QualityOptions

if TYPE_CHECKING:
    from stylize.artfid import ArtFID
    from stylize.records import Style


def _folder_parser() -> argparse.ArgumentParser:
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
    p.add_argument(
        "--artfid",
        metavar="DIR",
        help="also the run's ArtFID, from the weight files in DIR (art_inception.pth or "
        "pt_inception-*.pth, alexnet-owt-*.pth, alex.pth; none is downloaded), written "
        "beside the manifest parts",
    )
    return p


# ------------------------------------------------------------------ a run folder's ArtFID

ARTFID_CHUNK = 16  # items through ArtFID's networks together (stylize.artfid.ArtFIDSums)
ARTFID_READERS = 8  # items read and decoded at once, up to two chunks ahead of the networks
ARTFID_COLUMNS = ("item_id", "style", "output_uri", "content_uri", "content_uri_bytes")


def run_artfid(
    output: str,
    options: Mapping[str, Any],
    scorer: ArtFID,
    limit: int | None = None,
    table: pa.Table | None = None,
) -> dict[str, Any]:
    """ArtFID (:class:`stylize.artfid.ArtFIDSums`) of the run folder's ok items (the first
    ``limit``): what ``stylize quality OUTPUT --artfid DIR`` and the job key
    ``artfid_weights`` (at the end of a run) compute, the JSON of artfid.json. ``table``: the
    run's manifest where the caller holds it (else read; an unfinished run's parts). Each
    item: its output, its content at the output's size (as the engine sized it), its style's
    first image; one that cannot be read is counted under ``skipped``."""
    from stylize.artfid import ArtFIDSums

    rows, read = _artfid_items(output, options, limit, table)
    sums = ArtFIDSums(scorer, chunk=ARTFID_CHUNK)
    with ThreadPoolExecutor(ARTFID_READERS) as pool:
        for item in _ahead(pool, read, rows, 2 * ARTFID_CHUNK):
            if isinstance(item, Exception):
                sums.skip(item)
            else:
                sums.add(*item)
    figures = sums.figures()
    if figures.get("why"):
        figures["why"] = redact_text(figures["why"], secret_values(options))
    return figures


def _artfid_items(
    output: str, options: Mapping[str, Any], limit: int | None, table: pa.Table | None
) -> tuple[list[dict[str, Any]], Callable[[dict[str, Any]], Any]]:
    """(the ok rows, the first ``limit``; a function reading one into (content, result,
    style), or the exception that stopped it)."""
    from stylize.engine import Style
    from stylize.images import decode_image, resize_to, to_tensor

    table, job = _run_table(output, options, table)
    ok = table.filter(pc.equal(table["status"], "ok"))
    ok = ok.select([c for c in ARTFID_COLUMNS if c in ok.column_names])
    rows = (ok.slice(0, limit) if limit is not None else ok).to_pylist()
    refs = (job.get("fingerprint") or {}).get("styles") or {}
    styles: dict[str, Style | Exception] = {}  # by name: its first image (ArtFID's style set)

    def style(name: str) -> Style:
        if name not in styles:  # readers may race to it: the same image either way
            try:
                ref = refs.get(name)
                if ref is None:
                    raise KeyError(f"style {name!r} is not in the run's job file")
                uri = ref["uris"][0]
                image = to_tensor(decode_image(storage.read_bytes(uri, options), name=uri))
                styles[name] = Style(name, (image,))
            except Exception as e:  # noqa: BLE001 - its items are skipped with the reason
                styles[name] = e
        found = styles[name]
        if isinstance(found, Exception):
            raise found
        return found

    def read(row: dict[str, Any]) -> tuple[Any, Any, Style] | Exception:
        try:
            result = to_tensor(decode_image(read_member(row["output_uri"], options)))
            h, w = result.shape[-2:]
            photo = decode_image(storage.read_bytes(manifest.raw_content_uri(row), options))
            return to_tensor(resize_to(photo, w, h)), result, style(row["style"])
        except Exception as e:  # noqa: BLE001 - counted under skipped, the first named
            return e

    return rows, read


def _ahead(
    pool: Executor, fn: Callable[[Any], Any], items: Sequence[Any], window: int
) -> Iterator[Any]:
    """``fn`` of each item, in order, at most ``window`` of them in flight (``pool.map``
    would hold every result of a million rows)."""
    waiting: deque = deque()
    for item in items:
        waiting.append(pool.submit(fn, item))
        if len(waiting) >= window:
            yield waiting.popleft().result()
    while waiting:
        yield waiting.popleft().result()


def write_artfid(output: str, figures: Mapping[str, Any], options: Mapping[str, Any]) -> str:
    """``figures`` (:func:`run_artfid`) to the run folder's artfid.json; its URI."""
    uri = RunFolder(output).artfid_file
    manifest.write_json(uri, figures, options)
    return uri


def artfid_line(a: Mapping[str, Any]) -> str:
    """The one line that says a run's ArtFID (``a``: artfid.json's figures)."""
    figures = (
        f"ArtFID {a['artfid']:.4g} (FID {a['fid']:.4g}, LPIPS {a['lpips']:.4g})"
        if a.get("artfid") is not None
        else "ArtFID not computed"
    )
    inception = f", {a['inception']} Inception" if a.get("inception") else ""
    why = f"; {a['why']}" if a.get("why") else ""
    return f"{figures} of {a.get('items', 0)} items against {a.get('styles', 0)} style(s){inception}{why}"


def is_folder_call(argv: Sequence[str]) -> bool:
    """Whether ``stylize quality ARGV`` names a folder: a bare word that is no option's value
    (the options of both modes counted), or anything after ``--``."""
    values: dict[str, int] = {}  # option -> how many values follow it
    for parser in (_samples_parser(), _folder_parser()):
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


def _run_table(
    output: str, options: Mapping[str, Any], table: pa.Table | None = None
) -> tuple[pa.Table, dict[str, Any]]:
    """(the run's rows: ``table``, else its manifest, else its parts for an unfinished run;
    its job.json); NoRunError where the folder holds no run."""
    if table is None:
        table = manifest.read_manifest(output, options)
        if table is None or table.num_rows == 0:
            table = manifest.read_parts(output, options)
    job = manifest.read_json(RunFolder(output).job_json, options) or {}
    if table.num_rows == 0 and not job:
        raise NoRunError.at(output)
    return table, job


def recompute(
    output: str,
    options: Mapping[str, Any],
    device: str = "auto",
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """The figures of the folder's ok items: one row of ``manifest.QUALITY_SCHEMA`` each
    (item_id, style, FIGURES, error: why a figure is missing). A masked item (its ``mask_uri``; the job's ``masks`` sides)
    gets region-aware style figures, its mask read again as the worker reads it."""
    from stylize import figures as fg
    from stylize.engine import Style, Stylizer
    from stylize.images import decode_image, resize_to, to_tensor

    table, job = _run_table(output, options)
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

    sides = (job.get("fingerprint") or {}).get("masks") or {}

    def regions(r: Mapping[str, Any], photo: Any, h: int, w: int) -> list[Any] | None:
        """A masked item's regions as the worker gives them to the engine (its mask read
        through storage and resized to the output as the worker does); None without one."""
        if not r.get("mask_uri"):
            return None
        from pipeline.worker import load_mask

        fore, back = sides.get("foreground"), sides.get("background")
        if fore is None and back is None:
            raise KeyError("the item has a mask_uri but the run's job file names no masks")
        uri = r["mask_uri"]
        data = storage.read_bytes(uri, options)
        m = load_mask(data, f"mask {uri}", (h, w), photo.size, fore is not None, back is not None)
        return [
            *([(style(fore), m)] if fore is not None else []),
            *([(style(back), 1 - m)] if back is not None else []),
        ]

    out: list[dict[str, Any]] = []
    for r in rows:
        values: dict[str, Any] = {"item_id": r["item_id"], "style": r["style"]}
        try:
            result = to_tensor(decode_image(read_member(r["output_uri"], options)))
            h, w = result.shape[-2:]
            photo = decode_image(storage.read_bytes(manifest.raw_content_uri(r), options))
            content = to_tensor(resize_to(photo, w, h))  # as the engine sized it
            guide = regions(r, photo, h, w)  # masked items: region-aware style figures
            values.update(
                taker.take(
                    result[None],
                    content[None],
                    [style(r["style"])],
                    regions=None if guide is None else [guide],
                )[0]
            )
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
    """``stylize quality ...``: a run folder's figures, or the check on samples."""
    return (folder_main if is_folder_call(argv or []) else samples_main)(argv)


def folder_main(argv: Sequence[str] | None = None) -> int:
    """``stylize quality OUTPUT``."""
    args = _folder_parser().parse_args(argv)
    options = apply_overrides({}, args.storage_option)
    scorer = None
    if args.artfid is not None:  # its files checked and loaded before the long part
        from stylize.artfid import ArtFID

        try:
            files = artfid_weight_files(os.path.expanduser(args.artfid))
        except ValueError as e:
            raise UsageError(f"--artfid {args.artfid}: {e}") from None
        scorer = ArtFID(*files, device=args.device)
    try:
        rows = recompute(args.output, options, args.device, args.limit)
    except NoRunError as e:
        raise UsageError(str(e)) from None
    target = manifest.write_quality(args.output, rows, options)
    found = medians(rows)
    failed = sum(1 for r in rows if r.get("error"))
    summary: dict[str, Any] = {"items": len(rows), "failed": failed, "file": target}
    if scorer is not None:
        summary["artfid"] = run_artfid(args.output, options, scorer, args.limit)
        summary["artfid_file"] = write_artfid(args.output, summary["artfid"], options)
    if args.json:
        print(json.dumps({**summary, "styles": found}))
        return 0
    width = max([5, *(len(s) for s in found)])
    print(f"{'style':{width}s}  " + "  ".join(f"{f:>16s}" for f in FIGURES))
    for style, figs in found.items():
        cells = "  ".join(f"{'-' if v is None else f'{v:.4g}':>16s}" for v in figs.values())
        print(f"{style:{width}s}  {cells}")
    print(f"{len(rows)} items ({failed} without all figures); written to {target}")
    if scorer is not None:
        print(f"{artfid_line(summary['artfid'])}; written to {summary['artfid_file']}")
    for f in FIGURES:
        print(f"  {f}: {MEANINGS[f]}", file=sys.stderr)
    return 0


# ------------------------------------------------------------ the check on the samples


def _samples_parser() -> argparse.ArgumentParser:
    from stylize.config import PRECISIONS, PRESETS

    d = QualityOptions()
    p = Parser(
        prog="stylize quality",
        description="How the pictures look, in figures anyone can rerun.",
        epilog="With a run folder (stylize quality OUTPUT ...), the quality figures of its "
        "items are recomputed instead: stylize quality OUTPUT --help.",
    )
    p.add_argument("--preset", default=d.preset, choices=tuple(PRESETS))
    p.add_argument("--size", type=int, default=d.size, help="longest side, pixels")
    p.add_argument("--iterations", type=int, default=d.iterations)
    p.add_argument(
        "--pairs",
        type=int,
        default=d.pairs,
        help=f"how many bundled photo x painting pairs (1-{len(PAIRS)})",
    )
    p.add_argument(
        "--pair",
        nargs=2,
        action="append",
        metavar=("CONTENT", "STYLE"),
        help="image files instead of the bundled samples (repeatable)",
    )
    p.add_argument("--init", default=",".join(INITS), help="noise,content (comma list)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any engine option, e.g. --set noise_scale=0.1 (repeatable)",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device)
    p.add_argument("--precision", default=d.precision, choices=PRECISIONS)
    p.add_argument("--out", help="folder to save the pictures in (PNG)")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    return p


def _parse_set(text: str) -> tuple[str, object]:
    """``--set key=value``: the key as an engine option's name, the value as YAML reads it."""
    import yaml

    if "=" not in text:
        raise UsageError(f"--set {text!r}: expected key=value")
    key, value = text.split("=", 1)
    return key.strip().replace("-", "_"), yaml.safe_load(value)


def _samples_options(args: argparse.Namespace) -> QualityOptions:
    if not 1 <= args.pairs <= len(PAIRS):
        raise UsageError(f"--pairs: 1 to {len(PAIRS)}, got {args.pairs}")
    return QualityOptions(
        preset=args.preset,
        size=args.size,
        iterations=args.iterations,
        pairs=args.pairs,
        pair=tuple((c, s) for c, s in args.pair or ()),
        inits=tuple(args.init.split(",")),
        overrides=dict(_parse_set(s) for s in args.set),
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        out=args.out,
    )


def samples_main(argv: Sequence[str] | None = None) -> int:
    """``stylize quality [options]``: the engine's check on the samples (or ``--pair``
    files). A bad option, value or file is a :class:`UsageError` (exit 2, one line)."""
    from stylize.config import ConfigError
    from stylize.model import WeightsError
    from stylize.quality import run

    args = _samples_parser().parse_args(argv)
    opts = _samples_options(args)
    try:
        result = run(opts, on_row=lambda row: _print_row(row, args.json))
    except (ConfigError, WeightsError, ValueError, OSError) as e:
        raise UsageError(str(e)) from None
    if args.json:
        print(json.dumps(result))
    else:
        for init, s in result["summary"].items():
            print(f"{init}: " + ", ".join(f"{k} {v:.4g}" for k, v in s.items() if v is not None))
    return 0


def _print_row(row: dict[str, Any], quiet: bool) -> None:
    """One result's line: on stdout, or on stderr when stdout takes the JSON."""
    corr = "-" if row["noise_corr"] is None else f"{row['noise_corr']:+.3f}"
    print(
        f"{row['init']:8s} {row['content']:>12s} x {row['style']:<14s} "
        f"content {row['content_loss']:10.5g}  style {row['style_loss']:8.4g}  "
        f"total {row['total_loss']:10.5g}  speckle {row['speckle']:5.1f}  "
        f"border {row['border']:5.1f}  noise_corr {corr}  "
        + "  ".join(f"{f} {_fmt(row.get(f))}" for f in FIGURES)
        + f"  ({row['seconds']:.1f} s, figures {row.get('figures_s', 0.0):.3f} s)",
        flush=True,
        file=sys.stderr if quiet else sys.stdout,
    )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
