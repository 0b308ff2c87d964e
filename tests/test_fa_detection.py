"""Tests for deskpro.pipeline.fa_detection: the 68 -> 5 landmark reduction, local-file construction
and its errors, the heatmap -> image mapping, and the detector's call contract.

No real weights: S3FD gets a random state dict with its real key names (its face-class bias raised so
that it fires), FAN a scripted stand-in whose heatmaps peak at known places.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from deskpro.pipeline import fa_detection as fa
from deskpro.pipeline.detection import Face

face_alignment = pytest.importorskip("face_alignment")
# the FAN stand-in is TorchScript, which this torch marks deprecated
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")


def _random_like(module: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Random values (He-scaled conv weights, zero biases) for every tensor of `module`'s state dict."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in module.state_dict().items():
        if value.ndim == 4:
            fan_in = value.shape[1] * value.shape[2] * value.shape[3]
            state[key] = torch.randn(value.shape, generator=gen) * math.sqrt(2.0 / fan_in)
        elif key.endswith("num_batches_tracked") or key.endswith("bias") or key.endswith("running_mean"):
            state[key] = torch.zeros_like(value)
        else:  # BatchNorm weight / running_var, L2Norm scale
            state[key] = value.clone() if "norm" in key else 0.5 + torch.rand(value.shape, generator=gen)
    return state


# 68 heatmap peaks (col, row) on the 64x64 FAN grid: eyes, nose tip and mouth corners in a face layout.
PEAKS = np.full((68, 2), 32)
PEAKS[36:42] = (20, 24)
PEAKS[42:48] = (44, 24)
PEAKS[30] = (32, 36)
PEAKS[48] = (24, 46)
PEAKS[54] = (40, 46)


class PeakFAN(nn.Module):
    """FAN stand-in: one-hot heatmaps at PEAKS, a list of outputs like the real FAN's hourglass stack."""

    def __init__(self) -> None:
        super().__init__()
        heat = torch.zeros(68, 64, 64)
        heat[torch.arange(68), torch.from_numpy(PEAKS[:, 1]), torch.from_numpy(PEAKS[:, 0])] = 1.0
        self.register_buffer("heat", heat)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.heat.unsqueeze(0).expand(x.shape[0], -1, -1, -1).clone()]


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    from face_alignment.detection.sfd.net_s3fd import s3fd

    root = tmp_path_factory.mktemp("fa")
    state = _random_like(s3fd(), seed=0)
    for key in [k for k in state if k.endswith("_mbox_loc.weight")]:
        state[key] = torch.zeros_like(state[key])  # boxes = S3FD anchors (random offsets explode)
    state["conv3_3_norm_mbox_conf.bias"] = torch.tensor([0.0, 0.0, 0.0, 6.0])  # stride-4 faces fire
    for level in ("conv4_3_norm", "conv5_3_norm", "fc7", "conv6_2", "conv7_2"):
        state[f"{level}_mbox_conf.bias"] = torch.tensor([6.0, 0.0])  # coarser levels stay quiet
    torch.save(state, root / "s3fd.pth")
    torch.jit.script(PeakFAN()).save(str(root / "fan.pt"))
    return {"detector": root / "s3fd.pth", "fan": root / "fan.pt", "root": root}


def test_reduce_68_to_5_by_hand():
    points = np.zeros((68, 2), np.float32)
    points[36:42] = np.arange(12, dtype=np.float32).reshape(6, 2)  # mean (5, 6)
    points[42:48] = 100 + np.arange(12, dtype=np.float32).reshape(6, 2)  # mean (105, 106)
    points[30] = (50, 60)
    points[48] = (30, 90)
    points[54] = (70, 91)
    np.testing.assert_allclose(
        fa.reduce_68_to_5(points), [[5, 6], [105, 106], [50, 60], [30, 90], [70, 91]], rtol=1e-6
    )
    with pytest.raises(ValueError, match=r"\(68, 2\)"):
        fa.reduce_68_to_5(np.zeros((5, 2)))


