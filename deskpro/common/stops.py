"""Clean stops on SIGINT and SIGTERM: a flag that is never lost, and an exception where it is safe.

Python runs a signal's handler between two bytecodes, wherever the main thread is. An exception
raised there can be swallowed: in a ``register_at_fork`` callback (logging's, each time a
DataLoader forks its workers), in a ``__del__``, in a callback Python calls with "Exception
ignored". That is how a Ctrl-C some tens of milliseconds after an epoch ended used to be lost: it
arrived while the next epoch's loader forked. `StopSignals` therefore records every signal in a
flag and also raises `Interrupted`; loops call `check()` at safe points (after each batch, after
starting a loader), so a swallowed exception is raised again there. While the process forks, the
handler only sets the flag (Python would print the swallowed exception's traceback). Inside
`deferred()` (or between `hold()` and `release()`) a first signal only sets the flag (a training
step is finished, and its state kept); a second one raises at once.

SIGTERM is handled as SIGINT, so ``kill`` unwinds a command as Ctrl-C does: ``finally`` blocks
run, temporary files are removed, locks released.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_forking = [0]  # > 0 while this process forks: its at-fork callbacks would swallow an exception


def _fork_begins() -> None:
    _forking[0] += 1


def _fork_ends() -> None:
    _forking[0] = max(0, _forking[0] - 1)


def _fork_child() -> None:
    _forking[0] = 0


# Registered last, so its "before" runs first and its "after" last around the other callbacks.
os.register_at_fork(before=_fork_begins, after_in_parent=_fork_ends, after_in_child=_fork_child)


class Interrupted(KeyboardInterrupt):
    """A stop asked for by SIGINT or SIGTERM; the message says what was kept (one line)."""

    def __init__(self, message: str = "", signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    def __str__(self) -> str:
        return self.args[0] if self.args and self.args[0] else f"stopped by {self.signal_name}"


class StopSignals:
    """While active (a context manager), SIGINT and SIGTERM set `received` and raise `Interrupted`
    (only the first signal waits inside `deferred()`). Does nothing outside the main thread, where
    Python cannot install handlers. Nested instances each restore what they replaced."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._depth = 0  # > 0 inside deferred()
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        first = self.received is None
        self.received = signum
        if _forking[0]:
            return  # raised by the next check(): an exception here would be swallowed, with a traceback
        if self._depth == 0 or not first:
            raise Interrupted(signum=signum)

    def check(self) -> None:
        """Raise `Interrupted` when a signal came (also one whose exception was swallowed)."""
        if self.received is not None:
            raise Interrupted(signum=self.received)

    def hold(self) -> None:
        """From here to `release()`, a first signal only sets the flag (e.g. one training step)."""
        self._depth += 1

    def release(self) -> None:
        """End of a `hold()`: raise `Interrupted` when a signal came meanwhile."""
        self._depth = max(0, self._depth - 1)
        self.check()

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """`hold()` for a block; `release()` when it ends without an exception."""
        self.hold()
        try:
            yield
        except BaseException:
            self._depth = max(0, self._depth - 1)
            raise
        self.release()


@contextlib.contextmanager
def stop_signals() -> Iterator[StopSignals]:
    """`StopSignals` as a context manager function (``with stop_signals() as stops: ...``)."""
    with StopSignals() as stops:
        yield stops
