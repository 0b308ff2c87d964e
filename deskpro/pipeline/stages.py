"""The three preprocessing stages as batch-inference callables: parse, detect, restore.

Each class follows Ray Data's batch-inference pattern and runs just as well without Ray:
`__init__` builds the backend's model once (deskpro.pipeline.backends), `__call__(batch)` maps one
batch (a dict of numpy arrays) to the stage's output columns. Rows that arrive with an `error` (an
undecodable image, a failed upstream stage) pass through with that error and null outputs.
`batch_to_table` turns an output batch into the stage's Arrow schema, the format of
`WORK/stages/<stage>/part-*.parquet`. What a stage computes is its options dataclass
(deskpro.pipeline.options): a constructor takes one, or its fields as keywords.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import cv2
import numpy as np
import pyarrow as pa

from deskpro.common import images
from deskpro.common.torch_utils import resolve_device
from deskpro.pipeline import backends
from deskpro.pipeline.detection import FacePolicy, choose_face
from deskpro.pipeline.faces import align_face
from deskpro.pipeline.options import (
    STAGE_NAMES,
    DetectOptions,
    ParseOptions,
    RestoreOptions,
    StageConfigError,
    make_options,
)

__all__ = ["STAGE_NAMES", "StageConfigError", "NO_NET_BACKENDS", "ParseStage", "DetectStage", "RestoreStage"]
NO_NET_BACKENDS = backends.NO_NET_BACKENDS  # what Ray gives no GPU


def _field(name: str, type_: pa.DataType, description: str) -> pa.Field:
    """A stage-part column with its meaning as Parquet field metadata (docs/formats.md)."""
    return pa.field(name, type_, metadata={"description": description})


_ERROR = "null, or why this image failed (the other outputs are then null)"
PARSE_SCHEMA = pa.schema(
    [
        _field("sample_id", pa.string(), "sample id, as in the manifest"),
        _field(
            "parse_png", pa.binary(), "label map PNG, uint8 HxW at the original image size, one label a pixel"
        ),
        _field("label_set", pa.string(), "label names: lip, atr or pascal (docs/formats.md)"),
        _field("error", pa.string(), _ERROR),
    ],
    metadata={"description": "deskpro parse stage part: one row per manifest sample; see docs/formats.md"},
)
DETECT_SCHEMA = pa.schema(
    [
        _field("sample_id", pa.string(), "sample id, as in the manifest"),
        _field("has_face", pa.bool_(), "a face passed the face policy"),
        _field("face_score", pa.float32(), "detector confidence in [0, 1]; null without a face"),
        _field(
            "face_box", pa.list_(pa.float32(), 4), "x1, y1, x2, y2 in original-image pixels, x right, y down"
        ),
        _field(
            "landmarks",
            pa.list_(pa.float32(), 10),
            "x, y of left eye, right eye, nose, left and right mouth corner, original-image pixels",
        ),
        _field("face_lr_png", pa.binary(), "aligned low-res face crop, RGB PNG, face_lr_size square"),
        _field("error", pa.string(), _ERROR),
    ],
    metadata={"description": "deskpro detect stage part: one row per manifest sample; see docs/formats.md"},
)
RESTORE_SCHEMA = pa.schema(
    [
        _field("sample_id", pa.string(), "sample id, as in the manifest"),
        _field(
            "face_hr_jpg", pa.binary(), "restored face, RGB JPEG, face_hr_size square; null without a face"
        ),
        _field("error", pa.string(), _ERROR),
    ],
    metadata={"description": "deskpro restore stage part: one row per manifest sample; see docs/formats.md"},
)


def _rows(batch: dict[str, Any]) -> tuple[list[str], list[str | None]]:
    """The batch's sample ids and incoming errors (None where the row is fine)."""
    ids = [str(s) for s in batch["sample_id"]]
    errors = list(batch["error"]) if "error" in batch else [None] * len(ids)
    # Ray may turn an all-None column into float NaN: anything that is not a string means "no error".
    return ids, [e if isinstance(e, str) else None for e in errors]


