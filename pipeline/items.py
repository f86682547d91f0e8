"""Work items and shards: what the driver hands to the actors (URIs and names, never pixels).

A work item is (content, style, parameters). Its id hashes the content URI with its version
tag, the style (its files, their tags and blend weights) and the params hash, so a rerun finds
the same ids and an edited file or a changed setting gives new ones. The output path is a pure
function of the item: ``{output}/{style}/{content path relative to the input root}.{ext}``,
every component sanitised so that it can never leave the output root.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from dataclasses import dataclass
from typing import Sequence

from pipeline import storage

_UNSAFE = re.compile(r'[\x00-\x1f\x7f\\:*?"<>|]')
FORMAT_EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp", "tiff": "tif"}


@dataclass(frozen=True)
class Content:
    uri: str
    rel: str  # path relative to the input root, used for the output path
    tag: str  # ETag, or size and mtime


@dataclass(frozen=True)
class StyleRef:
    """A named style: one image or a weighted blend of several."""

    name: str
    uris: tuple[str, ...]
    weights: tuple[float, ...]
    tags: tuple[str, ...]

    @property
    def key(self) -> str:
        """Identity of the style's pixels: the engine caches Gram targets under it."""
        return _hash("style", self.name, *self.uris, *map(repr, self.weights), *self.tags)


@dataclass(frozen=True)
class WorkItem:
    item_id: str
    content_uri: str
    style: str  # the style's name
    output_uri: str
    index: int  # position in the job's item order (manifest row order)


@dataclass(frozen=True)
class Shard:
    """The unit of scheduling, retry and manifest writing."""

    shard_id: int
    items: tuple[WorkItem, ...]


def _hash(*parts: str, n: int = 20) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()[:n]


def sanitize_component(name: str) -> str:
    """One safe path component: no separators, control characters, or ``.``/``..``."""
    name = _UNSAFE.sub("_", name.replace("/", "_")).strip()
    if name in ("", ".", ".."):
        return "_"
    return name


def sanitize_relpath(rel: str) -> str:
    """A relative path that stays below its root whatever ``rel`` contains."""
    parts = [sanitize_component(p) for p in rel.replace("\\", "/").split("/")
             if p not in ("", ".")]
    parts = [("_" if p == ".." else p) for p in parts]
    return "/".join(parts) or "_"


def output_uri(output: str, style: str, rel: str, fmt: str, suffix: str = "") -> str:
    stem = posixpath.splitext(sanitize_relpath(rel))[0] or "_"
    return storage.join(output, sanitize_component(style), f"{stem}{suffix}.{FORMAT_EXTENSIONS[fmt]}")


def make_items(contents: Sequence[Content], styles: Sequence[StyleRef], output: str,
               fmt: str, params_hash: str) -> list[WorkItem]:
    """Every (content, style) pair, content-major so that a shard holds each content under
    several styles (same size: one batch). Output names that would collide, e.g. ``a.jpg`` and
    ``a.png``, both get a short hash of their URI appended."""
    stems: dict[str, int] = {}
    for c in contents:
        stem = posixpath.splitext(sanitize_relpath(c.rel))[0]
        stems[stem] = stems.get(stem, 0) + 1
    items = []
    for c in contents:
        stem = posixpath.splitext(sanitize_relpath(c.rel))[0]
        suffix = f"-{_hash(c.uri, n=8)}" if stems[stem] > 1 else ""
        for s in styles:
            items.append(WorkItem(
                item_id=_hash(c.uri, c.tag, s.key, params_hash),
                content_uri=c.uri,
                style=s.name,
                output_uri=output_uri(output, s.name, c.rel, fmt, suffix),
                index=len(items),
            ))
    return items


def make_shards(items: Sequence[WorkItem], shard_size: int, first_id: int = 0) -> list[Shard]:
    return [Shard(first_id + n, tuple(items[i:i + shard_size]))
            for n, i in enumerate(range(0, len(items), shard_size))]
