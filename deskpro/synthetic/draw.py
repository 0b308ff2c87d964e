"""Drawing of one synthetic pedestrian: the RGB image, its LIP label map and its face landmarks.

Identity (face, hair, skin, build) and outfit (garment types, colours, patterns) are sampled
separately so that the generator can dress one person in two outfits and many people alike.
Geometry is in figure units (1.0 = figure height), drawn with OpenCV at sub-pixel precision into
the label map first; the image is then coloured from the labels, so both always line up.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# LIP labels drawn here.
BACKGROUND, HAIR, UPPER, DRESS, COAT, PANTS, SKIRT, FACE = 0, 2, 5, 6, 7, 9, 12, 13
LEFT_ARM, RIGHT_ARM, LEFT_LEG, RIGHT_LEG, LEFT_SHOE, RIGHT_SHOE = 14, 15, 16, 17, 18, 19
UPPER_KINDS = {"shirt": UPPER, "coat": COAT, "dress": DRESS}
LOWER_KINDS = {"trousers": PANTS, "skirt": SKIRT}
GARMENT_LABELS = {**UPPER_KINDS, **LOWER_KINDS}
PATTERNED_RATE = 0.35  # share of garments (not trousers) with stripes or checks
MIN_OUTFIT_CONTRAST = 90.0  # RGB distance between a person's two upper garments (mean colours)
HAIR_STYLES = ("short", "long", "bun", "spiky", "buzz", "afro")

# Shared garment palette (RGB): different people often wear the same colours.
GARMENT_PALETTE = np.array(
    [
        (30, 40, 80),  # navy
        (35, 35, 38),  # black
        (225, 225, 220),  # white
        (128, 128, 132),  # grey
        (180, 40, 40),  # red
        (200, 180, 140),  # beige
        (90, 105, 50),  # olive
        (120, 165, 215),  # light blue
        (110, 30, 50),  # maroon
        (215, 170, 40),  # mustard
        (40, 120, 110),  # teal
        (150, 90, 160),  # purple
    ],
    dtype=np.float32,
)
# Dark and neutral clothes are the most common, as in the street.
PALETTE_POPULARITY = np.array([14, 18, 12, 12, 6, 7, 5, 6, 5, 5, 5, 5], np.float64) / 100
SHOE_PALETTE = np.array([(25, 25, 25), (90, 60, 40), (230, 230, 230), (60, 60, 70)], dtype=np.float32)
# Identity palettes: strong, consistent cues.
SKIN_LIGHT, SKIN_DARK = np.array((238, 196, 170), np.float32), np.array((92, 58, 40), np.float32)
HAIR_PALETTE = np.array(
    [
        (22, 18, 18),  # black
        (75, 48, 30),  # dark brown
        (135, 90, 50),  # brown
        (225, 195, 120),  # blonde
        (170, 70, 35),  # red
        (175, 175, 175),  # grey
        (40, 75, 190),  # dyed blue
        (225, 115, 165),  # dyed pink
        (70, 150, 80),  # dyed green
        (240, 240, 235),  # white
    ],
    dtype=np.float32,
)
# Per-camera colour cast (RGB gains): the same person looks a little different per camera.
CAMERA_GAINS = {"A": (1.0, 1.0, 1.0), "B": (1.06, 1.0, 0.92), "C": (0.9, 0.97, 1.08)}
_SHIFT = 4  # OpenCV fixed-point bits for sub-pixel drawing
_ONE = 1 << _SHIFT


@dataclass(frozen=True)
class Identity:
    """What stays with a person across cameras and clothes."""

    skin: np.ndarray  # RGB float32 (3,)
    hair: np.ndarray
    hair_style: str
    height: float  # figure height as a fraction of the image height
    width: float  # body width factor
    head: float  # head size factor
    eye_spacing: float  # half distance between the eyes, fraction of the face half-width
    mouth_width: float  # half mouth width, fraction of the face half-width
    fringe: float  # hairline depth, fraction of the head height


@dataclass(frozen=True)
class Garment:
    kind: str
    colour: np.ndarray  # RGB float32 (3,)
    pattern: str
    second: np.ndarray  # pattern colour
    period: float  # pattern period in figure units

    @property
    def mean_colour(self) -> np.ndarray:
        return self.colour if self.pattern == "solid" else (self.colour + self.second) / 2


@dataclass(frozen=True)
class Outfit:
    upper: Garment
    lower: Garment | None  # None under a dress
    short_sleeves: bool
    shoes: np.ndarray


@dataclass(frozen=True)
class View:
    """Per-image pose and viewing conditions."""

    facing: str  # "front", "back" or "occluded" (front, face hidden by an umbrella)
    scale: float
    dx: float  # horizontal shift, fraction of the image width
    foot: float  # foot line, fraction of the image height
    stance: float  # leg spread, figure units
    swing: tuple[float, float]  # arm swing per side, figure units
    yaw: float  # face feature shift, fraction of the face half-width
    brightness: float


@dataclass(frozen=True)
class FaceTruth:
    box: np.ndarray  # float32 (4,) x1, y1, x2, y2
    landmarks: np.ndarray  # float32 (5, 2): image-left eye, image-right eye, nose, left/right mouth


def sample_identity(rng: np.random.Generator) -> Identity:
    t = rng.uniform(0, 1)
    skin = (1 - t) * SKIN_LIGHT + t * SKIN_DARK + rng.normal(0, 6, 3).astype(np.float32)
    hair = HAIR_PALETTE[rng.integers(len(HAIR_PALETTE))] + rng.normal(0, 8, 3).astype(np.float32)
    return Identity(
        skin=np.clip(skin, 0, 255).astype(np.float32),
        hair=np.clip(hair, 0, 255).astype(np.float32),
        hair_style=str(rng.choice(HAIR_STYLES)),
        height=float(rng.uniform(0.8, 0.94)),
        width=float(rng.uniform(0.82, 1.22)),
        head=float(rng.uniform(0.9, 1.12)),
        eye_spacing=float(rng.uniform(0.36, 0.56)),
        mouth_width=float(rng.uniform(0.22, 0.42)),
        fringe=float(rng.uniform(0.1, 0.24)),
    )


def sample_outfits(rng: np.random.Generator) -> tuple[Outfit, Outfit]:
    """Two outfits of one person whose upper garments look clearly different on average."""
    first = _sample_outfit(rng)
    for _ in range(100):
        second = _sample_outfit(rng)
        if np.linalg.norm(second.upper.mean_colour - first.upper.mean_colour) > MIN_OUTFIT_CONTRAST:
            return first, second
    raise RuntimeError("could not sample a contrasting second outfit")  # unreachable with this palette


def _sample_outfit(rng: np.random.Generator) -> Outfit:
    upper_kind = str(rng.choice(("shirt", "coat", "dress"), p=(0.6, 0.28, 0.12)))
    upper = _sample_garment(rng, upper_kind)
    lower = None
    if upper_kind != "dress":
        lower = _sample_garment(rng, "skirt" if rng.uniform() < 0.18 else "trousers")
    shoes = SHOE_PALETTE[rng.integers(len(SHOE_PALETTE))]
    return Outfit(upper=upper, lower=lower, short_sleeves=bool(rng.uniform() < 0.4), shoes=shoes)


def _sample_garment(rng: np.random.Generator, kind: str) -> Garment:
    colour, second = GARMENT_PALETTE[rng.choice(len(GARMENT_PALETTE), size=2, p=PALETTE_POPULARITY)]
    pattern = "solid"
    if kind != "trousers" and np.linalg.norm(second - colour) > 60 and rng.uniform() < PATTERNED_RATE:
        pattern = str(rng.choice(("stripes", "checks")))
    return Garment(kind, colour, pattern, second, period=float(rng.uniform(0.025, 0.05)))


def sample_view(rng: np.random.Generator, no_face_rate: float) -> View:
    r = rng.uniform()
    facing = "front" if r >= no_face_rate else ("back" if r < no_face_rate * 2 / 3 else "occluded")
    return View(
        facing=facing,
        scale=float(rng.uniform(0.96, 1.03)),
        dx=float(rng.uniform(-0.07, 0.07)),
        foot=float(rng.uniform(0.965, 0.995)),
        stance=float(rng.uniform(0.0, 0.035)),
        swing=(float(rng.uniform(-0.01, 0.03)), float(rng.uniform(-0.01, 0.03))),
        yaw=float(rng.uniform(-0.12, 0.12)),
        brightness=float(rng.uniform(0.9, 1.1)),
    )


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


class _Canvas:
    """Draws shapes given in figure units into a label map."""

    def __init__(self, labels: np.ndarray, cx: float, top: float, unit: float):
        self.labels, self.cx, self.top, self.unit = labels, cx, top, unit

    def px(self, x: float, y: float) -> tuple[float, float]:
        return self.cx + x * self.unit, self.top + y * self.unit

    def poly(self, points: list[tuple[float, float]], label: int) -> None:
        pts = np.array([self.px(x, y) for x, y in points]) * _ONE
        cv2.fillPoly(self.labels, [np.round(pts).astype(np.int32)], label, cv2.LINE_8, _SHIFT)

    def ellipse(self, x, y, ax, ay, label, start=0, end=360) -> None:
        cx, cy = self.px(x, y)
        centre = (round(cx * _ONE), round(cy * _ONE))
        axes = (max(1, round(ax * self.unit * _ONE)), max(1, round(ay * self.unit * _ONE)))
        cv2.ellipse(self.labels, centre, axes, 0, start, end, label, -1, cv2.LINE_8, _SHIFT)


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


def draw_person(
    ident: Identity,
    outfit: Outfit,
    view: View,
    camera: str,
    background: np.ndarray,
    size: tuple[int, int],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, FaceTruth | None]:
    """(RGB uint8 [H,W,3], LIP labels uint8 [H,W], face truth or None when no face is visible)."""
    h, w = size
    unit = h * ident.height * view.scale
    foot = h * view.foot
    canvas = _Canvas(np.zeros((h, w), np.uint8), cx=w * (0.5 + view.dx), top=foot - unit, unit=unit)
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
    image = _colourise(canvas, ident, outfit, background, rng)
    if face is not None and occluder is None:
        _draw_face_features(image, ident, face)
    if occluder is not None:
        mask, colour = occluder
        image[mask] = colour
    image = _camera_effects(image, camera, view, rng)
    return image, canvas.labels, (face if occluder is None else None)


def _draw_back_hair(c: _Canvas, ident: Identity, b: _Body) -> None:
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


def _draw_legs(c: _Canvas, o: Outfit, b: _Body, v: View, side: float) -> None:
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


def _draw_torso(c: _Canvas, o: Outfit, b: _Body) -> None:
    kind = o.upper.kind
    if kind == "shirt":
        hem_y, hem_w = b.hip_y + 0.012, b.hip_w
    elif kind == "coat":
        hem_y, hem_w = 0.69, b.hip_w + 0.03
    else:  # dress
        hem_y, hem_w = 0.66 + 0.08 * (o.upper.period - 0.025) / 0.025, b.hip_w + 0.06
    c.poly(_torso_polygon(b, hem_y, hem_w), UPPER_KINDS[kind])


def _draw_arms(c: _Canvas, o: Outfit, b: _Body, v: View, side: float, ident: Identity) -> None:
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


def _draw_head(c: _Canvas, ident: Identity, b: _Body, v: View) -> FaceTruth | None:
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


def _face_truth(c: _Canvas, ident: Identity, v: View, top: float, bottom: float, fa: float) -> FaceTruth:
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


def _draw_umbrella(c: _Canvas, b: _Body, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An umbrella canopy hiding the head: not part of the person (label 0), its own colour."""
    mask = np.zeros_like(c.labels)
    cx, cy = c.px(0.01 * rng.uniform(-1, 1), b.head_h * 1.08)
    axes = (round(0.2 * c.unit * _ONE), round((b.head_h + 0.05) * c.unit * _ONE))
    cv2.ellipse(mask, (round(cx * _ONE), round(cy * _ONE)), axes, 0, 180, 360, 1, -1, cv2.LINE_8, _SHIFT)
    hidden = mask.astype(bool)
    c.labels[hidden] = BACKGROUND
    return hidden, GARMENT_PALETTE[rng.integers(len(GARMENT_PALETTE))]


