"""What each preprocessing stage computes: one options dataclass per stage, each default written once.

The command line (deskpro.cli.stages), the fingerprints of part files (deskpro.pipeline.plan) and the
stage constructors (deskpro.pipeline.stages) all read these classes: a field's metadata holds its
flag, help, range or choices. `check()` applies the same ranges that the command line enforces, so a
library caller gets the same one-line errors. No torch here: the CLI imports this module to
build its options.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from deskpro.common.images import DEFAULT_MAX_PIXELS

LABEL_SETS = ("lip", "atr", "pascal")  # deskpro.pipeline.nets.schp.LABELS (a test keeps them equal)
AMP_CHOICES = ("none", "bf16", "fp16")
EXECUTORS = ("auto", "ray", "local")
# auto: the in-process loop for at most this many rows when no cluster is named, else Ray. Ray's
# start-up (about 10 s on 2 cores) is earned back from about 850 images for the detector
# (benchmarks/pipeline.py, benchmarks/RESULTS.md "break-even"); the parser breaks even near 240.
AUTO_LOCAL_MAX_ROWS = 850


class StageConfigError(ValueError):
    """Stage options that cannot work (unknown backend, bad weights file, out of range); one line."""


@dataclass(frozen=True)
class Range:
    """A closed (or half-open, with `low_open`) numeric range; None means unbounded on that side."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def contains(self, value: float) -> bool:
        if isinstance(value, float) and math.isnan(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high

    def describe(self) -> str:
        low = "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        high = "" if self.high is None else f"<= {self.high:g}"
        return " and ".join(p for p in (low, high) if p)


def option(
    default: Any,
    help: str,
    *,
    type: type | None = None,
    range: Range | None = None,
    choices: tuple[str, ...] | None = None,
    alias: str | None = None,
    per_stage: bool = False,
    fingerprint: bool = True,
) -> Any:
    """A dataclass field with what the command line needs.

    `type`: the click type when the default is None; `per_stage`: preprocess spells the flag with the
    stage's prefix (--parse-weights); `alias`: a second spelling (--parser for --backend);
    `fingerprint=False`: the option changes where or how fast a stage runs, never its results.
    """
    meta = {
        "help": help,
        "type": type,
        "range": range,
        "choices": choices,
        "alias": alias,
        "per_stage": per_stage,
        "fingerprint": fingerprint,
    }
    return field(default=default, metadata=meta)


def flag(name: str) -> str:
    """The command-line flag of a field name: face_lr_size -> --face-lr-size."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class _StageOptions:
    """Options every network stage takes: where the network runs and in which precision."""

    device: str = option("auto", "auto: cuda when a GPU is visible; cpu; cuda; cuda:N.", fingerprint=False)
    amp: str = option("none", "Autocast precision of the networks.", choices=AMP_CHOICES)
    channels_last: bool = option(False, "channels_last memory format for the networks.", fingerprint=False)

    def __post_init__(self) -> None:
        check_values(type(self), {f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    @property
    def amp_dtype(self) -> str | None:
        """amp as the networks take it: None, "bf16" or "fp16"."""
        return None if self.amp == "none" else self.amp

    def fingerprinted(self) -> dict[str, Any]:
        """The options that change results, by field name (what stage.json records)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata["fingerprint"]}

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))


def _max_pixels() -> Any:
    """The image-size limit of the stages that decode images (a new field for each class)."""
    return option(
        DEFAULT_MAX_PIXELS,
        "Largest image (width x height) decoded; a larger one is an error row.",
        range=Range(1),
    )


@dataclass(frozen=True)
class ParseOptions(_StageOptions):
    """`deskpro parse`: the parser backend and how it reads images."""

    backend: str = option(
        "schp", "schp | smp:ARCH:ENCODER | oracle (synthetic ground truth).", alias="--parser", per_stage=True
    )
    weights: str | None = option(None, "Parser checkpoint path.", type=str, per_stage=True)
    labels: str = option("lip", "Label set of the parser.", choices=LABEL_SETS)
    flip: bool = option(False, "Flip test (average with the mirrored image).")
    input_size: int | None = option(
        None, "Square input side [default: the backend's].", type=int, range=Range(1, 4096)
    )
    num_classes: int | None = option(
        None, "smp parsers: output classes [default: the label set's].", type=int, range=Range(1, 255)
    )
    max_pixels: int = _max_pixels()


