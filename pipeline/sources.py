"""Listing: turn the job's ``input`` and ``styles`` into content files and named styles.

Everything goes through fsspec (see :mod:`pipeline.storage`), so a folder on S3 lists like a
local one. Each content carries a *tag* (ETag, or size and mtime) that goes into its item id:
an edited file is a new item, an untouched one is recognised on resume.
"""

from __future__ import annotations

import csv
import io
import posixpath
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import fsspec

from pipeline import storage
from pipeline.items import Content, StyleRef, sanitize_component
from pipeline.jobconfig import JobConfig, StyleSource

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm")
LIST_EXTENSIONS = (".txt", ".csv", ".parquet")
URI_COLUMNS = ("uri", "url", "path", "content_uri")
_GLOB = re.compile(r"[*?\[]")


class SourceError(ValueError):
    """Inputs or styles that cannot be listed or loaded; found before any work starts."""


@dataclass(frozen=True)
class _Entry:
    uri: str
    info: Mapping[str, Any]


def file_tag(info: Mapping[str, Any]) -> str:
    """What identifies a file's version: its ETag, else size and mtime."""
    for key in ("ETag", "etag", "md5Hash", "crc32c"):
        if info.get(key):
            return str(info[key]).strip('"')
    mtime = info.get("mtime") or info.get("LastModified") or info.get("created") or ""
    return f"{info.get('size', '')}-{mtime}"


def _hidden(rel: str) -> bool:
    return any(p.startswith(".") or p == "_manifest" for p in rel.split("/"))


def _walk(fs: fsspec.AbstractFileSystem, root: str, pattern: str | None,
          like: str) -> list[_Entry]:
    """Files under ``root`` (recursive), or matching the glob ``pattern``."""
    found = fs.glob(pattern, detail=True) if pattern else fs.find(root, detail=True)
    return [_Entry(storage.to_uri(fs, p, like), info) for p, info in sorted(found.items())
            if info.get("type", "file") == "file"]


def _static_prefix(pattern: str) -> str:
    head = _GLOB.split(pattern, 1)[0]
    return head.rsplit("/", 1)[0] if "/" in head else ""


def _expand(uri: str, options: Mapping[str, Any], exts: tuple[str, ...] | None,
            exclude: str | None) -> list[tuple[_Entry, str]]:
    """``(entry, relative path)`` for a folder, a glob or a single file."""
    fs, path = storage.get_fs(uri, options)
    if _GLOB.search(path):
        root = _static_prefix(path)
        entries = _walk(fs, root, path, uri)
    elif fs.isdir(path):
        root = path.rstrip("/")
        entries = _walk(fs, root, None, uri)
    elif fs.exists(path):
        return [(_Entry(storage.to_uri(fs, path, uri), fs.info(path)), posixpath.basename(path))]
    else:
        raise SourceError(f"{uri}: no such file or folder")
    root_uri = storage.to_uri(fs, root, uri) if root else ""
    out = []
    for e in entries:
        rel = e.uri[len(root_uri):].lstrip("/") if root_uri else posixpath.basename(e.uri)
        if _hidden(rel) or (exclude and (e.uri + "/").startswith(exclude + "/")):
            continue
        if exts is not None and posixpath.splitext(rel)[1].lower() not in exts:
            continue
        out.append((e, rel))
    return out


def _read_list(uri: str, options: Mapping[str, Any]) -> list[str]:
    """URIs from a .txt (one per line, # comments), .csv or .parquet list."""
    data = storage.read_bytes(uri, options)
    ext = posixpath.splitext(uri)[1].lower()
    if ext == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
        names = [n for n in URI_COLUMNS if n in table.column_names]
        if not names:
            raise SourceError(f"{uri}: no column named {' or '.join(URI_COLUMNS)}")
        values = table.column(names[0]).to_pylist()
    elif ext == ".csv":
        rows = [r for r in csv.reader(io.StringIO(data.decode("utf-8-sig"))) if r]
        col = 0
        if rows and any(c.strip().lower() in URI_COLUMNS for c in rows[0]):
            col = [c.strip().lower() for c in rows[0]].index(
                next(c.strip().lower() for c in rows[0] if c.strip().lower() in URI_COLUMNS))
            rows = rows[1:]
        values = [r[col] if col < len(r) else "" for r in rows]
    else:
        values = [line.split("#", 1)[0] if line.lstrip().startswith("#") else line
                  for line in data.decode("utf-8-sig").splitlines()]
    base = uri.rsplit("/", 1)[0] if "/" in uri else "."
    out = []
    for v in values:
        v = (v or "").strip()
        if not v:
            continue
        if "://" not in v and not v.startswith("/"):
            v = f"{base}/{v}"  # relative entries are relative to the list file
        out.append(v)
    return out


