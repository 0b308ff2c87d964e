"""`deskpro pack` and `deskpro verify`: training shards from the stage outputs, and their check."""

from __future__ import annotations

from pathlib import Path

import click

from deskpro.cli.group import _parse_hw, main, progress_option, show_progress


@main.command("pack")
@click.argument("work", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "-o", "--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Shard folder to write."
)
@click.option("--body-size", default="384x128", show_default=True, callback=_parse_hw, help="HEIGHTxWIDTH.")
@click.option(
    "--face-size",
    default=224,
    show_default=True,
    type=click.IntRange(1, 4096),
    help="Side of both faces, px.",
)
@click.option(
    "--codec",
    default="jpeg",
    show_default=True,
    type=click.Choice(["jpeg", "raw"]),
    help="jpeg: ~44 KB a sample at q95; raw: exact, fastest to read, ~10x the bytes (docs/formats.md)",
)
@click.option(
    "--jpeg-quality",
    default=95,
    show_default=True,
    type=click.IntRange(1, 100),
    help="JPEG quality (--codec jpeg).",
)
@click.option(
    "--shard-size",
    default=1024,
    show_default=True,
    type=click.IntRange(1, 1 << 20),
    help="Samples per shard.",
)
@click.option(
    "--parse-compression",
    default="gzip",
    show_default=True,
    type=click.Choice(["gzip", "lzf", "none"]),
    help="HDF5 filter of the parse maps (label maps: gzip is 26x smaller and fast to read).",
)
@click.option("--overwrite", is_flag=True, help="Replace a complete shard directory.")
@click.option("--force", is_flag=True, help="Write into a folder (or over a file) pack did not create.")
@progress_option()
def pack_cmd(work: Path, out_dir: Path, **options) -> None:
    """Join WORK's manifest and stage outputs into training shards in OUT."""
    from deskpro.common.files import OutputPathError
    from deskpro.manifests import ManifestError
    from deskpro.shards import ShardError
    from deskpro.shards.pack import PackError, pack

    try:
        options["progress"] = show_progress(options["progress"])
        summary = pack(work, out_dir, **options)
    except (PackError, ShardError, ManifestError, OutputPathError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(summary.format())


@main.command("verify")
@click.argument("shards", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--no-hash", is_flag=True, help="Skip the sha256 checks (layout, sizes and index only).")
@progress_option()
def verify_cmd(shards: Path, no_hash: bool, progress: bool | None) -> None:
    """Check every shard in SHARDS against catalog.json; one line per problem, exit 1 on any."""
    from deskpro.shards import ShardError, verify

    try:
        report = verify(shards, check_hashes=not no_hash, strict=False, progress=show_progress(progress))
    except ShardError as e:
        raise click.ClickException(str(e)) from None
    click.echo(report.format())
    if not report.ok:
        raise SystemExit(1)
