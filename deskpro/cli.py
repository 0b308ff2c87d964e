"""The `deskpro` command line: click options -> one library call per command.

Heavy modules are imported inside each command so that `deskpro --help` stays instant.
"""

from __future__ import annotations

import os
from pathlib import Path

import click


class _Group(click.Group):
    """A group whose commands report bad input as one line, not a traceback.

    The library raises ValueError (and its subclasses: ManifestError, ShardError, CheckpointError,
    ...), FileNotFoundError and FileExistsError with messages that name the file and what is
    wrong: the whole message a user needs. DESKPRO_TRACEBACK=1 shows the traceback instead.
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (ValueError, FileNotFoundError, FileExistsError) as exc:
            if os.environ.get("DESKPRO_TRACEBACK"):
                raise
            raise click.ClickException(str(exc) or repr(exc)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="deskpro")
def main() -> None:
    """deskpro: reproducible DeSKPro for cloth-changing person re-identification."""


# ---- manifest (owner: data)

MANIFEST_DATASETS = ("prcc", "celeb-reid", "celeb-reid-light", "market1501", "synthetic")


def _parse_hw(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    """'384x128' -> (384, 128); None stays None."""
    if value is None:
        return None
    try:
        h, w = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not HxW: expected HEIGHTxWIDTH such as 384x128") from None
    if h < 1 or w < 1:
        raise click.BadParameter(f"sizes must be positive, got {value!r}")
    return h, w


def _with(options):
    """Apply a list of click decorators in order (the first one is the first in --help)."""

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


@main.command()
@click.argument("dataset", type=click.Choice(MANIFEST_DATASETS))
@click.argument("root", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Manifest file to write (Parquet).",
)
@click.option("--identities", type=int, default=None, help="synthetic: number of people (default 120).")
@click.option("--images-per-camera", type=int, default=None, help="synthetic: images per person, camera (3).")
@click.option("--image-size", callback=_parse_hw, default=None, help="synthetic: HxW (default 384x128).")
@click.option("--seed", type=int, default=None, help="synthetic: random seed (default 0).")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar while generating.")
def manifest(
    dataset: str, root: Path, output: Path, identities, images_per_camera, image_size, seed, progress: bool
) -> None:
    """Scan DATASET's folder layout in ROOT into a manifest (synthetic: generate it into ROOT first)."""
    from deskpro.data_manifests import ManifestError, build_manifest, format_stats

    given = {
        "identities": identities,
        "images_per_camera": images_per_camera,
        "image_size": image_size,
        "seed": seed,
    }
    options = {k: v for k, v in given.items() if v is not None}
    try:
        table = build_manifest(dataset, root, output, synthetic_options=options, progress=progress)
    except (ManifestError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(format_stats(table))
    click.echo(f"wrote {output}")


# ---- weights (owner: lead)


@main.group()
def weights() -> None:
    """Official checkpoints: where each comes from, and a size and sha256 check."""


@weights.command("list")
def weights_list() -> None:
    """Print every official checkpoint: file, size, sha256, source and licence."""
    from deskpro.pipeline import weights as registry

    click.echo(registry.format_table())


@weights.command("verify")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
def weights_verify(directory: Path) -> None:
    """Check the size and sha256 of every official checkpoint found in DIRECTORY."""
    from deskpro.pipeline import weights as registry

    report = registry.verify_dir(directory)
    click.echo(report.format())
    if not report.ok:
        raise SystemExit(1)


# ---- stages: parse, detect, restore, preprocess (owner: pipeline)


_STAGE_RUN_OPTIONS = [  # shared by parse / detect / restore / preprocess: where to write, how to run
    click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path)),
    click.option(
        "-w",
        "--work",
        "work_dir",
        required=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="Work dir: WORK/stages/<stage>/part-*.parquet (shared storage on a cluster).",
    ),
    click.option(
        "--executor",
        type=click.Choice(["ray", "local"]),
        default="ray",
        show_default=True,
        help="ray: Ray Data with an actor pool; local: the same classes in a plain loop.",
    ),
    click.option(
        "--ray-address",
        default=None,
        help="Join a cluster ('auto', 'ray://HOST:10001'); default: start a local Ray for this command.",
    ),
    click.option("--part-size", default=1000, show_default=True, help="Manifest rows per part file."),
    click.option("--batch-size", default=16, show_default=True, help="Images per model call."),
    click.option("--actors", "num_actors", default=1, show_default=True, help="Most model replicas."),
    click.option(
        "--num-gpus",
        type=float,
        default=None,
        help="GPUs per actor, fractional allowed "
        "[default: 1 when the cluster has GPUs and the backend is a network, else 0].",
    ),
    click.option("--num-cpus", type=float, default=1.0, show_default=True, help="CPUs per actor."),
    click.option("--device", default="auto", show_default=True, help="auto: cuda when available."),
    click.option("--amp", type=click.Choice(["none", "bf16", "fp16"]), default="none", show_default=True),
    click.option("--channels-last", is_flag=True, help="channels_last memory format for the networks."),
    click.option("--overwrite", is_flag=True, help="Recompute every part (needed when options changed)."),
    click.option("--max-errors", type=int, default=None, help="Fail above this many error rows."),
    click.option("--no-progress", is_flag=True, help="No progress bar."),
]