@dataclass(frozen=True)
class DetectOptions(_StageOptions):
    """`deskpro detect`: the detector backend, the face policy, the upscale and the crop size."""

    backend: str = option(
        "retinaface-resnet50",
        "retinaface-resnet50 | retinaface-mobilenet0.25 | face-alignment | oracle.",
        alias="--detector",
        per_stage=True,
    )
    weights: str | None = option(
        None, "Detector checkpoint (face-alignment: the S3FD file).", type=str, per_stage=True
    )
    landmarks_weights: str | None = option(None, "face-alignment: FAN checkpoint.", type=str)
    conf_threshold: float | None = option(
        None, "Lowest detection score kept [default: the backend's].", type=float, range=Range(0, 1)
    )
    nms_threshold: float | None = option(
        None, "NMS IoU threshold [default: the backend's].", type=float, range=Range(0, 1)
    )
    min_score: float = option(0.8, "FacePolicy: lowest score.", range=Range(0, 1))
    min_size: float = option(8.0, "FacePolicy: least side, px.", range=Range(0))
    max_center_y: float = option(
        0.5, "FacePolicy: lowest face centre, as a fraction of the image height.", range=Range(0, 1)
    )
    upscale: float = option(
        1.0, "Enlarge images (bicubic) before detection, any backend.", range=Range(0, 16, low_open=True)
    )
    face_lr_size: int = option(128, "Aligned low-res crop size, px.", range=Range(8, 1024))
    max_pixels: int = _max_pixels()


@dataclass(frozen=True)
class RestoreOptions(_StageOptions):
    """`deskpro restore`: the restorer backend and the stored faces."""

    backend: str = option(
        "gpen-512",
        "gpen-512 | gpen-256 | none (bicubic upsampling) | oracle (synthetic datasets only: the "
        "generator's clean high-resolution render).",
        alias="--restorer",
        per_stage=True,
    )
    weights: str | None = option(None, "GPEN checkpoint path.", type=str, per_stage=True)
    face_hr_size: int = option(256, "Restored face size, px.", range=Range(8, 2048))
    face_quality: int = option(95, "JPEG quality of the restored faces.", range=Range(1, 100))


OPTIONS: dict[str, type[_StageOptions]] = {
    "parse": ParseOptions,
    "detect": DetectOptions,
    "restore": RestoreOptions,
}
STAGE_NAMES = tuple(OPTIONS)
SHARED_FIELDS = _StageOptions.field_names()  # device, amp, channels_last: one flag for all stages


def check_values(cls: type, values: dict[str, Any], flag_prefix: str = "") -> None:
    """Raise StageConfigError, naming the flag, for an unknown option or a value outside its range
    or choices. `flag_prefix` spells the per-stage flags as preprocess does ("parse-")."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise StageConfigError(f"unknown options {', '.join(unknown)}; known: {', '.join(fields)}")
    for name, value in values.items():
        meta = fields[name].metadata
        spelled = flag(f"{flag_prefix}{name}" if meta["per_stage"] else name)
        if meta["choices"] and value not in meta["choices"]:
            raise StageConfigError(f"{spelled} {value}: choose from {', '.join(meta['choices'])}")
        bounds = meta["range"]
        if bounds is not None and value is not None and not bounds.contains(value):
            raise StageConfigError(f"{spelled} {value}: must be {bounds.describe()}")


def make_options(stage: str, values: dict[str, Any], flag_prefix: str = "") -> _StageOptions:
    """The stage's options from keyword values (unset ones take their defaults), checked."""
    cls = OPTIONS[stage]
    values = {k: ("none" if k == "amp" and v is None else v) for k, v in values.items()}
    check_values(cls, values, flag_prefix)
    return cls(**values)


@dataclass(frozen=True)
class StageRunOptions:
    """How to run a stage (not what it computes): executor, partitioning, resources, policy."""

    part_size: int = 1000  # manifest rows per part file
    batch_size: int = 16  # rows per model call
    # "auto" (local for small work without a cluster, else ray), "ray", or "local" (in-process loop)
    executor: str = "auto"
    # None: join RAY_ADDRESS when set (a `ray job submit` entrypoint), else start a private local Ray;
    # "auto" or "HOST:PORT" (the head's GCS port): join that cluster. ray:// (Ray Client) is refused.
    ray_address: str | None = None
    num_actors: int | None = None  # model replicas (actors); None: the cluster's GPUs, or its free CPUs
    num_gpus: float | None = None  # GPUs per actor (fractional allowed); None: 1 if the cluster has GPUs
    num_cpus: float = 1.0  # CPUs per actor
    overwrite: bool = False  # recompute everything when the fingerprint changed
    max_errors: int | None = None  # more error rows than this fails the run (after writing)
    progress: bool = True
    verbose: bool = False  # show Ray's own logs, warnings and progress bars (default: deskpro's lines only)

    def check(self) -> None:
        if self.part_size < 1 or self.batch_size < 1 or (self.num_actors is not None and self.num_actors < 1):
            raise StageConfigError("--part-size, --batch-size and --actors must be >= 1")
        if self.num_cpus <= 0 or (self.num_gpus is not None and self.num_gpus < 0):
            raise StageConfigError("--num-cpus must be > 0 and --num-gpus >= 0")
        if self.max_errors is not None and self.max_errors < 0:
            raise StageConfigError(f"--max-errors {self.max_errors}: must be >= 0")
        if self.executor not in EXECUTORS:
            raise StageConfigError(f"--executor {self.executor}: choose from {', '.join(EXECUTORS)}")
