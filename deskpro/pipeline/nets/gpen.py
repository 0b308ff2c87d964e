"""GPEN-BFR blind face restoration (GAN Prior Embedded Network, CVPR 2021) in plain PyTorch.

The network is an encoder (`ecd0..`) that reduces an aligned face to 4x4, a linear layer to a style
vector, and a StyleGAN2 generator whose per-layer "noise" inputs are the encoder features (concatenated,
not added), so the forward pass is deterministic. The official fused CUDA ops are re-derived here:
`upfirdn2d` is zero-insertion upsampling, padding and a convolution with the flipped FIR kernel;
`fused_leaky_relu` is scale * leaky_relu(x + bias, 0.2) with scale sqrt(2). Module and parameter names
follow the official checkpoints (`GPEN-BFR-256.pth`, `GPEN-BFR-512.pth`), which load unchanged.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from deskpro.common.state_dicts import layout_problems
from deskpro.common.torch_utils import torch_load_weights, unwrap_state_dict
from deskpro.pipeline.nets.stylegan_ops import BLUR_KERNEL, fir_kernel, fused_leaky_relu, upfirdn2d

STYLE_DIM = 512
MAPPING_LAYERS = 8
MAPPING_LR_MUL = 0.01


@dataclass(frozen=True)
class GPENConfig:
    """Width settings of one official GPEN-BFR model."""

    size: int
    channel_multiplier: int
    narrow: float

    @property
    def name(self) -> str:
        return f"GPEN-BFR-{self.size}"

    def channels(self, resolution: int) -> int:
        """Feature channels at a spatial resolution (the official `channels` table)."""
        if resolution <= 32:
            return int(512 * self.narrow)
        return int(2 ** (14 - int(math.log2(resolution))) * self.channel_multiplier * self.narrow)


CONFIGS: dict[int, GPENConfig] = {
    256: GPENConfig(256, channel_multiplier=1, narrow=0.5),
    512: GPENConfig(512, channel_multiplier=2, narrow=1.0),
}


def _config(size: int) -> GPENConfig:
    if size not in CONFIGS:
        raise ValueError(f"unsupported GPEN size {size}; known: {sorted(CONFIGS)}")
    return CONFIGS[size]


# ----------------------------------------------------------------------------- layers


class FusedLeakyReLU(nn.Module):
    """Bias + leaky ReLU(0.2) + gain sqrt(2) with a learned per-channel bias; `inplace` overwrites x."""

    def __init__(self, channels: int, inplace: bool = False):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, self.bias, inplace=self.inplace)


class PixelNorm(nn.Module):
    """Normalise each vector to unit root-mean-square over dim 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)


class FIRFilter(nn.Module):
    """upfirdn2d with a fixed kernel buffer (`kernel` in the state dict), for blur and upsampling."""

    def __init__(self, pad: tuple[int, int], up: int = 1, down: int = 1, gain: float = 1.0):
        super().__init__()
        self.register_buffer("kernel", fir_kernel() * gain)
        self.pad, self.up, self.down = pad, up, down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=self.up, down=self.down, pad=self.pad)


