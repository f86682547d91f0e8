"""Shared helpers for the engine tests: bundled samples, fixed-size contents, a fixed measure.

Only the samples bundled inside the package are used (CI has no ``../shared``).
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

import stylize
from stylize import model as vgg
from stylize.images import decode_image, load_image, resize_to, to_tensor
from stylize.losses import gram

SAMPLES = Path(stylize.__file__).parent / "samples"
SAMPLE_NAMES = ("tubingen", "starry_night", "the_scream", "shipwreck", "coffee", "chelsea")
GRAM_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


def sample_path(name: str) -> Path:
    return SAMPLES / f"{name}.jpg"


def sample(name: str, size: int | None = None) -> torch.Tensor:
    """A bundled sample, longest side ``size``: (3, H, W) float 0..255."""
    return load_image(sample_path(name), size=size)


def sample_exact(name: str, height: int, width: int) -> torch.Tensor:
    """A bundled sample scaled to exactly height x width (contents of one batch share a size)."""
    return to_tensor(resize_to(decode_image(sample_path(name)), width, height))


def gram_distance(model, image: torch.Tensor, style: torch.Tensor) -> float:
    """Normalised Gram distance in a fixed feature space, averaged over GRAM_LAYERS.

    Per layer ||G(image) - G(style)||^2 / ||G(style)||^2, so every layer counts alike and the
    number does not depend on the engine's own loss weights.
    """
    with torch.no_grad():
        fi = model(image[None].float())
        fs = model(style[None].float())
    per_layer = [
        ((gram(fi[k]) - gram(fs[k])).pow(2).sum() / gram(fs[k]).pow(2).sum()).item()
        for k in GRAM_LAYERS
    ]
    return sum(per_layer) / len(per_layer)


def w2_distance(model, image: torch.Tensor, style: torch.Tensor) -> float:
    """Squared 2-Wasserstein distance between the Gaussians of the features of image and style
    (means, covariances), in float64, averaged over GRAM_LAYERS; per layer divided by the
    style's mean squared activation times the channels, so every layer counts alike. The
    test's own formula (eigendecompositions), not the engine's loss."""

    def sqrtm(a):
        lam, vec = torch.linalg.eigh((a + a.T) / 2)
        return vec @ torch.diag(lam.clamp_min(0).sqrt()) @ vec.T

    with torch.no_grad():
        fi = model(image[None].float())
        fs = model(style[None].float())
    per_layer = []
    for k in GRAM_LAYERS:
        x, y = (f[0].flatten(1).double() for f in (fi[k], fs[k]))  # (C, HW)
        sx, sy = torch.cov(x, correction=0), torch.cov(y, correction=0)
        root = sqrtm(sy)
        d2 = (x.mean(1) - y.mean(1)).pow(2).sum() + (sx + sy - 2 * sqrtm(root @ sx @ root)).trace()
        per_layer.append((d2 / y.pow(2).mean(1).sum()).item())
    return sum(per_layer) / len(per_layer)


def per_image_features(stylizer) -> None:
    """Make ``stylizer`` run its network one image at a time (same maths, batch-invariant).

    oneDNN's convolutions round differently for batch 1 and batch 3 (about 1e-4 relative),
    and L-BFGS builds its curvature pairs from differences of gradients, so that rounding
    difference grows to several pixel levels within ten iterations. Running the
    network per image removes the library's contribution and leaves only the engine's own
    coupling between images (losses, optimiser state, stopping), which must be none.
    """
    batched = stylizer.model.forward  # every pass of the network: features and objective

    def forward(pixels: torch.Tensor, taps=None) -> dict[str, torch.Tensor]:
        outs = [batched(pixels[i : i + 1], taps) for i in range(pixels.shape[0])]
        return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}

    stylizer.model.forward = forward


# The real loader, kept before any test replaces it.
load_caffe_state_uncached = vgg.load_caffe_state


@functools.cache
def _caffe_state(path: str):
    return load_caffe_state_uncached()


def load_caffe_state_cached():
    """``load_caffe_state`` decoded once per file (about a second each time otherwise)."""
    state, digest = _caffe_state(str(vgg.caffe_weights_path()))
    return dict(state), digest


@pytest.fixture(scope="module")
def reuse_caffe_weights():
    """Every ``build_vgg("caffe", ...)`` in a module shares one decoded copy of the weights.

    The network copies the tensors it is given, so sharing them is safe; a test that points
    ``caffe_weights_path`` elsewhere still reaches the real loader.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vgg, "load_caffe_state", load_caffe_state_cached)
        yield


@pytest.fixture(scope="module")
def engines(reuse_caffe_weights):
    """engines(**options) -> a CPU Stylizer for those options, built once per module."""
    from stylize.config import resolve_config
    from stylize.engine import Stylizer

    built: dict[tuple, Stylizer] = {}

    def get(**options) -> Stylizer:
        key = tuple(sorted(options.items()))
        if key not in built:
            built[key] = Stylizer(resolve_config(device="cpu", **options))
        return built[key]

    return get
