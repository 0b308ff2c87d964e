"""One writer per output: the lock beside an output, its refusal line, and a dead holder's lock."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deskpro.common import locks
from deskpro.common.locks import OutputLockedError, holder_of, lock_path, output_lock

HOLD = """
import sys, time
from deskpro.common.locks import output_lock
with output_lock(sys.argv[1], what="test holder"):
    print("held", flush=True)
    time.sleep(60)
"""


def hold_in_child(output: Path) -> subprocess.Popen:
    """A process holding `output`'s lock (it says "held" once it has it)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(output)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout.readline().strip() == "held"
    return child


@pytest.fixture
def holder(tmp_path):
    child = hold_in_child(tmp_path / "out")
    yield child
    if child.poll() is None:
        child.kill()
    child.wait(timeout=10)


def test_a_second_writer_is_refused_in_one_line_naming_the_holder(tmp_path, holder):
    with pytest.raises(OutputLockedError) as refused:
        with output_lock(tmp_path / "out", flag="-o"):
            pass
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"-o {tmp_path / 'out'}: in use by pid {holder.pid}")
    assert f"on {socket.gethostname()}, since 20" in message  # since when: an ISO time
    assert holder_of(tmp_path / "out")["pid"] == holder.pid


def test_a_killed_holders_lock_is_taken_over(tmp_path, holder, caplog):
    holder.send_signal(signal.SIGKILL)  # no cleanup at all: the lock file stays
    holder.wait(timeout=10)
    assert lock_path(tmp_path / "out").is_file()
    assert holder_of(tmp_path / "out") is None
    with output_lock(tmp_path / "out"):
        assert holder_of(tmp_path / "out") is None or holder_of(tmp_path / "out")["pid"] == os.getpid()
    assert f"taking over the lock left by pid {holder.pid}" in caplog.text
    assert not lock_path(tmp_path / "out").exists()  # released: removed


def test_the_lock_is_reentrant_in_one_process_and_lives_beside_the_output(tmp_path):
    out = tmp_path / "shards"
    with output_lock(out) as path:
        assert path == tmp_path / ".shards.lock" and path.is_file()
        with output_lock(out):  # a library entry point calling another one
            pass
        assert path.is_file()
    assert not path.exists()


def test_without_flock_a_dead_pid_on_this_host_or_an_old_foreign_lock_is_stale():
    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    now = time.time()
    assert locks.is_stale({"pid": dead.pid, "host": host}, now, now)
    assert not locks.is_stale({"pid": os.getpid(), "host": host}, now, now)
    assert not locks.is_stale({"pid": 1, "host": "elsewhere"}, now - 60, now)
    assert locks.is_stale({"pid": 1, "host": "elsewhere"}, now - locks.STALE_AFTER_S - 1, now)
