"""Listing: turn the job's ``input`` and ``styles`` into content files and named styles.

Everything goes through fsspec (see :mod:`pipeline.storage`), so a folder on S3 lists like a
local one. Each content carries a *tag* (ETag, or size and mtime) that goes into its item id:
an edited file is a new item, an untouched one is recognised on resume.

Every entry found under an input gets exactly one :class:`Content` (so one manifest row per
style) or a :class:`Skipped` reason in the :class:`Listing`; nothing vanishes:

- a symlink to a file is followed: the content's URI is the link's path, its tag the target's;
- a dangling symlink, a symlink loop and a symlink to a folder (found while walking; never
  followed, so a walk cannot loop or list a tree twice) are contents with a ``problem``: their
  items are failed rows that say so;
- a folder is walked, whatever its name (``x.jpg/``), also when a glob or a list names it;
- hidden names (``.x``), ``_manifest`` folders, the output folder, files outside
  ``extensions``, FIFOs/sockets/devices and folders that cannot be listed are skipped with a
  reason (:meth:`Listing.report` says which);
- a name that is not UTF-8 (Linux bytes such as ``\\xff``) is listed as fsspec and
  ``os.fsdecode`` give it (surrogate escapes), read with its real bytes, and written under a
  valid UTF-8 output name (:func:`pipeline.items.escape_undecodable`).

Local folders are walked with ``os.scandir`` rather than fsspec's ``find``, which silently
drops folders it cannot list (its ``on_error`` does not reach subfolders).
"""

from __future__ import annotations

import csv
import errno
import functools
import io
import os
import posixpath
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import fsspec
from fsspec.utils import glob_translate

from pipeline import storage
from pipeline.items import Content, StyleRef, reserved_style_name, sanitize_component
from pipeline.jobconfig import JobConfig, StyleSource, image_extensions
from pipeline.redact import redact_text, redact_uri, show_undecodable
from pipeline.runfolder import MANIFEST_DIR, RESERVED_STYLE_NAMES
from stylize.common import StylizeError, near_miss

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm")
LIST_EXTENSIONS = (".txt", ".csv", ".parquet", ".jsonl")
URI_COLUMNS = ("uri", "url", "path", "content_uri")
_GLOB = re.compile(r"[*?\[]")
_INFO_THREADS = 16  # concurrent stat/HEAD calls for the entries of a list file

# Reasons of a Skipped entry.
HIDDEN = "hidden: the name starts with '.'"
METADATA = f"a {MANIFEST_DIR} folder (run metadata)"
IN_OUTPUT = "inside the output folder"
NOT_EXTENSION = "extension not in `extensions`"
NOT_IMAGE = "not an image file by its extension; extensions: all takes every file"
SPECIAL = "not a regular file (a FIFO, socket or device)"
VANISHED = "disappeared while being listed"
LISTED_AGAIN = "listed again: one item per content, with the columns of its first row"


class SourceError(StylizeError, ValueError):
    """Inputs or styles that cannot be listed or loaded; found before any work starts."""


@dataclass(frozen=True)
class Skipped:
    """An entry under an input that gets no content (and no row), and why."""

    uri: str
    reason: str


@dataclass
class Listing:
    """What :func:`list_inputs` found: the contents, sorted by URI, and what it left out."""

    contents: list[Content]
    skipped: list[Skipped] = field(default_factory=list)
    # a list input's other columns (labels, captions...), typed as in the input; a content's
    # row is ``extras[content.row]``; None without such columns
    extras: Any = None
    # what the input is, for the job's identity (a different input into the same output is
    # refused): the input as given (credentials stripped) and a list file's content hash
    identity: dict[str, Any] = field(default_factory=dict)

    def report(self, limit: int = 3) -> list[str]:
        """One line per reason: how many entries were skipped or cannot be read (their rows
        will be failures), with the first ``limit`` of them. Secrets stripped, valid UTF-8."""
        groups: dict[str, list[str]] = {}
        for s in self.skipped:
            groups.setdefault(f"skipped ({s.reason})", []).append(s.uri)
        for c in self.contents:
            if c.problem:
                groups.setdefault(
                    f"cannot be read, failed rows ({c.problem.split(' (')[0]})", []
                ).append(c.uri)
            elif c.mask_problem:
                groups.setdefault("without a usable mask, failed rows (masks)", []).append(c.uri)
        lines = []
        for what, uris in groups.items():
            shown = ", ".join(_show(u) for u in uris[:limit])
            more = f" and {len(uris) - limit} more" if len(uris) > limit else ""
            lines.append(
                f"{len(uris)} {'entry' if len(uris) == 1 else 'entries'} {what}: {shown}{more}"
            )
        return lines


