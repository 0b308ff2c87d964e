"""GPEN-BFR network: checkpoint layout, the re-derived StyleGAN2 ops, forward properties, the Restorer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _reference import REFERENCE_DIR

from deskpro.pipeline import restoration
from deskpro.pipeline.nets import gpen

REFERENCE = REFERENCE_DIR / "gpen_keys.json"


def reference_shapes(size: int) -> dict[str, tuple[int, ...]]:
    with open(REFERENCE) as f:
        return {k: tuple(v) for k, v in json.load(f)[f"gpen_bfr_{size}"].items()}


def random_state_dict(size: int, seed: int) -> dict[str, torch.Tensor]:
    """Random values with the official key names and shapes; blur kernels keep their true values."""
    gen = torch.Generator().manual_seed(seed)
    true_kernels = {k: v for k, v in gpen.build(size).state_dict().items() if k.endswith(".kernel")}
    out = {}
    for key, shape in reference_shapes(size).items():
        out[key] = true_kernels[key].clone() if key in true_kernels else torch.randn(shape, generator=gen)
    return out


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("gpen")
    torch.save(random_state_dict(256, seed=1), d / "GPEN-BFR-256.pth")
    torch.save(random_state_dict(512, seed=2), d / "GPEN-BFR-512.pth")
    return d


@pytest.fixture(scope="module")
def net256(ckpt_dir) -> gpen.GPEN:
    return gpen.load(ckpt_dir / "GPEN-BFR-256.pth", size=256)


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("size", [256, 512])
def test_build_has_official_keys_and_shapes(size):
    built = {k: tuple(v.shape) for k, v in gpen.build(size).state_dict().items()}
    assert built == reference_shapes(size)


@pytest.mark.parametrize("size", [256, 512])
def test_load_official_layout_strict(ckpt_dir, size):
    path = ckpt_dir / f"GPEN-BFR-{size}.pth"
    net = gpen.load(path, size=size)
    saved = torch.load(path, weights_only=True)
    loaded = net.state_dict()
    assert set(loaded) == set(saved)
    for key in ("final_linear.0.weight", "generator.style.8.bias", "generator.convs.3.conv.weight"):
        assert torch.equal(loaded[key], saved[key])
    assert not net.training and net.size == size


@pytest.mark.parametrize(("file_size", "asked"), [(256, 512), (512, 256)])
def test_cross_size_error_names_the_checkpoint(ckpt_dir, file_size, asked):
    expected = f"this checkpoint is GPEN-BFR-{file_size}: pass --restorer gpen-{file_size}"
    with pytest.raises(ValueError, match=expected):
        gpen.load(ckpt_dir / f"GPEN-BFR-{file_size}.pth", size=asked)


def test_missing_file_names_path_and_weights_list(tmp_path):
    path = tmp_path / "nowhere" / "GPEN-BFR-512.pth"
    with pytest.raises(FileNotFoundError, match="deskpro weights list") as info:
        gpen.load(path)
    assert str(path) in str(info.value)


def test_incomplete_checkpoint_lists_missing_keys(tmp_path):
    state = random_state_dict(256, seed=3)
    del state["generator.to_rgbs.5.bias"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"broken\.pth.*missing keys \['generator\.to_rgbs\.5\.bias'\]"):
        gpen.load(tmp_path / "broken.pth", size=256)


def test_wrapped_training_checkpoint_loads(tmp_path):
    state = random_state_dict(256, seed=4)
    torch.save({"g_ema": state}, tmp_path / "wrapped.pth")
    net = gpen.load(tmp_path / "wrapped.pth", size=256)
    assert torch.equal(net.state_dict()["ecd3.0.1.weight"], state["ecd3.0.1.weight"])


def test_not_a_gpen_checkpoint(tmp_path):
    torch.save({"conv.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a GPEN generator"):
        gpen.load(tmp_path / "other.pth", size=256)


def test_unsupported_size():
    with pytest.raises(ValueError, match="unsupported GPEN size 1024"):
        gpen.build(1024)


# ----------------------------------------------------------------------------- ops vs direct computation


def numpy_upfirdn2d(x: np.ndarray, k: np.ndarray, up: int, down: int, pad: tuple[int, int]) -> np.ndarray:
    """The textbook definition on one channel: zero insertion, zero padding, convolution, decimation."""
    h, w = x.shape
    upsampled = np.zeros((h * up, w * up))
    upsampled[::up, ::up] = x
    padded = np.pad(upsampled, ((pad[0], pad[1]), (pad[0], pad[1])))
    kh, kw = k.shape
    out = np.zeros((padded.shape[0] - kh + 1, padded.shape[1] - kw + 1))
    for y in range(out.shape[0]):
        for xx in range(out.shape[1]):
            # convolution: the kernel is applied flipped
            out[y, xx] = np.sum(padded[y : y + kh, xx : xx + kw] * k[::-1, ::-1])
    return out[::down, ::down]


@pytest.mark.parametrize(
    ("up", "down", "pad"), [(2, 1, (2, 1)), (1, 2, (1, 1)), (1, 2, (2, 2)), (1, 1, (1, 2))]
)
def test_upfirdn2d_matches_numpy(up, down, pad):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 6))
    k = rng.standard_normal((4, 4))  # asymmetric, so a missing flip would show
    got = gpen.upfirdn2d(torch.tensor(x), torch.tensor(k), up=up, down=down, pad=pad).numpy()
    want = np.array([[numpy_upfirdn2d(x[b, c], k, up, down, pad) for c in range(3)] for b in range(2)])
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_upsample_and_downsample_keep_a_constant_image():
    x = torch.full((1, 2, 8, 8), 3.0)
    up = gpen.upsample2x()(x)
    assert up.shape == (1, 2, 16, 16)
    torch.testing.assert_close(up[:, :, 2:-2, 2:-2], torch.full_like(up[:, :, 2:-2, 2:-2], 3.0))
    down = gpen.encoder_block(2, 4, 3, downsample=True)[0][0](x)  # the blur before a stride-2 conv
    torch.testing.assert_close(down[:, :, 2:-2, 2:-2], torch.full_like(down[:, :, 2:-2, 2:-2], 3.0))


def test_fused_leaky_relu_math():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 3, 3))
    b = rng.standard_normal(5)
    z = x + b[None, :, None, None]
    want = np.where(z >= 0, z, 0.2 * z) * math.sqrt(2)
    got = gpen.fused_leaky_relu(torch.tensor(x), torch.tensor(b)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # 2-D input (the mapping network) broadcasts the bias over dim 1 too
    got2 = gpen.fused_leaky_relu(torch.tensor(x[:, :, 0, 0]), torch.tensor(b)).numpy()
    np.testing.assert_allclose(got2, want[:, :, 0, 0], rtol=1e-12)


def filled(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module.double()


def per_sample_modconv(conv: gpen.ModulatedConv2d, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """StyleGAN2's definition: one modulated (and demodulated) weight per sample, applied separately."""
    s = F.linear(style, conv.modulation.weight / math.sqrt(style.shape[1]), conv.modulation.bias)
    fan_in = conv.weight.shape[2] * conv.weight.shape[3] * conv.weight.shape[4]
    outs = []
    for b in range(x.shape[0]):
        w = conv.weight[0] / math.sqrt(fan_in) * s[b][None, :, None, None]
        if conv.demodulate:
            w = w / torch.sqrt((w**2).sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
        if conv.upsample:
            y = F.conv_transpose2d(x[b : b + 1], w.transpose(0, 1), stride=2)
            y = gpen.upfirdn2d(y, gpen.fir_kernel().double() * 4, pad=(1, 1))
        else:
            y = F.conv2d(x[b : b + 1], w, padding=w.shape[-1] // 2)
        outs.append(y)
    return torch.cat(outs)


@pytest.mark.parametrize(
    ("kernel", "demodulate", "upsample"), [(3, True, False), (3, True, True), (1, False, False)]
)
def test_modulated_conv_equals_per_sample_conv(kernel, demodulate, upsample):
    conv = filled(gpen.ModulatedConv2d(6, 5, kernel, demodulate=demodulate, upsample=upsample), seed=2)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 6, 8, 8, generator=gen, dtype=torch.float64)
    style = torch.randn(3, gpen.STYLE_DIM, generator=gen, dtype=torch.float64)
    got = conv(x, style)
    assert got.shape == (3, 5, 16 if upsample else 8, 16 if upsample else 8)
    torch.testing.assert_close(got, per_sample_modconv(conv, x, style), rtol=1e-10, atol=1e-10)


def test_demodulated_output_has_unit_weight_norm_per_sample():
    # With demodulation, a delta input at one location returns the weight column, which has unit norm.
    conv = filled(gpen.ModulatedConv2d(4, 3, 3), seed=5)
    style = torch.randn(2, gpen.STYLE_DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    norms = []
    for c in range(4):
        x = torch.zeros(2, 4, 7, 7, dtype=torch.float64)
        x[:, c, 3, 3] = 1.0
        norms.append(conv(x, style)[:, :, 2:5, 2:5].square().sum(dim=(2, 3)))
    torch.testing.assert_close(torch.stack(norms).sum(0), torch.ones(2, 3, dtype=torch.float64))


# ----------------------------------------------------------------------------- forward on GPEN-256


@pytest.fixture(scope="module")
def forward_pair(net256):
    torch.set_num_threads(1)
    x = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(7)) * 2 - 1
    with torch.inference_mode():
        return x, net256(x), net256(x[1:])


def test_forward_shape_and_determinism(net256, forward_pair):
    x, y, y_single = forward_pair
    assert y.shape == x.shape and y.dtype == torch.float32
    assert torch.isfinite(y).all()
    # No random noise anywhere: a second call with the same input gives the same output.
    with torch.inference_mode():
        again = net256(x[1:])
    torch.testing.assert_close(again, y_single, rtol=0, atol=0)


def test_forward_is_batch_independent(forward_pair):
    x, y, y_single = forward_pair
    assert not torch.allclose(y[0], y[1])  # the two inputs really differ
    torch.testing.assert_close(y[1:], y_single, rtol=1e-4, atol=1e-4 * float(y.abs().max()))


def test_forward_rejects_wrong_size(net256):
    with pytest.raises(ValueError, match=r"GPEN-BFR-256 expects \[B,3,256,256\]"):
        net256(torch.zeros(1, 3, 128, 128))


# ----------------------------------------------------------------------------- Restorer


class Identity(torch.nn.Module):
    """Stands in for GPEN to check the Restorer's pre- and post-processing exactly."""

    size = 64

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_restorer_round_trips_at_network_size():
    faces = np.random.default_rng(8).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    out = restoration.Restorer(Identity())(faces)
    assert out.dtype == np.uint8 and out.shape == (3, 64, 64, 3)
    np.testing.assert_array_equal(out, faces)


def test_restorer_resizes_bicubic_like_opencv():
    rng = np.random.default_rng(9)
    small = cv2.GaussianBlur(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), (5, 5), 1.0)
    out = restoration.Restorer(Identity())(small[None])[0]
    want = cv2.resize(small, (64, 64), interpolation=cv2.INTER_CUBIC)
    assert np.abs(out.astype(int) - want.astype(int)).max() <= 1


