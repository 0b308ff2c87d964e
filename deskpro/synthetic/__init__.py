"""The synthetic cloth-changing dataset: a seeded generator of drawn people and the oracle backends
that serve its ground truth (parse maps, faces) to the pipeline stages. One feature, one package.
"""

from __future__ import annotations

import os
from pathlib import Path

from deskpro.synthetic import generator


def prepare(root: str | os.PathLike, options: dict | None = None, *, progress: bool = True) -> Path:
    """Generate the set into `root` unless a complete one is there; with `options` (generator keywords)
    an existing set must match them (ManifestError otherwise)."""
    if options or not generator.is_complete(root):
        generator.generate(root, progress=progress, **(options or {}))
    return Path(root)
