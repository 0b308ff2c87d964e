"""Image reading and encoding for the stages, pack and the demo: files into arrays, arrays into bytes.

One decoder (`decode_image_bytes`, `read_image_rgb`) for everything that reads a dataset's images,
with these rules:
- Every Pillow mode becomes uint8 RGB. 16-bit samples (I;16*, and I, which Pillow uses for 16-bit
  PNG and TIFF) keep their top 8 bits (v >> 8), as OpenCV's imread does; float images (F) are taken
  as [0, 1]; alpha (RGBA, LA, PA) is dropped, as imread does; palettes (P) are looked up; CMYK and
  YCbCr are converted by Pillow.
- Orientation: the EXIF orientation tag is ignored. Re-id datasets are stored upright, as pixels;
  a stray tag (kept from a camera, wrong after cropping) must not turn some images on their side.
- An image over `max_pixels` (width x height) is refused before its pixels are decoded.
- Errors are one line naming the file, the same every run (no object addresses).

Decoding never raises on bad input inside a batch: `decode_batch` turns an unreadable, truncated
or too large file into an `error` string on that row, so one bad image never stops a job.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

# Stand-in array for a row whose image could not be decoded: a valid 3-D uint8 image so that the
# batch keeps one dtype and rank; the row's `error` says it must not be used.
PLACEHOLDER = np.zeros((1, 1, 3), np.uint8)
# Pillow refuses more than 2 * 89,478,485 pixels outright; re-id images are far smaller. 50 MP is
# four times a 12 MP photo: anything larger in a re-id dataset is a broken or hostile file.
DEFAULT_MAX_PIXELS = 50_000_000
_ADDRESS = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


class ImageDecodeError(ValueError):
    """An image file that cannot be read or decoded; the message names the file."""


def _to_rgb(img: Image.Image) -> np.ndarray:
    """uint8 HxWx3 RGB of a loaded Pillow image of any mode (the rules in the module docstring)."""
    mode = img.mode
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        wide = np.asarray(img).astype(np.int64)  # I;16B arrives big-endian: astype fixes the order
        grey = (np.clip(wide, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        values = np.nan_to_num(np.asarray(img, np.float32), nan=0.0)
        grey = np.round(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode in ("LA", "La"):
        img = img.getchannel("L")  # alpha dropped
    elif mode == "PA" or (mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")  # the palette looked up; the alpha dropped below
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _too_large(name: str, pillow_message: str, max_pixels: int | None) -> str:
    found = re.search(r"\((\d+) pixels\)", pillow_message)
    pixels = int(found.group(1)) if found else 0
    if max_pixels is not None and pixels > max_pixels:
        return f"{name}: image of {pixels:,} pixels is over --max-pixels {max_pixels:,}"
    return f"{name}: image of {pixels:,} pixels is over Pillow's own limit of {2 * Image.MAX_IMAGE_PIXELS:,}"


def decode_image_bytes(
    data: bytes, name: str = "<bytes>", max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, TIFF, ...) into uint8 HxWx3 RGB; ImageDecodeError naming `name`.

    PIL is used rather than cv2.imdecode because it raises on a truncated file, where OpenCV
    silently returns a partly grey image. `max_pixels=None`: Pillow's own limit only.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our limit decides
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                if max_pixels is not None and width * height > max_pixels:
                    raise ImageDecodeError(
                        f"{name}: {width}x{height} image ({width * height:,} pixels) is over "
                        f"--max-pixels {max_pixels:,}"
                    )
                img.load()
                return _to_rgb(img)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:  # over twice Pillow's limit: refused at open
        raise ImageDecodeError(_too_large(name, str(exc), max_pixels)) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{name}: cannot decode image (not an image format Pillow reads)") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        detail = _ADDRESS.sub("<bytes>", str(exc)) or type(exc).__name__
        raise ImageDecodeError(f"{name}: cannot decode image ({detail})") from None


def read_image_rgb(path: Path | str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as uint8 HxWx3 RGB; raises ImageDecodeError naming the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot read image ({exc.strerror or type(exc).__name__})") from None
    return decode_image_bytes(data, str(path), max_pixels)


def read_image_bgr(path: Path | str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as uint8 HxWx3 BGR (OpenCV's order, what the detectors and parsers take)."""
    return np.ascontiguousarray(read_image_rgb(path, max_pixels)[:, :, ::-1])


def decode_batch(
    batch: dict[str, np.ndarray], *, root: str, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> dict[str, np.ndarray]:
    """Read and decode the images of a batch of manifest rows (`sample_id`, `path`).

    Returns the batch's `sample_id` and `path` plus `image` (object array of uint8 HxWx3 BGR,
    PLACEHOLDER on failure) and `error` (object array: None, or "<path>: cannot decode image ...").
    Paths are relative to `root`; larger images than `max_pixels` are error rows. This is the
    function that Ray runs as tasks.
    """
    paths = [str(p) for p in batch["path"]]
    images = np.empty(len(paths), dtype=object)
    errors = np.empty(len(paths), dtype=object)
    for i, rel in enumerate(paths):
        path = Path(root) / rel
        try:
            images[i] = read_image_bgr(path, max_pixels)
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


def decode_jpeg(data: bytes, name: str = "<jpeg bytes>") -> np.ndarray:
    """uint8 HxWx3 RGB from JPEG (or any image) bytes."""
    return decode_image_bytes(data, name)
