"""Quality figures (stylize.figures): what they measure, in every manifest row and in the
report, and recomputed for a run folder by ``stylize quality OUTPUT``."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import cli_main, sample, write_job
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


def test_every_ok_row_carries_figures_the_report_and_the_command_show_them(tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("tubingen", "chelsea"):
        (inputs / f"{name}.jpg").write_bytes(sample(name).read_bytes())
    (inputs / "broken.jpg").write_bytes(sample("coffee").read_bytes()[:900])
    out = tmp_path / "out"
    job = write_job(
        tmp_path / "job.yaml",
        {
            "input": str(inputs),
            "styles": {"starry": str(sample("starry_night")), "scream": str(sample("the_scream"))},
            "output": str(out),
            "stylize": {"preset": "fast", "size": 48, "iterations": 20},
            "ray": {"address": "inline"},
        },
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

    # recomputed from the files: the same figures (the same network)
    assert cli_main(["quality", str(out), "--json", "--device", "cpu"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["items"] == 4 and found["failed"] == 0
    recomputed = {r["item_id"]: r for r in pq.read_table(found["file"]).to_pylist()}
    for r in rows:
        if r["status"] == "ok":
            for f in fg.FIGURES:
                assert recomputed[r["item_id"]][f] == pytest.approx(r[f], rel=0.05, abs=1e-3), f
    assert set(found["styles"]) == {"starry", "scream"}


def test_quality_of_a_folder_that_is_no_run_is_a_usage_error(tmp_path, capsys):
    assert cli_main(["quality", str(tmp_path)]) == 2
    assert "no manifest" in capsys.readouterr().err
