"""The backend registry: every parser, detector and restorer a stage can run, by name.

An entry says how to load the backend's network(s) from its options (`load`, run on the driver first to
check the files, then in each worker), how to wrap them into the stage's model (`wrap`), which
official checkpoint it takes (deskpro.weights), what input it wants, its defaults for options left
unset, and whether it needs a weights file or benefits from a GPU.

A stage's model has one contract per stage, whatever the backend:
  parse:   model(paths, images_bgr) -> per image a uint8 label map, or an error string for that image
  detect:  model(paths, images_bgr) -> per image a list of Face (original pixels), or an error string
  restore: model(faces_rgb [B,S,S,3] uint8) -> restored faces [B,R,R,3] uint8 (None: no network);
           a backend with `takes_landmarks` (the oracle) is called
           model(faces_rgb, sample_ids, landmarks [B,5,2] original pixels) -> per face a restored
           face [R,R,3] uint8, or an error string for that image

The command line never imports this module (it reads deskpro.pipeline.options): the networks here
import torch, which takes seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from deskpro import weights as official
from deskpro.pipeline import detection
from deskpro.pipeline.fa_detection import FaceAlignmentDetector, load_fan, load_s3fd
from deskpro.pipeline.faces import align_face
from deskpro.pipeline.nets import gpen, retinaface, schp, smp_parser
from deskpro.pipeline.nets.specs import SCHP_SPEC, InputSpec
from deskpro.pipeline.options import STAGE_NAMES, StageConfigError, flag
from deskpro.pipeline.parsing import Parser
from deskpro.pipeline.restoration import Restorer
from deskpro.synthetic.oracle import OracleFaceDetector, OracleParser, OracleRestorer

SMP_PATTERN = "smp:ARCH:ENCODER"


@dataclass(frozen=True)
class Backend:
    """One backend of one stage."""

    stage: str
    name: str
    load: Callable[[Any], Any]  # options -> the network(s), on the CPU (ValueError/OSError if bad)
    wrap: Callable[[Any, Any, str, str | None], Any]  # (nets, options, device, root) -> model
    weights_entry: str | None = None  # deskpro.weights name, "{labels}" filled from the options
    input_spec: InputSpec | None = None  # parsers: what the network takes (None: set by the file)
    defaults: Mapping[str, Any] = field(default_factory=dict)  # for options left None
    weights_options: tuple[str, ...] = ("weights",)  # options that name checkpoint files
    needs_gpu: bool = True  # a network: Ray gives its actors a GPU when the cluster has one
    takes_landmarks: bool = False  # restore: the model also gets each face's sample id and landmarks

    @property
    def needs_weights(self) -> bool:
        return bool(self.weights_options)

    def resolve(self, options):
        """`options` with this backend's defaults in place of the options left None."""
        unset = {k: v for k, v in self.defaults.items() if getattr(options, k) is None}
        return replace(options, **unset) if unset else options

    def official_weights(self, options) -> official.OfficialWeights | None:
        if self.weights_entry is None:
            return None
        return official.get(self.weights_entry.format(labels=getattr(options, "labels", "")))


# ---------------------------------------------------------------------------------- parse backends


def _load_schp(o):
    return schp.load(o.weights, labels=o.labels)


def _load_smp(o):
    return smp_parser.load(o.backend, o.weights, o.num_classes or len(schp.LABELS[o.labels]))


def _wrap_parser(net, o, device, root):
    if isinstance(net, schp.SCHPNet):
        # Inference only: each ABN folded into its conv (same label maps, fewer passes; benchmarks/nets.py)
        net = schp.fold_abn(net)
    parser = Parser(
        net,
        labels=o.labels,
        input_size=o.input_size,
        flip=o.flip,
        device=device,
        amp=o.amp_dtype,
        channels_last=o.channels_last,
    )
    return lambda paths, images: list(parser(images)) if images else []


def _load_oracle_parser(o):
    if o.labels != OracleParser.label_set:
        raise StageConfigError(f"--labels {o.labels}: the oracle parser gives LIP labels; use --labels lip")


def _wrap_oracle_parser(_, o, device, root):
    oracle = OracleParser(root)

    def model(paths, images):
        out = []
        for path in paths:
            try:
                out.append(oracle.one(path))
            except (OSError, KeyError, ValueError) as exc:
                out.append(f"{path}: no ground-truth parse ({exc})")
        return out

    return model


# ---------------------------------------------------------------------------------- detect backends


def _load_retinaface(o):
    return retinaface.load(o.weights, variant=o.backend.removeprefix("retinaface-"))


def _wrap_retinaface(net, o, device, root):
    detector = detection.FaceDetector(
        net,
        conf_threshold=o.conf_threshold,
        nms_threshold=o.nms_threshold,
        device=device,
        amp=o.amp_dtype,
        channels_last=o.channels_last,
    )
    return lambda paths, images: list(detector(images)) if images else []


def _load_face_alignment(o):
    return load_s3fd(o.weights), load_fan(o.landmarks_weights)


def _wrap_face_alignment(nets, o, device, root):
    detector = FaceAlignmentDetector(
        *nets, device=device, conf_threshold=o.conf_threshold, nms_threshold=o.nms_threshold
    )
    return lambda paths, images: list(detector(images)) if images else []


def _wrap_oracle_detector(_, o, device, root):
    oracle = OracleFaceDetector(root)

    def model(paths, images):
        out = []
        for path in paths:
            try:
                truth = oracle.one(path)
            except KeyError as exc:
                out.append(f"{path}: no ground-truth face entry ({exc.args[0]})")
                continue
            out.append(
                [detection.Face(box=box, score=score, landmarks=points) for box, score, points in truth]
            )
        return out

    return model


# --------------------------------------------------------------------------------- restore backends


