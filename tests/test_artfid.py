"""ArtFID (stylize.artfid) from weight files: the networks built with random weights, saved in
the layouts of the real files (ArtFID's art_inception.pth, pytorch-fid's pt_inception, the
torchvision AlexNet and lpips' alex.pth), so that nothing is downloaded."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import sample

from stylize import artfid as af
from stylize.images import decode_image, to_tensor

NAMES = ("tubingen", "chelsea", "coffee", "shipwreck", "starry_night", "the_scream")


def _image(name: str, side: int = 80, box: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """A real picture, a square crop (its corner at ``box`` of the slack) at ``side`` px."""
    img = decode_image(str(sample(name)))
    s = min(img.size)
    x0, y0 = int(box[0] * (img.width - s)), int(box[1] * (img.height - s))
    return to_tensor(img.crop((x0, y0, x0 + s, y0 + s)).resize((side, side))) / 255


@pytest.fixture(scope="module")
def photos() -> list[torch.Tensor]:
    return [_image(n, box=b) for n in NAMES[:3] for b in ((0.0, 0.0), (1.0, 1.0))]


def random_inception(photos: list[torch.Tensor]) -> tuple[dict, dict]:
    """(trunk, ArtFID's two heads) of a random Inception, seeded: its BatchNorm statistics
    those of ``photos`` (3, H, W) in 0..1 (a random trunk's features vanish otherwise)."""
    torch.manual_seed(0)
    net = af.InceptionFeatures("art")
    for bn in net.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.reset_running_stats()
            bn.momentum = None  # the running statistics: this batch's
    with torch.no_grad():
        net.train()(torch.stack(photos))
    heads = {f"fc{i}.{p}": torch.randn(1000, 2048) if p == "weight" else torch.zeros(1000)
             for i in (1, 2) for p in ("weight", "bias")}  # fmt: skip
    return net.trunk.state_dict(), heads


@pytest.fixture(scope="module")
def weights(tmp_path_factory, photos) -> dict[str, str]:
    """The four weight files, random networks in the real files' key layouts. The Inception's
    BatchNorm statistics are those of real pictures (a random trunk's features vanish)."""
    root = tmp_path_factory.mktemp("weights")
    trunk, heads = random_inception(photos)
    files = {
        "art": {**trunk, **heads},  # ArtFID's: two heads
        "fid": {**trunk, "fc.weight": torch.randn(1008, 2048), "fc.bias": torch.zeros(1008)},
        "imagenet": {"fc.weight": torch.randn(1000, 2048)},  # torchvision's own head
        "alexnet": {  # torchvision's layout (its classifier, ignored, cut short)
            **{f"features.{k}": v for k, v in af.LPIPS().features.state_dict().items()},
            "classifier.6.weight": torch.zeros(1000, 8),
        },
        "lpips": {
            f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) / c
            for k, c in enumerate(af.ALEX_CHANNELS)
        },  # fmt: skip
    }
    paths = {}
    for name, state in files.items():
        paths[name] = str(root / f"{name}.pth")
        torch.save(state, paths[name])
    return paths


@pytest.fixture(scope="module")
def metric(weights) -> af.ArtFID:
    return af.ArtFID(weights["art"], weights["alexnet"], weights["lpips"], device="cpu")


def test_weight_files_load_and_the_two_inceptions_are_told_apart(weights, metric):
    assert af.inception_flavour(weights["art"]) == "art" == metric.flavour
    assert af.inception_flavour(weights["fid"]) == "fid"
    assert metric.inception.size is None  # ArtFID's network reads the pictures as they are
    trunk = torch.load(weights["art"])
    got = metric.inception.trunk.state_dict()
    assert all(torch.equal(got[k], trunk[k]) for k in got)
    assert torch.equal(
        metric.lpips_net.lins[2].weight, torch.load(weights["lpips"])["lin2.model.1.weight"]
    )


@pytest.mark.slow  # Inception forward passes: seconds on 2 cores
def test_the_fid_inception_differs_from_artfids_on_the_same_weights(weights, photos):
    # pytorch-fid's blocks pool differently and read 299 x 299 in -1..1
    fid_net = af.InceptionFeatures.from_file(weights["fid"])
    art_net = af.InceptionFeatures.from_file(weights["fid"], flavour="art")
    with torch.no_grad():
        a = fid_net(fid_net.fit(photos[0])[None])
        b = art_net(art_net.fit(photos[0])[None])
    assert a.shape == b.shape == (1, af.FEATURES) and torch.isfinite(a).all()
    assert fid_net.fit(photos[0]).shape == (3, 299, 299)
    assert not torch.allclose(a, b, rtol=0.01)


def _wrong(weights: dict[str, str], tmp_path, case: str) -> tuple[object, str]:
    text = tmp_path / "notes.txt"
    text.write_text("not weights")
    vgg = tmp_path / "vgg_lpips.pth"  # lpips' vgg.pth: other channels
    torch.save({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1)
                for k, c in enumerate((64, 128, 256, 512, 512))}, vgg)  # fmt: skip
    lpips = af.LPIPS()
    return {
        "missing": (lambda: af.inception_flavour(tmp_path / "none.pth"), "pt_inception"),
        "text": (lambda: af.InceptionFeatures.from_file(text), "art_inception.pth"),
        "imagenet inception": (lambda: af.inception_flavour(weights["imagenet"]), "art_inception"),
        "alexnet as inception": (
            lambda: af.InceptionFeatures.from_file(weights["alexnet"], "fid"),
            "pt_inception-2015-12-05",
        ),
        "inception as alexnet": (
            lambda: lpips.load(weights["art"], weights["lpips"]),
            "alexnet-owt",
        ),
        "lpips of vgg": (lambda: lpips.load(weights["alexnet"], vgg), "v0.1/alex.pth"),
        "alexnet as lpips": (
            lambda: lpips.load(weights["alexnet"], weights["alexnet"]),
            "v0.1/alex.pth",
        ),
    }[case]


