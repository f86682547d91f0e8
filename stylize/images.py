"""Image decoding and encoding for the engine: Pillow, numpy and torch only.

Tensors hold RGB pixels as float32 in 0..255, shape (3, H, W).

``decode_image`` accepts JPEG, PNG, WebP, TIFF, BMP and GIF (first frame), reads the file in
full, applies the EXIF orientation and returns a loaded 8-bit ``"RGB"`` image. Modes convert so:

- ``RGB``: unchanged. ``L``, ``1``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``RGBX``: Pillow's
  ``convert("RGB")`` (``1`` gives 0/255; CMYK uses Pillow's naive formula, no ICC profile).
- ``RGBA``, ``RGBa``, ``LA``, ``La``, ``PA`` and any other 8-bit image with a ``transparency``
  key (palette or colour-key PNG/GIF): composited onto white, so transparent pixels become white.
- ``I;16``, ``I;16L``, ``I;16B``, ``I;16N``: value / 257, rounded (65535 -> 255).
- ``I`` (32-bit int; Pillow opens 16-bit PGM/PPM this way): values within 0..65535 are taken
  as 16-bit and divided by 257; otherwise stretched linearly so min -> 0 and max -> 255.
- ``F`` (32-bit float has no fixed white level): stretched linearly, finite min -> 0 and
  finite max -> 255; NaN becomes black. A constant image is clipped to 0..255 instead.

Every failure to read an image raises ``ImageError`` with a one-line message naming the file.

``encode_image`` writes 8-bit PNG, JPEG (4:4:4 chroma), WebP and TIFF (deflate) with Pillow.
Pillow has no 48-bit RGB mode, so 16-bit PNG and TIFF are written here with zlib and struct:
PNG with filter type 1 (Sub) on every row, TIFF as one deflate strip with the horizontal
predictor. A 16-bit sample is round(clamp(value * 257, 0, 65535)), which keeps the sub-integer
precision of the float tensor. Pillow reads such files back as 8-bit RGB.
"""

from __future__ import annotations

import io
import math
import os
import struct
import warnings
import zlib
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from stylize.common import StylizeError, one_line

if TYPE_CHECKING:  # torch loads on first use: the pipeline's driver decodes with Pillow only
    import torch
from stylize.config import (  # noqa: F401
    BIT_DEPTH_16_FORMATS,
    BIT_DEPTHS,
    OUTPUT_FORMATS,
    bit_depth_problem,
)

MAX_PIXELS = 100_000_000  # decompression-bomb limit, pixels

_EXTENSIONS = {
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".webp": "webp",
    ".tif": "tiff",
    ".tiff": "tiff",
}
# What Pillow's plugins raise on malformed data; anything else (MemoryError, bugs) propagates.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    struct.error,
    zlib.error,
)
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_16BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageError(StylizeError, ValueError):
    """An image that cannot be read or written; the one-line message names the file."""


# ----------------------------------------------------------------------------- decoding


def decode_image(data: bytes | str | os.PathLike[str], name: str | None = None) -> Image.Image:
    """Decode bytes or a local file to a loaded 8-bit RGB image, EXIF orientation applied.

    ``name`` labels error messages; it defaults to the path, or ``"<bytes>"``.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        name, raw = name or "<bytes>", bytes(data)
    else:
        name = name or os.fspath(data)
        raw = _read_file(data, name)
    if not raw:
        raise ImageError(f"{name}: empty file (0 bytes)")
    with warnings.catch_warnings():
        # MAX_PIXELS decides, not Pillow's global limit, whose warning fires below ours.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = _open_checked(raw, name)
        img = _load_oriented(img, name)
    return _to_rgb(img)


def _read_file(path: str | os.PathLike[str], name: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise ImageError(f"{name}: cannot read file ({one_line(err.strerror or err)})") from err


def _open_checked(raw: bytes, name: str) -> Image.Image:
    """Open (header only) and refuse zero-size images and bombs before any pixel is decoded."""
    try:
        img = Image.open(io.BytesIO(raw))
    except Image.DecompressionBombError as err:
        raise ImageError(f"{name}: refused as a decompression bomb ({one_line(err)})") from err
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image (cannot identify image file)") from None
    except _DECODE_ERRORS as err:
        raise ImageError(f"{name}: corrupt image header ({one_line(err)})") from err
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise ImageError(
            f"{name}: refused as a decompression bomb ({w}x{h} = {w * h} pixels "
            f"exceeds MAX_PIXELS = {MAX_PIXELS})"
        )
    if w == 0 or h == 0:
        raise ImageError(f"{name}: zero-size image ({w}x{h})")
    return img


def _load_oriented(img: Image.Image, name: str) -> Image.Image:
    """Decode every pixel (so truncation shows here), then apply the EXIF orientation."""
    try:
        img.load()
    except Image.DecompressionBombError as err:
        raise ImageError(f"{name}: refused as a decompression bomb ({one_line(err)})") from err
    except _DECODE_ERRORS as err:
        raise ImageError(f"{name}: truncated or corrupt image ({one_line(err)})") from err
    try:
        return ImageOps.exif_transpose(img)
    except _DECODE_ERRORS as err:
        raise ImageError(f"{name}: corrupt EXIF orientation ({one_line(err)})") from err


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in _16BIT_MODES or img.mode in ("I", "F"):
        return _wide_to_rgb(img)
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        if img.mode == "La":  # Pillow converts La only to LA
            img = img.convert("LA")
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, img.convert("RGBA")).convert("RGB")
    return img.convert("RGB")


def _wide_to_rgb(img: Image.Image) -> Image.Image:
    a: np.ndarray = np.asarray(img).astype(np.float32)  # (H, W)
    if img.mode in _16BIT_MODES or (img.mode == "I" and a.min() >= 0 and a.max() <= 65535):
        a = a / 257
    else:
        a = _stretch(a)
    return Image.fromarray(np.rint(np.clip(a, 0, 255)).astype(np.uint8)).convert("RGB")


def _stretch(a: np.ndarray) -> np.ndarray:
    finite = a[np.isfinite(a)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    a = np.nan_to_num(a, nan=lo, posinf=hi, neginf=lo)
    return (a - lo) * (255 / (hi - lo)) if hi > lo else a


# ----------------------------------------------------------------------------- resizing


def resize_longest(img: Image.Image, size: int) -> Image.Image:
    """Scale so the longest side is ``size``, keeping the aspect ratio (other side rounded, >= 1).

    LANCZOS when shrinking, BICUBIC when enlarging (LANCZOS rings visibly when upscaling).
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    w, h = img.size
    scale = size / max(w, h)
    return resize_to(img, max(1, round(w * scale)), max(1, round(h * scale)))


