"""Runs one preprocessing stage over a manifest, on Ray or in-process, into resumable part files.

Layout: `WORK/manifest.parquet` (the manifest copied), `WORK/stages/<stage>/part-NNNNN.parquet`
(rows [i*part_size, (i+1)*part_size) of the manifest, in manifest order) and
`WORK/stages/<stage>/stage.json` (the fingerprint the parts were made with, and the last summary).

Resume: a part is written under a temporary name and renamed when complete; a rerun computes only
the parts that are missing. A fingerprint (options, sha256 of weights files, manifest content, part
size, upstream stage) that changed since the parts were written is refused unless `overwrite`.
Ray is imported only inside the functions that use it: the in-process executor needs no Ray.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import inspect
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from deskpro.data_manifests import SCHEMA as MANIFEST_SCHEMA
from deskpro.data_manifests import manifest_info, read_manifest, write_manifest
from deskpro.files import atomic_path, sha256_file
from deskpro.pipeline import images as imageio
from deskpro.pipeline.stages import (
    NO_NET_BACKENDS,
    STAGE_CLASSES,
    STAGE_NAMES,
    batch_to_table,
    check_options,
    table_to_batch,
)

FORMAT_VERSION = 1
EXECUTORS = ("ray", "local")
# Options that change where or how fast a stage runs, never its results: not fingerprinted.
UNFINGERPRINTED = frozenset({"device", "channels_last"})
ERRORS_SHOWN = 3
# CPUs per image-decoding task: decoding is light and I/O-bound, and a value different from the
# actors' keeps Ray from fusing decoding into the model actors, so it scales on its own.
DECODE_CPUS = 0.5
RAY_WRAPPERS = frozenset({"RayTaskError", "UserCodeException", "RayError", "RaySystemError"})


class StageError(RuntimeError):
    """A stage run that cannot start or did not finish cleanly; the message says what to do."""

    def __init__(self, message: str, summary: StageSummary | None = None) -> None:
        super().__init__(message)
        self.summary = summary


@dataclass(frozen=True)
class RunOptions:
    """How to run a stage (not what it computes): executor, partitioning, resources, policy."""

    part_size: int = 1000  # manifest rows per part file
    batch_size: int = 16  # rows per model call
    executor: str = "ray"  # "ray" or "local" (in-process loop, no Ray)
    ray_address: str | None = None  # None: start a local Ray; "auto" or "ray://host:10001": join a cluster
    num_actors: int = 1  # the most model replicas (actors) at once
    num_gpus: float | None = None  # GPUs per actor (fractional allowed); None: 1 if the cluster has GPUs
    num_cpus: float = 1.0  # CPUs per actor
    overwrite: bool = False  # recompute everything when the fingerprint changed
    max_errors: int | None = None  # more error rows than this fails the run (after writing)
    progress: bool = True

    def check(self) -> None:
        if self.part_size < 1 or self.batch_size < 1 or self.num_actors < 1:
            raise StageError("--part-size, --batch-size and --actors must be >= 1")
        if self.executor not in EXECUTORS:
            raise StageError(f"--executor {self.executor}: choose from {', '.join(EXECUTORS)}")


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

    @property
    def images_per_s(self) -> float:
        return self.rows_computed / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "images_per_s": round(self.images_per_s, 2)}

    def format(self) -> str:
        faces = f", faces found {self.faces}" if self.faces is not None else ""
        lines = [
            f"{self.stage}: {self.rows} rows, {self.errors} errors{faces}; "
            f"parts written {self.parts_written}, skipped {self.parts_skipped}; "
            f"{self.rows_computed} rows in {self.seconds:.1f} s "
            f"({self.images_per_s:.1f} images/s)"
        ]
        lines += [f"  error: {e}" for e in self.first_errors]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Paths and reading results


def stage_dir(work_dir: Path | str, stage: str) -> Path:
    return Path(work_dir) / "stages" / stage


def part_path(directory: Path, index: int) -> Path:
    return directory / f"part-{index:05d}.parquet"


def read_stage(work_dir: Path | str, stage: str, columns: list[str] | None = None) -> pa.Table:
    """All parts of a complete stage concatenated in manifest order; StageError if it is incomplete."""
    directory = stage_dir(work_dir, stage)
    info = _read_stage_json(directory)
    if not info or not info.get("complete"):
        raise StageError(f"{directory}: stage {stage} is not complete; run `deskpro {stage}`")
    files = [part_path(directory, i) for i in range(info["num_parts"])]
    return pa.concat_tables([pq.read_table(f, columns=columns) for f in files])


# ---------------------------------------------------------------------------------------------------------
# Fingerprints


def manifest_fingerprint(table: pa.Table, root: str) -> str:
    """sha256 of the manifest's rows and root (not its scan time: a rescan of the same data matches)."""
    digest = hashlib.sha256(root.encode())
    for name in MANIFEST_SCHEMA.names:
        digest.update(name.encode())
        digest.update(json.dumps(table.column(name).to_pylist()).encode())
    return digest.hexdigest()


