"""The same job with input and output on S3: moto's server on 127.0.0.1, reached by the Ray
workers through the job's storage_options."""

from __future__ import annotations

import io

import pyarrow.parquet as pq
import pytest
import s3fs
from conftest import TINY, sample
from PIL import Image

from pipeline.driver import run_job
from pipeline.jobconfig import job_from_mapping

pytestmark = pytest.mark.usefixtures("ray_session")


def test_job_on_s3(s3_options):
    fs = s3fs.S3FileSystem(**s3_options)
    fs.mkdir("photos-bucket")
    fs.pipe("photos-bucket/in/tubingen.jpg", sample("tubingen").read_bytes())
    fs.pipe("photos-bucket/in/sub dir/cat.jpg", sample("chelsea").read_bytes())
    fs.pipe("photos-bucket/in/broken.jpg", sample("coffee").read_bytes()[:500])
    fs.pipe("photos-bucket/styles/starry.jpg", sample("starry_night").read_bytes())
    job = job_from_mapping(
        {
            "input": "s3://photos-bucket/in/",
            "styles": "s3://photos-bucket/styles/",
            "output": "s3://photos-bucket/out",
            "stylize": TINY,
            "shard_size": 2,
            "storage_options": s3_options,
            "ray": {"num_workers": 2},
            "grid": {"cell_size": 32},
        }
    )
    result = run_job(job)
    assert result.exit_code == 1 and result.counts == {"ok": 2, "failed_decode": 1}

    fs.invalidate_cache()
    rows = pq.read_table(io.BytesIO(fs.cat("photos-bucket/out/manifest.parquet"))).to_pylist()
    assert sorted(r["content_uri"] for r in rows) == [
        "s3://photos-bucket/in/broken.jpg",
        "s3://photos-bucket/in/sub dir/cat.jpg",
        "s3://photos-bucket/in/tubingen.jpg",
    ]
    for r in rows:
        if r["status"] == "ok":
            img = Image.open(io.BytesIO(fs.cat(r["output_uri"])))
            assert max(img.size) == 48 and r["output_uri"].startswith(
                "s3://photos-bucket/out/starry/"
            )
        else:
            assert "broken.jpg" in r["error_message"]
    assert fs.exists("photos-bucket/out/grid.png") and fs.exists("photos-bucket/out/run.json")
    assert fs.ls("photos-bucket/out/_manifest", detail=False)

    again = run_job(job)
    assert again.computed == 0 and again.counts == result.counts
