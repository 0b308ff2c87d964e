"""Trainer: schedule, phases end to end on tiny shards, exact resume, checkpoints and logs, CLI."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
from _train_utils import write_tiny_shards
from click.testing import CliRunner

from deskpro.cli import main
from deskpro.model import checkpoint
from deskpro.train.evaluate import evaluate
from deskpro.train.loop import TrainRunOptions, run_threads, run_training, train
from deskpro.train.phases import build_model
from deskpro.train.rundir import RunDir
from deskpro.train.schedule import lr_factor, warmup_cosine
from deskpro.train.settings import planned_config, resolve_config

QUIET = TrainRunOptions(progress=False)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_tiny_shards(tmp_path_factory.mktemp("shards") / "s", train_ids=4, per_id=4)


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory):
    return write_tiny_shards(
        tmp_path_factory.mktemp("small") / "s", train_ids=4, per_id=2, test_ids=2, val_ids=2
    )


@pytest.fixture(scope="module")
def jpeg_shards(tmp_path_factory):
    return write_tiny_shards(
        tmp_path_factory.mktemp("jpeg") / "s", train_ids=4, per_id=2, test_ids=2, codec="jpeg"
    )


def _state(run):
    return RunDir(run).load_state()


_BASE = {"p": 2, "k": 2, "epochs": 2, "warmup_epochs": 1, "num_workers": 0}


def _config(shards, phase, **kw):
    return resolve_config(shards, phase, **(_BASE | kw))


def test_schedule_matches_the_official_form():
    kw = {"epochs": 140, "warmup_epochs": 10, "min_factor": 1e-3}
    assert lr_factor(0, **kw) == pytest.approx(0.1)
    assert lr_factor(9, **kw) == pytest.approx(1.0)
    assert lr_factor(10, **kw) == pytest.approx(1.0)
    assert lr_factor(139, **kw) == pytest.approx(1e-3)
    mid = lr_factor(10 + 129 // 2, **kw)
    assert 0.4 < mid < 0.6
    factors = [lr_factor(e, **kw) for e in range(10, 140)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = warmup_cosine(opt, **kw)
    lrs = []
    for _ in range(140):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.2) and lrs[-1] == pytest.approx(2e-3)


def test_config_comes_from_the_shards(shards):
    config = _config(shards, "deskpro")
    assert config.dataset == "synthetic" and config.body_size == (64, 32) and config.face_size == 32
    assert config.method.tau == 1.0 and config.method.alpha == 0.8  # the PRCC-like preset
    assert config.lr == pytest.approx(6e-4 * (4 / 20) ** 0.5)


def test_resume_is_exact(small_shards, tmp_path):
    config = _config(small_shards, "baseline")  # 2 iterations per epoch
    straight = train(small_shards, tmp_path / "a", config, QUIET)
    train(small_shards, tmp_path / "b", config, TrainRunOptions(progress=False, max_iters=2))
    assert _state(tmp_path / "b")["epoch"] == 1
    after_one = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["state_dict"]
    resumed = train(small_shards, tmp_path / "b", config, TrainRunOptions(progress=False, resume=True))
    a = torch.load(straight, weights_only=True)["state_dict"]
    b = torch.load(resumed, weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The comparison can fail: the second epoch really changed the weights.
    assert not all(torch.equal(a[k], after_one[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and [r["step"] for r in log] == [2, 4]
    assert all(r["total"] > 0 and r["images_per_s"] > 0 for r in log)


def _log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _untimed(records):
    return [{k: v for k, v in r.items() if k != "images_per_s"} for r in records]


def test_a_cpu_run_keeps_its_thread_count_through_a_resume_whatever_the_load(
    small_shards, tmp_path, monkeypatch
):
    from deskpro.common import threads
    from deskpro.train import data

    monkeypatch.delenv("DESKPRO_THREADS", raising=False)
    config = _config(small_shards, "baseline")
    run = tmp_path / "run"
    train(small_shards, run, config, TrainRunOptions(progress=False, max_iters=1))
    chosen = _state(run)["threads"]
    assert chosen == threads.choose_threads(config.num_workers)  # chosen at the start, saved
    monkeypatch.setattr(threads, "free_cores", lambda affinity=None: 0)  # now every core is busy
    asked = []
    monkeypatch.setattr(data, "apply_threads", lambda workers, requested=None: asked.append(requested))
    train(small_shards, run, config, TrainRunOptions(progress=False, resume=True))
    assert asked and set(asked) == {chosen} and _state(run)["threads"] == chosen
    assert run_threads(config, torch.device("cuda"), None) is None  # on a GPU: each epoch's loader


def test_max_iters_mid_epoch_then_resume_equals_an_uninterrupted_run(small_shards, tmp_path):
    config = _config(small_shards, "baseline")  # 2 epochs of 2 iterations
    straight = train(small_shards, tmp_path / "a", config, QUIET)
    run = tmp_path / "b"
    train(small_shards, run, config, TrainRunOptions(progress=False, max_iters=1))
    state = _state(run)
    # Stopped inside epoch 1: its place is kept and the per-epoch schedule has not moved.
    assert (state["epoch"], state["batch"], state["step"]) == (0, 1, 1)
    assert state["scheduler"]["last_epoch"] == 0 and state["partial"]["sums"]
    assert _log(run)[-1]["partial"] is True and _log(run)[-1]["batches"] == 1
    train(small_shards, run, config, TrainRunOptions(progress=False, resume=True, max_iters=3))
    assert (_state(run)["epoch"], _state(run)["batch"]) == (1, 1)  # inside epoch 2 now
    resumed = train(small_shards, run, config, TrainRunOptions(progress=False, resume=True))
    a = torch.load(straight, weights_only=True)["state_dict"]
    b = torch.load(resumed, weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The log reads as the uninterrupted run's: partial lines replaced by the whole epochs' lines.
    assert _untimed(_log(run)) == _untimed(_log(tmp_path / "a"))
    assert [r["step"] for r in _log(run)] == [2, 4]
    # Resuming a finished run trains nothing and changes nothing.
    before = _state(run)["step"]
    train(small_shards, run, config, TrainRunOptions(progress=False, resume=True))
    assert _state(run)["step"] == before and len(_log(run)) == 2


def test_resume_refuses_changed_settings(small_shards, tmp_path):
    config = _config(small_shards, "baseline", epochs=1)
    train(small_shards, tmp_path / "r", config, TrainRunOptions(progress=False, max_iters=1))
    with pytest.raises(ValueError, match="changed settings: k 2 -> 1"):
        train(
            small_shards, tmp_path / "r", _config(small_shards, "baseline", k=1), TrainRunOptions(resume=True)
        )
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(small_shards, tmp_path / "r", config, QUIET)
    with pytest.raises(FileNotFoundError, match="train_state.pt"):
        train(small_shards, tmp_path / "none", config, TrainRunOptions(progress=False, resume=True))


@pytest.mark.parametrize(
    ("override", "change"),
    [
        ({"epochs": 3}, "epochs 2 -> 3"),
        ({"warmup_epochs": 0}, "warmup_epochs 1 -> 0"),
        ({"base_lr": 1e-3}, "base_lr"),
    ],
)
def test_resume_refuses_a_changed_schedule(small_shards, tmp_path, override, change):
    run = tmp_path / "r"
    run_training(small_shards, run, "baseline", _BASE, TrainRunOptions(progress=False, max_iters=1))
    with pytest.raises(ValueError, match=f"cannot resume with changed settings: {change}"):
        run_training(small_shards, run, "baseline", override, TrainRunOptions(progress=False, resume=True))
    assert _state(run)["step"] == 1  # nothing trained or written


def test_resume_takes_the_saved_settings(small_shards, tmp_path):
    """A resume needs no settings repeated; runtime ones (workers) may change."""
    run = tmp_path / "r"
    run_training(small_shards, run, "baseline", _BASE, TrainRunOptions(progress=False, max_iters=1))
    final = run_training(
        small_shards,
        run,
        "baseline",
        {"num_workers": 0, "epochs": 2},
        TrainRunOptions(progress=False, resume=True),
    )
    assert final.is_file() and _state(run)["step"] == 4
    assert json.loads((run / "config.json").read_text())["p"] == 2
    assert planned_config(small_shards, run, "baseline").epochs == 2


def test_run_dir_must_be_new_empty_or_a_run(small_shards, tmp_path):
    config = _config(small_shards, "baseline", epochs=1)
    options = TrainRunOptions(progress=False, max_iters=1)
    afile = tmp_path / "file"
    afile.write_text("keep")
    with pytest.raises(FileExistsError, match="is a file"):
        train(small_shards, afile, config, options)
    other = tmp_path / "photos"
    other.mkdir()
    (other / "a.jpg").write_text("keep")
    with pytest.raises(FileExistsError, match="not a deskpro run.*a.jpg"):
        train(small_shards, other, config, options)
    assert afile.read_text() == "keep" and sorted(p.name for p in other.iterdir()) == ["a.jpg"]
    started = tmp_path / "started"  # a run that stopped before its first checkpoint starts over
    started.mkdir()
    (started / "config.json").write_text("{}")
    train(small_shards, started, config, options)
    (tmp_path / "empty").mkdir()
    train(small_shards, tmp_path / "empty", config, options)
    assert (started / "train_state.pt").is_file() and (tmp_path / "empty" / "train_state.pt").is_file()


@pytest.mark.parametrize(("settings", "message"), [({"epochs": 0}, "epochs must be >= 1"), ({}, "max_iters")])
def test_refuses_empty_runs(small_shards, tmp_path, settings, message):
    options = TrainRunOptions(progress=False, max_iters=None if settings else 0)
    with pytest.raises(ValueError, match=message):
        train(small_shards, tmp_path / "x", _config(small_shards, "baseline", **settings), options)
    assert not (tmp_path / "x").exists()


def test_tensorboard_missing_names_the_extra(small_shards, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if absent
    options = TrainRunOptions(progress=False, tensorboard=True)
    with pytest.raises(ImportError, match=r"deskpro\[tensorboard\]"):
        train(small_shards, tmp_path / "x", _config(small_shards, "baseline"), options)
    assert not (tmp_path / "x").exists()


def test_teacher_then_deskpro(shards, tmp_path):
    teacher_ckpt = train(
        shards,
        tmp_path / "t",
        _config(shards, "teacher", epochs=1),
        TrainRunOptions(progress=False, max_iters=2),
    )
    teacher = checkpoint.load(teacher_ckpt)
    assert type(teacher).__name__ == "LightMBN" and teacher.num_classes == 4
    options = TrainRunOptions(progress=False, max_iters=2, teacher=str(teacher_ckpt))  # one face-less row
    final = train(shards, tmp_path / "d", _config(shards, "deskpro", epochs=1), options)
    model = checkpoint.load(final)
    assert model.checkpoint_meta["config"]["phase"] == "deskpro"
    assert model.checkpoint_meta["preprocessing"]["body_size"] == [64, 32]
    # The teacher's weights stayed frozen; in the default --teacher-mode train (the official way)
    # its BatchNorm normalised with batch statistics and so updated its running ones.
    assert model.checkpoint_meta["class_pids"] == teacher.checkpoint_meta["class_pids"]
    after = model.face_net.state_dict()
    for key, value in teacher.state_dict().items():
        if "running_" in key or "num_batches_tracked" in key:
            continue
        assert torch.equal(after[key], value), key
    assert not torch.equal(
        after["backbone.0.bn.running_mean"], teacher.state_dict()["backbone.0.bn.running_mean"]
    )
    state = _state(tmp_path / "d")  # weights_only-loadable
    assert (state["step"], state["epoch"], state["batch"]) == (2, 0, 2)  # stopped inside the epoch
    record = json.loads((tmp_path / "d" / "log.jsonl").read_text().splitlines()[-1])
    assert {"att", "fkp", "ce_face", "ce_body", "triplet", "total", "lr"} <= set(record)
    report = evaluate(shards, final, progress=False, trials=2)
    protocols = {(r["protocol"], r["stream"]) for r in report["results"]}
    assert ("cc", "both") in protocols and ("sc-single", "face") in protocols
    assert all(0.0 <= r["mAP"] <= 1.0 and r["queries"] == 3 for r in report["results"])


def test_student_alone_trains_only_the_student_on_low_res_faces(shards, tmp_path):
    config = _config(shards, "student", epochs=1)
    start = build_model(config, 4)
    final = train(shards, tmp_path / "s", config, TrainRunOptions(progress=False, max_iters=2))
    student = checkpoint.load(final)
    assert type(student).__name__ == "LightMBN" and student.checkpoint_meta["config"]["phase"] == "student"
    trained = student.state_dict()
    assert not torch.equal(
        trained["backbone.0.conv.weight"], start.lr_face_net.state_dict()["backbone.0.conv.weight"]
    )
    record = json.loads((tmp_path / "s" / "log.jsonl").read_text().splitlines()[-1])
    assert {"ce", "triplet", "total"} <= set(record)
    with pytest.raises(checkpoint.CheckpointError, match=r"student checkpoint .* not a teacher"):
        checkpoint.read_teacher(final)


def test_deskpro_needs_a_teacher(shards, tmp_path):
    with pytest.raises(ValueError, match="teacher"):
        train(shards, tmp_path / "x", _config(shards, "deskpro"), QUIET)


def test_amp_the_device_cannot_run_fails_before_training(shards, tmp_path):
    with pytest.raises(ValueError, match="fp16.*needs a CUDA device"):
        train(shards, tmp_path / "x", _config(shards, "baseline", amp="fp16"), QUIET)
    assert not (tmp_path / "x").exists()


def test_cli_baseline_and_evaluate(small_shards, tmp_path):
    shards = small_shards
    runner = CliRunner()
    run = tmp_path / "cli"
    args = [
        "train",
        str(shards),
        "-o",
        str(run),
        "--baseline",
        "--p",
        "2",
        "--k",
        "2",
        "--epochs",
        "1",
        "--warmup-epochs",
        "0",
        "--workers",
        "0",
        "--max-iters",
        "1",
        "--device",
        "cpu",
        "--no-progress",
    ]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert (run / "checkpoint.pt").is_file()
    out_json = tmp_path / "eval.json"
    result = runner.invoke(
        main,
        [
            "evaluate",
            str(shards),
            "--checkpoint",
            str(run / "checkpoint.pt"),
            "--json",
            str(out_json),
            "--trials",
            "2",
            "--device",
            "cpu",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "cc-single" in result.output and "sc" in result.output
    report = json.loads(out_json.read_text())
    assert {r["stream"] for r in report["results"]} == {"body"}  # a baseline reports the body stream
    result = runner.invoke(main, ["train", str(shards), "-o", str(run)])
    assert result.exit_code != 0 and "--baseline" in result.output


@pytest.mark.slow
def test_ddp_two_ranks_on_cpu(small_shards, tmp_path):
    """torchrun with 2 gloo ranks (identities split across ranks): one batch each, rank 0 writes the run."""
    import subprocess
    import sys

    run = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        "29517",
        "-m",
        "deskpro",
        "train",
        str(small_shards),
        "-o",
        str(run),
        "--baseline",
        "--ids-per-batch",  # torchrun's own parser would take --p as an abbreviation
        "2",
        "--images-per-id",
        "2",
        "--epochs",
        "1",
        "--warmup-epochs",
        "0",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--no-progress",
    ]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and log[0]["step"] == 1  # 4 ids over 2 ranks: 2 ids per rank, one P=2 batch
    assert (run / "checkpoint.pt").is_file()


def test_imagenet_init_fills_the_trained_streams(small_shards, tmp_path):
    from deskpro.model.osnet import osnet_x1_0

    source = osnet_x1_0()
    torch.save(source.state_dict(), tmp_path / "osnet.pth")
    config = _config(small_shards, "baseline")
    plain = build_model(config, 4)
    model = build_model(config, 4, imagenet=str(tmp_path / "osnet.pth"))
    conv1 = source.conv1.state_dict()
    trunk = model.nocloth_net.backbone[0].state_dict()
    assert all(torch.equal(trunk[k], v) for k, v in conv1.items())
    assert not all(torch.equal(plain.nocloth_net.backbone[0].state_dict()[k], v) for k, v in conv1.items())
    # Seeded init: the same seed builds the same weights.
    again = build_model(config, 4)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), again.state_dict().values()))


def test_select_on_val_keeps_the_best_val_epoch(small_shards, tmp_path):
    config = _config(small_shards, "baseline", epochs=2)
    final = train(small_shards, tmp_path / "v", config, TrainRunOptions(progress=False, select_on_val=True))
    assert final.name == "best.pt" and final.is_file()
    log = [json.loads(line) for line in (tmp_path / "v" / "log.jsonl").read_text().splitlines()]
    scores = [r["val_mAP"] for r in log]
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
    best_epoch = checkpoint.load(final).checkpoint_meta["extra"]["epoch"]
    assert scores[best_epoch - 1] == max(scores)
    with pytest.raises(ValueError, match="select-on-val"):
        train(
            small_shards,
            tmp_path / "t",
            _config(small_shards, "teacher"),
            TrainRunOptions(select_on_val=True),
        )


# ---------------------------------------------------------------- decode_on


def _spy_decoded(monkeypatch) -> list[bool]:
    """Per batch the loop decodes: True when it came from the workers as JPEG bytes."""
    from deskpro.train import loop

    seen, real = [], loop.decoded

    def spy(batch, options, device):
        seen.append("jpeg" in batch)
        return real(batch, options, device)

    monkeypatch.setattr(loop, "decoded", spy)
    return seen


@pytest.mark.parametrize("phase", ["baseline", "student"])  # bodies + parse maps; low-res faces
def test_decode_on_device_trains_exactly_as_decode_on_worker(jpeg_shards, tmp_path, monkeypatch, phase):
    """On the CPU the device path runs torchvision's decoder in the loop, the worker path PIL's in the
    worker; they agree bit for bit (test_train_data.py), so the loss logs and weights are equal."""
    seen = _spy_decoded(monkeypatch)
    # fast: a narrow net, one epoch; the same workers (0), hence the same thread count (the suite's
    # thread counts ignore the load: conftest.py)
    narrow = {"backbone": "osnet_x0_25", "epochs": 1, "warmup_epochs": 0}
    by_worker = train(jpeg_shards, tmp_path / "w", _config(jpeg_shards, phase, **narrow), QUIET)  # auto
    assert seen and not any(seen)  # auto on the CPU: the workers decoded
    seen.clear()
    config = _config(jpeg_shards, phase, decode_on="device", **narrow)
    on_device = train(jpeg_shards, tmp_path / "d", config, QUIET)
    steps = _state(tmp_path / "d")["step"]
    assert steps >= 2 and seen == [True] * steps  # every batch came as bytes, decoded in the loop
    assert _untimed(_log(tmp_path / "d")) == _untimed(_log(tmp_path / "w"))
    assert _log(tmp_path / "d")[-1]["total"] > 0
    a = torch.load(by_worker, weights_only=True)["state_dict"]
    b = torch.load(on_device, weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_decode_on_may_change_on_resume(jpeg_shards, tmp_path, monkeypatch):
    seen = _spy_decoded(monkeypatch)
    run = tmp_path / "r"
    device = TrainRunOptions(progress=False, max_iters=1)
    settings = _BASE | {"decode_on": "device", "backbone": "osnet_x0_25"}
    run_training(jpeg_shards, run, "baseline", settings, device)
    resumed = TrainRunOptions(progress=False, resume=True)
    run_training(jpeg_shards, run, "baseline", {"decode_on": "worker"}, resumed)
    assert seen == [True, False, False, False] and _state(run)["step"] == 4
    assert json.loads((run / "config.json").read_text())["decode_on"] == "worker"


def test_decode_on_device_refuses_raw_shards(small_shards, tmp_path):
    config = _config(small_shards, "baseline", decode_on="device")
    with pytest.raises(ValueError, match=r"--decode-on device: .* has codec 'raw', no JPEG bytes"):
        train(small_shards, tmp_path / "x", config, QUIET)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="--decode-on: unknown place 'gpu'"):
        _config(small_shards, "baseline", decode_on="gpu")
