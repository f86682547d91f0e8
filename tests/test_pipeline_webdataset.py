"""Shard tars (pipeline/webdataset.py): layout, strict JSON, member URIs, atomic writes."""

from __future__ import annotations

import errno
import io
import json
import logging
import math
import os
import tarfile
import uuid
from datetime import date, datetime, timezone

import fsspec
import numpy as np
import pyarrow as pa
import pytest
from conftest import sample
from PIL import Image

from pipeline import storage
from pipeline import webdataset as wd
from pipeline.runfolder import RunFolder
from stylize.common import TMP_PREFIX, short_hash

SIZES = [(7, 5), (16, 9), (3, 11)]
METAS = [
    {
        "label": 3,
        "score": 0.25,
        "caption": "Tübingen am Neckar — 夜",
        "note": None,
        "finished_at": datetime(2025, 3, 1, 12, 30, 5, tzinfo=timezone.utc),
    },
    {"label": 0, "score": -1.5, "caption": "plain", "note": "x", "finished_at": None},
    {
        "label": 7,
        "score": 1e-9,
        "caption": "",
        "note": None,
        "finished_at": datetime(2024, 12, 31, 23, 59, 59),
    },
]


def png(size: tuple[int, int], n: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (40 * n, 255 - 40 * n, 90)).save(buf, "PNG")
    return buf.getvalue()


def expected_json(meta: dict) -> dict:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in meta.items()}


@pytest.fixture(params=["local", "memory"])
def output(request, tmp_path):
    """An output root: a folder of tmp_path, or a fresh fsspec memory:// folder."""
    if request.param == "local":
        yield str(tmp_path / "out")
        return
    root = f"memory://wds-{uuid.uuid4().hex[:12]}"
    yield f"{root}/out"
    fsspec.filesystem("memory").rm(root[len("memory://") :], recursive=True)


def stage(output: str, metas=METAS, sizes=SIZES) -> tuple[list[wd.Sample], list[bytes]]:
    samples, images = [], []
    for n, (meta, size) in enumerate(zip(metas, sizes)):
        key = short_hash(output, str(n), n=20)
        uri = storage.join(RunFolder(output).staging_dir, f"{key}.png")
        images.append(png(size, n))
        storage.write_bytes(uri, images[-1], {})
        samples.append(wd.Sample(key, "png", uri, meta))
    return samples, images


def test_write_shard_packs_image_and_json_pairs_in_order(output):
    samples, images = stage(output)
    uri = wd.write_shard(output, 3, samples, {})
    assert uri == storage.join(output, "shards", "00003.tar")
    assert storage.listdir(storage.join(output, "shards"), {}) == ["00003.tar"]
    assert not any(storage.exists(s.source_uri, {}) for s in samples)

    with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(uri, {})), mode="r:") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [
            f"{s.key}.{e}" for s in samples for e in ("png", "json")
        ]
        assert {(m.mode, m.uid, m.gid, m.uname, m.gname, m.isfile()) for m in members} == {
            (0o644, 0, 0, "", "", True)
        }
        assert len({m.mtime for m in members}) == 1
        for s, size, image, meta in zip(samples, SIZES, images, METAS):
            data = tar.extractfile(f"{s.key}.png").read()
            assert data == image
            assert Image.open(io.BytesIO(data)).size == size
            raw = tar.extractfile(f"{s.key}.json").read()
            assert json.loads(raw.decode("utf-8")) == expected_json(meta)
    assert "Tübingen am Neckar — 夜".encode() in storage.read_bytes(uri, {})  # not \u-escaped


def test_the_webdataset_package_reads_the_shard(tmp_path):
    import webdataset as wds

    samples, images = stage(str(tmp_path))
    uri = wd.write_shard(str(tmp_path), 0, samples, {})
    got = list(wds.WebDataset(uri, shardshuffle=False))
    assert [g["__key__"] for g in got] == [s.key for s in samples]
    assert [g["png"] for g in got] == images
    assert [json.loads(g["json"]) for g in got] == [expected_json(m) for m in METAS]

    decoded = list(wds.WebDataset(uri, shardshuffle=False).decode("pil"))
    assert [d["png"].size for d in decoded] == SIZES
    assert decoded[0]["json"]["caption"] == METAS[0]["caption"]


