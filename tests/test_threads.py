"""Thread budget: affinity, cgroup v2 / v1 quotas from faked files, workers, the override."""

from __future__ import annotations

import pytest

from deskpro.common.threads import (
    available_cpus,
    cgroup_cpu_limit,
    choose_threads,
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
    assert choose_threads(0, cpus=8) == 8
    assert choose_threads(3, cpus=8) == 5
    assert choose_threads(12, cpus=8) == 1
    assert choose_threads(3, cpus=8, requested=2) == 2
    monkeypatch.setenv("DESKPRO_THREADS", "6")
    assert requested_threads() == 6 and choose_threads(3, cpus=2) == 6
    monkeypatch.setenv("DESKPRO_THREADS", "zero")
    with pytest.raises(ValueError, match="DESKPRO_THREADS"):
        choose_threads(0, cpus=2)


def test_child_environment_names_every_runtime():
    env = thread_env(3)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "3"
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"


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
