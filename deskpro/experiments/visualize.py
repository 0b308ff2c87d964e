"""Pictures from a checkpoint and a shard set: choose samples, load the model, write the PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deskpro.common.torch_utils import resolve_device
from deskpro.config import CLOTH_LABELS, TrainConfig
from deskpro.experiments import pictures
from deskpro.experiments.attention_contrast import attention_contrast
from deskpro.model import checkpoint
from deskpro.train.data import open_reader


def _load(checkpoint_path, device, reader):

    model = checkpoint.load(checkpoint_path).to(resolve_device(device))
    if not hasattr(model, "nocloth_net"):
        raise ValueError(f"{checkpoint_path}: a face teacher, not a DeSKPro model (no attention, no body)")
    checkpoint.check_shard_sizes(model.checkpoint_meta, reader.options, checkpoint_path, reader.shards_dir)
    return model


def _method(model, reader) -> tuple[tuple[int, ...], float, str]:
    """Cloth labels, eps and L_att's target of the checkpoint's config (else the shards' preset)."""

    config = (getattr(model, "checkpoint_meta", None) or {}).get("config")
    if config:
        config = TrainConfig.from_dict(config)
    else:
        config = TrainConfig.for_dataset(reader.meta["dataset"])
    return CLOTH_LABELS[config.label_set], config.method.eps, config.att_target


def sample_positions(reader, count: int) -> np.ndarray:
    """`count` test rows of different identities (queries first), in index order: a fixed choice."""
    splits = reader.index.column("split").to_numpy(zero_copy_only=False)
    pids = reader.index.column("pid").to_numpy()
    rows = np.flatnonzero(np.isin(splits, ["query", "test"]))
    if rows.size == 0:
        rows = np.flatnonzero(splits != "train")
    if rows.size == 0:
        raise ValueError(f"{reader.shards_dir}: no test rows to draw")
    _, first = np.unique(pids[rows], return_index=True)
    return rows[np.sort(first)[:count]]


def attention_caption(contrast: dict) -> str:
    """The numbers under an attention picture: the map's means by cell class over the test split."""
    return (
        f"mean attention over the {contrast['images']} test images: cloth cells {contrast['cloth']:.2f}, "
        f"other body cells {contrast['body']:.2f}, background {contrast['background']:.2f} "
        f"(off - on clothes {contrast['contrast']:+.2f}); L_att {contrast['l_att']:.3f}"
    )


def checkpoint_attention(checkpoint_path, shards, *, device="cpu") -> dict:
    """`attention_contrast` of a checkpoint's body stream on the shards' test split, with its own
    cloth labels, eps and L_att target."""
    reader = open_reader(shards)
    device = resolve_device(device)
    model = _load(checkpoint_path, device, reader)
    cloth_labels, eps, target = _method(model, reader)
    return attention_contrast(model, reader, cloth_labels=cloth_labels, eps=eps, target=target, device=device)


def attention_picture(checkpoint_path, shards, out_dir, *, samples: int = 4, device="cpu") -> Path:
    """out_dir/attention.png: samples of the test split, and the test split's attention figures."""
    reader = open_reader(shards)
    device = resolve_device(device)
    model = _load(checkpoint_path, device, reader)
    cloth_labels, eps, target = _method(model, reader)
    method = {"cloth_labels": cloth_labels, "eps": eps, "target": target, "device": device}
    panels = pictures.attention_panels(model, reader, sample_positions(reader, samples), **method)
    caption = attention_caption(attention_contrast(model, reader, **method))
    return pictures.save_attention(panels, Path(out_dir) / "attention.png", caption)


def ranks_picture(checkpoint_path, shards, out_dir, *, queries: int = 3, topk: int = 5, device="cpu") -> Path:

    reader = open_reader(shards)
    device = resolve_device(device)
    model = _load(checkpoint_path, device, reader)
    meta = getattr(model, "checkpoint_meta", None) or {}
    stream = "body" if (meta.get("config") or {}).get("phase") == "baseline" else "both"
    lists = pictures.rank_lists(model, reader, queries=queries, topk=topk, stream=stream, device=device)
    if not lists:
        raise ValueError(f"{shards}: no query/gallery rows to rank")
    return pictures.save_ranks(reader, lists, Path(out_dir) / "ranks.png")
