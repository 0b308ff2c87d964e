"""`deskpro ablate`: train and evaluate the rows of the paper's Table 3 that a shard set allows.

Runs live under RUN_ROOT/<run> (teacher, global, csa, deskpro, student; see `rows.py`); a finished
run (RUN/ablate-done.json with the same config) is reused, an interrupted one resumed from its
train_state.pt, so a second call trains nothing new. The results go to RUN_ROOT/ablation.json and
RUN_ROOT/ablation.md and are printed in the paper's layout.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from deskpro.common.locks import output_lock
from deskpro.common.stops import StopSignals
from deskpro.common.threads import ENV_OVERRIDE, apply_threads
from deskpro.common.torch_utils import resolve_device
from deskpro.config import preset
from deskpro.experiments.rows import RUNS, Row, Run, runs_for, select_rows
from deskpro.experiments.table import format_markdown, format_text
from deskpro.model import checkpoint
from deskpro.model.deskpro import DeSKPro
from deskpro.paper import paper_table3
from deskpro.train.data import open_reader
from deskpro.train.evaluate import evaluate_model
from deskpro.train.loop import TrainRunOptions, train
from deskpro.train.rundir import STATE_NAME
from deskpro.train.settings import resolve_config

DONE_NAME = "ablate-done.json"


@dataclass(frozen=True)
class AblationSettings:
    """What every run shares (trainer overrides) and how to run and evaluate."""

    overrides: dict = field(default_factory=dict)  # TrainConfig fields, e.g. epochs, p, k, seed
    teacher_epochs: int | None = None  # the teacher's epochs (None: as overrides / the preset)
    device: str = "cpu"
    max_iters: int | None = None
    trials: int = 10
    seed: int = 0
    progress: bool = True
    imagenet: str | None = None  # OSNet ImageNet weights for every run (real datasets need them)
    from_scratch: bool = False  # or a random init, as `deskpro train --from-scratch`
    jobs: int = 1  # runs trained at once, each in its own process (the teacher's dependants wait)
    threads: int | None = None  # torch CPU threads of each run's process (None: as this process)


def _config(shards, run: Run, settings: AblationSettings):
    """The run's TrainConfig. A preset warm-up that is not below the run's epochs (`--epochs 6`
    against the preset's 10) becomes epochs - 1, the schedule's own limit, written out so that the
    run's config.json is one `deskpro train --config` accepts; a given --warmup-epochs is checked."""
    extra = {"csa_form": run.csa_form} if run.csa_form else {}
    if run.phase == "teacher" and settings.teacher_epochs is not None:
        extra["epochs"] = settings.teacher_epochs
    config = resolve_config(shards, run.phase, **{**settings.overrides, **extra})
    if config.warmup_epochs >= config.epochs:
        flag = "--teacher-epochs" if "epochs" in extra else "--epochs"
        if settings.overrides.get("warmup_epochs") is not None:
            raise ValueError(
                f"--warmup-epochs {config.warmup_epochs} must be below {flag} {config.epochs} ({run.name})"
            )
        config = dataclasses.replace(config, warmup_epochs=config.epochs - 1)
    return config


def check_configs(shards, runs: list[Run], settings: AblationSettings) -> None:
    """Every run's settings resolved and checked before the first run starts (ValueError, one line)."""
    for run in runs:
        _config(shards, run, settings)


HOW_NOT_WHAT = ("num_workers", "decode_on")  # config fields that do not change what a run learns


def _plain(config) -> dict:
    plain = json.loads(json.dumps(config.to_dict()))
    return {k: v for k, v in plain.items() if k not in HOW_NOT_WHAT}


def train_run(shards, root: Path, run: Run, settings: AblationSettings, teacher: Path | None, echo) -> Path:
    """The run's final checkpoint: reused when finished with the same config, else trained (resumed)."""
    run_dir = root / run.name
    config = _config(shards, run, settings)
    done = run_dir / DONE_NAME
    if done.is_file():
        made = json.loads(done.read_text())
        if made["config"] != _plain(config):
            changed = sorted(k for k in made["config"] if made["config"][k] != _plain(config).get(k))
            raise ValueError(
                f"{run_dir}: holds a finished run with other settings ({', '.join(changed)}); "
                "use another RUN_ROOT"
            )
        echo(f"  {run.name}: reusing the finished run {run_dir}")
        return run_dir / made["checkpoint"]
    resume = (run_dir / STATE_NAME).exists()
    echo(f"  {run.name}: {'resuming' if resume else 'training'} ({run.phase}) -> {run_dir}")
    options = TrainRunOptions(
        device=settings.device,
        teacher=str(teacher) if run.needs_teacher else None,
        max_iters=settings.max_iters,
        resume=resume,
        progress=settings.progress and settings.jobs == 1,
        epoch_lines=settings.progress and settings.jobs > 1,  # bars of parallel runs would interleave
        imagenet=settings.imagenet,
        from_scratch=settings.from_scratch,
    )
    start = time.perf_counter()
    checkpoint = train(shards, run_dir, config, options)
    seconds = time.perf_counter() - start
    done.write_text(
        json.dumps({"config": _plain(config), "checkpoint": checkpoint.name, "seconds": seconds}, indent=2)
    )
    echo(f"  {run.name}: done in {seconds:.0f} s")
    return checkpoint


class _RestoredFaces:
    """A shard reader whose face_lr is the restored face_hr: the teacher rows look at restored faces."""

    def __init__(self, reader):
        self._reader = reader

    def __getattr__(self, name):
        return getattr(self._reader, name)

    def __len__(self) -> int:
        return len(self._reader)

    def read_many(self, positions):
        arrays = dict(self._reader.read_many(positions))
        arrays["face_lr"] = arrays["face_hr"]
        return arrays


def row_model(row: Row, checkpoints: dict[str, Path]):
    """The DeSKPro model a row evaluates; a face-only run (teacher, student) takes the student's place."""

    if row.face_run is None:
        return checkpoint.load(checkpoints[row.run])
    face = checkpoint.load(checkpoints[row.face_run])
    if row.run is None:  # the body stream is not reported: any seeded shell will do
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = DeSKPro(face.num_classes, backbone=face.backbone_name)
    else:
        model = checkpoint.load(checkpoints[row.run])
    model.lr_face_net = face
    return model


def evaluate_rows(shards, rows, checkpoints: dict[str, Path], settings: AblationSettings) -> list[dict]:
    """Each row's results on the test split: {protocol: {r1, r5, r10, mAP, queries, ...}}."""

    reader = open_reader(shards)
    protocols = preset(reader.meta["dataset"]).protocols
    out = []
    for row in rows:
        model = row_model(row, checkpoints).to(settings.device)
        results = evaluate_model(
            model,
            _RestoredFaces(reader) if row.restored_faces else reader,
            protocols,
            streams=(row.stream,),
            device=settings.device,
            trials=settings.trials,
            seed=settings.seed,
            progress=False,
        )
        out.append(
            {
                **dataclasses.asdict(row),
                "checkpoint": str(checkpoints[row.run or row.face_run]),
                "results": {r.protocol: r.to_dict() for r in results},
            }
        )
    return out


def train_runs(shards, root: Path, runs: list[Run], settings: AblationSettings, echo) -> dict[str, Path]:
    """Each run's final checkpoint, trained one after another, or `settings.jobs` at a time in
    processes of their own (`settings.threads` torch threads each): a run that needs the teacher
    starts once the teacher is done, before the runs listed after it.

    One thread per process is also what makes parallel runs pay on a CPU: the networks are small,
    so a second thread in one process gains little, and two such runs side by side gain nearly 2x.
    A run's result does not depend on `jobs` (each process computes alone on its threads).
    """
    done: dict[str, Path] = {}
    if settings.jobs <= 1 or len(runs) <= 1:
        for run in runs:
            done[run.name] = train_run(shards, root, run, settings, done.get("teacher"), echo)
        return done
    pending, running = list(runs), {}
    context = multiprocessing.get_context("spawn")  # no fork of a process whose OpenMP has started
    with ProcessPoolExecutor(
        settings.jobs, mp_context=context, initializer=_init_job, initargs=(settings.threads,)
    ) as pool:
        while pending or running:
            for run in [r for r in pending if not r.needs_teacher or "teacher" in done]:
                if len(running) == settings.jobs:
                    break
                pending.remove(run)
                args = (shards, root, run, settings, done.get("teacher"), print)
                running[pool.submit(train_run, *args)] = run
            if not running:
                raise ValueError(f"runs {[r.name for r in pending]} need a teacher run, and none is listed")
            try:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
            except KeyboardInterrupt:  # SIGINT / SIGTERM: each run saves its place and stops too
                for process in list(getattr(pool, "_processes", {}).values()):
                    process.terminate()
                raise
            for future in finished:
                done[running.pop(future).name] = future.result()
    return {run.name: done[run.name] for run in runs}


def _init_job(threads: int | None) -> None:
    """A run process: `threads` threads, as `--threads` gives them (the trainer's own choice too)."""
    if threads is not None:
        os.environ[ENV_OVERRIDE] = str(threads)
        apply_threads()


def run_ablation(
    shards,
    run_root,
    *,
    rows=None,
    settings: AblationSettings = AblationSettings(),
    echo: Callable[[str], None] = print,
    title: str | None = None,
) -> dict:
    """Train (or reuse) the runs the rows need, evaluate the rows, print and write the table."""

    chosen = select_rows(rows)
    settings = dataclasses.replace(settings, device=resolve_device(settings.device))
    check_configs(shards, runs_for(chosen), settings)
    root = Path(run_root)
    with output_lock(root, what="ablation", flag="RUN_ROOT"), StopSignals():  # one ablation per root
        return _ablation(shards, root, chosen, settings, echo, title)


def _ablation(shards, root: Path, chosen, settings: AblationSettings, echo, title) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    checkpoints = train_runs(shards, root, runs_for(chosen), settings, echo)
    results = evaluate_rows(shards, chosen, checkpoints, settings)
    report = {
        "shards": str(shards),
        "run_root": str(root),
        "settings": {**dataclasses.asdict(settings), "overrides": settings.overrides},
        "runs": {name: str(path) for name, path in checkpoints.items()},
        "rows": results,
        "paper": {  # the paper's own Table 3 (Celeb-reID-light), beside deskpro's rows
            row.key: dataclasses.asdict(paper_table3()[row.key])
            for row in chosen
            if row.key in paper_table3()
        },
    }
    (root / "ablation.json").write_text(json.dumps(report, indent=2, default=str))
    (root / "ablation.md").write_text(format_markdown(results, title) + "\n")
    echo(format_text(results, title))
    return report


def schedule_settings(schedule, seed: int, progress: bool, device: str = "cpu") -> AblationSettings:
    """AblationSettings of a schedule (the demo's or an experiment size: identities aside, fields
    epochs, warmup_epochs, p, k, base_lr, backbone, teacher_epochs, max_iters, trials, jobs, threads;
    optional: workers (loader processes, default 0) and amp (default: the config's))."""
    overrides = {
        "epochs": schedule.epochs,
        "warmup_epochs": min(schedule.warmup_epochs, schedule.epochs - 1),
        "p": schedule.p,
        "k": schedule.k,
        "base_lr": schedule.base_lr,
        "backbone": schedule.backbone,
        "num_workers": getattr(schedule, "workers", 0),
        "seed": seed,
    }
    if getattr(schedule, "amp", None):
        overrides["amp"] = schedule.amp
    return AblationSettings(
        overrides=overrides,
        teacher_epochs=schedule.teacher_epochs,
        device=device,
        max_iters=schedule.max_iters,
        trials=schedule.trials,
        seed=seed,
        progress=progress,
        jobs=schedule.jobs,
        threads=schedule.threads,
    )


@contextmanager
def torch_threads(n: int | None):
    """torch on `n` threads (None: unchanged), and the trainer's loader (`apply_threads`) told so
    through --threads' variable, so that no later thread choice undoes it."""
    if n is None:
        yield
        return
    before, requested = torch.get_num_threads(), os.environ.get(ENV_OVERRIDE)
    os.environ[ENV_OVERRIDE] = str(n)
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if requested is None:
            os.environ.pop(ENV_OVERRIDE, None)
        else:
            os.environ[ENV_OVERRIDE] = requested


__all__ = ["RUNS", "AblationSettings", "evaluate_rows", "run_ablation", "train_run", "train_runs"]
