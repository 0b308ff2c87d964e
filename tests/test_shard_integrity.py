"""Nothing silent: a tampered catalog, a corrupt byte, an old format are refused with one line."""

from __future__ import annotations

import hashlib
import json

import h5py
import pytest
import torch
from click.testing import CliRunner
from test_shards import make_samples, write_shards

from deskpro.cli import main
from deskpro.shards import CATALOG_NAME, ShardError, ShardReader, verify, verify_or_raise
from deskpro.shards.format import catalog_bytes


@pytest.fixture(params=["raw", "jpeg"])
def shards(tmp_path, request):
    out = tmp_path / request.param
    write_shards(out, make_samples(7), codec=request.param, meta={"dataset": "synthetic"})
    return out


def _catalog(shards) -> dict:
    return json.loads((shards / CATALOG_NAME).read_text())


def _flip_in_chunk(path, dataset: str, chunk: int) -> None:
    """Flip one byte in the middle of a stored chunk of `dataset` (compressed or not)."""
    with h5py.File(path, "r") as f:
        info = f[dataset].id.get_chunk_info(chunk)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        byte = fh.read(1)[0]
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(bytes([byte ^ 0x5A]))


def test_catalog_checksum_is_sha256_of_its_canonical_json(shards):
    catalog = _catalog(shards)
    body = {k: v for k, v in catalog.items() if k != "checksum"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert catalog["checksum"] == hashlib.sha256(canonical.encode()).hexdigest()


def test_an_edited_catalog_is_refused_by_the_reader(shards):
    catalog = _catalog(shards)
    catalog["totals"]["rows"] += 1  # edited by hand, checksum left alone
    (shards / CATALOG_NAME).write_text(json.dumps(catalog))
    with pytest.raises(ShardError, match=r"catalog.json: checksum does not match its content"):
        ShardReader(shards)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["options"].update(codec={"raw": "jpeg", "jpeg": "raw"}[c["options"]["codec"]]), "codec"),
        (lambda c: c["options"].update(body_size=[16, 16]), "body_size"),
        (lambda c: c["options"].update(face_size=8), "face_size"),
        (lambda c: c["shards"][1].update(rows=2), "rows"),
    ],
)
def test_a_catalog_that_disagrees_with_the_shards_is_refused(shards, edit, message):
    """Even with a recomputed checksum, the reader compares the catalog with HDF5 attributes/shapes."""
    catalog = _catalog(shards)
    edit(catalog)
    (shards / CATALOG_NAME).write_bytes(catalog_bytes(catalog))
    with pytest.raises(ShardError, match=rf"shard-0000[01]\.h5: attribute {message} is") as info:
        ShardReader(shards)
    assert "\n" not in str(info.value)
    assert not verify(shards, strict=False).ok


def test_a_version_1_directory_says_to_pack_again(shards):
    (shards / CATALOG_NAME).rename(shards / "manifest.json")
    with pytest.raises(ShardError, match=r"format version 1 \(manifest.json\).*run `deskpro pack` again"):
        ShardReader(shards)
    catalog = _catalog_from(shards / "manifest.json")
    catalog["format_version"] = 1
    (shards / CATALOG_NAME).write_bytes(catalog_bytes(catalog))
    with pytest.raises(
        ShardError, match=r"format_version 1; this deskpro reads version 2: run `deskpro pack`"
    ):
        ShardReader(shards)


def _catalog_from(path) -> dict:
    return json.loads(path.read_text())


def test_every_dataset_carries_a_fletcher32_checksum(shards):
    with h5py.File(shards / "shard-00000.h5", "r") as f:
        names = []
        f.visit(names.append)
        assert names and all(f[n].fletcher32 and f[n].chunks for n in names), names


