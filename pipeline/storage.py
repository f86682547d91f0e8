"""Every byte the pipeline reads or writes goes through here: fsspec plus the ``pkg://`` scheme.

``pkg://PACKAGE/RESOURCE`` names a file shipped inside an installed Python package, e.g.
``pkg://stylize/samples/tubingen.jpg``. It resolves with importlib.resources in whichever
process opens it (driver or Ray worker), so configs that use it work after ``pip install``
without a checkout, and the URI recorded in the manifest stays the same on every machine.

Local paths are made absolute so that item ids do not depend on the working directory.

Storage is unreliable over hours: every read, write, listing and removal here retries
transient errors (connection resets, 5xx answers, timeouts, a full disk) with exponential
backoff and jitter for ``retry_budget_s()`` seconds (the job's ``io_retry_s``, set in each
process from the job), then raises :class:`StorageUnavailable`. Permanent errors (no such
file, permission denied, a directory where a file was expected, a name too long) are raised
at once.
"""

from __future__ import annotations

import errno
import importlib.resources
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_delay,
    wait_random_exponential,
)

from pipeline.runfolder import join  # noqa: F401 - the URI join, storage.join to its users
from stylize.common import EXIT_INFRA, TMP_PREFIX, StylizeError, one_line, write_atomic

PKG_SCHEME = "pkg://"
DEFAULT_RETRY_S = 150.0  # a storage outage this long is ridden out (job key io_retry_s)
_PERMANENT_TYPES = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)
_PERMANENT_ERRNOS = {
    errno.ENOENT,
    errno.EEXIST,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENAMETOOLONG,
    errno.ELOOP,
    errno.EINVAL,
    errno.EXDEV,
}
# Libraries whose own exceptions (not OSError subclasses) mean "the network or the service
# failed this time": botocore's EndpointConnectionError, aiohttp's ClientError, ...
_TRANSIENT_MODULES = (
    "botocore",
    "aiobotocore",
    "aiohttp",
    "urllib3",
    "requests",
    "http.client",
    "google.api_core",
    "google.auth.exceptions",
    "gcsfs",
    "adlfs",
)
_retry_s = DEFAULT_RETRY_S
T = TypeVar("T")


class StorageError(StylizeError, OSError):
    """A path that cannot be read, listed or written; the message names it."""


class StorageUnavailable(StorageError):
    """Storage kept failing with transient errors for the whole retry budget (exit 3)."""

    exit_code = EXIT_INFRA
    resumable = True


def set_retry_budget(seconds: float) -> None:
    """How long this process retries transient storage errors (the driver and each worker
    set it from the job's ``io_retry_s``)."""
    global _retry_s
    _retry_s = float(seconds)


def retry_budget_s() -> float:
    return _retry_s


def is_transient(e: BaseException) -> bool:
    """Worth retrying: the same call may succeed later (outage, throttling, full disk)."""
    if isinstance(e, StorageUnavailable):
        return False
    if isinstance(e, _PERMANENT_TYPES) or getattr(e, "errno", None) in _PERMANENT_ERRNOS:
        return False
    if isinstance(e, (OSError, ConnectionError, TimeoutError)):
        return True
    return any(type(c).__module__.startswith(_TRANSIENT_MODULES) for c in _chain(e))


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen, link = 0, e  # type: tuple[int, BaseException | None]
    while link is not None and seen < 8:
        yield link
        link = link.__cause__ or link.__context__
        seen += 1


def retrying(what: str, fn: Callable[[], T]) -> T:
    """``fn()``, retried on transient errors with exponential backoff and jitter for the
    retry budget; then StorageUnavailable naming ``what`` and the last error."""
    try:
        for attempt in Retrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_delay(_retry_s),
            wait=wait_random_exponential(multiplier=0.5, max=15),
            reraise=False,
        ):
            with attempt:
                return fn()
    except RetryError as e:
        last = e.last_attempt.exception()
        raise StorageUnavailable(
            f"{what}: storage unavailable for {_retry_s:g} s (io_retry_s): "
            f"{type(last).__name__}: {one_line(last, 300)}"
        ) from None
    raise AssertionError("unreachable")  # pragma: no cover