def options_fingerprint(backend_options: Mapping[str, Any]) -> dict:
    """Backend options as stored in stage.json: weights paths become their sha256, device is dropped."""
    out = {}
    for key, value in sorted(backend_options.items()):
        if key in UNFINGERPRINTED:
            continue
        if key.endswith("weights") and value is not None:
            value = {"sha256": sha256_file(value)} if Path(value).is_file() else {"missing": str(value)}
        out[key] = value
    return out


def _read_stage_json(directory: Path) -> dict | None:
    path = directory / "stage.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StageError(f"{path}: unreadable ({exc}); delete it or rerun with --overwrite") from None


def _write_json(path: Path, data: dict) -> None:
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


# ---------------------------------------------------------------------------------------------------------
# Preparing a run


@dataclass
class _Plan:
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

    @property
    def num_parts(self) -> int:
        return len(self.sizes)


def _load_manifest(manifest_path: Path | str) -> tuple[pa.Table, str]:
    table = read_manifest(manifest_path)
    return table, manifest_info(table)["root"]


def _sync_work_manifest(work_dir: Path, table: pa.Table, root: str, overwrite: bool) -> str:
    """Copy the manifest into WORK (or check the copy there); returns its fingerprint."""
    fp = manifest_fingerprint(table, root)
    copy = work_dir / "manifest.parquet"
    if copy.is_file():
        if manifest_fingerprint(*_load_manifest(copy)) == fp:
            return fp
        if not overwrite:
            raise StageError(
                f"{copy}: the work dir holds a different manifest; rerun with --overwrite to replace it"
            )
    write_manifest(table, copy)
    return fp


def _upstream(
    stage: str, work_dir: Path, part_size: int, manifest_fp: str
) -> tuple[Path | None, dict | None]:
    """Restore's input: the complete detect stage made from the same manifest and part size."""
    if stage != "restore":
        return None, None
    up_dir = stage_dir(work_dir, "detect")
    info = _read_stage_json(up_dir)
    if not info or not info.get("complete"):
        raise StageError(f"{up_dir}: the detect stage is not complete; run `deskpro detect` first")
    if info["fingerprint"]["manifest"] != manifest_fp:
        raise StageError(f"{up_dir}: the detect stage was run on another manifest; rerun `deskpro detect`")
    if info["part_size"] != part_size:
        raise StageError(f"{up_dir}: detect used --part-size {info['part_size']}; restore must use the same")
    return up_dir, info["fingerprint"]


