"""Scan the Celeb-reID / Celeb-reID-light folder layout into a manifest table.

Layout: `{train,query,gallery}/PID_SEQ_IDX.jpg`. As the official DeSKPro loader reads it, pid =
PID and camid = SEQ; a (PID, SEQ) pair is one appearance, so the clothes id is a dense int per
pair (sorted, the same pair in query and gallery shares it). subset = split.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa

from deskpro.manifests.schema import Row, ScanLog, build_table, dense_ids, list_images, require_dir

SPLIT_FOLDERS = {"train": "train", "query": "query", "gallery": "gallery"}
_NAME = re.compile(r"^(\d+)_(\d+)_(\d+)\.[^.]+$")


def scan(root: str | Path, dataset: str = "celeb-reid") -> pa.Table:
    """The manifest of a Celeb-reID(-light) folder `root`."""
    root = require_dir(Path(root), "dataset root folder")
    log = ScanLog(root=root, layout="Celeb-reID (PID_SEQ_IDX.jpg)")
    found: list[tuple[str, int, int, str]] = []  # path, pid, seq, split
    for split, folder in SPLIT_FOLDERS.items():
        for name, rel in list_images(require_dir(root / folder, "split folder"), root, log):
            match = _NAME.match(name)
            if match is None:
                log.mismatched.append(rel)
                continue
            found.append((rel, int(match.group(1)), int(match.group(2)), split))
    clothes = dense_ids((pid, seq) for _, pid, seq, _ in found)
    rows = [
        Row(path=rel, pid=pid, camid=seq, clothes_id=clothes[(pid, seq)], split=split, subset=split)
        for rel, pid, seq, split in found
    ]
    return build_table(rows, dataset=dataset, log=log, splits=SPLIT_FOLDERS)