def test_missing_files_are_named(weight_files, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.pth: S3FD.*deskpro weights list"):
        fa.FaceAlignmentDetector.from_files(tmp_path / "nope.pth", weight_files["fan"])
    with pytest.raises(FileNotFoundError, match=r"fan\.pth: FAN landmark.*deskpro weights list"):
        fa.FaceAlignmentDetector.from_files(weight_files["detector"], tmp_path / "fan.pth")


def test_wrong_files_are_named(weight_files, tmp_path):
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1, 1, 1, 1)}, other)
    with pytest.raises(ValueError, match=r"other\.pth: not a S3FD checkpoint"):
        fa.load_s3fd(other)
    with pytest.raises(ValueError, match=r"other\.pth: not a FAN checkpoint"):
        fa.load_fan(other)
    # the S3FD file given as the FAN
    with pytest.raises(ValueError, match=r"s3fd\.pth: not a FAN checkpoint"):
        fa.load_fan(weight_files["detector"])


def test_fan_state_dict_file_loads(tmp_path):
    from face_alignment.models import FAN

    state = _random_like(FAN(fa.FAN_BLOCKS), seed=1)
    torch.save(state, tmp_path / "2DFAN4.pth.tar")
    net = fa.load_fan(tmp_path / "2DFAN4.pth.tar")
    assert isinstance(net, FAN) and not net.training
    key = "l3.weight"
    assert torch.equal(net.state_dict()[key], state[key])


def test_heatmap_peaks_map_back_into_the_image(weight_files):
    det = fa.FaceAlignmentDetector.from_files(weight_files["detector"], weight_files["fan"])
    rgb = np.zeros((120, 100, 3), np.uint8)
    box = np.array([[20.0, 30.0, 80.0, 90.0, 0.9]])
    (points,) = det._landmarks(rgb, box)
    # face_alignment's crop: centre (50, 60 - 0.12 * 60), side 200 * (60 + 60) / 195 px over 64 cells;
    # a one-hot peak at cell c maps to (c + 0.5 - 32) * side / 64 + centre
    side = 200 * 120 / 195
    centre = np.array([50.0, 60.0 - 0.12 * 60])
    expected = (PEAKS + 0.5 - 32) * side / 64 + centre
    np.testing.assert_allclose(points, expected, atol=1e-3)
    five = fa.reduce_68_to_5(points)
    assert five[0, 0] < five[2, 0] < five[1, 0]  # image-left eye, nose, image-right eye
    assert five[3, 0] < five[4, 0] and five[3, 1] > five[2, 1] > five[0, 1]


@pytest.mark.slow  # face_alignment's numba-compiled get_preds_fromhm takes ~15 s to compile
def test_heatmap_points_quarter_shift_matches_face_alignment():
    from face_alignment.utils import get_preds_fromhm

    rng = np.random.default_rng(3)
    heatmaps = rng.random((68, 64, 64)).astype(np.float32)
    centre, scale = np.array([40.0, 52.0]), 0.8
    ours = fa.heatmap_points(heatmaps, centre, scale)
    _, theirs, _ = get_preds_fromhm(heatmaps[None], centre, scale)
    np.testing.assert_allclose(ours, theirs.reshape(68, 2), atol=1.0)  # theirs is truncated to int


def test_call_contract(weight_files):
    det = fa.FaceAlignmentDetector.from_files(
        weight_files["detector"], weight_files["fan"], conf_threshold=0.5
    )
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 48, 3), dtype=np.uint8), rng.integers(0, 256, (40, 56, 3), np.uint8)]
    results = det(images)
    assert len(results) == 2
    assert sum(len(faces) for faces in results) >= 1
    for image, faces in zip(images, results):
        h, w = image.shape[:2]
        assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)
        for f in faces:
            assert isinstance(f, Face) and f.score > 0.5
            assert f.box.dtype == np.float32 and f.landmarks.shape == (5, 2)
            assert 0 <= f.box[0] < f.box[2] <= w and 0 <= f.box[1] < f.box[3] <= h
    with pytest.raises(ValueError, match="image 0"):
        det([np.zeros((8, 8, 3), np.float32)])
