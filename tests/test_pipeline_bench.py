"""``python -m pipeline.bench`` (stylize bench-pipeline) at a small N: its JSON has every
figure, the stand-in actors never import torch, and the manifests it leaves hold every item
exactly once. No timing is asserted (speed is reported by the benchmark, not tested).

The benchmark runs in a subprocess: it starts (and shuts down) a private local Ray instance
of its own, with a Ray serializer for WorkerSpec that must not leak into the session's Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from conftest import no_traceback, run_process, subprocess_env

FIGURES = ("items", "workers", "items_per_s", "driver_peak_rss_mb", "manifest_write_s", "resume_s")
# What unpickling a stand-in's calls imports in a Ray actor: the stand-in's own module, and
# the classes of its arguments (Shard, WorkItem, StyleRef) and of its rows.
STAND_IN_IMPORTS = "import pipeline.bench, pipeline.items, pipeline.manifest"


@pytest.mark.timeout(600)
def test_bench_pipeline_small_run(tmp_path, ray_tmpdir):
    work = tmp_path / "work"
    cmd = [
        sys.executable,
        "-m",
        "pipeline.bench",
        "--items",
        "2000",
        "--workers",
        "4",
        "--shard-size",
        "64",
        "--s3-items",
        "300",
        "--json",
        "--workdir",
        str(work),
    ]
    code, out, err, _ = run_process(
        cmd, subprocess_env(ray_tmpdir), tmp_path / "logs", "bench", timeout=540
    )
    assert code == 0, err[-3000:]
    assert no_traceback(err), err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])

    for phase, n in ((result, 2000), (result["s3"], 300)):
        for key in FIGURES:
            assert key in phase, key
        assert phase["items"] == n and phase["computed"] == n and phase["ok"] == n
        assert phase["exit_code"] == 0
        assert phase["unique_item_ids"] == n
        assert phase["torch_in_actors"] is False
        assert 1 <= phase["workers"] <= 4
        assert phase["items_per_s"] is None or phase["items_per_s"] > 0
        assert phase["driver_peak_rss_mb"] > 0
        assert phase["manifest_write_s"] >= 0 and phase["resume_s"] > 0
        assert phase["resume_computed"] == 0  # a resume of a finished run computes nothing
        assert phase["resume_manifest_untouched"] is True

    # the local run's files: every item exactly once in manifest.parquet, and in the parts
    output = work / "local" / "output"
    table = pq.read_table(output / "manifest.parquet")
    ids = table.column("item_id").to_pylist()
    assert len(ids) == 2000 and len(set(ids)) == 2000
    assert set(table.column("status").to_pylist()) == {"ok"}
    uris = table.column("content_uri").to_pylist()
    assert len(set(uris)) == 1000  # 1,000 files x 2 styles
    assert sorted(set(table.column("style").to_pylist())) == ["style_0", "style_1"]
    parts = sorted(os.listdir(output / "_manifest"))
    part_ids = [
        i
        for p in parts
        if p.startswith("part-")
        for i in pq.read_table(output / "_manifest" / p).column("item_id").to_pylist()
    ]
    assert sorted(part_ids) == sorted(ids)
    assert not any(p.startswith(".tmp-") for p in parts)
    # no output image is written by the stand-ins
    assert not (output / "style_0").exists()


def test_stand_in_imports_no_torch():
    """The stand-in actors must not carry torch (hundreds of MB and seconds of start-up
    each): neither the stand-in's module nor the modules its arguments come from import it."""
    code = f"import sys; {STAND_IN_IMPORTS}; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"
