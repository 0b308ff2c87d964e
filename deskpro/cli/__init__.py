"""The `deskpro` command line: click options -> one library call per command.

One module per step of the flow; importing them registers their commands on `main`.
"""

from deskpro.cli import ablate, data, demo, evaluate, shards, stages, train, visualize  # noqa: F401  (importing registers the commands)  # noqa: F401  (demo helper: ablate, visualize, plot)
from deskpro.cli.group import main

__all__ = ["main"]
