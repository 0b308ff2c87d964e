"""One-GPU check: every network's throughput per batch, precision and memory format, FLOPs and the
fraction of the compute limit; training images/s with AMP and the share of step time spent waiting
for data (JPEG shards, decoded where `--decode-on` says: auto = on the GPU with CUDA); the trainer's
GPU-decode path (bytes-only worker read, nvjpeg decode_batch and augmentation on the GPU).

Weights are random (init or zero): these figures measure speed, never accuracy. Batch 1 in fp32,
contiguous, is the official way (one image at a time); every other row is compared with it.
FLOPs per image are counted with torch.utils.flop_counter.FlopCounterMode (multiply-add = 2 FLOPs)
on one fp32 image; the reference figures (SCHP 153 GFLOPs at 473x473, GPEN-512 276 GFLOPs, from
tests/data/reference/README.md) are printed beside them. The fraction of the compute limit is
images/s x FLOPs per image / `--peak-tflops` (default: H200 dense bf16, 989 TFLOP/s) for every row,
fp32 rows included, so fp32 fractions look low by design.

    python benchmarks/gpu_check.py --out gpu_check/          # on a GPU: official sizes
    python benchmarks/gpu_check.py --tiny --out /tmp/check   # anywhere: tiny sizes (CI, via a test)
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np
import torch

from deskpro.common.torch_utils import set_memory_format

REFERENCE_GFLOPS = {"schp": (153.0, 473), "gpen-512": (276.0, 512)}  # (GFLOPs, at this input size)


@dataclass
class Row:
    net: str
    input: str
    batch: int
    precision: str
    channels_last: bool
    images_per_s: float
    speedup_vs_batch1: float
    gflops_per_image: float
    fraction_of_peak: float


@dataclass
class Sizes:
    schp: int
    body: tuple[int, int]
    face: int
    gpen: tuple[int, ...]
    batch: int
    precisions: tuple[str, ...]
    min_seconds: float
    train_ids: int
    train_iters: int
    calls: int  # warm-up calls, and the least number of timed calls


FULL = Sizes(473, (384, 128), 224, (256, 512), 32, ("fp32", "bf16", "fp16"), 1.0, 128, 40, 2)
TINY = Sizes(48, (64, 32), 32, (256,), 2, ("fp32", "bf16"), 0.0, 4, 3, 1)


def _nets(sizes: Sizes):
    """(name, input description, module factory, input shapes per call) for every network."""
    from deskpro.model.deskpro import DeSKPro
    from deskpro.pipeline.nets import gpen, retinaface, schp

    h, w = sizes.body
    nets = [
        ("schp", f"{sizes.schp}x{sizes.schp}", lambda: schp.build("lip"), [(3, sizes.schp, sizes.schp)]),
        ("retinaface-resnet50", f"{h}x{w}", lambda: retinaface.build("resnet50"), [(3, h, w)]),
        ("retinaface-mobilenet0.25", f"{h}x{w}", lambda: retinaface.build("mobilenet0.25"), [(3, h, w)]),
    ]
    for size in sizes.gpen:
        nets.append((f"gpen-{size}", f"{size}x{size}", lambda size=size: gpen.build(size), [(3, size, size)]))

    class Embed(torch.nn.Module):  # the evaluation forward: global stream and face student
        def __init__(self):
            super().__init__()
            self.model = DeSKPro(num_classes=150)

        def forward(self, body, face):
            out = self.model.embed(body, face)
            return out["body"], out["face"]

    nets.append(
        ("deskpro", f"body {h}x{w} + face {sizes.face}", Embed, [(3, h, w), (3, sizes.face, sizes.face)])
    )

    def exported():  # `deskpro export`'s module: uint8 crops in, flip-summed normalised embedding out
        from deskpro.inference.export import RetrievalModel
        from deskpro.inference.settings import resolve

        meta = {"preprocessing": {"body_size": [h, w], "face_size": sizes.face}}
        return RetrievalModel(DeSKPro(num_classes=150), resolve(meta, device="cpu"))

    label = f"uint8 body {h}x{w} + face {sizes.face}, flip"
    nets.append(("deskpro-export", label, exported, [(h, w, 3), (sizes.face, sizes.face, 3), ()]))
    return nets


def _precision_context(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _count_gflops(net: torch.nn.Module, inputs: list[torch.Tensor]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        net(*[x[:1] for x in inputs])
    return counter.get_total_flops() / 1e9


def _time(net, inputs, device, precision, sizes: Sizes) -> float:
    """Images/s of `net` on `inputs` (warm-up calls, then timed calls for at least min_seconds)."""
    with torch.inference_mode(), _precision_context(device, precision):
        for _ in range(sizes.calls):
            net(*inputs)
        _sync(device)
        calls, start = 0, time.perf_counter()
        while calls < sizes.calls or time.perf_counter() - start < sizes.min_seconds:
            net(*inputs)
            calls += 1
            _sync(device)
        return calls * inputs[0].shape[0] / (time.perf_counter() - start)


def bench_nets(device: torch.device, sizes: Sizes, peak_tflops: float, log, only=()) -> list[Row]:
    rows = []
    gen = torch.Generator().manual_seed(0)
    for name, label, factory, shapes in _nets(sizes):
        if only and name not in only:
            continue
        # Inference only: no parameter needs a gradient (the FLOP counter's module tracker would
        # otherwise hook autograd inside inference mode).
        net = factory().eval().requires_grad_(False).to(device)
        gflops = None
        baseline = None
        for batch in (1, sizes.batch):
            cpu_inputs = [torch.rand((batch, *s), generator=gen) for s in shapes]
            for channels_last in (False, True):
                fmt = torch.channels_last if channels_last else torch.contiguous_format
                net = set_memory_format(net, fmt)
                inputs = [
                    x.to(device).contiguous(memory_format=fmt) if x.dim() == 4 else x.to(device)
                    for x in cpu_inputs
                ]
                if gflops is None:
                    gflops = _count_gflops(net, inputs)
                for precision in sizes.precisions:
                    ips = _time(net, inputs, device, precision, sizes)
                    if baseline is None:
                        baseline = ips  # batch 1, contiguous, fp32: the first row
                    frac = ips * gflops * 1e9 / (peak_tflops * 1e12)
                    rows.append(
                        Row(name, label, batch, precision, channels_last, ips, ips / baseline, gflops, frac)
                    )
                    log(_format(rows[-1]))
        del net
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _format(r: Row) -> str:
    return (
        f"| {r.net} | {r.input} | {r.batch} | {r.precision} | {'on' if r.channels_last else 'off'} | "
        f"{r.images_per_s:.3g} | {r.speedup_vs_batch1:.2f} | {r.gflops_per_image:.1f} | "
        f"{100 * r.fraction_of_peak:.2f}% |"
    )


HEAD = (
    "| net | input | batch | precision | channels_last | images/s | x batch 1 | GFLOPs/image | of peak |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


# ---------------------------------------------------------------- training and the loader


def _shard_writer():
    from deskpro.shards import ShardWriter

    return ShardWriter


def write_shards(root: Path, sizes: Sizes, codec: str) -> Path:
    """Synthetic PRCC-layout shards: smooth random bodies, faces, parse maps; train and test rows."""
    rng = np.random.default_rng(0)
    h, w = sizes.body
    out = root / f"shards-{codec}"
    rows = [("train", "train", pid, cam) for pid in range(sizes.train_ids) for cam in range(8)]
    rows += [
        (s, sub, sizes.train_ids + i, c)
        for i in range(4)
        for s, sub, c in (("gallery", "gallery", 0), ("query", "query_same", 1), ("query", "query_diff", 2))
    ]
    with _shard_writer()(
        out,
        body_size=sizes.body,
        face_size=sizes.face,
        codec=codec,
        meta={"dataset": "synthetic", "label_set": "lip"},
    ) as writer:
        for n, (split, subset, pid, cam) in enumerate(rows):
            coarse = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3)).astype(np.float32)
            body = np.kron(coarse, np.ones((16, 16, 1)))[:h, :w]
            body = np.pad(body, ((0, h - body.shape[0]), (0, w - body.shape[1]), (0, 0)), mode="edge")
            parse = np.zeros((h, w), np.uint8)
            parse[: h // 4], parse[h // 4 : h // 2], parse[h // 2 :] = 13, 5, 9
            face = rng.integers(0, 256, (sizes.face, sizes.face, 3), dtype=np.uint8)
            writer.add(
                sample_id=f"{split}/{pid}/{cam}/{n}",
                pid=pid,
                camid=cam,
                clothes_id=pid * 2 + (cam == 2),
                split=split,
                subset=subset,
                body=body.astype(np.uint8),
                parse=parse,
                face_lr=face,
                face_hr=face,
            )
    return out


class _TimedLoader:
    """Wraps the trainer's loader: time spent waiting for each batch, and when each was handed out."""

    def __init__(self, loader):
        self.loader = loader
        self.waits: list[float] = []
        self.handed: list[float] = []

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        iterator = iter(self.loader)
        while True:
            start = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                return
            now = time.perf_counter()
            self.waits.append(now - start)
            self.handed.append(now)
            yield item


