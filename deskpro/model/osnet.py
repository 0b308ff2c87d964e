"""OSNet (omni-scale network), the backbone of every LightMBN stream, and its ImageNet initialisation.

Variants by name, as deep-person-reid's: ``osnet_x1_0`` (the official DeSKPro backbone, the default)
and the narrower ``osnet_x0_75``, ``osnet_x0_5``, ``osnet_x0_25`` (every width scaled; the demo uses
x0.25, which trains about 3x faster per image on a CPU: docs/differences.md).

The module layout (and so every state-dict key) follows deep-person-reid's ``osnet_x1_0`` so that its
ImageNet checkpoint (``osnet_x1_0_imagenet.pth``) loads unchanged; the 1000-class ``fc``/``classifier``
head is not built (a re-id model never uses it) and is dropped on loading.

``repeat_conv2a``: the official DeSKPro release's OSBlock sums ``gate(conv2a(x))`` twice and never calls
``conv2b`` (whose weights exist but stay unused, so they do not require gradients); its checkpoints give
their features only with that quirk, so the DeSKPro streams enable it. In train mode the two official
calls also update ``conv2a``'s BatchNorm running statistics twice a step (momentum applied twice,
``num_batches_tracked`` + 2); deskpro computes ``conv2a`` once and applies the second update from the
same batch statistics. ``False`` is deep-person-reid's (and LightMBN's) OSBlock.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from deskpro.common.state_dicts import load_checked

# Channel widths of each variant: stem, conv2, conv3, conv4 (conv5 keeps conv4's width).
BACKBONES = {
    "osnet_x1_0": (64, 256, 384, 512),
    "osnet_x0_75": (48, 192, 288, 384),
    "osnet_x0_5": (32, 128, 192, 256),
    "osnet_x0_25": (16, 64, 96, 128),
}
DEFAULT_BACKBONE = "osnet_x1_0"
CHANNELS = BACKBONES[DEFAULT_BACKBONE]
BLOCKS_PER_STAGE = 2
IMAGENET_HEAD_PREFIXES = ("fc.", "classifier.")


class ConvLayer(nn.Module):
    """Convolution + BatchNorm + ReLU (the 7x7 stem)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0
    ):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class Conv1x1(ConvLayer):
    """Point-wise convolution + BatchNorm + ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 1)


class Conv1x1Linear(nn.Module):
    """Point-wise convolution + BatchNorm, no activation (residual projections)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class LightConv3x3(nn.Module):
    """Lite 3x3 convolution: point-wise, then depth-wise 3x3, BatchNorm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False, groups=out_channels)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, bn_updates: int = 1) -> torch.Tensor:
        """bn_updates > 1: update the BatchNorm's running statistics as that many calls on x would."""
        pre = self.conv2(self.conv1(x))
        if bn_updates > 1 and self.training and self.bn.track_running_stats:
            # before the BatchNorm call: its backward keeps the running statistics it saw (an update after
            # it would fail autograd's version check); the same update twice commutes
            repeat_running_update(self.bn, pre, bn_updates - 1)
        return self.relu(self.bn(pre))


def repeat_running_update(bn: nn.BatchNorm2d, pre: torch.Tensor, times: int) -> None:
    """Apply ``times`` more train-mode running-statistics updates of ``bn`` for the batch ``pre`` [B,C,H,W].

    A second train-mode call on the same batch normalises with the same batch statistics (same output)
    and moves the running mean / variance towards them once more; this does that without the call.
    Call it before the module's own call (the updates commute; with ``momentum=None`` the counts run in
    the same order).
    """
    with torch.no_grad():
        pre = pre.float()
        mean = pre.mean(dim=(0, 2, 3))
        var = pre.var(dim=(0, 2, 3), unbiased=True)  # BatchNorm keeps the unbiased variance
        for _ in range(times):
            bn.num_batches_tracked.add_(1)
            momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            bn.running_mean.mul_(1.0 - momentum).add_(mean.to(bn.running_mean.dtype), alpha=momentum)
            bn.running_var.mul_(1.0 - momentum).add_(var.to(bn.running_var.dtype), alpha=momentum)


