"""What a user or an operator can cause, at the command line: one line, no traceback, nothing lost.

- every numeric option of every command is range-checked before any work (walked, not listed);
- the group's handler: system errors (read-only folder, full disk, permission) name the path,
  Ctrl-C is one line and status 130, DESKPRO_TRACEBACK=1 still shows the traceback;
- the output-path check of `plot -o`, `evaluate -o` into a missing folder, --device and --topk;
- read-only and full output folders for every command that writes (tmpfs mounts; root only).
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from deskpro.cli import main
from deskpro.cli.group import os_error_line


def _commands(group=main, path=()):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


def _out_of_range(param: click.Option) -> str | None:
    """A value the option's type refuses, or None for an option that is not a bounded number."""
    kind = param.type
    if isinstance(kind, click.IntRange | click.FloatRange):
        if kind.min is not None:
            return str(kind.min - 1 if not kind.min_open else kind.min)
        if kind.max is not None:
            return str(kind.max + 1)
    return None


NUMERIC = [
    (path, param)
    for path, command in _commands()
    for param in command.params
    if isinstance(param, click.Option)
    and isinstance(param.type, click.types.IntParamType | click.types.FloatParamType)
]


def test_every_numeric_option_of_every_command_has_a_range():
    """A plain int or float option takes 0 or -5 and fails later, inside the work: every one is a range
    (a seed is a range too: x >= 0)."""
    unbounded = [
        f"deskpro {' '.join(path)} {param.opts[0]}" for path, param in NUMERIC if _out_of_range(param) is None
    ]
    assert not unbounded, unbounded


@pytest.mark.parametrize(
    ("path", "param"), [pytest.param(p, o, id=f"{' '.join(p)} {o.opts[0]}") for p, o in NUMERIC]
)
def test_an_out_of_range_number_is_refused_before_any_work(path, param, tmp_path):
    bad = _out_of_range(param)
    if bad is None:
        pytest.skip("not bounded (the test above fails)")
    # The option first: click checks it while parsing, before arguments or any library call.
    result = CliRunner().invoke(main, [*path, param.opts[0], bad, str(tmp_path / "x"), str(tmp_path / "y")])
    assert result.exit_code == 2, result.output
    assert param.opts[0] in result.output and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


# ---- the group's error handler


@click.command("boom")
@click.argument("kind")
def _boom(kind: str) -> None:
    if kind == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "out/shard-00000.h5")
    if kind == "erofs":
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), "out/log.jsonl")
    if kind == "hdf5":  # how h5py reports a full disk: errno only inside its text
        raise OSError(
            "Can't synchronously write data (file write failed: time = Sun Dec  6, filename = "
            "'out/shard-00001.h5', file descriptor = 5, errno = 28, "
            "error message = 'No space left on device')"
        )
    if kind == "sigterm":  # a command with no signal handling of its own, killed by an operator
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("SIGTERM did not stop the command")
    raise KeyboardInterrupt


@pytest.fixture
def group_with_boom():
    main.add_command(_boom)
    yield main
    main.commands.pop("boom")


@pytest.mark.parametrize(
    ("kind", "line"),
    [
        ("enospc", "Error: out/shard-00000.h5: no space left on the device; free some or choose another"),
        ("erofs", "Error: out/log.jsonl: read-only file system; choose a writable output folder"),
        ("hdf5", "Error: out/shard-00001.h5: no space left on the device"),
    ],
)
def test_system_errors_are_one_line_naming_the_path(group_with_boom, kind, line, monkeypatch):
    monkeypatch.delenv("DESKPRO_TRACEBACK", raising=False)
    result = CliRunner().invoke(group_with_boom, ["boom", kind])
    assert result.exit_code == 1
    assert result.output.strip().startswith(line) and len(result.output.strip().splitlines()) == 1


def test_ctrl_c_is_one_line_and_status_130(group_with_boom, monkeypatch):
    monkeypatch.delenv("DESKPRO_TRACEBACK", raising=False)
    result = CliRunner().invoke(group_with_boom, ["boom", "interrupt"])
    assert result.exit_code == 130 and result.output.strip() == "Error: interrupted (Ctrl-C or SIGTERM)"


def test_sigterm_stops_any_command_as_ctrl_c_does(group_with_boom, monkeypatch):
    monkeypatch.delenv("DESKPRO_TRACEBACK", raising=False)
    before = signal.getsignal(signal.SIGTERM)
    result = CliRunner().invoke(group_with_boom, ["boom", "sigterm"])
    assert result.exit_code == 130, result.output
    assert result.output.strip() == "Error: stopped by SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before  # the command's handler is gone after it


def test_deskpro_traceback_shows_the_traceback(group_with_boom, monkeypatch):
    monkeypatch.setenv("DESKPRO_TRACEBACK", "1")
    result = CliRunner().invoke(group_with_boom, ["boom", "enospc"])
    assert isinstance(result.exception, OSError)


def test_os_error_line_keeps_library_messages():
    assert os_error_line(FileNotFoundError("RUN/train_state.pt: no training state")) == (
        "RUN/train_state.pt: no training state"
    )
    assert os_error_line(PermissionError(errno.EACCES, "Permission denied", "x/y")) == (
        "x/y: permission denied; choose a folder you may write"
    )


