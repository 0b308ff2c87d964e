"""Face alignment: GPEN's template, similarity fits, aligned crops and mapping points back."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from deskpro.pipeline import faces

# GPEN's 512-px template as the reference README gives it (x, y).
README_TEMPLATE_512 = np.array(
    [[202.04, 242.88], [309.43, 242.29], [256.08, 303.96], [211.96, 366.83], [300.89, 366.34]]
)


def similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    a = math.radians(angle_deg)
    c, s = scale * math.cos(a), scale * math.sin(a)
    return np.array([[c, -s, tx], [s, c, ty]])


def test_template_512_matches_readme():
    t = faces.gpen_template(512)
    assert t.shape == (5, 2) and t.dtype == np.float32
    np.testing.assert_allclose(t, README_TEMPLATE_512, atol=0.01)


@pytest.mark.parametrize("size", [128, 224, 256])
def test_template_scales_with_size(size):
    np.testing.assert_allclose(faces.gpen_template(size), faces.gpen_template(512) * size / 512, atol=1e-4)


def test_template_is_left_right_ordered():
    t = faces.gpen_template(256)
    assert t[0, 0] < t[1, 0] and t[3, 0] < t[4, 0]  # left eye/mouth left of right eye/mouth
    assert t[0, 1] < t[2, 1] < t[3, 1]  # eyes above nose above mouth


@pytest.mark.parametrize(
    ("angle", "scale", "tx", "ty"), [(0, 1, 0, 0), (17, 0.4, -3, 12), (-40, 2.5, 30, -7)]
)
def test_similarity_matrix_recovers_an_exact_similarity(angle, scale, tx, ty):
    src = np.random.default_rng(0).uniform(0, 100, (5, 2))
    m = similarity(angle, scale, tx, ty)
    dst = faces.transform_points(src, m)
    np.testing.assert_allclose(faces.similarity_matrix(src, dst), m, atol=1e-9)


def test_similarity_never_reflects():
    src = faces.gpen_template(128).astype(np.float64)
    mirrored = src * [-1, 1]  # a mirror image: the best similarity must still be a rotation
    m = faces.similarity_matrix(mirrored, src)
    assert np.linalg.det(m[:, :2]) > 0


def landmarks_in_image(size: int, matrix_image_to_crop: np.ndarray) -> np.ndarray:
    """Where the template points lie in an image that the given similarity maps onto the crop."""
    return faces.transform_points(faces.gpen_template(size), faces.inverse_matrix(matrix_image_to_crop))


def test_align_face_puts_landmarks_on_template():
    size = 128
    truth = similarity(23, 0.8, -40, 10)  # image -> crop
    lm = landmarks_in_image(size, truth)
    crop, m = faces.align_face(np.zeros((240, 200, 3), np.uint8), lm, size)
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
    np.testing.assert_allclose(faces.transform_points(lm, m), faces.gpen_template(size), atol=1e-3)
    np.testing.assert_allclose(m, truth, atol=1e-6)


def test_inverse_maps_points_back():
    lm = np.array([[60.0, 80.0], [95.0, 78.0], [77.0, 100.0], [63.0, 120.0], [92.0, 119.0]])
    _, m = faces.align_face(np.zeros((200, 160), np.uint8), lm, 256)
    inv = faces.inverse_matrix(m)
    np.testing.assert_allclose(inv, cv2.invertAffineTransform(m), atol=1e-9)
    pts = np.random.default_rng(1).uniform(0, 256, (7, 2))
    np.testing.assert_allclose(faces.transform_points(faces.transform_points(pts, inv), m), pts, atol=1e-9)
    np.testing.assert_allclose(faces.transform_points(faces.transform_points(lm, m), inv), lm, atol=1e-9)


def draw_dots(shape: tuple[int, int], points: np.ndarray, sigma: float) -> np.ndarray:
    """A float image with a Gaussian dot at each (sub-pixel) point; pixel centres at integers."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    img = np.zeros(shape)
    for x, y in points:
        img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return img.astype(np.float32)


def centroids(img: np.ndarray, around: np.ndarray, radius: int) -> np.ndarray:
    out = []
    for x, y in around:
        x0, y0 = int(round(x)) - radius, int(round(y)) - radius
        win = img[y0 : y0 + 2 * radius + 1, x0 : x0 + 2 * radius + 1].astype(np.float64)
        yy, xx = np.mgrid[y0 : y0 + 2 * radius + 1, x0 : x0 + 2 * radius + 1]
        out.append([(win * xx).sum() / win.sum(), (win * yy).sum() / win.sum()])
    return np.array(out)


def test_drawn_dots_land_on_template_pixels():
    size = 128
    truth = similarity(-15, 1.6, 5, -20)  # image -> crop, an up-scaling like a small re-id face
    lm = landmarks_in_image(size, truth)
    image = draw_dots((110, 90), lm, sigma=1.2)
    # six channels: OpenCV warps at most four at once, the crop must still keep them all in order
    stack = np.stack([image * (c + 1) for c in range(6)], axis=2)
    crop, _ = faces.align_face(stack, lm, size)
    assert crop.shape == (size, size, 6)
    for c in range(6):
        np.testing.assert_allclose(crop[:, :, c], crop[:, :, 0] * (c + 1), rtol=1e-4, atol=1e-4)
    found = centroids(crop[:, :, 0], faces.gpen_template(size), radius=6)
    np.testing.assert_allclose(found, faces.gpen_template(size), atol=0.15)


def test_grey_and_single_channel_images_keep_their_layout():
    lm = faces.gpen_template(64) + 10
    grey, _ = faces.align_face(np.ones((100, 100), np.uint8), lm, 64)
    single, _ = faces.align_face(np.ones((100, 100, 1), np.uint8), lm, 64)
    assert grey.shape == (64, 64) and single.shape == (64, 64, 1)


def test_outside_the_image_is_black():
    lm = faces.gpen_template(64).astype(np.float64) - 40  # face partly above-left of the image
    crop, _ = faces.align_face(np.full((80, 80, 3), 200, np.uint8), lm, 64)
    assert (crop[:5, :5] == 0).all() and (crop[-5:, -5:] == 200).all()


@pytest.mark.parametrize(
    ("landmarks", "message"),
    [
        (np.zeros((5, 2)), "degenerate landmarks"),
        (np.zeros((4, 2)), r"landmarks must be \(5, 2\)"),
        (np.full((5, 2), np.nan), "non-finite"),
    ],
)
def test_bad_landmarks_raise(landmarks, message):
    with pytest.raises(ValueError, match=message):
        faces.align_face(np.zeros((50, 50, 3), np.uint8), landmarks, 64)


def test_bad_matrix_raises():
    with pytest.raises(ValueError, match=r"affine matrix must be \(2, 3\)"):
        faces.transform_points(np.zeros((1, 2)), np.eye(3))
