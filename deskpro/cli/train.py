"""`deskpro train-teacher` and `deskpro train`: the face teacher, then DeSKPro (or the baseline).

The training settings are options named like the TrainConfig fields, so that a run's
RUN/config.json (or the YAML that --print-config prints) can be given back with --config.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from deskpro.cli.config_file import config_file_option
from deskpro.cli.group import _with, main, show_progress
from deskpro.cli.train_options import (
    _PRESET_OPTION,
    _RUN_OPTIONS,
    BACKBONE_NAMES,
    COMMAND_KEYS,
    FIXED_KEYS,
    METHOD_NAMES,
    SETTING_NAMES,
    _show_defaults,
)

__all__ = ["BACKBONE_NAMES", "train_cmd", "train_teacher_cmd"]


def _flatten_config(ctx: click.Context, mapping: dict, path: Path) -> dict:
    """A run's config.json shape -> option keys: `method` flattened, the fixed keys kept aside."""
    mapping = dict(mapping)
    method = mapping.pop("method", None)
    if method is not None:
        if not isinstance(method, dict):
            raise click.BadParameter(f"{path}: 'method' must be a mapping of {', '.join(METHOD_NAMES)}")
        clash = sorted(set(method) & set(mapping))
        if clash:
            raise click.BadParameter(f"{path}: {', '.join(clash)} given both in 'method' and at the top")
        mapping.update(method)
    ctx.meta["deskpro.config_fixed"] = (path, {k: mapping.pop(k) for k in FIXED_KEYS if k in mapping})
    for key in COMMAND_KEYS:
        mapping.pop(key, None)
    return mapping


def flagged(message: str, files: dict) -> str:
    """`message` prefixed with the flag whose file it starts with (`--teacher runs/t.pt: ...`)."""
    for flag, path in files.items():
        if path is not None and message.startswith(str(path)):
            return f"{flag} {message}"
    return message


def _check_fixed(ctx: click.Context, config) -> None:
    """The --config file's dataset, phase and sizes must be what the shards and command give."""
    path, fixed = ctx.meta.get("deskpro.config_fixed", (None, {}))
    resolved = config.to_dict()
    for key, value in fixed.items():
        want = list(value) if isinstance(value, (list, tuple)) else value
        have = list(resolved[key]) if isinstance(resolved[key], (list, tuple)) else resolved[key]
        if want != have:
            raise click.ClickException(
                f"{path}: {key} is {value!r} but this run's is {have!r} (set by the shards or command)"
            )


def _run_training(
    phase: str | None, shards: Path | None, run_dir: Path | None, teacher, trust: bool, kw: dict
) -> None:
    """`phase` None: `train --resume` without a phase flag (the run's own phase)."""
    import yaml

    from deskpro.shards import verify_or_raise
    from deskpro.train.loop import TrainRunOptions, planned_config, run_training
    from deskpro.train.resume import resume_inputs, saved_run
    from deskpro.train.rundir import check_tensorboard
    from deskpro.train.settings import check_val_split, fit_warmup

    ctx = click.get_current_context()
    overrides = {name: kw.pop(name) for name in SETTING_NAMES}
    overrides["method"] = {name: kw.pop(name) for name in METHOD_NAMES}
    warmup_given = overrides["warmup_epochs"] is not None
    if kw["resume"]:
        if run_dir is None:
            raise click.UsageError("Missing option '-o' / '--out' (the run directory to resume).")
        saved = saved_run(run_dir)
        if saved.finished and not kw["print_config"]:
            if not saved.checkpoint.is_file():
                raise click.ClickException(
                    f"{run_dir}: finished ({saved.epoch} of {saved.epochs} epochs) but "
                    f"{saved.checkpoint} is missing; nothing to resume (train a new run with another -o)"
                )
            click.echo(f"{run_dir}: finished ({saved.epoch} of {saved.epochs} epochs); nothing to resume")
            click.echo(f"checkpoint: {saved.checkpoint}")
            return
        phase, shards, teacher = resume_inputs(saved, phase, shards, teacher)
    phase = phase or "deskpro"
    if kw["print_config"]:
        config = planned_config(shards, run_dir if kw["resume"] else None, phase, overrides)
        _check_fixed(ctx, config)
        if not kw["resume"]:
            config, _ = fit_warmup(config, warmup_given)
        if shards is None:
            click.echo(f"# {phase}: the TrainConfig defaults; give SHARDS to resolve them for a shard set")
        click.echo(
            yaml.safe_dump(config.to_dict() | {"body_size": list(config.body_size)}, sort_keys=False),
            nl=False,
        )
        return
    if shards is None:
        raise click.UsageError("Missing argument 'SHARDS'.")
    if run_dir is None:
        raise click.UsageError("Missing option '-o' / '--out' (the run directory).")
    if phase == "deskpro" and teacher is None:
        raise click.UsageError("give exactly one of --teacher CKPT (DeSKPro), --baseline or --student")
    if kw["tensorboard"]:
        try:
            check_tensorboard()
        except ImportError as exc:
            raise click.ClickException(str(exc)) from None
    if kw["select_on_val"]:
        check_val_split(shards)
    if kw["verify_shards"]:
        verify_or_raise(shards, progress=show_progress(kw["progress"]))
    config = planned_config(shards, run_dir if kw["resume"] else None, phase, overrides)
    _check_fixed(ctx, config)
    if not kw["resume"]:
        config, note = fit_warmup(config, warmup_given)
        if note:
            click.echo(note)
            overrides["warmup_epochs"] = config.warmup_epochs
    options = TrainRunOptions(
        device=kw["device"],
        teacher=teacher,
        imagenet=kw["imagenet"],
        max_iters=kw["max_iters"],
        resume=kw["resume"],
        select_on_val=kw["select_on_val"],
        progress=show_progress(kw["progress"]),
        tensorboard=kw["tensorboard"],
        distributed="WORLD_SIZE" in os.environ,
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        trust_checkpoint=trust,
        from_scratch=kw["from_scratch"],
    )
    try:
        final = run_training(shards, run_dir, phase, overrides, options)
    except ValueError as exc:  # a checkpoint file's error names the file: say which flag gave it
        raise click.ClickException(
            flagged(str(exc), {"--teacher": teacher, "--imagenet": kw["imagenet"]})
        ) from None
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun: one line, not one per rank
        click.echo(f"checkpoint: {final}")


