"""Data laid out as people keep it (issue 20): folders with stray files, CSV lists with their
own column names and labels, a trial with --limit that the full run resumes."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from conftest import TINY, cli_main, make_inputs, sample, write_job

STYLES = {"starry": "starry_night"}


def _job(tmp_path, inp, **extra):
    out = tmp_path / "out"
    raw = {
        "input": str(inp),
        "output": str(out),
        "styles": {k: str(sample(v)) for k, v in STYLES.items()},
        "stylize": TINY,
        "shard_size": 1,
        "report": False,
        "ray": {"address": "inline"},
        **extra,
    }
    return write_job(tmp_path / "job.yaml", raw), out


def test_stray_files_of_an_image_folder_are_skipped_not_failed(tmp_path, capsys):
    inp = make_inputs(tmp_path / "in", {"a": "chelsea", "b": "tubingen"}, bad=False)
    (inp / "README.md").write_text("my photos")
    (inp / "labels.txt").write_text("a,cat")
    job, out = _job(tmp_path, inp)
    assert cli_main(["run", str(job)]) == 0
    err = capsys.readouterr().err
    assert "2 entries skipped (not an image file by its extension" in err, err
    assert "README.md" in err
    assert pq.read_table(out / "manifest.parquet").num_rows == 2
    # extensions: all keeps every file: the stray ones become failed rows
    job, out = _job(tmp_path, inp, extensions="all", output=str(tmp_path / "out-all"))
    assert cli_main(["run", str(job)]) == 1
    capsys.readouterr()


def _csv_inputs(tmp_path):
    inp = make_inputs(tmp_path / "in", {"a": "chelsea", "b": "tubingen"}, bad=False)
    files = sorted(p for p in inp.rglob("*") if p.is_file())
    return files


def test_csv_with_its_own_header_needs_input_column(tmp_path, capsys):
    files = _csv_inputs(tmp_path)
    listing = tmp_path / "list.csv"
    listing.write_text("image_path,label\n" + "".join(f"{p},{n}\n" for n, p in enumerate(files)))
    job, out = _job(tmp_path, listing)
    assert cli_main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    assert "no URI column among image_path, label" in err and "input_column" in err, err
    assert cli_main(["run", str(job), "--set", "input_column=image_path"]) == 0
    capsys.readouterr()
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert len(rows) == 2 and sorted(r["label"] for r in rows) == [0, 1]
    assert all(r["status"] == "ok" for r in rows)


def test_headerless_csv_of_paths_still_works(tmp_path, capsys):
    files = _csv_inputs(tmp_path)
    listing = tmp_path / "list.csv"
    listing.write_text("".join(f"{p},x\n" for p in files))
    job, out = _job(tmp_path, listing)
    assert cli_main(["run", str(job)]) == 0
    capsys.readouterr()
    assert pq.read_table(out / "manifest.parquet").num_rows == 2


def test_input_column_on_a_folder_is_an_error(tmp_path, capsys):
    inp = make_inputs(tmp_path / "in", {"a": "chelsea"}, bad=False)
    job, _ = _job(tmp_path, inp, input_column="path")
    assert cli_main(["run", str(job)]) == 2
    assert "input_column: 'path' has no effect" in capsys.readouterr().err


def test_keys_that_other_keys_make_pointless_are_errors(tmp_path, capsys):
    """A key the rest of the job ignores is reported (exit 2, nothing written), not
    silently dropped; the same keys where they act are accepted."""
    inp = make_inputs(tmp_path / "in", {"a.jpg": "chelsea"}, bad=False)
    cases = [
        ({"output_quality": 80}, "output_quality: has no effect on png"),
        ({"output_quality": 80, "output_format": "tiff"}, "has no effect on tiff"),
        ({"ray": {"address": "inline", "num_workers": 3}}, "ray.num_workers: 3 has no effect"),
        ({"grid": {"enabled": False, "cell_size": 64}}, "grid: enabled is false"),
    ]
    for extra, message in cases:
        job, out = _job(tmp_path, inp, **extra)
        assert cli_main(["plan", str(job)]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert cli_main(["run", str(job)]) == 2 and not out.exists()
        capsys.readouterr()
    job, out = _job(tmp_path, inp, output_quality=80, output_format="webp")
    assert cli_main(["run", str(job), "--limit", "1"]) == 0
    assert (out / "starry" / "a.webp").is_file()


def test_limit_is_a_trial_that_the_full_run_resumes(tmp_path, capsys):
    inp = make_inputs(
        tmp_path / "in", {f"i{n}": "chelsea" if n % 2 else "tubingen" for n in range(5)}, bad=False
    )
    job, out = _job(tmp_path, inp)
    assert cli_main(["run", str(job), "--limit", "2", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["total"] == 2 and first["computed"] == 2 and "report" in first
    trial = {
        r["item_id"]: r["finished_at"] for r in pq.read_table(out / "manifest.parquet").to_pylist()
    }
    assert cli_main(["status", "--json", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["done"] == 2 and info["total"] == 5 and info["left"] == 3
    assert cli_main(["run", str(job), "--limit", "2", "--json"]) == 0  # the same two
    assert json.loads(capsys.readouterr().out)["computed"] == 0
    assert cli_main(["run", str(job), "--json"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert full["total"] == 5 and full["computed"] == 3
    rows = {
        r["item_id"]: r["finished_at"] for r in pq.read_table(out / "manifest.parquet").to_pylist()
    }
    assert {k: rows[k] for k in trial} == trial


def test_plan_looks_before_spending_and_writes_nothing(tmp_path, capsys):
    inp = make_inputs(
        tmp_path / "in", {"a.jpg": "chelsea", "b.jpg": "tubingen", "c.jpg": "coffee"}, bad=False
    )
    (inp / "notes.md").write_text("x")
    job, out = _job(tmp_path, inp, styles=[str(sample("starry_night")), str(sample("the_scream"))])
    assert cli_main(["plan", str(job), "--json", "--workers", "2"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert not out.exists()  # nothing written
    assert (p["contents"], p["skipped"], p["items"], p["left"]) == (3, 1, 6, 6)
    assert sum(s["contents"] for s in p["shapes"]) == 3
    assert all(max(s["width"], s["height"]) == TINY["size"] for s in p["shapes"])
    assert p["gpu_hours"] > 0 and p["wall_hours"] > 0 and p["device"] == "cpu"
    assert cli_main(["run", str(job), "--limit", "2"]) == 0
    capsys.readouterr()
    assert cli_main(["plan", str(job), "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert (p["already_done"], p["left"]) == (2, 4)
    assert cli_main(["plan", str(job), "--set", "stylize.iterations=9"]) == 0
    assert "refused:" in capsys.readouterr().out


def test_plan_prices_the_wasserstein2_loss_above_gram_and_says_so(tmp_path, capsys):
    inp = make_inputs(tmp_path / "in", {"a.jpg": "chelsea", "b.jpg": "tubingen"}, bad=False)
    job, _ = _job(tmp_path, inp)
    plans = {}
    for loss in ("gram", "wasserstein2"):
        assert cli_main(["plan", str(job), "--json", "--set", f"stylize.style_loss={loss}"]) == 0
        plans[loss] = json.loads(capsys.readouterr().out)
    gram, w2 = plans["gram"], plans["wasserstein2"]
    assert w2["seconds_per_item"] == pytest.approx(1.2 * gram["seconds_per_item"], rel=0.01)
    assert "wasserstein2 x1.2 (measured)" in w2["cost_source"]
    assert "x1" not in gram["cost_source"]


def test_webdataset_with_mirror_layout_keeps_paths_and_classes(tmp_path, capsys):
    import tarfile

    inp = make_inputs(tmp_path / "in", {"cat/c.1.jpg": "chelsea", "dog/d.jpg": "coffee"}, bad=False)
    job, out = _job(tmp_path, inp, layout="mirror", container="webdataset")
    assert cli_main(["run", str(job)]) == 0
    capsys.readouterr()
    members = {}
    for t in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(t) as f:
            for m in f.getmembers():
                members[m.name] = f.extractfile(m).read()
    assert sorted(members) == ["cat/c_1.json", "cat/c_1.png", "dog/d.json", "dog/d.png"]
    meta = json.loads(members["cat/c_1.json"])
    assert meta["cls"] == "cat" and meta["path"] == "cat/c_1"
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert all(r["output_uri"].split("#")[1] in members for r in rows)
