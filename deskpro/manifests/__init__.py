"""Dataset manifests: scan a dataset's own folder layout into one Parquet table of images.

`scan(dataset, root)` reads prcc, celeb-reid, celeb-reid-light, market1501 (any Market/Duke-style
set) and synthetic (the PRCC layout written by `deskpro.synthetic.generator`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from deskpro.manifests import celeb_reid, market1501, prcc
from deskpro.manifests.schema import (
    SCHEMA,
    ManifestError,
    format_stats,
    is_manifest_file,
    manifest_info,
    read_manifest,
    skipped_counts,
    write_manifest,
)

_SCANNERS = {
    "prcc": prcc.scan,
    "celeb-reid": celeb_reid.scan,
    "celeb-reid-light": celeb_reid.scan,
    "market1501": market1501.scan,
    "synthetic": prcc.scan,
}
DATASETS: tuple[str, ...] = tuple(_SCANNERS)

__all__ = [
    "DATASETS",
    "SCHEMA",
    "ManifestError",
    "build_manifest",
    "format_stats",
    "is_manifest_file",
    "manifest_info",
    "read_manifest",
    "scan",
    "skipped_counts",
    "write_manifest",
]


def scan(dataset: str, root: str | os.PathLike) -> pa.Table:
    """The manifest table of the dataset `dataset` stored in the folder `root`."""
    try:
        scanner = _SCANNERS[dataset]
    except KeyError:
        raise ManifestError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}") from None
    return scanner(Path(root), dataset=dataset)


def build_manifest(dataset: str, root: str | os.PathLike, out: str | os.PathLike) -> pa.Table:
    """Scan `root` in `dataset`'s layout and write the manifest to `out` (the synthetic set is made
    beforehand by `deskpro.synthetic.prepare`)."""
    table = scan(dataset, root)
    write_manifest(table, out)
    return table
