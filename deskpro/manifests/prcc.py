"""Scan the PRCC folder layout (and the synthetic set written in it) into a manifest table.

Layout: `rgb/{train,val}/PID/{A,B,C}_*.jpg` and `rgb/test/{A,B,C}/PID/*.jpg`. Camera A = 0, B = 1,
C = 2. A person wears the same clothes under cameras A and B and other clothes under C, so the
clothes id is a dense int per (pid, outfit) with outfit 0 for A/B and 1 for C, unique over the
whole manifest. Test: A is the gallery, B the same-clothes queries, C the cross-clothes queries;
val rows keep split "val" with the same three subset names by camera.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from deskpro.manifests.schema import (
    ManifestError,
    Row,
    ScanLog,
    build_table,
    dense_ids,
    list_images,
    require_dir,
    subdirs,
)

CAMERAS = {"A": 0, "B": 1, "C": 2}
TEST_SUBSET = {"A": "gallery", "B": "query_same", "C": "query_diff"}
TEST_SPLIT = {"A": "gallery", "B": "query", "C": "query"}
_PID_DIR = re.compile(r"^\d+$")
_TRAIN_NAME = re.compile(r"^([ABC])_")


def scan(root: str | Path, dataset: str = "prcc") -> pa.Table:
    """The manifest of a PRCC-layout folder `root`; `dataset` names it in the metadata."""
    root = require_dir(Path(root), "dataset root folder")
    rgb = require_dir(root / "rgb", "PRCC folder rgb/ (expected rgb/{train,val,test})")
    log = ScanLog(root=root, layout="PRCC")
    found: list[tuple[str, int, str, str, str]] = []  # path, pid, camera letter, split, subset
    for split in ("train", "val"):
        found += _scan_by_person(require_dir(rgb / split, "split folder"), root, split, log)
    test = require_dir(rgb / "test", "split folder")
    for camera in CAMERAS:
        in_camera = _scan_test_camera(require_dir(test / camera, "camera folder"), root, camera, log)
        if not in_camera and not log.mismatched:
            raise ManifestError(f"{test / camera}: camera folder has no images ({TEST_SUBSET[camera]})")
        found += in_camera
    clothes = dense_ids((pid, camera == "C") for _, pid, camera, _, _ in found)
    rows = [
        _row(path, pid, camera, split, subset, clothes[(pid, camera == "C")])
        for path, pid, camera, split, subset in found
    ]
    return build_table(rows, dataset=dataset, log=log, splits=("train", "val", "query", "gallery"))


def _row(path: str, pid: int, camera: str, split: str, subset: str, clothes_id: int) -> Row:
    return Row(path=path, pid=pid, camid=CAMERAS[camera], clothes_id=clothes_id, split=split, subset=subset)


def _person_dirs(folder: Path, root: Path, log: ScanLog) -> Iterator[Path]:
    """The `PID/` sub-folders of `folder`; any other sub-folder is a layout mismatch."""
    for person in subdirs(folder, root, log):
        if _PID_DIR.match(person.name):
            yield person
        else:
            log.mismatched.append(person.relative_to(root).as_posix() + "/")


def _scan_by_person(folder: Path, root: Path, split: str, log: ScanLog) -> list[tuple]:
    """`folder/PID/{A,B,C}_*.jpg` (train and val)."""
    found = []
    for person in _person_dirs(folder, root, log):
        for name, rel in list_images(person, root, log):
            match = _TRAIN_NAME.match(name)
            if match is None:
                log.mismatched.append(rel)
                continue
            camera = match.group(1)
            subset = "train" if split == "train" else TEST_SUBSET[camera]
            found.append((rel, int(person.name), camera, split, subset))
    return found


def _scan_test_camera(folder: Path, root: Path, camera: str, log: ScanLog) -> list[tuple]:
    """`rgb/test/CAMERA/PID/*.jpg`."""
    found = []
    for person in _person_dirs(folder, root, log):
        for _, rel in list_images(person, root, log):
            found.append((rel, int(person.name), camera, TEST_SPLIT[camera], TEST_SUBSET[camera]))
    return found