def _split_run_options(kw: dict):
    """Click's keyword arguments -> (RunOptions, the options every backend takes)."""
    from deskpro.pipeline.runner import RunOptions

    run = RunOptions(
        part_size=kw.pop("part_size"),
        batch_size=kw.pop("batch_size"),
        executor=kw.pop("executor"),
        ray_address=kw.pop("ray_address"),
        num_actors=kw.pop("num_actors"),
        num_gpus=kw.pop("num_gpus"),
        num_cpus=kw.pop("num_cpus"),
        overwrite=kw.pop("overwrite"),
        max_errors=kw.pop("max_errors"),
        progress=not kw.pop("no_progress"),
    )
    amp = kw.pop("amp")
    common = {
        "device": kw.pop("device"),
        "amp": None if amp == "none" else amp,
        "channels_last": kw.pop("channels_last"),
    }
    return run, common


def _run_stage_command(stage: str, kw: dict) -> None:
    from deskpro.data_manifests import ManifestError
    from deskpro.pipeline.runner import StageError, run_preprocess, run_stage
    from deskpro.pipeline.stages import StageConfigError

    manifest, work_dir = kw.pop("manifest"), kw.pop("work_dir")
    run, common = _split_run_options(kw)
    try:
        if stage == "preprocess":
            summaries = run_preprocess(manifest, work_dir, {s: {**kw[s], **common} for s in _STAGE_KEYS}, run)
        else:
            summaries = [run_stage(stage, manifest, work_dir, {**kw, **common}, run)]
    except (StageError, StageConfigError, ManifestError) as exc:
        if getattr(exc, "summary", None) is not None:
            click.echo(exc.summary.format())
        raise click.ClickException(str(exc)) from None
    for summary in summaries:
        click.echo(summary.format())


_STAGE_KEYS = {
    "parse": ("backend", "weights", "labels", "flip", "input_size", "num_classes"),
    "detect": (
        "backend",
        "weights",
        "landmarks_weights",
        "conf_threshold",
        "nms_threshold",
        "min_score",
        "min_size",
        "max_center_y",
        "upscale",
        "face_lr_size",
    ),
    "restore": ("backend", "weights", "face_hr_size", "quality"),
}


def _by_stage(kw: dict) -> dict:
    """preprocess's options -> {stage: backend options}; backend and weights carry a stage prefix."""
    prefixed = ("backend", "weights")
    return {
        stage: {key: kw[f"{stage}_{key}" if key in prefixed else key] for key in keys}
        for stage, keys in _STAGE_KEYS.items()
    }


def _backend_options(prefix: str, alias: str, default: str, backends: str, weights_help: str) -> list:
    """--[PREFIX]backend (also ALIAS, e.g. --parser) and --[PREFIX]weights of one stage."""
    dest = prefix.replace("-", "_")
    return [
        click.option(
            f"--{prefix}backend", alias, f"{dest}backend", default=default, show_default=True, help=backends
        ),
        click.option(f"--{prefix}weights", f"{dest}weights", default=None, help=weights_help),
    ]


