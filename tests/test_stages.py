"""Stage classes on one batch, without Ray: decoding, oracle/none backends, a real random-weight detector."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _pipeline_utils import LOOSE_POLICY, make_dataset

from deskpro.common import images
from deskpro.manifests import read_manifest, scan, write_manifest
from deskpro.pipeline.faces import align_face, gpen_template, similarity_matrix, transform_points
from deskpro.pipeline.options import StageRunOptions
from deskpro.pipeline.runner import check_stage, run_stage, stage_options
from deskpro.pipeline.stages import (
    DETECT_SCHEMA,
    PARSE_SCHEMA,
    RESTORE_SCHEMA,
    DetectStage,
    ParseStage,
    RestoreStage,
    StageConfigError,
    batch_to_table,
    table_to_batch,
    upscaled,
)
from deskpro.synthetic import generator as synthetic


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """(root, manifest table) with row 1's JPEG truncated."""
    root, manifest = make_dataset(tmp_path_factory.mktemp("stages"), corrupt=1)
    return root, read_manifest(manifest)


@pytest.fixture(scope="module")
def batch(dataset):
    """The first 6 manifest rows decoded as the image stages receive them."""
    root, table = dataset
    rows = table_to_batch(table.slice(0, 6).select(["sample_id", "path"]))
    return images.decode_batch(rows, root=str(root))


def test_decode_batch_gives_bgr_and_an_error_row_for_a_truncated_jpeg(dataset, batch):
    root, table = dataset
    assert batch["error"][1].startswith(f"{table['path'][1].as_py()}: cannot decode image")
    assert batch["image"][1].shape == (1, 1, 3)
    good = [i for i in range(6) if i != 1]
    assert all(batch["error"][i] is None for i in good)
    for i in good:
        expected = cv2.imread(str(root / batch["path"][i]), cv2.IMREAD_COLOR)  # BGR, as OpenCV reads
        assert batch["image"][i].dtype == np.uint8
        assert np.abs(batch["image"][i].astype(int) - expected.astype(int)).max() <= 2  # decoder rounding


def test_decode_batch_names_a_missing_file(tmp_path):
    out = images.decode_batch(
        {"sample_id": np.array(["a"], object), "path": np.array(["a.jpg"], object)}, root=str(tmp_path)
    )
    assert out["error"][0].startswith("a.jpg: cannot read image")


def test_png_and_jpeg_round_trips_keep_rgb_order():
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200  # pure red
    assert np.array_equal(images.decode_png(images.encode_png(rgb)), rgb)
    labels = np.arange(64, dtype=np.uint8).reshape(8, 8) % 20
    assert np.array_equal(images.decode_png(images.encode_png(labels)), labels)
    back = images.decode_jpeg(images.encode_jpeg(rgb, 95))
    assert back[..., 0].mean() > 190 and back[..., 2].mean() < 10


def test_parse_oracle_returns_the_truth_and_passes_errors_through(dataset, batch):
    root, _ = dataset
    out = ParseStage(backend="oracle", root=str(root))(batch)
    table = batch_to_table(out, PARSE_SCHEMA)
    assert table.schema == PARSE_SCHEMA
    assert out["parse_png"][1] is None and "cannot decode" in out["error"][1]
    for i in (0, 2, 3):
        truth = synthetic.read_parse_truth(root, batch["path"][i])
        assert np.array_equal(images.decode_png(out["parse_png"][i]), truth)
        assert out["label_set"][i] == "lip" and out["error"][i] is None


def test_parse_oracle_refuses_other_label_sets(dataset):
    with pytest.raises(StageConfigError, match="--labels atr"):
        ParseStage(backend="oracle", labels="atr", root=str(dataset[0]))


def test_detect_oracle_keeps_true_faces_and_crops_them_aligned(dataset, batch):
    root, _ = dataset
    truth = synthetic.read_face_truth(root)
    out = DetectStage(backend="oracle", root=str(root), face_lr_size=64, **LOOSE_POLICY)(batch)
    table = batch_to_table(out, DETECT_SCHEMA)
    assert table.schema == DETECT_SCHEMA
    assert (
        not out["has_face"][1] and table["face_box"][1].as_py() is None and "cannot decode" in out["error"][1]
    )
    for i in (0, 2, 3, 4, 5):
        has_face, box, landmarks = truth[batch["path"][i]]
        assert out["has_face"][i] == has_face
        if not has_face:
            assert out["face_lr_png"][i] is None and table["landmarks"][i].as_py() is None
            continue
        np.testing.assert_allclose(out["face_box"][i], box, atol=1e-5)
        np.testing.assert_allclose(out["landmarks"][i].reshape(5, 2), landmarks, atol=1e-5)
        expected, _ = align_face(batch["image"][i][:, :, ::-1].copy(), landmarks, 64)
        assert np.array_equal(images.decode_png(out["face_lr_png"][i]), expected)
    assert out["has_face"].any() and not out["has_face"].all()


