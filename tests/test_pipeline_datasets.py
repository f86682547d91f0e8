"""Datasets the way their users hold them: k styles drawn per content, the input tree mirrored
(ImageFolder reads the output), list columns that travel, WebDataset shards, assign: column,
and a sweep served by one loaded network. Real images, real runs (inline, and on a local Ray
instance for the rerun with other workers)."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import TINY, cli_main, sample, write_job
from PIL import Image

# the bundled samples (CI has no ../shared)
PHOTOS = ("tubingen", "chelsea", "coffee")
PAINTINGS = ("starry_night", "the_scream", "shipwreck")


def _image(name: str) -> Image.Image:
    return Image.open(sample(name)).convert("RGB")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path]:
    """An ImageFolder tree (3 classes x 3 photos, 40 px) and a folder of 24 'paintings'
    (crops of 3 real paintings)."""
    root = tmp_path_factory.mktemp("datasets")
    for c, cls in enumerate(("cat", "dog", "tower")):
        for i in range(3):
            img = _image(PHOTOS[(c * 3 + i) % len(PHOTOS)]).crop((i * 8, c * 8, 400, 300))
            img.thumbnail((40, 40))
            (root / "train" / cls).mkdir(parents=True, exist_ok=True)
            img.save(root / "train" / cls / f"img{i}.jpg", quality=90)
    (root / "styles").mkdir()
    for n in range(24):
        img = _image(PAINTINGS[n % len(PAINTINGS)])
        w, h = img.size
        x, y = (n // 3) % 3 * w // 6, (n // 9) * h // 6
        img.crop((x, y, x + w // 2, y + h // 2)).resize((32, 32)).save(
            root / "styles" / f"painting_{n:02d}.jpg", quality=90
        )
    return root / "train", root / "styles"


def _run(tmp_path: Path, name: str, raw: dict) -> tuple[int, list[dict]]:
    out = tmp_path / name
    raw = {
        "output": str(out),
        "stylize": TINY,
        "ray": {"address": "inline"},
        "report": False,
        **raw,
    }
    code = cli_main(["run", str(write_job(tmp_path / f"{name}.yaml", raw))])
    return code, pq.read_table(out / "manifest.parquet").to_pylist()


def _drawn(rows: list[dict]) -> dict[str, set[str]]:
    by_content: dict[str, set[str]] = {}
    for r in rows:
        by_content.setdefault(r["content_uri"], set()).add(r["style"])
    return by_content


def test_random_styles_mirror_layout_reads_as_the_same_imagefolder(tmp_path, dataset):
    from torchvision.datasets import ImageFolder

    train, styles = dataset
    job = {
        "input": str(train),
        "styles": str(styles),
        "assign": {"random": 2, "seed": 7},
        "layout": "mirror",
        "shard_size": 4,
    }
    code, rows = _run(tmp_path, "out", job)
    assert code == 0
    drawn = _drawn(rows)
    assert len(drawn) == 9 and all(len(s) == 2 for s in drawn.values())  # 2 distinct styles
    assert Counter(r["status"] for r in rows) == {"ok": 18}
    assert len({s for v in drawn.values() for s in v}) > 4  # drawn from the set, not fixed

    before, after = ImageFolder(str(train)), ImageFolder(str(tmp_path / "out" / "images"))
    assert after.classes == before.classes == ["cat", "dog", "tower"]
    assert Counter(after.targets) == Counter({c: 2 * n for c, n in Counter(before.targets).items()})
    for r in rows:  # {stem}__{style}.png beside where the input was
        rel = Path(r["output_uri"]).relative_to(tmp_path / "out" / "images")
        assert rel.parent == Path(r["content_uri"]).relative_to(train).parent
        assert rel.name == f"{Path(r['content_uri']).stem}__{r['style']}.png"
        assert Image.open(r["output_uri"]).size == (r["width"], r["height"])

    # Another shard size, two Ray workers, and one more content: the same draw for the rest.
    extra = train / "dog" / "img9.jpg"
    _image("coffee").resize((40, 30)).save(extra)
    try:
        code, again = _run(
            tmp_path,
            "again",
            {
                **job,
                "shard_size": 3,
                "ray": {"address": None, "num_workers": 2, "gpus_per_worker": 0},
            },
        )
    finally:
        extra.unlink()
    assert code == 0
    redrawn = _drawn(again)
    assert {k: v for k, v in redrawn.items() if k != str(extra)} == drawn
    # a resume in the same folder has nothing to do
    code, same = _run(tmp_path, "out", job)
    assert code == 0 and _drawn(same) == drawn


def test_list_columns_travel_to_the_manifest_and_the_webdataset_shards(tmp_path, dataset):
    import webdataset as wds

    train, styles = dataset
    files = sorted(train.rglob("*.jpg"))[:5]
    listing = tmp_path / "list.csv"
    with listing.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "caption"])
        for n, p in enumerate(files):
            w.writerow([str(p), n % 3, f"photo número {n}"])
    job = {
        "input": str(listing),
        "styles": [str(sample("starry_night"))],
        "container": "webdataset",
        "shard_size": 2,
    }
    code, rows = _run(tmp_path, "wds", job)
    assert code == 0 and len(rows) == 5
    table = pq.read_table(tmp_path / "wds" / "manifest.parquet")
    assert str(table.schema.field("label").type) == "int64"  # typed as in the input
    by_uri = {r["content_uri"]: r for r in rows}
    for n, p in enumerate(files):
        assert by_uri[str(p)]["label"] == n % 3
        assert by_uri[str(p)]["caption"] == f"photo número {n}"

    tars = sorted((tmp_path / "wds" / "shards").glob("*.tar"))
    assert [t.name for t in tars] == ["00000.tar", "00001.tar", "00002.tar"]
    assert not (tmp_path / "wds" / "starry_night").exists()
    seen = {}
    for t in tars:
        with tarfile.open(t) as tf:
            names = tf.getnames()
            assert len(names) == 2 * len({n.split(".")[0] for n in names})
            for n in names:
                if n.endswith(".json"):
                    meta = json.loads(tf.extractfile(n).read())
                    img = Image.open(io.BytesIO(tf.extractfile(n[:-5] + ".png").read()))
                    assert img.size == (meta["width"], meta["height"])
                    seen[meta["content_uri"]] = meta
    assert {u: m["label"] for u, m in seen.items()} == {str(p): n % 3 for n, p in enumerate(files)}
    samples = list(wds.WebDataset([str(t) for t in tars], shardshuffle=False).decode("pil"))
    assert len(samples) == 5 and all(s["png"].size[0] > 0 for s in samples)
    assert sorted(s["json"]["label"] for s in samples) == sorted(n % 3 for n in range(5))
    for r in rows:  # rows name their sample: shards/NNNNN.tar#key.png
        assert r["output_uri"].split("#")[0].endswith(".tar") and r["item_id"] in r["output_uri"]


def test_a_list_column_colliding_with_a_manifest_column_is_refused(tmp_path, dataset, capsys):
    train, _ = dataset
    listing = tmp_path / "list.csv"
    listing.write_text(f"path,status\n{next(train.rglob('*.jpg'))},x\n")
    raw = {
        "input": str(listing),
        "styles": [str(sample("starry_night"))],
        "output": str(tmp_path / "o"),
        "stylize": TINY,
        "ray": {"address": "inline"},
    }
    assert cli_main(["run", str(write_job(tmp_path / "j.yaml", raw))]) == 2
    assert "column 'status'" in capsys.readouterr().err


def test_assign_column_pairs_each_row_with_its_style(tmp_path, dataset):
    train, styles = dataset
    files = sorted(train.rglob("*.jpg"))[:3]
    (tmp_path / "pairs.jsonl").write_text(
        "\n".join(
            json.dumps({"uri": str(p), "style": s})
            for p, s in zip(files, ["painting_01", "painting_05", "no_such_painting"])
        )
        + "\n"
    )
    code, rows = _run(
        tmp_path,
        "pairs",
        {"input": str(tmp_path / "pairs.jsonl"), "styles": str(styles), "assign": "column"},
    )
    assert code == 1 and len(rows) == 3
    assert [(r["style"], r["status"]) for r in rows] == [
        ("painting_01", "ok"),
        ("painting_05", "ok"),
        ("no_such_painting", "failed_other"),
    ]
    assert "no_such_painting" in rows[2]["error_message"]


def test_a_sweep_makes_one_item_per_point_with_its_options_in_the_manifest(tmp_path):
    sweep = {"style_layers": [["relu1_1"], ["relu1_1", "relu2_1"]], "style_weight": [1e2, 1e4]}
    code, rows = _run(
        tmp_path,
        "sweep",
        {
            "input": str(sample("tubingen")),
            "styles": [str(sample("starry_night"))],
            "sweep": sweep,
            "stylize": {**TINY, "init": "noise"},
            "grid": {"cell_size": 64},
            "report": True,
        },
    )
    assert code == 0 and len(rows) == 4
    points = [(tuple(r["style_layers"]), r["style_weight"]) for r in rows]
    assert points == [
        (("relu1_1",), 1e2),
        (("relu1_1",), 1e4),
        (("relu1_1", "relu2_1"), 1e2),
        (("relu1_1", "relu2_1"), 1e4),
    ]
    assert len({r["output_uri"] for r in rows}) == 4
    pixels = {r["output_uri"]: Image.open(r["output_uri"]).tobytes() for r in rows}
    assert len(set(pixels.values())) == 4  # every point its own picture
    page = Image.open(tmp_path / "sweep" / "grid-sweep-001.png")
    assert page.width > 2 * 64 and page.height > 2 * 64  # 2 x 2 cells and their labels
    index = (tmp_path / "sweep" / "report" / "index.html").read_text()
    assert 'src="../grid-sweep-001.png"' in index  # the report shows the sweep's grid


def test_a_swept_key_named_like_a_manifest_column_gets_a_prefix(tmp_path):
    code, rows = _run(
        tmp_path,
        "iters",
        {
            "input": str(sample("tubingen")),
            "styles": [str(sample("starry_night"))],
            "sweep": {"iterations": [2, 4]},
            "stylize": {**TINY, "early_stopping": False},
        },
    )
    assert code == 0
    assert [(r["sweep_iterations"], r["iterations"]) for r in rows] == [(2, 2), (4, 4)]


def test_a_broken_style_among_many_fails_its_rows_not_the_job(tmp_path, dataset):
    """With more styles than the driver decodes up front (16), a style that is not an image
    is found by the worker: its items are failed_decode rows naming it, the rest are ok."""
    _, styles = dataset
    folder = tmp_path / "styles"
    folder.mkdir()
    for p in sorted(styles.glob("*.jpg"))[:20]:
        (folder / p.name).write_bytes(p.read_bytes())
    broken = sorted(folder.glob("*.jpg"))[4]  # not among the 16 decoded on the driver
    broken.write_bytes(b"not a painting")
    code, rows = _run(
        tmp_path, "many", {"input": str(sample("tubingen")), "styles": str(folder), "shard_size": 8}
    )
    assert code == 1 and len(rows) == 20
    bad = [r for r in rows if r["status"] != "ok"]
    assert [(r["style"], r["status"]) for r in bad] == [(broken.stem, "failed_decode")]
    assert bad[0]["error_message"].startswith(f"style {broken.stem}: ")
