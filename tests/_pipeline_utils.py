"""Test helpers for the preprocessing stages and runner: a tiny synthetic dataset and a failing stage."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from deskpro.manifests import scan, write_manifest
from deskpro.pipeline.plan import StageError, part_path, read_stage_json, stage_dir
from deskpro.synthetic import generator as synthetic

# 6 identities x 3 cameras x 1 image = 18 small images: enough for several parts, fast on 2 cores.
SYNTH = {"identities": 6, "images_per_camera": 1, "image_size": (96, 32), "seed": 3}
# The oracle's faces are small at 96x32: a permissive policy keeps every true face.
LOOSE_POLICY = {"min_score": 0.0, "min_size": 0.0, "max_center_y": 1.0}


def make_dataset(base: Path, name: str = "synth", corrupt: int | None = None) -> tuple[Path, Path]:
    """A synthetic dataset under base/name and its manifest; `corrupt` truncates that manifest row's JPEG.

    Returns (root, manifest_path).
    """
    root = base / name
    cache = base / "_pristine"
    if not cache.exists():
        synthetic.generate(cache, progress=False, **SYNTH)
    shutil.copytree(cache, root)
    table = scan("synthetic", root)
    if corrupt is not None:
        path = root / table.column("path")[corrupt].as_py()
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    manifest = base / f"{name}.parquet"
    write_manifest(table, manifest)
    return root, manifest


def make_failing_stage(base: type, sample_id: str) -> type:
    """A subclass of stage class `base` whose batch holding `sample_id` raises: a job killed midway."""

    class Failing(base):
        fail_on = sample_id

        def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            if self.fail_on in set(batch["sample_id"]):
                raise ConnectionError(f"simulated crash at {self.fail_on}")  # a lost worker
            return super().__call__(batch)

    Failing.__name__ = f"Failing{base.__name__}"
    return Failing


def read_stage(work_dir: Path | str, stage: str, columns: list[str] | None = None) -> pa.Table:
    """All parts of a complete stage concatenated in manifest order; StageError if it is incomplete."""
    directory = stage_dir(work_dir, stage)
    info = read_stage_json(directory)
    if not info or not info.get("complete"):
        raise StageError(f"{directory}: stage {stage} is not complete; run `deskpro {stage}`")
    files = [part_path(directory, i) for i in range(info["num_parts"])]
    return pa.concat_tables([pq.read_table(f, columns=columns) for f in files])
