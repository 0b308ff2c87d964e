"""Save and load model checkpoints: ours (state dict + plain metadata) and the official DeSKPro files.

Every file is read with ``torch.load(weights_only=True)`` unless the caller passes ``trust=True``:
checkpoints are untrusted downloads, so ours hold only tensors and plain Python data (the resolved
config as a dict, class count, preprocessing constants, format version).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from deskpro.common.files import atomic_path
from deskpro.common.state_dicts import brief_keys, load_checked
from deskpro.config import IMAGENET_MEAN, IMAGENET_STD
from deskpro.model.deskpro import DeSKPro
from deskpro.model.lmbn import LightMBN
from deskpro.model.osnet import BACKBONES, DEFAULT_BACKBONE, CheckpointError, read_checkpoint

FORMAT = "deskpro-checkpoint"
FORMAT_VERSION = 1
KINDS = ("deskpro", "lightmbn")
PREPROCESSING_KEYS = ("mean", "std", "body_size", "face_size")
STREAMS = ("face_net", "lr_face_net", "nocloth_net")
WRAPPER_PREFIXES = ("module.", "model.")  # DataParallel / Lightning wrappers
# The official module registers each branch twice; a file may hold either name.
BRANCH_ALIASES = (
    ("branches.0.", "global_branch."),
    ("branches.1.", "part_branch."),
    ("branches.2.", "channel_branch."),
)
CLASSIFIER_KEY = "branches.0.reduction_1.classifier.weight"

__all__ = [
    "CheckpointError",
    "FORMAT_VERSION",
    "load",
    "load_teacher",
    "load_with_meta",
    "read_teacher",
    "TeacherFile",
    "preprocessing_constants",
    "save",
]


def preprocessing_constants(
    body_size: tuple[int, int] = (384, 128),
    face_size: int = 224,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> dict:
    """The input conventions a checkpoint was trained with (RGB, /255, then (x - mean) / std)."""
    return {"mean": list(mean), "std": list(std), "body_size": list(body_size), "face_size": int(face_size)}


def _check_plain(obj, where: str) -> None:
    """Raise TypeError unless ``obj`` is plain data that ``torch.load(weights_only=True)`` accepts."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} is not a str/int")
            _check_plain(v, f"{where}.{k}")
        return
    raise TypeError(f"{where}: {type(obj).__name__} is not plain data (use dicts, lists, numbers, str)")


