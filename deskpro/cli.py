"""The `deskpro` command line: click options -> one library call per command.

Heavy modules are imported inside each command so that `deskpro --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="deskpro")
def main() -> None:
    """deskpro: reproducible DeSKPro for cloth-changing person re-identification."""


# ---- manifest (owner: data)


# ---- weights (owner: lead)


@main.group()
def weights() -> None:
    """Official checkpoints: where each comes from, and a size and sha256 check."""


@weights.command("list")
def weights_list() -> None:
    """Print every official checkpoint: file, size, sha256, source and licence."""
    from deskpro.pipeline import weights as registry

    click.echo(registry.format_table())


@weights.command("verify")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
def weights_verify(directory: Path) -> None:
    """Check the size and sha256 of every official checkpoint found in DIRECTORY."""
    from deskpro.pipeline import weights as registry

    report = registry.verify_dir(directory)
    click.echo(report.format())
    if not report.ok:
        raise SystemExit(1)


# ---- stages: parse, detect, restore, preprocess (owner: pipeline)


# ---- pack, verify (owner: shards)


# ---- train-teacher, train, evaluate, demo (owner: train)


if __name__ == "__main__":
    main()