@pytest.mark.parametrize(
    "case",
    ["missing", "text", "imagenet inception", "alexnet as inception", "inception as alexnet",
     "lpips of vgg", "alexnet as lpips"],
)  # fmt: skip
def test_a_wrong_file_is_one_line_naming_the_file_expected(weights, tmp_path, case):
    call, expected = _wrong(weights, tmp_path, case)
    with pytest.raises(ValueError) as err:
        call()
    assert isinstance(err.value, af.ArtFIDWeightsError)
    message = str(err.value)
    assert "\n" not in message and expected in message and len(message) < 500, message


def test_an_unknown_flavour_is_refused(weights):
    with pytest.raises(ValueError, match="one of art, fid"):
        af.InceptionFeatures.from_file(weights["art"], "imagenet")  # type: ignore[arg-type]


def test_lpips_is_zero_for_the_same_picture_and_positive_otherwise(metric, photos):
    same = metric.lpips(photos[:3], photos[:3])
    assert same.tolist() == [0.0, 0.0, 0.0]
    other = metric.lpips(photos[:3], photos[3:])
    assert (other > 0).all()
    # the content is resized to the stylized picture's size: a larger copy is nearly the same
    big = _image(NAMES[0], side=144)
    near = metric.lpips([big], [photos[0]])
    assert 0 <= near.item() < 0.5 * other.min().item()
    with pytest.raises(ValueError, match="content images for"):
        metric.lpips(photos[:2], photos[:3])


@pytest.mark.slow  # Inception forward passes: seconds on 2 cores
def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise_and_shift(metric, photos):
    feats = metric.features(photos)
    assert feats.shape == (len(photos), af.FEATURES)
    scale = feats.var(0).sum().item()  # tr(S): the FID of the set against a point
    assert abs(af.fid(feats, feats)) < 1e-9 * scale
    gen = torch.Generator().manual_seed(1)

    def noised(sigma: float) -> list[torch.Tensor]:
        return [(p + sigma * torch.randn(p.shape, generator=gen)).clamp(0, 1) for p in photos]

    low, high = (af.fid(feats, metric.features(noised(s))) for s in (0.05, 0.3))
    shifted = af.fid(feats, metric.features([(p + 0.3).clamp(0, 1) for p in photos]))
    assert 0 < low < high and shifted > low, (low, high, shifted)
    # batching and the order of the images change nothing
    metric.batch_size = 2
    try:
        again = metric.features(photos[2::-1])
    finally:
        metric.batch_size = 16
    assert torch.allclose(again, feats[:3].flip(0), rtol=1e-3, atol=1e-4 * feats.abs().max())


