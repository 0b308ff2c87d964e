"""`deskpro train-teacher` and `deskpro train`: the face teacher, then DeSKPro (or the baseline).

The training settings are options named like the TrainConfig fields, so that a run's
RUN/config.json (or the YAML that --print-config prints) can be given back with --config.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from deskpro.cli.config_file import config_file_option
from deskpro.cli.group import _with, main, progress_option, show_progress

# deskpro.model.osnet.BACKBONES's names (spelled out: importing the model would import torch for --help)
BACKBONE_NAMES = ("osnet_x1_0", "osnet_x0_75", "osnet_x0_5", "osnet_x0_25")

_PROB = click.FloatRange(0.0, 1.0)
_POSITIVE = click.FloatRange(0.0, min_open=True)
_NON_NEGATIVE = click.FloatRange(0.0)

# Options that set a TrainConfig field (the parameter name is the field's name). Unset ones (None)
# keep the dataset preset's value, or on --resume the run's saved value.
_SETTINGS = [
    click.option("--epochs", type=click.IntRange(1), help="Epochs to train."),
    click.option(
        "--warmup-epochs",
        type=click.IntRange(0),
        help="Epochs of linear lr warm-up before the cosine decay; must be below --epochs.",
    ),
    click.option(
        "--p",
        "--ids-per-batch",
        "p",
        type=click.IntRange(2),
        help="Identities per batch, P. Spell it --ids-per-batch under torchrun, whose "
        "parser takes --p for its own --print-completion.",
    ),
    click.option(
        "--k",
        "--images-per-id",
        "k",
        type=click.IntRange(2),
        help="Images per identity, K; the triplet loss needs 2 or more.",
    ),
    click.option("--lr", "--base-lr", "base_lr", type=_POSITIVE, help="Base lr, scaled by sqrt(P*K/20)."),
    click.option("--weight-decay", type=_NON_NEGATIVE, help="Adam weight decay."),
    click.option("--min-lr-factor", type=_PROB, help="The last epoch's lr as a fraction of the base lr."),
    click.option("--flip-p", type=_PROB, help="Probability of a horizontal flip."),
    click.option("--translate-p", type=_PROB, help="Probability of Random2DTranslation (resize and crop)."),
    click.option(
        "--translate-scale",
        type=click.FloatRange(1.0, 2.0),
        help="Random2DTranslation: resize by this factor, then crop back to size (official 1.05).",
    ),
    click.option("--erase-p", type=_PROB, help="Probability of random erasing."),
    click.option(
        "--label-smoothing",
        type=click.FloatRange(0.0, 1.0, max_open=True),
        help="Label smoothing of the CE losses.",
    ),
    click.option("--triplet-margin", type=_NON_NEGATIVE, help="Margin of the batch-hard triplet loss."),
    click.option("--lam", type=_NON_NEGATIVE, help="Weight lambda of the attention loss L_att."),
    click.option("--tau", type=_POSITIVE, help="Distillation temperature."),
    click.option("--alpha", type=_PROB, help="Weight of distillation against the student's CE."),
    click.option("--eps", type=_PROB, help="CSA mask value on cloth pixels."),
    click.option(
        "--csa-form",
        type=click.Choice(["official", "paper", "none"]),
        help="CSA block: official (two 1x1 convs, the release), paper (one point-wise conv) or none "
        "(no attention: Table 3's row 1).",
    ),
    click.option(
        "--att-target",
        type=click.Choice(["official", "paper"]),
        help="L_att target: official (default: the binary mask resized bilinearly as cv2.resize, then "
        "eps on the cells exactly 0) or paper (Eq. 3's eps at full size, then each cell averaged).",
    ),
    click.option(
        "--amp",
        type=click.Choice(["none", "bf16", "fp16"]),
        help="Mixed precision (fp16 needs CUDA; preset: none).",
    ),
    click.option(
        "--channels-last/--no-channels-last",
        default=None,
        help="channels_last memory format (faster on GPUs).",
    ),
    click.option("--compile/--no-compile", "compile", default=None, help="torch.compile the trained module."),
    click.option(
        "--workers",
        "--num-workers",
        "num_workers",
        type=click.IntRange(0),
        help="DataLoader worker processes.",
    ),
    click.option(
        "--decode-on",
        type=click.Choice(["auto", "worker", "device"]),
        help="Where JPEG shards are decoded: worker (the loader workers, on the CPU), device (the "
        "workers read bytes, the training device decodes: nvjpeg on CUDA; raw shards are refused) or "
        "auto (default: device on CUDA with JPEG shards, else worker).",
    ),
    click.option(
        "--backbone",
        type=click.Choice(BACKBONE_NAMES),
        help="OSNet variant of every stream: osnet_x1_0 (the official) or a narrower one "
        "(osnet_x0_25 is the demo's: about 3x faster on a CPU; docs/differences.md).",
    ),
    click.option("--seed", type=click.IntRange(0), help="Seed of the init, sampler and augmentation."),
    click.option(
        "--recipe",
        type=click.Choice(["deskpro", "official"]),
        help="deskpro (default): keep faceless bodies, exact-length P x K epochs, per-sample augmentation, "
        "flip-averaged tests; official: the official code's behaviour on each point (docs/differences.md).",
    ),
    click.option(
        "--teacher-mode",
        type=click.Choice(["train", "eval"]),
        help="How the frozen teacher runs while distilling: train (default, the official: batch "
        "statistics, drop block) or eval (running statistics).",
    ),
]
SETTING_NAMES = ("epochs", "warmup_epochs", "p", "k", "base_lr", "weight_decay", "min_lr_factor", "flip_p")
SETTING_NAMES += (
    "translate_p",
    "translate_scale",
    "erase_p",
    "label_smoothing",
    "triplet_margin",
    "csa_form",
    "att_target",
    "backbone",
)
SETTING_NAMES += ("amp", "channels_last", "compile", "num_workers", "decode_on", "seed", "recipe")
SETTING_NAMES += ("teacher_mode",)
METHOD_NAMES = ("lam", "tau", "alpha", "eps")
# Keys of a run's config.json that the shards or the command decide: checked, never set.
FIXED_KEYS = ("dataset", "phase", "body_size", "face_size", "label_set")

_RUN_OPTIONS = [
    click.argument("shards", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path)),
    click.option(
        "-o",
        "--out",
        "run_dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="Run directory (required to train): a new or empty folder, or the run to --resume. "
        "Gets config.json, checkpoint.pt, train_state.pt, log.jsonl.",
    ),
    *_SETTINGS,
    click.option(
        "--device",
        default="auto",
        show_default=True,
        help="Torch device: auto (cuda when available), cpu, cuda:1 ...",
    ),
    click.option(
        "--imagenet",
        type=click.Path(exists=True, dir_okay=False),
        help="OSNet x1.0 ImageNet weights to initialise the trained streams (see `deskpro weights list`); "
        "a real dataset needs them unless --from-scratch.",
    ),
    click.option(
        "--from-scratch", is_flag=True, help="Train a real-dataset preset from random init (no --imagenet)."
    ),
    click.option(
        "--verify",
        "verify_shards",
        is_flag=True,
        help="First check every shard's sha256 (as `deskpro verify`); the cheap layout check always runs.",
    ),
    click.option(
        "--max-iters",
        type=click.IntRange(1),
        help="Stop after this many iterations in all, mid-epoch too; --resume continues exactly there.",
    ),
    click.option(
        "--resume",
        is_flag=True,
        help="Continue RUN from RUN/train_state.pt with its saved settings; only --amp, "
        "--channels-last, --compile, --workers and --decode-on may change.",
    ),
    click.option(
        "--select-on-val",
        is_flag=True,
        help="Also write RUN/best.pt, the best val epoch (PRCC layout), and return it.",
    ),
    click.option(
        "--tensorboard", is_flag=True, help="Also log to RUN/tensorboard (needs deskpro[tensorboard])."
    ),
    progress_option(),
    click.option(
        "--print-config",
        is_flag=True,
        help="Print the resolved settings as YAML (for SHARDS when given, with --config and the flags) "
        "and exit; the output works as --config.",
    ),
]


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
    return mapping


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
    phase: str, shards: Path | None, run_dir: Path | None, teacher, trust: bool, kw: dict
) -> None:
    import yaml

    from deskpro.shards import verify_or_raise
    from deskpro.train.loop import TrainRunOptions, planned_config, run_training
    from deskpro.train.rundir import check_tensorboard

    ctx = click.get_current_context()
    overrides = {name: kw.pop(name) for name in SETTING_NAMES}
    overrides["method"] = {name: kw.pop(name) for name in METHOD_NAMES}
    if kw["print_config"]:
        config = planned_config(shards, run_dir if kw["resume"] else None, phase, overrides)
        _check_fixed(ctx, config)
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
    if kw["tensorboard"]:
        try:
            check_tensorboard()
        except ImportError as exc:
            raise click.ClickException(str(exc)) from None
    if kw["verify_shards"]:
        verify_or_raise(shards, progress=show_progress(kw["progress"]))
    config = planned_config(shards, run_dir if kw["resume"] else None, phase, overrides)
    _check_fixed(ctx, config)
    if config.warmup_epochs >= config.epochs:
        raise click.ClickException(
            f"--warmup-epochs {config.warmup_epochs} must be below --epochs {config.epochs}; "
            "give a smaller --warmup-epochs"
        )
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
    final = run_training(shards, run_dir, phase, overrides, options)
    click.echo(f"checkpoint: {final}")


_TEACHER_EXAMPLE = """

\b
Example:
  deskpro train-teacher shards/prcc -o runs/teacher --imagenet weights/osnet_x1_0_imagenet.pth
  deskpro train-teacher shards/prcc -o runs/teacher --resume
  deskpro train-teacher shards/prcc --print-config > teacher.yaml
"""

_TRAIN_EXAMPLE = """

\b
Example:
  deskpro train shards/prcc -o runs/deskpro --teacher runs/teacher/checkpoint.pt \\
      --imagenet weights/osnet_x1_0_imagenet.pth --amp bf16
  deskpro train shards/prcc -o runs/baseline --baseline --config runs/deskpro/config.json
  deskpro train shards/prcc -o runs/short --baseline --epochs 20 --warmup-epochs 2
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
    if sum((baseline, student_alone, teacher is not None)) != 1 and not kw["print_config"]:
        raise click.UsageError("give exactly one of --teacher CKPT (DeSKPro), --baseline or --student")
    phase = "baseline" if baseline else "student" if student_alone else "deskpro"
    _run_training(phase, shards, run_dir, teacher, trust_checkpoint, kw)
