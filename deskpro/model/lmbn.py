"""LightMBN: the multi-branch re-id network on OSNet used by every DeSKPro stream (body, teacher, student).

Re-derived from the official DeSKPro release (its ``model/backbone/lmbn``), itself LightMBN (Herzog et al.)
split into branch modules. Module names reproduce the official state-dict keys, including the double
registration of each branch as ``global_branch``/``part_branch``/``channel_branch`` *and* as
``branches.0/1/2`` (the same module objects, so both key sets appear and both load).

Seven embeddings, in the official order (train logits, eval features and KD pairs all use it):
0 global (avg-pooled bottleneck features), 1 global with batch feature erasing (max-pooled),
2 part-branch whole (max-pooled), 3 upper part, 4 lower part, 5 first channel half, 6 second channel half.
The triplet loss uses the pre-BN features of 0, 1 and 2.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from deskpro.model.osnet import DEFAULT_BACKBONE, OSBlock, OSNet, set_repeat_conv2a, stem, tail

BRANCH_CHANNELS = 512  # OSNet x1.0 conv5 width (a narrower backbone's branches take its own)
NUM_EMBEDDINGS = 7
TRIPLET_INDICES = (0, 1, 2)
DROP_HEIGHT_RATIO = 0.33


class LMBNOutput(NamedTuple):
    """Training outputs of one LightMBN stream.

    logits: [B, 7, C] classifier scores on the BN-neck features.
    triplet: [B, 3, D] pre-BN features of embeddings 0, 1, 2 (the triplet-loss inputs).
    embeddings: [B, 7, D] post-BN features (what eval mode returns).
    """

    logits: torch.Tensor
    triplet: torch.Tensor
    embeddings: torch.Tensor


def init_kaiming(m: nn.Module) -> None:
    """Kaiming fan-in for convs (zero bias), unit affine BatchNorm: LightMBN's initialisation."""
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.affine:
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _init_classifier(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.001)


class BNNeck(nn.Module):
    """BatchNorm neck + bias-free classifier; the BN bias is frozen (BNNeck of Luo et al.)."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        self.bn.bias.requires_grad_(False)
        self.classifier = nn.Linear(dim, num_classes, bias=False)
        self.bn.apply(init_kaiming)
        self.classifier.apply(_init_classifier)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, D, 1, 1] -> (after-neck [B, D], logits [B, C], before-neck [B, D])."""
        before = x.flatten(1)
        after = self.bn(before)
        return after, self.classifier(after), before


class BNNeck3(BNNeck):
    """A 1x1 reduction conv (in -> feat_dim) in front of a :class:`BNNeck`."""

    def __init__(self, in_dim: int, num_classes: int, feat_dim: int):
        super().__init__(feat_dim, num_classes)
        self.reduction = nn.Conv2d(in_dim, feat_dim, 1, bias=False)  # PyTorch default init, as official

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return super().forward(self.reduction(x))


def drop_top_rows_mask(features: torch.Tensor, h_ratio: float = DROP_HEIGHT_RATIO) -> torch.Tensor:
    """Batch DropBlock-top mask [B,1,H,1]: zero the round(h_ratio*H) rows of highest peak activation.

    Activation per location is the channel sum of squares, L2-normalised over the map; a row's score is
    its maximum (as LightMBN's BatchDropTop).
    """
    b, _, h, w = features.shape
    rows = round(h_ratio * h)
    act = F.normalize(features.detach().float().pow(2).sum(1).reshape(b, h * w), p=2, dim=1).reshape(b, h, w)
    order = act.amax(dim=2).argsort(dim=1)
    mask = torch.ones(b, h, device=features.device, dtype=features.dtype)
    if rows > 0:
        mask.scatter_(1, order[:, h - rows :], 0.0)
    return mask.view(b, 1, h, 1)


