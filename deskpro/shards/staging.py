"""pack's output folder: what may be written there, and a new set written beside the old one and
swapped in only once it is complete.

`staged_output(out_dir)` yields a fresh hidden folder ``PARENT/.NAME.pack-<unique>`` in
the same parent (so the swap is a rename on one file system). When the block ends without an
exception the new set replaces the old: the two folders are exchanged in one atomic
``renameat2(RENAME_EXCHANGE)`` (two renames where the system lacks it), then the old set is
deleted. On any exception (a full disk, Ctrl-C, a bad sample) the staging folder is removed and the
old, complete set and its catalog are untouched. A folder that also holds files pack did not write
(``--force``) keeps them: only pack's own files are moved, the catalog last in and first out.

Call it while holding the output's lock (`deskpro.common.locks`): leftovers of a killed pack
(``.NAME.pack-*``) are removed, and an old set stranded by a kill between two renames
(``.NAME.old-*`` with no NAME) is put back first.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from deskpro.common.files import OutputPathError, check_output_path
from deskpro.shards.format import CATALOG_NAME, ShardError
from deskpro.shards.writer import is_ours

_log = logging.getLogger(__name__)
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the system cannot."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: fall back to two renames
        return False
    raise OSError(code, os.strerror(code), str(b))


def _siblings(out_dir: Path, kind: str) -> list[Path]:
    return sorted(out_dir.parent.glob(f".{out_dir.name}.{kind}-*"))


def recover(out_dir: Path, catalog: str) -> None:
    """Put back an old set that a kill mid-swap stranded in ``.NAME.old-*``, and remove a killed
    pack's staging folders (``.NAME.pack-*``). Only under the output's lock."""
    for old in _siblings(out_dir, "old"):
        if not out_dir.exists():
            os.rename(old, out_dir)
        elif not (out_dir / catalog).exists():  # a swap of pack's own files was cut short
            for path in old.iterdir():
                os.replace(path, out_dir / path.name)
            old.rmdir()
        else:  # the swap had finished: the old set was only not deleted yet
            shutil.rmtree(old, ignore_errors=True)
            continue
        _log.warning(f"{out_dir}: put back the previous shard set from {old.name} (a pack was killed)")
    for path in _siblings(out_dir, "pack"):
        shutil.rmtree(path, ignore_errors=True)


def _move_files(source: Path, target: Path, names: list[str], last: str | None) -> None:
    for name in sorted(names, key=lambda n: n == last):  # `last` moves last
        os.replace(source / name, target / name)


def _swap(stage: Path, out_dir: Path, catalog: str) -> None:
    if not out_dir.exists():
        os.rename(stage, out_dir)
        return
    ours = [p.name for p in out_dir.iterdir() if p.is_file() and is_ours(p)]
    foreign = [p for p in out_dir.iterdir() if p.name not in ours]
    old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:12]}"
    if not foreign:
        if _exchange(stage, out_dir):
            shutil.rmtree(stage, ignore_errors=True)  # now holds the old set
            return
        os.rename(out_dir, old)
        os.rename(stage, out_dir)
    else:  # other files stay: move pack's own files out (catalog first), the new ones in (catalog last)
        old.mkdir()
        _move_files(out_dir, old, sorted(ours, key=lambda n: n != catalog), None)
        _move_files(stage, out_dir, [p.name for p in stage.iterdir()], catalog)
        stage.rmdir()
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_output(out_dir: str | os.PathLike) -> Iterator[Path]:
    """A fresh folder to write the new set into; it replaces `out_dir`'s set only on success."""
    out_dir = Path(out_dir).absolute()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    recover(out_dir, CATALOG_NAME)
    stage = out_dir.parent / f".{out_dir.name}.pack-{uuid.uuid4().hex[:12]}"
    stage.mkdir()
    try:
        yield stage
        _swap(stage, out_dir, CATALOG_NAME)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def check_pack_output(work_dir: Path, out_dir: Path, root: Path, force: bool, overwrite: bool) -> None:
    """Refuse an output that is an input (the work dir, the dataset root, or inside them), or that
    is a file/folder pack did not create, unless force; complete shards need overwrite."""
    out = out_dir.resolve()
    for item, what in ((work_dir, "the work directory"), (root, "the dataset root")):
        item = item.resolve()
        if out == item or item in out.parents or out in item.parents:
            raise OutputPathError(
                f"-o {out_dir}: is (inside) {what}, an input of pack; choose another folder"
            )
    if out_dir.exists() and not out_dir.is_dir():
        check_output_path(out_dir, force=force, flag="-o")  # a file: refused unless --force
        if force:
            out_dir.unlink()
        return
    if out_dir.is_dir():
        foreign = [p.name for p in out_dir.iterdir() if not (p.is_file() and is_ours(p))]
        if foreign and not force:
            raise OutputPathError(
                f"-o {out_dir}: holds files pack did not write (e.g. {foreign[0]});"
                " pass --force to pack there"
            )
        if (out_dir / CATALOG_NAME).exists() and not overwrite:
            raise ShardError(
                f"{out_dir}: already holds complete shards ({CATALOG_NAME}); pass --overwrite to replace"
            )
