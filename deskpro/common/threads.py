"""How many compute threads a deskpro process uses, from the CPUs it may really run on.

`os.cpu_count()` (torch's default) counts the machine, not what this process gets: a CPU affinity
mask (taskset, Slurm, Ray) or a cgroup CPU quota (Docker --cpus, Kubernetes limits) gives it less.
More compute threads than free cores is what hurts most: OpenMP threads spin at every barrier
waiting for a thread that is not running, so one busy neighbour on a 2-core machine slowed
training 6.7x. Hence the budget is the smaller of the affinity and the quota, the workers beside
the process (DataLoader workers, actors) each take one CPU out of it, and OpenMP waits passively.

`--threads N` on the command line (DESKPRO_THREADS=N) overrides the choice.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

ENV_OVERRIDE = "DESKPRO_THREADS"
# Read by the OpenMP / BLAS runtimes when they load: set before torch is imported, and inherited by
# child processes (spawned DataLoader workers, Ray actors).
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cgroup_v2_limit(root: Path, relative: str) -> float | None:
    """The tightest cpu.max quota/period on the path from the process's cgroup up to the root."""
    limits = []
    node = (root / relative.lstrip("/")).resolve()
    root = root.resolve()
    while True:
        text = _read(node / "cpu.max")
        if text:
            quota, _, period = text.partition(" ")
            if quota != "max" and period:
                limits.append(int(quota) / int(period))
        if node == root or root not in node.parents:
            break
        node = node.parent
    return min(limits) if limits else None


def _cgroup_v1_limit(root: Path, relative: str) -> float | None:
    for controller in ("cpu,cpuacct", "cpu", "cpuacct,cpu"):
        base = root / controller
        if not base.is_dir():
            continue
        for node in (base / relative.lstrip("/"), base):  # inside a container the root is the group
            quota, period = _read(node / "cpu.cfs_quota_us"), _read(node / "cpu.cfs_period_us")
            if quota and period and int(quota) > 0 and int(period) > 0:
                return int(quota) / int(period)
    return None


def cgroup_cpu_limit(
    cgroup_root: str | os.PathLike = "/sys/fs/cgroup", proc_cgroup: str | os.PathLike = "/proc/self/cgroup"
) -> float | None:
    """CPUs allowed by the process's cgroup quota (v2 cpu.max or v1 cfs quota); None: no quota."""
    text = _read(Path(proc_cgroup))
    if not text:
        return None
    root = Path(cgroup_root)
    limits = []
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, relative = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            limit = _cgroup_v2_limit(root, relative)
        elif "cpu" in controllers.split(","):
            limit = _cgroup_v1_limit(root, relative)
        else:
            continue
        if limit is not None:
            limits.append(limit)
    return min(limits) if limits else None


def available_cpus(
    *,
    affinity: set[int] | None = None,
    cgroup_root: str | os.PathLike = "/sys/fs/cgroup",
    proc_cgroup: str | os.PathLike = "/proc/self/cgroup",
) -> int:
    """CPUs this process may use: its affinity mask, capped by its cgroup quota (rounded up), >= 1."""
    if affinity is None:
        affinity = (
            os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
        )
    cpus = max(1, len(affinity))
    quota = cgroup_cpu_limit(cgroup_root, proc_cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota - 1e-9)))
    return cpus


def requested_threads(environ=None) -> int | None:
    """The override from DESKPRO_THREADS (set by `--threads`); None when unset; ValueError if bad."""
    value = (os.environ if environ is None else environ).get(ENV_OVERRIDE, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{ENV_OVERRIDE}={value!r}: expected a whole number of threads >= 1")
    return int(value)


def choose_threads(workers: int = 0, *, cpus: int | None = None, requested: int | None = None) -> int:
    """Compute threads for this process: the override, else the CPUs left after one per worker.

    With more workers than CPUs the process still gets one thread (the OS shares the cores).
    """
    if requested is None:
        requested = requested_threads()
    if requested is not None:
        return requested
    cpus = available_cpus() if cpus is None else cpus
    return max(1, cpus - max(0, workers))


def thread_env(threads: int) -> dict[str, str]:
    """Environment for the runtimes of this process (before they load) and of its children."""
    env = {name: str(threads) for name in THREAD_ENV}
    env["OMP_WAIT_POLICY"] = "PASSIVE"  # a waiting OpenMP thread sleeps instead of spinning
    return env


def set_thread_env(threads: int, *, overwrite: bool = False) -> None:
    """Put `thread_env` into os.environ; a value the user set stays unless `overwrite`."""
    for name, value in thread_env(threads).items():
        if overwrite or name not in os.environ:
            os.environ[name] = value


def apply_threads(workers: int = 0, *, requested: int | None = None) -> int:
    """Choose and apply the thread count in this process (torch, OpenCV, children's env); returns it.

    Interop threads are set once (torch refuses a second time after parallel work has started).
    """
    import torch

    threads = choose_threads(workers, requested=requested)
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already set, or inter-op work already ran
        pass
    set_thread_env(threads, overwrite=True)
    _set_opencv_threads(threads)
    return threads


def worker_init(worker_id: int = 0) -> None:
    """DataLoader `worker_init_fn`: one compute thread per worker process (torch sets its own)."""
    import torch

    torch.set_num_threads(1)
    set_thread_env(1, overwrite=True)
    _set_opencv_threads(1)


def _set_opencv_threads(threads: int) -> None:
    try:
        import cv2
    except ImportError:
        return
    cv2.setNumThreads(threads)
