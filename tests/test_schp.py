"""SCHP parser: checkpoint layout, loading errors, InPlaceABN math, letterbox geometry, Parser inference."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from _reference import REFERENCE_DIR
from torch import nn

from deskpro.pipeline import parsing
from deskpro.pipeline.nets import schp, specs

REFERENCE = REFERENCE_DIR / "schp_keys.json"
SMALL = 65  # square side for forwards: fast on CPU, odd on purpose (logits at 17 = ceil(65 / 4))
HEAD_PREFIXES = {"context_encoding", "edge", "decoder", "fushion"}


def reference_layout(labels: str) -> dict[str, list[int]]:
    return json.loads(REFERENCE.read_text())[f"schp_{labels}"]


@functools.lru_cache(maxsize=4)
def random_state_dict(labels: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with the official keys and shapes, scaled so a 101-layer forward stays finite.

    Cached (66.7 M values take seconds to draw): callers must not modify the tensors.
    """
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in reference_layout(labels).items():
        if key.endswith("running_var"):
            value = torch.rand(shape, generator=g) + 0.5
        elif key.endswith("running_mean"):
            value = torch.randn(shape, generator=g) * 0.1
        elif key.endswith("bias"):
            value = torch.randn(shape, generator=g) * 0.3
        elif len(shape) == 1:  # ABN weights: both signs, so |weight| matters
            value = torch.randn(shape, generator=g) * 0.5
        else:
            fan_in = int(np.prod(shape[1:]))
            value = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        state[key] = value
    return state