def upsample2x() -> FIRFilter:
    """2x FIR upsampling (the skip path of ToRGB): kernel gain 4 keeps the mean after zero insertion."""
    p = len(BLUR_KERNEL) - 2
    return FIRFilter(pad=((p + 1) // 2 + 1, p // 2), up=2, gain=4.0)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate: weight scaled by lr_mul / sqrt(in) at run time."""

    def __init__(self, in_dim: int, out_dim: int, lr_mul: float = 1.0, activate: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(out_dim, in_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activate:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class EqualConv2d(nn.Module):
    """Bias-free convolution with equalised learning rate (weight / sqrt(fan_in))."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(out_ch, in_ch, kernel_size, kernel_size))
        self.scale = 1.0 / math.sqrt(in_ch * kernel_size**2)
        self.stride, self.padding = stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, stride=self.stride, padding=self.padding)


def encoder_block(in_ch: int, out_ch: int, kernel_size: int, downsample: bool) -> nn.Sequential:
    """Official `ConvLayer` wrapped in a Sequential: [blur], conv, bias + leaky ReLU (keys ecdN.0.*)."""
    layers: list[nn.Module] = []
    if downsample:
        p = (len(BLUR_KERNEL) - 2) + (kernel_size - 1)
        layers.append(FIRFilter(pad=((p + 1) // 2, p // 2)))
        layers.append(EqualConv2d(in_ch, out_ch, kernel_size, stride=2, padding=0))
    else:
        layers.append(EqualConv2d(in_ch, out_ch, kernel_size, stride=1, padding=kernel_size // 2))
    layers.append(FusedLeakyReLU(out_ch, inplace=True))  # on the conv's fresh output
    return nn.Sequential(nn.Sequential(*layers))


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated convolution, optionally 2x upsampling (transposed conv + blur).

    Per sample b: w'[o,i] = scale * w[o,i] * s[b,i], and with demodulation w'' = w' / sqrt(sum_i,k w'^2
    + 1e-8). Computed without per-sample weights: conv(x * s, scale * w) * demod[b,o], which is the
    same linear map (demod is constant per output channel) and runs as one ordinary batched conv. A 1x1
    conv (ToRGB) is a per-sample matrix product instead: its weights are far smaller than its input.
    """

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int, demodulate: bool = True, upsample: bool = False
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, out_ch, in_ch, kernel_size, kernel_size))
        self.modulation = EqualLinear(STYLE_DIM, in_ch)
        self.scale = 1.0 / math.sqrt(in_ch * kernel_size**2)
        self.demodulate, self.upsample = demodulate, upsample
        self.padding = kernel_size // 2
        if upsample:
            # The transposed conv gives 2H+k-2 pixels; this blur padding brings it back to 2H.
            p = (len(BLUR_KERNEL) - 2) - (kernel_size - 1)
            self.blur = FIRFilter(pad=((p + 1) // 2 + 1, p // 2 + 1), gain=4.0)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        s = self.modulation(style)  # [B, in]
        weight = self.weight[0] * self.scale  # [out, in, k, k]
        if weight.shape[-1] == 1 and not self.upsample:
            # 1x1 (ToRGB): modulate the small per-sample weights [B, out, in], not a copy of the large x.
            per_sample = weight[None, :, :, 0, 0] * s[:, None, :]
            out = torch.einsum("boi,bihw->bohw", per_sample.to(x.dtype), x)
        elif self.upsample:
            out = F.conv_transpose2d(x * s[:, :, None, None].to(x.dtype), weight.transpose(0, 1), stride=2)
        else:
            out = F.conv2d(x * s[:, :, None, None].to(x.dtype), weight, padding=self.padding)
        if self.demodulate:
            # At least fp32: under fp16 autocast the squared sums would lose precision or overflow.
            dtype = torch.promote_types(weight.dtype, torch.float32)
            w2 = weight.to(dtype).square().sum(dim=(2, 3))  # [out, in]
            demod = torch.rsqrt(s.to(dtype).square() @ w2.t() + 1e-8)  # [B, out]
            out = out.mul_(demod[:, :, None, None].to(out.dtype))  # the conv's fresh output
        if self.upsample:
            out = self.blur(out)
        return out


class NoiseInjection(nn.Module):
    """GPEN's concatenating noise: cat(x, weight * encoder_feature) along channels."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        out = torch.cat((x, feature.to(x.dtype)), dim=1)
        out[:, x.shape[1] :].mul_(self.weight.to(x.dtype))  # scaled in place: no temporary
        return out


class StyledConv(nn.Module):
    """Modulated conv, concatenated encoder feature, bias + leaky ReLU (2x the conv's channels out)."""

    def __init__(self, in_ch: int, out_ch: int, upsample: bool = False):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, 3, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(2 * out_ch, inplace=True)  # on the fresh concatenation

    def forward(self, x: torch.Tensor, style: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        return self.activate(self.noise(self.conv(x, style), feature))


class ToRGB(nn.Module):
    """1x1 modulated conv to RGB (no demodulation) plus bias, added to the upsampled previous RGB."""

    def __init__(self, in_ch: int, upsample: bool = True):
        super().__init__()
        if upsample:
            self.upsample = upsample2x()
        self.conv = ModulatedConv2d(in_ch, 3, 1, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, style) + self.bias.to(x.dtype)
        if skip is not None:
            out = out + self.upsample(skip)
        return out


class ConstantInput(nn.Module):
    """The learned 4x4 constant that starts the generator."""

    def __init__(self, channels: int):
        super().__init__()
        self.input = nn.Parameter(torch.zeros(1, channels, 4, 4))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.expand(batch, -1, -1, -1)


class StyleGenerator(nn.Module):
    """StyleGAN2 generator with GPEN's concatenated feature inputs; one style for every layer."""

    def __init__(self, config: GPENConfig):
        super().__init__()
        ch = config.channels
        mapping = [
            EqualLinear(STYLE_DIM, STYLE_DIM, MAPPING_LR_MUL, activate=True) for _ in range(MAPPING_LAYERS)
        ]
        self.style = nn.Sequential(PixelNorm(), *mapping)
        self.input = ConstantInput(ch(4))
        self.conv1 = StyledConv(ch(4), ch(4))
        self.to_rgb1 = ToRGB(2 * ch(4), upsample=False)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        in_ch = ch(4)
        for log_res in range(3, int(math.log2(config.size)) + 1):
            out_ch = ch(2**log_res)
            self.convs.append(StyledConv(2 * in_ch, out_ch, upsample=True))
            self.convs.append(StyledConv(2 * out_ch, out_ch))
            self.to_rgbs.append(ToRGB(2 * out_ch))
            in_ch = out_ch

    def forward(self, latent: torch.Tensor, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """latent [B,512] (before the mapping network); features from 4x4 up to full size."""
        w = self.style(latent)
        out = self.conv1(self.input(w.shape[0]).to(features[0].dtype), w, features[0])
        rgb = self.to_rgb1(out, w)
        for i, to_rgb in enumerate(self.to_rgbs):
            feature = features[i + 1]
            out = self.convs[2 * i](out, w, feature)
            out = self.convs[2 * i + 1](out, w, feature)
            rgb = to_rgb(out, w, rgb)
        return rgb


class GPEN(nn.Module):
    """GPEN-BFR (official `FullGenerator`): RGB in [-1, 1] [B,3,S,S] -> restored RGB, same shape."""

    def __init__(self, config: GPENConfig):
        super().__init__()
        self.config = config
        self.size = config.size
        ch = config.channels
        log_size = int(math.log2(config.size))
        self.generator = StyleGenerator(config)
        self.ecd0 = encoder_block(3, ch(config.size), 1, downsample=False)
        for i in range(1, log_size - 1):
            res = config.size >> i
            setattr(self, f"ecd{i}", encoder_block(ch(2 * res), ch(res), 3, downsample=True))
        self.num_encoder_blocks = log_size - 1
        self.final_linear = nn.Sequential(EqualLinear(ch(4) * 16, STYLE_DIM, activate=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != self.size or x.shape[3] != self.size:
            raise ValueError(f"{self.config.name} expects [B,3,{self.size},{self.size}], got {list(x.shape)}")
        features = []
        for i in range(self.num_encoder_blocks):
            x = getattr(self, f"ecd{i}")(x)
            features.append(x)
        latent = self.final_linear(x.flatten(1))
        # Coarsest feature first: the generator consumes them from 4x4 up to full size.
        return self.generator(latent, features[::-1])


# ----------------------------------------------------------------------------- build / load


def build(size: int = 512) -> GPEN:
    """An untrained GPEN-BFR of `size` (256 or 512) with zero weights; load a checkpoint before use."""
    return GPEN(_config(size))


def describe_state_dict(state_dict: dict[str, torch.Tensor]) -> str:
    """Name the GPEN model a state dict belongs to (e.g. 'GPEN-BFR-256'), from its encoder depth and width."""
    depth = len({m.group(1) for k in state_dict if (m := re.match(r"ecd(\d+)\.", k))})
    const = state_dict.get("generator.input.input")
    if depth == 0 or const is None:
        return "not a GPEN generator (no ecd*/generator.input keys)"
    size = 2 ** (depth + 1)
    width = int(const.shape[1])
    for cfg in CONFIGS.values():
        if cfg.size == size and cfg.channels(4) == width:
            return cfg.name
    return f"a GPEN generator of size {size} with {width} channels at 4x4 (not a supported GPEN-BFR model)"


def load(path: Path | str, size: int = 512) -> GPEN:
    """Load an official GPEN-BFR checkpoint (plain state dict; `g_ema`/`state_dict` wrappers accepted).

    Strict: every key and shape must match the model of `size`; a checkpoint of another size raises
    ValueError saying which one it is. Returns the network in eval mode on the CPU.
    """
    cfg = _config(size)
    obj = torch_load_weights(path, what=f"{cfg.name} checkpoint")
    state = unwrap_state_dict(obj, path, wrapper_keys=("g_ema", "state_dict", "params_ema", "params"))
    state = {k.removeprefix("module."): v for k, v in state.items()}
    net = build(size)
    expected = net.state_dict()
    found = describe_state_dict(state)
    missing, unexpected, mismatched = layout_problems(expected, state)
    if found != cfg.name and (mismatched or missing or unexpected):
        hint = ""
        if found.startswith("GPEN-BFR-"):
            hint = f": pass --restorer gpen-{found.removeprefix('GPEN-BFR-')}"
        raise ValueError(f"{path}: expected {cfg.name}, but this checkpoint is {found}{hint}")
    if mismatched or missing or unexpected:
        raise ValueError(
            f"{path}: not a loadable {cfg.name} checkpoint: {len(missing)} missing keys {missing[:3]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:3]}, {len(mismatched)} shape mismatches "
            f"{mismatched[:3]}"
        )
    net.load_state_dict(state, strict=True)
    return net.eval()
