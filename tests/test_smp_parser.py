"""smp parser: spec strings, checkpoint loading and errors, and running it through the SCHP Parser."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deskpro.pipeline import backends, parsing
from deskpro.pipeline.nets import smp_parser, specs
from deskpro.pipeline.options import ParseOptions, StageConfigError

SPEC = "smp:Unet:resnet18"
SIZE = 64


def randomised(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """`net` with every float tensor redrawn from a seeded generator (so a load visibly changes weights)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if tensor.is_floating_point():
                scale = 1.0 if "running_var" in name else 0.1
                tensor.copy_(
                    torch.rand(tensor.shape, generator=g) * scale + (0.5 if "running_var" in name else 0)
                )
    return net


@pytest.fixture(scope="module")
def trained_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    net = randomised(smp_parser.build(SPEC, 7), seed=3)
    path = tmp_path_factory.mktemp("smp") / "parser.pth"
    state = {k: v.clone() for k, v in net.state_dict().items()}
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 4}, path)
    return path, state


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("smp:Unet:resnet34", ("Unet", "resnet34")),
        ("smp:DeepLabV3Plus:mobilenet_v2", ("DeepLabV3Plus", "mobilenet_v2")),
    ],
)
def test_parse_spec(spec: str, expected: tuple[str, str]) -> None:
    assert smp_parser.parse_spec(spec) == expected


@pytest.mark.parametrize(
    "spec", ["Unet:resnet34", "smp:Unet", "smp::resnet34", "smp:Unet:resnet34:x", "schp:lip:x", ""]
)
def test_bad_spec_string(spec: str) -> None:
    with pytest.raises(ValueError, match=r"bad parser spec .*expected 'smp:ARCH:ENCODER'"):
        smp_parser.parse_spec(spec)


@pytest.mark.parametrize(
    ("spec", "word"), [("smp:Nope:resnet18", "architecture"), ("smp:Unet:resnet7", "encoder")]
)
def test_unknown_arch_or_encoder(spec: str, word: str) -> None:
    with pytest.raises(ValueError, match=rf"bad parser spec '{spec}'.*{word}"):
        smp_parser.build(spec, 3)


def test_load_restores_the_saved_weights(trained_file: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, state = trained_file
    net = smp_parser.load(SPEC, path, 7)
    assert not net.training and net.num_classes == 7
    loaded = net.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert net.input_spec == specs.InputSpec(
        bgr=False,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        output_stride=1,
        size_multiple=32,
        input_size=512,
    )


def test_load_bare_state_dict(tmp_path: Path) -> None:
    net = randomised(smp_parser.build("smp:FPN:resnet18", 4), seed=5)
    path = tmp_path / "bare.pth"
    smp_parser.save(net, path)
    loaded = smp_parser.load("smp:FPN:resnet18", path, 4, input_size=256)
    assert torch.equal(
        loaded.state_dict()["segmentation_head.0.weight"], net.state_dict()["segmentation_head.0.weight"]
    )
    assert loaded.input_spec.input_size == 256


def test_wrong_class_count_is_a_clear_error(trained_file: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, _ = trained_file
    with pytest.raises(
        ValueError, match=r"parser\.pth: wrong tensor shapes for smp:Unet:resnet18 with 20 classes"
    ):
        smp_parser.load(SPEC, path, 20)


def test_wrong_architecture_lists_keys(trained_file: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, _ = trained_file
    with pytest.raises(ValueError, match=r"parser\.pth: not a smp:FPN:resnet18 checkpoint.*missing keys"):
        smp_parser.load("smp:FPN:resnet18", path, 7)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"absent\.pth"):
        smp_parser.load(SPEC, tmp_path / "absent.pth", 7)


def test_parser_runs_an_smp_net_in_rgb(trained_file: tuple[Path, dict[str, torch.Tensor]]) -> None:
    net = smp_parser.load(SPEC, trained_file[0], 7)
    seen = []
    handle = net.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8),
        rng.integers(0, 256, (90, 30, 3), dtype=np.uint8),
    ]
    images[0][SIZE // 2, SIZE // 2] = (255, 0, 0)  # BGR blue
    try:
        parser = parsing.Parser(net, "pascal", input_size=SIZE)
        maps = parser(images)
    finally:
        handle.remove()
    assert [m.shape for m in maps] == [(SIZE, SIZE), (90, 30)]
    centre = seen[0][0, :, SIZE // 2, SIZE // 2]
    expected = torch.tensor([(0 - 0.485) / 0.229, (0 - 0.456) / 0.224, (1 - 0.406) / 0.225])  # R, G, B
    torch.testing.assert_close(centre, expected)
    # Full-resolution logits: an SxS image's map is the network's own argmax.
    with torch.inference_mode():
        direct = net(seen[0][:1]).argmax(1)[0].numpy()
    assert np.array_equal(maps[0], direct)


def test_parser_checks_size_multiple_and_class_count(
    trained_file: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    net = smp_parser.load(SPEC, trained_file[0], 7)
    with pytest.raises(ValueError, match="input_size 473 must be a multiple of 32"):
        parsing.Parser(net, "pascal", input_size=473)
    with pytest.raises(ValueError, match="7 classes but labels='lip' has 20"):
        parsing.Parser(net, "lip", input_size=SIZE)
    assert parsing.Parser(net, "pascal").input_size == 512


def test_the_registry_loads_an_smp_parser(trained_file: tuple[Path, dict[str, torch.Tensor]]) -> None:
    options = ParseOptions(backend=SPEC, weights=str(trained_file[0]), labels="pascal")  # 7 classes, as saved
    net = backends.load_checked(backends.get("parse", SPEC), options)
    assert net.num_classes == 7 and net.input_spec.bgr is False
    with pytest.raises(StageConfigError, match="--backend smp:Unet: expected smp:ARCH:ENCODER"):
        backends.get("parse", "smp:Unet")
