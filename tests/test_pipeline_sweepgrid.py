"""Sweep sheets (the paper's Figure 3) from manifest rows: layout, matching, storage."""

from __future__ import annotations

import io
import os
import shutil

import fsspec
import pytest
from conftest import sample
from PIL import Image

from pipeline import sweepgrid
from pipeline.sweepgrid import axes, label, write_sweep_grids
from pipeline.webdataset import member_uri

LAYERS = [["relu1_1"], ["relu1_1", "relu2_1"], ["relu1_1", "relu2_1", "relu3_1"]]
WEIGHTS = [1e5, 1e4, 1e3, 1e2]
SWEEP = {"style_layers": LAYERS, "style_weight": WEIGHTS}
FAILED = (1, 2)  # (row, column) of the failed point


def _tint(i: int, j: int) -> tuple[int, int, int]:
    return (40 + 60 * i, 30 + 60 * j, 200 - 50 * j)


def _image(i: int, j: int, base: str = "tubingen") -> Image.Image:
    """The sample photo at 40x30, blended strongly towards the tint of cell (i, j)."""
    photo = Image.open(sample(base)).convert("RGB").resize((40, 30))
    return Image.blend(photo, Image.new("RGB", (40, 30), _tint(i, j)), 0.85)


def _rows(tmp_path, content: str = "/data/photos/tubingen.jpg", base: str = "tubingen"):
    rows = []
    for i, layers in enumerate(LAYERS):
        for j, w in enumerate(WEIGHTS):
            out = tmp_path / "out" / f"{base}-{i}-{j}.png"
            out.parent.mkdir(exist_ok=True)
            _image(i, j, base).save(out)
            rows.append(
                {
                    "item_id": f"{base}-{i}-{j}",
                    "content_uri": content,
                    "style": "starry_night",
                    "output_uri": str(out),
                    "status": "failed_other" if (i, j) == FAILED else "ok",
                    "error_message": None,
                    "total_loss": 1.0,
                    # as a manifest read back would hold them: tuples, ints
                    "style_layers": tuple(layers),
                    "style_weight": int(w),
                }
            )
    return rows


def _cells(png: bytes, n_rows: int, n_cols: int, cell: int):
    """The page and the centre of cell (i, j), found from the bottom-right corner: cells are
    ``cell`` wide and (landscape pictures) 3/4 as high, ``pad`` apart."""
    img = Image.open(io.BytesIO(png)).convert("RGB")
    pad, box_h = max(4, cell // 32), round(cell * 3 / 4)

    def centre(i: int, j: int) -> tuple[int, int]:
        x = img.width - (n_cols - j) * (cell + pad) + cell // 2
        y = img.height - (n_rows - i) * (box_h + pad) + box_h // 2
        return x, y

    return img, centre


def _close(a, b, tol=12) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b))


def test_page_places_each_point_in_its_cell(tmp_path):
    rows = _rows(tmp_path)
    uris = write_sweep_grids(str(tmp_path / "job"), rows, SWEEP, {}, cell_size=96)
    assert uris == [str(tmp_path / "job" / "grid-sweep-001.png")]
    png = (tmp_path / "job" / "grid-sweep-001.png").read_bytes()
    img, centre = _cells(png, 3, 4, 96)
    assert img.width > 4 * 96 + 40 and img.height > 3 * 72 + 40  # header column and rows
    assert img.width < 6 * 96 and img.height < 5 * 96
    expected = {(i, j): _image(i, j).getpixel((20, 15)) for i in range(3) for j in range(4)}
    for (i, j), colour in expected.items():
        got = img.getpixel(centre(i, j))
        if (i, j) == FAILED:
            # grey placeholder (its status text is centred, so sample beside it)
            x, y = centre(i, j)
            assert img.getpixel((x, y - 30)) == sweepgrid.EMPTY
        else:
            assert _close(got, colour), ((i, j), got, colour)
    assert img.getpixel((1, 1)) == sweepgrid.BACKGROUND


def test_missing_point_and_unreadable_output_are_grey(tmp_path):
    rows = _rows(tmp_path)
    rows = [r for r in rows if (r["style_layers"], r["style_weight"]) != (("relu1_1",), 10000)]
    (tmp_path / "out" / "tubingen-2-3.png").write_bytes(b"not a png")
    write_sweep_grids(str(tmp_path), rows, SWEEP, {}, cell_size=96)
    img, centre = _cells((tmp_path / "grid-sweep-001.png").read_bytes(), 3, 4, 96)
    for i, j in [(0, 1), (2, 3), FAILED]:
        x, y = centre(i, j)
        assert img.getpixel((x, y - 30)) == sweepgrid.EMPTY
    assert _close(img.getpixel(centre(0, 0)), _image(0, 0).getpixel((20, 15)))


def test_two_contents_make_two_pages_in_order(tmp_path):
    rows = _rows(tmp_path, "/d/b/chelsea.jpg", "chelsea") + _rows(tmp_path)
    uris = write_sweep_grids(str(tmp_path), rows, SWEEP, {}, cell_size=64)
    assert [u.rsplit("/", 1)[1] for u in uris] == ["grid-sweep-001.png", "grid-sweep-002.png"]
    for uri in uris:
        assert Image.open(uri).size == Image.open(uris[0]).size


def test_stale_pages_are_removed(tmp_path):
    (tmp_path / "grid-sweep-007.png").write_bytes(b"old")
    (tmp_path / "grid.png").write_bytes(b"contact sheet")
    write_sweep_grids(str(tmp_path), _rows(tmp_path), SWEEP, {}, cell_size=64)
    assert not (tmp_path / "grid-sweep-007.png").exists()
    assert (tmp_path / "grid.png").exists()


