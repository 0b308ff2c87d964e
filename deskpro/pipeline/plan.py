"""A stage run's plan and its part files: options, fingerprints, the collector, the in-process loop.

Layout: `WORK/manifest.parquet` (the manifest copied), `WORK/stages/<stage>/part-NNNNN.parquet`
(rows [i*part_size, (i+1)*part_size) of the manifest, in manifest order) and
`WORK/stages/<stage>/stage.json` (the fingerprint the parts were made with, and the last summary).
A part is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from deskpro.common import images
from deskpro.common.files import atomic_path, sha256_file
from deskpro.common.threads import apply_threads, requested_threads
from deskpro.manifests import SCHEMA as MANIFEST_SCHEMA
from deskpro.pipeline.options import StageRunOptions
from deskpro.pipeline.stages import (
    batch_to_table,
    table_to_batch,
)

FORMAT_VERSION = 1


class StageError(RuntimeError):
    """A stage run that cannot start or did not finish cleanly; the message says what to do."""

    def __init__(self, message: str, summary: StageSummary | None = None) -> None:
        super().__init__(message)
        self.summary = summary


@dataclass
class StageSummary:
    """What a stage run did: totals over all its parts, and this run's own work and speed."""

    stage: str
    rows: int
    errors: int
    faces: int | None  # detect only
    parts_written: int
    parts_skipped: int
    rows_computed: int
    seconds: float
    first_errors: list[str] = field(default_factory=list)
    executor: str = ""  # the executor that ran it ("local", "ray"), with how auto chose, if it did
    first_rows_seconds: float | None = None  # from the start to the first computed rows (start-up)
    first_rows: int = 0  # how many rows came back then (the first batch)

    @property
    def images_per_s(self) -> float:
        return self.rows_computed / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "images_per_s": round(self.images_per_s, 2)}

    def format(self) -> str:
        faces = f", faces found {self.faces}" if self.faces is not None else ""
        head = f"{self.stage}: {self.rows} rows, {self.errors} errors{faces}; "
        if self.rows_computed == 0:
            work = f"nothing to do: every one of {self.parts_skipped} parts was already written"
        else:
            work = (
                f"parts written {self.parts_written}, skipped {self.parts_skipped}; "
                f"{self.rows_computed} rows in {self.seconds:.1f} s"
            )
            start = self.first_rows_seconds
            if start is not None and self.seconds - start > 0 and self.rows_computed > self.first_rows:
                work += f" (first rows after {start:.1f} s, then {self._steady_rate():.1f} images/s)"
            else:
                work += f" ({self.images_per_s:.1f} images/s)"
        ran = f" [{self.executor}]" if self.executor else ""
        lines = [head + work + ran]
        lines += [f"  error: {e}" for e in self.first_errors]
        return "\n".join(lines)

    def _steady_rate(self) -> float:
        """Images per second after the first rows came back: the stage's speed without start-up."""
        return (self.rows_computed - self.first_rows) / (self.seconds - (self.first_rows_seconds or 0.0))


def stage_dir(work_dir: Path | str, stage: str) -> Path:
    return Path(work_dir) / "stages" / stage


def part_path(directory: Path, index: int) -> Path:
    return directory / f"part-{index:05d}.parquet"


def manifest_fingerprint(table: pa.Table, root: str) -> str:
    """sha256 of the manifest's rows and root (not its scan time: a rescan of the same data matches)."""
    digest = hashlib.sha256(root.encode())
    for name in MANIFEST_SCHEMA.names:
        digest.update(name.encode())
        digest.update(json.dumps(table.column(name).to_pylist()).encode())
    return digest.hexdigest()


def options_fingerprint(options) -> dict:
    """A stage's options (deskpro.pipeline.options) as stored in stage.json: the fields that change
    results (not device or channels_last), weights paths replaced by the files' sha256."""
    out = {}
    for key, value in sorted(options.fingerprinted().items()):
        if key.endswith("weights") and value is not None:
            value = {"sha256": sha256_file(value)} if Path(value).is_file() else {"missing": str(value)}
        out[key] = value
    return out


def read_stage_json(directory: Path) -> dict | None:
    path = directory / "stage.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StageError(f"{path}: unreadable ({exc}); delete it or rerun with --overwrite") from None


