"""Hostile names: bytes that are not UTF-8, names too long for the file system, output names
that collide, and style names that would collide with the run's own files (no Ray)."""

from __future__ import annotations

import os

import pytest
from conftest import sample

from pipeline import storage
from pipeline.items import (
    MAX_NAME_BYTES,
    Content,
    Plan,
    StyleRef,
    escape_undecodable,
    fit_name,
    make_items,
    output_uri,
)
from pipeline.jobconfig import job_from_mapping
from pipeline.runfolder import RESERVED_STYLE_NAMES
from pipeline.sources import SourceError, list_contents, list_styles

STARRY = [StyleRef("starry", ("/s/starry.jpg",), (1.0,), ("t",))]


def job(**raw):
    raw.setdefault("styles", [str(sample("starry_night"))])
    raw.setdefault("output", "/tmp/unused-output")
    return job_from_mapping(raw)


def write_raw(folder, name: bytes, data: bytes) -> str:
    """A file whose name is raw bytes; returns its path as fsspec lists it (surrogates)."""
    path = os.fsencode(str(folder)) + b"/" + name
    with open(path, "wb") as f:
        f.write(data)
    return os.fsdecode(path)


def components(uri: str, root: str) -> list[str]:
    return uri[len(root) :].strip("/").split("/")


# ---------------------------------------------------------------------- names not UTF-8


