"""Benchmark the shard storage options: bytes per sample and decode samples/s, per image codec and
parse-map compression, on synthetic people (deskpro.synthetic.generator) at the training sizes.

Each option packs the same samples with ShardWriter (body 384x128, faces 224x224) and reads them
back with ShardReader.read_many in shuffled batches (the trainer's access pattern), on one thread;
rates are per CPU-second (process time), so other load on the machine does not skew them.
Faces: the image's face box, squared and upsampled to the face size (face_lr); face_hr adds a seeded
fine texture, standing in for the detail GPEN restores. The drawn people are cleaner than camera
photos, so JPEG sizes here are lower bounds; ``--noise`` adds sensor noise to approach real images.

    python benchmarks/codec.py [--identities 12] [--noise 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import h5py
import numpy as np

from deskpro.shards import ShardReader, ShardWriter
from deskpro.synthetic import generator as synthetic

BODY = (384, 128)
FACE = 224
OPTIONS = [  # (codec, quality, parse compression)
    ("jpeg", 95, "gzip"),
    ("jpeg", 90, "gzip"),
    ("jpeg", 95, "lzf"),
    ("jpeg", 95, "none"),
    ("raw", 95, "gzip"),
    ("raw", 95, "none"),
]


def load_samples(root: Path, noise: float, seed: int) -> list[dict]:
    """Body, parse map and faces of every generated image, at the training sizes."""
    rng = np.random.default_rng(seed)
    faces = synthetic.read_face_truth(root)
    samples = []
    for i, (path, (has_face, box, _)) in enumerate(sorted(faces.items())):
        bgr = cv2.imread(str(root / path), cv2.IMREAD_COLOR)
        body = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), BODY[::-1], interpolation=cv2.INTER_AREA)
        if noise > 0:
            body = (body + rng.normal(0, noise, body.shape)).clip(0, 255).astype(np.uint8)
        parse = cv2.resize(
            synthetic.read_parse_truth(root, path), BODY[::-1], interpolation=cv2.INTER_NEAREST
        )
        face_lr = face_hr = None
        if has_face:
            face_lr = _face_crop(body, box, bgr.shape[:2])
            texture = rng.normal(0, 6.0, face_lr.shape)
            face_hr = (face_lr + texture).clip(0, 255).astype(np.uint8)
        samples.append(
            dict(
                sample_id=f"{i:05d}",
                pid=0,
                camid=0,
                clothes_id=-1,
                split="train",
                subset="train",
                body=body,
                parse=parse,
                face_lr=face_lr,
                face_hr=face_hr,
            )
        )
    return samples


def _face_crop(body: np.ndarray, box: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    sy, sx = BODY[0] / image_hw[0], BODY[1] / image_hw[1]
    cx, cy = (box[0] + box[2]) / 2 * sx, (box[1] + box[3]) / 2 * sy
    half = max((box[2] - box[0]) * sx, (box[3] - box[1]) * sy) * 0.75
    x1, y1 = int(max(cx - half, 0)), int(max(cy - half, 0))
    x2, y2 = int(min(cx + half, BODY[1])), int(min(cy + half, BODY[0]))
    return cv2.resize(
        body[y1 : max(y2, y1 + 2), x1 : max(x2, x1 + 2)], (FACE, FACE), interpolation=cv2.INTER_LINEAR
    )


def measure(
    samples: list[dict], out_dir: Path, codec: str, quality: int, parse: str, batches: int, seed: int
):
    start = time.process_time()
    with ShardWriter(
        out_dir,
        body_size=BODY,
        face_size=FACE,
        codec=codec,
        jpeg_quality=quality,
        shard_size=len(samples),
        parse_compression=parse,
    ) as writer:
        for sample in samples:
            writer.add(**sample)
    write_s = time.process_time() - start
    shard = out_dir / "shard-00000.h5"
    with h5py.File(shard, "r") as f:
        parse_bytes = f["parse"].id.get_storage_size()
    rng = np.random.default_rng(seed)
    # Closed before the parse maps are timed: HDF5 refuses to open a file again with other locking
    # flags (the reader opens shards with locking=False) while it is open.
    with ShardReader(out_dir) as reader:
        reader.read_many(rng.permutation(len(samples))[:32])  # open the file, warm caches
        decoded, start = 0, time.process_time()
        for _ in range(batches):
            batch = rng.permutation(len(samples))[:32]
            reader.read_many(batch)
            decoded += len(batch)
        read_s = time.process_time() - start
    parse_start = time.process_time()
    with h5py.File(shard, "r") as f:
        for i in range(len(samples)):
            f["parse"][i]
    parse_s = time.process_time() - parse_start
    n = len(samples)
    total = shard.stat().st_size
    return {
        "codec": codec,
        "quality": quality if codec == "jpeg" else None,
        "parse_compression": parse,
        "bytes_per_sample": total / n,
        "parse_bytes_per_sample": parse_bytes / n,
        "image_bytes_per_sample": (total - parse_bytes) / n,
        "read_samples_per_s": decoded / read_s,
        "parse_maps_per_s": n / parse_s,
        "write_samples_per_s": n / write_s,
    }


def format_table(rows: list[dict]) -> str:
    head = f"{'codec':<9}{'parse':<6}{'KB/sample':>10}{'images KB':>10}{'parse KB':>9}"
    head += f"{'read/s':>9}{'parse/s':>9}{'write/s':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        codec = r["codec"] + (f" q{r['quality']}" if r["quality"] else "")
        lines.append(
            f"{codec:<9}{r['parse_compression']:<6}{r['bytes_per_sample'] / 1e3:>10.1f}"
            f"{r['image_bytes_per_sample'] / 1e3:>10.1f}{r['parse_bytes_per_sample'] / 1e3:>9.2f}"
            f"{r['read_samples_per_s']:>9.0f}{r['parse_maps_per_s']:>9.0f}{r['write_samples_per_s']:>9.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--identities", type=int, default=12, help="synthetic people (3 cameras x 2 images each)"
    )
    parser.add_argument(
        "--noise", type=float, default=0.0, help="sensor noise sigma added to bodies (0..255)"
    )
    parser.add_argument("--batches", type=int, default=20, help="random batches of 32 read per option")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = synthetic.generate(
            Path(tmp) / "data",
            identities=args.identities,
            images_per_camera=2,
            seed=args.seed,
            progress=False,
        )
        samples = load_samples(root, args.noise, args.seed)
        rows = [
            measure(
                samples,
                Path(tmp) / f"{codec}-{quality}-{parse}",
                codec,
                quality,
                parse,
                args.batches,
                args.seed,
            )
            for codec, quality, parse in OPTIONS
        ]
    info = {
        "samples": len(samples),
        "with_face": sum(s["face_lr"] is not None for s in samples),
        "noise": args.noise,
    }
    if args.json:
        print(json.dumps({**info, "results": rows}, indent=2))
    else:
        print(f"{info['samples']} samples ({info['with_face']} with a face), noise {args.noise};", end=" ")
        print("rates per CPU-second, one thread")
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
