"""The options of `deskpro train-teacher` and `deskpro train`: one per TrainConfig field (named like
the field, so that a run's config.json works as --config), the run options, and --preset cpu."""

from __future__ import annotations

from pathlib import Path

import click

from deskpro.cli.group import device_option, progress_option

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
# Keys of a run's config.json that the shards decide: checked, never set.
FIXED_KEYS = ("dataset", "body_size", "face_size", "label_set")
# Keys the command decides: a file's value is ignored (a deskpro run's config.json may set up a
# baseline run: `train --baseline --config runs/deskpro/config.json`).
COMMAND_KEYS = ("phase",)
# --preset cpu: the demo's fast settings (deskpro/demo.py FULL), for a first run on a CPU; shards
# packed small (`pack --body-size 64x32 --face-size 32`) make the rest of the difference.
CPU_PRESET = {
    "backbone": "osnet_x0_25",
    "epochs": 20,
    "warmup_epochs": 2,
    "p": 8,
    "k": 4,
    "base_lr": 1.5e-3,
    "num_workers": 0,
}
CPU_TEACHER_EPOCHS = 30  # the demo's: a strong teacher is what distillation passes on

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
    device_option(),
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
        help="Continue RUN from RUN/train_state.pt with its saved settings, shards, phase and teacher "
        "(nothing to repeat: `deskpro train -o RUN --resume`); only --amp, --channels-last, --compile, "
        "--workers and --decode-on may change. A finished run says so and is left as it is.",
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


def _apply_preset(ctx: click.Context, param: click.Parameter, value: str | None):
    """--preset cpu: its settings as defaults below --config and the flags, whatever their order."""
    if value is None:
        return None
    settings = dict(CPU_PRESET)
    if ctx.command.name == "train-teacher":
        settings["epochs"] = CPU_TEACHER_EPOCHS
    ctx.default_map = {**settings, **(ctx.default_map or {})}
    return value


_PRESET_OPTION = click.option(
    "--preset",
    type=click.Choice(["cpu"]),
    is_eager=True,
    expose_value=False,
    callback=_apply_preset,
    help="cpu: the demo's fast settings for a CPU (OSNet x0.25, 20 epochs (teacher 30), P 8, K 4, "
    "lr 1.5e-3, no loader workers); --config and flags override them. Pack small shards for it.",
)


def _show_defaults(command: click.Command) -> None:
    """Append each setting's default to its help: TrainConfig's, noting where dataset presets differ."""
    from deskpro.config import PRESETS, TrainConfig

    base = TrainConfig()
    for param in command.params:
        if not isinstance(param, click.Option) or not param.help or "[default" in param.help:
            continue
        if param.name in SETTING_NAMES:
            value = getattr(base, param.name)
            shown = {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value
            param.help += f" [default: {shown}]"
        elif param.name in METHOD_NAMES:
            value = getattr(base.method, param.name)
            other = sorted(
                f"{name}: {getattr(p.method, param.name)}"
                for name, p in PRESETS.items()
                if getattr(p.method, param.name) != value
            )
            param.help += f" [default: {value}" + (f"; {', '.join(other)}" if other else "") + "]"
