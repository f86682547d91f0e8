"""Fixtures of the pipeline tests: bundled sample images, bad files, a local Ray instance,
and moto's S3 server on 127.0.0.1 (reached by the Ray workers through storage_options)."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import pytest

SAMPLES = Path(str(resources.files("stylize") / "samples"))
# Tiny and quick: every end-to-end job in these tests uses these engine settings.
TINY = {"preset": "fast", "size": 48, "iterations": 5}


def sample(name: str) -> Path:
    return SAMPLES / f"{name}.jpg"


def make_inputs(root: Path, good: dict[str, str], bad: bool = True) -> Path:
    """A folder of content images: ``good`` maps relative path -> sample name; ``bad`` adds
    an empty, a truncated and a non-image file."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, name in good.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sample(name), root / rel)
    if bad:
        (root / "empty.jpg").write_bytes(b"")
        (root / "truncated.jpg").write_bytes(sample("tubingen").read_bytes()[:2000])
        (root / "notes.txt").write_text("not an image\n")
    return root


@pytest.fixture(scope="session")
def ray_session():
    """One real local Ray instance (2 CPUs) for every end-to-end test; shut down at the end."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on a free port of 127.0.0.1; returns its endpoint URL. Its request
    log (werkzeug: access lines, and a traceback when the fault proxy cuts a connection) is
    the test server's, kept out of the stderr that tests read for the product's messages."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").propagate = False
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_options(s3_endpoint):
    """storage_options for s3fs against the moto server (fake credentials)."""
    return {
        "endpoint_url": s3_endpoint,
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"region_name": "eu-west-1"},
    }


# ------------------------------------------------------------------------------------------
# Faults caused for real: S3 behind a failing proxy, `stylize run` in subprocesses
# that are killed, Ray processes of a test's own. Helpers are plain functions so that the test
# modules can import them (``from conftest import ...``).

import os as _os
import signal as _signal
import socket as _socket
import subprocess as _subprocess
import sys as _sys
import tempfile as _tempfile
import time as _time
import uuid as _uuid

import yaml as _yaml


@pytest.fixture
def s3_proxy(s3_endpoint):
    """A fresh :class:`s3_fault_proxy.S3FaultProxy` in front of moto (no fault until the test
    adds one); ``s3_proxy.storage_options()`` are the job's storage_options through it."""
    from s3_fault_proxy import S3FaultProxy

    proxy = S3FaultProxy(s3_endpoint).start()
    yield proxy
    proxy.stop()


def proxy_storage_options(proxy, **extra) -> dict:
    """storage_options that reach moto through ``proxy`` (botocore's own retries off)."""
    return proxy.storage_options(**extra)


def fresh_s3(options: dict):
    """An s3fs filesystem that shares no cached instance or listing with anyone."""
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False, **options)


@pytest.fixture
def s3_bucket(s3_options):
    """A new, empty bucket on moto (reached directly, not through a proxy): its name."""
    name = f"b-{_uuid.uuid4().hex[:12]}"
    fresh_s3(s3_options).mkdir(name)
    return name


def free_port() -> int:
    """A TCP port of 127.0.0.1 where nothing listens (now)."""
    with _socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_job(path: Path, raw: dict) -> Path:
    path.write_text(_yaml.safe_dump(raw, sort_keys=False))
    return path


def two_content_job(
    root: Path, stylize: dict, extra: dict[str, bytes] | None = None
) -> tuple[Path, Path]:
    """An inline job: two contents (tubingen, chelsea, and ``extra``'s files, name ->
    bytes) in ROOT/in under two styles (starry, scream), engine options ``stylize``, written
    to ROOT/job.yaml. Returns (the job file, its output folder ROOT/out)."""
    inputs = root / "in"
    inputs.mkdir()
    for name in ("tubingen", "chelsea"):
        (inputs / f"{name}.jpg").write_bytes(sample(name).read_bytes())
    for name, data in (extra or {}).items():
        (inputs / name).write_bytes(data)
    out = root / "out"
    job = write_job(
        root / "job.yaml",
        {
            "input": str(inputs),
            "styles": {"starry": str(sample("starry_night")), "scream": str(sample("the_scream"))},
            "output": str(out),
            "stylize": stylize,
            "ray": {"address": "inline"},
        },
    )
    return job, out


def cli_main(argv: list[str]) -> int:
    """``pipeline.cli.main(argv)`` in this process, with this process's SIGINT/SIGTERM
    handlers put back afterwards (the command installs its own)."""
    from pipeline.cli import main

    saved = {s: _signal.getsignal(s) for s in (_signal.SIGINT, _signal.SIGTERM)}
    try:
        return main(argv)
    finally:
        for s, handler in saved.items():
            _signal.signal(s, handler)


@pytest.fixture
def ray_tmpdir():
    """A private, short temp dir for the Ray instances of a test's subprocesses
    (``RAY_TMPDIR``): their session files, and the ``ray_current_cluster`` address file of a
    cluster the test starts, live there, never in the machine's /tmp/ray. Processes that
    still have it in their environment at the end are killed (by PID) and reported."""
    path = _tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # short: Ray's unix sockets live here
    yield path
    left = kill_processes(processes_of(tmpdir=path))
    import shutil as _shutil

    _shutil.rmtree(path, ignore_errors=True)
    assert not left, f"processes of this test were still running (killed now): {left}"


