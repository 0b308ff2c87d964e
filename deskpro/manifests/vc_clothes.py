"""Scan the VC-Clothes folder layout into a manifest table.

Layout: `{train,query,gallery}/PID-CAM-CLOTHES-IDX.jpg` (e.g. `0001-01-02-05.jpg`). As
Simple-CCReID's loader reads it: pid = PID, camid = CAM - 1, the outfit is (PID, CLOTHES): the
clothes id is a dense int per pair (sorted, unique over the manifest). subset = split. The
camera-subset protocols (cameras 2 and 3, cameras 3 and 4) are evaluation protocols
(`deskpro.train.protocols`), not separate manifests.

Where this differs from Simple-CCReID (`data/datasets/vcclothes.py`): its pattern
`(\\d+)-(\\d+)-(\\d+)-(\\d+)` is searched in the whole path, so a root such as
`/data/2021-03-04-05/VC-Clothes` gives every image the same labels; here it applies to the file
name alone. Its outfit key joins the PID and CLOTHES strings without a separator ("1"+"11" ==
"11"+"1" where widths vary); here it is the pair of numbers. Train pids stay unrelabelled.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa

from deskpro.manifests.schema import Row, ScanLog, build_table, dense_ids, list_images, require_dir

SPLIT_FOLDERS = {"train": "train", "query": "query", "gallery": "gallery"}
_NAME = re.compile(r"^(\d+)-(\d+)-(\d+)-(\d+)\.[^.]+$")


def scan(root: str | Path, dataset: str = "vc-clothes") -> pa.Table:
    """The manifest of a VC-Clothes folder `root` (the folder holding train/, query/, gallery/)."""
    root = require_dir(Path(root), "dataset root folder")
    log = ScanLog(root=root, layout="VC-Clothes (PID-CAM-CLOTHES-IDX.jpg)")
    found: list[tuple[str, int, int, int, str]] = []  # path, pid, camera, clothes, split
    for split, folder in SPLIT_FOLDERS.items():
        for name, rel in list_images(require_dir(root / folder, "split folder"), root, log):
            match = _NAME.match(name)
            if match is None or int(match.group(2)) < 1:
                log.mismatched.append(rel)
                continue
            pid, camera, clothes, _ = (int(g) for g in match.groups())
            found.append((rel, pid, camera, clothes, split))
    outfits = dense_ids((pid, clothes) for _, pid, _, clothes, _ in found)
    rows = [
        Row(
            path=rel, pid=pid, camid=camera - 1, clothes_id=outfits[(pid, clothes)], split=split, subset=split
        )
        for rel, pid, camera, clothes, split in found
    ]
    return build_table(rows, dataset=dataset, log=log, splits=SPLIT_FOLDERS)
