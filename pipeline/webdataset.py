"""Shard tars: a shard's finished outputs packed into one WebDataset tar.

Layout of an output folder (beside ``_manifest``, see :mod:`pipeline.runfolder`)::

    {output}/_staging/...           loose outputs wait here until their shard is packed
    {output}/shards/NNNNN.tar       one per packed shard, written whole (never half a tar)
    {output}/shards/.tmp-*          a write in progress, or one a crash left behind

A shard tar is an uncompressed POSIX (ustar) tar whose members come in pairs, in shard order::

    {key}.{ext}     the encoded image (ext: png, jpg, webp, tif)
    {key}.json      the item's manifest row (+ extra columns), UTF-8, sorted keys

The key is the item id (20 hex characters): no dots, no slashes, as WebDataset splits a
member name at its first dot into key and field. A manifest row names a sample as
``{tar}#{key}.{ext}`` (:func:`member_uri`); :func:`read_member` reads one back.

No torch, no Ray: plain bytes in and out, every byte through :mod:`pipeline.storage`.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import math
import tarfile
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline import storage
from pipeline.runfolder import TAR_EXT, RunFolder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """One item of a shard tar: its image, staged at ``source_uri``, and its manifest row."""

    key: str  # the item id: no dots, no slashes
    ext: str  # image extension without the dot: png, jpg, webp, tif
    source_uri: str  # where the encoded image bytes are now (a staged file)
    meta: Mapping[str, Any]  # written as {key}.json

    def __post_init__(self) -> None:
        for what, value in (("key", self.key.replace("/", "")), ("ext", self.ext)):
            if (
                not value
                or any(c in value for c in "./#\\")
                or not value.isprintable()
                or self.key.startswith("/")
                or "//" in self.key
            ):
                raise ValueError(
                    f"sample {what} {value!r}: must be non-empty, printable and "
                    f"without '.', '/', '\\' or '#' (WebDataset splits member "
                    f"names at the first dot); pass the item id as key"
                )
        if self.ext == "json":
            raise ValueError(f"sample {self.key}: ext 'json' is taken by the metadata member")


def member_uri(tar_uri: str, key: str, ext: str) -> str:
    """How a manifest row names a sample: ``{tar_uri}#{key}.{ext}``."""
    return f"{tar_uri}#{key}.{ext}"


def split_member_uri(uri: str) -> tuple[str, str] | None:
    """``(tar_uri, member name)`` of ``tar#member``; None for a URI without a ``#member``
    after ``.tar`` (a plain file, even one whose name holds a ``#``)."""
    tar, sep, member = uri.rpartition("#")
    if not sep or not member or not tar.endswith(TAR_EXT):
        return None
    return tar, member


def _json_default(o: Any) -> Any:
    """What json cannot encode itself, as something it can (returned values are walked
    again by :func:`_plain`)."""
    if isinstance(o, (dt.datetime, dt.date, dt.time)):
        return o.isoformat()
    if isinstance(o, (bytes, bytearray, memoryview)):
        return bytes(o).hex()  # readable and JSON-safe; base64 would save a third
    if hasattr(o, "as_py"):  # pyarrow scalars
        return o.as_py()
    if hasattr(o, "tolist") and hasattr(o, "dtype"):  # numpy scalars (.item()) and arrays
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serializable: {o!r:.100}")


