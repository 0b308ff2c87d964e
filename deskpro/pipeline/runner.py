"""Runs one preprocessing stage over a manifest, on Ray or in-process, into resumable part files.

Resume: a rerun computes only the parts that are missing (deskpro.pipeline.plan). A fingerprint
(options, sha256 of weights files, manifest content, part size, upstream stage) that changed since
the parts were written is refused unless `overwrite`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from deskpro.common.locks import output_lock
from deskpro.common.stops import StopSignals
from deskpro.common.torch_utils import resolve_device
from deskpro.manifests import manifest_info, read_manifest, write_manifest
from deskpro.pipeline import backends
from deskpro.pipeline.options import (
    AUTO_LOCAL_MAX_ROWS,
    STAGE_NAMES,
    StageConfigError,
    make_options,
)
from deskpro.pipeline.plan import (
    FORMAT_VERSION,
    PartCollector,
    StageError,
    StagePlan,
    StageRunOptions,
    StageSummary,
    complete_parts,
    manifest_fingerprint,
    options_fingerprint,
    part_path,
    prepare_stage_dir,
    read_stage_json,
    run_local,
    stage_dir,
    write_json,
)
from deskpro.pipeline.ray_executor import describe_error, ray_session, run_ray
from deskpro.pipeline.stages import STAGE_CLASSES

# Failures that a rerun can get past (preemption, a lost node or connection, memory pressure).
TRANSIENT_ERRORS = frozenset(
    {
        "OSError",
        "ConnectionError",
        "TimeoutError",
        "MemoryError",
        "OutOfMemoryError",
        "RaySystemError",
        "ActorDiedError",
        "ActorUnavailableError",
        "NodeDiedError",
        "ObjectLostError",
        "OwnerDiedError",
        "WorkerCrashedError",
        "GetTimeoutError",
    }
)
ERRORS_SHOWN = 3


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
    info = read_stage_json(up_dir)
    if not info or not info.get("complete"):
        raise StageError(f"{up_dir}: the detect stage is not complete; run `deskpro detect` first")
    if info["fingerprint"]["manifest"] != manifest_fp:
        raise StageError(f"{up_dir}: the detect stage was run on another manifest; rerun `deskpro detect`")
    if info["part_size"] != part_size:
        raise StageError(f"{up_dir}: detect used --part-size {info['part_size']}; restore must use the same")
    return up_dir, info["fingerprint"]


def _refuse_stale_upstream(stage: str, out_dir: Path, upstream_fp: dict | None, overwrite: bool) -> None:
    """Restore parts made from a detect run that has since been redone: refused, naming what to rerun."""
    old = read_stage_json(out_dir)
    if upstream_fp is None or overwrite or not old or "fingerprint" not in old:
        return
    if old["fingerprint"].get("upstream") != upstream_fp and any(out_dir.glob("part-*.parquet")):
        raise StageError(
            f"{out_dir}: these {stage} parts were made from an earlier detect run, and the detect stage "
            f"has been rerun since (other options or weights); rerun `deskpro {stage}` with --overwrite"
        )


def stage_options(stage: str, backend_options, flag_prefix: str = ""):
    """The stage's options dataclass (from a mapping of its fields, checked), the backend's defaults
    filled in; StageConfigError naming the flag for an unknown backend or a value out of range."""
    if stage not in STAGE_NAMES:
        raise StageError(f"unknown stage {stage!r}; choose from {', '.join(STAGE_NAMES)}")
    if isinstance(backend_options, Mapping):
        options = make_options(stage, dict(backend_options), flag_prefix)
    else:
        options = backend_options
    return backends.get(stage, options.backend, flag_prefix).resolve(options)


def check_stage(stage: str, options, flag_prefix: str = "", *, device_here: bool = True) -> None:
    """On the driver, before any work: the device exists and every checkpoint file loads.

    Deterministic failures are StageConfigErrors naming the flag, never a failed run to resume.
    `device_here=False` (joining a cluster) checks the device's spelling only: the GPUs are there.
    """
    backend = backends.get(stage, options.backend, flag_prefix)
    if backend.needs_gpu:
        try:
            resolve_device(options.device, check_available=device_here)
        except ValueError as exc:
            raise StageConfigError(str(exc)) from None
    backends.load_checked(backend, options, flag_prefix)


def _plan(stage, manifest_path, work_dir, options, opts, stage_class) -> tuple[StagePlan, dict]:
    opts.check()
    work_dir = Path(work_dir)
    table, root = _load_manifest(manifest_path)
    manifest_fp = _sync_work_manifest(work_dir, table, root, opts.overwrite)
    upstream_dir, upstream_fp = _upstream(stage, work_dir, opts.part_size, manifest_fp)
    fingerprint = {
        "format_version": FORMAT_VERSION,
        "stage": stage,
        "options": options_fingerprint(options),
        "manifest": manifest_fp,
        "part_size": opts.part_size,
        "upstream": upstream_fp,
    }
    out_dir = stage_dir(work_dir, stage)
    _refuse_stale_upstream(stage, out_dir, upstream_fp, opts.overwrite)
    prepare_stage_dir(out_dir, fingerprint, opts.overwrite)
    num_parts = math.ceil(len(table) / opts.part_size)
    sizes = [min(opts.part_size, len(table) - i * opts.part_size) for i in range(num_parts)]
    done = complete_parts(out_dir, sizes)
    cls = stage_class or STAGE_CLASSES[stage]
    plan = StagePlan(
        stage,
        cls,
        {**{f.name: getattr(options, f.name) for f in dataclasses.fields(options)}, "root": root},
        table,
        root,
        out_dir,
        opts.part_size,
        sizes,
        [i for i in range(num_parts) if i not in done],
        upstream_dir,
        getattr(options, "max_pixels", None),
    )
    return plan, fingerprint


def choose_executor(run_options: StageRunOptions, rows: int | None) -> StageRunOptions:
    """`executor="auto"` made concrete: Ray when a cluster is named (--ray-address or RAY_ADDRESS) or
    the work is larger than AUTO_LOCAL_MAX_ROWS (or unknown, `rows` None), else the in-process loop.
    Other executors are kept as given."""
    if run_options.executor != "auto":
        return run_options
    cluster = run_options.ray_address or os.environ.get("RAY_ADDRESS")
    small = rows is not None and rows <= AUTO_LOCAL_MAX_ROWS
    executor = "local" if small and not cluster else "ray"
    return dataclasses.replace(run_options, executor=executor)


def executor_label(asked: StageRunOptions, used: StageRunOptions, rows: int | None) -> str:
    """What the stage line says about the executor: the one used, and why when auto chose it."""
    if asked.executor != "auto":
        return used.executor
    if used.executor == "local":
        return (
            f"local: auto, {rows} rows (at most {AUTO_LOCAL_MAX_ROWS}) and no cluster; --executor ray for Ray"
        )
    why = "a cluster is named" if (asked.ray_address or os.environ.get("RAY_ADDRESS")) else f"{rows} rows"
    return f"ray: auto, {why}"


def _manifest_rows(manifest_path) -> int | None:
    """The manifest's row count from its Parquet footer (None when it cannot be read: the stage's
    own reading of it then says why)."""
    try:
        return pq.ParquetFile(manifest_path).metadata.num_rows
    except Exception:
        return None


def _summarise(plan: StagePlan, collector_written: int, rows_computed: int, seconds: float) -> StageSummary:
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


def _device_here(run_options: StageRunOptions) -> bool:
    """Whether the networks run on this machine: locally, or on a Ray started here."""
    return run_options.executor == "local" or not run_options.ray_address


def run_stage(
    stage: str,
    manifest_path: Path | str,
    work_dir: Path | str,
    backend_options: Mapping[str, Any] | Any = None,
    run_options: StageRunOptions = StageRunOptions(),
    *,
    stage_class: type | None = None,
    flag_prefix: str = "",
    checked: bool = False,
) -> StageSummary:
    """Run `stage` ("parse", "detect", "restore") over the manifest into WORK/stages/<stage>/.

    `backend_options`: the stage's options dataclass (deskpro.pipeline.options) or a mapping of its
    fields (backend, weights, ...; the image root comes from the manifest). `stage_class` replaces
    the stage's class (same contract), for stand-ins in tests and benchmarks. `flag_prefix` is how
    the command prefixes this stage's flags in error messages ("parse-" for `preprocess
    --parse-weights`); `checked`: check_stage already ran (preprocess checks every stage first).
    Raises StageError for refused or failed runs and when the stage holds more than
    `run_options.max_errors` error rows (after writing everything); StageConfigError, before any
    work starts, for options that cannot work (unknown backend, value out of range, missing or
    unloadable weights file, absent device).
    """
    options = stage_options(stage, backend_options or {}, flag_prefix)
    if stage_class is None and not checked:
        check_stage(stage, options, flag_prefix, device_here=_device_here(run_options))
    # One writer per stage folder; SIGTERM unwinds as Ctrl-C (parts are written atomically).
    with output_lock(stage_dir(work_dir, stage), what=f"{stage} stage", flag="-o"), StopSignals():
        return _run_stage(stage, manifest_path, work_dir, options, run_options, stage_class)


def _run_stage(stage, manifest_path, work_dir, options, run_options, stage_class) -> StageSummary:
    asked = run_options
    plan, fingerprint = _plan(stage, manifest_path, work_dir, options, run_options, stage_class)
    run_options = choose_executor(run_options, len(plan.manifest))
    info = {
        "format_version": FORMAT_VERSION,
        "stage": stage,
        "fingerprint": fingerprint,
        "part_size": plan.part_size,
        "num_parts": plan.num_parts,
        "complete": False,
    }
    if stage == "parse":
        info["label_set"] = options.labels
    write_json(plan.out_dir / "stage.json", info)
    todo = sum(plan.sizes[i] for i in plan.missing)
    start = time.perf_counter()
    with tqdm(total=todo, desc=stage, unit="img", disable=not run_options.progress) as bar:
        collector = PartCollector(plan, bar)
        if plan.missing:
            try:
                (run_ray if run_options.executor == "ray" else run_local)(plan, run_options, collector)
            except (StageError, StageConfigError):
                raise
            except Exception as exc:
                cause = describe_error(exc)
                if cause.startswith(f"{StageConfigError.__name__}: "):  # raised in a Ray worker
                    raise StageConfigError(cause.split(": ", 1)[1]) from None
                if "No space left on device" in cause or "Read-only file system" in cause:
                    what = "no space left on the device" if "No space" in cause else "read-only file system"
                    raise StageError(
                        f"{plan.out_dir}: {what} after {collector.written} of {len(plan.missing)} missing "
                        "parts; free some space or choose another -o, then rerun to resume"
                    ) from None
                # A lost worker, node or connection is worth a plain rerun; an error of the stage's
                # own code will come back, so the message says to fix it first.
                transient = cause.split(":", 1)[0] in TRANSIENT_ERRORS
                advice = "rerun the same command to resume" if transient else "fix it, then rerun to resume"
                raise StageError(
                    f"{stage}: failed after writing {collector.written} of {len(plan.missing)} missing parts "
                    f"({cause}); {advice}"
                ) from exc
        collector.finish()
    summary = dataclasses.replace(
        _summarise(plan, collector.written, todo, time.perf_counter() - start),
        executor=executor_label(asked, run_options, len(plan.manifest)) if plan.missing else "",
        first_rows_seconds=None if collector.first_rows_at is None else collector.first_rows_at - start,
        first_rows=collector.first_rows,
    )
    write_json(plan.out_dir / "stage.json", {**info, "complete": True, "summary": summary.to_dict()})
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
    run_options: StageRunOptions = StageRunOptions(),
) -> list[StageSummary]:
    """parse, detect and restore in order with the same run options; `backend_options[stage]` each.

    Every stage's options (backends, weights files) are checked before anything runs, so that a
    wrong restore weights path fails at once rather than after hours of parsing.
    """
    options = {s: stage_options(s, backend_options.get(s, {}), f"{s}-") for s in STAGE_NAMES}
    for stage in STAGE_NAMES:
        check_stage(stage, options[stage], f"{stage}-", device_here=_device_here(run_options))
    rows = _manifest_rows(manifest_path)
    chosen = choose_executor(run_options, rows)
    summaries = []
    session = ray_session(run_options.ray_address) if chosen.executor == "ray" else contextlib.nullcontext()
    with session:
        for stage in STAGE_NAMES:
            summaries.append(
                run_stage(
                    stage,
                    manifest_path,
                    work_dir,
                    options[stage],
                    run_options,
                    flag_prefix=f"{stage}-",
                    checked=True,
                )
            )
    return summaries
