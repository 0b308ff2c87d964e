"""Benchmark: training-sample throughput per CPU worker, shard loader vs the official loader.

The official loader's worker does all of the work per sample, decode + augment: a body [3,384,128],
two faces [3,224,224] (normalised, flipped, translated, erased) and the parse map (flipped,
translated).
- official (faithful copy): the official ImageDataset_MultiInput path, written from
  /work/notes/official_recipe.md: four JPEG files per sample (body, lr_face, hr_face, mask), each
  checked with Path.exists, opened with PIL .convert("RGB"), and transformed by the official
  Compose (Resize bilinear, RandomHorizontalFlip, Random2DTranslation 1.05, ToTensor, Normalize,
  RandomErasing with the official fill; the mask without the last two) inside an isolate_rng()
  that saves and restores the torch, numpy and python RNG states; default collate.
- same work, all on the CPU (rows "... + CPU augment"): `ShardDataset` reads the batch with one
  `read_many` (HDF5; JPEG decoded by deskpro.common.images, PIL), then `augment_batch` on the CPU,
  in the same process: the rate of a CPU-only run.
- the trainer's worker share (rows "trainer worker ..."): what one DataLoader worker of `deskpro
  train` does per batch; the rest of the same work runs in the training process on the device.
  decode_on=worker: `ShardDataset[batch]` (read + PIL decode; augment_batch on the device);
  decode_on=device (auto on CUDA with JPEG shards): `JpegBatches(dataset)[batch]`, i.e.
  `ShardDataset.read_jpeg` (HDF5 reads of the JPEG bytes, no decoding; `decoded` + augment_batch
  on the device). The "device share" row times that second half on this machine's device (the
  CPU without a GPU: torchvision's CPU decoder; on CUDA nvjpeg), for scale, not per worker.
Each loader runs in one process with one thread, so samples/s is the rate of one CPU worker (the
hand-over between processes is in no row, the official one's neither). The rows are interleaved
and repeated; ratios are per repeat (against that repeat's official run), then min / median.

    python benchmarks/loader.py [--samples 256] [--batches 10] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import statistics
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image

from deskpro.shards import ShardWriter
from deskpro.train.data import JpegBatches, PKBatchSampler, ShardDataset, decoded
from deskpro.train.transforms import AugmentSettings, augment_batch

KINDS = ("body", "lr_face", "hr_face", "mask")  # the official path order
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
            for kind, array in zip(KINDS, (image, lr, hr, parse)):
                Image.fromarray(array).save(official / kind / f"{i:05d}.jpg", quality=95)
    return shards, official


class Random2DTranslation:
    """The official Random2DTranslation (torchreid's, enlarged 1.05x instead of 1.125x), written from
    the recipe notes: python `random`; p=0.5 skip = a bilinear re-resize; else enlarge and crop."""

    def __init__(self, height: int, width: int, p: float = 0.5) -> None:
        self.height, self.width, self.p = height, width, p

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.uniform(0, 1) > self.p:
            return img.resize((self.width, self.height), Image.BILINEAR)
        new_w, new_h = int(round(self.width * 1.05)), int(round(self.height * 1.05))
        resized = img.resize((new_w, new_h), Image.BILINEAR)
        x1 = int(round(random.uniform(0, new_w - self.width)))
        y1 = int(round(random.uniform(0, new_h - self.height)))
        return resized.crop((x1, y1, x1 + self.width, y1 + self.height))


class RandomErasing:
    """The official RandomErasing, from the recipe notes: after Normalize, p=0.5 by python `random`,
    up to 100 attempts, area 0.02-0.4, linear aspect 0.3-1/0.3, fill (0.4914, 0.4822, 0.4465)."""

    mean = (0.4914, 0.4822, 0.4465)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if random.uniform(0, 1) > 0.5:
            return img
        _, height, width = img.shape
        for _ in range(100):
            area = random.uniform(0.02, 0.4) * height * width
            aspect = random.uniform(0.3, 1 / 0.3)
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if w < width and h < height:
                top, left = random.randint(0, height - h), random.randint(0, width - w)
                for c in range(img.shape[0]):
                    img[c, top : top + h, left : left + w] = self.mean[c]
                return img
        return img


@contextlib.contextmanager
def isolate_rng():
    """PyTorch Lightning 1.6's isolate_rng: save torch CPU, numpy and python RNG states, restore."""
    states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])