def _load_gpen(o):
    return gpen.load(o.weights, size=int(o.backend.removeprefix("gpen-")))


def _wrap_gpen(net, o, device, root):
    return Restorer(net, device=device, amp=o.amp_dtype, channels_last=o.channels_last)


def _wrap_oracle_restorer(_, o, device, root):
    """The clean high-resolution render of each face, aligned as the detect stage aligns the low-res
    crop (`DetectStage._crop`): both show the face at the same place."""
    oracle = OracleRestorer(root)

    def model(faces, sample_ids, landmarks):
        out = []
        for sample_id, points in zip(sample_ids, landmarks):
            try:
                crop, mapped = oracle.one(oracle.path_of(sample_id), points)
                out.append(align_face(crop, mapped, o.face_hr_size)[0])
            except KeyError as exc:
                out.append(f"{sample_id}: no ground-truth high-resolution face ({exc.args[0]})")
            except (OSError, ValueError) as exc:
                out.append(f"{sample_id}: no ground-truth high-resolution face ({exc})")
        return out

    return model


def _nothing(o):
    return None


_RETINAFACE_DEFAULTS = {"conf_threshold": 0.5, "nms_threshold": 0.4}  # official detect.py
_FACE_ALIGNMENT_DEFAULTS = {"conf_threshold": 0.5, "nms_threshold": 0.3}  # face_alignment's own
_NO_NET = {"weights_options": (), "needs_gpu": False}

REGISTRY: tuple[Backend, ...] = (
    Backend("parse", "schp", _load_schp, _wrap_parser, "schp-{labels}", SCHP_SPEC),
    Backend("parse", SMP_PATTERN, _load_smp, _wrap_parser),
    Backend("parse", "oracle", _load_oracle_parser, _wrap_oracle_parser, **_NO_NET),
    *(
        Backend("detect", name, _load_retinaface, _wrap_retinaface, name, defaults=_RETINAFACE_DEFAULTS)
        for name in ("retinaface-resnet50", "retinaface-mobilenet0.25")
    ),
    Backend(
        "detect",
        "face-alignment",
        _load_face_alignment,
        _wrap_face_alignment,
        defaults=_FACE_ALIGNMENT_DEFAULTS,
        weights_options=("weights", "landmarks_weights"),
    ),
    Backend("detect", "oracle", _nothing, _wrap_oracle_detector, **_NO_NET),
    *(Backend("restore", name, _load_gpen, _wrap_gpen, name) for name in ("gpen-512", "gpen-256")),
    Backend("restore", "none", _nothing, lambda *_: None, **_NO_NET),
    Backend("restore", "oracle", _nothing, _wrap_oracle_restorer, takes_landmarks=True, **_NO_NET),
)

BACKEND_NAMES: dict[str, tuple[str, ...]] = {
    stage: tuple(b.name for b in REGISTRY if b.stage == stage) for stage in STAGE_NAMES
}
# Backends without a network: no weights file, no GPU.
NO_NET_BACKENDS = tuple(sorted({b.name for b in REGISTRY if not b.needs_gpu}))


def get(stage: str, name: str, flag_prefix: str = "") -> Backend:
    """The registry entry of `name` for `stage`; StageConfigError naming the flag if there is none."""
    if name.startswith("smp:") and stage == "parse":
        parts = name.split(":")
        if len(parts) == 3 and all(parts):
            return next(b for b in REGISTRY if b.name == SMP_PATTERN)
        raise StageConfigError(
            f"--{flag_prefix}backend {name}: expected {SMP_PATTERN}, e.g. smp:Unet:resnet34"
        )
    for b in REGISTRY:
        if b.stage == stage and b.name == name:
            return b
    raise StageConfigError(
        f"--{flag_prefix}backend {name}: unknown {stage} backend; "
        f"choose from {', '.join(BACKEND_NAMES[stage])}"
    )


def _weights_flag(option_name: str, flag_prefix: str) -> str:
    return flag(f"{flag_prefix}{option_name}" if option_name == "weights" else option_name)


def require_weights(backend: Backend, options, flag_prefix: str = "") -> None:
    """StageConfigError naming the flag, and where the official file comes from, for a missing file."""
    for name in backend.weights_options:
        path, spelled = getattr(options, name), _weights_flag(name, flag_prefix)
        entry = backend.official_weights(options) if name == "weights" else None
        where = f"; get {entry.file} from {entry.source}" if entry else ""
        if path is None:
            raise StageConfigError(
                f"{spelled} is required (backend {backend.name}){where}; see `deskpro weights list`"
            )
        if not Path(path).is_file():
            raise StageConfigError(
                f"{spelled} {path}: file not found (backend {backend.name}){where}; "
                "see `deskpro weights list`"
            )


def load_checked(backend: Backend, options, flag_prefix: str = "") -> Any:
    """The backend's network(s) loaded on the CPU; a bad file is a StageConfigError naming the flag.

    Loader errors start with the file's path; the flag goes in front. A file that cannot be loaded
    is a deterministic failure: it is reported before any work starts, never as "rerun to resume".
    """
    require_weights(backend, options, flag_prefix)
    try:
        return backend.load(options)
    except StageConfigError:
        raise
    except (ValueError, OSError, KeyError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        for name in backend.weights_options:
            path = str(getattr(options, name))
            if message.startswith(path):
                raise StageConfigError(f"{_weights_flag(name, flag_prefix)} {message}") from None
        raise StageConfigError(f"--{flag_prefix}backend {backend.name}: {message}") from None


def build_model(backend: Backend, options, device: str, root: str | None, nets: Any = None) -> Any:
    """The stage's model for `options` (already resolved): load the networks unless given, wrap them."""
    if nets is None:
        nets = load_checked(backend, options)
    return backend.wrap(nets, options, device, root)
