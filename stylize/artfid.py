"""ArtFID (Wright & Ommer, GCPR 2022) of a set of stylized images, from weight files the user
has: nothing is downloaded and nothing is bundled.

    ArtFID = (1 + LPIPS) * (1 + FID)

- ``LPIPS``: the mean over items of LPIPS v0.1 with the AlexNet trunk (Zhang et al. 2018,
  ``lpips.LPIPS(net="alex")``) between each content image and its stylized image (0: the same
  picture). The content is resized to the stylized image's size (bilinear, antialiased) where
  the two differ; ArtFID's code needs them equal.
- ``FID``: the Frechet distance between the Gaussians fitted to the 2048-d average-pool
  features of an Inception-v3, stylized set against style set (0: the same statistics).

The definitions are those of the references' code, read there, not re-derived:

- matthias-wright/art-fid ``art_fid/art_fid.py`` (``compute_art_fid``, ``mode="art_fid"``)
  and ``art_fid/inception.py``: ArtFID's Inception is torchvision's Inception3, trained on
  art, with two classifier heads (``fc1``, ``fc2``); it reads the images as ``ToTensor()``
  gives them (0..1, no normalisation, at their own size, as here), and its features are the
  average pool before the heads. The content distance is ``lpips.LPIPS(net="alex")`` of
  ``2x - 1``, averaged over the pairs. ArtFID's default mode (``art_fid_inf``) extrapolates
  FID to infinitely many images from subsets of 5000 and more; that is not done here.
- mseitzer/pytorch-fid ``inception.py``: the FID Inception (TensorFlow's 2015 graph) is
  torchvision's Inception3 with 1008 classes whose Mixed_5b..5d, 6b..6e and 7b pool without
  counting the padding and whose Mixed_7c pools with a max; its input is resized to 299x299
  (bilinear, not aligned corners) and mapped to -1..1. Its weights give the classic FID (not
  the art network's), so the ArtFID made with them does not compare with published ArtFIDs.
- richzhang/PerceptualSimilarity ``lpips/lpips.py``, ``pretrained_networks.py`` (v0.1):
  input -1..1, shifted and scaled (``ScalingLayer``), torchvision's AlexNet features tapped
  after relu1..relu5, each tap unit-normalised over its channels (eps 1e-10), the squared
  difference weighted by a 1x1 convolution without bias (``lin0..lin4``), averaged over the
  positions and summed over the taps.

The Frechet distance is |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2), in float64. The
trace of the root is the sum of the square roots of the eigenvalues of S2^1/2 S1 S2^1/2, the
symmetric PSD matrix with S1 S2's eigenvalues; with fewer images than features (the
covariances are then singular) it is the nuclear norm of A B^T / sqrt((n1 - 1)(n2 - 1)), A and
B the centred features, which is exact and costs O(n1 n2 d) instead of two eigensolves of
2048 x 2048 (pytorch-fid's ``scipy.linalg.sqrtm`` of the non-symmetric product needs neither).

Small samples: FID estimated from N images is biased upwards, the bias falling about as 1/N
(Chong & Forsyth 2020, "Effectively Unbiased FID"): a covariance from N images has rank at
most N - 1, so with a few styles (tens of images, against 2048 features) FID is large and
mostly estimation error. Compare ArtFIDs only between runs with sets of the same sizes; each
set needs at least 2 images.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from stylize.common import StylizeError
from stylize.runtime import numerics, resolve_device

if TYPE_CHECKING:
    from stylize.records import Style

Flavour = Literal["art", "fid"]
FLAVOURS: tuple[Flavour, ...] = ("art", "fid")
INCEPTION_FILES: dict[Flavour, str] = {
    "art": "ArtFID's art_inception.pth (huggingface.co/matthias-wright/art_inception)",
    "fid": "pytorch-fid's pt_inception-2015-12-05-6726825d.pth",
}
ALEXNET_FILE = "torchvision's alexnet-owt-7be5be79.pth (AlexNet_Weights.IMAGENET1K_V1)"
LPIPS_FILE = "the lpips package's lpips/weights/v0.1/alex.pth"
FEATURES = 2048
FID_SIZE = 299  # pytorch-fid resizes every image to 299 x 299
FID_C7 = (128, 160, 160, 192)  # channels_7x7 of Mixed_6b..6e (torchvision's, pytorch-fid's)
# Inception3's layers up to its average pool, in order (torchvision's attribute names)
TRUNK = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
    "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
    "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c",
)  # fmt: skip
# lpips v0.1's ScalingLayer: -1..1 to AlexNet's ImageNet normalisation
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
# torchvision's alexnet().features: the ReLU after which lpips taps relu1..relu5, channels
ALEX_TAPS = (1, 4, 7, 9, 11)
ALEX_CHANNELS = (64, 192, 384, 256, 256)


class ArtFIDWeightsError(StylizeError, ValueError):
    """A weight file is missing, unreadable or another network's; the line names the file
    expected."""


def _read(path: str | Path, what: str, expected: str) -> dict[str, torch.Tensor]:
    """A state dict from ``path`` (tensors only; a ``module.`` prefix dropped)."""
    head = f"{what} weights {str(path)!r}"
    if not Path(path).is_file():
        raise ArtFIDWeightsError(f"{head}: no such file; expected {expected}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ArtFIDWeightsError(
            f"{head}: not a loadable state dict ({type(e).__name__}); expected {expected}"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ArtFIDWeightsError(f"{head}: not a dict of tensors; expected {expected}")
    if state and all(str(k).startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _load(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    head: str,
    expected: str,
    key: Callable[[str], str] = str,
) -> None:
    """Every parameter and buffer of ``module`` from ``state`` (same names and shapes), or a
    one-line error naming the file's ``key``s; BatchNorm's step counters, unused in eval, may
    be missing."""
    own = module.state_dict()
    problems = [
        f"{key(k)} {tuple(state[k].shape) if k in state else 'missing'}"
        for k, v in own.items()
        if not k.endswith("num_batches_tracked") and (k not in state or state[k].shape != v.shape)
    ]
    if problems:
        more = f" and {len(problems) - 2} more" if len(problems) > 2 else ""
        raise ArtFIDWeightsError(f"{head}: {', '.join(problems[:2])}{more}; expected {expected}")
    module.load_state_dict({k: state.get(k, v) for k, v in own.items()})


# ------------------------------------------------------------------ Inception-v3 features


def _avg_excluding_padding(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _max_3x3(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


def _fid_blocks() -> tuple[type[nn.Module], type[nn.Module], type[nn.Module]]:
    """pytorch-fid's FIDInceptionA, C and E: torchvision's blocks, the pooling branch's pool
    changed (the TensorFlow graph's). Built on first use: torchvision loads lazily."""
    from torchvision.models import inception as tv

    class FIDInceptionA(tv.InceptionA):  # type: ignore[misc]  # torchvision is untyped
        def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            b5 = self.branch5x5_2(self.branch5x5_1(x))
            b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            return [self.branch1x1(x), b5, b3, self.branch_pool(_avg_excluding_padding(x))]

    class FIDInceptionC(tv.InceptionC):  # type: ignore[misc]
        def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            d = x
            for i in range(1, 6):
                d = getattr(self, f"branch7x7dbl_{i}")(d)
            return [self.branch1x1(x), b7, d, self.branch_pool(_avg_excluding_padding(x))]

    class FIDInceptionE(tv.InceptionE):  # type: ignore[misc]
        def __init__(self, in_channels: int, pool: Callable[[torch.Tensor], torch.Tensor]) -> None:
            super().__init__(in_channels)
            self.pool = pool  # E_1: average without the padding; E_2: max

        def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            b3 = self.branch3x3_1(x)
            b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
            d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
            return [self.branch1x1(x), b3, d, self.branch_pool(self.pool(x))]

    return FIDInceptionA, FIDInceptionC, FIDInceptionE


class InceptionFeatures(nn.Module):
    """Inception-v3 to its average pool: ``forward`` maps (B, 3, H, W) in 0..1 to (B, 2048).

    ``flavour`` ``art``: ArtFID's network (plain torchvision blocks), images as given (0..1,
    their own size). ``fid``: pytorch-fid's (the FID blocks), images resized to 299 x 299 and
    mapped to -1..1. Random weights: :meth:`from_file` loads a file's."""

    def __init__(self, flavour: Flavour) -> None:
        super().__init__()
        from torchvision.models import inception_v3

        net = inception_v3(weights=None, aux_logits=False, init_weights=False)
        if flavour == "fid":
            block_a, block_c, block_e = _fid_blocks()
            for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
                in_channels = getattr(net, name).branch1x1.conv.in_channels
                setattr(net, name, block_a(in_channels, pool_features))
            for name, c7 in zip(("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"), FID_C7):
                setattr(net, name, block_c(768, channels_7x7=c7))
            net.Mixed_7b = block_e(1280, _avg_excluding_padding)
            net.Mixed_7c = block_e(2048, _max_3x3)
        self.flavour = flavour
        self.size = FID_SIZE if flavour == "fid" else None
        self.trunk = nn.Sequential(OrderedDict((name, getattr(net, name)) for name in TRUNK))
        self.eval().requires_grad_(False)

    @classmethod
    def from_file(cls, path: str | Path, flavour: Flavour | None = None) -> InceptionFeatures:
        """The network of a file of :data:`INCEPTION_FILES` (its heads tell which, unless
        ``flavour`` says), its trunk's weights loaded, the heads ignored."""
        if flavour not in (None, *FLAVOURS):
            raise ValueError(f"Inception flavour {flavour!r}: one of {', '.join(FLAVOURS)}")
        state = _read(path, "ArtFID Inception", " or ".join(INCEPTION_FILES.values()))
        net = cls(flavour or _flavour(state, path))
        trunk = {k: v for k, v in state.items() if k.split(".", 1)[0] in TRUNK}
        expected = INCEPTION_FILES[net.flavour]
        _load(net.trunk, trunk, f"ArtFID Inception weights {str(path)!r}", expected)
        return net

    def fit(self, image: torch.Tensor) -> torch.Tensor:
        """One (3, H, W) image at the network's input size (as it is for ``art``)."""
        if self.size is None:
            return image
        size = (self.size, self.size)
        return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flavour == "fid":
            x = 2 * x - 1
        maps: torch.Tensor = self.trunk(x)  # (B, 2048, h, w)
        return maps.mean((2, 3))  # (B, 2048): the adaptive average pool


def inception_flavour(path: str | Path) -> Flavour:
    """Which Inception a weight file holds, from its heads: ``fc1``/``fc2`` (ArtFID's two
    heads) is ``art``, ``fc`` of 1008 classes (TensorFlow's graph) is ``fid``."""
    return _flavour(_read(path, "ArtFID Inception", " or ".join(INCEPTION_FILES.values())), path)


def _flavour(state: dict[str, torch.Tensor], path: str | Path) -> Flavour:
    fc = state.get("fc.weight")
    if "fc1.weight" in state and "fc2.weight" in state:
        return "art"
    if fc is not None and fc.shape[0] == 1008:
        return "fid"
    head = "fc " + (str(tuple(fc.shape)) if fc is not None else "missing")
    raise ArtFIDWeightsError(
        f"ArtFID Inception weights {str(path)!r}: neither ArtFID's heads (fc1, fc2) nor the FID "
        f"Inception's (fc of 1008 classes): {head}; expected "
        f"{' or '.join(INCEPTION_FILES.values())}"
    )


# ----------------------------------------------------------------------------- LPIPS


def _alexnet_features() -> nn.Sequential:
    """torchvision's ``alexnet().features`` to relu5 (its module indices, so its keys),
    without building the classifier's 58M parameters."""
    layers: list[nn.Module] = []
    for c_in, c_out, k, stride, pad, pool in (
        (3, 64, 11, 4, 2, True), (64, 192, 5, 1, 2, True), (192, 384, 3, 1, 1, False),
        (384, 256, 3, 1, 1, False), (256, 256, 3, 1, 1, False),
    ):  # fmt: skip
        layers += [nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad), nn.ReLU(inplace=True)]
        layers += [nn.MaxPool2d(kernel_size=3, stride=2)] if pool else []
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    """LPIPS v0.1, AlexNet trunk: ``forward(x, y)`` of two (B, 3, H, W) batches in 0..1 gives
    the (B,) distances. Random weights until :meth:`load`."""

    shift: torch.Tensor  # buffers: lpips' ScalingLayer
    scale: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.features = _alexnet_features()  # conv1 .. relu5
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in ALEX_CHANNELS)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.eval().requires_grad_(False)

    def load(self, alexnet_path: str | Path, lpips_path: str | Path) -> None:
        """AlexNet's features from torchvision's alexnet state dict (``features.N.*``; the
        classifier ignored), the linear layers from lpips' ``alex.pth`` (``linK.model.1.*``)."""
        state = _read(alexnet_path, "LPIPS AlexNet", ALEXNET_FILE)
        feats = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
        head = f"LPIPS AlexNet weights {str(alexnet_path)!r}"
        _load(self.features, feats, head, ALEXNET_FILE, lambda k: f"features.{k}")
        state = _read(lpips_path, "LPIPS linear", LPIPS_FILE)
        lins = {k[3:].replace(".model.1.", "."): v for k, v in state.items() if k.startswith("lin")}
        head = f"LPIPS linear weights {str(lpips_path)!r}"
        _load(self.lins, lins, head, LPIPS_FILE, lambda k: "lin" + k.replace(".", ".model.1."))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = (torch.cat([x, y]) * 2 - 1 - self.shift) / self.scale  # (2B, 3, H, W)
        total = x.new_zeros(len(x))
        taps = iter(self.lins)
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in ALEX_TAPS:
                unit = h / (h.square().sum(1, keepdim=True).sqrt() + 1e-10)  # (2B, C, h, w)
                fx, fy = unit.chunk(2)
                total = total + next(taps)((fx - fy).square()).mean((1, 2, 3))
        return total


