"""Contact sheets: every content under every style, originals as header row and column.

Page layout (square tiles of ``cell`` pixels, thumbnails fitted and bottom-aligned, a label
band under each tile)::

    [      ] [style 1] [style 2] ...      <- style originals, labelled with the style names
    [photo1] [ out  ] [ out  ]
    [photo2] [ out  ] [ out  ]           <- content originals, labelled with their paths

One page holds ``rows_per_page`` contents by ``cols_per_page`` styles; larger jobs get several
pages (``grid-001.png`` ...), a single page is ``grid.png``. Run on Tübingen and the three
paintings, it is the paper's Figure 2.

A job whose items are not every content x style pair (``assign: {random: k}``, ``assign:
column``, a ``limit`` trial) gets strips instead: a line per content, each of its assigned
styles as a pair of tiles, the style's original then the result::

    [photo1] [style 2] [ out ] [style 5] [ out ]
    [photo2] [style 1] [ out ] [style 2] [ out ]

so that no pair that was never assigned is drawn; "missing" marks an assigned pair without a
result, a failure its status. A content with more than ``cols_per_page`` styles continues on
the next line.
"""

from __future__ import annotations

import io
import posixpath
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from pipeline import storage
from pipeline.items import Content, StyleRef
from pipeline.jobconfig import GridConfig
from pipeline.manifest import raw_content_uri
from pipeline.redact import redact_uri
from pipeline.runfolder import GRID_GLOB, RunFolder
from pipeline.webdataset import read_member

BACKGROUND = (255, 255, 255)
EMPTY = (225, 225, 225)
TEXT = (20, 20, 20)


