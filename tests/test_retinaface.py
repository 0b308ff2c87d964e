"""Tests for deskpro.pipeline.nets.retinaface: checkpoint loading, priors and decoding, batched detection,
and the choice of the person's face in a re-id crop.

State dicts use the official key names and shapes (shared/reference/retinaface_keys.json) with random
values; no real checkpoint is needed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from _reference import REFERENCE_DIR
from torch import nn

from deskpro.pipeline.detection import Face, FaceDetector, FacePolicy, choose_face
from deskpro.pipeline.nets import retinaface as rf

KEYS_JSON = REFERENCE_DIR / "retinaface_keys.json"
REFERENCE_NAMES = {"mobilenet0.25": "retinaface_mobilenet0.25", "resnet50": "retinaface_resnet50"}
# The stem BatchNorm of each variant: its running variance absorbs the input scale (pixels minus mean are
# O(100)), as trained statistics would, so random networks give unsaturated scores.
STEM_BN_VAR = {"body.stage1.0.1.running_var", "body.bn1.running_var"}


def _reference_shapes(variant: str) -> dict[str, list[int]]:
    if not KEYS_JSON.is_file():
        pytest.skip(f"{KEYS_JSON} not available")
    return json.loads(KEYS_JSON.read_text())[REFERENCE_NAMES[variant]]


def random_state_dict(variant: str, seed: int, zero_shift: bool = False) -> dict[str, torch.Tensor]:
    """Random values with the official keys and shapes.

    zero_shift=True gives every BatchNorm a zero bias and zero running mean (an all-zero region then
    stays zero through body and FPN); the default non-zero shifts are the harder case for padding.
    """
    gen = torch.Generator().manual_seed(seed)
    shapes = _reference_shapes(variant)
    state: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        module, _, leaf = key.rpartition(".")
        is_bn = f"{module}.running_mean" in shapes
        if leaf == "num_batches_tracked":
            state[key] = torch.tensor(0, dtype=torch.long)
        elif leaf == "running_var" or (is_bn and leaf == "weight"):
            state[key] = 0.5 + torch.rand(shape, generator=gen)
            if key in STEM_BN_VAR:
                state[key] *= 100.0**2
            if key.endswith("bn3.weight"):  # damp residual branches, or ResNet-50 activations blow up
                state[key] *= 0.1
        elif is_bn:  # bias, running_mean
            state[key] = torch.zeros(shape) if zero_shift else 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) == 4:  # conv weight, He-scaled so activations stay O(1) through the depth
            fan_in = shape[1] * shape[2] * shape[3]
            state[key] = torch.randn(shape, generator=gen) * math.sqrt(2.0 / fan_in)
        else:  # head conv bias
            state[key] = 0.1 * torch.randn(shape, generator=gen)
    return state


def _save(state: dict[str, torch.Tensor], path: Path, prefix: str = "") -> Path:
    torch.save({prefix + k: v for k, v in state.items()}, path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Official-layout files: mobilenet0.25 without prefix, resnet50 with `module.` (as published)."""
    root = tmp_path_factory.mktemp("retinaface")
    return {
        "mobilenet0.25": _save(random_state_dict("mobilenet0.25", 1), root / "mobilenet0.25_Final.pth"),
        "resnet50": _save(random_state_dict("resnet50", 2), root / "Resnet50_Final.pth", "module."),
    }


@pytest.fixture(scope="module")
def mobilenet(checkpoints) -> rf.RetinaFace:
    return rf.load(checkpoints["mobilenet0.25"], variant="mobilenet0.25")


def _images(seed: int, sizes) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in sizes]


def _assert_same_faces(got: list[Face], want: list[Face], atol: float = 1e-3) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a.box, b.box, atol=atol)
        np.testing.assert_allclose(a.landmarks, b.landmarks, atol=atol)
        assert a.score == pytest.approx(b.score, abs=1e-4)


# ---- loading


