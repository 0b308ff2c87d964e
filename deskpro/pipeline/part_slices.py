"""Restore's input on Ray: slices of the upstream (detect) part files that the stage's workers read.

Ray Data's own Parquet reader (Ray 2.60) runs a listing task of one CPU, which starts footer-reading
actors that each need a free CPU to be placed. An actor pool that holds every CPU of the cluster
starves them, and the stage waits forever (issue 25: `deskpro preprocess` hung in restore when
its pool started every actor that fits). Here the dataset holds only (part file, first row, rows)
per batch and the stage's own actors or tasks read the rows, so that nothing but the stage asks
Ray for a CPU.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from deskpro.pipeline.plan import StagePlan, part_path
from deskpro.pipeline.stages import table_to_batch

SLICE_SCHEMA = pa.schema([("part", pa.string()), ("start", pa.int64()), ("rows", pa.int64())])


def slice_tables(plan: StagePlan, batch_size: int) -> list[pa.Table]:
    """Per missing part, a table with one row per batch of at most `batch_size` rows, in order."""
    assert plan.upstream_dir is not None, "only a stage that reads an upstream stage's parts"
    tables = []
    for i in plan.missing:
        starts = list(range(0, plan.sizes[i], batch_size))
        rows = [min(batch_size, plan.sizes[i] - s) for s in starts]
        path = str(part_path(plan.upstream_dir, i))
        tables.append(
            pa.table({"part": [path] * len(starts), "start": starts, "rows": rows}, schema=SLICE_SCHEMA)
        )
    return tables


@functools.lru_cache(maxsize=1)
def _read_part(path: str, columns: tuple[str, ...], mtime_ns: int, size: int) -> pa.Table:
    # One part kept per worker process: an actor gets the batches of a part one after another, and
    # reads the file once. The file's mtime and size are in the key: a rewritten part is read again.
    return pq.read_table(path, columns=list(columns))


def read_slices(batch: dict[str, np.ndarray], columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The stage's input batch for the slices in `batch` (as Ray passes them: numpy arrays)."""
    pieces = []
    for path, start, rows in zip(batch["part"], batch["start"], batch["rows"]):
        path, start, rows = str(path), int(start), int(rows)
        stat = os.stat(path)
        piece = _read_part(path, tuple(columns), stat.st_mtime_ns, stat.st_size).slice(start, rows)
        if len(piece) != rows:
            raise ValueError(f"{path}: fewer rows than its stage.json says; rerun the stage that wrote it")
        pieces.append(piece)
    return table_to_batch(pa.concat_tables(pieces))
