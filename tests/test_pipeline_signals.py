"""The ``stylize run`` process itself killed mid-job, as by the OOM killer, a preempted node,
Ctrl-C or ``ray job stop``: SIGKILL, SIGTERM and SIGINT to a real subprocess with its own
private Ray instance, then a rerun of the same command.

Every item ends up exactly once in the manifest, every file under a final name decodes, no
temporary file is left, and the Ray processes the killed driver started are gone (found by
their session id and by the private RAY_TMPDIR; never ``ray stop``).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import (
    TINY,
    make_inputs,
    no_traceback,
    run_process,
    sample,
    start_process,
    stylize_command,
    subprocess_env,
    wait_processes_gone,
    write_job,
)
from PIL import Image

pytestmark = pytest.mark.timeout(600)

NAMES = ("tubingen", "chelsea", "coffee", "the_scream", "shipwreck", "starry_night")
STYLES = ("starry_night", "the_scream")
N_CONTENTS = 8  # x 2 styles = 16 TINY items in 8 shards: ~20-40 s on 2 CPU cores


def _job(tmp_path: Path) -> tuple[Path, Path]:
    inputs = make_inputs(
        tmp_path / "in",
        {f"img{i:02d}.jpg": NAMES[i % len(NAMES)] for i in range(N_CONTENTS)},
        bad=False,
    )
    out = tmp_path / "out"
    job = write_job(
        tmp_path / "job.yaml",
        {
            "input": str(inputs),
            "styles": [str(sample(s)) for s in STYLES],
            "output": str(out),
            "stylize": TINY,
            "shard_size": 2,
            "ray": {"num_workers": 2},
        },
    )
    return job, out


def _parts(out: Path) -> list[Path]:
    return (
        sorted((out / "_manifest").glob("part-*.parquet")) if (out / "_manifest").exists() else []
    )


def _start_and_wait_for_a_part(job: Path, out: Path, env, tmp_path: Path, name: str):
    proc = start_process(stylize_command("run", str(job)), env, tmp_path, name)
    deadline = time.monotonic() + 300
    while not _parts(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, (
        f"stylize run ended (exit {proc.returncode}) before it could be "
        f"killed mid-job:\n{proc.log_err.read_text()[-3000:]}"
    )
    assert _parts(out), "no manifest part after 300 s"
    return proc


def _final_files(out: Path) -> list[Path]:
    """Files under final names: every image the run wrote (not the run's own metadata)."""
    meta = {out / "manifest.parquet", out / "run.json", out / "_lease.json"}
    return sorted(
        p
        for p in out.rglob("*")
        if p.is_file()
        and p not in meta
        and p.relative_to(out).parts[0] not in ("_manifest", "report")
        and not p.name.startswith(".")
    )


def _temporaries(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob(".tmp-*"))


def _decodes(path: Path) -> None:
    with Image.open(path) as img:
        img.load()
    assert max(img.size) == TINY["size"], path


def _check_complete(out: Path, kept: dict[str, dict]) -> list[dict]:
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert len(rows) == N_CONTENTS * len(STYLES)
    assert len({r["item_id"] for r in rows}) == len(rows)
    assert {(Path(r["content_uri"]).name, r["style"]) for r in rows} == {
        (f"img{i:02d}.jpg", s) for i in range(N_CONTENTS) for s in STYLES
    }
    assert all(r["status"] == "ok" for r in rows), [r["error_message"] for r in rows]
    named = {Path(r["output_uri"]) for r in rows}
    assert set(_final_files(out)) == named  # no stray file under a final name, none missing
    for p in named:
        _decodes(p)
    assert not _temporaries(out), _temporaries(out)
    by_id = {r["item_id"]: r for r in rows}
    for item_id, r in kept.items():  # saved before the kill: kept, not redone
        assert by_id[item_id]["finished_at"] == r["finished_at"], r
    return rows


def _kept_rows(out: Path) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    for p in _parts(out):
        for r in pq.read_table(p).to_pylist():
            rows[r["item_id"]] = r
    return rows


def test_driver_sigkilled_mid_job_then_rerun(tmp_path, ray_tmpdir):
    """SIGKILL leaves no chance to clean up: what must hold is that every part and every
    output under a final name is whole, that the Ray instance dies with its driver, and that
    the rerun completes the job with each item exactly once."""
    job, out = _job(tmp_path)
    env = subprocess_env(ray_tmpdir)
    proc = _start_and_wait_for_a_part(job, out, env, tmp_path, "run1")
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL

    killed_at = time.monotonic()
    kept = _kept_rows(out)
    assert kept and len(kept) < N_CONTENTS * len(STYLES)
    for p in _final_files(out):  # nothing half-written under a final name
        _decodes(p)

    code, stdout, stderr, _ = run_process(
        stylize_command("run", str(job)), env, tmp_path, "run2", 400
    )
    assert code == 0, f"exit {code}\n{stdout[-2000:]}\n{stderr[-3000:]}"
    assert no_traceback(stderr), stderr[-3000:]
    _check_complete(out, kept)

    # The raylet, GCS and workers die with the driver (Ray's fate sharing); Ray's dashboard
    # and runtime-env agents notice ~60 s later, when their GCS reconnection times out.
    left = wait_processes_gone(sid=proc.pid, timeout=max(5.0, killed_at + 120 - time.monotonic()))
    assert not left, f"processes of the killed run still alive 120 s later: {left}"
    assert not wait_processes_gone(tmpdir=ray_tmpdir, timeout=60)


@pytest.mark.parametrize(
    "signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"]
)
def test_driver_interrupted_mid_job_then_rerun(signum, code, tmp_path, ray_tmpdir):
    """SIGTERM (``ray job stop``, a scheduler) and SIGINT (Ctrl-C): exit 143 / 130 after
    saving what finished, "run the same command to resume" on stderr, no traceback and no
    stack dump, the private Ray instance shut down; then the rerun completes."""
    job, out = _job(tmp_path)
    env = subprocess_env(ray_tmpdir)
    proc = _start_and_wait_for_a_part(job, out, env, tmp_path, "run1")
    t0 = time.monotonic()
    os.kill(proc.pid, signum)
    try:
        got = proc.wait(90)
    except Exception:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        raise AssertionError(
            f"still running 90 s after {signum!r}:\n{proc.log_err.read_text()[-3000:]}"
        ) from None
    stderr = proc.log_err.read_text(errors="replace")
    assert got == code, f"exit {got} after {signum!r}\n{stderr[-3000:]}"
    assert "run the same command to resume" in stderr, stderr[-3000:]
    assert no_traceback(stderr), stderr[-3000:]
    assert "*** SIG" not in stderr and "PC: @" not in stderr, stderr[-3000:]  # C++ stack dump
    assert time.monotonic() - t0 < 60  # it stops promptly, not after the job
    left = wait_processes_gone(sid=proc.pid, tmpdir=ray_tmpdir, timeout=60)
    assert not left, f"processes of the interrupted run still alive 60 s later: {left}"
    kept = _kept_rows(out)
    assert kept and len(kept) < N_CONTENTS * len(STYLES)
    assert not list((out / "_manifest").glob(".tmp-*"))

    code2, stdout, stderr2, _ = run_process(
        stylize_command("run", str(job)), env, tmp_path, "run2", 400
    )
    assert code2 == 0, f"exit {code2}\n{stdout[-2000:]}\n{stderr2[-3000:]}"
    _check_complete(out, kept)
    assert not wait_processes_gone(tmpdir=ray_tmpdir, timeout=60)


