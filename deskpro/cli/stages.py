"""`deskpro parse / detect / restore / preprocess`: the preprocessing stages over a manifest.

Each stage's flags are made from its options dataclass (deskpro.pipeline.options): names, defaults,
help, choices and ranges are written there once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from deskpro.cli.config_file import config_file_option
from deskpro.cli.group import _with, main, progress_option, show_progress, verbosity
from deskpro.pipeline.options import EXECUTORS, OPTIONS, SHARED_FIELDS, STAGE_NAMES, StageRunOptions, flag

_RUN = {f.name: f.default for f in dataclasses.fields(StageRunOptions)}
_AT_LEAST_ONE = click.IntRange(min=1)

_STAGE_RUN_OPTIONS = [  # shared by parse / detect / restore / preprocess: where to write, how to run
    click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path)),
    click.option(
        "-o",
        "--out",
        "-w",
        "--work",
        "work_dir",
        required=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="Work dir to write (also -w/--work): WORK/stages/<stage>/part-*.parquet; shared on a cluster.",
    ),
    click.option(
        "--executor",
        type=click.Choice(EXECUTORS),
        default=_RUN["executor"],
        show_default=True,
        help="auto: local for at most 850 rows when no cluster is named (--ray-address, RAY_ADDRESS), "
        "else ray (Ray's start-up costs about 10 s: benchmarks/RESULTS.md); ray: Ray Data with an actor "
        "pool; local: the same classes in a plain loop. The stage line says which ran.",
    ),
    click.option(
        "--ray-address",
        default=_RUN["ray_address"],
        help="Join a cluster: 'auto' (the one on this machine) or HEAD:6379 (its GCS port); "
        "ray:// (Ray Client) is refused, use `ray job submit`. Default: RAY_ADDRESS when set "
        "(inside `ray job submit`), else a private local Ray for this command.",
    ),
    click.option(
        "--part-size", type=_AT_LEAST_ONE, default=_RUN["part_size"], show_default=True, help="Rows per part."
    ),
    click.option(
        "--batch-size",
        type=_AT_LEAST_ONE,
        default=_RUN["batch_size"],
        show_default=True,
        help="Rows per call.",
    ),
    click.option(
        "--actors",
        "num_actors",
        type=_AT_LEAST_ONE,
        default=_RUN["num_actors"],
        help="Model replicas [default: one per GPU of the cluster; without GPUs, one per free CPU; "
        "oracle/none backends run as plain tasks].",
    ),
    click.option(
        "--num-gpus",
        type=click.FloatRange(min=0),
        default=_RUN["num_gpus"],
        help="GPUs per actor, fractional allowed "
        "[default: 1 when the cluster has GPUs and the backend is a network, else 0].",
    ),
    click.option(
        "--num-cpus",
        type=click.FloatRange(min=0, min_open=True),
        default=_RUN["num_cpus"],
        show_default=True,
        help="CPUs per actor.",
    ),
    click.option("--overwrite", is_flag=True, help="Recompute every part (needed when options changed)."),
    click.option(
        "--max-errors",
        type=click.IntRange(min=0),
        default=_RUN["max_errors"],
        help="Fail above this many error rows.",
    ),
    progress_option(),
]


def _click_type(f: dataclasses.Field):
    meta = f.metadata
    if meta["choices"]:
        return click.Choice(meta["choices"])
    kind = meta["type"] or type(f.default)
    bounds = meta["range"]
    if bounds is None:
        return kind
    range_type = click.IntRange if kind is int else click.FloatRange
    return range_type(min=bounds.low, max=bounds.high, min_open=bounds.low_open)


def _click_option(f: dataclasses.Field, prefix: str = ""):
    """The click option of one options field; per-stage fields get preprocess's stage prefix."""
    meta = f.metadata
    name = f"{prefix}{f.name}" if meta["per_stage"] else f.name
    decls = [flag(name), *([meta["alias"]] if meta["alias"] else []), name]
    if isinstance(f.default, bool):
        return click.option(*decls, is_flag=True, default=f.default, help=meta["help"])
    shown = f.default is not None
    return click.option(*decls, type=_click_type(f), default=f.default, show_default=shown, help=meta["help"])


