"""`deskpro experiment method`: every row of Table 3 over seeds on a controlled synthetic world."""

from __future__ import annotations

from pathlib import Path

import click

from deskpro.cli.group import main, progress_option, show_progress


@main.group("experiment")
def experiment_group() -> None:
    """Controlled experiments on synthetic worlds (docs/method.md)."""


def _seeds(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        seeds = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise click.BadParameter(f"{value!r}: need distinct seeds")
    return seeds


@experiment_group.command("method")
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("method-out"),
    show_default=True,
    help="Folder of the per-seed data and runs, method.json, method.md and report.html.",
)
@click.option(
    "--size",
    type=click.Choice(["cpu", "gpu", "tiny"]),
    default="cpu",
    show_default=True,
    help="cpu: x0.25 OSNet, 64x32 bodies, 2 CPU cores (about 30 min idle); gpu: OSNet x1.0, "
    "256x128 bodies, one GPU (under 10 min on an H100); tiny: a smoke run.",
)
@click.option("--seeds", callback=_seeds, help="Comma-separated seeds (default: the size's 0,1,2).")
@click.option(
    "--executor",
    type=click.Choice(["ray", "local"]),
    default="local",
    show_default=True,
    help="Preprocessing on a local Ray or in-process.",
)
@progress_option()
def method_cmd(out_dir: Path, size: str, seeds, executor: str, progress: bool | None) -> None:
    """Train and evaluate every row of Table 3 over seeds on the clothes-trap world; prints the tables
    (mean and spread, paired orderings, the clothes trap, Fig. 3 as numbers) and writes method.json,
    method.md and report.html. Finished runs are reused.

    \b
    Example:
      deskpro experiment method --size tiny --seeds 0 -o method-tiny
      deskpro experiment method -o method-out
    """
    from deskpro.experiments.method import run_method, size_named

    run_method(
        out_dir,
        size_named(size, seeds),
        executor=executor,
        echo=click.echo,
        progress=show_progress(progress),
    )
