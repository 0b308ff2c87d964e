"""Test helpers for inference: a synthetic set packed into raw shards, and a tiny checkpoint of it."""

from __future__ import annotations

from pathlib import Path

import torch
from _pipeline_utils import LOOSE_POLICY, make_dataset

from deskpro.config import TrainConfig
from deskpro.model import checkpoint
from deskpro.model.deskpro import DeSKPro
from deskpro.pipeline.options import StageRunOptions
from deskpro.pipeline.runner import run_stage
from deskpro.shards.pack import pack
from deskpro.train.data import open_reader

BODY_SIZE = (64, 32)
FACE_SIZE = 32
LOCAL = StageRunOptions(executor="local", progress=False, part_size=8)


def packed_synthetic(base: Path, with_parse: bool = True) -> dict[str, Path]:
    """A synthetic dataset, its detect (oracle) and parse (oracle) stages and raw-codec shards."""
    root, manifest = make_dataset(base)
    work = base / "work"
    # min_size 6.5 px: the 3 smallest of the 18 true faces (6.05 px and below) are left out
    detect = {"backend": "oracle", "face_lr_size": 24, **LOOSE_POLICY, "min_size": 6.5}
    run_stage("detect", manifest, work, detect, LOCAL)
    if with_parse:
        run_stage("parse", manifest, work, {"backend": "oracle"}, LOCAL)
    shards = base / "shards"
    summary = pack(work, shards, body_size=BODY_SIZE, face_size=FACE_SIZE, codec="raw", progress=False)
    assert with_parse or "no parse stage: no parse maps written" in summary.format()
    return {"root": root, "manifest": manifest, "work": work, "shards": shards}


def tiny_checkpoint(path: Path, shards: Path, seed: int = 0, recipe: str = "deskpro") -> Path:
    """A seeded narrow DeSKPro saved as training saves it: sizes and the shards' meta inside."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = DeSKPro(4, backbone="osnet_x0_25").eval()
    reader = open_reader(shards)
    config = TrainConfig.for_dataset("synthetic", body_size=BODY_SIZE, face_size=FACE_SIZE).to_dict()
    config["recipe"] = recipe
    preprocessing = checkpoint.preprocessing_constants(BODY_SIZE, FACE_SIZE)
    preprocessing["shards_meta"] = reader.meta
    return checkpoint.save(
        path, model, config=config, num_classes=4, class_pids=[0, 1, 2, 3], preprocessing=preprocessing
    )
