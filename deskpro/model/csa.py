"""Cloth-irrelevant Spatial Attention (CSA): a per-location weight in (0, 1) over the conv3[0] features.

Two forms: ``"official"`` is the release's module (1x1 conv C->C, ReLU, 1x1 conv C->1, sigmoid, both convs
bias-free; keys ``conv1``/``conv2``); ``"paper"`` is the paper's single point-wise conv C->1 + sigmoid
(key ``conv``, with a bias so that the sigmoid's operating point can move). The module returns the map;
the global stream multiplies its features by it. ``"none"`` (no parameters, a map of ones) is the
global stream without CSA: row 1 of the paper's ablation (Table 3).
"""

from __future__ import annotations

import torch
from torch import nn

from deskpro.model.lmbn import init_kaiming

CSA_FORMS = ("official", "paper", "none")


class CSA(nn.Module):
    """Spatial attention map [B,1,H,W] from features [B,C,H,W]."""

    def __init__(self, channels: int = 384, form: str = "official"):
        super().__init__()
        if form not in CSA_FORMS:
            raise ValueError(f"CSA: unknown form {form!r}; expected one of {', '.join(CSA_FORMS)}")
        self.form = form
        if form == "official":
            self.conv1 = nn.Conv2d(channels, channels, 1, bias=False)
            self.conv2 = nn.Conv2d(channels, 1, 1, bias=False)
        elif form == "paper":
            self.conv = nn.Conv2d(channels, 1, 1, bias=True)
        self.apply(init_kaiming)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.form == "official":
            return torch.sigmoid(self.conv2(torch.relu(self.conv1(x))))
        if self.form == "none":
            return x.new_ones((x.shape[0], 1, *x.shape[2:]))
        return torch.sigmoid(self.conv(x))
