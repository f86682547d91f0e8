"""The Python job API (``pipeline.run``): the demo job from its file, a dict and a model; bad
jobs raise with the exit code and the line that ``stylize run`` prints."""

from __future__ import annotations

import io
import json
import signal
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import TINY, cli_main, sample, write_job
from PIL import Image

import pipeline

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"


def _tiny(out: Path) -> list[str]:
    return [f"output={out}"] + [f"stylize.{k}={v}" for k, v in TINY.items()]


@pytest.mark.slow
def test_run_the_demo_job_from_python(tmp_path):
    out = tmp_path / "demo"
    printed = io.StringIO()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    result = pipeline.run(DEMO, _tiny(out), stream=printed)
    # the calling program's signal handlers are its own (the command sets the product's)
    assert {s: signal.getsignal(s) for s in handlers} == handlers

    assert result.exit_code == 0 and result.counts == {"ok": 9}
    assert (result.total, result.ok, result.failed, result.computed) == (9, 9, 0, 9)
    table = pq.read_table(result.manifest_uri)
    assert table.num_rows == 9 and set(table["status"].to_pylist()) == {"ok"}
    for uri in table["output_uri"].to_pylist():
        with Image.open(uri) as im:
            assert max(im.size) == TINY["size"]
    assert Path(result.report_uri).is_file() and Path(result.run_info_uri).is_file()
    assert json.loads(Path(result.run_info_uri).read_text())["items"]["by_status"] == {"ok": 9}
    assert [Path(u).name for u in result.grid_uris] == ["grid.png"]
    # the summary the command prints, returned and written to the stream given
    assert "manifest:" in result.summary and printed.getvalue() == result.summary

    # the same job again, as a dict: everything resumed, nothing computed
    import yaml

    raw = yaml.safe_load(DEMO.read_text())
    again = pipeline.run(raw, _tiny(out))
    assert again.exit_code == 0 and again.computed == 0 and again.counts == {"ok": 9}


def test_a_model_with_overrides_mode_and_limit(ray_session, tmp_path):
    job = pipeline.load(DEMO, _tiny(tmp_path / "trial"))
    assert isinstance(job, pipeline.JobConfig)
    result = pipeline.run(job, ["shard_size=1"], limit=2)
    assert result.counts == {"ok": 2} and result.computed == 2
    # the full run later resumes the trial's two items
    full = pipeline.run(job)
    assert full.counts == {"ok": 9} and full.computed == 7
    redo = pipeline.run(job, mode="overwrite", limit=1)
    assert redo.computed == 1


@pytest.mark.slow
def test_partly_failed_job_returns_exit_code_1_not_an_exception(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "cat.jpg").write_bytes(sample("chelsea").read_bytes())
    (inputs / "broken.jpg").write_bytes(sample("tubingen").read_bytes()[:1500])
    result = pipeline.run(
        {
            "input": str(inputs),
            "styles": [str(sample("starry_night"))],
            "output": str(tmp_path / "out"),
            "stylize": TINY,
            "ray": {"address": "inline"},
        }
    )
    assert result.exit_code == 1 and result.counts == {"ok": 1, "failed_decode": 1}
    assert result.failed == 1


def _cli_errors(capsys, argv: list[str]) -> tuple[int, list[str]]:
    code = cli_main(argv)
    err = capsys.readouterr().err
    prefix = "stylize run: error: "
    return code, [line[len(prefix) :] for line in err.splitlines() if line.startswith(prefix)]


def test_bad_jobs_raise_what_the_command_prints(tmp_path, capsys):
    bad = write_job(
        tmp_path / "bad.yaml",
        {"input": "x", "styles": "y", "output": "z", "stylize": {"size": "big"}, "colour": 1},
    )
    with pytest.raises(pipeline.StylizeError) as raised:
        pipeline.run(bad)
    code, lines = _cli_errors(capsys, ["run", str(bad)])
    assert raised.value.exit_code == code == 2
    message = str(raised.value)
    assert message.startswith(f"{bad}: 2 problems:")
    assert [f"{bad}: {p}" for p in message.splitlines()[1:]] == lines
    assert "stylize.size" in lines[0] and "colour" in lines[1]

    # one problem: the very line the command prints
    missing = tmp_path / "inputs-gone.yaml"
    write_job(
        missing,
        {"input": str(tmp_path / "nowhere"), "styles": [str(sample("shipwreck"))], "output": "o"},
    )
    with pytest.raises(pipeline.StylizeError) as raised:
        pipeline.run(missing, ["ray.address=inline"])
    code, lines = _cli_errors(capsys, ["run", str(missing), "--set", "ray.address=inline"])
    assert raised.value.exit_code == code == 2 and lines == [str(raised.value)]

    # a dict or a model: the same checks, the problems as lines of the message
    with pytest.raises(pipeline.StylizeError, match=r"unknown key 'colour'") as raised:
        pipeline.run({"input": "x", "styles": "y", "output": "z", "colour": 1})
    assert raised.value.exit_code == 2
    with pytest.raises(pipeline.StylizeError, match="no such job file"):
        pipeline.run(tmp_path / "absent.yaml")
    with pytest.raises(pipeline.StylizeError, match="a path to a YAML file, a mapping"):
        pipeline.run(42)  # type: ignore[arg-type]


def test_importing_the_api_pulls_nothing_heavy():
    """``import pipeline`` stays light: the API is imported when first used."""
    import subprocess
    import sys

    code = (
        "import sys, pipeline, pipeline.scheduler; "
        "print(sorted(m for m in ('ray', 'pyarrow', 'fsspec', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
