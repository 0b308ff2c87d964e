"""Face detection for re-id crops: batched RetinaFace inference, the `Face` record and the person's face.

`FaceDetector` runs a RetinaFace network (deskpro.pipeline.nets.retinaface) on uint8 BGR images of any
sizes; `choose_face` picks the person's own face under a `FacePolicy`.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import nn

from deskpro.common.torch_utils import autocast_context, check_amp, nms_kernel, prepare_module, to_input
from deskpro.pipeline.nets.retinaface import (
    ANCHORS_PER_CELL,
    MEAN_BGR,
    decode_boxes,
    decode_landmarks,
    feature_sizes,
    prior_boxes,
)
from deskpro.pipeline.onnx_engine import OnnxNetwork, onnxruntime_available

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

    `engine` runs the network: "torch" (eager PyTorch, any device, amp, channels_last), "onnxruntime"
    (the loaded module exported once to ONNX and run by onnxruntime on CPU: several times faster there,
    see benchmarks/detect.py; batches only images of one size, as `group_by_size`), or "auto" (the
    default): onnxruntime on CPU without amp when it is installed, else torch.
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
        engine: str = "auto",
    ) -> None:
        if upscale <= 0:
            raise ValueError(f"upscale must be > 0, got {upscale}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.amp = check_amp(amp)
        autocast_context(self.device, amp)  # fail now, not at the first batch, on e.g. fp16 on CPU
        self.engine = _choose_engine(engine, self.device, self.amp)
        if self.engine == "onnxruntime":
            self.net = OnnxNetwork(prepare_module(net, self.device, False))
            channels_last, group_by_size = False, True  # a memory-format hint for torch; no padded batches
        else:
            self.net = prepare_module(net, self.device, channels_last)
        self.channels_last = channels_last
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

    def _input(self, images: list[np.ndarray]) -> torch.Tensor:
        """float32 [B,3,H,W] minus the mean colour, padded bottom/right with 0 (the mean colour).

        On CPU one numpy pass per image writes the planar float input; on an accelerator the uint8
        batch is uploaded (a quarter of the bytes) and converted there.
        """
        height = max(im.shape[0] for im in images)
        width = max(im.shape[1] for im in images)
        if self.device.type == "cpu":
            x = np.zeros((len(images), 3, height, width), dtype=np.float32)
            mean = np.asarray(MEAN_BGR, dtype=np.float32).reshape(3, 1, 1)
            for b, im in enumerate(images):
                np.subtract(np.moveaxis(im, 2, 0), mean, out=x[b, :, : im.shape[0], : im.shape[1]])
            return torch.from_numpy(x)
        canvas = np.empty((len(images), height, width, 3), dtype=np.uint8)
        canvas[:] = np.asarray(MEAN_BGR, dtype=np.uint8)
        for b, im in enumerate(images):
            canvas[b, : im.shape[0], : im.shape[1]] = im
        return to_input(torch.from_numpy(canvas).permute(0, 3, 1, 2), self.device).float() - self._mean

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
        x = self._input(images)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        own_sizes = [im.shape[:2] for im in images]
        with autocast_context(self.device, self.amp), _own_extent_masking(self.net, x.shape[-2:], own_sizes):
            loc, conf, landms = self.net(x)
        height, width = x.shape[-2:]
        priors = self._priors_px(height, width)
        scores = conf[..., 1].float()
        out = []
        for b, im in enumerate(images):
            # only the candidates are decoded: a few dozen of the thousands of priors
            own = self._own_mask(height, width, *im.shape[:2])
            candidates = torch.nonzero(own & (scores[b] > self.conf_threshold)).squeeze(1)
            boxes = decode_boxes(loc[b, candidates].float(), priors[candidates])
            keep = self._select(boxes, scores[b, candidates])
            points = decode_landmarks(landms[b, candidates[keep]].float(), priors[candidates[keep]])
            out.append(
                (boxes[keep].cpu().numpy(), scores[b, candidates[keep]].cpu().numpy(), points.cpu().numpy())
            )
        return out

    def _select(self, boxes: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Indices of the candidates kept by pre-NMS top-k, NMS and post-NMS top-k, best score first."""
        order = torch.argsort(scores, descending=True)[: self.pre_nms_top_k]
        # The official NMS counts pixels inclusively (w = x2 - x1 + 1): widen boxes by 1 to match it.
        inclusive = boxes[order] + torch.tensor([0.0, 0.0, 1.0, 1.0], device=boxes.device)
        kept = nms_kernel()(inclusive, scores[order], self.nms_threshold)
        return order[kept[: self.post_nms_top_k]]

    def _to_original(self, found, original_hw, scaled_hw) -> list[Face]:
        boxes, scores, points = found
        sy, sx = scaled_hw[0] / original_hw[0], scaled_hw[1] / original_hw[1]
        boxes = boxes / np.array([sx, sy, sx, sy], dtype=np.float32)
        points = points.reshape(-1, 5, 2) / np.array([sx, sy], dtype=np.float32)
        return faces_in_image(boxes, scores, points, *original_hw)


ENGINES: tuple[str, ...] = ("auto", "torch", "onnxruntime")


def _choose_engine(engine: str, device: torch.device, amp: str | None) -> str:
    if engine not in ENGINES:
        raise ValueError(f"unknown detection engine {engine!r}; expected one of {', '.join(ENGINES)}")
    if engine == "auto":
        return "onnxruntime" if device.type == "cpu" and amp is None and onnxruntime_available() else "torch"
    if engine == "onnxruntime" and (device.type != "cpu" or amp is not None):
        raise ValueError(f"the onnxruntime engine runs on CPU without amp, not on {device} with amp={amp}")
    return engine


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
