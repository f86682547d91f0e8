"""A whole job in one process on memory:// (ray.address: inline): no Ray involved."""

from __future__ import annotations

import fsspec
import pyarrow.parquet as pq
from conftest import TINY, sample

from pipeline.driver import run_job
from pipeline.jobconfig import job_from_mapping


def test_memory_job_inline(capsys):
    fs = fsspec.filesystem("memory")
    fs.pipe("/inline-in/a.jpg", sample("chelsea").read_bytes())
    fs.pipe("/inline-in/nested/bad.jpg", b"\xff\xd8 not really a jpeg")
    job = job_from_mapping(
        {
            "input": "memory://inline-in",
            "output": "memory://inline-out",
            "styles": {"starry": str(sample("starry_night"))},
            "stylize": TINY,
            "shard_size": 1,
            "grid": {"cell_size": 32},
            "ray": {"address": "inline"},
        }
    )
    result = run_job(job)
    assert result.exit_code == 1 and result.counts == {"ok": 1, "failed_decode": 1}
    with fs.open("/inline-out/manifest.parquet", "rb") as f:
        table = pq.read_table(f)
    assert table.num_rows == 2
    assert fs.exists("/inline-out/starry/a.png") and fs.exists("/inline-out/grid.png")
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls("/inline-out/_manifest", detail=False)) == [
        "job.json",
        "part-00000.parquet",
        "part-00001.parquet",
    ]
    assert "manifest: memory://inline-out/manifest.parquet" in capsys.readouterr().out
    assert run_job(job).computed == 0
