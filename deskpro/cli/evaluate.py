"""`deskpro evaluate`: CMC / mAP of a checkpoint under the dataset's protocols."""

from __future__ import annotations

from pathlib import Path

import click

from deskpro.cli.group import device_option, main, progress_option, show_progress
from deskpro.cli.train import flagged


@main.command("evaluate")
@click.argument("shards", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--checkpoint",
    "checkpoint_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="The model: a deskpro checkpoint (RUN/checkpoint.pt) or an official DeSKPro file.",
)
@click.option(
    "-o",
    "--out",
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    help="Also write the report as JSON (its folder is made first; never over an input; see --force).",
)
@click.option(
    "--split",
    type=click.Choice(["test", "val"]),
    default="test",
    show_default=True,
    help="Rows to evaluate: the test split, or PRCC's val split.",
)
@click.option(
    "--stream",
    "streams",
    multiple=True,
    type=click.Choice(["body", "face", "both"]),
    help="Streams to report (default: all; body only for a baseline).",
)
@click.option(
    "--trials", type=click.IntRange(min=1), default=10, show_default=True, help="Single-shot gallery trials."
)
@click.option(
    "--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the single-shot draws."
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=64, show_default=True, help="Images per forward."
)
@device_option()
@click.option("--trust-checkpoint", is_flag=True, help="Allow a checkpoint that needs full unpickling.")
@progress_option()
# shards helper: the full hash check before evaluating (the reader always runs the cheap one)
@click.option(
    "--verify", "verify_shards", is_flag=True, help="First check every shard's sha256 (deskpro verify)."
)
@click.option("--force", is_flag=True, help="Let --json replace a file that is not an evaluate report.")
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
    progress: bool | None,
    verify_shards: bool,
    force: bool,
) -> None:
    """CMC / mAP of a checkpoint under the dataset's protocols (a table, and JSON with --json)."""
    from deskpro.shards import verify_or_raise
    from deskpro.train.evaluate import evaluate, format_report

    if verify_shards:  # shards helper: --verify
        verify_or_raise(shards, progress=show_progress(progress))
    try:
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
            progress=show_progress(progress),
            json_path=json_path,
            force=force,
        )
    except ValueError as exc:  # a checkpoint's error names its file: say which flag gave it
        raise click.ClickException(flagged(str(exc), {"--checkpoint": checkpoint_path})) from None
    click.echo(format_report(report))
    if json_path is not None:
        click.echo(f"wrote {json_path}")
