"""Synthetic cloth-changing dataset: layout, determinism, ground truth alignment, and that identity
is carried by face/hair/build while clothes change across cameras (checked from the ground truth)."""

from __future__ import annotations

import copy
import json
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from deskpro import cli
from deskpro.manifests import ManifestError, manifest_info, read_manifest, scan
from deskpro.synthetic import appearance, draw
from deskpro.synthetic import generator as synthetic
from deskpro.synthetic.figure import Window

IDENTITIES, PER_CAMERA = 12, 3
LIP_DRAWN = {0, 2, 5, 6, 7, 9, 12, 13, 14, 15, 16, 17, 18, 19}
UPPER_LABELS = [5, 6, 7]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    return synthetic.generate(
        root, identities=IDENTITIES, images_per_camera=PER_CAMERA, seed=7, progress=False
    )


@pytest.fixture(scope="module")
def rows(dataset: Path) -> list[dict]:
    return scan("synthetic", dataset).to_pylist()


@pytest.fixture(scope="module")
def views(dataset: Path) -> dict[str, str]:
    """path -> "front", "back" or "occluded"."""
    table = pq.read_table(dataset / "truth" / "faces.parquet", columns=["path", "view"]).to_pydict()
    return dict(zip(table["path"], table["view"]))


@pytest.fixture(scope="module")
def loaded(dataset: Path, rows: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """path -> (RGB float image, LIP labels)."""
    out = {}
    for r in rows:
        image = cv2.cvtColor(cv2.imread(str(dataset / r["path"])), cv2.COLOR_BGR2RGB).astype(np.float32)
        out[r["path"]] = (image, synthetic.read_parse_truth(dataset, r["path"]))
    return out


def test_layout_splits_and_clothes(dataset: Path, rows: list[dict]) -> None:
    table = scan("synthetic", dataset)
    assert manifest_info(table)["dataset"] == "synthetic"
    assert len(rows) == IDENTITIES * 3 * PER_CAMERA
    ids = defaultdict(set)
    for r in rows:
        group = {"train": "train", "val": "val"}.get(r["split"], "test")
        ids[group].add(r["pid"])
    sizes = {"train": 6, "val": 2, "test": 4}
    assert {k: len(v) for k, v in ids.items()} == synthetic.split_sizes(IDENTITIES) == sizes
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    clothes = defaultdict(set)
    for r in rows:
        clothes[(r["pid"], r["camid"])].add(r["clothes_id"])
    for pid in {r["pid"] for r in rows}:
        (a,), (b,), (c,) = clothes[(pid, 0)], clothes[(pid, 1)], clothes[(pid, 2)]
        assert a == b != c
    image = cv2.imread(str(dataset / rows[0]["path"]))
    assert image.shape == (384, 128, 3)


def test_generation_is_deterministic_per_seed(tmp_path: Path) -> None:
    def files(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    kwargs = {"identities": 3, "images_per_camera": 2, "image_size": (192, 64), "progress": False}
    first = files(synthetic.generate(tmp_path / "a", seed=1, **kwargs))
    second = files(synthetic.generate(tmp_path / "b", seed=1, **kwargs))
    other = files(synthetic.generate(tmp_path / "c", seed=2, **kwargs))
    faces = sum(pq.read_table(tmp_path / "a" / "truth" / "faces.parquet")["has_face"].to_pylist())
    # images + parse maps + face_hr crops + faces.parquet + synthetic.json
    assert len(first) == 3 * 3 * 2 * 2 + faces + 2 and 0 < faces < 3 * 3 * 2
    assert first == second
    images = [k for k in first if k.endswith(".jpg")]
    assert sum(first[k] != other[k] for k in images) == len(images)


def test_parse_maps_use_lip_labels_at_image_size(rows: list[dict], loaded: dict, views: dict) -> None:
    for r in rows:
        image, labels = loaded[r["path"]]
        assert labels.dtype == np.uint8 and labels.shape == image.shape[:2]
        assert set(np.unique(labels).tolist()) <= LIP_DRAWN
        assert np.isin(labels, UPPER_LABELS).any() and np.isin(labels, [18, 19]).any()
        assert np.isin(labels, [2]).any() or views[r["path"]] == "occluded"  # an umbrella may hide the head


def test_landmarks_lie_in_face_box_on_face_label(dataset: Path, rows: list[dict], loaded: dict) -> None:
    faces = synthetic.read_face_truth(dataset)
    assert set(faces) == {r["path"] for r in rows}
    with_face = [p for p, (has, _, _) in faces.items() if has]
    assert 0.05 <= 1 - len(with_face) / len(faces) <= 0.3  # some back views / occluded heads
    heights = []
    for path in with_face:
        _, box, landmarks = faces[path]
        labels = loaded[path][1]
        x1, y1, x2, y2 = box
        assert ((landmarks[:, 0] > x1) & (landmarks[:, 0] < x2)).all(), path
        assert ((landmarks[:, 1] > y1) & (landmarks[:, 1] < y2)).all(), path
        assert landmarks[0, 0] < landmarks[1, 0] and landmarks[3, 0] < landmarks[4, 0]  # image-left first
        assert landmarks[0, 1] < landmarks[2, 1] < landmarks[3, 1]  # eyes above nose above mouth
        cols, rows_ = np.round(landmarks[:, 0]).astype(int), np.round(landmarks[:, 1]).astype(int)
        assert (labels[rows_, cols] == 13).all(), path
        inside = labels[int(np.ceil(y1)) : int(y2), int(np.ceil(x1)) : int(x2)]
        assert (inside == 13).mean() > 0.7, path  # the box is tight around the face ellipse
        heights.append((y2 - y1) / labels.shape[0])
    assert 0.06 < np.median(heights) < 0.12  # small surveillance faces, about 1/10 of the image


def test_no_face_images_show_no_face(dataset: Path, loaded: dict) -> None:
    faces = synthetic.read_face_truth(dataset)
    face_area = np.median([(b[2] - b[0]) * (b[3] - b[1]) for has, b, _ in faces.values() if has])
    for path, (has_face, box, landmarks) in faces.items():
        if not has_face:
            assert np.isnan(box).all() and np.isnan(landmarks).all()
            assert (loaded[path][1] == 13).sum() < 0.3 * face_area, path  # at most a bit of neck


def test_left_and_right_follow_the_person(loaded: dict, views: dict) -> None:
    """LIP left/right are the person's: image-right in front views, image-left in back views."""
    for path, (_, labels) in loaded.items():
        xs = {label: np.nonzero(labels == label)[1].mean() for label in (14, 15, 18, 19)}  # hands, shoes
        sign = 1 if views[path] != "back" else -1
        assert sign * (xs[14] - xs[15]) > 0 and sign * (xs[18] - xs[19]) > 0, path


def _region_mean(image: np.ndarray, labels: np.ndarray, wanted: list[int]) -> np.ndarray:
    return image[np.isin(labels, wanted)].mean(axis=0)


def test_identity_cues_consistent_clothes_misleading(dataset: Path, rows: list[dict], loaded: dict) -> None:
    faces = synthetic.read_face_truth(dataset)
    # Identity: mean face-skin and hair colour, within an identity vs across identities.
    feats, pids = [], []
    for r in rows:
        if faces[r["path"]][0]:
            image, labels = loaded[r["path"]]
            skin_and_hair = [_region_mean(image, labels, [13]), _region_mean(image, labels, [2])]
            feats.append(np.concatenate(skin_and_hair))
            pids.append(r["pid"])
    feats, pids = np.stack(feats), np.array(pids)
    dist = np.linalg.norm(feats[:, None] - feats[None], axis=2)
    same = (pids[:, None] == pids[None]) & ~np.eye(len(pids), dtype=bool)
    assert dist[same].mean() < 0.35 * dist[pids[:, None] != pids[None]].mean()
    # Build: figure height varies less within an identity than over the dataset.
    height = {r["path"]: np.ptp(np.nonzero((loaded[r["path"]][1] > 0).any(1))[0]) for r in rows}
    by_pid = defaultdict(list)
    for r in rows:
        by_pid[r["pid"]].append(height[r["path"]])
    assert np.mean([np.var(v) for v in by_pid.values()]) < 0.6 * np.var(list(height.values()))
    # Clothes: a val or test person's A and B upper garments match, the C one differs clearly (PRCC);
    # a training person wears a third outfit at B, clearly different from both.
    upper, train = defaultdict(list), {r["pid"] for r in rows if r["path"].startswith("rgb/train/")}
    for r in rows:
        upper[(r["pid"], r["camid"])].append(_region_mean(*loaded[r["path"]], UPPER_LABELS))
    mean = {k: np.mean(v, axis=0) for k, v in upper.items()}
    assert train and set(by_pid) - train
    for pid in by_pid:
        a_b = np.linalg.norm(mean[(pid, 0)] - mean[(pid, 1)])
        a_c = np.linalg.norm(mean[(pid, 0)] - mean[(pid, 2)])
        b_c = np.linalg.norm(mean[(pid, 1)] - mean[(pid, 2)])
        if pid in train:
            assert min(a_b, a_c, b_c) > 30, pid
        else:
            assert a_c > 50 and a_c > 2 * a_b, pid


def test_cloth_irrelevant_regions_follow_the_person(rows: list[dict], loaded: dict) -> None:
    """Shoes sit outside LIP's cloth labels, so the CSA mask keeps them: they belong to the person and
    look alike in both outfits (camera A vs C), while the upper garment changes."""
    shoes, upper = defaultdict(list), defaultdict(list)
    for r in rows:
        image, labels = loaded[r["path"]]
        shoes[(r["pid"], r["camid"] == 2)].append(_region_mean(image, labels, [18, 19]))
        upper[(r["pid"], r["camid"] == 2)].append(_region_mean(image, labels, UPPER_LABELS))
    pids = sorted({r["pid"] for r in rows})
    shoe_change = [np.linalg.norm(np.mean(shoes[(p, False)], 0) - np.mean(shoes[(p, True)], 0)) for p in pids]
    upper_change = [
        np.linalg.norm(np.mean(upper[(p, False)], 0) - np.mean(upper[(p, True)], 0)) for p in pids
    ]
    assert np.median(shoe_change) < 0.3 * np.median(upper_change)


def test_outfits_shared_across_people() -> None:
    """Garments come from one wardrobe smaller than the crowd: many people wear the same garment."""
    people = 60
    wardrobe = appearance.sample_wardrobe(np.random.default_rng(0), *appearance.wardrobe_size(people))
    worn = [
        id(outfit.upper)
        for p in range(people)
        for outfit in appearance.sample_outfits(np.random.default_rng([0, p]), wardrobe)
    ]
    counts = np.unique(worn, return_counts=True)[1]
    assert len(counts) <= len(wardrobe.uppers) < people and counts.max() >= 5


def test_generate_reuses_refuses_and_restarts(tmp_path: Path) -> None:
    kwargs = {"identities": 3, "images_per_camera": 1, "image_size": (96, 32), "progress": False}
    root = synthetic.generate(tmp_path / "d", **kwargs)
    stamp = (root / "synthetic.json").stat().st_mtime_ns
    synthetic.generate(root, **kwargs)  # same options: kept as is
    assert (root / "synthetic.json").stat().st_mtime_ns == stamp
    with pytest.raises(ManifestError, match="made with"):
        synthetic.generate(root, **{**kwargs, "identities": 4})
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("mine")
    with pytest.raises(ManifestError, match="not empty and holds no synthetic dataset"):
        synthetic.generate(other, **kwargs)
    (root / "synthetic.json").unlink()
    (root / ".synthetic-incomplete").touch()  # as left by an interrupted run
    (root / "rgb" / "stray.jpg").write_bytes(b"")
    synthetic.generate(root, **kwargs)
    assert synthetic.is_complete(root) and not (root / "rgb" / "stray.jpg").exists()
    with pytest.raises(ValueError, match="at least 3 identities"):
        synthetic.generate(tmp_path / "e", **{**kwargs, "identities": 2})


def test_truth_readers_name_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="faces.parquet"):
        synthetic.read_face_truth(tmp_path)
    with pytest.raises(FileNotFoundError, match="rgb/train/001/A_000.png"):
        synthetic.read_parse_truth(tmp_path, "rgb/train/001/A_000.jpg")


def test_cli_generates_then_scans(tmp_path: Path) -> None:
    root, out = tmp_path / "syn", tmp_path / "syn.parquet"
    args = ["manifest", "synthetic", str(root), "-o", str(out), "--no-progress"]
    size = ["--identities", "3", "--images-per-camera", "1", "--image-size", "96x32", "--seed", "3"]
    result = CliRunner().invoke(cli.main, args + size)
    assert result.exit_code == 0, result.output
    table = read_manifest(out)
    assert table.num_rows == 9 and manifest_info(table)["dataset"] == "synthetic"
    assert CliRunner().invoke(cli.main, args).exit_code == 0  # reuses the dataset without options
    bad = CliRunner().invoke(cli.main, args + ["--image-size", "96by32"])
    assert bad.exit_code == 2 and "is not HxW" in bad.output


@pytest.mark.parametrize(
    ("identities", "expected"),
    [(3, (1, 1, 1)), (4, (2, 1, 1)), (12, (6, 2, 4)), (120, (60, 20, 40)), (221, (110, 37, 74))],
)
def test_split_sizes_prcc_like(identities: int, expected: tuple[int, int, int]) -> None:
    sizes = synthetic.split_sizes(identities)
    assert (sizes["train"], sizes["val"], sizes["test"]) == expected


# ---- the clean high-resolution face truth

SIZE = (192, 64)


def _person(camera: str = "C"):
    """An identity in a patterned upper garment, facing the camera, its camera background, and the
    generator that draws its image."""
    for seed in range(100):
        rng = np.random.default_rng([seed, 9])
        wardrobe = appearance.sample_wardrobe(rng, *appearance.wardrobe_size(10))
        ident, (outfit, _) = appearance.sample_identity(rng), appearance.sample_outfits(rng, wardrobe)
        if outfit.upper.pattern != "solid":
            break
    view = appearance.sample_view(rng, no_face_rate=0.0)
    background = draw.camera_background(camera, SIZE, np.random.default_rng(1))
    return (ident, outfit, view, camera, background, SIZE), np.random.default_rng([seed, 10])


def test_face_hr_crops_exist_exactly_for_faces(dataset: Path) -> None:
    made = json.loads((dataset / "synthetic.json").read_text())
    assert made["hr_scale"] == 4 and made["format_version"] == synthetic.FORMAT_VERSION == 4
    rows = pq.read_table(dataset / "truth" / "faces.parquet").to_pylist()
    assert any(r["has_face"] for r in rows) and not all(r["has_face"] for r in rows)
    for r in rows:
        file = synthetic.face_hr_file(dataset, r["path"])
        assert file.is_file() == r["has_face"] == (r["hr_origin"] is not None) == (r["hr_scale"] is not None)
        if not r["has_face"]:
            continue
        assert file == dataset / "truth" / "face_hr" / Path(r["path"]).with_suffix(".png")
        crop = synthetic.read_face_hr(dataset, r["path"])
        x1, y1, x2, y2 = r["box"]
        side = synthetic.HR_CROP_GROWTH * max(x2 - x1, y2 - y1) * 4
        assert crop.dtype == np.uint8 and crop.shape[2] == 3 and crop.shape[0] == crop.shape[1]
        assert abs(crop.shape[0] - side) <= 1 and r["hr_scale"] == 4.0


def test_face_hr_crops_are_the_image_sharp(dataset: Path) -> None:
    """Mapped into its crop, a face's eye landmarks fall on the dark pupils and its mouth on the red
    mouth; the crop shrunk back matches the image (same scene, colour cast and brightness)."""
    placement = synthetic.read_face_hr_placement(dataset)
    truth = synthetic.read_face_truth(dataset)
    assert set(placement) == {p for p, (has, _, _) in truth.items() if has}
    for path, (origin, scale) in placement.items():
        crop = synthetic.read_face_hr(dataset, path)
        points = (truth[path][2] + 0.5) * scale - 0.5 - origin
        eyes = crop[np.round(points[:2, 1]).astype(int), np.round(points[:2, 0]).astype(int)]
        assert (eyes.max(axis=1) < 70).all(), path
        mouth = crop[round(float(points[3:, 1].mean())), round(float(points[3:, 0].mean()))].astype(int)
        assert mouth[0] > mouth[1] + 40, path
        image = cv2.cvtColor(cv2.imread(str(dataset / path)), cv2.COLOR_BGR2RGB).astype(np.float32)
        side = crop.shape[0]
        to_image = np.array([[1 / scale, 0, (origin[0] + 0.5) / scale - 0.5], [0, 1 / scale, 0]])
        to_image[1, 2] = (origin[1] + 0.5) / scale - 0.5
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        seen = cv2.warpAffine(image, to_image, (side, side), flags=flags)  # the image on the crop's grid
        soft = cv2.GaussianBlur(crop.astype(np.float32), (0, 0), scale)
        moved = cv2.warpAffine(image, to_image + [[0, 0, 1.5], [0, 0, 0]], (side, side), flags=flags)
        error, shifted = np.abs(seen - soft).mean(), np.abs(moved - soft).mean()
        assert error < 10 and error < 0.8 * shifted, (path, error, shifted)


def test_hr_render_is_the_image_scene_enlarged() -> None:
    """At 3x (the image's pixel centres at 3j+1), the enlarged figure has the image's landmarks and
    labels at the same points; a window of it holds the pixels of the whole enlarged render."""
    scene, rng = _person()
    image, labels, face = draw.draw_person(*scene, copy.deepcopy(rng))
    s = 3
    whole = Window(s, 0, 0, SIZE[1] * s, SIZE[0] * s)
    hr, hr_labels, hr_face = draw.draw_person(*scene, copy.deepcopy(rng), whole, camera_effects=False)
    np.testing.assert_allclose(hr_face.landmarks, (face.landmarks + 0.5) * s - 0.5, atol=1e-3)
    np.testing.assert_allclose(hr_face.box, (face.box + 0.5) * s - 0.5, atol=1e-3)
    # Labels sampled at the image's pixel centres agree best, short of OpenCV's fill rule (it fills
    # the pixels a polygon's edge touches: shapes grow by about half a pixel, less at 3x).
    mismatch = {(dy, dx): (hr_labels[dy::s, dx::s] != labels).mean() for dy in range(s) for dx in range(s)}
    assert mismatch[1, 1] < 0.025 and mismatch[1, 1] == min(mismatch.values()), mismatch
    # Shrunk back, it is the image without its noise and blur, with its colour cast and brightness.
    small = cv2.resize(hr.astype(np.float32), SIZE[::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(small.mean(axis=(0, 1)) - image.mean(axis=(0, 1))).max() < 2
    soft, seen = cv2.GaussianBlur(small, (0, 0), 1.5), cv2.GaussianBlur(image.astype(np.float32), (0, 0), 1.5)
    error = np.abs(soft - seen).mean()
    assert error < 4 and error < 0.85 * np.abs(np.roll(soft, 1, axis=1) - seen).mean()
    window = synthetic.face_window(face.box, s)
    crop, crop_labels, crop_face = draw.draw_person(*scene, copy.deepcopy(rng), window, camera_effects=False)
    rows, cols = slice(window.y0, window.y0 + window.height), slice(window.x0, window.x0 + window.width)
    assert window.y0 > 0 and window.x0 > 0 and rows.stop < hr.shape[0] and cols.stop < hr.shape[1]
    np.testing.assert_allclose(crop_face.landmarks + [window.x0, window.y0], hr_face.landmarks, atol=1e-3)
    # The same pixels but for a few where OpenCV rasterises a polygon cut by the window's edge.
    assert (crop_labels != hr_labels[rows, cols]).mean() < 0.002
    inner = (slice(s, -s), slice(s, -s))  # outlines need the pixels left of and above them
    assert (np.abs(crop[inner].astype(int) - hr[rows, cols][inner]) > 1).mean() < 0.01


def test_hr_truth_leaves_the_image_as_draw_person_draws_it() -> None:
    """The high-resolution pass replays a copy of the random draws: the image, labels and face truth
    are the ones draw_person gives without it."""
    scene, rng = _person()
    alone = draw.draw_person(*scene, copy.deepcopy(rng))
    image, labels, face, hr = synthetic.render_image(*scene, copy.deepcopy(rng), 4)
    assert hr is not None and hr[0].shape[:2] == (hr[1].height, hr[1].width)
    assert np.array_equal(image, alone[0]) and np.array_equal(labels, alone[1])
    np.testing.assert_array_equal(face.landmarks, alone[2].landmarks)
    again = synthetic.render_image(*scene, copy.deepcopy(rng), 4)
    assert np.array_equal(again[3][0], hr[0])  # deterministic too


def test_face_hr_placement_refuses_an_older_dataset(dataset: Path, tmp_path: Path) -> None:
    old = pq.read_table(dataset / "truth" / "faces.parquet").drop_columns(["hr_origin", "hr_scale"])
    (tmp_path / "truth").mkdir()
    pq.write_table(old, tmp_path / "truth" / "faces.parquet")
    with pytest.raises(ValueError, match="no hr_origin column.*generate the dataset again"):
        synthetic.read_face_hr_placement(tmp_path)
    with pytest.raises(FileNotFoundError, match="face_hr/rgb/train/001/A_000.png"):
        synthetic.read_face_hr(tmp_path, "rgb/train/001/A_000.jpg")
