"""One writer per output: a lock file beside each output a command owns.

`output_lock(path)` holds ``PARENT/.NAME.lock`` while a command writes `path` (a stage's folder, a
shard set, a run directory, an ablation root, an embedding file). The lock is an exclusive
``flock`` on that file, so the kernel drops it when the holder dies, ``kill -9`` included; the
file's JSON says who holds it (pid, host, since when, command), for the one-line refusal a second
command gets. A file left by a dead holder is taken over (with a warning naming it). Where the
file system has no ``flock`` (some network mounts), the pid is checked instead: a holder on this
host whose pid is gone is stale; on another host, a lock older than ``STALE_AFTER_S`` without a
refresh is.

The lock sits beside the output (not inside it) so that it survives a swap of the whole folder
(`pack --overwrite`) and never shows up among the output's own files. Re-entrant within a process.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

LOCK_SUFFIX = ".lock"
STALE_AFTER_S = 24 * 3600.0  # a lock of another host without flock: stale after a day
_log = logging.getLogger(__name__)
_held: dict[Path, list] = {}  # lock file -> [fd, count] held by this process


class OutputLockedError(FileExistsError):
    """Another live command holds the output's lock; the message names it (one line)."""


def lock_path(output: str | os.PathLike) -> Path:
    """Where the lock of `output` lives: ``PARENT/.NAME.lock`` (links in PARENT resolved)."""
    output = Path(output).absolute()
    parent = output.parent.resolve() if output.parent.exists() else output.parent
    return parent / f".{output.name}{LOCK_SUFFIX}"


def _holder_info(what: str) -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200] if sys.argv else "",
        "what": what,
    }


def _read_info(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 1 << 16).decode() or "{}")
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def describe_holder(info: dict) -> str:
    """'pid 123 on host, since 2026-...Z (deskpro train ...)' from a lock file's JSON."""
    text = f"pid {info.get('pid', '?')} on {info.get('host', '?')}, since {info.get('since', '?')}"
    return text + (f" ({info['command']})" if info.get("command") else "")


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True  # a pid of another user: alive
    return True


def is_stale(info: dict, mtime: float, now: float | None = None) -> bool:
    """Whether a lock without flock is abandoned: a dead pid on this host, or old on another host."""
    if not info:
        return True
    if info.get("host") == socket.gethostname():
        return not _pid_alive(info.get("pid"))
    return (now if now is not None else time.time()) - mtime > STALE_AFTER_S


def _try_flock(fd: int) -> bool | None:
    """True: locked; False: another process holds it; None: this file system has no flock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return None
        raise


def _refuse(output: Path, path: Path, info: dict, flag: str) -> OutputLockedError:
    return OutputLockedError(
        f"{flag + ' ' if flag else ''}{output}: in use by {describe_holder(info)}; wait for it to end or "
        f"stop it (a lock of a killed command is taken over; its file: {path})"
    )


def _acquire(output: Path, path: Path, what: str, flag: str) -> int:
    """Open and lock `path`, writing our info; OutputLockedError when a live holder has it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PermissionError(
            f"{flag + ' ' if flag else ''}{output}: cannot create its folder {path.parent} "
            f"({exc.strerror or exc}); choose a writable place"
        ) from None
    for _ in range(10):  # retried when the file was replaced between open and flock
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise PermissionError(
                f"{flag + ' ' if flag else ''}{output}: cannot write in {path.parent} "
                f"({exc.strerror or exc}); choose a writable place"
            ) from None
        locked = _try_flock(fd)
        info = _read_info(fd)
        if locked is False:
            os.close(fd)
            raise _refuse(output, path, info, flag)
        if locked is None and info and not is_stale(info, os.fstat(fd).st_mtime):
            os.close(fd)
            raise _refuse(output, path, info, flag)
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if not same:  # the holder removed the file as we opened it: open the new one
            os.close(fd)
            continue
        if info:
            _log.warning(
                f"{output}: taking over the lock left by {describe_holder(info)} (no longer running)"
            )
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(_holder_info(what), sort_keys=True) + "\n").encode())
        return fd
    raise OutputLockedError(f"{output}: its lock {path} keeps changing; another command is starting there")


def _release(path: Path, fd: int) -> None:
    # Unlinked while still locked: a waiter that opened the old file sees it replaced and retries.
    with contextlib.suppress(OSError):
        path.unlink()
    os.close(fd)


@contextlib.contextmanager
def output_lock(output: str | os.PathLike, *, what: str = "", flag: str = "") -> Iterator[Path]:
    """Hold the lock of `output` for the block; OutputLockedError (one line naming the holder) when
    another live command holds it. `flag` names the option in messages ("-o"); `what` is recorded
    in the lock file. Re-entrant in one process (a command calling another library entry point)."""
    output = Path(output)
    path = lock_path(output)
    held = _held.get(path)
    if held is not None:
        held[1] += 1
        try:
            yield path
        finally:
            held[1] -= 1
        return
    fd = _acquire(output, path, what, flag)
    _held[path] = [fd, 1]
    try:
        yield path
    finally:
        del _held[path]
        _release(path, fd)


def holder_of(output: str | os.PathLike) -> dict | None:
    """The info of the live holder of `output`'s lock, or None when nobody holds it."""
    path = lock_path(output)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        locked = _try_flock(fd)
        info = _read_info(fd)
        if locked is False or (locked is None and info and not is_stale(info, os.fstat(fd).st_mtime)):
            return info
        return None
    finally:
        os.close(fd)
