"""Run a detection network with onnxruntime: exported once from the loaded PyTorch module.

On CPU onnxruntime runs RetinaFace several times faster than eager PyTorch (benchmarks/detect.py):
the depthwise-separable MobileNet and the many small convolutions are dominated by per-operator
overhead, which onnxruntime's fused kernels (BatchNorm folded into the convolutions, activations fused)
avoid. The export uses whatever weights were loaded, so the official checkpoints and imported ones
run alike, with the same outputs up to float rounding.

An export takes seconds (torch.onnx and the `onnx` package import, then the trace), and every Ray
actor of the detect stage is a new process: exports are kept in a disk cache, one file per network
class, weights and torch release, under $DESKPRO_CACHE (default ~/.cache/deskpro)/onnx.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deskpro.common.files import atomic_path

OUTPUT_NAMES = ("loc", "conf", "landms")
OPSET = 17
CACHE_ENV = "DESKPRO_CACHE"


def onnxruntime_available() -> bool:
    """Whether onnxruntime can be imported (the `onnx` extra installs it)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def export_onnx(net: nn.Module, sample_hw: tuple[int, int] = (64, 64)) -> bytes:
    """`net` (eval mode) as a serialized ONNX model with dynamic batch, height and width.

    The TorchScript exporter folds each BatchNorm into its convolution (eval mode, constant folding).
    """
    buffer = io.BytesIO()
    sample = torch.zeros(1, 3, *sample_hw)
    dynamic = {"input": {0: "batch", 2: "height", 3: "width"}}
    dynamic.update({name: {0: "batch", 1: "priors"} for name in OUTPUT_NAMES})
    was_training = net.training
    net.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notices
            torch.onnx.export(
                net,
                (sample,),
                buffer,
                dynamo=False,
                input_names=["input"],
                output_names=list(OUTPUT_NAMES),
                dynamic_axes=dynamic,
                opset_version=OPSET,
                do_constant_folding=True,
            )
    finally:
        net.train(was_training)
    return buffer.getvalue()


_EXPORTS: dict[tuple[str, str], bytes] = {}
_MAX_EXPORTS = 4


def _fingerprint(net: nn.Module) -> tuple[str, str]:
    digest = hashlib.sha256(f"{torch.__version__} opset {OPSET}".encode())
    for key, tensor in net.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return type(net).__qualname__, digest.hexdigest()


def cache_dir() -> Path:
    """Where exports are kept: $DESKPRO_CACHE/onnx, else $XDG_CACHE_HOME (or ~/.cache)/deskpro/onnx."""
    base = (
        os.environ.get(CACHE_ENV)
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deskpro"
    )
    return Path(base) / "onnx"


def _disk_export(net: nn.Module, key: tuple[str, str]) -> bytes:
    """The export from the disk cache, or made and stored there (an unwritable cache is skipped)."""
    path = cache_dir() / f"{key[0]}-{key[1]}.onnx"
    try:
        return path.read_bytes()
    except OSError:
        pass
    model = export_onnx(net)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_bytes(model)
    except OSError:
        pass
    return model


def cached_export(net: nn.Module) -> bytes:
    """`export_onnx(net)`, reused for a module of the same class and weights: exporting takes seconds,
    and a process builds many detectors of one checkpoint (one per stage, per test), as does every
    Ray actor (a new process each: hence the disk cache)."""
    key = _fingerprint(net)
    if key not in _EXPORTS:
        if len(_EXPORTS) >= _MAX_EXPORTS:
            _EXPORTS.pop(next(iter(_EXPORTS)))
        _EXPORTS[key] = _disk_export(net, key)
    return _EXPORTS[key]


class OnnxNetwork:
    """A callable like the network: float32 [B, 3, H, W] tensor -> its output tensors, on onnxruntime (CPU).

    `threads`: onnxruntime's intra-op threads; by default torch's thread count, so both engines use the
    same cores.
    """

    def __init__(self, net: nn.Module, threads: int | None = None) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise RuntimeError(
                "the onnxruntime engine needs onnxruntime (pip install 'deskpro[onnx]')"
            ) from None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.model = cached_export(net)
        self.session = onnxruntime.InferenceSession(self.model, options, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        return tuple(torch.from_numpy(out) for out in self.session.run(None, {"input": array}))
