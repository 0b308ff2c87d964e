"""RetinaFace face detector: the networks, priors, decoding and batched detection, and the re-id face choice.

The networks follow the widely used PyTorch port (biubug6/Pytorch_Retinaface, also shipped by GPEN) so
that both official checkpoints load unchanged: `mobilenet0.25_Final.pth` (no key prefix) and
`Resnet50_Final.pth` (`module.` prefix, identical to GPEN's `RetinaFace-R50.pth`). `forward` is the
official test phase: BGR float minus (104, 117, 123) in, `(loc, softmaxed conf, landms)` out.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter

from deskpro.pipeline.nets._common import (
    autocast_context,
    check_amp,
    prepare_module,
    strip_prefix,
    to_input,
    torch_load_weights,
    unwrap_state_dict,
)
from deskpro.state_dicts import check_keys, check_shapes

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
    """torchvision ResNet-50 (no download) cut after layer4; its keys are `body.conv1`, `body.layer1`..."""
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


# ---------------------------------------------------------------------------------------------------------
# Detection


@dataclass(frozen=True, eq=False)
class Face:
    """One detected face in image pixels: box x1, y1, x2, y2; score; 5 landmarks (x, y) in the order
    left eye, right eye, nose, left mouth corner, right mouth corner (image-left first).

    eq=False: fields are numpy arrays, so equality and hashing are by identity.
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def center(self) -> tuple[float, float]:
        return float(self.box[0] + self.box[2]) / 2, float(self.box[1] + self.box[3]) / 2


