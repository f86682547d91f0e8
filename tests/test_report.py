"""The HTML report (pipeline/report.py), without a browser: a real run's report (files, links,
counts, failures, loss curves), the command, the job key, a 200,000-row manifest's report
(bounded in files and bytes), loss traces (pipeline/losstrace.py) and the SVG charts.
``tests/test_report_browser.py`` opens the same kind of report in headless Chromium."""

from __future__ import annotations

import html
import io
import logging
import re
import urllib.parse
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import TINY, make_inputs, sample
from PIL import Image

from pipeline import manifest, report
from pipeline.charts import bar_chart, log_ticks, nice_ticks
from pipeline.driver import run_job
from pipeline.errors import UsageError
from pipeline.finish import write_report
from pipeline.jobconfig import job_from_mapping
from pipeline.losstrace import LossTrace, shorten
from pipeline.runfolder import RunFolder
from pipeline.status import print_status, summarize

STYLES = {"starry": "starry_night", "scream": "the_scream"}


def real_job(root: Path, **job_keys):
    """A small real job in this process (ray.address: inline): three photos and a corrupt
    file under two styles (the inputs are made under ``root`` the first time)."""
    inputs = root / "in"
    if not inputs.exists():
        make_inputs(
            inputs,
            {"tubingen.jpg": "tubingen", "coffee.jpg": "coffee", "cats/chelsea.jpg": "chelsea"},
            bad=False,
        )
        (inputs / "corrupt.jpg").write_bytes(sample("shipwreck").read_bytes()[:3000])
    return job_from_mapping(
        {
            "input": str(inputs),
            "output": str(root / "out"),
            "styles": {name: str(sample(s)) for name, s in STYLES.items()},
            "stylize": {**TINY, "log_every": 1},
            "shard_size": 4,
            "ray": {"address": "inline"},
            **job_keys,
        }
    )


def real_run(root: Path, **job_keys) -> tuple[Path, pa.Table, str]:
    """:func:`real_job` run: (output folder, manifest, what the run printed)."""
    printed = io.StringIO()
    result = run_job(real_job(root, **job_keys), stream=printed)
    assert result.exit_code == 1 and result.counts == {"ok": 6, "failed_decode": 2}
    out = root / "out"
    return out, pq.read_table(out / "manifest.parquet"), printed.getvalue()


class Page(HTMLParser):
    """What the tests read from a report page: references, counts, failure rows."""

    def __init__(self, text: str):
        super().__init__()
        self.refs: list[tuple[str, str]] = []  # (tag, src/href)
        self.ids: set[str] = set()
        self.counts: dict[str, int] = {}
        self.failures: dict[str, str] = {}  # item id -> the row's text
        self._count: str | None = None
        self._failure: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        for key in ("src", "href"):
            if a.get(key) is not None:
                self.refs.append((tag, a[key]))
        if a.get("data-count"):
            self._count = a["data-count"]
        if tag == "tr" and a.get("data-item"):
            self._failure = a["data-item"]
            self.failures[self._failure] = ""

    def handle_endtag(self, tag):
        if tag == "tr":
            self._failure = None

    def handle_data(self, data):
        if self._count is not None and data.strip():
            self.counts[self._count] = int(data.replace(",", ""))
            self._count = None
        if self._failure is not None:
            self.failures[self._failure] += data


def pages(out: Path) -> dict[str, Page]:
    return {p.name: Page(p.read_text()) for p in sorted((out / "report").glob("*.html"))}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return real_run(tmp_path_factory.mktemp("report"))


# ------------------------------------------------------------------------------ a real run
def test_the_run_writes_the_report(run):
    out, table, printed = run
    root = out / "report"
    assert (root / "index.html").is_file() and (root / "report.css").is_file()
    assert f"report:   {root / 'index.html'}" in printed
    names = {p.name for p in root.iterdir()}
    assert {"style-0-1.html", "style-1-1.html", "thumbs"} <= names
    thumbs = list((root / "thumbs").iterdir())
    # 6 results, 3 contents, 2 styles; each a real, small picture
    assert len(thumbs) == 11
    for p in thumbs:
        with Image.open(p) as img:
            assert max(img.size) <= report.ReportSettings().thumb_size and img.size[0] > 0


