"""The three preprocessing stages as batch-inference callables: parse, detect, restore.

Each class follows Ray Data's batch-inference pattern and runs just as well without Ray:
`__init__` loads the model once, `__call__(batch)` maps one batch (a dict of numpy arrays) to the
stage's output columns. Rows that arrive with an `error` (an undecodable image, a failed upstream
stage) pass through with that error and null outputs. `batch_to_table` turns an output batch into
the stage's Arrow schema, the format of `WORK/stages/<stage>/part-*.parquet`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa

from deskpro.common import images
from deskpro.pipeline import detection, parsing, restoration

STAGE_NAMES = ("parse", "detect", "restore")


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

PARSE_BACKENDS = ("schp", "smp:ARCH:ENCODER", "oracle")
DETECT_BACKENDS = ("retinaface-resnet50", "retinaface-mobilenet0.25", "face-alignment", "oracle")
RESTORE_BACKENDS = ("gpen-512", "gpen-256", "none")
# Backends without a network: no weights file, no GPU.
NO_NET_BACKENDS = ("oracle", "none")


class StageConfigError(ValueError):
    """Stage options that cannot work (unknown backend, missing weights file); one line, names the flag."""


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu' (imports torch only when a net is built)."""
    from deskpro.common.torch_utils import resolve_device as resolve

    return resolve(device)


def require_weights(path: str | Path | None, flag: str = "--weights", backend: str = "") -> Path:
    """The weights path if it is a file; otherwise a one-line StageConfigError naming the flag."""
    for_backend = f" (backend {backend})" if backend else ""
    if path is None:
        raise StageConfigError(
            f"{flag} is required{for_backend}; `deskpro weights list` says where each checkpoint comes from"
        )
    if not Path(path).is_file():
        raise StageConfigError(
            f"{flag} {path}: file not found{for_backend}; `deskpro weights list` says where each "
            "checkpoint comes from"
        )
    return Path(path)


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


class ParseStage:
    """Human parsing: each image -> a uint8 label map at the image's own size, stored as PNG bytes.

    Backends: "schp" (official SCHP weights, `labels` lip/atr/pascal, optional flip test and input
    size), "smp:ARCH:ENCODER" (a segmentation_models_pytorch parser with `num_classes`), "oracle"
    (the synthetic dataset's ground truth under `root`). Input columns: sample_id, path, image (BGR),
    error. Output: sample_id, parse_png, label_set, error.
    """

    name = "parse"
    schema = PARSE_SCHEMA
    needs_images = True

    def __init__(
        self,
        *,
        backend: str = "schp",
        weights: str | None = None,
        labels: str = "lip",
        flip: bool = False,
        input_size: int | None = None,
        num_classes: int | None = None,
        root: str | None = None,
        device: str = "auto",
        amp: str | None = None,
        channels_last: bool = False,
    ) -> None:
        self.backend = backend
        self.label_set = labels
        self._oracle = None
        self._parser = None
        if backend == "oracle":
            from deskpro.synthetic.oracle import OracleParser

            if labels != OracleParser.label_set:
                raise StageConfigError(
                    f"--labels {labels}: the oracle parser gives LIP labels; use --labels lip"
                )
            self._oracle = OracleParser(root)
            return
        from deskpro.pipeline.nets import schp

        device = resolve_device(device)
        if backend == "schp":
            net = schp.load(require_weights(weights, backend=backend), labels=labels)
        elif backend.startswith("smp:"):
            from deskpro.pipeline.nets import smp_parser

            classes = num_classes or len(schp.LABELS[labels])
            net = smp_parser.load(backend, require_weights(weights, backend=backend), classes)
        else:
            raise StageConfigError(
                f"--backend {backend}: unknown parser; choose from {', '.join(PARSE_BACKENDS)}"
            )
        self._parser = parsing.Parser(
            net,
            labels=labels,
            input_size=input_size,
            flip=flip,
            device=device,
            amp=amp,
            channels_last=channels_last,
        )

    def _predict(self, paths: list[str], images: list[np.ndarray]) -> list[np.ndarray | str]:
        """A label map per image, or an error string for an image the backend cannot serve."""
        if self._parser is not None:
            return list(self._parser(images)) if images else []
        out: list[np.ndarray | str] = []
        for path in paths:
            try:
                out.append(self._oracle.one(path))
            except (OSError, KeyError, ValueError) as exc:
                out.append(f"{path}: no ground-truth parse ({exc})")
        return out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids, errors = _rows(batch)
        paths = [str(p) for p in batch["path"]]
        ok = [i for i, e in enumerate(errors) if e is None]
        maps = self._predict([paths[i] for i in ok], [batch["image"][i] for i in ok])
        pngs: list[bytes | None] = [None] * len(ids)
        for i, label_map in zip(ok, maps):
            image_hw = tuple(batch["image"][i].shape[:2])
            if isinstance(label_map, str):
                errors[i] = label_map
            elif label_map.shape != image_hw:
                errors[i] = f"{paths[i]}: label map of shape {label_map.shape} for an image of {image_hw}"
            else:
                pngs[i] = images.encode_png(np.ascontiguousarray(label_map, np.uint8))
        return {
            "sample_id": _object_array(ids),
            "parse_png": _object_array(pngs),
            "label_set": _object_array([None if p is None else self.label_set for p in pngs]),
            "error": _object_array(errors),
        }


