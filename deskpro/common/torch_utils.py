"""Small helpers shared by the network wrappers: device, AMP autocast, channels_last, checkpoint prefixes.

Kept tiny and stable: retinaface.py and gpen.py may import from here.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

AMP_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


@functools.cache
def nms_kernel():
    """torchvision's NMS operator, the one `torchvision.ops.nms` calls, without importing torchvision.

    Importing torchvision's Python package imports its models and torch._dynamo: seconds (4 s on
    the loaded 2-core VM) at the start of every Ray actor of the detect stage, which needs one
    kernel. Its C++ library is loaded directly; where it is not found, the package is imported.
    """
    spec = importlib.util.find_spec("torchvision")
    for location in (spec.submodule_search_locations or []) if spec else []:
        for library in sorted(Path(location).glob("_C*")):
            if library.suffix in (".so", ".pyd", ".dylib"):
                try:
                    torch.ops.load_library(str(library))
                    return torch.ops.torchvision.nms
                except (OSError, RuntimeError, AttributeError):
                    break
    import torchvision

    return torchvision.ops.nms


def check_amp(amp: str | None) -> str | None:
    """Return `amp` if it is None, "bf16" or "fp16"; raise ValueError otherwise."""
    if amp is not None and amp not in AMP_DTYPES:
        raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
    return amp


def resolve_device(device: str, check_available: bool = True) -> str:
    """'auto' -> 'cuda' when a GPU is visible to this process, else 'cpu'; other names checked.

    ValueError, one line naming --device, for a name torch does not know ("bogus") or, when
    `check_available`, a device this process cannot use ("cuda" without a GPU, "cuda:3" of two).
    """
    name = str(device)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name}: not a device; use auto, cpu, cuda or cuda:N") from None
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name}: deskpro runs on cpu, cuda or mps devices; use auto, cpu or cuda")
    if not check_available or parsed.type == "cpu":
        return name
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available here; use --device auto or cpu")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {name}: no CUDA GPU is visible to this process; use --device auto or cpu"
            )
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(
                f"--device {name}: this process sees {count} CUDA GPU(s), cuda:0..cuda:{count - 1}"
            )
    return name


def autocast_context(device: torch.device | str, amp: str | None) -> contextlib.AbstractContextManager:
    """Autocast for `amp` on `device`, or a no-op context when amp is None.

    fp16 autocast is CUDA-only (CPU fp16 matmuls are slow or missing); bf16 works on both.
    """
    check_amp(amp)
    if amp is None:
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    if amp == "fp16" and device_type != "cuda":
        raise ValueError(f"amp='fp16' needs a CUDA device, got {device!s}; use amp='bf16' or None on CPU")
    return torch.autocast(device_type=device_type, dtype=AMP_DTYPES[amp])


def prepare_module(net: nn.Module, device: torch.device | str, channels_last: bool = False) -> nn.Module:
    """Move `net` to `device` in eval mode, optionally in channels_last memory format."""
    net = net.to(torch.device(device)).eval()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


def set_memory_format(net: nn.Module, fmt: torch.memory_format) -> nn.Module:
    """`net` with its 4-D parameters and buffers in `fmt`, in place; other tensors as they are (GPEN's
    modulated weights are 5-D, which `Module.to(memory_format=...)` refuses)."""
    with torch.no_grad():
        for tensor in [*net.parameters(), *net.buffers()]:
            if tensor.ndim == 4:
                tensor.data = tensor.data.contiguous(memory_format=fmt)
    return net


def to_input(x: torch.Tensor, device: torch.device | str, channels_last: bool = False) -> torch.Tensor:
    """Move an NCHW input batch to `device`, in channels_last format when asked."""
    x = x.to(torch.device(device), non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Drop `prefix` from every key that starts with it (e.g. DataParallel's 'module.')."""
    n = len(prefix)
    return {(k[n:] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def unwrap_state_dict(obj: object, path: Path | str, wrapper_keys: tuple[str, ...] = ("state_dict",)) -> dict:
    """Return the tensor mapping of a loaded checkpoint: `obj` itself or `obj[k]` for a wrapper key.

    Raises ValueError naming `path` when the object is not a mapping of tensors.
    """
    if isinstance(obj, Mapping):
        for key in wrapper_keys:
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{path}: not a checkpoint state dict (got {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{path}: not a state dict: non-tensor entries {sorted(map(str, bad))[:5]}")
    return dict(obj)


def require_weights_file(path: Path | str, what: str = "checkpoint") -> Path:
    """`path` as a Path; FileNotFoundError naming it and `deskpro weights list` when it is not a file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: {what} file not found; `deskpro weights list` says where each official checkpoint "
            "comes from"
        )
    return path


def load_failure(path: Path, exc: BaseException) -> str:
    """Why torch.load refused a file, in deskpro's words (torch's own text advises weights_only=False,
    which would run whatever code the file holds: never echoed)."""
    text = str(exc).lower()
    with open(path, "rb") as f:
        head = f.read(2)
    if not head:
        return "empty file"
    if not zipfile.is_zipfile(path) and head[:1] != b"\x80":  # neither torch's zip nor a pickle
        if "zip archive" in text or "central directory" in text:
            return "truncated or corrupt file (not a complete torch checkpoint)"
        return "not a torch checkpoint (neither a torch zip archive nor a tensor pickle)"
    if isinstance(exc, pickle.UnpicklingError) and "weights only load failed" in text:
        return "holds Python objects besides tensors; deskpro loads checkpoints as weights only (no code)"
    if isinstance(exc, EOFError) or "zip archive" in text or "central directory" in text:
        return "truncated or corrupt file (not a complete torch checkpoint)"
    return f"not a loadable torch checkpoint ({type(exc).__name__})"


def torch_load_weights(path: Path | str, what: str = "checkpoint") -> object:
    """torch.load(path, map_location='cpu', weights_only=True), with one-line errors naming the file."""
    path = require_weights_file(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # re-raised with the file name: torch raises many types
        raise ValueError(f"{path}: cannot be read as a {what}: {load_failure(path, exc)}") from None
