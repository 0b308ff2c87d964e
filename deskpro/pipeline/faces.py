"""Five-point face alignment: GPEN's landmark template, similarity fits, aligned crops and point mapping.

Landmark order everywhere: left eye, right eye, nose, left mouth corner, right mouth corner (image-left
first), in pixel coordinates whose integer values are pixel centres (OpenCV's convention).
"""

from __future__ import annotations

import cv2
import numpy as np
from skimage.transform import SimilarityTransform

# The ArcFace / SphereFace 5-point reference in a 96x112 (width x height) crop.
ARCFACE_REFERENCE_96X112 = np.array(
    [
        [30.29459953, 51.69630051],
        [65.53179932, 51.50139999],
        [48.02519989, 71.73660278],
        [33.54930115, 92.3655014],
        [62.72990036, 92.20410156],
    ],
    dtype=np.float64,
)
ARCFACE_CROP_WH = (96, 112)
GPEN_INNER_PADDING = 0.25


def gpen_template(size: int) -> np.ndarray:
    """GPEN's 5 reference points in a size x size crop: float32 (5, 2) x, y.

    The 96x112 reference is centred in a 112x112 square, then grown by an inner padding of 0.25 on each
    side (112 -> 168, points shifted by 28) and scaled by size / 168, as GPEN's face_enhancement does.
    """
    if size <= 0:
        raise ValueError(f"template size must be positive, got {size}")
    points = ARCFACE_REFERENCE_96X112.copy()
    crop = np.array(ARCFACE_CROP_WH, dtype=np.float64)
    square_pad = crop.max() - crop  # make the crop square by padding the short side equally
    points += square_pad / 2
    side = crop.max()
    inner_pad = side * GPEN_INNER_PADDING * 2
    points += inner_pad / 2
    side += round(inner_pad)
    return (points * (size / side)).astype(np.float32)


def _check_points(points: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(points, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must be an (N, 2) array of x, y points, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values")
    return arr


def similarity_matrix(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping src to dst.

    Umeyama's method via skimage's SimilarityTransform. Returns the float64 (2, 3) affine matrix.
    Raises ValueError for degenerate points (e.g. all landmarks at one place).
    """
    src = _check_points(src, "src")
    dst = _check_points(dst, "dst")
    if src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"src and dst must have one shape with >= 2 points, got {src.shape} and {dst.shape}")
    tform = SimilarityTransform.from_estimate(src, dst)
    matrix = getattr(tform, "params", None)
    ok = bool(tform) and matrix is not None and np.all(np.isfinite(matrix))
    if not ok or abs(np.linalg.det(matrix[:2, :2])) < 1e-12:
        raise ValueError(f"degenerate landmarks: no similarity transform maps {src.tolist()} to the template")
    return np.asarray(matrix[:2], dtype=np.float64)


def _check_affine(matrix: np.ndarray) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (2, 3):
        raise ValueError(f"affine matrix must be (2, 3), got {m.shape}")
    return m


def inverse_matrix(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a (2, 3) affine matrix, as a float64 (2, 3) matrix."""
    full = np.vstack([_check_affine(matrix), [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine matrix to (N, 2) x, y points; returns float64 (N, 2)."""
    pts = _check_points(points, "points")
    m = _check_affine(matrix)
    return pts @ m[:, :2].T + m[:, 2]


def _warp(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """cv2.warpAffine (bicubic, black border) for any channel count: OpenCV handles at most 4 at once."""
    flags = dict(flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if image.ndim == 2:
        return cv2.warpAffine(image, matrix, (size, size), **flags)
    chunks = [
        cv2.warpAffine(np.ascontiguousarray(image[:, :, c : c + 4]), matrix, (size, size), **flags)
        for c in range(0, image.shape[2], 4)
    ]
    chunks = [ch[:, :, None] if ch.ndim == 2 else ch for ch in chunks]
    return np.concatenate(chunks, axis=2)


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop the face whose 5 landmarks are given, aligned to `gpen_template(size)`.

    image: HxW or HxWxC (any C, any dtype OpenCV warps). Returns (crop [size, size(, C)] of the image's
    dtype, matrix (2, 3) mapping image coordinates to crop coordinates). Pixels outside the image are 0.
    """
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3) or image.size == 0:
        got = getattr(image, "shape", type(image).__name__)
        raise ValueError(f"image must be a non-empty HxW or HxWxC array, got {got}")
    lm = _check_points(landmarks, "landmarks")
    if lm.shape != (5, 2):
        raise ValueError(f"landmarks must be (5, 2), got {lm.shape}")
    matrix = similarity_matrix(lm, gpen_template(size))
    return _warp(image, matrix, size), matrix