# ---- single options


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "bogus"], "Invalid value for '--device': not a device"),
        (["--device", "cuda:7"], "--device"),
        (["--topk", "0"], "Invalid value for '--topk'"),
        (["--queries", "0"], "Invalid value for '--queries'"),
    ],
)
def test_visualize_options_are_checked_before_loading(tmp_path, args, message):
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"x")
    if args[0] == "--device" and args[1] == "cuda:7":
        import torch

        if torch.cuda.device_count() > 7:
            pytest.skip("this machine has 8 GPUs")
    result = CliRunner().invoke(
        main, ["visualize", "ranks", str(ckpt), str(tmp_path), "-o", str(tmp_path / "p"), *args]
    )
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "p").exists()


def test_one_device_default_everywhere():
    defaults = {
        " ".join(path): next(p.default for p in command.params if p.name == "device")
        for path, command in _commands()
        if any(p.name == "device" for p in command.params)
    }
    assert set(defaults.values()) == {"auto"}, defaults
    assert {"train", "evaluate", "ablate", "visualize ranks", "visualize attention"} <= set(defaults)


def _log_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text(
        '{"epoch": 1, "lr": 0.001, "total": 2.0, "step": 3}\n'
        '{"epoch": 2, "lr": 0.0005, "total": 1.5, "step": 6}\n'
    )
    (run / "config.json").write_text("{}\n")
    return run


@pytest.mark.parametrize("target", ["log.jsonl", "config.json"])
def test_plot_never_writes_over_the_runs_files(tmp_path, target):
    run = _log_run(tmp_path)
    before = (run / target).read_bytes()
    result = CliRunner().invoke(main, ["plot", str(run), "-o", str(run / target)])
    assert result.exit_code == 1 and "is an input of this command" in result.output
    assert (run / target).read_bytes() == before


def test_plot_refuses_a_foreign_file_without_force_and_says_what_it_wrote(tmp_path):
    run = _log_run(tmp_path)
    foreign = tmp_path / "notes.txt"
    foreign.write_text("mine")
    refused = CliRunner().invoke(main, ["plot", str(run), "-o", str(foreign)])
    assert refused.exit_code == 1 and "--force" in refused.output and foreign.read_text() == "mine"
    made = CliRunner().invoke(main, ["plot", str(run), "-o", str(tmp_path / "deep" / "c.png")])
    assert made.exit_code == 0 and made.output.strip() == f"wrote {tmp_path / 'deep' / 'c.png'}"
    again = CliRunner().invoke(main, ["plot", str(run), "-o", str(tmp_path / "deep" / "c.png")])
    assert again.exit_code == 0  # its own PNG: replaced


# ---- read-only and full output folders (tmpfs mounts need root)


def _mount(where: Path, options: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()[:80]})")