def _resolve_pkg(uri: str) -> str:
    rest = uri[len(PKG_SCHEME) :].strip("/")
    package, _, resource = rest.partition("/")
    if not package:
        raise StorageError(f"{uri}: expected pkg://PACKAGE/PATH, e.g. pkg://stylize/samples")
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        raise StorageError(f"{uri}: Python package {package!r} is not installed") from None
    path = root.joinpath(resource) if resource else root
    return str(path)  # a folder on disk: packages are installed, never zipped


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def get_fs(
    uri: str, storage_options: Mapping[str, Any] | None = None
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
        return PKG_SCHEME + uri[len(PKG_SCHEME) :].strip("/")
    if "://" not in uri:
        return os.path.abspath(os.path.expanduser(uri))
    if uri.startswith("file://"):
        return os.path.abspath(uri[len("file://") :])
    return uri.rstrip("/")


def to_uri(fs: fsspec.AbstractFileSystem, path: str, like: str = "") -> str:
    """Inverse of :func:`get_fs` for paths returned by ``fs.find``/``fs.glob``; with ``like``
    a ``pkg://`` URI, paths inside that package come back as ``pkg://`` URIs."""
    if like.startswith(PKG_SCHEME):
        package = like[len(PKG_SCHEME) :].strip("/").split("/")[0]
        root = _resolve_pkg(PKG_SCHEME + package).rstrip("/")
        if path.startswith(root + "/") or path == root:
            return f"{PKG_SCHEME}{package}{path[len(root) :]}"
    if is_local(fs):
        return os.path.abspath(path)
    return fs.unstrip_protocol(path)


def read_bytes(uri: str, storage_options: Mapping[str, Any] | None = None) -> bytes:
    fs, path = get_fs(uri, storage_options)
    return retrying(f"read {uri}", lambda: fs.cat_file(path))


def write_bytes(
    uri: str,
    data: bytes,
    storage_options: Mapping[str, Any] | None = None,
    *,
    atomic: bool = False,
    exclusive: bool = False,
) -> None:
    """Write a whole file. ``atomic``: readers never see a partial file (temp name + rename
    locally; object stores publish a PUT whole anyway). ``exclusive``: FileExistsError when
    the file exists (locally a hard link that cannot replace it; elsewhere checked first)."""
    fs, path = get_fs(uri, storage_options)
    if exclusive and not is_local(fs) and retrying(f"check {uri}", lambda: fs.exists(path)):
        raise FileExistsError(errno.EEXIST, "exists", uri)
    if is_local(fs) and atomic:
        retrying(f"write {uri}", lambda: write_atomic(path, data, exclusive))
    elif is_local(fs):

        def write() -> None:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)

        retrying(f"write {uri}", write)
    else:
        retrying(f"write {uri}", lambda: fs.pipe_file(path, data))


def read_tail(
    uri: str, n: int, storage_options: Mapping[str, Any] | None = None
) -> tuple[int, bytes]:
    """(size of the file, its last ``n`` bytes): one ranged read, not the whole file."""
    fs, path = get_fs(uri, storage_options)

    def tail() -> tuple[int, bytes]:
        size = int(fs.size(path))
        return size, (fs.cat_file(path, start=max(0, size - n), end=size) if size else b"")

    return retrying(f"read {uri}", tail)


def move(src: str, dst: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Move a file within one filesystem (a rename locally; copy + delete on object stores)."""
    fs, path = get_fs(src, storage_options)
    _, target = get_fs(dst, storage_options)

    def mv() -> None:
        if is_local(fs):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(path, target)
        else:
            fs.mv(path, target)

    retrying(f"move {src}", mv)


def exists(uri: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    fs, path = get_fs(uri, storage_options)
    return retrying(f"check {uri}", lambda: fs.exists(path))


def listdir(uri: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Names (not paths) directly under the folder ``uri``; [] if there is no such folder."""
    fs, path = get_fs(uri, storage_options)

    def names() -> list[str]:
        try:
            return [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
        except FileNotFoundError:
            return []

    if not is_local(fs):
        fs.invalidate_cache(path)  # a resumed run must see what other processes wrote
    return retrying(f"list {uri}", names)


def remove(
    uri: str, storage_options: Mapping[str, Any] | None = None, recursive: bool = False
) -> None:
    fs, path = get_fs(uri, storage_options)

    def rm() -> None:
        try:
            fs.rm(path, recursive=recursive)
        except FileNotFoundError:
            pass

    retrying(f"remove {uri}", rm)


def check_writable(
    root: str, storage_options: Mapping[str, Any] | None = None, folder: str | None = None
) -> None:
    """Write and delete a probe file in ``folder`` (default: ``root`` itself), a folder under
    ``root``; StorageError naming the root otherwise."""
    probe = join(folder or root, f"{TMP_PREFIX}probe-{uuid.uuid4().hex}")
    try:
        write_bytes(probe, b"ok", storage_options)
        remove(probe, storage_options)
    except StorageUnavailable as e:
        raise StorageError(f"output {root} is not writable: {e}") from None
    except Exception as e:  # noqa: BLE001 - any backend error means "not writable"
        raise StorageError(
            f"output {root} is not writable: {type(e).__name__}: {one_line(e, 300)}"
        ) from None
