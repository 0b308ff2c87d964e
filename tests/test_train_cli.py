"""`deskpro train` / `train-teacher` options: --print-config, --config files, ranges, run-dir errors, help."""

from __future__ import annotations

import json
import sys

import click
import pytest
import yaml
from _train_utils import write_tiny_shards
from click.testing import CliRunner

from deskpro.cli import main
from deskpro.cli.config_file import config_file_option
from deskpro.train.rundir import RunDir
from deskpro.train.settings import resolve_config


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_tiny_shards(tmp_path_factory.mktemp("shards") / "s", train_ids=4, per_id=2, test_ids=2)


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _error_line(result) -> str:
    """The one line that says what is wrong (click may print the usage above it)."""
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def _printed(result) -> dict:
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.output)


def test_print_config_resolves_for_the_shards_and_the_flags(shards):
    printed = _printed(
        _invoke("train", shards, "--baseline", "--print-config", "--epochs", "7", "--lam", "3")
    )
    assert printed == resolve_config(shards, "baseline", epochs=7, warmup_epochs=6).to_dict() | {
        "body_size": [64, 32],
        "method": printed["method"],
    }
    # the preset's warm-up (10) is not below 7 epochs: epochs - 1, what the schedule can run
    assert printed["dataset"] == "synthetic" and printed["epochs"] == 7 and printed["warmup_epochs"] == 6
    assert printed["method"] == {
        "eps": 0.1,
        "lam": 3.0,
        "tau": 1.0,
        "alpha": 0.8,
    }  # the PRCC-like preset, lam set
    teacher = _printed(_invoke("train-teacher", "--print-config"))  # no shards: the TrainConfig defaults
    assert teacher["phase"] == "teacher" and teacher["epochs"] == 140 and teacher["p"] == 5


