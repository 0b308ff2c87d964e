"""SCHP human parser (ResNet-101 CE2P) in plain PyTorch: the network, checkpoint loading and inference.

The official checkpoints (`exp-schp-*-{lip,atr,pascal}*.pth`) load unchanged. The math follows the
official code (GoGoDuck912/Self-Correction-Human-Parsing): normalisation layers are InPlaceABN, which
scales by `|weight| + eps` and, in the heads, applies LeakyReLU(0.01); inference letterboxes the whole
image onto a square, takes the fusion logits, upsamples them and warps them back to the image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from deskpro.common.state_dicts import check_keys, check_shapes
from deskpro.common.torch_utils import (
    strip_prefix,
    torch_load_weights,
    unwrap_state_dict,
)
from deskpro.pipeline.nets.specs import SCHP_SPEC

LABELS: dict[str, tuple[str, ...]] = {
    "lip": (
        "Background", "Hat", "Hair", "Glove", "Sunglasses", "Upper-clothes", "Dress", "Coat", "Socks",
        "Pants", "Jumpsuits", "Scarf", "Skirt", "Face", "Left-arm", "Right-arm", "Left-leg", "Right-leg",
        "Left-shoe", "Right-shoe",
    ),
    "atr": (
        "Background", "Hat", "Hair", "Sunglasses", "Upper-clothes", "Skirt", "Pants", "Dress", "Belt",
        "Left-shoe", "Right-shoe", "Face", "Left-leg", "Right-leg", "Left-arm", "Right-arm", "Bag", "Scarf",
    ),
    "pascal": ("Background", "Head", "Torso", "Upper Arms", "Lower Arms", "Upper Legs", "Lower Legs"),
}  # fmt: skip
INPUT_SIZES: dict[str, int] = {"lip": 473, "atr": 512, "pascal": 512}
# Left/right label pairs swapped when a flipped image's logits are mapped back.
FLIP_PAIRS: dict[str, tuple[tuple[int, int], ...]] = {
    "lip": ((14, 15), (16, 17), (18, 19)),
    "atr": ((9, 10), (12, 13), (14, 15)),
    "pascal": (),
}
ABN_EPS = 1e-5
LEAKY_SLOPE = 0.01


def check_labels(labels: str) -> str:
    """Return `labels` if it names a known label set; raise ValueError otherwise."""
    if labels not in LABELS:
        raise ValueError(f"unknown label set {labels!r}: expected one of {sorted(LABELS)}")
    return labels


# ----------------------------------------------------------------------------- network


class InPlaceABN(nn.Module):
    """inplace_abn batch norm: `(x - mean) / sqrt(var + eps) * (|weight| + eps) + bias`, then activation.

    activation is "leaky_relu" (slope 0.01, the InPlaceABNSync default) or "none". Parameter and buffer
    names match the checkpoint (weight, bias, running_mean, running_var; no num_batches_tracked).
    """

    def __init__(
        self,
        num_features: int,
        activation: str = "leaky_relu",
        eps: float = ABN_EPS,
        momentum: float = 0.1,
        slope: float = LEAKY_SLOPE,
    ) -> None:
        super().__init__()
        if activation not in ("leaky_relu", "none"):
            raise ValueError(f"activation must be 'leaky_relu' or 'none', got {activation!r}")
        self.num_features = num_features
        self.activation = activation
        self.eps = eps
        self.momentum = momentum
        self.slope = slope
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight.abs() + self.eps
        x = F.batch_norm(
            x, self.running_mean, self.running_var, scale, self.bias, self.training, self.momentum, self.eps
        )
        if self.activation == "leaky_relu":
            x = F.leaky_relu(x, self.slope)
        return x

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, activation={self.activation}"


def _backbone_norm(channels: int) -> InPlaceABN:
    # The backbone uses InPlaceABNSync(activation='none') followed by an explicit ReLU.
    return InPlaceABN(channels, activation="none")


def _conv_abn(cin: int, cout: int, kernel: int = 1, padding: int = 0) -> nn.Sequential:
    """Conv (no bias) + InPlaceABN with LeakyReLU: the head building block (keys `.0`, `.1`)."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=padding, bias=False), InPlaceABN(cout))


def upsample_logits(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1, 3x3 dilated, 1x1) with InPlaceABN(none) + ReLU."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = _backbone_norm(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = _backbone_norm(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = _backbone_norm(planes * 4)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return F.relu(out + residual)