def test_third_key_makes_a_page_per_value(tmp_path):
    rows = []
    for tv in (0.0, 10.0):
        for r in _rows(tmp_path):
            rows.append({**r, "tv_weight": tv})
    sweep = {**SWEEP, "tv_weight": [0.0, 10.0]}
    uris = write_sweep_grids(str(tmp_path), rows, sweep, {}, cell_size=64)
    assert len(uris) == 2


def test_memory_output_and_tar_members(tmp_path):
    import tarfile

    rows = _rows(tmp_path)
    tar = tmp_path / "shard-000000.tar"
    with tarfile.open(tar, "w") as t:
        for r in rows:
            t.add(r["output_uri"], arcname=r["item_id"] + ".png")
    rows = [{**r, "output_uri": member_uri(str(tar), r["item_id"], "png")} for r in rows]
    shutil.rmtree(tmp_path / "out")  # only the tar holds the pictures now
    uris = write_sweep_grids("memory://sweepgrid-test/job", rows, SWEEP, {}, cell_size=64)
    try:
        assert uris == ["memory://sweepgrid-test/job/grid-sweep-001.png"]
        with fsspec.open(uris[0], "rb") as f:
            img, centre = _cells(f.read(), 3, 4, 64)
        assert _close(img.getpixel(centre(2, 0)), _image(2, 0).getpixel((20, 15)))
    finally:
        fsspec.filesystem("memory").rm("/sweepgrid-test", recursive=True)


def test_axes_rule():
    assert axes({"style_weight": [1, 2]}) == (None, "style_weight")
    assert axes(SWEEP) == ("style_layers", "style_weight")
    assert axes({"style_weight": WEIGHTS, "style_layers": LAYERS}) == (
        "style_layers",
        "style_weight",
    )
    assert axes({"tv_weight": [0, 1], "style_weight": WEIGHTS}) == ("tv_weight", "style_weight")
    assert axes({"tv_weight": [0], "size": [256], "style_layers": LAYERS}) == (
        "style_layers",
        "tv_weight",
    )
    assert axes({}) == (None, None)


@pytest.mark.parametrize(
    "key, value, cw, text",
    [
        ("style_layers", ["relu1_1"], 1.0, "relu1_1"),
        ("style_layers", ("relu1_1", "relu2_1"), 1.0, "relu1_1+relu2_1"),
        (
            "style_layers",
            ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"],
            1.0,
            "relu1_1 … relu5_1 (5)",
        ),
        ("style_weight", 1e4, 1.0, "α/β = 1e-4"),
        ("style_weight", 10000, 1.0, "α/β = 1e-4"),
        ("style_weight", 100.0, 5.0, "α/β = 5e-2"),
        ("style_weight", 2e5, 5.0, "α/β = 2.5e-5"),
        ("style_weight", 1.0, 1.0, "α/β = 1"),
        ("style_weight", 0.0, 1.0, "α/β = ∞"),
        ("style_weight", 1000.0, None, "style_weight = 1000"),  # content_weight on an axis
        ("tv_weight", 0.25, 1.0, "tv_weight = 0.25"),
        ("iterations", 500, 1.0, "iterations = 500"),
        ("init", "content", 1.0, "init = content"),
    ],
)
def test_label(key, value, cw, text):
    assert label(key, value, cw) == text


def test_labels_fall_back_to_ascii_without_a_unicode_font(tmp_path, monkeypatch):
    monkeypatch.setattr(sweepgrid, "_UNICODE_FONT", "no-such-font.ttf")
    f = sweepgrid._Fonts(64)
    assert not f.unicode and f.text("α/β = ∞") == "alpha/beta = inf"
    assert write_sweep_grids(str(tmp_path), _rows(tmp_path), SWEEP, {}, cell_size=64)


def test_preview_at_128(tmp_path):
    """A page to look at (``sweep-preview.png`` in the test's tmp_path): labels unclipped."""
    rows = _rows(tmp_path)
    uris = write_sweep_grids(str(tmp_path / "job"), rows, SWEEP, {}, cell_size=128)
    shutil.copy(uris[0], tmp_path / "sweep-preview.png")
    if os.environ.get("SWEEPGRID_PREVIEW"):  # a path to keep a copy at
        shutil.copy(uris[0], os.environ["SWEEPGRID_PREVIEW"])
    img = Image.open(uris[0]).convert("RGB")
    # the left edge and the right edge are margin: nothing was drawn over them
    assert {img.getpixel((0, y)) for y in range(img.height)} == {sweepgrid.BACKGROUND}
    assert {img.getpixel((img.width - 1, y)) for y in range(img.height)} == {sweepgrid.BACKGROUND}


def test_one_key_is_a_single_row_without_row_headers(tmp_path):
    rows = [r for r in _rows(tmp_path) if r["style_layers"] == ("relu1_1",)]
    for r in rows:
        del r["style_layers"]
    uris = write_sweep_grids(str(tmp_path), rows, {"style_weight": WEIGHTS}, {}, cell_size=64)
    img, centre = _cells(open(uris[0], "rb").read(), 1, 4, 64)
    assert img.width == 4 + 4 * (64 + 4)  # no header column
    for j in range(4):
        assert _close(img.getpixel(centre(0, j)), _image(0, j).getpixel((20, 15)))
