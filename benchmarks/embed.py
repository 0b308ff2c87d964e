"""Benchmark: inference with a trained model, side by side with what a user would run instead.

- embed: deskpro's extractor (`EmbedStage`, the work of `deskpro embed` per batch: the stages'
  decoder, the detect stage, pack's resize, batched normalisation, the body stream) against a
  faithful minimal copy of what torchreid's `FeatureExtractor` does per image (labelled
  "torchreid-style"; torchreid itself is not installed): PIL open and convert, Resize, ToTensor,
  Normalize, one image at a time, then one forward of the list stacked. Same OSNet x1.0 body stream,
  same 256x128 input, same images, same batch of paths per call. To make it the same work the
  deskpro side runs no face student (the oracle detector's faces are refused by the face policy)
  and no flip (a checkpoint of recipe official), which torchreid does not have either. deskpro runs
  with its default engine (onnxruntime on the CPU) and, as a third column, with `engine="torch"`
  (eager PyTorch, as the torchreid side), to show where the gain comes from.
- onnx: the exported model (`deskpro export`) in onnxruntime against the eager PyTorch module.
- search: `deskpro search`'s chunked exact top-k against a plain full-matrix argsort (the whole
  gallery loaded, the whole [queries, gallery] distance matrix, a stable argsort), time and peak
  resident memory above the process's own after imports, each in a fresh process.

Weights are random: these are speeds, never accuracies.

    python benchmarks/embed.py [--images 48] [--repeats 3] [--queries 2000 --gallery 20000] [--json out.json]
    python benchmarks/embed.py --queries 10000 --gallery 100000   # the issue's search size (~6 GB disk)
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from deskpro.config import TrainConfig
from deskpro.inference.extractor import FeatureExtractor
from deskpro.model import checkpoint
from deskpro.model.deskpro import DeSKPro

BODY = (256, 128)


def _checkpoint(path: Path, recipe: str) -> Path:
    torch.manual_seed(0)
    model = DeSKPro(10).eval()
    config = TrainConfig.for_dataset("synthetic", body_size=BODY, face_size=224).to_dict()
    config["recipe"] = recipe
    return checkpoint.save(
        path,
        model,
        config=config,
        num_classes=10,
        class_pids=list(range(10)),
        preprocessing=checkpoint.preprocessing_constants(BODY, 224),
    )


class TorchreidStyleExtractor:
    """What torchreid.utils.FeatureExtractor does with a list of paths (a minimal copy, not its code)."""

    def __init__(self, net: torch.nn.Module) -> None:
        import torchvision.transforms as T

        self.net = net
        self.preprocess = T.Compose(
            [T.Resize(BODY), T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
        )

    def __call__(self, paths: list[str]) -> torch.Tensor:
        from PIL import Image

        images = [self.preprocess(Image.open(p).convert("RGB")) for p in paths]
        with torch.no_grad():
            return self.net(torch.stack(images, dim=0))


def bench_embed(work: Path, images: int, batch: int, repeats: int) -> dict:
    from deskpro.manifests import scan
    from deskpro.synthetic import generator

    root = generator.generate(
        work / "synth",
        identities=max(3, images // 6),
        images_per_camera=2,
        image_size=(384, 128),
        seed=0,
        progress=False,
    )
    paths = scan("synthetic", root).column("path").to_pylist()[:images]
    ckpt = _checkpoint(work / "official.pt", "official")
    extractors = {
        engine: FeatureExtractor(
            ckpt, "oracle", root=root, device="cpu", batch_size=batch, max_center_y=0.0, engine=engine
        )
        for engine in ("onnxruntime", "torch")
    }
    ext = extractors["onnxruntime"]
    body_net = extractors["torch"].stage.model.nocloth_net

    class Body(torch.nn.Module):
        def forward(self, x):
            return body_net(x, full=False)[0]

    reid = TorchreidStyleExtractor(Body().eval())
    full = [str(root / p) for p in paths]
    outs = {engine: e(paths[:batch]) for engine, e in extractors.items()}  # warm-up (and the export)
    for out in outs.values():
        assert not out.has_face.any() and all(e is None for e in out.error)  # the same work: body only
    max_diff = float(np.abs(outs["onnxruntime"].body - outs["torch"].body).max())
    times = {"deskpro-embed": [], "deskpro-embed-torch": [], "torchreid-style": []}
    for _ in range(repeats):
        for name in times:  # alternate, so all see the same load over time
            start = time.perf_counter()
            if name == "deskpro-embed":
                ext(paths)
            elif name == "deskpro-embed-torch":
                extractors["torch"](paths)
            else:
                for i in range(0, len(full), batch):
                    reid(full[i : i + batch])
            times[name].append(len(paths) / (time.perf_counter() - start))
    ratios = [a / b for a, b in zip(times["deskpro-embed"], times["torchreid-style"])]
    torch_ratios = [a / b for a, b in zip(times["deskpro-embed-torch"], times["torchreid-style"])]
    return {
        "images": len(paths),
        "batch": batch,
        "images_per_s": times,
        "ratio": _spread(ratios),
        "ratio_engine_torch": _spread(torch_ratios),
        "max_abs_diff_onnxruntime_vs_torch": max_diff,
    }


def bench_onnx(work: Path, batch: int, repeats: int) -> dict:
    import onnxruntime

    from deskpro.inference.export import RetrievalModel, export_model, sample_inputs
    from deskpro.inference.extractor import load_model
    from deskpro.inference.settings import resolve

    ckpt = _checkpoint(work / "deskpro.pt", "deskpro")
    summary = export_model(ckpt, work / "model.onnx", force=True)
    model, meta = load_model(ckpt)
    settings = resolve(meta, device="cpu")
    eager = RetrievalModel(model, settings).eval()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(summary.path), options, providers=["CPUExecutionProvider"])
    inputs = sample_inputs(settings, batch)
    feeds = dict(zip(("body", "face", "has_face"), (t.numpy() for t in inputs)))
    times = {"onnxruntime": [], "eager-pytorch": []}
    with torch.inference_mode():
        eager(*inputs), session.run(None, feeds)  # warm-up
        for _ in range(repeats):
            for name in times:
                start = time.perf_counter()
                session.run(None, feeds) if name == "onnxruntime" else eager(*inputs)
                times[name].append(batch / (time.perf_counter() - start))
    ratios = [a / b for a, b in zip(times["onnxruntime"], times["eager-pytorch"])]
    return {
        "batch": batch,
        "max_abs_diff": summary.max_abs_diff,
        "images_per_s": times,
        "ratio": _spread(ratios),
    }


def _gallery(path: Path, rows: int, seed: int) -> None:
    """Random chunk-normalised features (identity-free), written a slice at a time."""
    from deskpro.inference.features import SCHEMA, with_metadata

    rng = np.random.default_rng(seed)
    writer = None
    for start in range(0, rows, 5000):
        n = min(5000, rows - start)
        cols = {}
        for key in ("body", "face"):
            x = rng.standard_normal((n, 7, 512), dtype=np.float32)
            x /= np.linalg.norm(x, axis=2, keepdims=True)
            cols[key] = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 3584)
        table = pa.table(
            {
                "sample_id": [f"g{start + i}" for i in range(n)],
                "path": [""] * n,
                **cols,
                "has_face": rng.random(n) < 0.7,
                "face_score": pa.nulls(n, pa.float32()),
                "face_box": pa.nulls(n, pa.list_(pa.float32(), 4)),
                "error": pa.nulls(n, pa.string()),
            },
            schema=SCHEMA,
        )
        table = with_metadata(table, {"checkpoint_sha256": "benchmark"})
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema, compression="none")
        writer.write_table(table)
    writer.close()


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRss:
    """The largest resident set seen every 5 ms while the block runs (ru_maxrss would include
    whatever the process held before it)."""

    def __enter__(self):
        import threading

        self.peak, self.running = _rss_mb(), True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, _rss_mb())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, _rss_mb())


def _search_child(method: str, gallery: str, queries: str, k: int, out) -> None:
    from deskpro.inference.features import arrays_of
    from deskpro.inference.search import queries_from_table, top_k
    from deskpro.model.deskpro import retrieval_distance

    torch.set_num_threads(2)
    q = queries_from_table(queries)
    base = _rss_mb()
    start = time.perf_counter()
    with PeakRss() as rss:
        if method == "deskpro-search":
            rows = top_k(q, gallery, k).rows
        else:  # what a user writes: load everything, one matrix, argsort
            g = arrays_of(pq.read_table(gallery))
            keys = ("body", "face", "has_face")
            qt = {key: torch.from_numpy(np.array(getattr(q, key))) for key in keys}
            dist = retrieval_distance(qt, {key: torch.from_numpy(np.array(g[key])) for key in keys})
            rows = torch.argsort(dist, dim=1, stable=True)[:, :k].numpy()
    seconds = time.perf_counter() - start
    out.put((method, seconds, rss.peak - base, rows[:50].tolist()))


def bench_search(work: Path, queries: int, gallery: int, k: int, repeats: int) -> dict:
    gpath, qpath = work / "gallery.parquet", work / "queries.parquet"
    _gallery(gpath, gallery, 0)
    _gallery(qpath, queries, 1)
    ctx = multiprocessing.get_context("spawn")
    runs: dict[str, list] = {"deskpro-search": [], "full-argsort": []}
    answers = {}
    for _ in range(repeats):
        for method in runs:
            out = ctx.Queue()
            proc = ctx.Process(target=_search_child, args=(method, str(gpath), str(qpath), k, out))
            proc.start()
            name, seconds, peak, rows = out.get()
            proc.join()
            runs[name].append({"seconds": seconds, "peak_mb_above_start": peak})
            answers[name] = rows
    same = answers["deskpro-search"] == answers["full-argsort"]
    ratios = [b["seconds"] / a["seconds"] for a, b in zip(runs["deskpro-search"], runs["full-argsort"])]
    return {
        "queries": queries,
        "gallery": gallery,
        "k": k,
        "same_top_k": same,
        "runs": runs,
        "speedup": _spread(ratios),
    }


def _spread(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


@click.command()
@click.option("--images", default=48, show_default=True, help="Images embedded per repeat.")
@click.option("--batch", default=16, show_default=True, help="Paths per extractor call / ONNX batch.")
@click.option("--queries", default=2000, show_default=True)
@click.option("--gallery", default=20000, show_default=True)
@click.option("-k", "k", default=10, show_default=True)
@click.option("--repeats", default=3, show_default=True)
@click.option("--only", type=click.Choice(["embed", "onnx", "search"]), multiple=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
def main(images, batch, queries, gallery, k, repeats, only, json_path):
    results = {
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "torch_threads": torch.get_num_threads(),
        "repeats": repeats,
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not only or "embed" in only:
            results["embed"] = r = bench_embed(work, images, batch, repeats)
            print(
                f"embed ({r['images']} images, batch {batch}): images/s {r['images_per_s']}; "
                f"deskpro / torchreid-style min {r['ratio']['min']:.2f} median {r['ratio']['median']:.2f}; "
                f"with --engine torch min {r['ratio_engine_torch']['min']:.2f} "
                f"median {r['ratio_engine_torch']['median']:.2f}; onnxruntime vs torch body max diff "
                f"{r['max_abs_diff_onnxruntime_vs_torch']:.1e}"
            )
        if not only or "onnx" in only:
            results["onnx"] = r = bench_onnx(work, batch, repeats)
            print(
                f"onnx (batch {batch}, max diff {r['max_abs_diff']:.1e}): images/s {r['images_per_s']}; "
                f"onnxruntime / eager min {r['ratio']['min']:.2f} median {r['ratio']['median']:.2f}"
            )
        if not only or "search" in only:
            results["search"] = r = bench_search(work, queries, gallery, k, repeats)
            print(
                f"search {queries} x {gallery}, k {k} (same top-k: {r['same_top_k']}): {r['runs']}; "
                f"speed-up of deskpro min {r['speedup']['min']:.2f} median {r['speedup']['median']:.2f}"
            )
    results["loadavg_end"] = os.getloadavg()
    if json_path:
        json_path.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
