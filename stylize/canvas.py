"""The canvas an optimisation works on: the coarse-to-fine scales, the reflected margin
around the picture, and the start image (``init``: the content, seeded noise or a file)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stylize.config import NOISE_SPECTRA, StyleConfig
from stylize.images import load_image


def initial_noise(cfg: StyleConfig, h: int, w: int) -> torch.Tensor:
    """The start image of ``init: noise``: (3, h, w) pixels, mid-grey plus seeded noise of
    std ``noise_scale * 255`` per channel with the amplitude spectrum ``noise_spectrum``.

    Drawn on the CPU, so a seed gives the same start on every device.
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    noise = torch.randn(3, h, w, generator=gen)  # (3, h, w), unit std
    exponent = NOISE_SPECTRA[cfg.noise_spectrum]
    if exponent:
        freq = torch.fft.rfft2(noise)  # (3, h, w // 2 + 1)
        f = torch.hypot(torch.fft.fftfreq(h)[:, None], torch.fft.rfftfreq(w)[None, :])
        freq = freq / f.clamp_min(1.0 / max(h, w)) ** exponent
        freq[:, 0, 0] = 0  # no offset: the mean stays mid-grey
        noise = torch.fft.irfft2(freq, s=(h, w))
        noise = noise / noise.std(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    return 127.5 + noise * (cfg.noise_scale * 255.0)


def start_image(
    content: torch.Tensor, h: int, w: int, cfg: StyleConfig, device: torch.device
) -> torch.Tensor:
    """The start of an optimisation of contents (B, 3, h, w) on ``device``, as ``cfg.init``
    says: the contents, ``initial_noise`` (the same for every image) or an image file
    resized to (h, w)."""
    init = cfg.init
    if init == "content":
        return content.clone()
    if init == "noise":
        noise = initial_noise(cfg, h, w)  # (3, h, w), the same for every image
        return noise.expand(content.shape[0], -1, -1, -1).to(device)
    img = load_image(init)  # a path: resized to each content's size
    return resize(img.unsqueeze(0).to(device), h, w).expand_as(content).clone()


def start_noise(cfg: StyleConfig, h: int, w: int) -> torch.Tensor:
    """The initial noise of a (h, w) picture as its pixels see it: drawn at the first of the
    ``scales`` with the ``margin`` around it, margin cropped. (3, h0, w0)."""
    h0, w0 = scale_shape(h, w, cfg.schedule[0][0])
    m = margin_pixels(cfg.margin, h0, w0)
    return crop(initial_noise(cfg, h0 + 2 * m, w0 + 2 * m), m)


def scale_shape(h: int, w: int, scale: float) -> tuple[int, int]:
    """(h, w) of an image at one of the coarse-to-fine scales: a fraction of its size
    (``StyleConfig.schedule``)."""
    return max(16, round(h * scale)), max(16, round(w * scale))


def margin_pixels(margin: float, h: int, w: int) -> int:
    """The margin of a (h, w) image in pixels: reflection padding needs it below h and w."""
    return min(round(margin * max(h, w)), h - 1, w - 1)


def pad(x: torch.Tensor, m: int) -> torch.Tensor:
    return F.pad(x, (m, m, m, m), mode="reflect") if m else x


def crop(x: torch.Tensor, m: int) -> torch.Tensor:
    return x[..., m : x.shape[-2] - m, m : x.shape[-1] - m] if m else x


def resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, h, w), bicubic (antialiased when shrinking)."""
    if tuple(x.shape[-2:]) == (h, w):
        return x
    return F.interpolate(
        x, size=(h, w), mode="bicubic", align_corners=False, antialias=h < x.shape[-2]
    )


def resize_longest_tensor(img: torch.Tensor, side: int, min_short: int = 1) -> torch.Tensor:
    """(3, H, W) with its longest side ``side``; the shorter at least ``min_short`` (VGG pools
    4 times)."""
    h, w = img.shape[-2:]
    s = max(side / max(h, w), min_short / min(h, w))
    return resize(img.unsqueeze(0), max(1, round(h * s)), max(1, round(w * s)))[0]
