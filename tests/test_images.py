"""Tests for stylize.images: every input format and mode, the failure cases, and 16-bit output."""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import stylize
from stylize import images
from stylize.common import write_atomic
from stylize.images import ImageError

SAMPLES = Path(stylize.__file__).parent / "samples"
SHARED_IMAGES = Path(
    os.environ.get("STYLIZE_TEST_IMAGES", Path(__file__).resolve().parents[2] / "shared" / "images")
)


@pytest.fixture(scope="module")
def sample() -> Image.Image:
    with Image.open(SAMPLES / "tubingen.jpg") as img:
        return img.convert("RGB")  # 384x288


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float64)


def encoded(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


# ----------------------------------------------------------------------------- input formats


@pytest.mark.parametrize(
    "fmt, options, tolerance",
    [
        ("png", {}, 0),
        ("jpeg", {"quality": 95}, 3),
        ("webp", {"lossless": True}, 0),
        ("tiff", {}, 0),
        ("bmp", {}, 0),
        ("gif", {}, 12),  # GIF quantises to 256 colours
    ],
)
def test_input_formats_round_trip(tmp_path, sample, fmt, options, tolerance):
    path = tmp_path / f"tubingen.{fmt}"
    sample.save(path, fmt, **options)
    for source in (path, str(path), path.read_bytes()):
        img = images.decode_image(source)
        assert img.mode == "RGB" and img.size == sample.size
        assert np.abs(pixels(img) - pixels(sample)).mean() <= tolerance


def test_bundled_samples_decode():
    for path in sorted(SAMPLES.glob("*.jpg")):
        img = images.decode_image(path)
        assert img.mode == "RGB" and min(img.size) > 0


def test_gif_first_frame():
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = encoded(frames[0], "gif", save_all=True, append_images=frames[1:])
    assert images.decode_image(data).getpixel((4, 4)) == (255, 0, 0)


def test_exif_orientation_applied(sample):
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    img = images.decode_image(encoded(sample, "jpeg", quality=95, exif=exif))
    assert img.size == (sample.height, sample.width)
    rotated = sample.transpose(Image.Transpose.ROTATE_270)
    assert np.abs(pixels(img) - pixels(rotated)).mean() < 3


# ----------------------------------------------------------------------------- modes


def test_grayscale_to_rgb(sample):
    gray = sample.convert("L")
    a = pixels(images.decode_image(encoded(gray, "png")))
    assert (a == pixels(gray)[..., None]).all()


@pytest.mark.skipif(
    not (SHARED_IMAGES / "escher_sphere.jpg").exists(), reason="shared test images not present"
)
def test_real_grayscale_jpeg():
    img = images.decode_image(SHARED_IMAGES / "escher_sphere.jpg")
    a = pixels(img)
    assert img.mode == "RGB" and img.size == (960, 1475)
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()


@pytest.mark.parametrize("fmt", ["png", "gif"])
def test_palette_transparency_becomes_white(fmt):
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
    pal.putpixel((1, 1), 1)
    img = images.decode_image(encoded(pal, fmt, transparency=0))
    assert img.getpixel((1, 1)) == (255, 0, 0)
    assert img.getpixel((0, 0)) == (255, 255, 255)


def test_alpha_composited_onto_white():
    rgba = Image.new("RGBA", (3, 1))
    for x, alpha in enumerate((0, 128, 255)):
        rgba.putpixel((x, 0), (255, 0, 0, alpha))
    img = images.decode_image(encoded(rgba, "png"))
    assert img.getpixel((0, 0)) == (255, 255, 255)
    assert img.getpixel((1, 0))[1] in (127, 128)
    assert img.getpixel((2, 0)) == (255, 0, 0)
    la = images.decode_image(encoded(Image.new("LA", (2, 2), (0, 0)), "png"))
    assert la.getpixel((0, 0)) == (255, 255, 255)


def test_cmyk(sample):
    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putpixel((1, 0), (0, 255, 255, 0))
    img = images.decode_image(encoded(cmyk, "tiff"))
    assert [img.getpixel((x, 0)) for x in (0, 1)] == [(255, 255, 255), (255, 0, 0)]
    jpeg = images.decode_image(encoded(sample.convert("CMYK"), "jpeg", quality=95))
    assert np.abs(pixels(jpeg) - pixels(sample)).mean() < 3


def test_16_bit_grayscale_scaled_by_257():
    i16 = Image.fromarray(np.array([[0, 100 * 257, 65535]], dtype=np.uint16))
    assert i16.mode == "I;16"
    for fmt in ("png", "tiff", "ppm"):  # Pillow opens 16-bit PPM as mode I
        img = images.decode_image(encoded(i16, fmt))
        assert [img.getpixel((x, 0)) for x in range(3)] == [(0,) * 3, (100,) * 3, (255,) * 3]


def test_bilevel():
    bw = Image.new("1", (2, 1), 0)
    bw.putpixel((1, 0), 1)
    img = images.decode_image(encoded(bw, "png"))
    assert [img.getpixel((x, 0)) for x in (0, 1)] == [(0, 0, 0), (255, 255, 255)]


def test_wide_range_int_and_float_are_stretched():
    ints = Image.fromarray(np.array([[-1000, 0, 99000]], dtype=np.int32))
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0, np.nan]], dtype=np.float32))
    assert (ints.mode, floats.mode) == ("I", "F")
    assert images.to_tensor(ints)[0, 0].tolist() == [0, 3, 255]
    assert images.to_tensor(floats)[0, 0].tolist() == [0, 128, 255, 0]
    assert images.to_tensor(Image.new("F", (1, 1), 7.0))[0, 0, 0] == 7


