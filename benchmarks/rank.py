"""Benchmark: CMC / mAP ranking, deskpro's `rank` vs what users would otherwise run, same matrices.

- deskpro: `deskpro.train.metrics.rank_result` (value sort + candidate search, query blocks); on the
  CPU from numpy, and on a GPU from a torch tensor when one is there.
- torchreid: `evaluate_cy` from deep-person-reid's `torchreid/metrics/rank_cylib` (Cython; argsort
  of every row, then a C loop per query).
- Simple-CCReID: `evaluate` / `evaluate_with_clothes` from its `tools/eval_metrics.py` (argsort of
  every row, then numpy set operations per query).

The anchors are not part of deskpro and never copied into it: point `--anchors` at a scratch
folder holding `rank_cy*.so` (built from torchreid's rank_cylib with `python setup.py build_ext
--inplace`) and `simple_ccreid_eval_metrics.py` (Simple-CCReID's tools/eval_metrics.py); an absent
anchor is skipped with a note. Every matrix is float32, made from identity-clustered random
embeddings (1 - cosine), at the test-split sizes of Celeb-reID (2,972 x 11,006, 420 ids) and PRCC
(cross-clothes query C 3,873 and same-clothes query B 3,543 vs gallery A 3,384, 71 ids). Each
implementation's answers are checked against deskpro's (CMC and mAP to 1e-6) before timing.

    python benchmarks/rank.py [--anchors /tmp/anchors] [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

import click
import numpy as np

from deskpro.train.metrics import rank_result

SCALES = {
    # name: (queries, gallery, ids, mode)
    "celeb-reid": (2972, 11006, 420, "standard"),
    "prcc": (3873, 3384, 71, "standard"),  # the size, in the mode every anchor has
    "prcc-cc": (3873, 3384, 71, "cc"),
    "prcc-sc": (3543, 3384, 71, "sc"),
}


# torchreid keeps CMC and APs in float32 arrays: its mAP over thousands of queries carries ~1e-6
# rounding of its own, so it is held to 1e-5; everything else (float64 sums) to 1e-6.
TOLERANCE = {"torchreid-cython": 1e-5}


def make_case(nq: int, ng: int, ids: int, seed: int = 0, dim: int = 128):
    """A float32 distance matrix and labels: embeddings = identity centre + noise, 1 - cosine."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ids, dim)).astype(np.float32)
    q_pids, g_pids = rng.integers(0, ids, nq), rng.integers(0, ids, ng)
    q = centres[q_pids] + 1.2 * rng.standard_normal((nq, dim), dtype=np.float32)
    g = centres[g_pids] + 1.2 * rng.standard_normal((ng, dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    dist = (1.0 - q @ g.T).astype(np.float32)
    labels = {
        "q_pids": q_pids,
        "g_pids": g_pids,
        "q_camids": rng.integers(0, 3, nq),
        "g_camids": rng.integers(0, 3, ng),
        "q_clothes": rng.integers(0, 4, nq) + 10 * q_pids,
        "g_clothes": rng.integers(0, 4, ng) + 10 * g_pids,
    }
    return dist, labels


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _NumpyWithIn1d:
    """numpy, plus the `in1d` that Simple-CCReID calls (removed in numpy 2.4; `isin` replaces it)."""

    in1d = staticmethod(np.isin)

    def __getattr__(self, name):
        return getattr(np, name)


def load_anchors(folder: Path | None) -> tuple[dict, list[str]]:
    """Callables (dist, labels, mode, max_rank) -> (cmc, mAP) per anchor found, and notes."""
    found, notes = {}, []
    if folder is None or not folder.is_dir():
        return found, [f"anchors folder {folder} absent: torchreid and Simple-CCReID skipped"]
    cy = sorted(folder.glob("rank_cy*.so"))
    if cy:
        rank_cy = _load(cy[0], "rank_cy")

        def torchreid(dist, lab, mode, max_rank):
            if mode != "standard":
                return None  # torchreid has no clothes-aware protocol
            cmc, m_ap = rank_cy.evaluate_cy(
                dist, lab["q_pids"], lab["g_pids"], lab["q_camids"], lab["g_camids"], max_rank, False
            )
            return np.asarray(cmc), float(m_ap)

        found["torchreid-cython"] = torchreid
    else:
        notes.append(f"no rank_cy*.so in {folder}: torchreid skipped")
    simple = folder / "simple_ccreid_eval_metrics.py"
    if simple.is_file():
        eval_metrics = _load(simple, "simple_ccreid_eval_metrics")
        eval_metrics.np = _NumpyWithIn1d()  # its np.in1d is gone from numpy 2.4; np.isin is the same

        def simple_ccreid(dist, lab, mode, max_rank):
            args = (dist, lab["q_pids"], lab["g_pids"], lab["q_camids"], lab["g_camids"])
            if mode == "standard":
                cmc, m_ap = eval_metrics.evaluate(*args)
            else:
                cmc, m_ap = eval_metrics.evaluate_with_clothes(
                    *args, lab["q_clothes"], lab["g_clothes"], mode=mode.upper()
                )
            return np.asarray(cmc)[:max_rank], float(m_ap)

        found["simple-ccreid"] = simple_ccreid
    else:
        notes.append(f"no simple_ccreid_eval_metrics.py in {folder}: Simple-CCReID skipped")
    return found, notes


def deskpro_cpu(dist, lab, mode, max_rank):
    r = rank_result(dist, **_ordered(lab), mode=mode, max_rank=max_rank)
    return r.cmc, r.mAP


def _ordered(lab):
    return {k: lab[k] for k in ("q_pids", "g_pids", "q_camids", "g_camids", "q_clothes", "g_clothes")}


def deskpro_gpu_factory():
    import torch

    if not torch.cuda.is_available():
        return None

    def deskpro_gpu(dist, lab, mode, max_rank):
        tensor = torch.from_numpy(dist).cuda()  # the copy to the GPU is part of the timing
        r = rank_result(tensor, **_ordered(lab), mode=mode, max_rank=max_rank)
        torch.cuda.synchronize()
        return r.cmc, r.mAP

    return deskpro_gpu


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@click.command()
@click.option("--anchors", type=click.Path(path_type=Path), default=Path("/tmp/anchors"), show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--scale", "scales", multiple=True, type=click.Choice(list(SCALES)), help="Default: all.")
@click.option("--max-rank", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
def main(anchors, repeats, scales, max_rank, json_path):
    """Time every implementation on the same matrices, interleaved, and print ratios to deskpro."""
    impls = {"deskpro": deskpro_cpu}
    gpu = deskpro_gpu_factory()
    if gpu is not None:
        impls["deskpro-gpu"] = gpu
    found, notes = load_anchors(anchors)
    impls.update(found)
    for note in notes:
        print(f"note: {note}")
    load = os.getloadavg()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {load[0]:.1f}")
    results = []
    for scale in scales or SCALES:
        nq, ng, ids, mode = SCALES[scale]
        dist, lab = make_case(nq, ng, ids)
        ref_cmc, ref_map = deskpro_cpu(dist, lab, mode, max_rank)
        times: dict[str, list[float]] = {}
        skipped = set()
        errors: dict[str, dict] = {}
        for name, fn in impls.items():  # answers first, then timing
            with contextlib.redirect_stdout(io.StringIO()):
                out = fn(dist, lab, mode, max_rank)
            if out is None:
                skipped.add(name)
                continue
            cmc, m_ap = out
            cmc_err = float(np.abs(np.asarray(cmc[: len(ref_cmc)], np.float64) - ref_cmc).max())
            map_err = abs(float(m_ap) - ref_map)
            tol = TOLERANCE.get(name, 1e-6)
            if cmc_err > tol or map_err > tol:
                sys.exit(f"{name} disagrees with deskpro on {scale}: cmc {cmc_err:.2e}, mAP {map_err:.2e}")
            times[name] = []
            errors[name] = {"cmc": cmc_err, "mAP": map_err}
        for _ in range(repeats):  # interleaved so that the load from others hits all alike
            for name in times:
                start = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):
                    impls[name](dist, lab, mode, max_rank)
                times[name].append(time.perf_counter() - start)
        ours = times["deskpro"]
        for name, ts in times.items():
            ratios = [t / o for t, o in zip(ts, ours)]  # > 1: deskpro faster
            results.append(
                {
                    "scale": scale,
                    "shape": [nq, ng],
                    "mode": mode,
                    "impl": name,
                    "min_s": min(ts),
                    "median_s": float(np.median(ts)),
                    "ratio_min": min(ratios),
                    "ratio_median": float(np.median(ratios)),
                    "max_abs_error_vs_deskpro": errors[name],
                    "R1": float(ref_cmc[0]),
                    "mAP": ref_map,
                }
            )
        for name in sorted(skipped):
            print(f"note: {name} skipped on {scale} (no {mode} protocol)")
    head = f"{'scale':<11} {'mode':<8} {'impl':<17} {'min s':>7} {'median s':>9} {'x min':>6} {'x median':>9}"
    print(head)
    print("-" * len(head))
    for r in results:
        print(
            f"{r['scale']:<11} {r['mode']:<8} {r['impl']:<17} {r['min_s']:7.3f} {r['median_s']:9.3f} "
            f"{r['ratio_min']:6.2f} {r['ratio_median']:9.2f}"
        )
    print("x = that implementation's time / deskpro's, per repeat (> 1: deskpro faster)")
    print(f"peak RSS of this process: {_peak_rss_mb():.0f} MB")
    if json_path:
        json_path.write_text(
            json.dumps({"results": results, "notes": notes, "repeats": repeats, "loadavg": load}, indent=2)
        )


if __name__ == "__main__":
    main()