def test_detect_policy_thresholds_are_applied(dataset, batch):
    stage = DetectStage(backend="oracle", root=str(dataset[0]), min_score=0.0, min_size=0.0, max_center_y=0.0)
    out = stage(batch)
    assert not out["has_face"].any()  # no face centre lies at the very top row
    assert all(c is None for c in out["face_lr_png"])


def test_upscaled_detector_reports_original_pixels():
    from deskpro.pipeline.detection import Face

    seen = []

    def fake(paths, images):  # finds a face at fixed coordinates of the (upscaled) image it is given
        seen.extend(im.shape for im in images)
        return [[Face(np.array([20, 40, 60, 80], np.float32), 0.9, np.full((5, 2), 40, np.float32))]]

    faces = upscaled(fake, 2.0)(["a.jpg"], [np.zeros((50, 30, 3), np.uint8)])
    assert seen == [(100, 60, 3)]
    np.testing.assert_allclose(faces[0][0].box, [10, 20, 30, 40])
    np.testing.assert_allclose(faces[0][0].landmarks, 20)


def test_detect_with_a_random_weight_retinaface_gives_the_interface(tmp_path, batch):
    import torch

    from deskpro.pipeline.nets import retinaface

    weights = tmp_path / "mobilenet0.25_Final.pth"
    with torch.random.fork_rng(devices=[]):  # seeds only the test checkpoint, not later tests
        torch.manual_seed(0)
        torch.save(retinaface.build("mobilenet0.25").state_dict(), weights)
    stage = DetectStage(
        backend="retinaface-mobilenet0.25",
        weights=str(weights),
        device="cpu",
        conf_threshold=0.5,
        min_score=0.0,
        min_size=0.0,
        max_center_y=1.0,
    )
    table = batch_to_table(stage(batch), DETECT_SCHEMA)
    assert table.schema == DETECT_SCHEMA and len(table) == 6
    has_face = table["has_face"].to_pylist()
    assert [b is not None for b in table["face_box"].to_pylist()] == has_face
    assert [p is not None for p in table["face_lr_png"].to_pylist()] == has_face


def test_restore_none_upsamples_the_low_res_face_bicubically(dataset, batch):
    root, _ = dataset
    detected = DetectStage(backend="oracle", root=str(root), face_lr_size=32, **LOOSE_POLICY)(batch)
    out = RestoreStage(backend="none", face_hr_size=96)(detected)
    table = batch_to_table(out, RESTORE_SCHEMA)
    assert table.schema == RESTORE_SCHEMA
    assert out["error"][1] == detected["error"][1]  # upstream errors pass through
    for i in range(6):
        if not detected["has_face"][i]:
            assert out["face_hr_jpg"][i] is None
            continue
        low = images.decode_png(detected["face_lr_png"][i])
        expected = cv2.resize(low, (96, 96), interpolation=cv2.INTER_CUBIC)
        got = images.decode_jpeg(out["face_hr_jpg"][i])
        assert got.shape == (96, 96, 3)
        assert np.abs(got.astype(float) - expected).mean() < 3.0  # JPEG q95 loss only


@pytest.fixture(scope="module")
def hr_set(tmp_path_factory):
    """(root, detect output) of a small synthetic set, faces big enough to see their eyes."""
    root = synthetic.generate(
        tmp_path_factory.mktemp("hr") / "synth",
        identities=6,
        images_per_camera=1,
        image_size=(192, 64),
        seed=1,  # 3 of its 18 images show no face
        progress=False,
    )
    rows = table_to_batch(scan("synthetic", root).select(["sample_id", "path"]))
    batch = images.decode_batch(rows, root=str(root))
    return root, DetectStage(backend="oracle", root=str(root), face_lr_size=32, **LOOSE_POLICY)(batch)


