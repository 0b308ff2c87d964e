"""Benchmark: a short training / evaluation step loop alone and beside one busy process.

Each configuration runs in a fresh process (the OpenMP runtime reads its environment when torch
loads):
- torch-default: what `python train.py` gets: torch's own thread count, OpenMP's default waiting.
- deskpro: what a `deskpro` command does: `apply_threads(workers)`, the CPUs this process may use,
  less the cores other processes keep busy at that moment, less the workers (none here); OpenMP's
  default waiting.
- passive: what deskpro 0.2 and round 3 did: OMP_WAIT_POLICY=PASSIVE before torch loads, and the CPUs
  this process may use whatever else runs.
- omp1: OMP_NUM_THREADS=1, the usual manual fix, for reference.
- spinN (with --spin N): OpenMP's default waiting, but a waiting thread spins N times before it sleeps
  (GOMP_SPINCOUNT; libgomp's default is 300,000, PASSIVE is 0), then `apply_threads` as deskpro.
The busy neighbour is one process spinning in a Python loop, started before and stopped after the
measurement. The steps: OSNet (x1.0, the DeSKPro backbone, or --backbone) forward + backward + SGD
on a batch of 8 at 128 x 64 (or --batch, --size; "train"), and a no-grad forward of 32 images plus
ranking ("eval"). Random weights: this measures time, not accuracy.

    python benchmarks/threads.py [--steps 6] [--repeats 3] [--json out.json]
    python benchmarks/threads.py --kind train --backbone osnet_x0_25 --batch 32 --size 64x32 --spin 10000
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

CONFIGS = ("torch-default", "deskpro", "passive", "omp1")


def _env(config: str) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "DESKPRO_THREADS", "GOMP_SPINCOUNT")
    }
    if config == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"  # what deskpro 0.2's command group set before torch loaded
    elif config == "omp1":
        env["OMP_NUM_THREADS"] = "1"
    elif config.startswith("spin"):
        env["GOMP_SPINCOUNT"] = config[len("spin") :]
    return env


def child(config: str, kind: str, steps: int, backbone: str, batch: int, size: tuple[int, int]) -> dict:
    import torch

    from deskpro.common.threads import apply_threads, available_cpus

    if config == "deskpro" or config.startswith("spin"):
        apply_threads(0)
    elif config == "passive":
        apply_threads(requested=available_cpus())  # 0.2's choice: every CPU it may use
    torch.manual_seed(0)
    model = _model(backbone)
    images = torch.randn(batch if kind == "train" else 32, 3, *size)
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


def _model(backbone: str):
    from deskpro.model.osnet import OSNet

    return OSNet(name=backbone)


def _spinner() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


@click.command()
@click.option("--steps", type=click.IntRange(min=1), default=6, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True)
@click.option(
    "--kind", "kinds", multiple=True, type=click.Choice(["train", "eval"]), default=("train", "eval")
)
@click.option("--backbone", default="osnet_x1_0", show_default=True, help="an OSNet width by name")
@click.option("--batch", type=click.IntRange(min=1), default=8, show_default=True, help="train step batch")
@click.option("--size", default="128x64", show_default=True, help="image HxW")
@click.option("--spin", "spins", type=click.IntRange(min=0), multiple=True, help="add a GOMP_SPINCOUNT run")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--child", "child_args", nargs=3, hidden=True)
def main(steps, repeats, kinds, backbone, batch, size, spins, json_path, child_args):
    """Step time per configuration, alone and with a busy neighbour, interleaved and repeated."""
    hw = tuple(int(v) for v in size.lower().split("x"))
    if child_args:
        print(json.dumps(child(child_args[0], child_args[1], int(child_args[2]), backbone, batch, hw)))
        return
    configs = CONFIGS + tuple(f"spin{n}" for n in spins)
    model_args = ["--backbone", backbone, "--batch", str(batch), "--size", size]
    runs: dict[tuple, list[float]] = {}
    threads: dict[tuple, int] = {}  # (kind, config, busy): the count the last such run chose
    for _ in range(repeats):
        for kind in kinds:
            for busy in (False, True):
                for config in configs:
                    spinner = _spinner() if busy else None
                    try:
                        out = subprocess.run(
                            [sys.executable, __file__, *model_args, "--child", config, kind, str(steps)],
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
                    threads[(kind, config, busy)] = result["threads"]
                    runs.setdefault((kind, config, busy), []).append(result["step_s"])
    rows = []
    for kind in kinds:
        for config in configs:
            alone, busy = runs[(kind, config, False)], runs[(kind, config, True)]
            slow = [b / a for a, b in zip(alone, busy)]
            vs_default = [d / b for b, d in zip(busy, runs[(kind, "torch-default", True)])]
            vs_default_alone = [d / a for a, d in zip(alone, runs[(kind, "torch-default", False)])]
            rows.append(
                {
                    "kind": kind,
                    "config": config,
                    "threads_alone": threads[(kind, config, False)],
                    "threads_busy": threads[(kind, config, True)],
                    "alone_s_median": float(np.median(alone)),
                    "busy_s_median": float(np.median(busy)),
                    "slowdown_min": min(slow),
                    "slowdown_median": float(np.median(slow)),
                    "default_over_this_busy_median": float(np.median(vs_default)),
                    "default_over_this_alone_median": float(np.median(vs_default_alone)),
                }
            )
    head = f"{'kind':<6} {'config':<14} {'threads':>7} {'alone s':>8} {'busy s':>8} "
    head += f"{'slow min':>9} {'slow med':>9} {'x def alone':>11} {'x def busy':>10}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['kind']:<6} {r['config']:<14} {str(r['threads_alone']) + '/' + str(r['threads_busy']):>7} "
            f"{r['alone_s_median']:8.3f} {r['busy_s_median']:8.3f} "
            f"{r['slowdown_min']:9.2f} {r['slowdown_median']:9.2f} "
            f"{r['default_over_this_alone_median']:11.2f} {r['default_over_this_busy_median']:10.2f}"
        )
    print(
        "slow = step time beside the busy process / alone; x def = torch-default's step time / this one's"
        " (> 1: faster than torch's default), alone and beside the busy process (medians)"
    )
    print(f"{backbone}, train batch {batch} at {size}; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    if json_path:
        model = {"backbone": backbone, "batch": batch, "size": size}
        runs_json = {str(k): v for k, v in runs.items()}
        json_path.write_text(json.dumps({"model": model, "rows": rows, "runs": runs_json}, indent=2))


if __name__ == "__main__":
    main()
