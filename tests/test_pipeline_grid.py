"""Contact sheet layout and pagination from manifest rows (no Ray, no engine)."""

from __future__ import annotations

from conftest import sample
from PIL import Image

from pipeline.grid import EMPTY, page_size, write_grids
from pipeline.items import Content, StyleRef
from pipeline.jobconfig import GridConfig


def _setup(tmp_path, n_contents: int, n_styles: int):
    names = ["tubingen", "chelsea", "coffee"]
    paintings = ["starry_night", "the_scream", "shipwreck"]
    contents = [Content(str(sample(names[i % 3])), f"c{i}.jpg", "t") for i in range(n_contents)]
    styles = [
        StyleRef(f"s{j}", (str(sample(paintings[j % 3])),), (1.0,), ("t",)) for j in range(n_styles)
    ]
    rows = []
    for i, c in enumerate(contents):
        for j, s in enumerate(styles):
            out = tmp_path / s.name / f"c{i}.png"
            out.parent.mkdir(exist_ok=True)
            Image.new("RGB", (48, 36), (40 * j, 80, 40 * i)).save(out)
            ok = (i, j) != (0, 1)
            rows.append(
                {
                    "content_uri": c.uri,
                    "style": s.name,
                    "output_uri": str(out),
                    "status": "ok" if ok else "failed_oom",
                }
            )
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
    assert sizes == [
        page_size(2, 2, 32),
        page_size(2, 1, 32),
        page_size(1, 2, 32),
        page_size(1, 1, 32),
    ]


def _tiles(img: Image.Image, rows: int, cols: int, cell: int) -> list[list[str]]:
    """Each tile as "blank" (white, caption band included), "grey" (a placeholder) or
    "image"."""
    pad, label = max(4, cell // 32), max(12, cell // 14) + max(4, cell // 32)
    out = []
    for r in range(rows):
        line = []
        for c in range(cols):
            x, y = pad + c * (cell + pad), pad + r * (cell + label + pad)
            box = img.crop((x, y, x + cell, y + cell + label))
            line.append(
                "blank"
                if box.getextrema() == ((255, 255), (255, 255), (255, 255))
                else "grey"
                if img.getpixel((x + 2, y + 2)) == EMPTY
                else "image"
            )
        out.append(line)
    return out


def test_a_job_of_assigned_pairs_draws_strips_of_those_alone(tmp_path):
    """assign: {random: k} / column: a line per content of its assigned styles (original,
    result); pairs never assigned are not drawn; "missing" only for an assigned pair
    without a row."""
    contents, styles, rows = _setup(tmp_path, 3, 3)
    c0, c1, c2 = (c.uri for c in contents)
    # content 0: s0 and s2; content 1: s1 (failed_oom); content 2: s2, whose row is gone
    assigned = {(c0, "s0"), (c0, "s2"), (c1, "s1"), (c2, "s2")}
    rows = [r for r in rows if (r["content_uri"], r["style"]) in assigned - {(c2, "s2")}]
    rows.append({**rows[-1], "content_uri": c1, "style": "s1", "status": "failed_oom"})
    uris = write_grids(
        str(tmp_path), contents, styles, rows, GridConfig(cell_size=64), {}, assigned=assigned
    )
    assert uris == [str(tmp_path / "grid.png")]
    img = Image.open(uris[0]).convert("RGB")
    # 3 lines; the widest holds 2 pairs: content + 2 x (style, result)
    assert img.size == page_size(2, 4, 64)
    assert _tiles(img, 3, 5, 64) == [
        ["image"] * 5,  # content 0 | s0 | result | s2 | result
        ["image", "image", "grey", "blank", "blank"],  # s1 failed; nothing after it
        ["image", "image", "grey", "blank", "blank"],  # s2: assigned, no row: missing
    ]


def test_assigned_pairs_covering_every_pair_keep_the_matrix(tmp_path):
    contents, styles, rows = _setup(tmp_path, 2, 2)
    assigned = {(c.uri, s.name) for c in contents for s in styles}
    (uri,) = write_grids(
        str(tmp_path), contents, styles, rows, GridConfig(cell_size=64), {}, assigned=assigned
    )
    assert Image.open(uri).size == page_size(2, 2, 64)


def test_strips_of_many_styles_wrap_and_paginate(tmp_path):
    contents, styles, rows = _setup(tmp_path, 3, 3)
    assigned = {(contents[0].uri, s.name) for s in styles} | {(contents[2].uri, "s1")}
    cfg = GridConfig(cell_size=32, rows_per_page=2, cols_per_page=2)
    uris = write_grids(str(tmp_path), contents, styles, rows, cfg, {}, assigned=assigned)
    # content 0: s0 s1 | s2 (two lines), content 2: s1; content 1 has no pair: left out
    assert [u.rsplit("/", 1)[1] for u in uris] == ["grid-001.png", "grid-002.png"]
    assert [Image.open(u).size for u in uris] == [page_size(1, 4, 32), page_size(0, 2, 32)]
    # (content 0, s1) is the failed_oom row of _setup; the continued line has no content
    assert _tiles(Image.open(uris[0]).convert("RGB"), 2, 5, 32) == [
        ["image", "image", "image", "image", "grey"],
        ["blank", "image", "image", "blank", "blank"],
    ]
    assert _tiles(Image.open(uris[1]).convert("RGB"), 1, 3, 32) == [["image"] * 3]