def _colourise(c: _Canvas, ident: Identity, o: Outfit, background: np.ndarray, rng) -> np.ndarray:
    """Float RGB image: background crop, label colours, garment patterns, shading and outlines."""
    h, w = c.labels.shape
    y0, x0 = rng.integers(0, background.shape[0] - h + 1), rng.integers(0, background.shape[1] - w + 1)
    image = background[y0 : y0 + h, x0 : x0 + w]
    lut = np.zeros((256, 3), np.float32)
    lut[[FACE, LEFT_ARM, RIGHT_ARM, LEFT_LEG, RIGHT_LEG]] = ident.skin
    lut[HAIR] = ident.hair
    lut[[LEFT_SHOE, RIGHT_SHOE]] = o.shoes
    garments = [g for g in (o.upper, o.lower) if g is not None]
    for g in garments:
        lut[GARMENT_LABELS[g.kind]] = g.colour
    person = lut[c.labels]
    yy = np.arange(h, dtype=np.float32)[:, None]  # broadcast rows and columns, no full grids
    xx = np.arange(w, dtype=np.float32)[None, :]
    for g in garments:
        label = GARMENT_LABELS[g.kind]
        period = max(2.0, g.period * c.unit)
        if g.pattern == "stripes":
            on = (yy // (period / 2)) % 2 == 1
        elif g.pattern == "checks":
            on = ((yy // period) + (xx // period)) % 2 == 1
        else:
            continue
        person[(c.labels == label) & on] = g.second
    inside = c.labels > 0
    edges = np.zeros((h, w), bool)
    edges[:, 1:] |= c.labels[:, 1:] != c.labels[:, :-1]
    edges[1:, :] |= c.labels[1:, :] != c.labels[:-1, :]
    shade = 1.0 - 0.25 * np.clip(((xx - c.cx) / (0.16 * c.unit)) ** 2, 0, 1)  # a rounded body
    factor = np.where(inside, shade, np.float32(1)) * np.where(edges, np.where(inside, 0.72, 0.85), 1.0)
    image = np.where(inside[..., None], person, image)
    return image * factor[..., None].astype(np.float32)


def _draw_face_features(image: np.ndarray, ident: Identity, face: FaceTruth) -> None:
    """Eyes, brows, nose and mouth on the image (the label map keeps them as face)."""
    lm = face.landmarks
    r = max(1.0, 0.065 * float(face.box[2] - face.box[0]))  # eye radius in pixels
    brow = tuple(map(float, ident.hair * 0.6))
    for x, y in lm[:2]:
        _aa_ellipse(image, (x, y), (1.7 * r, 1.0 * r), (235.0, 235.0, 230.0))  # white of the eye
        _aa_ellipse(image, (x, y), (0.9 * r, 0.9 * r), (20.0, 15.0, 15.0))  # iris and pupil
        _aa_line(image, (x - 1.8 * r, y - 2.0 * r), (x + 1.8 * r, y - 2.2 * r), brow, max(1, round(0.7 * r)))
    shadow = tuple(map(float, ident.skin * 0.62))
    _aa_line(image, (lm[2, 0], lm[2, 1] - 2.5 * r), (lm[2, 0], lm[2, 1]), shadow, 1)
    _aa_line(image, (lm[2, 0] - 0.8 * r, lm[2, 1]), (lm[2, 0] + 0.8 * r, lm[2, 1]), shadow, 1)
    _aa_line(image, tuple(lm[3]), tuple(lm[4]), (120.0, 35.0, 40.0), max(1, round(r)))


def _aa_ellipse(image: np.ndarray, centre: tuple, axes: tuple, colour: tuple) -> None:
    c = (round(float(centre[0]) * _ONE), round(float(centre[1]) * _ONE))
    a = (max(1, round(axes[0] * _ONE)), max(1, round(axes[1] * _ONE)))
    cv2.ellipse(image, c, a, 0, 0, 360, colour, -1, cv2.LINE_AA, _SHIFT)


def _aa_line(image: np.ndarray, p: tuple, q: tuple, colour: tuple, thickness: int) -> None:
    a = (round(float(p[0]) * _ONE), round(float(p[1]) * _ONE))
    b = (round(float(q[0]) * _ONE), round(float(q[1]) * _ONE))
    cv2.line(image, a, b, colour, thickness, cv2.LINE_AA, _SHIFT)


def _camera_effects(image: np.ndarray, camera: str, v: View, rng: np.random.Generator) -> np.ndarray:
    """Camera colour cast, brightness, optional low resolution, blur and sensor noise -> uint8."""
    image = image * (np.array(CAMERA_GAINS[camera], np.float32) * v.brightness)
    h, w = image.shape[:2]
    if rng.uniform() < 0.35:  # low-resolution capture
        small = cv2.resize(image, (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA)
        image = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    image = cv2.GaussianBlur(image, (0, 0), float(rng.uniform(0.3, 1.0)))
    image = image + np.float32(rng.uniform(1.0, 4.0)) * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)