# ---------------------------------------------------------------- the Frechet distance


def frechet_distance(
    mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor
) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^1/2) in float64, for PSD covariances, singular
    ones included: tr((S1 S2)^1/2) is the sum of the roots of the eigenvalues of the
    symmetric S2^1/2 S1 S2^1/2 (S1 S2's nonzero eigenvalues)."""
    mu1, mu2, sigma1, sigma2 = (t.detach().double().cpu() for t in (mu1, mu2, sigma1, sigma2))
    w, v = torch.linalg.eigh(sigma2)
    root = (v * _nonzero(w).sqrt()) @ v.T  # (d, d) S2^1/2
    inner = root @ sigma1 @ root
    tr_root = _nonzero(torch.linalg.eigvalsh((inner + inner.T) / 2)).sqrt().sum()
    diff = mu1 - mu2
    return float(diff @ diff + sigma1.trace() + sigma2.trace() - 2 * tr_root)


def _nonzero(eigenvalues: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of a PSD matrix, those below its rounding (numerical rank) set to 0: the
    square root would lift that noise to ~1e-8 of the largest each."""
    eps = torch.finfo(eigenvalues.dtype).eps * len(eigenvalues) * eigenvalues.abs().max()
    return torch.where(eigenvalues > eps, eigenvalues, 0.0)


def fid(features1: torch.Tensor, features2: torch.Tensor) -> float:
    """The Frechet distance between the Gaussians of two feature sets (N1, d) and (N2, d),
    each N >= 2 (unbiased covariances, as ``np.cov``). With N1 N2 < d^2 it works on the
    images, not the d x d covariances: tr((S1 S2)^1/2) is the sum of the singular values of
    A B^T / sqrt((N1 - 1)(N2 - 1)), A and B the centred features (the same number)."""
    a, b = features1.detach().double().cpu(), features2.detach().double().cpu()
    (n1, d), n2 = a.shape, len(b)
    if min(n1, n2) < 2:
        raise ValueError(f"FID needs at least 2 images in each set (got {n1} and {n2})")
    if b.shape[1] != d:
        raise ValueError(f"FID of features of different widths ({d} and {b.shape[1]})")
    mu1, mu2 = a.mean(0), b.mean(0)
    a, b = a - mu1, b - mu2  # (N1, d), (N2, d) centred
    if n1 * n2 >= d * d:
        return frechet_distance(mu1, a.T @ a / (n1 - 1), mu2, b.T @ b / (n2 - 1))
    tr_root = torch.linalg.svdvals(a @ b.T / math.sqrt((n1 - 1) * (n2 - 1))).sum()
    diff = mu1 - mu2
    tr1, tr2 = a.square().sum() / (n1 - 1), b.square().sum() / (n2 - 1)
    return float(diff @ diff + tr1 + tr2 - 2 * tr_root)


class FeatureMoments:
    """A feature set (N, d) gathered in parts, in memory that does not grow with N: its count,
    mean and scatter (the sum of the centred outer products; Chan, Golub & LeVeque's pairwise
    update, float64), and, while fewer than d rows came, the rows themselves (what
    :func:`fid`'s exact path for small sets needs). :func:`fid_of` compares two."""

    def __init__(self, d: int = FEATURES) -> None:
        self.n = 0
        self.mean = torch.zeros(d, dtype=torch.float64)
        self.scatter = torch.zeros(d, d, dtype=torch.float64)
        self.rows: list[torch.Tensor] | None = []  # None once N >= d

    def add(self, features: torch.Tensor) -> None:
        """More rows (m, d)."""
        x = features.detach().double().cpu()
        m = len(x)
        if m == 0:
            return
        mean = x.mean(0)
        centred = x - mean
        delta = mean - self.mean
        total = self.n + m
        self.scatter += centred.T @ centred + torch.outer(delta, delta) * (self.n * m / total)
        self.mean += delta * (m / total)
        self.n = total
        if self.rows is not None:
            self.rows.append(x)
            if self.n >= len(self.mean):
                self.rows = None

    def covariance(self) -> torch.Tensor:
        """The unbiased covariance (d, d), as ``np.cov`` (N >= 2)."""
        return self.scatter / (self.n - 1)


def fid_of(set1: FeatureMoments, set2: FeatureMoments) -> float:
    """:func:`fid` of two gathered sets: on their rows while both kept them, else on their
    means and covariances (the same figure; both sets of at least d rows when they are the same
    size, as a run's results and styles are)."""
    if min(set1.n, set2.n) < 2:
        raise ValueError(f"FID needs at least 2 images in each set (got {set1.n} and {set2.n})")
    if set1.rows is not None and set2.rows is not None:
        return fid(torch.cat(set1.rows), torch.cat(set2.rows))
    return frechet_distance(set1.mean, set1.covariance(), set2.mean, set2.covariance())


def artfid(lpips: float, fid: float) -> float:
    """ArtFID from its two parts: (1 + mean LPIPS) * (1 + FID)."""
    return (1 + lpips) * (1 + fid)


# ---------------------------------------------------------------------------- ArtFID


def _batches(
    images: Sequence[torch.Tensor], batch_size: int, size: int | None
) -> Iterator[list[int]]:
    """Indices of ``images`` in batches of at most ``batch_size``, of one shape once resized
    to ``size`` x ``size`` (all one shape), or as they are (``None``)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault((size, size) if size else tuple(_checked(img).shape), []).append(i)
    for idx in groups.values():
        for k in range(0, len(idx), batch_size):
            yield idx[k : k + batch_size]


def _checked(image: torch.Tensor) -> torch.Tensor:
    if image.dim() != 3 or image.shape[0] != 3 or not image.is_floating_point():
        raise ValueError(
            f"ArtFID takes float RGB images (3, H, W) in 0..1, not {image.dtype} "
            f"{tuple(image.shape)}"
        )
    return image


class ArtFID:
    """ArtFID from three weight files (none downloaded, none bundled):

    - ``inception_path``: :data:`INCEPTION_FILES` (``art``: ArtFID's own, the published
      metric; ``fid``: pytorch-fid's, the classic FID), told apart by their heads unless
      ``flavour`` says which;
    - ``alexnet_path``: :data:`ALEXNET_FILE`; ``lpips_path``: :data:`LPIPS_FILE`.

    Networks in fp32 (TF32 off), eval, no gradients, on ``device`` (``auto``, ``cpu``,
    ``cuda[:N]``, ``mps``). Images are float (3, H, W) tensors in 0..1 of any sizes; batches
    group images of one size (``batch_size`` at most)."""

    def __init__(
        self,
        inception_path: str | Path,
        alexnet_path: str | Path,
        lpips_path: str | Path,
        *,
        device: str = "auto",
        batch_size: int = 16,
        flavour: Flavour | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.batch_size = max(1, batch_size)
        self.inception = InceptionFeatures.from_file(inception_path, flavour).to(self.device)
        self.lpips_net = LPIPS()
        self.lpips_net.load(alexnet_path, lpips_path)
        self.lpips_net.to(self.device)

    @property
    def flavour(self) -> Flavour:
        return self.inception.flavour

    def features(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """The (N, 2048) Inception pool features of ``images`` (float32, on the CPU): what
        :func:`fid` compares; sets may be gathered in parts and concatenated."""
        out = torch.empty(len(images), FEATURES)
        with torch.no_grad(), numerics("fp32", False):
            for idx in _batches(images, self.batch_size, self.inception.size):
                x = torch.stack([self._fit(images[i]) for i in idx])  # (B, 3, H, W)
                out[idx] = self.inception(x).float().cpu()
        return out

    def lpips(
        self, contents: Sequence[torch.Tensor], stylized: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """The (N,) LPIPS distance of each content to its stylized image (float32, CPU), the
        content resized to the stylized image's size where they differ."""
        if len(contents) != len(stylized):
            raise ValueError(f"{len(contents)} content images for {len(stylized)} stylized ones")
        out = torch.empty(len(stylized))
        with torch.no_grad(), numerics("fp32", False):
            for idx in _batches(stylized, self.batch_size, None):
                y = torch.stack([stylized[i] for i in idx]).to(self.device, torch.float32)
                x = torch.stack([_at(self._on(contents[i]), y.shape[-2:]) for i in idx])
                out[idx] = self.lpips_net(x, y).float().cpu()
        return out

    def _on(self, image: torch.Tensor) -> torch.Tensor:
        return _checked(image).to(self.device, torch.float32)

    def _fit(self, image: torch.Tensor) -> torch.Tensor:
        return self.inception.fit(self._on(image))

    def score(
        self,
        contents: Sequence[torch.Tensor],
        stylized: Sequence[torch.Tensor],
        styles: Sequence[torch.Tensor],
    ) -> dict[str, float | int]:
        """ArtFID of ``stylized`` (item i made from ``contents[i]``) against the style set
        ``styles`` (each style once, or once per item to weight styles by use; at least two
        images in each set): ``{"artfid", "fid", "lpips", "n", "n_styles"}``."""
        distance = float(self.lpips(contents, stylized).mean())
        fid_value = fid(self.features(stylized), self.features(styles))
        return {
            "artfid": artfid(distance, fid_value),
            "fid": fid_value,
            "lpips": distance,
            "n": len(stylized),
            "n_styles": len(styles),
        }


def _at(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``image`` (3, H, W) at ``size`` (bilinear, antialiased), unchanged when already so."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(
        image[None], size=tuple(size), mode="bilinear", align_corners=False, antialias=True
    )[0]


# ------------------------------------------------------------------- a run, item by item


class ArtFIDSums:
    """What a run's ArtFID is made of, gathered item by item: each item's LPIPS to its
    content, the Inception features of its result and of its style (the style's first image
    at the result's longest side, aspect kept; once per style and side), the features
    gathered as :class:`FeatureMoments` (about 100 MB at most, however many items). Items wait in
    chunks of ``chunk`` and go through the networks together (batches of one size, at most
    the scorer's ``batch_size``); a chunk the networks refuse is taken again item by item, so
    that only the items they cannot take (e.g. smaller than the art Inception's 75 px) are
    left out: counted, the first reason kept."""

    def __init__(self, scorer: ArtFID, chunk: int = 16) -> None:
        self.scorer = scorer
        self.chunk = max(1, chunk)
        self.items = 0  # counted: their LPIPS summed, their results' and styles' features
        self.lpips_sum = 0.0  # gathered (memory that does not grow with the run)
        self._results = FeatureMoments()
        self._styles = FeatureMoments()  # each item's style once per item
        self._style_names: set[str] = set()
        self._style_features: dict[tuple[str, int], torch.Tensor] = {}  # (2048,) each
        self._pending: list[tuple[torch.Tensor, torch.Tensor, Style]] = []
        self.skipped = 0  # items left out, and why the first was
        self.first_problem = ""

    def add(self, content: torch.Tensor, result: torch.Tensor, style: Style) -> None:
        """One item: ``content`` and ``result`` (3, H, W) in 0..255 (the content at the
        result's size), its ``Style``; taken with its chunk."""
        self._pending.append((content, result, style))
        if len(self._pending) >= self.chunk:
            self.flush()

    def skip(self, problem: BaseException | str) -> None:
        """An item left out (unreadable, or refused by the networks): counted under
        ``skipped``, the first ``problem`` kept for ``why``."""
        self.skipped += 1
        if not self.first_problem:
            text = problem if isinstance(problem, str) else f"{type(problem).__name__}: {problem}"
            self.first_problem = " ".join(text.split())[:300]

    def flush(self) -> None:
        """The items waiting, through the networks (``figures`` flushes too)."""
        items, self._pending = self._pending, []
        if not items:
            return
        try:
            self._take(items)
        except Exception as e:  # noqa: BLE001 - named in the figures' "why"
            if len(items) == 1:
                self.skip(e)
                return
            for item in items:  # again one by one: only the items refused are left out
                try:
                    self._take([item])
                except Exception as one:  # noqa: BLE001 - named in the figures' "why"
                    self.skip(one)

    def _take(self, items: Sequence[tuple[torch.Tensor, torch.Tensor, Style]]) -> None:
        """The networks over ``items``; nothing kept unless every one of them went through."""
        contents = [c / 255 for c, _, _ in items]
        results = [r / 255 for _, r, _ in items]
        keys = [(s.key, max(r.shape[-2:])) for _, r, s in items]
        new: dict[tuple[str, int], torch.Tensor] = {}
        for key, (_, _, style) in zip(keys, items):
            if key not in self._style_features and key not in new:
                new[key] = _at_side(style.images[0], key[1])
        style_features = self.scorer.features(list(new.values())) if new else None
        distances = self.scorer.lpips(contents, results)  # (n,)
        features = self.scorer.features(results)  # (n, 2048)
        if style_features is not None:
            self._style_features.update(zip(new, style_features))
        self.items += len(items)
        self.lpips_sum += float(distances.double().sum())
        self._results.add(features)
        self._styles.add(torch.stack([self._style_features[k] for k in keys]))
        self._style_names.update(name for name, _ in keys)

    def figures(self) -> dict[str, Any]:
        """The JSON of a run's artfid.json: ``artfid``, ``fid``, ``lpips`` (the mean),
        ``items``, ``styles``, ``inception`` (its flavour), and where something was left out
        ``skipped`` and ``why``."""
        self.flush()
        styles = len(self._style_names)
        out: dict[str, Any] = {
            "artfid": None,
            "fid": None,
            "lpips": self.lpips_sum / self.items if self.items else None,
            "items": self.items,
            "styles": styles,
            "inception": self.scorer.flavour,
        }
        if self.skipped:
            out["skipped"] = self.skipped
        if self.items < 2:
            first = f" (first left out: {self.first_problem})" if self.first_problem else ""
            out["why"] = f"ArtFID needs at least 2 ok items the networks can take{first}"
            return out
        out["fid"] = fid_of(self._results, self._styles)
        out["artfid"] = artfid(out["lpips"], out["fid"])
        if styles == 1:
            out["why"] = "one style: its FID is against a single picture (not comparable)"
        return out


def _at_side(image: torch.Tensor, side: int) -> torch.Tensor:
    """A style image (3, H, W) in 0..255 with its longest side at ``side`` (aspect kept,
    bilinear, antialiased), in 0..1."""
    h, w = image.shape[-2:]
    size = (max(1, round(h * side / max(h, w))), max(1, round(w * side / max(h, w))))
    image = F.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True)[0]
    return (image / 255).clamp(0, 1)
