"""`deskpro ablate`: the rows of the paper's Table 3 that a shard set allows, trained and evaluated."""

from __future__ import annotations

from pathlib import Path

import click

from deskpro.cli.config_file import config_file_option
from deskpro.cli.group import device_option, main, progress_option, show_progress
from deskpro.cli.train_options import BACKBONE_NAMES

_EPOCHS = click.IntRange(1)


@main.command("ablate")
@config_file_option()
@click.argument("shards", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "-o",
    "--out",
    "run_root",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of the runs (one per training run) and of ablation.json / ablation.md.",
)
@click.option(
    "--rows",
    help="Comma-separated rows to produce: 1-7, DeSKPro, DeSKPro* (default: all). "
    "Runs they share are trained once.",
)
@click.option(
    "--epochs", type=_EPOCHS, help="Epochs of every run but the teacher [default: the preset's, 140]."
)
@click.option("--teacher-epochs", type=_EPOCHS, help="Epochs of the face teacher [default: as --epochs].")
@click.option(
    "--warmup-epochs",
    type=click.IntRange(0),
    help="Linear lr warm-up epochs of every run [default: the preset's 10, or epochs - 1 when fewer].",
)
@click.option(
    "--p", "--ids-per-batch", "p", type=click.IntRange(2), help="Identities per batch [default: 5]."
)
@click.option("--k", "--images-per-id", "k", type=click.IntRange(2), help="Images per identity [default: 6].")
@click.option(
    "--lr",
    "base_lr",
    type=click.FloatRange(0.0, min_open=True),
    help="Base lr, scaled by sqrt(P*K/20) [default: 6e-4].",
)
@click.option(
    "--backbone",
    type=click.Choice(BACKBONE_NAMES),
    help="OSNet variant of every stream [default: osnet_x1_0; the demo's: osnet_x0_25].",
)
@click.option(
    "--workers", "num_workers", type=click.IntRange(0), help="DataLoader worker processes [default: 2]."
)
@click.option(
    "--seed", type=click.IntRange(0), default=0, show_default=True, help="Training and evaluation seed."
)
@click.option(
    "--trials", type=click.IntRange(1), default=10, show_default=True, help="Single-shot gallery draws."
)
@device_option()
@click.option("--max-iters", type=click.IntRange(1), help="Stop each run after this many iterations (tests).")
@click.option(
    "--imagenet",
    type=click.Path(exists=True, dir_okay=False),
    help="OSNet x1.0 ImageNet weights for every run (see `deskpro weights list`).",
)
@click.option("--from-scratch", is_flag=True, help="Random init instead of --imagenet (real datasets).")
@click.option(
    "--jobs",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Runs trained at once, each in its own process (on a CPU: with --run-threads 1, about "
    "--jobs times faster; a run needing the teacher waits for it). Results do not depend on it.",
)
@click.option(
    "--run-threads",
    type=click.IntRange(1),
    help="Torch threads of each run's process (default: this process's choice).",
)
@progress_option()
def ablate_cmd(shards: Path, run_root: Path, rows: str | None, **kw) -> None:
    """Train (or reuse) and evaluate Table 3's rows on SHARDS; prints the table, writes JSON and Markdown."""
    from deskpro.experiments.ablate import AblationSettings, run_ablation

    names = ("epochs", "warmup_epochs", "p", "k", "base_lr", "backbone", "num_workers")
    overrides = {key: kw[key] for key in names if kw[key] is not None}
    overrides["seed"] = kw["seed"]
    settings = AblationSettings(
        overrides=overrides,
        teacher_epochs=kw["teacher_epochs"],
        device=kw["device"],
        max_iters=kw["max_iters"],
        trials=kw["trials"],
        seed=kw["seed"],
        progress=show_progress(kw["progress"]),
        imagenet=kw["imagenet"],
        from_scratch=kw["from_scratch"],
        jobs=kw["jobs"],
        threads=kw["run_threads"],
    )
    chosen = [r for r in rows.split(",") if r.strip()] if rows else None
    run_ablation(shards, run_root, rows=chosen, settings=settings, echo=click.echo)
    click.echo(f"table: {run_root / 'ablation.md'}  results: {run_root / 'ablation.json'}")
