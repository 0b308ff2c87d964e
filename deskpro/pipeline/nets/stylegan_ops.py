"""StyleGAN2's fused CUDA ops, re-derived in plain PyTorch for GPEN (deskpro.pipeline.nets.gpen).

`upfirdn2d` is zero-insertion upsampling, padding and a convolution with the flipped FIR kernel;
`fused_leaky_relu` is scale * leaky_relu(x + bias, 0.2) with scale sqrt(2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

BLUR_KERNEL = (1.0, 3.0, 3.0, 1.0)
LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)


def fir_kernel(taps: Sequence[float] = BLUR_KERNEL) -> torch.Tensor:
    """Separable 2-D FIR kernel from 1-D taps, normalised to sum 1."""
    k = torch.tensor(taps, dtype=torch.float32)
    k = k[None, :] * k[:, None]
    return k / k.sum()


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1, pad=(0, 0)) -> torch.Tensor:
    """Upsample by zero insertion, pad, filter with `kernel`, downsample: [B,C,H,W] -> [B,C,H',W'].

    H' = (H*up + pad0 + pad1 - kh) // down + 1. The filter is a true convolution (flipped kernel), as
    in the official op; negative pads crop. Same math as StyleGAN2's upfirdn2d with equal x/y factors.
    """
    b, c, h, w = x.shape
    if up > 1:
        x = x.reshape(b, c, h, 1, w, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))
        x = x.reshape(b, c, h * up, w * up)
    p0, p1 = pad
    conv_pad = 0
    if p0 == p1 >= 0:
        conv_pad = p0  # zero padding inside the convolution: no padded copy of x
    else:
        x = F.pad(x, (max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)))
        if p0 < 0 or p1 < 0:
            x = x[:, :, max(-p0, 0) : x.shape[2] - max(-p1, 0), max(-p0, 0) : x.shape[3] - max(-p1, 0)]
    kh, kw = kernel.shape
    weight = torch.flip(kernel, [0, 1]).to(x.dtype).expand(c, 1, kh, kw).contiguous()
    # A stride-`down` convolution equals the full convolution sampled every `down` pixels.
    return F.conv2d(x, weight, stride=down, padding=conv_pad, groups=c)


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """sqrt(2) * leaky_relu(x + bias, 0.2), the bias broadcast over channel dim 1; `inplace` overwrites x.

    One pass and at most one new tensor (GPEN's activations are large, so each temporary costs more
    than its arithmetic). The gain is applied before the activation, the same for a positive gain, so
    that the in-place leaky ReLU comes last and autograd keeps the output it saves.
    """
    bias = bias.to(x.dtype).view(1, -1, *([1] * (x.ndim - 2)))
    x = x.add_(bias) if inplace else x + bias
    return F.leaky_relu_(x.mul_(LRELU_GAIN), LRELU_SLOPE)