def smooth_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A BGR uint8 image with structure at several scales (not pure noise)."""
    coarse = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)
    noise = rng.integers(-20, 21, image.shape)
    return np.clip(image.astype(np.int64) + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def lip_net() -> schp.SCHPNet:
    return schp.load_state_dict(schp.build("lip"), random_state_dict("lip", seed=0), "lip")


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [smooth_image(rng, h, w) for h, w in [(96, 40), (50, 70), (33, 33)]]


# ----------------------------------------------------------------------------- layout and loading


@pytest.mark.parametrize("labels", ["lip", "atr", "pascal"])
def test_built_layout_is_the_reference_layout(labels: str) -> None:
    net = schp.build(labels)
    layout = {k: list(v.shape) for k, v in net.state_dict().items()}
    assert layout == reference_layout(labels)
    assert net.num_classes == len(schp.LABELS[labels])
    assert not net.training


@pytest.mark.parametrize("labels", ["lip", "atr", "pascal"])
@pytest.mark.parametrize("wrapped", [True, False])
@pytest.mark.parametrize("prefixed", [True, False])
def test_reference_layout_loads_in_every_wrapping(labels: str, wrapped: bool, prefixed: bool) -> None:
    state = random_state_dict(labels, seed=0)
    stored = {("module." + k if prefixed else k): v for k, v in state.items()}
    checkpoint = {"state_dict": stored, "cycle_n": 3} if wrapped else stored
    net = schp.load_state_dict(schp.build(labels), checkpoint, labels)
    loaded = net.state_dict()
    for key in ("conv1.weight", "layer3.17.bn2.running_var", "fushion.3.bias", "edge.conv1.1.weight"):
        assert torch.equal(loaded[key], state[key])


def test_load_reads_the_official_file_format(tmp_path: Path) -> None:
    state = random_state_dict("lip", seed=0)
    path = tmp_path / "exp-schp-201908261155-lip.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "cycle_n": 5}, path)
    net = schp.load(path, "lip")
    assert not net.training
    assert torch.equal(net.state_dict()["decoder.conv4.weight"], state["decoder.conv4.weight"])


def test_wrong_label_set_names_the_right_one() -> None:
    state = random_state_dict("atr")
    with pytest.raises(ValueError, match=r"atr\.pth: this checkpoint has 18 classes: pass --labels atr"):
        schp.load_state_dict(schp.build("lip"), {"state_dict": state}, "lip", source="atr.pth")


def test_not_an_schp_file_lists_unexpected_keys(tmp_path: Path) -> None:
    path = tmp_path / "Resnet50_Final.pth"
    torch.save(
        {"module.body.conv1.weight": torch.zeros(64, 3, 7, 7), "module.fpn.output1.0.weight": torch.zeros(1)},
        path,
    )
    with pytest.raises(ValueError, match=r"Resnet50_Final\.pth: not an SCHP.*body\.conv1\.weight"):
        schp.load(path, "lip")


def test_file_that_is_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match=r"list\.pth: not a checkpoint state dict"):
        schp.load(path, "lip")


def test_missing_file_names_path_and_where_weights_come_from(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth.*deskpro weights list"):
        schp.load(path, "atr")


def test_unknown_label_set() -> None:
    with pytest.raises(ValueError, match="unknown label set 'cihp'"):
        schp.build("cihp")


# ----------------------------------------------------------------------------- InPlaceABN


def _set_abn(abn: schp.InPlaceABN, weight, bias, mean, var) -> None:
    with torch.no_grad():
        for name, value in (("weight", weight), ("bias", bias), ("running_mean", mean), ("running_var", var)):
            getattr(abn, name).copy_(torch.tensor(value, dtype=torch.float32))


@pytest.mark.parametrize("activation", ["none", "leaky_relu"])
def test_inplace_abn_matches_hand_computation(activation: str) -> None:
    weight, bias = [-2.0, 0.5, 0.0, 1.0], [0.1, -0.3, 0.2, 0.0]
    mean, var = [0.5, -1.0, 0.0, 2.0], [4.0, 0.25, 1.0, 0.01]
    abn = schp.InPlaceABN(4, activation=activation).eval()
    _set_abn(abn, weight, bias, mean, var)
    x = np.random.default_rng(0).normal(size=(2, 4, 3, 5)).astype(np.float32)
    c = (slice(None), None, None)
    eps = 1e-5
    y = (x - np.array(mean)[c]) / np.sqrt(np.array(var)[c] + eps) * (np.abs(weight)[c] + eps) + np.array(
        bias
    )[c]
    if activation == "leaky_relu":
        y = np.where(y >= 0, y, 0.01 * y)
    out = abn(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(out, y, rtol=1e-5, atol=1e-6)
    # The sign of the weight is ignored (|w|): channel 0 with weight -2 still increases with x.
    order = np.argsort(x[:, 0].ravel())
    assert np.all(np.diff(out[:, 0].ravel()[order]) > 0)


def test_heads_use_leaky_relu_and_the_backbone_does_not(lip_net: schp.SCHPNet) -> None:
    kinds: dict[str, set[str]] = {}
    for name, module in lip_net.named_modules():
        if isinstance(module, schp.InPlaceABN):
            part = "head" if name.split(".")[0] in HEAD_PREFIXES else "backbone"
            kinds.setdefault(part, set()).add(module.activation)
            assert module.eps == 1e-5
    assert kinds == {"head": {"leaky_relu"}, "backbone": {"none"}}
    # 4 PSP stages + bottleneck, 3 edge, 4 decoder, 1 fusion.
    heads = [
        m
        for n, m in lip_net.named_modules()
        if isinstance(m, schp.InPlaceABN) and n.split(".")[0] in HEAD_PREFIXES
    ]
    assert len(heads) == 13


@pytest.mark.parametrize(
    ("module_name", "slope"), [("fushion.1", 0.01), ("edge.conv2.1", 0.01), ("layer1.0.bn1", 1.0)]
)
def test_negative_inputs_pass_with_the_layer_slope(module_name: str, slope: float) -> None:
    net = schp.build("pascal")
    abn = net.get_submodule(module_name)
    channels = abn.num_features
    _set_abn(abn, [1.0] * channels, [0.0] * channels, [0.0] * channels, [1.0 - 1e-5] * channels)
    x = torch.full((1, channels, 2, 2), -3.0)
    out = abn(x)
    torch.testing.assert_close(out, torch.full_like(x, -3.0 * slope * (1 + 1e-5)), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- network forward


def test_forward_returns_fusion_logits_at_a_quarter(lip_net: schp.SCHPNet) -> None:
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        fusion = lip_net(x)
        parsing, fusion_all, edge = lip_net.forward_all(x[:1])
    assert fusion.shape == (2, 20, 16, 16)
    assert parsing.shape == (1, 20, 16, 16) and edge.shape == (1, 2, 16, 16)
    torch.testing.assert_close(fusion_all, fusion[:1], rtol=1e-4, atol=1e-4)
    assert torch.isfinite(fusion).all() and fusion.std() > 0


# ----------------------------------------------------------------------------- letterbox geometry


@pytest.mark.parametrize(("height", "width"), [(120, 50), (40, 90), (77, 77)])
def test_letterbox_and_inverse_restore_a_label_map(height: int, width: int) -> None:
    rng = np.random.default_rng(height)
    coarse = rng.integers(0, 20, (height // 6 + 1, width // 6 + 1), dtype=np.uint8)
    labels = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_NEAREST)
    size = 473
    square = cv2.warpAffine(
        labels, parsing.letterbox_matrix(height, width, size), (size, size), flags=cv2.INTER_NEAREST
    )
    back = parsing.unletterbox(square, height, width, interpolation=cv2.INTER_NEAREST)
    assert back.shape == labels.shape
    interior = (slice(1, -1), slice(1, -1))
    assert np.array_equal(back[interior], labels[interior])


def test_letterbox_keeps_aspect_and_centres() -> None:
    image = np.full((100, 50, 3), 255, np.uint8)
    square = parsing.letterbox(image, 101)
    # A 100x50 box onto 101 px: scale 100/99, width 49 -> ~50 px centred; rows fully covered.
    columns = np.flatnonzero(square[50, :, 0] > 127)
    assert 48 <= len(columns) <= 52
    assert abs((columns[0] + columns[-1]) / 2 - 50) <= 0.5
    assert square[:, 50].min() == 255 and square[50, :20].max() == 0
    matrix = parsing.letterbox_matrix(100, 50, 101)
    np.testing.assert_allclose(matrix @ [24.5, 49.5, 1.0], [50.0, 50.0], atol=1e-4)  # centre -> centre
    np.testing.assert_allclose(matrix @ [0.0, 0.0, 1.0], [50 - 24.5 * 100 / 99, 0.0], atol=1e-4)
    inverse = parsing.letterbox_matrix(100, 50, 101, inverse=True)
    np.testing.assert_allclose(inverse @ np.append(matrix @ [10.0, 70.0, 1.0], 1.0), [10.0, 70.0], atol=1e-4)


@pytest.mark.parametrize(
    ("height", "width", "size"), [(384, 128, 473), (128, 384, 512), (90, 90, 473), (3, 300, 512)]
)
def test_windowed_unletterbox_is_bit_identical(height: int, width: int, size: int) -> None:
    logits = np.random.default_rng(size + height).normal(size=(size, size, 5)).astype(np.float32)
    x0, y0, x1, y1 = parsing.content_window(height, width, size)
    assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
    assert (x1 - x0) * (y1 - y0) < size * size or height == width  # a non-square image needs less
    window = logits[y0:y1, x0:x1]
    full = parsing.unletterbox(logits, height, width)
    assert np.array_equal(parsing.unletterbox(window, height, width, size=size, origin=(x0, y0)), full)
    # The window holds everything the warp reads: logits outside it do not matter.
    outside = logits.copy()
    outside[:y0] = outside[y1:] = 99.0
    outside[:, :x0] = outside[:, x1:] = 99.0
    assert np.array_equal(parsing.unletterbox(outside, height, width), full)


def test_too_small_image_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="1x1 pixels is too small"):
        parsing.letterbox_matrix(1, 1, 473)


# ----------------------------------------------------------------------------- Parser


class TinyParsingNet(nn.Module):
    """A two-conv stand-in with SCHP's input convention (logits at 1/4): fast, and spatially varied."""

    def __init__(self, num_classes: int = 20, seed: int = 0):
        super().__init__()
        self.num_classes = num_classes
        self.input_spec = specs.SCHP_SPEC
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv2d(16, num_classes, 3, stride=2, padding=1),
        )
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in self.parameters():
                param.copy_(torch.randn(param.shape, generator=g) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.fixture(scope="module")
def tiny_net() -> TinyParsingNet:
    return TinyParsingNet().eval()


@pytest.fixture(params=["tiny", "schp"])
def parsing_net(request: pytest.FixtureRequest) -> nn.Module:
    return request.getfixturevalue("tiny_net" if request.param == "tiny" else "lip_net")


def test_parser_gives_each_image_its_own_size(parsing_net: nn.Module, images: list[np.ndarray]) -> None:
    maps = parsing.Parser(parsing_net, "lip", input_size=SMALL)(images)
    assert [m.shape for m in maps] == [im.shape[:2] for im in images]
    assert all(m.dtype == np.uint8 and m.max() < 20 for m in maps)


def test_parser_maps_follow_the_image_content(tiny_net: TinyParsingNet, images: list[np.ndarray]) -> None:
    maps = parsing.Parser(tiny_net, "lip", input_size=SMALL)(images)
    assert all(len(np.unique(m)) > 2 for m in maps)
    blank = parsing.Parser(tiny_net, "lip", input_size=SMALL)([np.zeros((40, 20, 3), np.uint8)])[0]
    assert len(np.unique(blank[5:-5, 5:-5])) == 1  # a uniform image gives a uniform interior


def test_batched_output_equals_per_image_output(parsing_net: nn.Module, images: list[np.ndarray]) -> None:
    parser = parsing.Parser(parsing_net, "lip", input_size=SMALL)
    batched = parser.logits(images)
    for image, logits in zip(images, batched):
        (single,) = parser.logits([image])
        assert logits.shape == (*image.shape[:2], 20)
        np.testing.assert_allclose(logits, single, rtol=1e-4, atol=1e-4)
        assert np.array_equal(logits.argmax(2), single.argmax(2))


def test_square_image_gives_the_network_argmax(parsing_net: nn.Module, images: list[np.ndarray]) -> None:
    """An SxS image is letterboxed by the identity: Parser = upsampled net(normalised BGR), argmaxed."""
    image = images[2]
    size = image.shape[0]
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255  # BGR stays BGR
    mean, std = torch.tensor([0.406, 0.456, 0.485]), torch.tensor([0.225, 0.224, 0.229])
    x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    with torch.inference_mode():
        logits = nn.functional.interpolate(
            parsing_net(x), size=(size, size), mode="bilinear", align_corners=True
        )
    expected = logits[0].permute(1, 2, 0).numpy()
    parser = parsing.Parser(parsing_net, "lip", input_size=size)
    (got,) = parser.logits([image])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert np.array_equal(parser([image])[0], expected.argmax(2))


def test_flip_test_is_the_swapped_average(parsing_net: nn.Module, images: list[np.ndarray]) -> None:
    plain = parsing.Parser(parsing_net, "lip", input_size=SMALL)
    flipped = parsing.Parser(parsing_net, "lip", input_size=SMALL, flip=True)
    squares = np.stack([parsing.letterbox(im, SMALL) for im in images[:2]])
    direct = plain.square_logits(squares)
    mirrored = plain.square_logits(np.ascontiguousarray(squares[:, :, ::-1]))
    swap = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15, 14, 17, 16, 19, 18]
    expected = (direct + mirrored[:, swap].flip(-1)) / 2
    torch.testing.assert_close(flipped.square_logits(squares), expected, rtol=1e-4, atol=1e-4)
    # ... and the label maps are that average warped back and argmaxed.
    maps = flipped(images[:2])
    for i, image in enumerate(images[:2]):
        manual = parsing.unletterbox(expected[i].permute(1, 2, 0).numpy(), *image.shape[:2]).argmax(2)
        assert np.mean(maps[i] == manual) > 0.999