@pytest.mark.parametrize(
    "mode, value, expected",
    [
        ("HSV", (0, 255, 255), (255, 0, 0)),
        ("LAB", (255, 128, 128), (254, 255, 254)),
        ("YCbCr", (255, 128, 128), (255, 255, 255)),
        ("RGBX", (1, 2, 3, 0), (1, 2, 3)),
        ("La", (0, 0), (255, 255, 255)),
        ("RGBa", (0, 0, 0, 0), (255, 255, 255)),
    ],
)
def test_other_modes_in_memory(mode, value, expected):
    t = images.to_tensor(Image.new(mode, (1, 1), value))
    assert tuple(t[:, 0, 0].tolist()) == expected


# ----------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    "data, problem",
    [
        (b"", "empty"),
        (b"hello, this is text\n" * 10, "not an image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not an image"),
        (b"BM" + b"\x01" * 60, "corrupt image header"),
    ],
)
def test_bad_bytes(data, problem):
    with pytest.raises(ImageError, match=f"^<bytes>: {problem}"):
        images.decode_image(data)


def test_truncated_jpeg_and_png(sample):
    for fmt in ("jpeg", "png"):
        data = encoded(sample, fmt)
        with pytest.raises(ImageError, match=f"cut.{fmt}: truncated"):
            images.decode_image(data[: len(data) // 2], name=f"cut.{fmt}")


def test_file_errors_name_the_file(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image\n")
    (tmp_path / "empty.jpg").write_bytes(b"")
    cases = {
        "missing.jpg": "cannot read file",
        "notes.txt": "not an image",
        "empty.jpg": "empty file",
        ".": "cannot read file",
    }
    for name, problem in cases.items():
        with pytest.raises(ImageError) as info:
            images.decode_image(tmp_path / name)
        message = str(info.value)
        assert message.startswith(f"{tmp_path / name}: {problem}") and "\n" not in message


def test_decompression_bomb_refused_before_decoding(monkeypatch, sample):
    data = encoded(sample, "png")
    monkeypatch.setattr(images, "MAX_PIXELS", sample.width * sample.height - 1)
    with pytest.raises(ImageError, match="big.png: refused as a decompression bomb .*MAX_PIXELS"):
        images.decode_image(data, name="big.png")
    monkeypatch.setattr(images, "MAX_PIXELS", sample.width * sample.height)
    assert images.decode_image(data).size == sample.size


def test_pillow_bomb_limit_error_and_warning(monkeypatch, sample):
    data = encoded(sample, "png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError, match="decompression bomb"):
        images.decode_image(data)
    # Between Pillow's limit and twice it Pillow only warns; MAX_PIXELS decides, quietly.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", sample.width * sample.height - 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert images.decode_image(data).size == sample.size


def test_zero_size_refused(monkeypatch):
    # Pillow's plugins already refuse zero-size headers; the check guards against ones that don't.
    monkeypatch.setattr(images.Image, "open", lambda fp: Image.new("RGB", (0, 5)))
    with pytest.raises(ImageError, match="z.png: zero-size image \\(0x5\\)"):
        images.decode_image(b"anything", name="z.png")


# ----------------------------------------------------------------------------- resizing, tensors


@pytest.mark.parametrize(
    "size_in, size, expected",
    [
        ((384, 288), 128, (128, 96)),
        ((288, 384), 512, (384, 512)),
        ((300, 200), 100, (100, 67)),
        ((1000, 3), 10, (10, 1)),
        ((50, 50), 50, (50, 50)),
    ],
)
def test_resize_longest(size_in, size, expected):
    assert images.resize_longest(Image.new("RGB", size_in), size).size == expected


def test_resize_to_and_bad_sizes(sample):
    assert images.resize_to(sample, 31, 17).size == (31, 17)
    with pytest.raises(ValueError):
        images.resize_longest(sample, 0)
    with pytest.raises(ValueError):
        images.resize_to(sample, 0, 10)


def test_tensor_round_trip(sample):
    t = images.to_tensor(sample)
    assert t.shape == (3, sample.height, sample.width) and t.dtype == torch.float32
    assert t.is_contiguous() and 0 <= t.min() and t.max() <= 255
    assert t[:, 5, 7].tolist() == list(sample.getpixel((7, 5)))
    assert (pixels(images.from_tensor(t)) == pixels(sample)).all()


def test_from_tensor_clamps_rounds_and_takes_any_dtype():
    t = torch.tensor([-20.0, 127.6, 300.0]).view(3, 1, 1).expand(3, 2, 2)
    for x in (t, t.double(), t.bfloat16(), t.clone().requires_grad_()):
        assert images.from_tensor(x).getpixel((0, 0)) == (0, 128, 255)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        images.from_tensor(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="NaN"):
        images.from_tensor(torch.full((3, 2, 2), float("nan")))


def test_load_image():
    path = SAMPLES / "starry_night.jpg"
    assert images.load_image(path).shape == (3, 240, 384)
    assert images.load_image(path, size=96).shape == (3, 60, 96)


# ----------------------------------------------------------------------------- encoding


def test_format_from_path():
    cases = {
        "a.png": "png",
        "b.JPG": "jpeg",
        "c.jpeg": "jpeg",
        "s3://x/d.webp": "webp",
        "e.tif": "tiff",
        "f.TIFF": "tiff",
    }
    for path, fmt in cases.items():
        assert images.format_from_path(path) == fmt
    with pytest.raises(ImageError, match="^out.gif: unknown image extension .*png, jpeg, webp"):
        images.format_from_path("out.gif")


@pytest.mark.parametrize("fmt", images.OUTPUT_FORMATS)
def test_encode_decode_each_format(sample, fmt):
    t = images.to_tensor(images.resize_longest(sample, 64))  # (3, 48, 64)
    img = images.decode_image(images.encode_image(t, fmt))
    assert img.size == (64, 48)
    assert np.abs(pixels(img) - t.permute(1, 2, 0).numpy()).mean() < 4


def test_encode_quality_matters(sample):
    t = images.to_tensor(sample)
    assert len(images.encode_image(t, "jpeg", quality=30)) < len(images.encode_image(t, "jpeg"))


@pytest.mark.parametrize(
    "kwargs, problem",
    [
        ({"fmt": "gif"}, "unknown output format 'gif'; use one of png, jpeg, webp, tiff"),
        ({"fmt": "jpeg", "bit_depth": 16}, "bit_depth 16 is only for png, tiff"),
        ({"fmt": "webp", "bit_depth": 16}, "bit_depth 16 is only for png, tiff"),
        ({"bit_depth": 12}, "bit_depth must be one of"),
        ({"fmt": "jpeg", "quality": 0}, "quality must be in 1..100"),
    ],
)
def test_encode_rejects_bad_arguments(kwargs, problem):
    with pytest.raises(ImageError, match=problem):
        images.encode_image(torch.zeros(3, 2, 2), **kwargs)


def test_encode_size_limit_is_an_image_error():
    with pytest.raises(ImageError, match="cannot encode a 16384x1 image as webp"):
        images.encode_image(torch.zeros(3, 1, 16384), "webp")


def read_png16(data: bytes) -> np.ndarray:
    """Parse a 48-bit RGB PNG written with filter types 0 or 1 -> (H, W, 3) uint16."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        assert struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])[0] == zlib.crc32(kind + body)
        chunks.append((kind, body))
        pos += 12 + n
    assert [k for k, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    w, h, depth, colour, *rest = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour, rest) == (16, 2, [0, 0, 0])
    rows = np.frombuffer(zlib.decompress(chunks[1][1]), np.uint8).reshape(h, 1 + w * 6)
    assert set(rows[:, 0].tolist()) <= {0, 1}
    out = rows[:, 1:].reshape(h, w, 6).copy()
    sub = rows[:, 0] == 1
    out[sub] = np.cumsum(out[sub], axis=1, dtype=np.uint8)  # undo Sub, mod 256
    return out.reshape(h, w * 6).view(">u2").reshape(h, w, 3)


def read_tiff16(data: bytes) -> np.ndarray:
    """Parse a one-strip deflate 16-bit RGB little-endian TIFF -> (H, W, 3) uint16."""
    assert data[:4] == b"II*\x00"
    (ifd,) = struct.unpack("<I", data[4:8])
    (n,) = struct.unpack("<H", data[ifd : ifd + 2])
    tags = {}
    for i in range(n):
        tag, typ, count, value = struct.unpack("<HHII", data[ifd + 2 + 12 * i : ifd + 14 + 12 * i])
        tags[tag] = value & 0xFFFF if typ == 3 and count == 1 else value
    assert struct.unpack("<3H", data[tags[258] : tags[258] + 6]) == (16, 16, 16)
    assert (tags[259], tags[262], tags[277], tags[284], tags[317]) == (8, 2, 3, 1, 2)
    w, h, start = tags[256], tags[257], tags[273]
    diff = np.frombuffer(zlib.decompress(data[start : start + tags[279]]), "<u2").reshape(h, w, 3)
    return np.cumsum(diff, axis=1, dtype=np.uint16)  # undo the predictor, mod 65536


@pytest.mark.parametrize("fmt, reader", [("png", read_png16), ("tiff", read_tiff16)])
def test_16_bit_output_keeps_sub_integer_precision(sample, fmt, reader):
    t = images.to_tensor(images.resize_longest(sample, 40)) + torch.rand(3, 30, 40) - 0.5
    t[:, 0, :4] = torch.tensor([-3.0, 100.25, 100.5, 300.0])
    data = images.encode_image(t, fmt, bit_depth=16)
    got = reader(data)
    hwc = t.permute(1, 2, 0).numpy()  # (H, W, 3) float32, as the encoder computes
    assert (got == np.rint(np.clip(hwc * 257, 0, 65535))).all()
    assert got[0, :4, 0].tolist() == [0, 25764, 25828, 65535]
    assert np.abs(got / 257 - np.clip(hwc, 0, 255)).max() <= 0.5 / 257 + 1e-4
    # Other readers: Pillow decodes the file to 8-bit RGB (the high bytes).
    img = images.decode_image(data)
    assert img.size == (40, 30) and (pixels(img) == got >> 8).all()


def test_encode_by_extension_and_atomic_write(tmp_path, sample):
    """What ``stylize image --output`` does: the format from the extension, one atomic write."""
    t = images.to_tensor(images.resize_longest(sample, 32))  # (3, 24, 32)
    for name, fmt in (("a.jpg", "JPEG"), ("b.tif", "TIFF"), ("c.png", "PNG"), ("d.webp", "WEBP")):
        write_atomic(tmp_path / name, images.encode_image(t, images.format_from_path(name)))
        with Image.open(tmp_path / name) as img:
            assert (img.format, img.size) == (fmt, (32, 24))
    write_atomic(tmp_path / "e.png", images.encode_image(t, "png", bit_depth=16))
    assert read_png16((tmp_path / "e.png").read_bytes()).shape == (24, 32, 3)
    with pytest.raises(ImageError, match="bit_depth 16"):
        images.encode_image(t, images.format_from_path("g.jpg"), bit_depth=16)
    with pytest.raises(ImageError, match="h.bmp: unknown image extension"):
        images.format_from_path(str(tmp_path / "h.bmp"))
    with pytest.raises(TypeError):  # a failed write leaves neither the file nor a temporary
        write_atomic(tmp_path / "i.png", "not bytes")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a.jpg",
        "b.tif",
        "c.png",
        "d.webp",
        "e.png",
    ]
