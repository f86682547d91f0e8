"""Contact sheet layout and pagination from manifest rows (no Ray, no engine)."""

from __future__ import annotations

from PIL import Image

from conftest import sample
from pipeline.grid import page_size, write_grids
from pipeline.items import Content, StyleRef
from pipeline.jobconfig import GridConfig


def _setup(tmp_path, n_contents: int, n_styles: int):
    names = ["tubingen", "chelsea", "coffee"]
    paintings = ["starry_night", "the_scream", "shipwreck"]
    contents = [Content(str(sample(names[i % 3])), f"c{i}.jpg", "t") for i in range(n_contents)]
    styles = [StyleRef(f"s{j}", (str(sample(paintings[j % 3])),), (1.0,), ("t",))
              for j in range(n_styles)]
    rows = []
    for i, c in enumerate(contents):
        for j, s in enumerate(styles):
            out = tmp_path / s.name / f"c{i}.png"
            out.parent.mkdir(exist_ok=True)
            Image.new("RGB", (48, 36), (40 * j, 80, 40 * i)).save(out)
            ok = (i, j) != (0, 1)
            rows.append({"content_uri": c.uri, "style": s.name, "output_uri": str(out),
                         "status": "ok" if ok else "failed_oom"})
    return contents, styles, rows


def test_page_size_formula():
    w, h = page_size(rows=1, cols=3, cell=64)
    assert (w, h) == (4 + 4 * 68, 4 + 2 * (64 + 16 + 4))
    assert page_size(2, 3, 256)[0] == page_size(5, 3, 256)[0]


def test_grid_has_a_header_row_and_column(tmp_path):
    contents, styles, rows = _setup(tmp_path, 2, 3)
    uris = write_grids(str(tmp_path), contents, styles, rows, GridConfig(cell_size=64), {})
    assert uris == [str(tmp_path / "grid.png")]
    img = Image.open(uris[0])
    assert img.size == page_size(2, 3, 64)
    # the top-left corner tile is empty; the failed pair is a grey placeholder
    assert img.getpixel((10, 10)) == (255, 255, 255)
    x, y = 4 + 2 * 68 + 2, 4 + 84 + 2  # inside tile (row 1, col 2) = content 0, style s1
    assert img.getpixel((x, y)) == (225, 225, 225)


def test_large_grids_are_paginated(tmp_path):
    contents, styles, rows = _setup(tmp_path, 3, 3)
    (tmp_path / "grid.png").write_bytes(b"stale")
    cfg = GridConfig(cell_size=32, rows_per_page=2, cols_per_page=2)
    uris = write_grids(str(tmp_path), contents, styles, rows, cfg, {})
    assert [u.rsplit("/", 1)[1] for u in uris] == [f"grid-00{n}.png" for n in (1, 2, 3, 4)]
    assert not (tmp_path / "grid.png").exists()
    sizes = [Image.open(u).size for u in uris]
    assert sizes == [page_size(2, 2, 32), page_size(2, 1, 32), page_size(1, 2, 32),
                     page_size(1, 1, 32)]
