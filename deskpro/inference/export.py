"""`deskpro export`: the inference model as ONNX or TorchScript, checked against the eager model.

The exported graph is what retrieval needs and nothing else: the body stream and the face student
(no parser, no teacher, no classifiers). Inputs: `body` uint8 [B,H,W,3] RGB at the checkpoint's
body size, `face` uint8 [B,F,F,3] RGB (the aligned face crop at its face size; anything where
`has_face` is false), `has_face` bool [B]. Output: `embedding` float32 [B, 2*7*D]: the 7 face chunks
then the 7 body chunks, each L2-normalised and summed over the image and its mirror image first
(as `retrieval_features`), the face chunks zero where has_face is false. The batch is dynamic.
The distance of the evaluation: see docs/inference.md (body chunks only where either side has no face).
"""

from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from deskpro.common.files import atomic_path, check_output_path, sha256_file
from deskpro.inference.extractor import load_model
from deskpro.inference.settings import InferenceSettings, resolve
from deskpro.model.deskpro import DeSKPro

FORMATS = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript"}
INPUT_NAMES = ("body", "face", "has_face")
OUTPUT_NAME = "embedding"
OPSET = 17
METADATA_FILE = "deskpro.json"  # TorchScript: an extra file in the archive; ONNX: metadata_props


class RetrievalModel(nn.Module):
    """uint8 body and face crops and has_face -> the retrieval embedding (see the module docstring)."""

    def __init__(self, model: DeSKPro, settings: InferenceSettings) -> None:
        super().__init__()
        self.body_net = model.nocloth_net
        self.face_net = model.lr_face_net
        self.flip = bool(settings.flip)
        scale = torch.tensor([1.0 / (255.0 * s) for s in settings.std]).view(1, 3, 1, 1)
        shift = torch.tensor([-m / s for m, s in zip(settings.mean, settings.std)]).view(1, 3, 1, 1)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift, persistent=False)

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, images.permute(0, 3, 1, 2).float(), self.scale)

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body_net(x, full=False)[0]
        return out + self.body_net(x.flip(3), full=False)[0] if self.flip else out

    def _face(self, x: torch.Tensor) -> torch.Tensor:
        out = self.face_net(x, full=False)
        return out + self.face_net(x.flip(3), full=False) if self.flip else out

    def forward(self, body: torch.Tensor, face: torch.Tensor, has_face: torch.Tensor) -> torch.Tensor:
        body_emb = F.normalize(self._body(self._inputs(body)), dim=2)
        face_emb = F.normalize(self._face(self._inputs(face)), dim=2)
        face_emb = face_emb * has_face.to(face_emb.dtype).view(-1, 1, 1)
        return torch.cat([face_emb.flatten(1), body_emb.flatten(1)], dim=1)


@dataclass(frozen=True)
class ExportSummary:
    """What `export_model` wrote and how far the exported model is from the eager one."""

    path: Path
    format: str
    body_size: tuple[int, int]
    face_size: int
    embedding_size: int
    max_abs_diff: float | None  # None: not checked

    def format_line(self) -> str:
        checked = (
            "not checked" if self.max_abs_diff is None else f"max |exported - eager| {self.max_abs_diff:.2e}"
        )
        h, w = self.body_size
        return (
            f"{self.path}: {self.format}, body uint8 [B,{h},{w},3], face uint8 [B,{self.face_size},"
            f"{self.face_size},3], has_face bool [B] -> embedding [B,{self.embedding_size}]; {checked}"
        )


def export_format(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(
            f"-o {path}: unknown format {suffix or '(no suffix)'}; use .onnx, or .pt for TorchScript"
        )
    return FORMATS[suffix]


def sample_inputs(settings: InferenceSettings, batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Seeded uint8 crops and a has_face pattern with both values (for tracing and checking)."""
    rng = np.random.default_rng(seed)
    h, w = settings.body_size
    fs = settings.face_size
    body = torch.from_numpy(rng.integers(0, 256, (batch, h, w, 3), dtype=np.uint8))
    face = torch.from_numpy(rng.integers(0, 256, (batch, fs, fs, 3), dtype=np.uint8))
    has_face = torch.from_numpy(np.arange(batch) % 3 != 1)
    return body, face, has_face


def _onnx_bytes(module: RetrievalModel, example: tuple, metadata: dict) -> bytes:
    import onnx

    buffer = io.BytesIO()
    dynamic = {name: {0: "batch"} for name in (*INPUT_NAMES, OUTPUT_NAME)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notices
        torch.onnx.export(
            module,
            example,
            buffer,
            dynamo=False,
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic,
            opset_version=OPSET,
            do_constant_folding=True,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_FILE, json.dumps(metadata)
    return proto.SerializeToString()


def _torchscript(module: RetrievalModel, example: tuple, path: Path, metadata: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice
        traced = torch.jit.trace(module, example, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={METADATA_FILE: json.dumps(metadata)})


def run_exported(path: str | os.PathLike, body, face, has_face) -> np.ndarray:
    """The embedding from an exported file (onnxruntime for ONNX, torch.jit for TorchScript)."""
    if export_format(path) == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = {"body": np.asarray(body), "face": np.asarray(face), "has_face": np.asarray(has_face, bool)}
        return session.run([OUTPUT_NAME], feeds)[0]
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        return loaded(torch.as_tensor(body), torch.as_tensor(face), torch.as_tensor(has_face)).numpy()


def is_export(path: Path) -> bool:
    """Whether `path` is a model `deskpro export` wrote (so that a rerun may replace it)."""
    try:
        if export_format(path) == "onnx":
            import onnx

            return any(
                p.key == METADATA_FILE for p in onnx.load(str(path), load_external_data=False).metadata_props
            )
        files = {METADATA_FILE: ""}
        torch.jit.load(str(path), _extra_files=files)
        return bool(files[METADATA_FILE])
    except Exception:  # any file that is not one of ours: unreadable, another format
        return False


def export_model(
    checkpoint_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    check: bool = True,
    trust: bool = False,
    force: bool = False,
) -> ExportSummary:
    """Export a checkpoint's inference model to `out` (.onnx or .pt) and check it on a batch other than
    the traced one (the batch is dynamic) against the eager model."""
    fmt = export_format(out)
    out = check_output_path(out, inputs=[checkpoint_path], is_ours=is_export, force=force, flag="-o")
    model, meta = load_model(checkpoint_path, trust)
    settings = resolve(meta, detector=None, device="cpu")
    module = RetrievalModel(model.cpu(), settings).eval()
    metadata = {
        "checkpoint_sha256": sha256_file(checkpoint_path),
        "inputs": list(INPUT_NAMES),
        "output": OUTPUT_NAME,
        "layout": "face chunks then body chunks, 7 each, L2-normalised; face zeros where has_face is false",
        **settings.to_dict(),
    }
    example = sample_inputs(settings, 2)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        if fmt == "onnx":
            tmp.write_bytes(_onnx_bytes(module, example, metadata))
        else:
            _torchscript(module, example, tmp, metadata)
    diff = None
    if check:
        inputs = sample_inputs(settings, 5, seed=1)
        with torch.no_grad():
            eager = module(*inputs).numpy()
        diff = float(np.abs(run_exported(out, *(t.numpy() for t in inputs)) - eager).max())
    width = module(*sample_inputs(settings, 1)).shape[1] if not check else eager.shape[1]
    return ExportSummary(out, fmt, settings.body_size, settings.face_size, int(width), diff)
