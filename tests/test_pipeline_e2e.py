"""End to end on a real local Ray instance, through the ``stylize`` command (pipeline.cli):
a folder with good and bad files, resume, a changed config, overwrite, --set, status, grid."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import TINY, make_inputs, sample
from PIL import Image

from pipeline.cli import main
from pipeline.grid import page_size

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """Five contents (two good, in nested folders with spaces, and three bad) x two styles."""
    root = tmp_path_factory.mktemp("e2e")
    make_inputs(
        root / "photos", {"tubingen.jpg": "tubingen", "nested dir/the scream.jpg": "the_scream"}
    )
    config = {
        "input": str(root / "photos"),
        "styles": [str(sample("starry_night")), str(sample("shipwreck"))],
        "output": str(root / "out"),
        "stylize": TINY,
        "shard_size": 2,
        "ray": {"num_workers": 2},
        "grid": {"cell_size": 48},
        "extensions": "all",
    }  # notes.txt too: a non-image as a failed row
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, root / "out"


@pytest.fixture(scope="module")
def first_run(job):
    path, out = job
    return main(["run", str(path)]), pq.read_table(out / "manifest.parquet").to_pylist()


def test_rows_outputs_and_exit_code(job, first_run, capsys):
    _, out = job
    code, rows = first_run
    assert code == 1
    pairs = [(r["content_uri"].rsplit("/", 1)[1], r["style"]) for r in rows]
    assert len(rows) == 10 and len(set(pairs)) == 10
    assert {r["style"] for r in rows} == {"starry_night", "shipwreck"}
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 4
    for r in ok:
        img = Image.open(r["output_uri"])
        assert max(img.size) == 48 and img.size == (r["width"], r["height"])
        assert r["error_message"] is None and r["attempt"] == 1 and r["worker"]
    assert (out / "starry_night" / "nested dir" / "the scream.png").exists()
    failed = [r for r in rows if r["status"] != "ok"]
    assert {r["status"] for r in failed} == {"failed_decode"} and len(failed) == 6
    assert all(r["error_message"] and r["content_uri"] in r["error_message"] for r in failed)
    run = json.loads((out / "run.json").read_text())
    assert run["weights_hash"] and run["versions"]["ray"] and run["cluster_resources"]["CPU"] == 2
    assert run["items"]["by_status"] == {"ok": 4, "failed_decode": 6}
    assert Image.open(out / "grid.png").size == page_size(5, 2, 48)


def test_rerun_recomputes_nothing(job, first_run, capsys):
    path, out = job
    before = (out / "manifest.parquet").read_bytes()
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    assert main(["run", str(path)]) == 1
    assert (out / "manifest.parquet").read_bytes() == before
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == stamp
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert [r["finished_at"] for r in rows] == [r["finished_at"] for r in first_run[1]]
    assert "nothing recomputed" in capsys.readouterr().out


def test_status(job, first_run, capsys):
    _, out = job
    assert main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "10 of 10 done, 0 left" in text and "failed_decode   6" in text
    assert "truncated.jpg" in text and "throughput" in text
    assert main(["status", str(out / "starry_night")]) == 2


def test_changed_config_is_refused(job, first_run, capsys):
    path, out = job
    before = (out / "manifest.parquet").read_bytes()
    assert main(["run", str(path), "--set", "stylize.iterations=6"]) == 2
    err = capsys.readouterr().err
    assert "another configuration" in err and "stylize.iterations: 5 -> 6" in err
    assert "--mode overwrite" in err and "Traceback" not in err and err.count("\n") == 1
    assert (out / "manifest.parquet").read_bytes() == before


def test_set_overrides_and_exit_code_0(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "input": [str(sample("chelsea"))],
                "styles": [str(sample("the_scream"))],
                "output": str(tmp_path / "unused"),
                "stylize": TINY,
            }
        )
    )
    out = tmp_path / "small"
    assert (
        main(
            [
                "run",
                str(path),
                "--set",
                "stylize.size=32",
                "--set",
                f"output={out}",
                "--set",
                "ray.num_workers=1",
                "--set",
                "output_format=jpeg",
            ]
        )
        == 0
    )
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["ok"]
    assert rows[0]["output_uri"].endswith("the_scream/chelsea.jpg")
    assert max(Image.open(rows[0]["output_uri"]).size) == 32


def test_grid_command(tmp_path):
    out = tmp_path / "grid"
    code = main(
        [
            "grid",
            "--contents",
            str(sample("tubingen")),
            str(sample("coffee")),
            "--styles",
            str(sample("starry_night")),
            str(sample("the_scream")),
            str(sample("shipwreck")),
            "--output",
            str(out),
            "--preset",
            "fast",
            "--size",
            "32",
            "--iterations",
            "3",
            "--cell-size",
            "40",
        ]
    )
    assert code == 0
    assert Image.open(out / "grid.png").size == page_size(2, 3, 40)
    assert len(pq.read_table(out / "manifest.parquet")) == 6


def test_overwrite_recomputes(job, first_run):
    path, out = job
    assert main(["run", str(path), "--mode", "overwrite"]) == 1
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    old = {r["item_id"]: r["finished_at"] for r in first_run[1]}
    assert len(rows) == 10 and all(r["finished_at"] > old[r["item_id"]] for r in rows)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"input": "/nonexistent/photos"}, "no such file or folder"),
        ({"styles": ["/nonexistent/style.jpg"]}, "cannot read"),
        ({"unknown_key": 1}, "unknown key 'unknown_key'"),
        ({"output": "/proc/forbidden/out"}, "is not writable"),
    ],
)
def test_config_errors_exit_2_in_one_line(tmp_path, capsys, change, message):
    make_inputs(tmp_path / "in", {"a.jpg": "coffee"}, bad=False)
    config = {
        "input": str(tmp_path / "in"),
        "styles": [str(sample("shipwreck"))],
        "output": str(tmp_path / "out"),
        "stylize": TINY,
        **change,
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", str(tmp_path / "job.yaml")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
