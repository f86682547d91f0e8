"""pipeline.runfolder: the names and URIs of a run folder."""

from __future__ import annotations

import fnmatch

import pytest

from pipeline import runfolder
from pipeline.runfolder import RunFolder


def test_every_uri_of_the_folder():
    f = RunFolder("s3://b/out/")
    assert f.manifest_dir == "s3://b/out/_manifest"
    assert f.part(12) == "s3://b/out/_manifest/part-00012.parquet"
    assert f.job_json == "s3://b/out/_manifest/job.json"
    assert f.run_json == "s3://b/out/run.json"
    assert f.manifest_file == "s3://b/out/manifest.parquet"
    assert f.report_dir == "s3://b/out/report"
    assert f.report_index == "s3://b/out/report/index.html"
    assert f.shards_dir == "s3://b/out/shards"
    assert f.shard_tar(7) == "s3://b/out/shards/00007.tar"
    assert f.staging_dir == "s3://b/out/_staging"
    assert f.grid_pages(1) == ["s3://b/out/grid.png"]
    assert f.grid_pages(2) == ["s3://b/out/grid-001.png", "s3://b/out/grid-002.png"]
    assert f.sweep_grid(3) == "s3://b/out/grid-sweep-003.png"
    with pytest.raises(ValueError, match="must be >= 0"):
        f.shard_tar(-1)


def test_names_read_back():
    assert runfolder.shard_of_part("part-00012.parquet") == 12
    assert runfolder.shard_of_part(".tmp-x-part-00012.parquet") is None
    assert runfolder.shard_of_tar("00007.tar") == 7
    assert [runfolder.shard_of_tar(n) for n in ("x.tar", "00007.tar.tmp", ".tar")] == [None] * 3
    assert runfolder.is_sweep_grid("grid-sweep-001.png")
    assert not runfolder.is_sweep_grid("grid-001.png")


def test_reserved_style_names_cover_the_folders_own_files():
    assert runfolder.RESERVED_STYLE_NAMES == (
        "_*",
        ".*",
        "manifest.*",
        "run.json",
        "job.json",
        "grid*",
        "report*",
    )
    f = RunFolder("out")
    own = [
        f.manifest_dir,
        f.staging_dir,
        f.run_json,
        f.manifest_file,
        f.report_dir,
        *f.grid_pages(1),
        *f.grid_pages(2),
        f.sweep_grid(1),
    ]
    for uri in own:
        name = uri.rsplit("/", 1)[1]
        assert any(fnmatch.fnmatchcase(name, p) for p in runfolder.RESERVED_STYLE_NAMES), name
