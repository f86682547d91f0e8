"""The Ray Data stage (pipeline.raydata): the real engine on tiny images, in this process for
the batch formats and the row semantics, and in real local Ray Data pipelines (from_items,
read_parquet, take_all, write_parquet, write_webdataset) on CPU actors."""

from __future__ import annotations

import importlib.util
import io
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray.data
import torch
from conftest import sample
from PIL import Image

from pipeline.driver import run_job
from pipeline.items import StyleDraw
from pipeline.jobconfig import JobConfigError, job_from_mapping
from pipeline.raydata import OUTPUT_COLUMN, OUTPUT_SCHEMA, StylizeBatch, check_settings
from pipeline.sources import SourceError
from stylize.engine import Style, Stylizer
from stylize.figures import FIGURES
from stylize.images import decode_image, to_tensor

STYLES = {
    "starry": str(sample("starry_night")),
    "scream": str(sample("the_scream")),
    "cat": str(sample("chelsea")),
}
STYLE_FILES = {**STYLES, **{Path(p).stem: p for p in STYLES.values()}}  # by either name
# init: content; 10 steps: past L-BFGS's first, which may overshoot
ENGINE = {"preset": "fast", "size": 32, "iterations": 10}
SHAPES = {"tubingen": (60, 40), "coffee": (36, 56), "shipwreck": (44, 44)}  # (w, h): 3 sizes
CORRUPT = sample("tubingen").read_bytes()[:2000]  # a JPEG cut short
NOT_AN_IMAGE = b"plain text, not an image\n"
ROOT = "s3://bucket/photos"  # where the rows' paths say they come from


def photo(name: str) -> bytes:
    """A bundled sample at its small test size, as a lossless PNG."""
    buf = io.BytesIO()
    Image.open(sample(name)).convert("RGB").resize(SHAPES[name]).save(buf, "PNG")
    return buf.getvalue()


def input_rows() -> list[dict]:
    rows = [
        {"bytes": photo(n), "path": f"bucket/photos/{n}.png", "label": i}
        for i, n in enumerate(SHAPES)
    ]
    rows.append({"bytes": CORRUPT, "path": "bucket/photos/cut.jpg", "label": 10})
    rows.append({"bytes": NOT_AN_IMAGE, "path": "bucket/photos/notes.txt", "label": 11})
    return rows