@pytest.mark.parametrize("variant", rf.VARIANTS)
@pytest.mark.parametrize("prefix", ["", "module."])
def test_load_accepts_official_keys_with_and_without_prefix(tmp_path, variant, prefix):
    state = random_state_dict(variant, seed=3)
    net = rf.load(_save(state, tmp_path / "w.pth", prefix), variant=variant)
    assert not net.training
    loaded = net.state_dict()
    assert set(loaded) == set(state)
    for key in list(state)[:: max(1, len(state) // 20)]:
        assert torch.equal(loaded[key], state[key]), key


def test_cross_variant_errors_name_both_variants(checkpoints):
    with pytest.raises(ValueError, match="mobilenet0.25 keys given to resnet50"):
        rf.load(checkpoints["mobilenet0.25"], variant="resnet50")
    with pytest.raises(ValueError, match="resnet50 keys given to mobilenet0.25"):
        rf.load(checkpoints["resnet50"], variant="mobilenet0.25")


def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=r"nope\.pth.*deskpro weights list"):
        rf.load(missing, variant="mobilenet0.25")

    other = _save({"encoder.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"other\.pth: not a RetinaFace checkpoint"):
        rf.load(other, variant="mobilenet0.25")

    text = tmp_path / "text.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"text\.pth"):
        rf.load(text, variant="mobilenet0.25")

    with pytest.raises(ValueError, match="unknown RetinaFace variant"):
        rf.load(other, variant="resnet18")


def test_load_rejects_missing_and_misshapen_tensors(tmp_path):
    state = random_state_dict("mobilenet0.25", seed=4)
    del state["LandmarkHead.2.conv1x1.bias"]
    with pytest.raises(ValueError, match=r"1 missing \['LandmarkHead.2.conv1x1.bias'\]"):
        rf.load(_save(state, tmp_path / "a.pth"), variant="mobilenet0.25")

    state = random_state_dict("mobilenet0.25", seed=4)
    state["ClassHead.0.conv1x1.bias"] = torch.zeros(6)
    with pytest.raises(ValueError, match=r"b\.pth: 1 RetinaFace tensors have the wrong shape"):
        rf.load(_save(state, tmp_path / "b.pth"), variant="mobilenet0.25")


@pytest.mark.parametrize("variant", rf.VARIANTS)
@pytest.mark.parametrize("size", [(32, 32), (37, 50), (64, 24)])
def test_output_shapes_match_prior_count(variant, size):
    net = rf.build(variant).eval()
    with torch.inference_mode():
        loc, conf, landms = net(torch.zeros(2, 3, *size))
    n = len(rf.prior_boxes(*size))
    assert n == rf.prior_count(*size)
    assert loc.shape == (2, n, 4) and conf.shape == (2, n, 2) and landms.shape == (2, n, 10)
    torch.testing.assert_close(conf.sum(-1), torch.ones(2, n))


# ---- priors, encode, decode


def test_priors_by_hand_for_16x16():
    priors = rf.prior_boxes(16, 16)
    # stride 8: 2x2 cells, stride 16 and 32: 1 cell; 2 anchors each -> 8 + 2 + 2
    assert priors.shape == (12, 4)
    np.testing.assert_allclose(priors[0], [4 / 16, 4 / 16, 16 / 16, 16 / 16])  # cell (0,0), 16 px
    np.testing.assert_allclose(priors[1], [4 / 16, 4 / 16, 32 / 16, 32 / 16])  # cell (0,0), 32 px
    np.testing.assert_allclose(priors[2], [12 / 16, 4 / 16, 1.0, 1.0])  # cell (row 0, col 1)
    np.testing.assert_allclose(priors[4], [4 / 16, 12 / 16, 1.0, 1.0])  # cell (row 1, col 0)
    np.testing.assert_allclose(priors[8], [0.5, 0.5, 4.0, 4.0])  # stride 16, 64 px
    np.testing.assert_allclose(priors[11], [1.0, 1.0, 32.0, 32.0])  # stride 32, 512 px


def test_priors_non_square_count_and_normalisation():
    # 24 x 40: ceil -> (3, 5), (2, 3), (1, 2) cells
    priors = rf.prior_boxes(24, 40)
    assert len(priors) == (15 + 6 + 2) * 2
    np.testing.assert_allclose(priors[-1], [48 / 40, 16 / 24, 512 / 40, 512 / 24], rtol=1e-6)
    assert rf.prior_boxes(24, 40) is priors  # cached


def test_decode_known_offset_by_hand():
    prior = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    loc = torch.tensor([[1.0, -1.0, 0.0, math.log(2) / 0.2]])
    # centre (0.5 + 1*0.1*0.2, 0.5 - 1*0.1*0.4) = (0.52, 0.46); size (0.2, 0.4*2)
    torch.testing.assert_close(rf.decode_boxes(loc, prior), torch.tensor([[0.42, 0.06, 0.62, 0.86]]))
    landms = torch.tensor([[1.0, 2.0, 0.0, 0.0, -1.0, 0.5, 0.0, -2.0, 3.0, 1.0]])
    want = torch.tensor([[0.52, 0.58, 0.5, 0.5, 0.48, 0.52, 0.5, 0.42, 0.56, 0.54]])
    torch.testing.assert_close(rf.decode_landmarks(landms, prior), want)


def test_encode_decode_round_trip():
    gen = torch.Generator().manual_seed(0)
    priors = torch.tensor(rf.prior_boxes(64, 48))
    centre = torch.rand(len(priors), 2, generator=gen)
    size = 0.05 + torch.rand(len(priors), 2, generator=gen)
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=1)
    torch.testing.assert_close(rf.decode_boxes(rf.encode_boxes(boxes, priors), priors), boxes)


# ---- detection on a stand-in network with known outputs


class FixedOutputs(nn.Module):
    """Stand-in network: per-prior outputs set by the test, ignoring the image content."""

    def __init__(self, height: int, width: int, scores: dict[int, float], loc: dict[int, list] = None):
        super().__init__()
        n = rf.prior_count(height, width)
        self.loc = torch.zeros(n, 4)
        self.conf = torch.tensor([[1.0, 0.0]]).repeat(n, 1)
        for index, score in scores.items():
            self.conf[index] = torch.tensor([1 - score, score])
        for index, offsets in (loc or {}).items():
            self.loc[index] = torch.tensor(offsets)
        self.landms = torch.zeros(n, 10)

    def forward(self, x):
        b = x.shape[0]
        return self.loc.expand(b, -1, -1), self.conf.expand(b, -1, -1), self.landms.expand(b, -1, -1)


def test_detector_decodes_to_pixels_thresholds_and_clips():
    # 32x32: prior 0 is the 16 px anchor at (4, 4) -> box (-4, -4, 12, 12), clipped to (0, 0, 12, 12);
    # prior 6 is the 16 px anchor at cell (0, 3): centre (28, 4) -> (20, -4, 36, 12) -> (20, 0, 32, 12)
    net = FixedOutputs(32, 32, {0: 0.9, 6: 0.7, 2: 0.5})
    (faces,) = FaceDetector(net, conf_threshold=0.5, engine="torch")([np.zeros((32, 32, 3), np.uint8)])
    assert [f.score for f in faces] == pytest.approx([0.9, 0.7])  # 0.5 is not > 0.5
    np.testing.assert_allclose(faces[0].box, [0, 0, 12, 12])
    np.testing.assert_allclose(faces[1].box, [20, 0, 32, 12])
    np.testing.assert_allclose(faces[0].landmarks, np.full((5, 2), 4.0))  # zero offsets: prior centre
    assert faces[0].box.dtype == np.float32 and faces[0].landmarks.shape == (5, 2)
    assert FaceDetector(net, engine="torch")([]) == []


def test_detector_nms_drops_overlapping_keeps_separate():
    # priors 0 (16 px) and 1 (32 px) share a centre: IoU 0.25 with +1 pixels is < 0.4, so shift prior 1's
    # box to 16 px as well (log(0.5)/0.2 halves it) -> identical boxes, the lower score is suppressed.
    half = math.log(0.5) / 0.2
    net = FixedOutputs(64, 64, {0: 0.95, 1: 0.9, 14: 0.8}, loc={1: [0, 0, half, half]})
    (faces,) = FaceDetector(net, conf_threshold=0.5, nms_threshold=0.4, engine="torch")(
        [np.zeros((64, 64, 3), np.uint8)]
    )
    assert [f.score for f in faces] == pytest.approx([0.95, 0.8])
    (faces,) = FaceDetector(net, conf_threshold=0.5, post_nms_top_k=1, engine="torch")(
        [np.zeros((64, 64, 3), np.uint8)]
    )
    assert len(faces) == 1


def test_detector_rejects_bad_images():
    det = FaceDetector(FixedOutputs(8, 8, {}), engine="torch")
    with pytest.raises(ValueError, match="image 1: expected a uint8 HxWx3 BGR array"):
        det([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.float32)])
    with pytest.raises(ValueError, match="image 0"):
        det([np.zeros((8, 8), np.uint8)])
    with pytest.raises(ValueError, match="fp16"):
        FaceDetector(FixedOutputs(8, 8, {}), amp="fp16", engine="torch")


# ---- detection on random-weight official networks


SIZES = [(40, 30), (64, 48), (50, 70), (33, 41)]


def _detector(net, **kwargs) -> FaceDetector:
    kwargs.setdefault("engine", "torch")
    return FaceDetector(net, conf_threshold=kwargs.pop("conf_threshold", 0.6), **kwargs)


def test_onnxruntime_engine_finds_what_torch_finds(mobilenet):
    pytest.importorskip("onnxruntime")
    images = _images(0, SIZES + SIZES[:2])
    torch_faces = _detector(mobilenet, batch_size=8)(images)  # padded batches, masked
    ort = _detector(mobilenet, batch_size=8, engine="onnxruntime")  # batches of one size
    assert ort.engine == "onnxruntime" and ort.group_by_size
    assert sum(len(f) for f in torch_faces) >= 4  # the comparison is not vacuous
    for got, want in zip(ort(images), torch_faces):
        _assert_same_faces(got, want)


def test_engine_choice():
    net = FixedOutputs(8, 8, {})
    assert FaceDetector(net, engine="torch").engine == "torch"
    with pytest.raises(ValueError, match="unknown detection engine 'tvm'"):
        FaceDetector(net, engine="tvm")
    with pytest.raises(ValueError, match="onnxruntime engine runs on CPU without amp"):
        FaceDetector(net, engine="onnxruntime", amp="bf16")


def test_batched_equals_single_image(mobilenet):
    images = _images(0, SIZES)
    single = [_detector(mobilenet, batch_size=1)([im])[0] for im in images]
    batched = _detector(mobilenet, batch_size=8)(images)
    assert sum(len(f) for f in single) >= 4  # the comparison is not vacuous
    for got, want in zip(batched, single):
        _assert_same_faces(got, want)
        assert [f.score for f in got] == sorted((f.score for f in got), reverse=True)


def test_batched_equals_single_image_resnet50(checkpoints):
    net = rf.load(checkpoints["resnet50"], variant="resnet50")
    images = _images(6, [(36, 28), (45, 33)])
    single = [_detector(net)([im])[0] for im in images]
    batched = _detector(net)(images)
    assert sum(len(f) for f in single) >= 2
    for got, want in zip(batched, single):
        _assert_same_faces(got, want)
    assert not any(m._forward_pre_hooks for m in net.modules())  # the padding masks are removed


def test_padding_next_to_a_larger_image_changes_nothing(mobilenet):
    small, large = _images(1, [(36, 28), (80, 64)])
    alone = _detector(mobilenet)([small])[0]
    padded = _detector(mobilenet)([small, large])[0]
    assert alone
    _assert_same_faces(padded, alone)


def test_group_by_size_matches_single(mobilenet):
    images = _images(2, [(40, 30), (40, 30), (50, 70), (40, 30)])
    grouped = _detector(mobilenet, group_by_size=True, batch_size=2)(images)
    for im, got in zip(images, grouped):
        _assert_same_faces(got, _detector(mobilenet)([im])[0])


def test_upscale_maps_coordinates_back(mobilenet):
    (image,) = _images(3, [(30, 22)])
    enlarged = cv2.resize(image, (44, 60), interpolation=cv2.INTER_LINEAR)  # what upscale=2 feeds the net
    on_enlarged = _detector(mobilenet)([enlarged])[0]
    upscaled = _detector(mobilenet, upscale=2.0)([image])[0]
    assert on_enlarged
    assert len(upscaled) == len(on_enlarged)
    for got, big in zip(upscaled, on_enlarged):
        np.testing.assert_allclose(got.box, big.box / 2, atol=1e-4)
        np.testing.assert_allclose(got.landmarks, big.landmarks / 2, atol=1e-4)
        assert 0 <= got.box[0] <= got.box[2] <= 22 and 0 <= got.box[1] <= got.box[3] <= 30


def test_boxes_are_clipped_to_each_image(mobilenet):
    images = _images(4, SIZES)
    for im, faces in zip(images, _detector(mobilenet, conf_threshold=0.5)(images)):
        h, w = im.shape[:2]
        for f in faces:
            assert 0 <= f.box[0] < f.box[2] <= w and 0 <= f.box[1] < f.box[3] <= h


def test_bf16_autocast_runs_on_cpu(mobilenet):
    images = _images(5, [(40, 30)])
    faces = _detector(mobilenet, amp="bf16", conf_threshold=0.5)(images)[0]
    assert all(f.box.dtype == np.float32 and isinstance(f.score, float) for f in faces)


# ---- choose_face


def _face(cx: float, cy: float, side: float, score: float) -> Face:
    box = np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], np.float32)
    return Face(box=box, score=score, landmarks=np.zeros((5, 2), np.float32))


