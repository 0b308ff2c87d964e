"""Stress loop for the Ray actor-pool start: preprocess runs, one after another, on one reused local Ray.

Issue 25: starting every actor that fits (`initial_size` of Ray Data's actor pool) hung `deskpro
preprocess` on a reused local Ray in two suites. This runs the hung test's work (parse, detect and
restore of 18 tiny synthetic images, oracle backends, part 4, batch 2, `--actors 2`, a local Ray of
2 CPUs started once and reused by every stage) over and over, with a pool start of

- `one`: one actor at the start (deskpro from c19478c to issue 25);
- `fit`: every actor that fits in `ray.available_resources()` when the stage starts
  (`Layout.initial`: db4fc66, 1d81895, and deskpro since issue 25).

`--code DIR` runs another checkout's deskpro (e.g. `git archive c19478c | tar -x -C DIR`, whose
restore read detect's parts with Ray Data's Parquet reader); `--settle` waits before each stage
until the previous stage's actors have let go of every CPU, so that `fit` starts every actor.

Each start runs in its own child process (its own Ray), bounded in rounds and in wall time; a stage
that takes longer than --hang-seconds is a hang: the child prints what Ray and Ray Data hold (actors
and their states, free resources, every operator's queues, tasks and actor pool) and the parent
stops it. Everything stops by itself within --max-seconds plus a few seconds of Ray's shutdown.

    python benchmarks/ray_pool_stress.py --start fit one --rounds 6 --max-seconds 600 --json stress.json
    python benchmarks/ray_pool_stress.py --start fit --settle --rounds 2 --max-seconds 300 --code OLD
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ORACLE = {
    "parse": {"backend": "oracle"},
    "detect": {
        "backend": "oracle",
        "min_score": 0.0,
        "min_size": 0.0,
        "max_center_y": 1.0,
        "face_lr_size": 32,
    },
    "restore": {"backend": "none", "face_hr_size": 64},
}
STAGES = ("parse", "detect", "restore")
SYNTH = {"identities": 6, "images_per_camera": 1, "image_size": (96, 32), "seed": 3}  # the tests' set


def make_set(base: Path) -> Path:
    from deskpro.manifests import scan, write_manifest
    from deskpro.synthetic import generator as synthetic

    root = base / "synth"
    synthetic.generate(root, progress=False, **SYNTH)
    manifest = base / "synth.parquet"
    write_manifest(scan("synthetic", root), manifest)
    return manifest


# ---- the child: one local Ray, rounds of three stages


def use_start(start: str) -> None:
    """Make deskpro's Ray executor start its pools as `start` says, whatever the checkout's default."""
    import ray.data

    from deskpro.pipeline import ray_executor

    def pool(lay):  # `fit`: Layout.initial, every actor that fits in the free resources now
        initial = lay.initial if start == "fit" else 1
        return ray.data.ActorPoolStrategy(min_size=1, max_size=lay.actors, initial_size=initial)

    ray_executor.actor_pool = pool


def diagnose() -> dict:
    """What the cluster and every live Ray Data executor in this process hold, as text."""
    import gc

    import ray
    from ray._private import state
    from ray.data._internal.execution.streaming_executor import StreamingExecutor
    from ray.data._internal.execution.streaming_executor_state import format_op_state_summary

    report: dict = {"available": ray.available_resources(), "total": ray.cluster_resources()}
    report["actors"] = [
        f"{a['ActorClassName']} {a['State']} pid={a['Pid']}"
        for a in state.actors().values()
        if a["State"] != "DEAD"
    ]
    executors = []
    for ex in [o for o in gc.get_objects() if isinstance(o, StreamingExecutor)]:
        if ex._topology is None:
            continue
        rm = ex._resource_manager
        ops = []
        for op, op_state in ex._topology.items():
            line = f"{op.name}: {format_op_state_summary(op_state, rm, verbose=True)}"
            line += f"; completed={op.has_completed()} inputs_done={op._inputs_complete}"
            pool = getattr(op, "_actor_pool", None)
            if pool is not None:
                line += (
                    f"; pool running={pool.num_running_actors()} pending={pool.num_pending_actors()} "
                    f"in_flight={pool.num_tasks_in_flight()} can_schedule={pool.can_schedule_task()}"
                )
            line += f"; budget={rm.get_budget(op)} usage={rm.get_op_usage(op)}"
            ops.append(line)
        executors.append(
            {
                "shutdown": ex._shutdown,
                "usage": str(rm.get_global_usage()),
                "limits": str(rm.get_global_limits()),
                "ops": ops,
            }
        )
    report["executors"] = executors
    report["threads"] = {
        str(tid): "".join(traceback.format_stack(frame)[-6:]) for tid, frame in sys._current_frames().items()
    }
    return report


def emit(record: dict) -> None:
    print(json.dumps(record, default=str), flush=True)


def child(args: argparse.Namespace) -> None:
    from deskpro.pipeline.options import StageRunOptions
    from deskpro.pipeline.ray_executor import ray_session
    from deskpro.pipeline.runner import run_stage

    use_start(args.start)
    opts = StageRunOptions(part_size=4, batch_size=2, executor="ray", progress=False, num_actors=args.actors)
    current = {"stage": None, "since": 0.0}

    def watchdog() -> None:
        while True:
            time.sleep(1.0)
            if current["stage"] and time.monotonic() - current["since"] > args.hang_seconds:
                emit({"hang": current["stage"], "seconds": args.hang_seconds, "state": diagnose()})
                os._exit(3)

    threading.Thread(target=watchdog, daemon=True).start()
    end = time.monotonic() + args.max_seconds
    with ray_session(num_cpus=args.cpus):  # started once, reused by every stage (the test's fixture)
        import ray

        round_seconds, work = 0.0, args.base
        for n in range(args.rounds):
            if time.monotonic() + round_seconds > end:  # the next round would not end in time
                break
            again = n > 0 and args.repeat == "restore"  # restore alone, over the first round's detect
            work = work if again else Path(tempfile.mkdtemp(prefix=f"round{n}-", dir=args.base))
            start = time.monotonic()
            for stage in ("restore",) if again else STAGES:
                if args.settle:  # the previous stage's actors gone: every CPU free, as on a quiet cluster
                    settle_end = time.monotonic() + 60
                    while (
                        ray.available_resources().get("CPU", 0.0) < args.cpus
                        and time.monotonic() < settle_end
                    ):
                        time.sleep(0.2)
                current.update(stage=f"round {n} {stage}", since=time.monotonic())
                free = ray.available_resources().get("CPU", 0.0)
                run = dataclasses.replace(opts, overwrite=again)
                summary = run_stage(stage, args.manifest, work, ORACLE[stage], run, flag_prefix=f"{stage}-")
                emit(
                    {
                        "round": n,
                        "stage": stage,
                        "seconds": round(summary.seconds, 2),
                        "free_cpus_at_start": free,
                    }
                )
            current["stage"] = None
            round_seconds = time.monotonic() - start


# ---- the parent: one child per pool start, bounded


def run_child(args: argparse.Namespace, start: str, manifest: Path, base: Path, seconds: float) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--start",
        start,
        "--rounds",
        str(args.rounds),
        "--max-seconds",
        str(seconds),
        "--hang-seconds",
        str(args.hang_seconds),
        "--actors",
        str(args.actors),
        "--cpus",
        str(args.cpus),
        "--repeat",
        args.repeat,
        *(["--settle"] if args.settle else []),
        "--manifest",
        str(manifest),
        "--base",
        str(base),
    ]
    env = {**os.environ, "PYTHONPATH": str(args.code.resolve())}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
    result: dict = {"code": str(args.code), "start": start, "stages": [], "hang": None, "exit": None}
    timer = threading.Timer(seconds + args.hang_seconds + 60, os.killpg, (proc.pid, signal.SIGKILL))
    timer.start()
    t0 = time.monotonic()
    for line in proc.stdout:
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        if "hang" in record:
            result["hang"] = record
            print(f"[{start}] HANG in {record['hang']} (over {record['seconds']} s)", flush=True)
        else:
            result["stages"].append(record)
            print(
                f"[{start}] round {record['round']} {record['stage']}: {record['seconds']} s "
                f"(free CPUs at start {record['free_cpus_at_start']:g})",
                flush=True,
            )
    proc.wait()
    timer.cancel()
    with_ray_gone(proc.pid)
    result["exit"] = proc.returncode
    result["wall_seconds"] = round(time.monotonic() - t0, 1)
    return result


def with_ray_gone(pgid: int) -> None:
    """The child's local Ray (raylet, GCS, workers) shares its session: stop what is left of it."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def summarise(result: dict) -> str:
    rows = result["stages"]
    rounds = len([s for s in rows if s["stage"] == "restore"])
    slow = max((s["seconds"] for s in rows), default=0.0)
    verdict = f"HANG in {result['hang']['hang']}" if result["hang"] else "no hang"
    cells = [
        result["code"],
        result["start"],
        rounds,
        len(rows),
        f"{slow:.1f}",
        result["wall_seconds"],
        verdict,
    ]
    return "| " + " | ".join(map(str, cells)) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--start", nargs="+", default=["fit", "one"], choices=["fit", "one"])
    ap.add_argument("--rounds", type=int, default=6, help="preprocess runs per start (3 stages each)")
    ap.add_argument("--max-seconds", type=float, default=600.0, help="wall time for all starts together")
    ap.add_argument("--hang-seconds", type=float, default=150.0, help="a stage this long is a hang")
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=2, help="the local Ray's CPUs")
    ap.add_argument(
        "--settle",
        action="store_true",
        help="before each stage, wait (up to 60 s) until the previous stage's actors let go of every CPU",
    )
    ap.add_argument(
        "--repeat",
        choices=["all", "restore"],
        default="all",
        help="what rounds after the first run: all three stages in a new work dir, or restore alone again",
    )
    ap.add_argument(
        "--code",
        type=Path,
        default=Path(__file__).resolve().parents[1],
        help="the checkout whose deskpro runs (default: this one), e.g. an older commit's `git archive`",
    )
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--manifest", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--base", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if min(args.rounds, args.actors, args.cpus) < 1 or args.max_seconds <= 0 or args.hang_seconds <= 0:
        ap.error("--rounds, --actors, --cpus must be >= 1; --max-seconds, --hang-seconds > 0")
    results = []
    with tempfile.TemporaryDirectory(prefix="ray-pool-stress-") as tmp:
        manifest = make_set(Path(tmp))
        share = args.max_seconds / len(args.start)
        for start in args.start:
            results.append(run_child(args, start, manifest, Path(tmp), share))
    print(
        "\n| deskpro code | pool start | restores done | stages done | slowest stage s | wall s | verdict |"
    )
    print("|---|---|---|---|---|---|---|")
    for result in results:
        print(summarise(result))
    for result in results:
        if result["hang"]:
            print(f"\n[{result['start']}] state at the hang:")
            print(json.dumps({k: v for k, v in result["hang"]["state"].items() if k != "threads"}, indent=1))
    if args.json:
        args.json.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=1)
        )


if __name__ == "__main__":
    main()