def _sharpness(face: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(face, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


def _pupil(face: np.ndarray, near: np.ndarray, radius: float) -> np.ndarray:
    """x, y centroid of the dark pixels within `radius` of `near`."""
    ys, xs = np.mgrid[: face.shape[0], : face.shape[1]]
    dark = (face.max(axis=2) < 60) & (np.hypot(xs - near[0], ys - near[1]) < radius)
    assert dark.sum() >= 4
    return np.array([xs[dark].mean(), ys[dark].mean()])


def test_restore_oracle_gives_the_sharp_face_where_the_low_res_one_is(hr_set):
    """The oracle's face is the clean render aligned like the low-res crop: its pupils sit where the
    landmark alignment puts the eyes (about the template's eye positions), shrunk it is the low-res
    crop, and it is far sharper than bicubic upsampling of that crop."""
    root, detected = hr_set
    size = 128
    oracle = RestoreStage(backend="oracle", root=str(root), face_hr_size=size)(detected)
    plain = RestoreStage(backend="none", face_hr_size=size)(detected)
    assert batch_to_table(oracle, RESTORE_SCHEMA).schema == RESTORE_SCHEMA
    template = gpen_template(size)
    faces = np.flatnonzero(detected["has_face"])
    assert 0 < len(faces) < len(detected["has_face"])
    for i in range(len(detected["has_face"])):
        assert oracle["error"][i] is None
        assert (oracle["face_hr_jpg"][i] is None) == (not detected["has_face"][i])
    for i in faces:
        face = images.decode_jpeg(oracle["face_hr_jpg"][i])
        assert face.shape == (size, size, 3)
        landmarks = detected["landmarks"][i].reshape(5, 2)
        eyes = transform_points(landmarks, similarity_matrix(landmarks, template))[:2]
        for eye, reference in zip(eyes, template[:2]):
            found = _pupil(face, eye, 0.06 * size)
            assert np.linalg.norm(found - eye) < 0.015 * size, (i, found, eye)
            assert np.linalg.norm(found - reference) < 0.06 * size, (i, found, reference)
        # Shrunk to the low-res crop's size it matches that crop (up to the camera's blur and noise)
        # better than when moved by one pixel either way.
        low = cv2.GaussianBlur(images.decode_png(detected["face_lr_png"][i]).astype(np.float32), (0, 0), 1.0)
        shrunk = cv2.resize(face, low.shape[:2], interpolation=cv2.INTER_AREA).astype(np.float32)
        shrunk = cv2.GaussianBlur(shrunk, (0, 0), 1.0)
        moved = [np.roll(shrunk, k, axis) for k in (-1, 1) for axis in (0, 1)]
        error = np.abs(shrunk - low).mean()
        assert error < 12 and error < min(np.abs(m - low).mean() for m in moved), i
        assert _sharpness(face) > 3 * _sharpness(images.decode_jpeg(plain["face_hr_jpg"][i])), i


def test_restore_oracle_names_a_missing_truth_file(hr_set, tmp_path):
    root, detected = hr_set
    copy = tmp_path / "synth"
    shutil.copytree(root, copy)
    i, j = np.flatnonzero(detected["has_face"])[:2]
    path = synthetic.read_face_truth(copy)
    missing = synthetic.face_hr_file(copy, next(p for p in path if p.startswith(detected["sample_id"][i])))
    missing.unlink()
    out = RestoreStage(backend="oracle", root=str(copy), face_hr_size=64)(detected)
    assert out["face_hr_jpg"][i] is None and str(missing) in out["error"][i]
    assert out["error"][i].startswith(f"{detected['sample_id'][i]}: ") and "\n" not in out["error"][i]
    assert out["error"][j] is None and out["face_hr_jpg"][j] is not None
    assert sum(e is not None for e in out["error"]) == 1


def test_restore_oracle_runs_from_the_detect_parts(hr_set, tmp_path):
    """The runner feeds the restore stage the detect parts' landmarks (in-process executor here; Ray
    reads the same `input_columns`)."""
    root, detected = hr_set
    manifest = tmp_path / "m.parquet"
    write_manifest(scan("synthetic", root), manifest)
    run = StageRunOptions(part_size=5, batch_size=3, executor="local", progress=False)
    run_stage("detect", manifest, tmp_path / "w", {"backend": "oracle", **LOOSE_POLICY}, run)
    summary = run_stage("restore", manifest, tmp_path / "w", {"backend": "oracle", "face_hr_size": 64}, run)
    assert summary.errors == 0
    parts = sorted((tmp_path / "w" / "stages" / "restore").glob("part-*.parquet"))
    table = pa.concat_tables([pq.read_table(p) for p in parts])
    assert [j is not None for j in table["face_hr_jpg"].to_pylist()] == detected["has_face"].tolist()


@pytest.mark.parametrize(
    ("stage", "options", "message"),
    [
        ("parse", {"backend": "schp", "weights": "/no/such.pth"}, "--weights /no/such.pth: file not found"),
        ("detect", {"backend": "retinaface-resnet50"}, "--weights is required"),
        ("restore", {"backend": "gpen-9"}, "--backend gpen-9: unknown restore backend"),
        ("detect", {"backend": "face-alignment", "weights": __file__}, "--landmarks-weights is required"),
    ],
)
def test_bad_options_give_one_line_errors_naming_the_flag(stage, options, message):
    with pytest.raises(StageConfigError) as info:
        check_stage(stage, stage_options(stage, options))
    assert message in str(info.value) and "\n" not in str(info.value)
    if "weights" in message:
        assert "deskpro weights list" in str(info.value)


def test_batch_to_table_turns_nan_rows_into_nulls():
    batch = {
        "sample_id": np.array(["a", "b"], object),
        "has_face": np.array([True, False]),
        "face_score": np.array([0.5, np.nan], np.float32),
        "face_box": np.array([[1, 2, 3, 4], [np.nan] * 4], np.float32),
        "landmarks": np.array([np.arange(10), [np.nan] * 10], np.float32),
        "face_lr_png": np.array([b"x", None], object),
        "error": np.array([None, "b.jpg: cannot decode image"], object),
    }
    table = batch_to_table(batch, DETECT_SCHEMA)
    assert table.to_pylist()[1] == {
        "sample_id": "b",
        "has_face": False,
        "face_score": None,
        "face_box": None,
        "landmarks": None,
        "face_lr_png": None,
        "error": "b.jpg: cannot decode image",
    }
    assert table["face_box"][0].as_py() == [1, 2, 3, 4]
    assert table.schema.field("face_box").type == pa.list_(pa.float32(), 4)
