"""Evaluation protocols, streams, single-shot trials and the evaluate command."""

from __future__ import annotations

import json

import numpy as np
import pytest


def _index(pids, cams, clothes, splits, subsets):
    import pyarrow as pa

    n = len(pids)
    return pa.table(
        {
            "pid": pa.array(pids, pa.int64()),
            "camid": pa.array(cams, pa.int64()),
            "clothes_id": pa.array(clothes, pa.int64()),
            "split": splits,
            "subset": subsets,
            "has_face": [True] * n,
        }
    )


def test_protocols_streams_and_single_shot():
    import torch

    from deskpro.train.evaluate import build_protocols, evaluate_features, single_shot_columns

    # PRCC layout: 3 ids; gallery A (2 images each), query_same B, query_diff C.
    pids, cams, clothes, splits, subsets = [], [], [], [], []
    for pid in range(3):
        for cam, split, subset in (
            (0, "gallery", "gallery"),
            (0, "gallery", "gallery"),
            (1, "query", "query_same"),
            (2, "query", "query_diff"),
        ):
            pids.append(pid), cams.append(cam), clothes.append(pid * 2 + (cam == 2))
            splits.append(split), subsets.append(subset)
    index = _index(pids, cams, clothes, splits, subsets)
    protocols = build_protocols(index, ("cc", "sc"))
    assert [p.name for p in protocols] == ["cc", "cc-single", "sc", "sc-single"]
    assert [p.mode for p in protocols] == ["cc", "cc", "sc", "sc"]
    n = len(pids)
    # Face chunks identify the person; body chunks are the clothes (so cross-clothes body fails).
    ident = torch.nn.functional.one_hot(torch.tensor(pids), 8).float()
    clothes_code = torch.nn.functional.one_hot(torch.tensor(clothes), 8).float()
    has_face = torch.ones(n, dtype=torch.bool)
    has_face[11] = False  # the last id's cross-clothes query has no face: body only for it
    features = {
        "face": ident[:, None, :].repeat(1, 7, 1),
        "body": clothes_code[:, None, :].repeat(1, 7, 1),
        "has_face": has_face,
    }
    features["face"][~has_face] = 0
    rows = {(r.protocol, r.stream): r for r in evaluate_features(features, index, protocols, trials=3)}
    assert (
        rows[("cc", "face")].r1 == 1.0 and rows[("cc", "face")].queries == 2
    )  # the face-less query left out
    # Clothes differ: every body distance ties, so gallery order decides and only id 0 ranks first.
    assert rows[("cc", "body")].r1 == pytest.approx(1 / 3)
    assert rows[("cc", "both")].r1 == pytest.approx(2 / 3)  # the face-less query falls back to body
    assert rows[("sc", "body")].r1 == 1.0
    assert rows[("cc-single", "face")].gallery == 3 and rows[("cc-single", "face")].trials == 3
    cols = single_shot_columns(np.array([5, 5, 7, 7, 7, 9]), np.random.default_rng(0))
    assert sorted(np.array([5, 5, 7, 7, 7, 9])[cols].tolist()) == [5, 7, 9]


def _one_line_error(result, *words):
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [
        line
        for line in result.output.splitlines()
        if line.strip() and not line.startswith(("Usage:", "Try "))
    ]
    assert len(lines) == 1 and lines[0].startswith("Error"), result.output
    for word in words:
        assert word in lines[0], result.output


def test_cli_json_never_writes_over_an_input_or_a_foreign_file(tmp_path):
    from click.testing import CliRunner

    from deskpro.cli import main
    from deskpro.train.evaluate import is_report

    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"not really a checkpoint")
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "manifest.json").write_text("{}")
    base = ["evaluate", str(shards), "--checkpoint", str(ckpt), "--no-progress", "--json"]
    runner = CliRunner()
    for target, flags in ((ckpt, []), (ckpt, ["--force"]), (shards / "manifest.json", ["--force"])):
        before = target.read_bytes()
        _one_line_error(runner.invoke(main, [*base, str(target), *flags]), "--json", "input")
        assert target.read_bytes() == before
    other = tmp_path / "notes.txt"
    other.write_text("mine")
    _one_line_error(runner.invoke(main, [*base, str(other)]), "--json", "--force")
    assert other.read_text() == "mine"
    # With --force the check passes and evaluate goes on (to fail on the fake checkpoint).
    result = runner.invoke(main, [*base, str(other), "--force"])
    assert result.exit_code != 0 and "--json" not in result.output
    report = tmp_path / "old.json"
    report.write_text(json.dumps({"checkpoint": "x", "split": "test", "results": []}))
    assert is_report(report) and not is_report(other) and not is_report(ckpt)


