"""Issue 4's correctness checks: buckets, batched and compiled paths, the benchmark's JSON."""

import json
import math

import pytest
import torch

from pipeline import bench_cmd
from stylize import bench
from stylize.config import resolve_config
from stylize.engine import Style, Stylizer
from stylize.images import MAX_ASPECT_CHANGE, bucket_shape, decode_image, resize_bucket, to_tensor


def _aspect_change(w, h, bw, bh):
    r = (bw / bh) / (w / h)
    return max(r, 1 / r) - 1


@pytest.mark.parametrize("size", [64, 128, 512, 1024])
def test_buckets_keep_aspect_within_bound_and_longest_side(size):
    shapes = set()
    for w in range(40, 4000, 37):
        for h in (50, 333, 480, 768, 1080, 1528, 3024):
            bw, bh = bucket_shape(w, h, size)
            assert max(bw, bh) == size
            assert (bw - bh) * (w - h) >= 0  # orientation kept (a near-square may snap to square)
            exact = (
                (size, max(1, round(size * h / w)))
                if w >= h
                else (max(1, round(size * w / h)), size)
            )
            # within the bound, or a side so short that whole pixels cannot meet it
            assert _aspect_change(w, h, bw, bh) <= MAX_ASPECT_CHANGE + 1e-9 or (bw, bh) == exact, (
                w,
                h,
                bw,
                bh,
            )
            shapes.add((bw, bh))
    # ordinary photo aspects (1:1 .. 2:1, both orientations) share few shapes
    photos = {bucket_shape(w, h, size) for w in range(1000, 2001, 10) for h in (1000,)}
    assert len(photos) <= 10


def test_common_photo_aspects_share_a_bucket():
    # 4032x3024 (4:3 phone) and 1600x1200 and 1599x1201 land on one shape
    assert (
        bucket_shape(4032, 3024, 512)
        == bucket_shape(1600, 1200, 512)
        == bucket_shape(1599, 1201, 512)
    )


def test_resize_bucket_on_a_real_image():
    from importlib import resources

    raw = (resources.files("stylize") / "samples" / "tubingen.jpg").read_bytes()
    img = decode_image(raw)
    out = resize_bucket(img, 128)
    assert out.size == bucket_shape(img.width, img.height, 128)


def _inputs(n, size=32):
    raws = bench.sample_bytes(n)
    contents = [bench.square(r, size) for r in raws]
    style = Style("starry", (to_tensor(decode_image(bench.sample_bytes(6)[-1])),))
    return contents, style


def test_batched_path_matches_plain_loop():
    contents, style = _inputs(3)
    # few steps: float rounding differs between batch sizes and L-BFGS amplifies it later
    cfg = resolve_config(size=32, iterations=4, init="content", device="cpu", batch_size=3)
    engine = Stylizer(cfg)
    batched = engine.stylize_batch(contents, [style] * 3)
    plain = [engine.stylize_batch([c], [style])[0] for c in contents]
    for b, p in zip(batched, plain):
        assert torch.allclose(b.image, p.image, atol=0.05)
        assert math.isclose(b.total_loss, p.total_loss, rel_tol=1e-3)


def test_compiled_path_matches_eager():
    pytest.importorskip("torch._inductor")
    contents, style = _inputs(2)
    cfg = resolve_config(size=32, iterations=4, init="content", device="cpu")
    eager = Stylizer(cfg).stylize_batch(contents, [style] * 2)
    compiled_engine = Stylizer(cfg.replace(compile=True))
    compiled = compiled_engine.stylize_batch(contents, [style] * 2)
    assert compiled_engine.compiled, "compilation fell back to eager"
    for a, b in zip(eager, compiled):
        assert torch.allclose(a.image, b.image, atol=0.05)
        assert math.isclose(a.total_loss, b.total_loss, rel_tol=1e-3)
    # Another batch size (as when images stop early and leave the batch) reuses the graphs.
    built = bench.dynamo_graphs()
    again = compiled_engine.stylize_batch(contents[:1] * 3, [style] * 3)
    assert bench.dynamo_graphs() == built, "a new batch size recompiled the network"
    assert math.isclose(again[0].total_loss, compiled[0].total_loss, rel_tol=1e-3)


def test_compile_failure_falls_back_to_eager(monkeypatch):
    contents, style = _inputs(1)
    cfg = resolve_config(size=32, iterations=3, init="content", device="cpu")
    engine = Stylizer(cfg)

    def broken(*_args):
        raise RuntimeError("simulated compiler failure")

    engine.objective._compiled = broken
    with pytest.warns(UserWarning, match="running eager"):
        result = engine.stylize_batch(contents, [style])[0]
    assert not engine.compiled
    assert result.iterations == 3 and math.isfinite(result.total_loss)


def test_bench_json_has_its_keys(capsys):
    rc = bench_cmd.main(
        [
            "--images",
            "2",
            "--size",
            "32",
            "--iterations",
            "3",
            "--batch",
            "2",
            "--device",
            "cpu",
            "--json",
        ]
    )
    assert rc == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    data = json.loads(last)
    for key in (
        "ms_per_image_iter",
        "baseline_ms_per_image_iter",
        "speedup",
        "images_per_hour",
        "peak_memory_mb",
        "final_loss",
        "baseline_final_loss",
        "size",
        "iterations",
        "batch",
        "precision",
        "device",
        "device_name",
    ):
        assert key in data, key
    assert data["ms_per_image_iter"] > 0 and data["baseline_ms_per_image_iter"] > 0
    assert data["batch"] == 2 and data["precision"] == "fp32"
    assert math.isclose(
        data["speedup"],
        data["baseline_ms_per_image_iter"] / data["ms_per_image_iter"],
        rel_tol=0.01,
    )
    # the same plain fp32 problem: final losses agree closely after 3 steps
    assert math.isclose(data["final_loss"], data["baseline_final_loss"], rel_tol=0.02)


def test_bench_profile_says_where_the_time_goes(capsys):
    rc = bench_cmd.main(
        [
            "--images",
            "2",
            "--size",
            "32",
            "--iterations",
            "3",
            "--batch",
            "2",
            "--device",
            "cpu",
            "--baseline-images",
            "0",
            "--profile",
            "2",
            "--json",
        ]
    )
    assert rc == 0
    prof = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["profile"]
    assert prof["images"] == 2 and prof["iterations"] == 2
    phases = prof["phases_ms_per_image_iter"]
    assert set(phases) == {"objective", "backward", "step"} and min(phases.values()) > 0
    # the phases happen inside the profiled call: together no more than its wall time
    assert sum(phases.values()) <= prof["wall_ms_per_image_iter"] * 1.05
    names = [k["name"] for k in prof["top"]]
    assert any("conv" in n for n in names[:3]), names  # VGG's convolutions lead on a CPU
    shares = [k["share"] for k in prof["top"]]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1.0 + 1e-6
