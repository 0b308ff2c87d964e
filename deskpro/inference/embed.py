"""`deskpro embed`: features of a folder of images, a manifest or shards, into a FEATURES table.

The job is a stage run like parse or detect (deskpro.pipeline): the same plan, part files, resume
and executors (`--executor local`, or Ray with the model in an actor pool, GPU actors on a
cluster). Parts go to `FEATURES.parts/` (stage.json holds the fingerprint: checkpoint sha256,
detect options and weights, the input's rows); a rerun computes only the missing parts and refuses
changed settings unless `overwrite`. When every part is there they are joined into FEATURES, the
checkpoint's fingerprint in its metadata, and the parts folder is removed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from deskpro.common.files import atomic_path, check_output_path, sha256_file
from deskpro.common.locks import output_lock
from deskpro.common.stops import Interrupted, StopSignals
from deskpro.inference import settings as inference_settings
from deskpro.inference.engine import ENGINES
from deskpro.inference.extractor import EmbedStage, list_folder, load_model
from deskpro.inference.features import features_schema, is_features_file, with_metadata
from deskpro.manifests import manifest_info, read_manifest
from deskpro.pipeline import backends
from deskpro.pipeline.options import StageConfigError, StageRunOptions
from deskpro.pipeline.plan import (
    PartCollector,
    StageError,
    StagePlan,
    complete_parts,
    options_fingerprint,
    part_path,
    prepare_stage_dir,
    run_local,
    write_json,
)
from deskpro.pipeline.ray_executor import describe_error, run_ray
from deskpro.shards.format import CATALOG_NAME
from deskpro.train.data import open_reader

FORMAT_VERSION = 1
ERRORS_SHOWN = 3


class ShardEmbedStage(EmbedStage):
    """EmbedStage over shard rows: the stored body and low-res face, as `deskpro evaluate` reads them.

    No detector: the shards hold the faces their detect stage found. Input: sample_id (and path).
    """

    needs_images = False
    uses_detector = False

    def __init__(self, checkpoint_path: str, *, shards: str, **kw) -> None:
        super().__init__(checkpoint_path, **kw)
        self.reader = open_reader(shards)
        sizes = (tuple(self.reader.options["body_size"]), int(self.reader.options["face_size"]))
        if sizes != (self.settings.body_size, self.settings.face_size):
            raise StageConfigError(
                f"{shards}: shards of body {sizes[0]} and face {sizes[1]}; the checkpoint takes "
                f"{self.settings.body_size} and {self.settings.face_size}: pack them at its sizes"
            )
        ids = self.reader.index.column("sample_id").to_pylist()
        self.position = {s: i for i, s in enumerate(ids)}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = [str(s) for s in batch["sample_id"]]
        arrays = self.reader.read_many(np.asarray([self.position[s] for s in ids], np.int64))
        has_face = np.asarray(arrays["has_face"], bool)
        out = self.features(arrays["body"], arrays["face_lr"], has_face)
        n = len(ids)
        return {
            "sample_id": np.asarray(ids, dtype=object),
            "path": np.asarray([""] * n, dtype=object),
            "body": out["body"].reshape(n, -1),
            "face": out["face"].reshape(n, -1),
            "has_face": has_face,
            "face_score": np.full(n, np.nan, np.float32),
            "face_box": np.full((n, 4), np.nan, np.float32),
            "error": np.asarray([None] * n, dtype=object),
        }


@dataclass
class EmbedSummary:
    """What an embed run wrote."""

    out: Path
    rows: int
    errors: int
    faces: int
    parts_written: int
    parts_skipped: int
    rows_computed: int
    seconds: float
    first_errors: list[str] = field(default_factory=list)
    warning: str | None = None

    def format(self) -> str:
        speed = self.rows_computed / self.seconds if self.seconds > 0 else 0.0
        lines = [f"warning: {self.warning}"] if self.warning else []
        lines.append(
            f"{self.out}: {self.rows} rows, {self.faces} with a face, {self.errors} errors; parts written "
            f"{self.parts_written}, skipped {self.parts_skipped}; {self.rows_computed} rows in "
            f"{self.seconds:.1f} s ({speed:.1f} images/s)"
        )
        return "\n".join(lines + [f"  error: {e}" for e in self.first_errors])


def input_rows(source: str | os.PathLike) -> tuple[pa.Table, str, str]:
    """(rows: sample_id, path; root; kind) of INPUT: a shard directory, a folder of images, a manifest."""
    source = Path(source)
    if source.is_dir() and (source / CATALOG_NAME).is_file():
        ids = open_reader(source).index.column("sample_id")
        return (
            pa.table({"sample_id": ids, "path": pa.array([""] * len(ids), pa.string())}),
            str(source),
            "shards",
        )
    if source.is_dir():
        paths = list_folder(source)
        if not paths:
            raise FileNotFoundError(f"{source}: no image files in this folder or below")
        return pa.table({"sample_id": paths, "path": paths}), str(source), "folder"
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such folder, manifest or shard directory")
    table = read_manifest(source)
    return table.select(["sample_id", "path"]), manifest_info(table)["root"], "manifest"


def _rows_fingerprint(rows: pa.Table, root: str) -> str:
    digest = hashlib.sha256(str(Path(root).resolve()).encode())
    for name in ("sample_id", "path"):
        digest.update(json.dumps(rows.column(name).to_pylist()).encode())
    return digest.hexdigest()


def _check_detector(settings: inference_settings.InferenceSettings) -> None:
    """The detector's weights load on the driver, before any work (a StageConfigError names the flag)."""
    backend = backends.get("detect", settings.detect.backend, "detect-")
    backends.load_checked(backend, backend.resolve(settings.detect), "detect-")


