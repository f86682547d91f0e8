"""Work items and shards: what the driver hands to the actors (URIs and names, never pixels).

A work item is (content, style, parameters). Its id hashes the content URI with its version
tag, the style (its files, their tags and blend weights) and the params hash (of its point of
the sweep, if any), so a rerun finds the same ids and an edited file or a changed setting
gives new ones. Which styles a content gets is the job's ``assign`` (all, k at random, or a
list column), decided by :class:`StyleDraw` from the content's relative path alone.

The output path is a pure function of the item: with ``layout: by_style``
``{output}/{style}[/{point}]/{content path relative to the input root}.{ext}``; with
``layout: mirror`` ``{output}/images/{relative path}[__{style}][__{point}].{ext}`` (the style in the
name when a content can get several styles, the point when there is a sweep),
every component sanitised so that it can never leave the output root, valid UTF-8 (bytes of a
name that were not are written ``%XX``) and at most 255 bytes long (a longer name is cut on a
character boundary and ends with ``~`` and a hash of the whole name). Names that one file
system would confuse (``a.jpg``/``a.png``, ``A.jpg``/``a.jpg``, a file ``b.png`` and a folder
``b.png/``) get a hash of their URI appended. Style folders never take a name of the run's own
files (RESERVED_STYLE_NAMES).
"""

from __future__ import annotations

import fnmatch
import json
import posixpath
import random
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.redact import show_undecodable
from pipeline.runfolder import MIRROR_DIR, RESERVED_STYLE_NAMES, join
from stylize.common import short_hash

_UNSAFE = re.compile(r'[\x00-\x1f\x7f-\x9f\\:*?"<>|]')
FORMAT_EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp", "tiff": "tif"}
MAX_NAME_BYTES = 255  # of one path component (NAME_MAX of ext4, XFS, btrfs, ZFS, APFS)


@dataclass(frozen=True)
class Content:
    uri: str  # as listed; a local name that is not UTF-8 keeps its bytes as surrogate escapes
    rel: str  # path relative to the input root, used for the output path
    tag: str  # ETag, or size and mtime
    # Why the file cannot be read, found while listing (a dangling symlink, a symlink loop,
    # a link to a folder); its items fail with this message instead of vanishing.
    problem: str = ""
    style: str | None = None  # its row's `style` column (assign: column)
    row: int = -1  # its row in the list input (Listing.extras), -1: none
    # its mask (job key masks): URI, version tag, and why it cannot be had (found when
    # listed: no such file, no row, several candidates); "" without masks
    mask_uri: str = ""
    mask_tag: str = ""
    mask_problem: str = ""


@dataclass(frozen=True)
class StyleRef:
    """A style as the driver listed it: its name, URIs, blend weights and the files' version
    tags, no pixels (what work items and actors carry). ``jobconfig.StyleSource`` is the
    job file's view (no versions); ``stylize.engine.Style`` the engine's (pixels, no URIs)."""

    name: str
    uris: tuple[str, ...]
    weights: tuple[float, ...]
    tags: tuple[str, ...]

    @property
    def key(self) -> str:
        """Identity of the style's pixels: the engine caches Gram targets under it."""
        return _hash("style", self.name, *self.uris, *map(repr, self.weights), *self.tags)


@dataclass(frozen=True)
class MaskPair:
    """``assign`` with masks (job key ``masks``): each content gets one item, its mask's
    white painted with the style ``foreground``, its black with ``background`` (by name;
    None: the content kept there)."""

    foreground: str | None
    background: str | None


@dataclass(frozen=True)
class ItemMask:
    """The mask of one work item: its URI (read by the worker, never pixels here) and the
    styles of its white and black (None: the content kept there)."""

    uri: str
    foreground: str | None
    background: str | None


@dataclass(frozen=True)
class WorkItem:
    item_id: str
    content_uri: str
    style: str  # the style's name
    output_uri: str
    index: int  # position in the job's item order (manifest row order)
    problem: str = ""  # Content.problem: the item fails with it, nothing is read
    point: int = 0  # index into the job's sweep points (JobConfig.sweep_points())
    params_hash: str = ""  # of the options the item is made with (its point's), for its row
    mask: ItemMask | None = None  # spatial control (job key masks)


@dataclass(frozen=True)
class Shard:
    """The unit of scheduling, retry and manifest writing."""

    shard_id: int
    items: tuple[WorkItem, ...]


def _hash(*parts: str, n: int = 20) -> str:
    return short_hash(*parts, n=n)


def escape_undecodable(name: str) -> str:
    """``name`` as valid UTF-8: each byte that was not (a surrogate escape, as ``os.fsdecode``
    gives it) becomes ``%XX``, e.g. ``b"caf\\xe9.jpg"`` -> ``caf%E9.jpg``."""
    return show_undecodable(name, byte="%{:02X}", other="_")