def write_json(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Names of the fingerprint entries that differ, nested ones dotted (e.g. options.min_size)."""
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict) and key == "options":
            changed += _changed_keys(a, b, f"{prefix}{key}.")
        else:
            changed.append(f"{prefix}{key}")
    return changed


@dataclass
class StagePlan:
    """Everything a run needs, resolved on the driver before any work starts."""

    stage: str
    stage_class: type
    kwargs: dict
    manifest: pa.Table
    root: str
    out_dir: Path
    part_size: int
    sizes: list[int]  # rows of each part
    missing: list[int]
    upstream_dir: Path | None  # restore reads detect's parts
    max_pixels: int | None = None  # images larger than this are error rows (stages that read images)

    @property
    def num_parts(self) -> int:
        return len(self.sizes)

    @property
    def decode_kwargs(self) -> dict:
        """The keyword arguments of images.decode_batch for this plan's images."""
        return {"root": self.root, "max_pixels": self.max_pixels}


class PartCollector:
    """Groups output rows by part; writes a part (temp name, then rename) as soon as it is whole."""

    def __init__(self, plan: StagePlan, bar: tqdm) -> None:
        self.out_dir = plan.out_dir
        self.expected: dict[int, list[str]] = {}
        self.owner: dict[str, int] = {}
        ids = plan.manifest.column("sample_id")
        for i in plan.missing:
            part_ids = ids.slice(i * plan.part_size, plan.part_size).to_pylist()
            self.expected[i] = part_ids
            self.owner.update(dict.fromkeys(part_ids, i))
        self.pending: dict[int, list[pa.Table]] = {i: [] for i in plan.missing}
        self.written = 0
        self.bar = bar
        self.first_rows_at: float | None = None  # time.perf_counter() of the first rows back
        self.first_rows = 0

    def add(self, table: pa.Table) -> None:
        if self.first_rows_at is None:
            self.first_rows_at, self.first_rows = time.perf_counter(), len(table)
        ids = table.column("sample_id").to_pylist()
        parts = np.array([self.owner.get(s, -1) for s in ids], dtype=np.int64)
        for part in np.unique(parts).tolist():
            if part not in self.pending:  # -1: no sample of a missing part; else a part already written
                raise StageError(f"{self.out_dir}: the stage returned duplicate or foreign rows")
            self.pending[part].append(table.take(pa.array(np.flatnonzero(parts == part))))
            if sum(map(len, self.pending[part])) >= len(self.expected[part]):
                self._write(part)
        self.bar.update(len(table))

    def _write(self, part: int) -> None:
        table = pa.concat_tables(self.pending.pop(part))
        position = {s: k for k, s in enumerate(self.expected[part])}
        order = [position[s] for s in table.column("sample_id").to_pylist()]
        if sorted(order) != list(range(len(self.expected[part]))):
            raise StageError(f"{self.out_dir}: part {part}: the stage returned duplicate or foreign rows")
        table = table.take(pa.array(np.argsort(order)))
        final = part_path(self.out_dir, part)
        with atomic_path(final) as tmp:  # ".part-*.tmp", which _prepare clears after a crash
            pq.write_table(table, tmp)
        self.written += 1

    def finish(self) -> None:
        if self.pending:
            raise StageError(
                f"{self.out_dir}: parts {sorted(self.pending)[:5]} did not receive all their rows"
            )


def complete_parts(out_dir: Path, sizes: list[int]) -> set[int]:
    """Parts whose file exists with the expected number of rows (anything else is recomputed)."""
    done = set()
    for i, n in enumerate(sizes):
        path = part_path(out_dir, i)
        if path.is_file():
            try:
                if pq.ParquetFile(path).metadata.num_rows == n:
                    done.add(i)
                    continue
            except (OSError, pa.ArrowException):
                pass
            path.unlink()
    return done


def prepare_stage_dir(out_dir: Path, fingerprint: dict, overwrite: bool) -> None:
    """Check stage.json against `fingerprint`; refuse a change unless overwrite (then clear the parts)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    old = read_stage_json(out_dir)
    parts = sorted(out_dir.glob("part-*.parquet"))
    has_results = bool(parts) or bool(old and old.get("complete"))
    changed = old is None or old.get("fingerprint") != fingerprint
    if changed and has_results and not overwrite:
        changed_keys = _changed_keys(old["fingerprint"], fingerprint) if old else ["stage.json missing"]
        raise StageError(
            f"{out_dir}: parts were made with other settings (changed: {', '.join(changed_keys)}); "
            "rerun with --overwrite to recompute them"
        )
    if overwrite:  # --overwrite always recomputes, whether or not the settings changed
        for p in parts:
            p.unlink()
    for tmp in out_dir.glob(".part-*.tmp"):  # leftovers of an interrupted run
        tmp.unlink()


def source_tables(plan: StagePlan, batch_size: int) -> Iterator[pa.Table]:
    """The input rows of the missing parts, as tables of at most batch_size rows, in manifest order."""
    for i in plan.missing:
        if plan.upstream_dir is not None:
            cols = list(plan.stage_class.input_columns)
            rows = pq.read_table(part_path(plan.upstream_dir, i), columns=cols)
        else:
            rows = plan.manifest.slice(i * plan.part_size, plan.part_size).select(["sample_id", "path"])
        for start in range(0, len(rows), batch_size):
            yield rows.slice(start, batch_size)


class ArrowStage:
    """The stage built once, each output batch returned as a typed Arrow table: Ray's actor, the loop's stage.

    Typed tables keep the part schema exact through Ray (a batch of all-null bytes would otherwise
    arrive as a null-typed column).
    """

    def __init__(self, stage_class: type, kwargs: dict, threads: int | None = None) -> None:
        if threads is not None:  # a Ray actor or task: the CPUs it was given (or --threads)
            apply_threads(requested=requested_threads() or threads)
        self.stage = stage_class(**kwargs)
        self.schema = stage_class.schema

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        return batch_to_table(self.stage(batch), self.schema)


def run_local(plan: StagePlan, opts: StageRunOptions, collector: PartCollector) -> None:
    apply_threads(0)  # the CPUs this process may use (affinity, cgroup quota), or --threads
    stage = ArrowStage(plan.stage_class, plan.kwargs)
    for rows in source_tables(plan, opts.batch_size):
        batch = table_to_batch(rows)
        if plan.stage_class.needs_images:
            batch = images.decode_batch(batch, **plan.decode_kwargs)
        collector.add(stage(batch))
