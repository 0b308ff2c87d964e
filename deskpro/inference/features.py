"""The FEATURES table that `deskpro embed` writes and `deskpro search` reads (Parquet).

One row per image: sample id, path, the chunk-normalised body and face embeddings (7 chunks of D,
flattened), has_face, the face box and score, and an error for an image that could not be used.
The file's metadata holds the checkpoint's fingerprint (sha256), the inference settings and the
embedding layout, so that a search refuses to compare tables of different models.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from deskpro.model.lmbn import NUM_EMBEDDINGS

FORMAT = "deskpro-features"
FORMAT_VERSION = 1
META_KEY = b"deskpro"
_ERROR = "null, or why this image has no features (the other outputs are then null)"


def _field(name: str, type_: pa.DataType, description: str) -> pa.Field:
    return pa.field(name, type_, metadata={"description": description})


def features_schema(feat_dim: int = 512) -> pa.Schema:
    """The table's columns for a model whose embeddings are NUM_EMBEDDINGS chunks of feat_dim."""
    width = NUM_EMBEDDINGS * int(feat_dim)
    chunks = f"{NUM_EMBEDDINGS} chunks of {feat_dim}, each L2-normalised, flattened chunk-major"
    return pa.schema(
        [
            _field(
                "sample_id", pa.string(), "sample id: the manifest's, the shard's, or the path in the folder"
            ),
            _field("path", pa.string(), "image path relative to the input's root ('' for shard rows)"),
            _field("body", pa.list_(pa.float32(), width), f"body-stream embedding: {chunks}"),
            _field(
                "face",
                pa.list_(pa.float32(), width),
                f"face-student embedding: {chunks}; zeros without a face",
            ),
            _field("has_face", pa.bool_(), "a face passed the face policy (the face embedding is used)"),
            _field("face_score", pa.float32(), "detector confidence; null without a face"),
            _field(
                "face_box", pa.list_(pa.float32(), 4), "x1, y1, x2, y2 in original-image pixels; null without"
            ),
            _field("error", pa.string(), _ERROR),
        ],
        metadata={"description": "deskpro features: one row per image; see docs/inference.md"},
    )


SCHEMA = features_schema()


def with_metadata(table: pa.Table, info: dict) -> pa.Table:
    """`table` carrying `info` (checkpoint fingerprint, settings) as the file's deskpro metadata."""
    meta = dict(table.schema.metadata or {})
    meta[META_KEY] = json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, **info}).encode()
    return table.replace_schema_metadata(meta)


class FeaturesError(ValueError):
    """A features table that cannot be used; the message names the file."""


def read_info(path: str | os.PathLike) -> dict:
    """The deskpro metadata of a features file; FeaturesError naming it when it is not one."""
    path = Path(path)
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise FeaturesError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise FeaturesError(
            f"{path}: not a deskpro features table (no deskpro metadata); make one with `deskpro embed`"
        )
    info = json.loads(raw)
    if info.get("format") != FORMAT or info.get("format_version") != FORMAT_VERSION:
        raise FeaturesError(
            f"{path}: features format {info.get('format_version')!r}; this deskpro reads {FORMAT_VERSION}"
        )
    missing = [n for n in SCHEMA.names if n not in schema.names]
    if missing:
        raise FeaturesError(f"{path}: missing columns {', '.join(missing)}")
    return info


def is_features_file(path: Path) -> bool:
    try:
        read_info(path)
    except (FeaturesError, ValueError):
        return False
    return True


def arrays_of(table: pa.Table) -> dict[str, np.ndarray]:
    """Columns as numpy: body / face float32 [N, 7, D] (error rows zero), has_face bool, ids, paths."""
    n = table.num_rows
    out: dict[str, np.ndarray] = {}
    for key in ("body", "face"):
        col = table.column(key).combine_chunks()
        width = col.type.list_size
        flat = col.flatten().to_numpy(zero_copy_only=False) if col.null_count == 0 else None
        if flat is None:  # error rows are null: zeros in their place
            dense = np.zeros((n, width), np.float32)
            valid = np.asarray(col.is_valid().to_numpy(zero_copy_only=False), bool)
            dense[valid] = (
                col.filter(pa.array(valid)).flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
            )
        else:
            dense = flat.reshape(n, width).astype(np.float32, copy=False)
        out[key] = dense.reshape(n, NUM_EMBEDDINGS, width // NUM_EMBEDDINGS)
    out["has_face"] = np.asarray(
        table.column("has_face").fill_null(False).to_numpy(zero_copy_only=False), bool
    )
    out["ok"] = np.asarray(table.column("error").is_null().to_numpy(zero_copy_only=False), bool)
    out["sample_id"] = np.asarray(table.column("sample_id").to_pylist(), dtype=object)
    out["path"] = np.asarray(table.column("path").to_pylist(), dtype=object)
    return out


def iter_chunks(path: str | os.PathLike, rows: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(first row, arrays) of a features file, `rows` at a time: memory flat in the table's size."""
    start = 0
    with pq.ParquetFile(path) as f:
        for batch in f.iter_batches(batch_size=rows):
            table = pa.Table.from_batches([batch])
            yield start, arrays_of(table)
            start += table.num_rows
