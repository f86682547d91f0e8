"""The scheduling policy on its own: every branch driven by plain events, no Ray, no clock."""

from __future__ import annotations

import pytest

from pipeline.items import Shard, WorkItem
from pipeline.manifest import make_row
from pipeline.scheduler import Prepare, RunBatch, Scheduler, Start, Stop, WorkerStartError


def items(n: int, shard: int = 0) -> tuple[WorkItem, ...]:
    return tuple(
        WorkItem(
            f"s{shard}i{k}", f"/in/{shard}-{k}.jpg", "starry", f"/out/starry/{shard}-{k}.png", k
        )
        for k in range(n)
    )


def ok_rows(shard: Shard, ids) -> list[dict]:
    by_id = {i.item_id: i for i in shard.items}
    return [make_row(by_id[i], "ok", params_hash="p", shard=shard.shard_id, attempt=1) for i in ids]


def policy(shards, **kw) -> Scheduler:
    args = dict(num_workers=1, max_attempts=2, item_timeout_s=10.0, startup_timeout_s=60.0)
    return Scheduler(shards, **{**args, **kw})


def of(actions, kind):
    return [a for a in actions if isinstance(a, kind)]


def start_one(p: Scheduler, t: float = 0.0) -> tuple[int, Prepare]:
    (start,) = of(p.begin(t), Start)
    (prep,) = of(p.ready(start.worker, {"worker": "w0"}, t), Prepare)
    return start.worker, prep


def test_happy_path_prepare_then_batches_then_stop():
    shard = Shard(0, items(3))
    p = policy([shard])
    wid, prep = start_one(p)
    assert prep.shard.items == shard.items and prep.attempts == {i.item_id: 1 for i in shard.items}
    acts = p.returned(wid, ([], [["s0i0", "s0i1"], ["s0i2"]]), 1.0)
    assert acts == [RunBatch(wid, ("s0i0", "s0i1"))]
    acts = p.returned(wid, ok_rows(shard, ["s0i0", "s0i1"]), 2.0)
    assert acts == [RunBatch(wid, ("s0i2",))]
    acts = p.returned(wid, ok_rows(shard, ["s0i2"]), 3.0)
    assert acts == [Stop(wid)] and p.finished
    (done,) = p.completed()
    assert done[0] == 0 and sorted(r["item_id"] for r in done[1]) == ["s0i0", "s0i1", "s0i2"]
    assert p.completed() == []  # each shard is reported once


def test_death_during_a_batch_requeues_the_rest_and_isolates_suspects():
    shard = Shard(0, items(3))
    p = policy([shard])
    wid, _ = start_one(p)
    p.returned(wid, ([], [["s0i0", "s0i1"], ["s0i2"]]), 1.0)
    acts = p.died(wid, "RayActorError: killed", 2.0)
    assert Stop(wid) in acts and len(of(acts, Start)) == 1  # a new worker for the rest
    new = of(acts, Start)[0].worker
    (prep,) = of(p.ready(new, {"worker": "w1"}, 3.0), Prepare)
    assert {i.item_id for i in prep.shard.items} == {"s0i0", "s0i1", "s0i2"}
    assert prep.isolate == {"s0i0", "s0i1"} and prep.attempts["s0i0"] == 2
    assert p.strikes == {"s0i0": 1, "s0i1": 1} and not p.completed()


def test_an_item_that_keeps_killing_workers_becomes_failed_crash():
    shard = Shard(0, items(1))
    p = policy([shard], max_attempts=2)
    wid, _ = start_one(p)
    p.returned(wid, ([], [["s0i0"]]), 1.0)
    acts = p.died(wid, "boom", 2.0)
    wid2 = of(acts, Start)[0].worker
    p.ready(wid2, {}, 3.0)
    p.returned(wid2, ([], [["s0i0"]]), 4.0)
    acts = p.died(wid2, "boom again", 5.0)
    assert p.finished and not of(acts, Start)
    (row,) = p.completed()[0][1]
    assert row["status"] == "failed_crash" and "died 2 times" in row["error_message"]
    assert "boom again" in row["error_message"] and row["attempt"] == 2


def test_death_during_prepare_retries_each_item_alone():
    shard = Shard(0, items(2))
    p = policy([shard], max_attempts=3)
    wid, _ = start_one(p)
    acts = p.died(wid, "died while decoding", 1.0)
    new = of(acts, Start)[0].worker
    (prep,) = of(p.ready(new, {}, 2.0), Prepare)
    assert len(prep.shard.items) == 1  # split: who broke the prepare step?
    assert len(p.queue) == 1 and len(p.queue[0].shard.items) == 1


