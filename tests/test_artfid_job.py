"""The job key ``artfid_weights``: a run ends with its ArtFID (stylize.artfid) over the ok
items, computed as ``stylize quality OUTPUT --artfid DIR`` computes it, written to
artfid.json before the report shows it; a bad folder stops the job at load (exit 2, one
line); weight files that cannot be loaded cost the ArtFID only (a warning, the reason in
artfid.json and the report). The weight files are random networks in the real files' key
layouts, saved under the names they are published with: nothing is downloaded."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import TINY, cli_main, sample, write_job
from test_artfid import random_inception

from pipeline import quality_cmd
from pipeline.jobconfig import artfid_weight_files
from pipeline.runfolder import RunFolder
from stylize import artfid as af
from stylize.engine import Style
from stylize.images import decode_image, to_tensor

PHOTOS = ("tubingen", "chelsea", "coffee")
NAMES = ("art_inception.pth", "alexnet-owt-7be5be79.pth", "alex.pth")  # as published


def _photo(name: str, side: int = 80) -> torch.Tensor:
    """A sample picture, square, ``side`` px, (3, H, W) in 0..255."""
    img = decode_image(str(sample(name)))
    s = min(img.size)
    return to_tensor(img.crop((0, 0, s, s)).resize((side, side)))


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A folder of ArtFID's three files (art_inception.pth, alexnet-owt-*.pth, alex.pth) of
    random networks; the Inception's BatchNorm statistics are those of real pictures (a
    random trunk's features vanish otherwise), as tests/test_artfid.py makes them."""
    folder = tmp_path_factory.mktemp("artfid-weights")
    trunk, heads = random_inception([_photo(n) / 255 for n in PHOTOS])
    torch.save({**trunk, **heads}, folder / NAMES[0])
    features = af.LPIPS().features.state_dict()
    torch.save({f"features.{k}": v for k, v in features.items()}, folder / NAMES[1])
    lins = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) / c
            for k, c in enumerate(af.ALEX_CHANNELS)}  # fmt: skip
    torch.save(lins, folder / NAMES[2])
    return folder


def _files(folder: Path) -> tuple[str, str, str]:
    return artfid_weight_files(str(folder))


def _job(tmp_path: Path, artfid_weights: str | None, stylize: dict, contents=PHOTOS[:2]) -> Path:
    inputs = tmp_path / "in"
    inputs.mkdir(exist_ok=True)
    for name in contents:
        (inputs / f"{name}.jpg").write_bytes(sample(name).read_bytes())
    return write_job(
        tmp_path / "job.yaml",
        {
            "input": str(inputs),
            "styles": {"starry": str(sample("starry_night")), "scream": str(sample("the_scream"))},
            "output": str(tmp_path / "out"),
            "stylize": stylize,
            "ray": {"address": "inline"},
            "artfid_weights": artfid_weights,
        },
    )


# ------------------------------------------------------------------- a run with ArtFID


@pytest.mark.slow  # a run of 4 items at 128 px, then ArtFID's networks: ~30 s on 2 cores
def test_a_run_with_artfid_weights_ends_with_its_artfid_file_and_report_line(
    tmp_path, weights, capsys, monkeypatch
):
    # ArtFID's Inception reads pictures at their own size: 75 px a side at least (the
    # shorter sides of results and styles at 128 px are 85 px and more)
    job = _job(tmp_path, str(weights), {"preset": "fast", "size": 128, "iterations": 3})
    assert cli_main(["run", str(job)]) == 0
    err = capsys.readouterr().err
    out = tmp_path / "out"
    found = json.loads(Path(RunFolder(str(out)).artfid_file).read_text())
    assert (found["items"], found["styles"], found["inception"]) == (4, 2, "art")
    assert all(math.isfinite(found[k]) for k in ("artfid", "fid", "lpips")), found
    assert found["fid"] > 0 and 0 < found["lpips"] < 1 and "why" not in found
    assert found["artfid"] == pytest.approx((1 + found["lpips"]) * (1 + found["fid"]))
    assert "ArtFID" in err and "of 4 items against 2 style(s), art Inception" in err, err
    html = (out / "report" / "index.html").read_text()
    assert 'id="artfid"' in html and "4 items against 2 style(s), art Inception" in html
    run = json.loads(Path(RunFolder(str(out)).run_json).read_text())
    assert run["config"]["artfid_weights"] == str(weights)

    # the code of `stylize quality OUTPUT --artfid DIR`, item by item (chunks of one): the
    # same figures within float tolerance
    monkeypatch.setattr(quality_cmd, "ARTFID_CHUNK", 1)
    again = quality_cmd.run_artfid(str(out), {}, af.ArtFID(*_files(weights), device="cpu"))
    assert again["items"] == found["items"] and again["styles"] == found["styles"]
    for k in ("artfid", "fid", "lpips"):
        assert again[k] == pytest.approx(found[k], rel=1e-4), k

    # a rerun that computes nothing keeps the file as it is; without one (the key added to
    # a finished run), it computes the ArtFID and writes the report again
    artfid_file = Path(RunFolder(str(out)).artfid_file)
    before = artfid_file.stat().st_mtime_ns
    assert cli_main(["run", str(job)]) == 0
    assert artfid_file.stat().st_mtime_ns == before
    report = out / "report" / "index.html"
    written = report.stat().st_mtime_ns
    artfid_file.unlink()
    assert cli_main(["run", str(job)]) == 0
    assert json.loads(artfid_file.read_text())["artfid"] == pytest.approx(found["artfid"], rel=1e-4)
    assert report.stat().st_mtime_ns != written and 'id="artfid"' in report.read_text()


