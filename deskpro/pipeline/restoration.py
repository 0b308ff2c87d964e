"""Face restoration of aligned uint8 RGB faces with a GPEN network (deskpro.pipeline.nets.gpen)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deskpro.common.torch_utils import (
    autocast_context,
    check_amp,
    prepare_module,
    set_memory_format,
    to_input,
)
from deskpro.pipeline.nets.gpen import GPEN

# ----------------------------------------------------------------------------- batch restorer


def _prepare(net: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    """Move to `device` in eval mode; channels_last for the 4-D tensors only (`set_memory_format`)."""
    net = prepare_module(net, device, channels_last=False)
    return set_memory_format(net, torch.channels_last) if channels_last else net


class Restorer:
    """Restore batches of aligned uint8 RGB faces with a GPEN network.

    Faces of any square size are resized to the network size (bicubic, antialiased when shrinking),
    scaled to [-1, 1], restored, clamped and rounded back to uint8 RGB [B, size, size, 3]. (The official
    code truncates instead of rounding, a bias of half a grey level.) The constructor moves `net` to
    `device` in place. fp16 autocast needs CUDA; bf16 works on CPU and GPU.
    """

    def __init__(
        self,
        net: GPEN,
        device: str | torch.device = "cpu",
        amp: str | None = None,
        channels_last: bool = False,
    ):
        self.amp = check_amp(amp)
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.net = _prepare(net, self.device, channels_last)
        self.size: int = net.size

    def _check(self, faces: np.ndarray) -> None:
        if not isinstance(faces, np.ndarray) or faces.dtype != np.uint8:
            raise ValueError(f"faces must be a uint8 numpy array, got {getattr(faces, 'dtype', type(faces))}")
        if faces.ndim != 4 or faces.shape[3] != 3 or faces.shape[1] != faces.shape[2]:
            raise ValueError(f"faces must be [B,S,S,3] RGB, got shape {faces.shape}")

    def __call__(self, faces: np.ndarray) -> np.ndarray:
        """uint8 RGB faces [B,S,S,3], any S -> restored uint8 RGB faces [B,size,size,3]."""
        self._check(faces)
        if len(faces) == 0:
            return np.zeros((0, self.size, self.size, 3), np.uint8)
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(faces)).to(self.device).permute(0, 3, 1, 2).float()
            if x.shape[-1] != self.size:
                shrink = x.shape[-1] > self.size
                x = F.interpolate(
                    x, size=(self.size, self.size), mode="bicubic", align_corners=False, antialias=shrink
                )
            x = (x / 255.0 - 0.5) / 0.5
            x = to_input(x.clamp_(-1.0, 1.0), self.device, self.channels_last)
            with autocast_context(self.device, self.amp):
                y = self.net(x)
            y = ((y.float() * 0.5 + 0.5).clamp_(0.0, 1.0) * 255.0).round_()
            return y.to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()
