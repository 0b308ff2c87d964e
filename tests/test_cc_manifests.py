"""LTCC, VC-Clothes, DeepChange, LaST and the CSV table layout: rows against the reference loaders'
rules (re-derived in tests/_cc_layouts.py), where those rules go wrong, and the errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from deskpro import cli
from deskpro.manifests import ManifestError, scan
from tests._cc_layouts import (
    deepchange_files,
    deepchange_lists,
    last_files,
    ltcc_files,
    make_tree,
    reference_deepchange,
    reference_last,
    reference_ltcc,
    reference_vc,
    vc_files,
    write_deepchange_lists,
)


def ours(table) -> dict[str, tuple]:
    return {
        r["path"]: (r["split"], r["pid"], r["camid"], r["clothes_id"], r["subset"]) for r in table.to_pylist()
    }


def relabelled(values: list[int]) -> list[int]:
    order = {v: i for i, v in enumerate(sorted(set(values)))}
    return [order[v] for v in values]


def same_partition(a: list, b: list) -> bool:
    """a and b label the same groups (a bijection between their values)."""
    return len(set(zip(a, b))) == len(set(a)) == len(set(b))


def compare(mine: dict, ref: dict, groups: dict[str, tuple[str, ...]], *, train_relabelled=True) -> None:
    """Same paths, splits and cameras; pids equal (train: up to the reference's relabelling);
    clothes ids the same partition within each group of splits the reference numbers together."""
    assert set(mine) == set(ref)
    for path, (split, pid, camid, _, _) in mine.items():
        assert ref[path][0] == split, path
        assert ref[path][2] == camid, path
        if split != "train" or not train_relabelled:
            assert ref[path][1] == pid, path
    train = sorted(p for p in mine if mine[p][0] == "train")
    assert relabelled([mine[p][1] for p in train]) == [ref[p][1] for p in train]
    for splits in groups.values():
        paths = sorted(p for p in mine if mine[p][0] in splits)
        assert paths
        assert same_partition([mine[p][3] for p in paths], [ref[p][3] for p in paths]), splits


# ---- LTCC


def test_ltcc_rows_equal_the_reference_loader(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "LTCC_ReID", ltcc_files())
    mine = ours(scan("ltcc", root))
    compare(mine, reference_ltcc(root), {"train": ("train",), "test": ("query", "gallery")})
    # Spot rows: pid, camera - 1, an outfit per (pid, clothes), unique over the manifest.
    assert mine["query/010_1_c10_000777.png"][:3] == ("query", 10, 9)
    assert mine["test/010_2_c4_000001.png"][:3] == ("gallery", 10, 3)
    assert mine["query/010_1_c10_000777.png"][3] == mine["test/010_1_c1_000000.png"][3]
    assert mine["query/010_1_c10_000777.png"][3] != mine["test/010_2_c2_000000.png"][3]
    assert len({r[3] for r in mine.values()}) == 8  # 4 people x 2 outfits
    assert {r[4] for r in mine.values()} == {"train", "query", "gallery"}


def test_ltcc_reference_regex_reads_the_root_folder_names(tmp_path: Path) -> None:
    """Simple-CCReID searches `(\\w+)_c` in the whole path: under a folder named like `my_cc` every
    image gets the clothes key "my"; deskpro reads the file name."""
    root = make_tree(tmp_path / "my_cc" / "LTCC_ReID", ltcc_files())
    ref = reference_ltcc(root)
    assert len({v[3] for p, v in ref.items() if v[0] != "train"}) == 1  # every outfit merged
    mine = ours(scan("ltcc", root))
    assert len({v[3] for v in mine.values() if v[0] != "train"}) == 4


def test_ltcc_mismatched_names_are_an_error(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "LTCC_ReID", [*ltcc_files(), "query/010_c10_000777.png"])
    with pytest.raises(ManifestError, match=r"1 file name\(s\) do not match the LTCC.*query/010_c10_000777"):
        scan("ltcc", root)


# ---- VC-Clothes


def test_vc_clothes_rows_equal_the_reference_loader(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "VC-Clothes", vc_files())
    mine = ours(scan("vc-clothes", root))
    compare(mine, reference_vc(root), {"train": ("train",), "test": ("query", "gallery")})
    assert mine["query/0010-04-02-09.jpg"][:3] == ("query", 10, 3)
    assert mine["query/0010-04-02-09.jpg"][3] == mine["gallery/0010-04-02-01.jpg"][3]
    assert mine["query/0010-02-01-09.jpg"][3] != mine["gallery/0010-04-02-01.jpg"][3]


def test_vc_clothes_reference_pattern_reads_the_root_folder_names(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "2021-03-04-05" / "VC-Clothes", vc_files())
    ref = reference_vc(root)
    assert {v[1] for v in ref.values() if v[0] != "train"} == {2021}  # every image: pid 2021
    assert {v[1] for v in ours(scan("vc-clothes", root)).values() if v[0] != "train"} == {10, 11, 12}


def test_vc_clothes_camera_protocols_equal_the_reference_modes(tmp_path: Path) -> None:
    """cam2-3 / cam3-4 select the query and gallery rows of Simple-CCReID's vcclothes_sc / _cc."""
    from deskpro.train.protocols import build_protocols

    root = make_tree(tmp_path / "VC-Clothes", vc_files())
    table = scan("vc-clothes", root)
    paths = table.column("path").to_pylist()
    built = {p.name: p for p in build_protocols(table, ("standard", "cam2-3", "cam3-4"))}
    for name, mode in (("cam2-3", "sc"), ("cam3-4", "cc")):
        ref = reference_vc(root, mode)
        for role, positions in (("query", built[name].query), ("gallery", built[name].gallery)):
            assert {paths[i] for i in positions} == {p for p, v in ref.items() if v[0] == role}
        assert built[name].mode == "standard"


# ---- DeepChange


def _deepchange_root(tmp_path: Path, trailing_blank: bool = False) -> Path:
    lists = deepchange_lists()
    root = make_tree(tmp_path / "DeepChangeDataset", deepchange_files(lists))
    write_deepchange_lists(root, lists, trailing_blank=trailing_blank)
    return root


def test_deepchange_rows_equal_the_reference_loader(tmp_path: Path) -> None:
    root = _deepchange_root(tmp_path)
    mine = ours(scan("deepchange", root))
    ref = reference_deepchange(root)
    compare(mine, ref, {"train": ("train",), "val": ("val",), "test": ("query", "gallery")})
    subsets = {(v[0], v[4]) for v in mine.values()}
    assert subsets == {
        ("train", "train"),
        ("val", "query"),
        ("val", "gallery"),
        ("query", "query"),
        ("gallery", "gallery"),
    }
    # camid is the tracklet: the same camera's other tracklet stays a true match.
    query = next(p for p in mine if p.startswith("test-set-query/P0050"))
    same_cam = [p for p in mine if p.startswith("test-set-gallery/P0050_C01")]
    assert same_cam and all(mine[p][2] != mine[query][2] for p in same_cam)


def test_deepchange_blank_lines_and_missing_images(tmp_path: Path) -> None:
    root = _deepchange_root(tmp_path, trailing_blank=True)
    with pytest.raises(IndexError):  # the reference's split(',')[1] on the blank line
        reference_deepchange(root)
    assert scan("deepchange", root).num_rows == len(deepchange_files(deepchange_lists()))
    lines = (root / "val-set-query-bbox.txt").read_text().splitlines()
    (root / lines[0].split(",")[0].join(["val-set-query/", ""])).unlink()
    with pytest.raises(
        ManifestError, match=r"1 listed image\(s\) missing, e.g. val-set-query-bbox.txt line 1"
    ):
        scan("deepchange", root)
    (root / "val-set-query-bbox.txt").write_text("P0030_C01_D01_x.jpg\n")
    with pytest.raises(ManifestError, match=r"val-set-query-bbox.txt line 1: expected NAME,TRACKLET"):
        scan("deepchange", root)
    (root / "val-set-query-bbox.txt").unlink()
    with pytest.raises(ManifestError, match=r"val-set-query-bbox.txt: missing DeepChange list file"):
        scan("deepchange", root)


# ---- LaST


def test_last_rows_equal_the_reference_loader(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "last", last_files())
    mine = ours(scan("last", root))
    ref = reference_last(root)
    assert set(mine) == set(ref)
    for path, (split, pid, camid, clothes, _) in mine.items():
        assert ref[path][0] == split
        assert camid == -1  # no camera labels; the reference numbers every image apart instead
        if split == "train":
            continue
        assert ref[path][1] == pid
        assert clothes == -1 and ref[path][3] == pid  # the reference's placeholder: the pid
    train = sorted(p for p in mine if mine[p][0] == "train")
    assert relabelled([mine[p][1] for p in train]) == [ref[p][1] for p in train]
    assert same_partition([mine[p][3] for p in train], [ref[p][3] for p in train])
    for split in ("val", "query", "gallery"):  # every image its own reference camera
        cams = [
            ref[p][2] for p in mine if mine[p][0] in ((split,) if split == "val" else ("query", "gallery"))
        ]
        assert len(cams) == len(set(cams))


def test_last_reference_lists_nothing_under_a_root_named_query(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "query_runs" / "last", last_files())
    assert not [v for v in reference_last(root).values() if v[0] in ("train", "gallery")]
    mine = ours(scan("last", root))
    assert {v[0] for v in mine.values()} == {"train", "val", "query", "gallery"}


def test_last_file_pid_must_match_its_folder(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "last", [*last_files(), "train/000003/000004_001_00001_0.jpg"])
    with pytest.raises(ManifestError, match="do not match the LaST.*train/000003/000004_001"):
        scan("last", root)


# ---- a user's own dataset


def _table_root(tmp_path: Path, lines: list[str]) -> tuple[Path, Path]:
    root = make_tree(tmp_path / "mine", ["a/1.jpg", "a/2.jpg", "b/3.png", "b/4.jpg", "c/5.jpg"])
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(["path,pid,camid,clothes_id,split", *lines]) + "\n")
    return root, labels