@dataclass(frozen=True)
class _Entry:
    uri: str
    info: Mapping[str, Any]
    problem: str = ""


def _show(uri: str) -> str:
    """A URI fit for a message: no credentials, valid UTF-8."""
    return show_undecodable(redact_uri(uri))


def file_tag(info: Mapping[str, Any]) -> str:
    """What identifies a file's version: its ETag, else size and mtime."""
    for key in ("ETag", "etag", "md5Hash", "crc32c"):
        if info.get(key):
            return str(info[key]).strip('"')
    mtime = info.get("mtime") or info.get("LastModified") or info.get("created") or ""
    return f"{info.get('size', '')}-{mtime}"


def _hidden(rel: str) -> str | None:
    parts = rel.split("/")
    if any(p.startswith(".") for p in parts):
        return HIDDEN
    if MANIFEST_DIR in parts[:-1]:
        return METADATA
    return None


# ------------------------------------------------------------------------------ local files


def _stat_info(st: os.stat_result) -> dict[str, Any]:
    # the same size and mtime as fsspec's LocalFileSystem.info, so tags (and item ids) match
    return {"type": "file", "size": st.st_size, "mtime": st.st_mtime}


def _scan_local(
    root: str, maxdepth: int | None, skipped: list[Skipped], prune: Callable[[str, str], str | None]
) -> list[tuple[str, dict[str, Any]]]:
    """``(path, info)`` of everything below the folder ``root`` (folders included, symlinks
    not followed), down to ``maxdepth`` levels; ``prune(path, name)`` gives a reason to leave a
    folder out. Folders that cannot be listed go to ``skipped``."""
    out: list[tuple[str, dict[str, Any]]] = []
    stack = [(root, 1)]
    while stack:
        folder, depth = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as e:
            skipped.append(Skipped(folder, f"folder cannot be listed: {e.strerror or e}"))
            continue
        for d in entries:
            try:
                if d.is_symlink():
                    out.append((d.path, {"type": "other", "islink": True}))
                elif d.is_dir(follow_symlinks=False):
                    reason = prune(d.path, d.name)
                    if reason:
                        skipped.append(Skipped(d.path, reason))
                        continue
                    out.append((d.path, {"type": "directory"}))
                    if maxdepth is None or depth < maxdepth:
                        stack.append((d.path, depth + 1))
                elif d.is_file(follow_symlinks=False):
                    out.append((d.path, _stat_info(d.stat(follow_symlinks=False))))
                else:
                    out.append((d.path, {"type": "other"}))
            except FileNotFoundError:
                skipped.append(Skipped(d.path, VANISHED))
            except OSError as e:
                skipped.append(Skipped(d.path, f"cannot be read: {e.strerror or e}"))
    return out


def _follow_link(path: str) -> _Entry | Skipped:
    """A symlink found while walking: its target's info, or a content with a problem."""
    try:
        target = os.readlink(path)
        link = os.lstat(path)
    except FileNotFoundError:
        return Skipped(path, VANISHED)
    except OSError as e:
        return _Entry(path, {"size": "unreadable-link"}, f"symlink cannot be read: {e.strerror}")
    broken = {"size": f"link-{link.st_size}", "mtime": link.st_mtime}
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return _Entry(path, broken, f"dangling symlink (its target {target} does not exist)")
    except OSError as e:
        if e.errno == errno.ELOOP:
            return _Entry(path, broken, f"symlink loop (via {target})")
        return _Entry(path, broken, f"symlink to {target} cannot be followed: {e.strerror}")
    if stat.S_ISREG(st.st_mode):
        return _Entry(path, _stat_info(st))
    if stat.S_ISDIR(st.st_mode):
        return _Entry(
            path,
            broken,
            f"symlink to a folder (not followed: {target}; list that "
            "folder as an input of its own)",
        )
    return Skipped(path, SPECIAL)


# ------------------------------------------------------------------------------ any storage


def _scan(
    fs: fsspec.AbstractFileSystem,
    root: str,
    maxdepth: int | None,
    skipped: list[Skipped],
    prune: Callable[[str, str], str | None],
) -> list[tuple[str, dict[str, Any]]]:
    """Everything below ``root``: files, folders and other entries, as ``(path, info)``."""
    if storage.is_local(fs):
        return _scan_local(root, maxdepth, skipped, prune)
    found = storage.retrying(
        f"list {fs.unstrip_protocol(root)}",
        lambda: fs.find(root, maxdepth=maxdepth, withdirs=True, detail=True),
    )
    root = root.rstrip("/")
    return [(p, info) for p, info in found.items() if p.rstrip("/") != root]


