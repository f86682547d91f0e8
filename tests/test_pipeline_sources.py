"""Listing inputs and styles through fsspec (local, memory://, pkg://); no Ray."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_inputs, sample

from pipeline import storage
from pipeline.jobconfig import job_from_mapping
from pipeline.sources import (
    HIDDEN,
    IN_OUTPUT,
    LISTED_AGAIN,
    NOT_EXTENSION,
    SPECIAL,
    SourceError,
    check_styles_load,
    list_contents,
    list_inputs,
    list_styles,
)


def job(**raw):
    raw.setdefault("styles", [str(sample("starry_night"))])
    raw.setdefault("output", "/tmp/unused-output")
    return job_from_mapping(raw)


def test_folder_is_recursive_keeps_spaces_and_skips_hidden(tmp_path):
    root = make_inputs(tmp_path / "in", {"a.jpg": "coffee", "sub dir/my cat.jpg": "chelsea"})
    (root / ".DS_Store").write_bytes(b"x")
    (root / ".cache").mkdir()
    (root / ".cache" / "x.jpg").write_bytes(b"x")
    contents = list_contents(job(input=str(root), extensions="all"))
    assert [c.rel for c in contents] == [
        "a.jpg",
        "empty.jpg",
        "notes.txt",
        "sub dir/my cat.jpg",
        "truncated.jpg",
    ]
    # by default only image files: notes.txt is skipped (with its reason), not an input
    listing = list_inputs(job(input=str(root)))
    assert [c.rel for c in listing.contents] == [
        "a.jpg",
        "empty.jpg",
        "sub dir/my cat.jpg",
        "truncated.jpg",
    ]
    assert any(s.uri.endswith("notes.txt") and "not an image" in s.reason for s in listing.skipped)
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
    pq.write_table(
        pa.table({"uri": [f"{root}/a.jpg", f"{root}/b/c.jpg"]}), tmp_path / "list.parquet"
    )
    for name in ("list.txt", "list.csv", "list.parquet"):
        contents = list_contents(job(input=str(tmp_path / name)))
        assert [c.uri for c in contents] == [str(root / "a.jpg"), str(root / "b/c.jpg")], name
        assert [c.rel for c in contents] == ["a.jpg", "b/c.jpg"], name


def test_a_content_listed_twice_is_one_item_and_reported(tmp_path):
    """A list naming a photo on two rows (say, with two masks) makes one item, from the first
    row, and says so: the second row is not silently dropped."""
    root = make_inputs(tmp_path / "in", {"a.jpg": "coffee", "c.jpg": "chelsea"}, bad=False)
    (tmp_path / "list.csv").write_text(
        f"uri,label\n{root}/a.jpg,first\n{root}/c.jpg,other\n{root}/a.jpg,second\n"
    )
    listing = list_inputs(job(input=str(tmp_path / "list.csv")))
    assert [(c.uri, c.row) for c in listing.contents] == [
        (str(root / "a.jpg"), 0),
        (str(root / "c.jpg"), 1),
    ]
    assert [(s.uri, s.reason) for s in listing.skipped] == [(str(root / "a.jpg"), LISTED_AGAIN)]
    assert any("1 entry skipped (listed again" in line for line in listing.report())


def test_explicit_list_and_packaged_samples():
    contents = list_contents(
        job(input=["pkg://stylize/samples/tubingen.jpg", "pkg://stylize/samples/chelsea.jpg"])
    )
    assert [c.uri for c in contents] == [
        "pkg://stylize/samples/chelsea.jpg",
        "pkg://stylize/samples/tubingen.jpg",
    ]
    assert [c.rel for c in contents] == ["chelsea.jpg", "tubingen.jpg"]
    folder = list_contents(job(input="pkg://stylize/samples", extensions=["jpg"]))
    assert len(folder) == 6


def test_memory_filesystem(tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/mem-src/x/a.jpg", sample("coffee").read_bytes())
    contents = list_contents(
        job(input="memory://mem-src", output="memory://mem-out", ray={"address": "inline"})
    )
    assert [(c.uri, c.rel) for c in contents] == [("memory:///mem-src/x/a.jpg", "x/a.jpg")]


def test_missing_and_empty_inputs_are_errors(tmp_path):
    with pytest.raises(SourceError, match="no such file or folder"):
        list_contents(job(input=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no files found"):
        list_contents(job(input=str(tmp_path / "empty")))


def test_styles_named_from_files_folders_and_mappings(tmp_path):
    styles = list_styles(
        job(input="x", styles=[str(sample("starry_night")), "pkg://stylize/samples/the_scream.jpg"])
    )
    assert [s.name for s in styles] == ["starry_night", "the_scream"]
    folder = tmp_path / "styles"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(sample("shipwreck").read_bytes())
    (folder / "README.md").write_text("not a style")
    assert [s.name for s in list_styles(job(input="x", styles=str(folder)))] == ["a"]
    mixed = list_styles(
        job(
            input="x",
            styles={
                "mix": [{"uri": str(sample("starry_night")), "weight": 3}, str(sample("shipwreck"))]
            },
        )
    )
    assert mixed[0].name == "mix" and mixed[0].weights == (3.0, 1.0) and len(mixed[0].uris) == 2
    assert (
        mixed[0].key != list_styles(job(input="x", styles={"mix": str(sample("shipwreck"))}))[0].key
    )


def test_bad_styles_stop_the_job_up_front(tmp_path):
    with pytest.raises(SourceError, match="cannot read"):
        list_styles(job(input="x", styles=[str(tmp_path / "missing.jpg")]))
    for d in ("one", "two"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "a.jpg").write_bytes(sample("coffee").read_bytes())
    with pytest.raises(SourceError, match="two styles are named 'a'"):
        list_styles(
            job(input="x", styles=[str(tmp_path / "one/a.jpg"), str(tmp_path / "two/a.jpg")])
        )
    (tmp_path / "broken.jpg").write_bytes(b"GIF89a nonsense")
    styles = list_styles(job(input="x", styles=[str(tmp_path / "broken.jpg")]))
    with pytest.raises(SourceError, match="style broken: .*broken.jpg"):
        check_styles_load(styles, {})


def hostile_tree(tmp_path):
    """A folder with a valid image, a symlink to it (relative), a dangling link, a loop, a
    link to a folder, a FIFO and a hidden file."""
    root = make_inputs(tmp_path / "in", {"a.jpg": "coffee"}, bad=False)
    elsewhere = make_inputs(tmp_path / "elsewhere", {"b.jpg": "chelsea"}, bad=False)
    os.symlink("a.jpg", root / "link.jpg")
    os.symlink(elsewhere / "b.jpg", root / "outside.jpg")
    os.symlink(tmp_path / "nowhere.jpg", root / "dangling.jpg")
    os.symlink("loop2.jpg", root / "loop1.jpg")
    os.symlink("loop1.jpg", root / "loop2.jpg")
    os.symlink(elsewhere, root / "folder.jpg")
    os.mkfifo(root / "fifo.jpg")
    (root / ".hidden.jpg").write_bytes(b"x")
    return root, elsewhere


def test_symlinks_are_followed_or_become_failed_rows_never_vanish(tmp_path):
    root, elsewhere = hostile_tree(tmp_path)
    listing = list_inputs(job(input=str(root)))
    by_rel = {c.rel: c for c in listing.contents}
    assert sorted(by_rel) == [
        "a.jpg",
        "dangling.jpg",
        "folder.jpg",
        "link.jpg",
        "loop1.jpg",
        "loop2.jpg",
        "outside.jpg",
    ]
    # a link to a file: its own path, the target's version tag
    assert by_rel["link.jpg"].uri == str(root / "link.jpg") and not by_rel["link.jpg"].problem
    assert by_rel["link.jpg"].tag == by_rel["a.jpg"].tag
    assert storage.read_bytes(by_rel["outside.jpg"].uri) == (elsewhere / "b.jpg").read_bytes()
    assert "dangling symlink" in by_rel["dangling.jpg"].problem
    assert "nowhere.jpg" in by_rel["dangling.jpg"].problem
    assert by_rel["loop1.jpg"].problem.startswith("symlink loop")
    assert by_rel["folder.jpg"].problem.startswith("symlink to a folder")
    for rel in ("dangling.jpg", "loop1.jpg", "folder.jpg"):  # a worker that reads them fails
        with pytest.raises(OSError):
            storage.read_bytes(by_rel[rel].uri)
    assert {(s.uri, s.reason) for s in listing.skipped} == {
        (str(root / "fifo.jpg"), SPECIAL),
        (str(root / ".hidden.jpg"), HIDDEN),
    }
    report = "\n".join(listing.report())
    assert "1 entry skipped (not a regular file" in report and "fifo.jpg" in report
    assert "2 entries cannot be read, failed rows (symlink loop)" in report
    # the same through a glob, which matches links of any kind
    assert sorted(c.rel for c in list_contents(job(input=f"{root}/*.jpg"))) == sorted(by_rel)


def test_fixing_a_broken_link_gives_a_new_item(tmp_path):
    root, _ = hostile_tree(tmp_path)
    before = {c.rel: c for c in list_contents(job(input=str(root)))}["dangling.jpg"]
    (tmp_path / "nowhere.jpg").write_bytes(sample("coffee").read_bytes())
    after = {c.rel: c for c in list_contents(job(input=str(root)))}["dangling.jpg"]
    assert not after.problem and after.tag != before.tag


def test_list_file_entries_that_cannot_be_read_are_rows(tmp_path):
    root, elsewhere = hostile_tree(tmp_path)
    (tmp_path / "list.txt").write_text(
        "\n".join(
            str(root / n) for n in ("a.jpg", "link.jpg", "dangling.jpg", "loop1.jpg", "missing.jpg")
        )
        + f"\n{elsewhere}\n"
    )
    contents = {c.uri: c for c in list_contents(job(input=str(tmp_path / "list.txt")))}
    assert sorted(contents) == sorted(
        [str(root / n) for n in ("a.jpg", "link.jpg", "dangling.jpg", "loop1.jpg", "missing.jpg")]
        + [str(elsewhere / "b.jpg")]
    )  # a folder in the list is walked
    assert contents[str(root / "missing.jpg")].problem == "no such file"
    assert "dangling" in contents[str(root / "dangling.jpg")].problem
    assert "loop" in contents[str(root / "loop1.jpg")].problem
    assert not contents[str(root / "link.jpg")].problem


def test_skipped_entries_are_reported(tmp_path):
    root = make_inputs(tmp_path / "in", {"a.jpg": "coffee", "sub/b.png": "chelsea"}, bad=False)
    (root / ".git").mkdir()
    for n in range(5):
        (root / ".git" / f"obj{n}").write_bytes(b"x")
    (root / "out").mkdir()
    (root / "out" / "old.png").write_bytes(b"x")
    listing = list_inputs(job(input=str(root), output=str(root / "out"), extensions=["jpg"]))
    assert [c.rel for c in listing.contents] == ["a.jpg"]
    assert sorted((s.uri, s.reason) for s in listing.skipped) == sorted(
        [
            (str(root / ".git"), HIDDEN),  # a hidden folder is one entry, not walked
            (str(root / "out"), IN_OUTPUT),
            (str(root / "sub/b.png"), NOT_EXTENSION),
        ]
    )
    (tmp_path / "hidden-only").mkdir()
    (tmp_path / "hidden-only" / ".DS_Store").write_bytes(b"x")
    with pytest.raises(SourceError, match=r"no files found \(1 entry skipped \(hidden"):
        list_inputs(job(input=str(tmp_path / "hidden-only")))


def test_a_folder_that_cannot_be_listed_is_reported(tmp_path, monkeypatch):
    root = make_inputs(tmp_path / "in", {"a.jpg": "coffee", "locked/b.jpg": "chelsea"}, bad=False)
    scandir = os.scandir

    def refuse(path):  # as a folder without read permission does (root reads every folder)
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refuse)
    listing = list_inputs(job(input=str(root)))
    assert [c.rel for c in listing.contents] == ["a.jpg"]
    assert [(s.uri, s.reason) for s in listing.skipped] == [
        (str(root / "locked"), "folder cannot be listed: Permission denied")
    ]


def test_messages_carry_no_credentials(tmp_path):
    with pytest.raises(SourceError) as e:
        list_styles(job(input="x", styles=["https://user:hunter22@127.0.0.1:9/s.jpg"]))
    assert "hunter22" not in str(e.value) and "https://127.0.0.1:9/s.jpg" in str(e.value)


def test_output_inside_input_through_a_link_is_not_listed(tmp_path):
    """Issue 18, case 4: the output folder named through a link (a link to a folder inside
    the input), or the input named through a link to the folder that holds the output: the
    run's own files are never read back as inputs."""
    root = make_inputs(tmp_path / "in", {"a.jpg": "coffee"}, bad=False)
    (root / "out" / "starry").mkdir(parents=True)
    (root / "out" / "starry" / "a.png").write_bytes(b"x")
    (root / "out" / "manifest.parquet").write_bytes(b"x")
    # the output path is a link into the input
    (tmp_path / "out-link").symlink_to(root / "out", target_is_directory=True)
    listing = list_inputs(job(input=str(root), output=str(tmp_path / "out-link")))
    assert [c.rel for c in listing.contents] == ["a.jpg"]
    assert (str(root / "out"), IN_OUTPUT) in [(s.uri, s.reason) for s in listing.skipped]
    # the input path is a link to the folder that holds the output
    (tmp_path / "in-link").symlink_to(root, target_is_directory=True)
    listing = list_inputs(job(input=str(tmp_path / "in-link"), output=str(root / "out")))
    assert [c.rel for c in listing.contents] == ["a.jpg"]
    # a glob through the link: the output's files are left out one by one
    listing = list_inputs(
        job(input=str(tmp_path / "in-link" / "**" / "*.*"), output=str(root / "out"))
    )
    assert [c.rel for c in listing.contents] == ["a.jpg"]


def test_a_list_that_mixes_hosts_names_its_items_without_credentials(tmp_path):
    """Issue 18, case 6: a list of URLs on two hosts shares no folder, so each item is named
    from its URL; the password and a signed URL's token never reach those names (and so
    neither the output paths nor the manifest's output_uri)."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(sample("coffee").parent))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        listed = tmp_path / "list.csv"
        listed.write_text(
            f"uri\nhttp://user:s3cret@127.0.0.1:{port}/coffee.jpg\n"
            f"http://user:s3cret@localhost:{port}/chelsea.jpg?token=abc123\n"
        )
        listing = list_inputs(job(input=str(listed), output=str(tmp_path / "out")))
    finally:
        server.shutdown()
        server.server_close()
    rels = sorted(c.rel for c in listing.contents)
    assert len(rels) == 2 and not any("s3cret" in r or "abc123" in r or "@" in r for r in rels)
    assert rels[0] == f"127.0.0.1:{port}/coffee.jpg"
