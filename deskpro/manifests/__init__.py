"""Dataset manifests: scan a dataset's own folder layout into one Parquet table of images.

`scan(dataset, root)` reads prcc, celeb-reid, celeb-reid-light, market1501 (any Market/Duke-style
set), the cloth-changing benchmarks ltcc, vc-clothes, deepchange and last, synthetic (the PRCC
layout written by `deskpro.synthetic.generator`), and table (a user's own images labelled by a CSV
file, `labels`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from deskpro.manifests import celeb_reid, deepchange, last, ltcc, market1501, prcc, table, vc_clothes
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
    "ltcc": ltcc.scan,
    "vc-clothes": vc_clothes.scan,
    "deepchange": deepchange.scan,
    "last": last.scan,
    "table": table.scan,
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


def scan(dataset: str, root: str | os.PathLike, labels: str | os.PathLike | None = None) -> pa.Table:
    """The manifest table of the dataset `dataset` stored in the folder `root`; `labels` is the
    CSV file of the table layout (and only of it)."""
    try:
        scanner = _SCANNERS[dataset]
    except KeyError:
        raise ManifestError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}") from None
    if dataset == "table":
        return scanner(Path(root), dataset=dataset, labels=labels)
    if labels is not None:
        raise ManifestError(f"--labels applies only to the table layout, not {dataset!r}")
    return scanner(Path(root), dataset=dataset)


def build_manifest(
    dataset: str, root: str | os.PathLike, out: str | os.PathLike, labels: str | os.PathLike | None = None
) -> pa.Table:
    """Scan `root` in `dataset`'s layout and write the manifest to `out` (the synthetic set is made
    beforehand by `deskpro.synthetic.prepare`)."""
    table = scan(dataset, root, labels)
    write_manifest(table, out)
    return table