def bench_training(
    device: torch.device,
    sizes: Sizes,
    root: Path,
    amp: str | None,
    workers: int,
    log,
    decode_on: str = "auto",
) -> dict:
    """Teacher for one step, then DeSKPro steps with AMP: images/s and the data-wait share.

    JPEG shards; `decode_on` as `deskpro train --decode-on` (auto: decoded on the GPU with CUDA)."""
    from deskpro.train import loop as trainer
    from deskpro.train.data import open_reader, resolve_decode_on
    from deskpro.train.loop import TrainRunOptions, run_training
    from deskpro.train.settings import resolve_config

    shards = write_shards(root, sizes, "jpeg")
    resolved_decode = resolve_decode_on(decode_on, device, open_reader(shards))
    options = TrainRunOptions(device=str(device), max_iters=1, progress=False)
    common = {"num_workers": workers, "amp": amp or "none", "epochs": 1000, "decode_on": decode_on}
    if device.type == "cuda":
        common["channels_last"] = True
    if sizes.train_ids < 16:  # tiny: batches the few identities can fill (else the preset's P x K)
        common.update(p=4, k=4)
    teacher = run_training(shards, root / "teacher", "teacher", common, options)
    timed: list[_TimedLoader] = []
    original = trainer.make_loader

    def make_loader(*args, **kwargs):
        timed.append(_TimedLoader(original(*args, **kwargs)))
        return timed[-1]

    trainer.make_loader = make_loader
    try:
        options = TrainRunOptions(
            device=str(device), teacher=str(teacher), max_iters=sizes.train_iters, progress=False
        )
        start = time.perf_counter()
        run_training(shards, root / "deskpro", "deskpro", common, options)
        wall = time.perf_counter() - start
    finally:
        trainer.make_loader = original
    waits = [w for t in timed for w in t.waits]
    handed = [h for t in timed for h in t.handed]
    skip = min(3, max(0, len(waits) - 2))  # worker start-up and cudnn autotuning
    span = handed[-1] - handed[skip] if len(handed) > skip + 1 else float("nan")
    steps = len(handed) - 1 - skip
    resolved = resolve_config(shards, "deskpro", **common)
    batch = resolved.p * resolved.k
    result = {
        "amp": amp or "none",
        "workers": workers,
        "decode_on": resolved_decode,
        "batch": batch,
        "steps_timed": steps,
        "images_per_s": steps * batch / span if steps > 0 else float("nan"),
        "data_wait_share": sum(waits[skip + 1 :]) / span if steps > 0 else float("nan"),
        "wall_s": wall,
    }
    log(
        f"training: {result['images_per_s']:.1f} images/s "
        f"(batch {batch}, amp {result['amp']}, {workers} workers, decoded on the {resolved_decode}), "
        f"waiting for data {100 * result['data_wait_share']:.1f}% of step time over {steps} steps"
    )
    return result


