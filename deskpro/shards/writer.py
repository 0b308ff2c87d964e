"""ShardWriter: samples -> HDF5 shards, index.parquet and catalog.json (layout in `format`).

Writing is deterministic (same samples, same bytes): fixed HDF5 library version bounds, no object
timestamps, fixed chunking and filters, JSON with sorted keys. Memory is flat in the dataset size:
at most ``_FLUSH_ROWS`` encoded samples are held, plus the small index columns.

Defaults, chosen with ``benchmarks/codec.py`` (synthetic people at 384x128 with 224x224 faces):
codec ``jpeg`` q95 (about 44 KB a sample, a tenth of ``raw``'s 450 KB: Celeb-reID's 34k images
take about 1.5 GB instead of 15 GB); ``raw`` stays available, exact and the fastest to read. Parse
maps ``gzip`` level 4: label maps are large flat regions, stored about 26x smaller.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from deskpro.common.files import atomic_path, sha256_file
from deskpro.common.images import encode_jpeg
from deskpro.shards.format import (
    ATTR_DESCRIPTION,
    BYTES_CHUNK,
    CATALOG_NAME,
    CODEC_LAYOUT,
    CODECS,
    DATASET_ATTRS,
    DEFAULT_CODEC,
    DEFAULT_JPEG_QUALITY,
    DEFAULT_PARSE_COMPRESSION,
    END_ATTRS,
    FILE_DESCRIPTION,
    FORMAT_VERSION,
    GZIP_LEVEL,
    IMAGE_KEYS,
    INDEX_NAME,
    INDEX_SCHEMA,
    PARSE_COMPRESSIONS,
    ROW_KEYS,
    ShardError,
    catalog_bytes,
    end_name,
    ragged_keys,
    shard_file_name,
)

# Fixed HDF5 settings so that the same samples give the same bytes on every run.
_LIBVER = ("earliest", "v110")
_FLUSH_ROWS = 64  # samples buffered in memory before they are appended to the open shard


def _atomic(path: Path):
    """`atomic_path` through NAME.tmp, the name `is_ours` knows to clear after a crash."""
    return atomic_path(path, tmp=path.with_name(path.name + ".tmp"))


def is_ours(path: Path) -> bool:
    """Files a writer creates in a shard directory (the only ones it may delete)."""
    name = path.name.removesuffix(".tmp")
    return name in (CATALOG_NAME, INDEX_NAME) or (name.startswith("shard-") and name.endswith(".h5"))


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ShardError(f"{out_dir}: exists and is not a directory")
    if (out_dir / CATALOG_NAME).exists() and not overwrite:
        raise ShardError(
            f"{out_dir}: already holds complete shards ({CATALOG_NAME}); pass overwrite=True (--overwrite)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    # The catalog goes first so the directory reads as incomplete while it is rewritten.
    (out_dir / CATALOG_NAME).unlink(missing_ok=True)
    for path in sorted(out_dir.iterdir()):
        if path.is_file() and is_ours(path):
            path.unlink()


def _check_image(name: str, image: Any, shape: tuple[int, ...]) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.shape != shape:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"{name} must be uint8 with shape {shape}, got {got}")
    return np.ascontiguousarray(image)


class ShardWriter:
    """Appends samples to HDF5 shards of ``shard_size`` rows, then writes the index and catalog.json.

    Use as a context manager (``close`` on success; on an exception the directory stays incomplete,
    without catalog.json) or call ``close()`` yourself.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        *,
        body_size: tuple[int, int] = (384, 128),
        face_size: int = 224,
        codec: str = DEFAULT_CODEC,
        jpeg_quality: int = DEFAULT_JPEG_QUALITY,
        shard_size: int = 1024,
        meta: Mapping[str, Any] | None = None,
        parse_compression: str = DEFAULT_PARSE_COMPRESSION,
        overwrite: bool = False,
        parse_maps: bool = True,
    ) -> None:
        if codec not in CODECS:
            raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")
        if parse_compression not in PARSE_COMPRESSIONS:
            raise ValueError(
                f"parse_compression must be one of {PARSE_COMPRESSIONS}, got {parse_compression!r}"
            )
        if not 1 <= int(jpeg_quality) <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
        if int(shard_size) < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        body_size = tuple(int(v) for v in body_size)
        if len(body_size) != 2 or min(body_size) < 1 or int(face_size) < 1:
            raise ValueError(f"body_size must be (H, W) and face_size > 0, got {body_size}, {face_size}")
        self.out_dir = Path(out_dir)
        self.options = {
            "body_size": list(body_size),
            "face_size": int(face_size),
            "codec": codec,
            "jpeg_quality": int(jpeg_quality),
            "shard_size": int(shard_size),
            "parse_compression": parse_compression,
        }
        if not parse_maps:  # a test set packed without a parse stage: inference needs none
            self.options["parse_maps"] = False
        self._row_keys = ROW_KEYS if parse_maps else tuple(k for k in ROW_KEYS if k != "parse")
        self.meta = dict(meta or {})  # may be updated until close(); must stay JSON-serialisable
        try:
            json.dumps(self.meta, sort_keys=True)
        except (TypeError, ValueError) as e:
            raise ValueError(f"meta must be JSON-serialisable: {e}") from None
        self._body_shape = (*body_size, 3)
        self._parse_shape = body_size
        self._face_shape = (int(face_size), int(face_size), 3)
        self._ragged = ragged_keys(codec)
        _prepare_out_dir(self.out_dir, overwrite)
        self._index: dict[str, list] = {name: [] for name in INDEX_SCHEMA.names}
        self._seen: set[str] = set()
        self._shards: list[dict] = []
        self._file: h5py.File | None = None
        self._file_path: Path | None = None
        self._pending: list[dict] = []
        self._rows_in_shard = 0
        self._closed = False
        self._aborted = False

    # -- public

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __len__(self) -> int:
        return len(self._index["sample_id"])

    def add(
        self,
        *,
        sample_id: str,
        pid: int,
        camid: int,
        clothes_id: int,
        split: str,
        subset: str,
        body: np.ndarray,
        parse: np.ndarray | None,
        face_lr: np.ndarray | None = None,
        face_hr: np.ndarray | None = None,
    ) -> None:
        """Append one sample: body RGB and parse at body_size, faces RGB at face_size or None (no face)."""
        if self._closed:
            raise ValueError(f"{self.out_dir}: the writer is closed")
        if sample_id in self._seen:
            raise ValueError(f"sample_id {sample_id!r} was added twice")
        if (face_lr is None) != (face_hr is None):
            raise ValueError(f"sample {sample_id!r}: give both face_lr and face_hr, or neither (no face)")
        has_face = face_lr is not None
        row = {
            "sample_id": np.frombuffer(str(sample_id).encode("utf-8"), np.uint8),
            "has_face": has_face,
            "body": self._encode(_check_image("body", body, self._body_shape)),
            "parse": None
            if "parse" not in self._row_keys
            else _check_image("parse", parse, self._parse_shape),
            "face_lr": self._encode_face("face_lr", face_lr),
            "face_hr": self._encode_face("face_hr", face_hr),
        }
        if self._file is None:
            self._open_shard()
        self._pending.append(row)
        self._seen.add(str(sample_id))
        for name, value in (
            ("sample_id", str(sample_id)),
            ("pid", int(pid)),
            ("camid", int(camid)),
            ("clothes_id", int(clothes_id)),
            ("split", str(split)),
            ("subset", str(subset)),
            ("shard", len(self._shards)),
            ("row", self._rows_in_shard),
            ("has_face", has_face),
        ):
            self._index[name].append(value)
        self._rows_in_shard += 1
        if len(self._pending) >= _FLUSH_ROWS:
            self._flush()
        if self._rows_in_shard >= self.options["shard_size"]:
            self._finish_shard()

    def close(self) -> Path:
        """Finish the last shard, write index.parquet, then catalog.json; returns the directory."""
        if self._aborted:
            raise ShardError(f"{self.out_dir}: the writer was aborted; the directory is incomplete")
        if self._closed:
            return self.out_dir
        if len(self) == 0:
            self.abort()
            raise ShardError(f"{self.out_dir}: no samples were added; nothing to write")
        if self._file is not None:
            self._finish_shard()
        index = pa.Table.from_pydict(self._index, schema=INDEX_SCHEMA)
        index_path = self.out_dir / INDEX_NAME
        with _atomic(index_path) as tmp:
            pq.write_table(index, tmp, compression="zstd")
        catalog = {
            "format_version": FORMAT_VERSION,
            "options": self.options,
            "meta": self.meta,
            "shards": self._shards,
            "index": {"file": INDEX_NAME, "sha256": sha256_file(index_path), "rows": index.num_rows},
            "totals": self._totals(),
        }
        with _atomic(self.out_dir / CATALOG_NAME) as tmp:
            tmp.write_bytes(catalog_bytes(catalog))
        self._closed = True
        return self.out_dir

    def abort(self) -> None:
        """Stop without writing catalog.json (the directory stays incomplete); drop the open shard."""
        if self._file is not None:
            # The path kept at open: after a failed write (a full disk) h5py's `filename` segfaults.
            f, path, self._file = self._file, self._file_path, None
            try:
                f.close()
            except (OSError, RuntimeError, ValueError):
                pass  # the shard is deleted anyway
            path.unlink(missing_ok=True)
        self._closed = self._aborted = True

    # -- internals

    def _encode(self, image: np.ndarray) -> np.ndarray:
        if self.options["codec"] == "jpeg":  # JPEG bytes as a 1-D uint8 array (one ragged row)
            return np.frombuffer(encode_jpeg(image, self.options["jpeg_quality"]), np.uint8)
        return image

    def _encode_face(self, name: str, face: np.ndarray | None) -> np.ndarray:
        if face is None:
            # No face: an empty JPEG row, or zeros in a raw array.
            return np.zeros(0 if self.options["codec"] == "jpeg" else self._face_shape, np.uint8)
        return self._encode(_check_image(name, face, self._face_shape))

    def _dataset(self, f: h5py.File, name: str, shape: tuple[int, ...], dtype, chunks, **kw) -> None:
        ds = f.create_dataset(
            name,
            shape=(0, *shape),
            maxshape=(None, *shape),
            dtype=dtype,
            chunks=chunks,
            fletcher32=True,
            track_times=False,
            **kw,
        )
        for key, value in DATASET_ATTRS.get(name, {}).items():
            ds.attrs[key] = value

    def _row_dataset(self, f: h5py.File, name: str, shape: tuple[int, ...], **kw) -> None:
        """A dataset with one entry per row, or (ragged) its bytes and NAME_end."""
        rows_chunk = min(self.options["shard_size"], 1024)
        if name in self._ragged:
            self._dataset(f, name, (), np.uint8, (BYTES_CHUNK,))
            self._dataset(f, end_name(name), (), np.int64, (rows_chunk,))
            for key, value in END_ATTRS.items():
                f[end_name(name)].attrs[key] = value
        else:
            chunks = (rows_chunk,) if not shape else (1, *shape)
            dtype = np.bool_ if name == "has_face" else np.uint8
            self._dataset(f, name, shape, dtype, chunks, **kw)

    def _open_shard(self) -> None:
        shard = len(self._shards)
        path = self.out_dir / (shard_file_name(shard) + ".tmp")
        f = h5py.File(path, "w", libver=_LIBVER, track_order=False)
        self._file_path = path
        attrs = {
            ATTR_DESCRIPTION: FILE_DESCRIPTION,
            "format_version": FORMAT_VERSION,
            "shard": shard,
            "codec": self.options["codec"],
            "body_size": self.options["body_size"],
            "face_size": self.options["face_size"],
            "jpeg_quality": self.options["jpeg_quality"],
            "parse_compression": self.options["parse_compression"],
            "label_set": str(self.meta.get("label_set") or ""),
            "dataset": str(self.meta.get("dataset") or ""),
        }
        for key, value in attrs.items():
            f.attrs[key] = value
        compression = self.options["parse_compression"]
        self._row_dataset(f, "sample_id", ())
        self._row_dataset(f, "has_face", ())
        if "parse" in self._row_keys:
            self._row_dataset(
                f,
                "parse",
                self._parse_shape,
                compression=None if compression == "none" else compression,
                compression_opts=GZIP_LEVEL if compression == "gzip" else None,
            )
        for key in IMAGE_KEYS:
            self._row_dataset(f, key, self._body_shape if key == "body" else self._face_shape)
            f[key].attrs["layout"] = CODEC_LAYOUT[self.options["codec"]]
        self._file = f
        self._rows_in_shard = 0

    def _flush(self) -> None:
        if not self._pending:
            return
        f = self._file
        for name in self._row_keys:
            values = [row[name] for row in self._pending]
            if name in self._ragged:
                _append_ragged(f, name, values)
            else:
                ds = f[name]
                start = ds.shape[0]
                ds.resize(start + len(values), axis=0)
                ds[start:] = np.stack(values) if ds.ndim > 1 else np.asarray(values, ds.dtype)
        self._pending = []

    def _finish_shard(self) -> None:
        self._flush()
        f = self._file
        rows = f["has_face"].shape[0]
        f.attrs["rows"] = rows
        tmp = self._file_path
        f.close()
        self._file = None
        final = tmp.with_name(tmp.name.removesuffix(".tmp"))
        os.replace(tmp, final)
        self._shards.append(
            {
                "file": final.name,
                "rows": int(rows),
                "bytes": final.stat().st_size,
                "sha256": sha256_file(final),
            }
        )
        self._rows_in_shard = 0

    def _totals(self) -> dict:
        splits: dict[str, int] = {}
        for split in self._index["split"]:
            splits[split] = splits.get(split, 0) + 1
        return {
            "rows": len(self),
            "with_face": int(sum(self._index["has_face"])),
            "shards": len(self._shards),
            "bytes": int(sum(s["bytes"] for s in self._shards)),
            "splits": splits,
        }


def _append_ragged(f: h5py.File, name: str, values: list[np.ndarray]) -> None:
    data, ends = f[name], f[end_name(name)]
    start = data.shape[0]
    lengths = np.fromiter((v.size for v in values), np.int64, len(values))
    new_ends = start + np.cumsum(lengths)
    data.resize(int(new_ends[-1]), axis=0)
    if new_ends[-1] > start:
        data[start:] = np.concatenate(values)
    n = ends.shape[0]
    ends.resize(n + len(values), axis=0)
    ends[n:] = new_ends
