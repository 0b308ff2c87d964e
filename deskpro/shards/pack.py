"""Pack: join a work directory's manifest and stage outputs, by sample id, into training shards.

Input (written by the stage runner): ``WORK/manifest.parquet`` and ``WORK/stages/<stage>/part-*.parquet``
plus ``stage.json`` for parse, detect and (optional) restore. Output: a shard directory (see
`deskpro.shards.format`), body image and parse map at the training size, both faces at the face
size, rows in manifest order. A stage must be complete and made from this manifest, and restore
from the current detect output (stage.json fingerprints), or pack refuses, naming the stage to
rerun. A sample whose parse or detect row has an ``error`` is skipped and counted; an image that can
no longer be read is skipped, counted and named; a sample missing from a stage is an error naming
the stage. Without a restore stage the restored face is the low-res face (``meta.face_hr_source``);
Memory is flat in the dataset size: only ids, errors and flags are held for the whole dataset;
image bytes are read one part file at a time (``_PARTS_CACHED`` per stage).
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from deskpro.common.images import ImageDecodeError, decode_image_bytes, decode_png, read_image_rgb
from deskpro.common.locks import output_lock
from deskpro.common.stops import StopSignals
from deskpro.manifests import SCHEMA as MANIFEST_SCHEMA
from deskpro.manifests import manifest_info, read_manifest
from deskpro.pipeline.plan import manifest_fingerprint, stage_dir
from deskpro.shards.format import CATALOG_NAME, DEFAULT_CODEC, DEFAULT_JPEG_QUALITY, DEFAULT_PARSE_COMPRESSION
from deskpro.shards.format import ShardError as ShardError  # noqa: PLC0414 (pack raises it too)
from deskpro.shards.staging import check_pack_output, recover, staged_output
from deskpro.shards.writer import ShardWriter

# Columns each stage must provide (the shared stage-output interface); the light ones are read for
# every sample up front, the payload ones a part at a time.
STAGE_COLUMNS = {
    "parse": ("sample_id", "parse_png", "label_set", "error"),
    "detect": ("sample_id", "has_face", "face_lr_png", "error"),
    "restore": ("sample_id", "face_hr_jpg", "error"),
}
PAYLOAD_COLUMNS = {"parse": ("parse_png",), "detect": ("face_lr_png",), "restore": ("face_hr_jpg",)}
REQUIRED_STAGES = ("detect",)  # without parse: no parse maps (evaluate and embed need none; train refuses)
EXAMPLES_SHOWN = 3
_PARTS_CACHED = 1  # parts come in manifest order: one part per stage in memory


class PackError(ValueError):
    """The work directory cannot be packed (missing, unfinished or stale stage, inconsistent outputs)."""


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
    missing_images: list[str] = field(default_factory=list)  # "path: why", images gone since preprocess
    parse_maps: bool = True  # False: no parse stage, no parse dataset (training refuses the shards)

    def format(self) -> str:
        skipped = ", ".join(f"{stage} {n}" for stage, n in self.skipped.items() if n) or "none"
        text = (
            f"{self.out_dir}: {self.rows} samples ({self.with_face} with a face) in {self.shards} shards, "
            f"{self.bytes / 2**20:.1f} MiB; skipped for errors: {skipped}; "
            f"faces dropped by restore errors: {self.faces_dropped}; face_hr from {self.face_hr_source}"
        ) + ("" if self.parse_maps else "\nno parse stage: no parse maps written (train refuses them)")
        shown = self.missing_images[:EXAMPLES_SHOWN]
        if shown:
            more = len(self.missing_images) - len(shown)
            text += (
                "\nunreadable images skipped: " + "; ".join(shown) + (f"; and {more} more" if more else "")
            )
        return text


class _Stage:
    """One stage's outputs, by manifest position: part/row and the light columns (errors, flags,
    label sets: a few bytes a sample) for every sample; payload bytes read a part at a time."""

    def __init__(self, work_dir: Path, name: str, positions: dict[str, int]) -> None:
        self.name = name
        folder = stage_dir(work_dir, name)
        self.parts = sorted(folder.glob("part-*.parquet"))
        if not self.parts:
            raise PackError(f"{folder}: no part-*.parquet files; the {name} stage has not written any output")
        n = len(positions)
        self.part = np.full(n, -1, np.int32)  # -1: no output for this sample
        self.row = np.zeros(n, np.int32)
        light = [c for c in STAGE_COLUMNS[name] if c not in PAYLOAD_COLUMNS[name] and c != "sample_id"]
        self.light = {c: np.empty(n, dtype=object) for c in light}
        duplicates = 0
        for p, part in enumerate(self.parts):
            table = self._read(part, ["sample_id", *light])
            columns = {c: table.column(c).to_pylist() for c in light}
            for r, sid in enumerate(table.column("sample_id").to_pylist()):
                i = positions.get(sid)
                if i is None:
                    continue  # not in the manifest: not packed
                duplicates += int(self.part[i] >= 0)
                self.part[i], self.row[i] = p, r
                for c in light:
                    self.light[c][i] = columns[c][r]
        if duplicates:
            raise PackError(
                f"{folder}: {duplicates} sample ids appear in more than one row of the {name} stage"
            )
        self.info = _read_stage_json(folder / "stage.json")
        self.fingerprint = self.info.get("fingerprint")
        self._cache: OrderedDict[int, dict[str, list]] = OrderedDict()

    def _read(self, part: Path, columns) -> pa.Table:
        try:
            names = pq.read_schema(part).names
            missing = [c for c in STAGE_COLUMNS[self.name] if c not in names]
            if missing:
                raise PackError(f"{part}: missing column(s) {', '.join(missing)} of the {self.name} stage")
            return pq.read_table(part, columns=list(columns))
        except (OSError, pa.ArrowException) as e:
            raise PackError(f"{part}: unreadable Parquet ({e})") from None

    def value(self, column: str, i: int):
        """The value of `column` for manifest position i."""
        if column in self.light:
            return self.light[column][i]
        p, r = int(self.part[i]), int(self.row[i])
        part = self._cache.get(p)
        if part is None:
            table = self._read(self.parts[p], PAYLOAD_COLUMNS[self.name])
            part = {c: table.column(c).to_pylist() for c in PAYLOAD_COLUMNS[self.name]}
            self._cache[p] = part
            if len(self._cache) > _PARTS_CACHED:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(p)
        return part[column][r]


def _read_stage_json(path: Path) -> dict:
    if not path.is_file():
        raise PackError(
            f"{path}: missing; the stage outputs were not written by `deskpro {path.parent.name}`"
        )
    try:
        info = json.loads(path.read_text())
    except ValueError as e:
        raise PackError(f"{path}: unreadable JSON ({e})") from None
    if not isinstance(info, dict) or not isinstance(info.get("fingerprint"), dict):
        raise PackError(f"{path}: no fingerprint; rerun `deskpro {path.parent.name}`")
    return info


def _check_current(stages: dict[str, _Stage | None], manifest_fp: str) -> None:
    """Refuse unfinished or stale stage outputs, naming the stage to rerun."""
    for name, stage in stages.items():
        if stage is None:
            continue
        if not stage.info.get("complete"):
            raise PackError(
                f"stage {name!r} did not finish (stage.json: not complete); run `deskpro {name}` again"
            )
        if stage.fingerprint.get("manifest") != manifest_fp:
            raise PackError(
                f"stage {name!r} was run on another manifest than the work directory's; "
                f"rerun `deskpro {name} --overwrite`"
            )
    restore, detect = stages["restore"], stages["detect"]
    if restore is not None and restore.fingerprint.get("upstream") != detect.fingerprint:
        raise PackError(
            "stage 'restore' was made from an earlier detect output (detect ran again since); "
            "rerun `deskpro restore --overwrite`"
        )


def _check_complete(stage: _Stage, sample_ids: list[str]) -> None:
    missing = [sample_ids[i] for i in np.flatnonzero(stage.part < 0)]
    if missing:
        examples = ", ".join(missing[:EXAMPLES_SHOWN])
        raise PackError(
            f"stage {stage.name!r} has no output for {len(missing)} of {len(sample_ids)} samples"
            f" (e.g. {examples}); the stage did not finish: run it again to complete it"
        )


def _label_set(parse: _Stage) -> str | None:
    ok = np.array([e is None for e in parse.light["error"]], dtype=bool)
    values = set(parse.light["label_set"][ok].tolist()) - {None}
    if len(values) > 1:
        raise PackError(
            f"stage 'parse' mixes label sets {sorted(values)}; parse the whole manifest with one parser"
        )
    return values.pop() if values else None


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


def _face(data: bytes, size: int, what: str) -> np.ndarray:
    try:
        return _resize(decode_image_bytes(data, what), (size, size))
    except ImageDecodeError as e:
        raise PackError(f"{e}: the stage output is corrupt; rerun the stage with --overwrite") from None


def _parse_map(
    data: bytes, image_hw: tuple[int, int], body_size: tuple[int, int], sample_id: str
) -> np.ndarray:
    try:
        label_map = decode_png(data, rgb=False)
    except ImageDecodeError:
        raise PackError(f"parse_png of {sample_id}: cannot decode the stored image bytes") from None
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


def _faces(
    stages: dict[str, _Stage | None], i: int, sid: str, size: int
) -> tuple[np.ndarray | None, np.ndarray | None, int]:
    """(face_lr, face_hr, 1 if restore failed on a detected face else 0); (None, None, _) without a face."""
    detect, restore = stages["detect"], stages["restore"]
    if not detect.value("has_face", i):
        return None, None, 0
    lr_png = detect.value("face_lr_png", i)
    if lr_png is None:
        return None, None, 0
    face_lr = _face(lr_png, size, f"face_lr_png of {sid}")
    if restore is None:
        return face_lr, face_lr, 0
    if restore.value("error", i) is not None:
        return None, None, 1
    hr_jpg = restore.value("face_hr_jpg", i)
    if hr_jpg is None:
        return None, None, 1
    return face_lr, _face(hr_jpg, size, f"face_hr_jpg of {sid}"), 0


# ---------------------------------------------------------------- pack


def pack(
    work_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    body_size: tuple[int, int] = (384, 128),
    face_size: int = 224,
    codec: str = DEFAULT_CODEC,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    shard_size: int = 1024,
    parse_compression: str = DEFAULT_PARSE_COMPRESSION,
    overwrite: bool = False,
    force: bool = False,
    progress: bool = True,
) -> PackSummary:
    """Join WORK's manifest and stage outputs into shards in out_dir; see the module docstring."""
    work_dir, out_dir = Path(work_dir), Path(out_dir)
    manifest_path = work_dir / "manifest.parquet"
    manifest = read_manifest(manifest_path)
    info = manifest_info(manifest)
    options = {  # the writer's
        "body_size": (int(body_size[0]), int(body_size[1])),
        "face_size": face_size,
        "codec": codec,
        "jpeg_quality": jpeg_quality,
        "shard_size": shard_size,
        "parse_compression": parse_compression,
    }
    with output_lock(out_dir, what="shard set", flag="-o"), StopSignals():  # SIGTERM unwinds as Ctrl-C
        recover(out_dir, CATALOG_NAME)  # a set a killed pack left beside out_dir, put back first
        check_pack_output(work_dir, out_dir, Path(info["root"]), force, overwrite)
        return _pack(work_dir, out_dir, manifest, info, options, progress)


