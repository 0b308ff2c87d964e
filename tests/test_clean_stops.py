"""Stops that are clean: SIGINT/SIGTERM at any moment, NaN losses, resumes that look at their data,
a finished run's lost checkpoint, a torn log line, and a second run into a locked run directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from _train_utils import write_tiny_shards
from click.testing import CliRunner

from deskpro.cli import main
from deskpro.common.locks import OutputLockedError
from deskpro.experiments.pictures import read_log
from deskpro.train import loop
from deskpro.train.halts import NonFiniteLossError
from deskpro.train.loop import TrainRunOptions, train
from deskpro.train.rundir import RunDir
from deskpro.train.settings import resolve_config

REPO = Path(__file__).resolve().parents[1]
QUIET = TrainRunOptions(progress=False)
FAST = {"p": 2, "k": 2, "epochs": 2, "warmup_epochs": 1, "num_workers": 0, "backbone": "osnet_x0_25"}
TRAIN_ARGS = ["--baseline", "--p", "2", "--k", "2", "--warmup-epochs", "1", "--backbone", "osnet_x0_25"]
TRAIN_ARGS += ["--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):  # 8 train images: 2 steps an epoch
    return write_tiny_shards(tmp_path_factory.mktemp("shards") / "s", train_ids=4, per_id=2, test_ids=2)


@pytest.fixture(scope="module")
def finished(shards, tmp_path_factory):
    """A finished 2-epoch run (4 steps)."""
    run = tmp_path_factory.mktemp("runs") / "done"
    train(shards, run, resolve_config(shards, "baseline", **FAST), QUIET)
    return run


def _env():
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "DESKPRO_THREADS": "1"}


# The at-fork moment, made deterministic: SIGINT arrives while the second epoch's loader forks its
# worker, inside a fork callback (the reported bug: this Ctrl-C was swallowed, training ran on).
AT_FORK = """
import os, signal, sys
from pathlib import Path
log = Path(sys.argv[3]) / "log.jsonl"  # argv: SHARDS -o RUN ...
sent = []
def interrupt():
    if not sent and log.exists():
        sent.append(1)
        os.kill(os.getpid(), signal.SIGINT)
