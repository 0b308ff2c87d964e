"""Scan the Celeb-reID / Celeb-reID-light folder layout into a manifest table.

Layout: `{train,query,gallery}/PID_SEQ_IDX.jpg`. The dataset's authors (readme.txt of the download,
quoted in github.com/Huang-3/Celeb-reID issue #1): PID is the identity, SEQ "the y-th image" of that
identity (different for every image of an identity; the images come from the Internet, so there is
no camera, and SEQ "can be simply regarded as the camera ID"), IDX is meaningless. So pid = PID,
camid = SEQ (as the official DeSKPro loader, `celeb_light.py` `resolve`, reads it), and no source
gives a clothes id: clothes_id = -1. subset = split. docs/formats.md has the details.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa

from deskpro.manifests.schema import Row, ScanLog, build_table, list_images, require_dir

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
    rows = [
        Row(path=rel, pid=pid, camid=seq, clothes_id=-1, split=split, subset=split)
        for rel, pid, seq, split in found
    ]
    return build_table(rows, dataset=dataset, log=log, splits=SPLIT_FOLDERS)
