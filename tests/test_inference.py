"""Inference on raw images: features equal those of the packed shards, error rows, the three-line API."""

from __future__ import annotations

import numpy as np
import pytest
from _inference_utils import packed_synthetic, tiny_checkpoint

from deskpro.inference import FeatureExtractor
from deskpro.model import checkpoint
from deskpro.pipeline.onnx_engine import onnxruntime_available
from deskpro.train.data import open_reader
from deskpro.train.evaluate import extract_features


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    base = tmp_path_factory.mktemp("inference")
    data = packed_synthetic(base)
    data["checkpoint"] = tiny_checkpoint(base / "checkpoint.pt", data["shards"])
    return data


@pytest.mark.parametrize("engine", ["auto", "torch"])
def test_raw_image_features_equal_those_of_its_shard_row(packed, engine) -> None:
    reader = open_reader(packed["shards"])
    model = checkpoint.load(packed["checkpoint"])
    positions = np.arange(len(reader))
    expected = extract_features(model, reader, positions, batch_size=8, progress=False)
    manifest_paths = dict(zip(*[c.to_pylist() for c in _manifest(packed).columns]))
    ids = reader.index.column("sample_id").to_pylist()
    ext = FeatureExtractor(packed["checkpoint"], root=packed["root"], batch_size=5, engine=engine)
    # auto: the streams on onnxruntime (installed with deskpro[onnx]), flip and face included
    assert ext.stage.engine == (
        "torch" if engine == "torch" or not onnxruntime_available() else "onnxruntime"
    )
    assert ext.settings.flip  # the flip sum is compared too (image and mirror in one batch)
    out = ext([manifest_paths[s] for s in ids])
    assert out.error == [None] * len(ids)
    np.testing.assert_array_equal(out.has_face, expected["has_face"].numpy())
    assert out.has_face.any() and not out.has_face.all()  # both kinds of rows are compared
    np.testing.assert_allclose(out.body, expected["body"].numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(out.face, expected["face"].numpy(), atol=1e-5, rtol=0)
    assert ext.settings.detect.backend == "oracle" and ext.settings.detect.face_lr_size == 24
    boxes = out.face_box[out.has_face]
    assert np.isfinite(boxes).all() and (boxes[:, 2] > boxes[:, 0]).all()
    assert np.isnan(out.face_box[~out.has_face]).all()


def _manifest(packed):
    from deskpro.manifests import read_manifest

    return read_manifest(packed["manifest"]).select(["sample_id", "path"])


def test_a_bad_image_is_an_error_row_and_arrays_are_accepted(packed, tmp_path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    ext = FeatureExtractor(packed["checkpoint"], root=packed["root"], batch_size=4)
    good = np.zeros((64, 32, 3), np.uint8)
    out = ext([str(bad), good, np.zeros((4, 4), np.uint8)])
    assert out.error[0].startswith(f"{bad}: cannot decode image")
    assert out.error[2].startswith("array 2: expected uint8 HxWx3 RGB")
    assert np.isnan(out.body[0]).all() and np.isnan(out.body[2]).all()
    # the oracle has no truth for an array: an error row naming why, not an exception
    assert out.error[1] is not None and "no ground-truth face" in out.error[1]


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".onnx", ".pt"])
def test_exported_model_matches_the_eager_features(packed, tmp_path, suffix) -> None:
    from deskpro.inference.export import export_model, run_exported, sample_inputs
    from deskpro.inference.extractor import EmbedStage

    summary = export_model(packed["checkpoint"], tmp_path / f"model{suffix}")
    assert summary.max_abs_diff is not None and summary.max_abs_diff < 1e-4
    # against the extractor's own path (retrieval_features), on a batch size never traced
    stage = EmbedStage(str(packed["checkpoint"]), root=str(packed["root"]), device="cpu")
    body, face, has_face = (t.numpy() for t in sample_inputs(stage.settings, 4, seed=7))
    eager = stage.features(body, face, has_face)
    got = run_exported(summary.path, body, face, has_face)
    width = eager["face"].shape[1] * eager["face"].shape[2]
    np.testing.assert_allclose(got[:, :width], eager["face"].reshape(4, -1), atol=1e-4, rtol=0)
    np.testing.assert_allclose(got[:, width:], eager["body"].reshape(4, -1), atol=1e-4, rtol=0)
    assert not got[~has_face, :width].any()


def test_a_test_set_packs_without_parse_maps_for_inference_but_not_for_training(packed, tmp_path) -> None:
    from deskpro.config import TrainConfig
    from deskpro.shards import verify
    from deskpro.train.loop import train

    data = packed_synthetic(tmp_path, with_parse=False)
    reader = open_reader(data["shards"])
    assert reader.options["parse_maps"] is False and verify(data["shards"], progress=False).ok
    model = checkpoint.load(packed["checkpoint"])
    positions = np.arange(len(reader))
    without = extract_features(model, reader, positions, batch_size=8, progress=False)
    with_parse = extract_features(
        model, open_reader(packed["shards"]), positions, batch_size=8, progress=False
    )
    for key in ("body", "face", "has_face"):
        np.testing.assert_array_equal(without[key].numpy(), with_parse[key].numpy())
    config = TrainConfig.for_dataset("synthetic", body_size=(64, 32), face_size=32)
    with pytest.raises(
        ValueError, match=r"packed without parse maps; training needs them: run `deskpro parse`"
    ):
        train(data["shards"], tmp_path / "run", config)
