"""Pictures of a trained model and of a run (matplotlib, PNG; no pyplot, so no global figure state).

- attention: per sample, the body image, its parse map, L_att's target and the CSA attention map
  (both at the map's own size, one colour bar) side by side (the paper's Fig. 3), with a caption;
- ranks: per protocol, queries and their top-k gallery, true matches framed green, false red;
- curves: loss terms and learning rate per epoch from a run's log.jsonl.
The panel arrays are returned with the file, so that tests can check what was drawn.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from deskpro.common.files import atomic_path
from deskpro.config import preset
from deskpro.model.deskpro import retrieval_distance
from deskpro.model.losses import attention_target
from deskpro.train.evaluate import build_protocols, extract_features
from deskpro.train.transforms import normalize_uint8

DPI = 100
RANK_TITLE = 0.2  # inches above each row of the rank picture for its titles
INCH = 1 / 60  # figure inches per image pixel: tiles at 100 dpi are drawn about 1.7x the image size


def _inputs(images: np.ndarray, device) -> torch.Tensor:

    return normalize_uint8(torch.from_numpy(images).to(device))


@torch.no_grad()
def attention_panels(
    model, reader, positions, *, cloth_labels, eps: float, target: str = "official", device="cpu"
) -> list[dict]:
    """[{image [H,W,3] uint8, parse [H,W], target [h,w] float (L_att's, at the map's size),
    attention [h,w] float}] per position."""

    arrays = reader.read_many(np.asarray(positions))
    was_training = model.training
    model.eval()
    try:
        _, attention = model.nocloth_net(_inputs(arrays["body"], device), full=False)
    finally:
        model.train(was_training)
    parse = torch.from_numpy(arrays["parse"].astype(np.int64))
    goal = attention_target(parse, tuple(attention.shape[-2:]), cloth_labels, eps, target)[:, 0].numpy()
    return [
        {
            "image": arrays["body"][i],
            "parse": arrays["parse"][i],
            "target": goal[i],
            "attention": attention[i, 0].float().cpu().numpy(),
        }
        for i in range(len(arrays["body"]))
    ]


ATTENTION_TITLES = ("image", "parse\nmap", "L_att\ntarget", "CSA\nattention")


def save_attention(panels: list[dict], path, caption: str | None = None) -> Path:
    """One row per sample: image | parse map | L_att target | CSA attention, a colour bar for the two
    maps (0 to 1), and `caption` (e.g. the attention's means on and off the clothes) underneath."""
    h, w = panels[0]["image"].shape[:2]
    tile_w, tile_h = max(w * INCH, 0.75), max(h * INCH, 1.5)
    extra = 0.5 + (0.45 if caption else 0.0)  # titles above, caption below
    fig = Figure(figsize=(4 * tile_w * 1.2 + 0.9, len(panels) * tile_h * 1.08 + extra), dpi=DPI)
    grid = fig.add_gridspec(len(panels), 5, width_ratios=[1, 1, 1, 1, 0.12], wspace=0.15, hspace=0.08)
    image = None
    for r, panel in enumerate(panels):
        shown = (
            (panel["image"], {}),
            (panel["parse"], {"cmap": "tab20", "vmin": 0, "vmax": 19, "interpolation": "nearest"}),
            (panel["target"], {"cmap": "jet", "vmin": 0, "vmax": 1, "interpolation": "nearest"}),
            (panel["attention"], {"cmap": "jet", "vmin": 0, "vmax": 1, "interpolation": "nearest"}),
        )
        for c, (array, style) in enumerate(shown):
            ax = fig.add_subplot(grid[r, c])
            drawn = ax.imshow(array, extent=(0, w, h, 0), **style)  # maps at their size, stretched
            image = drawn if c == 3 else image
            ax.set_axis_off()
            if r == 0:
                ax.set_title(ATTENTION_TITLES[c], fontsize=7)
    bar = fig.colorbar(image, cax=fig.add_subplot(grid[:, 4]))
    bar.ax.tick_params(labelsize=6)
    bar.set_label("target / attention", fontsize=6)
    bottom = 0.45 / fig.get_figheight() if caption else 0.02
    fig.subplots_adjust(left=0.02, right=0.9, top=1 - 0.5 / fig.get_figheight(), bottom=bottom + 0.02)
    if caption:
        fig.text(0.02, 0.01, caption, fontsize=6, va="bottom", ha="left", wrap=True)
    return _save(fig, path)


@torch.no_grad()
def rank_lists(model, reader, *, queries: int = 4, topk: int = 5, stream: str = "both", device="cpu") -> list:
    """Per protocol of the shards' dataset (multi-shot), the first `queries` queries (one per
    identity) and their top-k gallery: [{protocol, query, gallery [k], correct [k]}]."""

    protocols = build_protocols(reader.index, preset(reader.meta["dataset"]).protocols)
    pids = reader.index.column("pid").to_numpy()
    out = []
    was_training = model.training
    model.eval()
    try:
        for protocol in (p for p in protocols if not p.single_shot):
            _, first = np.unique(pids[protocol.query], return_index=True)
            chosen = protocol.query[np.sort(first)[:queries]]
            q = extract_features(model, reader, chosen, device=device, progress=False, faces=stream != "body")
            g = extract_features(
                model, reader, protocol.gallery, device=device, progress=False, faces=stream != "body"
            )
            if stream == "body":  # 1 - mean cosine over the body chunks, as evaluate's body stream
                dist = 1.0 - (q["body"].flatten(1) @ g["body"].flatten(1).T) / q["body"].shape[1]
            else:  # face and body where both images have a face, body only otherwise
                dist = retrieval_distance(q, g)
            dist = dist.float().cpu().numpy()
            for i, position in enumerate(chosen):
                order = np.argsort(dist[i], kind="stable")[:topk]
                gallery = protocol.gallery[order]
                out.append(
                    {
                        "protocol": protocol.name,
                        "query": int(position),
                        "gallery": gallery.tolist(),
                        "correct": (pids[gallery] == pids[position]).tolist(),
                    }
                )
    finally:
        model.train(was_training)
    return out


def save_ranks(reader, lists: list[dict], path) -> Path:
    """One row per query: the query, then its ranked gallery framed green (match) or red."""
    topk = max(len(item["gallery"]) for item in lists)
    h, w = reader.read(lists[0]["query"])["body"].shape[:2]
    # a title line (RANK_TITLE inches) above every row of tiles, so titles never touch the row above
    fig = Figure(figsize=((topk + 1) * w * 1.2 * INCH, len(lists) * (h * 1.1 * INCH + RANK_TITLE)), dpi=DPI)
    axes = fig.subplots(len(lists), topk + 1, squeeze=False)
    for r, item in enumerate(lists):
        images = reader.read_many([item["query"], *item["gallery"]])["body"]
        for c in range(topk + 1):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(images):
                ax.set_axis_off()
                continue
            ax.imshow(images[c])
            colour = "black" if c == 0 else ("limegreen" if item["correct"][c - 1] else "red")
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(1.0 if c == 0 else 2.5)
            ax.set_title(f"{item['protocol']} query" if c == 0 else f"#{c}", fontsize=6, pad=2)
    top, gap = 1 - RANK_TITLE / fig.get_figheight(), RANK_TITLE / (h * INCH)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=top, wspace=0.1, hspace=gap)
    return _save(fig, path)


