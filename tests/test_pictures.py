"""Pictures: the attention figure draws the model's own CSA map, rank lists frame true matches, the
training curves follow log.jsonl, and the commands write PNGs of the expected size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _train_utils import write_tiny_shards
from click.testing import CliRunner
from PIL import Image

from deskpro.cli import main
from deskpro.config import CLOTH_LABELS, TrainConfig
from deskpro.experiments import pictures, visualize
from deskpro.model import checkpoint
from deskpro.model.deskpro import DeSKPro
from deskpro.model.losses import attention_target
from deskpro.train.data import open_reader
from deskpro.train.transforms import normalize_uint8


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_tiny_shards(tmp_path_factory.mktemp("pictures") / "shards", dataset="prcc")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DeSKPro(4).eval()


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory, model, shards):
    config = TrainConfig.for_dataset("prcc", phase="deskpro", body_size=(64, 32), face_size=32)
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    return checkpoint.save(
        path,
        model,
        config=config.to_dict(),
        num_classes=4,
        class_pids=[1, 2, 3, 4],
        preprocessing=checkpoint.preprocessing_constants((64, 32), 32),
    )


def _png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_attention_panel_is_the_models_map(model, shards, tmp_path) -> None:
    reader = open_reader(shards)
    positions = visualize.sample_positions(reader, 3)
    panels = pictures.attention_panels(model, reader, positions, cloth_labels=CLOTH_LABELS["lip"], eps=0.1)
    arrays = reader.read_many(positions)
    with torch.no_grad():
        _, expected = model.nocloth_net(normalize_uint8(torch.from_numpy(arrays["body"])), full=False)
    assert len(panels) == 3
    for i, panel in enumerate(panels):
        np.testing.assert_array_equal(panel["attention"], expected[i, 0].numpy())
        np.testing.assert_array_equal(panel["image"], arrays["body"][i])
        parse = torch.from_numpy(arrays["parse"][i : i + 1].astype(np.int64))
        target = attention_target(parse, expected.shape[-2:], CLOTH_LABELS["lip"], 0.1)[0, 0].numpy()
        np.testing.assert_array_equal(panel["target"], target)  # L_att's own target, at the map's size
        assert panel["target"].shape == panel["attention"].shape
    path = pictures.save_attention(panels, tmp_path / "a.png", caption="cloth 0.10, body 0.90")
    h, w = arrays["body"].shape[1:3]
    tile_w, tile_h = max(w * pictures.INCH, 0.75), max(h * pictures.INCH, 1.5)
    size = (4 * tile_w * 1.2 + 0.9, 3 * tile_h * 1.08 + 0.95)  # four tiles, colour bar; titles, caption
    assert _png_size(path) == tuple(round(v * pictures.DPI) for v in size)


def test_sample_positions_are_distinct_test_identities(shards) -> None:
    reader = open_reader(shards)
    positions = visualize.sample_positions(reader, 10)
    pids = reader.index.column("pid").to_numpy()[positions]
    splits = reader.index.column("split").to_numpy(zero_copy_only=False)[positions]
    assert len(set(pids)) == len(pids) == 3 and set(splits) == {"query"}


def test_rank_lists_mark_true_matches(model, shards, tmp_path) -> None:
    reader = open_reader(shards)
    lists = pictures.rank_lists(model, reader, queries=2, topk=3, stream="body")
    pids = reader.index.column("pid").to_numpy()
    assert {item["protocol"] for item in lists} == {"cc", "sc"}
    for item in lists:
        assert len(item["gallery"]) == 3
        assert item["correct"] == [bool(pids[g] == pids[item["query"]]) for g in item["gallery"]]
    assert all(len(item["distance"]) == 3 and item["distance"] == sorted(item["distance"]) for item in lists)
    path = pictures.save_ranks(reader, lists, tmp_path / "r.png")
    # tiles at 64x32 are drawn at full scale (under RANK_TILE_HEIGHT), a line of labels above each,
    # and the picture is at least 4 inches wide for those labels
    assert _png_size(path) == (
        round(max(4 * 32 * 1.2 * pictures.INCH, 4.0) * 100),
        round((len(lists) * (64 * 1.25 * pictures.INCH + 0.25) + 0.3) * 100),
    )


def test_curves_follow_the_log(tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    records = [
        {
            "epoch": e,
            "step": 2 * e,
            "lr": 1e-3 / e,
            "images_per_s": 1.0,
            "total": 3.0 - e,
            "ce": 2.0,
            "att": 0.1,
        }
        for e in (1, 2, 3)
    ]
    (run / "log.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    result = CliRunner().invoke(main, ["plot", str(run)])
    assert result.exit_code == 0, result.output
    assert _png_size(run / "curves.png") == (800, 300)
    _, series = pictures.save_curves(run, tmp_path / "c.png")
    assert series == {
        "total": [2.0, 1.0, 0.0],
        "ce": [2.0] * 3,
        "att": [0.1] * 3,
        "lr": [1e-3, 5e-4, 1e-3 / 3],
    }
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = CliRunner().invoke(main, ["plot", str(empty)])
    assert bad.exit_code == 1 and "log.jsonl: no training log" in bad.output


def test_visualize_commands_write_pngs(checkpoint_path, shards, tmp_path) -> None:
    out = tmp_path / "pics"
    for kind in ("attention", "ranks"):
        result = CliRunner().invoke(
            main, ["visualize", kind, str(checkpoint_path), str(shards), "-o", str(out)]
        )
        assert result.exit_code == 0, result.output
        assert _png_size(out / f"{kind}.png")[0] > 0 and str(out / f"{kind}.png") in result.output
