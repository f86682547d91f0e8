"""Faults on a real local Ray instance: a worker killed by PID mid-shard, an item that keeps
killing its workers, an item past its time limit, workers that cannot start."""

from __future__ import annotations

import os
import signal

import pyarrow.parquet as pq
import pytest
from conftest import TINY, sample

from pipeline.driver import run_job
from pipeline.jobconfig import job_from_mapping
from pipeline.scheduler import WorkerStartError

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.timeout(300)]


def _job(tmp_path, contents, styles=("starry_night", "the_scream"), **changes):
    raw = {
        "input": [str(sample(c)) for c in contents],
        "styles": [str(sample(s)) for s in styles],
        "output": str(tmp_path / "out"),
        "stylize": TINY,
        "shard_size": 8,
        "ray": {"num_workers": 1},
        **changes,
    }
    return job_from_mapping(raw)


def _rows(tmp_path):
    return pq.read_table(tmp_path / "out" / "manifest.parquet").to_pylist()


def test_worker_killed_by_pid_mid_shard(tmp_path):
    """One shard, two batches (landscape, portrait); the worker's process is SIGKILLed as its
    second batch starts. Every item appears exactly once, all ok; only the batch in flight was
    redone, by a new worker."""
    killed: list[dict] = []

    def kill_second_batch(call, info, items):
        if call == "batch" and not killed and getattr(kill_second_batch, "seen", False):
            os.kill(info["pid"], signal.SIGKILL)
            killed.append({"pid": info["pid"], "items": {i.item_id for i in items}})
        if call == "batch":
            kill_second_batch.seen = True

    result = run_job(_job(tmp_path, ["tubingen", "the_scream"]), on_submit=kill_second_batch)
    rows = _rows(tmp_path)
    assert killed and result.exit_code == 0
    assert len(rows) == 4 and len({r["item_id"] for r in rows}) == 4
    assert all(r["status"] == "ok" for r in rows)
    redone = [r for r in rows if r["item_id"] in killed[0]["items"]]
    assert len(redone) == 2 and all(r["attempt"] == 2 for r in redone)
    assert all(r["attempt"] == 1 for r in rows if r["item_id"] not in killed[0]["items"])
    assert len({r["worker"] for r in rows}) == 2  # a new actor finished the shard
    parts = list((tmp_path / "out" / "_manifest").glob("part-*.parquet"))
    assert len(parts) == 1


def test_item_that_keeps_killing_workers_is_isolated(tmp_path):
    poison = []

    def kill_poison(call, info, items):
        if call == "batch" and any(
            i.content_uri.endswith("chelsea.jpg") and i.style == "starry_night" for i in items
        ):
            poison.append(len(items))
            os.kill(info["pid"], signal.SIGKILL)

    result = run_job(_job(tmp_path, ["tubingen", "chelsea"], max_attempts=2), on_submit=kill_poison)
    rows = {(r["content_uri"].rsplit("/", 1)[1], r["style"]): r for r in _rows(tmp_path)}
    assert poison == [2, 1]  # first with its batch mate, then alone
    assert result.exit_code == 1 and result.counts == {"ok": 3, "failed_crash": 1}
    crash = rows[("chelsea.jpg", "starry_night")]
    assert crash["status"] == "failed_crash" and "died 2 times" in crash["error_message"]
    assert rows[("chelsea.jpg", "the_scream")]["status"] == "ok"


def test_item_past_its_time_limit(tmp_path):
    job = _job(
        tmp_path,
        ["coffee"],
        styles=("shipwreck",),
        item_timeout_s=4,
        stylize={"preset": "gatys2016", "size": 32, "iterations": 100000},
    )
    result = run_job(job)
    rows = _rows(tmp_path)
    assert result.exit_code == 1 and [r["status"] for r in rows] == ["failed_timeout"]
    assert "item_timeout_s=4" in rows[0]["error_message"]


def test_workers_that_cannot_start_end_the_job(tmp_path, capsys):
    job = _job(
        tmp_path,
        ["coffee"],
        styles=("shipwreck",),
        max_attempts=1,
        stylize={**TINY, "weights": str(tmp_path / "missing-vgg19.pth")},
    )
    with pytest.raises(WorkerStartError, match="no worker could start"):
        run_job(job)


def test_driver_killed_between_shards_then_rerun(tmp_path):
    """As if the driver died after one shard's part: the rerun redoes only the other shard."""
    job = _job(tmp_path, ["tubingen", "coffee"], styles=("shipwreck",), shard_size=1)
    assert run_job(job).exit_code == 0
    out = tmp_path / "out"
    first = {r["item_id"]: r for r in _rows(tmp_path)}
    (out / "_manifest" / "part-00001.parquet").unlink()
    (out / "manifest.parquet").unlink()
    (out / "run.json").unlink()
    again = run_job(job)
    assert again.exit_code == 0 and again.computed == 1
    rows = {r["item_id"]: r for r in _rows(tmp_path)}
    assert rows.keys() == first.keys()
    kept = [i for i in rows if rows[i]["shard"] == 0]
    assert len(kept) == 1 and rows[kept[0]]["finished_at"] == first[kept[0]]["finished_at"]
    redone = [i for i in rows if rows[i]["shard"] != 0]
    assert rows[redone[0]]["shard"] == 1  # new shards are numbered after the last part
    assert rows[redone[0]]["finished_at"] > first[redone[0]]["finished_at"]
