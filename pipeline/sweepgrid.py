"""Sweep sheets: one page per (content, style) laying out the points of an option sweep.

Like the paper's Figure 3 (Gatys et al. 2015): layer sets down the side, alpha/beta ratios
across the top::

    tubingen.jpg · starry_night
    rows: style_layers · columns: style_weight
               [α/β = 1e-5] [α/β = 1e-4] ...
    [relu1_1 ] [   out    ] [   out    ]
    [relu1_1+] [   out    ] [   out    ]
    [relu2_1 ]

:func:`axes` picks the keys for rows and columns; keys beyond two get one page per
combination of their values. Pages are ``grid-sweep-001.png`` ... in order of first
appearance of (content, style) in the rows. Manifest rows are matched to cells by their swept
columns, after normalising (lists equal tuples, ``1e4`` equals ``10000``).
"""

from __future__ import annotations

import io
import itertools
import math
import posixpath
import re
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from pipeline import storage
from pipeline.grid import BACKGROUND, EMPTY, _ellipsize, _fit, _font, _load, remove_grids
from pipeline.manifest import raw_content_uri
from pipeline.runfolder import SWEEP_GRID_GLOB, RunFolder

TEXT = (0, 0, 0)
# Pillow's built-in font has no Greek; DejaVu (most Linux images ship it) has.
_UNICODE_FONT = "DejaVuSans.ttf"
_ASCII = {"α": "alpha", "β": "beta", "∞": "inf"}


def axes(sweep: Mapping[str, Sequence[Any]]) -> tuple[str | None, str | None]:
    """(row key, column key). One key: (None, key). More: rows are the first key whose values
    are lists (layer sets), else the first key; columns the first other key."""
    keys = list(sweep)
    if len(keys) < 2:
        return None, keys[0] if keys else None
    row = next((k for k in keys if any(isinstance(v, (list, tuple)) for v in sweep[k])), keys[0])
    return row, next(k for k in keys if k != row)


def _num(x: float) -> str:
    """Powers of ten as ``1e-4``, the paper's way of writing its ratios."""
    if math.isinf(x):
        return "∞"
    if x == 0:
        return "0"
    m, e = f"{x:.2e}".split("e")
    mant, exp = m.rstrip("0").rstrip("."), int(e)
    return mant if exp == 0 else f"{mant}e{exp}"


def label(key: str, value: Any, content_weight: float | None = 1.0) -> str:
    """A short label for one swept value: layer sets ``relu1_1+relu2_1`` (``first … last (n)``
    beyond three), ``style_weight`` as the paper's ratio ``α/β = 1e-4`` (given the
    ``content_weight`` α; None: no ratio), else ``key = value``."""
    value = _plain(value)
    if isinstance(value, (list, tuple)):
        names = [str(v) for v in value]
        return "+".join(names) if len(names) <= 3 else f"{names[0]} … {names[-1]} ({len(names)})"
    if (
        key == "style_weight"
        and content_weight is not None
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
    ):
        return f"α/β = {_num(content_weight / value if value else math.inf)}"
    if isinstance(value, float):
        return f"{key} = {value:g}"
    return f"{key} = {value}"


def _plain(v: Any) -> Any:
    return v.tolist() if hasattr(v, "tolist") else v  # numpy arrays and scalars


def _norm(v: Any) -> Any:
    """Hashable and comparable: lists as tuples, numbers as floats to 12 digits."""
    v = _plain(v)
    if isinstance(v, (list, tuple)):
        return tuple(_norm(x) for x in v)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(f"{float(v):.12g}")
    return v


