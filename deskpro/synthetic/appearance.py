"""What a synthetic person looks like: identity, a shared wardrobe of garments, outfits and views.

Identity (face, hair colour and style, skin tone, height, build, shoes) belongs to the person and
never changes; garments come from one wardrobe shared by everybody, so clothes say little about who
wears them, and each person wears two outfits drawn from it. Everything is sampled from explicit
generators (no global random state).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# LIP labels drawn by the generator.
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
SHOE_PALETTE = np.array(
    [(25, 25, 25), (90, 60, 40), (230, 230, 230), (60, 60, 70), (170, 40, 40), (60, 110, 190)],
    dtype=np.float32,
)
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
    shoes: np.ndarray  # RGB: LIP has shoes outside the cloth labels, so they are the person's here


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


@dataclass(frozen=True)
class Wardrobe:
    """The garments everybody dresses from: upper garments (shirts, coats, dresses) and lower ones."""

    uppers: tuple[Garment, ...]
    lowers: tuple[Garment, ...]


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


def sample_identity(rng: np.random.Generator) -> Identity:
    # Wide ranges for the body cues (height, build) so that they survive the demo's 64x32 crops,
    # where the face is a few pixels: a body stream that ignores clothes has something to learn.
    t = rng.uniform(0, 1)
    skin = (1 - t) * SKIN_LIGHT + t * SKIN_DARK + rng.normal(0, 6, 3).astype(np.float32)
    hair = HAIR_PALETTE[rng.integers(len(HAIR_PALETTE))] + rng.normal(0, 8, 3).astype(np.float32)
    return Identity(
        skin=np.clip(skin, 0, 255).astype(np.float32),
        hair=np.clip(hair, 0, 255).astype(np.float32),
        hair_style=str(rng.choice(HAIR_STYLES)),
        height=float(rng.uniform(0.72, 0.95)),
        width=float(rng.uniform(0.75, 1.35)),
        head=float(rng.uniform(0.9, 1.12)),
        eye_spacing=float(rng.uniform(0.36, 0.56)),
        mouth_width=float(rng.uniform(0.22, 0.42)),
        fringe=float(rng.uniform(0.1, 0.24)),
        shoes=SHOE_PALETTE[rng.integers(len(SHOE_PALETTE))],
    )


def wardrobe_size(identities: int) -> tuple[int, int]:
    """(upper, lower) garments in the shared wardrobe: fewer than people, so garments are shared."""
    return max(6, identities // 3), max(4, identities // 5)


def sample_wardrobe(rng: np.random.Generator, uppers: int, lowers: int) -> Wardrobe:
    upper_kinds = rng.choice(("shirt", "coat", "dress"), size=uppers, p=(0.6, 0.28, 0.12))
    lower_kinds = np.where(rng.uniform(size=lowers) < 0.18, "skirt", "trousers")
    return Wardrobe(
        uppers=tuple(_sample_garment(rng, str(kind)) for kind in upper_kinds),
        lowers=tuple(_sample_garment(rng, str(kind)) for kind in lower_kinds),
    )


def sample_outfits(rng: np.random.Generator, wardrobe: Wardrobe) -> tuple[Outfit, Outfit]:
    """Two outfits of one person from the wardrobe, whose upper garments look clearly different
    (the most different one when no upper garment differs by MIN_OUTFIT_CONTRAST)."""
    first = wardrobe.uppers[rng.integers(len(wardrobe.uppers))]
    contrast = np.array([np.linalg.norm(g.mean_colour - first.mean_colour) for g in wardrobe.uppers])
    choices = np.flatnonzero(contrast > MIN_OUTFIT_CONTRAST)
    second = wardrobe.uppers[rng.choice(choices) if len(choices) else int(np.argmax(contrast))]
    return _dress(rng, first, wardrobe), _dress(rng, second, wardrobe)


def extra_outfit(rng: np.random.Generator, wardrobe: Wardrobe, worn: tuple[Outfit, ...]) -> Outfit:
    """One more outfit whose upper garment looks clearly different from every one in `worn` (the most
    different one when none differs by MIN_OUTFIT_CONTRAST from all)."""
    contrast = np.array(
        [min(np.linalg.norm(g.mean_colour - o.upper.mean_colour) for o in worn) for g in wardrobe.uppers]
    )
    choices = np.flatnonzero(contrast > MIN_OUTFIT_CONTRAST)
    upper = wardrobe.uppers[rng.choice(choices) if len(choices) else int(np.argmax(contrast))]
    return _dress(rng, upper, wardrobe)


def _dress(rng: np.random.Generator, upper: Garment, wardrobe: Wardrobe) -> Outfit:
    lower = None if upper.kind == "dress" else wardrobe.lowers[rng.integers(len(wardrobe.lowers))]
    return Outfit(upper=upper, lower=lower, short_sleeves=bool(rng.uniform() < 0.4))


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
        scale=float(rng.uniform(0.98, 1.02)),
        dx=float(rng.uniform(-0.07, 0.07)),
        foot=float(rng.uniform(0.965, 0.995)),
        stance=float(rng.uniform(0.0, 0.035)),
        swing=(float(rng.uniform(-0.01, 0.03)), float(rng.uniform(-0.01, 0.03))),
        yaw=float(rng.uniform(-0.12, 0.12)),
        brightness=float(rng.uniform(0.9, 1.1)),
    )