def test_every_image_and_link_resolves_inside_the_run_folder(run):
    """Relative links only: pages and thumbnails inside report/, full-size outputs (and
    contact sheets) one level up; every #fragment names an element of its page."""
    out, _, _ = run
    root, run_folder = (out / "report").resolve(), out.resolve()
    all_pages = pages(out)
    seen_img = outside = 0
    for name, page in all_pages.items():
        assert page.refs, name
        for tag, ref in page.refs:
            assert "://" not in ref and not ref.startswith("/"), (name, ref)  # relative only
            path, _, fragment = ref.partition("#")
            if fragment:
                assert fragment in (all_pages[path] if path else page).ids, (name, ref)
            if not path:
                continue
            target = (root / urllib.parse.unquote(path)).resolve()
            assert target.is_relative_to(run_folder) and target.is_file(), (name, tag, ref)
            outside += not target.is_relative_to(root)
            seen_img += tag == "img"
    assert seen_img >= 6 + 6 + 3  # results and their contents on the index and style pages
    assert outside >= 2 * 6  # each ok result's full size, from the index and its gallery


def test_counts_equal_the_manifests(run):
    out, table, _ = run
    counts = pages(out)["index.html"].counts
    by_status = dict(zip(*[c.to_pylist() for c in pc.value_counts(table["status"]).flatten()]))
    assert counts == {"total": table.num_rows, "done": table.num_rows, **by_status}


def test_failures_table_lists_the_failed_item_and_its_message(run):
    out, table, _ = run
    failed = table.filter(pc.not_equal(table["status"], "ok")).to_pylist()
    rows = pages(out)["index.html"].failures
    assert set(rows) == {r["item_id"] for r in failed}
    for r in failed:
        text = " ".join(rows[r["item_id"]].split())
        assert "corrupt.jpg" in text and r["status"] in text
        assert " ".join(r["error_message"].split()) in text


def test_galleries_show_every_ok_item_with_its_content(run):
    out, table, _ = run
    index = (out / "report" / "index.html").read_text()
    for i, style in enumerate(sorted(STYLES)):
        page = (out / "report" / f"style-{i}-1.html").read_text()
        ok = table.filter(pc.and_(pc.equal(table["style"], style), pc.equal(table["status"], "ok")))
        assert page.count('<figure class="tile"') == ok.num_rows == 3
        for r in ok.to_pylist():
            name = f"r-{report.short_hash(r['item_id'])}.{report.THUMB_EXT}"
            assert f'src="thumbs/{name}"' in page and f'src="thumbs/{name}"' in index
        assert f'<a href="style-{i}-1.html">{style}</a>' in index


def test_tiles_link_the_full_size_output_and_open_content_style_result(run):
    """Each tile: a "full size" link to its output file, and a click (#v-ITEM, no script)
    opens its panel: content, style and result thumbnails side by side, the result linked
    to the output; closing goes back to the tile."""
    out, table, _ = run
    for i, style in enumerate(sorted(STYLES)):
        text = (out / "report" / f"style-{i}-1.html").read_text()
        style_thumb = f"s-{report.short_hash(style)}.{report.THUMB_EXT}"
        ok = table.filter(pc.and_(pc.equal(table["style"], style), pc.equal(table["status"], "ok")))
        for r in ok.to_pylist():
            item, output = r["item_id"], Path(r["output_uri"])
            href = "../" + urllib.parse.quote(str(output.relative_to(out)))
            tile = re.search(rf'<figure class="tile" id="t-{item}".*?</figure>', text).group(0)
            assert f'href="#v-{item}"' in tile and f'<a class="full" href="{href}">' in tile
            panel = re.search(
                rf'<div class="panel" id="v-{item}".*?<p class="muted path">', text
            ).group(0)
            thumbs = re.findall(r'<img class="side" src="thumbs/([^"]+)"', panel)
            assert thumbs == [
                f"c-{report.short_hash(r['content_uri'])}.{report.THUMB_EXT}",
                style_thumb,
                f"r-{report.short_hash(item)}.{report.THUMB_EXT}",
            ]
            assert f'<a href="{href}"><img class="side"' in panel  # the result: full size
            assert f'href="#t-{item}"' in panel
            assert (out / "report" / urllib.parse.unquote(href)).resolve() == output.resolve()
    for p in (out / "report").glob("*.html"):
        assert "<script" not in p.read_text().lower(), p.name