@pytest.mark.slow  # a tiny run: 15-30 s on 2 cores
def test_weight_files_that_cannot_be_loaded_cost_the_artfid_not_the_run(tmp_path, capsys):
    folder = tmp_path / "weights"
    folder.mkdir()
    for name in NAMES:
        (folder / name).write_bytes(b"not a state dict")  # the right names, no weights
    job = _job(tmp_path, str(folder), TINY, contents=PHOTOS[:1])
    assert cli_main(["run", str(job)]) == 0  # every item ok: the run succeeded
    err = capsys.readouterr().err
    out = tmp_path / "out"
    warnings = [line for line in err.splitlines() if "warning: ArtFID not computed" in line]
    assert len(warnings) == 1 and "art_inception.pth" in warnings[0], err
    found = json.loads(Path(RunFolder(str(out)).artfid_file).read_text())
    assert found["artfid"] is None and found["why"].startswith("not computed: ArtFIDWeights")
    assert "not a loadable state dict" in found["why"]
    # nothing lost: the manifest, run.json and the report are there, the report says why
    run_folder = RunFolder(str(out))
    assert Path(run_folder.manifest_file).exists() and Path(run_folder.run_json).exists()
    html = (out / "report" / "index.html").read_text()
    assert 'id="artfid"' in html and "not computed: ArtFIDWeightsError" in html


# ------------------------------------------------------------- checked when the job loads


def _named(folder: Path, names=NAMES) -> Path:
    """A folder with files of ArtFID's names and no weights: a job is checked by the names
    (the files are read at the end of the run)."""
    folder.mkdir()
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


@pytest.mark.parametrize("case", ["missing", "a file", "no lpips", "two inceptions", "url"])
def test_a_bad_weights_folder_stops_the_job_at_load_in_one_line(tmp_path, capsys, case):
    folder = tmp_path / "weights"
    if case == "a file":
        folder.write_text("x")
    elif case == "no lpips":
        _named(folder, NAMES[:2])
    elif case == "two inceptions":
        _named(folder, (*NAMES, "pt_inception-2015-12-05-6726825d.pth"))
    given = "s3://bucket/weights" if case == "url" else str(folder)
    job = _job(tmp_path, given, TINY)
    assert cli_main(["run", str(job)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "artfid_weights: " in err, err
    expected = {
        "missing": "not a folder; give the folder holding ArtFID's three weight files",
        "a file": "not a folder",
        "no lpips": "no file for LPIPS v0.1's linear layers (alex.pth",
        "two inceptions": "2 files (art_inception.pth, pt_inception-2015-12-05-6726825d.pth)",
        "url": "a URL; give a local folder",
    }[case]
    assert expected in err and "docs/engine.md" in err, err
    assert not (tmp_path / "out").exists()  # found before any work


def test_plan_names_the_artfid_weights(tmp_path, capsys):
    weights = _named(tmp_path / "weights")
    job = _job(tmp_path, str(weights), TINY)
    assert cli_main(["plan", str(job)]) == 0
    out = capsys.readouterr().out
    assert (
        f"artfid:    at the end, over the ok items, in the driver (weights from {weights})" in out
    )
    assert cli_main(["plan", str(job), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["artfid_weights"] == str(weights)
    plain = _job(tmp_path, None, TINY)
    assert cli_main(["plan", str(plain)]) == 0
    assert "artfid:" not in capsys.readouterr().out


# ------------------------------------------------------------------ batched, same figures


@pytest.mark.slow  # ~15 Inception passes at 80-96 px, and the networks built: ~20 s on 2 cores
def test_chunks_give_the_figures_of_one_item_at_a_time_and_leave_out_only_the_refused(weights):
    scorer = af.ArtFID(*_files(weights), device="cpu")
    # square styles: a style is read at the result's longest side, its aspect kept
    starry, scream = (Style(n, (_photo(n, 120),)) for n in ("starry_night", "the_scream"))
    items = [
        (_photo(c, side), _photo(r, side), s)
        for c, r, s, side in (
            ("tubingen", "chelsea", starry, 80),
            ("chelsea", "coffee", scream, 80),
            ("coffee", "tubingen", starry, 96),
            ("tubingen", "coffee", scream, 80),
            ("chelsea", "tubingen", starry, 40),  # under the Inception's 75 px: refused
        )
    ]
    by_chunk = {}
    for chunk in (1, 16):
        sums = af.ArtFIDSums(scorer, chunk=chunk)
        for item in items:
            sums.add(*item)
        by_chunk[chunk] = sums.figures()
    one, many = by_chunk[1], by_chunk[16]
    assert one["items"] == many["items"] == 4 and one["skipped"] == many["skipped"] == 1
    assert many["styles"] == 2 and "first left out" not in many.get("why", "")
    for k in ("artfid", "fid", "lpips"):
        assert math.isfinite(many[k]) and many[k] == pytest.approx(one[k], rel=1e-4), k
    # a chunk is taken in batches: one LPIPS and one Inception call per chunk (and one for
    # its new styles), not one per item
    calls = {"features": 0, "lpips": 0}
    for name in calls:
        original = getattr(scorer, name)

        def counted(*args, _name=name, _original=original):
            calls[_name] += 1
            return _original(*args)

        setattr(scorer, name, counted)
    sums = af.ArtFIDSums(scorer, chunk=16)
    for item in items[:4]:
        sums.add(*item)
    assert sums.figures()["items"] == 4
    assert calls == {"features": 2, "lpips": 1}
