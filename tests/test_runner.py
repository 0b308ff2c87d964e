"""The stage runner: parts, resume after a crash, fingerprints, bad images, Ray against the loop, CLI."""

from __future__ import annotations

import dataclasses
import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _pipeline_utils import LOOSE_POLICY, make_dataset, make_failing_stage, read_stage
from click.testing import CliRunner

from deskpro.cli import main
from deskpro.manifests import read_manifest, write_manifest
from deskpro.pipeline.options import StageRunOptions
from deskpro.pipeline.plan import StageError, stage_dir
from deskpro.pipeline.runner import run_preprocess, run_stage
from deskpro.pipeline.stages import DETECT_SCHEMA, PARSE_SCHEMA, RESTORE_SCHEMA, DetectStage, ParseStage

BACKENDS = {
    "parse": {"backend": "oracle"},
    "detect": {"backend": "oracle", **LOOSE_POLICY, "face_lr_size": 32},
    "restore": {"backend": "none", "face_hr_size": 64},
}
LOCAL = StageRunOptions(part_size=4, batch_size=2, executor="local", progress=False)
RAY = StageRunOptions(part_size=4, batch_size=2, executor="ray", progress=False)
CORRUPT_ROW = 5  # 18 rows in parts of 4: the corrupt image sits in part 1


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(base dir, manifest path) of the tiny synthetic set with one truncated JPEG."""
    base = tmp_path_factory.mktemp("runner")
    _, manifest = make_dataset(base, corrupt=CORRUPT_ROW)
    return base, manifest


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uninterrupted in-process run of all three stages: {stage: table}."""
    work = tmp_path_factory.mktemp("reference")
    run_preprocess(data[1], work, BACKENDS, LOCAL)
    return {stage: read_stage(work, stage) for stage in BACKENDS}


@pytest.fixture(scope="session")
def ray_started():
    """One local Ray for the whole session (a start costs 10-20 s); the runner reuses it."""
    ray = pytest.importorskip("ray")
    from deskpro.pipeline.ray_executor import ray_session

    with ray_session(num_cpus=2):
        yield ray


def test_outputs_follow_the_shared_schemas_in_manifest_order(data, reference):
    manifest = read_manifest(data[1])
    for stage, schema in (("parse", PARSE_SCHEMA), ("detect", DETECT_SCHEMA), ("restore", RESTORE_SCHEMA)):
        assert reference[stage].schema == schema
        assert reference[stage]["sample_id"].to_pylist() == manifest["sample_id"].to_pylist()


def test_a_corrupt_jpeg_is_one_error_row_and_the_job_completes(data, reference):
    path = read_manifest(data[1])["path"][CORRUPT_ROW].as_py()
    for stage in BACKENDS:
        errors = [e for e in reference[stage]["error"].to_pylist() if e is not None]
        assert len(errors) == 1 and errors[0].startswith(f"{path}: cannot decode image"), errors
    assert reference["detect"]["has_face"][CORRUPT_ROW].as_py() is False


def test_max_errors_fails_after_writing_and_names_count_and_path(data, tmp_path):
    path = read_manifest(data[1])["path"][CORRUPT_ROW].as_py()
    with pytest.raises(StageError, match=r"1 error rows, more than --max-errors 0") as info:
        run_stage("parse", data[1], tmp_path, BACKENDS["parse"], dataclasses.replace(LOCAL, max_errors=0))
    assert path in str(info.value)
    assert info.value.summary.rows == 18 and len(read_stage(tmp_path, "parse")) == 18
    summary = run_stage(
        "parse", data[1], tmp_path, BACKENDS["parse"], dataclasses.replace(LOCAL, max_errors=1)
    )
    assert (summary.errors, summary.parts_written, summary.parts_skipped) == (1, 0, 5)


def _crash_then_resume(data, work, stage, fail_row, options):
    """Run `stage` with a crash at manifest row `fail_row`, then rerun; returns (crash parts, summary)."""
    manifest = read_manifest(data[1])
    base = {"parse": ParseStage, "detect": DetectStage}[stage]
    failing = make_failing_stage(base, manifest["sample_id"][fail_row].as_py())
    if stage == "detect":
        run_stage("parse", data[1], work, BACKENDS["parse"], options)
    with pytest.raises(StageError, match="simulated crash") as info:
        run_stage(stage, data[1], work, BACKENDS[stage], options, stage_class=failing)
    assert "rerun the same command to resume" in str(info.value)
    written = sorted(p.name for p in stage_dir(work, stage).glob("part-*.parquet"))
    for name in written:  # whatever survived the crash is a whole part
        assert pq.ParquetFile(stage_dir(work, stage) / name).metadata.num_rows == 4
    assert not list(stage_dir(work, stage).glob("*.tmp"))
    return written, run_stage(stage, data[1], work, BACKENDS[stage], options)