def read_log(run_dir) -> list[dict]:
    """The run's log.jsonl records; ValueError naming the file when there is none or it is empty."""
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training log (not a run directory?)")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not records:
        raise ValueError(f"{path}: empty training log (no epoch finished)")
    return records


LOSS_TERMS = ("total", "ce", "triplet", "att", "fkp", "ce_body", "ce_face")


def save_curves(run_dir, path) -> tuple[Path, dict[str, list[float]]]:
    """Loss terms (left) and learning rate (right) per epoch; returns the file and the plotted series."""
    records = read_log(run_dir)
    epochs = [r["epoch"] for r in records]
    series = {k: [r[k] for r in records] for k in LOSS_TERMS if all(k in r for r in records)}
    series["lr"] = [r["lr"] for r in records]
    fig = Figure(figsize=(8, 3), dpi=DPI)
    loss_ax, lr_ax = fig.subplots(1, 2)
    for key, values in series.items():
        if key != "lr":
            loss_ax.plot(epochs, values, marker="o", markersize=3, label=key)
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss (epoch mean)")
    loss_ax.legend(fontsize=7)
    lr_ax.plot(epochs, series["lr"], marker="o", markersize=3)
    lr_ax.set_xlabel("epoch")
    lr_ax.set_ylabel("learning rate")
    fig.suptitle(str(Path(run_dir).name), fontsize=9)
    fig.tight_layout()
    return _save(fig, path), series


def _save(fig: Figure, path) -> Path:

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
