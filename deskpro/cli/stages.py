"""`deskpro parse / detect / restore / preprocess`: the preprocessing stages over a manifest."""

from __future__ import annotations

from pathlib import Path

import click

from deskpro.cli.group import _with, main

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
        help="Join a cluster: 'auto' (the one on this machine) or HEAD:6379 (its GCS port); "
        "ray:// (Ray Client) is refused, use `ray job submit`. Default: RAY_ADDRESS when set "
        "(inside `ray job submit`), else a private local Ray for this command.",
    ),
    click.option("--part-size", default=1000, show_default=True, help="Manifest rows per part file."),
    click.option("--batch-size", default=16, show_default=True, help="Images per model call."),
    click.option(
        "--actors",
        "num_actors",
        type=int,
        default=None,
        help="Model replicas [default: one per GPU of the cluster; without GPUs, one per free CPU; "
        "oracle/none backends run as plain tasks].",
    ),
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
    """Click's keyword arguments -> (StageRunOptions, the options every backend takes)."""
    from deskpro.pipeline.plan import StageRunOptions

    run = StageRunOptions(
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
    from deskpro.manifests import ManifestError
    from deskpro.pipeline.plan import StageError
    from deskpro.pipeline.runner import run_preprocess, run_stage
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