def bench_gpu_decode(device: torch.device, sizes: Sizes, root: Path, log) -> dict:
    """The trainer's decode_on=device path on the GPU: the worker's bytes-only read
    (`JpegBatches`), then `decoded` (decode_batch: nvjpeg, every image kind) and `augment_batch` on
    the GPU; against the CPU decode of `read_many` (the decode_on=worker worker), with the largest
    pixel difference between nvjpeg and the CPU decoder."""
    from deskpro.train.data import JpegBatches, ShardDataset, decoded
    from deskpro.train.transforms import augment_batch

    shards = root / "shards-jpeg"
    if not shards.is_dir():
        shards = write_shards(root, sizes, "jpeg")
    if device.type != "cuda":
        log("gpu jpeg decode: skipped (no GPU)")
        return {"skipped": "no GPU"}
    dataset = ShardDataset(shards)
    positions = list(range(min(len(dataset), 64)))
    start = time.perf_counter()
    want = dataset[positions]
    cpu = len(positions) / (time.perf_counter() - start)
    generator = torch.Generator(device=device).manual_seed(0)
    for _ in range(2):  # the first round warms nvjpeg up
        start = time.perf_counter()
        jpeg = JpegBatches(dataset)[positions]
        read = time.perf_counter()
        images = decoded(jpeg, dataset.reader.options, device)
        torch.cuda.synchronize()
        decode = time.perf_counter()
        augment_batch(images, generator, device=device)
        torch.cuda.synchronize()
        end = time.perf_counter()
    n = len(positions)
    result = {
        "cpu_read_many_rows_per_s": cpu,
        "worker_bytes_rows_per_s": n / (read - start),
        "gpu_decode_rows_per_s": n / (decode - read),
        "gpu_decode_augment_rows_per_s": n / (end - read),
        "max_abs_diff_vs_cpu": max(
            int((images[key].cpu().int() - want[key].int()).abs().max())
            for key in ("body", "face_lr", "face_hr")
        ),
    }
    log(
        f"jpeg decode (rows of body + 2 faces): cpu read_many {cpu:.0f} rows/s; decode_on=device worker "
        f"{result['worker_bytes_rows_per_s']:.0f} rows/s, gpu decode {result['gpu_decode_rows_per_s']:.0f}, "
        f"decode + augment {result['gpu_decode_augment_rows_per_s']:.0f} rows/s; "
        f"nvjpeg vs cpu decoder: max {result['max_abs_diff_vs_cpu']} levels"
    )
    return result


