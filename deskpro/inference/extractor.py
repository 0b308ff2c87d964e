"""Features of raw person images from a trained DeSKPro checkpoint, the face found for the user.

`EmbedStage` is the work of one batch, in the stages' contract (deskpro.pipeline.stages): the
checkpoint and the detect stage are built once in `__init__`, `__call__(batch)` maps a batch of
decoded images (sample_id, path, image BGR, error) to feature columns. The face is detected, chosen
and aligned by the detect stage's own class (`DetectStage`) with the options the checkpoint's
shards were made with; body and face are resized as `deskpro pack` resizes them and normalised with
the checkpoint's constants; features are `retrieval_features`, as `deskpro evaluate` computes them.
So a raw image's features are those of the same image packed into shards.

`FeatureExtractor` is the same work for a Python caller: paths, arrays or a folder in, `Features` out.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from deskpro.common import images
from deskpro.common.torch_utils import resolve_device
from deskpro.inference import engine as engines
from deskpro.inference import settings as inference_settings
from deskpro.inference.features import SCHEMA, features_schema
from deskpro.manifests.schema import is_image
from deskpro.model import checkpoint
from deskpro.model.deskpro import DeSKPro, retrieval_features
from deskpro.pipeline.stages import DetectStage
from deskpro.shards.pack import _resize as resize_as_packed  # the one resize rule of pack

__all__ = ["EmbedStage", "FeatureExtractor", "Features", "list_folder", "normalize"]


def normalize(images_nhwc: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [B,H,W,3] RGB -> float [B,3,H,W], (x / 255 - mean) / std: the trainer's fused form
    (`normalize_uint8`), with the checkpoint's constants."""
    nchw = images_nhwc.permute(0, 3, 1, 2).contiguous()
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=images_nhwc.device).view(1, 3, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std)], device=images_nhwc.device).view(1, 3, 1, 1)
    return torch.addcmul(shift, nchw, scale)


def load_model(path: str | os.PathLike, trust: bool = False) -> tuple[DeSKPro, dict]:
    """The DeSKPro model of a checkpoint (ours or official) and its metadata; a teacher is refused."""
    model, meta = checkpoint.load_with_meta(path, trust=trust)
    if not isinstance(model, DeSKPro):
        raise checkpoint.CheckpointError(f"{path}: a face teacher, not a DeSKPro model (inference needs one)")
    return model, meta