def _common_dir(uris: list[str]) -> str:
    parts = [u.split("/")[:-1] for u in uris]
    prefix = parts[0]
    for p in parts[1:]:
        n = 0
        while n < min(len(prefix), len(p)) and prefix[n] == p[n]:
            n += 1
        prefix = prefix[:n]
    return "/".join(prefix)


def list_contents(job: JobConfig) -> list[Content]:
    """Every content file of the job, sorted by URI; SourceError if there is none."""
    options = job.storage_options
    output = storage.canonical(job.output)
    single = job.input if isinstance(job.input, str) else None
    try:
        if single and posixpath.splitext(single)[1].lower() in LIST_EXTENSIONS \
                and not _GLOB.search(single):
            uris = [storage.canonical(u) for u in _read_list(single, options)]
            found = []
            for u in uris:
                fs, path = storage.get_fs(u, options)
                try:
                    info = fs.info(path)
                except FileNotFoundError:
                    info = {"size": "missing"}  # its item fails with a message, not the job
                found.append(_Entry(u, info))
            pairs = _relative_to_common(found)
        else:
            pairs = []
            for u in (job.input if single is None else (single,)):
                pairs += _expand(u, options, job.extensions, output)
            if single is None:  # an explicit list: names relative to what they share
                pairs = _relative_to_common([e for e, _ in pairs])
    except SourceError:
        raise
    except (OSError, ValueError) as e:
        raise SourceError(f"input {job.input}: cannot be listed: {type(e).__name__}: {e}") \
            from None
    seen: dict[str, Content] = {}
    for entry, rel in pairs:
        seen.setdefault(entry.uri, Content(entry.uri, rel, file_tag(entry.info)))
    if not seen:
        raise SourceError(f"input {job.input}: no files found")
    return sorted(seen.values(), key=lambda c: c.uri)


def _relative_to_common(entries: list[_Entry]) -> list[tuple[_Entry, str]]:
    if not entries:
        return []
    common = _common_dir([e.uri for e in entries])
    return [(e, e.uri[len(common):].lstrip("/") if common else posixpath.basename(e.uri))
            for e in entries]


def list_styles(job: JobConfig) -> list[StyleRef]:
    """The job's styles with unique names, each file checked to exist; SourceError otherwise."""
    options = job.storage_options
    if isinstance(job.styles, str):
        try:
            pairs = _expand(job.styles, options, IMAGE_EXTENSIONS, None)
        except (OSError, ValueError) as e:
            raise SourceError(f"styles {job.styles}: {e}") from None
        sources: Iterable[StyleSource] = [StyleSource(None, (e.uri,), (1.0,)) for e, _ in pairs]
        if not pairs:
            raise SourceError(f"styles {job.styles}: no image files found "
                              f"({', '.join(IMAGE_EXTENSIONS)})")
    else:
        sources = job.styles
    refs: dict[str, StyleRef] = {}
    for src in sources:
        uris, tags = [], []
        for u in src.uris:
            u = storage.canonical(u)
            fs, path = storage.get_fs(u, options)
            try:
                info = fs.info(path)
            except (OSError, ValueError) as e:
                raise SourceError(f"style {src.name or u}: cannot read {u}: "
                                  f"{type(e).__name__}: {e}") from None
            uris.append(u)
            tags.append(file_tag(info))
        name = sanitize_component(src.name or posixpath.splitext(posixpath.basename(uris[0]))[0])
        if name in refs:
            raise SourceError(f"styles: two styles are named {name!r}; use a mapping "
                              "name -> URI to name them apart")
        refs[name] = StyleRef(name, tuple(uris), tuple(src.weights), tuple(tags))
    return list(refs.values())


def check_styles_load(styles: list[StyleRef], options: Mapping[str, Any]) -> None:
    """Decode every style image once on the driver, so a bad style stops the job up front."""
    from stylize.images import ImageError, decode_image

    for s in styles:
        for u in s.uris:
            try:
                decode_image(storage.read_bytes(u, options), name=u)
            except ImageError as e:
                raise SourceError(f"style {s.name}: {e}") from None
            except OSError as e:
                raise SourceError(f"style {s.name}: cannot read {u}: {e}") from None
