"""File helpers shared by the pipeline and trainer: hashing and atomic replacement."""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
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


class OutputPathError(FileExistsError):
    """An output path that would replace an input or a file this tool did not write; one line."""


def check_output_path(
    path: str | os.PathLike,
    *,
    inputs: Iterable[str | os.PathLike] = (),
    is_ours: Callable[[Path], bool] | None = None,
    force: bool = False,
    flag: str = "--out",
) -> Path:
    """`path` as a Path, when writing it loses nothing; OutputPathError otherwise.

    Refused, whatever `force` says: `path` is one of `inputs` (the same file, links resolved).
    Refused unless `force`: `path` exists and `is_ours(path)` is not true (a file of another kind,
    e.g. an image or a checkpoint given as a report path). Writers then replace it atomically
    (`atomic_path`), so a crash never leaves half a file under the name.
    """
    path = Path(path)
    target = path.resolve()
    for item in inputs:
        if Path(item).resolve() == target:
            raise OutputPathError(f"{flag} {path}: is an input of this command; choose another output path")
    if path.exists() and not force and not (is_ours is not None and is_ours(path)):
        raise OutputPathError(
            f"{flag} {path}: exists and was not written by this command; pass --force to replace it"
        )
    return path
