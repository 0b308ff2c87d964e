"""pack --overwrite writes the new set beside the old one and swaps it in only once complete; two
packs into one folder: the second is refused, naming the first."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_locks import hold_in_child
from test_pack import pack_small, work  # noqa: F401 (the work directory fixture)

import deskpro.shards.writer as writer_module
from deskpro.common.locks import OutputLockedError
from deskpro.shards import verify

REPO = Path(__file__).resolve().parents[1]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_an_overwrite_that_fails_part_way_leaves_the_old_set_intact(work, tmp_path, monkeypatch, failure):  # noqa: F811
    out = tmp_path / "shards"
    pack_small(work, out)
    before = _snapshot(out)
    real_add, added = writer_module.ShardWriter.add, []

    def add_then_fail(self, **sample):
        added.append(1)
        if len(added) == 4:  # past the first shard of 4 rows: a shard file of the new set exists
            raise failure
        return real_add(self, **sample)

    monkeypatch.setattr(writer_module.ShardWriter, "add", add_then_fail)
    with pytest.raises(type(failure)):
        pack_small(work, out, overwrite=True, shard_size=2)
    assert _snapshot(out) == before and verify(out).ok
    assert _leftovers(out) == []  # the staging folder is gone, the lock released


def test_an_overwrite_swaps_in_the_new_set_and_keeps_foreign_files(work, tmp_path):  # noqa: F811
    out = tmp_path / "shards"
    pack_small(work, out)
    assert pack_small(work, out, overwrite=True, shard_size=6).shards == 1
    assert sorted(p.name for p in out.iterdir()) == ["catalog.json", "index.parquet", "shard-00000.h5"]
    (out / "notes.txt").write_text("mine")
    assert pack_small(work, out, overwrite=True, force=True, shard_size=2).shards == 3
    assert (out / "notes.txt").read_text() == "mine" and verify(out).ok
    assert _leftovers(out) == []


def test_a_set_stranded_by_a_kill_mid_swap_is_put_back_and_stale_staging_removed(work, tmp_path):  # noqa: F811
    out = tmp_path / "shards"
    pack_small(work, out)
    before = _snapshot(out)
    os.rename(out, tmp_path / ".shards.old-0123456789ab")  # killed between the two renames
    (tmp_path / ".shards.pack-ba9876543210").mkdir()  # a killed pack's staging folder
    with pytest.raises(Exception, match="already holds complete shards"):
        pack_small(work, out)  # the old set is back: a complete set needs --overwrite
    assert _snapshot(out) == before and _leftovers(out) == []


def test_a_second_pack_into_one_folder_is_refused_naming_the_first(work, tmp_path):  # noqa: F811
    holder = hold_in_child(tmp_path / "shards")
    try:
        with pytest.raises(
            OutputLockedError, match=rf"-o {tmp_path / 'shards'}: in use by pid {holder.pid} on "
        ):
            pack_small(work, tmp_path / "shards")
        assert not (tmp_path / "shards").exists()
    finally:
        holder.kill()
        holder.wait()
    assert pack_small(work, tmp_path / "shards").rows > 0  # the dead holder's lock is taken over


FULL_DISK = """
import sys
from test_pack import pack_small
from deskpro.shards import verify
work, out = sys.argv[1:3]
try:
    pack_small(__import__("pathlib").Path(work), __import__("pathlib").Path(out), overwrite=True, codec="raw")
except OSError as exc:
    print("refused:", exc)
print("old set ok:", verify(out).ok)
"""


def test_a_full_disk_overwrite_keeps_the_old_set(work, tmp_path):  # noqa: F811
    """A real full disk: a small tmpfs in a user namespace (skipped where unshare is not allowed)."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    disk = tmp_path / "disk"
    disk.mkdir()
    out = disk / "shards"
    shutil.copytree(pack_small(work, tmp_path / "first").out_dir, out)  # the old, complete set
    size_kb = sum(p.stat().st_size for p in out.iterdir()) // 1024
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    script = (
        f"cp -a {out} {tmp_path}/old && mount -t tmpfs -o size={size_kb * 3 // 2}k tmpfs {disk}"
        f" && cp -a {tmp_path}/old {out}"
        f" && {sys.executable} -X faulthandler -c '{textwrap.dedent(FULL_DISK)}' {work} {out}; echo rc=$?"
    )
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=env)
    if "mount" in done.stderr and "rc=" not in done.stdout:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    assert "rc=0" in done.stdout, done.stdout + done.stderr
    assert "refused:" in done.stdout and "No space left" in done.stdout
    assert "old set ok: True" in done.stdout
