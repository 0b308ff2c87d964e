"""The checkpoint registry: listing, and size/sha256 verification of files a user fetched."""

import hashlib

from click.testing import CliRunner

from deskpro import weights
from deskpro.cli import main


def _entry_for(path, sha=None):
    data = path.read_bytes()
    return weights.OfficialWeights(
        "test", path.name, len(data), sha or hashlib.sha256(data).hexdigest(), "here", "MIT", "test"
    )


def test_list_names_every_file_and_source():
    result = CliRunner().invoke(main, ["weights", "list"])
    assert result.exit_code == 0
    for entry in weights.REGISTRY:
        assert entry.file in result.output
        assert f"{entry.size:,}" in result.output if entry.size else "size not published" in result.output
    assert "academic, non-commercial" in result.output


def test_verify_file_accepts_exact_copy_and_names_size_and_hash_problems(tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(b"0123456789" * 100)
    entry = _entry_for(path)
    assert weights.verify_file(path, entry) is None
    # a sha256 prefix (as published for some files) is compared as a prefix
    assert weights.verify_file(path, _entry_for(path, sha=entry.sha256[:8])) is None

    data = bytearray(path.read_bytes())
    data[500] ^= 1
    path.write_bytes(bytes(data))
    assert "sha256" in weights.verify_file(path, entry)

    path.write_bytes(b"short")
    assert "size 5 bytes" in weights.verify_file(path, entry)


def test_verify_dir_fails_on_wrong_file_and_on_empty_dir(tmp_path):
    report = weights.verify_dir(tmp_path)
    assert not report.ok and "no official checkpoint found" in report.format()

    (tmp_path / "mobilenet0.25_Final.pth").write_bytes(b"not the real file")
    report = weights.verify_dir(tmp_path)
    assert not report.ok
    assert "BAD: size 17 bytes" in report.format()
    assert "absent" in report.format()  # the others are merely absent

    result = CliRunner().invoke(main, ["weights", "verify", str(tmp_path)])
    assert result.exit_code == 1 and "BAD" in result.output


def test_file_without_published_hash_is_reported_present_not_checked(tmp_path):
    (tmp_path / "osnet_x1_0_imagenet.pth").write_bytes(b"any bytes")
    report = weights.verify_dir(tmp_path)
    assert report.ok
    assert "present (no published size or sha256 to check)" in report.format()