def _stage_class(base: type, feat_dim: int) -> type:
    """`base`, or a subclass whose table holds chunks of `feat_dim` (the part schema is per class)."""
    if feat_dim == 512:
        return base
    return type(base.__name__, (base,), {"schema": features_schema(feat_dim)})


def _join_parts(parts_dir: Path, num_parts: int, out: Path, info: dict) -> pa.Table:
    table = pa.concat_tables([pq.read_table(part_path(parts_dir, i)) for i in range(num_parts)])
    table = with_metadata(table, info)
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return table


def run_embed(
    source: str | os.PathLike,
    checkpoint_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    detector: str | None = None,
    detect_weights: str | None = None,
    detect_options: dict | None = None,
    device: str = "auto",
    run_options: StageRunOptions = StageRunOptions(),
    trust: bool = False,
    force: bool = False,
    engine: str = "auto",
) -> EmbedSummary:
    """Embed INPUT (folder, manifest or shards) with a checkpoint into the FEATURES table `out`.

    One writer per FEATURES: a second embed on the same `out` is refused while this one runs
    (`output_lock`). SIGINT / SIGTERM stop it with the finished parts kept for a rerun.
    """
    run_options.check()
    if engine not in ENGINES:
        raise ValueError(f"--engine: expected one of {', '.join(ENGINES)}, got {engine!r}")
    out = Path(out)
    inputs = [checkpoint_path] + ([source] if Path(source).is_file() else [])
    check_output_path(out, inputs=inputs, is_ours=is_features_file, force=force, flag="-o")
    with output_lock(out, what="embeddings", flag="-o"), StopSignals() as stops:
        return _embed_locked(
            source,
            checkpoint_path,
            out,
            stops,
            detector=detector,
            detect_weights=detect_weights,
            detect_options=detect_options,
            device=device,
            run_options=run_options,
            trust=trust,
            force=force,
            engine=engine,
        )