_SLOW_FINAL_WRITE = '''
import os, time
import stylize.common as common

_write = common.write_atomic


def write_atomic(path, data, exclusive=False):
    """The real write, its fsync of manifest.parquet held up: the moment to signal."""
    if not str(path).endswith("/manifest.parquet"):
        return _write(path, data, exclusive)
    fsync = os.fsync

    def held(fd):
        open(os.environ["STYLIZE_TEST_MARK"], "w").close()
        time.sleep(120)
        fsync(fd)
    os.fsync = held
    try:
        return _write(path, data, exclusive)
    finally:
        os.fsync = fsync


common.write_atomic = write_atomic
'''


def test_sigterm_during_the_final_manifest_write(tmp_path, ray_tmpdir):
    """SIGTERM after Ray has shut down, while manifest.parquet is being written (a real
    write, its fsync held up by a sitecustomize): exit 143 with one line, no temporary file
    left, then the rerun completes without recomputing anything."""
    job, out = _job(tmp_path)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_SLOW_FINAL_WRITE)
    mark = tmp_path / "writing"
    env = subprocess_env(ray_tmpdir, STYLIZE_TEST_MARK=str(mark))
    env["PYTHONPATH"] = f"{hook}{os.pathsep}{env['PYTHONPATH']}"
    proc = start_process(stylize_command("run", str(job)), env, tmp_path, "run1")
    deadline = time.monotonic() + 400
    while not mark.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert mark.exists(), proc.log_err.read_text()[-3000:]
    assert list(out.glob(".tmp-*manifest.parquet")), "the write is not under way"
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(60) == 143, proc.log_err.read_text()[-3000:]
    stderr = proc.log_err.read_text(errors="replace")
    assert no_traceback(stderr), stderr[-3000:]
    assert "stylize run: interrupted: SIGTERM" in stderr, stderr[-3000:]
    assert not list(out.rglob(".tmp-*")), list(out.rglob(".tmp-*"))
    assert not (out / "manifest.parquet").exists()

    code, stdout, stderr, _ = run_process(
        stylize_command("run", str(job)), subprocess_env(ray_tmpdir), tmp_path, "run2", 300
    )
    assert code == 0 and "nothing recomputed" in stdout, stderr[-3000:]
    _check_complete(out, {})