def test_a_crash_midway_and_a_rerun_give_the_rows_of_an_uninterrupted_run(data, reference, tmp_path):
    written, summary = _crash_then_resume(data, tmp_path, "detect", fail_row=13, options=LOCAL)
    assert written == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert (summary.parts_skipped, summary.parts_written, summary.rows_computed) == (3, 2, 6)
    assert read_stage(tmp_path, "detect").equals(reference["detect"])


def test_changed_options_are_refused_unless_overwrite(data, reference, tmp_path):
    run_preprocess(data[1], tmp_path, BACKENDS, LOCAL)
    changed = {**BACKENDS["detect"], "face_lr_size": 48}
    with pytest.raises(StageError, match=r"changed: options.face_lr_size\); rerun with --overwrite"):
        run_stage("detect", data[1], tmp_path, changed, LOCAL)
    with pytest.raises(StageError, match="changed: part_size"):
        run_stage(
            "parse", data[1], tmp_path, BACKENDS["parse"], StageRunOptions(part_size=5, executor="local")
        )
    again = run_stage("detect", data[1], tmp_path, BACKENDS["detect"], LOCAL)  # same options: all skipped
    assert (again.parts_written, again.parts_skipped) == (0, 5)
    redone = run_stage("detect", data[1], tmp_path, changed, dataclasses.replace(LOCAL, overwrite=True))
    assert redone.parts_written == 5
    crop = read_stage(tmp_path, "detect")["face_lr_png"]
    assert crop != reference["detect"]["face_lr_png"]
    # restore was made from the old detect outputs: refused by restore, naming the stage to rerun
    with pytest.raises(
        StageError, match=r"detect stage has been rerun since.*rerun `deskpro restore` with --overwrite"
    ):
        run_stage("restore", data[1], tmp_path, BACKENDS["restore"], LOCAL)
    redone = run_stage(
        "restore", data[1], tmp_path, BACKENDS["restore"], dataclasses.replace(LOCAL, overwrite=True)
    )
    assert redone.parts_written == 5


def test_a_different_manifest_is_refused(data, tmp_path):
    run_stage("parse", data[1], tmp_path, BACKENDS["parse"], LOCAL)
    table = read_manifest(data[1])
    other = tmp_path / "other.parquet"
    write_manifest(table.slice(0, 10).replace_schema_metadata(table.schema.metadata), other)
    with pytest.raises(StageError, match="holds a different manifest"):
        run_stage("parse", other, tmp_path, BACKENDS["parse"], LOCAL)


def test_a_stage_returning_a_foreign_sample_is_refused(data, tmp_path):
    class Foreign(ParseStage):
        def __call__(self, batch):
            out = super().__call__(batch)
            out["sample_id"][0] = "not-in-the-manifest"
            return out

    with pytest.raises(StageError, match="the stage returned duplicate or foreign rows"):
        run_stage("parse", data[1], tmp_path, BACKENDS["parse"], LOCAL, stage_class=Foreign)


def test_restore_needs_a_complete_detect_stage(data, tmp_path):
    with pytest.raises(StageError, match="detect stage is not complete"):
        run_stage("restore", data[1], tmp_path, BACKENDS["restore"], LOCAL)


def test_a_short_part_file_is_recomputed(data, reference, tmp_path):
    run_stage("parse", data[1], tmp_path, BACKENDS["parse"], LOCAL)
    part = stage_dir(tmp_path, "parse") / "part-00002.parquet"
    pq.write_table(pq.read_table(part).slice(0, 1), part)  # e.g. a copy that was cut short
    summary = run_stage("parse", data[1], tmp_path, BACKENDS["parse"], LOCAL)
    assert (summary.parts_written, summary.parts_skipped) == (1, 4)
    assert read_stage(tmp_path, "parse").equals(reference["parse"])
    info = json.loads((stage_dir(tmp_path, "parse") / "stage.json").read_text())
    assert info["complete"] and info["label_set"] == "lip" and info["summary"]["errors"] == 1