class DetectStage:
    """Face detection: the person's face (FacePolicy), its 5 landmarks and an aligned low-res crop.

    Backends: "retinaface-resnet50", "retinaface-mobilenet0.25" (official weights), "face-alignment"
    (S3FD `weights` + FAN `landmarks_weights`), "oracle" (the synthetic ground truth under `root`).
    `upscale` enlarges images before detection (re-id faces are tiny); coordinates are always in the
    original image. The crop is `faces.align_face(image_rgb, landmarks, face_lr_size)`, stored as RGB
    PNG. Input: sample_id, path, image (BGR), error. Output: DETECT_SCHEMA's columns.
    """

    name = "detect"
    schema = DETECT_SCHEMA
    needs_images = True

    def __init__(
        self,
        *,
        backend: str = "retinaface-resnet50",
        weights: str | None = None,
        landmarks_weights: str | None = None,
        root: str | None = None,
        conf_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        min_score: float = 0.8,
        min_size: float = 8.0,
        max_center_y: float = 0.5,
        upscale: float = 1.0,
        face_lr_size: int = 128,
        device: str = "auto",
        amp: str | None = None,
        channels_last: bool = False,
    ) -> None:
        FacePolicy = detection.FacePolicy

        if upscale <= 0:
            raise StageConfigError(f"--upscale {upscale}: must be > 0")
        self.backend = backend
        self.policy = FacePolicy(min_score=min_score, min_size=min_size, max_center_y=max_center_y)
        self.upscale = float(upscale)
        self.face_lr_size = int(face_lr_size)
        self._oracle = None
        self._detector = None
        if backend == "oracle":
            from deskpro.synthetic.oracle import OracleFaceDetector

            self._oracle = OracleFaceDetector(root)
            return
        device = resolve_device(device)
        if backend.startswith("retinaface-"):
            from deskpro.pipeline.nets import retinaface

            variant = backend.removeprefix("retinaface-")
            if variant not in ("resnet50", "mobilenet0.25"):
                raise StageConfigError(
                    f"--backend {backend}: unknown; choose from {', '.join(DETECT_BACKENDS)}"
                )
            net = retinaface.load(require_weights(weights, backend=backend), variant=variant)
            self._detector = detection.FaceDetector(
                net,
                conf_threshold=conf_threshold,
                nms_threshold=nms_threshold,
                device=device,
                amp=amp,
                channels_last=channels_last,
                upscale=self.upscale,
            )
        elif backend == "face-alignment":
            from deskpro.pipeline.fa_detection import FaceAlignmentDetector

            self._detector = _Upscaled(
                FaceAlignmentDetector(
                    str(require_weights(weights, backend=backend)),
                    str(require_weights(landmarks_weights, "--landmarks-weights", backend)),
                    device=device,
                ),
                self.upscale,
            )
        else:
            raise StageConfigError(
                f"--backend {backend}: unknown detector; choose from {', '.join(DETECT_BACKENDS)}"
            )

    def _detect(self, paths: list[str], images: list[np.ndarray]) -> list[list | str]:
        """Candidate faces per image (original pixels), or an error string for that image."""
        if self._detector is not None:
            return list(self._detector(images)) if images else []
        out: list[list | str] = []
        for path in paths:
            try:
                out.append(self._oracle.one(path))
            except KeyError as exc:
                out.append(f"{path}: no ground-truth face entry ({exc.args[0]})")
        return out

    def _crop(self, image_bgr: np.ndarray, landmarks: np.ndarray) -> bytes:
        from deskpro.pipeline.faces import align_face

        crop, _ = align_face(np.ascontiguousarray(image_bgr[:, :, ::-1]), landmarks, self.face_lr_size)
        return images.encode_png(crop)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        choose_face = detection.choose_face

        ids, errors = _rows(batch)
        paths = [str(p) for p in batch["path"]]
        n = len(ids)
        has_face = np.zeros(n, bool)
        score = np.full(n, np.nan, np.float32)
        box = np.full((n, 4), np.nan, np.float32)
        landmarks = np.full((n, 10), np.nan, np.float32)
        crops: list[bytes | None] = [None] * n
        ok = [i for i, e in enumerate(errors) if e is None]
        detections = self._detect([paths[i] for i in ok], [batch["image"][i] for i in ok])
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


