"""Learning-rate schedule: linear warm-up, then cosine decay to lr * min_factor, stepped once per epoch.

This re-derives the official release's warm-up cosine scheduler (stepped per epoch): epoch e < W
trains at lr * (e + 1) / W; afterwards lr_min + (lr - lr_min) * (1 + cos(pi * (e - W) / (E - W - 1))) / 2,
so the first cosine epoch trains at the full lr and the last epoch (E - 1) at exactly lr_min.
"""

from __future__ import annotations

import math

import torch


def lr_factor(epoch: int, *, epochs: int, warmup_epochs: int, min_factor: float) -> float:
    """The multiplier of the base lr for a 0-based epoch."""
    if epoch < warmup_epochs:
        return (epoch + 1) / warmup_epochs
    span = epochs - warmup_epochs - 1
    if span <= 0:  # a single cosine epoch (the official formula divides by zero): keep the full lr
        return 1.0
    progress = min(1.0, (epoch - warmup_epochs) / span)
    return min_factor + (1.0 - min_factor) * (1.0 + math.cos(math.pi * progress)) / 2.0


def warmup_cosine(optimizer: torch.optim.Optimizer, *, epochs: int, warmup_epochs: int, min_factor: float):
    """A LambdaLR over `lr_factor`; call `.step()` once at the end of every epoch."""
    warmup_epochs = max(0, min(warmup_epochs, epochs - 1))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda e: lr_factor(e, epochs=epochs, warmup_epochs=warmup_epochs, min_factor=min_factor),
    )
