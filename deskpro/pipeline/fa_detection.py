"""Face detection with the `face_alignment` package (S3FD boxes + FAN 68 landmarks), from local files only,
reduced to RetinaFace's 5 points: an alternative to `detection.FaceDetector` with the same call contract.

face_alignment's own `FaceAlignment` class downloads its weights; here the S3FD detector is built from a
local state dict and the FAN from a local file (a state dict for `face_alignment.models.FAN(4)`, as
face-alignment >= 1.4 ships it, or a TorchScript archive, as older releases did).
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deskpro.common.state_dicts import load_checked
from deskpro.common.torch_utils import require_weights_file, torch_load_weights, unwrap_state_dict
from deskpro.pipeline.detection import Face, _check_image, faces_in_image

# 68-point (iBUG 300-W) indices: 36-41 and 42-47 are the eyes that appear image-left and image-right,
# 30 the nose tip, 48 and 54 the image-left and image-right mouth corners.
LEFT_EYE = slice(36, 42)
RIGHT_EYE = slice(42, 48)
NOSE_TIP = 30
MOUTH_LEFT = 48
MOUTH_RIGHT = 54
FAN_BLOCKS = 4  # face_alignment's NetworkSize.LARGE, the only size it publishes


def reduce_68_to_5(points: np.ndarray) -> np.ndarray:
    """68 landmarks (68, 2) -> RetinaFace's 5 (5, 2): eye centres (mean of each eye's 6 points), nose tip,
    mouth corners; image-left first."""
    points = np.asarray(points, dtype=np.float32)
    if points.shape != (68, 2):
        raise ValueError(f"expected 68 landmarks of shape (68, 2), got {points.shape}")
    return np.stack(
        [
            points[LEFT_EYE].mean(axis=0),
            points[RIGHT_EYE].mean(axis=0),
            points[NOSE_TIP],
            points[MOUTH_LEFT],
            points[MOUTH_RIGHT],
        ]
    ).astype(np.float32)


def load_s3fd(path: Path | str, device: torch.device | str = "cpu") -> nn.Module:
    """face_alignment's S3FD network from a local state dict (s3fd-619a316812.pth), eval mode."""
    from face_alignment.detection.sfd.net_s3fd import s3fd

    state = unwrap_state_dict(torch_load_weights(path, what="S3FD face detector"), path)
    net = s3fd()
    _load_strict(net, state, path, "S3FD")
    return net.to(torch.device(device)).eval()


def load_fan(path: Path | str, device: torch.device | str = "cpu") -> nn.Module:
    """face_alignment's 2D FAN from a local file: a TorchScript archive, or a state dict for FAN(4)."""
    path = require_weights_file(path, "FAN landmark")  # before the TorchScript check reads it
    if _is_torchscript(path):
        try:
            return torch.jit.load(str(path), map_location=torch.device(device)).eval()
        except Exception as exc:  # torch.jit raises many types; re-raise naming the file
            raise ValueError(f"{path}: cannot be read as a TorchScript FAN: {exc}") from exc
    from face_alignment.models import FAN

    state = unwrap_state_dict(torch_load_weights(path, what="FAN landmark"), path)
    net = FAN(FAN_BLOCKS)
    _load_strict(net, state, path, "FAN")
    return net.to(torch.device(device)).eval()


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 1)[-1].startswith("code/") for name in archive.namelist())


def _load_strict(net: nn.Module, state: dict, path: Path, what: str) -> None:
    keys_what, shapes_what = f"not a {what} checkpoint", f"wrong tensor shapes for {what}"
    load_checked(net, state, source=path, keys_what=keys_what, shapes_what=shapes_what, quote=True)


def heatmap_points(heatmaps: np.ndarray, centre: np.ndarray, scale: float) -> np.ndarray:
    """FAN heatmaps [68, R, R] of a crop around `centre` (crop side 200 * scale px) -> (68, 2) image points.

    As face_alignment's get_preds_fromhm: the argmax cell, moved a quarter cell towards the larger
    neighbour on each axis (interior cells only), at the cell centre; then the crop's inverse
    transform. Kept float (face_alignment truncates to int).
    """
    count, rows, cols = heatmaps.shape
    flat = heatmaps.reshape(count, -1).argmax(axis=1)
    y, x = np.divmod(flat, cols)
    points = np.stack([x, y], axis=1).astype(np.float64)
    for k in range(count):
        if 0 < x[k] < cols - 1 and 0 < y[k] < rows - 1:
            hm, row, col = heatmaps[k], y[k], x[k]
            diff = np.array([hm[row, col + 1] - hm[row, col - 1], hm[row + 1, col] - hm[row - 1, col]])
            points[k] += 0.25 * np.sign(diff)
    points += 0.5
    side = 200.0 * scale
    return (points * side / cols + np.asarray(centre, np.float64) - side / 2).astype(np.float32)


