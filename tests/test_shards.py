"""Training shard format: writer/reader round trip, index and manifest, verify, worker safety."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from deskpro.shards import (
    CATALOG_NAME,
    INDEX_NAME,
    ShardError,
    ShardReader,
    ShardWriter,
    verify,
)

BODY = (32, 16)
FACE = 16


def make_samples(n: int, seed: int = 0, no_face: tuple[int, ...] = (2,)) -> list[dict]:
    """Smooth random images (JPEG-friendly) with blocky label maps; sample i has no face if i in no_face."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        body = _smooth(rng, (*BODY, 3))
        parse = np.repeat(rng.integers(0, 20, (BODY[0] // 4, 1), dtype=np.uint8), 4, axis=0)
        parse = np.broadcast_to(parse, BODY).copy()
        face = None if i in no_face else _smooth(rng, (FACE, FACE, 3))
        hr = None if face is None else _smooth(rng, (FACE, FACE, 3))
        samples.append(
            dict(
                sample_id=f"cam/{i:03d}",
                pid=i // 3,
                camid=i % 2,
                clothes_id=-1 if i % 4 == 0 else i // 2,
                split="train" if i < n - 2 else "query",
                subset="train" if i < n - 2 else "query_diff",
                body=body,
                parse=parse,
                face_lr=face,
                face_hr=hr,
            )
        )
    return samples


def _smooth(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    small = rng.uniform(0, 255, (max(shape[0] // 8, 1), max(shape[1] // 8, 1), shape[2]))
    import cv2

    return (
        cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR).clip(0, 255).astype(np.uint8)
    )


def write_shards(out_dir, samples, **options) -> None:
    options = {"body_size": BODY, "face_size": FACE, "shard_size": 3, **options}
    with ShardWriter(out_dir, **options) as writer:
        for sample in samples:
            writer.add(**sample)


@pytest.fixture()
def raw_dir(tmp_path):
    samples = make_samples(7)
    write_shards(tmp_path / "raw", samples, codec="raw", meta={"dataset": "synthetic"})
    return tmp_path / "raw", samples


def test_raw_round_trip_is_exact(raw_dir):
    out_dir, samples = raw_dir
    reader = ShardReader(out_dir)
    assert len(reader) == 7
    assert reader.options["body_size"] == BODY and reader.options["codec"] == "raw"
    assert reader.meta == {"dataset": "synthetic"}
    for i, sample in enumerate(samples):
        got = reader.read(i)
        np.testing.assert_array_equal(got["body"], sample["body"])
        np.testing.assert_array_equal(got["parse"], sample["parse"])
        assert got["has_face"] == (sample["face_lr"] is not None)
        if got["has_face"]:
            np.testing.assert_array_equal(got["face_lr"], sample["face_lr"])
            np.testing.assert_array_equal(got["face_hr"], sample["face_hr"])
        else:
            assert not got["face_lr"].any() and got["face_lr"].shape == (FACE, FACE, 3)


def test_jpeg_round_trip_is_close_and_parse_exact(tmp_path):
    samples = make_samples(5)
    write_shards(tmp_path / "jpeg", samples, codec="jpeg", jpeg_quality=95)
    reader = ShardReader(tmp_path / "jpeg")
    for i, sample in enumerate(samples):
        got = reader.read(i)
        assert got["body"].dtype == np.uint8 and got["body"].shape == (*BODY, 3)
        assert np.abs(got["body"].astype(int) - sample["body"]).mean() < 3.0
        np.testing.assert_array_equal(got["parse"], sample["parse"])
        if sample["face_hr"] is not None:
            assert np.abs(got["face_hr"].astype(int) - sample["face_hr"]).mean() < 3.0
            # Channel order survives the codec (a BGR/RGB swap would move the means apart).
            np.testing.assert_allclose(got["face_hr"].mean((0, 1)), sample["face_hr"].mean((0, 1)), atol=3)


@pytest.mark.parametrize("codec", ["raw", "jpeg"])
def test_read_many_matches_read_in_any_order(tmp_path, codec):
    samples = make_samples(8, no_face=(1, 5))
    write_shards(tmp_path / codec, samples, codec=codec)
    reader = ShardReader(tmp_path / codec)
    order = [7, 0, 5, 5, 3, 1, -1]  # across shards, unsorted, repeated, negative
    batch = reader.read_many(order)
    assert batch["body"].shape == (7, *BODY, 3) and batch["has_face"].dtype == np.bool_
    for j, i in enumerate(order):
        single = reader.read(i)
        for key in ("body", "parse", "face_lr", "face_hr"):
            np.testing.assert_array_equal(batch[key][j], single[key])
        assert batch["has_face"][j] == single["has_face"]
    assert reader.read_many([])["body"].shape == (0, *BODY, 3)
    with pytest.raises(IndexError):
        reader.read(8)


def test_an_undecodable_jpeg_names_its_shard_and_row(tmp_path):
    import h5py

    write_shards(tmp_path / "jpeg", make_samples(5), codec="jpeg")
    with h5py.File(tmp_path / "jpeg" / "shard-00001.h5", "r+") as f:
        start, stop = f["body_end"][0], f["body_end"][1]
        f["body"][start:stop] = 0  # sample 4: not a JPEG any more (checksums rewritten by HDF5)
    reader = ShardReader(tmp_path / "jpeg")
    with pytest.raises(ShardError, match=r"shard-00001\.h5: body row 1: cannot decode JPEG"):
        reader.read(4)
    with pytest.raises(ShardError, match=r"shard-00001\.h5: body row 1"):
        reader.read_many([0, 4])


def test_index_and_catalog_describe_the_shards(raw_dir):
    out_dir, samples = raw_dir
    catalog = json.loads((out_dir / CATALOG_NAME).read_text())
    assert catalog["format_version"] == 2
    assert [s["rows"] for s in catalog["shards"]] == [3, 3, 1]
    assert [s["file"] for s in catalog["shards"]] == ["shard-00000.h5", "shard-00001.h5", "shard-00002.h5"]
    assert catalog["totals"]["rows"] == 7 and catalog["totals"]["with_face"] == 6
    assert catalog["totals"]["splits"] == {"train": 5, "query": 2}
    index = ShardReader(out_dir).index.to_pylist()
    assert [r["sample_id"] for r in index] == [s["sample_id"] for s in samples]
    assert [(r["shard"], r["row"]) for r in index] == [(i // 3, i % 3) for i in range(7)]
    assert index[5]["clothes_id"] == 2 and index[0]["clothes_id"] == -1
    assert index[6]["subset"] == "query_diff" and index[2]["has_face"] is False
    assert not list(out_dir.glob("*.tmp"))


def test_writer_rejects_bad_input(tmp_path):
    sample = make_samples(1)[0]
    with ShardWriter(tmp_path / "s", body_size=BODY, face_size=FACE) as writer:
        with pytest.raises(ValueError, match=r"body must be uint8 with shape \(32, 16, 3\)"):
            writer.add(**{**sample, "body": sample["body"][:, :8]})
        with pytest.raises(ValueError, match="parse must be uint8"):
            writer.add(**{**sample, "parse": sample["parse"].astype(np.int32)})
        with pytest.raises(ValueError, match="both face_lr and face_hr"):
            writer.add(**{**sample, "face_hr": None})
        writer.add(**sample)
        with pytest.raises(ValueError, match="added twice"):
            writer.add(**sample)
    with pytest.raises(ValueError, match="codec"):
        ShardWriter(tmp_path / "t", codec="png")


def test_refuses_to_overwrite_a_complete_directory(raw_dir):
    out_dir, samples = raw_dir
    with pytest.raises(ShardError, match="already holds complete shards"):
        ShardWriter(out_dir)
    write_shards(out_dir, samples[:2], codec="jpeg", overwrite=True)
    assert len(ShardReader(out_dir)) == 2
    assert sorted(p.name for p in out_dir.glob("shard-*")) == ["shard-00000.h5"]


def test_failed_write_leaves_an_incomplete_directory(tmp_path):
    samples = make_samples(5)
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "s", body_size=BODY, face_size=FACE, shard_size=2) as writer:
            for sample in samples:
                writer.add(**sample)
            raise RuntimeError("crash while packing")
    assert not (tmp_path / "s" / CATALOG_NAME).exists()
    assert not list((tmp_path / "s").glob("*.tmp"))
    with pytest.raises(ShardError, match="no catalog.json"):
        ShardReader(tmp_path / "s")


def test_writing_is_deterministic(tmp_path):
    samples = make_samples(7)
    write_shards(tmp_path / "a", samples, codec="jpeg")
    write_shards(tmp_path / "b", samples, codec="jpeg")
    for name in ["shard-00000.h5", "shard-00001.h5", "shard-00002.h5", INDEX_NAME, CATALOG_NAME]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_without_manifest_reader_and_verify_refuse(raw_dir):
    out_dir, _ = raw_dir
    (out_dir / CATALOG_NAME).unlink()
    with pytest.raises(ShardError, match="no catalog.json; the shard directory is incomplete"):
        ShardReader(out_dir)
    with pytest.raises(ShardError, match="no catalog.json"):
        verify(out_dir)


def test_verify_accepts_a_good_directory(raw_dir):
    out_dir, _ = raw_dir
    report = verify(out_dir)
    assert report.ok and report.shards == 3 and report.rows == 7
    assert "OK (3 shards, 7 samples)" in report.format()


def test_verify_names_a_truncated_shard(raw_dir):
    out_dir, _ = raw_dir
    path = out_dir / "shard-00001.h5"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ShardError) as info:
        verify(out_dir)
    assert all(p.startswith("shard-00001.h5: ") for p in info.value.problems), info.value.problems
    assert any("truncated" in p for p in info.value.problems)


def test_verify_names_a_flipped_byte(raw_dir):
    out_dir, _ = raw_dir
    path = out_dir / "shard-00002.h5"
    data = bytearray(path.read_bytes())
    data[len(data) - 200] ^= 0xFF  # inside raw image data: the file still opens
    path.write_bytes(bytes(data))
    report = verify(out_dir, strict=False)
    assert report.problems == [
        "shard-00002.h5: sha256 differs from catalog.json (the file changed or is corrupt)"
    ]
    with pytest.raises(ShardError, match="shard-00002.h5: sha256 differs"):
        verify(out_dir)


def test_verify_names_a_missing_shard_and_index(raw_dir):
    out_dir, _ = raw_dir
    (out_dir / "shard-00000.h5").unlink()
    (out_dir / INDEX_NAME).unlink()
    report = verify(out_dir, strict=False)
    assert "shard-00000.h5: missing (listed in catalog.json)" in report.problems
    assert "index.parquet: missing (listed in catalog.json)" in report.problems


def test_verify_catches_an_index_that_points_elsewhere(raw_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir, _ = raw_dir
    index = pq.read_table(out_dir / INDEX_NAME)
    rows = index.column("row").to_numpy().copy()
    rows[0], rows[1] = rows[1], rows[0]  # two samples swapped: rows still in range
    index = index.set_column(index.schema.get_field_index("row"), "row", pa.array(rows, pa.int32()))
    pq.write_table(index, out_dir / INDEX_NAME)
    report = verify(out_dir, check_hashes=False, strict=False)
    assert any(p.startswith("shard-00000.h5: 2 rows hold another sample") for p in report.problems), (
        report.problems
    )
    assert (
        "index.parquet: sha256 differs from catalog.json (the file changed or is corrupt)"
        in verify(out_dir, strict=False).problems
    )


def test_verify_without_hashes_still_sees_a_truncated_shard(raw_dir):
    out_dir, _ = raw_dir
    path = out_dir / "shard-00000.h5"
    path.write_bytes(path.read_bytes()[:-10])
    problems = verify(out_dir, check_hashes=False, strict=False).problems
    assert problems and problems[0].startswith("shard-00000.h5: ") and "truncated" in problems[0]


class _ShardDataset(torch.utils.data.Dataset):
    def __init__(self, reader: ShardReader) -> None:
        self.reader = reader

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int):
        sample = self.reader.read(i)
        return torch.from_numpy(sample["body"]), torch.from_numpy(sample["parse"]), sample["has_face"]


def test_reader_pickles_without_open_handles(raw_dir):
    out_dir, samples = raw_dir
    reader = ShardReader(out_dir)
    reader.read(0)  # opens a handle in this process
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._handles == {}
    np.testing.assert_array_equal(clone.read(4)["body"], samples[4]["body"])


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_reader_in_dataloader_workers(raw_dir, context):
    out_dir, samples = raw_dir
    reader = ShardReader(out_dir)
    reader.read(1)  # the parent already has a handle open: workers must not reuse it
    loader = torch.utils.data.DataLoader(
        _ShardDataset(reader), batch_size=2, num_workers=2, multiprocessing_context=context
    )
    bodies, parses, has_face = zip(*loader)
    body = torch.cat(bodies).numpy()
    np.testing.assert_array_equal(body, np.stack([s["body"] for s in samples]))
    np.testing.assert_array_equal(torch.cat(parses).numpy(), np.stack([s["parse"] for s in samples]))
    assert torch.cat(has_face).tolist() == [s["face_lr"] is not None for s in samples]


def test_reader_reopens_files_in_a_new_process(raw_dir, monkeypatch):
    """A forked worker (new pid) must open its own handles and leave the parent's alone."""
    import os

    out_dir, samples = raw_dir
    reader = ShardReader(out_dir)
    reader.read(0)
    parent_handle = reader._handles[0]
    real_pid = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: real_pid + 1)
    np.testing.assert_array_equal(reader.read(1)["body"], samples[1]["body"])
    assert reader._handles[0] is not parent_handle
    assert parent_handle.id.valid  # not closed by the "child"


def test_device_decode_matches_read_many_on_the_cpu(tmp_path):
    """The GPU path's code (torchvision decode_jpeg on a list), run on the CPU: same images."""
    from deskpro.shards.device_decode import decode_batch

    samples = make_samples(8, no_face=(1, 5))
    write_shards(tmp_path / "jpeg", samples, codec="jpeg")
    reader = ShardReader(tmp_path / "jpeg")
    order = [7, 0, 5, 3, 1]
    decoded = reader.read_many(order)
    on_device = decode_batch(reader.read_jpeg_many(order), FACE, device="cpu")
    assert on_device["has_face"].tolist() == decoded["has_face"].tolist()
    np.testing.assert_array_equal(on_device["parse"].numpy(), decoded["parse"])
    for key in ("body", "face_lr", "face_hr"):
        got = on_device[key].numpy()
        assert got.shape == decoded[key].shape and got.dtype == np.uint8
        # Two libjpeg builds (PIL's, torchvision's) may round the IDCT differently: within 2 levels.
        assert np.abs(got.astype(int) - decoded[key]).max() <= 2, key
    assert not on_device["face_lr"][2].any()  # sample 5: no face -> zeros
    only_faceless = decode_batch(reader.read_jpeg_many([1, 5]), FACE, device="cpu")
    assert only_faceless["face_hr"].shape == (2, FACE, FACE, 3) and not only_faceless["face_hr"].any()
    write_shards(tmp_path / "raw", samples, codec="raw")
    with pytest.raises(ShardError, match="codec 'raw' holds no JPEG bytes"):
        ShardReader(tmp_path / "raw").read_jpeg_many([0])
