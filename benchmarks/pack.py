"""Benchmark: pack's peak memory and speed at 1x and 4x the data (memory must stay flat).

A work directory is built by hand in the stage-output format (photo-like 256x128 JPEG images,
their parse PNGs, 128x128 low-res face PNGs, 256x256 restored face JPEGs, parts of 256 rows), then
`deskpro.shards.pack.pack` runs in a fresh child process per size and repeat; the child's peak RSS
(getrusage) and wall time are recorded. The slope between the sizes is the memory cost per image
(flat = about 0 KB/image; before streaming it was about +39 KB/image).

    python benchmarks/pack.py [--images 500] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from deskpro.common.images import encode_jpeg, encode_png
from deskpro.manifests import SCHEMA, write_manifest
from deskpro.pipeline.plan import manifest_fingerprint
from deskpro.pipeline.stages import DETECT_SCHEMA, PARSE_SCHEMA, RESTORE_SCHEMA

PART = 256


def _smooth(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    import cv2

    coarse = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
    image = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    return np.clip(image + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)


def make_work(base: Path, images: int, seed: int = 0) -> Path:
    """Dataset root + work directory with complete parse/detect/restore outputs for `images` images."""
    rng = np.random.default_rng(seed)
    root, work = base / "root", base / "work"
    manifest_rows, parts = [], {"parse": [], "detect": [], "restore": []}
    # A handful of distinct payloads, reused: building is not what is measured.
    bodies = [_smooth(rng, 256, 128) for _ in range(8)]
    labels = [np.repeat(rng.integers(0, 20, (8, 4), dtype=np.uint8), 32, 0).repeat(32, 1) for _ in range(8)]
    lr = [encode_png(_smooth(rng, 128, 128)) for _ in range(8)]
    hr = [encode_jpeg(_smooth(rng, 256, 256), 95) for _ in range(8)]
    for i in range(images):
        rel = f"imgs/{i // 100:03d}/{i:06d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(encode_jpeg(bodies[i % 8], 95))
        sid = rel.removesuffix(".jpg")
        manifest_rows.append(
            dict(
                sample_id=sid,
                path=rel,
                pid=i // 10,
                camid=i % 3,
                clothes_id=-1,
                split="train",
                subset="train",
            )
        )
        parts["parse"].append(
            dict(sample_id=sid, parse_png=encode_png(labels[i % 8]), label_set="lip", error=None)
        )
        parts["detect"].append(
            dict(
                sample_id=sid,
                has_face=True,
                face_score=0.99,
                face_box=[1.0, 2.0, 30.0, 40.0],
                landmarks=[float(v) for v in range(10)],
                face_lr_png=lr[i % 8],
                error=None,
            )
        )
        parts["restore"].append(dict(sample_id=sid, face_hr_jpg=hr[i % 8], error=None))
    manifest = pa.Table.from_pylist(manifest_rows, schema=SCHEMA).replace_schema_metadata(
        {b"dataset": b"synthetic", b"root": str(root).encode(), b"scan_time": b"2026-01-01T00:00:00+00:00"}
    )
    write_manifest(manifest, work / "manifest.parquet")
    fp = manifest_fingerprint(manifest, str(root))
    schemas = {"parse": PARSE_SCHEMA, "detect": DETECT_SCHEMA, "restore": RESTORE_SCHEMA}
    detect_fp = {"stage": "detect", "manifest": fp, "upstream": None}
    for name, rows in parts.items():
        folder = work / "stages" / name
        folder.mkdir(parents=True)
        for p in range(0, images, PART):
            table = pa.Table.from_pylist(rows[p : p + PART], schema=schemas[name])
            pq.write_table(table, folder / f"part-{p // PART:05d}.parquet")
        upstream = detect_fp if name == "restore" else None
        fingerprint = {"stage": name, "manifest": fp, "upstream": upstream}
        (folder / "stage.json").write_text(json.dumps({"fingerprint": fingerprint, "complete": True}))
    return work


def _child(work: str, out: str, codec: str) -> None:
    """Run pack once in this process and print its peak RSS and time as JSON."""
    from deskpro.shards.pack import pack

    start = time.perf_counter()
    summary = pack(work, out, codec=codec, progress=False)
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_kb": peak_kb, "rows": summary.rows, "bytes": summary.bytes}))


@click.command()
@click.option("--images", default=500, show_default=True, help="Images at 1x (4x is four times that).")
@click.option("--repeats", default=3, show_default=True)
@click.option("--codec", default="jpeg", show_default=True, type=click.Choice(["jpeg", "raw"]))
@click.option("--json", "json_path", type=click.Path(dir_okay=False))
@click.option("--child", nargs=2, hidden=True, type=str)
def main(images, repeats, codec, json_path, child) -> None:
    if child:
        _child(*child, codec)
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for scale in (1, 4):
            n = images * scale
            work = make_work(Path(tmp) / f"x{scale}", n)
            runs = []
            for r in range(repeats):
                out = Path(tmp) / f"x{scale}-shards-{r}"
                cmd = [sys.executable, __file__, "--codec", codec, "--child", str(work), str(out)]
                runs.append(
                    json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
                )
            peaks = [run["peak_kb"] for run in runs]
            rates = [n / run["seconds"] for run in runs]
            results[f"x{scale}"] = {
                "images": n,
                "peak_rss_mb": {"min": min(peaks) / 1024, "median": statistics.median(peaks) / 1024},
                "images_per_s": {"min": min(rates), "median": statistics.median(rates)},
                "kb_per_sample": runs[0]["bytes"] / n / 1000,
            }
    one, four = results["x1"], results["x4"]
    slope = (
        (four["peak_rss_mb"]["median"] - one["peak_rss_mb"]["median"])
        * 1024
        / (four["images"] - one["images"])
    )
    results["rss_kb_per_extra_image"] = slope
    header = f"{'size':<6} {'images':>7} {'peak RSS MB (min/med)':>22} {'images/s (min/med)':>20}"
    click.echo(f"{header} {'KB/sample':>10}")
    for key in ("x1", "x4"):
        r = results[key]
        rss, rate = r["peak_rss_mb"], r["images_per_s"]
        click.echo(
            f"{key:<6} {r['images']:7d} {rss['min']:10.1f} / {rss['median']:7.1f}"
            f" {rate['min']:10.1f} / {rate['median']:6.1f} {r['kb_per_sample']:10.1f}"
        )
    click.echo(
        f"peak RSS per extra image: {slope:+.2f} KB (codec {codec}, {repeats} repeats, one child each)"
    )
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
