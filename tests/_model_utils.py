"""Test helpers for the model area: reference key layouts filled with seeded random tensors, small inputs."""

from __future__ import annotations

import json

import torch
from _reference import REFERENCE_DIR

REFERENCE = REFERENCE_DIR
CLASS_COUNT_OFFICIAL = 632


def reference_shapes(file: str, name: str) -> dict[str, list[int]]:
    """{key: shape} of one official checkpoint from ``shared/reference/<file>``."""
    return json.loads((REFERENCE / file).read_text())[name]


def random_state(shapes: dict[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with the given keys/shapes and seeded random values (valid BN statistics)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros(shape, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.05
    return state


def images(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Seeded normalised-looking images [B,3,H,W]."""
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


ALIASES = (
    ("branches.0.", "global_branch."),
    ("branches.1.", "part_branch."),
    ("branches.2.", "channel_branch."),
)


def tie_aliases(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Make each ``*_branch.*`` key hold the very tensor of its ``branches.N.*`` twin, as in a real file."""
    out = dict(state)
    for key, value in state.items():
        for src, dst in ALIASES:
            marker = "." + src
            if marker in "." + key:
                twin = ("." + key).replace(marker, "." + dst, 1)[1:]
                if twin in out:
                    out[twin] = value
    return out
