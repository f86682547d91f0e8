"""Quality figures (stylize.figures): what they measure, in every manifest row and in the
report, and recomputed for a run folder by ``stylize quality OUTPUT``."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from conftest import TINY, cli_main, sample, two_content_job

from pipeline.items import Content, StyleRef, make_items, make_shards
from pipeline.jobconfig import job_from_mapping
from pipeline.quality_cmd import is_folder_call
from pipeline.worker import StyleWorker, WorkerSpec
from stylize import figures as fg
from stylize.config import resolve_config
from stylize.engine import Style, Stylizer
from stylize.images import decode_image, to_tensor

SHARED = Path(__file__).resolve().parents[2] / "shared" / "images"


@pytest.fixture(scope="module")
def engine():
    return Stylizer(resolve_config("fast", size=64, iterations=40, device="cpu"))


def _img(name: str):
    path = SHARED / name if (SHARED / name).exists() else sample(name.split(".")[0])
    return to_tensor(decode_image(str(path)))


@pytest.mark.slow
def test_figures_measure_what_they_say(engine):
    content = engine.prepare_content(decode_image(str(sample("tubingen"))), exact=True)
    starry, scream = _img("starry_night.jpg"), _img("the_scream.jpg")
    result = engine.stylize_batch([content], [Style("starry", (starry,))])[0].image
    side = max(content.shape[-2:])
    own = fg.style_stats(engine.features, [starry], [1.0], side)
    other = fg.style_stats(engine.features, [scream], [1.0], side)
    out_own, out_other, photo = (
        fg.figures(engine.features, x[None], content[None], [s])[0]
        for x, s in ((result, own), (result, other), (content, own))
    )
    assert set(out_own) == set(fg.FIGURES)
    assert photo["content_distance"] == 0.0 < out_own["content_distance"]
    # moved toward its own style, and nearer to it than to another painting
    for f in ("gram_distance", "w2_distance"):
        assert out_own[f] < photo[f] and out_own[f] < out_other[f], f
    assert 0 <= out_own["color_distance"] < photo["color_distance"] <= 1
    # a blend's statistics lie between its parts'
    blend = fg.style_stats(engine.features, [starry, scream], [1.0, 1.0], side)
    g = [s.layers["relu3_1"].gram.norm().item() for s in (own, blend, other)]
    assert min(g[0], g[2]) <= g[1] <= max(g[0], g[2])


@pytest.mark.slow
def test_the_taker_reads_each_content_once_and_agrees_with_the_plain_function(engine):
    content = engine.prepare_content(decode_image(str(sample("tubingen"))), exact=True)
    starry, scream = (Style(n, (_img(f"{n}.jpg"),)) for n in ("starry_night", "the_scream"))
    outputs = [
        r.image for r in engine.stylize_batch([content, content], [starry, scream], iterations=8)
    ]
    calls: list[tuple[int, tuple[str, ...]]] = []

    def counted(x, taps):
        calls.append((x.shape[0], tuple(taps)))
        return engine.features(x, taps)

    taker = fg.FigureTaker(counted)
    found = taker.take(
        torch.stack(outputs), torch.stack([content] * 2), [starry, scream], ["t"] * 2
    )
    assert taker.failed == []
    content_calls = [c for c in calls if c[1] == (fg.CONTENT_LAYER,)]
    output_calls = [c for c in calls if c[1] == fg.TAPS]
    assert content_calls == [(1, (fg.CONTENT_LAYER,))]  # one content, two styles: read once
    assert output_calls == [(2, fg.TAPS)]  # the batch's outputs: one forward pass
    calls.clear()
    again = taker.take(
        torch.stack(outputs), torch.stack([content] * 2), [starry, scream], ["t"] * 2
    )
    assert calls == [(2, fg.TAPS)] and again == found  # content and styles kept
    side = max(content.shape[-2:])
    for out, style, got in zip(outputs, (starry, scream), found):
        stats = fg.style_stats(engine.features, style.images, [1.0], side)
        plain = fg.figures(engine.features, out[None], content[None], [stats])[0]
        assert got == pytest.approx(plain, rel=1e-6, abs=1e-9)


def test_a_figure_that_cannot_be_taken_is_none_and_the_others_stay(engine):
    content = engine.prepare_content(decode_image(str(sample("chelsea"))), exact=True)
    style = Style("starry", (_img("starry_night.jpg"),))

    def no_deep_pass(x, taps):  # the outputs' pass fails (as out of memory would)
        if tuple(taps) == fg.TAPS:
            raise RuntimeError("CUDA out of memory")
        return engine.features(x, taps)

    taker = fg.FigureTaker(no_deep_pass)
    (got,) = taker.take(content[None], content[None], [style])
    assert got["content_distance"] is None and got["w2_distance"] is None
    assert 0 < got["color_distance"] <= 1  # needs no network
    assert "out of memory" in " ".join(taker.failed)

    def small_device(x, taps):  # room for one picture at a time
        if x.shape[0] > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return engine.features(x, taps)

    taker = fg.FigureTaker(small_device)
    two = taker.take(torch.stack([content] * 2), torch.stack([content] * 2), [style] * 2)
    assert taker.failed == [] and two[0] == two[1]
    assert two[0]["content_distance"] == 0.0 and two[0]["gram_distance"] > 0

    def broken(x, taps):
        raise ValueError("no network")

    taker = fg.FigureTaker(broken)
    assert taker.take(content[None], content[None], [style]) == [dict.fromkeys(fg.FIGURES)]
    assert "no network" in taker.failed[0]


@pytest.mark.parametrize(
    "argv, folder",
    [
        (["out/run"], True),
        (["--device", "cpu", "out/run", "--json"], True),
        (["--limit", "3", "s3://bucket/run"], True),
        (["--pair", "a.jpg", "b.jpg", "--size", "64", "--json"], False),
        (["--set", "noise_scale=0.1", "--init", "noise"], False),
        (["--help"], False),
        ([], False),
    ],
)
def test_a_folder_argument_tells_the_two_quality_commands_apart(argv, folder):
    assert is_folder_call(argv) is folder


@pytest.mark.slow
def test_every_ok_row_carries_figures_the_report_and_the_command_show_them(tmp_path, capsys):
    job, out = two_content_job(
        tmp_path,
        {"preset": "fast", "size": 48, "iterations": 20},
        extra={"broken.jpg": sample("coffee").read_bytes()[:900]},
    )
    assert cli_main(["run", str(job)]) == 1
    capsys.readouterr()
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert len(rows) == 6
    for r in rows:
        values = [r[f] for f in fg.FIGURES]
        if r["status"] == "ok":
            assert all(v is not None and v >= 0 for v in values), r
        else:
            assert values == [None] * 4
    html = (out / "report" / "index.html").read_text()
    assert "Quality figures" in html and "median w2 distance" in html

    # a run made before the figures existed: its manifest and parts lack the columns
    for path in [out / "manifest.parquet", *(out / "_manifest").glob("part-*.parquet")]:
        pq.write_table(pq.read_table(path).drop_columns(list(fg.FIGURES)), path)
    assert cli_main(["status", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"] == {"ok": 4, "failed_decode": 2}
    assert cli_main(["report", str(out)]) == 0
    assert "Quality figures" not in (out / "report" / "index.html").read_text()

    # recomputed from the files: the same figures (the same network); the folder may come
    # after the options
    capsys.readouterr()
    assert cli_main(["quality", "--device", "cpu", str(out), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["items"] == 4 and found["failed"] == 0
    recomputed = {r["item_id"]: r for r in pq.read_table(found["file"]).to_pylist()}
    for r in rows:
        if r["status"] == "ok":
            for f in fg.FIGURES:
                assert recomputed[r["item_id"]][f] == pytest.approx(r[f], rel=0.05, abs=1e-3), f
    assert set(found["styles"]) == {"starry", "scream"}
    # ... and shown by the report of the old run
    assert cli_main(["report", str(out)]) == 0
    html = (out / "report" / "index.html").read_text()
    assert "Quality figures" in html and "distances: content" in html

    # the old run resumes: nothing computed again, its rows kept
    assert cli_main(["run", str(job)]) == 1
    again = {r["item_id"]: r for r in pq.read_table(out / "manifest.parquet").to_pylist()}
    assert {i: r["finished_at"] for i, r in again.items()} == {
        r["item_id"]: r["finished_at"] for r in rows
    }


def test_quality_of_a_folder_that_is_no_run_is_a_usage_error(tmp_path, capsys):
    assert cli_main(["quality", str(tmp_path)]) == 2
    assert "no manifest" in capsys.readouterr().err


def _one_item_shard(tmp_path):
    contents = [Content(str(sample("tubingen")), "tubingen.jpg", "t")]
    refs = {"starry": StyleRef("starry", (str(sample("starry_night")),), (1.0,), ("t",))}
    items = make_items(contents, list(refs.values()), str(tmp_path / "out"), "png", "p")
    return make_shards(items, 100)[0], refs


@pytest.mark.parametrize("broken", ["network", "deep pass"])
def test_figures_that_fail_in_the_worker_leave_the_item_ok(tmp_path, monkeypatch, caplog, broken):
    def failing(cls, engine, **kwargs):
        if broken == "network":
            raise OSError("caffe weights: not found")

        def features(x, taps):  # the outputs' pass fails, as out of memory would
            if tuple(taps) == fg.TAPS:
                raise RuntimeError("CUDA out of memory")
            return engine.features(x, taps)

        return cls(features)

    monkeypatch.setattr(fg.FigureTaker, "for_engine", classmethod(failing))
    cfg = job_from_mapping({"input": "x", "styles": ["y"], "output": "z", "stylize": TINY})
    worker = StyleWorker(WorkerSpec(cfg.stylize, cfg.params_hash, threads=1))
    shard, refs = _one_item_shard(tmp_path)
    with caplog.at_level("WARNING", logger="pipeline.worker"):
        (row,) = worker.process(shard, refs)
    assert row["status"] == "ok" and decode_image(open(row["output_uri"], "rb").read())
    nulls = [f for f in fg.FIGURES if row[f] is None]
    if broken == "network":
        assert nulls == list(fg.FIGURES) and "caffe weights" in caplog.text
    else:
        assert nulls == ["content_distance", "gram_distance", "w2_distance"]
        assert 0 < row["color_distance"] <= 1 and "out of memory" in caplog.text
