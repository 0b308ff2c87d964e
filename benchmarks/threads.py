"""Benchmark: a short training / evaluation step loop alone and beside one busy process.

Each configuration runs in a fresh process (the OpenMP runtime reads its environment when torch
loads):
- torch-default: what `python train.py` gets: torch's own thread count, OpenMP's default waiting.
- deskpro: what a `deskpro` command sets up: OMP_WAIT_POLICY=PASSIVE before torch loads, then
  `apply_threads(workers)` (the CPUs this process may use, less the workers; no workers here).
- omp1: OMP_NUM_THREADS=1, the usual manual fix, for reference.
The busy neighbour is one process spinning in a Python loop, started before and stopped after the
measurement. The steps: OSNet x1.0 (the DeSKPro backbone) forward + backward + SGD on a
batch of 8 at 128 x 64 ("train"), and a no-grad forward of 32 images plus ranking ("eval"). Random
weights: this measures time, not accuracy.

    python benchmarks/threads.py [--steps 6] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np

CONFIGS = ("torch-default", "deskpro", "omp1")


def _env(config: str) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "DESKPRO_THREADS")
    }
    if config == "deskpro":
        env["OMP_WAIT_POLICY"] = "PASSIVE"  # what deskpro's command group sets before torch loads
    elif config == "omp1":
        env["OMP_NUM_THREADS"] = "1"
    return env


def child(config: str, kind: str, steps: int) -> dict:
    import torch

    if config == "deskpro":
        from deskpro.common.threads import apply_threads

        apply_threads(0)
    torch.manual_seed(0)
    model = _model()
    images = torch.randn(8 if kind == "train" else 32, 3, 128, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    times = []
    for step in range(steps + 1):  # the first step warms up
        start = time.perf_counter()
        if kind == "train":
            opt.zero_grad()
            loss = model(images).square().mean()
            loss.backward()
            opt.step()
        else:
            with torch.no_grad():
                feats = torch.nn.functional.normalize(model(images).flatten(1), dim=1)
                from deskpro.train.metrics import rank

                dist = (1 - feats @ feats.T).numpy()
                pids = np.arange(len(dist)) % 8
                rank(dist, pids, pids, np.zeros(len(dist)), np.ones(len(dist)))
        if step:
            times.append(time.perf_counter() - start)
    return {"threads": torch.get_num_threads(), "step_s": float(np.median(times))}


def _model():
    from deskpro.model.osnet import osnet_x1_0

    return osnet_x1_0()


def _spinner() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


@click.command()
@click.option("--steps", type=click.IntRange(min=1), default=6, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True)
@click.option(
    "--kind", "kinds", multiple=True, type=click.Choice(["train", "eval"]), default=("train", "eval")
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--child", "child_args", nargs=3, hidden=True)
def main(steps, repeats, kinds, json_path, child_args):
    """Step time per configuration, alone and with a busy neighbour, interleaved and repeated."""
    if child_args:
        print(json.dumps(child(child_args[0], child_args[1], int(child_args[2]))))
        return
    runs: dict[tuple, list[float]] = {}
    threads: dict[str, int] = {}
    for _ in range(repeats):
        for kind in kinds:
            for busy in (False, True):
                for config in CONFIGS:
                    spinner = _spinner() if busy else None
                    try:
                        out = subprocess.run(
                            [sys.executable, __file__, "--child", config, kind, str(steps)],
                            capture_output=True,
                            text=True,
                            env=_env(config),
                        )
                    finally:
                        if spinner is not None:
                            spinner.kill()
                            spinner.wait()
                    if out.returncode:
                        sys.exit(f"{config} {kind} failed: {out.stderr.strip().splitlines()[-1:]}")
                    result = json.loads(out.stdout.strip().splitlines()[-1])
                    threads[config] = result["threads"]
                    runs.setdefault((kind, config, busy), []).append(result["step_s"])
    rows = []
    for kind in kinds:
        for config in CONFIGS:
            alone, busy = runs[(kind, config, False)], runs[(kind, config, True)]
            slow = [b / a for a, b in zip(alone, busy)]
            vs_default = [b / d for b, d in zip(runs[(kind, "torch-default", True)], busy)]
            rows.append(
                {
                    "kind": kind,
                    "config": config,
                    "threads": threads[config],
                    "alone_s_median": float(np.median(alone)),
                    "busy_s_median": float(np.median(busy)),
                    "slowdown_min": min(slow),
                    "slowdown_median": float(np.median(slow)),
                    "default_over_this_busy_median": float(np.median(vs_default)),
                }
            )
    head = f"{'kind':<6} {'config':<14} {'thr':>3} {'alone s':>8} {'busy s':>8} "
    head += f"{'slow min':>9} {'slow med':>9} {'x default':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['kind']:<6} {r['config']:<14} {r['threads']:>3} "
            f"{r['alone_s_median']:8.3f} {r['busy_s_median']:8.3f} "
            f"{r['slowdown_min']:9.2f} {r['slowdown_median']:9.2f} {r['default_over_this_busy_median']:9.2f}"
        )
    print(
        "slow = step time beside the busy process / alone; x default = torch-default's busy time / this one's"
    )
    print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} (other helpers running)")
    if json_path:
        json_path.write_text(
            json.dumps({"rows": rows, "runs": {str(k): v for k, v in runs.items()}}, indent=2)
        )


if __name__ == "__main__":
    main()