class ChannelGate(nn.Module):
    """Unified aggregation gate: channel-wise sigmoid weights from a squeeze-excitation MLP."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=True)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=True)
        self.gate_activation = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.gate_activation(self.fc2(self.relu(self.fc1(self.global_avgpool(x)))))
        return x * w


def _lite_stack(channels: int, depth: int) -> nn.Module:
    if depth == 1:
        return LightConv3x3(channels, channels)
    return nn.Sequential(*[LightConv3x3(channels, channels) for _ in range(depth)])


class OSBlock(nn.Module):
    """Omni-scale residual bottleneck: four streams of 1-4 lite 3x3 convs fused by a shared gate."""

    def __init__(
        self, in_channels: int, out_channels: int, bottleneck_reduction: int = 4, repeat_conv2a: bool = False
    ):
        super().__init__()
        mid = out_channels // bottleneck_reduction
        self.conv1 = Conv1x1(in_channels, mid)
        self.conv2a = _lite_stack(mid, 1)
        self.conv2b = _lite_stack(mid, 2)
        self.conv2c = _lite_stack(mid, 3)
        self.conv2d = _lite_stack(mid, 4)
        self.gate = ChannelGate(mid)
        self.conv3 = Conv1x1Linear(mid, out_channels)
        self.downsample = Conv1x1Linear(in_channels, out_channels) if in_channels != out_channels else None
        self.set_repeat_conv2a(repeat_conv2a)

    def set_repeat_conv2a(self, repeat_conv2a: bool) -> None:
        """Switch to (or from) the official stream quirk; the unused ``conv2b`` then stops requiring grads."""
        self.repeat_conv2a = repeat_conv2a
        self.conv2b.requires_grad_(not repeat_conv2a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.conv1(x)
        # the official release adds stream a twice in place of stream b (see the module docstring): two
        # calls of conv2a, so in train mode its BatchNorm's running statistics move twice a step
        stream_a = self.gate(self.conv2a(x1, bn_updates=2 if self.repeat_conv2a else 1))
        x2 = stream_a + (stream_a if self.repeat_conv2a else self.gate(self.conv2b(x1)))
        x2 = x2 + self.gate(self.conv2c(x1)) + self.gate(self.conv2d(x1))
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(self.conv3(x2) + identity)


def set_repeat_conv2a(module: nn.Module, repeat_conv2a: bool) -> None:
    """Switch every OSBlock inside ``module`` to (or from) the official release's stream quirk.

    The unused ``conv2b`` weights then stop requiring gradients, so optimisers and DDP skip them.
    """
    for m in module.modules():
        if isinstance(m, OSBlock):
            m.set_repeat_conv2a(repeat_conv2a)


def _stage(in_channels: int, out_channels: int, reduce_spatial_size: bool) -> nn.Sequential:
    layers: list[nn.Module] = [OSBlock(in_channels, out_channels)]
    layers += [OSBlock(out_channels, out_channels) for _ in range(BLOCKS_PER_STAGE - 1)]
    if reduce_spatial_size:
        layers.append(nn.Sequential(Conv1x1(out_channels, out_channels), nn.AvgPool2d(2, stride=2)))
    return nn.Sequential(*layers)


def init_weights(module: nn.Module) -> None:
    """deep-person-reid's OSNet initialisation (Kaiming fan-out for convs, unit BatchNorm)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def backbone_channels(name: str) -> tuple[int, int, int, int]:
    """The channel widths of a backbone variant; ValueError naming the known ones."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    return BACKBONES[name]


class OSNet(nn.Module):
    """OSNet feature extractor: ``conv1, maxpool, conv2, conv3, conv4, conv5`` -> [B,C4,H/16,W/16]
    (C4 = 512 for x1.0)."""

    def __init__(self, repeat_conv2a: bool = False, name: str = DEFAULT_BACKBONE):
        super().__init__()
        self.name = name
        self.channels = backbone_channels(name)
        c0, c1, c2, c3 = self.channels
        self.conv1 = ConvLayer(3, c0, 7, stride=2, padding=3)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = _stage(c0, c1, reduce_spatial_size=True)
        self.conv3 = _stage(c1, c2, reduce_spatial_size=True)
        self.conv4 = _stage(c2, c3, reduce_spatial_size=False)
        self.conv5 = Conv1x1(c3, c3)
        set_repeat_conv2a(self, repeat_conv2a)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        return self.conv5(self.conv4(self.conv3(self.conv2(x))))


def osnet_x1_0(repeat_conv2a: bool = False) -> OSNet:
    """A randomly initialised OSNet x1.0 (call :func:`load_imagenet` for the ImageNet weights)."""
    return OSNet(repeat_conv2a)


def stem(osnet: OSNet) -> nn.Sequential:
    """The shared trunk of LightMBN: conv1, maxpool, conv2, conv3[0] (deep copies), as keys 0..3."""
    return nn.Sequential(
        copy.deepcopy(osnet.conv1),
        copy.deepcopy(osnet.maxpool),
        copy.deepcopy(osnet.conv2),
        copy.deepcopy(osnet.conv3[0]),
    )


def tail(osnet: OSNet) -> nn.Sequential:
    """A private copy of conv3[1:], conv4, conv5 for one LightMBN branch.

    ``conv3[1:]`` keeps conv3's own child names ("1", "2"), as slicing an ``nn.Sequential`` does, so the
    keys read ``backbone2.0.1.*`` / ``backbone2.0.2.0.*`` like the official checkpoints.
    """
    conv3_rest = nn.Sequential(
        OrderedDict((name, copy.deepcopy(m)) for name, m in list(osnet.conv3._modules.items())[1:])
    )
    return nn.Sequential(conv3_rest, copy.deepcopy(osnet.conv4), copy.deepcopy(osnet.conv5))


class CheckpointError(ValueError):
    """A checkpoint file that is not what the loader expects (the message names the file)."""


def read_checkpoint(path: str | Path, *, trust: bool = False):
    """``torch.load`` on the CPU, ``weights_only`` unless trusted; a one-line CheckpointError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as exc:  # torch raises many types for foreign or corrupt files
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        hint = "" if trust else "; if it holds pickled objects and you trust it, pass trust=True"
        raise CheckpointError(
            f"{path}: cannot be read with weights_only={not trust}: {first}{hint}"
        ) from None