def _stage_fields(stage: str) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(OPTIONS[stage]) if f.name not in SHARED_FIELDS]


_SHARED_OPTIONS = [_click_option(f) for f in dataclasses.fields(OPTIONS["parse"]) if f.name in SHARED_FIELDS]


def _preprocess_options() -> list:
    """Every stage's flags; a flag that several stages share (--max-pixels) appears once."""
    out, seen = [], set()
    for stage in STAGE_NAMES:
        for f in _stage_fields(stage):
            if f.metadata["per_stage"] or f.name not in seen:
                out.append(_click_option(f, f"{stage}_"))
                seen.add(f.name)
    return out


def _split_run_options(kw: dict) -> tuple[StageRunOptions, dict]:
    """Click's keyword arguments -> (StageRunOptions, the options every stage takes)."""
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
        progress=show_progress(kw.pop("progress")),
        verbose=verbosity() > 0,
    )
    return run, {name: kw.pop(name) for name in SHARED_FIELDS}


def _by_stage(kw: dict) -> dict[str, dict]:
    """preprocess's options -> {stage: its options}; per-stage ones carry the stage prefix."""
    return {
        stage: {
            f.name: kw[f"{stage}_{f.name}" if f.metadata["per_stage"] else f.name]
            for f in _stage_fields(stage)
        }
        for stage in STAGE_NAMES
    }


def _run_stage_command(stage: str, kw: dict) -> None:
    from deskpro.manifests import ManifestError
    from deskpro.pipeline.options import StageConfigError
    from deskpro.pipeline.plan import StageError
    from deskpro.pipeline.runner import run_preprocess, run_stage

    manifest, work_dir = kw.pop("manifest"), kw.pop("work_dir")
    kw.pop("config_file", None)  # already applied as the defaults (--config)
    run, shared = _split_run_options(kw)
    try:
        if stage == "preprocess":
            by_stage = {s: {**options, **shared} for s, options in _by_stage(kw).items()}
            summaries = run_preprocess(manifest, work_dir, by_stage, run)
        else:
            summaries = [run_stage(stage, manifest, work_dir, {**kw, **shared}, run)]
    except (StageError, StageConfigError, ManifestError) as exc:
        if getattr(exc, "summary", None) is not None:
            click.echo(exc.summary.format())
        raise click.ClickException(str(exc)) from None
    for summary in summaries:
        click.echo(summary.format())


@main.command("parse")
@config_file_option()
@_with(_STAGE_RUN_OPTIONS + _SHARED_OPTIONS)
@_with([_click_option(f) for f in _stage_fields("parse")])
def parse_command(**kw) -> None:
    """Human parsing of every image in MANIFEST -> WORK/stages/parse."""
    _run_stage_command("parse", kw)


@main.command("detect")
@config_file_option()
@_with(_STAGE_RUN_OPTIONS + _SHARED_OPTIONS)
@_with([_click_option(f) for f in _stage_fields("detect")])
def detect_command(**kw) -> None:
    """Face detection, 5 landmarks and aligned low-res crops -> WORK/stages/detect."""
    _run_stage_command("detect", kw)


@main.command("restore")
@config_file_option()
@_with(_STAGE_RUN_OPTIONS + _SHARED_OPTIONS)
@_with([_click_option(f) for f in _stage_fields("restore")])
def restore_command(**kw) -> None:
    """Restoration of the detect stage's faces -> WORK/stages/restore."""
    _run_stage_command("restore", kw)


@main.command("preprocess")
@config_file_option()
@_with(_STAGE_RUN_OPTIONS + _SHARED_OPTIONS)
@_with(_preprocess_options())
def preprocess_command(**kw) -> None:
    """parse, detect and restore in order with the same run options."""
    _run_stage_command("preprocess", kw)