def test_restorer_shrinks_with_antialiasing():
    stripes = np.zeros((128, 128, 3), np.uint8)
    stripes[:, ::2] = 255  # a 1-px pattern that must average out to grey, not alias
    out = restoration.Restorer(Identity())(stripes[None])[0]
    assert np.abs(out[8:-8, 8:-8].astype(int) - 128).max() <= 2


def test_restorer_on_gpen256(net256):
    faces = np.random.default_rng(10).integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)
    restorer = restoration.Restorer(net256)
    out = restorer(faces)
    assert restorer.size == 256 and out.shape == (2, 256, 256, 3) and out.dtype == np.uint8
    assert len(np.unique(out)) > 10  # an image, not a constant
    assert restorer(faces[:0]).shape == (0, 256, 256, 3)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((2, 64, 64, 3), np.float32),
        np.zeros((64, 64, 3), np.uint8),
        np.zeros((1, 64, 48, 3), np.uint8),
    ],
)
def test_restorer_rejects_bad_faces(bad):
    with pytest.raises(ValueError, match="faces must be"):
        restoration.Restorer(Identity())(bad)


def test_restorer_rejects_bad_amp():
    with pytest.raises(ValueError, match="amp must be"):
        restoration.Restorer(Identity(), amp="int8")


def test_restorer_channels_last_and_bf16_agree_with_fp32(ckpt_dir):
    faces = np.random.default_rng(11).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    plain = restoration.Restorer(gpen.load(ckpt_dir / "GPEN-BFR-256.pth", size=256))(faces)
    fast = gpen.load(ckpt_dir / "GPEN-BFR-256.pth", size=256)
    channels_last = restoration.Restorer(fast, channels_last=True)(faces)
    assert np.abs(channels_last.astype(int) - plain).max() <= 1
    bf16 = restoration.Restorer(fast, amp="bf16")(faces)
    assert bf16.dtype == np.uint8 and np.abs(bf16.astype(int) - plain).mean() < 2.0
