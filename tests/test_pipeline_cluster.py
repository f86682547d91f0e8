"""Ray clusters caused for real, each in subprocesses of its own (never the session's local
Ray, never a cluster that happens to run on the machine; every Ray process here lives under a
private RAY_TMPDIR and is stopped by PID, never with ``ray stop``):

- a two-node ``ray.cluster_utils.Cluster`` whose worker node is removed mid-job;
- a ``ray start --head`` cluster on the machine, with RAY_ADDRESS set: ``ray.address: null``
  still runs on a private instance and registers nothing on that cluster;
- ``ray.address`` where nothing listens: exit 2 within a minute, naming the address.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import (
    TINY,
    free_port,
    kill_processes,
    make_inputs,
    no_traceback,
    processes_of,
    run_process,
    sample,
    start_process,
    stylize_command,
    subprocess_env,
    wait_processes_gone,
    write_job,
)

pytestmark = pytest.mark.timeout(600)

TWO_NODE_SCRIPT = textwrap.dedent('''
    """Run a job on a two-node Cluster; remove the worker node while it runs a batch."""
    import json, os, sys, time
    import ray
    from ray.cluster_utils import Cluster
    from pipeline.driver import run_job
    from pipeline.jobconfig import job_from_mapping

    raw = json.loads(sys.argv[1])
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    node = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    raylet = node.all_processes["raylet"][0].process.pid
    removed = {}
    batches = []

    def on_worker_node(pid):
        try:
            while pid > 1:
                if pid == raylet:
                    return True
                with open(f"/proc/{pid}/stat") as f:
                    pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            pass
        return False

    def hook(call, info, items):
        if call != "batch" or removed:
            return
        batches.append(on_worker_node(info.get("pid", 0)))
        # the second batch on the worker node: it holds work done before (a part) and in flight
        if sum(batches) >= 2 and batches[-1]:
            removed.update(pid=info["pid"], items=[i.item_id for i in items], at=time.time())
            # a lost node takes its processes down at once: kill the actor's process first, so
            # that a tiny batch cannot finish (and report) while the raylet is being killed
            try:
                os.kill(info["pid"], 9)
            except OSError:
                pass
            cluster.remove_node(node, allow_graceful=False)

    raw["ray"]["address"] = cluster.address
    result = run_job(job_from_mapping(raw), on_submit=hook)
    print("RESULT " + json.dumps({"exit_code": result.exit_code, "counts": result.counts,
                                  "removed": removed, "batches": batches}), flush=True)
    ray.shutdown()
    cluster.shutdown()
''')


def _contents(tmp_path: Path, n: int) -> Path:
    names = ("tubingen", "chelsea", "coffee", "the_scream", "shipwreck")
    return make_inputs(
        tmp_path / "in", {f"img{i:02d}.jpg": names[i % len(names)] for i in range(n)}, bad=False
    )


def test_two_node_cluster_loses_its_worker_node_mid_job(tmp_path, ray_tmpdir):
    """Head (1 CPU) + worker node (1 CPU), one actor on each; the worker node is removed as
    it starts a batch. The job ends with every item exactly once, all ok, and the batch that
    was lost with the node was redone on the head."""
    out = tmp_path / "out"
    raw = {
        "input": str(_contents(tmp_path, 6)),
        "styles": [str(sample("starry_night"))],
        "output": str(out),
        "stylize": TINY,
        "shard_size": 1,
        "ray": {"address": None, "num_workers": 2, "gpus_per_worker": 0, "startup_timeout_s": 120},
    }
    script = tmp_path / "two_nodes.py"
    script.write_text(TWO_NODE_SCRIPT)
    env = subprocess_env(ray_tmpdir)
    code, stdout, stderr, _ = run_process(
        [sys.executable, str(script), json.dumps(raw)], env, tmp_path, "two_nodes", 500
    )
    assert code == 0, f"exit {code}\n{stdout[-2000:]}\n{stderr[-4000:]}"
    report = json.loads([ln for ln in stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
    assert report["removed"], f"the worker node never ran a second batch: {report}"
    assert report["exit_code"] == 0 and report["counts"] == {"ok": 6}, report
    assert no_traceback(stderr), stderr[-4000:]

    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert sorted(Path(r["content_uri"]).name for r in rows) == [
        f"img{i:02d}.jpg" for i in range(6)
    ]
    assert len({r["item_id"] for r in rows}) == 6 and all(r["status"] == "ok" for r in rows)
    lost = [r for r in rows if r["item_id"] in report["removed"]["items"]]
    assert lost and all(r["attempt"] >= 2 for r in lost), lost  # redone after the loss
    assert len({r["worker"] for r in rows}) >= 2  # both nodes' actors finished items
    left = wait_processes_gone(tmpdir=ray_tmpdir, timeout=90)
    assert not left, f"Ray processes of the test cluster still alive: {left}"


# ------------------------------------------------------------------ a cluster on the machine


def _start_head(tmp_path: Path, ray_tmpdir: str) -> tuple[subprocess.Popen, int]:
    """``ray start --head --block`` under the private RAY_TMPDIR, on a free port, 1 CPU: what
    a user (or ``ray job submit``) leaves running on the machine."""
    port = free_port()
    env = subprocess_env(ray_tmpdir)
    cmd = [
        str(Path(sys.executable).with_name("ray")),
        "start",
        "--head",
        "--block",
        "--port",
        str(port),
        "--num-cpus",
        "1",
        "--include-dashboard",
        "false",
        "--dashboard-agent-listen-port",
        str(free_port()),
        "--disable-usage-stats",
    ]
    if not Path(cmd[0]).exists():
        cmd[:1] = [sys.executable, "-m", "ray.scripts.scripts"]
    head = start_process(cmd, env, tmp_path, "ray-head")
    deadline = time.monotonic() + 180
    while "Ray runtime started" not in head.log_out.read_text(
        errors="replace"
    ) + head.log_err.read_text(errors="replace"):
        if head.poll() is not None or time.monotonic() > deadline:
            _stop_head(head, ray_tmpdir)
            pytest.fail(f"ray start did not come up:\n{head.log_err.read_text()[-3000:]}")
        time.sleep(0.5)
    return head, port


def _stop_head(head: subprocess.Popen, ray_tmpdir: str) -> None:
    """Stop only what our ``ray start`` started: its session's processes, by PID."""
    try:
        os.killpg(head.pid, signal.SIGTERM)
    except OSError:
        pass
    try:
        head.wait(15)
    except subprocess.TimeoutExpired:
        pass
    kill_processes(processes_of(sid=head.pid))
    if head.poll() is None:
        head.wait(10)