def _entry(
    fs: fsspec.AbstractFileSystem, path: str, info: Mapping[str, Any], like: str
) -> _Entry | Skipped | None:
    """The content (or skip reason) of one scanned entry; None for a folder."""
    kind = info.get("type", "file")
    uri = storage.to_uri(fs, path, like)
    if kind == "directory":
        return None
    if info.get("islink") and storage.is_local(fs):
        found = _follow_link(path)
        return (
            _Entry(uri, found.info, found.problem)
            if isinstance(found, _Entry)
            else Skipped(uri, found.reason)
        )
    if kind == "file":
        return _Entry(uri, info)
    return Skipped(uri, SPECIAL if storage.is_local(fs) else f"not a file (type {kind})")


def _local_output_test(output: str) -> Callable[..., bool]:
    """``inside(path, folder=False)``: whether a local path is the output folder or lies in
    it once links are resolved (a file by its folder's real path, one realpath per folder)."""
    real_output = os.path.realpath(output)
    folders: dict[str, str] = {}

    def real(folder: str) -> str:
        if folder not in folders:
            folders[folder] = os.path.realpath(folder)
        return folders[folder]

    def inside(path: str, folder: bool = False) -> bool:
        if "://" in path:  # pkg:// and the like: not a path of this disk as written
            return False
        where = real(path if folder else os.path.dirname(path))
        return where == real_output or where.startswith(real_output.rstrip("/") + "/")

    return inside


def _glob_root(pattern: str) -> tuple[str, int | None]:
    """The folder to scan for ``pattern`` and how deep (None: ``**``), as fsspec's glob."""
    head = _GLOB.split(pattern, 1)[0]
    root = head.rsplit("/", 1)[0] if "/" in head else ""
    depth = None if "**" in pattern else pattern[len(root) :].lstrip("/").count("/") + 1
    return root, depth


def _expand(
    uri: str,
    options: Mapping[str, Any],
    exts: tuple[str, ...] | None,
    exclude: str | None,
    skipped: list[Skipped],
) -> list[tuple[_Entry, str]]:
    """``(entry, relative path)`` for a folder, a glob or a single file; what is left out
    goes to ``skipped``."""
    fs, path = storage.get_fs(uri, options)
    exclude_path = storage.get_fs(exclude, options)[1].rstrip("/") if exclude else None
    # On a local disk the output is also recognised through links: an output path that is a
    # link into the input, or an input reached through a link, name one folder two ways.
    in_output = _local_output_test(exclude) if exclude and storage.is_local(fs) else None

    def prune(p: str, name: str) -> str | None:
        if name.startswith("."):
            return HIDDEN
        if name == MANIFEST_DIR:
            return METADATA
        if p.rstrip("/") == exclude_path or (in_output and in_output(p, folder=True)):
            return IN_OUTPUT
        return None

    if _GLOB.search(path):
        root, matched = _glob(fs, path, skipped, prune)
        found: list[_Entry | Skipped | None] = [_entry(fs, p, i, uri) for p, i in matched]
    elif _isdir(fs, path):
        root = path.rstrip("/")
        found = [_entry(fs, p, i, uri) for p, i in _scan(fs, root, None, skipped, prune)]
    elif _exists(fs, path):
        info = storage.retrying(f"read {_show(uri)}", lambda: fs.info(path))
        e = _entry(fs, path, info, uri)
        if isinstance(e, Skipped):
            raise SourceError(f"{_show(uri)}: {e.reason}")
        return [(e, posixpath.basename(path))] if e else []
    else:
        raise SourceError(f"{_show(uri)}: no such file or folder")
    root_uri = storage.to_uri(fs, root, uri) if root else ""
    out = []
    seen = set()
    for e in found:
        if e is None or e.uri in seen:
            continue
        seen.add(e.uri)
        if isinstance(e, Skipped):
            skipped.append(e)
            continue
        rel = e.uri[len(root_uri) :].lstrip("/") if root_uri else posixpath.basename(e.uri)
        reason = _left_out(e.uri, rel, exts, exclude, in_output)
        if reason:
            skipped.append(Skipped(e.uri, reason))
        else:
            out.append((e, rel))
    return out


def _left_out(
    uri: str,
    rel: str,
    exts: tuple[str, ...] | None,
    exclude: str | None,
    in_output: Callable[..., bool] | None,
) -> str | None:
    """Why a listed file is not an input (hidden, in the output, not an image or not one
    of ``extensions``), or None."""
    reason = _hidden(rel)
    if (
        reason is None
        and exclude
        and ((uri + "/").startswith(exclude + "/") or (in_output and in_output(uri)))
    ):
        reason = IN_OUTPUT
    ext = posixpath.splitext(rel)[1].lower()
    if reason is None and exts is not None and ext not in exts:
        images = exts == image_extensions()  # the default: a name without any extension
        reason = None if images and not ext else NOT_IMAGE if images else NOT_EXTENSION
    return reason