class _Upscaled:
    """Wraps a detector: images enlarged by `factor` (bicubic) before detection, results scaled back."""

    def __init__(self, detector, factor: float) -> None:
        self.detector, self.factor = detector, factor

    def __call__(self, images: list[np.ndarray]) -> list[list]:
        if self.factor == 1.0:
            return self.detector(images)
        import dataclasses

        big = [
            cv2.resize(im, None, fx=self.factor, fy=self.factor, interpolation=cv2.INTER_CUBIC)
            for im in images
        ]
        return [
            [
                dataclasses.replace(f, box=f.box / self.factor, landmarks=f.landmarks / self.factor)
                for f in faces
            ]
            for faces in self.detector(big)
        ]


class RestoreStage:
    """Face restoration of the detect stage's aligned low-res crops -> RGB JPEG at face_hr_size.

    Backends: "gpen-512", "gpen-256" (official GPEN-BFR weights), "none" (bicubic upsampling of the
    low-res crop: for ablations and the demo). Reads detect outputs, never the images. Input:
    sample_id, has_face, face_lr_png, error. Output: sample_id, face_hr_jpg (null without a face), error.
    """

    name = "restore"
    schema = RESTORE_SCHEMA
    needs_images = False
    input_columns = ("sample_id", "has_face", "face_lr_png", "error")

    def __init__(
        self,
        *,
        backend: str = "gpen-512",
        weights: str | None = None,
        face_hr_size: int = 256,
        quality: int = 95,
        device: str = "auto",
        amp: str | None = None,
        channels_last: bool = False,
    ) -> None:
        self.backend = backend
        self.face_hr_size = int(face_hr_size)
        self.quality = int(quality)
        self._restorer = None
        if backend == "none":
            return
        if backend not in ("gpen-512", "gpen-256"):
            raise StageConfigError(
                f"--backend {backend}: unknown restorer; choose from {', '.join(RESTORE_BACKENDS)}"
            )
        from deskpro.pipeline.nets import gpen

        size = int(backend.removeprefix("gpen-"))
        net = gpen.load(require_weights(weights, backend=backend), size=size)
        self._restorer = restoration.Restorer(
            net, device=resolve_device(device), amp=amp, channels_last=channels_last
        )

    def _resize(self, face: np.ndarray) -> np.ndarray:
        size = self.face_hr_size
        if face.shape[0] == size:
            return face
        interp = cv2.INTER_AREA if face.shape[0] > size else cv2.INTER_CUBIC
        return cv2.resize(face, (size, size), interpolation=interp)

    def _restore(self, faces: np.ndarray) -> list[np.ndarray]:
        if self._restorer is None or len(faces) == 0:
            return [self._resize(f) for f in faces]
        return [self._resize(f) for f in self._restorer(faces)]

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
        for i, face in zip(todo, self._restore(stacked)):
            jpgs[i] = images.encode_jpeg(face, self.quality)
        return {
            "sample_id": _object_array(ids),
            "face_hr_jpg": _object_array(jpgs),
            "error": _object_array(errors),
        }


def check_options(stage: str, options: dict[str, Any], flag_prefix: str = "") -> None:
    """Fail fast, on the driver, for an unknown backend or a missing weights file (one-line error).

    `flag_prefix` names the flags as the command spells them (e.g. "parse-" for preprocess's
    --parse-weights).
    """
    backend = str(options.get("backend", ""))
    known = {"parse": PARSE_BACKENDS, "detect": DETECT_BACKENDS, "restore": RESTORE_BACKENDS}[stage]
    if backend not in known and not (stage == "parse" and backend.startswith("smp:")):
        raise StageConfigError(
            f"--{flag_prefix}backend {backend}: unknown {stage} backend; choose from {', '.join(known)}"
        )
    if backend in NO_NET_BACKENDS:
        return
    require_weights(options.get("weights"), f"--{flag_prefix}weights", backend)
    if backend == "face-alignment":
        require_weights(options.get("landmarks_weights"), "--landmarks-weights", backend)


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