@pytest.mark.parametrize("flag", ["--batch-size", "--trials", "--seed"])
def test_cli_numeric_options_are_range_checked(tmp_path, flag):
    from click.testing import CliRunner

    from deskpro.cli import main

    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"x")
    value = "-1" if flag == "--seed" else "0"
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path), "--checkpoint", str(ckpt), flag, value])
    assert result.exit_code == 2 and flag in result.output and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1


def test_blocked_distances_match_whole_matrices_and_rows_do_not_depend_on_block():
    import torch

    from deskpro.model.deskpro import retrieval_distance
    from deskpro.train.evaluate import build_protocols, evaluate_features, stream_distance_blocks

    gen = torch.Generator().manual_seed(0)
    n = 40
    feats = {
        "body": torch.nn.functional.normalize(torch.randn(n, 7, 6, generator=gen), dim=2),
        "face": torch.nn.functional.normalize(torch.randn(n, 7, 6, generator=gen), dim=2),
        "has_face": torch.rand(n, generator=gen) < 0.7,
    }
    q_pos, g_pos = np.array([3, 1, 7, 8, 9, 20, 21]), np.arange(10, 40)[::-1].copy()
    for stream in ("body", "face", "both"):
        q_used, g_used, blocks = stream_distance_blocks(feats, q_pos, g_pos, stream, block=2)
        parts = list(blocks)
        assert all(d.shape[0] <= 2 for _, d in parts)
        got = torch.cat([d for _, d in parts])
        q = {k: v[torch.from_numpy(q_used)] for k, v in feats.items()}
        g = {k: v[torch.from_numpy(g_used)] for k, v in feats.items()}
        if stream == "both":
            want = retrieval_distance(q, g)
        else:
            want = 1 - q[stream].flatten(1) @ g[stream].flatten(1).T / 7
        torch.testing.assert_close(got, want)
    pids = np.arange(n) % 5
    splits = ["query" if i < 12 else "gallery" for i in range(n)]
    index = _index(pids.tolist(), (np.arange(n) % 3).tolist(), [0] * n, splits, splits)
    protocols = build_protocols(index, ("standard",))
    small = evaluate_features(feats, index, protocols, block=1)
    large = evaluate_features(feats, index, protocols, block=256)
    assert [r.to_dict() for r in small] == [r.to_dict() for r in large]


def test_rows_without_clothes_ids_flow_from_shards_to_the_standard_protocol(tmp_path):
    """Celeb-reID has no clothes ids (-1, docs/formats.md): written, read and ranked without them."""
    import torch
    from _train_utils import write_tiny_shards

    from deskpro.config import preset
    from deskpro.train.data import open_reader
    from deskpro.train.evaluate import build_protocols, evaluate_features

    shards = write_tiny_shards(tmp_path / "shards", dataset="celeb-reid", clothes_known=False)
    reader = open_reader(shards)
    assert set(reader.index.column("clothes_id").to_pylist()) == {-1}
    protocols = build_protocols(reader.index, preset("celeb-reid").protocols)
    assert [(p.name, p.mode) for p in protocols] == [("standard", "standard")]
    pids = torch.tensor(reader.index.column("pid").to_pylist())
    ident = torch.nn.functional.one_hot(pids, int(pids.max()) + 1).float()[:, None, :].repeat(1, 7, 1)
    features = {"face": ident, "body": ident, "has_face": torch.ones(len(pids), dtype=torch.bool)}
    (row,) = evaluate_features(features, reader.index, protocols, streams=("both",))
    assert (row.r1, row.mAP, row.queries, row.gallery, row.excluded) == (1.0, 1.0, 6, 3, 0)
