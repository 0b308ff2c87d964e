"""`deskpro train-teacher` and `deskpro train`: the face teacher, then DeSKPro (or the baseline)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from deskpro.cli.group import _with, main

_TRAIN_OPTIONS = [  # shared by train-teacher and train: settings overrides and how to run
    click.argument("shards", type=click.Path(exists=True, file_okay=False, path_type=Path)),
    click.option(
        "-o",
        "--out",
        "run_dir",
        required=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="Run directory: checkpoint.pt, train_state.pt, log.jsonl.",
    ),
    click.option("--epochs", type=int, help="Epochs (default: the dataset preset's)."),
    click.option("--warmup-epochs", type=int, help="Linear warm-up epochs."),
    click.option(
        "--p",
        "--ids-per-batch",
        "p",
        type=int,
        help="Identities per batch (spell it --ids-per-batch under torchrun, whose parser "
        "takes --p for its own --print-completion).",
    ),
    click.option("--k", "--images-per-id", "k", type=int, help="Images per identity."),
    click.option("--lr", "base_lr", type=float, help="Base lr, scaled by sqrt(P*K/20)."),
    click.option("--amp", type=click.Choice(["none", "bf16", "fp16"]), help="Mixed precision."),
    click.option("--channels-last/--no-channels-last", default=None),
    click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile the model."),
    click.option("--workers", "num_workers", type=int, help="DataLoader worker processes."),
    click.option("--seed", type=int),
    click.option("--device", default="auto", show_default=True, help="auto: cuda when available."),
    click.option(
        "--imagenet", type=click.Path(exists=True, dir_okay=False), help="OSNet x1.0 ImageNet weights."
    ),
    click.option("--max-iters", type=int, help="Stop after this many iterations (tests, demo)."),
    click.option("--resume", is_flag=True, help="Continue from RUN/train_state.pt."),
    click.option("--select-on-val", is_flag=True, help="Keep the best epoch on the val split (PRCC)."),
    click.option("--tensorboard", is_flag=True, help="Also log to RUN/tensorboard."),
    click.option("--no-progress", is_flag=True, help="No progress bar."),
    # shards helper: the full hash check before training (the reader always runs the cheap one)
    click.option(
        "--verify", "verify_shards", is_flag=True, help="First check every shard's sha256 (deskpro verify)."
    ),
    # recipe options (h-recipe): see docs/differences.md
    click.option(
        "--recipe",
        type=click.Choice(["deskpro", "official"]),
        help="deskpro (default): keep faceless bodies, exact-length P x K epochs, per-sample augmentation, "
        "flip-averaged tests; official: the official code's behaviour on each of these points.",
    ),
    click.option(
        "--from-scratch", is_flag=True, help="Train a real-dataset preset from random init (no --imagenet)."
    ),
]


def _run_training(phase: str, shards: Path, run_dir: Path, teacher: str | None, trust: bool, **kw) -> None:
    from deskpro.shards import verify_or_raise
    from deskpro.train.trainer import TrainRunOptions, run_training

    if kw.pop("verify_shards"):  # shards helper: --verify
        verify_or_raise(shards, progress=not kw["no_progress"])
    names = ("epochs", "warmup_epochs", "p", "k", "base_lr", "amp", "channels_last", "num_workers", "seed")
    names += ("recipe", "teacher_mode")  # recipe options (h-recipe)
    overrides = {key: kw.pop(key, None) for key in names}
    overrides["compile"] = kw.pop("compile_")
    options = TrainRunOptions(
        device=kw["device"],
        teacher=teacher,
        imagenet=kw["imagenet"],
        max_iters=kw["max_iters"],
        resume=kw["resume"],
        select_on_val=kw["select_on_val"],
        progress=not kw["no_progress"],
        tensorboard=kw["tensorboard"],
        distributed="WORLD_SIZE" in os.environ,
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        trust_checkpoint=trust,
        from_scratch=kw["from_scratch"],  # recipe option (h-recipe)
    )
    final = run_training(shards, run_dir, phase, overrides, options)
    click.echo(f"checkpoint: {final}")


@main.command("train-teacher")
@_with(_TRAIN_OPTIONS)
def train_teacher_cmd(shards: Path, run_dir: Path, **kw) -> None:
    """Train the face teacher (LightMBN on restored faces, CE + triplet) from SHARDS."""
    _run_training("teacher", shards, run_dir, None, False, **kw)


@main.command("train")
@_with(_TRAIN_OPTIONS)
@click.option(
    "--teacher", type=click.Path(exists=True, dir_okay=False), help="Teacher checkpoint (ours or official)."
)
@click.option("--baseline", is_flag=True, help="Global stream only: no CSA loss, no face streams.")
@click.option("--trust-checkpoint", is_flag=True, help="Allow a teacher file that needs full unpickling.")
@click.option(  # recipe option (h-recipe)
    "--teacher-mode",
    type=click.Choice(["train", "eval"]),
    help="How the frozen teacher runs: train (default, the official: batch statistics, drop block) "
    "or eval (running statistics).",
)
def train_cmd(
    shards: Path, run_dir: Path, teacher: str | None, baseline: bool, trust_checkpoint: bool, **kw
) -> None:
    """Train DeSKPro (global stream + student, frozen teacher) or, with --baseline, the global stream."""
    if baseline == (teacher is not None):
        raise click.UsageError("give exactly one of --teacher CKPT (DeSKPro) or --baseline")
    _run_training("baseline" if baseline else "deskpro", shards, run_dir, teacher, trust_checkpoint, **kw)
