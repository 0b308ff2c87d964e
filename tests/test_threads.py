"""Thread budget: affinity, cgroup v2 / v1 quotas from faked files, busy neighbours, workers, the
override."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deskpro.common.threads import (
    available_cpus,
    busy_cores_beside,
    cgroup_cpu_limit,
    choose_threads,
    cores_taken,
    requested_threads,
    thread_env,
)


def _v2(tmp_path, cpu_max_by_level: dict[str, str], relative="/a/b"):
    root = tmp_path / "cgroup"
    for level, text in cpu_max_by_level.items():
        node = root / level.lstrip("/")
        node.mkdir(parents=True, exist_ok=True)
        (node / "cpu.max").write_text(text + "\n")
    (root / relative.lstrip("/")).mkdir(parents=True, exist_ok=True)
    proc = tmp_path / "proc-cgroup"
    proc.write_text(f"0::{relative}\n")
    return root, proc


def test_cgroup_v2_quota_and_the_tightest_ancestor(tmp_path):
    root, proc = _v2(tmp_path, {"/a/b": "150000 100000", "/a": "max 100000"})
    assert cgroup_cpu_limit(root, proc) == pytest.approx(1.5)
    assert available_cpus(affinity=set(range(8)), cgroup_root=root, proc_cgroup=proc) == 2  # ceil(1.5)
    root, proc = _v2(tmp_path / "x", {"/a/b": "max 100000", "/a": "300000 100000"})
    assert available_cpus(affinity=set(range(8)), cgroup_root=root, proc_cgroup=proc) == 3


def test_no_quota_means_the_affinity_mask(tmp_path):
    root, proc = _v2(tmp_path, {"/a/b": "max 100000"})
    assert cgroup_cpu_limit(root, proc) is None
    assert available_cpus(affinity={0, 3, 5}, cgroup_root=root, proc_cgroup=proc) == 3
    # The affinity is smaller than the quota: the affinity wins.
    root, proc = _v2(tmp_path / "y", {"/a/b": "800000 100000"})
    assert available_cpus(affinity={1}, cgroup_root=root, proc_cgroup=proc) == 1
    # Missing files (no cgroup fs at all): the affinity alone.
    assert available_cpus(affinity={0, 1}, cgroup_root=tmp_path / "none", proc_cgroup=tmp_path / "none") == 2


def test_cgroup_v1_cfs_quota(tmp_path):
    root = tmp_path / "cgroup"
    node = root / "cpu,cpuacct" / "docker" / "abc"
    node.mkdir(parents=True)
    (node / "cpu.cfs_quota_us").write_text("250000\n")
    (node / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "proc-cgroup"
    proc.write_text("4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n")
    assert cgroup_cpu_limit(root, proc) == pytest.approx(2.5)
    assert available_cpus(affinity=set(range(16)), cgroup_root=root, proc_cgroup=proc) == 3
    (node / "cpu.cfs_quota_us").write_text("-1\n")  # no quota
    assert available_cpus(affinity=set(range(16)), cgroup_root=root, proc_cgroup=proc) == 16


def test_a_tiny_quota_still_leaves_one_cpu(tmp_path):
    root, proc = _v2(tmp_path, {"/a/b": "10000 100000"})
    assert available_cpus(affinity=set(range(4)), cgroup_root=root, proc_cgroup=proc) == 1


def test_workers_take_one_cpu_each_and_the_override_wins(monkeypatch):
    monkeypatch.delenv("DESKPRO_THREADS", raising=False)
    assert choose_threads(0, cpus=8, free=8) == 8
    assert choose_threads(3, cpus=8, free=8) == 5
    assert choose_threads(12, cpus=8, free=8) == 1
    assert choose_threads(3, cpus=8, free=8, requested=2) == 2
    monkeypatch.setenv("DESKPRO_THREADS", "6")
    assert requested_threads() == 6 and choose_threads(3, cpus=2, free=0) == 6
    monkeypatch.setenv("DESKPRO_THREADS", "zero")
    with pytest.raises(ValueError, match="DESKPRO_THREADS"):
        choose_threads(0, cpus=2)


def test_cores_a_neighbour_keeps_busy_are_left_to_it(monkeypatch):
    monkeypatch.delenv("DESKPRO_THREADS", raising=False)
    assert [cores_taken(b) for b in (0.0, 0.4, 0.5, 0.6, 1.0, 1.5, 1.51)] == [0, 0, 0, 1, 1, 1, 2]
    assert choose_threads(0, cpus=2, free=1) == 1  # the 2-core VM beside one busy process
    assert choose_threads(2, cpus=8, free=5) == 3
    assert choose_threads(0, cpus=2, free=0) == 1  # every core busy: still one thread
    # A quota is a share of time: 4 CPUs of a 64-core node whose other tenants use 32 still run 4.
    assert choose_threads(0, cpus=4, free=32) == 4


def _fake_proc(root, cpus: dict[int, tuple[int, int]], procs: dict[int, tuple[int, int]]) -> None:
    """/proc/stat with {cpu: (busy, idle) ticks} and /proc/PID/stat with {pid: (ppid, utime)}."""
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    lines += [f"cpu{c} {busy} 0 0 {idle} 0 0 0 0 0 0" for c, (busy, idle) in sorted(cpus.items())]
    (root / "stat").write_text("\n".join(lines) + "\n")
    for pid, (ppid, utime) in procs.items():
        (root / str(pid)).mkdir(exist_ok=True)
        fields = ["S", str(ppid)] + ["0"] * 9 + [str(utime), "0", "0", "0"] + ["0"] * 20
        (root / str(pid) / "stat").write_text(f"{pid} (a (name) with spaces) " + " ".join(fields) + "\n")


def test_busy_cores_count_other_processes_not_this_one_or_its_children(tmp_path, monkeypatch):
    me, child, other = os.getpid(), 4_000_001, 4_000_002
    _fake_proc(tmp_path, {0: (100, 100), 1: (100, 100)}, {me: (1, 50), child: (me, 50), other: (1, 50)})

    def window(seconds):  # over the window: both cores busy, this process and its child one between them
        _fake_proc(tmp_path, {0: (110, 100), 1: (110, 100)}, {me: (1, 55), child: (me, 55), other: (1, 60)})

    assert busy_cores_beside(affinity={0, 1}, proc=tmp_path, sleep=window) == pytest.approx(1.0)
    _fake_proc(tmp_path, {0: (100, 100), 1: (100, 100)}, {me: (1, 50), child: (me, 50), other: (1, 50)})
    assert busy_cores_beside(affinity={0, 1}, proc=tmp_path, sleep=lambda s: None) == 0.0  # nothing moved

    def reaped(seconds):  # the child ran 5 more ticks, ended and was reaped into this one's cutime
        shutil.rmtree(tmp_path / str(child))
        _fake_proc(tmp_path, {0: (110, 100), 1: (110, 100)}, {me: (1, 50 + 5 + 55), other: (1, 60)})

    _fake_proc(tmp_path, {0: (100, 100), 1: (100, 100)}, {me: (1, 50), child: (me, 50), other: (1, 50)})
    assert busy_cores_beside(affinity={0, 1}, proc=tmp_path, sleep=reaped) == pytest.approx(1.0)
    assert busy_cores_beside(proc=tmp_path / "absent") == 0.0  # no /proc: nothing known, nothing taken


def test_a_real_busy_neighbour_is_seen(tmp_path):
    # A spinning process that is not this one's descendant (the shell that started it has exited).
    spin = f"{shlex.quote(sys.executable)} -c 'while True: pass' >/dev/null 2>&1 & echo $!"
    pid = int(subprocess.run(["sh", "-c", spin], capture_output=True, text=True, check=True).stdout)
    try:
        time.sleep(0.3)
        parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        if parent == os.getpid():  # this process is a subreaper (or PID 1): the spinner is its own
            pytest.skip("the spinner was re-parented to this process")
        assert busy_cores_beside(0.5) >= 0.5
    finally:
        os.kill(pid, 9)


def test_child_environment_names_every_runtime_and_leaves_openmp_waiting_as_it_is():
    env = thread_env(3)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "3"
    assert "OMP_WAIT_POLICY" not in env  # passive waits cost a training step 2.4-3.2x on idle cores


def test_cli_threads_option_reaches_the_environment(monkeypatch):
    import os

    from click.testing import CliRunner

    from deskpro.cli import main

    for name in ("DESKPRO_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "environ", dict(os.environ))  # keep the test process's env as it was
    result = CliRunner().invoke(main, ["--threads", "3", "weights", "--help"])
    assert result.exit_code == 0, result.output
    assert os.environ["DESKPRO_THREADS"] == "3" and os.environ["OMP_NUM_THREADS"] == "3"
    result = CliRunner().invoke(main, ["--threads", "0", "weights", "--help"])
    assert result.exit_code == 2 and "--threads" in result.output
