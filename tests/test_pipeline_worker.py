"""StyleWorker without Ray: the real engine on tiny images, and error -> status mapping."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, make_inputs, sample

from pipeline.items import Content, StyleRef, make_items, make_shards
from pipeline.jobconfig import job_from_mapping
from pipeline.worker import StyleWorker, WorkerSpec
from stylize.images import decode_image


@pytest.fixture(scope="module")
def worker():
    cfg = job_from_mapping({"input": "x", "styles": ["y"], "output": "z", "stylize": TINY})
    return StyleWorker(WorkerSpec(cfg.stylize, cfg.params_hash, threads=1))


def _shard(tmp_path, names, styles=("starry_night", "the_scream")):
    root = make_inputs(tmp_path / "in", {f"{n}.jpg": n for n in names}, bad=False)
    (root / "empty.jpg").write_bytes(b"")
    contents = [Content(str(p), p.name, "t") for p in sorted(root.iterdir())]
    refs = {s: StyleRef(s, (str(sample(s)),), (1.0,), ("t",)) for s in styles}
    items = make_items(contents, list(refs.values()), str(tmp_path / "out"), "png", "p")
    return make_shards(items, 100)[0], refs


def test_process_writes_outputs_and_rows(tmp_path, worker):
    shard, refs = _shard(tmp_path, ["tubingen", "the_scream"])
    rows = {
        (r["content_uri"].rsplit("/", 1)[1], r["style"]): r for r in worker.process(shard, refs)
    }
    assert len(rows) == 6
    for (name, style), r in rows.items():
        if name == "empty.jpg":
            assert r["status"] == "failed_decode" and "empty file" in r["error_message"]
            continue
        assert r["status"] == "ok" and r["error_message"] is None
        assert max(r["width"], r["height"]) == 48 and r["iterations"] >= 1
        img = decode_image(open(r["output_uri"], "rb").read())
        assert img.size == (r["width"], r["height"])
        assert r["output_uri"].startswith(str(tmp_path / "out" / style))
    assert rows[("tubingen.jpg", "starry_night")]["width"] == 48  # landscape
    assert rows[("the_scream.jpg", "starry_night")]["height"] == 48  # portrait
    # each style's targets computed once for all its contents (one size: 48 px)
    assert worker.cache_stats()["targets_computed"] == 2


def test_prepare_groups_same_size_images(tmp_path, worker):
    shard, refs = _shard(tmp_path, ["tubingen", "the_scream"])
    attempts = {i.item_id: 1 for i in shard.items}
    failed, batches = worker.prepare(shard, refs, attempts)
    assert [r["status"] for r in failed] == ["failed_decode"] * 2
    assert sorted(len(b) for b in batches) == [2, 2]  # one size per batch, both styles
    _, isolated = worker.prepare(shard, refs, attempts, frozenset(batches[0][:1]))
    assert sorted(len(b) for b in isolated) == [1, 1, 2]


@pytest.mark.parametrize(
    "error, status, message",
    [
        (torch.OutOfMemoryError("CUDA out of memory"), "failed_oom", "out of device memory"),
        (RuntimeError("boom"), "failed_other", "RuntimeError: boom"),
    ],
)
def test_engine_errors_become_rows(tmp_path, worker, monkeypatch, error, status, message):
    shard, refs = _shard(tmp_path, ["tubingen"], styles=("starry_night",))

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(worker.stylizer, "stylize_batch", fail)
    rows = worker.process(shard, refs)
    good = [r for r in rows if r["content_uri"].endswith("tubingen.jpg")]
    assert [r["status"] for r in good] == [status] and message in good[0]["error_message"]


def test_unwritable_output_is_a_row(tmp_path, worker):
    shard, refs = _shard(tmp_path, ["tubingen"], styles=("starry_night",))
    (tmp_path / "out").write_text("a file where the output folder should be")
    rows = [r for r in worker.process(shard, refs) if r["content_uri"].endswith("tubingen.jpg")]
    assert rows[0]["status"] == "failed_other" and "out/starry_night" in rows[0]["error_message"]
