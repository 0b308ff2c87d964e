"""The shard format: file names, version, the index schema, HDF5 layout and attributes, the catalog.

A shard directory holds

- ``shard-NNNNN.h5``: one HDF5 file per ``shard_size`` samples (layout below);
- ``index.parquet``: one row per sample (INDEX_SCHEMA);
- ``catalog.json``, the shard catalog: format version, pack options, meta (dataset, label set, stage
  fingerprints), per-shard file / rows / bytes / sha256, the index's sha256, totals, and a
  ``checksum`` of the catalog itself (sha256 of its canonical JSON without that field).

Every file is written under a ``.tmp`` name and renamed when complete; the catalog goes last, so a
directory without it is incomplete. ``docs/formats.md`` is the written form of this module, and
the same facts are stored as HDF5 attributes and Parquet metadata so that a shard explains itself
(``h5ls -v``, duckdb).

HDF5 layout (``R`` = rows of the shard). Every dataset is chunked with HDF5's fletcher32 checksum,
so a flipped byte fails at read time instead of training silently. Variable-length bytes (sample
ids, JPEG images) are "ragged": a flat uint8 dataset ``NAME`` holding the rows back to back and an
int64 dataset ``NAME_end`` [R] with the end offset of each row (HDF5 cannot checksum vlen data).

Version rule: FORMAT_VERSION changes whenever a reader of the previous version would misread a new
directory (a renamed file, a changed layout, a new required dataset); readers refuse other
versions with a line saying to run ``deskpro pack`` again. Adding an attribute or metadata key
does not change it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

FORMAT_VERSION = 2  # 1: manifest.json and vlen datasets without checksums
CATALOG_NAME = "catalog.json"
INDEX_NAME = "index.parquet"
CODECS = ("jpeg", "raw")
DEFAULT_CODEC = "jpeg"
DEFAULT_JPEG_QUALITY = 95
PARSE_COMPRESSIONS = ("none", "gzip", "lzf")
DEFAULT_PARSE_COMPRESSION = "gzip"
GZIP_LEVEL = 4
IMAGE_KEYS = ("body", "face_lr", "face_hr")
ROW_KEYS = ("sample_id", "has_face", "parse", *IMAGE_KEYS)  # one entry per sample each
END_SUFFIX = "_end"  # NAME_end: end offsets of the rows of a ragged dataset NAME
BYTES_CHUNK = 1 << 16  # bytes per chunk of a ragged dataset

ATTR_DESCRIPTION = "description"
FILE_DESCRIPTION = (
    "deskpro training shard: rows of one person image each (body, parse map, low-res and restored "
    "face); see docs/formats.md"
)
# Attributes of each dataset: what it holds, in words a reader of `h5ls -v` can use.
DATASET_ATTRS: dict[str, dict[str, str]] = {
    "sample_id": {
        ATTR_DESCRIPTION: "sample id (the image path without suffix), UTF-8, ragged: sample_id_end",
        "encoding": "utf-8",
    },
    "has_face": {ATTR_DESCRIPTION: "True when face_lr / face_hr hold a face; else they are empty"},
    "parse": {
        ATTR_DESCRIPTION: "human-parsing label map of the body image, one label index per pixel",
        "layout": "rows, height, width",
        "labels": "label_set in the file attributes; names in docs/formats.md",
        "interpolation": "nearest (resized from the original image size)",
    },
    "body": {
        ATTR_DESCRIPTION: "person image resized to body_size",
        "colour_order": "RGB",
        "interpolation": "area when shrinking, bilinear when enlarging",
    },
    "face_lr": {
        ATTR_DESCRIPTION: "low-resolution face crop (detect stage) resized to face_size x face_size",
        "colour_order": "RGB",
    },
    "face_hr": {
        ATTR_DESCRIPTION: "restored face (restore stage; face_lr without one) at face_size x face_size",
        "colour_order": "RGB",
    },
}
END_ATTRS = {ATTR_DESCRIPTION: "end offset (exclusive) of each row in the ragged bytes dataset"}
CODEC_LAYOUT = {
    "raw": "rows, height, width, 3 (uint8 pixels)",
    "jpeg": "JPEG files back to back (ragged: NAME_end); an empty row is no face",
}

INDEX_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), metadata={"description": "sample id, as in the manifest"}),
        pa.field("pid", pa.int64(), metadata={"description": "person id from the dataset layout"}),
        pa.field("camid", pa.int64(), metadata={"description": "camera id from the dataset layout"}),
        pa.field(
            "clothes_id", pa.int64(), metadata={"description": "clothes id; -1 where the layout has none"}
        ),
        pa.field("split", pa.string(), metadata={"description": "train, val, query or gallery"}),
        pa.field("subset", pa.string(), metadata={"description": "protocol subset, e.g. query_diff"}),
        pa.field("shard", pa.int32(), metadata={"description": "shard number: shard-NNNNN.h5"}),
        pa.field("row", pa.int32(), metadata={"description": "row of the sample in that shard"}),
        pa.field("has_face", pa.bool_(), metadata={"description": "the shard row holds a face"}),
    ],
    metadata={"description": "deskpro shard index: one row per sample; see docs/formats.md"},
)
CATALOG_KEYS = ("format_version", "options", "meta", "shards", "index", "totals", "checksum")


_WORKER_TAIL = "ShardError: "


class ShardError(ValueError):
    """A shard directory is incomplete, corrupt or inconsistent; ``problems`` has one line each."""

    def __init__(self, message: str, problems: Sequence[str] | None = None) -> None:
        # A DataLoader worker's error comes back as ShardError("Caught ShardError in DataLoader
        # worker ...\nOriginal Traceback ...\n...ShardError: <message>"): keep the one line.
        if message.startswith("Caught ShardError") and _WORKER_TAIL in message:
            message = message.rsplit(_WORKER_TAIL, 1)[1].strip()
        super().__init__(message)
        self.problems = list(problems) if problems is not None else [message]


def shard_file_name(shard: int) -> str:
    return f"shard-{shard:05d}.h5"


def end_name(name: str) -> str:
    return name + END_SUFFIX


def ragged_keys(codec: str) -> tuple[str, ...]:
    """The datasets stored ragged (bytes + NAME_end) under a codec."""
    return ("sample_id", *IMAGE_KEYS) if codec == "jpeg" else ("sample_id",)


def catalog_checksum(catalog: dict) -> str:
    """sha256 of the catalog's canonical JSON (sorted keys, no spaces) without its checksum field."""
    body = {key: value for key, value in catalog.items() if key != "checksum"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def catalog_bytes(catalog: dict) -> bytes:
    """The catalog as written: with its checksum, indented, sorted keys (deterministic)."""
    catalog = {**catalog, "checksum": catalog_checksum(catalog)}
    return (json.dumps(catalog, indent=2, sort_keys=True) + "\n").encode()


def load_catalog(shards_dir: str | os.PathLike) -> dict:
    """catalog.json of a complete shard directory, its checksum checked; ShardError (one line) else."""
    shards_dir = Path(shards_dir)
    path = shards_dir / CATALOG_NAME
    if not shards_dir.is_dir():
        raise ShardError(f"{shards_dir}: not a directory")
    if not path.is_file():
        if (shards_dir / "manifest.json").is_file():
            raise ShardError(
                f"{shards_dir}: shards of format version 1 (manifest.json); this deskpro reads version "
                f"{FORMAT_VERSION}: run `deskpro pack` again"
            )
        raise ShardError(
            f"{shards_dir}: no {CATALOG_NAME}; the shard directory is incomplete (packing did not finish)"
        )
    try:
        catalog = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ShardError(f"{path}: unreadable JSON ({e})") from None
    version = catalog.get("format_version") if isinstance(catalog, dict) else None
    if version != FORMAT_VERSION:
        raise ShardError(
            f"{path}: format_version {version!r}; this deskpro reads version {FORMAT_VERSION}: "
            "run `deskpro pack` again"
        )
    missing = [key for key in CATALOG_KEYS if key not in catalog]
    if missing:
        raise ShardError(f"{path}: missing keys {', '.join(missing)}")
    if catalog["checksum"] != catalog_checksum(catalog):
        raise ShardError(
            f"{path}: checksum does not match its content (the catalog was edited or is corrupt)"
        )
    return catalog


def read_index(shards_dir: str | os.PathLike) -> pa.Table:
    """index.parquet with INDEX_SCHEMA's columns and types; ShardError naming it when unusable."""
    path = Path(shards_dir) / INDEX_NAME
    if not path.is_file():
        raise ShardError(f"{path}: missing; the shard directory is incomplete")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise ShardError(f"{path}: unreadable Parquet ({e})") from None
    missing = [name for name in INDEX_SCHEMA.names if name not in table.column_names]
    if missing:
        raise ShardError(f"{path}: missing columns {', '.join(missing)}")
    return table.select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA)