def read_state_dict(path: str | Path, *, trust: bool = False) -> dict[str, torch.Tensor]:
    """A flat tensor dict from a checkpoint file, unwrapping ``state_dict``/``model`` and ``module.``."""
    obj = read_checkpoint(path, trust=trust)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()) or not obj:
        raise CheckpointError(f"{path}: not a state dict (expected a mapping of names to tensors)")
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in obj.items()}


def load_osnet_state(osnet: OSNet, state: dict[str, torch.Tensor], source: str) -> None:
    """Load an ImageNet OSNet state dict (head dropped) into ``osnet``, strictly, with a clear error."""
    state = {k: v for k, v in state.items() if not k.startswith(IMAGENET_HEAD_PREFIXES)}
    load_checked(
        osnet,
        state,
        source=source,
        keys_what=f"not an {osnet.name} ImageNet checkpoint",
        shapes_what=f"wrong shapes for {osnet.name} (an ImageNet checkpoint of another width?)",
        error=CheckpointError,
    )


def load_imagenet(model_or_backbone: nn.Module, path: str | Path) -> nn.Module:
    """Initialise an OSNet, a LightMBN, or every stream of a DeSKPro model from the ImageNet OSNet file.

    LightMBN-like modules (anything with ``init_from_osnet``) get the trunk and each branch's copy of
    conv3[1:], conv4, conv5 from the checkpoint; their heads keep their own initialisation.
    The file must be of the module's backbone variant (``osnet_x1_0_imagenet.pth`` for x1.0).
    Returns the module for chaining.
    """
    if isinstance(model_or_backbone, OSNet):
        name = model_or_backbone.name
    else:
        name = getattr(model_or_backbone, "backbone_name", DEFAULT_BACKBONE)
    source = OSNet(name=name)
    load_osnet_state(source, read_state_dict(path), str(path))
    if isinstance(model_or_backbone, OSNet):
        model_or_backbone.load_state_dict(source.state_dict())
        return model_or_backbone
    targets = [m for m in model_or_backbone.modules() if hasattr(m, "init_from_osnet")]
    if not targets:
        raise TypeError(
            f"load_imagenet: {type(model_or_backbone).__name__} has no OSNet backbone to initialise"
        )
    for target in targets:
        target.init_from_osnet(source)
    return model_or_backbone
