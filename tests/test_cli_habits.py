"""What every `stylize` command does alike: --version, -q, -v, --json, and problems of a job
file one line each. One tiny inline job (no Ray) serves every test."""

from __future__ import annotations

import contextlib
import io
import json
from importlib import metadata

import pytest
from conftest import TINY, cli_main, sample, write_job

from stylize.common import DISTRIBUTION


def run(*argv: str) -> tuple[int, str, str]:
    """``stylize ARGV`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """Two contents, one of them truncated (a failed_decode row), one style, inline."""
    root = tmp_path_factory.mktemp("habits")
    broken = root / "broken.jpg"
    broken.write_bytes(sample("coffee").read_bytes()[:2000])
    path = write_job(
        root / "job.yaml",
        {
            "input": ["pkg://stylize/samples/tubingen.jpg", str(broken)],
            "styles": {"starry_night": "pkg://stylize/samples/starry_night.jpg"},
            "output": str(root / "out"),
            "stylize": TINY,
            "ray": {"address": "inline"},
        },
    )
    return path, root / "out"


@pytest.fixture(scope="module")
def first_run(job):
    """`stylize run JOB --json`, the one run that computes anything."""
    return run("run", str(job[0]), "--json")


def test_version_and_V():
    code, out, _ = run("--version")
    assert code == 0 and out.startswith(f"stylize {metadata.version(DISTRIBUTION)} (ray ")
    assert run("-V") == (0, out, "")


def test_run_json_is_one_object_on_stdout(job, first_run):
    code, out, err = first_run
    assert code == 1, err
    assert len(out.splitlines()) == 1
    summary = json.loads(out)
    assert summary["exit_code"] == 1 and summary["command"] == "run"
    assert summary["counts"] == {"failed_decode": 1, "ok": 1}
    assert summary["total"] == 2 and summary["failed"] == 1 and summary["computed"] == 2
    assert summary["output"] == str(job[1])
    assert summary["manifest"] == str(job[1] / "manifest.parquet")
    assert summary["run_info"] == str(job[1] / "run.json") and summary["images_per_hour"] > 0
    # the text is for people: on stderr with --json, progress included
    assert "stylize: 2 items: 1 failed_decode, 1 ok" in err and "2/2 items" in err


def test_status_json_counts_what_the_run_did(job, first_run):
    code, out, err = run("status", str(job[1]), "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["counts"] == {"failed_decode": 1, "ok": 1} and info["exit_code"] == 0
    assert (info["total"], info["done"], info["left"], info["complete"]) == (2, 2, 0, True)
    assert info["run_exit_code"] == 1 and info["manifest"] == str(job[1] / "manifest.parquet")
    assert [f["status"] for f in info["failures"]] == ["failed_decode"]
    assert "broken.jpg" in info["failures"][0]["content_uri"]
    code, text, _ = run("status", str(job[1]))
    assert code == 0 and "2 of 2 done" in text and "failed_decode" in text


def test_quiet_silences_progress_and_notices(job, first_run):
    code, out, err = run("run", str(job[0]))  # a resumed run still reports its progress
    assert code == 1 and "2/2 items" in err
    for argv in (
        ("run", "-q", str(job[0])),
        ("-q", "run", str(job[0])),
        ("run", str(job[0]), "--quiet"),
    ):
        code, out, err = run(*argv)
        assert code == 1 and err == "", argv
        assert "nothing recomputed" in out  # the result stays on stdout
    code, out, err = run("run", str(job[0]), "-q", "--json")
    assert code == 1 and err == "" and json.loads(out)["computed"] == 0


def test_verbose_shows_the_resolved_job(job, first_run):
    _, _, plain = run("run", str(job[0]))
    code, _, err = run("run", "-v", str(job[0]))
    assert code == 1
    assert "stylize: job: {" not in plain and "stylize: job: {" in err
    assert f"stylize: stylize {metadata.version(DISTRIBUTION)}" in err
    assert run("run", "-q", "-v", str(job[0]))[0] == 2


def test_three_mistakes_three_lines(tmp_path):
    path = write_job(
        tmp_path / "bad.yaml",
        {
            "input": ["a.jpg"],
            "styles": ["b.jpg"],
            "output": str(tmp_path / "out"),
            "shard_sise": 2,
            "ray": {"num_workers": 0},
            "output_format": "gif",
        },
    )
    code, out, err = run("run", str(path))
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 3 and all(
        ln.startswith(f"stylize run: error: {path}: ") for ln in lines
    ), err
    assert any("did you mean 'shard_size'?" in ln for ln in lines)
    code, out, _ = run("run", str(path), "--json")
    assert code == 2 and json.loads(out)["exit_code"] == 2