def _prepare_dir(out_dir: Path, fingerprint: dict, overwrite: bool) -> None:
    """Check stage.json against `fingerprint`; refuse a change unless overwrite (then clear the parts)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    old = _read_stage_json(out_dir)
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


def _complete_parts(out_dir: Path, sizes: list[int]) -> set[int]:
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


def _stage_kwargs(stage_class: type, backend_options: Mapping[str, Any], root: str) -> dict:
    kwargs = dict(backend_options)
    if "root" in inspect.signature(stage_class.__init__).parameters:
        kwargs.setdefault("root", root)
    return kwargs


def _plan(stage, manifest_path, work_dir, backend_options, opts, stage_class) -> tuple[_Plan, dict]:
    if stage not in STAGE_NAMES:
        raise StageError(f"unknown stage {stage!r}; choose from {', '.join(STAGE_NAMES)}")
    opts.check()
    work_dir = Path(work_dir)
    table, root = _load_manifest(manifest_path)
    manifest_fp = _sync_work_manifest(work_dir, table, root, opts.overwrite)
    upstream_dir, upstream_fp = _upstream(stage, work_dir, opts.part_size, manifest_fp)
    fingerprint = {
        "format_version": FORMAT_VERSION,
        "stage": stage,
        "options": options_fingerprint(backend_options),
        "manifest": manifest_fp,
        "part_size": opts.part_size,
        "upstream": upstream_fp,
    }
    out_dir = stage_dir(work_dir, stage)
    _prepare_dir(out_dir, fingerprint, opts.overwrite)
    num_parts = math.ceil(len(table) / opts.part_size)
    sizes = [min(opts.part_size, len(table) - i * opts.part_size) for i in range(num_parts)]
    done = _complete_parts(out_dir, sizes)
    cls = stage_class or STAGE_CLASSES[stage]
    plan = _Plan(
        stage,
        cls,
        _stage_kwargs(cls, backend_options, root),
        table,
        root,
        out_dir,
        opts.part_size,
        sizes,
        [i for i in range(num_parts) if i not in done],
        upstream_dir,
    )
    return plan, fingerprint


# ---------------------------------------------------------------------------------------------------------
# Collecting outputs into part files


class _PartCollector:
    """Groups output rows by part; writes a part (temp name, then rename) as soon as it is whole."""

    def __init__(self, plan: _Plan, bar: tqdm) -> None:
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

    def add(self, table: pa.Table) -> None:
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


# ---------------------------------------------------------------------------------------------------------
# Executors


def _source_tables(plan: _Plan, batch_size: int) -> Iterator[pa.Table]:
    """The input rows of the missing parts, as tables of at most batch_size rows, in manifest order."""
    for i in plan.missing:
        if plan.upstream_dir is not None:
            cols = list(plan.stage_class.input_columns)
            rows = pq.read_table(part_path(plan.upstream_dir, i), columns=cols)
        else:
            rows = plan.manifest.slice(i * plan.part_size, plan.part_size).select(["sample_id", "path"])
        for start in range(0, len(rows), batch_size):
            yield rows.slice(start, batch_size)


def _run_local(plan: _Plan, opts: RunOptions, collector: _PartCollector) -> None:
    stage = ArrowStage(plan.stage_class, plan.kwargs)
    for rows in _source_tables(plan, opts.batch_size):
        batch = table_to_batch(rows)
        if plan.stage_class.needs_images:
            batch = imageio.decode_batch(batch, root=plan.root)
        collector.add(stage(batch))


class ArrowStage:
    """The stage built once, each output batch returned as a typed Arrow table: Ray's actor, the loop's stage.

    Typed tables keep the part schema exact through Ray (a batch of all-null bytes would otherwise
    arrive as a null-typed column).
    """

    def __init__(self, stage_class: type, kwargs: dict) -> None:
        self.stage = stage_class(**kwargs)
        self.schema = stage_class.schema

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        return batch_to_table(self.stage(batch), self.schema)


def _wants_gpu(kwargs: dict) -> bool:
    backend = str(kwargs.get("backend", ""))
    return backend not in NO_NET_BACKENDS and str(kwargs.get("device", "auto")) != "cpu"


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Ray for one command: reuse a running one, join `address`, or start a quiet local one."""
    import ray

    if ray.is_initialized():
        yield
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reporting from a local start
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    else:
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    try:
        yield
    finally:
        ray.shutdown()