GOOD = ["a/1.jpg,7,0,3,train", "a/2.jpg,7,1,,train", "b/3.png,8,0,5,query", "b/4.jpg,8,1,6,gallery"]


def test_table_rows_are_the_labels(tmp_path: Path) -> None:
    root, labels = _table_root(tmp_path, GOOD)
    mine = ours(scan("table", root, labels))
    assert mine == {
        "a/1.jpg": ("train", 7, 0, 3, "train"),
        "a/2.jpg": ("train", 7, 1, -1, "train"),
        "b/3.png": ("query", 8, 0, 5, "query"),
        "b/4.jpg": ("gallery", 8, 1, 6, "gallery"),
    }


@pytest.mark.parametrize(
    "bad, message",
    [
        ("c/5.jpg,x,0,1,train", r"labels.csv line 6: pid 'x' is not an integer"),
        ("c/5.jpg,1,0,1,test", r"labels.csv line 6: split 'test' is not one of train, val, query, gallery"),
        ("c/9.jpg,1,0,1,train", r"labels.csv line 6: c/9.jpg: no such file under"),
        ("../x.jpg,1,0,1,train", r"labels.csv line 6: path '../x.jpg' must be relative to the root"),
        ("a/1.jpg,1,0,1,train", r"labels.csv line 6: a/1.jpg already listed on line 2"),
        ("c/5.jpg,1,0,-3,train", r"labels.csv line 6: clothes_id -3 must be -1"),
        ("c/5.jpg,1,0,1,val", r"labels.csv line 6: a val row needs a subset column"),
        ("c/5.jpg,1,0", r"labels.csv line 6: 3 field\(s\), the header has 5"),
    ],
)
def test_table_bad_rows_name_the_file_and_line(tmp_path: Path, bad: str, message: str) -> None:
    root, labels = _table_root(tmp_path, [*GOOD, bad])
    with pytest.raises(ManifestError, match=message):
        scan("table", root, labels)


