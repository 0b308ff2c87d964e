"""Image reading and encoding for the preprocessing stages: decode files into arrays, arrays into bytes.

Decoding never raises on bad input inside a batch: `decode_batch` turns an unreadable or truncated
file into an `error` string on that row, so one bad image never stops a job.
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

# Stand-in array for a row whose image could not be decoded: a valid 3-D uint8 image so that the
# batch keeps one dtype and rank; the row's `error` says it must not be used.
PLACEHOLDER = np.zeros((1, 1, 3), np.uint8)


class ImageDecodeError(ValueError):
    """An image file that cannot be read or decoded; the message names the file."""


def decode_image_bytes(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, ...) into uint8 HxWx3 RGB.

    PIL is used rather than cv2.imdecode because it raises on a truncated file, where OpenCV
    silently returns a partly grey image.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            rgb = img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError(f"{name}: cannot decode image ({exc})") from None
    return np.asarray(rgb, dtype=np.uint8)


def read_image_rgb(path: Path | str) -> np.ndarray:
    """Read an image file as uint8 HxWx3 RGB; raises ImageDecodeError naming the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot read image ({exc.strerror or exc})") from None
    return decode_image_bytes(data, str(path))


def read_image_bgr(path: Path | str) -> np.ndarray:
    """Read an image file as uint8 HxWx3 BGR (OpenCV's order, what the detectors and parsers take)."""
    return np.ascontiguousarray(read_image_rgb(path)[:, :, ::-1])


def decode_batch(batch: dict[str, np.ndarray], *, root: str) -> dict[str, np.ndarray]:
    """Read and decode the images of a batch of manifest rows (`sample_id`, `path`).

    Returns the batch's `sample_id` and `path` plus `image` (object array of uint8 HxWx3 BGR,
    PLACEHOLDER on failure) and `error` (object array: None, or "<path>: cannot decode image ...").
    Paths are relative to `root`. This is the function that Ray runs as tasks.
    """
    paths = [str(p) for p in batch["path"]]
    images = np.empty(len(paths), dtype=object)
    errors = np.empty(len(paths), dtype=object)
    for i, rel in enumerate(paths):
        path = Path(root) / rel
        try:
            images[i] = read_image_bgr(path)
        except ImageDecodeError as exc:  # the message names the path as the manifest has it
            images[i], errors[i] = PLACEHOLDER, str(exc).replace(str(path), rel, 1)
    return {
        "sample_id": np.asarray(batch["sample_id"], dtype=object),
        "path": np.asarray(paths, dtype=object),
        "image": images,
        "error": errors,
    }


def encode_png(array: np.ndarray, rgb: bool = True) -> bytes:
    """PNG bytes of a uint8 HxW label map or HxWx3 image (RGB unless rgb=False), lossless."""
    if array.dtype != np.uint8:
        raise ValueError(f"encode_png: expected uint8, got {array.dtype}")
    if array.ndim == 3 and rgb:
        array = array[:, :, ::-1]  # cv2 writes BGR; the file must hold true RGB
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(array))
    if not ok:
        raise ValueError(f"encode_png: OpenCV cannot encode an array of shape {array.shape}")
    return buf.tobytes()


def decode_png(data: bytes, rgb: bool = True) -> np.ndarray:
    """Inverse of encode_png: uint8 HxW (grey/label PNG) or HxWx3 (RGB unless rgb=False)."""
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ImageDecodeError("<png bytes>: cannot decode image")
    if array.ndim == 3 and rgb:
        array = np.ascontiguousarray(array[:, :, ::-1])
    return array


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    """JPEG bytes of a uint8 HxWx3 RGB image at the given quality."""
    ok, buf = cv2.imencode(
        ".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    )
    if not ok:
        raise ValueError(f"encode_jpeg: OpenCV cannot encode an array of shape {rgb.shape}")
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    """uint8 HxWx3 RGB from JPEG (or any image) bytes."""
    return decode_image_bytes(data, "<jpeg bytes>")