def test_name_not_utf8_is_listed_read_and_written_under_a_utf8_name(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    jpeg = sample("coffee").read_bytes()
    raw = write_raw(root, b"caf\xe9 \xff\xfe.jpg", jpeg)
    write_raw(root, b"ok.jpg", jpeg)
    contents = list_contents(job(input=str(root)))
    assert [c.uri for c in contents] == [raw, str(root / "ok.jpg")]
    assert contents[0].rel == "caf\udce9 \udcff\udcfe.jpg" and not contents[0].problem
    assert storage.read_bytes(contents[0].uri) == jpeg  # the real bytes of the real name

    out = str(tmp_path / "out")
    items = make_items(contents, STARRY, out, "png", "p")
    assert items[0].output_uri == f"{out}/starry/caf%E9 %FF%FE.png"
    assert items[0].item_id == make_items(contents, STARRY, out, "png", "p")[0].item_id
    assert len({i.item_id for i in items}) == 2
    for item in items:
        item.output_uri.encode("utf-8")  # valid UTF-8: fits a manifest and any file system
        storage.write_bytes(item.output_uri, b"png", atomic=True)
    assert sorted(os.listdir(tmp_path / "out" / "starry")) == ["caf%E9 %FF%FE.png", "ok.png"]


def test_name_not_utf8_draws_its_styles_and_mirrors_its_tree(tmp_path):
    root = tmp_path / "in" / "cats"
    root.mkdir(parents=True)
    write_raw(root, b"caf\xe9.jpg", sample("coffee").read_bytes())
    contents = list_contents(job(input=str(tmp_path / "in")))
    styles = [StyleRef(n, (f"/s/{n}.jpg",), (1.0,), ("t",)) for n in ("a", "b", "c")]
    plan = Plan(assign=(2, 0), layout="mirror", point_hashes=("p",))
    out = str(tmp_path / "out")
    items = make_items(contents, styles, out, "png", "p", plan)
    assert len({i.style for i in items}) == 2  # two distinct styles, drawn from the raw name
    assert [i.style for i in make_items(contents, styles, out, "png", "p", plan)] == [
        i.style for i in items
    ]
    assert {i.output_uri for i in items} == {
        f"{out}/images/cats/caf%E9__{i.style}.png" for i in items
    }


def test_escaped_name_colliding_with_a_real_name_is_told_apart(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    write_raw(root, b"\xff.jpg", b"x")
    write_raw(root, b"%FF.jpg", b"y")
    items = make_items(list_contents(job(input=str(root))), STARRY, "/o", "png", "p")
    names = [i.output_uri.rsplit("/", 1)[1] for i in items]
    assert len(set(names)) == 2 and all(n.startswith("%FF-") for n in names)


def test_list_file_with_names_not_utf8(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    raw = write_raw(root, b"\xff.jpg", b"x")
    (tmp_path / "list.txt").write_bytes(os.fsencode(raw) + b"\n")
    contents = list_contents(job(input=str(tmp_path / "list.txt")))
    assert [c.uri for c in contents] == [raw] and not contents[0].problem


def test_escape_undecodable():
    assert escape_undecodable("plain é.jpg") == "plain é.jpg"
    assert escape_undecodable("a\udcff\udc80b") == "a%FF%80b"
    assert escape_undecodable("lone \ud800") == "lone _"


# ---------------------------------------------------------------------- names too long


def test_fit_name_cuts_on_a_character_boundary_and_keeps_names_apart():
    assert fit_name("short", ".png") == "short.png"
    exact = "x" * (MAX_NAME_BYTES - 4)
    assert fit_name(exact, ".png") == exact + ".png"
    a, b = fit_name("é" * 200 + "1", ".png"), fit_name("é" * 200 + "2", ".png")
    assert a != b and a.startswith("é" * 100) and a.endswith(".png")
    assert len(a.encode("utf-8")) <= MAX_NAME_BYTES and len(b.encode("utf-8")) <= MAX_NAME_BYTES
    assert fit_name("é" * 200 + "1", ".png") == a  # a pure function


def test_long_names_that_collide_fit_255_bytes_and_differ(tmp_path):
    prefix = "p" * 240
    contents = [
        Content(f"/in/{prefix}-first.jpg", f"{prefix}-first.jpg", "1"),
        Content(f"/in/{prefix}-second.jpg", f"{prefix}-second.jpg", "1"),
        Content(f"/in/{prefix}-first.png", f"{prefix}-first.png", "1"),  # same stem
        Content("/in/" + "日本" * 40 + ".jpg", "日本" * 40 + ".jpg", "1"),  # 240 bytes
        Content("/in/" + "日本" * 40 + ".png", "日本" * 40 + ".png", "1"),
    ]
    out = str(tmp_path / "out")
    items = make_items(contents, STARRY, out, "jpeg", "p")
    names = [i.output_uri.rsplit("/", 1)[1] for i in items]
    assert len(set(names)) == 5
    for name in names:
        assert len(name.encode("utf-8")) <= 255 and name.endswith(".jpg")
        name.encode("utf-8")
    assert items[1].output_uri == output_uri(out, "starry", contents[1].rel, "jpeg")
    for item in items:  # the file system takes them: no "File name too long"
        storage.write_bytes(item.output_uri, b"x", atomic=True)
    assert len(os.listdir(tmp_path / "out" / "starry")) == 5


def test_every_component_fits_also_folders_styles_and_escaped_bytes():
    rel = "d" * 250 + "/" + "\udcff" * 200 + ".jpg"
    uri = output_uri("/o", "s" * 300, rel, "png", suffix="-0123abcd")
    parts = components(uri, "/o")
    assert len(parts) == 3
    assert all(len(p.encode("utf-8")) <= 255 for p in parts)
    assert parts[2].startswith("%FF%FF") and parts[2].endswith(".png")


# ---------------------------------------------------------------------- output collisions


def test_names_that_differ_in_case_or_file_vs_folder_are_told_apart():
    contents = [
        Content("/in/A.jpg", "A.jpg", "1"),
        Content("/in/a.jpg", "a.jpg", "1"),
        Content("/in/b.jpg", "b.jpg", "1"),
        Content("/in/b.png/c.jpg", "b.png/c.jpg", "1"),  # a folder named b.png
        Content("/in/d.jpg", "d.jpg", "1"),
    ]
    names = [i.output_uri for i in make_items(contents, STARRY, "/o", "png", "p")]
    assert names[0] != names[1] and names[0].lower() != names[1].lower()
    assert names[2].startswith("/o/starry/b-") and names[3] == "/o/starry/b.png/c.png"
    assert names[4] == "/o/starry/d.png"


def test_folder_named_like_an_image_is_walked(tmp_path):
    root = tmp_path / "in"
    (root / "x.jpg").mkdir(parents=True)
    (root / "x.jpg" / "inner.jpg").write_bytes(b"x")
    (root / "y.jpg").write_bytes(b"y")
    for inp in (str(root), f"{root}/*.jpg", f"{root}/**/*.jpg"):
        assert [c.rel for c in list_contents(job(input=inp))] == ["x.jpg/inner.jpg", "y.jpg"]
    assert [c.rel for c in list_contents(job(input=[str(root / "x.jpg")]))] == ["inner.jpg"]


# ---------------------------------------------------------------------- style names


@pytest.mark.parametrize(
    "name",
    [
        "_manifest",
        "manifest.parquet",
        "run.json",
        "job.json",
        "grid",
        "grid.png",
        "grid-002.png",
        "report",
        "report.html",
        ".hidden",
        "Manifest.Parquet",
        "GRID",
        "../_x",
    ],
)
def test_style_names_that_collide_with_the_run_files_are_refused(name):
    with pytest.raises(SourceError) as e:
        list_styles(job(input="x", styles={name: str(sample("starry_night"))}))
    message = str(e.value)
    assert "styles:" in message and "style_" in message and "collide" in message
    assert all(p in message for p in RESERVED_STYLE_NAMES)


def test_style_file_names_are_checked_too(tmp_path):
    folder = tmp_path / "styles"
    folder.mkdir()
    (folder / "grid.jpg").write_bytes(sample("shipwreck").read_bytes())
    with pytest.raises(SourceError, match="style 'grid'"):
        list_styles(job(input="x", styles=str(folder)))
    (folder / "report.jpg").write_bytes(sample("shipwreck").read_bytes())
    with pytest.raises(SourceError, match="style 'report'.*styles: {style_report: "):
        list_styles(job(input="x", styles=[str(folder / "report.jpg")]))


def test_ordinary_style_names_pass_and_case_duplicates_do_not(tmp_path):
    ok = list_styles(
        job(
            input="x",
            styles={
                "manifesto": str(sample("starry_night")),
                "my_grid": str(sample("shipwreck")),
                "runner": str(sample("the_scream")),
            },
        )
    )
    assert [s.name for s in ok] == ["manifesto", "my_grid", "runner"]
    with pytest.raises(SourceError, match="two styles are named 'starry' and 'Starry'"):
        list_styles(
            job(
                input="x",
                styles={"Starry": str(sample("starry_night")), "starry": str(sample("shipwreck"))},
            )
        )
    folder = tmp_path / "styles"
    folder.mkdir()
    write_raw(folder, b"st\xffyle.jpg", sample("shipwreck").read_bytes())
    assert [s.name for s in list_styles(job(input="x", styles=str(folder)))] == ["st%FFyle"]
