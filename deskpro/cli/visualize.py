"""`deskpro visualize attention|ranks CKPT SHARDS -o DIR` and `deskpro plot RUN`: pictures (PNG)."""

from __future__ import annotations

from pathlib import Path

import click

from deskpro.cli.group import device_option, main

_MODEL_ARGS = [
    click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path)),
    click.argument("shards", type=click.Path(exists=True, file_okay=False, path_type=Path)),
    click.option(
        "-o",
        "--out",
        "out_dir",
        required=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="Folder for the PNG pictures.",
    ),
    device_option(),
]


def _with_model_args(command):
    for option in reversed(_MODEL_ARGS):
        command = option(command)
    return command


@main.group("visualize")
def visualize_group() -> None:
    """Pictures of a trained DeSKPro model on a shard set's test split."""


@visualize_group.command("attention")
@_with_model_args
@click.option(
    "--samples", type=click.IntRange(1, 64), default=4, show_default=True, help="Rows (identities) shown."
)
def attention_cmd(checkpoint: Path, shards: Path, out_dir: Path, device: str, samples: int) -> None:
    """Image, parse map, cloth-irrelevant mask and CSA attention side by side (DIR/attention.png)."""
    from deskpro.experiments.visualize import attention_picture

    click.echo(attention_picture(checkpoint, shards, out_dir, samples=samples, device=device))


@visualize_group.command("ranks")
@_with_model_args
@click.option(
    "--queries", type=click.IntRange(1, 64), default=3, show_default=True, help="Queries per protocol."
)
@click.option(
    "--topk", type=click.IntRange(1, 50), default=5, show_default=True, help="Gallery images per query."
)
def ranks_cmd(checkpoint: Path, shards: Path, out_dir: Path, device: str, queries: int, topk: int) -> None:
    """Queries and their top-k gallery per protocol, matches framed green, others red (DIR/ranks.png)."""
    from deskpro.experiments.visualize import ranks_picture

    click.echo(ranks_picture(checkpoint, shards, out_dir, queries=queries, topk=topk, device=device))


@main.command("plot")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "-o",
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="PNG to write [default: RUN/curves.png]; never over a run file or any other input.",
)
@click.option("--force", is_flag=True, help="Let -o replace a file that is not a PNG this command wrote.")
def plot_cmd(run_dir: Path, out_path: Path | None, force: bool) -> None:
    """Training curves of a run: loss terms and learning rate per epoch, from RUN/log.jsonl."""
    from deskpro.experiments.pictures import save_curves

    path, _ = save_curves(run_dir, out_path or run_dir / "curves.png", force=force)
    click.echo(f"wrote {path}")