def _ray_source(plan: _Plan, batch_size: int):
    """The input dataset: manifest rows (ids and paths, small) from the driver; restore's input, which
    holds the face crops, read from detect's part files by the workers so that it streams."""
    import ray.data

    if plan.upstream_dir is None:
        return ray.data.from_arrow(list(_source_tables(plan, batch_size)))
    files = [str(part_path(plan.upstream_dir, i)) for i in plan.missing]
    return ray.data.read_parquet(files).select_columns(list(plan.stage_class.input_columns))


def _run_ray(plan: _Plan, opts: RunOptions, collector: _PartCollector) -> None:
    import ray
    import ray.data

    # ray.data configures its loggers on import; quiet its per-dataset INFO lines after that.
    logging.getLogger("ray.data").setLevel(logging.WARNING)

    with ray_session(opts.ray_address):
        ctx = ray.data.DataContext.get_current()
        saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
        # In-order output keeps at most about one part buffered on the driver; our tqdm bar replaces Ray's.
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = True, False
        try:
            num_gpus = opts.num_gpus
            if num_gpus is None:
                num_gpus = (
                    1.0 if _wants_gpu(plan.kwargs) and ray.cluster_resources().get("GPU", 0) > 0 else 0.0
                )
            ds = _ray_source(plan, opts.batch_size)
            if plan.stage_class.needs_images:
                ds = ds.map_batches(
                    imageio.decode_batch,
                    fn_kwargs={"root": plan.root},
                    batch_size=opts.batch_size,
                    num_cpus=DECODE_CPUS,
                )
            ds = ds.map_batches(
                ArrowStage,
                fn_constructor_kwargs={"stage_class": plan.stage_class, "kwargs": plan.kwargs},
                batch_size=opts.batch_size,
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=opts.num_actors),
                num_gpus=num_gpus or None,
                num_cpus=opts.num_cpus,
            )
            failure = None
            try:
                for table in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                    collector.add(table)
            except Exception as exc:  # re-raised below as a new exception
                # The collector's own StageError keeps its type, as in the local loop; a stage's
                # exception arrives wrapped by Ray, in a class that may also derive from StageError.
                if type(exc) is StageError:
                    failure = StageError(str(exc))
                else:
                    failure = RuntimeError(_describe(exc))
        finally:
            ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved
    if failure is not None:
        # Raised as a new exception holding text only, after dropping every reference to the failed
        # dataset: its actors are released by reference counting, and a caller keeping the original
        # exception (whose traceback holds the executor) would keep them and their CPUs/GPUs busy in
        # a reused Ray.
        del ds
        gc.collect()
        raise failure


# ---------------------------------------------------------------------------------------------------------
# Running


def _describe(exc: BaseException) -> str:
    """'Type: first line' of the error that started it all.

    Ray wraps a stage's own exception (RayTaskError, UserCodeException) and carries the original only
    as text in the remote traceback: the first error line there that is not a wrapper is the cause.
    """
    for name, message in re.findall(r"^(\w+(?:Error|Exception)): (.*)$", str(exc), flags=re.MULTILINE):
        if name not in RAY_WRAPPERS:
            return f"{name}: {message.strip()[:300]}"
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "cause", None) or exc.__cause__
        if not isinstance(inner, BaseException):
            break
        exc = inner
    first_line = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}: {first_line}"


def _summarise(plan: _Plan, collector_written: int, rows_computed: int, seconds: float) -> StageSummary:
    """Totals over every part of the stage (this run's and earlier ones')."""
    files = [part_path(plan.out_dir, i) for i in range(plan.num_parts)]
    cols = ["error", "has_face"] if "has_face" in plan.stage_class.schema.names else ["error"]
    table = pa.concat_tables([pq.read_table(f, columns=cols) for f in files]) if files else None
    errors = [] if table is None else [e for e in table.column("error").to_pylist() if e is not None]
    faces = None
    if table is not None and "has_face" in cols:
        faces = int(pc.sum(table.column("has_face")).as_py() or 0)
    return StageSummary(
        stage=plan.stage,
        rows=len(plan.manifest),
        errors=len(errors),
        faces=faces,
        parts_written=collector_written,
        parts_skipped=plan.num_parts - len(plan.missing),
        rows_computed=rows_computed,
        seconds=seconds,
        first_errors=errors[:ERRORS_SHOWN],
    )