def test_timeout_of_a_multi_item_batch_retries_each_alone_then_fails_the_slow_one():
    shard = Shard(0, items(2))
    p = policy([shard], item_timeout_s=10.0)
    wid, _ = start_one(p)
    p.returned(wid, ([], [["s0i0", "s0i1"]]), 0.0)
    assert p.next_deadline() == 20.0  # 10 s per item in the call
    assert p.tick(19.0) == []
    acts = p.tick(21.0)
    assert Stop(wid) in acts and not p.completed()
    new = of(acts, Start)[0].worker
    (prep,) = of(p.ready(new, {}, 22.0), Prepare)
    assert prep.isolate == {"s0i0", "s0i1"}
    p.returned(new, ([], [["s0i0"], ["s0i1"]]), 23.0)
    p.returned(new, ok_rows(shard, ["s0i0"]), 24.0)  # the fast one alone is fine
    acts = p.tick(24.0 + 10.5)  # the slow one alone is not
    assert p.finished
    rows = {r["item_id"]: r for r in p.completed()[0][1]}
    assert rows["s0i0"]["status"] == "ok"
    assert rows["s0i1"]["status"] == "failed_timeout"
    assert "item_timeout_s=10" in rows["s0i1"]["error_message"]


def test_startup_failures_are_retried_then_reported_with_resources():
    p = policy([Shard(0, items(1))], max_attempts=2, describe=lambda: "the cluster has GPU 0")
    (s,) = of(p.begin(0.0), Start)
    (s2,) = of(p.died(s.worker, "no weights", 1.0), Start)
    with pytest.raises(WorkerStartError, match="2 tries; the cluster has GPU 0.*no weights"):
        p.died(s2.worker, "no weights", 2.0)


def test_startup_timeout_with_no_worker_ever_ready_fails_at_once():
    p = policy(
        [Shard(0, items(1))],
        startup_timeout_s=30.0,
        describe=lambda: "each asking for {'num_gpus': 1}; the cluster has GPU 0",
    )
    p.begin(0.0)
    assert p.waiting_for_workers() == 1 and p.tick(29.0) == []
    with pytest.raises(WorkerStartError, match="startup_timeout_s=30 s.*GPU 0"):
        p.tick(31.0)


def test_startup_timeout_of_an_extra_worker_keeps_the_others_going():
    shards = [Shard(0, items(1, 0)), Shard(1, items(1, 1))]
    p = policy(shards, num_workers=2, startup_timeout_s=30.0)
    a, b = (s.worker for s in of(p.begin(0.0), Start))
    assert len(of(p.ready(a, {}, 1.0), Prepare)) == 1
    acts = p.tick(31.0)  # b never came
    assert Stop(b) in acts and p.startup_errors


def test_a_worker_that_returns_nothing_gets_failed_other_rows_once():
    shard = Shard(0, items(2))
    p = policy([shard])
    wid, _ = start_one(p)
    p.returned(wid, ([], [["s0i0", "s0i1"]]), 1.0)
    p.returned(wid, None, 2.0)
    assert p.finished
    rows = p.completed()[0][1]
    assert [r["status"] for r in rows] == ["failed_other"] * 2
    assert all("returned no result" in r["error_message"] for r in rows)


def test_worker_code_that_raises_gives_rows_not_a_retry_loop():
    shard = Shard(0, items(2))
    p = policy([shard])
    wid, _ = start_one(p)
    p.returned(wid, ([], [["s0i0"], ["s0i1"]]), 1.0)
    acts = p.raised(wid, "ValueError: a bug", 2.0)
    assert acts == [RunBatch(wid, ("s0i1",))]  # the same worker goes on
    p.returned(wid, ok_rows(shard, ["s0i1"]), 3.0)
    rows = {r["item_id"]: r for r in p.completed()[0][1]}
    assert rows["s0i0"]["status"] == "failed_other" and "a bug" in rows["s0i0"]["error_message"]


def test_decode_failures_from_prepare_complete_a_shard_without_batches():
    shard = Shard(0, items(1))
    p = policy([shard])
    wid, _ = start_one(p)
    bad = make_row(
        shard.items[0],
        "failed_decode",
        params_hash="p",
        shard=0,
        attempt=1,
        error_message="empty file",
    )
    p.returned(wid, ([bad], []), 1.0)
    assert p.finished and p.completed()[0][1][0]["status"] == "failed_decode"


def test_earlier_attempts_count_on_resume_and_workers_never_exceed_the_work():
    shards = [Shard(0, items(1))]
    p = policy(shards, num_workers=8, tries={"s0i0": 2})
    starts = of(p.begin(0.0), Start)
    assert len(starts) == 1
    (prep,) = of(p.ready(starts[0].worker, {}, 0.0), Prepare)
    assert prep.attempts == {"s0i0": 3}


def test_two_workers_share_the_queue():
    shards = [Shard(n, items(1, n)) for n in range(3)]
    p = policy(shards, num_workers=2)
    a, b = (s.worker for s in of(p.begin(0.0), Start))
    (pa,) = of(p.ready(a, {}, 0.0), Prepare)
    (pb,) = of(p.ready(b, {}, 0.0), Prepare)
    assert {pa.shard.shard_id, pb.shard.shard_id} == {0, 1}
    acts = p.returned(a, (ok_rows(pa.shard, [f"s{pa.shard.shard_id}i0"]), []), 1.0)
    (nxt,) = of(acts, Prepare)
    assert nxt.worker == a and nxt.shard.shard_id == 2
    assert [c[0] for c in p.completed()] == [pa.shard.shard_id]
