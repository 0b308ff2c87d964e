"""Checking a shard directory against its catalog: the cheap layout check and the full verify.

`check_layout` (run by every ShardReader when it opens, so `train` and `evaluate` refuse a tampered
or mismatched directory) compares catalog.json (checksum already checked by `load_catalog`) with
each shard's HDF5 attributes, dataset shapes, dtypes and checksum filters, and with the index's
length. `verify` adds the sha256 of every file and the row-by-row agreement of index and shards.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from deskpro.common.files import sha256_file
from deskpro.shards.format import (
    CATALOG_NAME,
    FORMAT_VERSION,
    IMAGE_KEYS,
    INDEX_NAME,
    ShardError,
    end_name,
    load_catalog,
    ragged_keys,
    read_index,
)


@dataclass
class ShardReport:
    """Outcome of ``verify``: one line per problem found."""

    shards_dir: Path
    shards: int
    rows: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        if self.ok:
            return f"{self.shards_dir}: OK ({self.shards} shards, {self.rows} samples)"
        return "\n".join(self.problems)


def _expected_shapes(options: dict, rows: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """Dataset name -> (shape, dtype kind+size) the catalog's options imply for a shard of `rows`."""
    h, w = options["body_size"]
    fs = options["face_size"]
    ragged = ragged_keys(options["codec"])
    shapes: dict[str, tuple[tuple[int, ...], str]] = {"has_face": ((rows,), "b1")}
    if options.get("parse_maps", True):  # packed without a parse stage: no parse dataset
        shapes["parse"] = ((rows, h, w), "u1")
    for key in IMAGE_KEYS:
        shapes[key] = ((rows, h, w, 3) if key == "body" else (rows, fs, fs, 3), "u1")
    for key in ragged:
        shapes[key] = ((None,), "u1")  # length: the last end offset
        shapes[end_name(key)] = ((rows,), "i8")
    return shapes


def _check_datasets(name: str, f: h5py.File, options: dict, rows: int) -> list[str]:
    problems = []
    for key, (shape, dtype) in _expected_shapes(options, rows).items():
        if key not in f:
            problems.append(f"{name}: dataset {key} missing")
            continue
        ds = f[key]
        got_dtype = f"{ds.dtype.kind}{ds.dtype.itemsize}"
        if shape == (None,):
            ends = f[end_name(key)] if end_name(key) in f else None
            last = int(ends[-1]) if ends is not None and ends.shape and ends.shape[0] else 0
            shape = (last,)
        if ds.shape != shape or got_dtype != dtype:
            problems.append(
                f"{name}: dataset {key} is {got_dtype} {ds.shape}, {CATALOG_NAME} implies {dtype} {shape}"
            )
        elif not ds.fletcher32:
            problems.append(f"{name}: dataset {key} has no fletcher32 checksum")
    return problems


def check_shard(shards_dir: Path, s: int, entry: dict, options: dict) -> list[str]:
    """Cheap problems of listed shard `s`: size, attributes and datasets against the catalog."""
    name = entry.get("file", "?")
    path = shards_dir / name
    if not path.is_file():
        return [f"{name}: missing (listed in {CATALOG_NAME})"]
    size = path.stat().st_size
    if size != entry.get("bytes"):
        return [f"{name}: {size} bytes, {CATALOG_NAME} says {entry.get('bytes')} (truncated or rewritten)"]
    rows = entry.get("rows")
    try:
        with h5py.File(path, "r", locking=False) as f:
            expected = {
                "format_version": FORMAT_VERSION,
                "shard": s,
                "rows": rows,
                "codec": options["codec"],
                "body_size": list(options["body_size"]),
                "face_size": options["face_size"],
            }
            problems = []
            for key, want in expected.items():
                got = f.attrs.get(key)
                got = got.tolist() if isinstance(got, np.ndarray) else got
                got = int(got) if isinstance(got, np.integer) else got
                if got != want:
                    problems.append(f"{name}: attribute {key} is {got!r}, {CATALOG_NAME} says {want!r}")
            return problems + _check_datasets(name, f, options, rows)
    except OSError as e:
        return [f"{name}: cannot be read as HDF5 ({str(e).splitlines()[0]})"]


def check_layout(shards_dir: str | os.PathLike, catalog: dict, index: pa.Table) -> list[str]:
    """The cheap check every reader runs: catalog vs each shard's attributes/shapes and the index."""
    shards_dir = Path(shards_dir)
    problems = []
    for s, entry in enumerate(catalog["shards"]):
        problems += check_shard(shards_dir, s, entry, catalog["options"])
    if index.num_rows != catalog["index"].get("rows"):
        problems.append(
            f"{INDEX_NAME}: {index.num_rows} rows, {CATALOG_NAME} says {catalog['index'].get('rows')}"
        )
    rows = int(sum(e.get("rows", 0) for e in catalog["shards"]))
    if rows != catalog["totals"].get("rows"):
        problems.append(
            f"{CATALOG_NAME}: shards hold {rows} rows, totals say {catalog['totals'].get('rows')}"
        )
    return problems


