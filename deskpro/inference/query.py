"""What `deskpro search` does with its arguments: queries from images or features tables, the ranking,
its JSON and an optional picture.

A QUERY is an image file, a folder of images (searched recursively), a features table (all its
rows), or `TABLE.parquet#SAMPLE_ID` (one row). Images are embedded with the gallery's own
checkpoint and detector (the paths and options stored in the gallery table; `--checkpoint` and
`--detect-weights` when they have moved); a checkpoint whose sha256 differs is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from deskpro.common.files import atomic_path, check_output_path, sha256_file
from deskpro.common.images import ImageDecodeError, read_image_rgb
from deskpro.inference.extractor import FeatureExtractor, list_folder
from deskpro.inference.features import FeaturesError, is_features_file, read_info
from deskpro.inference.search import (
    Queries,
    check_same_model,
    format_report,
    queries_from_table,
    report,
    top_k,
    write_json,
)

TILE = (128, 64)  # height, width of each picture tile


def _split_table_row(query: str) -> tuple[Path, str] | None:
    if "#" not in query:
        return None
    path, _, sample_id = query.rpartition("#")
    return (Path(path), sample_id) if path and Path(path).is_file() else None


def _extractor(gallery_info: dict, checkpoint: str | None, detect_weights: str | None, device: str):
    path = checkpoint or gallery_info.get("checkpoint")
    if not path or not Path(path).is_file():
        raise FileNotFoundError(
            f"--checkpoint {path}: not found; give the checkpoint the gallery was embedded with"
        )
    if sha256_file(path) != gallery_info.get("checkpoint_sha256"):
        raise FeaturesError(
            f"--checkpoint {path}: not the checkpoint the gallery was embedded with (sha256 differs)"
        )
    detect = dict(gallery_info.get("detect") or {})
    weights = detect_weights or detect.pop("weights", None)
    detect.pop("weights", None)
    backend = detect.pop("backend", None)
    for key in ("device", "channels_last"):
        detect.pop(key, None)
    root = gallery_info.get("root") if gallery_info.get("input_kind") != "shards" else None
    return FeatureExtractor(path, backend, weights, device=device, root=root, **detect)


def _under_root(path: str, root: str | None) -> str:
    """An image path as the gallery's extractor reads it: absolute, or relative to the gallery's root
    when inside it (the oracle detector looks images up by that path)."""
    full = Path(path).resolve()
    if root is not None and Path(root).resolve() in full.parents:
        return full.relative_to(Path(root).resolve()).as_posix()
    return str(full)


def build_queries(
    queries: list[str], gallery: str, checkpoint: str | None, detect_weights: str | None, device: str
) -> Queries:
    """Every QUERY argument as query features, in the order given."""
    parts: list[Queries] = []
    images: list[str] = []
    info = read_info(gallery)

    def flush_images() -> None:
        if not images:
            return
        out = _extractor(info, checkpoint, detect_weights, device)(list(images))
        bad = [e for e in out.error if e is not None]
        if bad:
            raise ImageDecodeError(f"query {bad[0]}")
        parts.append(Queries(out.body, out.face, out.has_face, list(out.sample_id), list(out.path)))
        images.clear()

    for query in queries:
        row = _split_table_row(query)
        if row is not None or (Path(query).is_file() and is_features_file(Path(query))):
            flush_images()
            path, ids = (row[0], [row[1]]) if row is not None else (Path(query), None)
            check_same_model(gallery, path)
            parts.append(queries_from_table(path, ids))
        elif Path(query).is_dir():
            images.extend(_under_root(str(Path(query) / p), info.get("root")) for p in list_folder(query))
        elif Path(query).is_file():
            images.append(_under_root(query, info.get("root")))
        else:
            raise FileNotFoundError(f"QUERY {query}: no such image, folder or features table")
    flush_images()
    return Queries(
        np.concatenate([p.body for p in parts]),
        np.concatenate([p.face for p in parts]),
        np.concatenate([p.has_face for p in parts]),
        [n for p in parts for n in p.names],
        [n for p in parts for n in p.paths],
    )


def _tile(path: str | None, root: str | None, caption: str, colour: tuple) -> Image.Image:
    h, w = TILE
    tile = Image.new("RGB", (w, h + 14), (255, 255, 255))
    try:
        full = Path(path) if root is None or Path(path).is_absolute() else Path(root) / path
        tile.paste(Image.fromarray(read_image_rgb(full)).resize((w, h)), (0, 0))
    except (ImageDecodeError, TypeError):
        ImageDraw.Draw(tile).rectangle([0, 0, w - 1, h - 1], fill=(200, 200, 200))
    draw = ImageDraw.Draw(tile)
    draw.rectangle([0, 0, w - 1, h - 1], outline=colour, width=2)
    draw.text((2, h + 1), caption[:12], fill=(0, 0, 0))
    return tile


def save_picture(data: dict, path: str | os.PathLike) -> Path:
    """Each query (blue frame) beside its ranked results, captioned with their distances."""
    h, w = TILE
    rows = data["queries"]
    k = max((len(q["results"]) for q in rows), default=0)
    sheet = Image.new("RGB", ((k + 1) * (w + 4), len(rows) * (h + 18)), (255, 255, 255))
    for r, q in enumerate(rows):
        y = r * (h + 18)
        sheet.paste(_tile(q["path"] or None, None, "query", (40, 80, 220)), (0, y))
        for j, hit in enumerate(q["results"]):
            tile = _tile(hit["path"] or None, data.get("root"), f"{hit['distance']:.3f}", (120, 120, 120))
            sheet.paste(tile, ((j + 1) * (w + 4), y))
    path = Path(path)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path


def run_search(
    gallery: str,
    queries: list[str],
    *,
    k: int = 10,
    checkpoint: str | None = None,
    detect_weights: str | None = None,
    device: str = "auto",
    json_path: str | None = None,
    picture: str | None = None,
    force: bool = False,
) -> tuple[dict, str]:
    """(the JSON-ready results, the printed table) of QUERY... against the gallery FEATURES."""
    read_info(gallery)
    inputs = [gallery, *(q.rpartition("#")[0] or q for q in queries)]
    if picture is not None:
        check_output_path(
            picture,
            inputs=inputs,
            is_ours=lambda p: p.suffix.lower() == ".png",
            force=force,
            flag="--picture",
        )
    built = build_queries(queries, gallery, checkpoint, detect_weights, device)
    data = report(built, top_k(built, gallery, k), gallery)
    if json_path is not None:
        write_json(data, json_path, inputs, force)
    if picture is not None:
        save_picture(data, picture)
    return data, format_report(data)