class FaceDetector:
    """Batched RetinaFace detection on BGR uint8 images of any sizes.

    Each batch is padded bottom/right with the mean colour (0 after mean subtraction) to one size. So
    that padding changes nothing, the input of every spatial convolution and max-pool is zeroed outside
    each image's own feature-map extent (ceil(size / stride)), which is what the image alone would see
    as zero padding; and an image's candidates are only the priors of its own size. Batched results
    then equal single-image (official detect.py) results up to float rounding. `group_by_size=True`
    batches only images of identical size instead (no padding, no masking).

    `upscale` resizes every image by that factor (INTER_LINEAR) before detection: re-id crops have
    faces of 15-30 px, at RetinaFace's smallest anchors (16 px). Boxes and landmarks are returned in the
    original image's pixels; boxes are clipped to the image, landmarks are kept as predicted (the
    similarity alignment needs their true geometry). Thresholds follow the official detect.py:
    score > conf_threshold, best `pre_nms_top_k`, NMS (official inclusive-pixel IoU), best
    `post_nms_top_k`.
    """

    def __init__(
        self,
        net: nn.Module,
        conf_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        device: torch.device | str = "cpu",
        amp: str | None = None,
        channels_last: bool = False,
        *,
        upscale: float = 1.0,
        batch_size: int = 16,
        pre_nms_top_k: int = 5000,
        post_nms_top_k: int = 750,
        group_by_size: bool = False,
    ) -> None:
        if upscale <= 0:
            raise ValueError(f"upscale must be > 0, got {upscale}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.amp = check_amp(amp)
        autocast_context(self.device, amp)  # fail now, not at the first batch, on e.g. fp16 on CPU
        self.channels_last = channels_last
        self.net = prepare_module(net, self.device, channels_last)
        self.conf_threshold = float(conf_threshold)
        self.nms_threshold = float(nms_threshold)
        self.upscale = float(upscale)
        self.batch_size = int(batch_size)
        self.pre_nms_top_k = int(pre_nms_top_k)
        self.post_nms_top_k = int(post_nms_top_k)
        self.group_by_size = group_by_size
        self._mean = torch.tensor(MEAN_BGR, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._pixel_priors: dict[tuple[int, int], torch.Tensor] = {}
        self._own_masks: dict[tuple[int, int, int, int], torch.Tensor] = {}

    def __call__(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        """Faces per image, best score first, in each image's own pixel coordinates."""
        for i, image in enumerate(images):
            _check_image(image, i)
        scaled = [self._rescale(image) for image in images]
        results: list[list[Face]] = [[] for _ in images]
        for batch in self._batches([s.shape[:2] for s in scaled]):
            faces = self._detect_batch([scaled[i] for i in batch])
            for i, found in zip(batch, faces):
                results[i] = self._to_original(found, images[i].shape[:2], scaled[i].shape[:2])
        return results

    # -- batching

    def _batches(self, sizes: list[tuple[int, int]]) -> list[list[int]]:
        if not self.group_by_size:
            order = list(range(len(sizes)))
            return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, size in enumerate(sizes):
            groups.setdefault(tuple(size), []).append(i)
        step = self.batch_size
        return [g[i : i + step] for g in groups.values() for i in range(0, len(g), step)]

    def _rescale(self, image: np.ndarray) -> np.ndarray:
        if self.upscale == 1.0:
            return image
        h, w = image.shape[:2]
        size = (max(1, round(w * self.upscale)), max(1, round(h * self.upscale)))
        return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)

    def _pad(self, images: list[np.ndarray]) -> torch.Tensor:
        """uint8 [B,3,H,W] padded with the mean colour; mean subtraction happens on the device."""
        height = max(im.shape[0] for im in images)
        width = max(im.shape[1] for im in images)
        canvas = np.empty((len(images), height, width, 3), dtype=np.uint8)
        canvas[:] = np.asarray(MEAN_BGR, dtype=np.uint8)
        for b, im in enumerate(images):
            canvas[b, : im.shape[0], : im.shape[1]] = im
        return torch.from_numpy(canvas).permute(0, 3, 1, 2)

    # -- network and decoding

    def _priors_px(self, height: int, width: int) -> torch.Tensor:
        key = (height, width)
        if key not in self._pixel_priors:
            scale = np.array([width, height, width, height], dtype=np.float32)
            self._pixel_priors[key] = torch.tensor(prior_boxes(height, width) * scale, device=self.device)
        return self._pixel_priors[key]

    def _own_mask(self, height: int, width: int, own_h: int, own_w: int) -> torch.Tensor:
        key = (height, width, own_h, own_w)
        if key not in self._own_masks:
            self._own_masks[key] = torch.tensor(_own_prior_mask(*key), device=self.device)
        return self._own_masks[key]

    @torch.inference_mode()
    def _detect_batch(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        x = to_input(self._pad(images), self.device).float() - self._mean
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        own_sizes = [im.shape[:2] for im in images]
        with autocast_context(self.device, self.amp), _own_extent_masking(self.net, x.shape[-2:], own_sizes):
            loc, conf, landms = self.net(x)
        height, width = x.shape[-2:]
        priors = self._priors_px(height, width)
        boxes = decode_boxes(loc.float(), priors)
        points = decode_landmarks(landms.float(), priors)
        scores = conf.float()[..., 1]
        out = []
        for b, im in enumerate(images):
            keep = self._select(boxes[b], scores[b], self._own_mask(height, width, *im.shape[:2]))
            out.append(tuple(t[keep].cpu().numpy() for t in (boxes[b], scores[b], points[b])))
        return out

    def _select(self, boxes: torch.Tensor, scores: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        """Indices kept by threshold, pre-NMS top-k, NMS and post-NMS top-k, best score first."""
        candidates = torch.nonzero(own & (scores > self.conf_threshold)).squeeze(1)
        order = torch.argsort(scores[candidates], descending=True)[: self.pre_nms_top_k]
        candidates = candidates[order]
        # The official NMS counts pixels inclusively (w = x2 - x1 + 1): widen boxes by 1 to match it.
        inclusive = boxes[candidates] + torch.tensor([0.0, 0.0, 1.0, 1.0], device=boxes.device)
        kept = torchvision.ops.nms(inclusive, scores[candidates], self.nms_threshold)
        return candidates[kept[: self.post_nms_top_k]]

    def _to_original(self, found, original_hw, scaled_hw) -> list[Face]:
        boxes, scores, points = found
        sy, sx = scaled_hw[0] / original_hw[0], scaled_hw[1] / original_hw[1]
        boxes = boxes / np.array([sx, sy, sx, sy], dtype=np.float32)
        points = points.reshape(-1, 5, 2) / np.array([sx, sy], dtype=np.float32)
        return faces_in_image(boxes, scores, points, *original_hw)


def faces_in_image(boxes, scores, landmarks, height: int, width: int) -> list[Face]:
    """Faces from boxes [K, 4], scores [K] and landmarks [K, 5, 2] of a height x width image, in order.

    Boxes are clipped to the image and those that clip to nothing (wholly outside it) are dropped;
    landmarks are kept as given.
    """
    boxes = np.clip(boxes, 0, [width, height, width, height]).astype(np.float32)
    return [
        Face(box=box, score=float(score), landmarks=np.asarray(pts, np.float32))
        for box, score, pts in zip(boxes, scores, landmarks)
        if box[2] > box[0] and box[3] > box[1]
    ]


class _OwnExtentMask:
    """Forward pre-hook: zero a layer's input outside each image's own extent in a padded batch.

    A feature map of padded size P at cumulative stride r has size ceil(P / r); the image's own part is
    ceil(own / r). r is recovered from the sizes (the smallest power of two giving ceil(P / r) == L;
    only size 1 is ambiguous, and then the own extent is 1 as well).
    """

    def __init__(self, padded_hw: Sequence[int], own_hws: Sequence[Sequence[int]]) -> None:
        self.padded_hw = (int(padded_hw[0]), int(padded_hw[1]))
        self.own_hws = [(int(h), int(w)) for h, w in own_hws]
        self._cache: dict[tuple, torch.Tensor] = {}

    @staticmethod
    def _own_length(padded: int, length: int, own: int) -> int:
        stride = 1
        while math.ceil(padded / stride) > length:
            stride *= 2
        if math.ceil(padded / stride) != length:
            raise RuntimeError(
                f"padded batching needs feature maps of size ceil({padded} / 2^k), got {length}; "
                "use group_by_size=True for this network"
            )
        return math.ceil(own / stride)

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        rows, cols = x.shape[-2:]
        key = (rows, cols, x.dtype, x.device)
        if key not in self._cache:
            mask = torch.zeros(len(self.own_hws), 1, rows, cols, dtype=x.dtype, device=x.device)
            for b, (h, w) in enumerate(self.own_hws):
                own_rows = self._own_length(self.padded_hw[0], rows, h)
                own_cols = self._own_length(self.padded_hw[1], cols, w)
                mask[b, :, :own_rows, :own_cols] = 1
            self._cache[key] = mask
        return self._cache[key]

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (args[0] * self.mask(args[0]), *args[1:])


def _reads_neighbours(module: nn.Module) -> bool:
    """Convolutions and pools whose output at a position reads its neighbours (or the padding).

    Max-pool padding is -inf rather than 0; masking its input to 0 is still exact because in RetinaFace
    every max-pool (ResNet's stem) follows a ReLU, so its inputs are >= 0.
    """
    if isinstance(module, nn.Conv2d):
        return module.kernel_size != (1, 1) or module.padding not in ((0, 0), "valid")
    return isinstance(module, (nn.MaxPool2d, nn.AvgPool2d))


@contextlib.contextmanager
def _own_extent_masking(net: nn.Module, padded_hw, own_hws):
    """Mask every neighbour-reading layer's input while the block runs; nothing when nothing is padded."""
    if all(tuple(hw) == tuple(padded_hw) for hw in own_hws):
        yield
        return
    hook = _OwnExtentMask(padded_hw, own_hws)
    handles = [m.register_forward_pre_hook(hook) for m in net.modules() if _reads_neighbours(m)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@functools.lru_cache(maxsize=256)
def _own_prior_mask_cached(height: int, width: int, own_h: int, own_w: int) -> np.ndarray:
    masks = []
    for (rows, cols), (own_rows, own_cols) in zip(feature_sizes(height, width), feature_sizes(own_h, own_w)):
        cell = np.zeros((rows, cols, ANCHORS_PER_CELL), dtype=bool)
        cell[:own_rows, :own_cols] = True
        masks.append(cell.reshape(-1))
    mask = np.concatenate(masks)
    mask.flags.writeable = False
    return mask


def _own_prior_mask(height: int, width: int, own_h: int, own_w: int) -> np.ndarray:
    """Which priors of a padded height x width input belong to an own_h x own_w image at its top-left:
    exactly the priors that the image alone would have."""
    return _own_prior_mask_cached(int(height), int(width), int(own_h), int(own_w))


def _check_image(image: object, index: int) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{type(image).__name__} {getattr(image, 'shape', '')} {getattr(image, 'dtype', '')}".strip()
        raise ValueError(f"image {index}: expected a uint8 HxWx3 BGR array, got {desc}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image {index}: empty image of shape {image.shape}")


# ---------------------------------------------------------------------------------------------------------
# The person's face in a re-id crop


@dataclass(frozen=True)
class FacePolicy:
    """Rules for the person's face in a re-id crop: a face needs score >= min_score, a short side of at
    least min_size pixels, and its centre no lower than max_center_y of the image height."""

    min_score: float = 0.8
    min_size: float = 8.0
    max_center_y: float = 0.5


def face_merit(face: Face, image_width: float, largest_side: float) -> float:
    """score * (0.5 + 0.5 * centrality) * (0.5 + 0.5 * relative size).

    centrality = 1 - |centre x - W/2| / (W/2) (1 at the horizontal centre, 0 at an edge); relative size
    = the face's short side / the largest short side among the candidates. A pedestrian crop is centred
    on its person, whose face is usually the biggest; bystanders sit at the sides and further away.
    Both terms only halve the merit at worst, so a clearly better score can still win.
    """
    half = image_width / 2
    centrality = max(0.0, 1.0 - abs(face.center[0] - half) / half) if half > 0 else 0.0
    relative = min(face.width, face.height) / largest_side if largest_side > 0 else 0.0
    return face.score * (0.5 + 0.5 * centrality) * (0.5 + 0.5 * relative)


def choose_face(
    faces: Sequence[Face], image_hw: tuple[int, int], policy: FacePolicy = FacePolicy()
) -> Face | None:
    """The person's face among `faces` of an image of size image_hw = (H, W), or None if none qualifies.

    Faces failing the policy are dropped; the highest `face_merit` wins (ties: the higher score).
    """
    height, width = image_hw
    candidates = [
        f
        for f in faces
        if f.score >= policy.min_score
        and min(f.width, f.height) >= policy.min_size
        and f.center[1] <= policy.max_center_y * height
    ]
    if not candidates:
        return None
    largest = max(min(f.width, f.height) for f in candidates)
    return max(candidates, key=lambda f: (face_merit(f, width, largest), f.score))
