"""A run folder that cannot be poisoned, shared or mixed (issue 18), caused for real: files
truncated on disk, a second driver started while the first runs, another input into the same
output, names that try to forge lines. Jobs run inline (no Ray) on tiny images, through the
command line in this process (``cli_main``) or as subprocesses."""

from __future__ import annotations

import json
import os
import socket
import tarfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import (
    TINY,
    cli_main,
    make_inputs,
    no_traceback,
    run_process,
    sample,
    start_process,
    stylize_command,
    subprocess_env,
    write_job,
)

STYLES = {"starry": "starry_night", "scream": "the_scream"}


def _job(tmp_path: Path, name: str = "job.yaml", **extra) -> tuple[Path, Path]:
    inp = make_inputs(tmp_path / "in", {"a": "chelsea", "b": "tubingen"}, bad=False)
    out = tmp_path / "out"
    raw = {
        "input": str(inp),
        "output": str(out),
        "styles": {k: str(sample(v)) for k, v in STYLES.items()},
        "stylize": TINY,
        "shard_size": 1,
        "grid": {"enabled": False},
        "report": False,
        "ray": {"address": "inline"},
        **extra,
    }
    return write_job(tmp_path / name, raw), out


def _run(job: Path, capsys, *more: str) -> tuple[int, str, str]:
    code = cli_main(["run", str(job), *more])
    got = capsys.readouterr()
    return code, got.out, got.err


def _manifest(out: Path) -> list[dict]:
    return pq.read_table(out / "manifest.parquet").to_pylist()


def _quarantined(out: Path) -> list[str]:
    q = out / "_quarantine"
    return (
        sorted(str(p.relative_to(q).parts[1:]) for p in q.rglob("*") if p.is_file())
        if q.exists()
        else []
    )


def _one_row_per_item(out: Path, n: int = 4) -> list[dict]:
    rows = _manifest(out)
    assert len(rows) == n and len({r["item_id"] for r in rows}) == n
    assert all(r["status"] == "ok" for r in rows), rows
    for r in rows:
        assert Path(r["output_uri"]).is_file(), r["output_uri"]
    return rows


