"""Benchmark: training-sample throughput per worker, shard loader vs a loader in the official layout.

Both loaders produce the same tensors for the same P x K batches: body [B,3,H,W] and both faces
[B,3,F,F] float, ImageNet-normalised, flipped / shifted / erased, and the parse map [B,H,W].
- shards: `ShardDataset` reads a batch with one `read_many` (HDF5, JPEG decoded by OpenCV), then
  `augment_batch` transforms the whole batch as tensors (here on the CPU, in the same process).
- official layout: one JPEG per kind and sample (body/, mask/, lr_face/, hr_face/), each opened with
  PIL and transformed per image by torchvision transforms, as the official data loader does.
Each loader runs in one process (num_workers=0), so samples/s is the rate of one worker. Two rows for
the shards: the worker's own part (read_many; in training the augmentation runs on the GPU), and
worker + CPU augmentation (what a CPU-only run pays per process).

    python benchmarks/loader.py [--samples 256] [--batches 20] [--json out.json]
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image

from deskpro.shards import ShardWriter
from deskpro.train.data import PKBatchSampler, ShardDataset
from deskpro.train.transforms import AugmentSettings, augment_batch

KINDS = ("body", "mask", "lr_face", "hr_face")
CODECS = ("jpeg", "raw")


def _smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A photo-like test image: low-frequency colour fields plus mild noise (JPEG sizes like photos)."""
    import cv2

    coarse = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
    image = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    return np.clip(image + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)


