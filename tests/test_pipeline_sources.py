"""Listing inputs and styles through fsspec (local, memory://, pkg://); no Ray."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import make_inputs, sample
from pipeline.jobconfig import job_from_mapping
from pipeline.sources import SourceError, check_styles_load, list_contents, list_styles


def job(**raw):
    raw.setdefault("styles", [str(sample("starry_night"))])
    raw.setdefault("output", "/tmp/unused-output")
    return job_from_mapping(raw)


def test_folder_is_recursive_keeps_spaces_and_skips_hidden(tmp_path):
    root = make_inputs(tmp_path / "in", {"a.jpg": "coffee", "sub dir/my cat.jpg": "chelsea"})
    (root / ".DS_Store").write_bytes(b"x")
    (root / ".cache").mkdir()
    (root / ".cache" / "x.jpg").write_bytes(b"x")
    contents = list_contents(job(input=str(root)))
    assert [c.rel for c in contents] == ["a.jpg", "empty.jpg", "notes.txt", "sub dir/my cat.jpg",
                                         "truncated.jpg"]
    assert contents[0].uri == str(root / "a.jpg") and contents[0].tag
    only = list_contents(job(input=str(root), extensions=["jpg"]))
    assert "notes.txt" not in [c.rel for c in only]


def test_output_inside_input_is_not_listed(tmp_path):
    root = make_inputs(tmp_path / "in", {"a.jpg": "coffee"}, bad=False)
    (root / "out" / "starry").mkdir(parents=True)
    (root / "out" / "starry" / "a.png").write_bytes(b"x")
    contents = list_contents(job(input=str(root), output=str(root / "out")))
    assert [c.rel for c in contents] == ["a.jpg"]


def test_glob_and_file_url(tmp_path):
    root = make_inputs(tmp_path / "in", {"a.jpg": "coffee", "b/c.jpg": "chelsea"}, bad=False)
    assert [c.rel for c in list_contents(job(input=f"{root}/**/*.jpg"))] == ["a.jpg", "b/c.jpg"]
    assert [c.rel for c in list_contents(job(input=f"file://{root}/*.jpg"))] == ["a.jpg"]


def test_list_files_txt_csv_parquet(tmp_path):
    root = make_inputs(tmp_path / "in", {"a.jpg": "coffee", "b/c.jpg": "chelsea"}, bad=False)
    (tmp_path / "list.txt").write_text(f"# photos\nin/a.jpg\n\n{root}/b/c.jpg\n")
    (tmp_path / "list.csv").write_text(f"id,uri\n1,{root}/a.jpg\n2,{root}/b/c.jpg\n")
    pq.write_table(pa.table({"uri": [f"{root}/a.jpg", f"{root}/b/c.jpg"]}),
                   tmp_path / "list.parquet")
    for name in ("list.txt", "list.csv", "list.parquet"):
        contents = list_contents(job(input=str(tmp_path / name)))
        assert [c.uri for c in contents] == [str(root / "a.jpg"), str(root / "b/c.jpg")], name
        assert [c.rel for c in contents] == ["a.jpg", "b/c.jpg"], name


def test_explicit_list_and_packaged_samples():
    contents = list_contents(job(input=["pkg://stylize/samples/tubingen.jpg",
                                        "pkg://stylize/samples/chelsea.jpg"]))
    assert [c.uri for c in contents] == ["pkg://stylize/samples/chelsea.jpg",
                                         "pkg://stylize/samples/tubingen.jpg"]
    assert [c.rel for c in contents] == ["chelsea.jpg", "tubingen.jpg"]
    folder = list_contents(job(input="pkg://stylize/samples", extensions=["jpg"]))
    assert len(folder) == 6


def test_memory_filesystem(tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/mem-src/x/a.jpg", sample("coffee").read_bytes())
    contents = list_contents(job(input="memory://mem-src", output="memory://mem-out",
                                 ray={"address": "inline"}))
    assert [(c.uri, c.rel) for c in contents] == [("memory:///mem-src/x/a.jpg", "x/a.jpg")]


def test_missing_and_empty_inputs_are_errors(tmp_path):
    with pytest.raises(SourceError, match="no such file or folder"):
        list_contents(job(input=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no files found"):
        list_contents(job(input=str(tmp_path / "empty")))


def test_styles_named_from_files_folders_and_mappings(tmp_path):
    styles = list_styles(job(input="x", styles=[str(sample("starry_night")),
                                                 "pkg://stylize/samples/the_scream.jpg"]))
    assert [s.name for s in styles] == ["starry_night", "the_scream"]
    folder = tmp_path / "styles"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(sample("shipwreck").read_bytes())
    (folder / "README.md").write_text("not a style")
    assert [s.name for s in list_styles(job(input="x", styles=str(folder)))] == ["a"]
    mixed = list_styles(job(input="x", styles={"mix": [
        {"uri": str(sample("starry_night")), "weight": 3}, str(sample("shipwreck"))]}))
    assert mixed[0].name == "mix" and mixed[0].weights == (3.0, 1.0) and len(mixed[0].uris) == 2
    assert mixed[0].key != list_styles(job(input="x", styles={"mix": str(sample("shipwreck"))}))[0].key


def test_bad_styles_stop_the_job_up_front(tmp_path):
    with pytest.raises(SourceError, match="cannot read"):
        list_styles(job(input="x", styles=[str(tmp_path / "missing.jpg")]))
    for d in ("one", "two"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "a.jpg").write_bytes(sample("coffee").read_bytes())
    with pytest.raises(SourceError, match="two styles are named 'a'"):
        list_styles(job(input="x", styles=[str(tmp_path / "one/a.jpg"),
                                           str(tmp_path / "two/a.jpg")]))
    (tmp_path / "broken.jpg").write_bytes(b"GIF89a nonsense")
    styles = list_styles(job(input="x", styles=[str(tmp_path / "broken.jpg")]))
    with pytest.raises(SourceError, match="style broken: .*broken.jpg"):
        check_styles_load(styles, {})