class EmbedStage:
    """The checkpoint and the detect stage, built once; a batch of decoded images -> feature columns.

    Input columns: sample_id, path, image (BGR uint8), error. Output: the FEATURES columns
    (deskpro.inference.features). Rows that arrive with an error, or whose face cannot be aligned,
    are error rows with null features. `root`: the images' root (the oracle detector reads it).
    """

    name = "embed"
    schema = SCHEMA
    needs_images = True
    uses_detector = True

    def __init__(
        self,
        checkpoint_path: str,
        *,
        detector: str | None = None,
        detect_weights: str | None = None,
        detect_options: dict | None = None,
        device: str = "auto",
        root: str | None = None,
        trust: bool = False,
        engine: str = "auto",
    ) -> None:
        self.device = torch.device(resolve_device(device))
        model, meta = load_model(checkpoint_path, trust)
        self.model = model.to(self.device).eval()
        self.meta = meta
        self.settings = inference_settings.resolve(meta, detector, detect_weights, device, detect_options)
        self.detect = DetectStage(self.settings.detect, root=root) if self.uses_detector else None
        self.engine = engines.choose_engine(engine, self.device)
        self._onnx: tuple | None = None
        if self.model.feat_dim != 512 and type(self).schema is SCHEMA:  # a table of its width
            self.schema = features_schema(self.model.feat_dim)

    def _inputs(self, array: np.ndarray) -> torch.Tensor:
        s = self.settings
        return normalize(torch.from_numpy(array).to(self.device), s.mean, s.std)

    def _streams(self) -> tuple:
        """(body, face) stream functions on onnxruntime, built on first use (exports take seconds)."""
        if self._onnx is None:
            s = self.settings
            self._onnx = (
                engines.onnx_stream(self.model.nocloth_net, True, tuple(s.body_size)),
                engines.onnx_stream(self.model.lr_face_net, False, (s.face_size, s.face_size)),
            )
        return self._onnx

    def _flip_sum(self, stream, x: torch.Tensor) -> torch.Tensor:
        """stream(x) (+ stream of the mirror image): one forward of the batch and its flip stacked."""
        if not self.settings.flip:
            return stream(x)
        both = stream(torch.cat([x, x.flip(3)]))
        return both[: len(x)] + both[len(x) :]

    @torch.no_grad()
    def features(self, body: np.ndarray, face: np.ndarray, has_face: np.ndarray) -> dict[str, np.ndarray]:
        """retrieval_features of uint8 RGB body [B,H,W,3] and face [B,F,F,3] at the checkpoint's sizes."""
        if self.engine == "onnxruntime":  # retrieval_features' rule, the streams on onnxruntime
            body_stream, face_stream = self._streams()
            body_feat = F.normalize(self._flip_sum(body_stream, self._inputs(body)), dim=2)
            face_feat = torch.zeros_like(body_feat)
            rows = torch.from_numpy(np.asarray(has_face, bool))
            if bool(rows.any()):
                face_feat[rows] = F.normalize(self._flip_sum(face_stream, self._inputs(face)[rows]), dim=2)
            return {"body": body_feat.numpy(), "face": face_feat.numpy()}
        feats = retrieval_features(
            self.model,
            self._inputs(body),
            self._inputs(face),
            torch.from_numpy(has_face),
            flip=self.settings.flip,
        )
        return {k: feats[k].float().cpu().numpy() for k in ("body", "face")}

    def crops(self, image_bgr: np.ndarray, face_png) -> tuple[np.ndarray, np.ndarray | None]:
        """(body, face) at the checkpoint's sizes: the image and the detect stage's aligned crop,
        resized as `deskpro pack` resizes them (face None without one)."""
        s = self.settings
        body = resize_as_packed(np.ascontiguousarray(image_bgr[:, :, ::-1]), s.body_size)
        face = None
        if face_png is not None:
            face = resize_as_packed(images.decode_png(bytes(face_png)), (s.face_size, s.face_size))
        return body, face

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        detected = self.detect(batch)
        errors = list(detected["error"])
        ok = [i for i, e in enumerate(errors) if e is None]
        n, width = len(errors), self.schema.field("body").type.list_size
        body = np.full((n, width), np.nan, np.float32)
        face = np.full((n, width), np.nan, np.float32)
        has_face = np.asarray(detected["has_face"], bool).copy()
        if ok:
            pairs = [self.crops(batch["image"][i], detected["face_lr_png"][i]) for i in ok]
            fs = self.settings.face_size
            faces = np.stack([f if f is not None else np.zeros((fs, fs, 3), np.uint8) for _, f in pairs])
            out = self.features(np.stack([b for b, _ in pairs]), faces, has_face[ok])
            body[ok], face[ok] = out["body"].reshape(len(ok), -1), out["face"].reshape(len(ok), -1)
        has_face[[i for i, e in enumerate(errors) if e is not None]] = False
        return {
            "sample_id": detected["sample_id"],
            "path": np.asarray([str(p) for p in batch["path"]], dtype=object),
            "body": body,
            "face": face,
            "has_face": has_face,
            "face_score": detected["face_score"],
            "face_box": detected["face_box"],
            "error": np.asarray(errors, dtype=object),
        }


