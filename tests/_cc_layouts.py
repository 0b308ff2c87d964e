"""Small trees of the cloth-changing benchmarks in their real naming, and plain re-derivations of
Simple-CCReID's loaders (`data/datasets/{ltcc,vcclothes,deepchange,last}.py`) to compare against.

The re-derivations follow the reference rules as written, whole-path regular expressions included:
each returns {path relative to the dataset root: (split, pid, camid, clothes_id)} with the
reference's own numbering (train pids relabelled; clothes numbered per group). The trees only need
the fields the loaders read; image files are empty unless `write` is given.
"""

from __future__ import annotations

import glob
import os.path as osp
import re
from collections.abc import Callable
from pathlib import Path

# ---- trees


def make_tree(root: Path, files: list[str], write: Callable[[Path], None] | None = None) -> Path:
    for rel in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if write is None:
            path.write_bytes(b"")
        else:
            write(path)
    return root


def ltcc_files(people=((1, 3), (2, 3)), test=((10, 4), (11, 4)), frames=2) -> list[str]:
    """train/, query/, test/ of `PID_CLOTHES_cCAM_FRAME.png`: each person wears 2 outfits; outfit c
    is seen under cameras c and c + 1 (so every query has same- and other-clothes matches)."""
    files = []
    for folder, group in (("train", people), ("test", test)):
        for pid, cams in group:
            for clothes in (1, 2):
                for cam in range(clothes, clothes + cams - 1):
                    files += [f"{folder}/{pid:03d}_{clothes}_c{cam}_{f:06d}.png" for f in range(frames)]
    for pid, _ in test:  # one query per outfit, from a camera of its own
        files += [f"query/{pid:03d}_{clothes}_c{9 + clothes}_000777.png" for clothes in (1, 2)]
    return files


def vc_files(people=(1, 2, 3), test=(10, 11, 12)) -> list[str]:
    """train/, query/, gallery/ of `PID-CAM-CLOTHES-IDX.jpg`: outfit 1 under cameras 1-3, outfit 2
    under camera 4 (VC-Clothes: cameras 2 and 3 same clothes, 3 and 4 other clothes)."""
    files = []
    for folder, group in (("train", people), ("gallery", test)):
        for pid in group:
            for cam in (1, 2, 3, 4):
                clothes = 2 if cam == 4 else 1
                files += [f"{folder}/{pid:04d}-{cam:02d}-{clothes:02d}-{i:02d}.jpg" for i in (1, 2)]
    for pid in test:
        files += [f"query/{pid:04d}-{cam:02d}-{2 if cam == 4 else 1:02d}-09.jpg" for cam in (2, 3, 4)]
    return files


def deepchange_lists(
    people=((1, 2), (2, 2)), val=((30, 2),), test=((50, 2), (51, 2))
) -> dict[str, list[str]]:
    """folder -> `NAME,TRACKLET` lines; NAME = P<pid>_C<cam>_<outfit>_...; tracklets numbered apart."""
    lists: dict[str, list[str]] = {}
    tracklet = 0

    def add(folder: str, pid: int, cam: int, outfit: int, n: int) -> None:
        nonlocal tracklet
        tracklet += 1
        for k in range(n):
            name = f"P{pid:04d}_C{cam:02d}_D{outfit:02d}_T2019{cam:02d}{k:02d}_F{k:06d}.jpg"
            lists.setdefault(folder, []).append(f"{name},{tracklet}")

    for pid, outfits in people:
        for outfit in range(1, outfits + 1):
            add("train-set", pid, outfit, outfit, 2)
    for prefix, group in (("val-set", val), ("test-set", test)):
        for pid, outfits in group:
            add(f"{prefix}-query", pid, 1, 1, 1)
            add(f"{prefix}-gallery", pid, 1, 1, 2)  # same camera, another tracklet: a true match
            for outfit in range(2, outfits + 1):
                add(f"{prefix}-gallery", pid, 3, outfit, 2)
    return lists


def deepchange_files(lists: dict[str, list[str]]) -> list[str]:
    return [f"{folder}/{line.split(',')[0]}" for folder, lines in lists.items() for line in lines]


def write_deepchange_lists(root: Path, lists: dict[str, list[str]], trailing_blank: bool = False) -> None:
    for folder, lines in lists.items():
        (root / f"{folder}-bbox.txt").write_text("\n".join(lines) + ("\n\n" if trailing_blank else ""))