def run_stage(
    stage: str,
    manifest_path: Path | str,
    work_dir: Path | str,
    backend_options: Mapping[str, Any] | None = None,
    run_options: RunOptions = RunOptions(),
    *,
    stage_class: type | None = None,
    flag_prefix: str = "",
) -> StageSummary:
    """Run `stage` ("parse", "detect", "restore") over the manifest into WORK/stages/<stage>/.

    `backend_options` are the stage class's constructor arguments (backend, weights, ...; the image
    root comes from the manifest). `stage_class` replaces the stage's class (same contract), for
    stand-ins in tests and benchmarks. `flag_prefix` is how the command prefixes this stage's flags
    in error messages ("parse-" for `preprocess --parse-weights`). Raises StageError for refused or
    failed runs and when the stage holds more than `run_options.max_errors` error rows (after
    writing everything); StageConfigError for an unknown backend or a missing weights file.
    """
    backend_options = dict(backend_options or {})
    if stage_class is None and stage in STAGE_NAMES:
        check_options(stage, backend_options, flag_prefix)
    plan, fingerprint = _plan(stage, manifest_path, work_dir, backend_options, run_options, stage_class)
    info = {
        "format_version": FORMAT_VERSION,
        "stage": stage,
        "fingerprint": fingerprint,
        "part_size": plan.part_size,
        "num_parts": plan.num_parts,
        "complete": False,
    }
    if stage == "parse":
        info["label_set"] = backend_options.get("labels", "lip")
    _write_json(plan.out_dir / "stage.json", info)
    todo = sum(plan.sizes[i] for i in plan.missing)
    start = time.perf_counter()
    with tqdm(total=todo, desc=stage, unit="img", disable=not run_options.progress) as bar:
        collector = _PartCollector(plan, bar)
        if plan.missing:
            try:
                (_run_ray if run_options.executor == "ray" else _run_local)(plan, run_options, collector)
            except StageError:
                raise
            except Exception as exc:
                raise StageError(
                    f"{stage}: failed after writing {collector.written} of {len(plan.missing)} missing parts "
                    f"({_describe(exc)}); rerun the same command to resume"
                ) from exc
        collector.finish()
    summary = _summarise(plan, collector.written, todo, time.perf_counter() - start)
    _write_json(plan.out_dir / "stage.json", {**info, "complete": True, "summary": summary.to_dict()})
    if run_options.max_errors is not None and summary.errors > run_options.max_errors:
        raise StageError(
            f"{stage}: {summary.errors} error rows, more than --max-errors {run_options.max_errors}; first: "
            + "; ".join(summary.first_errors),
            summary,
        )
    return summary


def run_preprocess(
    manifest_path: Path | str,
    work_dir: Path | str,
    backend_options: Mapping[str, Mapping[str, Any]],
    run_options: RunOptions = RunOptions(),
) -> list[StageSummary]:
    """parse, detect and restore in order with the same run options; `backend_options[stage]` each.

    Every stage's options (backends, weights files) are checked before anything runs, so that a
    wrong restore weights path fails at once rather than after hours of parsing.
    """
    for stage in STAGE_NAMES:
        check_options(stage, dict(backend_options.get(stage, {})), f"{stage}-")
    summaries = []
    session = (
        ray_session(run_options.ray_address) if run_options.executor == "ray" else contextlib.nullcontext()
    )
    with session:
        for stage in STAGE_NAMES:
            summaries.append(
                run_stage(
                    stage,
                    manifest_path,
                    work_dir,
                    backend_options.get(stage, {}),
                    run_options,
                    flag_prefix=f"{stage}-",
                )
            )
    return summaries