def _shard_ids(path: Path) -> np.ndarray:
    """The sample ids stored in a shard, decoded (the ragged sample_id dataset)."""
    with h5py.File(path, "r", locking=False) as f:
        data = f["sample_id"][:].tobytes()
        ends = f[end_name("sample_id")][:]
    starts = np.concatenate([[0], ends[:-1]])
    return np.asarray([data[a:b].decode("utf-8") for a, b in zip(starts, ends)], dtype=object)


def _check_index(catalog: dict, index: pa.Table, ids_by_shard: dict[int, np.ndarray]) -> list[str]:
    problems = []
    entries = catalog["shards"]
    shard = index.column("shard").to_numpy().astype(np.int64)
    row = index.column("row").to_numpy().astype(np.int64)
    sample_ids = np.asarray(index.column("sample_id").to_pylist(), dtype=object)
    unlisted = (shard < 0) | (shard >= len(entries))
    if unlisted.any():
        problems.append(
            f"{INDEX_NAME}: {int(unlisted.sum())} rows point to shards not listed in {CATALOG_NAME}"
        )
    for s, entry in enumerate(entries):
        mine = np.flatnonzero(shard == s)
        rows = row[mine]
        past = (rows < 0) | (rows >= entry.get("rows", 0))
        if past.any():
            problems.append(
                f"{entry['file']}: {int(past.sum())} index rows point outside its {entry.get('rows')} rows"
            )
        if mine.size != entry.get("rows") or np.unique(rows).size != rows.size:
            problems.append(
                f"{entry['file']}: {INDEX_NAME} covers {np.unique(rows).size} of its {entry.get('rows')} rows"
            )
        ids = ids_by_shard.get(s)
        if ids is not None and not past.any():
            in_range = rows < len(ids)
            bad = np.flatnonzero(ids[rows[in_range]] != sample_ids[mine[in_range]])
            if bad.size:
                first = mine[in_range][bad[0]]
                problems.append(
                    f"{entry['file']}: {bad.size} rows hold another sample than {INDEX_NAME} says "
                    f"(first: {sample_ids[first]!r} at row {row[first]})"
                )
    return problems


def verify(
    shards_dir: str | os.PathLike, *, check_hashes: bool = True, strict: bool = True, progress: bool = False
) -> ShardReport:
    """Check a shard directory against its catalog.json: the layout check, every file's sha256
    (unless ``check_hashes`` is false) and that every index row resolves to the shard row holding
    that sample.

    Raises ShardError (message: one line per problem, naming the file) when something is wrong and
    ``strict``; otherwise returns the report with its problems. A directory without a valid
    catalog.json always raises.
    """
    shards_dir = Path(shards_dir)
    catalog = load_catalog(shards_dir)
    entries = catalog["shards"]
    problems: list[str] = []
    ids_by_shard: dict[int, np.ndarray] = {}
    for s, entry in enumerate(tqdm(entries, desc="verify", unit="shard", disable=not progress)):
        shard_problems = check_shard(shards_dir, s, entry, catalog["options"])
        path = shards_dir / entry.get("file", "?")
        if check_hashes and path.is_file() and sha256_file(path) != entry.get("sha256"):
            shard_problems.append(
                f"{path.name}: sha256 differs from {CATALOG_NAME} (the file changed or is corrupt)"
            )
        problems += shard_problems
        if not shard_problems:
            try:
                ids_by_shard[s] = _shard_ids(path)
            except OSError as e:
                problems.append(f"{path.name}: sample_id unreadable ({str(e).splitlines()[0]})")
    index_path = shards_dir / INDEX_NAME
    if not index_path.is_file():
        problems.append(f"{INDEX_NAME}: missing (listed in {CATALOG_NAME})")
    else:
        if check_hashes and sha256_file(index_path) != catalog["index"].get("sha256"):
            problems.append(
                f"{INDEX_NAME}: sha256 differs from {CATALOG_NAME} (the file changed or is corrupt)"
            )
        try:
            index = read_index(shards_dir)
        except ShardError as e:
            problems.append(str(e))
        else:
            if index.num_rows != catalog["index"].get("rows"):
                problems.append(
                    f"{INDEX_NAME}: {index.num_rows} rows, {CATALOG_NAME} says {catalog['index'].get('rows')}"
                )
            problems += _check_index(catalog, index, ids_by_shard)
    rows = int(sum(e.get("rows", 0) for e in entries))
    if rows != catalog["totals"].get("rows"):
        problems.append(
            f"{CATALOG_NAME}: shards hold {rows} rows, totals say {catalog['totals'].get('rows')}"
        )
    report = ShardReport(shards_dir, shards=len(entries), rows=rows, problems=problems)
    if problems and strict:
        raise ShardError("\n".join(problems), problems)
    return report


def verify_or_raise(shards_dir: str | os.PathLike, *, progress: bool = False) -> ShardReport:
    """The full check (hashes included) that `train --verify` and `evaluate --verify` run first:
    the report when the directory is sound, else ShardError with ONE line (first problem, count)."""
    report = verify(shards_dir, strict=False, progress=progress)
    if not report.ok:
        more = f" (and {len(report.problems) - 1} more; `deskpro verify {shards_dir}` lists them)"
        tail = more if len(report.problems) > 1 else ""
        raise ShardError(f"{shards_dir}: {report.problems[0]}{tail}", report.problems)
    return report