def test_member_uris_round_trip_and_read_member(output):
    jpg = sample("coffee").read_bytes()
    key = short_hash("coffee", n=20)
    staged = storage.join(RunFolder(output).staging_dir, f"{key}.jpg")
    storage.write_bytes(staged, jpg, {})
    tar = wd.write_shard(output, 12, [wd.Sample(key, "jpg", staged, {"label": 1})], {})

    uri = wd.member_uri(tar, key, "jpg")
    assert uri == f"{tar}#{key}.jpg" and uri.endswith("shards/00012.tar#" + f"{key}.jpg")
    assert wd.split_member_uri(uri) == (tar, f"{key}.jpg")
    assert wd.read_member(uri, {}) == jpg
    assert json.loads(wd.read_member(wd.member_uri(tar, key, "json"), {})) == {"label": 1}
    with pytest.raises(KeyError):
        wd.read_member(wd.member_uri(tar, "0" * 20, "jpg"), {})

    plain = storage.join(output, "loose#1.png")  # a '#' but no tar: a plain file
    storage.write_bytes(plain, b"loose", {})
    assert wd.split_member_uri(plain) is None
    assert wd.split_member_uri(tar) is None and wd.split_member_uri(tar + "#") is None
    assert wd.read_member(plain, {}) == b"loose"


def test_members_of_two_shards_read_alternately_read_each_tar_once(output, monkeypatch):
    """A grid row or a report's sample going back and forth between shards: each tar is
    read once, not once per switch."""
    tars = []
    for shard in (20, 21):
        key = short_hash("shard", str(shard), n=20)
        staged = storage.join(RunFolder(output).staging_dir, f"{key}.png")
        storage.write_bytes(staged, png((4, 4), shard - 20), {})
        tars.append((wd.write_shard(output, shard, [wd.Sample(key, "png", staged, {})], {}), key))
    reads = []
    real = storage.read_bytes
    monkeypatch.setattr(
        storage, "read_bytes", lambda uri, options=None: reads.append(uri) or real(uri, options)
    )
    for _ in range(3):
        for tar, key in tars:
            assert wd.read_member(wd.member_uri(tar, key, "png"), {}).startswith(b"\x89PNG")
    assert sorted(reads) == sorted(t for t, _ in tars)


def test_an_unreadable_staged_file_leaves_no_tar_and_keeps_the_others(output):
    samples, _ = stage(output)
    storage.remove(samples[1].source_uri, {})
    with pytest.raises(storage.StorageError, match=samples[1].key):
        wd.write_shard(output, 0, samples, {})
    assert not storage.exists(RunFolder(output).shard_tar(0), {})
    assert storage.listdir(storage.join(output, "shards"), {}) == []
    assert [storage.exists(s.source_uri, {}) for s in samples] == [True, False, True]


def test_the_tar_appears_whole_by_renaming_a_recognisable_temporary(tmp_path, monkeypatch):
    out = str(tmp_path)
    samples, _ = stage(out)
    final = RunFolder(out).shard_tar(1)
    renames = []
    real_replace = os.replace

    def replace(src, dst):
        assert os.path.basename(src).startswith(TMP_PREFIX)
        assert os.path.dirname(src) == os.path.dirname(dst)  # same folder: rename is atomic
        assert not os.path.exists(dst)
        with tarfile.open(src) as tar:  # already whole under the temporary name
            assert len(tar.getnames()) == 6
        renames.append((src, dst))
        real_replace(src, dst)

    monkeypatch.setattr("stylize.common.os.replace", replace)
    assert wd.write_shard(out, 1, samples, {}) == final
    assert [dst for _, dst in renames] == [final]


