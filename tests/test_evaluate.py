"""Retrieval metrics: hand-worked cases, a brute-force per-query reference, exclusion, ties."""

from __future__ import annotations

import numpy as np
import pytest

from deskpro.train.evaluate import rank, rank_result


def brute_force(dist, q_pids, g_pids, q_cams, g_cams, q_clo, g_clo, mode, max_rank):
    """The textbook definition, one query at a time, with Python loops."""
    cmc_sum, aps, valid = np.zeros(max_rank), [], 0
    for i in range(dist.shape[0]):
        order = sorted(range(dist.shape[1]), key=lambda j: (dist[i, j], j))
        ranked = []
        for j in order:
            same = g_pids[j] == q_pids[i]
            if same and g_cams[j] == q_cams[i]:
                continue
            if mode == "cc" and same and g_clo[j] == q_clo[i]:
                continue
            if mode == "sc" and same and g_clo[j] != q_clo[i]:
                continue
            ranked.append(bool(same))
        if not any(ranked):
            continue
        valid += 1
        first = ranked.index(True)
        cmc_sum[first:] += 1
        hits, precisions = 0, []
        for position, hit in enumerate(ranked, start=1):
            if hit:
                hits += 1
                precisions.append(hits / position)
        aps.append(np.mean(precisions))
    return cmc_sum / valid, float(np.mean(aps)), dist.shape[0] - valid


def test_hand_worked_standard():
    # One query (pid 1, cam 0). Gallery sorted by distance: g0 pid1 cam0 (junk), g1 pid2, g2 pid1,
    # g3 pid1. Kept ranking: miss, hit, hit -> rank-1 0, rank-2 1; AP = (1/2 + 2/3) / 2.
    dist = np.array([[0.1, 0.2, 0.3, 0.4]])
    cmc, mAP = rank(dist, [1], [1, 2, 1, 1], [0], [0, 1, 1, 2])
    np.testing.assert_allclose(cmc, [0, 1, 1, 1])
    assert mAP == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_hand_worked_cc_and_sc():
    # Query pid 1, cam 0, clothes 5. g0: pid1 cam1 clothes5 (same clothes), g1: pid2, g2: pid1 cam2
    # clothes 6 (other clothes).
    dist = np.array([[0.1, 0.2, 0.3]])
    args = ([1], [1, 2, 1], [0], [1, 1, 2], [5], [5, 9, 6])
    cmc, mAP = rank(dist, *args, mode="cc")  # kept: g1 miss, g2 hit
    np.testing.assert_allclose(cmc, [0, 1, 1])  # length min(max_rank, gallery size)
    assert mAP == pytest.approx(0.5)
    cmc, mAP = rank(dist, *args, mode="sc")  # kept: g0 hit, g1 miss
    np.testing.assert_allclose(cmc, [1, 1, 1])
    assert mAP == pytest.approx(1.0)
    cmc, mAP = rank(dist, *args, mode="standard")  # kept: hit, miss, hit
    assert mAP == pytest.approx((1 + 2 / 3) / 2)


@pytest.mark.parametrize("mode", ["standard", "cc", "sc"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force(mode, seed):
    rng = np.random.default_rng(seed)
    nq, ng = 23, 41
    dist = rng.random((nq, ng))
    dist[:, ::7] = 0.5  # exact ties
    q_pids, g_pids = rng.integers(0, 6, nq), rng.integers(0, 6, ng)
    q_cams, g_cams = rng.integers(0, 3, nq), rng.integers(0, 3, ng)
    q_clo, g_clo = rng.integers(0, 2, nq), rng.integers(0, 2, ng)
    result = rank_result(dist, q_pids, g_pids, q_cams, g_cams, q_clo, g_clo, mode=mode, max_rank=10, chunk=5)
    cmc, mAP, excluded = brute_force(dist, q_pids, g_pids, q_cams, g_cams, q_clo, g_clo, mode, 10)
    np.testing.assert_allclose(result.cmc, cmc)
    assert result.mAP == pytest.approx(mAP)
    assert result.num_excluded == excluded
    assert result.num_valid + result.num_excluded == nq


def test_query_without_true_match_is_excluded_and_counted():
    # Query 0 has a true match at rank 1; query 1's only same-pid item is same camera (junk).
    dist = np.array([[0.1, 0.9], [0.1, 0.9]])
    cmc, mAP, excluded = rank(dist, [1, 2], [1, 2], [0, 0], [1, 0], return_excluded=True)
    assert excluded == 1
    assert mAP == pytest.approx(1.0)
    np.testing.assert_allclose(cmc, [1, 1])
    assert len(rank(dist, [1, 2], [1, 2], [0, 0], [1, 0])) == 2


def test_ties_keep_gallery_order():
    # All distances equal: the stable rule ranks gallery items in their listed order.
    dist = np.zeros((1, 3))
    cmc, mAP = rank(dist, [1], [2, 1, 1], [0], [1, 1, 1])
    np.testing.assert_allclose(cmc, [0, 1, 1])
    assert mAP == pytest.approx((1 / 2 + 2 / 3) / 2)
    cmc_swapped, _ = rank(dist, [1], [1, 2, 1], [0], [1, 1, 1])
    np.testing.assert_allclose(cmc_swapped, [1, 1, 1])


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="g_pids"):
        rank(np.zeros((1, 3)), [1], [1, 2], [0], [0, 0, 0])
    with pytest.raises(ValueError, match="clothes"):
        rank(np.zeros((1, 2)), [1], [1, 2], [0], [0, 0], mode="cc")
    with pytest.raises(ValueError, match="mode"):
        rank(np.zeros((1, 2)), [1], [1, 2], [0], [0, 0], mode="bogus")


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
