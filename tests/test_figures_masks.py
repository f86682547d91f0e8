"""Region-aware quality figures (stylize.figures) of items with spatial-control masks: the
style figures of a masked item are its regions' (the output's statistics under each region's
mask against that region's style), weighted by area; content_distance stays the whole
picture's; unmasked items keep the figures they had. In the worker's rows (a masked job run
inline) and recomputed by ``stylize quality OUTPUT``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from conftest import cli_main, sample, write_job
from PIL import Image

from stylize import figures as fg
from stylize.engine import Style, Stylizer
from stylize.images import decode_image, to_tensor

# /work/shared/images (README.md there: The Scream and The Starry Night are public domain,
# the Tübingen photo CC BY 3.0, Andreas Praefcke); the bundled samples where it is absent
SHARED = Path(__file__).resolve().parents[2] / "shared" / "images"
H, W = 192, 256  # the synthetic picture: deep layers need a few positions per half (relu5_1: 12x16)
# The figures of the unmasked picture against The Scream, as stylize/figures.py gave them
# before the regions (commit 958ed83), from the shared images
BEFORE = {
    "content_distance": 2.1197926304253953,
    "gram_distance": 0.3914845747416803,
    "w2_distance": 0.31793325958864466,
    "color_distance": 0.22779140187733207,
}


def _image(name: str) -> torch.Tensor:
    path = SHARED / f"{name}.jpg"
    return to_tensor(decode_image(str(path if path.exists() else sample(name))))


def _at(img: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return F.interpolate(img[None], size=(h, w), mode="area")[0]


@pytest.fixture(scope="module")
def two_styles():
    """The left half of The Scream (style A) beside the right half of The Starry Night (B),
    each painting resized to the picture; the Tübingen photo as its content; a left mask."""
    net = Stylizer(fg.network_config("cpu"))
    scream, starry = _image("the_scream"), _image("starry_night")
    half = W // 2
    picture = torch.cat([_at(scream, H, W)[:, :, :half], _at(starry, H, W)[:, :, half:]], 2)
    left = torch.zeros(H, W)
    left[:, :half] = 1
    a, b = (fg.style_stats(net.features, [s], [1.0], W) for s in (scream, starry))
    return SimpleNamespace(
        net=net,
        picture=picture,
        content=_at(_image("tubingen"), H, W),
        left=left,
        a=a,
        b=b,
        images=(scream, starry),
    )


def _figures(t, styles, regions):
    n = len(styles)
    batch = t.picture[None].expand(n, -1, -1, -1)
    contents = t.content[None].expand(n, -1, -1, -1)
    return fg.figures(t.net.features, batch, contents, styles, regions=regions)


@pytest.mark.slow
def test_a_two_style_picture_is_near_its_two_styles_region_by_region(two_styles):
    t = two_styles
    regions = [(t.a, t.left), (t.b, 1 - t.left)]
    swapped = [(t.b, t.left), (t.a, 1 - t.left)]
    whole_a, whole_b, by_region, wrong = _figures(
        t, [t.a, t.b, t.a, t.a], [None, None, regions, swapped]
    )
    for name, got in (("whole vs A", whole_a), ("whole vs B", whole_b)):
        print(name, got)
    print("regions", by_region, "swapped", wrong)
    for f in ("gram_distance", "w2_distance"):
        assert by_region[f] < 0.5 * whole_a[f], f  # measured 0.28x (gram), 0.41x (w2)
        assert by_region[f] < whole_b[f], f  # nearer than to either style alone
        assert wrong[f] > 2 * by_region[f], f  # the figure sees which side is which
    colour = by_region["color_distance"]
    assert colour < 0.5 * min(whole_a["color_distance"], whole_b["color_distance"])
    assert wrong["color_distance"] > 2 * colour
    # content_distance is the whole picture's, masks or not
    assert len({g["content_distance"] for g in (whole_a, whole_b, by_region, wrong)}) == 1


@pytest.mark.slow
def test_an_unmasked_call_gives_the_figures_it_gave_before(two_styles):
    t = two_styles
    plain = _figures(t, [t.a], None)
    if (SHARED / "the_scream.jpg").exists():  # the numbers of the code before the regions
        assert plain[0] == pytest.approx(BEFORE, rel=1e-6)
    # a masked item in the same batch changes nothing of an unmasked one's figures
    mixed = _figures(t, [t.a, t.a], [None, [(t.a, t.left), (t.b, 1 - t.left)]])
    # (equal but for the last bits: a batch of two runs other convolution kernels on a CPU)
    assert mixed[0] == pytest.approx(plain[0], rel=1e-9)
    # a white mask, a uniform soft mask: the unmasked statistics; a black foreground beside
    # a white background: the background's style alone
    ones = torch.ones(H, W)
    white, soft, black, against_b = _figures(
        t,
        [t.a, t.a, t.a, t.b],
        [[(t.a, ones)], [(t.a, 0.5 * ones)], [(t.a, 0 * ones), (t.b, ones)], None],
    )
    for f in fg.FIGURES:
        assert white[f] == pytest.approx(plain[0][f], rel=1e-6), f
        assert soft[f] == pytest.approx(plain[0][f], rel=1e-6), f
        assert black[f] == pytest.approx(against_b[f], rel=1e-6), f


@pytest.mark.slow
def test_the_taker_takes_the_engines_regions(two_styles):
    t = two_styles
    scream, starry = (Style(k, (img,)) for k, img in zip(("scream", "starry"), t.images))
    taker = fg.FigureTaker(t.net.features)
    got = taker.take(
        t.picture[None],
        t.content[None],
        [scream],
        regions=[[(scream, t.left), (starry, 1 - t.left)]],
    )
    assert taker.failed == []
    direct = _figures(t, [t.a], [[(t.a, t.left), (t.b, 1 - t.left)]])
    assert got[0] == pytest.approx(direct[0], rel=1e-9)


def _stand_in(x: torch.Tensor, taps) -> dict[str, torch.Tensor]:
    """A network in miniature: each tap the pixels (3 channels) pooled 2x more than the last."""
    return {tap: F.avg_pool2d(x.float(), 2**i) for i, tap in enumerate(fg.TAPS)}


def test_region_figures_with_a_stand_in_network_and_a_region_that_cannot_be_measured():
    gen = torch.Generator().manual_seed(0)
    h, w = 64, 64
    red = torch.rand(3, h, w, generator=gen) * torch.tensor([200.0, 40.0, 40.0])[:, None, None]
    blue = torch.rand(3, h, w, generator=gen) * torch.tensor([40.0, 40.0, 200.0])[:, None, None]
    a, b = (fg.style_stats(_stand_in, [s], [1.0], w) for s in (red, blue))
    picture = torch.cat([red[:, :, : w // 2], blue[:, :, w // 2 :]], 2)
    left = torch.zeros(h, w)
    left[:, : w // 2] = 1
    batch = picture[None].expand(3, -1, -1, -1)
    failed: list[str] = []
    with torch.no_grad():
        content = _stand_in(batch, (fg.CONTENT_LAYER,))[fg.CONTENT_LAYER]
        whole, by_region, blank = fg._figures(
            _stand_in,
            batch,
            content,
            [a, a, a],
            failed,
            [None, [(a, left), (b, 1 - left)], [(a, 0 * left)]],
        )
    for f in ("gram_distance", "w2_distance", "color_distance"):
        assert by_region[f] is not None and whole[f] is not None
        assert by_region[f] < 0.25 * whole[f], f
    # a masked item whose styled regions cover nothing has no style figures; the others stay
    assert [blank[f] for f in ("gram_distance", "w2_distance", "color_distance")] == [None] * 3
    assert blank["content_distance"] == whole["content_distance"] == by_region["content_distance"]
    assert len(failed) == 3 and all("(regions): ValueError" in f for f in failed)
    # the weighted histogram: a mask of ones counts as no mask
    assert torch.equal(fg.histogram(picture, torch.ones(h, w)), fg.histogram(picture))


@pytest.mark.slow
def test_a_masked_job_has_region_figures_and_the_command_recomputes_them(tmp_path, capsys):
    photos, masks = tmp_path / "photos", tmp_path / "masks"
    photos.mkdir()
    masks.mkdir()
    img = Image.open(sample("tubingen")).convert("RGB")
    img.thumbnail((64, 64))
    img.save(photos / "tubingen.png")
    m = np.zeros((img.height, img.width), np.uint8)
    m[:, : img.width // 2] = 255
    Image.fromarray(m).save(masks / "tubingen.png")
    out = tmp_path / "out"
    job = {
        "input": str(photos),
        "styles": {"starry": str(sample("starry_night")), "scream": str(sample("the_scream"))},
        "output": str(out),
        "masks": {"folder": str(masks), "foreground": "starry", "background": "scream"},
        "stylize": {"preset": "fast", "size": 64, "iterations": 10},
        "ray": {"address": "inline"},
        "report": False,
    }
    assert cli_main(["run", str(write_job(tmp_path / "job.yaml", job))]) == 0
    (row,) = pq.read_table(out / "manifest.parquet").to_pylist()
    assert row["status"] == "ok" and row["mask_uri"] == str(masks / "tubingen.png")
    assert all(math.isfinite(row[f]) and row[f] >= 0 for f in fg.FIGURES), row

    # the whole picture against the foreground's style alone: not what the row carries
    net = Stylizer(fg.network_config("cpu"))
    result = to_tensor(Image.open(row["output_uri"]).convert("RGB"))
    content = to_tensor(img.resize(tuple(result.shape[-1:-3:-1])))
    starry = to_tensor(decode_image(str(sample("starry_night"))))  # the job's style
    whole = fg.figures(
        net.features,
        result[None],
        content[None],
        [fg.style_stats(net.features, [starry], [1.0], max(result.shape[-2:]))],
    )[0]
    with capsys.disabled():
        print("row", {f: row[f] for f in fg.FIGURES}, "whole picture vs starry", whole)
    assert row["content_distance"] == pytest.approx(whole["content_distance"], rel=0.02)
    # measured 0.41 (the halves against their styles) and 0.29 (the whole against starry)
    assert abs(row["color_distance"] - whole["color_distance"]) > 0.2 * whole["color_distance"]

    capsys.readouterr()
    assert cli_main(["quality", "--device", "cpu", str(out), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["items"] == 1 and found["failed"] == 0
    (again,) = pq.read_table(found["file"]).to_pylist()
    for f in fg.FIGURES:  # the same regions, the mask read from the run's files again
        assert again[f] == pytest.approx(row[f], rel=0.05, abs=1e-3), f
