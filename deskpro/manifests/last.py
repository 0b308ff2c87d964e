"""Scan the LaST folder layout into a manifest table.

Layout: `train/PID/*.jpg`, `val/query/*.jpg`, `val/gallery/PID/*.jpg`, `test/query/*.jpg`,
`test/gallery/PID/*.jpg`; a file name is fields joined by `_`, the first the pid and the last,
in train, the outfit. As Simple-CCReID's loader reads it: pid = the first field; train clothes
id = a dense int per (pid, last field). LaST labels clothes in the training set only (its
README), so val and test rows get clothes id -1, and it has no camera labels: camid is -1
everywhere and its protocol ("any-camera") drops no gallery image for its camera. Splits: train;
val (subsets query, gallery); query; gallery.

Where this differs from Simple-CCReID (`data/datasets/last.py`, and LaST's own loader): they
choose a flat or a per-person glob by `'query' in dir_path`, a test of the whole path, so a root
such as `/data/query_runs/last` lists no train or gallery image at all; here the layout position
decides. They give each image its own running number as camera, so that none is dropped as a
same-camera match: here that is the protocol's rule, not fake camera labels. They put the pid in
the clothes field of val and test rows (a placeholder); here it is -1 (unknown). The file's pid
must agree with its PID folder (else a layout mismatch). Train pids stay unrelabelled.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa

from deskpro.manifests.schema import (
    Row,
    ScanLog,
    build_table,
    dense_ids,
    list_images,
    require_dir,
    subdirs,
)

# folder -> (split, subset, images in PID/ sub-folders)
FOLDERS = {
    "train": ("train", "train", True),
    "val/query": ("val", "query", False),
    "val/gallery": ("val", "gallery", True),
    "test/query": ("query", "query", False),
    "test/gallery": ("gallery", "gallery", True),
}
_NAME = re.compile(r"^(\d+)(?:_[^_.]*)*_([^_.]+)\.[^.]+$")
NO_LABEL = -1


def scan(root: str | Path, dataset: str = "last") -> pa.Table:
    """The manifest of a LaST folder `root` (the folder holding train/, val/ and test/)."""
    root = require_dir(Path(root), "dataset root folder")
    log = ScanLog(root=root, layout="LaST (PID_..._CLOTHES.jpg)")
    found: list[tuple[str, int, str, str, str]] = []  # path, pid, outfit, split, subset
    for folder, (split, subset, by_person) in FOLDERS.items():
        top = require_dir(root / folder, "split folder")
        people = list(subdirs(top, root, log)) if by_person else [top]
        for person in people:
            for name, rel in list_images(person, root, log):
                match = _NAME.match(name)
                if match is None or (by_person and not _same_pid(person.name, match.group(1))):
                    log.mismatched.append(rel)
                    continue
                found.append((rel, int(match.group(1)), match.group(2), split, subset))
    outfits = dense_ids((pid, outfit) for _, pid, outfit, split, _ in found if split == "train")
    rows = [
        Row(
            path=rel,
            pid=pid,
            camid=NO_LABEL,
            clothes_id=outfits[(pid, outfit)] if split == "train" else NO_LABEL,
            split=split,
            subset=subset,
        )
        for rel, pid, outfit, split, subset in found
    ]
    return build_table(rows, dataset=dataset, log=log, splits=("train", "val", "query", "gallery"))


def _same_pid(folder: str, field: str) -> bool:
    return folder.isdigit() and int(folder) == int(field)