class OfficialDataset(torch.utils.data.Dataset):
    """A faithful copy of the official training loader (ImageDataset_MultiInput.__getitem__): per
    sample, four image files [body, lr_face, hr_face, mask] each checked to exist, opened with PIL
    and converted to RGB, and transformed by its official Compose inside isolate_rng()."""

    def __init__(self, root: Path, names: list[str], body=(384, 128), face=224):
        from torchvision import transforms as T

        self.root, self.names = root, names
        normalize = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        self.body = T.Compose(
            [
                T.Resize(body),
                T.RandomHorizontalFlip(),
                Random2DTranslation(*body),
                T.ToTensor(),
                normalize,
                RandomErasing(),
            ]
        )
        self.face = T.Compose(
            [
                T.Resize((face, face)),
                T.RandomHorizontalFlip(),
                Random2DTranslation(face, face),
                T.ToTensor(),
                normalize,
                RandomErasing(),
            ]
        )
        self.mask = T.Compose(self.body.transforms[:-2])  # Resize, flip, translate, ToTensor
        self.transforms = [self.body, self.face, self.face, self.mask]
        self.face_size = face

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict:
        out = []
        for kind, transform in zip(KINDS, self.transforms):
            path = self.root / kind / f"{self.names[i]}.jpg"
            exist = path.exists()
            if exist:
                img = Image.open(path).convert("RGB")
            else:
                img = Image.fromarray(np.zeros((self.face_size, self.face_size, 3), np.uint8), "RGB")
            with isolate_rng():
                img = transform(img)
            if not exist:
                img.fill_(0)
            out.append(img)
        body, lr, hr, mask = out
        return {"body": body, "face_lr": lr, "face_hr": hr, "parse": mask}


def _collate(items: list[dict]) -> dict:
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


def time_shards(shards: Path, batches: list[list[int]], augment: bool) -> tuple[float, dict]:
    """Seconds for the batches: the decode_on=worker worker's part (`ShardDataset[batch]`: read_many)
    alone, or with the augmentation on the CPU after it (the same work as the official loader)."""
    dataset = ShardDataset(shards)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for batch in batches:
        out = dataset[batch]
        if augment:
            out = augment_batch(out, generator, AugmentSettings())
    return time.perf_counter() - start, out


def time_device_path(shards: Path, batches: list[list[int]], device: str) -> tuple[float, float]:
    """The trainer's decode_on=device path: (seconds of the worker's share, `JpegBatches[batch]`,
    the bytes-only read; seconds of the loop's share, `decoded` + `augment_batch` on `device`).
    Without a GPU the second runs torchvision's CPU decoder, the same code. The first batch's
    decoded images are checked against `read_many`'s (exact on this build's two CPU decoders)."""
    dataset = ShardDataset(shards)
    worker_side = JpegBatches(dataset)
    generator = torch.Generator(device=device).manual_seed(0)
    worker = device_time = 0.0
    for i, batch in enumerate(batches):
        start = time.perf_counter()
        jpeg = worker_side[batch]
        middle = time.perf_counter()
        images = decoded(jpeg, dataset.reader.options, device)
        augment_batch(images, generator, device=device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        worker += middle - start
        device_time += time.perf_counter() - middle
        if i == 0 and device == "cpu":
            want = dataset[batch]
            if not all(torch.equal(images[key], want[key]) for key in want):
                raise AssertionError("decode_on=device: decoded batch differs from read_many's")
    return worker, device_time


def time_official(official: Path, names: list[str], batches: list[list[int]]) -> tuple[float, dict]:
    """The faithful copy in one process (one worker): per-sample __getitem__, default collate."""
    random.seed(0)
    torch.manual_seed(0)  # a worker's seeding; isolate_rng keeps every sample on the same draws
    dataset = OfficialDataset(official, names)
    start = time.perf_counter()
    for batch in batches:
        out = torch.utils.data.default_collate([dataset[i] for i in batch])
    return time.perf_counter() - start, out


def _stats(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values)}


