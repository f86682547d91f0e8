"""The run report: ``{output}/report/index.html``, a static page to judge a run by eye.

manifest (or the parts of an unfinished run) + run.json + _manifest/job.json
  -> :class:`RunFacts`: aggregates on the columns (counts, histograms, throughput over time,
     per-style figures) and a bounded sample: at most ``gallery_per_style`` items per style
     (the same contents under every style, drawn reproducibly), the first ``max_failures``
     failures, their loss traces
  -> thumbnails of the sample (JPEG or WebP, read and written concurrently)
  -> ``report_pages.render``: HTML pages with inline SVG charts, one stylesheet
  -> written through fsspec; files of an earlier report that are not used any more removed.

Every link is relative and stays inside the run folder (pages and thumbnails in ``report/``;
``../``: the full-size outputs of the gallery, the contact sheets), so the report works from a
local disk and from static hosting of a bucket alike, shared with the outputs; no script,
nothing fetched at view time. A run of a million items gives the same few pages and at most a
few thousand thumbnails. Layout::

    report/index.html          counts, job, styles, failures, figures, loss curves
    report/style-N-P.html      page P of style N's gallery
    report/failures-P.html     the failures listed, page P (when the index cannot show them all)
    report/report.css
    report/thumbs/             c-*.webp contents, r-*.webp results, s-*.webp styles
"""

from __future__ import annotations

import fnmatch
import importlib.resources
import io
import math
import os
import sys
import urllib.parse
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, features

from pipeline import manifest, storage
from pipeline.reportfacts import ReportSettings, RunFacts, StyleStats
from pipeline.runfolder import GRID_GLOB, REPORT_INDEX, RunFolder, is_sweep_grid
from pipeline.status import NoRunError
from pipeline.webdataset import read_member, split_member_uri
from stylize.common import short_hash
from stylize.figures import FIGURES

DEFAULT_SETTINGS = ReportSettings()  # frozen: one instance serves every call
THUMB_EXT, THUMB_FORMAT = ("webp", "WEBP") if features.check("webp") else ("jpg", "JPEG")


# ------------------------------------------------------------------------------ the facts
def _load(
    output: str, options: Mapping[str, Any], table: pa.Table | None
) -> tuple[pa.Table, dict, dict, dict | None, list[str]]:
    """(the rows, job.json, run.json, artfid.json, the files that could not be read): a
    damaged file is named and left where it is (a report only reads); what is intact is
    shown."""
    damage = manifest.Damage(output, options)
    if table is None:
        table = manifest.read_manifest(output, options, damage)
        if table is None or table.num_rows == 0:
            table = manifest.read_parts(output, options, damage=damage)
    folder = RunFolder(output)
    job = manifest.read_json(folder.job_json, options, damage) or {}
    run = manifest.read_json(folder.run_json, options, damage) or {}
    if table.num_rows == 0 and not job and not damage:
        raise NoRunError.at(output)
    # figures recomputed by `stylize quality OUTPUT` fill those the rows lack (older runs)
    table = manifest.with_quality(table, manifest.read_quality(output, options, damage))
    artfid = manifest.read_json(folder.artfid_file, options, damage)
    return table, job, run, artfid, damage.lines()


def _value_counts(column: pa.ChunkedArray) -> dict[Any, int]:
    if len(column) == 0:
        return {}
    values, counts = pc.value_counts(column).flatten()
    return dict(zip(values.to_pylist(), counts.to_pylist()))


