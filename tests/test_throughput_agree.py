"""One throughput, defined once (pipeline.manifest.throughput): ok images per hour from the
first item started to the last one finished. A real small run (in this process, no Ray) is
read back through all four views, the command's --json, run.json, ``stylize status --json``
and the report, which must show the same numbers; a resume that computes nothing keeps the
last real run's timings; the job's pairs are assigned (``assign: {random: 1}``), so its
contact sheet draws those pairs alone, and the report links to it."""

from __future__ import annotations

import io
import json
import re

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import TINY, cli_main, make_inputs, sample, write_job
from PIL import Image
from test_pipeline_grid import _tiles

from pipeline import manifest
from pipeline.grid import page_size
from pipeline.status import print_status, summarize

LABEL = "ok images/h, first start to last finish"


def _report_figures(index: str) -> dict[str, float | None]:
    """The summary's figures of the report (data-figure -> data-value)."""
    return {
        k: float(v) if v else None
        for k, v in re.findall(r'data-figure="([a-z_]+)" data-value="([^"]*)"', index)
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(output, the first run's --json, its run.json, what it printed on stderr, the
    no-op resume's --json and run.json)."""
    root = tmp_path_factory.mktemp("agree")
    inputs = make_inputs(
        root / "in",
        {"tubingen.jpg": "tubingen", "coffee.jpg": "coffee", "cats/chelsea.jpg": "chelsea"},
        bad=False,
    )
    (inputs / "corrupt.jpg").write_bytes(sample("shipwreck").read_bytes()[:3000])
    out = root / "out"
    job = write_job(
        root / "job.yaml",
        {
            "input": str(inputs),
            "output": str(out),
            "styles": {"starry": str(sample("starry_night")), "scream": str(sample("the_scream"))},
            "stylize": TINY,
            "shard_size": 2,
            "ray": {"address": "inline"},
            "assign": {"random": 1, "seed": 0},
            "grid": {"cell_size": 64},
        },
    )
    capture = pytest.MonkeyPatch()
    results = []
    for _ in range(2):
        stdout, stderr = io.StringIO(), io.StringIO()
        capture.setattr("sys.stdout", stdout)
        capture.setattr("sys.stderr", stderr)
        try:
            code = cli_main(["run", str(job), "--json"])
        finally:
            capture.undo()
        assert code == 1, stderr.getvalue()  # the corrupt photo: failed_decode
        results.append(
            (
                json.loads(stdout.getvalue()),
                json.loads((out / "run.json").read_text()),
                stderr.getvalue(),
            )
        )
    (first, run1, err1), (again, run2, _) = results
    return out, first, run1, err1, again, run2


def test_the_definition_from_the_manifest(runs):
    out, first, run1, *_ = runs
    table = pq.read_table(out / "manifest.parquet")
    ok = pc.sum(pc.equal(table["status"], "ok")).as_py()
    assert ok == 3 and table.num_rows == 4 and first["counts"] == {"failed_decode": 1, "ok": 3}
    start = pc.min(table["started_at"]).as_py()
    span = (pc.max(table["finished_at"]).as_py() - start).total_seconds()
    assert span > 0
    assert run1["timings"]["images_per_hour"] == round(3600 * ok / span, 1)
    assert run1["timings"]["span_s"] == pytest.approx(span, abs=1e-3)
    assert manifest.throughput(table).images_per_hour == run1["timings"]["images_per_hour"]


def test_the_four_views_show_the_same_numbers(runs):
    out, first, run1, err1, *_ = runs
    timings = run1["timings"]
    status = summarize(str(out))
    report = _report_figures((out / "report" / "index.html").read_text())
    for key in ("images_per_hour", "span_s"):
        assert timings[key] is not None
        assert first[key] == timings[key] == status[key] == report[key], key
    # the command's own figures: one name each, the same wherever they are shown
    assert timings["wall_s"] >= timings["span_s"] > 0
    assert first["wall_s"] == timings["wall_s"] == status["wall_s"] == report["wall_s"]
    assert timings["command_images_per_hour"] == round(3600 * 3 / timings["wall_s"], 1)
    assert (
        first["command_images_per_hour"]
        == timings["command_images_per_hour"]
        == status["command_images_per_hour"]
    )


def test_the_figure_has_one_label_everywhere(runs):
    out, first, run1, err1, *_ = runs
    rate = f"{run1['timings']['images_per_hour']:,.1f}"
    assert f"throughput: {rate} {LABEL}" in err1  # the run's summary
    text = io.StringIO()
    print_status(summarize(str(out)), text)
    assert f"throughput: {rate} {LABEL}" in text.getvalue()
    index = (out / "report" / "index.html").read_text()
    assert re.search(
        rf'data-figure="images_per_hour"[^>]*><b>{re.escape(rate)}</b>'
        rf"<span>{re.escape(LABEL)}</span>",
        index,
    )
    assert manifest.THROUGHPUT_LABEL == LABEL


def test_a_resume_that_computes_nothing_keeps_the_timings(runs):
    out, first, run1, _, again, run2 = runs
    assert again["computed"] == 0 and again["resumed"] == 4
    assert run2["items"]["computed_now"] == 0 and run2["items"]["resumed"] == 4
    assert run2["timings"] == run1["timings"]  # not images_per_hour: null, wall_s: 0.05
    assert run2["workers"] == run1["workers"] and run2["workers"]
    for key in ("images_per_hour", "span_s", "wall_s", "command_images_per_hour"):
        assert again[key] == first[key], key
    assert summarize(str(out))["images_per_hour"] == first["images_per_hour"]


def test_the_grid_draws_the_assigned_pairs_and_the_report_links_it(runs):
    out, *_ = runs
    assert not list(out.glob("grid-*.png"))
    with Image.open(out / "grid.png") as img:
        # a line per content of its one assigned style: content | style | result (never
        # the 4 x 2 matrix with a grey "missing" cell for each pair not drawn)
        assert img.size == page_size(3, 2, 64)
        lines = _tiles(img.convert("RGB"), 4, 3, 64)
    # the corrupt photo: unreadable, and its one item failed; nothing is "missing"
    assert sorted(lines) == [["grey", "image", "grey"]] + [["image"] * 3] * 3
    index = (out / "report" / "index.html").read_text()
    assert '<a href="../grid.png">' in index and 'src="../grid.png"' in index
    assert (out / "report" / ".." / "grid.png").resolve() == (out / "grid.png").resolve()
    for key in ("assign", "layout", "container", "extensions", "input"):
        assert f"<th>{key}</th>" in index, key
    assert "1 random styles per content (seed 0)" in index


def test_throughput_of_rows_without_a_start_or_any_time():
    from datetime import datetime, timedelta, timezone

    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)

    def table(rows):
        base = {
            "content_uri": "c",
            "style": "s",
            "output_uri": "o",
            "attempt": 1,
            "params_hash": "p",
            "shard": 0,
        }
        return pa.Table.from_pylist(
            [{**base, "item_id": str(i), **r} for i, r in enumerate(rows)], schema=manifest.SCHEMA
        )

    assert manifest.throughput(manifest.SCHEMA.empty_table()) == manifest.Throughput(0, None, None)
    # two ok items over 30 min; a timeout (no start: the scheduler's row) ends the span later
    rows = [
        {"status": "ok", "started_at": t0, "finished_at": t0 + timedelta(minutes=10)},
        {
            "status": "ok",
            "started_at": t0 + timedelta(minutes=5),
            "finished_at": t0 + timedelta(minutes=30),
        },
    ]
    assert manifest.throughput(table(rows)) == manifest.Throughput(2, 1800.0, 4.0)
    late = rows + [{"status": "failed_timeout", "finished_at": t0 + timedelta(minutes=60)}]
    assert manifest.throughput(table(late)) == manifest.Throughput(2, 3600.0, 2.0)
    # no row has a start: the span runs from the first finish; a single instant has no rate
    ends = [
        {"status": "ok", "finished_at": t0},
        {"status": "ok", "finished_at": t0 + timedelta(hours=1)},
    ]
    assert manifest.throughput(table(ends)) == manifest.Throughput(2, 3600.0, 2.0)
    assert manifest.throughput(table(ends[:1])) == manifest.Throughput(1, 0.0, None)