@pytest.mark.slow  # Inception forward passes: seconds on 2 cores
def test_score_is_the_artfid_formula(metric, photos):
    contents, stylized, styles = photos[:2], photos[2:4], photos[4:]
    out = metric.score(contents, stylized, styles)
    assert set(out) == {"artfid", "fid", "lpips", "n", "n_styles"}
    assert (out["n"], out["n_styles"]) == (2, 2)
    assert out["lpips"] == pytest.approx(metric.lpips(contents, stylized).mean().item())
    expected_fid = af.fid(metric.features(stylized), metric.features(styles))
    assert out["fid"] == pytest.approx(expected_fid, rel=1e-6)
    assert out["artfid"] == pytest.approx((1 + out["lpips"]) * (1 + out["fid"]))
    assert af.artfid(0.5, 9.0) == 15.0


def test_images_of_another_shape_or_type_are_refused(metric, photos):
    with pytest.raises(ValueError, match=r"float RGB images \(3, H, W\)"):
        metric.features([photos[0].permute(1, 2, 0)])
    with pytest.raises(ValueError, match="float RGB"):
        metric.lpips([photos[0]], [(photos[0] * 255).to(torch.uint8)])


# ------------------------------------------------------------ the Frechet distance alone


def _brute(mu1, s1, mu2, s2, rank: int) -> float:
    """The definition in numpy: tr((S1 S2)^1/2) from the eigenvalues of the non-symmetric
    product (real, >= 0 for PSD S1, S2; ``rank`` of them nonzero), as the trace of
    scipy.linalg.sqrtm would give."""
    lam = np.linalg.eigvals(np.asarray(s1, np.float64) @ np.asarray(s2, np.float64)).real
    tr_root = np.sqrt(np.sort(lam)[::-1][:rank].clip(0)).sum()  # the rest is rounding
    d = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * tr_root)


def _t(*xs):
    return [torch.as_tensor(x, dtype=torch.float64) for x in xs]