@pytest.mark.slow
def test_a_webdataset_runs_gallery_shows_thumbnails_without_links_into_tars(tmp_path):
    out, table, _ = real_run(tmp_path, container="webdataset", shard_size=8)
    assert all("#" in r["output_uri"] for r in table.to_pylist() if r["status"] == "ok")
    text = (out / "report" / "style-0-1.html").read_text()
    assert text.count('<figure class="tile"') == 3 and text.count('class="panel"') == 3
    assert 'class="full"' not in text and "(in its shard tar)" in text
    assert text.count('<img class="result"') == 3  # the thumbnails, read from the tars
    for _tag, ref in Page(text).refs:
        assert ".tar" not in ref, ref


def test_output_links_are_relative_and_leave_shard_tars_alone():
    assert (
        report.output_link("s3://b/run", "s3://b/run/starry/a b#1.png") == "../starry/a%20b%231.png"
    )
    assert report.output_link("/o", "/o/shards/00003.tar#k0001.png") is None
    assert report.output_link("/o", "/elsewhere/x.png") is None


def test_styles_show_median_content_and_style_losses_with_their_meaning(run):
    from pipeline.report_pages import _num

    out, table, _ = run
    index = (out / "report" / "index.html").read_text()
    for style in STYLES:
        ok = table.filter(pc.and_(pc.equal(table["style"], style), pc.equal(table["status"], "ok")))
        cells = [
            _num(float(np.median(ok[c].to_numpy())))
            for c in ("total_loss", "content_loss", "style_loss")
        ]
        row = re.search(rf">{style}</a></td>(.*?)</tr>", index).group(1)
        assert re.findall(r"<td class=n>([^<]*)</td>", row)[3:6] == cells, style
    assert "median content loss" in index and "median style loss" in index
    assert (
        "<b>content loss</b>: how far the result's relu4_2 features are from the "
        "photo's; <b>style loss</b>: how far its Gram matrices are from the painting's"
    ) in index


def test_the_job_section_lists_the_dataset_settings(run):
    out, _, _ = run
    index = (out / "report" / "index.html").read_text()
    job = re.search(r'<section class="job">.*?</section>', index).group(0)
    for key, shown in (
        ("input", html.escape(str(out.parent / "in"))),
        ("extensions", "the image files Pillow reads"),
        ("assign", "every content under every style"),
        ("layout", "by_style"),
        ("container", "files"),
    ):
        assert re.search(rf"<th>{key}</th><td>[^<]*(<code>)?{re.escape(shown)}", job), key


def test_loss_traces_are_kept_and_drawn(run):
    out, table, _ = run
    for r in table.to_pylist():
        if r["status"] != "ok":
            assert r["loss_trace"] is None
            continue
        trace = r["loss_trace"]
        assert 2 <= len(trace) <= TINY["iterations"] and all(v > 0 for v in trace)
        assert trace[-1] < trace[0]  # the optimiser lowers the loss
    index = (out / "report" / "index.html").read_text()
    assert index.count("<polyline") == 6  # one curve per ok item, both styles
    assert "Loss curves" in index


def test_header_says_how_the_run_was_made(run):
    out, _, _ = run
    info = manifest.read_json(str(out / "run.json"), {})
    index = (out / "report" / "index.html").read_text()
    assert info["weights_hash"] and info["weights_hash"] in index
    assert "<b>fast</b>" in index and "size: 48" in index and "log_every: 1" in index
    assert f"torch {info['versions']['torch']}" in index
    assert html.escape(str(out.parent / "in")) in index


def test_status_points_to_the_report(run):
    out, _, _ = run
    info = summarize(str(out))
    assert info["report"] == str(out / "report" / "index.html")
    text = io.StringIO()
    print_status(info, text)
    assert f"report:    {out / 'report' / 'index.html'}" in text.getvalue()


def test_report_command_rewrites_and_removes_stale_files(run, capsys, monkeypatch):
    out, _, _ = run
    stale_page = out / "report" / "style-7-3.html"
    stale_thumb = out / "report" / "thumbs" / "r-0000000000000000.webp"
    stale_page.write_text("old")
    stale_thumb.write_bytes(b"old")
    opened = []
    monkeypatch.setattr("webbrowser.open", opened.append)
    assert report.main([str(out), "--open"]) == 0
    assert capsys.readouterr().out.strip() == f"report: {out / 'report' / 'index.html'}"
    assert opened == [f"file://{out / 'report' / 'index.html'}"]
    assert not stale_page.exists() and not stale_thumb.exists()
    assert len(list((out / "report" / "thumbs").iterdir())) == 11