def _metrics(cell: int) -> tuple[int, int]:
    pad = max(4, cell // 32)
    label = max(12, cell // 14) + pad
    return pad, label


def page_size(rows: int, cols: int, cell: int) -> tuple[int, int]:
    """(width, height) of a page with ``rows`` contents and ``cols`` styles."""
    return _canvas_size(rows + 1, cols + 1, cell)


def _canvas_size(rows: int, cols: int, cell: int) -> tuple[int, int]:
    """(width, height) of ``rows`` x ``cols`` tiles, headers included."""
    pad, label = _metrics(cell)
    return pad + cols * (cell + pad), pad + rows * (cell + label + pad)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _fit(img: Image.Image, cell: int) -> Image.Image:
    """Scaled (up or down) so that the longest side is ``cell``: every tile the same size."""
    scale = cell / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img if img.size == size else img.resize(size, Image.Resampling.LANCZOS)


def _load(uri: str, options: Mapping[str, Any]) -> Image.Image | None:
    from stylize.images import ImageError, decode_image

    try:
        return decode_image(read_member(uri, options), name=uri)
    except (ImageError, OSError, KeyError):
        return None


def _ellipsize(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


class _Page:
    """``rows`` x ``cols`` tiles, header row and column included."""

    def __init__(self, rows: int, cols: int, cell: int):
        self.cell = cell
        self.pad, self.label = _metrics(cell)
        self.image = Image.new("RGB", _canvas_size(rows, cols, cell), BACKGROUND)
        self.draw = ImageDraw.Draw(self.image)
        self.font = _font(self.label - self.pad)

    def tile(
        self, r: int, c: int, img: Image.Image | None, caption: str, placeholder: str = ""
    ) -> None:
        x = self.pad + c * (self.cell + self.pad)
        y = self.pad + r * (self.cell + self.label + self.pad)
        if img is None:
            self.draw.rectangle([x, y, x + self.cell - 1, y + self.cell - 1], fill=EMPTY)
            if placeholder:
                placeholder = _ellipsize(self.draw, placeholder, self.font, self.cell - 2)
                self.draw.text(
                    (x + self.cell // 2, y + self.cell // 2),
                    placeholder,
                    fill=TEXT,
                    font=self.font,
                    anchor="mm",
                )
        else:
            thumb = _fit(img, self.cell)
            # bottom-aligned, so that the caption sits right under the picture
            self.image.paste(
                thumb, (x + (self.cell - thumb.width) // 2, y + self.cell - thumb.height)
            )
        if caption:
            text = _ellipsize(self.draw, caption, self.font, self.cell)
            self.draw.text(
                (x + self.cell // 2, y + self.cell + self.pad // 2),
                text,
                fill=TEXT,
                font=self.font,
                anchor="mt",
            )

    def png(self) -> bytes:
        buf = io.BytesIO()
        self.image.save(buf, "PNG", optimize=True)
        return buf.getvalue()


def remove_grids(
    output: str, options: Mapping[str, Any], pattern: str = GRID_GLOB, keep: Sequence[str] = ()
) -> None:
    """Remove the pages named like ``pattern`` in ``output``, except those of ``keep``."""
    fs, path = storage.get_fs(output, options)
    kept = {posixpath.basename(u) for u in keep}
    for p in fs.glob(path.rstrip("/") + "/" + pattern):
        if posixpath.basename(p) not in kept:
            fs.rm(p)


class _Originals:
    """Style and content originals, read once and fitted to a tile."""

    def __init__(self, cell: int, options: Mapping[str, Any]):
        self.cell, self.options = cell, options
        self._seen: dict[str, Image.Image | None] = {}

    def __call__(self, uri: str) -> Image.Image | None:
        if uri not in self._seen:
            img = _load(uri, self.options)
            self._seen[uri] = None if img is None else _fit(img, self.cell)
        return self._seen[uri]


def _result(
    row: Mapping[str, Any] | None, options: Mapping[str, Any]
) -> tuple[Image.Image | None, str]:
    """(the result's picture, the placeholder where there is none): its status for a failed
    item, "unreadable" for an ok item whose file cannot be read, "missing" without a row."""
    if row is None:
        return None, "missing"
    if row["status"] != "ok":
        return None, row["status"]
    out = _load(row["output_uri"], options)
    return out, "" if out is not None else "unreadable"


def write_grids(
    output: str,
    contents: Sequence[Content],
    styles: Sequence[StyleRef],
    rows: Iterable[Mapping[str, Any]],
    cfg: GridConfig,
    options: Mapping[str, Any],
    assigned: Collection[tuple[str, str]] | None = None,
) -> list[str]:
    """Compose and write the contact sheet(s) from manifest rows; returns their URIs.
    ``assigned``: the job's (content URI as in the manifest, style name) pairs; None, or
    every pair: the matrix, else strips of the assigned pairs alone."""
    by_pair = {(raw_content_uri(r), r["style"]): r for r in rows}
    if assigned is not None and len(set(assigned)) < len(contents) * len(styles):
        return _write_strips(output, contents, styles, by_pair, set(assigned), cfg, options)
    row_chunks = [
        contents[i : i + cfg.rows_per_page] for i in range(0, len(contents), cfg.rows_per_page)
    ]
    col_chunks = [
        styles[i : i + cfg.cols_per_page] for i in range(0, len(styles), cfg.cols_per_page)
    ]
    original = _Originals(cfg.cell_size, options)
    remove_grids(output, options)
    uris = RunFolder(output).grid_pages(len(row_chunks) * len(col_chunks))
    n = 0
    for row_chunk in row_chunks:
        for col_chunk in col_chunks:
            page = _Page(len(row_chunk) + 1, len(col_chunk) + 1, cfg.cell_size)
            for c, style in enumerate(col_chunk, start=1):
                page.tile(0, c, original(style.uris[0]), style.name)
            for r, content in enumerate(row_chunk, start=1):
                _content_tile(page, r, content, original)
                for c, style in enumerate(col_chunk, start=1):
                    out, placeholder = _result(
                        by_pair.get((redact_uri(content.uri), style.name)), options
                    )
                    page.tile(r, c, out, "", placeholder)
            storage.write_bytes(uris[n], page.png(), options, atomic=True)
            n += 1
    return uris


def _content_tile(page: _Page, r: int, content: Content, original: _Originals) -> None:
    img = original(content.uri)
    page.tile(
        r,
        0,
        img,
        content.rel or posixpath.basename(content.uri),
        "" if img is not None else "unreadable",
    )


def _write_strips(
    output: str,
    contents: Sequence[Content],
    styles: Sequence[StyleRef],
    by_pair: Mapping[tuple[str, str], Mapping[str, Any]],
    assigned: set[tuple[str, str]],
    cfg: GridConfig,
    options: Mapping[str, Any],
) -> list[str]:
    """A line per content of its assigned styles (style original, result), ``cols_per_page``
    pairs a line at most, ``rows_per_page`` lines a page; contents with no pair are left out."""
    lines: list[tuple[Content, bool, list[StyleRef]]] = []  # (content, its first line, styles)
    for content in contents:
        key = redact_uri(content.uri)
        mine = [s for s in styles if (key, s.name) in assigned]
        for i in range(0, len(mine), cfg.cols_per_page):
            lines.append((content, i == 0, mine[i : i + cfg.cols_per_page]))
    pages = [lines[i : i + cfg.rows_per_page] for i in range(0, len(lines), cfg.rows_per_page)] or [
        []
    ]
    original = _Originals(cfg.cell_size, options)
    remove_grids(output, options)
    uris = RunFolder(output).grid_pages(len(pages))
    for uri, page_lines in zip(uris, pages):
        pairs = max((len(line[2]) for line in page_lines), default=0)
        page = _Page(max(1, len(page_lines)), 1 + 2 * pairs, cfg.cell_size)
        for r, (content, first, line_styles) in enumerate(page_lines):
            if first:
                _content_tile(page, r, content, original)
            for k, style in enumerate(line_styles):
                page.tile(r, 1 + 2 * k, original(style.uris[0]), style.name)
                out, placeholder = _result(
                    by_pair.get((redact_uri(content.uri), style.name)), options
                )
                page.tile(r, 2 + 2 * k, out, "", placeholder)
        storage.write_bytes(uri, page.png(), options, atomic=True)
    return uris
