"""RetinaFace face detector: the networks, priors, decoding and batched detection, and the re-id face choice.

The networks follow the widely used PyTorch port (biubug6/Pytorch_Retinaface, also shipped by GPEN) so
that both official checkpoints load unchanged: `mobilenet0.25_Final.pth` (no key prefix) and
`Resnet50_Final.pth` (`module.` prefix, identical to GPEN's `RetinaFace-R50.pth`). `forward` is the
official test phase: BGR float minus (104, 117, 123) in, `(loc, softmaxed conf, landms)` out.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deskpro.common.state_dicts import check_keys, check_shapes
from deskpro.common.torch_utils import (
    strip_prefix,
    torch_load_weights,
    unwrap_state_dict,
)

VARIANTS: tuple[str, ...] = ("mobilenet0.25", "resnet50")
MIN_SIZES: tuple[tuple[int, int], ...] = ((16, 32), (64, 128), (256, 512))
STEPS: tuple[int, ...] = (8, 16, 32)
VARIANCES: tuple[float, float] = (0.1, 0.2)
MEAN_BGR: tuple[int, int, int] = (104, 117, 123)
_SHAPES_MESSAGE = "{source}: {n_wrong} {what} tensors have the wrong shape, e.g. [{wrong}]"
ANCHORS_PER_CELL = 2

# Backbone width (the FPN inputs are 2x, 4x, 8x it) and FPN/SSH width per variant.
_WIDTHS: dict[str, tuple[int, int]] = {"mobilenet0.25": (32, 64), "resnet50": (256, 256)}
# A key only each variant's checkpoint has: tells the variants (and non-RetinaFace files) apart.
_SIGNATURE_KEYS: dict[str, str] = {
    "mobilenet0.25": "body.stage1.0.0.weight",
    "resnet50": "body.layer1.0.conv1.weight",
}


# ---------------------------------------------------------------------------------------------------------
# Network


def _conv_bn(inp: int, oup: int, stride: int = 1, leaky: float = 0.0, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


def _conv_bn_linear(inp: int, oup: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 3, 1, 1, bias=False), nn.BatchNorm2d(oup))


def _conv_dw(inp: int, oup: int, stride: int, leaky: float = 0.1) -> nn.Sequential:
    """Depthwise 3x3 then pointwise 1x1, each with BN and LeakyReLU (state-dict indices 0,1 and 3,4)."""
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


class MobileNetV1Body(nn.Module):
    """MobileNetV1 x0.25 up to stage3; returns the stride 8, 16 and 32 feature maps."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            _conv_bn(3, 8, 2, leaky=0.1),
            _conv_dw(8, 16, 1),
            _conv_dw(16, 32, 2),
            _conv_dw(32, 32, 1),
            _conv_dw(32, 64, 2),
            _conv_dw(64, 64, 1),
        )
        self.stage2 = nn.Sequential(_conv_dw(64, 128, 2), *[_conv_dw(128, 128, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(_conv_dw(128, 256, 2), _conv_dw(256, 256, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c3 = self.stage1(x)
        c4 = self.stage2(c3)
        return [c3, c4, self.stage3(c4)]


class FPN(nn.Module):
    """Top-down feature pyramid over the three backbone levels (nearest upsampling, add, 3x3 merge)."""

    def __init__(self, in_channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        leaky = 0.1 if out_channels <= 64 else 0.0
        self.output1 = _conv_bn(in_channels[0], out_channels, leaky=leaky, kernel=1)
        self.output2 = _conv_bn(in_channels[1], out_channels, leaky=leaky, kernel=1)
        self.output3 = _conv_bn(in_channels[2], out_channels, leaky=leaky, kernel=1)
        self.merge1 = _conv_bn(out_channels, out_channels, leaky=leaky)
        self.merge2 = _conv_bn(out_channels, out_channels, leaky=leaky)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        p3, p4, p5 = self.output1(feats[0]), self.output2(feats[1]), self.output3(feats[2])
        p4 = self.merge2(p4 + F.interpolate(p5, size=p4.shape[-2:], mode="nearest"))
        p3 = self.merge1(p3 + F.interpolate(p4, size=p3.shape[-2:], mode="nearest"))
        return [p3, p4, p5]


class SSH(nn.Module):
    """Single-stage context module: 3x3, 5x5 (two 3x3) and 7x7 (three 3x3) branches, concatenated, ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        leaky = 0.1 if out_channels <= 64 else 0.0
        quarter = out_channels // 4
        self.conv3X3 = _conv_bn_linear(in_channels, out_channels // 2)
        self.conv5X5_1 = _conv_bn(in_channels, quarter, leaky=leaky)
        self.conv5X5_2 = _conv_bn_linear(quarter, quarter)
        self.conv7X7_2 = _conv_bn(quarter, quarter, leaky=leaky)
        self.conv7x7_3 = _conv_bn_linear(quarter, quarter)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mid = self.conv5X5_1(x)
        branch7 = self.conv7x7_3(self.conv7X7_2(mid))
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(mid), branch7], dim=1))


class _Head(nn.Module):
    """1x1 conv predicting `values` numbers per anchor, flattened to [B, H*W*anchors, values]."""

    def __init__(self, in_channels: int, values: int, anchors: int = ANCHORS_PER_CELL) -> None:
        super().__init__()
        self.values = values
        self.conv1x1 = nn.Conv2d(in_channels, anchors * values, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.values)


class RetinaFace(nn.Module):
    """RetinaFace (test phase). `forward(x)`: x BGR float minus MEAN_BGR, [B,3,H,W] of any size ->
    `(loc [B,N,4], conf [B,N,2] softmaxed, landms [B,N,10])`, N = prior count for (H, W)."""

    def __init__(self, variant: str = "resnet50") -> None:
        super().__init__()
        _check_variant(variant)
        self.variant = variant
        in_width, out_width = _WIDTHS[variant]
        self.body = MobileNetV1Body() if variant == "mobilenet0.25" else _resnet50_body()
        self.fpn = FPN([in_width * 2, in_width * 4, in_width * 8], out_width)
        self.ssh1 = SSH(out_width, out_width)
        self.ssh2 = SSH(out_width, out_width)
        self.ssh3 = SSH(out_width, out_width)
        self.ClassHead = nn.ModuleList([_Head(out_width, 2) for _ in STEPS])
        self.BboxHead = nn.ModuleList([_Head(out_width, 4) for _ in STEPS])
        self.LandmarkHead = nn.ModuleList([_Head(out_width, 10) for _ in STEPS])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = self.body(x)
        if isinstance(feats, Mapping):
            feats = list(feats.values())
        pyramid = self.fpn(feats)
        feats = [self.ssh1(pyramid[0]), self.ssh2(pyramid[1]), self.ssh3(pyramid[2])]
        loc = torch.cat([head(f) for head, f in zip(self.BboxHead, feats)], dim=1)
        conf = torch.cat([head(f) for head, f in zip(self.ClassHead, feats)], dim=1)
        landms = torch.cat([head(f) for head, f in zip(self.LandmarkHead, feats)], dim=1)
        return loc, F.softmax(conf, dim=-1), landms


def _resnet50_body() -> nn.Module:
    """torchvision ResNet-50 (no download) cut after layer4; its keys are `body.conv1`, `body.layer1`...

    torchvision is imported here, not with the module: importing it takes seconds (its models, and
    torch._dynamo), which every Ray actor of a mobilenet0.25 detector would otherwise pay at start.
    """
    import torchvision
    from torchvision.models._utils import IntermediateLayerGetter

    resnet = torchvision.models.resnet50(weights=None)
    return IntermediateLayerGetter(resnet, {"layer2": "0", "layer3": "1", "layer4": "2"})


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown RetinaFace variant {variant!r}; expected one of {', '.join(VARIANTS)}")


def build(variant: str = "resnet50") -> RetinaFace:
    """A randomly initialised RetinaFace of `variant` ("mobilenet0.25" or "resnet50"); no download."""
    return RetinaFace(variant)


def checkpoint_variant(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """The variant whose keys `state_dict` (prefix already stripped) carries, or None if neither."""
    found = [v for v, key in _SIGNATURE_KEYS.items() if key in state_dict]
    return found[0] if len(found) == 1 else None


def load(path: Path | str, variant: str = "resnet50") -> RetinaFace:
    """Load an official RetinaFace checkpoint (weights only, `module.` prefix optional) in eval mode.

    Raises FileNotFoundError for a missing file and ValueError naming the file when it is not a
    RetinaFace checkpoint, is the other variant's, or its keys or shapes do not match.
    """
    _check_variant(variant)
    raw = torch_load_weights(path, what=f"RetinaFace {variant} checkpoint")
    state = strip_prefix(unwrap_state_dict(raw, path), "module.")
    found = checkpoint_variant(state)
    if found is None:
        raise ValueError(
            f"{path}: not a RetinaFace checkpoint (neither {' nor '.join(_SIGNATURE_KEYS.values())} "
            f"present; first keys: {list(state)[:3]})"
        )
    if found != variant:
        raise ValueError(f"{path}: {found} keys given to {variant}; load it with variant={found!r}")
    net = build(variant)
    expected = net.state_dict()
    check_keys(expected, state, source=path, what="RetinaFace keys do not match", quote=True)
    check_shapes(expected, state, source=path, what="RetinaFace", message=_SHAPES_MESSAGE, quote=True)
    net.load_state_dict(state, strict=True)
    return net.eval()


# ---------------------------------------------------------------------------------------------------------
# Priors, encode and decode (official PriorBox / box_utils math)


def feature_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """(rows, cols) of each pyramid level for an input of height x width: ceil(size / step)."""
    return [(math.ceil(height / s), math.ceil(width / s)) for s in STEPS]


@functools.lru_cache(maxsize=64)
def _priors_cached(height: int, width: int) -> np.ndarray:
    levels = []
    for (rows, cols), step, sizes in zip(feature_sizes(height, width), STEPS, MIN_SIZES):
        cy, cx, size = np.meshgrid(
            (np.arange(rows) + 0.5) * step,
            (np.arange(cols) + 0.5) * step,
            np.asarray(sizes, float),
            indexing="ij",
        )  # row-major cells, anchors innermost: the order of the heads' flattened output
        levels.append(np.stack([cx, cy, size, size], axis=-1).reshape(-1, 4))
    priors = np.concatenate(levels) / np.array([width, height, width, height], dtype=np.float64)
    priors = priors.astype(np.float32)
    priors.flags.writeable = False
    return priors


def prior_boxes(height: int, width: int) -> np.ndarray:
    """Official priors for an input of height x width: float32 [N, 4] (cx, cy, w, h) divided by (W, H).

    Cached per size. Order: level, row, column, anchor (min size), as the heads flatten their output.
    """
    if height < 1 or width < 1:
        raise ValueError(f"prior_boxes needs a positive size, got {height}x{width}")
    return _priors_cached(int(height), int(width))


def prior_count(height: int, width: int) -> int:
    """Number of priors (and of network outputs) for an input of height x width."""
    return sum(r * c * ANCHORS_PER_CELL for r, c in feature_sizes(height, width))


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor, variances=VARIANCES) -> torch.Tensor:
    """Box offsets [..., N, 4] -> corner boxes x1, y1, x2, y2 in the priors' units.

    centre = prior centre + loc[:2] * v0 * prior size; size = prior size * exp(loc[2:] * v1).
    """
    centre = priors[..., :2] + loc[..., :2] * variances[0] * priors[..., 2:]
    size = priors[..., 2:] * torch.exp(loc[..., 2:] * variances[1])
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


def encode_boxes(boxes: torch.Tensor, priors: torch.Tensor, variances=VARIANCES) -> torch.Tensor:
    """Inverse of `decode_boxes`: corner boxes [..., N, 4] -> offsets for the given priors."""
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    size = boxes[..., 2:] - boxes[..., :2]
    offset = (centre - priors[..., :2]) / (variances[0] * priors[..., 2:])
    return torch.cat([offset, torch.log(size / priors[..., 2:]) / variances[1]], dim=-1)


def decode_landmarks(landms: torch.Tensor, priors: torch.Tensor, variances=VARIANCES) -> torch.Tensor:
    """Landmark offsets [..., N, 10] -> 5 points x, y [..., N, 10]: prior centre + l * v0 * prior size."""
    points = landms.unflatten(-1, (5, 2))
    decoded = priors[..., None, :2] + points * variances[0] * priors[..., None, 2:]
    return decoded.flatten(-2)