class PSPModule(nn.Module):
    """Pyramid pooling context (bins 1, 2, 3, 6) + 3x3 bottleneck, all with LeakyReLU ABN."""

    def __init__(self, features: int = 2048, out_features: int = 512, sizes: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(size),
                nn.Conv2d(features, out_features, 1, bias=False),
                InPlaceABN(out_features),
            )
            for size in sizes
        )
        self.bottleneck = _conv_abn(features + len(sizes) * out_features, out_features, 3, padding=1)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        size = (feats.shape[2], feats.shape[3])
        priors = [upsample_logits(stage(feats), size) for stage in self.stages] + [feats]
        return self.bottleneck(torch.cat(priors, 1))


class EdgeModule(nn.Module):
    """Edge branch: features of layer1-3 reduced to 256 each (LeakyReLU ABN) plus 2-class edge logits."""

    def __init__(self, in_fea: Sequence[int] = (256, 512, 1024), mid_fea: int = 256, out_fea: int = 2):
        super().__init__()
        self.conv1 = _conv_abn(in_fea[0], mid_fea)
        self.conv2 = _conv_abn(in_fea[1], mid_fea)
        self.conv3 = _conv_abn(in_fea[2], mid_fea)
        self.conv4 = nn.Conv2d(mid_fea, out_fea, 3, padding=1, bias=True)
        self.conv5 = nn.Conv2d(out_fea * 3, out_fea, 1, bias=True)

    def features(self, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor) -> list[torch.Tensor]:
        """The three 256-channel edge features, at x1's size (the fusion head needs only these)."""
        size = (x1.shape[2], x1.shape[3])
        return [self.conv1(x1), upsample_logits(self.conv2(x2), size), upsample_logits(self.conv3(x3), size)]

    def forward(
        self, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        size = (x1.shape[2], x1.shape[3])
        f1, f2, f3 = self.conv1(x1), self.conv2(x2), self.conv3(x3)
        # Edge logits are taken at each level's own size, then upsampled (as the official code does).
        edges = [self.conv4(f1), upsample_logits(self.conv4(f2), size), upsample_logits(self.conv4(f3), size)]
        edge = self.conv5(torch.cat(edges, 1))
        return edge, torch.cat([f1, upsample_logits(f2, size), upsample_logits(f3, size)], 1)


class DecoderModule(nn.Module):
    """Parsing decoder: context features upsampled to layer1's size, joined with its 48-channel reduction."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.conv1 = _conv_abn(512, 256)
        self.conv2 = _conv_abn(256, 48)
        self.conv3 = nn.Sequential(
            nn.Conv2d(304, 256, 1, bias=False),
            InPlaceABN(256),
            nn.Conv2d(256, 256, 1, bias=False),
            InPlaceABN(256),
        )
        self.conv4 = nn.Conv2d(256, num_classes, 1, bias=True)

    def features(self, xt: torch.Tensor, xl: torch.Tensor) -> torch.Tensor:
        """The 256-channel decoder feature (the fusion head's input)."""
        xt = upsample_logits(self.conv1(xt), (xl.shape[2], xl.shape[3]))
        return self.conv3(torch.cat([xt, self.conv2(xl)], 1))

    def forward(self, xt: torch.Tensor, xl: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.features(xt, xl)
        return self.conv4(x), x


class SCHPNet(nn.Module):
    """ResNet-101 CE2P with the official module names; `forward(x)` returns the fusion logits at 1/4.

    `input_spec` and `num_classes` tell a Parser how to feed it.
    """

    def __init__(self, num_classes: int, layers: Sequence[int] = (3, 4, 23, 3)):
        super().__init__()
        self.num_classes = num_classes
        self.input_spec = SCHP_SPEC
        # Deep stem: three 3x3 convs (3->64 s2, 64->64, 64->128).
        self.conv1 = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)
        self.bn1 = _backbone_norm(64)
        self.conv2 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.bn2 = _backbone_norm(64)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1, bias=False)
        self.bn3 = _backbone_norm(128)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.inplanes = 128
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], dilation=2)  # stride 1: output stride 16
        self.context_encoding = PSPModule(2048, 512)
        self.edge = EdgeModule()
        self.decoder = DecoderModule(num_classes)
        self.fushion = nn.Sequential(  # sic: the checkpoint's key
            nn.Conv2d(1024, 256, 1, bias=False),
            InPlaceABN(256),
            nn.Dropout2d(0.1),
            nn.Conv2d(256, num_classes, 1, bias=True),
        )

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False), _backbone_norm(planes * 4)
            )
        layer = [Bottleneck(self.inplanes, planes, stride, dilation, downsample)]
        self.inplanes = planes * 4
        layer += [Bottleneck(self.inplanes, planes, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layer)

    def backbone(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """layer1..layer4 outputs (strides 4, 8, 16, 16)."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        x2 = self.layer1(self.maxpool(x))
        x3 = self.layer2(x2)
        x4 = self.layer3(x3)
        return x2, x3, x4, self.layer4(x4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fusion logits [B, C, ~S/4, ~S/4] for the official input (BGR, normalised, letterboxed)."""
        x2, x3, x4, x5 = self.backbone(x)
        parsing_fea = self.decoder.features(self.context_encoding(x5), x2)
        return self.fushion(torch.cat([parsing_fea, *self.edge.features(x2, x3, x4)], 1))

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(parsing, fusion, edge) logits: all three official outputs, for training or inspection."""
        x2, x3, x4, x5 = self.backbone(x)
        parsing, parsing_fea = self.decoder(self.context_encoding(x5), x2)
        edge, edge_fea = self.edge(x2, x3, x4)
        return parsing, self.fushion(torch.cat([parsing_fea, edge_fea], 1)), edge


def build(labels: str = "lip") -> SCHPNet:
    """An untrained SCHP network for a label set (lip 20, atr 18, pascal 7 classes), in eval mode."""
    return SCHPNet(len(LABELS[check_labels(labels)])).eval()


# ----------------------------------------------------------------------------- checkpoint loading


def _labels_for_classes(num_classes: int) -> str | None:
    return next((name for name, names in LABELS.items() if len(names) == num_classes), None)


def _check_state_dict(state: Mapping[str, torch.Tensor], net: SCHPNet, labels: str, source: str) -> None:
    """Raise ValueError, naming `source`, when `state` is not an SCHP checkpoint for `labels`."""
    expected = net.state_dict()
    check_keys(expected, state, source=source, what="not an SCHP ResNet-101 checkpoint", quote=True)
    num_classes = state["fushion.3.weight"].shape[0]
    if num_classes != net.num_classes:
        hint = _labels_for_classes(num_classes)
        advice = f": pass --labels {hint}" if hint else " (no known label set has that many)"
        raise ValueError(
            f"{source}: this checkpoint has {num_classes} classes{advice} "
            f"(labels={labels!r} has {net.num_classes})"
        )
    check_shapes(expected, state, source=source, what="SCHP checkpoint has wrong tensor shapes", quote=True)


def load_state_dict(
    net: SCHPNet, checkpoint: object, labels: str = "lip", source: str = "<state dict>"
) -> SCHPNet:
    """Load an SCHP checkpoint object into `net`, strictly.

    Accepts `{"state_dict": ...}` or a bare mapping, with or without the `module.` prefix.
    """
    state = unwrap_state_dict(checkpoint, source)
    state = strip_prefix(state, "module.")
    # A re-saved file may carry BatchNorm counters; the ABN math has no use for them.
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    _check_state_dict(state, net, labels, source)
    net.load_state_dict(state, strict=True)
    return net


def load(path: str | Path, labels: str = "lip") -> SCHPNet:
    """Build the network for `labels` and load an official SCHP file (weights only), in eval mode."""
    net = build(labels)
    checkpoint = torch_load_weights(path, what=f"SCHP ({labels})")
    return load_state_dict(net, checkpoint, labels, source=str(path)).eval()


# ----------------------------------------------------------------------------- inference folding


def _activation(abn: InPlaceABN) -> nn.Module:
    return nn.LeakyReLU(abn.slope) if abn.activation == "leaky_relu" else nn.Identity()


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, abn: InPlaceABN) -> None:
    """conv <- abn(conv) without the activation: per output channel, scale the weights, add a bias."""
    factor = (abn.weight.abs() + abn.eps) / torch.sqrt(abn.running_var + abn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(abn.bias)
    conv.weight.mul_(factor.view(-1, 1, 1, 1))
    conv.bias = nn.Parameter(abn.bias + (bias - abn.running_mean) * factor)


def fold_abn(net: nn.Module) -> nn.Module:
    """Fold every InPlaceABN that directly follows a Conv2d into that conv, in place, for inference.

    The pairs are a Sequential's consecutive (Conv2d, InPlaceABN) and a module's `convN` / `bnN`
    attributes (the stem and the bottlenecks, which apply bnN(convN(x))). Each ABN becomes its
    activation alone. The state dict no longer matches the checkpoint: fold after loading.
    """
    for module in list(net.modules()):
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], InPlaceABN):
                    _fold_into(module[i], module[i + 1])
                    module[i + 1] = _activation(module[i + 1])
        for n in range(1, 4):
            conv, abn = getattr(module, f"conv{n}", None), getattr(module, f"bn{n}", None)
            if isinstance(conv, nn.Conv2d) and isinstance(abn, InPlaceABN):
                _fold_into(conv, abn)
                setattr(module, f"bn{n}", _activation(abn))
    return net