_TEACHER_EXAMPLE = """

\b
Example:
  deskpro train-teacher shards/prcc -o runs/teacher --imagenet weights/osnet_x1_0_imagenet.pth
  deskpro train-teacher -o runs/teacher --resume
  deskpro train-teacher shards/prcc -o runs/teacher-cpu --preset cpu
  deskpro train-teacher shards/prcc --print-config > teacher.yaml
"""

_TRAIN_EXAMPLE = """

\b
Example:
  deskpro train shards/prcc -o runs/deskpro --teacher runs/teacher/checkpoint.pt \\
      --imagenet weights/osnet_x1_0_imagenet.pth --amp bf16
  deskpro train shards/prcc -o runs/baseline --baseline --config runs/deskpro/config.json
  deskpro train shards/prcc -o runs/short --baseline --epochs 20 --warmup-epochs 2
  deskpro train -o runs/deskpro --resume
"""


@main.command(
    "train-teacher",
    help=(
        "Train the face teacher (LightMBN on restored faces, CE + triplet) from SHARDS into RUN."
        " Settings: the dataset preset's (--print-config shows them), then --config FILE, then the flags."
        + _TEACHER_EXAMPLE
    ),
)
@config_file_option(flatten=_flatten_config, exclude=("config_file", "print_config"))
@_PRESET_OPTION
@_with(_RUN_OPTIONS)
def train_teacher_cmd(shards: Path | None, run_dir: Path | None, **kw) -> None:
    _run_training("teacher", shards, run_dir, None, False, kw)


@main.command(
    "train",
    help=(
        "Train DeSKPro (global stream + student, frozen teacher) or, with --baseline, the global stream"
        " alone (with --student, the face student alone), from SHARDS into RUN. Settings: the"
        " dataset preset's (--print-config shows them), then --config FILE, then the flags." + _TRAIN_EXAMPLE
    ),
)
@config_file_option(flatten=_flatten_config, exclude=("config_file", "print_config"))
@_PRESET_OPTION
@_with(_RUN_OPTIONS)
@click.option(
    "--teacher",
    type=click.Path(exists=True, dir_okay=False),
    help="Face teacher checkpoint: RUN/checkpoint.pt of train-teacher, or the official file.",
)
@click.option("--baseline", is_flag=True, help="Global stream only: no CSA loss, no face streams.")
@click.option(
    "--student",
    "student_alone",
    is_flag=True,
    help="The face student alone on the low-res faces, no teacher (Table 3's row 4).",
)
@click.option(
    "--trust-checkpoint",
    is_flag=True,
    help="Allow a --teacher file that needs full unpickling (only for files you trust).",
)
def train_cmd(
    shards: Path | None,
    run_dir: Path | None,
    teacher,
    baseline: bool,
    student_alone: bool,
    trust_checkpoint: bool,
    **kw,
) -> None:
    if sum((baseline, student_alone, teacher is not None)) > 1:
        raise click.UsageError("give exactly one of --teacher CKPT (DeSKPro), --baseline or --student")
    phase = "baseline" if baseline else "student" if student_alone else "deskpro" if teacher else None
    if phase is None and not kw["resume"] and not kw["print_config"]:
        raise click.UsageError("give exactly one of --teacher CKPT (DeSKPro), --baseline or --student")
    _run_training(phase, shards, run_dir, teacher, trust_checkpoint, kw)


_show_defaults(train_teacher_cmd)
_show_defaults(train_cmd)
