"""Drawing of one synthetic pedestrian: the RGB image, its LIP label map and its face landmarks.

`figure.py` draws the person's shape into the label map; this module colours the image from the
labels (skin, hair, shoes, garments and their patterns), adds the face features, an umbrella when
there is one, and the camera's look (background, colour cast, resolution, blur, noise).

With a `Window` (figure.py) it draws a part of the same scene enlarged, from the same random draws:
every draw a window's pixels depend on is made as for the image, and the camera effects (the last
draws) can be left out, which gives the clean high-resolution face truth.
"""

from __future__ import annotations

import cv2
import numpy as np

from deskpro.synthetic.appearance import (
    FACE,
    GARMENT_LABELS,
    HAIR,
    LEFT_ARM,
    LEFT_LEG,
    LEFT_SHOE,
    RIGHT_ARM,
    RIGHT_LEG,
    RIGHT_SHOE,
    Identity,
    Outfit,
    View,
)
from deskpro.synthetic.figure import ONE, SHIFT, Canvas, FaceTruth, Window, draw_figure

# Per-camera colour cast (RGB gains): the same person looks a little different per camera.
CAMERA_GAINS = {"A": (1.0, 1.0, 1.0), "B": (1.06, 1.0, 0.92), "C": (0.9, 0.97, 1.08)}


def draw_person(
    ident: Identity,
    outfit: Outfit,
    view: View,
    camera: str,
    background: np.ndarray,
    size: tuple[int, int],
    rng: np.random.Generator,
    window: Window | None = None,
    camera_effects: bool = True,
) -> tuple[np.ndarray, np.ndarray, FaceTruth | None]:
    """(RGB uint8 [H,W,3], LIP labels uint8 [H,W], face truth or None when no face is visible).

    `window`: draw that part of the scene enlarged instead of the image `size` (face truth in the
    window's pixels; pixels outside the enlarged image are black). `camera_effects=False`: only the
    camera's colour cast and the view's brightness, no low-resolution capture, blur or noise.
    """
    figure = draw_figure(ident, outfit, view, size, rng, window)
    image = _colourise(figure.canvas, ident, outfit, background, size, rng)
    if figure.face is not None:
        _draw_face_features(image, ident, figure.face, figure.canvas.scale)
    if figure.occluder is not None:
        mask, colour = figure.occluder
        image[mask] = colour
    if window is not None:
        _black_outside(image, window, size)
    image = _camera_effects(image, camera, view, rng, camera_effects)
    return image, figure.canvas.labels, figure.face