def _parse_options(prefix: str = ""):
    return [
        *_backend_options(
            prefix,
            "--parser",
            "schp",
            "schp | smp:ARCH:ENCODER | oracle (synthetic ground truth).",
            "Parser checkpoint path.",
        ),
        click.option(
            "--labels", type=click.Choice(["lip", "atr", "pascal"]), default="lip", show_default=True
        ),
        click.option("--flip", is_flag=True, help="Flip test (average with the mirrored image)."),
        click.option("--input-size", type=int, default=None, help="Square input size."),
        click.option("--num-classes", type=int, default=None, help="smp parsers: output classes."),
    ]


def _detect_options(prefix: str = ""):
    return [
        *_backend_options(
            prefix,
            "--detector",
            "retinaface-resnet50",
            "retinaface-resnet50 | retinaface-mobilenet0.25 | face-alignment | oracle.",
            "Detector checkpoint (face-alignment: the S3FD file).",
        ),
        click.option("--landmarks-weights", default=None, help="face-alignment: FAN checkpoint."),
        click.option("--conf-threshold", default=0.5, show_default=True),
        click.option("--nms-threshold", default=0.4, show_default=True),
        click.option("--min-score", default=0.8, show_default=True, help="FacePolicy: lowest score."),
        click.option("--min-size", default=8.0, show_default=True, help="FacePolicy: least side, px."),
        click.option(
            "--max-center-y",
            default=0.5,
            show_default=True,
            help="FacePolicy: lowest face centre, as a fraction of the image height.",
        ),
        click.option("--upscale", default=1.0, show_default=True, help="Enlarge images before detection."),
        click.option("--face-lr-size", default=128, show_default=True, help="Aligned low-res crop size."),
    ]


def _restore_options(prefix: str = ""):
    return [
        *_backend_options(
            prefix,
            "--restorer",
            "gpen-512",
            "gpen-512 | gpen-256 | none (bicubic upsampling).",
            "GPEN checkpoint path.",
        ),
        click.option("--face-hr-size", default=256, show_default=True, help="Restored face size."),
        click.option("--quality", default=95, show_default=True, help="JPEG quality of restored faces."),
    ]


@main.command("parse")
@_with(_STAGE_RUN_OPTIONS)
@_with(_parse_options())
def parse_command(**kw) -> None:
    """Human parsing of every image in MANIFEST -> WORK/stages/parse."""
    _run_stage_command("parse", kw)


@main.command("detect")
@_with(_STAGE_RUN_OPTIONS)
@_with(_detect_options())
def detect_command(**kw) -> None:
    """Face detection, 5 landmarks and aligned low-res crops -> WORK/stages/detect."""
    _run_stage_command("detect", kw)


@main.command("restore")
@_with(_STAGE_RUN_OPTIONS)
@_with(_restore_options())
def restore_command(**kw) -> None:
    """Restoration of the detect stage's faces -> WORK/stages/restore."""
    _run_stage_command("restore", kw)


@main.command("preprocess")
@_with(_STAGE_RUN_OPTIONS)
@_with(_parse_options("parse-") + _detect_options("detect-") + _restore_options("restore-"))
def preprocess_command(**kw) -> None:
    """parse, detect and restore in order with the same run options."""
    run_keys = (
        set(kw)
        - {k for keys in _STAGE_KEYS.values() for k in keys}
        - {f"{s}_{k}" for s in _STAGE_KEYS for k in ("backend", "weights")}
    )
    _run_stage_command("preprocess", {**{k: kw[k] for k in run_keys}, **_by_stage(kw)})


# ---- pack, verify (owner: shards)