def _embed_locked(
    source,
    checkpoint_path,
    out: Path,
    stops: StopSignals,
    *,
    detector,
    detect_weights,
    detect_options,
    device,
    run_options: StageRunOptions,
    trust: bool,
    force: bool,
    engine: str,
) -> EmbedSummary:
    """`run_embed` under its output lock and stop signals."""
    if out.exists() and not (run_options.overwrite or force):
        raise FileExistsError(f"-o {out}: a features table exists; pass --overwrite to compute it again")
    rows, root, kind = input_rows(source)
    model, meta = load_model(checkpoint_path, trust)  # a bad file: one line, before any work
    settings = inference_settings.resolve(meta, detector, detect_weights, device, detect_options)
    if kind != "shards":
        _check_detector(settings)
    kwargs = {
        "checkpoint_path": str(Path(checkpoint_path).resolve()),
        "detector": settings.detect.backend,
        "detect_weights": None if detect_weights is None else str(Path(detect_weights).resolve()),
        "detect_options": {k: v for k, v in (detect_options or {}).items()},
        "device": device,
        "root": root,
        "trust": trust,
        "engine": engine,
    }
    base = EmbedStage
    if kind == "shards":
        base, kwargs["shards"] = ShardEmbedStage, str(Path(source).resolve())
    stage_class = _stage_class(base, model.feat_dim)
    del model
    fingerprint = {
        "format_version": FORMAT_VERSION,
        "stage": "embed",
        "checkpoint": sha256_file(checkpoint_path),
        "input": {"kind": kind, "rows": _rows_fingerprint(rows, root)},
        "detect": None if kind == "shards" else options_fingerprint(settings.detect),
        "settings": {k: v for k, v in settings.to_dict().items() if k != "detect"},
        "part_size": run_options.part_size,
    }
    parts_dir = out.with_name(out.name + ".parts")
    prepare_stage_dir(parts_dir, fingerprint, run_options.overwrite)
    write_json(parts_dir / "stage.json", {"fingerprint": fingerprint, "complete": False})
    n = len(rows)
    num_parts = math.ceil(n / run_options.part_size)
    sizes = [min(run_options.part_size, n - i * run_options.part_size) for i in range(num_parts)]
    done = complete_parts(parts_dir, sizes)
    plan = StagePlan(
        "embed",
        stage_class,
        kwargs,
        rows,
        root,
        parts_dir,
        run_options.part_size,
        sizes,
        [i for i in range(num_parts) if i not in done],
        None,
        settings.detect.max_pixels,
    )
    todo = sum(sizes[i] for i in plan.missing)
    start = time.perf_counter()
    with tqdm(total=todo, desc="embed", unit="img", disable=not run_options.progress) as bar:
        collector = PartCollector(plan, bar)
        if plan.missing:
            try:
                (run_ray if run_options.executor == "ray" else run_local)(plan, run_options, collector)
                stops.check()  # a signal whose exception was swallowed (e.g. while Ray forked)
            except (StageError, StageConfigError):
                raise
            except Interrupted as exc:
                raise Interrupted(
                    f"embed: stopped by {exc.signal_name} after writing {collector.written} of "
                    f"{len(plan.missing)} missing parts to {parts_dir}; rerun the same command to resume",
                    exc.signum,
                ) from None
            except Exception as exc:
                cause = describe_error(exc)
                raise StageError(
                    f"embed: failed after writing {collector.written} of {len(plan.missing)} missing parts "
                    f"({cause}); rerun the same command to resume"
                ) from exc
        collector.finish()
    seconds = time.perf_counter() - start
    info = {
        "checkpoint": str(checkpoint_path),
        "checkpoint_sha256": fingerprint["checkpoint"],
        "input": str(source),
        "input_kind": kind,
        "root": root,
        "detect": None if kind == "shards" else dataclasses.asdict(settings.detect),
        **{k: v for k, v in settings.to_dict().items() if k != "detect"},
    }
    table = _join_parts(parts_dir, num_parts, out, info)
    shutil.rmtree(parts_dir)
    errors = [e for e in table.column("error").to_pylist() if e is not None]
    summary = EmbedSummary(
        out=out,
        rows=n,
        errors=len(errors),
        faces=int(sum(table.column("has_face").to_pylist())),
        parts_written=collector.written,
        parts_skipped=num_parts - len(plan.missing),
        rows_computed=todo,
        seconds=seconds,
        first_errors=errors[:ERRORS_SHOWN],
        warning=None if kind == "shards" else inference_settings.detector_mismatch(settings),
    )
    if run_options.max_errors is not None and summary.errors > run_options.max_errors:
        raise StageError(
            f"embed: {summary.errors} error rows, more than --max-errors {run_options.max_errors}; first: "
            + "; ".join(summary.first_errors),
            None,
        )
    return summary
