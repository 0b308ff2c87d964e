"""Pack: join a work directory's manifest and stage outputs, by sample id, into training shards.

Input (written by the stage runner): ``WORK/manifest.parquet`` and ``WORK/stages/<stage>/part-*.parquet``
plus ``stage.json`` for parse, detect and (optional) restore. Output: a shard directory (see
``deskpro.pipeline.shards``) with the body image and parse map at the training size and both faces at
the face size, rows in manifest order.

Rules: a sample whose parse or detect row carries an ``error`` (a bad image) is skipped and counted; a
manifest sample missing from a stage's outputs is an error naming the stage (it did not finish);
without a restore stage the restored face is the low-resolution face (``meta.face_hr_source``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from deskpro.manifests import SCHEMA as MANIFEST_SCHEMA
from deskpro.manifests import manifest_info, read_manifest
from deskpro.pipeline.plan import stage_dir
from deskpro.pipeline.shards import DEFAULT_PARSE_COMPRESSION, MANIFEST_NAME, ShardError, ShardWriter

# Columns each stage must provide (the shared stage-output interface).
STAGE_COLUMNS = {
    "parse": ("sample_id", "parse_png", "label_set", "error"),
    "detect": ("sample_id", "has_face", "face_lr_png", "error"),
    "restore": ("sample_id", "face_hr_jpg", "error"),
}
REQUIRED_STAGES = ("parse", "detect")
EXAMPLES_SHOWN = 3


class PackError(ValueError):
    """The work directory cannot be packed (missing or unfinished stage, inconsistent outputs)."""


@dataclass
class PackSummary:
    """What pack wrote and what it left out."""

    out_dir: Path
    rows: int
    shards: int
    with_face: int
    bytes: int
    face_hr_source: str  # "restore" or "face_lr" (no restore stage)
    skipped: dict[str, int] = field(default_factory=dict)  # stage (or "image") -> samples left out
    faces_dropped: int = 0  # detect found a face but restore failed on it: packed without a face

    def format(self) -> str:
        skipped = ", ".join(f"{stage} {n}" for stage, n in self.skipped.items() if n) or "none"
        return (
            f"{self.out_dir}: {self.rows} samples ({self.with_face} with a face) in {self.shards} shards, "
            f"{self.bytes / 2**20:.1f} MiB; skipped for errors: {skipped}; "
            f"faces dropped by restore errors: {self.faces_dropped}; face_hr from {self.face_hr_source}"
        )


@dataclass
class _Stage:
    """One stage's outputs: a table with its columns and the row of each sample id."""

    name: str
    table: pa.Table
    rows: dict[str, int]
    fingerprint: dict | None

    def value(self, column: str, sample_id: str):
        return self.table.column(column)[self.rows[sample_id]].as_py()


def _load_stage(work_dir: Path, name: str) -> _Stage | None:
    """The stage's part files joined; None when the stage folder does not exist."""
    folder = stage_dir(work_dir, name)
    if not folder.is_dir():
        return None
    parts = sorted(folder.glob("part-*.parquet"))
    if not parts:
        raise PackError(f"{folder}: no part-*.parquet files; the {name} stage has not written any output")
    tables = []
    for part in parts:
        try:
            schema_names = pq.read_schema(part).names
            missing = [c for c in STAGE_COLUMNS[name] if c not in schema_names]
            if missing:
                raise PackError(f"{part}: missing column(s) {', '.join(missing)} of the {name} stage")
            tables.append(pq.read_table(part, columns=list(STAGE_COLUMNS[name])))
        except (OSError, pa.ArrowException) as e:
            raise PackError(f"{part}: unreadable Parquet ({e})") from None
    table = pa.concat_tables(tables)
    ids = table.column("sample_id").to_pylist()
    rows = {sid: i for i, sid in enumerate(ids)}
    if len(rows) != len(ids):
        raise PackError(
            f"{folder}: {len(ids) - len(rows)} sample ids appear in more than one row of the {name} stage"
        )
    return _Stage(name, table, rows, _read_fingerprint(folder / "stage.json"))