@pytest.mark.parametrize("dataset, chunk, row", [("body", 1, 1), ("parse", 2, 2)])
def test_a_flipped_byte_fails_at_read_time_naming_file_and_row(tmp_path, dataset, chunk, row):
    """Raw pixels (which decode to plausible images) and gzip parse chunks both fail their checksum."""
    out = tmp_path / "raw"
    write_shards(out, make_samples(7), codec="raw")
    _flip_in_chunk(out / "shard-00001.h5", dataset, chunk)
    reader = ShardReader(out)  # the cheap check does not read pixels
    reader.read(3)  # other rows still read
    with pytest.raises(ShardError) as info:
        reader.read(3 + row)
    message = str(info.value)
    assert f"shard-00001.h5: {dataset} row {row}: checksum or read error" in message
    assert "\n" not in message
    with pytest.raises(ShardError, match=rf"{dataset} row {row}: checksum"):
        reader.read_many([0, 1, 3 + row, 6])


def test_a_flipped_jpeg_byte_fails_at_read_time(tmp_path):
    out = tmp_path / "jpeg"
    write_shards(out, make_samples(7), codec="jpeg")
    _flip_in_chunk(out / "shard-00000.h5", "body", 0)  # all JPEG bytes of the shard: one chunk
    reader = ShardReader(out)
    with pytest.raises(ShardError, match=r"shard-00000\.h5: body row 0: checksum or read error"):
        reader.read(0)


class _Rows(torch.utils.data.Dataset):
    def __init__(self, reader):
        self.reader = reader

    def __len__(self):
        return len(self.reader)

    def __getitem__(self, i):
        return torch.from_numpy(self.reader.read(i)["body"])


def test_a_read_error_in_a_dataloader_worker_stays_one_line(tmp_path):
    out = tmp_path / "raw"
    write_shards(out, make_samples(7), codec="raw")
    _flip_in_chunk(out / "shard-00000.h5", "body", 2)
    loader = torch.utils.data.DataLoader(_Rows(ShardReader(out)), batch_size=7, num_workers=1)
    with pytest.raises(ShardError) as info:
        next(iter(loader))
    assert "\n" not in str(info.value) and "shard-00000.h5: body row 2: checksum" in str(info.value)


def test_verify_or_raise_is_one_line(shards):
    assert verify_or_raise(shards).ok
    _flip_in_chunk(shards / "shard-00002.h5", "has_face", 0)
    (shards / "index.parquet").write_bytes((shards / "index.parquet").read_bytes() + b"x")
    with pytest.raises(ShardError) as info:
        verify_or_raise(shards)
    message = str(info.value)
    assert "\n" not in message and "sha256 differs" in message and "more; `deskpro verify" in message


def test_train_and_evaluate_refuse_a_tampered_catalog_and_verify_first(tmp_path):
    from _train_utils import write_tiny_shards

    shards = write_tiny_shards(tmp_path / "shards")
    runner = CliRunner()
    ckpt = tmp_path / "fake.pt"
    ckpt.write_bytes(b"not a checkpoint")
    _flip_in_chunk(shards / "shard-00000.h5", "body", 0)
    for args in (
        ["train-teacher", str(shards), "-o", str(tmp_path / "run"), "--verify", "--no-progress"],
        ["evaluate", str(shards), "--checkpoint", str(ckpt), "--verify", "--no-progress"],
    ):
        result = runner.invoke(main, args)
        assert result.exit_code == 1, result.output
        assert result.output.strip().count("\n") == 0, result.output
        assert "shard-00000.h5: sha256 differs from catalog.json" in result.output
    assert not (tmp_path / "run").exists()
    catalog = _catalog(shards)
    catalog["meta"]["dataset"] = "prcc"
    (shards / CATALOG_NAME).write_text(json.dumps(catalog))
    for args in (
        ["train-teacher", str(shards), "-o", str(tmp_path / "run")],
        ["evaluate", str(shards), "--checkpoint", str(ckpt)],
    ):
        result = runner.invoke(main, args)
        assert result.exit_code == 1 and "catalog.json: checksum does not match" in result.output
        assert result.output.strip().count("\n") == 0, result.output