@pytest.fixture
def mounted(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("tmpfs mounts need root")
    points = []

    def mount(name: str, options: str) -> Path:
        where = tmp_path / name
        _mount(where, options)
        points.append(where)
        return where

    yield mount
    for where in reversed(points):
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _deskpro(args, cwd: Path) -> subprocess.CompletedProcess:
    """In a process of its own: a crash of the C layers (HDF5) must not take the suite with it."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("DESKPRO_TRACEBACK", None)
    return subprocess.run(
        [sys.executable, "-m", "deskpro", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _full_disk_cases(inputs) -> dict:
    shards, run, work, manifest, root, ckpt = inputs
    return {
        "manifest": lambda out: ["manifest", "prcc", root, "-o", out / "m.parquet"],
        "preprocess": lambda out: [
            "preprocess",
            manifest,
            "-o",
            out / "work",
            "--parser",
            "oracle",
            "--detector",
            "oracle",
            "--restorer",
            "oracle",
            "--no-progress",
        ],
        "pack": lambda out: ["pack", work, "-o", out / "shards", "--no-progress"],
        "train": lambda out: [
            "train",
            shards,
            "-o",
            out / "run",
            "--baseline",
            "--backbone",
            "osnet_x0_25",
            "--epochs",
            "1",
            "--warmup-epochs",
            "0",
            "--p",
            "2",
            "--k",
            "2",
            "--workers",
            "0",
            "--no-progress",
        ],
        "evaluate": lambda out: [
            "evaluate",
            shards,
            "--checkpoint",
            ckpt,
            "-o",
            out / "e.json",
            "--no-progress",
        ],
        "plot": lambda out: ["plot", run, "-o", out / "c.png"],
    }


COMMANDS_THAT_WRITE = ("manifest", "preprocess", "pack", "train", "evaluate", "plot")


@pytest.fixture(scope="module")
def writer_inputs(tmp_path_factory):
    from _examples_inputs import StandIns

    stand_ins = StandIns(tmp_path_factory.mktemp("reliability-inputs"))
    run = stand_ins.run("deskpro")
    manifest = stand_ins.cache / "m.parquet"
    stand_ins.manifest(manifest, 6)
    return stand_ins.shards(), run, stand_ins.work(), manifest, stand_ins.dataset(), run / "checkpoint.pt"


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS_THAT_WRITE)
@pytest.mark.parametrize("condition", ["read-only", "full"])
def test_a_read_only_or_full_output_folder_is_one_line_naming_the_path(
    command, condition, writer_inputs, mounted, tmp_path
):
    out = mounted("out", "ro,size=1m" if condition == "read-only" else "size=64k")
    if condition == "full":  # every byte taken: the command's first write fails
        try:
            with open(out / "filler", "wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
        except OSError:  # the disk is full (also raised again when the file closes)
            pass
    done = _deskpro(_full_disk_cases(writer_inputs)[command](out), tmp_path)
    text = (done.stdout + done.stderr).strip()
    assert done.returncode == 1, (done.returncode, text)
    errors = [line for line in text.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and str(out) in errors[0] and "Traceback" not in text, text
    hint = "read-only" if condition == "read-only" else "no space left"
    assert hint in errors[0], errors[0]
    # nothing that looks complete: no catalog, no manifest, no report, no complete stage, no picture
    complete = {"catalog.json", "m.parquet", "e.json", "c.png", "checkpoint.pt"}
    left = {p.name for p in out.rglob("*")}
    assert not (complete & left), left


class _Payload:  # an object weights_only=True refuses: a file that would run code when unpickled
    pass


@pytest.mark.parametrize("flag", ["--checkpoint", "--teacher"])
def test_a_checkpoint_with_code_names_the_flag_the_file_and_trust_checkpoint(tmp_path, flag):
    import torch
    from _train_utils import write_tiny_shards

    shards = write_tiny_shards(tmp_path / "s", train_ids=3, per_id=2, test_ids=2)
    bad = tmp_path / "pickled.pth"
    torch.save({"state_dict": {}, "cfg": _Payload()}, bad)
    if flag == "--checkpoint":
        args = ["evaluate", shards, "--checkpoint", bad]
    else:
        args = ["train", shards, "-o", tmp_path / "r", "--teacher", bad, "--p", "2", "--workers", "0"]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 1, result.output
    line = result.output.strip()
    assert line.startswith(f"Error: {flag} {bad}: cannot be read as a checkpoint: holds Python objects")
    assert "--trust-checkpoint" in line and "weights_only=False" not in line and len(line.splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_ablate_short_epochs_write_a_config_that_train_accepts(tmp_path):
    """`ablate --epochs 6` against the preset's 10 warm-up epochs: each run's config is one `train
    --config` accepts (warm-up 5, the schedule's limit), and a given --warmup-epochs 6 is refused
    before the first run starts."""
    import json

    from _train_utils import write_tiny_shards

    from deskpro.experiments.ablate import AblationSettings, _config, check_configs
    from deskpro.experiments.rows import RUNS

    shards = write_tiny_shards(tmp_path / "s", train_ids=3, per_id=2, test_ids=2)
    runs = list(RUNS.values()) if isinstance(RUNS, dict) else list(RUNS)
    settings = AblationSettings(overrides={"epochs": 6})
    for run in runs:
        config = _config(shards, run, settings)
        assert config.warmup_epochs < config.epochs
        path = tmp_path / f"{run.name}.json"
        path.write_text(json.dumps(config.to_dict()))
        phase = {"teacher": "train-teacher"}.get(run.phase, "train")
        flag = {"baseline": ["--baseline"], "student": ["--student"]}.get(run.phase, [])
        printed = CliRunner().invoke(
            main, [phase, str(shards), *flag, "--print-config", "--config", str(path)]
        )
        assert printed.exit_code == 0, printed.output
    with pytest.raises(ValueError, match="--warmup-epochs 6 must be below --epochs 6"):
        check_configs(shards, runs, AblationSettings(overrides={"epochs": 6, "warmup_epochs": 6}))
    refused = CliRunner().invoke(
        main, ["ablate", str(shards), "-o", str(tmp_path / "t"), "--epochs", "6", "--warmup-epochs", "6"]
    )
    assert refused.exit_code == 1 and "--warmup-epochs 6 must be below" in refused.output
    assert not (tmp_path / "t").exists()


def test_a_checkpoint_of_other_sizes_than_the_shards_is_refused():
    from deskpro.model.checkpoint import CheckpointError, check_shard_sizes

    meta = {"preprocessing": {"body_size": [64, 32], "face_size": 32}}
    packed = {"body_size": [384, 128], "face_size": 32}
    with pytest.raises(
        CheckpointError,
        match=r"ckpt.pt: trained on 64x32 bodies and 32 px faces, but shards/prcc is packed at 384x128",
    ):
        check_shard_sizes(meta, packed, "ckpt.pt", "shards/prcc")
    check_shard_sizes(meta, {"body_size": [64, 32], "face_size": 32}, "ckpt.pt", "shards/prcc")
    check_shard_sizes({}, packed, "official.pth", "shards/prcc")  # no sizes recorded: not checked
    check_shard_sizes({**meta, "extra": {"official": True}}, packed, "official.pth", "shards/prcc")