def test_a_write_failing_midway_leaves_no_tar_and_the_staged_files(tmp_path, monkeypatch):
    out = str(tmp_path)
    samples, _ = stage(out)

    def fsync(fd):
        raise OSError(errno.EIO, "I/O error (injected)")

    monkeypatch.setattr("stylize.common.os.fsync", fsync)
    monkeypatch.setattr(storage, "_retry_s", 0.0)  # EIO is transient: give up at once
    with pytest.raises(storage.StorageUnavailable, match="injected"):
        wd.write_shard(out, 0, samples, {})
    assert os.listdir(tmp_path / "shards") == []  # neither the tar nor a temporary
    assert all(storage.exists(s.source_uri, {}) for s in samples)


def test_a_staged_file_that_cannot_be_removed_is_logged_not_raised(tmp_path, monkeypatch, caplog):
    out = str(tmp_path)
    samples, _ = stage(out)
    real_remove = storage.remove

    def remove(uri, options=None, recursive=False):
        if uri == samples[0].source_uri:
            raise PermissionError(errno.EACCES, "Permission denied", uri)
        real_remove(uri, options, recursive)

    monkeypatch.setattr(storage, "remove", remove)
    with caplog.at_level(logging.WARNING, logger="pipeline.webdataset"):
        assert wd.write_shard(out, 0, samples, {}) == RunFolder(out).shard_tar(0)
    assert [storage.exists(s.source_uri, {}) for s in samples] == [True, False, False]
    assert "not removed" in caplog.text and samples[0].source_uri in caplog.text


def test_meta_is_strict_json_whatever_the_column_types():
    meta = {
        "nan": math.nan,
        "inf": -math.inf,
        "raw": b"\x00\xff",
        "day": date(2025, 1, 2),
        "np_int": np.int64(5),
        "np_nan": np.float32("nan"),
        "np_arr": np.array([1.5, np.nan]),
        "arrow": pa.scalar(2.5),
        "arrow_null": pa.scalar(None, pa.int64()),
        "nested": {1: [math.nan, (1, "ü")]},
    }
    tar = wd.pack_bytes([wd.Sample("k", "png", "unused", meta)], [b"img"])
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        text = t.extractfile("k.json").read().decode("utf-8")
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {
        "nan": None,
        "inf": None,
        "raw": "00ff",
        "day": "2025-01-02",
        "np_int": 5,
        "np_nan": None,
        "np_arr": [1.5, None],
        "arrow": 2.5,
        "arrow_null": None,
        "nested": {"1": [None, [1, "ü"]]},
    }
    with pytest.raises(TypeError, match="object is not JSON serializable"):
        wd.pack_bytes([wd.Sample("k", "png", "unused", {"x": object()})], [b"img"])


def test_keys_and_extensions_that_webdataset_would_misread_are_refused(tmp_path):
    for key, ext in (
        ("a.b", "png"),
        ("/a", "png"),
        ("a//b", "png"),
        ("", "png"),
        ("k", ".png"),
        ("k", "tar.gz"),
        ("k#1", "png"),
    ):
        with pytest.raises(ValueError, match="without '.'"):
            wd.Sample(key, ext, "unused", {})
    wd.Sample("cat/img_1", "png", "unused", {})  # a folder in the key: layout mirror
    with pytest.raises(ValueError, match="'json' is taken"):
        wd.Sample("k", "json", "unused", {})
    twice = [wd.Sample("k", "png", "unused", {})] * 2
    with pytest.raises(ValueError, match="twice in one shard"):
        wd.pack_bytes(twice, [b"a", b"b"])
    with pytest.raises(ValueError, match="1 samples but 2 images"):
        wd.pack_bytes(twice[:1], [b"a", b"b"])
    with pytest.raises(ValueError, match="no samples"):
        wd.write_shard(str(tmp_path), 0, [], {})
    with pytest.raises(ValueError, match="must be >= 0"):
        RunFolder(str(tmp_path)).shard_tar(-1)
    assert RunFolder("s3://b/out/").staging_dir == "s3://b/out/_staging"
    assert RunFolder("s3://b/out").shard_tar(7) == "s3://b/out/shards/00007.tar"
