"""`python -m deskpro` (also how `torchrun -m deskpro train ...` starts DDP training)."""

from deskpro.cli import main

main()
