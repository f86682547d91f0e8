"""``stylize quality``, in two modes told apart by a positional argument
(:func:`is_folder_call`):

- ``stylize quality OUTPUT`` (a folder anywhere among the options): the quality figures
  (:mod:`stylize.figures`) of every ok item of a run folder, recomputed from its files
  (outputs, contents, styles): for runs made before the figures existed, or to compare runs
  with the same network. Writes ``_manifest/quality.parquet`` (item_id, style, the figures)
  and prints the median per style.
- ``stylize quality [--pairs N] [--pair CONTENT STYLE] ...`` (no positional argument): the
  engine's picture-quality check (:func:`stylize.quality.run`) on the bundled samples or
  ``--pair`` files: one line per result, a summary per init, or with ``--json`` one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow.compute as pc

from pipeline import manifest, storage
from pipeline.errors import UsageError
from pipeline.jobconfig import apply_overrides
from pipeline.runfolder import RunFolder
from pipeline.shell import Parser
from pipeline.status import NoRunError
from pipeline.webdataset import read_member
from stylize.figures import FIGURES, MEANINGS
from stylize.quality import INITS, PAIRS, QualityOptions


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


# ArtFID's three weight files (stylize.artfid): what each may be called in --artfid DIR
ARTFID_FILES = {
    "the Inception (ArtFID's art_inception.pth or pytorch-fid's pt_inception-*.pth)": (
        "art_inception*.pth",
        "pt_inception-*.pth",
    ),
    "torchvision's AlexNet (alexnet-owt-*.pth)": ("alexnet-*.pth", "alexnet.pth"),
    "LPIPS v0.1's linear layers (alex.pth of the lpips package)": ("alex.pth",),
}


def artfid_weights(folder: str) -> tuple[str, str, str]:
    """The paths of ArtFID's three weight files in the local folder ``folder`` (inception,
    alexnet, lpips); UsageError naming what is missing or ambiguous."""
    import fnmatch
    import os

    if not os.path.isdir(folder):
        raise UsageError(f"--artfid {folder}: not a folder (see ArtFID in docs/engine.md)")
    names = sorted(os.listdir(folder))
    found = []
    for what, patterns in ARTFID_FILES.items():
        match = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
        if len(match) != 1:
            why = "no file" if not match else f"{len(match)} files ({', '.join(match)})"
            raise UsageError(
                f"--artfid {folder}: {why} for {what}; put exactly one there "
                "(see ArtFID in docs/engine.md)"
            )
        found.append(os.path.join(folder, match[0]))
    return found[0], found[1], found[2]


class ArtFIDSums:
    """What the run's ArtFID is made of, gathered item by item (stylize.artfid): each item's
    LPIPS to its content, the Inception features of its result and of its style (the style's
    first image at the result's longest side, aspect kept)."""

    def __init__(self, scorer: Any) -> None:
        self.scorer = scorer
        self.lpips: list[float] = []
        self.results: list[Any] = []
        self.styles: list[Any] = []
        self._style_features: dict[tuple[str, int], Any] = {}
        self.skipped = 0  # ok items left out, and why the first was
        self.first_problem = ""

    def add(self, content: Any, result: Any, style: Any) -> None:
        """One ok item: ``content`` and ``result`` (3, H, W) in 0..255, its ``Style``; an item
        the networks cannot take (e.g. smaller than the Inception's 75 px) is counted and
        left out, the first reason kept."""
        try:
            self._add(content, result, style)
        except Exception as e:  # noqa: BLE001 - named in artfid.json's "why"
            self.skipped += 1
            self.first_problem = self.first_problem or f"{type(e).__name__}: {e}"[:300]

    def _add(self, content: Any, result: Any, style: Any) -> None:
        import torch.nn.functional as F

        side = max(result.shape[-2:])
        key = (style.key, side)
        if key not in self._style_features:
            image = style.images[0]
            h, w = image.shape[-2:]
            size = (max(1, round(h * side / max(h, w))), max(1, round(w * side / max(h, w))))
            image = F.interpolate(image[None], size=size, mode="bilinear", antialias=True)[0]
            self._style_features[key] = self.scorer.features([(image / 255).clamp(0, 1)])
        self.lpips.append(float(self.scorer.lpips([content / 255], [result / 255])[0]))
        self.results.append(self.scorer.features([result / 255]))
        self.styles.append(self._style_features[key])

    def figures(self) -> dict[str, Any]:
        """The JSON of _manifest/artfid.json: artfid, fid, lpips, items, styles, inception."""
        import statistics

        import torch

        from stylize.artfid import artfid, fid

        styles = len({name for name, _ in self._style_features})
        out: dict[str, Any] = {
            "artfid": None,
            "fid": None,
            "lpips": statistics.fmean(self.lpips) if self.lpips else None,
            "items": len(self.lpips),
            "styles": styles,
            "inception": self.scorer.flavour,
        }
        if self.skipped:
            out["skipped"] = self.skipped
        if len(self.results) < 2:
            first = f" (first left out: {self.first_problem})" if self.first_problem else ""
            out["why"] = f"ArtFID needs at least 2 ok items the networks can take{first}"
            return out
        out["fid"] = fid(torch.cat(self.results), torch.cat(self.styles))
        out["artfid"] = artfid(out["lpips"], out["fid"])
        if styles == 1:
            out["why"] = "one style: its FID is against a single picture (not comparable)"
        return out


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


def recompute(
    output: str,
    options: Mapping[str, Any],
    device: str = "auto",
    limit: int | None = None,
    artfid: ArtFIDSums | None = None,
) -> list[dict[str, Any]]:
    """The figures of the folder's ok items: one row of ``manifest.QUALITY_SCHEMA`` each
    (item_id, style, FIGURES, error: why a figure is missing); each item also given to
    ``artfid`` when there is one."""
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
            if artfid is not None:  # never fails the row's figures
                artfid.add(content, result, style(r["style"]))
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
    sums = None
    if args.artfid is not None:
        from stylize.artfid import ArtFID

        sums = ArtFIDSums(ArtFID(*artfid_weights(args.artfid), device=args.device))
    try:
        rows = recompute(args.output, options, args.device, args.limit, sums)
    except NoRunError as e:
        raise UsageError(str(e)) from None
    target = manifest.write_quality(args.output, rows, options)
    found = medians(rows)
    failed = sum(1 for r in rows if r.get("error"))
    summary: dict[str, Any] = {"items": len(rows), "failed": failed, "file": target}
    if sums is not None:
        summary["artfid"] = sums.figures()
        summary["artfid_file"] = RunFolder(args.output).artfid_file
        storage.write_bytes(
            summary["artfid_file"], json.dumps(summary["artfid"]).encode(), options, atomic=True
        )
    if args.json:
        print(json.dumps({**summary, "styles": found}))
        return 0
    width = max([5, *(len(s) for s in found)])
    print(f"{'style':{width}s}  " + "  ".join(f"{f:>16s}" for f in FIGURES))
    for style, figs in found.items():
        cells = "  ".join(f"{'-' if v is None else f'{v:.4g}':>16s}" for v in figs.values())
        print(f"{style:{width}s}  {cells}")
    print(f"{len(rows)} items ({failed} without all figures); written to {target}")
    if sums is not None:
        a = summary["artfid"]
        figures = (
            f"ArtFID {a['artfid']:.4g} (FID {a['fid']:.4g}, LPIPS {a['lpips']:.4g})"
            if a["artfid"] is not None
            else "ArtFID not computed"
        )
        why = f"; {a['why']}" if a.get("why") else ""
        print(
            f"{figures} of {a['items']} items against {a['styles']} style(s), "
            f"{a['inception']} Inception{why}; written to {summary['artfid_file']}"
        )
    for f in FIGURES:
        print(f"  {f}: {MEANINGS[f]}", file=sys.stderr)
    return 0


# ------------------------------------------------------------ the check on the samples


def _samples_parser() -> argparse.ArgumentParser:
    from stylize.config import PRECISIONS, PRESETS

    d = QualityOptions()
    p = argparse.ArgumentParser(
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