def test_a_rerun_that_computes_nothing_keeps_the_report(run):
    out, _, _ = run
    index = out / "report" / "index.html"
    before = index.stat().st_mtime_ns
    printed = io.StringIO()
    assert run_job(real_job(out.parent), stream=printed).computed == 0
    assert index.stat().st_mtime_ns == before and f"report:   {index}" in printed.getvalue()


def test_report_of_an_unfinished_run(run, tmp_path):
    out, table, _ = run
    part = tmp_path / "run" / "_manifest" / "part-00000.parquet"
    part.parent.mkdir(parents=True)
    part.write_bytes((out / "_manifest" / "part-00000.parquet").read_bytes())  # 4 items
    manifest.write_json(RunFolder(str(tmp_path / "run")).job_json, {"items_total": 8}, {})
    report.write_report(str(tmp_path / "run"))
    index = (tmp_path / "run" / "report" / "index.html").read_text()
    assert Page(index).counts["left"] == 4 and Page(index).counts["done"] == 4
    assert '<span class="state">unfinished</span>' in index


def test_report_on_s3(s3_options, s3_bucket, tmp_path):
    from conftest import fresh_s3

    synthetic_run(tmp_path / "run", n=400, styles=2)  # outputs stay local: read as they are
    fs = fresh_s3(s3_options)
    out = f"{s3_bucket}/out"
    for name in ("manifest.parquet", "run.json", "_manifest/job.json"):
        fs.put(str(tmp_path / "run" / name), f"{out}/{name}")
    fs.pipe(f"{out}/report/style-9-9.html", b"left by an earlier report")
    uri = report.write_report(f"s3://{out}", s3_options)
    assert uri == f"s3://{out}/report/index.html"
    names = {p.rsplit("/", 1)[1] for p in fs.find(f"{out}/report")}
    assert {"index.html", "report.css", "style-0-1.html", "failures-1.html"} <= names
    assert "style-9-9.html" not in names
    assert len([n for n in names if n.startswith("r-")]) == 2 * 96
    index = fs.cat(f"{out}/report/index.html").decode()
    assert "s3://" not in "".join(ref for _, ref in Page(index).refs)  # relative links only


def test_report_command_on_a_folder_without_a_run(tmp_path):
    with pytest.raises(UsageError, match="no run here"):
        report.main([str(tmp_path)])


def test_job_key_report_false_writes_none(tmp_path):
    job = job_from_mapping(
        {
            "input": str(tmp_path),
            "output": str(tmp_path / "out"),
            "styles": [str(sample("starry_night"))],
            "report": False,
        }
    )
    assert write_report(job, manifest.SCHEMA.empty_table(), changed=True) is None
    assert not (tmp_path / "out" / "report").exists()


