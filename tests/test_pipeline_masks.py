"""Spatial control in job files (issue 22): the job key ``masks`` (a list input's column or a
folder mirroring the input tree; a {foreground, background} pair from one binary mask), masks
in the item ids and the fingerprint, read by the worker (a bad mask is a row), the manifest's
``mask_uri`` column, and whole runs of ``stylize run`` (inline) whose pictures are checked:
the masked-out side stays the photo, the styled side moves toward its painting."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import cli_main, sample, write_job
from PIL import Image

from pipeline import manifest
from pipeline.items import Content, MaskPair, Plan, StyleRef, make_items
from pipeline.jobconfig import JobConfigError, job_from_mapping
from pipeline.resume import changed, fingerprint
from pipeline.rows import make_row
from pipeline.sources import SourceError, list_inputs, list_styles
from pipeline.worker import load_mask
from stylize.images import ImageError

STYLES = [
    StyleRef("starry", ("/s/starry.jpg",), (1.0,), ("1",)),
    StyleRef("scream", ("/s/scream.jpg",), (1.0,), ("1",)),
]


def _job(**keys):
    return job_from_mapping({"input": "in.csv", "styles": ["a.jpg"], "output": "out", **keys})


def _problem(**keys) -> str:
    with pytest.raises(JobConfigError) as e:
        _job(**keys)
    return str(e.value)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _half(w: int, h: int, left: bool = True, high: int = 255) -> Image.Image:
    """A binary mask: ``high`` on the left (or right) half, 0 elsewhere."""
    m = np.zeros((h, w), np.uint8)
    m[:, : w // 2] = high
    return Image.fromarray(m if left else m[:, ::-1].copy())


# ------------------------------------------------------------------------------ the job key


def test_the_job_key_takes_a_column_or_a_folder_and_at_least_one_style():
    job = _job(masks={"column": "mask_uri", "foreground": "a"})
    assert job.masks is not None and job.masks.background is None
    assert job.assignment(1) == MaskPair("a", None)
    folder = _job(input="photos/", masks={"folder": "masks/", "suffix": "_m", "background": "a"})
    assert folder.assignment(1) == MaskPair(None, "a")
    assert "column (a list input's column" in _problem(masks={"foreground": "a"})
    assert "one of them" in _problem(masks={"column": "m", "folder": "f", "foreground": "a"})
    assert "name the style of the foreground" in _problem(masks={"column": "m"})
    assert "both 'a'" in _problem(masks={"column": "m", "foreground": "a", "background": "a"})
    assert "suffix is only for folder" in _problem(
        masks={"column": "m", "suffix": "_m", "foreground": "a"}
    )
    assert "did you mean 'masks.foreground'" in _problem(masks={"column": "m", "forground": "a"})


def test_keys_that_masks_make_pointless_are_refused_with_the_fix():
    line = _problem(masks={"column": "mask_uri", "foreground": "a"}, assign="all")
    assert line.startswith("assign: has no effect with masks") and "drop assign" in line
    line = _problem(input="photos/", masks={"column": "mask_uri", "foreground": "a"})
    assert "masks.column" in line and "use masks.folder" in line
    assert len(line.splitlines()) == 1
    line = _problem(input="memory://in/", masks={"folder": "memory://m/", "foreground": "a"})
    assert "ray.address: inline" in line


def test_a_masked_job_is_another_job_and_an_unmasked_one_keeps_its_fingerprint():
    plain = _job()
    masked = _job(masks={"column": "mask_uri", "foreground": "starry"})
    assert "masks" not in fingerprint(plain, STYLES[:1])  # runs made before masks resume
    old = {"fingerprint": fingerprint(masked, STYLES[:1])}
    other = _job(masks={"column": "mask_uri", "foreground": "starry", "background": "scream"})
    assert changed(old, fingerprint(other, STYLES[:1])) == ["masks.background: None -> 'scream'"]
    assert changed(old, fingerprint(masked, STYLES[:1])) == []


# ----------------------------------------------------------------------------- work items


def test_one_item_per_content_its_mask_and_the_mask_version_in_its_id():
    contents = [
        Content("/in/a.jpg", "a.jpg", "1", mask_uri="/m/a.png", mask_tag="10-1"),
        Content("/in/b.jpg", "b.jpg", "1", mask_uri="", mask_tag="missing", mask_problem="no"),
    ]
    plan = Plan(MaskPair("starry", "scream"), point_hashes=("p",))
    items = make_items(contents, STYLES, "/o", "png", "p", plan)
    assert [(i.style, i.output_uri) for i in items] == [
        ("starry", "/o/starry/a.png"),
        ("starry", "/o/starry/b.png"),
    ]
    assert items[0].mask is not None and items[0].mask.uri == "/m/a.png"
    assert (items[0].mask.foreground, items[0].mask.background) == ("starry", "scream")
    assert items[0].problem == "" and items[1].problem == "no"
    ids = lambda cs, pl=plan: [i.item_id for i in make_items(cs, STYLES, "/o", "png", "p", pl)]  # noqa: E731
    assert ids(contents) == [i.item_id for i in items]  # stable
    edited = [Content("/in/a.jpg", "a.jpg", "1", mask_uri="/m/a.png", mask_tag="11-2")]
    assert ids(edited)[0] != items[0].item_id  # a new mask file: a new item
    assert ids(contents, Plan(MaskPair("starry", None), point_hashes=("p",)))[0] != items[0].item_id
    unmasked = make_items(contents, STYLES, "/o", "png", "p")
    assert items[0].item_id not in {i.item_id for i in unmasked}
    assert all(i.mask is None for i in unmasked)  # ids without masks as before (other tests)
    mirror = make_items(
        contents,
        STYLES,
        "/o",
        "png",
        "p",
        Plan(MaskPair("starry", "scream"), "mirror", point_hashes=("p",)),
    )
    assert mirror[0].output_uri == "/o/images/a.png"  # one item per content: no __style
    rows = [make_row(i, "ok", shard=0, attempt=1) for i in (items[0], unmasked[0])]
    assert [r["mask_uri"] for r in rows] == ["/m/a.png", None]


def test_the_manifest_stores_mask_uri_and_reads_parts_written_before_it():
    contents = [Content("/in/a.jpg", "a.jpg", "1", mask_uri="s3://KEY:SECRET@b/m/a.png")]
    item = make_items(contents, STYLES, "/o", "png", "p", Plan(MaskPair("starry", None)))[0]
    table = manifest.to_table([make_row(item, "ok", shard=0, attempt=1)])
    assert table.column("mask_uri").to_pylist() == ["s3://b/m/a.png"]  # no credentials
    old = table.drop_columns(["mask_uri"])  # a part of a run made before the column
    buf = io.BytesIO()
    pq.write_table(old, buf)
    back = manifest._read_parquet(buf.getvalue())
    assert back.schema.field("mask_uri").type == pa.string()
    assert back.column("mask_uri").to_pylist() == [None]


# ------------------------------------------------------------------------------ the worker


def test_a_mask_is_read_grey_in_0_1_and_resized_to_the_contents_working_size():
    m = load_mask(_png(_half(80, 60)), "m.png", (36, 48), (400, 300))
    assert tuple(m.shape) == (36, 48) and float(m.min()) == 0.0 and float(m.max()) == 1.0
    assert float(m[:, :20].mean()) == 1.0 and float(m[:, 28:].mean()) == 0.0
    soft = load_mask(_png(Image.new("L", (40, 30), 128)), "m.png", (30, 40), (40, 30))
    assert abs(float(soft.mean()) - 128 / 255) < 1e-6
    labels = load_mask(_png(_half(40, 30, high=1)), "m.png", (30, 40), (40, 30))  # 0/1 labels
    assert float(labels[:, :18].mean()) == 1.0
    rgb = load_mask(_png(_half(40, 30).convert("RGB")), "m.png", (30, 40), (40, 30))
    assert torch_equal(rgb, load_mask(_png(_half(40, 30)), "m.png", (30, 40), (40, 30)))


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


@pytest.mark.parametrize(
    "data, sides, words",
    [
        (_png(Image.new("L", (40, 30), 0)), (True, False), "blank: no white (foreground)"),
        (_png(Image.new("L", (40, 30), 255)), (False, True), "blank: no black (background)"),
        (_png(Image.new("L", (30, 40), 0)), (False, True), "not the aspect ratio"),
        (b"not an image", (True, False), "not an image"),
        (b"", (True, False), "empty file"),
    ],
)
def test_a_mask_that_cannot_guide_is_an_image_error_naming_it(data, sides, words):
    with pytest.raises(ImageError) as e:
        load_mask(data, "mask /m/a.png", (30, 40), (400, 300), *sides)
    assert str(e.value).startswith("mask /m/a.png: ") and words in str(e.value)


def test_an_all_black_mask_with_a_background_style_styles_everything():
    m = load_mask(_png(Image.new("L", (40, 30), 0)), "m.png", (30, 40), (40, 30), True, True)
    assert float(m.max()) == 0.0


# ------------------------------------------------------------------------------ listing


def _tree(root: Path, names: list[str]) -> None:
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 6), "red").save(root / n)


def test_folder_masks_mirror_the_input_tree_any_image_extension(tmp_path):
    _tree(tmp_path / "photos", ["a/b.jpg", "a/c.jpg", "d.jpg", "e.jpg"])
    _tree(tmp_path / "masks", ["a/b.png", "a/c.webp", "d.png", "d.gif", "notes/x.png"])
    job = _job(
        input=str(tmp_path / "photos"),
        masks={"folder": str(tmp_path / "masks"), "foreground": "a"},
    )
    got = {c.rel: c for c in list_inputs(job).contents}
    assert got["a/b.jpg"].mask_uri == str(tmp_path / "masks/a/b.png")
    assert got["a/c.jpg"].mask_uri.endswith("masks/a/c.webp") and got["a/c.jpg"].mask_tag
    assert "several masks match" in got["d.jpg"].mask_problem
    assert got["e.jpg"].mask_problem.startswith("no mask: nothing matches") and got[
        "e.jpg"
    ].mask_problem.endswith("masks/e.* (masks.folder)")
    _tree(tmp_path / "masks2", ["a/b_mask.png"])
    suffixed = _job(
        input=str(tmp_path / "photos"),
        masks={"folder": str(tmp_path / "masks2"), "suffix": "_mask", "foreground": "a"},
    )
    assert list_inputs(suffixed).contents[0].mask_uri.endswith("masks2/a/b_mask.png")
    inside = _job(
        input=str(tmp_path / "photos"),
        masks={"folder": str(tmp_path / "photos/a"), "foreground": "a"},
    )
    with pytest.raises(SourceError, match="inside the input folder"):
        list_inputs(inside)
    gone = _job(
        input=str(tmp_path / "photos"), masks={"folder": str(tmp_path / "no"), "foreground": "a"}
    )
    with pytest.raises(SourceError, match="masks.folder: .* is not a folder"):
        list_inputs(gone)


def test_column_masks_are_relative_to_the_list_and_a_gap_is_a_problem_not_a_crash(tmp_path):
    _tree(tmp_path, ["p/a.jpg", "p/b.jpg", "p/c.jpg", "m/a.png"])
    (tmp_path / "list.csv").write_text(
        "uri,mask_uri,label\np/a.jpg,m/a.png,1\np/b.jpg,,2\np/c.jpg,m/gone.png,3\n"
    )
    job = _job(input=str(tmp_path / "list.csv"), masks={"column": "mask_uri", "foreground": "a"})
    listing = list_inputs(job)
    a, b, c = listing.contents
    assert a.mask_uri == str(tmp_path / "m/a.png") and a.mask_problem == "" and a.mask_tag
    assert b.mask_problem == "no mask: its mask_uri column is empty"
    assert c.mask_problem == f"mask {tmp_path}/m/gone.png: no such file"
    assert listing.extras.column_names == ["label"]  # the mask column is not an extra
    assert listing.report() == [
        f"2 entries without a usable mask, failed rows (masks): {tmp_path}/p/b.jpg, {tmp_path}/p/c.jpg"
    ]
    wrong = job.replace(masks=job.masks.model_copy(update={"column": "mask"}))
    with pytest.raises(SourceError, match="masks.column: 'mask' is not a column"):
        list_inputs(wrong)
    with pytest.raises(SourceError, match=r"masks: \{column: mask_uri, foreground: STYLE\}"):
        list_inputs(job.replace(masks=None))


def test_the_styles_are_the_masks_styles_exactly(tmp_path):
    for n in ("starry", "scream"):
        shutil.copy(sample("starry_night"), tmp_path / f"{n}.jpg")
    both = [str(tmp_path / "starry.jpg"), str(tmp_path / "scream.jpg")]
    job = _job(styles=both, masks={"column": "m", "foreground": "starry", "background": "scream"})
    assert [s.name for s in list_styles(job)] == ["starry", "scream"]
    with pytest.raises(SourceError, match="'scream' is neither masks.foreground nor"):
        list_styles(_job(styles=both, masks={"column": "m", "foreground": "starry"}))
    with pytest.raises(SourceError, match="masks.foreground: 'stary' is not one of .* 'starry'"):
        list_styles(_job(styles=both[:1], masks={"column": "m", "foreground": "stary"}))


# ------------------------------------------------------------------------------ whole runs

RUN = {"preset": "fast", "size": 48, "iterations": 20}


def _photo(name: str, side: int = 64) -> Image.Image:
    img = Image.open(sample(name)).convert("RGB")
    img.thumbnail((side, side))
    return img


def _halves(out_uri: str, content: Path) -> tuple[float, float]:
    """Mean absolute difference (0..255) of the output to its content, left and right half."""
    out = np.asarray(Image.open(out_uri).convert("RGB"), float)
    photo = np.asarray(Image.open(content).convert("RGB").resize(out.shape[1::-1]), float)
    diff = np.abs(out - photo)
    w = out.shape[1]
    return float(diff[:, : w // 2].mean()), float(diff[:, w - w // 2 :].mean())


def _colour_gap(img: np.ndarray, style: np.ndarray) -> float:
    """Distance of mean colours (RGB, 0..255)."""
    return float(np.linalg.norm(img.reshape(-1, 3).mean(0) - style.reshape(-1, 3).mean(0)))


def _run(tmp_path: Path, job: dict) -> tuple[int, dict[str, dict]]:
    raw = {"stylize": RUN, "ray": {"address": "inline"}, "report": False, **job}
    code = cli_main(["run", str(write_job(tmp_path / "job.yaml", raw))])
    rows = pq.read_table(Path(job["output"]) / "manifest.parquet").to_pylist()
    return code, {Path(r["content_uri"]).stem: r for r in rows}


@pytest.mark.slow
def test_a_list_job_with_a_mask_column_end_to_end_then_a_changed_mask_recomputes(tmp_path):
    photos, masks = tmp_path / "photos", tmp_path / "masks"
    photos.mkdir()
    masks.mkdir()
    for name in ("tubingen", "chelsea", "coffee", "lost", "blank", "junk"):
        _photo({"lost": "coffee", "blank": "tubingen", "junk": "chelsea"}.get(name, name)).save(
            photos / f"{name}.png"
        )
    w, h = Image.open(photos / "tubingen.png").size
    _half(w, h).save(masks / "tubingen.png")
    cw, ch = Image.open(photos / "chelsea.png").size
    _half(cw * 2, ch * 2, high=1).save(masks / "chelsea.png")  # 0/1 labels, twice the size
    kw, kh = Image.open(photos / "coffee.png").size
    _half(kw, kh).convert("RGB").save(masks / "coffee.jpg", quality=95)
    Image.new("L", (w, h), 0).save(masks / "blank.png")
    (masks / "junk.png").write_bytes(b"not a png")
    lines = ["uri,mask_uri,label"] + [
        f"photos/{n}.png,masks/{m},{i}"
        for i, (n, m) in enumerate(
            [
                ("tubingen", "tubingen.png"),
                ("chelsea", "chelsea.png"),
                ("coffee", "coffee.jpg"),
                ("lost", "lost.png"),
                ("blank", "blank.png"),
                ("junk", "junk.png"),
            ]
        )
    ]
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    job = {
        "input": str(tmp_path / "list.csv"),
        "styles": {"starry": str(sample("starry_night"))},
        "output": str(out),
        "masks": {"column": "mask_uri", "foreground": "starry"},
    }
    code, rows = _run(tmp_path, job)
    assert code == 1  # some items failed, the run went on
    assert {n: r["status"] for n, r in rows.items()} == {
        "tubingen": "ok",
        "chelsea": "ok",
        "coffee": "ok",
        "lost": "failed_other",
        "blank": "failed_decode",
        "junk": "failed_decode",
    }
    assert all(r["mask_uri"] == str(masks / Path(r["mask_uri"]).name) for r in rows.values())
    assert [rows[n]["label"] for n in ("tubingen", "lost")] == [0, 3]  # columns still travel
    assert rows["lost"]["error_message"].endswith(f"mask {masks}/lost.png: no such file")
    assert "blank: no white (foreground)" in rows["blank"]["error_message"]
    assert "not an image" in rows["junk"]["error_message"]
    style = np.asarray(_photo("starry_night", 48), float)
    for name in ("tubingen", "chelsea", "coffee"):
        r = rows[name]
        assert r["output_uri"] == str(out / "starry" / f"{name}.png")
        styled, kept = _halves(r["output_uri"], photos / f"{name}.png")
        print(f"{name}: |out - photo| styled half {styled:.1f}, unstyled half {kept:.1f}")
        assert kept < 0.5 * styled  # the masked-out half stays the photo
        result = np.asarray(Image.open(r["output_uri"]).convert("RGB"), float)
        photo = np.asarray(
            Image.open(photos / f"{name}.png").convert("RGB").resize(result.shape[1::-1]), float
        )
        half = result.shape[1] // 2
        assert _colour_gap(result[:, :half], style) < _colour_gap(photo[:, :half], style)

    # the same job again, tubingen's mask now its right half: only that item is computed
    before = {n: (r["item_id"], r["finished_at"]) for n, r in rows.items()}
    _half(w, h, left=False).save(masks / "tubingen.png")
    code, again = _run(tmp_path, job)
    assert code == 1 and len(again) == 6
    assert again["tubingen"]["item_id"] != before["tubingen"][0]
    assert again["tubingen"]["finished_at"] > before["tubingen"][1]
    assert all(
        (again[n]["item_id"], again[n]["finished_at"]) == before[n]
        for n in before
        if n != "tubingen"
    )
    styled_left, styled_right = _halves(again["tubingen"]["output_uri"], photos / "tubingen.png")
    print(f"tubingen, mask flipped: left {styled_left:.1f}, right {styled_right:.1f}")
    assert styled_left < 0.5 * styled_right


@pytest.mark.slow
def test_a_folder_of_masks_gives_each_side_its_own_style(tmp_path, capsys):
    photos, masks = tmp_path / "photos" / "city", tmp_path / "masks" / "city"
    photos.mkdir(parents=True)
    masks.mkdir(parents=True)
    _photo("tubingen").save(photos / "tubingen.jpg", quality=95)
    w, h = Image.open(photos / "tubingen.jpg").size
    _half(w, h).save(masks / "tubingen.png")
    out = tmp_path / "out"
    job = {
        "input": str(tmp_path / "photos"),
        "styles": {"starry": str(sample("starry_night")), "scream": str(sample("the_scream"))},
        "output": str(out),
        "layout": "mirror",
        "masks": {
            "folder": str(tmp_path / "masks"),
            "foreground": "starry",
            "background": "scream",
        },
    }
    code, rows = _run(tmp_path, job)
    assert code == 0 and len(rows) == 1
    r = rows["tubingen"]
    assert r["status"] == "ok" and r["style"] == "starry"
    assert r["mask_uri"] == str(masks / "tubingen.png")
    assert r["output_uri"] == str(out / "images" / "city" / "tubingen.png")
    moved = _gram_moves(Path(r["output_uri"]), photos / "tubingen.jpg")
    print("Gram distance of each half to each style, output / photo:", moved)
    # each half moved toward its own style more than toward the other (the photo itself is
    # nearer The Starry Night than The Scream, so the ratios to the photo's are compared)
    assert moved[("left", "starry_night")] < 0.9 * moved[("left", "the_scream")]
    assert moved[("right", "the_scream")] < 0.9 * moved[("right", "starry_night")]
    # the report names the masks and both styles (a row names the foreground's alone)
    assert cli_main(["report", str(out)]) == 0
    html = (out / "report" / "index.html").read_text()
    assert "<th>masks</th>" in html and "background (black): scream" in html
    assert "<th>styles</th><td>2: starry, scream</td>" in html
    assert "compare each side with its own style (starry where the mask is white and " in html
    capsys.readouterr()
    assert cli_main(["plan", str(tmp_path / "job.yaml")]) == 0
    assert f"masks:     from folder {tmp_path / 'masks'}; foreground (white): starry, " in (
        capsys.readouterr().out
    )


def _gram_moves(output: Path, photo: Path) -> dict[tuple[str, str], float]:
    """(half, style) -> Gram distance (stylize.figures, fixed layers) of the output's half to
    the style over the photo's half's: below 1, the half moved toward the style."""
    import torch

    from stylize.engine import Stylizer
    from stylize.figures import figures, network_config, style_stats
    from stylize.images import to_tensor

    net = Stylizer(network_config("cpu"))
    out = to_tensor(Image.open(output).convert("RGB"))
    h, w = out.shape[-2:]
    ph = to_tensor(Image.open(photo).convert("RGB").resize((w, h)))
    half = w // 2
    moved = {}
    for name in ("starry_night", "the_scream"):
        painting = to_tensor(Image.open(sample(name)).convert("RGB"))
        stats = style_stats(net.features, [painting], [1.0], max(h, half))
        for side, cols in (("left", slice(0, half)), ("right", slice(w - half, w))):
            pair = torch.stack([out[:, :, cols], ph[:, :, cols]])
            got = figures(net.features, pair, torch.stack([ph[:, :, cols]] * 2), [stats] * 2)
            moved[(side, name)] = got[0]["gram_distance"] / got[1]["gram_distance"]
    return moved