def _object_array(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


class _Stage:
    """Options in, the backend's model built once. `root`: the manifest's image root (oracles read it)."""

    name: str
    options_class: type

    def __init__(self, options=None, /, *, root: str | None = None, nets: Any = None, **values) -> None:
        if options is None:
            options = make_options(self.name, values)
        elif values:
            options = dataclasses.replace(options, **values)
        if not isinstance(options, self.options_class):
            raise TypeError(
                f"{self.name}: expected {self.options_class.__name__}, got {type(options).__name__}"
            )
        self.backend = backends.get(self.name, options.backend)
        self.options = self.backend.resolve(options)
        device = "cpu" if not self.backend.needs_gpu else resolve_device(self.options.device)
        self.model = backends.build_model(self.backend, self.options, device, root, nets)


class ParseStage(_Stage):
    """Human parsing: each image -> a uint8 label map at the image's own size, stored as PNG bytes.

    Input columns: sample_id, path, image (BGR), error. Output: sample_id, parse_png, label_set, error.
    """

    name = "parse"
    options_class = ParseOptions
    schema = PARSE_SCHEMA
    needs_images = True

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids, errors = _rows(batch)
        paths = [str(p) for p in batch["path"]]
        ok = [i for i, e in enumerate(errors) if e is None]
        maps = self.model([paths[i] for i in ok], [batch["image"][i] for i in ok])
        pngs: list[bytes | None] = [None] * len(ids)
        for i, label_map in zip(ok, maps):
            image_hw = tuple(batch["image"][i].shape[:2])
            if isinstance(label_map, str):
                errors[i] = label_map
            elif label_map.shape != image_hw:
                errors[i] = f"{paths[i]}: label map of shape {label_map.shape} for an image of {image_hw}"
            else:
                pngs[i] = images.encode_png(np.ascontiguousarray(label_map, np.uint8))
        label_set = self.options.labels
        return {
            "sample_id": _object_array(ids),
            "parse_png": _object_array(pngs),
            "label_set": _object_array([None if p is None else label_set for p in pngs]),
            "error": _object_array(errors),
        }


def upscaled(model, factor: float):
    """`model` (the detect contract) run on images enlarged by `factor` (bicubic), results in original
    pixels. One implementation for every detector backend: `--upscale` means the same for all."""
    if factor == 1.0:
        return model

    def detect(paths: list[str], images_bgr: list[np.ndarray]) -> list:
        big = [cv2.resize(im, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC) for im in images_bgr]
        out = []
        for image, large, faces in zip(images_bgr, big, model(paths, big)):
            if isinstance(faces, str):
                out.append(faces)
                continue
            # The true per-axis ratio: cv2 rounds the enlarged size to whole pixels.
            sx, sy = large.shape[1] / image.shape[1], large.shape[0] / image.shape[0]
            out.append(
                [
                    dataclasses.replace(
                        f,
                        box=np.asarray(f.box, np.float32) / np.array([sx, sy, sx, sy], np.float32),
                        landmarks=np.asarray(f.landmarks, np.float32) / np.array([sx, sy], np.float32),
                    )
                    for f in faces
                ]
            )
        return out

    return detect


class DetectStage(_Stage):
    """Face detection: the person's face (FacePolicy), its 5 landmarks and an aligned low-res crop.

    `upscale` enlarges images before detection (re-id faces are tiny); coordinates are always in the
    original image. The crop is `faces.align_face(image_rgb, landmarks, face_lr_size)`, stored as RGB
    PNG. Input: sample_id, path, image (BGR), error. Output: DETECT_SCHEMA's columns.
    """

    name = "detect"
    options_class = DetectOptions
    schema = DETECT_SCHEMA
    needs_images = True

    def __init__(self, options=None, /, **kw) -> None:
        super().__init__(options, **kw)
        o = self.options
        self.policy = FacePolicy(min_score=o.min_score, min_size=o.min_size, max_center_y=o.max_center_y)
        self.detect = upscaled(self.model, float(o.upscale))

    def _crop(self, image_bgr: np.ndarray, landmarks: np.ndarray) -> bytes:
        rgb = np.ascontiguousarray(image_bgr[:, :, ::-1])
        crop, _ = align_face(rgb, landmarks, self.options.face_lr_size)
        return images.encode_png(crop)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids, errors = _rows(batch)
        paths = [str(p) for p in batch["path"]]
        n = len(ids)
        has_face = np.zeros(n, bool)
        score = np.full(n, np.nan, np.float32)
        box = np.full((n, 4), np.nan, np.float32)
        landmarks = np.full((n, 10), np.nan, np.float32)
        crops: list[bytes | None] = [None] * n
        ok = [i for i, e in enumerate(errors) if e is None]
        detections = self.detect([paths[i] for i in ok], [batch["image"][i] for i in ok]) if ok else []
        for i, faces in zip(ok, detections):
            if isinstance(faces, str):
                errors[i] = faces
                continue
            image = batch["image"][i]
            face = choose_face(faces, tuple(image.shape[:2]), self.policy)
            if face is None:
                continue
            points = np.asarray(face.landmarks, np.float32)
            try:
                crops[i] = self._crop(image, points.reshape(5, 2))
            except ValueError as exc:  # degenerate landmarks: no similarity transform
                errors[i] = f"{paths[i]}: cannot align face ({exc})"
                continue
            has_face[i], score[i] = True, face.score
            box[i], landmarks[i] = np.asarray(face.box, np.float32), points.ravel()
        return {
            "sample_id": _object_array(ids),
            "has_face": has_face,
            "face_score": score,
            "face_box": box,
            "landmarks": landmarks,
            "face_lr_png": _object_array(crops),
            "error": _object_array(errors),
        }


class RestoreStage(_Stage):
    """Face restoration of the detect stage's aligned low-res crops -> RGB JPEG at face_hr_size.

    Backend "none" is bicubic upsampling of the low-res crop (ablations, the demo); "oracle" is the
    synthetic generator's clean high-resolution render, aligned with the detected landmarks. Reads
    detect outputs, never the images. Input: sample_id, has_face, face_lr_png, landmarks (for the
    backends that take them), error. Output: sample_id, face_hr_jpg (null without a face), error.
    """

    name = "restore"
    options_class = RestoreOptions
    schema = RESTORE_SCHEMA
    needs_images = False
    input_columns = ("sample_id", "has_face", "face_lr_png", "landmarks", "error")

    def _resize(self, face: np.ndarray) -> np.ndarray:
        size = self.options.face_hr_size
        if face.shape[0] == size:
            return face
        interp = cv2.INTER_AREA if face.shape[0] > size else cv2.INTER_CUBIC
        return cv2.resize(face, (size, size), interpolation=interp)

    def _restore(self, faces: np.ndarray, ids: list[str], landmarks: list) -> list[np.ndarray | str]:
        """Per face the restored face at face_hr_size, or an error string (backends that take landmarks)."""
        if self.model is None or len(faces) == 0:
            return [self._resize(f) for f in faces]
        if self.backend.takes_landmarks:
            points = np.stack([np.asarray(p, np.float32).reshape(5, 2) for p in landmarks])
            restored = self.model(faces, ids, points)
        else:
            restored = self.model(faces)
        return [f if isinstance(f, str) else self._resize(f) for f in restored]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids, errors = _rows(batch)
        pngs = batch["face_lr_png"]
        todo, faces = [], []
        for i, (err, png) in enumerate(zip(errors, pngs)):
            if err is None and bool(batch["has_face"][i]) and png is not None:
                try:
                    faces.append(images.decode_png(bytes(png)))
                    todo.append(i)
                except images.ImageDecodeError:
                    errors[i] = f"{ids[i]}: cannot decode the detect stage's face_lr_png"
        sizes = {f.shape for f in faces}
        if len(sizes) > 1:
            raise ValueError(f"restore: low-res faces of different shapes in one batch: {sorted(sizes)}")
        jpgs: list[bytes | None] = [None] * len(ids)
        stacked = np.stack(faces) if faces else np.zeros((0, 1, 1, 3), np.uint8)
        landmarks = [batch["landmarks"][i] for i in todo] if self.backend.takes_landmarks else []
        for i, face in zip(todo, self._restore(stacked, [ids[i] for i in todo], landmarks)):
            if isinstance(face, str):
                errors[i] = face
            else:
                jpgs[i] = images.encode_jpeg(face, self.options.face_quality)
        return {
            "sample_id": _object_array(ids),
            "face_hr_jpg": _object_array(jpgs),
            "error": _object_array(errors),
        }


STAGE_CLASSES: dict[str, type] = {"parse": ParseStage, "detect": DetectStage, "restore": RestoreStage}


def _column(values: Any, typ: pa.DataType, n: int) -> pa.Array:
    """One output column as an Arrow array of `typ`; NaN rows of numeric columns become nulls."""
    if pa.types.is_fixed_size_list(typ):
        arr = np.asarray(values, np.float32).reshape(n, typ.list_size)
        valid = ~np.isnan(arr).any(axis=1)
        return pa.array([row.tolist() if v else None for row, v in zip(arr, valid)], type=typ)
    if pa.types.is_floating(typ):
        arr = np.asarray(values, np.float32).reshape(n)
        return pa.array(arr, type=typ, mask=np.isnan(arr))
    if pa.types.is_boolean(typ):
        return pa.array(np.asarray(values, bool).reshape(n), type=typ)
    if pa.types.is_binary(typ):
        return pa.array(
            [bytes(v) if isinstance(v, (bytes, bytearray, memoryview)) else None for v in values], typ
        )
    return pa.array([v if isinstance(v, str) else None for v in values], type=typ)


def batch_to_table(batch: dict[str, Any], schema: pa.Schema) -> pa.Table:
    """A stage's output batch as an Arrow table with exactly `schema` (the part-file format)."""
    n = len(batch["sample_id"])
    missing = [f.name for f in schema if f.name not in batch]
    if missing:
        raise ValueError(f"stage output lacks columns {missing}")
    return pa.Table.from_arrays([_column(batch[f.name], f.type, n) for f in schema], schema=schema)


def table_to_batch(table: pa.Table) -> dict[str, np.ndarray]:
    """An Arrow table as a dict of numpy arrays (object arrays for strings and bytes), as Ray passes it."""
    out = {}
    for name in table.column_names:
        col = table.column(name)
        out[name] = (
            np.asarray(col.to_pylist(), dtype=object)
            if not pa.types.is_boolean(col.type)
            else col.to_numpy(zero_copy_only=False)
        )
    return out