@click.command()
@click.option("--samples", default=256, show_default=True, help="Samples written in each layout.")
@click.option("--ids", default=32, show_default=True, help="Identities among them.")
@click.option("--p", "p", default=5, show_default=True)
@click.option("--k", "k", default=6, show_default=True)
@click.option("--batches", default=10, show_default=True, help="Batches timed per loader and repeat.")
@click.option("--repeats", default=3, show_default=True, help="Interleaved repeats of every row.")
@click.option(
    "--threads", default=1, show_default=True, help="torch / OpenCV threads (1 = one worker's share)."
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the results as JSON.")
def main(samples, ids, p, k, batches, repeats, threads, json_path) -> None:
    import cv2

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    n = batches * p * k
    rates: dict[str, list[float]] = {}
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
        for path in shards.values():
            time_shards(path, chosen[:2], True)
        time_device_path(shards["jpeg"], chosen[:2], device)  # and checks its output
        outputs = {}
        official_row = "official (faithful copy): decode + augment"
        for _ in range(repeats):  # interleaved, so that other load on the machine hits every row
            seconds, outputs["official"] = time_official(official, names, chosen)
            rates.setdefault(official_row, []).append(n / seconds)
            for codec, path in shards.items():
                seconds, outputs[codec] = time_shards(path, chosen, augment=True)
                rates.setdefault(f"shards {codec}: read + CPU augment", []).append(n / seconds)
            seconds, _ = time_shards(shards["jpeg"], chosen, augment=False)
            rates.setdefault("trainer worker, decode_on=worker", []).append(n / seconds)
            seconds, _ = time_shards(shards["raw"], chosen, augment=False)
            rates.setdefault("trainer worker, raw shards", []).append(n / seconds)
            worker, device_seconds = time_device_path(shards["jpeg"], chosen, device)
            rates.setdefault("trainer worker, decode_on=device", []).append(n / worker)
            rates.setdefault(f"  its device share on {device}", []).append(n / device_seconds)
    for codec in CODECS:
        for key in ("body", "face_lr", "face_hr"):
            if outputs[codec][key].shape != outputs["official"][key].shape:
                raise AssertionError(f"{key}: shapes differ {outputs[codec][key].shape} vs official")
    base = rates[official_row]
    result = {
        "samples_per_s_per_worker": {name: _stats(r) for name, r in rates.items()},
        # ratio per repeat (same repeat's official run), then min / median over repeats
        "ratio_vs_official": {name: _stats([a / b for a, b in zip(r, base)]) for name, r in rates.items()},
        "batch": p * k,
        "batches": batches,
        "repeats": repeats,
        "threads": threads,
        "device": device,
    }
    click.echo(f"{'loader (one worker)':<36} {'samples/s min / med':>20} {'vs official min / med':>22}")
    for name, r in rates.items():
        ratio = result["ratio_vs_official"][name]
        rate = f"{min(r):9.1f} / {statistics.median(r):7.1f}"
        click.echo(f"{name:<36} {rate} {ratio['min']:11.2f}x / {ratio['median']:.2f}x")
    click.echo(f"batch {p}x{k}, {batches} batches x {repeats} repeats, {threads} thread(s)")
    click.echo("official and '+ CPU augment': all the work (decode + augment) in one CPU worker")
    click.echo("trainer worker: one DataLoader worker's share; the decoding left (decode_on=device) and the")
    click.echo("augmentation run in the training process on the device ('its device share': not per worker)")
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
