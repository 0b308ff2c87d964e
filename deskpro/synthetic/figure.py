"""The figure of one synthetic pedestrian drawn into a LIP label map, and its face landmarks.

Geometry is in figure units (1.0 = figure height), drawn with OpenCV at sub-pixel precision; the
image is coloured from these labels afterwards (`draw.py`), so image and labels always line up.
A `Window` draws the same figure at an integer multiple of the image size, only the pixels of one
rectangle of it (the high-resolution face truth): same shapes, finer pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from deskpro.synthetic.appearance import (
    BACKGROUND,
    FACE,
    GARMENT_PALETTE,
    HAIR,
    LEFT_ARM,
    LEFT_LEG,
    LEFT_SHOE,
    LOWER_KINDS,
    RIGHT_ARM,
    RIGHT_LEG,
    RIGHT_SHOE,
    UPPER_KINDS,
    Identity,
    Outfit,
    View,
)

SHIFT = 4  # OpenCV fixed-point bits for sub-pixel drawing
ONE = 1 << SHIFT


@dataclass(frozen=True)
class FaceTruth:
    box: np.ndarray  # float32 (4,) x1, y1, x2, y2
    landmarks: np.ndarray  # float32 (5, 2): image-left eye, image-right eye, nose, left/right mouth


@dataclass(frozen=True)
class Window:
    """Part of the scene at `scale` times the image size: `width` x `height` pixels from (x0, y0).

    Pixel centres are integers at both scales, so image point x lies at (x + 0.5) * scale - 0.5 in
    the enlarged scene, and at that minus x0 in the window.
    """

    scale: int
    x0: int
    y0: int
    width: int
    height: int

    def to_window(self, points: np.ndarray) -> np.ndarray:
        """Image-pixel x, y points (..., 2) -> window pixels."""
        s = self.scale
        return (np.asarray(points, np.float64) + 0.5) * s - 0.5 - np.array([self.x0, self.y0], np.float64)


@dataclass
class Figure:
    """A drawn figure: its canvas (label map and placement), face truth and umbrella (None if none)."""

    canvas: Canvas
    face: FaceTruth | None
    occluder: tuple[np.ndarray, np.ndarray] | None  # (mask bool [H,W], RGB colour)


def draw_figure(
    ident: Identity,
    outfit: Outfit,
    view: View,
    size: tuple[int, int],
    rng: np.random.Generator,
    window: Window | None = None,
) -> Figure:
    """The label map of one person in one view (image `size`, or `window` of it enlarged); the face
    truth (in the label map's pixels) is None when no face is visible. Same draws from `rng` either way."""
    h, w = size
    unit = h * ident.height * view.scale
    foot = h * view.foot
    cx, top = w * (0.5 + view.dx), foot - unit
    if window is None:
        canvas = Canvas(np.zeros((h, w), np.uint8), cx=cx, top=top, unit=unit)
    else:
        (wx, wy), s = window.to_window(np.array([cx, top])), window.scale
        labels = np.zeros((window.height, window.width), np.uint8)
        canvas = Canvas(labels, cx=wx, top=wy, unit=unit * s, scale=s, origin=(window.x0, window.y0))
    body = _body(ident)
    side = 1.0 if view.facing != "back" else -1.0  # +x is the person's left when seen from the front
    if view.facing != "back":
        _draw_back_hair(canvas, ident, body)
    _draw_legs(canvas, outfit, body, view, side)
    _draw_torso(canvas, outfit, body)
    _draw_arms(canvas, outfit, body, view, side, ident)
    if view.facing == "back":
        _draw_back_hair(canvas, ident, body)
    face = _draw_head(canvas, ident, body, view)
    occluder = _draw_umbrella(canvas, body, rng) if view.facing == "occluded" else None
    return Figure(canvas, face if occluder is None else None, occluder)


class Canvas:
    """Draws shapes given in figure units into a label map.

    `scale` and `origin`: the label map is the window from `origin` of the scene enlarged `scale`
    times (1 and (0, 0) for the image itself); `cx`, `top` and `unit` are in the label map's pixels.
    """

    def __init__(
        self,
        labels: np.ndarray,
        cx: float,
        top: float,
        unit: float,
        scale: int = 1,
        origin: tuple[int, int] = (0, 0),
    ):
        self.labels, self.cx, self.top, self.unit = labels, cx, top, unit
        self.scale, self.origin = scale, origin

    def px(self, x: float, y: float) -> tuple[float, float]:
        return self.cx + x * self.unit, self.top + y * self.unit

    def poly(self, points: list[tuple[float, float]], label: int) -> None:
        pts = np.array([self.px(x, y) for x, y in points]) * ONE
        cv2.fillPoly(self.labels, [np.round(pts).astype(np.int32)], label, cv2.LINE_8, SHIFT)

    def ellipse(self, x, y, ax, ay, label, start=0, end=360) -> None:
        cx, cy = self.px(x, y)
        centre = (round(cx * ONE), round(cy * ONE))
        axes = (max(1, round(ax * self.unit * ONE)), max(1, round(ay * self.unit * ONE)))
        cv2.ellipse(self.labels, centre, axes, 0, start, end, label, -1, cv2.LINE_8, SHIFT)


@dataclass(frozen=True)
class _Body:
    """Key heights and half-widths in figure units."""

    head_h: float
    head_a: float
    shoulder_y: float
    shoulder_w: float
    waist_y: float
    waist_w: float
    hip_y: float
    hip_w: float
    wrist_y: float
    ankle_y: float


def _body(ident: Identity) -> _Body:
    head_h = 0.125 * ident.head
    return _Body(
        head_h=head_h,
        head_a=head_h * 0.39,
        shoulder_y=head_h + 0.02,
        shoulder_w=0.098 * ident.width,
        waist_y=0.44,
        waist_w=0.074 * ident.width,
        hip_y=0.52,
        hip_w=0.084 * ident.width,
        wrist_y=0.5,
        ankle_y=0.955,
    )


def _draw_back_hair(c: Canvas, ident: Identity, b: _Body) -> None:
    if ident.hair_style == "long":
        hcy = b.head_h / 2
        c.poly(
            [
                (-b.head_a * 1.2, hcy),
                (b.head_a * 1.2, hcy),
                (b.head_a * 1.05, b.shoulder_y + 0.1),
                (-b.head_a * 1.05, b.shoulder_y + 0.1),
            ],
            HAIR,
        )


def _draw_legs(c: Canvas, o: Outfit, b: _Body, v: View, side: float) -> None:
    for s, leg, shoe in ((side, LEFT_LEG, LEFT_SHOE), (-side, RIGHT_LEG, RIGHT_SHOE)):
        ax = 0.042 + v.stance
        c.poly(
            [
                (s * 0.004, b.hip_y),
                (s * b.hip_w, b.hip_y),
                (s * (ax + 0.026), b.ankle_y),
                (s * (ax - 0.026), b.ankle_y),
            ],
            leg,
        )
        c.ellipse(s * (ax + 0.006), 0.978, 0.034, 0.022, shoe)
    if o.lower is None:
        return
    label = LOWER_KINDS[o.lower.kind]
    if o.lower.kind == "trousers":
        for s in (1.0, -1.0):
            ax = 0.042 + v.stance
            c.poly(
                [
                    (s * -0.002, b.hip_y),
                    (s * (b.hip_w + 0.006), b.hip_y),
                    (s * (ax + 0.032), b.ankle_y + 0.008),
                    (s * (ax - 0.032), b.ankle_y + 0.008),
                ],
                label,
            )
        c.poly(
            [
                (-b.waist_w, b.waist_y),
                (b.waist_w, b.waist_y),
                (b.hip_w + 0.006, b.hip_y + 0.03),
                (-b.hip_w - 0.006, b.hip_y + 0.03),
            ],
            label,
        )
    else:
        hem = 0.66 + 0.06 * (o.lower.period - 0.025) / 0.025
        c.poly(
            [(-b.waist_w, b.waist_y), (b.waist_w, b.waist_y), (b.hip_w + 0.05, hem), (-b.hip_w - 0.05, hem)],
            label,
        )


def _torso_polygon(b: _Body, hem_y: float, hem_w: float) -> list[tuple[float, float]]:
    sy, sw = b.shoulder_y, b.shoulder_w
    right = [(sw, sy + 0.015), (sw * 0.93, sy + 0.08), (b.waist_w, b.waist_y), (hem_w, hem_y)]
    left = [(-x, y) for x, y in reversed(right)]
    return [(-0.35 * sw, sy - 0.008), (0.35 * sw, sy - 0.008)] + right + left


def _draw_torso(c: Canvas, o: Outfit, b: _Body) -> None:
    kind = o.upper.kind
    if kind == "shirt":
        hem_y, hem_w = b.hip_y + 0.012, b.hip_w
    elif kind == "coat":
        hem_y, hem_w = 0.69, b.hip_w + 0.03
    else:  # dress
        hem_y, hem_w = 0.66 + 0.08 * (o.upper.period - 0.025) / 0.025, b.hip_w + 0.06
    c.poly(_torso_polygon(b, hem_y, hem_w), UPPER_KINDS[kind])


def _draw_arms(c: Canvas, o: Outfit, b: _Body, v: View, side: float, ident: Identity) -> None:
    sy, sw = b.shoulder_y, b.shoulder_w
    sleeve = UPPER_KINDS[o.upper.kind]
    for s, label, swing in ((side, LEFT_ARM, v.swing[0]), (-side, RIGHT_ARM, v.swing[1])):
        wx = sw + 0.012 + swing
        thick = 0.019 * ident.width
        arm = [
            (s * (sw - 0.03), sy + 0.02),
            (s * (sw + 0.012), sy + 0.012),
            (s * (wx + thick * 0.8), b.wrist_y),
            (s * (wx - thick * 0.8), b.wrist_y),
        ]
        c.poly(arm, label)
        elbow = 0.34 if o.short_sleeves else b.wrist_y - 0.01
        t = (elbow - (sy + 0.02)) / (b.wrist_y - (sy + 0.02))
        lo_out = s * (sw + 0.012 + t * (wx + thick * 0.8 - sw - 0.012) + 0.004)
        lo_in = s * (sw - 0.03 + t * (wx - thick * 0.8 - sw + 0.03) - 0.004)
        c.poly([arm[0], arm[1], (lo_out, elbow), (lo_in, elbow)], sleeve)
        c.ellipse(s * wx, b.wrist_y + 0.012, thick * 0.9, 0.02, label)  # hand


def _draw_head(c: Canvas, ident: Identity, b: _Body, v: View) -> FaceTruth | None:
    hh, ha = b.head_h, b.head_a
    hcy = hh / 2
    c.poly(
        [
            (-0.3 * ha, hcy),
            (0.3 * ha, hcy),
            (0.3 * ha, b.shoulder_y + 0.004),
            (-0.3 * ha, b.shoulder_y + 0.004),
        ],
        FACE if v.facing != "back" else HAIR,
    )  # neck (skin belongs to the face in LIP)
    style = ident.hair_style
    if style == "afro":
        c.ellipse(0, hcy - 0.08 * hh, ha * 1.45, hh * 0.62, HAIR)
    if style == "bun":
        c.ellipse(0, hcy - 0.58 * hh, ha * 0.45, hh * 0.2, HAIR)
    if style == "spiky":
        for k in (-0.6, -0.2, 0.2, 0.6):
            c.poly(
                [
                    (ha * (k - 0.3), hcy - 0.35 * hh),
                    (ha * k, hcy - 0.68 * hh),
                    (ha * (k + 0.3), hcy - 0.35 * hh),
                ],
                HAIR,
            )
    if v.facing == "back":
        c.ellipse(0, hcy, ha, hh / 2, HAIR)
        return None
    cap_a = ha * (0.98 if style == "buzz" else 1.06)
    c.ellipse(0, hcy + 0.04 * hh, cap_a, hh * 0.54, HAIR, start=180, end=360)
    top = hcy - hh / 2 + ident.fringe * hh * (0.6 if style == "buzz" else 1.0)
    bottom = hcy + 0.52 * hh
    fa = ha * 0.9
    c.ellipse(0, (top + bottom) / 2, fa, (bottom - top) / 2, FACE)
    return _face_truth(c, ident, v, top, bottom, fa)


def _face_truth(c: Canvas, ident: Identity, v: View, top: float, bottom: float, fa: float) -> FaceTruth:
    fh = bottom - top
    shift = v.yaw * fa
    eye_y, nose_y, mouth_y = top + 0.4 * fh, top + 0.62 * fh, top + 0.8 * fh
    eye_dx, mouth_dx = ident.eye_spacing * fa, ident.mouth_width * fa
    points = [
        (shift - eye_dx, eye_y),
        (shift + eye_dx, eye_y),
        (shift * 1.3, nose_y),
        (shift - mouth_dx, mouth_y),
        (shift + mouth_dx, mouth_y),
    ]
    landmarks = np.array([c.px(x, y) for x, y in points], np.float32)
    (x1, y1), (x2, y2) = c.px(-fa, top), c.px(fa, bottom)
    return FaceTruth(box=np.array([x1, y1, x2, y2], np.float32), landmarks=landmarks)


def _draw_umbrella(c: Canvas, b: _Body, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An umbrella canopy hiding the head: not part of the person (label 0), its own colour."""
    mask = np.zeros_like(c.labels)
    cx, cy = c.px(0.01 * rng.uniform(-1, 1), b.head_h * 1.08)
    axes = (round(0.2 * c.unit * ONE), round((b.head_h + 0.05) * c.unit * ONE))
    cv2.ellipse(mask, (round(cx * ONE), round(cy * ONE)), axes, 0, 180, 360, 1, -1, cv2.LINE_8, SHIFT)
    hidden = mask.astype(bool)
    c.labels[hidden] = BACKGROUND
    return hidden, GARMENT_PALETTE[rng.integers(len(GARMENT_PALETTE))]