def as_dict(rows: list[dict]) -> dict[str, np.ndarray]:
    return {
        k: np.array([r[k] for r in rows], dtype=object if k != "label" else None) for k in rows[0]
    }


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """torch on one thread in this process, as in a one-CPU actor (two threads on a shared
    two-core machine run several times slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def stage():
    """One stage in this process (VGG-19 loaded once for the module): one style."""
    return StylizeBatch(styles={"starry": STYLES["starry"]}, stylize=ENGINE)


@pytest.fixture(scope="module")
def engine():
    """The engine alone, to measure how far the inputs themselves are from the styles."""
    cfg = job_from_mapping({"input": "x", "output": "y", "styles": ["s"], "stylize": ENGINE})
    return Stylizer(cfg.stylize)


def own_style_loss(st: Stylizer, content: bytes, style: str) -> float:
    """The style loss of the content image itself (the start of init: content), prepared as
    the stage prepares it."""
    c = st.prepare_content(decode_image(content))[None].to(st.device)  # (1, 3, h, w)
    target = Style(style, (to_tensor(decode_image(STYLE_FILES[style])),))
    taps = st.cfg.content_layers + st.cfg.style_layers
    with st.numerics():
        return float(st.loss_for(c, [target])(st.features(c, taps), c)[2][0])


def check_rows(rows: list[dict], engine: Stylizer, styles_per_row: int = 1) -> None:
    """The stage's promises for input_rows(): one output row per input row and style, the
    input's columns carried, failures as rows with messages, outputs at the engine's size
    and closer to their style than the photo was."""
    by_path: dict[str, list[dict]] = {}
    for r in rows:
        by_path.setdefault(r["path"], []).append(r)
    assert sorted(by_path) == sorted(r["path"] for r in input_rows())
    assert {len(v) for v in by_path.values()} == {styles_per_row}
    sources = {r["path"]: r for r in input_rows()}
    for path, outs in by_path.items():
        for r in outs:
            assert r["label"] == sources[path]["label"]
            if path.endswith(("cut.jpg", "notes.txt")):
                assert r["status"] == "failed_decode" and r[OUTPUT_COLUMN] is None
                assert r["gram_distance"] is None and r["content_distance"] is None
                assert r["error_message"].startswith(path + ": ")
                assert ("not an image" if path.endswith(".txt") else "truncated") in r[
                    "error_message"
                ]
                continue
            assert r["status"] == "ok" and r["error_message"] is None, r["error_message"]
            img = decode_image(r[OUTPUT_COLUMN])
            w, h = SHAPES[path.rsplit("/", 1)[1][:-4]]
            assert img.size == (r["width"], r["height"]) and max(img.size) == 32
            assert (img.width >= img.height) == (w >= h)
            assert r["iterations"] == 10 and r["total_loss"] > 0 and r["duration_s"] > 0
            assert r["style_loss"] < own_style_loss(engine, sources[path]["bytes"], r["style"])
            # the quality figures the worker took travel with the row, as in a manifest
            assert all(r[f] is not None and r[f] >= 0 for f in FIGURES), r
            assert r["content_distance"] > 0 and r["gram_distance"] > 0


# ------------------------------------------------------------------------ in this process


@pytest.mark.slow
def test_every_batch_format_gives_the_same_rows(stage, engine):
    rows = input_rows()
    table = pa.Table.from_pylist(rows)
    outputs = [stage(as_dict(rows)), stage(table.to_pandas()), stage(table)]
    for out in outputs:
        assert out.schema.names == ["path", "label", *OUTPUT_SCHEMA.names]
        assert out.schema.field(OUTPUT_COLUMN).type == pa.binary()
        assert out.schema.field("width").type == pa.int32()
    check_rows(outputs[0].to_pylist(), engine)
    same = [
        [{k: v for k, v in r.items() if k not in ("duration_s", "worker")} for r in out.to_pylist()]
        for out in outputs
    ]
    assert same[0] == same[1] == same[2]
    empty = stage(table.slice(0, 0))
    assert empty.num_rows == 0 and empty.schema.names == outputs[0].schema.names


@pytest.mark.slow
def test_decoded_images_of_any_sizes_equal_the_encoded_ones(stage):
    """read_images' form: HWC uint8 arrays of different sizes in one batch, plus a grey one
    and an array that is no image."""
    names = list(SHAPES)
    arrays = [np.asarray(decode_image(photo(n))) for n in names]
    grey = np.asarray(decode_image(photo("coffee")).convert("L"))  # (H, W)
    batch = {
        "image": np.array([*arrays, grey, np.zeros(5, np.uint8)], dtype=object),
        "path": np.array([f"{n}.png" for n in names] + ["grey.png", "flat.npy"]),
    }
    out = stage(batch).to_pylist()
    encoded = stage({"bytes": np.array([photo(n) for n in names], dtype=object)}).to_pylist()
    assert [r["status"] for r in out] == ["ok"] * 4 + ["failed_decode"]
    for a, b in zip(out[:3], encoded, strict=True):
        assert np.array_equal(
            np.asarray(decode_image(a[OUTPUT_COLUMN])), np.asarray(decode_image(b[OUTPUT_COLUMN]))
        )
    assert decode_image(out[3][OUTPUT_COLUMN]).size == (21, 32)
    assert out[4]["error_message"].startswith("flat.npy: not an image: an array of shape (5,)")


@pytest.mark.slow
def test_style_column_names_each_rows_style(tmp_path):
    st = StylizeBatch(styles=[STYLES["starry"], STYLES["scream"]], stylize=ENGINE, assign="column")
    batch = pa.table(
        {
            "bytes": [photo("tubingen"), photo("coffee"), photo("coffee")],
            "style": ["the_scream", "starry_night", "monet"],
        }
    )
    out = st(batch).to_pylist()
    assert [(r["style"], r["status"]) for r in out] == [
        ("the_scream", "ok"),
        ("starry_night", "ok"),
        ("monet", "failed_other"),
    ]
    assert out[2]["error_message"] == (
        "row 2 of its batch: its style column names 'monet', not one of the job's styles"
    )


def test_out_of_memory_is_a_failed_row(stage, monkeypatch):
    def too_big(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64 GiB")

    monkeypatch.setattr(stage.worker.stylizer, "stylize_batch", too_big)
    out = stage(
        pa.table({"bytes": [photo("tubingen"), photo("tubingen")], "path": ["a.png", "b.png"]})
    ).to_pylist()
    assert [r["status"] for r in out] == ["failed_oom"] * 2
    assert out[1]["error_message"].startswith("b.png: out of device memory at 32x21 even alone")


def test_a_batch_set_up_wrongly_raises(stage):
    with pytest.raises(ValueError, match="no image column in the batch .*image_column="):
        stage({"data": np.array([b"x"], dtype=object)})
    with pytest.raises(ValueError, match=r"\['status'\] would be overwritten"):
        stage({"bytes": np.array([b"x"], dtype=object), "status": np.array(["new"])})
    with pytest.raises(ValueError, match="assign='column'"):
        stage({"bytes": np.array([b"x"], dtype=object), "style": np.array(["starry"])})


def test_settings_are_validated_as_a_job_validates_them():
    bad = {"styles": STYLES, "stylize": {"size": 8, "sise": 32}, "output_format": "gif"}
    with pytest.raises(JobConfigError) as stage_error:
        check_settings(**bad)
    with pytest.raises(JobConfigError) as job_error:
        job_from_mapping({"input": "in", "output": "out", **bad})
    assert str(stage_error.value) == str(job_error.value)
    assert "did you mean 'stylize.size'" in str(stage_error.value)
    with pytest.raises(JobConfigError, match="^output: a key of `stylize run` jobs"):
        check_settings(styles=STYLES, output="out")
    with pytest.raises(
        JobConfigError, match="assign.random: 4 styles per content, but the style set has 3"
    ):
        check_settings(styles=STYLES, assign={"random": 4})
    with pytest.raises(SourceError, match="missing.jpg"):
        check_settings(styles=[str(Path(STYLES["cat"]).with_name("missing.jpg"))])


@pytest.mark.slow
def test_same_images_as_stylize_run(tmp_path):
    """The stage and `stylize run` (inline) at the same settings: the same k styles drawn for
    each photo, the same pixels from the same seeded noise (gatys2016: init noise)."""
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "tubingen.png").write_bytes(photo("tubingen"))
    (folder / "sub" / "coffee.png").write_bytes(photo("coffee"))
    keys = {
        "styles": STYLES,
        "stylize": {"size": 32, "iterations": 4, "seed": 7},
        "assign": {"random": 2, "seed": 3},
    }
    job = job_from_mapping(
        {
            "input": str(folder),
            "output": str(tmp_path / "out"),
            **keys,
            "ray": {"address": "inline"},
            "report": False,
        }
    )
    assert run_job(job, stream=io.StringIO()).exit_code == 0
    made = {
        (r["content_uri"], r["style"]): r["output_uri"]
        for r in pq.read_table(tmp_path / "out" / "manifest.parquet").to_pylist()
    }
    assert len(made) == 4

    st = StylizeBatch(**keys, relative_to=str(folder))
    paths = [str(folder / "tubingen.png"), str(folder / "sub" / "coffee.png")]
    out = st(
        {
            "bytes": np.array([Path(p).read_bytes() for p in paths], dtype=object),
            "path": np.array(paths),
        }
    ).to_pylist()
    assert {(r["path"], r["style"]) for r in out} == set(made)
    for r in out:
        mine = np.asarray(decode_image(r[OUTPUT_COLUMN]))
        theirs = np.asarray(decode_image(Path(made[r["path"], r["style"]]).read_bytes()))
        assert np.array_equal(mine, theirs), (r["path"], r["style"])


# ---------------------------------------------------------------------- real Ray Data


def _actors(**pool) -> dict:
    """Two actors of half a CPU each: the 2-CPU test instance keeps room for Ray Data's read
    and write tasks (actors holding every CPU would starve them: the pipeline would hang)."""
    return {"compute": ray.data.ActorPoolStrategy(**(pool or {"size": 2})), "num_cpus": 0.5}


@pytest.mark.slow
def test_from_items_with_k_random_styles(ray_session, engine):
    keys = {"styles": STYLES, "stylize": ENGINE, "assign": {"random": 2, "seed": 5}}
    ds = ray.data.from_items(input_rows())
    rows = ds.map_batches(
        StylizeBatch, fn_constructor_kwargs={**keys, "relative_to": ROOT}, batch_size=2, **_actors()
    ).take_all()
    assert len(rows) == 2 * len(input_rows())
    check_rows(rows, engine, styles_per_row=2)
    names = list(STYLES)
    draw = StyleDraw(names, 2, 5)  # what `stylize run` gives the same relative paths
    for r in input_rows():
        rel = r["path"].removeprefix("bucket/photos/")
        assert {o["style"] for o in rows if o["path"] == r["path"]} == {names[i] for i in draw(rel)}
    assert len({o["worker"] for o in rows if o["status"] == "ok"}) >= 1


@pytest.mark.slow
def test_read_parquet_and_write_parquet(ray_session, engine, tmp_path):
    (tmp_path / "inputs").mkdir()
    rows = input_rows()
    for n, part in enumerate((rows[:3], rows[3:])):  # a list of two Parquet files
        pq.write_table(pa.Table.from_pylist(part), tmp_path / "inputs" / f"{n}.parquet")
    keys = {"styles": [STYLES["starry"]], "stylize": ENGINE, "output_format": "png"}
    ds = ray.data.read_parquet(str(tmp_path / "inputs"))
    # an autoscaling pool: Ray Data may read the two small files as one block
    ds = ds.map_batches(
        StylizeBatch, fn_constructor_kwargs=keys, batch_size=2, **_actors(min_size=1, max_size=2)
    )
    ds.write_parquet(str(tmp_path / "out"))
    table = pq.read_table(tmp_path / "out")
    assert table.num_rows == len(input_rows())
    assert table.schema.field(OUTPUT_COLUMN).type == pa.binary()
    assert table.schema.field("iterations").type == pa.int32()
    rows = table.to_pylist()
    assert {r["style"] for r in rows} == {"starry_night"}
    check_rows(rows, engine)


@pytest.mark.slow
def test_the_example_runs(ray_session, tmp_path):
    path = Path(__file__).resolve().parents[1] / "examples" / "raydata_stylize.py"
    spec = importlib.util.spec_from_file_location("raydata_stylize", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = tmp_path / "shards"
    assert (
        example.main(
            [
                "--size",
                "32",
                "--iterations",
                "2",
                "--random",
                "1",
                "--format",
                "webdataset",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    names = []
    for tar in out.glob("*.tar"):
        with tarfile.open(tar) as f:
            names += f.getnames()
    assert sorted(n.rsplit(".", 1)[1] for n in names) == ["json"] * 4 + ["png"] * 4
