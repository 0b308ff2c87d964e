"""Ray actor pools start every actor that fits (issue 25): restore reads its rows in its own workers, so
that no other operator needs a CPU that the pool holds; the slow test is the hang's set-up."""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _pipeline_utils import LOOSE_POLICY, make_dataset, read_stage

from deskpro.pipeline.options import StageRunOptions
from deskpro.pipeline.part_slices import read_slices, slice_tables
from deskpro.pipeline.plan import StagePlan, part_path, source_tables
from deskpro.pipeline.stages import RestoreStage, table_to_batch

BACKENDS = {
    "parse": {"backend": "oracle"},
    "detect": {"backend": "oracle", **LOOSE_POLICY, "face_lr_size": 32},
    "restore": {"backend": "none", "face_hr_size": 64},
}


def _restore_plan(tmp_path, sizes: list[int], missing: list[int]) -> StagePlan:
    """A restore plan over upstream parts of `sizes` rows whose cells say (part, row)."""
    upstream = tmp_path / "detect"
    upstream.mkdir()
    for i, n in enumerate(sizes):
        ids = [f"p{i}r{r}" for r in range(n)]
        table = pa.table(
            {
                "sample_id": ids,
                "has_face": [r % 2 == 0 for r in range(n)],
                "face_lr_png": [s.encode() for s in ids],
                "landmarks": [[float(i), float(r)] for r in range(n)],
                "error": [None] * n,
                "bbox": [0.0] * n,  # a column restore does not read
            }
        )
        pq.write_table(table, part_path(upstream, i))
    return StagePlan(
        "restore", RestoreStage, {}, pa.table({}), "", tmp_path / "restore", 4, sizes, missing, upstream
    )


def _as_ray_passes_it(table: pa.Table) -> list[dict]:
    """The slice rows one at a time (the stage's batch size on slices is 1), as numpy arrays."""
    return [
        {k: np.asarray(v) for k, v in table_to_batch(table.slice(r, 1)).items()} for r in range(len(table))
    ]


def test_slices_read_in_the_workers_give_the_rows_the_loop_reads(tmp_path):
    plan = _restore_plan(tmp_path, sizes=[4, 4, 3], missing=[0, 2])
    batches = [
        read_slices(row, RestoreStage.input_columns)
        for t in slice_tables(plan, 3)
        for row in _as_ray_passes_it(t)
    ]
    expected = [table_to_batch(rows) for rows in source_tables(plan, 3)]
    assert [list(b["sample_id"]) for b in batches] == [
        ["p0r0", "p0r1", "p0r2"],
        ["p0r3"],
        ["p2r0", "p2r1", "p2r2"],
    ]
    assert len(batches) == len(expected)
    for got, want in zip(batches, expected):
        assert list(got) == list(RestoreStage.input_columns) == list(want)
        for column in got:
            assert [np.asarray(x).tolist() for x in got[column]] == [
                np.asarray(x).tolist() for x in want[column]
            ]


def test_a_rewritten_or_short_part_is_read_again_not_served_from_the_cache(tmp_path):
    plan = _restore_plan(tmp_path, sizes=[4], missing=[0])
    row = _as_ray_passes_it(slice_tables(plan, 2)[0])[1]  # rows 2 and 3 of part 0
    assert list(read_slices(row, ("sample_id",))["sample_id"]) == ["p0r2", "p0r3"]
    path = part_path(plan.upstream_dir, 0)
    pq.write_table(pa.table({"sample_id": ["a", "b", "c", "d", "e"]}), path)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime even on a coarse clock
    assert list(read_slices(row, ("sample_id",))["sample_id"]) == ["c", "d"]
    pq.write_table(pa.table({"sample_id": ["a", "b", "c"]}), path)
    with pytest.raises(ValueError, match="fewer rows than its stage.json says"):
        read_slices(row, ("sample_id",))


def test_the_pool_starts_the_actors_that_fit():
    pytest.importorskip("ray")
    from deskpro.pipeline.ray_executor import Layout, actor_pool

    pool = actor_pool(Layout("cpu-actors", 4, 0.0, 1.0, initial=2))
    assert (pool.min_size, pool.max_size, pool.initial_size) == (1, 4, 2)


@pytest.mark.slow
def test_restore_on_a_reused_ray_whose_pool_holds_every_cpu_completes(tmp_path, monkeypatch):
    """The hang of issue 25: restore on a reused 2-CPU Ray with every CPU free, its pool starting both
    actors. With Ray Data's Parquet reader in front, its listing task never got a CPU."""
    pytest.importorskip("ray")
    import ray
    import ray.data

    from deskpro.pipeline import ray_executor
    from deskpro.pipeline.runner import run_stage

    _, manifest = make_dataset(tmp_path)
    local = StageRunOptions(part_size=4, batch_size=2, executor="local", progress=False)
    for stage in BACKENDS:
        run_stage(stage, manifest, tmp_path / "loop", BACKENDS[stage], local)
        if stage != "restore":
            for work in ("ray", "tasks"):
                run_stage(stage, manifest, tmp_path / work, BACKENDS[stage], local)
    started, operators = [], []
    pool, build = ray_executor.actor_pool, ray_executor.build_dataset
    monkeypatch.setattr(ray_executor, "actor_pool", lambda lay: started.append(lay.initial) or pool(lay))

    def build_and_list(*args):
        ds = build(*args)
        operators.extend(op.name for op in ds._logical_plan.dag.post_order_iter())  # Ray's own plan
        return ds

    monkeypatch.setattr(ray_executor, "build_dataset", build_and_list)
    with ray_executor.ray_session(num_cpus=2):  # or the suite's Ray, reused
        cpus = int(ray.cluster_resources()["CPU"])
        deadline = time.monotonic() + 60  # a previous test's actors letting go of their CPUs
        while ray.available_resources().get("CPU", 0) < cpus and time.monotonic() < deadline:
            time.sleep(0.2)
        ctx = ray.data.DataContext.get_current()
        saved = ctx.execution_no_progress_timeout_s
        ctx.execution_no_progress_timeout_s = 240  # a hang fails this test instead of stalling the suite
        try:
            ray_options = StageRunOptions(
                part_size=4, batch_size=2, progress=False, num_actors=cpus, executor="ray"
            )
            run_stage("restore", manifest, tmp_path / "ray", BACKENDS["restore"], ray_options)
            # Without --actors the light backend runs as plain tasks, which read their slices too.
            tasks = dataclasses.replace(ray_options, num_actors=None, overwrite=True)
            run_stage("restore", manifest, tmp_path / "tasks", BACKENDS["restore"], tasks)
        finally:
            ctx.execution_no_progress_timeout_s = saved
    assert started == [cpus]  # every actor at once: the pool held every CPU of the Ray
    # Nothing but the pool asks for a CPU: the rows' slices come from the driver, no read operator.
    assert operators[:2] == ["FromArrow", "MapBatches(SliceReadingStage)"], operators
    assert operators[2:] == ["FromArrow", "MapBatches(light_batch)"], operators
    for work in ("ray", "tasks"):
        assert read_stage(tmp_path / work, "restore").equals(read_stage(tmp_path / "loop", "restore")), work