class BatchFeatureErase(nn.Module):
    """An OSBlock bottleneck followed (in training only) by dropping the most activated rows."""

    def __init__(self, channels: int = BRANCH_CHANNELS, h_ratio: float = DROP_HEIGHT_RATIO):
        super().__init__()
        self.drop_batch_bottleneck = OSBlock(channels, channels)
        self.h_ratio = h_ratio

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (dropped features, bottleneck features); identical in eval mode."""
        features = self.drop_batch_bottleneck(x)
        if not self.training:
            return features, features
        return features * drop_top_rows_mask(features, self.h_ratio), features


Heads = list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


class GlobalBranch(nn.Module):
    """Embeddings 0 (global, avg-pooled) and 1 (global after batch feature erasing, max-pooled)."""

    def __init__(self, osnet: OSNet, num_classes: int, feat_dim: int):
        super().__init__()
        self.backbone2 = tail(osnet)
        width = osnet.channels[3]
        self.reduction_1 = BNNeck3(width, num_classes, feat_dim)
        self.reduction_2 = BNNeck3(width, num_classes, feat_dim)
        self.batch_drop_block = BatchFeatureErase(width)

    def forward(self, x: torch.Tensor) -> Heads:
        dropped, features = self.batch_drop_block(self.backbone2(x))
        glo = self.reduction_1(F.adaptive_avg_pool2d(features, 1))
        glo_drop = self.reduction_2(F.adaptive_max_pool2d(dropped, 1))
        return [glo, glo_drop]


class PartBranch(nn.Module):
    """Embeddings 2 (whole map, max-pooled), 3 (upper half) and 4 (lower half, both avg-pooled)."""

    def __init__(self, osnet: OSNet, num_classes: int, feat_dim: int):
        super().__init__()
        self.backbone2 = tail(osnet)
        self.partial_pooling = nn.AdaptiveAvgPool2d((2, 1))
        width = osnet.channels[3]
        self.reduction_1 = BNNeck3(width, num_classes, feat_dim)
        self.reduction_2 = BNNeck3(width, num_classes, feat_dim)
        self.reduction_3 = BNNeck3(width, num_classes, feat_dim)

    def forward(self, x: torch.Tensor) -> Heads:
        fmap = self.backbone2(x)
        halves = self.partial_pooling(fmap)
        whole = self.reduction_1(F.adaptive_max_pool2d(fmap, 1))
        return [whole, self.reduction_2(halves[:, :, 0:1]), self.reduction_3(halves[:, :, 1:2])]


class ChannelBranch(nn.Module):
    """Embeddings 5 and 6: the two channel halves of the avg-pooled map through a shared 1x1 conv."""

    def __init__(self, osnet: OSNet, num_classes: int, feat_dim: int, n_chunks: int = 2):
        super().__init__()
        self.backbone2 = tail(osnet)
        self.chunk = osnet.channels[3] // n_chunks
        self.shared = nn.Sequential(
            nn.Conv2d(self.chunk, feat_dim, 1, bias=False), nn.BatchNorm2d(feat_dim), nn.ReLU(inplace=True)
        )
        self.shared.apply(init_kaiming)
        self.reduction_ch_0 = BNNeck(feat_dim, num_classes)
        self.reduction_ch_1 = BNNeck(feat_dim, num_classes)

    def forward(self, x: torch.Tensor) -> Heads:
        pooled = F.adaptive_avg_pool2d(self.backbone2(x), 1)
        c0 = self.shared(pooled[:, : self.chunk])
        c1 = self.shared(pooled[:, self.chunk :])
        return [self.reduction_ch_0(c0), self.reduction_ch_1(c1)]


class LightMBN(nn.Module):
    """OSNet trunk (conv1..conv3[0]) + global, part and channel branches -> 7 embeddings.

    ``forward(x)`` returns :class:`LMBNOutput` in train mode and the official eval features
    ``[B, 7, feat_dim]`` (post-BN, unnormalised) in eval mode; ``forward(x, full=True)`` returns the
    full :class:`LMBNOutput` in either mode (a frozen teacher needs eval-mode logits).
    ``backbone`` names the OSNet variant (``deskpro.model.osnet.BACKBONES``) built when ``osnet`` is None.
    ``repeat_conv2a`` (default True) reproduces the official release's OSBlocks (see ``osnet``), which
    official checkpoints need for their features; False gives deep-person-reid's OSBlock.
    """

    def __init__(
        self,
        num_classes: int,
        feat_dim: int = 512,
        osnet: OSNet | None = None,
        repeat_conv2a: bool = True,
        backbone: str = DEFAULT_BACKBONE,
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"LightMBN: num_classes must be >= 1, got {num_classes}")
        osnet = osnet if osnet is not None else OSNet(name=backbone)
        self.backbone_name = osnet.name
        self.trunk_channels = osnet.channels[2]  # conv3[0]'s output width
        self.num_classes = num_classes
        self.feat_dim = feat_dim
        self.repeat_conv2a = repeat_conv2a
        self.backbone = stem(osnet)
        self.global_branch = GlobalBranch(osnet, num_classes, feat_dim)
        self.part_branch = PartBranch(osnet, num_classes, feat_dim)
        self.channel_branch = ChannelBranch(osnet, num_classes, feat_dim)
        # The official model registers the same branch objects a second time (state-dict aliases).
        self.branches = nn.ModuleList([self.global_branch, self.part_branch, self.channel_branch])
        set_repeat_conv2a(self, repeat_conv2a)

    def init_from_osnet(self, osnet: OSNet) -> None:
        """Copy (ImageNet) OSNet weights into the trunk and into every branch's conv3[1:], conv4, conv5."""
        self.backbone.load_state_dict(stem(osnet).state_dict())
        for branch in self.branches:
            branch.backbone2.load_state_dict(tail(osnet).state_dict())

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B,3,H,W] -> conv3[0] features [B,C3,H/8,W/8] (C3 = 384 for x1.0)."""
        return self.backbone(x)

    def forward_branches(self, trunk: torch.Tensor, full: bool | None = None) -> LMBNOutput | torch.Tensor:
        """conv3[0] features -> LMBNOutput (training or ``full``) or eval embeddings [B, 7, D]."""
        heads: Heads = [h for branch in self.branches for h in branch(trunk)]
        embeddings = torch.stack([h[0] for h in heads], dim=1)
        if not (self.training if full is None else full):
            return embeddings
        logits = torch.stack([h[1] for h in heads], dim=1)
        triplet = torch.stack([heads[i][2] for i in TRIPLET_INDICES], dim=1)
        return LMBNOutput(logits=logits, triplet=triplet, embeddings=embeddings)

    def forward(self, x: torch.Tensor, full: bool | None = None) -> LMBNOutput | torch.Tensor:
        return self.forward_branches(self.forward_trunk(x), full=full)