def _floats(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A numeric column as float64, nulls and non-finite values dropped."""
    a = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
    return a[np.isfinite(a)]


def _seconds(column: pa.ChunkedArray) -> np.ndarray:
    """A timestamp column as float seconds since the epoch (NaN for nulls)."""
    us = pc.cast(pc.cast(column, pa.timestamp("us", tz="UTC")), pa.int64())
    return pc.cast(us, pa.float64()).to_numpy(zero_copy_only=False) / 1e6


def _style_stats(table: pa.Table, job: Mapping) -> list[StyleStats]:
    if table.num_rows == 0:
        return []
    is_ok = pc.equal(table["status"], "ok")
    t = pa.table(
        {
            "style": table["style"],
            "ok": pc.cast(is_ok, pa.int64()),
            "loss": pc.if_else(is_ok, table["total_loss"], None),
            "content": pc.if_else(is_ok, table["content_loss"], None),
            "style_": pc.if_else(is_ok, table["style_loss"], None),
            "iterations": pc.cast(table["iterations"], pa.float64()),
            "seconds": table["duration_s"],
            **{f: pc.if_else(is_ok, table[f], None) for f in FIGURES},
        }
    )
    g = t.group_by("style").aggregate(
        [
            ("ok", "count"),
            ("ok", "sum"),
            ("loss", "approximate_median"),
            ("content", "approximate_median"),
            ("style_", "approximate_median"),
            ("iterations", "mean"),
            ("seconds", "mean"),
            *((f, "approximate_median") for f in FIGURES),
        ]
    )
    figures = [
        dict(zip(FIGURES, values))
        for values in zip(*(g[f"{f}_approximate_median"].to_pylist() for f in FIGURES))
    ]
    uris = {
        k: (v.get("uris") or [None])[0]
        for k, v in (job.get("fingerprint", {}).get("styles") or {}).items()
    }
    out = [
        StyleStats(
            n,
            0,
            c,
            s or 0,
            m,
            it,
            sec,
            uris.get(n),
            content_loss_median=cm,
            style_loss_median=sm,
            figures=fig,
        )
        for n, c, s, m, cm, sm, it, sec, fig in zip(
            g["style"].to_pylist(),
            g["ok_count"].to_pylist(),
            g["ok_sum"].to_pylist(),
            g["loss_approximate_median"].to_pylist(),
            g["content_approximate_median"].to_pylist(),
            g["style__approximate_median"].to_pylist(),
            g["iterations_mean"].to_pylist(),
            g["seconds_mean"].to_pylist(),
            figures,
        )
    ]
    out.sort(key=lambda s: s.name)
    for i, s in enumerate(out):
        s.index = i
    return out


_SAMPLE_FIELDS = [
    "item_id",
    "content_uri",
    "content_uri_bytes",
    "output_uri",
    "total_loss",
    "content_loss",
    "style_loss",
    "iterations",
    "duration_s",
    "width",
    "height",
    "loss_trace",
]


def output_link(output: str, uri: str | None) -> str | None:
    """The link from ``report/`` to the output file ``uri`` (``../<its path in the run
    folder>``, percent-encoded); None for a member of a shard tar or a file elsewhere."""
    root = output.rstrip("/") + "/"
    if not uri or not uri.startswith(root) or split_member_uri(uri) is not None:
        return None
    return "../" + urllib.parse.quote(uri[len(root) :], safe="/")


def _sample(
    table: pa.Table, styles: list[StyleStats], settings: ReportSettings, output: str
) -> None:
    """Pick each gallery style's items: ok rows ranked by a seeded permutation of the
    contents, so that a grid job shows the same contents under every style."""
    shown = styles[: settings.max_styles]
    if not shown or table.num_rows == 0:
        return
    per_style = max(
        settings.min_per_style,
        min(settings.gallery_per_style, settings.gallery_total // len(shown)),
    )
    contents = pc.dictionary_encode(table["content_uri"]).combine_chunks()
    rank = np.random.default_rng(0).permutation(len(contents.dictionary))[
        contents.indices.to_numpy(zero_copy_only=False)
    ]
    by_style = pc.dictionary_encode(table["style"]).combine_chunks()
    codes = by_style.indices.to_numpy(zero_copy_only=False)
    code_of = {v: i for i, v in enumerate(by_style.dictionary.to_pylist())}
    ok = pc.equal(table["status"], "ok").to_numpy(zero_copy_only=False)
    for s in shown:
        where = np.flatnonzero((codes == code_of[s.name]) & ok)
        pick = where[np.argsort(rank[where], kind="stable")[:per_style]]
        s.rows = table.select(_SAMPLE_FIELDS).take(pa.array(pick, pa.int64())).to_pylist()
        for r in s.rows:
            r["href_result"] = output_link(output, r["output_uri"])
        s.pages = max(1, math.ceil(len(s.rows) / settings.per_page))


def histogram(
    values: np.ndarray, bins: int, integer: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(edges, counts); ``integer``: bins of whole numbers, and a few values shown among
    their neighbours (every item at 500 iterations is one bar in the middle)."""
    if len(values) == 0:
        return np.array([0.0, 1.0]), np.array([0])
    lo, hi = float(values.min()), float(values.max())
    if integer:
        if hi - lo < 10:
            lo, hi = lo - (10 - (hi - lo)) // 2, hi + (11 - (hi - lo)) // 2
        n = int(hi - lo) + 1
        width = max(1, math.ceil(n / bins))
        edges = np.arange(lo - 0.5, hi + width + 0.5, width)[: max(2, math.ceil(n / width) + 1)]
    else:
        if hi - lo < 1e-12 * max(1.0, abs(hi)):
            lo, hi = lo - 0.5 * max(abs(lo) * 0.01, 1e-6), hi + 0.5 * max(abs(hi) * 0.01, 1e-6)
        edges = np.linspace(lo, hi, bins + 1)
    counts, edges = np.histogram(values, bins=edges)
    return edges, counts


def _figures(
    table: pa.Table, settings: ReportSettings
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str, float | None]:
    """(histograms, the throughput's time unit, mean s per ok item)."""
    ok = table.select(["total_loss", "iterations", "duration_s"]).filter(
        pc.equal(table["status"], "ok")
    )  # never the loss traces: a few columns of numbers
    loss = _floats(ok["total_loss"])
    seconds = _floats(ok["duration_s"])
    hists = {
        "loss": histogram(np.log10(loss[loss > 0]), settings.bins),
        "iterations": histogram(_floats(ok["iterations"]), settings.bins, integer=True),
        "seconds": histogram(seconds, settings.bins),
    }
    starts, ends = _seconds(table["started_at"]), _seconds(table["finished_at"])
    t0 = np.nanmin(starts) if np.isfinite(starts).any() else (np.nanmin(ends) if len(ends) else 0.0)
    span = float(np.nanmax(ends) - t0) if len(ends) else 0.0
    unit, scale = ("s", 1.0) if span < 180 else ("min", 60.0) if span < 3 * 3600 else ("h", 3600.0)
    if span > 0:
        bins = max(1, min(settings.bins * 2, len(ends) // 2))
        counts, edges = np.histogram((ends - t0) / scale, bins=bins, range=(0, span / scale))
        hists["throughput"] = (edges, counts / ((edges[1] - edges[0]) * scale / 3600.0))
    else:
        hists["throughput"] = (np.array([0.0, 1.0]), np.array([0]))
    return hists, unit, (float(seconds.mean()) if len(seconds) else None)


_FAILURE_FIELDS = [
    "item_id",
    "content_uri",
    "style",
    "status",
    "error_message",
    "attempt",
    "worker",
]


def _failures(table: pa.Table, settings: ReportSettings) -> tuple[int, list[dict]]:
    """(number of failures, the first ``max_failures`` failed rows in job order)."""
    if table.num_rows == 0:
        return 0, []
    where = np.flatnonzero(pc.not_equal(table["status"], "ok").to_numpy(zero_copy_only=False))
    rows = table.select(_FAILURE_FIELDS).take(pa.array(where[: settings.max_failures], pa.int64()))
    return len(where), rows.to_pylist()


def collect(
    output: str,
    options: Mapping[str, Any] | None = None,
    settings: ReportSettings = DEFAULT_SETTINGS,
    table: pa.Table | None = None,
) -> RunFacts:
    """The facts of the run folder ``output`` (``table``: its manifest, if already read)."""
    options = dict(options or {})
    output = storage.canonical(output)
    table, job, run, artfid, unreadable = _load(output, options, table)
    styles = _style_stats(table, job)
    _sample(table, styles, settings, output)
    hists, unit, per_ok = _figures(table, settings)
    failed, failures = _failures(table, settings)
    names = sorted(storage.listdir(output, options))
    sweep = [n for n in names if is_sweep_grid(n)] if (run.get("config") or {}).get("sweep") else []
    grids = [n for n in names if fnmatch.fnmatchcase(n, GRID_GLOB) and not is_sweep_grid(n)]
    rate = manifest.throughput(table)
    return RunFacts(
        output,
        run,
        job,
        _value_counts(table["status"]),
        table.num_rows,
        job.get("items_total", table.num_rows),
        rate.span_s,
        per_ok,
        hists,
        unit,
        styles,
        failed,
        failures,
        sweep,
        unreadable,
        images_per_hour=rate.images_per_hour,
        grids=grids,
        artfid=artfid,
    )


# ------------------------------------------------------------------------------ thumbnails
class _Thumbs:
    """Thumbnails to write (name -> source URI), rendered concurrently by :meth:`write`."""

    def __init__(self, root: str, options: Mapping[str, Any], size: int):
        self.root, self.options, self.size = root, options, size
        self.wanted: dict[str, str] = {}
        self.made: dict[str, tuple[int, int]] = {}  # name -> (width, height) written

    def add(self, kind: str, key: str, uri: str | None) -> str | None:
        if not uri:
            return None
        name = f"{kind}-{short_hash(key)}.{THUMB_EXT}"
        self.wanted.setdefault(name, uri)
        return name

    def _one(self, name: str, uri: str) -> tuple[int, int] | None:
        from stylize.images import decode_image

        try:
            img = decode_image(read_member(uri, self.options), name=uri)
            img.thumbnail((self.size, self.size), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            if THUMB_FORMAT == "WEBP":
                img.save(buf, THUMB_FORMAT, quality=82, method=4)
            else:
                img.save(buf, THUMB_FORMAT, quality=85, optimize=True)
            storage.write_bytes(
                storage.join(self.root, "thumbs", name), buf.getvalue(), self.options
            )
            return img.size
        except Exception:  # noqa: BLE001 - an unreadable image is a placeholder tile
            return None

    def write(self, threads: int) -> None:
        # one task per WebDataset shard (its tar is read once, by one thread) or per file
        groups: dict[str, list[tuple[str, str]]] = {}
        for name, uri in self.wanted.items():
            tar = split_member_uri(uri)
            groups.setdefault(tar[0] if tar else uri, []).append((name, uri))
        if not groups:
            return

        def run(group: list[tuple[str, str]]) -> list[tuple[str, tuple[int, int] | None]]:
            return [(name, self._one(name, uri)) for name, uri in group]

        with ThreadPoolExecutor(max(1, min(threads, len(groups)))) as pool:
            for done in pool.map(run, groups.values()):
                self.made.update((name, size) for name, size in done if size is not None)


def _thumbnails(
    facts: RunFacts, root: str, options: Mapping[str, Any], settings: ReportSettings
) -> dict[str, tuple[int, int]]:
    """Write the thumbnails of the styles and the sample; name each on its style and row."""
    thumbs = _Thumbs(root, options, settings.thumb_size)
    for s in facts.styles:
        s.thumb = thumbs.add("s", s.name, s.uri)
        for r in s.rows or []:
            r["thumb_result"] = thumbs.add("r", r["item_id"], r["output_uri"])
            r["thumb_content"] = thumbs.add("c", r["content_uri"], manifest.raw_content_uri(r))
    thumbs.write(settings.threads)
    return thumbs.made


# ------------------------------------------------------------------------------ the report
def write_report(
    output: str,
    options: Mapping[str, Any] | None = None,
    settings: ReportSettings = DEFAULT_SETTINGS,
    *,
    table: pa.Table | None = None,
) -> str:
    """Write ``{output}/report/`` from the run's files (``table``: the manifest's rows, when
    the caller holds them already). Returns the URI of ``index.html``, written last."""
    from pipeline.report_pages import render

    options = dict(options or {})
    facts = collect(output, options, settings, table)
    root = RunFolder(facts.output).report_dir
    made = _thumbnails(facts, root, options, settings)
    files = render(facts, made, settings)
    files["report.css"] = (
        importlib.resources.files("pipeline") / "report_assets" / "report.css"
    ).read_text()
    for name in sorted(files, key=lambda n: n == REPORT_INDEX):
        storage.write_bytes(storage.join(root, name), files[name].encode(), options, atomic=True)
    _remove_stale(root, set(files), set(made), options)
    return storage.join(root, REPORT_INDEX)


def _remove_stale(root: str, pages: set[str], thumbs: set[str], options: Mapping[str, Any]) -> None:
    for name in storage.listdir(root, options):
        if name not in pages and name.endswith((".html", ".css")):
            storage.remove(storage.join(root, name), options)
    for name in storage.listdir(storage.join(root, "thumbs"), options):
        if name not in thumbs:
            storage.remove(storage.join(root, "thumbs", name), options)


# ------------------------------------------------------------------------------ command
def main(argv: Sequence[str] | None = None) -> int:
    """``stylize report OUTPUT [--open] [--storage-option KEY=VALUE ...]``."""
    from pipeline.errors import UsageError
    from pipeline.jobconfig import apply_overrides
    from pipeline.redact import redact_text, secret_values
    from pipeline.shell import Parser

    p = Parser(
        prog="stylize report",
        description=(
            "Write the HTML report of a run folder (OUTPUT/report/index.html): counts, a "
            "gallery per style, failures, loss and throughput figures."
        ),
    )
    p.add_argument("output", help="the job's output folder (path or URL)")
    p.add_argument(
        "--open", action="store_true", help="open the report in a web browser (a local folder only)"
    )
    p.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fsspec option, e.g. endpoint_url=http://127.0.0.1:9000",
    )
    args = p.parse_args(argv)
    options = apply_overrides({}, args.storage_option)
    try:
        uri = write_report(args.output, options)
    except NoRunError as e:
        raise UsageError(str(e)) from None
    except storage.StorageError as e:  # the same kind of error, the options' secrets masked
        raise type(e)(redact_text(str(e), secret_values(options))) from None
    print(f"report: {uri}")
    if args.open:
        if "://" in uri:
            print(
                f"stylize report: --open: {uri} is not a local file; open it from its "
                "static hosting, or copy the folder here",
                file=sys.stderr,
            )
        else:
            import webbrowser

            webbrowser.open("file://" + os.path.abspath(uri))
    return 0


if __name__ == "__main__":  # pragma: no cover
    from pipeline.shell import run_alone

    sys.exit(run_alone("report", main))
