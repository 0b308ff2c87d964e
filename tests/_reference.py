"""Where the official checkpoints' key layouts live: `tests/data/reference/` in this repository.

Each `*_keys.json` maps a checkpoint name to `{state_dict key: shape}`, read from the official code;
`README.md` beside them holds the facts (sources, sizes, conventions). `DESKPRO_REFERENCE` points the
tests at another copy. The tests need these files and never the real checkpoints.
"""

from __future__ import annotations

import os
from pathlib import Path

REFERENCE_DIR = Path(os.environ.get("DESKPRO_REFERENCE") or Path(__file__).parent / "data" / "reference")
if not (REFERENCE_DIR / "deskpro_keys.json").is_file():
    raise FileNotFoundError(f"{REFERENCE_DIR}: no deskpro_keys.json (the key layouts the tests build from)")