def subprocess_env(ray_tmpdir: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a ``stylize`` subprocess: no RAY_ADDRESS (never join a cluster that
    happens to run here), a private RAY_TMPDIR, unbuffered output."""
    env = {k: v for k, v in _os.environ.items() if k not in ("RAY_ADDRESS",)}
    env["PYTHONUNBUFFERED"] = "1"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    if ray_tmpdir is not None:
        env["RAY_TMPDIR"] = ray_tmpdir
    tests = str(Path(__file__).resolve().parent)
    env["PYTHONPATH"] = tests + (_os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def stylize_command(*args: str) -> list[str]:
    """``stylize ARGS`` as a subprocess command line (this interpreter, ``-m pipeline.cli``)."""
    return [_sys.executable, "-m", "pipeline.cli", *args]


def start_process(
    cmd: list[str], env: dict[str, str], log_dir: Path, name: str
) -> _subprocess.Popen:
    """Start ``cmd`` in a session of its own (so that every process it starts can be found
    and killed by session id), stdout and stderr to files ``log_dir/name.out|err``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out = open(log_dir / f"{name}.out", "wb")
    err = open(log_dir / f"{name}.err", "wb")
    proc = _subprocess.Popen(
        cmd, env=env, stdout=out, stderr=err, stdin=_subprocess.DEVNULL, start_new_session=True
    )
    out.close()
    err.close()
    proc.log_out = log_dir / f"{name}.out"  # type: ignore[attr-defined]
    proc.log_err = log_dir / f"{name}.err"  # type: ignore[attr-defined]
    return proc


def run_process(
    cmd: list[str], env: dict[str, str], log_dir: Path, name: str, timeout: float
) -> tuple[int, str, str, float]:
    """Run ``cmd`` to the end (killing its whole session after ``timeout``): (exit code,
    stdout, stderr, seconds)."""
    t0 = _time.monotonic()
    proc = start_process(cmd, env, log_dir, name)
    try:
        code = proc.wait(timeout)
    except _subprocess.TimeoutExpired:
        kill_processes(processes_of(sid=proc.pid))
        proc.wait(10)
        raise AssertionError(
            f"{' '.join(cmd)} still running after {timeout} s; stderr:\n"
            f"{proc.log_err.read_text(errors='replace')[-3000:]}"
        ) from None
    return (
        code,
        proc.log_out.read_text(errors="replace"),
        proc.log_err.read_text(errors="replace"),
        _time.monotonic() - t0,
    )


def processes_of(sid: int | None = None, tmpdir: str | None = None) -> dict[int, str]:
    """Live processes (pid -> command line) in session ``sid`` or with ``tmpdir`` in their
    environment or command line: the processes a test's subprocess (and its Ray) started."""
    found: dict[int, str] = {}
    needle = tmpdir.encode() if tmpdir else None
    for entry in _os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == _os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            if fields[0] == b"Z":
                continue  # a zombie: already dead, waiting for its parent
            mine = sid is not None and int(fields[3]) == sid
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            if not mine and needle is not None:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    mine = needle in f.read() or needle in cmdline
        except (OSError, IndexError, ValueError):
            continue
        if mine:
            found[int(entry)] = cmdline.replace(b"\0", b" ").decode(errors="replace")[:160]
    return found


def wait_processes_gone(
    sid: int | None = None, tmpdir: str | None = None, timeout: float = 30.0
) -> dict[int, str]:
    """Wait until no process of ``sid``/``tmpdir`` is alive; what is still alive otherwise."""
    deadline = _time.monotonic() + timeout
    while True:
        left = processes_of(sid, tmpdir)
        if not left or _time.monotonic() > deadline:
            return left
        _time.sleep(0.5)


def kill_processes(procs: dict[int, str], grace_s: float = 5.0) -> dict[int, str]:
    """SIGTERM, then SIGKILL, the given processes (by PID; only ever ones this test started).
    Returns those that were alive when called."""
    for pid in procs:
        try:
            _os.kill(pid, _signal.SIGTERM)
        except OSError:
            pass
    deadline = _time.monotonic() + grace_s
    while _time.monotonic() < deadline and any(_alive(p) for p in procs):
        _time.sleep(0.2)
    for pid in procs:
        if _alive(pid):
            try:
                _os.kill(pid, _signal.SIGKILL)
            except OSError:
                pass
    return procs


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def no_traceback(text: str) -> bool:
    return "Traceback (most recent call last)" not in text


# ------------------------------------------------------------------------------- markers
# `pytest -m "not slow"`: the everyday subset, every module's unit tests (about 650 of 760
# tests, about a minute on 2 idle cores); CI (.ci/run) runs everything. Slow, by rule: a test
# that starts Ray, a server or a subprocess of the command (SLOW_FIXTURES), or a whole module of
# end-to-end, fault or benchmark tests (SLOW_MODULES). Slow by its own mark
# (`@pytest.mark.slow` above the test): one that runs the engine or a whole job for more than
# about a second on 2 cores, which no rule can tell; one case of a parametrized test that
# alone is slow is named in SLOW_CASES.
SLOW_FIXTURES = {"ray_session", "ray_tmpdir", "s3_endpoint", "s3_options", "s3_proxy", "s3_bucket"}
SLOW_MODULES = {
    "test_pipeline_cluster",
    "test_pipeline_faults",
    "test_pipeline_outages",
    "test_pipeline_signals",
    "test_pipeline_s3",
    "test_pipeline_e2e",
    "test_pipeline_runfolder_faults",
    "test_pipeline_bench",
    "test_pipeline_datasets",  # real runs, every test
    "test_pipeline_first_hour",  # real runs, every test
    "test_pipeline_inline",  # a whole job
    "test_report_browser",
    "test_throughput",
    "test_throughput_agree",
    "test_gpu",
}
SLOW_CASES = {"test_every_style_loss_lowers_its_loss_and_reports_it[wasserstein2]"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        slow_case = item.name in SLOW_CASES
        if slow_case or module in SLOW_MODULES or SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)
