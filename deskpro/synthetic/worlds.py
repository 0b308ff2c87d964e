"""The synthetic worlds the experiments draw from, each a controlled design (docs/method.md).

A world fixes how identity and clothes relate; the generator (`generator.generate`) draws it.

- `TOUR` (the demo's): every training identity wears three outfits, one per camera, so clothes
  explain no identity in training, and a body stream has no reason to learn them.
- `CLOTHES_TRAP` (the method experiment's): PRCC's protocol in training as in test. A training
  identity wears one outfit at cameras A and B and another at C, so two thirds of its images share
  clothes: a body stream can fit most of training by the garments (large, saturated areas: the
  easiest cue there is) and then matches test people by clothes. What identifies a person
  across a change of clothes (skin tone, hair colour and style, height, build, shoes, the face)
  stays with the person in every image; CSA with L_att is asked to look there and not at the
  garments (LIP's cloth labels, which the parse maps give exactly). Faces are small (about 1/10 of
  the image height) and degraded by the camera (low resolution, blur, noise), while the oracle
  restorer serves a clean render at 4x: restoration has something to add for the teacher.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class World:
    """Generator options of one world design (identities and sizes are the experiment's)."""

    name: str
    train_outfits: int  # 3: clothes carry no identity in training; 2: they carry most of it

    def generator_options(self, identities: int, images_per_camera: int, image_size, seed: int) -> dict:
        """The keywords of `generator.generate` (and `synthetic.prepare`) for this world."""
        return {
            "identities": int(identities),
            "images_per_camera": int(images_per_camera),
            "image_size": tuple(image_size),
            "seed": int(seed),
            "train_outfits": self.train_outfits,
        }

    def to_dict(self) -> dict:
        return asdict(self)


TOUR = World("tour", train_outfits=3)
CLOTHES_TRAP = World("clothes-trap", train_outfits=2)
WORLDS = {world.name: world for world in (TOUR, CLOTHES_TRAP)}


def world(name: str) -> World:
    """The world called `name`; ValueError naming the known ones otherwise."""
    if name not in WORLDS:
        raise ValueError(f"--world: unknown world {name!r}; known: {', '.join(WORLDS)}")
    return WORLDS[name]
