"""Pictures of a trained model and of a run (matplotlib, PNG; no pyplot, so no global figure state).

- attention: per sample, the body image, its parse map, L_att's target and the CSA attention map
  (both at the map's own size, one colour bar) side by side (the paper's Fig. 3), with a caption;
- ranks: per protocol, queries and their top-k gallery, true matches framed green, false red;
- curves: loss terms and learning rate per epoch from a run's log.jsonl.
The panel arrays are returned with the file, so that tests can check what was drawn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from deskpro.common.files import atomic_path, check_output_path
from deskpro.config import preset
from deskpro.model.deskpro import retrieval_distance
from deskpro.model.losses import attention_target
from deskpro.train import rundir
from deskpro.train.evaluate import build_protocols, extract_features
from deskpro.train.transforms import normalize_uint8

DPI = 100
INCH = 1 / 60  # figure inches per image pixel: tiles at 100 dpi are drawn about 1.7x the image size
RANK_TILE_HEIGHT = 200  # px: taller bodies are drawn smaller in the ranks picture (a small file)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# A run's own files: never replaced by a picture (plot -o RUN/log.jsonl would end the run's resume).
RUN_FILES = ("log.jsonl", "config.json", "checkpoint.pt", "best.pt", "train_state.pt")


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
                        "distance": dist[i, order].round(4).tolist(),
                    }
                )
    finally:
        model.train(was_training)
    return out


def _tile_label(index, row: int) -> str:
    """pid, camera and clothes of one index row, as torchreid's visrank names its tiles."""
    return f"pid {index['pid'][row]} cam {index['camid'][row]}\nclothes {index['clothes_id'][row]}"


def save_ranks(reader, lists: list[dict], path) -> Path:
    """One row per query: the query, then its ranked gallery framed green (match) or red; each tile
    labelled with pid, camera and clothes, the gallery tiles with rank and distance too."""
    topk = max(len(item["gallery"]) for item in lists)
    h, w = reader.read(lists[0]["query"])["body"].shape[:2]
    scale = min(1.0, RANK_TILE_HEIGHT / (h * INCH * DPI))  # tall bodies drawn smaller
    tile_w, tile_h = w * 1.2 * INCH * scale, h * 1.25 * INCH * scale + 0.25
    fig = Figure(figsize=(max((topk + 1) * tile_w, 4.0), len(lists) * tile_h + 0.3), dpi=DPI)
    axes = fig.subplots(len(lists), topk + 1, squeeze=False)
    index = {
        name: reader.index.column(name).to_numpy(zero_copy_only=False)
        for name in ("pid", "camid", "clothes_id")
    }
    for r, item in enumerate(lists):
        rows = [item["query"], *item["gallery"]]
        images = reader.read_many(rows)["body"]
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
            label = _tile_label(index, rows[c])
            if c == 0:
                title = f"{item['protocol']} query\n{label}"
            else:
                distance = item.get("distance", [None] * len(item["gallery"]))[c - 1]
                shown = "" if distance is None else f" d {distance:.3f}"
                title = f"#{c}{shown}\n{label}"
            ax.set_title(title, fontsize=5)
    fig.tight_layout(pad=0.2)
    return _save(fig, path)


def read_log(run_dir) -> list[dict]:
    """The run's log.jsonl records; ValueError naming the file when there is none or it is empty."""
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training log (not a run directory?)")
    records = rundir.read_log(path)  # a torn last line (a kill while appending) is left out
    if not records:
        raise ValueError(f"{path}: empty training log (no epoch finished)")
    return records


LOSS_TERMS = ("total", "ce", "triplet", "att", "fkp", "ce_body", "ce_face")


def save_curves(run_dir, path, *, force: bool = False) -> tuple[Path, dict[str, list[float]]]:
    """Loss terms (left) and learning rate (right) per epoch; returns the file and the plotted series.

    `path` is checked before anything is drawn: never one of the run's files, never a file that is
    not a PNG unless `force`.
    """
    inputs = [Path(run_dir) / name for name in RUN_FILES]
    check_output_path(path, inputs=inputs, is_ours=is_png, force=force, flag="-o")
    records = read_log(run_dir)
    epochs = [r["epoch"] for r in records]
    series = {k: [r[k] for r in records] for k in LOSS_TERMS if all(k in r for r in records)}
    series["lr"] = [r["lr"] for r in records]
    fig = Figure(figsize=(8, 3), dpi=DPI)
    loss_ax, lr_ax = fig.subplots(1, 2)
    for key, values in series.items():
        if key != "lr":
            loss_ax.plot(epochs, values, marker="o", markersize=3, label=key)
    for ax in (loss_ax, lr_ax):  # epochs are whole numbers: no 0.5 ticks on a short run
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss (epoch mean)")
    loss_ax.legend(fontsize=7)
    lr_ax.plot(epochs, series["lr"], marker="o", markersize=3)
    lr_ax.set_xlabel("epoch")
    lr_ax.set_ylabel("learning rate")
    fig.suptitle(str(Path(run_dir).name), fontsize=9)
    fig.tight_layout()
    return _save(fig, path, force=True), series  # checked above, with the run's files


def is_png(path) -> bool:
    """Whether `path` is a PNG file (a picture this module may replace)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(PNG_MAGIC)) == PNG_MAGIC
    except OSError:
        return False


def _save(fig: Figure, path, *, force: bool = False) -> Path:

    path = check_output_path(path, is_ours=is_png, force=force, flag="-o")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