def test_cli_missing_weights_is_a_one_line_error(data, tmp_path):
    result = CliRunner().invoke(
        main, ["parse", str(data[1]), "-w", str(tmp_path), "--weights", "/no/lip.pth", "--executor", "local"]
    )
    assert result.exit_code != 0
    assert (
        "--weights /no/lip.pth: file not found" in result.output and "deskpro weights list" in result.output
    )


# ---- with a real local Ray


def test_ray_preprocess_command_matches_the_plain_loop(data, reference, ray_started, tmp_path):
    args = [
        "preprocess",
        str(data[1]),
        "-w",
        str(tmp_path),
        "--part-size",
        "4",
        "--batch-size",
        "2",
        "--parser",
        "oracle",
        "--detector",
        "oracle",
        "--min-score",
        "0",
        "--min-size",
        "0",
        "--max-center-y",
        "1",
        "--face-lr-size",
        "32",
        "--restorer",
        "none",
        "--face-hr-size",
        "64",
        "--no-progress",
        "--actors",
        "2",
        "--executor",
        "ray",  # 18 rows: auto would choose the plain loop
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "detect: 18 rows, 1 errors, faces found" in result.output
    for stage in BACKENDS:
        assert read_stage(tmp_path, stage).equals(reference[stage]), stage


def test_ray_crash_midway_and_rerun_give_the_uninterrupted_rows(data, reference, ray_started, tmp_path):
    import ray.cloudpickle

    # Ray workers cannot import this test helper module by name: ship it by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[make_failing_stage.__module__])
    written, summary = _crash_then_resume(data, tmp_path, "parse", fail_row=9, options=RAY)
    assert summary.parts_skipped == len(written) and summary.parts_written == 5 - len(written)
    assert read_stage(tmp_path, "parse").equals(reference["parse"])


def test_parts_are_typed_even_when_a_batch_has_no_faces(reference):
    # a column of all nulls in one part must keep the shared type
    for stage, table in reference.items():
        for field in table.schema:
            assert not pa.types.is_null(field.type), (stage, field.name)


def test_preprocess_checks_every_stage_before_running_any(data, tmp_path):
    from deskpro.pipeline.options import StageConfigError

    options = {
        "parse": {"backend": "oracle"},
        "detect": {"backend": "oracle"},
        "restore": {"backend": "gpen-512", "weights": str(tmp_path / "missing.pth")},
    }
    with pytest.raises(StageConfigError, match="--restore-weights"):
        run_preprocess(data[1], tmp_path / "work", options, StageRunOptions(executor="local", progress=False))
    assert not (tmp_path / "work" / "stages" / "parse").exists()  # parse never started


def test_a_bug_in_the_stage_says_fix_it_not_just_rerun(tmp_path):
    data = make_dataset(tmp_path)
    manifest = read_manifest(data[1])

    class Buggy(ParseStage):
        def __call__(self, batch):
            raise ValueError("bad arithmetic in the stage")

    with pytest.raises(StageError, match="bad arithmetic") as info:
        run_stage("parse", data[1], tmp_path / "w", BACKENDS["parse"], LOCAL, stage_class=Buggy)
    assert "fix it, then rerun to resume" in str(info.value)
    assert "rerun the same command" not in str(info.value)
    assert len(manifest) > 0


def test_auto_runs_small_work_in_process_and_says_so(data, tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    args = ["parse", str(data[1]), "-w", str(tmp_path), "--parser", "oracle", "--no-progress"]
    result = CliRunner().invoke(main, [*args, "--part-size", "4", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    line = result.output.strip().splitlines()[0]
    assert line.startswith("parse: 18 rows, 1 errors") and "[local: auto, 18 rows (at most 850)" in line
    assert "first rows after" in line and "then" in line
    again = CliRunner().invoke(
        main, [*args, "--part-size", "4", "--batch-size", "4"]
    )  # every part written: a line that says so, no 0.0 images/s
    assert "nothing to do: every one of" in again.output and "images/s" not in again.output


def test_auto_chooses_ray_for_a_cluster_or_large_work(monkeypatch):
    from deskpro.pipeline.runner import choose_executor

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    auto = StageRunOptions()
    assert auto.executor == "auto"
    assert choose_executor(auto, 850).executor == "local"
    assert choose_executor(auto, 851).executor == "ray"
    assert choose_executor(auto, None).executor == "ray"
    assert choose_executor(dataclasses.replace(auto, ray_address="auto"), 10).executor == "ray"
    assert choose_executor(dataclasses.replace(auto, executor="ray"), 10).executor == "ray"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert choose_executor(auto, 10).executor == "ray"
