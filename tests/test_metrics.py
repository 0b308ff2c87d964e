"""Retrieval metrics: hand-worked cases, a brute-force per-query reference, exclusion, ties."""

from __future__ import annotations

import numpy as np
import pytest

from deskpro.train.metrics import rank, rank_result


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
    result = rank_result(dist, q_pids, g_pids, q_cams, g_cams, q_clo, g_clo, mode=mode, max_rank=10, block=5)
    cmc, mAP, excluded = brute_force(dist, q_pids, g_pids, q_cams, g_cams, q_clo, g_clo, mode, 10)
    np.testing.assert_allclose(result.cmc, cmc)
    assert result.mAP == pytest.approx(mAP)
    assert result.num_excluded == excluded
    assert result.num_valid + result.num_excluded == nq


def test_query_without_true_match_is_excluded_and_counted():
    # Query 0 has a true match at rank 1; query 1's only same-pid item is same camera (junk).
    dist = np.array([[0.1, 0.9], [0.1, 0.9]])
    result = rank_result(dist, [1, 2], [1, 2], [0, 0], [1, 0])
    assert (result.num_valid, result.num_excluded) == (1, 1)
    assert result.mAP == pytest.approx(1.0)
    np.testing.assert_allclose(result.cmc, [1, 1])
    cmc, mAP = rank(dist, [1, 2], [1, 2], [0, 0], [1, 0])  # one return type: (cmc, mAP)
    assert mAP == result.mAP and np.array_equal(cmc, result.cmc)


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

    with pytest.raises(ValueError, match="NaN"):
        rank(np.array([[np.nan, 0.1]]), [1], [1, 2], [0], [1, 0])


def test_evaluate_keeps_the_public_rank():
    from deskpro.train import evaluate

    assert evaluate.rank is rank


def _labels(rng, nq, ng, ids):
    return (
        rng.integers(0, ids, nq),
        rng.integers(0, ids, ng),
        rng.integers(0, 3, nq),
        rng.integers(0, 3, ng),
        rng.integers(0, 3, nq),
        rng.integers(0, 3, ng),
    )


@pytest.mark.parametrize("mode", ["standard", "cc", "sc"])
def test_float32_ties_blocks_and_missing_pids(mode):
    # float32 distances rounded to few levels (many ties), query pids absent from the gallery,
    # block sizes that do not divide the query count.
    rng = np.random.default_rng(7)
    nq, ng = 37, 60
    dist = (np.round(rng.random((nq, ng)) * 8) / 8).astype(np.float32)
    q_pids, g_pids, q_cams, g_cams, q_clo, g_clo = _labels(rng, nq, ng, 9)
    q_pids[:4] = 99  # no candidate at all
    expected = brute_force(dist, q_pids, g_pids, q_cams, g_cams, q_clo, g_clo, mode, 20)
    for block in (1, 8, 256):
        result = rank_result(
            dist, q_pids, g_pids, q_cams, g_cams, q_clo, g_clo, mode=mode, max_rank=20, block=block
        )
        np.testing.assert_allclose(result.cmc, expected[0], atol=1e-12)
        assert abs(result.mAP - expected[1]) < 1e-9
        assert result.num_excluded == expected[2]


def test_torch_tensor_matches_numpy():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    nq, ng = 19, 33
    dist = (np.round(rng.random((nq, ng)) * 10) / 10).astype(np.float32)
    labels = _labels(rng, nq, ng, 5)
    ours = rank_result(
        torch.from_numpy(dist), *labels[:4], labels[4], labels[5], mode="cc", max_rank=10, block=4
    )
    ref = rank_result(dist, *labels[:4], labels[4], labels[5], mode="cc", max_rank=10)
    np.testing.assert_allclose(ours.cmc, ref.cmc)
    assert ours.mAP == pytest.approx(ref.mAP, abs=1e-12)


def test_torch_search_path_matches_numpy():
    # The GPU path (torch sort and search) run on CPU tensors: same places, ties included.
    torch = pytest.importorskip("torch")
    from deskpro.train.metrics import _places

    rng = np.random.default_rng(5)
    block = (np.round(rng.random((6, 25)) * 4) / 4).astype(np.float32)
    rows = np.repeat(np.arange(6), 5)
    cols = rng.integers(0, 25, rows.size)
    ours = _places(torch.from_numpy(block), rows, cols, torch.from_numpy(block[rows, cols]))
    ref = _places(block, rows, cols, block[rows, cols])
    brute = [sorted(range(25), key=lambda j, r=r: (block[r, j], j)).index(c) for r, c in zip(rows, cols)]
    np.testing.assert_array_equal(ref, brute)
    np.testing.assert_array_equal(ours, ref)