def test_flip_test_is_mirror_equivariant(tiny_net: TinyParsingNet, images: list[np.ndarray]) -> None:
    """With the flip test, a mirrored image gets the mirrored map with left/right labels swapped."""
    parser = parsing.Parser(tiny_net, "lip", input_size=SMALL, flip=True)
    image = images[0]
    original, mirrored = parser([image, np.ascontiguousarray(image[:, ::-1])])
    swap = np.array(parsing.flip_permutation("lip", 20), np.uint8)
    assert np.isin(original, [14, 15, 16, 17, 18, 19]).any()  # the swap is exercised
    assert np.mean(swap[mirrored[:, ::-1]] == original) > 0.98
    # Without the swap the maps disagree wherever a left/right label is predicted.
    assert np.mean(mirrored[:, ::-1] == original) < np.mean(swap[mirrored[:, ::-1]] == original)


@pytest.mark.parametrize(
    ("labels", "pairs"),
    [("lip", {14: 15, 16: 17, 18: 19}), ("atr", {9: 10, 12: 13, 14: 15}), ("pascal", {})],
)
def test_flip_permutation_swaps_left_and_right(labels: str, pairs: dict[int, int]) -> None:
    perm = parsing.flip_permutation(labels, len(schp.LABELS[labels]))
    for a, b in pairs.items():
        assert perm[a] == b and perm[b] == a
        assert "Left" in schp.LABELS[labels][a] and "Right" in schp.LABELS[labels][b]
    fixed = [i for i in range(len(perm)) if i not in pairs and i not in pairs.values()]
    assert all(perm[i] == i for i in fixed)