def resize_to(img: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to exactly ``width`` x ``height``; same filters as ``resize_longest``."""
    if width < 1 or height < 1:
        raise ValueError(f"width and height must be >= 1, got {width}x{height}")
    enlarging = width > img.width or height > img.height
    return img.resize(
        (width, height), Image.Resampling.BICUBIC if enlarging else Image.Resampling.LANCZOS
    )


# Aspect buckets: so that a collection of mixed photos runs in batches of one shape, the
# longest side becomes ``size`` and the aspect ratio (long/short) snaps to the nearest power
# of 2**(1/8) (buckets 9% apart, so at most 4.4% away), the short side rounded to whole
# pixels. An image whose aspect would change by more than MAX_ASPECT_CHANGE (panoramas past
# the bucket range, tiny sizes) keeps its exact shape instead; a short side of a few pixels
# may then differ by rounding alone. Photos from 1:1 to 2:1 land on 9 shapes per orientation.
ASPECT_STEP = 2 ** (1 / 8)
MAX_ASPECT_CHANGE = 0.06  # the bound: max(r, 1/r) - 1 <= 6%, r = new aspect / old aspect


def bucket_shape(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) of the bucket for an image, longest side ``size``."""
    long_, short = max(width, height), min(width, height)
    aspect = long_ / short
    snapped = ASPECT_STEP ** round(math.log(aspect, ASPECT_STEP))
    new_short = max(1, min(size, round(size / snapped)))
    change = (size / new_short) / aspect
    if max(change, 1 / change) - 1 > MAX_ASPECT_CHANGE:
        new_short = max(1, min(size, round(size / aspect)))
    return (size, new_short) if width >= height else (new_short, size)


def resize_bucket(img: Image.Image, size: int) -> Image.Image:
    """Resize onto the image's aspect bucket (see ``bucket_shape``)."""
    return resize_to(img, *bucket_shape(img.width, img.height, size))


# ----------------------------------------------------------------------------- tensors


def to_tensor(img: Image.Image) -> torch.Tensor:
    """Image -> (3, H, W) float32 in 0..255. Non-RGB modes convert as ``decode_image`` does."""
    import torch

    rgb = img if img.mode == "RGB" else _to_rgb(img)
    arr = np.array(rgb, dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(arr).permute(2, 0, 1).float().contiguous()  # (3, H, W)


def from_tensor(t: torch.Tensor) -> Image.Image:
    """(3, H, W) tensor of any device and dtype, 0..255 -> 8-bit RGB image (clamped, rounded)."""
    hwc = _hwc(t)
    return Image.fromarray(np.rint(np.clip(hwc, 0, 255)).astype(np.uint8))


def _hwc(t: torch.Tensor) -> np.ndarray:
    if t.ndim != 3 or t.shape[0] != 3:
        raise ValueError(f"expected an image tensor of shape (3, H, W), got {tuple(t.shape)}")
    import torch

    hwc = t.detach().to("cpu", torch.float32).permute(1, 2, 0).contiguous().numpy()  # (H, W, 3)
    if np.isnan(hwc).any():
        raise ValueError("image tensor contains NaN; the optimisation diverged")
    return hwc


def load_image(path: str | os.PathLike[str] | bytes, size: int | None = None) -> torch.Tensor:
    """Decode, optionally scale the longest side to ``size``, and return (3, H, W) float32."""
    img = decode_image(path)
    return to_tensor(resize_longest(img, size) if size else img)


# ----------------------------------------------------------------------------- encoding


def format_from_path(path: str | os.PathLike[str]) -> str:
    """Output format from the file extension (case-insensitive): ".jpg" -> "jpeg", and so on."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in _EXTENSIONS:
        raise ImageError(
            f"{os.fspath(path)}: unknown image extension {ext!r}; use one of "
            f"{', '.join(_EXTENSIONS)} (formats: {', '.join(OUTPUT_FORMATS)})"
        )
    return _EXTENSIONS[ext]


def encode_image(t: torch.Tensor, fmt: str = "png", quality: int = 95, bit_depth: int = 8) -> bytes:
    """Encode a (3, H, W) 0..255 tensor. ``quality`` (1..100) applies to jpeg and webp;
    ``bit_depth`` 16 is for png and tiff only."""
    _check_output(fmt, quality, bit_depth)
    if bit_depth == 16:
        rgb16 = np.rint(np.clip(_hwc(t) * 257, 0, 65535)).astype(np.uint16)  # (H, W, 3)
        return _png16(rgb16) if fmt == "png" else _tiff16(rgb16)
    img, buf = from_tensor(t), io.BytesIO()
    try:
        img.save(buf, fmt.upper(), **_save_options(fmt, quality))
    except (OSError, ValueError) as err:  # e.g. WebP's 16383-pixel and JPEG's 65500-pixel limits
        raise ImageError(
            f"cannot encode a {img.width}x{img.height} image as {fmt} ({one_line(err)})"
        ) from err
    return buf.getvalue()


def _check_output(fmt: str, quality: int, bit_depth: int) -> None:
    if fmt not in OUTPUT_FORMATS:
        raise ImageError(f"unknown output format {fmt!r}; use one of {', '.join(OUTPUT_FORMATS)}")
    if bit_depth not in BIT_DEPTHS:
        raise ImageError(f"bit_depth must be one of {BIT_DEPTHS}, got {bit_depth!r}")
    problem = bit_depth_problem(bit_depth, fmt)
    if problem:
        raise ImageError(f"bit_depth {problem}")
    if not 1 <= quality <= 100:
        raise ImageError(f"quality must be in 1..100, got {quality!r}")


def _save_options(fmt: str, quality: int) -> dict[str, Any]:
    if fmt == "jpeg":  # 4:4:4: stylised textures have fine colour detail that 4:2:0 smears
        return {"quality": quality, "subsampling": 0}
    if fmt == "webp":
        return {"quality": quality}
    if fmt == "tiff":
        return {"compression": "tiff_adobe_deflate"}
    return {}


def _png16(rgb: np.ndarray) -> bytes:
    """48-bit RGB PNG from (H, W, 3) uint16."""
    h, w, _ = rgb.shape
    raw = rgb.astype(">u2").view(np.uint8).reshape(h, w * 6)  # (H, W*6) big-endian bytes
    sub = raw.copy()
    sub[:, 6:] -= raw[:, :-6]  # Sub filter: minus the same byte of the previous pixel, mod 256
    rows = np.hstack([np.ones((h, 1), np.uint8), sub])  # (H, 1 + W*6), filter type 1 first
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # depth 16, colour type 2 (RGB)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
        + _png_chunk(b"IEND", b"")
    )


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _tiff16(rgb: np.ndarray) -> bytes:
    """Little-endian 16-bit RGB TIFF from (H, W, 3) uint16: one strip, deflate, predictor 2."""
    h, w, _ = rgb.shape
    diff = rgb.copy()
    diff[:, 1:] -= rgb[:, :-1]  # horizontal predictor: minus the previous pixel, mod 65536
    strip = zlib.compress(diff.astype("<u2").tobytes(), 6)
    n = 11
    bits_at = 8 + 2 + n * 12 + 4  # after the header and the IFD
    strip_at = bits_at + 6
    short, long_ = 3, 4
    entries = [
        (256, long_, 1, w),
        (257, long_, 1, h),
        (258, short, 3, bits_at),
        (259, short, 1, 8),
        (262, short, 1, 2),
        (273, long_, 1, strip_at),
        (277, short, 1, 3),
        (278, long_, 1, h),
        (279, long_, 1, len(strip)),
        (284, short, 1, 1),
        (317, short, 1, 2),
    ]
    ifd = (
        struct.pack("<H", n)
        + b"".join(
            struct.pack(
                "<HHIH2x" if typ == short and count == 1 else "<HHII", tag, typ, count, value
            )
            for tag, typ, count, value in entries
        )
        + struct.pack("<I", 0)
    )
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<3H", 16, 16, 16) + strip