class FaceAlignmentDetector:
    """S3FD boxes + FAN landmarks per image; `__call__(images BGR)` -> per image, faces best score first.

    Follows face_alignment's own pipeline: S3FD (score > 0.05 candidates, NMS `nms_threshold`, then
    score > conf_threshold), a 256 px crop around each box (centre raised by 0.12 of the box height,
    scale = (w + h) / 195), FAN heatmaps -> 68 points in the image (argmax plus the quarter-cell shift
    towards the larger neighbour), reduced to 5. Differences from face_alignment: points stay float
    (it truncates them to int), and boxes that are not finite or exceed 4x the image's longer side are
    dropped (they cannot be a face in the image and would make a huge crop). Boxes are clipped to the
    image; landmarks are kept as predicted.
    """

    def __init__(
        self,
        detector: nn.Module,
        fan: nn.Module,
        device: torch.device | str = "cpu",
        conf_threshold: float = 0.5,
        nms_threshold: float = 0.3,
        flip_input: bool = False,
    ) -> None:
        self.device = torch.device(device)
        self.detector = detector.to(self.device).eval()
        self.fan = fan.to(self.device).eval()
        self.conf_threshold = float(conf_threshold)
        self.nms_threshold = float(nms_threshold)
        self.flip_input = flip_input

    @classmethod
    def from_files(
        cls, detector_path: Path | str, landmarks_path: Path | str, device: torch.device | str = "cpu", **kw
    ) -> FaceAlignmentDetector:
        """The detector from the S3FD and FAN files (see load_s3fd, load_fan)."""
        return cls(load_s3fd(detector_path), load_fan(landmarks_path), device, **kw)

    def __call__(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        for i, image in enumerate(images):
            _check_image(image, i)
        return [self._detect_one(np.ascontiguousarray(image[..., ::-1])) for image in images]

    @torch.inference_mode()
    def _detect_one(self, rgb: np.ndarray) -> list[Face]:
        boxes = self._boxes(rgb)
        if not len(boxes):
            return []
        points = [reduce_68_to_5(pts) for pts in self._landmarks(rgb, boxes)]
        faces = faces_in_image(boxes[:, :4], boxes[:, 4], points, *rgb.shape[:2])
        return sorted(faces, key=lambda f: -f.score)

    def _boxes(self, rgb: np.ndarray) -> np.ndarray:
        """[K, 5] x1, y1, x2, y2, score after NMS and the score threshold (S3FD takes RGB, flips to BGR)."""
        from face_alignment.detection.sfd.bbox import nms
        from face_alignment.detection.sfd.detect import detect

        found = np.asarray(detect(self.detector, rgb, device=str(self.device))[0], dtype=np.float64)
        if found.size == 0:
            return np.zeros((0, 5))
        found = found[nms(found, self.nms_threshold)]
        found = found[found[:, 4] > self.conf_threshold]
        sizes = found[:, 2:4] - found[:, 0:2]
        limit = 4 * max(rgb.shape[:2])
        sane = np.isfinite(found).all(axis=1) & (sizes > 0).all(axis=1) & (sizes <= limit).all(axis=1)
        return found[sane]

    def _landmarks(self, rgb: np.ndarray, boxes: np.ndarray) -> list[np.ndarray]:
        """68 image points per box, as face_alignment's get_landmarks_from_image computes them."""
        from face_alignment.utils import CENTER_Y_OFFSET, REFERENCE_SCALE, crop, flip

        centres, scales, crops = [], [], []
        for x1, y1, x2, y2 in boxes[:, :4]:
            centre = np.array([x2 - (x2 - x1) / 2.0, y2 - (y2 - y1) / 2.0 - (y2 - y1) * CENTER_Y_OFFSET])
            scale = (x2 - x1 + y2 - y1) / REFERENCE_SCALE
            centres.append(centre)
            scales.append(scale)
            crops.append(crop(rgb, centre, scale).transpose(2, 0, 1).astype(np.float32) / 255.0)
        batch = torch.from_numpy(np.stack(crops)).to(self.device)
        heatmaps = self._heatmaps(batch)
        if self.flip_input:
            heatmaps = heatmaps + flip(self._heatmaps(flip(batch)), is_label=True)
        heatmaps = heatmaps.float().cpu().numpy()
        return [heatmap_points(hm, c, s) for hm, c, s in zip(heatmaps, centres, scales)]

    def _heatmaps(self, batch: torch.Tensor) -> torch.Tensor:
        out = self.fan(batch)
        return out[-1] if isinstance(out, (list, tuple)) else out
