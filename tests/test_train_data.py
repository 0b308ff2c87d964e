"""Shard dataset, P x K sampler and batch augmentation."""

from __future__ import annotations

import pickle
from collections import Counter

import numpy as np
import pytest
import torch
from _train_utils import FakeReader

from deskpro.train.augment import (
    AugmentSettings,
    _shift_flip_gather,
    _shift_flip_slices,
    augment_batch,
    shift_and_flip,
)
from deskpro.train.data import PKBatchSampler, ShardDataset, make_loader


def _labels(counts):
    return np.repeat(np.arange(len(counts)), counts)


def test_pk_batches_have_p_ids_of_k_images():
    labels = _labels([9, 6, 2, 7, 12, 6])  # id 2 has fewer than K images
    sampler = PKBatchSampler(labels, p=3, k=4, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == (2 + 1 + 1 + 1 + 3 + 1) // 3
    for batch in batches:
        ids = labels[batch]
        assert len(batch) == 12
        counts = Counter(ids.tolist())
        assert len(counts) == 3 and set(counts.values()) == {4}
        for start in range(0, 12, 4):
            assert len(set(ids[start : start + 4])) == 1


def test_pk_sampler_is_seeded_per_epoch():
    labels = _labels([8] * 6)
    a, b = PKBatchSampler(labels, 2, 4, seed=3), PKBatchSampler(labels, 2, 4, seed=3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    b.load_state_dict(a.state_dict())
    assert list(b) == list(a)
    assert list(PKBatchSampler(labels, 2, 4, seed=4)) != first


def test_pk_sampler_draws_small_ids_with_replacement():
    labels = _labels([1, 1, 8, 8])
    sampler = PKBatchSampler(labels, p=2, k=3, seed=0)
    seen = [labels[b] for b in sampler]
    assert any((ids == 0).sum() == 3 for ids in seen) or any((ids == 1).sum() == 3 for ids in seen)


def test_pk_sampler_ddp_splits_identities():
    labels = _labels([5, 9, 4, 12, 6, 8, 7, 5, 10])
    samplers = [PKBatchSampler(labels, 2, 4, seed=0, rank=r, world_size=3) for r in range(3)]
    for epoch in (0, 1):
        ids_per_rank = []
        for s in samplers:
            s.set_epoch(epoch)
            batches = list(s)
            assert len(batches) == len(s)
            ids_per_rank.append({int(i) for b in batches for i in labels[b]})
        assert len({len(s) for s in samplers}) == 1
        assert not (ids_per_rank[0] & ids_per_rank[1]) and not (ids_per_rank[1] & ids_per_rank[2])
        assert not (ids_per_rank[0] & ids_per_rank[2])


def test_pk_sampler_rejects_too_few_ids():
    with pytest.raises(ValueError, match="identities"):
        PKBatchSampler(_labels([4, 4]), p=3, k=2)


def test_dataset_reads_batches_with_dense_labels():
    pids = [40, 40, 7, 7, 7, 19, 19, 3]
    has_face = [True, False, True, True, False, True, True, True]
    reader = FakeReader(pids, has_face=has_face)
    data = ShardDataset(reader)
    assert data.num_classes == 4
    np.testing.assert_array_equal(data.labels, [3, 3, 1, 1, 1, 2, 2, 0])
    batch = data[[1, 5, 7]]
    np.testing.assert_array_equal(batch["body"].numpy(), reader.body[[1, 5, 7]])
    np.testing.assert_array_equal(batch["label"].numpy(), [3, 2, 0])
    assert batch["has_face"].tolist() == [False, True, True]
    assert batch["body"].dtype == torch.uint8 and batch["parse"].shape == (3, 16, 8)
    clone = pickle.loads(pickle.dumps(data))
    np.testing.assert_array_equal(clone[[2]]["parse"].numpy(), reader.parse[[2]])


def test_dataset_split_filter_and_error():
    with pytest.raises(ValueError, match="no rows in split"):
        ShardDataset(FakeReader([1, 2], split="query"), split="train")


def test_loader_with_a_worker_yields_sampler_batches():
    reader = FakeReader(np.repeat(np.arange(4), 4))
    data = ShardDataset(reader)
    sampler = PKBatchSampler(data.labels, 2, 2, seed=0)
    batches = list(make_loader(data, sampler, workers=1))
    assert len(batches) == len(sampler)
    expected = list(sampler)
    for got, positions in zip(batches, expected):
        np.testing.assert_array_equal(got["position"].numpy(), positions)


def _batch(n=6, h=16, w=8, f=8, seed=0):
    rng = np.random.default_rng(seed)
    body = torch.from_numpy(rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8))
    parse = body[..., 0] // 13  # parse is a function of the body pixel: alignment is checkable
    face = torch.from_numpy(rng.integers(0, 256, (n, f, f, 3), dtype=np.uint8))
    return {
        "body": body,
        "parse": parse,
        "face_lr": face,
        "face_hr": face.clone(),
        "has_face": torch.ones(n, dtype=torch.bool),
        "label": torch.arange(n),
    }


def _unnormalize(x):
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return ((x * std + mean) * 255).round()


def test_flip_and_shift_apply_alike_to_body_and_parse():
    batch = _batch()
    settings = AugmentSettings(flip_p=0.5, translate_p=1.0, translate_pad=0.5, erase_p=0.0)
    out = augment_batch(batch, torch.Generator().manual_seed(0), settings)
    body = _unnormalize(out["body"])[:, 0]  # red channel, [B,H,W]
    # Everywhere, padding included: padded body pixels are 0 and padded parse labels are 0 too.
    expected_parse = torch.div(body, 13, rounding_mode="floor").long()
    assert torch.equal(out["parse"], expected_parse)
    assert out["body"].shape == (6, 3, 16, 8) and out["parse"].dtype == torch.long
    # Some samples really moved or flipped.
    assert not torch.equal(body.long(), batch["body"][..., 0].long())


def test_faces_flip_with_the_body():
    batch = _batch(n=16)
    settings = AugmentSettings(flip_p=0.5, translate_p=0.0, erase_p=0.0)
    out = augment_batch(batch, torch.Generator().manual_seed(1), settings)

    def changed(key):
        return (_unnormalize(out[key]) != batch[key].permute(0, 3, 1, 2).float()).flatten(1).any(1)

    body_flipped, face_flipped = changed("body"), changed("face_lr")
    assert 0 < int(body_flipped.sum()) < 16
    assert torch.equal(body_flipped, face_flipped)
    assert torch.equal(out["face_lr"], out["face_hr"])


def test_no_augmentation_is_exact_and_erasing_hits_body_only():
    batch = _batch()
    off = AugmentSettings(flip_p=0.0, translate_p=0.0, erase_p=0.0)
    out = augment_batch(batch, torch.Generator().manual_seed(0), off)
    torch.testing.assert_close(_unnormalize(out["body"]), batch["body"].permute(0, 3, 1, 2).float())
    assert torch.equal(out["parse"], batch["parse"].long())
    erase = AugmentSettings(flip_p=0.0, translate_p=0.0, erase_p=1.0)
    out = augment_batch(batch, torch.Generator().manual_seed(0), erase)
    zeros = (out["body"] == 0).all(dim=1)  # erased pixels are exactly 0 in all channels
    assert zeros.flatten(1).any(dim=1).all()
    assert torch.equal(out["parse"], batch["parse"].long())


def test_augmentation_is_seeded():
    batch = _batch()
    a = augment_batch(batch, torch.Generator().manual_seed(5))
    b = augment_batch(batch, torch.Generator().manual_seed(5))
    c = augment_batch(batch, torch.Generator().manual_seed(6))
    assert torch.equal(a["body"], b["body"]) and torch.equal(a["parse"], b["parse"])
    assert not torch.equal(a["body"], c["body"])


def test_shift_moves_content_by_the_offset():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).view(2, 4, 4)  # [B,H,W]
    out = shift_and_flip(x, torch.tensor([1, 2]), torch.tensor([1, 0]), (1, 1), torch.tensor([False, False]))
    assert torch.equal(out[0], x[0])  # offset == pad: unchanged
    assert torch.equal(out[1, :3, 1:], x[1, 1:, :3])  # moved up one row and right one column
    assert (out[1, 3] == 0).all() and (out[1, :, 0] == 0).all()
    flipped = shift_and_flip(
        x, torch.tensor([1, 1]), torch.tensor([1, 1]), (1, 1), torch.tensor([True, False])
    )
    assert torch.equal(flipped[0], x[0].flip(-1)) and torch.equal(flipped[1], x[1])


@pytest.mark.parametrize("channels", [None, 3])
def test_cpu_slices_match_the_gpu_gather(channels):
    rng = np.random.default_rng(0)
    shape = (7, 9, 6) + ((channels,) if channels else ())
    x = torch.from_numpy(rng.integers(0, 256, shape, dtype=np.uint8))
    pad = (2, 1)
    dy, dx = torch.from_numpy(rng.integers(0, 5, 7)), torch.from_numpy(rng.integers(0, 3, 7))
    flipped = torch.from_numpy(rng.random(7) < 0.5)
    spatial = (0, 0, 1, 1, 2, 2) if channels else (1, 1, 2, 2)
    padded = torch.nn.functional.pad(x, spatial)
    sliced = _shift_flip_slices(padded, dy, dx, flipped, (9, 6))
    gathered = _shift_flip_gather(padded, dy, dx, flipped, (9, 6), pad[1])
    assert torch.equal(sliced, gathered)
    # Flip-then-shift, written out for one flipped sample.
    i = int(torch.nonzero(flipped)[0])
    expected = padded[i].flip(1)[dy[i] : dy[i] + 9, dx[i] : dx[i] + 6]
    assert torch.equal(sliced[i], expected)
