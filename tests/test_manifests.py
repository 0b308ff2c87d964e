"""Dataset manifests: each real folder layout scanned into exact rows, the errors, Parquet, the CLI."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from deskpro import cli
from deskpro.manifests import (
    DATASETS,
    ManifestError,
    format_stats,
    manifest_info,
    read_manifest,
    scan,
    skipped_counts,
    write_manifest,
)


def make_tree(root: Path, files: list[str]) -> Path:
    """Empty files at the given relative paths: only names matter to a scan."""
    for rel in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    return root


def rows_by_path(table: pa.Table) -> dict[str, dict]:
    return {r["path"]: r for r in table.to_pylist()}


PRCC_FILES = [
    "rgb/train/001/A_cropped_rgb001.jpg",
    "rgb/train/001/B_cropped_rgb010.jpg",
    "rgb/train/001/C_cropped_rgb100.jpg",
    "rgb/train/002/A_cropped_rgb001.jpg",
    "rgb/train/002/C_cropped_rgb002.jpg",
    "rgb/val/003/A_x.jpg",
    "rgb/val/003/B_x.jpg",
    "rgb/val/003/C_x.jpg",
    "rgb/test/A/004/cropped_rgb001.jpg",
    "rgb/test/B/004/cropped_rgb002.jpg",
    "rgb/test/C/004/cropped_rgb003.jpg",
    "rgb/test/A/005/cropped_rgb001.jpg",
    "rgb/test/B/005/cropped_rgb001.jpg",
    "rgb/test/C/005/cropped_rgb001.jpg",
]


@pytest.fixture
def prcc_root(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "prcc", PRCC_FILES)


def test_prcc_rows_exact(prcc_root: Path) -> None:
    table = scan("prcc", prcc_root)
    rows = rows_by_path(table)
    assert len(rows) == len(PRCC_FILES)
    # (pid, camid, clothes_id, split, subset); clothes: dense over sorted (pid, camera is C)
    expected = {
        "rgb/train/001/A_cropped_rgb001.jpg": (1, 0, 0, "train", "train"),
        "rgb/train/001/B_cropped_rgb010.jpg": (1, 1, 0, "train", "train"),
        "rgb/train/001/C_cropped_rgb100.jpg": (1, 2, 1, "train", "train"),
        "rgb/train/002/A_cropped_rgb001.jpg": (2, 0, 2, "train", "train"),
        "rgb/train/002/C_cropped_rgb002.jpg": (2, 2, 3, "train", "train"),
        "rgb/val/003/A_x.jpg": (3, 0, 4, "val", "gallery"),
        "rgb/val/003/B_x.jpg": (3, 1, 4, "val", "query_same"),
        "rgb/val/003/C_x.jpg": (3, 2, 5, "val", "query_diff"),
        "rgb/test/A/004/cropped_rgb001.jpg": (4, 0, 6, "gallery", "gallery"),
        "rgb/test/B/004/cropped_rgb002.jpg": (4, 1, 6, "query", "query_same"),
        "rgb/test/C/004/cropped_rgb003.jpg": (4, 2, 7, "query", "query_diff"),
        "rgb/test/A/005/cropped_rgb001.jpg": (5, 0, 8, "gallery", "gallery"),
        "rgb/test/B/005/cropped_rgb001.jpg": (5, 1, 8, "query", "query_same"),
        "rgb/test/C/005/cropped_rgb001.jpg": (5, 2, 9, "query", "query_diff"),
    }
    for path, (pid, camid, clothes, split, subset) in expected.items():
        row = rows[path]
        assert (row["pid"], row["camid"], row["clothes_id"], row["split"], row["subset"]) == (
            pid,
            camid,
            clothes,
            split,
            subset,
        ), path
        assert row["sample_id"] == path.removesuffix(".jpg")
    assert table.schema.field("pid").type == pa.int64()
    assert manifest_info(table)["dataset"] == "prcc"
    assert manifest_info(table)["root"] == str(prcc_root.resolve())


def test_non_image_files_are_skipped_and_counted(prcc_root: Path) -> None:
    make_tree(prcc_root, ["rgb/train/001/Thumbs.db", "rgb/test/A/004/notes.txt", "rgb/val/.DS_Store"])
    table = scan("prcc", prcc_root)
    assert table.num_rows == len(PRCC_FILES)
    assert skipped_counts(table) == {"non_image": 3, "junk": 0}
    assert "3 non-image file(s)" in format_stats(table)


@pytest.mark.parametrize(
    ("extra", "removed", "message"),
    [
        ([], "rgb/val", "rgb/val: missing split folder"),
        ([], "rgb/test/C", "rgb/test/C: missing camera folder"),
        ([], "rgb", "missing PRCC folder rgb/"),
        (["rgb/train/001/D_1.jpg", "rgb/train/001/x.png"], None, "2 file name(s) do not match the PRCC"),
        (["rgb/train/abc/A_1.jpg"], None, "rgb/train/abc/"),
        (["rgb/train/001/A_cropped_rgb001.png"], None, "duplicate sample id(s)"),
    ],
)
def test_prcc_errors(prcc_root: Path, extra: list[str], removed: str | None, message: str) -> None:
    make_tree(prcc_root, extra)
    if removed:
        _remove_tree(prcc_root / removed)
    with pytest.raises(ManifestError, match=re.escape(message)) as info:
        scan("prcc", prcc_root)
    assert "\n" not in str(info.value)
    assert str(prcc_root) in str(info.value)


def test_prcc_mismatch_error_quotes_examples(prcc_root: Path) -> None:
    make_tree(prcc_root, [f"rgb/train/001/bad{i}.jpg" for i in range(5)])
    examples = "e.g. rgb/train/001/bad0.jpg, rgb/train/001/bad1.jpg, rgb/train/001/bad2.jpg"
    with pytest.raises(ManifestError, match=r"5 file name\(s\) .*" + re.escape(examples) + "$"):
        scan("prcc", prcc_root)


def test_prcc_empty_split_and_empty_camera(tmp_path: Path) -> None:
    no_val = [f for f in PRCC_FILES if not f.startswith("rgb/val")]
    root = make_tree(tmp_path / "a", no_val)
    (root / "rgb/val/003").mkdir(parents=True)
    with pytest.raises(ManifestError, match="split 'val' has no images"):
        scan("prcc", root)
    root = make_tree(tmp_path / "b", [f for f in PRCC_FILES if not f.startswith("rgb/test/B")])
    (root / "rgb/test/B").mkdir()
    with pytest.raises(ManifestError, match="rgb/test/B: camera folder has no images"):
        scan("prcc", root)


CELEB_FILES = [
    "train/1_1_0.jpg",
    "train/1_1_1.jpg",
    "train/1_2_0.jpg",
    "train/2_1_0.jpg",
    "query/3_1_0.jpg",
    "gallery/3_2_0.jpg",
    "gallery/3_1_1.jpg",
    "gallery/12_7_3.jpg",
]


@pytest.mark.parametrize("dataset", ["celeb-reid", "celeb-reid-light"])
def test_celeb_rows_exact(tmp_path: Path, dataset: str) -> None:
    root = make_tree(tmp_path / "celeb", CELEB_FILES)
    table = scan(dataset, root)
    rows = rows_by_path(table)
    # pid = PID, camid = SEQ (the y-th image of the id), no clothes id in any source: -1
    expected = {
        "train/1_1_0.jpg": (1, 1, -1, "train"),
        "train/1_1_1.jpg": (1, 1, -1, "train"),
        "train/1_2_0.jpg": (1, 2, -1, "train"),
        "train/2_1_0.jpg": (2, 1, -1, "train"),
        "query/3_1_0.jpg": (3, 1, -1, "query"),
        "gallery/3_2_0.jpg": (3, 2, -1, "gallery"),
        "gallery/3_1_1.jpg": (3, 1, -1, "gallery"),
        "gallery/12_7_3.jpg": (12, 7, -1, "gallery"),
    }
    assert set(rows) == set(expected)
    for path, (pid, camid, clothes, split) in expected.items():
        row = rows[path]
        assert (row["pid"], row["camid"], row["clothes_id"], row["split"], row["subset"]) == (
            pid,
            camid,
            clothes,
            split,
            split,
        )
    assert manifest_info(table)["dataset"] == dataset


def test_celeb_errors(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "celeb", CELEB_FILES + ["train/1_1.jpg", "query/a_b_c.jpg"])
    with pytest.raises(ManifestError, match=r"2 file name\(s\) do not match the Celeb-reID"):
        scan("celeb-reid", root)
    root = make_tree(tmp_path / "c2", [f for f in CELEB_FILES if not f.startswith("query")])
    with pytest.raises(ManifestError, match="query: missing split folder"):
        scan("celeb-reid", root)
    (root / "query").mkdir()
    with pytest.raises(ManifestError, match="split 'query' has no images"):
        scan("celeb-reid", root)


MARKET_FILES = [
    "bounding_box_train/0002_c1s1_000451_03.jpg",
    "bounding_box_train/0002_c3s1_000551_01.jpg",
    "bounding_box_train/0007_c6s3_086542_02.jpg",
    "query/0003_c2s1_000001_00.jpg",
    "bounding_box_test/-1_c1s1_000401_03.jpg",
    "bounding_box_test/-1_c4s2_000101_01.jpg",
    "bounding_box_test/0000_c6s1_000001_05.jpg",
    "bounding_box_test/0003_c1s1_000123_02.jpg",
    "bounding_box_test/0005_c2_f0046985.jpg",  # DukeMTMC-reID style
]


def test_market_rows_exact(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "market", MARKET_FILES + ["bounding_box_test/Thumbs.db"])
    table = scan("market1501", root)
    rows = rows_by_path(table)
    expected = {
        "bounding_box_train/0002_c1s1_000451_03.jpg": (2, 0, "train"),
        "bounding_box_train/0002_c3s1_000551_01.jpg": (2, 2, "train"),
        "bounding_box_train/0007_c6s3_086542_02.jpg": (7, 5, "train"),
        "query/0003_c2s1_000001_00.jpg": (3, 1, "query"),
        "bounding_box_test/0000_c6s1_000001_05.jpg": (0, 5, "gallery"),  # distractor kept
        "bounding_box_test/0003_c1s1_000123_02.jpg": (3, 0, "gallery"),
        "bounding_box_test/0005_c2_f0046985.jpg": (5, 1, "gallery"),
    }
    assert set(rows) == set(expected)  # junk (pid -1) skipped
    for path, (pid, camid, split) in expected.items():
        row = rows[path]
        assert (row["pid"], row["camid"], row["clothes_id"], row["split"], row["subset"]) == (
            pid,
            camid,
            -1,
            split,
            split,
        )
    assert skipped_counts(table) == {"non_image": 1, "junk": 2}
    stats = format_stats(table)
    assert "2 junk image(s)" in stats
    assert "1 non-image file(s)" in stats


def test_market_errors(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "m1", MARKET_FILES + ["query/0003.jpg", "query/0003_c0s1_0.jpg"])
    with pytest.raises(ManifestError, match=r"2 file name\(s\) do not match the Market-1501"):
        scan("market1501", root)
    root = make_tree(tmp_path / "m2", [f for f in MARKET_FILES if not f.startswith("bounding_box_test")])
    with pytest.raises(ManifestError, match="bounding_box_test: missing split folder"):
        scan("market1501", root)
    only_junk = [f for f in MARKET_FILES if not f.startswith("query")] + ["query/-1_c1s1_000001_00.jpg"]
    root = make_tree(tmp_path / "m3", only_junk)
    with pytest.raises(ManifestError, match="split 'query' has no images"):
        scan("market1501", root)


def test_unknown_dataset_and_missing_root(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="unknown dataset 'duke'"):
        scan("duke", tmp_path)
    with pytest.raises(ManifestError, match="missing dataset root folder"):
        scan("prcc", tmp_path / "absent")


def test_parquet_round_trip_keeps_rows_and_metadata(prcc_root: Path, tmp_path: Path) -> None:
    table = scan("prcc", prcc_root)
    out = tmp_path / "out" / "manifest.parquet"
    write_manifest(table, out)
    back = read_manifest(out)
    assert back.to_pylist() == table.to_pylist()
    assert manifest_info(back) == manifest_info(table)
    assert set(manifest_info(back)) == {"dataset", "root", "scan_time"}
    assert manifest_info(back)["scan_time"].startswith("20")
    assert not list(out.parent.glob("*.tmp"))


def test_read_manifest_errors(prcc_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no such manifest file"):
        read_manifest(tmp_path / "none.parquet")
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(ManifestError, match="garbage.parquet: not a readable Parquet file"):
        read_manifest(garbage)
    table = scan("prcc", prcc_root)
    pq.write_table(table.drop_columns(["camid"]), tmp_path / "nocam.parquet")
    with pytest.raises(ManifestError, match="nocam.parquet: not a manifest, missing column"):
        read_manifest(tmp_path / "nocam.parquet")
    wrong = table.set_column(2, "pid", pa.array([str(p) for p in table.column("pid").to_pylist()]))
    pq.write_table(wrong, tmp_path / "wrong.parquet")
    with pytest.raises(ManifestError, match="column 'pid' is string"):
        read_manifest(tmp_path / "wrong.parquet")
    pq.write_table(table.replace_schema_metadata(None), tmp_path / "nometa.parquet")
    with pytest.raises(ManifestError, match="metadata lacks dataset, root, scan_time"):
        read_manifest(tmp_path / "nometa.parquet")


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("split", "Train", r"column 'split' holds 'Train'; allowed: train, val, query, gallery"),
        ("subset", "query-diff", r"column 'subset' holds 'query-diff'; allowed: train, val"),
        ("pid", -3, r"column 'pid' holds -3; its values are >= 0"),
        ("camid", -2, r"column 'camid' holds -2; its values are >= -1"),
        ("clothes_id", -2, r"column 'clothes_id' holds -2; its values are >= -1"),
        ("path", "../outside/a.jpg", r"column 'path' holds '../outside/a.jpg'; paths are relative"),
    ],
)
def test_unknown_values_in_closed_columns_are_refused_naming_file_column_and_value(
    prcc_root: Path, tmp_path: Path, column: str, value, message: str
) -> None:
    table = scan("prcc", prcc_root)
    values = table.column(column).to_pylist()
    values[3] = value  # one bad row among good ones
    bad = table.set_column(table.schema.get_field_index(column), table.schema.field(column), [values])
    write_manifest(bad, tmp_path / "bad.parquet")
    with pytest.raises(ManifestError, match=rf"bad.parquet: {message}"):
        read_manifest(tmp_path / "bad.parquet")
    read_manifest(write_and_return(table, tmp_path / "good.parquet"))  # the scan's own values pass


def write_and_return(table: pa.Table, path: Path) -> Path:
    write_manifest(table, path)
    return path


def parse_stats(text: str) -> dict[tuple[str, str], list[str]]:
    """(split, subset) -> [ids, images, clothes] from format_stats' fixed columns."""
    table, split = {}, ""
    for line in text.splitlines()[2:-1]:
        split = line[2:11].strip() or split
        table[(split, line[11:23].strip())] = line[23:].split()
    return table


