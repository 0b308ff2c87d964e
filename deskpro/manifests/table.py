"""A user's own dataset: images under ROOT labelled by a CSV file, so that no layout module is needed.

The labels file has a header row naming at least the columns path, pid, camid, clothes_id and
split (any order; more columns are ignored, except an optional `subset`). path is relative to ROOT
(POSIX or native separators); pid and camid are integers (camid -1: no camera label); clothes_id is
an integer, -1 or empty where unknown; split is train, val, query or gallery. subset defaults to
the split; val rows need subset query or gallery (a val query/gallery pair for model selection).
A bad row is a one-line error naming the file, the line and what is wrong.
"""

from __future__ import annotations

import csv
from pathlib import Path, PurePosixPath

import pyarrow as pa

from deskpro.manifests.schema import SPLITS, ManifestError, Row, ScanLog, build_table, is_image, require_dir

COLUMNS = ("path", "pid", "camid", "clothes_id", "split")
VAL_SUBSETS = ("query", "gallery")


def scan(root: str | Path, dataset: str = "table", labels: str | Path | None = None) -> pa.Table:
    """The manifest of the images under `root` listed in the CSV file `labels`."""
    root = require_dir(Path(root), "dataset root folder")
    if labels is None:
        raise ManifestError(
            "the table layout needs --labels LABELS.csv (path, pid, camid, clothes_id, split)"
        )
    labels = Path(labels)
    if not labels.is_file():
        raise ManifestError(f"{labels}: no such labels file")
    log = ScanLog(root=root, layout="table")
    rows, seen = [], {}
    for line_no, record in _records(labels):
        row = _row(record, root, f"{labels} line {line_no}")
        if row.path in seen:
            raise ManifestError(
                f"{labels} line {line_no}: {row.path} already listed on line {seen[row.path]}"
            )
        seen[row.path] = line_no
        rows.append(row)
    return build_table(rows, dataset=dataset, log=log, splits=("train", "query", "gallery"))


def _records(labels: Path):
    """(line number, {column: text}) of each non-blank data line; errors name the file and line."""
    try:
        with open(labels, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise ManifestError(
                    f"{labels} line 1: header lacks column(s) {', '.join(missing)}"
                    f" (needs {', '.join(COLUMNS)})"
                )
            for values in reader:
                if not any(v.strip() for v in values):
                    continue
                if len(values) != len(header):
                    raise ManifestError(
                        f"{labels} line {reader.line_num}: {len(values)} field(s),"
                        f" the header has {len(header)}"
                    )
                yield reader.line_num, {h: v.strip() for h, v in zip(header, values)}
    except UnicodeDecodeError:
        raise ManifestError(f"{labels}: not UTF-8 text") from None
    except csv.Error as e:
        raise ManifestError(f"{labels}: not a readable CSV file ({e})") from None


def _row(record: dict, root: Path, where: str) -> Row:
    path = PurePosixPath(record["path"].replace("\\", "/"))
    if not record["path"] or path.is_absolute() or ".." in path.parts:
        raise ManifestError(f"{where}: path {record['path']!r} must be relative to the root, inside it")
    if not is_image(path.name):
        raise ManifestError(f"{where}: {path} is not an image file name")
    if not (root / path).is_file():
        raise ManifestError(f"{where}: {path}: no such file under {root}")
    pid = _integer(record, "pid", where)
    camid = _integer(record, "camid", where)
    clothes = _integer(record, "clothes_id", where) if record["clothes_id"] else -1
    if pid < 0:
        raise ManifestError(f"{where}: pid {pid} is negative")
    if clothes < -1:
        raise ManifestError(f"{where}: clothes_id {clothes} must be -1 (unknown) or >= 0")
    split = record["split"]
    if split not in SPLITS:
        raise ManifestError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
    subset = record.get("subset") or split
    if split == "val" and subset not in VAL_SUBSETS:
        raise ManifestError(f"{where}: a val row needs a subset column of query or gallery, got {subset!r}")
    return Row(path=str(path), pid=pid, camid=camid, clothes_id=clothes, split=split, subset=subset)


def _integer(record: dict, column: str, where: str) -> int:
    text = record[column]
    try:
        return int(text)
    except ValueError:
        raise ManifestError(f"{where}: {column} {text!r} is not an integer") from None