@click.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--tiny", is_flag=True, help="Tiny sizes and few iterations (runs on a CPU in seconds).")
@click.option("--device", default="auto", show_default=True, help="auto: cuda when available.")
@click.option("--peak-tflops", type=click.FloatRange(min=0, min_open=True), default=989.0, show_default=True)
@click.option(
    "--workers", type=click.IntRange(min=0), default=None, help="Loader workers (default: CPUs - 1)."
)
@click.option("--net", "only", multiple=True, help="Only these networks (default: all).")
@click.option("--skip-training", is_flag=True)
@click.option(
    "--decode-on",
    type=click.Choice(["auto", "worker", "device"]),
    default="auto",
    show_default=True,
    help="Training: where the JPEG shards are decoded (as deskpro train --decode-on).",
)
def main(
    out_dir: Path, tiny: bool, device: str, peak_tflops: float, workers, only, skip_training: bool, decode_on
):
    """Write gpu_check.json and gpu_check.md under --out."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    sizes = TINY if tiny else FULL
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        # fp16 autocast is CUDA-only; bf16 convolutions on a CPU without bf16 units crawl (minutes for
        # GPEN), so the tiny CPU run keeps fp32 and the GPU run covers bf16 / fp16.
        keep = ("fp32",) if tiny else ("fp32", "bf16")
        sizes = Sizes(**{**asdict(sizes), "precisions": tuple(p for p in sizes.precisions if p in keep)})
    out_dir.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def log(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    log(f"# gpu_check: {name}, torch {torch.__version__}, {'tiny' if tiny else 'full'} sizes")
    log(f"Random weights: speed only, no accuracy. Peak for 'of peak': {peak_tflops:g} TFLOP/s.")
    log(f"Reference GFLOPs: SCHP {REFERENCE_GFLOPS['schp']}, GPEN-512 {REFERENCE_GFLOPS['gpen-512']}")
    log("")
    log(HEAD)
    start = time.perf_counter()
    rows = bench_nets(device, sizes, peak_tflops, log, only)
    log("")
    report = {
        "device": name,
        "torch": torch.__version__,
        "tiny": tiny,
        "peak_tflops": peak_tflops,
        "random_weights": True,
        "reference_gflops": REFERENCE_GFLOPS,
        "nets": [asdict(r) for r in rows],
    }
    best = {}
    for r in rows:
        best[r.net] = max(best.get(r.net, 0.0), r.speedup_vs_batch1)
    log("best speed-up over batch 1 (goal >= 5x): " + ", ".join(f"{k} {v:.1f}x" for k, v in best.items()))
    report["best_speedup"] = best
    with tempfile.TemporaryDirectory() as tmp:
        if not skip_training:
            w = max(0, len(os.sched_getaffinity(0)) - 1) if workers is None else workers
            w = 0 if tiny and workers is None else w
            amp = "bf16" if device.type == "cuda" else None
            report["training"] = bench_training(device, sizes, Path(tmp), amp, w, log, decode_on)
        report["gpu_jpeg_decode"] = bench_gpu_decode(device, sizes, Path(tmp), log)
    report["seconds"] = time.perf_counter() - start
    (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=2))
    (out_dir / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out_dir / 'gpu_check.json'} and {out_dir / 'gpu_check.md'} in {report['seconds']:.0f} s")


if __name__ == "__main__":
    main()
