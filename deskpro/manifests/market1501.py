"""Scan a Market-1501 / DukeMTMC-reID style folder layout into a manifest table.

Layout: `bounding_box_train`, `query`, `bounding_box_test` holding `PID_cC[sS]_*.jpg`. As the
community loaders (deep-person-reid) read it: pid -1 marks junk images, skipped and counted; pid 0
(distractors) is kept; camid = C - 1; there are no clothes labels (clothes_id = -1). subset = split.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa

from deskpro.manifests.schema import Row, ScanLog, build_table, list_images, require_dir

SPLIT_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
_NAME = re.compile(r"^(-?\d+)_c(\d+)(?:s\d+)?_.*\.[^.]+$")
JUNK_PID = -1


def scan(root: str | Path, dataset: str = "market1501") -> pa.Table:
    """The manifest of a Market/Duke-style folder `root`."""
    root = require_dir(Path(root), "dataset root folder")
    log = ScanLog(root=root, layout="Market-1501 (PID_cC[sS]_*.jpg)")
    rows = []
    for split, folder in SPLIT_FOLDERS.items():
        for name, rel in list_images(require_dir(root / folder, "split folder"), root, log):
            match = _NAME.match(name)
            if match is None or int(match.group(2)) < 1:
                log.mismatched.append(rel)
                continue
            pid = int(match.group(1))
            if pid == JUNK_PID:
                log.junk += 1
                continue
            camid = int(match.group(2)) - 1
            rows.append(Row(path=rel, pid=pid, camid=camid, clothes_id=-1, split=split, subset=split))
    return build_table(rows, dataset=dataset, log=log, splits=SPLIT_FOLDERS)