def test_printed_config_and_run_config_json_come_back_as_config(shards, tmp_path):
    printed = _invoke(
        "train", shards, "--baseline", "--print-config", "--epochs", "9", "--p", "3", "--seed", "4"
    )
    (tmp_path / "c.yaml").write_text(printed.output)
    again = _printed(
        _invoke("train", shards, "--baseline", "--print-config", "--config", tmp_path / "c.yaml")
    )
    assert again == yaml.safe_load(printed.output)
    flags_win = _printed(
        _invoke(
            "train", shards, "--baseline", "--print-config", "--config", tmp_path / "c.yaml", "--epochs", "15"
        )
    )
    assert flags_win["epochs"] == 15 and flags_win["p"] == 3 and flags_win["seed"] == 4
    # A run's config.json (written by the trainer) is accepted as it is.
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.write_config(resolve_config(shards, "baseline", epochs=11, warmup_epochs=3, k=3, base_lr=1e-3))
    from_run = _printed(_invoke("train", shards, "--baseline", "--print-config", "--config", run.config))
    assert (from_run["epochs"], from_run["k"], from_run["base_lr"]) == (11, 3, 1e-3)
    # Option spellings work as keys: long names with - or _, and aliases.
    (tmp_path / "o.yaml").write_text("warmup-epochs: 2\nimages_per_id: 4\nlr: 0.002\nworkers: 0\n")
    spelled = _printed(
        _invoke("train", shards, "--baseline", "--print-config", "--config", tmp_path / "o.yaml")
    )
    assert (spelled["warmup_epochs"], spelled["k"], spelled["base_lr"], spelled["num_workers"]) == (
        2,
        4,
        0.002,
        0,
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epochs: 3\nepohcs: 4\n", "unknown key 'epohcs'"),
        ("epochs: 0\n", "key 'epochs': 0 is not in the range x>=1"),
        ("amp: fp8\n", "key 'amp'"),
        ("- 1\n- 2\n", "expected a mapping"),
        ("epochs: [1\n", "not valid YAML"),
        ("dataset: prcc\n", "dataset is 'prcc' but this run's is 'synthetic'"),
        ("epochs: 2.7\n", "key 'epochs': 2.7 is not a whole number"),
        ("epochs: true\n", "key 'epochs': True is not a number"),
        ("lr: true\n", "key 'lr': True is not a number"),
        ("compile: 1\n", "key 'compile': 1 is not true or false"),
        ("actors: 2\n", "known: alpha, amp"),
        ("print_config: true\n", "unknown key 'print_config'"),
    ],
)
def test_bad_config_files_are_one_line_naming_the_file(shards, tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = _invoke("train", shards, "--baseline", "--print-config", "--config", path)
    assert result.exit_code != 0
    line = _error_line(result)
    assert str(path) in line and message in line


@pytest.mark.parametrize(
    "args",
    [
        ("--epochs", "0"),
        ("--max-iters", "0"),
        ("--warmup-epochs", "-1"),
        ("--p", "1"),
        ("--k", "1"),
        ("--lr", "0"),
        ("--workers", "-1"),
        ("--seed", "-3"),
        ("--erase-p", "1.5"),
        ("--alpha", "2"),
        ("--label-smoothing", "1"),
        ("--tau", "0"),
    ],
)
def test_numeric_options_are_range_checked(shards, tmp_path, args):
    result = _invoke("train", shards, "-o", tmp_path / "r", "--baseline", *args)
    assert result.exit_code == 2
    assert args[0] in _error_line(result)
    assert not (tmp_path / "r").exists()


def test_a_given_warmup_must_be_below_epochs(shards, tmp_path):
    result = _invoke(
        "train", shards, "-o", tmp_path / "r", "--baseline", "--epochs", "5", "--warmup-epochs", "5"
    )
    assert result.exit_code == 1
    assert "--warmup-epochs 5 must be below --epochs 5" in _error_line(result)
    assert not (tmp_path / "r").exists()


def test_the_presets_warmup_fits_a_short_run_and_says_so(shards, tmp_path):
    run = tmp_path / "r"
    args = ("--epochs", "2", "--p", "2", "--k", "2", "--workers", "0", "--max-iters", "1", "--no-progress")
    result = _invoke("train", shards, "-o", run, "--baseline", "--backbone", "osnet_x0_25", *args)
    assert result.exit_code == 0, result.output
    assert "warm-up: 1 epoch(s), the preset's 10 not being below --epochs 2" in result.output
    saved = json.loads((run / "config.json").read_text())
    assert (saved["epochs"], saved["warmup_epochs"]) == (2, 1)
    logged = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    assert {"total", "ce_body", "triplet"} <= set(logged)
    assert not {"att", "fkp", "ce_face", "triplet_face"} & set(logged)  # a baseline trains none of them
    # the run's config.json is accepted back, also by another phase (the command decides the phase)
    again = _invoke("train", shards, "--baseline", "--print-config", "--config", run / "config.json")
    assert _printed(again)["warmup_epochs"] == 1


def test_a_phase_in_a_config_file_is_the_commands(shards, tmp_path):
    path = tmp_path / "deskpro.yaml"
    path.write_text("phase: deskpro\nepochs: 12\n")
    printed = _printed(_invoke("train", shards, "--baseline", "--print-config", "--config", path))
    assert printed["phase"] == "baseline" and printed["epochs"] == 12


def test_too_few_identities_name_the_flag_and_what_fits(shards, tmp_path):
    args = ("--epochs", "2", "--p", "5", "--workers", "0", "--no-progress")
    result = _invoke("train-teacher", shards, "-o", tmp_path / "r", "--backbone", "osnet_x0_25", *args)
    line = _error_line(result)
    assert "--p 5: the train split has 4 identities" in line and "give --p 4 or fewer" in line
    assert "PKBatchSampler" not in line


def test_every_training_setting_shows_its_default():
    for command in ("train", "train-teacher"):
        result = _invoke(command, "--help")
        assert result.exit_code == 0
        text = " ".join(result.output.split())
        for flag, shown in [
            ("--epochs INTEGER", "[default: 140]"),
            ("--p, --ids", "[default: 5]"),
            ("--k, --images", "[default: 6]"),
        ]:
            assert shown in text.split(flag, 1)[1][:400], (command, flag)
        assert "[default: 0.0006]" in text and "[default: 7.0" in text


def test_preset_cpu_sets_the_demos_settings_below_the_flags(shards, tmp_path):
    printed = _printed(_invoke("train", shards, "--baseline", "--preset", "cpu", "--print-config"))
    assert (printed["backbone"], printed["epochs"], printed["p"], printed["k"]) == ("osnet_x0_25", 20, 8, 4)
    teacher = _printed(_invoke("train-teacher", shards, "--preset", "cpu", "--print-config", "--k", "3"))
    assert (teacher["epochs"], teacher["k"]) == (30, 3)
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 5\n")
    for order in (("--config", path, "--preset", "cpu"), ("--preset", "cpu", "--config", path)):
        assert _printed(_invoke("train", shards, "--baseline", "--print-config", *order))["epochs"] == 5


def test_tensorboard_without_the_package_names_the_extra(shards, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    result = _invoke(
        "train-teacher",
        shards,
        "-o",
        tmp_path / "r",
        "--tensorboard",
        "--epochs",
        "2",
        "--warmup-epochs",
        "1",
    )
    assert result.exit_code == 1
    assert "pip install 'deskpro[tensorboard]'" in _error_line(result)
    assert not (tmp_path / "r").exists()


def test_out_onto_a_file_or_a_foreign_folder_is_refused(shards, tmp_path):
    afile = tmp_path / "notes.txt"
    afile.write_text("keep")
    result = _invoke("train", shards, "-o", afile, "--baseline")
    assert result.exit_code == 2 and "is a file" in _error_line(result)
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_text("keep")
    args = ("--epochs", "2", "--warmup-epochs", "1", "--device", "cpu")
    result = _invoke("train", shards, "-o", folder, "--baseline", *args)
    assert result.exit_code == 1 and "not a deskpro run" in _error_line(result)
    result = _invoke("train", shards, "-o", tmp_path / "none", "--baseline", "--resume", *args)
    assert result.exit_code == 1 and "no training state to resume from" in _error_line(result)
    assert afile.read_text() == "keep" and [p.name for p in folder.iterdir()] == ["a.jpg"]
    result = _invoke("train", shards, "--baseline")
    assert result.exit_code == 2 and "'-o'" in _error_line(result)


@pytest.mark.parametrize("command", ["train", "train-teacher"])
def test_every_option_has_help_and_the_command_an_example(command):
    cmd = main.get_command(click.Context(main), command)
    missing = [p.name for p in cmd.params if isinstance(p, click.Option) and not p.help]
    assert not missing
    result = _invoke(command, "--help")
    assert result.exit_code == 0 and "Example:" in result.output and f"deskpro {command} " in result.output


def test_config_file_option_on_any_command(tmp_path):
    """The generic helper: file values become defaults, typed by the option; flags win."""

    @click.command()
    @config_file_option()
    @click.option("--size", type=click.IntRange(1), default=3)
    @click.option("--name-tag", default="a")
    def cmd(size, name_tag):
        click.echo(json.dumps([size, name_tag]))

    (tmp_path / "c.json").write_text(json.dumps({"size": "8", "name-tag": "b"}))
    runner = CliRunner()
    assert json.loads(runner.invoke(cmd, ["--config", tmp_path / "c.json"]).output) == [8, "b"]
    assert json.loads(runner.invoke(cmd, ["--config", tmp_path / "c.json", "--size", "2"]).output) == [2, "b"]
    assert json.loads(runner.invoke(cmd, []).output) == [3, "a"]
    (tmp_path / "bad.json").write_text(json.dumps({"size": 0}))
    result = runner.invoke(cmd, ["--config", tmp_path / "bad.json"])
    assert result.exit_code == 2 and "bad.json: key 'size'" in result.output


def test_decode_on_option_reaches_the_config_and_the_run(shards, tmp_path):
    assert _printed(_invoke("train", shards, "--baseline", "--print-config"))["decode_on"] == "auto"
    printed = _printed(_invoke("train-teacher", shards, "--print-config", "--decode-on", "device"))
    assert printed["decode_on"] == "device"
    (tmp_path / "c.yaml").write_text("decode-on: worker\n")
    assert (
        _printed(_invoke("train", shards, "--baseline", "--print-config", "--config", tmp_path / "c.yaml"))[
            "decode_on"
        ]
        == "worker"
    )
    bad = _invoke("train", shards, "-o", tmp_path / "b", "--baseline", "--decode-on", "gpu")
    assert bad.exit_code == 2 and "--decode-on" in _error_line(bad)
    # These shards are raw: the run is refused in one line before anything is written.
    raw = _invoke(
        "train", shards, "-o", tmp_path / "r", "--baseline", "--decode-on", "device", "--no-progress"
    )
    assert raw.exit_code != 0 and "codec 'raw', no JPEG bytes" in _error_line(raw)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", ["train", "train-teacher"])
def test_every_trainconfig_field_is_an_option_or_fixed(command):
    """So that any run's config.json comes back as --config (a new field needs an option)."""
    import dataclasses

    from deskpro.cli.train_options import COMMAND_KEYS, FIXED_KEYS
    from deskpro.config import MethodSettings, TrainConfig

    cmd = main.get_command(click.Context(main), command)
    names = {p.name for p in cmd.params}
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"method"}
    fields |= {f.name for f in dataclasses.fields(MethodSettings)}
    assert fields - names - set(FIXED_KEYS) - set(COMMAND_KEYS) == set()


def _saved_run(path, shards, *, epoch: int, phase: str = "baseline", teacher=None):
    """A run directory whose train_state.pt says how far it got (what --resume reads first)."""
    import torch

    from deskpro.config import TrainConfig

    path.mkdir()
    config = TrainConfig(phase=phase, epochs=2, warmup_epochs=1)
    inputs = {"shards": str(shards.resolve()), "teacher": teacher}
    torch.save(
        {"config": config.to_dict(), "epoch": epoch, "batch": 0, "step": 4, "inputs": inputs},
        path / "train_state.pt",
    )
    for name in ("config.json", "log.jsonl", "checkpoint.pt"):
        (path / name).write_text(f"{name} as the run left it\n")
    return path


def test_resume_of_a_finished_run_says_so_and_writes_nothing(shards, tmp_path):
    run = _saved_run(tmp_path / "r", shards, epoch=2)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir()}
    result = _invoke("train", "-o", run, "--resume")  # no SHARDS, no phase flag
    assert result.exit_code == 0, result.output
    assert f"{run}: finished (2 of 2 epochs); nothing to resume" in result.output
    assert f"checkpoint: {run / 'checkpoint.pt'}" in result.output
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir()} == before
    (run / "checkpoint.pt").unlink()
    gone = _invoke("train-teacher", "-o", run, "--resume")
    assert gone.exit_code == 1 and "checkpoint.pt is missing" in _error_line(gone)


def test_resume_reads_the_phase_and_shards_from_the_run(shards, tmp_path):
    from deskpro.train.resume import resume_inputs, saved_run

    saved = saved_run(_saved_run(tmp_path / "r", shards, epoch=1))
    assert not saved.finished
    assert resume_inputs(saved, None, None, None) == ("baseline", shards.resolve(), None)
    with pytest.raises(ValueError, match="is a baseline run, not teacher; drop the phase flag"):
        resume_inputs(saved, "teacher", None, None)
    line = _error_line(_invoke("train-teacher", "-o", tmp_path / "r", "--resume"))
    assert "is a baseline run, not teacher" in line
    printed = _printed(_invoke("train", "-o", tmp_path / "r", "--resume", "--print-config"))
    assert printed["phase"] == "baseline" and printed["epochs"] == 2


def test_select_on_val_without_a_val_split_is_refused_before_training(shards, tmp_path):
    result = _invoke("train", shards, "-o", tmp_path / "r", "--baseline", "--select-on-val")
    assert "--select-on-val" in _error_line(result) and "no val split" in _error_line(result)
    assert not (tmp_path / "r").exists()
