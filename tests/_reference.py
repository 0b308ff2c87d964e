"""Where the official checkpoints' key layouts live: `shared/reference/` beside the checkout.

CI clones the repository with `shared/` beside it; a developer's checkout has it at `../shared`.
`DESKPRO_REFERENCE` overrides both. The tests need these files and never the real checkpoints.
"""

from __future__ import annotations

import os
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]


def _find() -> Path:
    candidates = [
        Path(os.environ["DESKPRO_REFERENCE"]) if os.environ.get("DESKPRO_REFERENCE") else None,
        _REPO.parent / "shared" / "reference",
        _REPO / "shared" / "reference",
        Path("/work/shared/reference"),
    ]
    for path in candidates:
        if path is not None and (path / "deskpro_keys.json").is_file():
            return path
    tried = ", ".join(str(p) for p in candidates if p is not None)
    raise FileNotFoundError(f"shared/reference not found (tried {tried}); set DESKPRO_REFERENCE")


REFERENCE_DIR = _find()
