"""Read the DeepChange layout (DeepChangeDataset) into a manifest table, from its file lists.

Layout: five image folders, each with its list beside it: `train-set/` + `train-set-bbox.txt`,
`val-set-query/`, `val-set-gallery/`, `test-set-query/`, `test-set-gallery/` (+ `-bbox.txt`).
A list line is `NAME,TRACKLET`; NAME is `P<pid>_C<camera>_<third>_...jpg`. As Simple-CCReID's
loader reads it: pid = the number after P; the outfit is (pid, third field), a dense clothes id
per pair (sorted, unique over the manifest); and camid = the TRACKLET number, not the camera:
DeepChange counts a true match from the same camera but another tracklet (its paper's protocol),
so the tracklet is what the evaluation's same-"camera" rule must drop. The camera stays in the
file name. Splits: train; val (subsets query, gallery); query; gallery.

Where this differs from Simple-CCReID (`data/datasets/deepchange.py`): a blank line (a trailing
newline at the end of a list) fails its `split(',')[1]`; here blank lines are skipped, and a
malformed line or a listed image that is missing is an error naming the list file and line.
Its train pids are relabelled 0..N-1; here pids stay as the dataset numbers them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa

from deskpro.manifests.schema import (
    EXAMPLES_SHOWN,
    ManifestError,
    Row,
    ScanLog,
    build_table,
    dense_ids,
    is_image,
    require_dir,
)

# folder -> (split, subset); each folder's list is FOLDER-bbox.txt beside it
FOLDERS = {
    "train-set": ("train", "train"),
    "val-set-query": ("val", "query"),
    "val-set-gallery": ("val", "gallery"),
    "test-set-query": ("query", "query"),
    "test-set-gallery": ("gallery", "gallery"),
}
_NAME = re.compile(r"^P(\d+)_C(\d+)_([^_.]+)[_.]")


def scan(root: str | Path, dataset: str = "deepchange") -> pa.Table:
    """The manifest of a DeepChange folder `root` (the folder holding train-set/ and the lists)."""
    root = require_dir(Path(root), "dataset root folder")
    log = ScanLog(root=root, layout="DeepChange (P<pid>_C<cam>_<clothes>_....jpg,TRACKLET lists)")
    found: list[tuple[str, int, str, int, str, str]] = []  # path, pid, outfit, tracklet, split, subset
    missing: list[str] = []
    for folder, (split, subset) in FOLDERS.items():
        require_dir(root / folder, "image folder")
        for line_no, name, tracklet in _read_list(root / f"{folder}-bbox.txt"):
            match = _NAME.match(Path(name).name)
            if match is None or not is_image(name):
                log.mismatched.append(f"{folder}-bbox.txt line {line_no}: {name}")
                continue
            rel = f"{folder}/{name}"
            if not (root / rel).is_file():
                missing.append(f"{folder}-bbox.txt line {line_no}: {rel}")
                continue
            found.append((rel, int(match.group(1)), match.group(3), tracklet, split, subset))
    if missing:
        raise ManifestError(
            f"{root}: {len(missing)} listed image(s) missing, e.g. {'; '.join(missing[:EXAMPLES_SHOWN])}"
        )
    outfits = dense_ids((pid, outfit) for _, pid, outfit, _, _, _ in found)
    rows = [
        Row(path=rel, pid=pid, camid=tracklet, clothes_id=outfits[(pid, outfit)], split=split, subset=subset)
        for rel, pid, outfit, tracklet, split, subset in found
    ]
    return build_table(rows, dataset=dataset, log=log, splits=("train", "val", "query", "gallery"))


def _read_list(path: Path) -> list[tuple[int, str, int]]:
    """(line number, image name, tracklet) of each non-blank line of a `NAME,TRACKLET` list."""
    if not path.is_file():
        raise ManifestError(f"{path}: missing DeepChange list file")
    out = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            name, _, tracklet = line.partition(",")
            if not tracklet.strip().lstrip("-").isdigit():
                raise ManifestError(f"{path} line {line_no}: expected NAME,TRACKLET, got {line!r}")
            out.append((line_no, name.strip(), int(tracklet)))
    return out
