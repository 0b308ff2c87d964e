"""File helpers shared by the pipeline and trainer: hashing and atomic replacement."""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, tmp: str | os.PathLike | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; on success it replaces `path` in one rename.

    On an exception the temporary file is removed and `path` is left as it was. `tmp` names the
    temporary file (where a cleanup elsewhere looks for that name); by default a hidden, unique
    ``.NAME.<hex>.tmp`` in the same directory, so concurrent writers do not share one.
    """
    path = Path(path)
    tmp = Path(tmp) if tmp is not None else path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