def last_files(people=(3, 4), val=(40,), test=(60, 61)) -> list[str]:
    """train/PID/, val|test/query/ (flat), val|test/gallery/PID/ of `PID_..._OUTFIT.jpg`."""
    files = []
    for pid in people:
        files += [f"train/{pid:06d}/{pid:06d}_{k:03d}_{900 + k:05d}_{k % 2}.jpg" for k in range(4)]
    for prefix, group in (("val", val), ("test", test)):
        for pid in group:
            files.append(f"{prefix}/query/{pid:06d}_000_00001_0.jpg")
            files += [f"{prefix}/gallery/{pid:06d}/{pid:06d}_{k:03d}_{k:05d}_0.jpg" for k in (1, 2, 3)]
    return files


# ---- the reference loaders' rules


def _dense(keys) -> dict:
    return {k: i for i, k in enumerate(sorted(set(keys)))}


def _rel(path: str, root: Path) -> str:
    return Path(path).relative_to(root).as_posix()


def reference_ltcc(root: Path) -> dict[str, tuple]:
    p1, p2 = re.compile(r"(\d+)_(\d+)_c(\d+)"), re.compile(r"(\w+)_c")
    out = {}
    train = sorted(glob.glob(osp.join(str(root), "train", "*.png")))
    pid2label = _dense(int(p1.search(p).group(1)) for p in train)
    clothes2label = _dense(p2.search(p).group(1) for p in train)
    for p in train:
        pid, _, cam = map(int, p1.search(p).groups())
        out[_rel(p, root)] = ("train", pid2label[pid], cam - 1, clothes2label[p2.search(p).group(1)])
    query = sorted(glob.glob(osp.join(str(root), "query", "*.png")))
    gallery = sorted(glob.glob(osp.join(str(root), "test", "*.png")))
    clothes2label = _dense(p2.search(p).group(1) for p in query + gallery)
    for split, paths in (("query", query), ("gallery", gallery)):
        for p in paths:
            pid, _, cam = map(int, p1.search(p).groups())
            out[_rel(p, root)] = (split, pid, cam - 1, clothes2label[p2.search(p).group(1)])
    return out


def reference_vc(root: Path, mode: str = "all") -> dict[str, tuple]:
    pattern = re.compile(r"(\d+)-(\d+)-(\d+)-(\d+)")
    keep = {"all": None, "sc": (2, 3), "cc": (3, 4)}[mode]
    out = {}
    train = sorted(glob.glob(osp.join(str(root), "train", "*.jpg")))
    fields = {p: pattern.search(p).groups() for p in train}
    pid2label = _dense(int(f[0]) for f in fields.values())
    clothes2label = _dense(f[0] + f[2] for f in fields.values())
    for p, (pid, cam, clothes, _) in fields.items():
        out[_rel(p, root)] = ("train", pid2label[int(pid)], int(cam) - 1, clothes2label[pid + clothes])
    test = {}
    for split, folder in (("query", "query"), ("gallery", "gallery")):
        for p in sorted(glob.glob(osp.join(str(root), folder, "*.jpg"))):
            f = pattern.search(p).groups()
            if keep is None or int(f[1]) in keep:
                test[p] = (split, f)
    clothes2label = _dense(f[0] + f[2] for _, f in test.values())
    for p, (split, (pid, cam, clothes, _)) in test.items():
        out[_rel(p, root)] = (split, int(pid), int(cam) - 1, clothes2label[pid + clothes])
    return out


def reference_deepchange(root: Path) -> dict[str, tuple]:
    def names(folder):
        with open(root / f"{folder}-bbox.txt") as f:
            return [line.rstrip() for line in f]

    def clothes_key(line):
        parts = line.split(".")[0].split("_")
        return parts[0] + parts[2]

    out = {}
    groups = (
        (("train-set", "train"),),
        (("val-set-query", "val"), ("val-set-gallery", "val")),
        (("test-set-query", "query"), ("test-set-gallery", "gallery")),
    )
    for group in groups:
        lines = {folder: names(folder) for folder, _ in group}
        clothes2label = _dense(clothes_key(x) for ls in lines.values() for x in ls)
        pid2label = _dense(int(x.split("_")[0][1:]) for ls in lines.values() for x in ls)
        for folder, split in group:
            for line in lines[folder]:
                pid = int(line.split(".")[0].split("_")[0][1:])
                if split == "train":
                    pid = pid2label[pid]
                tracklet = int(line.split(",")[1])
                rel = f"{folder}/{line.split(',')[0]}"
                out[rel] = (split, pid, tracklet, clothes2label[clothes_key(line)])
    return out


