"""Shard dataset, class tables and the identity samplers (the transforms: test_transforms.py)."""

from __future__ import annotations

import pickle
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pytest
import torch
from _train_utils import FakeReader, write_tiny_shards

from deskpro.common.images import decode_jpeg as shards_decode
from deskpro.common.images import encode_jpeg
from deskpro.train.data import (
    ClassTableError,
    OfficialIdentitySampler,
    PKBatchSampler,
    ShardDataset,
    class_table,
    decoded,
    make_loader,
    pid_strings,
    resolve_decode_on,
)


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


# ---------------------------------------------------------------- decode_on: JPEG bytes decoded on the device


@pytest.fixture(scope="module")
def jpeg_shards(tmp_path_factory):
    return write_tiny_shards(tmp_path_factory.mktemp("jpeg") / "s", train_ids=4, per_id=4, codec="jpeg")


def test_the_two_cpu_jpeg_decoders_agree_exactly():
    """decode_on=device on the CPU runs torchvision's decoder, the shards' reader PIL's (both
    libjpeg-turbo, islow IDCT, fancy upsampling): on this build they give the same pixels, on smooth
    and on noise images, 4:2:0 chroma, at the qualities shards use. A build whose decoders round
    differently fails here first (then the trainer's equality tests below need a tolerance)."""
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_jpeg as torchvision_decode

    rng = np.random.default_rng(0)
    for shape in ((384, 128), (224, 224), (64, 32), (33, 17)):
        smooth = np.kron(rng.integers(0, 256, (shape[0] // 8 + 1, shape[1] // 8 + 1, 3)), np.ones((8, 8, 1)))
        for image in (smooth[: shape[0], : shape[1]].astype(np.uint8), rng.integers(0, 256, (*shape, 3))):
            for quality in (75, 90, 95):
                data = encode_jpeg(image.astype(np.uint8), quality)
                ours = shards_decode(data)
                theirs = torchvision_decode(
                    torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.RGB
                )
                np.testing.assert_array_equal(theirs.permute(1, 2, 0).numpy(), ours)


def test_device_decoded_batches_equal_the_worker_s(jpeg_shards):
    """What a decode_on=device worker hands over (JPEG bytes, no pixels), decoded by the loop's
    `decoded`, equals the decode_on=worker batch: keys, dtypes, shapes and values, faceless zeros too."""
    data = ShardDataset(jpeg_shards)
    sampler = PKBatchSampler(data.labels, 2, 2, seed=0)
    by_worker = list(make_loader(data, sampler, workers=0))
    as_bytes = list(make_loader(data, sampler, workers=1, decode_on="device"))
    assert len(as_bytes) == len(by_worker) == len(sampler)
    faceless = 0
    for want, got in zip(by_worker, as_bytes):
        assert "jpeg" in got and "body" not in got and "face_lr" not in got  # the worker decoded nothing
        assert got["jpeg"]["body"][0].dtype == torch.uint8 and got["jpeg"]["body"][1].numel() == 4
        got = decoded(got, data.reader.options, "cpu")
        assert sorted(got) == sorted(want)
        for key, value in want.items():
            assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
            assert torch.equal(got[key], value), key
        faceless += int((~want["has_face"]).sum())
    assert faceless > 0  # the faceless rows' zero faces were compared too
    assert decoded(by_worker[0], data.reader.options, "cpu") is by_worker[0]  # decoded batches pass


def test_decode_on_auto_and_raw_shards(jpeg_shards, tmp_path):
    jpeg = ShardDataset(jpeg_shards).reader
    raw = ShardDataset(write_tiny_shards(tmp_path / "raw", train_ids=2, per_id=2, test_ids=1)).reader
    assert resolve_decode_on("auto", "cpu", jpeg) == "worker"  # no GPU: the workers decode
    assert resolve_decode_on("auto", torch.device("cuda"), jpeg) == "device"
    assert resolve_decode_on("auto", "cuda:1", raw) == "worker"  # raw: nothing to decode
    assert resolve_decode_on("worker", "cuda", jpeg) == "worker"
    assert resolve_decode_on("device", "cpu", jpeg) == "device"
    with pytest.raises(ValueError, match=r"^--decode-on device: .*raw.* has codec 'raw', no JPEG bytes"):
        resolve_decode_on("device", "cpu", raw)


# ---------------------------------------------------------------- class tables


def _celeb_tree(root, pids=range(1, 13), per_id=2):
    """A Celeb-reID-style folder (unpadded pids PID_SEQ_IDX.jpg) with empty image files."""
    for split in ("train", "query", "gallery"):
        (root / split).mkdir(parents=True)
    for pid in pids:
        for i in range(per_id):
            (root / "train" / f"{pid}_{i + 1}_{i}.jpg").write_bytes(b"")
    (root / "query" / "100_1_0.jpg").write_bytes(b"")
    (root / "gallery" / "100_2_0.jpg").write_bytes(b"")
    return root


def _reader_from_manifest(table, has_face=None):
    train = table.filter(pa.compute.equal(table.column("split"), "train"))
    pids = train.column("pid").to_numpy()
    reader = FakeReader(pids, has_face=has_face)
    reader.index = reader.index.set_column(0, "sample_id", train.column("sample_id"))
    return reader


def test_official_class_order_sorts_the_pid_strings(tmp_path):
    from deskpro.manifests import celeb_reid

    table = celeb_reid.scan(_celeb_tree(tmp_path / "celeb"))
    reader = _reader_from_manifest(table)
    official = ShardDataset(reader, class_order="official")
    assert official.classes.tolist() == [1, 10, 11, 12, 2, 3, 4, 5, 6, 7, 8, 9]
    assert official.labels[official.pids == 10].tolist() == [1, 1]
    assert official.labels[official.pids == 2].tolist() == [4, 4]
    numeric = ShardDataset(reader)
    assert numeric.classes.tolist() == list(range(1, 13))
    assert numeric.labels[numeric.pids == 10].tolist() == [9, 9]


def test_pid_strings_keep_zero_padding():
    pids = np.array([7, 10, 7])
    assert pid_strings(["rgb/train/007/A_1", "rgb/train/010/C_3", "x/7_1_1"], pids) == ["007", "010", "7"]
    assert pid_strings(["s0"], np.array([3])) == ["3"]
    # Padded names sort like the numbers; unpadded ones do not.
    assert class_table(np.array([2, 10]), ["002_c1", "010_c1"], "official").tolist() == [2, 10]
    assert class_table(np.array([2, 10]), ["2_1_1", "10_1_1"], "official").tolist() == [10, 2]


def test_an_explicit_class_table_is_used_or_refused():
    reader = FakeReader([5, 5, 9, 9, 2])
    data = ShardDataset(reader, classes=[9, 2, 5])
    assert data.labels.tolist() == [2, 2, 0, 0, 1]
    with pytest.raises(ClassTableError, match=r"teacher.pth: classes do not match.*not in the table: \[2\]"):
        ShardDataset(reader, classes=[9, 5], classes_from="teacher.pth")
    with pytest.raises(ClassTableError, match=r"not in the training set: \[4\]"):
        ShardDataset(reader, classes=[9, 2, 5, 4])


def test_dropping_faceless_rows_drops_their_classes():
    pids = [1, 1, 2, 2, 3, 3]
    has_face = [True, False, False, False, True, True]  # pid 2 has no face at all
    kept = ShardDataset(FakeReader(pids, has_face=has_face))
    assert kept.num_classes == 3 and len(kept) == 6
    teacher = ShardDataset(FakeReader(pids, has_face=has_face), require_face=True)
    assert teacher.num_classes == 3 and len(teacher) == 3 and teacher.labels.tolist() == [0, 2, 2]
    dropped = ShardDataset(FakeReader(pids, has_face=has_face), drop_faceless=True)
    assert dropped.num_classes == 2 and len(dropped) == 3
    assert dropped.classes.tolist() == [1, 3] and dropped.labels.tolist() == [0, 1, 1]


# ---------------------------------------------------------------- the official sampler


def test_official_sampler_drops_remainders_and_leftover_chunks():
    labels = _labels([13, 6, 2, 7, 12, 6])  # chunks of K=6: 2, 1, 1 (with replacement), 1, 2, 1
    sampler = OfficialIdentitySampler(labels, p=3, k=6, seed=0)
    lengths = set()
    for epoch in range(6):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        lengths.add(len(batches))
        seen = Counter()
        for batch in batches:
            ids = labels[batch]
            assert len(batch) == 18
            for start in range(0, 18, 6):
                assert len(set(ids[start : start + 6])) == 1
            assert len(set(ids.tolist())) == 3
            seen.update(set(ids.tolist()))
        # An identity gives at most its chunks: id 0 (13 images) two, the remainder image dropped.
        assert seen[0] <= 2 and seen[1] <= 1 and seen[4] <= 2
    # 8 chunks, 3 per batch, while 3 identities are left: 2 batches at most, 1 when ids run out early.
    assert lengths <= {1, 2} and 2 in lengths


def test_official_sampler_is_seeded_and_splits_batches_across_ranks():
    labels = _labels([12] * 8)
    a, b = OfficialIdentitySampler(labels, 2, 4, seed=1), OfficialIdentitySampler(labels, 2, 4, seed=1)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    ranks = [OfficialIdentitySampler(labels, 2, 4, seed=1, rank=r, world_size=2) for r in range(2)]
    together = list(b)
    assert [list(s) for s in ranks] == [
        together[0::2][: len(together) // 2],
        together[1::2][: len(together) // 2],
    ]
