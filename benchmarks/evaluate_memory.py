"""Benchmark: peak memory of ranking all three streams, beyond the features, at 1x and 4x gallery.

Each measurement runs in a fresh process (peak RSS is per process): it builds Celeb-reID-sized
features (2,972 queries x 11,006 gallery rows times the factor; 7 chunks of `--dim` (512), float32, for
body and face), records the RSS, runs `evaluate_features` on the three streams of the standard
protocol, and reports the peak RSS above that baseline. `--impl v0.1` runs the same with the
evaluate module of commit f251b1d (full [query, gallery] matrices, a float64 copy, argsort), read
from git, for the side-by-side.

    python benchmarks/evaluate_memory.py [--factors 1 4] [--json out.json]
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

OLD_COMMIT = "f251b1d"


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _features(nq: int, ng: int, ids: int, dim: int, seed: int = 0):
    import pyarrow as pa
    import torch

    gen = torch.Generator().manual_seed(seed)
    n = nq + ng
    pids = torch.randint(0, ids, (n,), generator=gen)
    centres = torch.randn(ids, 7, dim, generator=gen)
    feats = {}
    for stream in ("body", "face"):
        x = centres[pids] + 1.5 * torch.randn(n, 7, dim, generator=gen)
        feats[stream] = torch.nn.functional.normalize(x, dim=2)
    feats["has_face"] = torch.rand(n, generator=gen) < 0.8
    rng = np.random.default_rng(seed)
    index = pa.table(
        {
            "pid": pa.array(pids.numpy().astype(np.int64)),
            "camid": pa.array(rng.integers(0, 3, n)),
            "clothes_id": pa.array(rng.integers(0, 3, n)),
            "split": ["query"] * nq + ["gallery"] * ng,
            "subset": ["query"] * nq + ["gallery"] * ng,
        }
    )
    return feats, index


def _module(impl: str):
    if impl == "deskpro":
        from deskpro.train import evaluate

        return evaluate
    source = subprocess.run(
        ["git", "show", f"{OLD_COMMIT}:deskpro/train/evaluate.py"], capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "evaluate_v01.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("evaluate_v01", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def child(impl: str, factor: int, dim: int) -> dict:
    import torch

    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    module = _module(impl)
    feats, index = _features(2972, 11006 * factor, 420 * factor, dim)
    feature_mb = sum(v.numel() * v.element_size() for v in feats.values()) / 2**20
    base = _rss_mb()
    protocols = module.build_protocols(index, ("standard",))
    start = time.perf_counter()
    rows = module.evaluate_features(feats, index, protocols, streams=("body", "face", "both"), trials=1)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "impl": impl,
        "factor": factor,
        "gallery": 11006 * factor,
        "chunk_dim": dim,
        "features_mb": feature_mb,
        "rss_before_mb": base,
        "peak_above_features_mb": peak - base,
        "seconds": seconds,
        "R1": {r.stream: r.r1 for r in rows},
    }


@click.command()
@click.option("--factors", multiple=True, type=int, default=(1, 4), show_default=True)
@click.option(
    "--impl", "impls", multiple=True, type=click.Choice(["deskpro", "v0.1"]), default=("deskpro", "v0.1")
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--dim", type=click.IntRange(min=1), default=512, show_default=True, help="Per-chunk feature size."
)
@click.option("--child", "child_args", nargs=3, hidden=True)
def main(factors, impls, dim, json_path, child_args):
    """Peak RSS of evaluate's ranking above the features, per gallery factor and implementation."""
    if child_args:
        print(json.dumps(child(child_args[0], int(child_args[1]), int(child_args[2]))))
        return
    results = []
    for factor in factors:
        for impl in impls:
            out = subprocess.run(
                [sys.executable, __file__, "--child", impl, str(factor), str(dim)],
                capture_output=True,
                text=True,
            )
            if out.returncode:
                sys.exit(f"{impl} x{factor} failed: {out.stderr.strip().splitlines()[-1:]}")
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
    print(f"{'impl':<8} {'gallery':>8} {'features MB':>12} {'peak above MB':>14} {'seconds':>8}")
    for r in results:
        print(
            f"{r['impl']:<8} {r['gallery']:>8} {r['features_mb']:12.0f} {r['peak_above_features_mb']:14.0f} "
            f"{r['seconds']:8.1f}"
        )
    same = all(
        a["R1"] == b["R1"] for a in results for b in results if a["factor"] == b["factor"] and a is not b
    )
    print(f"same R1 per stream across implementations: {same}; load {os.getloadavg()[0]:.1f}")
    if json_path:
        json_path.write_text(json.dumps({"results": results, "load": os.getloadavg()}, indent=2))


if __name__ == "__main__":
    main()