def test_format_stats_counts_per_split_and_subset(prcc_root: Path) -> None:
    stats = parse_stats(format_stats(scan("prcc", prcc_root)))
    assert stats[("train", "train")] == ["2", "5", "4"]  # ids, images, clothes
    assert stats[("val", "(all)")] == ["1", "3", "2"]
    assert stats[("val", "query_same")] == ["1", "1", "1"]
    assert stats[("query", "(all)")] == ["2", "4", "4"]
    assert stats[("query", "query_diff")] == ["2", "2", "2"]
    assert stats[("gallery", "gallery")] == ["2", "2", "2"]
    assert stats[("total", "")] == ["5", "14", "10"]


def test_cli_manifest(prcc_root: Path, tmp_path: Path) -> None:
    assert set(cli.data.MANIFEST_DATASETS) == set(DATASETS)
    out = tmp_path / "m.parquet"
    result = CliRunner().invoke(cli.main, ["manifest", "prcc", str(prcc_root), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "query_same" in result.output
    assert read_manifest(out).num_rows == len(PRCC_FILES)
    _remove_tree(prcc_root / "rgb/val")
    result = CliRunner().invoke(cli.main, ["manifest", "prcc", str(prcc_root), "-o", str(out)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"Error: {prcc_root / 'rgb/val'}: missing split folder"]


def test_generation_options_only_for_synthetic(prcc_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.parquet"
    result = CliRunner().invoke(cli.main, ["manifest", "prcc", str(prcc_root), "-o", str(out), "--seed", "1"])
    assert result.exit_code != 0
    assert "only to the synthetic dataset" in result.output
    assert not out.exists()


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path)


# ---- entries a scan cannot read: skipped, counted and named, never a traceback


def _manifest_cli(root: Path, out: Path):
    return CliRunner().invoke(cli.main, ["manifest", "prcc", str(root), "-o", str(out)])


def test_a_symlink_loop_is_skipped_counted_and_named(prcc_root: Path, tmp_path: Path) -> None:
    person = prcc_root / "rgb/train/001"
    (person / "A_loop.jpg").symlink_to(person / "A_loop.jpg")  # points at itself
    (prcc_root / "rgb/test/A/006").symlink_to(prcc_root / "rgb/test/A/007")
    (prcc_root / "rgb/test/A/007").symlink_to(prcc_root / "rgb/test/A/006")  # a pair of folder links
    table = scan("prcc", prcc_root)
    assert table.num_rows == len(PRCC_FILES)
    assert skipped_counts(table)["unreadable"] == 3
    stats = format_stats(table)
    assert "skipped 3 unreadable entries" in stats and "rgb/train/001/A_loop.jpg (Too many levels" in stats
    result = _manifest_cli(prcc_root, tmp_path / "m.parquet")
    assert result.exit_code == 0 and result.exception is None and "rgb/test/A/006" in result.output


def test_an_unreadable_folder_is_skipped_counted_and_named(prcc_root: Path, monkeypatch) -> None:
    import os

    blocked = str(prcc_root / "rgb/train/002")
    real = os.scandir

    def scandir(path):  # the test runs as root, where chmod 000 blocks nothing: refuse like the OS
        if str(path) == blocked:
            raise PermissionError(13, "Permission denied", blocked)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    table = scan("prcc", prcc_root)
    assert table.num_rows == len(PRCC_FILES) - 2  # 002's two images were not readable
    assert "skipped 1 unreadable entries: rgb/train/002/ (Permission denied)" in format_stats(table)


def test_a_non_utf8_file_name_is_skipped_counted_and_named(prcc_root: Path, tmp_path: Path) -> None:
    import os

    folder = os.fsencode(prcc_root / "rgb/train/001")
    with open(folder + b"/A_caf\xe9.jpg", "wb"):  # Latin-1 "café": not UTF-8
        pass
    table = scan("prcc", prcc_root)
    assert table.num_rows == len(PRCC_FILES)
    assert skipped_counts(table)["bad_names"] == 1
    assert "skipped 1 non-UTF-8 names: rgb/train/001/A_caf\\udce9.jpg" in format_stats(table)
    result = _manifest_cli(prcc_root, tmp_path / "m.parquet")
    assert result.exit_code == 0 and result.exception is None
    assert read_manifest(tmp_path / "m.parquet").num_rows == len(PRCC_FILES)


def test_manifest_never_writes_over_an_image_or_the_ground_truth(prcc_root: Path, tmp_path: Path) -> None:
    image = next(prcc_root.rglob("*.jpg"))
    before = image.read_bytes()
    result = CliRunner().invoke(cli.main, ["manifest", "prcc", str(prcc_root), "-o", str(image)])
    assert result.exit_code != 0 and "is an input of this command" in result.output
    assert image.read_bytes() == before
    out = tmp_path / "m.parquet"
    assert CliRunner().invoke(cli.main, ["manifest", "prcc", str(prcc_root), "-o", str(out)]).exit_code == 0
    again = CliRunner().invoke(cli.main, ["manifest", "prcc", str(prcc_root), "-o", str(out)])
    assert again.exit_code == 0, again.output  # an earlier manifest is replaced
    forced = CliRunner().invoke(cli.main, ["manifest", "prcc", str(prcc_root), "-o", str(image), "--force"])
    assert forced.exit_code != 0 and "is an input" in forced.output  # inside ROOT: never, even forced
    assert image.read_bytes() == before
    foreign = tmp_path / "notes.parquet"
    foreign.write_bytes(b"PAR1 not a manifest")
    refused = CliRunner().invoke(cli.main, ["manifest", "prcc", str(prcc_root), "-o", str(foreign)])
    assert refused.exit_code != 0 and foreign.read_bytes() == b"PAR1 not a manifest"
    assert (
        CliRunner()
        .invoke(cli.main, ["manifest", "prcc", str(prcc_root), "-o", str(foreign), "--force"])
        .exit_code
        == 0
    )