def test_parser_feeds_bgr_with_the_official_stats(lip_net: schp.SCHPNet) -> None:
    seen = []
    handle = lip_net.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    try:
        blue = np.zeros((SMALL, SMALL, 3), np.uint8)
        blue[..., 0] = 255  # BGR: pure blue
        parsing.Parser(lip_net, "lip", input_size=SMALL)([blue])
    finally:
        handle.remove()
    centre = seen[0][0, :, SMALL // 2, SMALL // 2]
    expected = torch.tensor([(1 - 0.406) / 0.225, (0 - 0.456) / 0.224, (0 - 0.485) / 0.229])
    torch.testing.assert_close(centre, expected)


def test_channels_last_and_bf16_run(lip_net: schp.SCHPNet, images: list[np.ndarray]) -> None:
    reference = parsing.Parser(lip_net, "lip", input_size=SMALL).logits(images[:1])[0]
    cl = parsing.Parser(lip_net, "lip", input_size=SMALL, channels_last=True).logits(images[:1])[0]
    np.testing.assert_allclose(cl, reference, rtol=1e-3, atol=1e-3)
    bf16 = parsing.Parser(lip_net, "lip", input_size=SMALL, amp="bf16")(images[:1])[0]
    assert bf16.shape == images[0].shape[:2] and bf16.dtype == np.uint8
    lip_net.to(memory_format=torch.contiguous_format)


def test_parser_rejects_bad_settings_and_images(lip_net: schp.SCHPNet) -> None:
    with pytest.raises(ValueError, match="needs a CUDA device"):
        parsing.Parser(lip_net, "lip", input_size=SMALL, amp="fp16")([np.zeros((8, 8, 3), np.uint8)])
    with pytest.raises(ValueError, match="amp must be"):
        parsing.Parser(lip_net, "lip", amp="fp8")
    with pytest.raises(ValueError, match="has 20 classes but labels='atr' has 18"):
        parsing.Parser(lip_net, "atr")
    parser = parsing.Parser(lip_net, "lip", input_size=SMALL)
    with pytest.raises(ValueError, match=r"image 1: expected a uint8 HxWx3 array, got uint8 \(8, 8\)"):
        parser([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)])
    with pytest.raises(ValueError, match="image 0: expected a uint8 HxWx3 array, got float32"):
        parser([np.zeros((8, 8, 3), np.float32)])
    assert parser([]) == []
    assert parser.input_size == SMALL
    assert parsing.Parser(lip_net, "lip").input_size == schp.INPUT_SIZES["lip"] == 473


def test_folding_abn_into_the_convs_keeps_the_label_maps() -> None:
    import copy

    import numpy as np

    from deskpro.pipeline import parsing

    net = schp.build("pascal")
    gen = torch.Generator().manual_seed(0)
    for m in net.modules():  # statistics and scales far from identity, so that folding matters
        if isinstance(m, schp.InPlaceABN):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=gen) * 0.5 + 1)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    folded = schp.fold_abn(copy.deepcopy(net))
    assert not any(isinstance(m, schp.InPlaceABN) for m in folded.modules())
    x = torch.randn(1, 3, 65, 65, generator=gen)
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-4, atol=1e-5)
    images = [np.random.default_rng(1).integers(0, 256, (96, 48, 3), dtype=np.uint8)]
    plain_maps = parsing.Parser(net, labels="pascal", input_size=64)(images)
    folded_maps = parsing.Parser(folded, labels="pascal", input_size=64)(images)
    assert np.array_equal(plain_maps[0], folded_maps[0])
