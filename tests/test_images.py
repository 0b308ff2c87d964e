"""The one image decoder: every mode and bit depth to uint8 RGB, EXIF ignored, size limit, stable errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deskpro.common import images


def _encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _ramp16() -> np.ndarray:
    return np.array([[0, 255, 256, 32768], [40000, 65280, 65535, 1000]], np.uint16)


def test_a_16_bit_grey_png_keeps_its_levels() -> None:
    data = _encode(Image.fromarray(_ramp16()))  # mode I;16: Pillow's convert("RGB") clips it to white
    rgb = images.decode_image_bytes(data, "x.png")
    expected = (_ramp16() >> 8).astype(np.uint8)  # OpenCV imread's rule: the top 8 bits
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 4, 3)
    assert np.array_equal(rgb[..., 0], expected) and np.array_equal(rgb[..., 2], expected)


def test_the_16_bit_rule_matches_opencv_imread(tmp_path: Path) -> None:
    import cv2

    path = tmp_path / "x.png"
    cv2.imwrite(str(path), _ramp16())
    assert np.array_equal(images.read_image_rgb(path), cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1])


@pytest.mark.parametrize(
    ("mode", "values", "expected"),
    [
        ("I", np.array([[0, 256, 65535, 70000]], np.int32), [0, 1, 255, 255]),  # 16-bit range, clipped
        ("F", np.array([[0.0, 0.5, 1.0, 2.0]], np.float32), [0, 128, 255, 255]),  # [0, 1], clipped
    ],
)
def test_wide_modes_are_scaled_not_clipped(mode: str, values: np.ndarray, expected: list[int]) -> None:
    data = _encode(Image.fromarray(values, mode), "TIFF")
    rgb = images.decode_image_bytes(data, "x.tif")
    assert rgb[0, :, 1].tolist() == expected


def test_alpha_is_dropped_and_palettes_are_looked_up() -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = (10, 20, 30), [[0, 255], [128, 0]]
    assert np.all(images.decode_image_bytes(_encode(Image.fromarray(rgba, "RGBA"))) == (10, 20, 30))
    la = Image.fromarray(np.array([[[70, 0], [90, 255]]], np.uint8), "LA")
    assert images.decode_image_bytes(_encode(la))[0, :, 0].tolist() == [70, 90]
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0
    assert images.decode_image_bytes(_encode(palette)).tolist() == [[[0, 0, 0], [200, 100, 50]]]


def test_cmyk_jpeg_decodes_to_rgb() -> None:
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # pure red in CMYK
    rgb = images.decode_image_bytes(_encode(cmyk, "JPEG", quality=95))
    assert rgb.shape == (4, 4, 3) and rgb[..., 0].min() > 240 and rgb[..., 1:].max() < 15


def test_exif_orientation_is_ignored() -> None:
    pixels = np.zeros((2, 6, 3), np.uint8)
    pixels[:, :3] = 255  # wide image, left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = _encode(Image.fromarray(pixels), "PNG", exif=exif)
    assert np.array_equal(images.decode_image_bytes(data), pixels)  # stored pixels, as stored


def test_an_image_over_max_pixels_is_refused_before_decoding(tmp_path: Path) -> None:
    # A 14000 x 14000 JPEG (196 MP, over Pillow's bomb limit) in a few hundred KB: grey, smooth.
    path = tmp_path / "big.jpg"
    Image.new("L", (14000, 14000), 128).save(path, quality=10)
    with pytest.raises(
        images.ImageDecodeError, match=r"big\.jpg: image of 196,000,000 pixels is over --max-"
    ):
        images.read_image_rgb(path)
    rows = {"sample_id": np.array(["a"]), "path": np.array(["big.jpg"])}
    out = images.decode_batch(rows, root=str(tmp_path))
    assert out["error"][0] == "big.jpg: image of 196,000,000 pixels is over --max-pixels 50,000,000"
    small = tmp_path / "small.png"
    Image.new("RGB", (100, 100)).save(small)
    with pytest.raises(
        images.ImageDecodeError, match=r"100x100 image \(10,000 pixels\) is over --max-pixels 9,999"
    ):
        images.read_image_rgb(small, max_pixels=9_999)
    assert images.read_image_rgb(small, max_pixels=10_000).shape == (100, 100, 3)


@pytest.mark.parametrize("data", [b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 20, b""])
def test_error_messages_are_the_same_every_run(data: bytes) -> None:
    messages = set()
    for _ in range(2):
        with pytest.raises(images.ImageDecodeError) as info:
            images.decode_image_bytes(bytes(data), "x.jpg")
        messages.add(str(info.value))
    (message,) = messages
    assert (
        message.startswith("x.jpg: cannot decode image") and " at 0x" not in message and "\n" not in message
    )


def test_a_truncated_jpeg_is_an_error_not_a_grey_image() -> None:
    data = _encode(Image.new("RGB", (64, 64), (200, 10, 10)), "JPEG")
    with pytest.raises(images.ImageDecodeError, match=r"x\.jpg: cannot decode image \(Truncated File Read\)"):
        images.decode_image_bytes(data[: len(data) // 2], "x.jpg")
