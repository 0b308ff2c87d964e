"""Throughput of the three preprocessing networks: images/s per batch size, against batch 1.

The official scripts run each network one image at a time in fp32 (SCHP's simple_extractor,
RetinaFace's detect.py, GPEN's face_enhancement.py); that is the baseline row of each network.
Each measurement goes through the same wrapper the pipeline stages use (Parser, FaceDetector,
Restorer), so pre- and post-processing are included. Weights are random (speed does not depend
on their values; these figures say nothing about accuracy).

    python benchmarks/nets.py                       # CPU: reduced sizes, a few iterations
    python benchmarks/nets.py --device cuda --full  # GPU: official sizes, AMP and channels_last
    python benchmarks/nets.py --json results.json
    python benchmarks/nets.py --compare-fold --repeat 5  # SCHP: ABN folded into the convs, or not
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch

from deskpro.pipeline import detection, parsing, restoration


@dataclass
class Row:
    net: str
    device: str
    amp: str
    channels_last: bool
    batch: int
    input: str
    images_per_s: float
    speedup: float = 1.0  # against batch 1, fp32, contiguous: the official way


def _parser(size: int) -> tuple[str, Callable[..., Callable], np.ndarray]:
    from deskpro.pipeline.nets import schp

    net = schp.build("lip")

    def make(device, amp, channels_last):
        return parsing.Parser(
            net, labels="lip", input_size=size, device=device, amp=amp, channels_last=channels_last
        )

    return f"re-id crop 384x128 -> {size}^2", make, np.zeros((384, 128, 3), np.uint8)


def _detector(variant: str) -> tuple[str, Callable[..., Callable], np.ndarray]:
    from deskpro.pipeline.nets import retinaface

    net = retinaface.build(variant)

    def make(device, amp, channels_last):
        # the torch engine, as the other networks; benchmarks/detect.py compares it with onnxruntime
        return detection.FaceDetector(
            net,
            conf_threshold=0.5,
            device=device,
            amp=amp,
            channels_last=channels_last,
            batch_size=1024,
            engine="torch",
        )

    return "re-id crop 384x128", make, np.zeros((384, 128, 3), np.uint8)


def _restorer(size: int) -> tuple[str, Callable[..., Callable], np.ndarray]:
    from deskpro.pipeline.nets import gpen

    net = gpen.build(size)

    def make(device, amp, channels_last):
        restorer = restoration.Restorer(net, device=device, amp=amp, channels_last=channels_last)
        return lambda faces: restorer(np.stack(faces))  # the Restorer takes one [B,S,S,3] array

    return f"aligned face 128 -> {size}^2", make, np.zeros((128, 128, 3), np.uint8)


def _images(example: np.ndarray, n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, example.shape, dtype=np.uint8) for _ in range(n)]


def _time(run: Callable, batch: list, iters: int, device: str) -> float:
    run(batch)  # warm-up: cudnn autotune, caches, lazy allocations
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        run(batch)
    if device == "cuda":
        torch.cuda.synchronize()
    return len(batch) * iters / (time.perf_counter() - start)


def _configs(device: str) -> Iterator[tuple[str | None, bool]]:
    yield None, False
    if device == "cuda":
        yield None, True
        for amp in ("bf16", "fp16"):
            yield amp, False
            yield amp, True


def run(nets: list[str], batch_sizes: list[int], device: str, iters: int, full: bool) -> list[Row]:
    schp_size = 473 if full else 233
    gpen_size = 512 if full else 256
    factories = {
        "schp": lambda: _parser(schp_size),
        "retinaface-resnet50": lambda: _detector("resnet50"),
        "retinaface-mobilenet0.25": lambda: _detector("mobilenet0.25"),
        "gpen": lambda: _restorer(gpen_size),
    }
    rows: list[Row] = []
    for name in nets:
        label, make, example = factories[name]()
        baseline = None
        for amp, channels_last in _configs(device):
            wrapper = make(device, amp, channels_last)
            for bs in batch_sizes:
                ips = _time(wrapper, _images(example, bs, seed=bs), iters, device)
                if baseline is None:
                    baseline = ips  # first row: batch 1 (sizes are sorted), fp32, contiguous
                rows.append(Row(name, device, amp or "fp32", channels_last, bs, label, ips, ips / baseline))
                print(_format_row(rows[-1]), flush=True)
        del wrapper
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def compare_fold(size: int, batch: int, repeat: int) -> dict:
    """SCHP as loaded against SCHP with every InPlaceABN folded into its conv (what the parse stage
    runs), side by side: each repeat times both on the same images, alternating which goes first.
    Returns per-repeat images/s of each and the ratio folded / plain, with min and median."""
    import copy

    from deskpro.pipeline.nets import schp

    net = schp.build("lip")
    gen = torch.Generator().manual_seed(0)
    for m in net.modules():  # non-trivial statistics, so that folding has something to fold
        if isinstance(m, schp.InPlaceABN):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    plain = parsing.Parser(net, labels="lip", input_size=size)
    folded = parsing.Parser(schp.fold_abn(copy.deepcopy(net)), labels="lip", input_size=size)
    images = _images(np.zeros((size * 2, size, 3), np.uint8), batch, seed=1)
    same = all(np.array_equal(a, b) for a, b in zip(plain(images), folded(images)))
    ratios, rows = [], []
    for r in range(repeat):
        order = [("plain", plain), ("folded", folded)][:: 1 if r % 2 == 0 else -1]
        speed = {name: _time(wrapper, images, 1, "cpu") for name, wrapper in order}
        ratios.append(speed["folded"] / speed["plain"])
        rows.append(speed)
        print(
            f"repeat {r}: plain {speed['plain']:.3f} img/s, folded {speed['folded']:.3f} img/s, "
            f"ratio {ratios[-1]:.3f}",
            flush=True,
        )
    summary = {"min": float(np.min(ratios)), "median": float(np.median(ratios)), "label_maps_equal": same}
    print(
        f"folded / plain: min {summary['min']:.3f}, median {summary['median']:.3f}; label maps equal: {same}"
    )
    return {"size": size, "batch": batch, "repeats": rows, "ratio": summary}


HEADER = (
    f"{'net':<26}{'device':<8}{'amp':<6}{'ch_last':<9}{'batch':>6}{'images/s':>11}{'x batch1':>10}  input"
)


def _format_row(r: Row) -> str:
    return (
        f"{r.net:<26}{r.device:<8}{r.amp:<6}{str(r.channels_last):<9}{r.batch:>6}"
        f"{r.images_per_s:>11.2f}{r.speedup:>10.2f}  {r.input}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", default="schp,retinaface-resnet50,retinaface-mobilenet0.25,gpen")
    ap.add_argument("--batch-sizes", default=None, help="comma-separated; default 1,4 on CPU, 1,8,32 on GPU")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--iters", type=int, default=None, help="timed calls per row (default 2 CPU, 10 GPU)")
    ap.add_argument("--full", action="store_true", help="official input sizes (SCHP 473, GPEN 512)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", default=None, help="write the rows and the machine to this JSON file")
    ap.add_argument("--compare-fold", action="store_true", help="SCHP with ABN folded vs not (CPU)")
    ap.add_argument("--fold-size", type=int, default=233, help="--compare-fold: SCHP input side")
    ap.add_argument("--repeat", type=int, default=5, help="--compare-fold: repeats")
    args = ap.parse_args()
    if args.compare_fold:
        if args.threads:
            torch.set_num_threads(args.threads)
        print(
            f"# {platform.processor() or 'cpu'}, torch {torch.__version__}, {torch.get_num_threads()} threads"
        )
        with torch.inference_mode():
            report = compare_fold(args.fold_size, int((args.batch_sizes or "1").split(",")[0]), args.repeat)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1)
        return

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    default_bs = "1,8,32" if device == "cuda" else "1,4"
    batch_sizes = sorted(int(b) for b in (args.batch_sizes or default_bs).split(","))
    iters = args.iters or (10 if device == "cuda" else 2)
    full = args.full or device == "cuda"
    machine = torch.cuda.get_device_name() if device == "cuda" else f"{platform.processor() or 'cpu'}"
    print(f"# {machine}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, iters {iters}")
    print(HEADER)
    with torch.inference_mode():
        rows = run(args.nets.split(","), batch_sizes, device, iters, full)
    if args.json:
        report = {"machine": machine, "torch": torch.__version__, "rows": [asdict(r) for r in rows]}
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