def fit_name(name: str, ext: str = "", limit: int = MAX_NAME_BYTES) -> str:
    """``name + ext`` if it fits in ``limit`` bytes of UTF-8; else ``name`` cut on a character
    boundary, ``~`` and a hash of the whole name, then ``ext``: names that share a long prefix
    stay apart."""
    full = name + ext
    if len(full.encode("utf-8")) <= limit:
        return full
    tag = f"~{_hash(full, n=12)}"
    budget = max(0, limit - len(ext.encode("utf-8")) - len(tag))
    return name.encode("utf-8")[:budget].decode("utf-8", "ignore") + tag + ext


def _clean(name: str) -> str:
    name = _UNSAFE.sub("_", escape_undecodable(name).replace("/", "_")).strip()
    return "_" if name in ("", ".", "..") else name


def sanitize_component(name: str) -> str:
    """One safe path component: valid UTF-8, no separators, control characters, ``.``/``..``,
    at most MAX_NAME_BYTES bytes."""
    return fit_name(_clean(name))


def _clean_parts(rel: str) -> list[str]:
    return [_clean(p) for p in rel.replace("\\", "/").split("/") if p not in ("", ".")] or ["_"]


def sanitize_relpath(rel: str) -> str:
    """A relative path that stays below its root whatever ``rel`` contains."""
    return "/".join(fit_name(p) for p in _clean_parts(rel))


def reserved_style_name(name: str) -> str | None:
    """The pattern of RESERVED_STYLE_NAMES that the style folder ``name`` matches, if any."""
    key = sanitize_component(name).casefold()
    return next((p for p in RESERVED_STYLE_NAMES if fnmatch.fnmatchcase(key, p)), None)


def _stem_parts(rel: str) -> list[str]:
    parts = _clean_parts(rel)
    parts[-1] = posixpath.splitext(parts[-1])[0] or "_"
    return parts


def _output_tail(stem_parts: list[str], suffix: str, ext: str) -> str:
    *dirs, stem = stem_parts
    return "/".join([*map(fit_name, dirs), fit_name(stem + suffix, ext)])


def output_uri(output: str, style: str, rel: str, fmt: str, suffix: str = "") -> str:
    """``{output}/{style}/{rel without extension}{suffix}.{ext}``, every component sanitised
    and cut to MAX_NAME_BYTES (the extension and ``suffix`` included)."""
    tail = _output_tail(_stem_parts(rel), suffix, "." + FORMAT_EXTENSIONS[fmt])
    return join(output, sanitize_component(style), tail)


def _name_key(path: str) -> str:
    """Names that one file system may treat as the same (case-insensitive, normalising
    Unicode: macOS, Windows) share a key."""
    return unicodedata.normalize("NFC", path).casefold()


@dataclass(frozen=True)
class Plan:
    """How contents and styles become items: ``assign`` is ``"all"``, ``"column"``, ``(k,
    seed)`` or a :class:`MaskPair`; ``points`` the sweep's points (``[{}]``: none),
    ``point_hashes`` the params hash of each."""

    assign: str | tuple[int, int] | MaskPair = "all"
    layout: str = "by_style"
    points: Sequence[Mapping[str, Any]] = ({},)
    point_hashes: Sequence[str] = ("",)


class StyleDraw:
    """``draw(rel)``: indices of ``k`` distinct styles of ``names`` (the style set, in any
    order) for the content at relative path ``rel``, a function of (rel, seed, the set of
    names) only. O(k) per content, whatever the size of the set."""

    def __init__(self, names: Sequence[str], k: int, seed: int):
        self.order = sorted(range(len(names)), key=names.__getitem__)
        self.key = short_hash("assign", str(seed), *sorted(names), n=32)
        self.k = k

    def __call__(self, rel: str) -> list[int]:
        # bytes seed as Random does for str, so that names that are not UTF-8 draw too
        seed = f"{self.key}/{rel}".encode("utf-8", "surrogateescape")
        picked = random.Random(seed).sample(range(len(self.order)), self.k)
        return [self.order[i] for i in picked]


def point_label(point: Mapping[str, Any]) -> str:
    """A point of a sweep as a path component: ``style_weight=1000,style_layers=relu1_1+..``."""

    def show(v: Any) -> str:
        if isinstance(v, (list, tuple)):
            return "+".join(map(show, v))
        return f"{v:g}" if isinstance(v, float) else json.dumps(v) if v is None else str(v)

    return sanitize_component(",".join(f"{k}={show(v)}" for k, v in point.items()))