def save(
    path: str | Path,
    model: nn.Module,
    *,
    config: dict,
    num_classes: int,
    preprocessing: dict,
    class_pids: list[int] | None = None,
    extra: dict | None = None,
) -> Path:
    """Write a DeSKPro or LightMBN (teacher) checkpoint that loads with ``weights_only=True``.

    ``class_pids[c]`` is the dataset pid of classifier class c (stored as "class_pids"; required:
    a teacher's classes must line up with the student's). The file is written under a temporary
    name and renamed when complete. Returns the path.
    """
    path = Path(path)
    if isinstance(model, DeSKPro):
        kind, arch = "deskpro", {"csa_form": model.csa_form, "feat_dim": model.feat_dim}
    elif isinstance(model, LightMBN):
        kind, arch = "lightmbn", {"feat_dim": model.feat_dim}
    else:
        raise TypeError(f"save: expected DeSKPro or LightMBN, got {type(model).__name__}")
    arch["repeat_conv2a"] = bool(model.repeat_conv2a)
    arch["backbone"] = model.backbone_name
    if class_pids is None or len(class_pids) != int(num_classes):
        got = "none" if class_pids is None else len(class_pids)
        raise ValueError(
            f"save {path}: class_pids must list the pid of each of the {num_classes} classes (got {got})"
        )
    missing = [k for k in PREPROCESSING_KEYS if k not in preprocessing]
    if missing:
        raise ValueError(f"save {path}: preprocessing lacks {', '.join(missing)}")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "arch": arch,
        "num_classes": int(num_classes),
        "class_pids": [int(p) for p in class_pids],
        "config": config,
        "preprocessing": preprocessing,
        "extra": extra or {},
    }
    _check_plain(payload, f"checkpoint {path}: metadata")
    payload["state_dict"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def _unwrap_state(obj, path: Path) -> dict[str, torch.Tensor]:
    """The flat tensor dict of a foreign checkpoint, without DataParallel/Lightning prefixes."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: not a model checkpoint (no state dict found)")
    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        state[key] = value
    if not state:
        raise CheckpointError(f"{path}: not a model checkpoint (no tensors)")
    return state


def _complete_aliases(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add the missing twin of each branch key (``branches.N.*`` <-> ``*_branch.*``)."""
    out = dict(state)
    for key, value in state.items():
        for a, b in BRANCH_ALIASES:
            for src, dst in ((a, b), (b, a)):
                if key.startswith(src) or f".{src}" in key:
                    twin = key.replace(src, dst, 1)
                    out.setdefault(twin, value)
    return out


def _sub(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _num_classes(state: dict[str, torch.Tensor], path: Path, prefix: str = "") -> int:
    """The classifier width; ``state`` has been through `_complete_aliases`, so one key name suffices."""
    key = prefix + CLASSIFIER_KEY
    if key not in state:
        raise CheckpointError(f"{path}: cannot infer the class count (no {key})")
    return int(state[key].shape[0])


def _load_strict(
    module: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str, prefix: str = ""
) -> None:
    load_checked(
        module,
        state,
        source=path,
        keys_what=f"does not match the {what} layout",
        shapes_what=f"wrong tensor shapes for the {what}",
        error=CheckpointError,
        prefix=prefix,
    )


def _from_ours(obj: dict, path: Path) -> tuple[nn.Module, dict]:
    version = obj.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: unsupported format_version {version!r} (this deskpro reads <= {FORMAT_VERSION})"
        )
    kind, arch, state = obj.get("kind"), obj.get("arch") or {}, obj.get("state_dict")
    num_classes = obj.get("num_classes")
    if kind not in KINDS or not isinstance(state, Mapping) or not isinstance(num_classes, int):
        raise CheckpointError(
            f"{path}: corrupt deskpro checkpoint (kind {kind!r}, num_classes {num_classes!r}, "
            f"state_dict {'present' if isinstance(state, Mapping) else 'missing'})"
        )
    backbone = arch.get("backbone", DEFAULT_BACKBONE)
    if backbone not in BACKBONES:
        raise CheckpointError(f"{path}: unknown backbone {backbone!r} (known: {', '.join(BACKBONES)})")
    if kind == "deskpro":
        model: nn.Module = DeSKPro(
            num_classes,
            csa_form=arch.get("csa_form", "official"),
            feat_dim=arch.get("feat_dim", 512),
            repeat_conv2a=arch.get("repeat_conv2a", True),
            backbone=backbone,
        )
    else:
        model = LightMBN(
            num_classes,
            feat_dim=arch.get("feat_dim", 512),
            repeat_conv2a=arch.get("repeat_conv2a", True),
            backbone=backbone,
        )
    _load_strict(model, _complete_aliases(state), path, kind)
    meta = {
        k: obj.get(k)
        for k in ("kind", "num_classes", "class_pids", "config", "preprocessing", "extra", "format_version")
    }
    return model, meta


def _from_official(obj, path: Path) -> tuple[nn.Module, dict]:
    state = _complete_aliases(_unwrap_state(obj, path))
    present = [s for s in STREAMS if any(k.startswith(s + ".") for k in state)]
    if "nocloth_net" not in present or "lr_face_net" not in present:
        if present == ["face_net"]:
            raise CheckpointError(
                f"{path}: a teacher-only file (face_net.* only): load it with load_teacher()"
            )
        raise CheckpointError(
            f"{path}: not a DeSKPro checkpoint (needs lr_face_net.* and nocloth_net.* keys; "
            f"found e.g. {brief_keys(sorted(state), 3)})"
        )
    csa_form = "paper" if "nocloth_net.spatial_attn.conv.weight" in state else "official"
    model = DeSKPro(_num_classes(state, path, "nocloth_net."), csa_form=csa_form)
    streams = ["lr_face_net", "nocloth_net"] + (["face_net"] if "face_net" in present else [])
    for stream in streams:  # an inference-only file may omit the teacher
        _load_strict(
            getattr(model, stream), _sub(state, stream + "."), path, "official DeSKPro", stream + "."
        )
    meta = {
        "kind": "deskpro",
        "num_classes": model.num_classes,
        "class_pids": None,  # official files number classes by sorted pid strings (the training set's)
        "config": None,
        "preprocessing": preprocessing_constants(),
        "extra": {"official": True, "teacher_loaded": "face_net" in present},
        "format_version": None,
    }
    return model, meta


def load_with_meta(path: str | Path, *, trust: bool = False) -> tuple[nn.Module, dict]:
    """(model in eval mode, metadata dict) from our checkpoint or an official DeSKPro file."""
    path = Path(path)
    obj = read_checkpoint(path, trust=trust)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        model, meta = _from_ours(dict(obj), path)
    else:
        model, meta = _from_official(obj, path)
    return model.eval(), meta


def load(path: str | Path, *, trust: bool = False) -> nn.Module:
    """A DeSKPro model (or our LightMBN teacher) in eval mode; metadata in ``model.checkpoint_meta``."""
    model, meta = load_with_meta(path, trust=trust)
    model.checkpoint_meta = meta
    return model


def check_shard_sizes(meta: Mapping, shard_options: Mapping, checkpoint_path, shards_dir) -> None:
    """Refuse (CheckpointError, one line) shards packed at other image sizes than the checkpoint was
    trained on: the network would run, on images it never saw at that scale, and say nothing.
    `meta`: `load_with_meta`'s; `shard_options`: the shard set's catalog options. Official files
    record no sizes and are not checked."""
    if (meta.get("extra") or {}).get("official"):
        return
    trained = meta.get("preprocessing") or {}
    want = (list(trained.get("body_size") or []), trained.get("face_size"))
    have = (list(shard_options.get("body_size") or []), shard_options.get("face_size"))
    if None in want or not want[0] or want == have:
        return
    (wh, ww), (hh, hw) = want[0], have[0]
    raise CheckpointError(
        f"{checkpoint_path}: trained on {wh}x{ww} bodies and {want[1]} px faces, but {shards_dir} is "
        f"packed at {hh}x{hw} and {have[1]} px; use shards packed at its sizes "
        f"(deskpro pack --body-size {wh}x{ww} --face-size {want[1]})"
    )


@dataclass(frozen=True)
class TeacherFile:
    """A teacher checkpoint, read: its face LightMBN state and what its classes are.

    ``class_pids`` is the stored class -> pid table of our checkpoints; None for official files,
    whose classes are the training set's pids sorted as strings (and for deskpro 0.1 files, which
    numbered the sorted int pids: ``class_order`` says which).
    """

    path: Path
    source: str  # "ours" or "official"
    state: dict
    num_classes: int
    class_pids: list[int] | None
    class_order: str  # how to derive the table when class_pids is None: "official" or "numeric"


def _refuse_non_teacher(obj: Mapping, path: Path) -> None:
    """Our checkpoints whose face_net was never trained (a baseline run) are not teachers."""
    phase = (obj.get("config") or {}).get("phase")
    if phase == "baseline":
        raise CheckpointError(
            f"{path}: a baseline checkpoint (global stream only; its face streams are untrained) is not a "
            "teacher: give a `deskpro train-teacher` checkpoint or an official {dataset}_teacher.pth"
        )
    if phase == "student":
        raise CheckpointError(
            f"{path}: a student checkpoint (trained on the low-res faces) is not a teacher: give a "
            "`deskpro train-teacher` checkpoint or an official {dataset}_teacher.pth"
        )
    if obj.get("kind") == "deskpro" and phase not in (None, "deskpro"):
        raise CheckpointError(f"{path}: a DeSKPro checkpoint of phase {phase!r} is not a teacher")


def _teacher_state(obj, path: Path) -> tuple[dict[str, torch.Tensor], str]:
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        _refuse_non_teacher(obj, path)
        state = dict(obj.get("state_dict") or {})
        return (_sub(state, "face_net.") if obj.get("kind") == "deskpro" else state), "ours"
    state = _unwrap_state(obj, path)
    if any(k.startswith("face_net.") for k in state):
        return _sub(state, "face_net."), "official"  # the official {dataset}_teacher.pth layout
    if any(k.startswith(("lr_face_net.", "nocloth_net.")) for k in state):
        raise CheckpointError(f"{path}: an official DeSKPro file without the teacher (no face_net.* keys)")
    if any(k.startswith(("backbone.", "branches.", "global_branch.")) for k in state):
        return state, "official"  # a bare LightMBN state dict
    raise CheckpointError(f"{path}: not a teacher checkpoint (no face_net.* or LightMBN keys)")


def read_teacher(path: str | Path, *, trust: bool = False) -> TeacherFile:
    """Read a teacher file (see `load_teacher`) once: its state and its class table."""
    path = Path(path)
    obj = read_checkpoint(path, trust=trust)
    state, source = _teacher_state(obj, path)
    state = _complete_aliases(state)
    pids = obj.get("class_pids") if source == "ours" else None
    num_classes = _num_classes(state, path)
    if pids is not None and len(pids) != num_classes:
        raise CheckpointError(f"{path}: class_pids lists {len(pids)} pids for {num_classes} classes")
    order = "official" if source == "official" else "numeric"
    return TeacherFile(path, source, state, num_classes, None if pids is None else list(pids), order)


def load_teacher(
    model: DeSKPro | LightMBN, teacher: str | Path | TeacherFile, *, trust: bool = False
) -> None:
    """Initialise the face teacher (``model.face_net``, or a bare LightMBN) from a teacher file.

    Accepts the official ``{dataset}_teacher.pth`` (``face_net.*``, optional ``module.``/``model.``
    prefixes), a bare LightMBN state dict, or our teacher-phase LightMBN / DeSKPro checkpoints
    (a baseline checkpoint is refused: its face streams are untrained). The caller checks the
    class table (`TeacherFile.class_pids`) against the training set.
    """
    info = teacher if isinstance(teacher, TeacherFile) else read_teacher(teacher, trust=trust)
    target = model.face_net if isinstance(model, DeSKPro) else model
    if info.num_classes != target.num_classes:
        raise CheckpointError(
            f"{info.path}: teacher has {info.num_classes} classes, the model {target.num_classes}"
        )
    _load_strict(target, info.state, info.path, "LightMBN teacher")