@pytest.mark.parametrize("damage", ["truncated", "empty", "other_schema"])
def test_damaged_part_is_quarantined_and_its_items_redone(damage, tmp_path, capsys):
    job, out = _job(tmp_path)
    assert _run(job, capsys)[0] == 0
    part = out / "_manifest" / "part-00001.parquet"
    first = _manifest(out)
    if damage == "truncated":
        part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    elif damage == "empty":
        part.write_bytes(b"")
    else:
        pq.write_table(pa.table({"a": [1, 2], "b": ["x", "y"]}), part)
    lost = pq.read_table(out / "_manifest" / "part-00000.parquet").to_pylist()  # intact

    # status reads what it can and names the damaged file; it moves nothing
    code = cli_main(["status", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and "unreadable: _manifest/part-00001.parquet" in text, text
    assert part.exists()

    code, stdout, stderr = _run(job, capsys)
    assert code == 0, stderr
    assert no_traceback(stderr)
    warned = [line for line in stderr.splitlines() if "part-00001.parquet is damaged" in line]
    assert len(warned) == 1 and "_quarantine/" in warned[0], stderr
    assert not part.exists()
    assert _quarantined(out) == [str(("_manifest", "part-00001.parquet"))]
    rows = _one_row_per_item(out)
    by_id = {r["item_id"]: r for r in rows}
    assert by_id[lost[0]["item_id"]]["finished_at"] == lost[0]["finished_at"]  # kept
    redone = [r for r in first if r["shard"] == 1]
    assert by_id[redone[0]["item_id"]]["finished_at"] != redone[0]["finished_at"]  # computed
    assert "1 already done" not in stdout
    # and the next run finds everything in order
    code, stdout, stderr = _run(job, capsys)
    assert code == 0 and "nothing recomputed" in stdout and "damaged" not in stderr


@pytest.mark.parametrize("name", ["job.json", "run.json", "manifest.parquet"])
def test_damaged_run_files_are_rebuilt_without_recomputing(name, tmp_path, capsys):
    job, out = _job(tmp_path)
    assert _run(job, capsys)[0] == 0
    before = {r["item_id"]: r["finished_at"] for r in _manifest(out)}
    path = out / "_manifest" / name if name == "job.json" else out / name
    path.write_bytes(path.read_bytes()[:40])

    code = cli_main(["status", "--json", str(out)])
    info = json.loads(capsys.readouterr().out)
    assert code == 0 and info["done"] == 4 and any(name in u for u in info["unreadable"])

    code, stdout, stderr = _run(job, capsys)
    assert code == 0 and no_traceback(stderr), stderr
    assert f"{name} is damaged" in stderr and "moved to _quarantine/" in stderr, stderr
    assert {r["item_id"]: r["finished_at"] for r in _one_row_per_item(out)} == before
    assert "nothing recomputed" in stdout
    json.loads((out / "run.json").read_text())
    json.loads((out / "_manifest" / "job.json").read_text())
    assert len(_quarantined(out)) == 1


def test_report_names_a_damaged_file_and_shows_the_rest(tmp_path, capsys):
    job, out = _job(tmp_path)
    assert _run(job, capsys)[0] == 0
    (out / "manifest.parquet").write_bytes(b"PAR1 not really")
    assert cli_main(["report", str(out)]) == 0
    page = (out / "report" / "index.html").read_text()
    assert "manifest.parquet" in page and "Could not be read" in page
    assert 'data-count="ok"><b>4</b>' in page


def test_damaged_job_json_with_parts_of_other_settings_is_refused(tmp_path, capsys):
    job, out = _job(tmp_path)
    assert _run(job, capsys)[0] == 0
    (out / "_manifest" / "job.json").write_text("{not json")
    code, _, stderr = _run(job, capsys, "--set", "stylize.iterations=6")
    assert code == 2 and "job.json damaged" in stderr and "other engine settings" in stderr


def test_damaged_webdataset_tar_is_quarantined_and_packed_again(tmp_path, capsys):
    job, out = _job(tmp_path, container="webdataset")
    assert _run(job, capsys)[0] == 0
    tar = out / "shards" / "00002.tar"
    tar.write_bytes(tar.read_bytes()[:700])
    code, _, stderr = _run(job, capsys)
    assert code == 0, stderr
    assert "shards/00002.tar is damaged" in stderr and "part-00002.parquet is damaged" in stderr
    rows = _manifest(out)
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    keys = []
    for t in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(t) as f:
            keys += [m.name.split(".")[0] for m in f.getmembers() if m.name.endswith(".png")]
    assert sorted(keys) == sorted(r["item_id"] for r in rows)  # each sample once


# ------------------------------------------------------------------------------ the lease


def _lease(out: Path, host: str, pid: int, age_s: float) -> None:
    beat = (datetime.now(timezone.utc) - timedelta(seconds=age_s)).isoformat(timespec="seconds")
    out.mkdir(parents=True, exist_ok=True)
    (out / "_lease.json").write_text(
        json.dumps(
            {
                "id": "f" * 32,
                "host": host,
                "pid": pid,
                "started_at": beat,
                "heartbeat_at": beat,
                "command": "stylize run",
            }
        )
    )


def test_live_lease_of_another_driver_refuses_then_takeover(tmp_path, capsys):
    job, out = _job(tmp_path)
    _lease(out, "gpu-node-7", 4242, age_s=3)
    code, stdout, stderr = _run(job, capsys)
    assert code == 2 and stdout == ""
    assert stderr.count("\n") == 1, stderr
    assert "gpu-node-7 pid 4242" in stderr and "--takeover" in stderr
    assert not (out / "manifest.parquet").exists()

    code, _, stderr = _run(job, capsys, "--takeover")
    assert code == 0, stderr
    assert "taking over _lease.json from gpu-node-7 pid 4242" in stderr
    assert not (out / "_lease.json").exists()  # given back at the end


@pytest.mark.parametrize(
    "host, pid, age, why",
    [
        ("gpu-node-7", 4242, 600, "heartbeat too old"),
        (socket.gethostname(), 2**22 + 12345, 1, "its process is gone"),
    ],
)
def test_stale_lease_is_taken_over_by_itself(host, pid, age, why, tmp_path, capsys):
    job, out = _job(tmp_path)
    _lease(out, host, pid, age_s=age)
    code, _, stderr = _run(job, capsys)
    assert code == 0 and why in stderr, stderr


def test_second_driver_on_a_running_folder_exits_2(tmp_path):
    """Two real drivers: the second starts while the first computes, exits 2 at once naming
    the first; the first finishes untouched, one row per item."""
    job, out = _job(tmp_path, stylize={**TINY, "iterations": 40})
    env = subprocess_env()
    first = start_process(stylize_command("run", str(job)), env, tmp_path, "first")
    try:
        deadline = time.monotonic() + 120
        while not (out / "_lease.json").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.log_err.read_text()
            time.sleep(0.05)
        code, stdout, stderr, took = run_process(
            stylize_command("run", "--json", str(job)), env, tmp_path, "second", 120
        )
        assert first.poll() is None, "the first driver ended before the second was refused"
        assert code == 2, stderr
        assert f"pid {first.pid}" in stderr and no_traceback(stderr)
        assert json.loads(stdout)["exit_code"] == 2
        assert first.wait(300) == 0, first.log_err.read_text()[-2000:]
    finally:
        if first.poll() is None:
            first.kill()
    _one_row_per_item(out)
    assert not (out / "_lease.json").exists()


def test_a_part_is_never_overwritten(tmp_path):
    from pipeline import manifest
    from pipeline.storage import StorageError

    (tmp_path / "_manifest").mkdir()
    (tmp_path / "_manifest" / "part-00003.parquet").write_bytes(b"someone else's")
    with pytest.raises(StorageError, match="another driver wrote this part"):
        manifest.write_part(str(tmp_path), 3, [], {})
    assert (tmp_path / "_manifest" / "part-00003.parquet").read_bytes() == b"someone else's"


# ------------------------------------------------------------------- the job's identity


def test_another_input_into_the_same_output_is_refused(tmp_path, capsys):
    job, out = _job(tmp_path)
    assert _run(job, capsys)[0] == 0
    other = make_inputs(tmp_path / "other", {"a": "tubingen"}, bad=False)
    code, _, stderr = _run(job, capsys, "--set", f"input={other}")
    assert code == 2 and "another configuration" in stderr and "inputs.input" in stderr, stderr
    assert str(other) in stderr
    assert _one_row_per_item(out)  # untouched


def test_a_changed_list_file_is_another_input(tmp_path, capsys):
    inp = make_inputs(tmp_path / "in", {"a": "chelsea", "b": "tubingen"}, bad=False)
    files = sorted(p for p in inp.rglob("*") if p.is_file())
    listing = tmp_path / "list.txt"
    listing.write_text(f"{files[0]}\n")
    job, out = _job(tmp_path, input=str(listing))
    assert _run(job, capsys)[0] == 0
    assert _run(job, capsys)[0] == 0  # same list: a resume
    listing.write_text(f"{files[1]}\n")
    code, _, stderr = _run(job, capsys)
    assert code == 2 and "inputs.list_sha256" in stderr, stderr


# ------------------------------------------------------------ names that forge lines


def test_control_characters_in_names_never_make_lines(tmp_path, capsys):
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "ok.jpg").write_bytes(sample("chelsea").read_bytes())
    forged = "x\nstylize: 4 items: 4 ok\x1b[2K\u202e.jpg"
    (inp / forged).write_bytes(b"not an image")
    job, out = _job(tmp_path, input=str(inp))
    code, stdout, stderr = _run(job, capsys)
    assert code == 1
    assert "\x1b" not in stdout + stderr and "\u202e" not in stdout + stderr
    assert not any(
        line.startswith("stylize: 4 items: 4 ok") for line in (stdout + stderr).splitlines()
    )
    assert "\\n" in stdout and "\\x1b" in stdout  # shown, escaped
    cli_main(["status", str(out)])
    text = capsys.readouterr().out
    assert "\x1b" not in text and not any(
        line.startswith("stylize: 4 items") for line in text.splitlines()
    )


# --------------------------------------------------------------- stdout carries results only


def test_stdout_carries_only_results_even_from_c_code(tmp_path):
    code = (
        "import os, sys\n"
        "from pipeline.cli import results_only_on_stdout\n"
        "with results_only_on_stdout() as out:\n"
        "    os.write(1, b'(raylet) A worker died\\n')\n"
        "    print('\\x1b[33m(pid=1) noise\\x1b[0m')\n"
        "    out.write('{\"result\": 1}\\n')\n"
        "print('after')\n"
    )
    script = tmp_path / "s.py"
    script.write_text(code)
    import subprocess
    import sys

    got = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=60,
    )
    assert got.returncode == 0, got.stderr
    assert got.stdout == '{"result": 1}\nafter\n'
    assert "A worker died" in got.stderr and "noise" in got.stderr


def test_stale_temporaries_of_an_interrupted_final_write_are_removed(tmp_path, capsys):
    job, out = _job(tmp_path)
    assert _run(job, capsys)[0] == 0
    for where in (out, out / "_manifest"):
        (where / ".tmp-0123456789ab-manifest.parquet").write_bytes(b"half")
    assert _run(job, capsys)[0] == 0
    assert not list(out.rglob(".tmp-*"))
    assert os.listdir(out)