def _glob(
    fs: fsspec.AbstractFileSystem,
    path: str,
    skipped: list[Skipped],
    prune: Callable[[str, str], str | None],
) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    """(the glob's fixed root, the (path, info) it matches): a matched folder is walked,
    whatever its name."""
    root, depth = _glob_root(path)
    regex = re.compile(glob_translate(path))
    scanned = _scan(fs, root or ("/" if storage.is_local(fs) else ""), depth, skipped, prune)
    matched = [(p, i) for p, i in scanned if regex.match(p)]
    folders = [p.rstrip("/") for p, i in matched if i.get("type") == "directory"]
    if folders and depth is None:  # their files were scanned already
        tops = set(folders)
        matched += [(p, i) for p, i in scanned if _under_any(p, tops)]
    elif folders:
        for f in folders:
            matched += _scan(fs, f, None, skipped, prune)
    return root, matched


def _under_any(path: str, folders: set[str]) -> bool:
    parent = path.rstrip("/")
    while "/" in parent:
        parent = parent.rsplit("/", 1)[0]
        if parent in folders:
            return True
    return False


def _isdir(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    return storage.retrying(f"check {fs.unstrip_protocol(path)}", lambda: fs.isdir(path))


def _exists(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    return storage.retrying(f"check {fs.unstrip_protocol(path)}", lambda: fs.exists(path))


_PATH_LIKE = re.compile(r"[/\\]|://|\.[A-Za-z0-9]{2,5}$")


def _is_header(row: list[str]) -> bool:
    """A CSV's first row is a header unless one of its cells looks like a path or URI."""
    return not any(_PATH_LIKE.search(c.strip()) for c in row)


def _uri_column(uri: str, names: list[str], chosen: str | None) -> str:
    """The column of a list's URIs: ``input_column``, else the first of URI_COLUMNS; a
    SourceError naming the header and the key otherwise."""
    if chosen is not None:
        if chosen in names:
            return chosen
        raise SourceError(
            f"{_show(uri)}: input_column {chosen!r} is not a column; the columns "
            f"are {', '.join(names) or '(none)'}"
        )
    lower = {c.strip().lower(): c for c in names}
    for n in URI_COLUMNS:
        if n in lower:
            return lower[n]
    raise SourceError(
        f"{_show(uri)}: no URI column among {', '.join(names) or '(none)'}; name "
        f"it with input_column: (e.g. input_column: {names[0] if names else 'uri'}"
        f"), or call it {' or '.join(URI_COLUMNS)}"
    )


def _read_list(
    uri: str,
    options: Mapping[str, Any],
    digest: dict[str, str] | None = None,
    column: str | None = None,
) -> tuple[list[str], Any]:
    """URIs from a .txt (one per line, # comments), .csv, .parquet or .jsonl list, and the
    list's other columns as a pyarrow Table with one row per URI returned (None for .txt or
    a CSV without a header). Bytes that are not UTF-8 (Linux file names) are kept as
    surrogate escapes, as ``os.fsdecode`` does. ``digest`` gets the file's sha256."""
    import hashlib

    import pyarrow as pa

    data = storage.read_bytes(uri, options)
    if digest is not None:
        digest["list_sha256"] = hashlib.sha256(data).hexdigest()
    ext = posixpath.splitext(uri)[1].lower()
    table = None
    if ext in (".parquet", ".jsonl"):
        table = _read_table(uri, ext, data)
    elif ext == ".csv":
        text = data.decode("utf-8-sig", "surrogateescape")
        reader = (r for r in csv.reader(io.StringIO(text)) if r)
        first = next(reader, None)
        if first and (
            column is not None
            or _is_header(first)
            or any(c.strip().lower() in URI_COLUMNS for c in first)
        ):
            try:  # typed columns (labels stay ints), as pyarrow reads them
                table = _read_table(uri, ext, data)
            except SourceError:  # not UTF-8: the plain reader, strings throughout
                rows = list(reader)
                table = pa.table(
                    {
                        h.strip(): [r[i] if i < len(r) else None for r in rows]
                        for i, h in enumerate(first)
                    }
                )
        else:
            rows = [first, *reader] if first else []
    if table is not None:
        col = _uri_column(uri, list(table.column_names), column)
        values = [
            v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else v
            for v in table.column(col).to_pylist()
        ]
        table = table.drop_columns([col])
    elif ext == ".csv":
        values = [r[0] for r in rows]
    else:
        values = [
            line.split("#", 1)[0] if line.lstrip().startswith("#") else line
            for line in data.decode("utf-8-sig", "surrogateescape").splitlines()
        ]
    out, kept = [], []
    for n, v in enumerate(values):
        v = (v if isinstance(v, str) else "" if v is None else str(v)).strip()
        if not v:
            continue
        out.append(_in_list(uri, v))
        kept.append(n)
    if table is not None and len(kept) != table.num_rows:
        table = table.take(pa.array(kept, pa.int64()))
    return out, table


def _in_list(list_uri: str, entry: str) -> str:
    """An entry of a list file as a URI: relative entries are relative to the list file."""
    if "://" in entry or entry.startswith("/"):
        return entry
    return f"{list_uri.rsplit('/', 1)[0] if '/' in list_uri else '.'}/{entry}"


def _read_table(uri: str, ext: str, data: bytes) -> Any:
    import pyarrow as pa

    try:
        if ext == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(io.BytesIO(data))
        if ext == ".jsonl":
            import pyarrow.json as pj

            return pj.read_json(io.BytesIO(data))
        import pyarrow.csv as pcsv

        return pcsv.read_csv(io.BytesIO(data))
    except (pa.ArrowInvalid, OSError) as e:
        raise SourceError(
            f"{_show(uri)}: cannot be read as {ext[1:]}: {' '.join(str(e).split())[:300]}"
        ) from None


def _common_dir(uris: list[str]) -> str:
    parts = [u.split("/")[:-1] for u in uris]
    prefix = parts[0]
    for p in parts[1:]:
        n = 0
        while n < min(len(prefix), len(p)) and prefix[n] == p[n]:
            n += 1
        prefix = prefix[:n]
    return "/".join(prefix)


def _list_file_entries(
    uris: list[str],
    options: Mapping[str, Any],
    exts: tuple[str, ...] | None,
    exclude: str,
    skipped: list[Skipped],
) -> list[_Entry]:
    """One entry per URI of a list file (a folder among them is walked); a missing or
    unreadable file is an entry with a problem: its items fail with a message, not the job."""

    def look(u: str) -> list[_Entry]:
        fs, path = storage.get_fs(u, options)
        try:
            info = storage.retrying(f"read {_show(u)}", lambda: fs.info(path))
        except storage.StorageUnavailable:
            raise
        except OSError as e:
            if storage.is_local(fs) and os.path.islink(path):
                found = _follow_link(path)
                return [_Entry(u, found.info, found.problem)] if isinstance(found, _Entry) else []
            if isinstance(e, FileNotFoundError):
                return [_Entry(u, {"size": "missing"}, "no such file")]
            return [
                _Entry(
                    u,
                    {"size": "unreadable"},
                    f"cannot be read: {type(e).__name__}: {redact_text(str(e))}",
                )
            ]
        kind = info.get("type", "file")
        if kind == "directory":
            return [e for e, _ in _expand(u, options, exts, exclude, skipped)]
        if kind != "file":
            skipped.append(Skipped(u, SPECIAL))
            return []
        return [_Entry(u, info)]

    if len(uris) < 2:
        return [e for u in uris for e in look(u)]
    with ThreadPoolExecutor(min(_INFO_THREADS, len(uris))) as pool:
        return [e for found in pool.map(look, uris) for e in found]


def list_inputs(job: JobConfig) -> Listing:
    """Every content file of the job, sorted by URI, and every entry left out with its
    reason; SourceError if there is no content."""
    options = job.storage_options
    output = storage.canonical(job.output)
    single = job.input if isinstance(job.input, str) else None
    skipped: list[Skipped] = []
    extras = None
    identity: dict[str, Any] = {
        "input": redact_uri(storage.canonical(single))
        if single
        else [redact_uri(storage.canonical(u)) for u in job.input]
    }
    is_list = (
        single is not None
        and posixpath.splitext(single)[1].lower() in LIST_EXTENSIONS
        and not _GLOB.search(single)
    )
    if job.input_column is not None and not (is_list and not str(single).lower().endswith(".txt")):
        raise SourceError(
            f"input_column: {job.input_column!r} has no effect: input "
            f"{_show_input(job.input)} is not a .csv, .parquet or .jsonl list"
        )
    try:
        if (
            single
            and posixpath.splitext(single)[1].lower() in LIST_EXTENSIONS
            and not _GLOB.search(single)
        ):
            uris, extras = _read_list(single, options, identity, job.input_column)
            uris = [storage.canonical(u) for u in uris]
            pairs = _relative_to_common(
                _list_file_entries(uris, options, job.extensions, output, skipped)
            )
        else:
            pairs = []
            for u in job.input if single is None else (single,):
                pairs += _expand(u, options, job.extensions, output, skipped)
            if single is None:  # an explicit list: names relative to what they share
                pairs = _relative_to_common([e for e, _ in pairs])
    except (SourceError, storage.StorageUnavailable):
        raise
    except (OSError, ValueError) as e:
        raise SourceError(
            f"input {_show_input(job.input)}: cannot be listed: "
            f"{type(e).__name__}: {redact_text(str(e))}"
        ) from None
    rows, styles, masks, extras = _row_columns(job, uris if extras is not None else [], extras)
    seen: dict[str, Content] = {}
    for entry, rel in pairs:
        if entry.uri in seen:  # a list naming a file twice, or a file and its folder
            skipped.append(Skipped(entry.uri, LISTED_AGAIN))
            continue
        tag = file_tag(entry.info)
        if entry.problem:  # a fixed link (its target's tag) is a new item
            tag = f"unreadable:{tag}"
        row = rows.get(entry.uri, -1)
        seen[entry.uri] = Content(
            entry.uri,
            rel,
            tag,
            entry.problem,
            styles[row] if styles and row >= 0 else None,
            row,
        )
    contents = sorted(seen.values(), key=lambda c: c.uri)
    if job.masks is not None:
        contents = _with_masks(job, contents, masks)
    listing = Listing(contents, skipped, extras, identity)
    if not listing.contents:
        why = "; ".join(listing.report())
        raise SourceError(
            f"input {_show_input(job.input)}: no files found{f' ({why})' if why else ''}"
        )
    return listing


def _row_columns(job: JobConfig, uris: list[str], table: Any) -> tuple[dict, list, list, Any]:
    """(uri -> row of ``table``, the `style` column for ``assign: column``, the mask column
    for ``masks: {column: ...}``, the columns that travel to the manifest). SourceError for a
    column named like a manifest column."""
    from pipeline.rows import COLUMNS

    if job.assign == "column" and (table is None or "style" not in table.column_names):
        raise SourceError(
            f"input {_show_input(job.input)}: assign: column needs a list input "
            "(csv, parquet, jsonl) with a `style` column"
        )
    column = job.masks.column if job.masks is not None else None
    if column is not None and (table is None or column not in table.column_names):
        names = ", ".join(table.column_names) if table is not None else "(none)"
        raise SourceError(
            f"masks.column: {column!r} is not a column of input {_show_input(job.input)} "
            f"(other than its URI column: {names or '(none)'})"
        )
    if table is None:
        return {}, [], [], None
    styles, masks = [], []
    if job.assign == "column":
        styles = [None if v is None else str(v) for v in table.column("style").to_pylist()]
        table = table.drop_columns(["style"])
    if column is not None:
        masks = [None if v is None else str(v).strip() for v in table.column(column).to_pylist()]
        table = table.drop_columns([column])
    taken = set(COLUMNS) | set(job.sweep or {}) | {f"sweep_{k}" for k in job.sweep or {}}
    clash = [c for c in table.column_names if c in taken]
    if clash:
        hint = (
            f"; to use it, masks: {{column: {clash[0]}, foreground: STYLE}}"
            if clash[0] == "mask_uri"
            else ""
        )
        raise SourceError(
            f"input {_show_input(job.input)}: column {clash[0]!r} has the name of "
            "a manifest column; rename it in the list (columns other than the "
            f"URI are copied to every manifest row){hint}"
        )
    rows: dict[str, int] = {}
    for n, u in enumerate(uris):
        rows.setdefault(u, n)
    return rows, styles, masks, table if table.num_columns else None


# ------------------------------------------------------------------------------------ masks


def _with_masks(job: JobConfig, contents: list[Content], column: list[str | None]) -> list[Content]:
    """The contents with their masks (job key ``masks``): URI, version tag, or the problem
    that fails the content's item (no mask, no such file, several candidates)."""
    masks = job.masks
    assert masks is not None
    options = job.storage_options
    wanted: dict[int, str] = {}  # content index -> mask URI
    found: dict[str, tuple[str, str]] = {}  # mask URI -> (tag, problem)
    problems: dict[int, str] = {}
    if masks.column is not None:
        assert isinstance(job.input, str)  # a list input (JobConfig checks it)
        for i, c in enumerate(contents):
            value = column[c.row] if 0 <= c.row < len(column) else None
            if c.row < 0:
                problems[i] = (
                    f"no mask: not a row of the list (a file of a folder that the list names), "
                    f"so it has no {masks.column}"
                )
            elif not value:
                problems[i] = f"no mask: its {masks.column} column is empty"
            else:
                wanted[i] = storage.canonical(_in_list(job.input, value))
        found = _mask_files(sorted(set(wanted.values())), options)
    else:
        assert masks.folder is not None
        index = _mask_folder(job, masks.folder)
        for i, c in enumerate(contents):
            key = posixpath.splitext(c.rel)[0] + masks.suffix
            entries = index.get(key, [])
            if not entries:
                problems[i] = (
                    f"no mask: nothing matches {_show(masks.folder.rstrip('/'))}/{key}.* "
                    "(masks.folder)"
                )
            elif len(entries) > 1:
                problems[i] = (
                    f"several masks match: {', '.join(_show(e.uri) for e in entries)}; keep one"
                )
            else:
                wanted[i] = entries[0].uri
                found[entries[0].uri] = (
                    file_tag(entries[0].info),
                    f"mask {_show(entries[0].uri)}: {entries[0].problem}"
                    if entries[0].problem
                    else "",
                )
    out = []
    for i, c in enumerate(contents):
        uri = wanted.get(i, "")
        tag, problem = found.get(uri, ("missing", problems.get(i, "")))
        out.append(replace(c, mask_uri=uri, mask_tag=tag, mask_problem=problem))
    return out


def _mask_files(uris: list[str], options: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """(version tag, problem) of each mask file a list column names."""

    def look(u: str) -> tuple[str, str]:
        fs, path = storage.get_fs(u, options)
        try:
            info = storage.retrying(f"read {_show(u)}", lambda: fs.info(path))
        except storage.StorageUnavailable:
            raise
        except FileNotFoundError:
            return "missing", f"mask {_show(u)}: no such file"
        except (OSError, ValueError) as e:
            return "unreadable", (
                f"mask {_show(u)}: cannot be read: {type(e).__name__}: {redact_text(str(e))}"
            )
        if info.get("type", "file") != "file":
            return f"not-a-file-{info.get('type')}", f"mask {_show(u)}: not a file"
        return file_tag(info), ""

    if not uris:
        return {}
    with ThreadPoolExecutor(min(_INFO_THREADS, len(uris))) as pool:
        return dict(zip(uris, pool.map(look, uris)))


def _mask_folder(job: JobConfig, folder: str) -> dict[str, list[_Entry]]:
    """The image files under ``masks.folder`` by their path relative to it, without
    extension; SourceError when it is not a folder or lies inside the input folder."""
    options = job.storage_options
    folder = storage.canonical(folder)
    if isinstance(job.input, str) and not _GLOB.search(job.input):
        root = storage.canonical(job.input).rstrip("/") + "/"
        if folder.rstrip("/").startswith(root) or folder.rstrip("/") + "/" == root:
            raise SourceError(
                f"masks.folder: {_show(folder)} is inside the input folder, so its masks "
                f"would be stylized as contents; move the masks out of {_show(job.input)}"
            )
    fs, path = storage.get_fs(folder, options)
    if not _isdir(fs, path):
        raise SourceError(f"masks.folder: {_show(folder)} is not a folder")
    skipped: list[Skipped] = []
    try:
        pairs = _expand(folder, options, image_extensions(), None, skipped)
    except (SourceError, storage.StorageUnavailable):
        raise
    except (OSError, ValueError) as e:
        raise SourceError(
            f"masks.folder: {_show(folder)}: cannot be listed: {type(e).__name__}: "
            f"{redact_text(str(e))}"
        ) from None
    index: dict[str, list[_Entry]] = {}
    for entry, rel in sorted(pairs, key=lambda p: p[0].uri):
        index.setdefault(posixpath.splitext(rel)[0], []).append(entry)
    return index


def check_mask_styles(job: JobConfig, styles: list[StyleRef]) -> None:
    """With masks, the styles named by ``masks.foreground``/``background`` are the job's
    styles, all of them (another would be listed and never used); SourceError otherwise."""
    if job.masks is None:
        return
    names = [s.name for s in styles]
    for key in ("foreground", "background"):
        name = getattr(job.masks, key)
        if name is not None and name not in names:
            near = near_miss(name, names)
            raise SourceError(
                f"masks.{key}: {name!r} is not one of the job's styles ({', '.join(names)})"
                f"{f'; did you mean {near!r}?' if near else ''}"
            )
    unused = [n for n in names if n not in (job.masks.foreground, job.masks.background)]
    if unused:
        raise SourceError(
            f"styles: {unused[0]!r} is neither masks.foreground nor masks.background, so it "
            "would never be used (with masks each content gets one item of those two); drop it"
        )


def list_contents(job: JobConfig) -> list[Content]:
    """Every content file of the job, sorted by URI; SourceError if there is none.
    (:func:`list_inputs` also says what was left out.)"""
    return list_inputs(job).contents


def _show_input(value: str | Iterable[str]) -> str:
    if isinstance(value, str):
        return _show(value)
    return "[" + ", ".join(_show(v) for v in value) + "]"


def _relative_to_common(entries: list[_Entry]) -> list[tuple[_Entry, str]]:
    """Each entry with its name relative to the folder all share. Names are derived from the
    URIs with their credentials removed (``user:password@``, signed-URL parameters): a list
    that mixes hosts shares no folder, and its names would otherwise carry them into output
    paths and the manifest."""
    if not entries:
        return []
    shown = [redact_uri(e.uri) if "://" in e.uri else e.uri for e in entries]
    common = _common_dir(shown)
    return [
        (e, u[len(common) :].lstrip("/") if common else posixpath.basename(u))
        for e, u in zip(entries, shown)
    ]


def _style_name(name: str, uri: str) -> str:
    """The style's folder name; SourceError where it would collide with the run's files."""
    clean = sanitize_component(name)
    pattern = reserved_style_name(clean)
    if pattern:
        better = f"style_{clean.lstrip('._')}" or "style_1"
        raise SourceError(
            f"style {clean!r}: its folder would collide with the run's own files in the output "
            f"folder (names reserved: {', '.join(RESERVED_STYLE_NAMES)}); give it another name "
            f"with a mapping under styles:, e.g. styles: {{{better}: {_show(uri)}}}"
        )
    return clean


def list_styles(job: JobConfig) -> list[StyleRef]:
    """The job's styles with unique names, each file checked to exist; SourceError otherwise
    (also for a name that the output folder reserves, see RESERVED_STYLE_NAMES)."""
    options = job.storage_options
    listed: dict[str, Mapping[str, Any]] = {}  # uri -> its listing's info (no second lookup)
    if isinstance(job.styles, str):
        skipped: list[Skipped] = []
        try:
            pairs = _expand(job.styles, options, IMAGE_EXTENSIONS, None, skipped)
        except (SourceError, storage.StorageUnavailable):
            raise
        except (OSError, ValueError) as e:
            raise SourceError(
                f"styles {_show(job.styles)}: {type(e).__name__}: {redact_text(str(e))}"
            ) from None
        for entry, _ in pairs:
            if entry.problem:
                raise SourceError(f"style {_show(entry.uri)}: {entry.problem}")
        sources: Iterable[StyleSource] = [
            StyleSource(None, (entry.uri,), (1.0,))
            for entry, _ in sorted(pairs, key=lambda p: p[0].uri)
        ]
        listed = {storage.canonical(entry.uri): entry.info for entry, _ in pairs}
        if not pairs:
            raise SourceError(
                f"styles {_show(job.styles)}: no image files found ({', '.join(IMAGE_EXTENSIONS)})"
            )
    else:
        sources = job.styles
    refs: dict[str, StyleRef] = {}
    for src in sources:
        uris, tags = [], []
        for u in src.uris:
            u = storage.canonical(u)
            fs, path = storage.get_fs(u, options)
            try:
                info = listed.get(u) or storage.retrying(
                    f"read {_show(u)}", functools.partial(fs.info, path)
                )
            except storage.StorageUnavailable:
                raise
            except (OSError, ValueError) as e:
                raise SourceError(
                    f"style {_show(src.name or u)}: cannot read {_show(u)}: "
                    f"{type(e).__name__}: {redact_text(str(e))}"
                ) from None
            uris.append(u)
            tags.append(file_tag(info))
        name = _style_name(src.name or posixpath.splitext(posixpath.basename(uris[0]))[0], uris[0])
        key = name.casefold()  # one folder on a case-insensitive file system
        if key in refs:
            raise SourceError(
                f"styles: two styles are named {name!r}"
                f"{'' if refs[key].name == name else f' and {refs[key].name!r}'}; "
                "use a mapping name -> URI to name them apart"
            )
        refs[key] = StyleRef(name, tuple(uris), tuple(src.weights), tuple(tags))
    check_mask_styles(job, list(refs.values()))
    return list(refs.values())


STYLES_DECODED_UP_FRONT = 16


def check_styles_load(styles: list[StyleRef], options: Mapping[str, Any]) -> None:
    """Decode the style images on the driver, so that a bad style (or a wrong folder) stops
    the job up front. With more than STYLES_DECODED_UP_FRONT styles (a folder of 80,000
    paintings) only that many, spread over the set, are decoded here; any other style that
    cannot be decoded fails its items' rows (failed_decode) on the worker."""
    from stylize.images import ImageError, decode_image

    n = len(styles)
    if n > STYLES_DECODED_UP_FRONT:
        step = n / STYLES_DECODED_UP_FRONT
        styles = [styles[int(i * step)] for i in range(STYLES_DECODED_UP_FRONT)]
    for s in styles:
        for u in s.uris:
            try:
                decode_image(storage.read_bytes(u, options), name=_show(u))
            except ImageError as e:
                raise SourceError(f"style {s.name}: {redact_text(str(e))}") from None
            except storage.StorageUnavailable:
                raise
            except OSError as e:
                raise SourceError(
                    f"style {s.name}: cannot read {_show(u)}: {redact_text(str(e))}"
                ) from None