def make_data(
    root: Path, samples: int, ids: int, body=(384, 128), face=224, seed=0
) -> tuple[dict[str, Path], Path]:
    """The same samples as shards per codec (root/shards-<codec>) and in the official layout."""
    rng = np.random.default_rng(seed)
    shards = {codec: root / f"shards-{codec}" for codec in CODECS}
    official = root / "official"
    for kind in KINDS:
        (official / kind).mkdir(parents=True, exist_ok=True)
    writers = [
        ShardWriter(path, body_size=body, face_size=face, codec=codec, meta={"dataset": "synthetic"})
        for codec, path in shards.items()
    ]
    with contextlib.ExitStack() as stack:
        for w in writers:
            stack.enter_context(w)
        for i in range(samples):
            image = _smooth_image(rng, *body)
            blocks = rng.integers(0, 20, (body[0] // 32, body[1] // 32))
            parse = blocks.repeat(32, 0).repeat(32, 1).astype(np.uint8)
            lr, hr = _smooth_image(rng, face, face), _smooth_image(rng, face, face)
            sample = {"body": image, "parse": parse, "face_lr": lr, "face_hr": hr}
            for writer in writers:
                writer.add(
                    sample_id=f"{i:05d}",
                    pid=i % ids,
                    camid=0,
                    clothes_id=-1,
                    split="train",
                    subset="train",
                    **sample,
                )
            for kind, array in zip(KINDS, (image, parse, lr, hr)):
                Image.fromarray(array).save(official / kind / f"{i:05d}.jpg", quality=95)
    return shards, official


class OfficialLayoutDataset(torch.utils.data.Dataset):
    """Per-image PIL opening and torchvision transforms, the official data path's way of working."""

    def __init__(self, root: Path, names: list[str], body=(384, 128), face=224):
        from torchvision import transforms as T

        self.root, self.names = root, names
        normalize = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        pad = (round(body[1] * 0.025), round(body[0] * 0.025))
        self.body = T.Compose(
            [
                T.Resize(body),
                T.RandomHorizontalFlip(),
                T.Pad(pad),
                T.RandomCrop(body),
                T.ToTensor(),
                normalize,
                T.RandomErasing(p=0.5, value=0),
            ]
        )
        self.mask = T.Compose(
            [
                T.Resize(body, interpolation=T.InterpolationMode.NEAREST),
                T.RandomHorizontalFlip(),
                T.Pad(pad),
                T.RandomCrop(body),
                T.PILToTensor(),
            ]
        )
        self.face = T.Compose([T.Resize((face, face)), T.RandomHorizontalFlip(), T.ToTensor(), normalize])

    def __len__(self) -> int:
        return len(self.names)

    def _open(self, kind: str, i: int, mode: str) -> Image.Image:
        return Image.open(self.root / kind / f"{self.names[i]}.jpg").convert(mode)

    def __getitem__(self, i: int) -> dict:
        return {
            "body": self.body(self._open("body", i, "RGB")),
            "parse": self.mask(self._open("mask", i, "L"))[0].long(),
            "face_lr": self.face(self._open("lr_face", i, "RGB")),
            "face_hr": self.face(self._open("hr_face", i, "RGB")),
        }


def _collate(items: list[dict]) -> dict:
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


def time_shards(shards: Path, batches: list[list[int]], augment: bool) -> tuple[float, dict]:
    """Seconds for the batches: the worker's part (read_many) alone, or with the CPU augmentation."""
    dataset = ShardDataset(shards)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for batch in batches:
        out = dataset[batch]
        if augment:
            out = augment_batch(out, generator, AugmentSettings())
    return time.perf_counter() - start, out


def time_official(official: Path, names: list[str], batches: list[list[int]]) -> tuple[float, dict]:
    torch.manual_seed(0)  # the torchvision transforms draw from the global RNG, as in the official code
    dataset = OfficialLayoutDataset(official, names)
    start = time.perf_counter()
    for batch in batches:
        out = _collate([dataset[i] for i in batch])
    return time.perf_counter() - start, out


@click.command()
@click.option("--samples", default=256, show_default=True, help="Samples written in each layout.")
@click.option("--ids", default=32, show_default=True, help="Identities among them.")
@click.option("--p", "p", default=5, show_default=True)
@click.option("--k", "k", default=6, show_default=True)
@click.option("--batches", default=20, show_default=True, help="Batches timed per loader.")
@click.option(
    "--threads", default=1, show_default=True, help="torch / OpenCV threads (1 = one worker's share)."
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the results as JSON.")
def main(samples, ids, p, k, batches, threads, json_path) -> None:
    import cv2

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        shards, official = make_data(Path(tmp), samples, ids)
        sampler = PKBatchSampler(ShardDataset(shards["jpeg"]).labels, p, k, seed=0)
        chosen = []
        while len(chosen) < batches:
            chosen += list(sampler)
            sampler.set_epoch(sampler.epoch + 1)
        chosen = chosen[:batches]
        names = [f"{i:05d}" for i in range(samples)]
        time_official(official, names, chosen[:2])  # warm the page cache and imports
        seconds, outputs = {}, {}
        seconds["official_layout"], outputs["official"] = time_official(official, names, chosen)
        for codec, path in shards.items():
            time_shards(path, chosen[:2], True)
            seconds[f"shards_{codec}_worker"], _ = time_shards(path, chosen, augment=False)
            seconds[f"shards_{codec}_cpu_augment"], outputs[codec] = time_shards(path, chosen, augment=True)
    for codec in CODECS:
        for key, value in outputs["official"].items():
            if outputs[codec][key].shape != value.shape:
                raise AssertionError(
                    f"{key}: shapes differ {tuple(outputs[codec][key].shape)} vs {tuple(value.shape)}"
                )
    n = batches * p * k
    rows = {name: n / t for name, t in seconds.items()}
    base = rows["official_layout"]
    result = {
        "samples_per_s_per_worker": rows,
        "speedup_vs_official": {name: rate / base for name, rate in rows.items()},
        "batch": p * k,
        "batches": batches,
        "threads": threads,
        "shapes": {key: list(value.shape) for key, value in outputs["official"].items()},
    }
    click.echo(f"{'loader':<26} {'samples/s/worker':>17} {'vs official':>12}")
    for name, rate in rows.items():
        click.echo(f"{name:<26} {rate:17.1f} {rate / base:11.2f}x")
    click.echo(f"batch {p}x{k}, {batches} batches, {threads} thread(s); shapes {result['shapes']}")
    click.echo("worker = read_many only (training augments on the GPU); cpu_augment = worker + augment_batch")
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
