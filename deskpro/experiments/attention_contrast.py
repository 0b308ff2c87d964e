"""The paper's Fig. 3 as numbers: where a body stream's CSA attention falls on the test split.

Each attention cell (H/8 x W/8 of the body crop) is classed by the parse map's pixels under it:
a cloth cell when at least half are LIP cloth labels, an other-body cell when at least half are
person pixels off the cloth labels, background when at least half are background (cells mixed
below half on every class count in none). The figures are the mean attention over the cells of
each class, over every test image, and L_att of the map against its target (the run's
`att_target`) on the same images.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from deskpro.experiments.pictures import _inputs
from deskpro.model.losses import attention_loss

HALF = 0.5


def cell_classes(parse: torch.Tensor, cloth_labels, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """parse int [B,H,W] -> {cloth, body, background: bool [B,h,w]} at the attention's size."""
    labels = torch.as_tensor(list(cloth_labels), dtype=parse.dtype)
    cloth = torch.isin(parse, labels).float()[:, None]
    person = (parse != 0).float()[:, None]
    cloth_share = F.interpolate(cloth, size=size, mode="area")[:, 0]
    person_share = F.interpolate(person, size=size, mode="area")[:, 0]
    return {
        "cloth": cloth_share >= HALF,
        "body": (person_share - cloth_share) >= HALF,
        "background": (1.0 - person_share) >= HALF,
    }


def test_positions(reader) -> np.ndarray:
    """Rows of the test split (query and gallery: every split but train and val)."""
    splits = np.asarray(reader.index.column("split").to_pylist(), dtype=object)
    rows = np.flatnonzero(~np.isin(splits, ["train", "val"]))
    if rows.size == 0:
        raise ValueError(f"{reader.shards_dir}: no test rows")
    return rows


@torch.no_grad()
def attention_contrast(
    model,
    reader,
    *,
    cloth_labels,
    eps: float,
    target: str = "official",
    device="cpu",
    batch: int = 64,
    positions=None,
) -> dict:
    """{cloth, body, background: mean attention over those cells; contrast: body - cloth;
    l_att: the attention loss against the cloth-irrelevant mask; cells: counts; images}."""

    positions = test_positions(reader) if positions is None else np.asarray(positions)
    sums = {"cloth": 0.0, "body": 0.0, "background": 0.0}
    counts = dict.fromkeys(sums, 0)
    loss_sum = 0.0
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(positions), batch):
            arrays = reader.read_many(positions[start : start + batch])
            _, attention = model.nocloth_net(_inputs(arrays["body"], device), full=False)
            attention = attention.float().cpu()
            parse = torch.from_numpy(arrays["parse"].astype(np.int64))
            classes = cell_classes(parse, cloth_labels, tuple(attention.shape[-2:]))
            for name, where in classes.items():
                sums[name] += float(attention[:, 0][where].sum())
                counts[name] += int(where.sum())
            loss_sum += float(attention_loss(attention, parse, cloth_labels, eps, target)) * len(parse)
    finally:
        model.train(was_training)
    means = {name: (sums[name] / counts[name] if counts[name] else float("nan")) for name in sums}
    return {
        **means,
        "contrast": means["body"] - means["cloth"],
        "l_att": loss_sum / len(positions),
        "cells": counts,
        "images": int(len(positions)),
    }
