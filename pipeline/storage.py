"""Every byte the pipeline reads or writes goes through here: fsspec plus the ``pkg://`` scheme.

``pkg://PACKAGE/RESOURCE`` names a file shipped inside an installed Python package, e.g.
``pkg://stylize/samples/tubingen.jpg``. It resolves with importlib.resources in whichever
process opens it (driver or Ray worker), so configs that use it work after ``pip install``
without a checkout, and the URI recorded in the manifest stays the same on every machine.

Local paths are made absolute so that item ids do not depend on the working directory.
"""

from __future__ import annotations

import importlib.resources
import os
import uuid
from typing import Any, Mapping

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

PKG_SCHEME = "pkg://"


class StorageError(OSError):
    """A path that cannot be read, listed or written; the message names it."""


def _resolve_pkg(uri: str) -> str:
    rest = uri[len(PKG_SCHEME):].strip("/")
    package, _, resource = rest.partition("/")
    if not package:
        raise StorageError(f"{uri}: expected pkg://PACKAGE/PATH, e.g. pkg://stylize/samples")
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        raise StorageError(f"{uri}: Python package {package!r} is not installed") from None
    path = root.joinpath(resource) if resource else root
    return os.fspath(path)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def get_fs(uri: str, storage_options: Mapping[str, Any] | None = None
           ) -> tuple[fsspec.AbstractFileSystem, str]:
    """``(filesystem, path)`` for a URI; ``storage_options`` go to the remote filesystem."""
    if uri.startswith(PKG_SCHEME):
        return LocalFileSystem(), _resolve_pkg(uri)
    options = dict(storage_options or {})
    if "://" not in uri or uri.startswith("file://"):
        options = {}  # local files take no credentials; s3 options would be rejected
    fs, path = url_to_fs(uri, **options)
    if is_local(fs):
        path = os.path.abspath(path)
    return fs, path


def canonical(uri: str) -> str:
    """The form of a URI stored in manifests: absolute path for local files, URL otherwise."""
    if uri.startswith(PKG_SCHEME):
        return PKG_SCHEME + uri[len(PKG_SCHEME):].strip("/")
    if "://" not in uri:
        return os.path.abspath(os.path.expanduser(uri))
    if uri.startswith("file://"):
        return os.path.abspath(uri[len("file://"):])
    return uri.rstrip("/")


def to_uri(fs: fsspec.AbstractFileSystem, path: str, like: str = "") -> str:
    """Inverse of :func:`get_fs` for paths returned by ``fs.find``/``fs.glob``; with ``like``
    a ``pkg://`` URI, paths inside that package come back as ``pkg://`` URIs."""
    if like.startswith(PKG_SCHEME):
        package = like[len(PKG_SCHEME):].strip("/").split("/")[0]
        root = _resolve_pkg(PKG_SCHEME + package).rstrip("/")
        if path.startswith(root + "/") or path == root:
            return f"{PKG_SCHEME}{package}{path[len(root):]}"
    if is_local(fs):
        return os.path.abspath(path)
    return fs.unstrip_protocol(path)


def join(root: str, *parts: str) -> str:
    """Join URI parts with ``/`` (also for local paths: the pipeline only runs on POSIX)."""
    out = root.rstrip("/")
    for p in parts:
        p = p.strip("/")
        if p:
            out = f"{out}/{p}"
    return out


def read_bytes(uri: str, storage_options: Mapping[str, Any] | None = None) -> bytes:
    fs, path = get_fs(uri, storage_options)
    with fs.open(path, "rb") as f:
        return f.read()


def write_bytes(uri: str, data: bytes, storage_options: Mapping[str, Any] | None = None,
                *, atomic: bool = False) -> None:
    """Write a whole file. ``atomic``: readers never see a partial file (temp name + rename
    locally; object stores publish a PUT whole anyway)."""
    fs, path = get_fs(uri, storage_options)
    parent = path.rsplit("/", 1)[0]
    if is_local(fs):
        fs.makedirs(parent, exist_ok=True)
        if atomic:
            tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{path.rsplit('/', 1)[-1]}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
            return
    fs.pipe_file(path, data)


def exists(uri: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    fs, path = get_fs(uri, storage_options)
    return fs.exists(path)


def remove(uri: str, storage_options: Mapping[str, Any] | None = None,
           recursive: bool = False) -> None:
    fs, path = get_fs(uri, storage_options)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


def check_writable(root: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Write and delete a probe file under ``root``; StorageError naming the root otherwise."""
    probe = join(root, "_manifest", f".probe-{uuid.uuid4().hex}")
    try:
        write_bytes(probe, b"ok", storage_options)
        remove(probe, storage_options)
    except Exception as e:  # noqa: BLE001 - any backend error means "not writable"
        raise StorageError(f"output {root} is not writable: {type(e).__name__}: {e}") from None
