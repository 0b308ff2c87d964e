"""Scan the LTCC folder layout (LTCC_ReID) into a manifest table.

Layout: `{train,query,test}/PID_CLOTHES_cCAM_FRAME.png` (test/ is the gallery; the `info/` lists
that ship beside them are not needed). As Simple-CCReID's loader reads it: pid = PID, camid =
CAM - 1, and the outfit is the pair (PID, CLOTHES): the clothes id is a dense int per pair
(sorted, unique over the manifest; a pair seen in query and gallery shares it). subset = split.

Where this differs from Simple-CCReID (`data/datasets/ltcc.py`): its two regular expressions
(`(\\d+)_(\\d+)_c(\\d+)` and `(\\w+)_c`) are searched in the whole path, so a root folder such as
`/data/my_cc/LTCC_ReID` makes every clothes id "my" (and a root with `12_3_c4` in it gives every
image that pid); here they apply to the file name alone. Its train pids are relabelled 0..N-1;
here pids stay as the dataset numbers them (the trainer relabels).
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa

from deskpro.manifests.schema import Row, ScanLog, build_table, dense_ids, list_images, require_dir

SPLIT_FOLDERS = {"train": "train", "query": "query", "gallery": "test"}
_NAME = re.compile(r"^(\d+)_(\d+)_c(\d+)(?:_[^.]*)?\.[^.]+$")


def scan(root: str | Path, dataset: str = "ltcc") -> pa.Table:
    """The manifest of an LTCC folder `root` (the folder holding train/, query/ and test/)."""
    root = require_dir(Path(root), "dataset root folder")
    log = ScanLog(root=root, layout="LTCC (PID_CLOTHES_cCAM_FRAME.png)")
    found: list[tuple[str, int, int, int, str]] = []  # path, pid, clothes, camera, split
    for split, folder in SPLIT_FOLDERS.items():
        for name, rel in list_images(require_dir(root / folder, "split folder"), root, log):
            match = _NAME.match(name)
            if match is None or int(match.group(3)) < 1:
                log.mismatched.append(rel)
                continue
            pid, clothes, camera = (int(g) for g in match.groups())
            found.append((rel, pid, clothes, camera, split))
    outfits = dense_ids((pid, clothes) for _, pid, clothes, _, _ in found)
    rows = [
        Row(
            path=rel, pid=pid, camid=camera - 1, clothes_id=outfits[(pid, clothes)], split=split, subset=split
        )
        for rel, pid, clothes, camera, split in found
    ]
    return build_table(rows, dataset=dataset, log=log, splits=SPLIT_FOLDERS)