def _read_fingerprint(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise PackError(f"{path}: unreadable JSON ({e})") from None


def _check_complete(stage: _Stage, sample_ids: list[str]) -> None:
    missing = [sid for sid in sample_ids if sid not in stage.rows]
    if missing:
        examples = ", ".join(missing[:EXAMPLES_SHOWN])
        raise PackError(
            f"stage {stage.name!r} has no output for {len(missing)} of {len(sample_ids)} samples"
            f" (e.g. {examples}); the stage did not finish: run it again to complete it"
        )


def _label_set(parse: _Stage) -> str | None:
    ok = pc.is_null(parse.table.column("error"))
    values = set(parse.table.filter(ok).column("label_set").to_pylist()) - {None}
    if len(values) > 1:
        raise PackError(
            f"stage 'parse' mixes label sets {sorted(values)}; parse the whole manifest with one parser"
        )
    return values.pop() if values else None


# ---------------------------------------------------------------- per-sample image work


def _resize(image: np.ndarray, hw: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """To (H, W): nearest for label maps; area when shrinking (no aliasing), linear when enlarging."""
    h, w = hw
    if image.shape[:2] == (h, w):
        return np.ascontiguousarray(image)
    if nearest:
        interpolation = cv2.INTER_NEAREST_EXACT
    else:
        interpolation = cv2.INTER_AREA if h * w < image.shape[0] * image.shape[1] else cv2.INTER_LINEAR
    return cv2.resize(image, (w, h), interpolation=interpolation)


def _decode(data: bytes, flags: int, what: str) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None:
        raise PackError(f"{what}: cannot decode the stored image bytes")
    return image


def _read_rgb(path: Path) -> np.ndarray | None:
    """The image at path as RGB, or None when it cannot be read."""
    try:
        data = np.fromfile(path, np.uint8)
    except OSError:
        return None
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _face(data: bytes, size: int, what: str) -> np.ndarray:
    # Stage files hold true RGB (standard PNG/JPEG); OpenCV decodes to BGR.
    rgb = cv2.cvtColor(_decode(data, cv2.IMREAD_COLOR, what), cv2.COLOR_BGR2RGB)
    return _resize(rgb, (size, size))


def _parse_map(
    data: bytes, image_hw: tuple[int, int], body_size: tuple[int, int], sample_id: str
) -> np.ndarray:
    label_map = _decode(data, cv2.IMREAD_UNCHANGED, f"parse_png of {sample_id}")
    if label_map.ndim != 2 or label_map.dtype != np.uint8:
        raise PackError(
            f"parse_png of {sample_id}: expected a uint8 label map, got {label_map.dtype} {label_map.shape}"
        )
    if label_map.shape != image_hw:
        raise PackError(
            f"parse_png of {sample_id}: label map is {label_map.shape[0]}x{label_map.shape[1]} but the image"
            f" is {image_hw[0]}x{image_hw[1]}; the work directory does not match the dataset root"
        )
    return _resize(label_map, body_size, nearest=True)


# ---------------------------------------------------------------- pack


def pack(
    work_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    body_size: tuple[int, int] = (384, 128),
    face_size: int = 224,
    codec: str = "raw",
    quality: int = 95,
    shard_size: int = 1024,
    parse_compression: str = DEFAULT_PARSE_COMPRESSION,
    overwrite: bool = False,
    progress: bool = True,
) -> PackSummary:
    """Join WORK's manifest and stage outputs into shards in out_dir; see the module docstring."""
    work_dir, out_dir = Path(work_dir), Path(out_dir)
    if (out_dir / MANIFEST_NAME).exists() and not overwrite:
        raise ShardError(
            f"{out_dir}: already holds complete shards ({MANIFEST_NAME}); pass --overwrite to replace"
        )
    manifest = read_manifest(work_dir / "manifest.parquet")
    info = manifest_info(manifest)
    root = Path(info["root"])
    sample_ids = manifest.column("sample_id").to_pylist()
    stages = {name: _load_stage(work_dir, name) for name in STAGE_COLUMNS}
    for name in REQUIRED_STAGES:
        if stages[name] is None:
            raise PackError(f"{stage_dir(work_dir, name)}: missing; run the {name} stage before packing")
    for stage in stages.values():
        if stage is not None:
            _check_complete(stage, sample_ids)
    meta = {
        "dataset": info["dataset"],
        "root": info["root"],
        "scan_time": info["scan_time"],
        "label_set": _label_set(stages["parse"]),
        "stages": {name: (s.fingerprint if s is not None else None) for name, s in stages.items()},
        "face_hr_source": "restore" if stages["restore"] is not None else "face_lr",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    body_size = (int(body_size[0]), int(body_size[1]))
    skipped = {"parse": 0, "detect": 0, "image": 0}
    faces_dropped = 0
    rows = manifest.select(MANIFEST_SCHEMA.names).to_pylist()
    with ShardWriter(
        out_dir,
        body_size=body_size,
        face_size=face_size,
        codec=codec,
        quality=quality,
        shard_size=shard_size,
        meta=meta,
        parse_compression=parse_compression,
        overwrite=overwrite,
    ) as writer:
        for row in tqdm(rows, desc="pack", unit="img", disable=not progress):
            sid = row["sample_id"]
            failed = next(
                (name for name in REQUIRED_STAGES if stages[name].value("error", sid) is not None), None
            )
            if failed is not None:
                skipped[failed] += 1
                continue
            image = _read_rgb(root / row["path"])
            if image is None:
                skipped["image"] += 1
                continue
            parse = _parse_map(stages["parse"].value("parse_png", sid), image.shape[:2], body_size, sid)
            face_lr, face_hr, dropped = _faces(stages, sid, face_size)
            faces_dropped += dropped
            writer.add(
                sample_id=sid,
                pid=row["pid"],
                camid=row["camid"],
                clothes_id=row["clothes_id"],
                split=row["split"],
                subset=row["subset"],
                body=_resize(image, body_size),
                parse=parse,
                face_lr=face_lr,
                face_hr=face_hr,
            )
        if len(writer) == 0:
            raise PackError(f"{work_dir}: every sample was skipped for errors ({skipped}); nothing to pack")
        writer.meta["skipped"] = dict(skipped)
        writer.meta["faces_dropped"] = faces_dropped
    totals = json.loads((out_dir / MANIFEST_NAME).read_text())["totals"]
    return PackSummary(
        out_dir=out_dir,
        rows=totals["rows"],
        shards=totals["shards"],
        with_face=totals["with_face"],
        bytes=totals["bytes"],
        face_hr_source=meta["face_hr_source"],
        skipped=skipped,
        faces_dropped=faces_dropped,
    )


def _faces(
    stages: dict[str, _Stage | None], sid: str, size: int
) -> tuple[np.ndarray | None, np.ndarray | None, int]:
    """(face_lr, face_hr, 1 if restore failed on a detected face else 0); (None, None, _) without a face."""
    detect, restore = stages["detect"], stages["restore"]
    lr_png = detect.value("face_lr_png", sid)
    if not detect.value("has_face", sid) or lr_png is None:
        return None, None, 0
    face_lr = _face(lr_png, size, f"face_lr_png of {sid}")
    if restore is None:
        return face_lr, face_lr, 0
    hr_jpg = restore.value("face_hr_jpg", sid)
    if restore.value("error", sid) is not None or hr_jpg is None:
        return None, None, 1
    return face_lr, _face(hr_jpg, size, f"face_hr_jpg of {sid}"), 0
