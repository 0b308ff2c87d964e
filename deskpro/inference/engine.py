"""The body stream and the face student on onnxruntime: `deskpro embed`'s network time on the CPU.

On the CPU nearly all of embed's time is the forward of the OSNet-sized streams (decoding, the
detector, resizing and Parquet writing are a few per cent: benchmarks/RESULTS.md). Eager PyTorch
pays per-operator overhead on OSNet's many small convolutions; onnxruntime folds BatchNorm into
them and fuses activations, the gain the detect stage already takes for RetinaFace
(deskpro.pipeline.onnx_engine). Each stream is exported once from the loaded weights (dynamic
batch, the checkpoint's input size) and kept in the same disk cache; outputs equal eager PyTorch's
up to float rounding (about 1e-7).

`engine`: "auto" (onnxruntime on a CPU device when it is installed, else PyTorch), "onnxruntime",
or "torch".
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from deskpro.common.files import atomic_path
from deskpro.pipeline.onnx_engine import OPSET, cache_dir, onnxruntime_available

ENGINES = ("auto", "onnxruntime", "torch")
_SESSIONS: dict[str, object] = {}  # export key -> session, per process (tests build many stages)
_MAX_SESSIONS = 4


class StreamOutput(nn.Module):
    """A stream's eval embedding [B,7,D] alone (the body net also returns its feature map)."""

    def __init__(self, net: nn.Module, body: bool) -> None:
        super().__init__()
        self.net, self.body = net, body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x, full=False)
        return out[0] if self.body else out


def choose_engine(engine: str, device: torch.device) -> str:
    """ "onnxruntime" or "torch" for `engine` on `device` (a ValueError names a bad value)."""
    if engine not in ENGINES:
        raise ValueError(f"--engine: expected one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "auto":
        return "onnxruntime" if device.type == "cpu" and onnxruntime_available() else "torch"
    if engine == "onnxruntime" and not onnxruntime_available():
        raise ValueError("--engine onnxruntime: onnxruntime is not installed (pip install 'deskpro[onnx]')")
    if engine == "onnxruntime" and device.type != "cpu":
        raise ValueError(f"--engine onnxruntime runs on the CPU; --device is {device}")
    return engine


def _key(net: nn.Module, size: tuple[int, int]) -> str:
    digest = hashlib.sha256(f"{torch.__version__} opset {OPSET} {size}".encode())
    for key, tensor in net.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return f"{type(net.net).__qualname__}-{digest.hexdigest()}"


def _export(net: nn.Module, size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notices
        torch.onnx.export(
            net,
            (torch.zeros(2, 3, *size),),
            buffer,
            dynamo=False,
            input_names=["input"],
            output_names=["embedding"],
            dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
        )
    return buffer.getvalue()


def _model_bytes(net: nn.Module, size: tuple[int, int], key: str) -> bytes:
    path = cache_dir() / f"{key}.onnx"
    try:
        return path.read_bytes()
    except OSError:
        pass
    model = _export(net, size)
    try:  # an unwritable cache is skipped
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_bytes(model)
    except OSError:
        pass
    return model


def onnx_stream(net: nn.Module, body: bool, size: tuple[int, int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The stream `net` (eval mode, CPU) as a function float [B,3,H,W] -> [B,7,D] on onnxruntime."""
    import onnxruntime

    wrapped = StreamOutput(net, body).eval()
    key = _key(wrapped, size)
    if key not in _SESSIONS:
        if len(_SESSIONS) >= _MAX_SESSIONS:
            _SESSIONS.pop(next(iter(_SESSIONS)))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the cores torch would use
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        _SESSIONS[key] = onnxruntime.InferenceSession(
            _model_bytes(wrapped, size, key), options, providers=["CPUExecutionProvider"]
        )
    session = _SESSIONS[key]

    def run(x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(session.run(None, {"input": array})[0])

    return run


def torch_stream(net: nn.Module, body: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """The stream `net` as the same function on eager PyTorch."""
    return StreamOutput(net, body).eval()