def test_a_failing_report_never_fails_the_job(tmp_path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise OSError("bucket said no to hunter2")

    monkeypatch.setattr(report, "write_report", broken)
    job = job_from_mapping(
        {
            "input": "memory://in",
            "output": "memory://report-fails",
            "styles": [str(sample("starry_night"))],
            "ray": {"address": "inline"},
            "storage_options": {"secret": "hunter2"},
        }
    )
    with caplog.at_level(logging.WARNING, logger="pipeline.driver"):
        assert write_report(job, manifest.SCHEMA.empty_table(), changed=True) is None
    (record,) = caplog.records
    text = record.getMessage()
    assert record.levelno == logging.WARNING and "\n" not in text
    assert "no report written (OSError" in text and "stylize report memory://report-fails" in text
    assert "hunter2" not in text


# ------------------------------------------------------------------------------ a big run
def synthetic_run(out: Path, n: int = 200_000, styles: int = 5, seed: int = 0) -> pa.Table:
    """A finished run folder of ``n`` items without any work: a manifest (5% failures, loss
    traces), job.json and run.json; every output URI is one of a few real small images."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    images = []
    for k in range(5):
        path = out / f"img{k}.png"
        Image.new("RGB", (64, 48), (40 * k, 120, 200 - 30 * k)).save(path)
        images.append(str(path))
    i = np.arange(n)
    names = np.array([f"style-{s}" for s in range(styles)])
    status = rng.choice(
        np.array(["ok", "failed_decode", "failed_timeout", "failed_oom"]),
        n,
        p=[0.95, 0.03, 0.01, 0.01],
    )
    ok = status == "ok"
    loss = np.where(ok, 10 ** rng.normal(7, 0.4, n), np.nan)
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    started = pa.array(t0 + timedelta(hours=10) * (i / n), pa.timestamp("us", tz="UTC"))
    duration = rng.gamma(4.0, 0.5, n)
    finished = pa.array(
        t0 + timedelta(hours=10) * (i / n) + duration * timedelta(seconds=1),
        pa.timestamp("us", tz="UTC"),
    )
    points = 24
    decay = np.linspace(3.0, 1.0, points, dtype=np.float32)
    traces = pa.ListArray.from_arrays(
        pa.array(np.arange(n + 1, dtype=np.int32) * points),
        pa.array((np.nan_to_num(loss).astype(np.float32)[:, None] * decay).ravel()),
        mask=pa.array(~ok),
    )
    columns = {
        "item_id": pa.array([f"{k:016x}" for k in i]),
        "content_uri": pa.array([f"{out}/photos/{k // styles:07d}.jpg" for k in i]),
        "style": pa.array(names[i % styles]),
        "output_uri": pa.array([images[k % 5] for k in i]),
        "status": pa.array(status),
        "error_message": pa.array(
            np.where(ok, None, [f"photos/{k // styles}.jpg: broken" for k in i])
        ),
        "attempt": pa.array(np.ones(n, np.int32)),
        "width": pa.array(np.where(ok, 512, 0).astype(np.int32)),
        "height": pa.array(np.where(ok, 384, 0).astype(np.int32)),
        "iterations": pa.array(np.where(ok, rng.integers(250, 500, n), 0).astype(np.int32)),
        "total_loss": pa.array(loss, from_pandas=True),
        "duration_s": pa.array(duration),
        "started_at": started,
        "finished_at": finished,
        "worker": pa.array([f"10.0.0.{k % 16}/a{k % 7}/cuda:0" for k in i]),
        "params_hash": pa.array(np.full(n, "p" * 16)),
        "shard": pa.array((i // 16).astype(np.int32)),
        "loss_trace": traces,
    }
    table = pa.table(
        {f.name: columns.get(f.name, pa.nulls(n, f.type)) for f in manifest.SCHEMA},
        schema=manifest.SCHEMA,
    )
    pq.write_table(table, out / "manifest.parquet")
    manifest.write_json(
        RunFolder(str(out)).job_json,
        {
            "items_total": n,
            "fingerprint": {
                "styles": {name: {"uris": [str(sample("starry_night"))]} for name in names}
            },
        },
        {},
    )
    manifest.write_json(
        RunFolder(str(out)).run_json,
        {
            "config": {"input": "s3://photos/set", "stylize": {"preset": "fast", "size": 512}},
            "versions": {"python": "3.11"},
            "weights_hash": "abc",
            "exit_code": 1,
            "cluster_resources": {"CPU": 64.0, "GPU": 8.0, "node:10.0.0.1": 1.0},
            "timings": {"wall_s": 36000.0},
        },
        {},
    )
    return table


@pytest.mark.slow
def test_a_200000_item_report_stays_small(tmp_path, capsys):
    out = tmp_path / "big"
    table = synthetic_run(out)
    settings = report.ReportSettings()
    uri = report.write_report(str(out))
    root = out / "report"
    files = [p for p in root.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    index = (root / "index.html").stat().st_size
    with capsys.disabled():
        print(
            f"\n200,000-row report: {len(files)} files, {size / 1e6:.1f} MB in all, "
            f"index.html {index / 1e3:.0f} kB"
        )
    assert uri == str(root / "index.html")
    n_failed = table.num_rows - pc.sum(pc.equal(table["status"], "ok")).as_py()
    n_pages = settings.max_failures // settings.failures_per_page
    assert len(list(root.glob("failures-*.html"))) == n_pages and settings.max_failures < n_failed
    assert (
        len(Page((root / f"failures-{n_pages}.html").read_text()).failures)
        == settings.failures_per_page
    )
    # 5 styles x 96 sampled results (2 pages each), 5 styles; contents are not readable here
    assert len(list((root / "thumbs").iterdir())) == 5 * 96 + 5
    assert len(list(root.glob("style-*.html"))) == 5 * 2
    assert len(files) <= 600 and size < 8e6 and index < 1.5e6
    page = Page((root / "index.html").read_text())
    assert page.counts["total"] == page.counts["done"] == 200_000
    assert page.counts["ok"] == table.num_rows - n_failed
    assert len(page.failures) == settings.index_failures
    assert (
        f"the first {settings.max_failures:,} of {n_failed:,} on {n_pages} pages"
        in (root / "index.html").read_text()
    )


# ------------------------------------------------------------------------------ loss traces
def step(scale, step_, losses, scales=1, steps=5, active=None):
    return SimpleNamespace(
        scale=scale,
        scales=scales,
        step=step_,
        steps=steps,
        losses=tuple(losses),
        active=len(losses) if active is None else active,
    )


def test_traces_follow_the_engines_chunks():
    trace = LossTrace(6)
    for offset, size in ((0, 4), (4, 2)):
        for s in (1, 3, 5):
            trace(step(0, s, [100 * (offset + j) + 10 - s for j in range(size)]))
    got = trace.traces()
    assert got == [[100 * k + 9, 100 * k + 7, 100 * k + 5] for k in range(6)]


def test_a_chunk_restarted_after_running_out_of_memory_is_dropped():
    trace = LossTrace(4)
    trace(step(0, 1, [9, 9, 9, 9]))  # 4 images, out of memory after the first step
    for offset in (0, 2):  # halved: two chunks of 2
        for s in (1, 5):
            trace(step(0, s, [offset + j + 10 - s for j in range(2)]))
    assert trace.traces() == [[9, 5], [10, 6], [11, 7], [12, 8]]


def test_traces_that_cannot_be_placed_are_none():
    trace = LossTrace(3)
    trace(step(0, 1, [1, 2]))  # chunks of 2 + 2 cannot tile 3 images
    trace(step(0, 1, [1, 2]))
    assert trace.traces() == [None, None, None]


def test_traces_over_scales_and_early_stopping():
    trace = LossTrace(1)
    for scale in (0, 1):
        for s in (1, 10, 20):
            trace(step(scale, s, [float(40 - 10 * scale - s // 10)], scales=2, steps=20))
    assert trace.traces() == [[40.0, 39.0, 38.0, 30.0, 29.0, 28.0]]
    assert shorten([5.0, 4.0, 3.0, 3.0, 3.0], 24) == [5.0, 4.0, 3.0]  # stopped: no repeats
    long = shorten([float(v) for v in range(100, 0, -1)], 24)
    assert len(long) == 24 and long[0] == 100.0 and long[-1] == 1.0


@pytest.mark.slow
def test_traces_of_the_real_engine_split_into_chunks_belong_to_their_images():
    """Six images, which the engine optimises as chunks of 4 and 2 on the CPU: each image's
    trace is the one it gets alone."""
    import math

    from stylize import bench
    from stylize.config import resolve_config
    from stylize.engine import Style, Stylizer
    from stylize.images import decode_image, to_tensor

    contents = [bench.square(raw, 32) for raw in bench.sample_bytes(6)]
    style = Style("starry", (to_tensor(decode_image(sample("starry_night").read_bytes())),))
    engine = Stylizer(
        resolve_config(
            size=32, iterations=3, init="content", device="cpu", log_every=1, batch_size=0
        )
    )
    together = LossTrace(6)
    engine.stylize_batch(contents, [style] * 6, together)
    assert [c["size"] for c in together._chunks] == [4, 2]  # the engine did split the batch
    for content, trace in zip(contents, together.traces()):
        alone = LossTrace(1)
        engine.stylize_batch([content], [style], alone)
        (expected,) = alone.traces()
        assert len(trace) == len(expected) == 3
        assert all(math.isclose(a, b, rel_tol=1e-2) for a, b in zip(trace, expected))
    assert len({round(t[0], -3) for t in together.traces()}) == 6  # six different images


# ------------------------------------------------------------------------------ charts
def test_chart_ticks_and_empty_charts():
    assert nice_ticks(0, 97) == [0, 20, 40, 60, 80]
    assert log_ticks(4.2, 8.9) == [5.0, 6.0, 7.0, 8.0]
    inside = log_ticks(6.9, 7.2)  # one decade: round values
    assert [round(10**t) for t in inside] == [8_000_000, 10_000_000, 12_000_000, 14_000_000]
    assert "no data" in bar_chart(np.array([0.0, 1.0]), np.array([0]), "x", "y")
    svg = bar_chart(np.array([0.0, 1.0, 2.0]), np.array([3, 1]), "x <&>", "items")
    assert svg.count("<rect") == 2 and "x &lt;&amp;&gt;" in svg
    assert re.search(r"<title>0 to 1: 3</title>", svg)