class _Fonts:
    def __init__(self, cell: int):
        self.size = max(12, cell // 14)
        self.label, self.unicode = self._load(self.size)
        self.title, _ = self._load(round(self.size * 1.3))

    @staticmethod
    def _load(size: int) -> tuple[ImageFont.ImageFont | ImageFont.FreeTypeFont, bool]:
        try:
            return ImageFont.truetype(_UNICODE_FONT, size), True
        except OSError:
            return _font(size), False

    def text(self, s: str) -> str:
        return s if self.unicode else "".join(_ASCII.get(ch, ch) for ch in s)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int, max_lines: int) -> list[str]:
    """Greedy lines of at most ``width`` pixels, broken after ``+`` or spaces."""
    lines: list[str] = []
    for tok in re.findall(r"[^+ ]+[+ ]*|[+ ]+", text):
        if lines and draw.textlength(lines[-1] + tok.rstrip(), font=font) <= width:
            lines[-1] += tok
        else:
            lines.append(tok)
    lines = [ln.rstrip() for ln in lines] or [""]
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + [" ".join(lines[max_lines - 1 :])]
    return [_ellipsize(draw, ln, font, width) for ln in lines]


def _render(
    title: str,
    subtitle: str,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    cells: Sequence[Sequence[Image.Image | str]],
    cell: int,
) -> bytes:
    """The page as PNG; a cell is an image or the text of a grey placeholder."""
    f = _Fonts(cell)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad, line = max(4, cell // 32), round(f.size * 1.25)
    thumbs = [[_fit(c, cell) if isinstance(c, Image.Image) else c for c in r] for r in cells]
    sizes = [t.size for r in thumbs for t in r if isinstance(t, Image.Image)]
    box_w = max([w for w, _ in sizes], default=cell)
    box_h = max([h for _, h in sizes], default=cell)  # landscape pages need no square cells
    row_labels = [f.text(s) for s in row_labels]
    col_labels = [f.text(s) for s in col_labels]

    hdr_w = 0
    if any(row_labels):
        full = max(probe.textlength(s, font=f.label) for s in row_labels)
        widest = max(
            probe.textlength(t, font=f.label)
            for s in row_labels
            for t in re.findall(r"[^+ ]+[+ ]*", s) or [""]
        )
        hdr_w = math.ceil(min(cell, full, max(widest, cell / 2)))
    row_text = [_wrap(probe, s, f.label, hdr_w, max(1, box_h // line)) for s in row_labels]
    col_text = [_wrap(probe, s, f.label, box_w, 2) for s in col_labels]
    col_h = max((len(t) for t in col_text), default=0) * line
    title_h = round(f.size * 1.3 * 1.25) + line + pad
    left = pad + (hdr_w + pad if hdr_w else 0)
    top = pad + title_h + col_h + pad
    width = left + len(col_labels) * (box_w + pad)
    height = top + len(row_text) * (box_h + pad)

    page = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(page)
    draw.text(
        (pad, pad),
        _ellipsize(draw, f.text(title), f.title, width - 2 * pad),
        fill=TEXT,
        font=f.title,
    )
    draw.text(
        (pad, pad + round(f.size * 1.3 * 1.25)),
        _ellipsize(draw, f.text(subtitle), f.label, width - 2 * pad),
        fill=TEXT,
        font=f.label,
    )
    for j, lines in enumerate(col_text):
        x = left + j * (box_w + pad) + box_w // 2
        y = top - pad - len(lines) * line  # bottom-aligned on the pictures
        draw.multiline_text(
            (x, y),
            "\n".join(lines),
            fill=TEXT,
            font=f.label,
            anchor="ma",
            align="center",
            spacing=line - f.size,
        )
    for i, r in enumerate(thumbs):
        y = top + i * (box_h + pad)
        if hdr_w:
            draw.multiline_text(
                (pad + hdr_w, y + box_h // 2),
                "\n".join(row_text[i]),
                fill=TEXT,
                font=f.label,
                anchor="rm",
                align="right",
                spacing=line - f.size,
            )
        for j, t in enumerate(r):
            x = left + j * (box_w + pad)
            if isinstance(t, Image.Image):
                page.paste(t, (x + (box_w - t.width) // 2, y + (box_h - t.height) // 2))
            else:
                draw.rectangle([x, y, x + box_w - 1, y + box_h - 1], fill=EMPTY)
                draw.text(
                    (x + box_w // 2, y + box_h // 2),
                    _ellipsize(draw, t, f.label, box_w - 2 * pad),
                    fill=TEXT,
                    font=f.label,
                    anchor="mm",
                )
    buf = io.BytesIO()
    page.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def write_sweep_grids(
    output: str,
    rows: Sequence[Mapping[str, Any]],
    sweep: Mapping[str, Sequence[Any]],
    options: Mapping[str, Any],
    cell_size: int = 256,
    content_weight: float = 1.0,
) -> list[str]:
    """Write ``{output}/grid-sweep-NNN.png``, one page per (content, style) and combination of
    the keys beyond two, and remove older pages beyond the new ones; returns the URIs.

    ``rows``: manifest rows, each with a column per key of ``sweep``; cells without an ``ok``
    row (or whose image cannot be read) are grey with the status, or ``missing``.
    ``content_weight``: alpha of the ratio labels when ``style_weight`` is swept."""
    row_key, col_key = axes(sweep)
    extra = [k for k in sweep if k not in (row_key, col_key)]
    row_vals = list(sweep[row_key]) if row_key else [None]
    col_vals = list(sweep[col_key]) if col_key else [None]
    cells: dict[tuple, Mapping[str, Any]] = {}
    pairs: dict[tuple[str, str], None] = {}
    for r in rows:
        pair = (raw_content_uri(r), r["style"])
        pairs.setdefault(pair)
        key = (pair, tuple(_norm(r.get(k)) for k in sweep))
        if key not in cells or r["status"] == "ok":
            cells[key] = r

    uris: list[str] = []
    for content, style in pairs:
        for combo in itertools.product(*(sweep[k] for k in extra)):
            point: dict[str | None, Any] = dict(zip(extra, combo))  # None: no such axis
            # alpha of the ratio labels: the page's own when content_weight is swept too,
            # none (plain values) when it varies along an axis
            alpha = (
                point["content_weight"]
                if "content_weight" in point
                else None
                if "content_weight" in sweep
                else content_weight
            )
            grid: list[list[Image.Image | str]] = []
            for rv in row_vals:
                grid.append([])
                for cv in col_vals:
                    point.update({row_key: rv, col_key: cv})
                    cell = cells.get(((content, style), tuple(_norm(point.get(k)) for k in sweep)))
                    ok = cell is not None and cell["status"] == "ok"
                    img = _load(cell["output_uri"], options) if cell and ok else None
                    grid[-1].append(
                        img
                        if img is not None
                        else "missing"
                        if cell is None
                        else "unreadable"
                        if ok
                        else cell["status"]
                    )
            title = " · ".join(
                [posixpath.basename(content.rstrip("/")) or content, style]
                + [label(k, v, alpha) for k, v in zip(extra, combo)]
            )
            subtitle = " · ".join(
                f"{what}: {k}" for what, k in (("rows", row_key), ("columns", col_key)) if k
            )
            png = _render(
                title,
                subtitle,
                [label(row_key, v, alpha) if row_key else "" for v in row_vals],
                [label(col_key, v, alpha) if col_key else "" for v in col_vals],
                grid,
                cell_size,
            )
            uri = RunFolder(output).sweep_grid(len(uris) + 1)
            storage.write_bytes(uri, png, options, atomic=True)
            uris.append(uri)
    remove_grids(output, options, SWEEP_GRID_GLOB, keep=uris)
    return uris


def existing_pages(output: str, options: Mapping[str, Any]) -> list[str]:
    """The sweep pages an earlier run wrote in ``output``, in page order."""
    fs, path = storage.get_fs(output, options)
    return sorted(
        storage.to_uri(fs, p, output) for p in fs.glob(path.rstrip("/") + "/" + SWEEP_GRID_GLOB)
    )