def _plain(v: Any) -> Any:
    """``v`` as JSON types only; non-finite floats become null (strict JSON has no NaN)."""
    if v is None or isinstance(v, (str, bool, int)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return _plain(_json_default(v))


def _meta_json(meta: Mapping[str, Any]) -> bytes:
    """The ``{key}.json`` member: strict JSON, UTF-8, sorted keys."""
    return json.dumps(
        _plain(meta), ensure_ascii=False, sort_keys=True, allow_nan=False, default=_json_default
    ).encode("utf-8")


def pack_bytes(samples: Sequence[Sample], images: Sequence[bytes]) -> bytes:
    """An uncompressed ustar tar, in memory: ``{key}.{ext}`` (``images[i]``) then
    ``{key}.json`` for each sample, in order; one mtime for every member."""
    if len(samples) != len(images):
        raise ValueError(f"{len(samples)} samples but {len(images)} images")
    seen: set[str] = set()
    for s in samples:
        if s.key in seen:
            raise ValueError(f"sample key {s.key} twice in one shard (keys are item ids)")
        seen.add(s.key)
    mtime = int(time.time())  # an int: a float would add a pax header to every member
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for s, image in zip(samples, images):
            members = ((f"{s.key}.{s.ext}", image), (f"{s.key}.json", _meta_json(s.meta)))
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), mtime, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_shard(
    output: str, shard_id: int, samples: Sequence[Sample], options: Mapping[str, Any]
) -> str:
    """Pack the staged outputs of ``samples`` into ``{output}/shards/NNNNN.tar`` and
    return that URI. The tar appears whole or not at all (storage's atomic write: temporary
    ``.tmp-*`` name and rename locally, one PUT on object stores); only then are the staged
    files removed, best effort (a failure is logged, not raised).

    StorageError, and no tar, when a staged file cannot be read. The whole shard is held in
    memory twice (images, then the tar)."""
    if not samples:
        raise ValueError(f"shard {shard_id}: no samples to pack (write no tar instead)")
    uri = RunFolder(output).shard_tar(shard_id)
    images = []
    for s in samples:
        try:
            images.append(storage.read_bytes(s.source_uri, options))
        except storage.StorageError:
            raise
        except OSError as e:  # permanent errors (no such file) come unwrapped
            raise storage.StorageError(
                f"shard {shard_id}: staged output of {s.key} at {s.source_uri} cannot be read: {e}"
            ) from e
    storage.write_bytes(uri, pack_bytes(samples, images), options, atomic=True)
    with _tars_lock:  # a tar of this name read earlier in this process is gone
        _tars.pop(uri, None)
    for s in samples:
        try:
            storage.remove(s.source_uri, options)
        except Exception as e:  # noqa: BLE001 - the tar is written: a leftover costs space only
            log.warning(
                "shard %d packed into %s, but staged %s was not removed: %s: %s",
                shard_id,
                uri,
                s.source_uri,
                type(e).__name__,
                e,
            )
    return uri


def tar_damage(uri: str, options: Mapping[str, Any]) -> str | None:
    """Why the shard tar ``uri`` is not whole (missing, cut short), or None. One ranged read
    of its end: a tar written by :func:`pack_bytes` is a whole number of 512-byte blocks and
    ends with (at least) two zero blocks, which a cut almost never leaves."""
    try:
        size, tail = storage.read_tail(uri, 2 * tarfile.BLOCKSIZE, options)
    except FileNotFoundError:
        return "missing"
    if size < 2 * tarfile.BLOCKSIZE or size % tarfile.BLOCKSIZE:
        return f"cut short ({size} bytes, not whole 512-byte blocks)"
    if tail.strip(b"\0"):
        return f"cut short ({size} bytes, no end-of-archive blocks)"
    return None


TAR_CACHE_BYTES = 512 * 2**20  # tars kept whole in memory for read_member, least recent out
_tars: OrderedDict[str, dict[str, bytes]] = OrderedDict()
_tars_lock = threading.Lock()


def read_members(tar_uri: str, options: Mapping[str, Any]) -> dict[str, bytes]:
    """Every file of the tar, ``{member name: bytes}``, from one read of it (kept in a small
    LRU cache by bytes, so that a grid page or a report reading a shard's members one after
    the other reads the tar once)."""
    with _tars_lock:
        if tar_uri in _tars:
            _tars.move_to_end(tar_uri)
            return _tars[tar_uri]
    members = {}
    data = storage.read_bytes(tar_uri, options)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for info in tar.getmembers():
            f = tar.extractfile(info) if info.isfile() else None
            if f is not None:
                members[info.name] = f.read()
    with _tars_lock:
        _tars[tar_uri] = members
        while (
            len(_tars) > 1
            and sum(len(b) for m in _tars.values() for b in m.values()) > TAR_CACHE_BYTES
        ):
            _tars.popitem(last=False)
    return members


def read_member(uri: str, options: Mapping[str, Any]) -> bytes:
    """The bytes of ``tar#member`` (through :func:`read_members`: the whole tar is read once
    and cached); of the file ``uri`` itself when it names no member. KeyError when the tar
    has no such member."""
    parts = split_member_uri(uri)
    if parts is None:
        return storage.read_bytes(uri, options)
    tar_uri, name = parts
    members = read_members(tar_uri, options)
    if name not in members:
        raise KeyError(f"{name} is not a file in {tar_uri}")
    return members[name]