@main.command("pack")
@click.argument("work", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Shard folder.")
@click.option("--body-size", default="384x128", show_default=True, callback=_parse_hw, help="HEIGHTxWIDTH.")
@click.option("--face-size", default=224, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--codec",
    default="raw",
    show_default=True,
    type=click.Choice(["raw", "jpeg"]),
    help="raw: exact, fastest to read; jpeg: a tenth of the bytes (see shards.py)",
)
@click.option("--quality", default=95, show_default=True, type=click.IntRange(1, 100), help="JPEG quality.")
@click.option("--shard-size", default=1024, show_default=True, type=click.IntRange(min=1), help="Per shard.")
@click.option(
    "--parse-compression", default="gzip", show_default=True, type=click.Choice(["gzip", "lzf", "none"])
)
@click.option("--overwrite", is_flag=True, help="Replace a complete shard directory.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def pack_cmd(work: Path, out_dir: Path, **options) -> None:
    """Join WORK's manifest and stage outputs into training shards in OUT."""
    from deskpro.data_manifests import ManifestError
    from deskpro.pipeline.pack import PackError, pack
    from deskpro.pipeline.shards import ShardError

    try:
        summary = pack(work, out_dir, **options)
    except (PackError, ShardError, ManifestError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(summary.format())


@main.command("verify")
@click.argument("shards", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--no-hash", is_flag=True, help="Skip the sha256 checks (sizes, lengths and index only).")
@click.option("--progress/--no-progress", default=True, show_default=True)
def verify_cmd(shards: Path, no_hash: bool, progress: bool) -> None:
    """Check every shard in SHARDS against manifest.json; one line per problem, exit 1 on any."""
    from deskpro.pipeline.shards import ShardError, verify

    try:
        report = verify(shards, check_hashes=not no_hash, strict=False, progress=progress)
    except ShardError as e:
        raise click.ClickException(str(e)) from None
    click.echo(report.format())
    if not report.ok:
        raise SystemExit(1)


# ---- train-teacher, train, evaluate, demo (owner: train)


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
]


def _run_training(phase: str, shards: Path, run_dir: Path, teacher: str | None, trust: bool, **kw) -> None:
    from deskpro.train.trainer import RunOptions, run_training

    names = ("epochs", "warmup_epochs", "p", "k", "base_lr", "amp", "channels_last", "num_workers", "seed")
    overrides = {key: kw.pop(key) for key in names}
    overrides["compile"] = kw.pop("compile_")
    options = RunOptions(
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
def train_cmd(
    shards: Path, run_dir: Path, teacher: str | None, baseline: bool, trust_checkpoint: bool, **kw
) -> None:
    """Train DeSKPro (global stream + student, frozen teacher) or, with --baseline, the global stream."""
    if baseline == (teacher is not None):
        raise click.UsageError("give exactly one of --teacher CKPT (DeSKPro) or --baseline")
    _run_training("baseline" if baseline else "deskpro", shards, run_dir, teacher, trust_checkpoint, **kw)


@main.command("evaluate")
@click.argument("shards", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--checkpoint", "checkpoint_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the report as JSON.")
@click.option("--split", type=click.Choice(["test", "val"]), default="test", show_default=True)
@click.option(
    "--stream",
    "streams",
    multiple=True,
    type=click.Choice(["body", "face", "both"]),
    help="Streams to report (default: all; body only for a baseline).",
)
@click.option("--trials", type=int, default=10, show_default=True, help="Single-shot gallery trials.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto: cuda when available.")
@click.option("--trust-checkpoint", is_flag=True, help="Allow a checkpoint that needs full unpickling.")
@click.option("--no-progress", is_flag=True)
def evaluate_cmd(
    shards: Path,
    checkpoint_path: str,
    json_path,
    split,
    streams,
    trials,
    seed,
    batch_size,
    device,
    trust_checkpoint: bool,
    no_progress: bool,
) -> None:
    """CMC / mAP of a checkpoint under the dataset's protocols (a table, and JSON with --json)."""
    from deskpro.train.evaluate import evaluate, format_report

    report = evaluate(
        shards,
        checkpoint_path,
        split=split,
        streams=streams or None,
        device=device,
        batch_size=batch_size,
        trials=trials,
        seed=seed,
        trust=trust_checkpoint,
        progress=not no_progress,
        json_path=json_path,
    )
    click.echo(format_report(report))


@main.command("demo")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-out"),
    show_default=True,
    help="Where the synthetic data, shards and runs go.",
)
@click.option("--quick", is_flag=True, help="Tiny sizes and a few iterations (under a minute).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--executor",
    type=click.Choice(["ray", "local"]),
    default="ray",
    show_default=True,
    help="Preprocessing on a local Ray (falls back to local if Ray fails) or in-process.",
)
def demo_cmd(out_dir: Path, quick: bool, seed: int, executor: str) -> None:
    """A synthetic cloth-changing dataset through every step, on CPU: baseline vs DeSKPro."""
    from deskpro.demo import run_demo

    run_demo(out_dir, quick=quick, seed=seed, executor=executor, echo=click.echo)


if __name__ == "__main__":
    main()