os.register_at_fork(after_in_parent=interrupt)
from deskpro.cli import main
main(["train", *sys.argv[1:]])
"""


@pytest.mark.slow
def test_ctrl_c_as_the_next_epochs_loader_forks_stops_resumably_without_traceback(shards, tmp_path):
    run = tmp_path / "run"
    args = [str(shards), "-o", str(run), *TRAIN_ARGS, "--epochs", "3", "--workers", "1"]
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", AT_FORK, *args], capture_output=True, text=True, env=_env(), timeout=300
    )
    assert done.returncode != 0, "the Ctrl-C was lost: training ran on to the end"
    assert "Traceback" not in done.stderr, done.stderr
    assert "stopped by SIGINT at epoch 2, step 2" in done.stderr and "--resume" in done.stderr
    assert RunDir(run).load_state()["epoch"] == 1 and len(read_log(run)) == 1
    assert time.monotonic() - start < 300
    final = train(
        shards,
        run,
        resolve_config(shards, "baseline", **FAST | {"epochs": 3}),
        TrainRunOptions(progress=False, resume=True),
    )
    assert torch.load(final, weights_only=True)["extra"]["epoch"] == 3
    assert [r["epoch"] for r in read_log(run)] == [1, 2, 3]


def _wait_for(predicate, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.005)
    return False


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "moment", "delay"),
    [
        (signal.SIGTERM, "start", 1.5),  # imports, setup
        (signal.SIGINT, "epoch end", 0.0),  # bookkeeping, the next loader's fork
        (signal.SIGINT, "mid-epoch", 0.4),
    ],
)
def test_sigint_and_sigterm_at_any_moment_stop_within_seconds(shards, tmp_path, signum, moment, delay):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "deskpro", "train", str(shards), "-o", str(run), *TRAIN_ARGS]
    child = subprocess.Popen(
        [*command, "--epochs", "40", "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        if moment != "start":
            assert _wait_for(lambda: (run / "log.jsonl").is_file(), 240), "no epoch ended in 240 s"
        time.sleep(delay)
        child.send_signal(signum)
        sent = time.monotonic()
        _, err = child.communicate(timeout=60)
        seconds = time.monotonic() - sent
    finally:
        child.kill()
    assert child.returncode != 0 and "Traceback" not in err, err
    assert seconds < 30  # on a loaded 2-core machine; about 2-5 s in practice
    if (run / "train_state.pt").exists():  # resumable: a consistent state and log
        state = RunDir(run).load_state()
        assert 1 <= state["step"] < 80 and state["epoch"] < 40
        assert "--resume" in err


def test_a_nan_loss_stops_in_one_line_and_keeps_the_last_good_checkpoint(shards, tmp_path, monkeypatch):
    run = tmp_path / "run"
    real, calls = loop.loss_terms, []

    def nan_from_step_3(*args, **kwargs):  # epoch 1 (steps 1, 2) is good
        terms = real(*args, **kwargs)
        calls.append(1)
        return terms | {"total": terms["total"] * float("nan")} if len(calls) >= 3 else terms

    monkeypatch.setattr(loop, "loss_terms", nan_from_step_3)
    with pytest.raises(NonFiniteLossError) as stop:
        train(shards, run, resolve_config(shards, "baseline", **FAST), QUIET)
    message = str(stop.value)
    assert "\n" not in message
    assert "the loss is nan at epoch 2, step 3; stopped" in message and "keeps the last good state" in message
    assert "a lower --lr" in message
    kept = torch.load(run / "checkpoint.pt", weights_only=True)
    assert kept["extra"]["epoch"] == 1 and all(torch.isfinite(v).all() for v in kept["state_dict"].values())
    assert RunDir(run).load_state()["step"] == 2 and len(read_log(run)) == 1


def test_a_huge_lr_is_one_line_at_the_command_line(shards, tmp_path):
    args = ["train", str(shards), "-o", str(tmp_path / "run"), *TRAIN_ARGS, "--epochs", "2"]
    result = CliRunner().invoke(main, [*args, "--workers", "0", "--lr", "1e30"])
    assert result.exit_code == 1 and result.exception is None or isinstance(result.exception, SystemExit)
    assert "the loss is nan at epoch 1" in result.output and "Traceback" not in result.output
    assert "nothing was saved" in result.output


def test_resume_on_other_shards_is_refused_in_one_line(shards, tmp_path):
    run = tmp_path / "run"
    config = resolve_config(shards, "baseline", **FAST)
    train(shards, run, config, TrainRunOptions(progress=False, max_iters=1))
    more_ids = write_tiny_shards(tmp_path / "more", train_ids=5, per_id=2, test_ids=2)
    repacked = write_tiny_shards(tmp_path / "again", train_ids=4, per_id=2, test_ids=2, seed=3)
    resume = TrainRunOptions(progress=False, resume=True)
    for other, why in ((more_ids, "class table of 4 ids -> 5 ids"), (repacked, "another catalog")):
        with pytest.raises(ValueError, match="trained on other shards") as refused:
            train(other, run, resolve_config(other, "baseline", **FAST), resume)
        assert why in str(refused.value) and "\n" not in str(refused.value)
    assert RunDir(run).load_state()["step"] == 1  # nothing was written


def test_resume_of_a_finished_run_without_its_checkpoint_is_refused(shards, finished, tmp_path):
    run = tmp_path / "copy"
    run.mkdir()
    for f in finished.iterdir():
        (run / f.name).write_bytes(f.read_bytes())
    (run / "checkpoint.pt").unlink()
    args = ["train", str(shards), "-o", str(run), *TRAIN_ARGS, "--epochs", "2", "--resume"]
    result = CliRunner().invoke(main, [*args, "--workers", "0"])
    assert result.exit_code != 0
    assert "finished (2 of 2 epochs) but" in result.output
    assert "checkpoint.pt is missing; nothing to resume" in result.output


def test_a_torn_last_log_line_blocks_neither_plot_nor_resume(shards, finished, tmp_path, caplog):
    run = tmp_path / "copy"
    run.mkdir()
    for f in finished.iterdir():
        (run / f.name).write_bytes(f.read_bytes())
    lines = (run / "log.jsonl").read_text().splitlines(keepends=True)
    (run / "log.jsonl").write_text(lines[0] + lines[1][: len(lines[1]) // 2])  # killed mid-append
    assert [r["epoch"] for r in read_log(run)] == [1]
    assert "line 2 is torn" in caplog.text
    result = CliRunner().invoke(main, ["plot", str(run), "-o", str(tmp_path / "curves.png")])
    assert result.exit_code == 0, result.output
    final = train(
        shards, run, resolve_config(shards, "baseline", **FAST), TrainRunOptions(progress=False, resume=True)
    )  # the run had finished: nothing to train, the log repaired from train_state.pt
    assert final.is_file()
    assert [json.loads(line)["epoch"] for line in (run / "log.jsonl").read_text().splitlines()] == [1, 2]
    (run / "log.jsonl").write_text('{"epoch": 1, "st\n' + lines[1])  # damage before the end: an error
    with pytest.raises(ValueError, match=r"log.jsonl: line 1 is not a log record"):
        read_log(run)


HOLD_RUN = """
import sys, time
from deskpro.common.locks import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_training_into_one_run_directory_is_refused(shards, tmp_path):
    run = tmp_path / "run"
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLD_RUN), str(run)],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert child.stdout.readline().strip() == "held"
        args = ["train", str(shards), "-o", str(run), *TRAIN_ARGS, "--epochs", "2", "--workers", "0"]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1
        assert f"-o {run}: in use by pid {child.pid} on " in result.output
        assert not run.exists()  # nothing written
        with pytest.raises(OutputLockedError):
            train(shards, run, resolve_config(shards, "baseline", **FAST), QUIET)
    finally:
        child.kill()
        child.wait()


def test_evaluate_and_visualize_refuse_shards_packed_at_other_sizes(finished, tmp_path):
    from deskpro.experiments.visualize import attention_picture, ranks_picture
    from deskpro.model.checkpoint import CheckpointError
    from deskpro.train.evaluate import evaluate

    other = write_tiny_shards(
        tmp_path / "small", train_ids=4, per_id=2, test_ids=2, body_size=(32, 16), face_size=16
    )
    ckpt = finished / "checkpoint.pt"
    expected = rf"{ckpt}: trained on 64x32 bodies and 32 px faces, but {other} is packed at 32x16 and 16 px"
    for call in (
        lambda: evaluate(other, ckpt, progress=False),
        lambda: attention_picture(ckpt, other, tmp_path / "pictures"),
        lambda: ranks_picture(ckpt, other, tmp_path / "pictures"),
    ):
        with pytest.raises(CheckpointError, match=expected):
            call()
    assert not (tmp_path / "pictures").exists()
