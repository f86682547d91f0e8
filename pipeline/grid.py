"""Contact sheets: every content under every style, originals as header row and column.

Page layout (square tiles of ``cell`` pixels, thumbnails fitted and bottom-aligned, a label
band under each tile)::

    [      ] [style 1] [style 2] ...      <- style originals, labelled with the style names
    [photo1] [ out  ] [ out  ]
    [photo2] [ out  ] [ out  ]           <- content originals, labelled with their paths

One page holds ``rows_per_page`` contents by ``cols_per_page`` styles; larger jobs get several
pages (``grid-001.png`` ...), a single page is ``grid.png``. Run on Tübingen and the three
paintings, it is the paper's Figure 2.
"""

from __future__ import annotations

import io
import posixpath
from typing import Any, Iterable, Mapping, Sequence

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
    pad, label = _metrics(cell)
    return pad + (cols + 1) * (cell + pad), pad + (rows + 1) * (cell + label + pad)


def _font(size: int) -> ImageFont.ImageFont:
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
    def __init__(self, rows: int, cols: int, cell: int):
        self.cell = cell
        self.pad, self.label = _metrics(cell)
        self.image = Image.new("RGB", page_size(rows, cols, cell), BACKGROUND)
        self.draw = ImageDraw.Draw(self.image)
        self.font = _font(self.label - self.pad)

    def tile(self, r: int, c: int, img: Image.Image | None, caption: str,
             placeholder: str = "") -> None:
        x = self.pad + c * (self.cell + self.pad)
        y = self.pad + r * (self.cell + self.label + self.pad)
        if img is None:
            self.draw.rectangle([x, y, x + self.cell - 1, y + self.cell - 1], fill=EMPTY)
            if placeholder:
                placeholder = _ellipsize(self.draw, placeholder, self.font, self.cell - 2)
                self.draw.text((x + self.cell // 2, y + self.cell // 2), placeholder,
                               fill=TEXT, font=self.font, anchor="mm")
        else:
            thumb = _fit(img, self.cell)
            # bottom-aligned, so that the caption sits right under the picture
            self.image.paste(thumb, (x + (self.cell - thumb.width) // 2,
                                     y + self.cell - thumb.height))
        if caption:
            text = _ellipsize(self.draw, caption, self.font, self.cell)
            self.draw.text((x + self.cell // 2, y + self.cell + self.pad // 2), text,
                           fill=TEXT, font=self.font, anchor="mt")

    def png(self) -> bytes:
        buf = io.BytesIO()
        self.image.save(buf, "PNG", optimize=True)
        return buf.getvalue()


def remove_grids(output: str, options: Mapping[str, Any], pattern: str = GRID_GLOB,
                 keep: Sequence[str] = ()) -> None:
    """Remove the pages named like ``pattern`` in ``output``, except those of ``keep``."""
    fs, path = storage.get_fs(output, options)
    kept = {posixpath.basename(u) for u in keep}
    for p in fs.glob(path.rstrip("/") + "/" + pattern):
        if posixpath.basename(p) not in kept:
            fs.rm(p)


def write_grids(output: str, contents: Sequence[Content], styles: Sequence[StyleRef],
                rows: Iterable[Mapping[str, Any]], cfg: GridConfig,
                options: Mapping[str, Any]) -> list[str]:
    """Compose and write the contact sheet(s) from manifest rows; returns their URIs."""
    by_pair = {(raw_content_uri(r), r["style"]): r for r in rows}
    row_chunks = [contents[i:i + cfg.rows_per_page]
                  for i in range(0, len(contents), cfg.rows_per_page)]
    col_chunks = [styles[i:i + cfg.cols_per_page]
                  for i in range(0, len(styles), cfg.cols_per_page)]
    originals: dict[str, Image.Image | None] = {}

    def original(uri: str) -> Image.Image | None:
        if uri not in originals:
            img = _load(uri, options)
            originals[uri] = None if img is None else _fit(img, cfg.cell_size)
        return originals[uri]

    remove_grids(output, options)
    uris = RunFolder(output).grid_pages(len(row_chunks) * len(col_chunks))
    n = 0
    for row_chunk in row_chunks:
        for col_chunk in col_chunks:
            page = _Page(len(row_chunk), len(col_chunk), cfg.cell_size)
            for c, style in enumerate(col_chunk, start=1):
                page.tile(0, c, original(style.uris[0]), style.name)
            for r, content in enumerate(row_chunk, start=1):
                img = original(content.uri)
                page.tile(r, 0, img, content.rel or posixpath.basename(content.uri),
                          "" if img is not None else "unreadable")
                for c, style in enumerate(col_chunk, start=1):
                    row = by_pair.get((redact_uri(content.uri), style.name))
                    out = _load(row["output_uri"], options) if row and row["status"] == "ok" \
                        else None
                    page.tile(r, c, out, "", row["status"] if row and out is None else
                              ("" if out is not None else "missing"))
            storage.write_bytes(uris[n], page.png(), options, atomic=True)
            n += 1
    return uris