def reference_last(root: Path) -> dict[str, tuple]:
    def process(dir_path, recam=0, pid2label=None, clothes2label=None):
        pattern = "*.jpg" if "query" in dir_path else "*/*.jpg"  # the whole-path test, as written
        rows = []
        for ii, p in enumerate(sorted(glob.glob(osp.join(dir_path, pattern)))):
            parts = osp.basename(p).split(".")[0].split("_")
            pid = int(parts[0])
            if pid2label is not None:
                rows.append((p, pid2label[pid], recam + ii, clothes2label[parts[0] + "_" + parts[-1]]))
            else:
                rows.append((p, pid, recam + ii, pid))
        return rows

    base = str(root)
    train_paths = sorted(glob.glob(osp.join(base, "train", "*/*.jpg")))
    parts = [osp.basename(p).split(".")[0].split("_") for p in train_paths]
    pid2label = _dense(int(x[0]) for x in parts)
    clothes2label = _dense(x[0] + "_" + x[-1] for x in parts)
    out = {}
    for p, pid, cam, clothes in process(osp.join(base, "train"), 0, pid2label, clothes2label):
        out[_rel(p, root)] = ("train", pid, cam, clothes)
    for prefix, q_split, g_split in (("val", "val", "val"), ("test", "query", "gallery")):
        query = process(osp.join(base, prefix, "query"))
        gallery = process(osp.join(base, prefix, "gallery"), recam=len(query))
        for split, rows in ((q_split, query), (g_split, gallery)):
            for p, pid, cam, clothes in rows:
                out[_rel(p, root)] = (split, pid, cam, clothes)
    return out


# ---- a synthetic set re-laid out in each benchmark's naming (for the end-to-end runs)


def _target(dataset: str, row: dict, k: int) -> tuple[str, int | None]:
    """(new path, DeepChange tracklet) of a synthetic row. Synthetic camid 0/1/2 = cameras A/B/C;
    C shows the person's other outfit. Val people become train people where a set has no val."""
    pid, cam, split, subset = row["pid"], row["camid"], row["split"], row["subset"]
    outfit = 2 if cam == 2 else 1
    if dataset in ("ltcc", "vc-clothes") and split == "val":
        split = "train"
    if dataset == "ltcc":
        folder = {"train": "train", "query": "query", "gallery": "test"}[split]
        return f"{folder}/{pid:03d}_{outfit}_c{cam + 1}_{k:06d}.png", None
    if dataset == "vc-clothes":
        vc_cam = {0: 3, 1: 2, 2: 4}[cam]  # gallery A -> camera 3: queries in 2 (same clothes) and 4
        return f"{split}/{pid:04d}-{vc_cam:02d}-{outfit:02d}-{k:02d}.jpg", None
    role = "query" if subset.startswith("query") else "gallery"
    if dataset == "deepchange":
        folder = {"train": "train-set", "val": f"val-set-{role}"}.get(split, f"test-set-{split}")
        tracklet = pid * 10 + cam
        return f"{folder}/P{pid:04d}_C{cam + 1:02d}_D{outfit:02d}_F{k:06d}.jpg", tracklet
    folder = {"train": "train", "val": f"val/{role}"}.get(split, f"test/{split}")
    by_person = folder == "train" or folder.endswith("gallery")
    name = f"{pid:06d}_{k:03d}_{outfit}.jpg"
    return (f"{folder}/{pid:06d}/{name}" if by_person else f"{folder}/{name}"), None


def relayout_synthetic(src: Path, dst: Path, dataset: str) -> Path:
    """Copy the synthetic set at `src` into `dst` in `dataset`'s layout, with its ground truth (parse
    maps, faces.parquet) moved to the new paths so that the oracle backends serve it."""
    import shutil

    import cv2
    import pyarrow.parquet as pq

    from deskpro.manifests import scan

    moved, lists = {}, {}
    for k, row in enumerate(scan("synthetic", src).to_pylist()):
        new, tracklet = _target(dataset, row, k)
        moved[row["path"]] = new
        (dst / new).parent.mkdir(parents=True, exist_ok=True)
        if new.endswith(".png"):
            cv2.imwrite(str(dst / new), cv2.imread(str(src / row["path"])))
        else:
            shutil.copyfile(src / row["path"], dst / new)
        truth = dst / "truth" / "parse" / Path(new).with_suffix(".png")
        truth.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / "truth" / "parse" / Path(row["path"]).with_suffix(".png"), truth)
        if tracklet is not None:
            folder, name = new.split("/", 1)
            lists.setdefault(folder, []).append(f"{name},{tracklet}")
    write_deepchange_lists(dst, lists)
    faces = pq.read_table(src / "truth" / "faces.parquet").to_pydict()
    faces["path"] = [moved[p] for p in faces["path"]]
    table = pq.read_table(src / "truth" / "faces.parquet")
    pq.write_table(
        table.set_column(table.schema.get_field_index("path"), "path", [faces["path"]]),
        dst / "truth" / "faces.parquet",
    )
    return dst
