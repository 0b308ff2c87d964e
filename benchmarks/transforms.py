"""Benchmark: the training transforms of one batch, batched tensors vs the official per-image chain.

Same work on the same in-memory uint8 images (no decoding, no I/O): body 384x128, low-res and
restored faces 224x224, parse map 384x128, P x K = 30 samples, train mode.
- deskpro: `augment_batch` on the whole batch (flip, Random2DTranslation, normalise, RandomErasing
  on body and both faces; flip and translation on the parse map), on the CPU.
- official: per sample and per image, PIL + torchvision as the official loader does
  (RandomHorizontalFlip, Random2DTranslation, ToTensor, Normalize, RandomErasing; the mask without
  the last two), with the RNG state restored before each image (isolate_rng).
Each is repeated; the table gives ms per batch (min, median) and the ratio official / deskpro.

    python benchmarks/transforms.py [--repeats 7] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import json
import math
import random
import statistics
import time
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image

from deskpro.config import IMAGENET_MEAN, IMAGENET_STD
from deskpro.train.transforms import AugmentSettings, augment_batch


def _batch(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    face = rng.integers(0, 256, (n, 224, 224, 3), dtype=np.uint8)
    return {
        "body": torch.from_numpy(rng.integers(0, 256, (n, 384, 128, 3), dtype=np.uint8)),
        "parse": torch.from_numpy(rng.integers(0, 20, (n, 384, 128), dtype=np.uint8)),
        "face_lr": torch.from_numpy(face),
        "face_hr": torch.from_numpy(face.copy()),
        "has_face": torch.ones(n, dtype=torch.bool),
        "label": torch.arange(n),
    }


class _Translate:
    """The official Random2DTranslation (a plain re-implementation for timing)."""

    def __init__(self, h, w):
        self.h, self.w = h, w

    def __call__(self, img):
        if random.uniform(0, 1) > 0.5:
            return img.resize((self.w, self.h), Image.BILINEAR)
        nw, nh = int(round(self.w * 1.05)), int(round(self.h * 1.05))
        big = img.resize((nw, nh), Image.BILINEAR)
        x1, y1 = int(round(random.uniform(0, nw - self.w))), int(round(random.uniform(0, nh - self.h)))
        return big.crop((x1, y1, x1 + self.w, y1 + self.h))


class _Erase:
    """The official RandomErasing (a plain re-implementation for timing)."""

    def __call__(self, img):
        if random.uniform(0, 1) > 0.5:
            return img
        for _ in range(100):
            area = random.uniform(0.02, 0.4) * img.shape[1] * img.shape[2]
            aspect = random.uniform(0.3, 1 / 0.3)
            h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if w < img.shape[2] and h < img.shape[1]:
                x1, y1 = random.randint(0, img.shape[1] - h), random.randint(0, img.shape[2] - w)
                for c, v in enumerate((0.4914, 0.4822, 0.4465)):
                    img[c, x1 : x1 + h, y1 : y1 + w] = v
                return img
        return img


def _official_chains():
    from torchvision import transforms as T

    def chain(h, w, full=True):
        steps = [T.Resize((h, w)), T.RandomHorizontalFlip(), _Translate(h, w), T.ToTensor()]
        return T.Compose(steps + ([T.Normalize(IMAGENET_MEAN, IMAGENET_STD), _Erase()] if full else []))

    body, face, mask = chain(384, 128), chain(224, 224), chain(384, 128, full=False)
    return [body, face, face, mask]


def _official(batch, chains) -> None:
    keys = ("body", "face_lr", "face_hr", "parse")
    images = {k: batch[k].numpy() for k in keys}
    for i in range(len(batch["label"])):
        for key, chain in zip(keys, chains):
            state = (torch.get_rng_state(), random.getstate())
            chain(Image.fromarray(images[key][i]))
            torch.set_rng_state(state[0])
            random.setstate(state[1])


def _time(fn, repeats: int) -> list[float]:
    fn()  # warm up
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


@click.command()
@click.option("--batch", "n", default=30, show_default=True, help="Samples per batch (P x K).")
@click.option("--repeats", default=7, show_default=True)
@click.option("--threads", default=1, show_default=True, help="torch threads (a loader worker uses 1).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the results as JSON.")
def main(n, repeats, threads, json_path) -> None:
    torch.set_num_threads(threads)
    batch = _batch(n)
    chains = _official_chains()
    generator = torch.Generator().manual_seed(0)
    runs = {"deskpro": [], "official": []}
    for _ in range(repeats):  # interleaved, so that background load hits both alike
        runs["deskpro"] += _time(lambda: augment_batch(batch, generator, AugmentSettings()), 1)
        runs["official"] += _time(lambda: _official(batch, chains), 1)
    ratios = [o / d for o, d in zip(runs["official"], runs["deskpro"])]
    result = {
        "batch": n,
        "threads": threads,
        "repeats": repeats,
        "ms": {k: {"min": min(v), "median": statistics.median(v), "all": v} for k, v in runs.items()},
        "official_over_deskpro": {"min": min(ratios), "median": statistics.median(ratios)},
    }
    click.echo(f"{'transforms':<12} {'ms/batch min':>13} {'median':>9}")
    for key, v in result["ms"].items():
        click.echo(f"{key:<12} {v['min']:13.1f} {v['median']:9.1f}")
    r = result["official_over_deskpro"]
    click.echo(
        f"official / deskpro: min {r['min']:.2f}x, median {r['median']:.2f}x ({n} samples, {threads} thread)"
    )
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