def test_frechet_distance_of_one_dimension_and_of_diagonal_covariances():
    # 1-d Gaussians: (m1 - m2)^2 + (s1 - s2)^2
    d = af.frechet_distance(*_t([1.0], [[4.0]], [3.0], [[9.0]]))
    assert d == pytest.approx((1 - 3) ** 2 + (2 - 3) ** 2, abs=1e-12)
    # diagonal: the sum over the axes
    v1, v2 = np.array([1.0, 4.0, 0.25, 0.0]), np.array([9.0, 1.0, 0.25, 2.0])
    m1, m2 = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 0.0, 3.0])
    d = af.frechet_distance(*_t(m1, np.diag(v1), m2, np.diag(v2)))
    expected = ((m1 - m2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert d == pytest.approx(expected, abs=1e-10)
    # the same Gaussian: 0
    s = np.cov(np.random.default_rng(0).normal(size=(50, 6)), rowvar=False)
    assert abs(af.frechet_distance(*_t(m1[:1].repeat(6), s, m1[:1].repeat(6), s))) < 1e-10


@pytest.mark.parametrize("n1,n2,d", [(40, 30, 5), (3, 4, 16), (6, 6, 64), (2, 9, 8)])
def test_frechet_distance_matches_the_brute_force_definition(n1, n2, d):
    """Full rank (n > d) and rank-deficient covariances (n < d, as with a few styles against
    2048 features); fid() from the features agrees with frechet_distance() of their moments."""
    rng = np.random.default_rng(n1 * 100 + d)
    mix = rng.normal(size=(d, d))
    a = rng.normal(size=(n1, d)) @ mix
    b = rng.normal(size=(n2, d)) @ mix * 1.5 + 0.7
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = _brute(mu1, s1, mu2, s2, rank=min(n1 - 1, n2 - 1, d))
    scale = np.trace(s1) + np.trace(s2)
    assert af.frechet_distance(*_t(mu1, s1, mu2, s2)) == pytest.approx(expected, abs=1e-8 * scale)
    assert af.fid(*_t(a, b)) == pytest.approx(expected, abs=1e-8 * scale)
    assert math.isfinite(expected) and expected > 0


@pytest.mark.parametrize("n,d", [(5, 16), (40, 6)])
def test_features_gathered_in_parts_give_the_moments_and_the_fid_of_all_at_once(n, d):
    """A run's features are gathered chunk by chunk in memory that does not grow with it:
    the mean and covariance are those of all the rows, and the FID that of fid() on them,
    for a few rows (kept: fid's exact path) and for more rows than features (only moments)."""
    rng = np.random.default_rng(n + d)
    a = torch.as_tensor(rng.normal(size=(n, d)) * 3 + 50, dtype=torch.float32)
    b = torch.as_tensor(rng.normal(size=(n, d)) @ rng.normal(size=(d, d)), dtype=torch.float32)
    sets = af.FeatureMoments(d), af.FeatureMoments(d)
    for k, part in enumerate((1, 3, 7, 16, 64)):
        start = sum((1, 3, 7, 16, 64)[:k])
        for moments, x in zip(sets, (a, b)):
            moments.add(x[start : start + part])
    assert sets[0].n == n and (sets[0].rows is None) == (n >= d)
    exact = torch.as_tensor(np.cov(a.double().numpy(), rowvar=False))
    assert torch.allclose(sets[0].mean, a.double().mean(0), rtol=1e-12)
    assert torch.allclose(sets[0].covariance(), exact, rtol=1e-10, atol=1e-10)
    expected = af.fid(a, b)
    assert af.fid_of(*sets) == pytest.approx(expected, rel=1e-8)
    with pytest.raises(ValueError, match="at least 2 images"):
        af.fid_of(af.FeatureMoments(d), sets[1])


def test_fid_needs_two_images_a_set():
    with pytest.raises(ValueError, match="at least 2 images"):
        af.fid(torch.zeros(1, 8), torch.zeros(5, 8))


# ----------------------------------------------------- a run's ArtFID: stylize quality OUTPUT


@pytest.mark.slow
def test_a_runs_artfid_from_a_weights_folder_in_its_file_and_report(tmp_path, weights, capsys):
    import json
    import shutil

    from conftest import cli_main, two_content_job

    # ArtFID's Inception reads pictures at their own size: 75 px a side at least
    job, out = two_content_job(tmp_path, {"preset": "fast", "size": 128, "iterations": 3})
    assert cli_main(["run", str(job)]) == 0
    folder = tmp_path / "weights"
    folder.mkdir()
    # the names users download them under (docs/engine.md)
    shutil.copy(weights["art"], folder / "art_inception.pth")
    shutil.copy(weights["alexnet"], folder / "alexnet-owt-7be5be79.pth")
    capsys.readouterr()

    # a file missing: one line naming it, exit 2, nothing written
    assert cli_main(["quality", str(out), "--device", "cpu", "--artfid", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no file for LPIPS" in err and "alex.pth" in err
    assert not (out / "_manifest" / "artfid.json").exists()

    shutil.copy(weights["lpips"], folder / "alex.pth")
    argv = ["quality", str(out), "--device", "cpu", "--artfid", str(folder), "--json"]
    assert cli_main(argv) == 0
    found = json.loads(capsys.readouterr().out)["artfid"]
    assert found == json.loads((out / "_manifest" / "artfid.json").read_text())
    assert found["items"] == 4 and found["styles"] == 2 and found["inception"] == "art"
    assert found["fid"] > 0 and 0 < found["lpips"] < 1 and "why" not in found
    assert found["artfid"] == pytest.approx((1 + found["lpips"]) * (1 + found["fid"]))

    # the report shows it
    assert cli_main(["report", str(out)]) == 0
    html = (out / "report" / "index.html").read_text()
    assert 'id="artfid"' in html and "2 style(s), art Inception" in html