def list_folder(folder: str | os.PathLike) -> list[str]:
    """The image files under `folder`, searched recursively, as sorted paths relative to it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames.sort()
        found += [Path(dirpath, name).relative_to(folder).as_posix() for name in filenames if is_image(name)]
    return sorted(found)


@dataclass
class Features:
    """Features of N images: body / face [N, 7, D] (chunk-normalised; NaN on error rows, face zeros
    without a face), has_face [N], face_box [N, 4] (NaN without a face), face_score [N], and per image
    its sample id, path and error (None when fine)."""

    sample_id: list[str]
    path: list[str]
    body: np.ndarray
    face: np.ndarray
    has_face: np.ndarray
    face_box: np.ndarray
    face_score: np.ndarray
    error: list[str | None]

    def __len__(self) -> int:
        return len(self.sample_id)


class FeatureExtractor:
    """A DeSKPro checkpoint with its face detector: images in, body and face features out.

    >>> ext = FeatureExtractor("checkpoint.pt", detector="retinaface-mobilenet0.25", detect_weights="w.pth")
    >>> out = ext("images/")          # a folder (recursive), image paths, or RGB uint8 arrays
    >>> out.body.shape, out.has_face  # (N, 7, 512) ...

    Options not given are the checkpoint's (its shards' detect stage); `detect_options` overrides
    DetectOptions fields (min_score, upscale, ...). A bad image is an error row, never an exception.
    `engine`: where the networks run (deskpro.inference.engine: "auto" is onnxruntime on the CPU
    when installed; "torch" is eager PyTorch, as `deskpro evaluate`).
    """

    def __init__(
        self,
        checkpoint_path: str | os.PathLike,
        detector: str | None = None,
        detect_weights: str | os.PathLike | None = None,
        *,
        device: str = "auto",
        batch_size: int = 16,
        root: str | os.PathLike | None = None,
        trust: bool = False,
        max_pixels: int | None = images.DEFAULT_MAX_PIXELS,
        engine: str = "auto",
        **detect_options,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.stage = EmbedStage(
            str(checkpoint_path),
            detector=detector,
            detect_weights=None if detect_weights is None else str(detect_weights),
            detect_options=detect_options,
            device=device,
            root=None if root is None else str(root),
            trust=trust,
            engine=engine,
        )
        self.root = None if root is None else Path(root)
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        warning = inference_settings.detector_mismatch(self.stage.settings)
        self.warning = warning  # shown by the command line; kept for callers

    @property
    def settings(self) -> inference_settings.InferenceSettings:
        return self.stage.settings

    def _batch(self, items: list, root: Path | None) -> dict[str, np.ndarray]:
        """A decoded batch: arrays (RGB) as given, paths read with the stages' decoder."""
        ids, paths, decoded, errors = [], [], [], []
        for k, item in enumerate(items):
            if isinstance(item, np.ndarray):
                ids.append(f"array-{k}")
                paths.append("")
                ok = (
                    item.dtype == np.uint8
                    and item.ndim == 3
                    and item.shape[2] == 3
                    and min(item.shape[:2]) > 0
                )
                decoded.append(np.ascontiguousarray(item[:, :, ::-1]) if ok else images.PLACEHOLDER)
                errors.append(
                    None if ok else f"array {k}: expected uint8 HxWx3 RGB, got {item.dtype} {item.shape}"
                )
                continue
            rel = str(item)
            path = root / rel if root is not None else Path(rel)
            ids.append(rel)
            paths.append(rel)
            try:
                decoded.append(images.read_image_bgr(path, self.max_pixels))
                errors.append(None)
            except images.ImageDecodeError as exc:
                decoded.append(images.PLACEHOLDER)
                errors.append(str(exc))
        return {
            "sample_id": np.asarray(ids, dtype=object),
            "path": np.asarray(paths, dtype=object),
            "image": np.asarray(decoded + [None], dtype=object)[:-1],
            "error": np.asarray(errors, dtype=object),
        }

    def __call__(self, inputs) -> Features:
        """Features of a folder (searched recursively), one path, or a list of paths / RGB arrays."""
        root = self.root
        if isinstance(inputs, (str, os.PathLike)) and Path(inputs).is_dir():
            root, items = Path(inputs), list_folder(inputs)
        elif isinstance(inputs, (str, os.PathLike, np.ndarray)):
            items: list = [inputs]
        else:
            items = list(inputs)
        columns: dict[str, list] = {}
        for start in range(0, len(items), self.batch_size):
            out = self.stage(self._batch(items[start : start + self.batch_size], root))
            for key, value in out.items():
                columns.setdefault(key, []).append(value)
        width = self.stage.schema.field("body").type.list_size
        cat = {k: np.concatenate(v) for k, v in columns.items()} if columns else {}

        def emb(key):
            return cat[key].reshape(len(items), 7, -1) if cat else np.zeros((0, 7, width // 7), np.float32)

        return Features(
            sample_id=list(cat.get("sample_id", [])),
            path=list(cat.get("path", [])),
            body=emb("body"),
            face=emb("face"),
            has_face=cat.get("has_face", np.zeros(0, bool)),
            face_box=cat.get("face_box", np.zeros((0, 4), np.float32)),
            face_score=cat.get("face_score", np.zeros(0, np.float32)),
            error=list(cat.get("error", [])),
        )
