"""`deskpro embed / search / export`: a trained model on raw images (deskpro.inference)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from deskpro.cli.group import _with, main, show_progress, verbosity
from deskpro.cli.stages import _STAGE_RUN_OPTIONS

# The stages' run options after their MANIFEST argument and -o WORK: executor, Ray, parts, progress.
_RUN_OPTIONS = _STAGE_RUN_OPTIONS[2:]
_RUN_NAMES = ("part_size", "batch_size", "executor", "ray_address", "num_actors", "num_gpus", "num_cpus")

_CHECKPOINT_HELP = "The model: a deskpro checkpoint (RUN/checkpoint.pt) or an official DeSKPro file."
_DETECT_OPTIONS = [
    click.option(
        "--detector",
        "--detect-backend",
        "detector",
        help="Face detector [default: the one the checkpoint's shards were detected with; "
        "retinaface-resnet50 for an official file]: retinaface-resnet50 | retinaface-mobilenet0.25 | "
        "face-alignment | oracle.",
    ),
    click.option(
        "--detect-weights",
        type=click.Path(dir_okay=False),
        help="The detector's checkpoint (see `deskpro weights list`).",
    ),
    click.option(
        "--min-score",
        type=click.FloatRange(0, 1),
        help="Face policy: lowest score [default: the checkpoint's].",
    ),
    click.option(
        "--upscale",
        type=click.FloatRange(0, 16, min_open=True),
        help="Enlarge before detection [default: the checkpoint's].",
    ),
    click.option(
        "--device", default="auto", show_default=True, help="auto: cuda when available; cpu; cuda:N."
    ),
    click.option("--trust-checkpoint", is_flag=True, help="Allow a checkpoint that needs full unpickling."),
]


def _detect_overrides(kw: dict) -> dict:
    """The face-policy flags given on the command line (the others keep the checkpoint's)."""
    values = {name: kw.pop(name) for name in ("min_score", "upscale")}
    return {name: value for name, value in values.items() if value is not None}


@main.command("embed")
@click.argument("source", metavar="INPUT", type=click.Path(exists=True, path_type=Path))
@click.option(
    "-o",
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="FEATURES: the Parquet table to write.",
)
@click.option(
    "--checkpoint",
    "checkpoint_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help=_CHECKPOINT_HELP,
)
@_with(_RUN_OPTIONS)
@_with(_DETECT_OPTIONS)
@click.option(
    "--engine",
    type=click.Choice(["auto", "onnxruntime", "torch"]),
    default="auto",
    show_default=True,
    help="Where the networks run: auto is onnxruntime on the CPU when installed (faster), else PyTorch.",
)
@click.option("--force", is_flag=True, help="Let -o replace a file that is not a features table.")
def embed_command(**kw) -> None:
    """Features of INPUT (a folder of images searched recursively, a manifest, or shards) -> a Parquet
    table FEATURES (-o): sample id, path, body and face embeddings, has_face, face box; the
    checkpoint's sha256 in its metadata. Resumable; a bad image is an error row.

    \b
    Example:
      deskpro embed photos/ --checkpoint runs/prcc/checkpoint.pt -o features.parquet \\
          --detector retinaface-mobilenet0.25 --detect-weights weights/mobilenet0.25_Final.pth \\
          --executor local
    """
    from deskpro.common.stops import Interrupted
    from deskpro.inference.embed import run_embed
    from deskpro.pipeline.options import StageRunOptions

    run = StageRunOptions(
        **{name: kw.pop(name) for name in _RUN_NAMES},
        overwrite=kw.pop("overwrite"),
        max_errors=kw.pop("max_errors"),
        progress=show_progress(kw.pop("progress")),
        verbose=verbosity() > 0,
    )
    overrides = _detect_overrides(kw)
    try:
        summary = run_embed(
            kw.pop("source"),
            kw.pop("checkpoint_path"),
            kw.pop("out"),
            detector=kw.pop("detector"),
            detect_weights=kw.pop("detect_weights"),
            detect_options=overrides,
            device=kw.pop("device"),
            run_options=run,
            trust=kw.pop("trust_checkpoint"),
            force=kw.pop("force"),
            engine=kw.pop("engine"),
        )
    except Interrupted as stop:  # one line saying what was kept and how to resume
        if os.environ.get("DESKPRO_TRACEBACK"):
            raise
        click.echo(f"Error: {stop}", err=True)
        raise SystemExit(130) from None
    click.echo(summary.format())


@main.command("search")
@click.argument("features", type=click.Path(exists=True, dir_okay=False))
@click.argument("queries", metavar="QUERY...", nargs=-1, required=True)
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Results per query.")
@click.option(
    "--checkpoint",
    "checkpoint_path",
    type=click.Path(dir_okay=False),
    help="For image queries: the gallery's checkpoint [default: the path stored in FEATURES].",
)
@click.option(
    "--detect-weights",
    type=click.Path(dir_okay=False),
    help="For image queries: the detector [default: the path stored in FEATURES].",
)
@click.option("--device", default="auto", show_default=True, help="auto: cuda when available; cpu; cuda:N.")
@click.option(
    "-o",
    "--out",
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    help="Also write the results as JSON.",
)
@click.option(
    "--picture", type=click.Path(dir_okay=False), help="Also draw each query beside its results (PNG)."
)
@click.option(
    "--force", is_flag=True, help="Let --json / --picture replace a file this command did not write."
)
def search_command(
    features, queries, k, checkpoint_path, detect_weights, device, json_path, picture, force
) -> None:
    """The K nearest rows of FEATURES for each QUERY: an image, a folder of images, a features table
    (all its rows) or TABLE.parquet#SAMPLE_ID. Exact, with the evaluation's distance (face and body
    chunks where both sides have a face, body only otherwise); memory flat in the gallery size.

    \b
    Example:
      deskpro search features.parquet photos/query.jpg -k 5 --json results.json --picture results.png
    """
    from deskpro.inference.query import run_search

    data, table = run_search(
        features,
        list(queries),
        k=k,
        checkpoint=checkpoint_path,
        detect_weights=detect_weights,
        device=device,
        json_path=json_path,
        picture=picture,
        force=force,
    )
    click.echo(json.dumps(data) if verbosity() > 0 else table)


@main.command("export")
@click.argument(
    "checkpoint_path", metavar="CHECKPOINT", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "-o",
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="model.onnx (ONNX) or model.pt (TorchScript).",
)
@click.option("--no-check", is_flag=True, help="Skip the comparison with the eager model.")
@click.option("--trust-checkpoint", is_flag=True, help="Allow a checkpoint that needs full unpickling.")
@click.option("--force", is_flag=True, help="Let -o replace a file that deskpro export did not write.")
def export_command(checkpoint_path, out, no_check, trust_checkpoint, force) -> None:
    """The inference model of CHECKPOINT (body crop, face crop, has_face in; retrieval embedding out;
    dynamic batch) as ONNX or TorchScript, checked against the eager model. Runs without deskpro:
    see docs/inference.md.

    \b
    Example:
      deskpro export runs/prcc/checkpoint.pt -o model.onnx
    """
    from deskpro.inference.export import export_model

    summary = export_model(checkpoint_path, out, check=not no_check, trust=trust_checkpoint, force=force)
    click.echo(summary.format_line())