def _pack(work_dir: Path, out_dir: Path, manifest, info: dict, options: dict, progress: bool) -> PackSummary:
    body_size, face_size = options["body_size"], options["face_size"]
    root = Path(info["root"])
    sample_ids = manifest.column("sample_id").to_pylist()
    positions = {sid: i for i, sid in enumerate(sample_ids)}
    stages: dict[str, _Stage | None] = {}
    for name in STAGE_COLUMNS:
        folder = stage_dir(work_dir, name)
        if not folder.is_dir() and name in REQUIRED_STAGES:
            raise PackError(f"{folder}: missing; run the {name} stage before packing")
        stages[name] = _Stage(work_dir, name, positions) if folder.is_dir() else None
    for stage in stages.values():
        if stage is not None:
            _check_complete(stage, sample_ids)
    _check_current(stages, manifest_fingerprint(manifest, info["root"]))
    meta = {
        "dataset": info["dataset"],
        "root": info["root"],
        "scan_time": info["scan_time"],
        "label_set": _label_set(stages["parse"]) if stages["parse"] else None,
        "stages": {name: (s.info if s is not None else None) for name, s in stages.items()},
        "face_hr_source": "restore" if stages["restore"] is not None else "face_lr",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    skipped = {"parse": 0, "detect": 0, "image": 0}
    missing_images: list[str] = []
    faces_dropped = 0
    columns = manifest.select(MANIFEST_SCHEMA.names)
    parse_maps = stages["parse"] is not None
    with (
        staged_output(out_dir) as stage,
        ShardWriter(stage, **options, meta=meta, parse_maps=parse_maps, overwrite=True) as writer,
    ):
        i, used = -1, [n for n in ("parse", "detect") if stages[n] is not None]  # i: manifest position
        for batch in tqdm(columns.to_batches(1024), desc="pack", unit="batch", disable=not progress):
            for row in batch.to_pylist():
                i, sid = i + 1, row["sample_id"]
                failed = next((n for n in used if stages[n].value("error", i) is not None), None)
                if failed is not None:
                    skipped[failed] += 1
                    continue
                try:
                    image = read_image_rgb(root / row["path"])
                except ImageDecodeError as e:
                    skipped["image"] += 1
                    missing_images.append(str(e).replace(str(root / row["path"]), row["path"], 1))
                    continue
                png = stages["parse"].value("parse_png", i) if used[0] == "parse" else None
                parse = None if png is None else _parse_map(png, image.shape[:2], body_size, sid)
                face_lr, face_hr, dropped = _faces(stages, i, sid, face_size)
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
        writer.meta["missing_images"] = missing_images
        writer.meta["faces_dropped"] = faces_dropped
    totals = json.loads((out_dir / CATALOG_NAME).read_text())["totals"]
    return PackSummary(
        out_dir=out_dir,
        rows=totals["rows"],
        shards=totals["shards"],
        with_face=totals["with_face"],
        bytes=totals["bytes"],
        face_hr_source=meta["face_hr_source"],
        skipped=skipped,
        faces_dropped=faces_dropped,
        missing_images=missing_images,
        parse_maps=stages["parse"] is not None,
    )
