"""`deskpro ablate`: row selection, the runs rows share, reuse and resume of runs, the teacher rows,
and the table / JSON / Markdown it writes, on a tiny PRCC-layout shard set (a few iterations)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _train_utils import write_tiny_shards
from click.testing import CliRunner

from deskpro.cli import main
from deskpro.experiments import ablate
from deskpro.experiments.rows import ROW_KEYS, ROWS, runs_for, select_rows
from deskpro.experiments.table import NOTE, format_markdown, format_text
from deskpro.train.data import open_reader

TINY = ["--epochs", "1", "--max-iters", "1", "--p", "2", "--k", "2", "--workers", "0"]
FAST = TINY + ["--trials", "1", "--no-progress", "--device", "cpu", "--from-scratch"]


def _ablate(shards, root, rows: str, *extra: str):
    return CliRunner().invoke(main, ["ablate", str(shards), "-o", str(root), "--rows", rows, *FAST, *extra])


def test_rows_name_the_runs_they_need() -> None:
    assert ROW_KEYS == ("1", "2", "3", "4", "5", "6", "7", "DeSKPro", "DeSKPro*")
    assert [r.name for r in runs_for(select_rows(["1"]))] == ["global"]
    assert [r.name for r in runs_for(select_rows(["2"]))] == ["csa"]
    assert [r.name for r in runs_for(select_rows(["6"]))] == ["teacher"]
    # DeSKPro* needs the DeSKPro run, which needs the teacher: trained first, once.
    assert [r.name for r in runs_for(select_rows(["DeSKPro*", "5", "3"]))] == ["teacher", "deskpro"]
    assert [r.name for r in runs_for(ROWS)] == ["teacher", "global", "csa", "deskpro", "student"]
    assert [r.key for r in select_rows(["DeSKPro", "1"])] == ["1", "DeSKPro"]  # table order
    with pytest.raises(ValueError, match="--rows: unknown row.*8"):
        select_rows(["1", "8"])


def test_run_settings_follow_the_rows(tmp_path) -> None:
    shards = write_tiny_shards(tmp_path / "shards", dataset="prcc")
    settings = ablate.AblationSettings(overrides={"epochs": 3}, teacher_epochs=2)
    global_cfg = ablate._config(shards, ablate.RUNS["global"], settings)
    student_cfg = ablate._config(shards, ablate.RUNS["student"], settings)
    deskpro_cfg = ablate._config(shards, ablate.RUNS["deskpro"], settings)
    teacher_cfg = ablate._config(shards, ablate.RUNS["teacher"], settings)
    assert (global_cfg.phase, global_cfg.csa_form, global_cfg.epochs) == ("baseline", "none", 3)
    assert student_cfg.phase == "student"
    assert deskpro_cfg.method.alpha == 0.8 and deskpro_cfg.method.lam == 7.0  # the PRCC preset
    assert (teacher_cfg.phase, teacher_cfg.epochs) == ("teacher", 2)


def test_restored_faces_reader_swaps_in_face_hr(tmp_path) -> None:
    reader = open_reader(write_tiny_shards(tmp_path / "shards"))
    swapped = ablate._RestoredFaces(reader).read_many([0, 1])
    plain = reader.read_many([0, 1])
    np.testing.assert_array_equal(swapped["face_lr"], plain["face_hr"])
    np.testing.assert_array_equal(swapped["body"], plain["body"])
    assert (
        len(ablate._RestoredFaces(reader)) == len(reader)
        and ablate._RestoredFaces(reader).index is reader.index
    )


def test_table_layout_and_note() -> None:
    rows = [
        {
            "key": "1",
            "method": "baseline",
            "components": "global stream",
            "results": {"cc": {"r1": 0.25, "mAP": 0.125}, "sc": {"r1": 0.5, "mAP": 0.375}},
        },
        {
            "key": "DeSKPro",
            "method": "rows 3+5",
            "components": "x",
            "results": {"cc": {"r1": 1.0, "mAP": 0.5}},
        },
    ]
    text = format_text(rows, "title")
    assert "cross-clothes" in text and "same-clothes" in text and NOTE in text
    assert "paper" in text.splitlines()[1]  # the header names the paper's columns
    line = next(x for x in text.splitlines() if x.startswith("1 "))
    # ours (cross-, same-clothes), then the paper's Table 3 row 1 on Celeb-reID-light
    assert line.split()[-6:] == ["25.0", "12.5", "50.0", "37.5", "32.9", "18.8"]
    assert next(x for x in text.splitlines() if x.startswith("DeSKPro")).split()[-4:] == [
        "-",
        "-",
        "52.0",
        "29.8",
    ]
    md = format_markdown(rows)
    assert "| 1 | baseline | global stream | 25.0 | 12.5 | 50.0 | 37.5 | 32.9 | 18.8 |" in md
    assert "paper R1 | paper mAP |" in md and NOTE in md


@pytest.fixture(scope="module")
def ablated(tmp_path_factory):
    base = tmp_path_factory.mktemp("ablate")
    shards = write_tiny_shards(base / "shards", dataset="prcc", train_ids=4, per_id=4, test_ids=3)
    root = base / "runs"
    result = CliRunner().invoke(
        main, ["ablate", str(shards), "-o", str(root), "--rows", "1,6,DeSKPro*"] + FAST
    )
    return shards, root, result


@pytest.mark.slow
def test_ablate_trains_evaluates_and_writes(ablated) -> None:
    shards, root, result = ablated
    assert result.exit_code == 0, result.output
    for run in ("teacher", "global", "deskpro"):
        assert (root / run / "checkpoint.pt").is_file() and (root / run / ablate.DONE_NAME).is_file()
    assert not (root / "student").exists() and not (root / "csa").exists()
    report = json.loads((root / "ablation.json").read_text())
    assert [r["key"] for r in report["rows"]] == ["1", "6", "DeSKPro*"] and report["paper"] == {
        "1": {"r1": 32.9, "r5": None, "mAP": 18.8, "source": "Table 3 row 1, Celeb-reID-light"},
        "6": {"r1": 47.4, "r5": None, "mAP": 25.8, "source": "Table 3 row 6, Celeb-reID-light"},
        "DeSKPro*": {"r1": 53.7, "r5": None, "mAP": 30.9, "source": "Table 3 row DeSKPro*, Celeb-reID-light"},
    }
    for row in report["rows"]:
        assert set(row["results"]) >= {"cc", "sc"}
        assert all(0.0 <= v["mAP"] <= 1.0 and v["queries"] > 0 for v in row["results"].values())
    assert "cross-clothes" in result.output and "DeSKPro*" in result.output
    assert (root / "ablation.md").read_text().startswith("| row | method | components |")
    global_cfg = json.loads((root / "global" / "config.json").read_text())
    assert global_cfg["csa_form"] == "none" and global_cfg["phase"] == "baseline"


@pytest.mark.slow
def test_ablate_reuses_finished_runs_and_refuses_other_settings(ablated) -> None:
    shards, root, first = ablated
    assert first.exit_code == 0, first.output
    before = json.loads((root / "ablation.json").read_text())["rows"]
    stamp = (root / "deskpro" / "checkpoint.pt").stat().st_mtime_ns
    again = CliRunner().invoke(
        main, ["ablate", str(shards), "-o", str(root), "--rows", "1,6,DeSKPro*"] + FAST
    )
    assert again.exit_code == 0, again.output
    assert again.output.count("reusing the finished run") == 3
    assert (root / "deskpro" / "checkpoint.pt").stat().st_mtime_ns == stamp
    assert json.loads((root / "ablation.json").read_text())["rows"] == before  # deterministic evaluation
    other = CliRunner().invoke(
        main, ["ablate", str(shards), "-o", str(root), "--rows", "1", "--lr", "0.1"] + FAST
    )
    assert other.exit_code == 1 and "holds a finished run with other settings (base_lr)" in other.output
    assert "Traceback" not in other.output


@pytest.mark.slow
def test_teacher_rows_put_the_teacher_on_restored_faces(ablated) -> None:
    _, root, result = ablated
    assert result.exit_code == 0, result.output
    checkpoints = {name: root / name / "checkpoint.pt" for name in ("teacher", "deskpro")}
    star = next(r for r in ROWS if r.key == "DeSKPro*")
    model = ablate.row_model(star, checkpoints)
    from deskpro.model import checkpoint

    teacher = checkpoint.load(checkpoints["teacher"]).state_dict()
    deskpro = checkpoint.load(checkpoints["deskpro"]).state_dict()
    for key, value in model.lr_face_net.state_dict().items():
        assert torch.equal(value, teacher[key]), key
    for key, value in model.nocloth_net.state_dict().items():
        assert torch.equal(value, deskpro[f"nocloth_net.{key}"]), key


@pytest.mark.slow
def test_interrupted_run_resumes(tmp_path) -> None:
    shards = write_tiny_shards(tmp_path / "shards", dataset="prcc")
    root = tmp_path / "runs"
    assert _ablate(shards, root, "1").exit_code == 0
    (root / "global" / ablate.DONE_NAME).unlink()  # as if killed after its last checkpoint
    again = _ablate(shards, root, "1")
    assert again.exit_code == 0, again.output
    assert "global: resuming" in again.output


def test_csa_form_none_is_the_global_stream_without_csa() -> None:
    from deskpro.model.csa import CSA

    csa = CSA(8, "none")
    x = torch.randn(2, 8, 4, 3)
    assert list(csa.parameters()) == [] and torch.equal(csa(x), torch.ones(2, 1, 4, 3))


def test_how_not_what_settings_do_not_make_a_finished_run_stale() -> None:
    """A finished run is reused across --workers and --decode-on; a setting that shapes it is not."""
    from deskpro.config import TrainConfig

    base = ablate._plain(TrainConfig())
    assert ablate._plain(TrainConfig(num_workers=7, decode_on="device")) == base
    assert ablate._plain(TrainConfig(seed=1)) != base


@pytest.mark.slow
def test_parallel_runs_give_the_sequential_table(tmp_path) -> None:
    shards = write_tiny_shards(tmp_path / "shards", dataset="prcc", train_ids=4, per_id=4, test_ids=3)
    tables = {}
    for jobs in (1, 2):
        root = tmp_path / f"jobs{jobs}"
        args = ["ablate", str(shards), "-o", str(root), "--rows", "4,6,DeSKPro", "--jobs", str(jobs)]
        result = CliRunner().invoke(main, args + ["--run-threads", "1"] + FAST)
        assert result.exit_code == 0, result.output
        tables[jobs] = json.loads((root / "ablation.json").read_text())["rows"]
        assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["deskpro", "student", "teacher"]
    strip = [{k: v for k, v in row.items() if k != "checkpoint"} for row in tables[1]]
    assert strip == [{k: v for k, v in row.items() if k != "checkpoint"} for row in tables[2]]
