"""Manifest rows, parts and the final manifest (no Ray)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from pipeline import manifest
from pipeline.items import WorkItem
from pipeline.runfolder import RunFolder


def item(n: int) -> WorkItem:
    return WorkItem(f"id{n}", f"/in/{n}.jpg", "starry", f"/out/starry/{n}.png", n)


def test_rows_follow_the_explicit_schema(tmp_path):
    ok = manifest.make_row(
        item(0),
        "ok",
        params_hash="p",
        shard=0,
        attempt=1,
        width=48,
        height=36,
        iterations=5,
        content_loss=1.0,
        style_loss=2.0,
        tv_loss=0.0,
        total_loss=3.0,
        duration_s=0.5,
        worker="n/a/cpu",
    )
    bad = manifest.make_row(
        item(1),
        "failed_decode",
        params_hash="p",
        shard=0,
        attempt=1,
        error_message="/in/1.jpg: empty file (0 bytes)",
    )
    manifest.write_part(str(tmp_path), 0, [ok, bad], {})
    table = pq.read_table(tmp_path / "_manifest" / "part-00000.parquet")
    assert table.schema.equals(manifest.SCHEMA)
    assert table.column("status").to_pylist() == ["ok", "failed_decode"]
    assert table.column("width").to_pylist() == [48, None]
    with pytest.raises(ValueError, match="status 'broken'"):
        manifest.make_row(item(2), "broken", params_hash="p", shard=0, attempt=1)
    with pytest.raises(ValueError, match="unknown manifest columns"):
        manifest.make_row(item(2), "ok", params_hash="p", shard=0, attempt=1, colour=1)


def test_parts_are_atomic_and_the_newest_part_wins(tmp_path):
    out = str(tmp_path)
    first = manifest.make_row(
        item(0), "failed_other", params_hash="p", shard=0, attempt=1, error_message="x"
    )
    again = manifest.make_row(item(0), "ok", params_hash="p", shard=3, attempt=1)
    manifest.write_part(out, 0, [first], {})
    manifest.write_part(
        out, 3, [again, manifest.make_row(item(1), "ok", params_hash="p", shard=3, attempt=1)], {}
    )
    assert manifest.part_ids(out, {}) == [0, 3]
    rows = {r["item_id"]: r for r in manifest.read_parts(out, {}).to_pylist()}
    assert rows["id0"]["status"] == "ok" and len(rows) == 2
    assert not [p for p in (tmp_path / "_manifest").iterdir() if p.name.startswith(".tmp")]


def test_final_manifest_in_job_order_and_not_rewritten_when_equal(tmp_path):
    out = str(tmp_path)
    items = [item(n) for n in range(3)]
    done = manifest.to_table(
        manifest.make_row(i, "ok", params_hash="p", shard=0, attempt=1) for i in reversed(items)
    )
    table, written = manifest.write_manifest(out, items, done, {})
    assert written and table.column("item_id").to_pylist() == ["id0", "id1", "id2"]
    mtime = (tmp_path / "manifest.parquet").stat().st_mtime_ns
    table2, written2 = manifest.write_manifest(out, items, done, {})
    assert not written2 and table2.equals(table)
    assert (tmp_path / "manifest.parquet").stat().st_mtime_ns == mtime


def test_job_columns_are_read_back_and_an_equal_manifest_is_not_rewritten(tmp_path):
    """A list input's columns (or a sweep's keys) in manifest.parquet: read back with it, and
    a resume that computed nothing leaves the file alone, as for any other job."""
    import pyarrow as pa

    out = str(tmp_path)
    items = [item(n) for n in range(3)]
    done = manifest.to_table(
        manifest.make_row(i, "ok", params_hash="p", shard=0, attempt=1) for i in items
    )

    def labels(table):
        return table.append_column("label", pa.array([7, 8, 9], pa.int64()))

    table, written = manifest.write_manifest(out, items, done, {}, labels)
    assert written
    back = manifest.read_manifest(out, {})
    assert back.column("label").to_pylist() == [7, 8, 9] and back.equals(table)
    mtime = (tmp_path / "manifest.parquet").stat().st_mtime_ns
    _, written2 = manifest.write_manifest(out, items, done, {}, labels)
    assert not written2 and (tmp_path / "manifest.parquet").stat().st_mtime_ns == mtime


def test_json_and_clear_run(tmp_path):
    out = str(tmp_path)
    manifest.write_json(RunFolder(out).run_json, {"a": 1}, {})
    assert json.loads((tmp_path / "run.json").read_text()) == {"a": 1}
    manifest.write_part(out, 0, [], {})
    (tmp_path / "starry").mkdir()
    manifest.clear_run(out, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["starry"]
