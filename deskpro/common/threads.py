"""How many compute threads a deskpro process uses, from the CPUs it may really run on.

`os.cpu_count()` (torch's default) counts the machine, not what this process gets: a CPU affinity
mask (taskset, Slurm, Ray) or a cgroup CPU quota (Docker --cpus, Kubernetes limits) gives it less.
More compute threads than free cores is what hurts most: OpenMP threads spin at every barrier
waiting for a thread that is not running, so one busy neighbour on a 2-core machine slowed
training 6.7x. Hence the budget is the smallest of the affinity, the quota and the cores of the
affinity that other processes leave free at the moment of the choice (measured over a tenth of a
second), less one CPU for each worker beside the process (DataLoader workers, actors). The trainer
on a GPU chooses again at every epoch, so a neighbour that comes or goes is followed within an
epoch; on a CPU, where the count sets the rounding of float sums, it chooses once per run
(deskpro.train.loop.run_threads).

OpenMP keeps its default waiting (a short spin, then sleep): with no more threads than free cores,
spinning costs nothing, and sleeping at every barrier (OMP_WAIT_POLICY=PASSIVE, what 0.2 set) made
a training step 2.4-3.2x slower on an idle machine (benchmarks/RESULTS.md, "Threads, round 4").
A neighbour that starts after the choice meets spinning threads until the next one.

`--threads N` on the command line (DESKPRO_THREADS=N) overrides the choice.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
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
        affinity = _affinity()
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


# Over this window the cores kept busy by other processes are measured: long enough for 10 clock
# ticks per core at Linux's usual 100 Hz, short enough to go unnoticed once per command or epoch.
BUSY_WINDOW_S = 0.1
BUSY_FIELDS = slice(0, 8)  # user nice system idle iowait irq softirq steal: idle (3) and iowait (4) idle


def _cpu_ticks(stat_text: str, cpus: set[int]) -> tuple[int, int]:
    """(busy, total) clock ticks so far of the CPUs in `cpus`, from /proc/stat's per-CPU lines."""
    busy = total = 0
    for line in stat_text.splitlines():
        name, _, rest = line.partition(" ")
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
            continue
        ticks = [int(v) for v in rest.split()[BUSY_FIELDS]]
        total += sum(ticks)
        busy += sum(ticks) - ticks[3] - ticks[4]
    return busy, total


def _process_tree_ticks(root: int = 0, proc: Path = Path("/proc")) -> int:
    """CPU clock ticks so far of a process and its descendants: user + system, with those of the
    children each has reaped (so that a worker ending inside the window does not look like a
    neighbour's work)."""
    root = root or os.getpid()
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        text = _read(entry / "stat")
        if not text:
            continue
        fields = text.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        ticks[int(entry.name)] = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total


def busy_cores_beside(
    window_s: float = BUSY_WINDOW_S,
    *,
    affinity: set[int] | None = None,
    proc: str | os.PathLike = "/proc",
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Cores of this process's affinity set that other processes kept busy over `window_s` seconds.

    This process and its descendants (its workers, a local Ray) do not count. 0.0 where /proc cannot
    be read (not Linux).
    """
    proc = Path(proc)
    cpus = affinity if affinity is not None else _affinity()
    try:
        busy0, total0 = _cpu_ticks((proc / "stat").read_text(), cpus)
        own0 = _process_tree_ticks(proc=proc)
        sleep(window_s)
        busy1, total1 = _cpu_ticks((proc / "stat").read_text(), cpus)
        own1 = _process_tree_ticks(proc=proc)
    except (OSError, ValueError, IndexError):
        return 0.0
    if total1 <= total0:
        return 0.0
    # A descendant reaped between the two scans can make the own ticks jump or drop: never more than
    # all the busy ticks, never less than none.
    own = min(max(0, own1 - own0), busy1 - busy0)
    return min(float(len(cpus)), max(0.0, len(cpus) * (busy1 - busy0 - own) / (total1 - total0)))


def cores_taken(busy: float) -> int:
    """Whole cores that `busy` cores of other processes' work take: a core more than half used."""
    return max(0, math.ceil(busy - 0.5))


def free_cores(affinity: set[int] | None = None) -> int:
    """Cores of the affinity set that other processes leave free now (measured over BUSY_WINDOW_S)."""
    cpus = affinity if affinity is not None else _affinity()
    return len(cpus) - cores_taken(busy_cores_beside(affinity=cpus))


def _affinity() -> set[int]:
    if hasattr(os, "sched_getaffinity"):
        return os.sched_getaffinity(0)
    return set(range(os.cpu_count() or 1))


def choose_threads(
    workers: int = 0, *, cpus: int | None = None, free: int | None = None, requested: int | None = None
) -> int:
    """Compute threads for this process: the override, else the smaller of its CPU budget (`cpus`:
    affinity capped by the cgroup quota) and the cores of its affinity set that other processes
    leave free (`free`, measured when None), less one per worker.

    The two are apart because a quota is a share of time, not of cores: in a container limited to 4
    CPUs on a busy 64-core node, the 32 cores others use still leave the 4. With more workers than
    CPUs the process still gets one thread (the OS shares the cores).
    """
    if requested is None:
        requested = requested_threads()
    if requested is not None:
        return requested
    cpus = available_cpus() if cpus is None else cpus
    free = free_cores() if free is None else free
    return max(1, min(cpus, free) - max(0, workers))


def thread_env(threads: int) -> dict[str, str]:
    """Environment for the runtimes of this process (before they load) and of its children."""
    return {name: str(threads) for name in THREAD_ENV}


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