def test_table_cli_and_its_one_line_errors(tmp_path: Path) -> None:
    root, labels = _table_root(tmp_path, GOOD)
    out = tmp_path / "m.parquet"
    run = CliRunner().invoke(
        cli.main, ["manifest", "table", str(root), "--labels", str(labels), "-o", str(out)]
    )
    assert run.exit_code == 0, run.output
    assert out.is_file() and "table manifest" in run.output
    labels.write_text("path,pid,split\n")
    run = CliRunner().invoke(
        cli.main, ["manifest", "table", str(root), "--labels", str(labels), "-o", str(out)]
    )
    assert run.exit_code != 0 and "Traceback" not in run.output
    assert "labels.csv line 1: header lacks column(s) camid, clothes_id" in run.output
    run = CliRunner().invoke(cli.main, ["manifest", "table", str(root), "-o", str(out)])
    assert run.exit_code != 0 and "needs --labels" in run.output
    run = CliRunner().invoke(
        cli.main, ["manifest", "ltcc", str(root), "--labels", str(labels), "-o", str(out)]
    )
    assert run.exit_code != 0 and "--labels applies only to the table layout" in run.output
    run = CliRunner().invoke(
        cli.main, ["manifest", "table", str(root), "--labels", str(labels), "-o", str(labels)]
    )
    assert run.exit_code != 0 and labels.read_text() == "path,pid,split\n"  # never over the labels


@pytest.mark.parametrize(
    "dataset, files",
    [
        ("ltcc", ltcc_files()),
        ("vc-clothes", vc_files()),
        ("deepchange", deepchange_files(deepchange_lists())),
        ("last", last_files()),
    ],
)
def test_cli_reads_each_layout(tmp_path: Path, dataset: str, files: list[str]) -> None:
    root = make_tree(tmp_path / "data", files)
    if dataset == "deepchange":
        write_deepchange_lists(root, deepchange_lists())
    out = tmp_path / "m.parquet"
    run = CliRunner().invoke(cli.main, ["manifest", dataset, str(root), "-o", str(out)])
    assert run.exit_code == 0, run.output
    assert f"{dataset} manifest" in run.output and out.is_file()