def make_items(
    contents: Sequence[Content],
    styles: Sequence[StyleRef],
    output: str,
    fmt: str,
    params_hash: str,
    plan: Plan | None = None,
) -> list[WorkItem]:
    """The job's items: for each content its styles (``plan.assign``), for each of those
    every point of the sweep; content-major, so that a shard holds a content under several
    styles (same size: one batch). Output names that would collide, e.g. ``a.jpg`` and
    ``a.png``, ``A.jpg`` and ``a.jpg``, or ``a.png`` and a folder ``a.png/``, get a short hash
    of their URI appended."""
    plan = plan or Plan(point_hashes=(params_hash,))
    ext = "." + FORMAT_EXTENSIONS[fmt]
    stems = [_stem_parts(c.rel) for c in contents]
    counts: dict[str, int] = {}
    folders: set[str] = set()
    for parts in stems:
        key = _name_key("/".join(parts))
        counts[key] = counts.get(key, 0) + 1
        folders.update(_name_key("/".join(parts[:i])) for i in range(1, len(parts)))
    names = [s.name for s in styles]
    by_name = {s.name: i for i, s in enumerate(styles)}
    keys = [s.key for s in styles]  # a hash each: computed once, not per item
    folder = [join(output, sanitize_component(n)) for n in names]
    style_suffix = [f"__{sanitize_component(n)}" for n in names]
    labels = [point_label(p) for p in plan.points] if len(plan.points) > 1 else [""]
    mirror = plan.layout == "mirror"
    draw = StyleDraw(names, *plan.assign) if isinstance(plan.assign, tuple) else None
    pair = plan.assign if isinstance(plan.assign, MaskPair) else None
    several = (plan.assign == "all" and len(styles) > 1) or (
        isinstance(plan.assign, tuple) and plan.assign[0] > 1
    )
    items: list[WorkItem] = []
    for c, parts in zip(contents, stems):
        key = _name_key("/".join(parts))
        clash = (
            f"-{_hash(c.uri, n=8)}"
            if counts[key] > 1 or _name_key("/".join(parts) + ext) in folders
            else ""
        )
        problem = c.problem
        chosen: Sequence[int]
        mask: ItemMask | None = None
        ident = ""  # what the item id adds for its mask
        if pair is not None:
            fg, bg = (by_name.get(n) if n else None for n in (pair.foreground, pair.background))
            chosen = [i for i in (fg, bg) if i is not None][:1]  # named after its first style
            mask = ItemMask(c.mask_uri, pair.foreground, pair.background)
            problem = (
                problem or c.mask_problem or ("" if chosen else "masks name no style of the job")
            )
            ident = short_hash(
                "mask",
                keys[fg] if fg is not None else "-",
                keys[bg] if bg is not None else "-",
                c.mask_uri,
                c.mask_tag,
                n=20,
            )
        elif plan.assign == "all":
            chosen = range(len(styles))
        elif plan.assign == "column":
            if c.style in by_name:
                chosen = [by_name[c.style]]
            else:  # a row naming no style of the set: a failed row, never a silent skip
                chosen, problem = (
                    [],
                    problem
                    or (
                        f"its style column names {c.style!r}, not one of the job's styles"
                        if c.style
                        else "its style column is empty"
                    ),
                )
        else:
            assert draw is not None  # assign is (k, seed)
            chosen = draw(c.rel)
        targets = [(names[i], keys[i], folder[i], style_suffix[i]) for i in chosen] or [
            (c.style or "", "", join(output, "_"), "")
        ]
        tail = "" if mirror else _output_tail(parts, clash, ext)  # mirror: per style
        for name, style_key, style_folder, style_tail in targets:
            for p, label in enumerate(labels):
                if mirror:
                    suffix = (
                        clash + (style_tail if several else "") + (f"__{label}" if label else "")
                    )
                    uri = join(output, MIRROR_DIR, _output_tail(parts, suffix, ext))
                else:
                    uri = join(style_folder, *([label] if label else []), tail)
                items.append(
                    WorkItem(
                        item_id=_hash(
                            c.uri,
                            c.tag,
                            style_key or name,
                            plan.point_hashes[p],
                            *[ident][: bool(ident)],
                        ),
                        content_uri=c.uri,
                        style=name,
                        output_uri=uri,
                        index=len(items),
                        problem=problem,
                        point=p,
                        params_hash=plan.point_hashes[p],
                        mask=mask,
                    )
                )
    return items


def make_shards(items: Sequence[WorkItem], shard_size: int, first_id: int = 0) -> list[Shard]:
    return [
        Shard(first_id + n, tuple(items[i : i + shard_size]))
        for n, i in enumerate(range(0, len(items), shard_size))
    ]