def _jobs_on(port: int, env: dict[str, str], tmp_path: Path) -> list[dict]:
    """The job table of the cluster's GCS, read without registering a job."""
    code = textwrap.dedent(f"""
        import json
        try:  # Ray >= 2.52 enables token auth by default: use the token `ray start` saved
            from ray._private.authentication.authentication_token_setup import (
                maybe_enable_token_auth_if_token_available)
            maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
        except ImportError:
            pass
        from ray._private.state import GlobalState
        from ray._raylet import GcsClientOptions
        state = GlobalState()
        state._initialize_global_state(GcsClientOptions.create(
            "127.0.0.1:{port}", None, allow_cluster_id_nil=True, fetch_cluster_id_if_nil=False))
        print(json.dumps(state.job_table(), default=str))
    """)
    rc, out, err, _ = run_process([sys.executable, "-c", code], env, tmp_path, "jobs", 120)
    assert rc == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_address_null_ignores_a_cluster_on_the_machine(tmp_path, ray_tmpdir):
    """A ``ray start`` cluster runs (its address in RAY_TMPDIR/ray/ray_current_cluster, as
    /tmp/ray's would be) and RAY_ADDRESS points at it, as under ``ray job submit``. A job
    with ``ray.address: null`` runs on a private local instance: exit 0, nothing registered
    on that cluster, which still runs afterwards; the private instance is gone at the end."""
    head, port = _start_head(tmp_path, ray_tmpdir)
    try:
        assert (Path(ray_tmpdir) / "ray" / "ray_current_cluster").exists()
        env = subprocess_env(ray_tmpdir, RAY_ADDRESS=f"127.0.0.1:{port}")
        out = tmp_path / "out"
        job = write_job(
            tmp_path / "job.yaml",
            {
                "input": [str(sample("tubingen"))],
                "styles": [str(sample("starry_night"))],
                "output": str(out),
                "stylize": TINY,
                "ray": {"address": None, "num_workers": 1},
            },
        )
        proc_log = tmp_path / "run"
        code, stdout, stderr, _ = run_process(
            stylize_command("run", str(job)), env, proc_log, "run", 400
        )
        assert code == 0, f"exit {code}\n{stdout[-2000:]}\n{stderr[-4000:]}"
        assert no_traceback(stderr) and "num_cpus" not in stderr, stderr[-4000:]
        rows = pq.read_table(out / "manifest.parquet").to_pylist()
        assert [r["status"] for r in rows] == ["ok"]

        assert head.poll() is None, "the cluster on the machine was stopped by the job"
        assert _jobs_on(port, env, tmp_path) == [], "the job registered on the existing cluster"
        # the check can see jobs: a driver that does join is listed (an explicit address
        # needs RAY_AUTH_MODE=token to present the token `ray start` saved, Ray >= 2.52)
        rc, _, err, _ = run_process(
            [
                sys.executable,
                "-c",
                f"import ray; ray.init(address='127.0.0.1:{port}'); ray.shutdown()",
            ],
            {**env, "RAY_AUTH_MODE": "token"},
            tmp_path,
            "join",
            180,
        )
        assert rc == 0, err[-3000:]
        assert len(_jobs_on(port, env, tmp_path)) == 1
    finally:
        _stop_head(head, ray_tmpdir)
    left = wait_processes_gone(sid=head.pid, timeout=60)
    assert not left, f"processes of our ray start still alive: {left}"
    left = wait_processes_gone(tmpdir=ray_tmpdir, timeout=60)
    assert not left, f"processes of the job's private Ray still alive: {left}"


def test_address_where_nothing_listens_is_a_configuration_error(tmp_path, ray_tmpdir):
    port = free_port()
    job = write_job(
        tmp_path / "job.yaml",
        {
            "input": [str(sample("tubingen"))],
            "styles": [str(sample("starry_night"))],
            "output": str(tmp_path / "out"),
            "stylize": TINY,
            "ray": {"address": f"127.0.0.1:{port}"},
        },
    )
    code, stdout, stderr, seconds = run_process(
        stylize_command("run", str(job)), subprocess_env(ray_tmpdir), tmp_path, "run", 300
    )
    assert code == 2, f"exit {code} after {seconds:.0f} s\n{stdout[-2000:]}\n{stderr[-3000:]}"
    assert seconds < 90, f"took {seconds:.0f} s"  # ~60 s at most, plus start-up (2 busy cores)
    assert f"127.0.0.1:{port}" in stderr and no_traceback(stderr), stderr[-3000:]
    assert not processes_of(tmpdir=ray_tmpdir)  # nothing started