def camera_background(camera: str, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A float32 RGB background larger than `size` (cropped per image): one look per camera."""
    h, w = int(size[0] * 1.25), int(size[1] * 1.6)
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    x = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    if camera == "A":  # indoor: pale wall, grey floor
        wall = _mix((205, 200, 185), (170, 165, 150), y)
        floor = _mix((150, 150, 155), (110, 110, 115), y)
        bg = np.where(y < 0.78, wall, floor) + 0 * x
    elif camera == "B":  # corridor: blue-grey with door frames
        bg = _mix((120, 135, 150), (80, 90, 100), y) + 0 * x
        doors = (np.sin(x * 2 * np.pi * 3.0) > 0.85) & (y < 0.8)
        bg = np.where(doors, bg * 0.6, bg)
    else:  # outdoors: textured pavement and greenery
        noise = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 3)[..., None]
        bg = np.where(
            y < 0.55, _mix((95, 130, 80), (70, 100, 60), y), _mix((150, 140, 130), (120, 115, 110), y)
        )
        bg = bg + 25 * noise
    return np.clip(bg, 0, 255).astype(np.float32)


def _mix(top, bottom, t: np.ndarray) -> np.ndarray:
    top, bottom = np.array(top, np.float32), np.array(bottom, np.float32)
    return top + (bottom - top) * t


def _colourise(
    c: Canvas, ident: Identity, o: Outfit, background: np.ndarray, size: tuple[int, int], rng
) -> np.ndarray:
    """Float RGB image: background crop, label colours, garment patterns, shading and outlines."""
    h, w = c.labels.shape
    y0 = rng.integers(0, background.shape[0] - size[0] + 1)
    x0 = rng.integers(0, background.shape[1] - size[1] + 1)
    image = _background(background, (y0, x0), c)
    lut = np.zeros((256, 3), np.float32)
    lut[[FACE, LEFT_ARM, RIGHT_ARM, LEFT_LEG, RIGHT_LEG]] = ident.skin
    lut[HAIR] = ident.hair
    lut[[LEFT_SHOE, RIGHT_SHOE]] = ident.shoes
    garments = [g for g in (o.upper, o.lower) if g is not None]
    for g in garments:
        lut[GARMENT_LABELS[g.kind]] = g.colour
    person = lut[c.labels]
    yy = np.arange(h, dtype=np.float32)[:, None]  # broadcast rows and columns, no full grids
    xx = np.arange(w, dtype=np.float32)[None, :]
    py, px, unit = yy, xx, c.unit  # patterns in image pixels: the same stripes at any scale
    if c.scale != 1:
        py, px = (yy + (c.origin[1] + 0.5)) / c.scale - 0.5, (xx + (c.origin[0] + 0.5)) / c.scale - 0.5
        unit = c.unit / c.scale
    for g in garments:
        label = GARMENT_LABELS[g.kind]
        period = max(2.0, g.period * unit)
        if g.pattern == "stripes":
            on = (py // (period / 2)) % 2 == 1
        elif g.pattern == "checks":
            on = ((py // period) + (px // period)) % 2 == 1
        else:
            continue
        person[(c.labels == label) & on] = g.second
    inside = c.labels > 0
    edges = np.zeros((h, w), bool)  # outlines one image pixel wide: `scale` pixels of a window
    k = c.scale
    edges[:, k:] |= c.labels[:, k:] != c.labels[:, :-k]
    edges[k:, :] |= c.labels[k:, :] != c.labels[:-k, :]
    shade = 1.0 - 0.25 * np.clip(((xx - c.cx) / (0.16 * c.unit)) ** 2, 0, 1)  # a rounded body
    factor = np.where(inside, shade, np.float32(1)) * np.where(edges, np.where(inside, 0.72, 0.85), 1.0)
    image = np.where(inside[..., None], person, image)
    return image * factor[..., None].astype(np.float32)


def _draw_face_features(image: np.ndarray, ident: Identity, face: FaceTruth, scale: int = 1) -> None:
    """Eyes, brows, nose and mouth on the image (the label map keeps them as face). Line widths are
    whole image pixels, `scale` window pixels each."""
    lm = face.landmarks
    r = max(1.0, 0.065 * float(face.box[2] - face.box[0]) / scale) * scale  # eye radius in pixels
    brow = tuple(map(float, ident.hair * 0.6))
    brow_width = max(1, round(0.7 * r / scale)) * scale
    for x, y in lm[:2]:
        _aa_ellipse(image, (x, y), (1.7 * r, 1.0 * r), (235.0, 235.0, 230.0))  # white of the eye
        _aa_ellipse(image, (x, y), (0.9 * r, 0.9 * r), (20.0, 15.0, 15.0))  # iris and pupil
        _aa_line(image, (x - 1.8 * r, y - 2.0 * r), (x + 1.8 * r, y - 2.2 * r), brow, brow_width)
    shadow = tuple(map(float, ident.skin * 0.62))
    _aa_line(image, (lm[2, 0], lm[2, 1] - 2.5 * r), (lm[2, 0], lm[2, 1]), shadow, scale)
    _aa_line(image, (lm[2, 0] - 0.8 * r, lm[2, 1]), (lm[2, 0] + 0.8 * r, lm[2, 1]), shadow, scale)
    _aa_line(image, tuple(lm[3]), tuple(lm[4]), (120.0, 35.0, 40.0), max(1, round(r / scale)) * scale)


def _aa_ellipse(image: np.ndarray, centre: tuple, axes: tuple, colour: tuple) -> None:
    c = (round(float(centre[0]) * ONE), round(float(centre[1]) * ONE))
    a = (max(1, round(axes[0] * ONE)), max(1, round(axes[1] * ONE)))
    cv2.ellipse(image, c, a, 0, 0, 360, colour, -1, cv2.LINE_AA, SHIFT)


def _aa_line(image: np.ndarray, p: tuple, q: tuple, colour: tuple, thickness: int) -> None:
    a = (round(float(p[0]) * ONE), round(float(p[1]) * ONE))
    b = (round(float(q[0]) * ONE), round(float(q[1]) * ONE))
    cv2.line(image, a, b, colour, thickness, cv2.LINE_AA, SHIFT)


def _background(background: np.ndarray, corner: tuple[int, int], c: Canvas) -> np.ndarray:
    """The image's background crop from `corner` (y, x), or a window of it enlarged (bilinear)."""
    (y0, x0), (h, w) = corner, c.labels.shape
    if c.scale == 1:
        return background[y0 : y0 + h, x0 : x0 + w]
    s, (ox, oy) = c.scale, c.origin
    # window pixel X -> background pixel x0 + (X + ox + 0.5) / s - 0.5 (pixel centres at both scales)
    matrix = np.array([[1 / s, 0, x0 + (ox + 0.5) / s - 0.5], [0, 1 / s, y0 + (oy + 0.5) / s - 0.5]])
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(background, matrix, (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)


def _black_outside(image: np.ndarray, window: Window, size: tuple[int, int]) -> None:
    """Zero the window's pixels that lie outside the enlarged image, as outside a photograph."""
    s = window.scale
    rows = np.arange(window.y0, window.y0 + window.height)
    cols = np.arange(window.x0, window.x0 + window.width)
    image[(rows < 0) | (rows >= size[0] * s)] = 0
    image[:, (cols < 0) | (cols >= size[1] * s)] = 0


def _camera_effects(
    image: np.ndarray, camera: str, v: View, rng: np.random.Generator, effects: bool = True
) -> np.ndarray:
    """Camera colour cast, brightness, then (`effects`) optional low resolution, blur and sensor noise
    -> uint8. The colour cast and brightness belong to the scene: a clean render keeps them."""
    image = image * (np.array(CAMERA_GAINS[camera], np.float32) * v.brightness)
    if not effects:
        return np.clip(image + 0.5, 0, 255).astype(np.uint8)
    h, w = image.shape[:2]
    if rng.uniform() < 0.35:  # low-resolution capture
        small = cv2.resize(image, (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA)
        image = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    image = cv2.GaussianBlur(image, (0, 0), float(rng.uniform(0.3, 1.0)))
    image = image + np.float32(rng.uniform(1.0, 4.0)) * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)