HW = (128, 64)  # a re-id crop: H x W


def test_choose_face_drops_by_score_size_and_position():
    assert choose_face([], HW) is None
    assert choose_face([_face(32, 20, 12, 0.79)], HW) is None  # below min_score 0.8
    assert choose_face([_face(32, 20, 7.9, 0.99)], HW) is None  # short side below 8 px
    assert choose_face([_face(32, 70, 12, 0.99)], HW) is None  # centre below half the height
    edge = _face(32, 64, 8, 0.8)  # exactly at every limit: kept
    assert choose_face([edge], HW) is edge
    assert choose_face([_face(32, 20, 12, 0.6)], HW, FacePolicy(min_score=0.5)) is not None


def test_choose_face_prefers_centred_then_larger():
    centred, side = _face(32, 20, 12, 0.9), _face(8, 20, 12, 0.9)
    assert choose_face([side, centred], HW) is centred
    big, small = _face(32, 20, 16, 0.9), _face(30, 30, 10, 0.9)
    assert choose_face([small, big], HW) is big
    # a centred face beats a side face with a somewhat higher score (merit 0.81 vs 0.99 * 0.66)
    weak_centred, strong_side = _face(32, 20, 12, 0.81), _face(10, 20, 12, 0.99)
    assert choose_face([strong_side, weak_centred], HW) is weak_centred
    # but a much better score can win over a slightly better position
    good, poor = _face(28, 20, 12, 0.99), _face(32, 20, 12, 0.81)
    assert choose_face([poor, good], HW) is good


def test_an_onnx_export_is_made_once_and_then_read_from_the_disk_cache(tmp_path, monkeypatch):
    """A new process (a Ray actor) reads the export of the same network and weights from disk."""
    from deskpro.pipeline import onnx_engine

    monkeypatch.setenv("DESKPRO_CACHE", str(tmp_path))
    monkeypatch.setattr(onnx_engine, "_EXPORTS", {})
    net = rf.build("mobilenet0.25").eval()
    first = onnx_engine.cached_export(net)
    assert [p.read_bytes() for p in (tmp_path / "onnx").glob("*.onnx")] == [first]
    monkeypatch.setattr(onnx_engine, "_EXPORTS", {})  # as in a new process
    monkeypatch.setattr(onnx_engine, "export_onnx", lambda net: pytest.fail("exported again"))
    assert onnx_engine.cached_export(net) == first
    with torch.no_grad():
        net.body.stage1[0][0].weight.add_(1.0)  # other weights: another file
    monkeypatch.setattr(onnx_engine, "export_onnx", lambda net: b"other")
    assert onnx_engine.cached_export(net) == b"other" and len(list((tmp_path / "onnx").glob("*"))) == 2
