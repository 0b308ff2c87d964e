"""The `deskpro` command line: click options -> one library call per command.

One module per step of the flow; importing them registers their commands on `main`.
"""

from deskpro.cli import ablate, data, demo, evaluate, experiment, inference, shards, stages, train, visualize  # noqa: F401  (registers the commands)
from deskpro.cli.examples import add_examples
from deskpro.cli.group import add_verbosity_options, main, remember_outputs

add_verbosity_options(main)
remember_outputs(main)
add_examples(main)

__all__ = ["main"]
