"""What inference must reproduce of a checkpoint's training data: sizes, normalisation, the detect stage.

A deskpro checkpoint stores its preprocessing constants (body and face sizes, mean and std) and the
shard catalog's meta, which holds the detect stage's fingerprint: detector, thresholds, face policy,
upscale, aligned crop size and the detector weights' sha256. Inference detects with those options
by default, so that features of a raw image are those of the same image packed into shards. An
official DeSKPro file stores none of it: the stage's defaults are used.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deskpro.common.files import sha256_file
from deskpro.pipeline.options import DetectOptions, StageConfigError, make_options

FLAG_OF_WEIGHTS = "--detect-weights"


@dataclass(frozen=True)
class InferenceSettings:
    """The checkpoint's input conventions and the detect options that inference applies."""

    body_size: tuple[int, int]
    face_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool
    detect: DetectOptions
    trained_detector: dict | None  # the detect options of the checkpoint's shards, when stored

    def to_dict(self) -> dict:
        return {
            "body_size": list(self.body_size),
            "face_size": self.face_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "flip": self.flip,
            "detect": {k: v for k, v in dataclasses.asdict(self.detect).items() if k != "weights"},
        }


def trained_detect_options(meta: dict) -> dict | None:
    """The detect stage's fingerprinted options from a checkpoint's shard meta, or None."""
    shards_meta = (meta.get("preprocessing") or {}).get("shards_meta") or {}
    detect = (shards_meta.get("stages") or {}).get("detect") or {}
    options = (detect.get("fingerprint") or {}).get("options")
    return dict(options) if isinstance(options, dict) else None


def checkpoint_flip(meta: dict) -> bool:
    """Flip-averaged features unless the checkpoint was trained with --recipe official (as evaluate)."""
    return ((meta.get("config") or {}).get("recipe", "deskpro")) != "official"


def resolve(
    meta: dict,
    detector: str | None = None,
    detect_weights: str | None = None,
    device: str = "auto",
    overrides: dict[str, Any] | None = None,
) -> InferenceSettings:
    """The settings for a loaded checkpoint's `meta`: its stored detect options, then the caller's.

    `detector` (a detect backend name) replaces the stored one; `overrides` are DetectOptions fields
    (face policy, thresholds, upscale, face_lr_size, ...). A detector other than the trained one is
    allowed: the features are then no longer those of the training preprocessing.
    """
    pre = meta.get("preprocessing") or {}
    trained = trained_detect_options(meta)
    values: dict[str, Any] = {}
    if trained:
        fields = {f.name for f in dataclasses.fields(DetectOptions)}
        values = {k: v for k, v in trained.items() if k in fields and not k.endswith("weights")}
    if detector is not None:
        if trained and detector != trained.get("backend"):
            # Another network's thresholds: take the new backend's defaults, keep policy and sizes.
            values.pop("conf_threshold", None)
            values.pop("nms_threshold", None)
        values["backend"] = detector
    values.update(overrides or {})
    values["weights"] = None if detect_weights is None else str(detect_weights)
    values["device"] = device
    try:
        options = make_options("detect", values)
    except TypeError as exc:
        raise StageConfigError(f"detect options: {exc}") from None
    return InferenceSettings(
        body_size=tuple(int(v) for v in pre.get("body_size", (384, 128))),
        face_size=int(pre.get("face_size", 224)),
        mean=tuple(float(v) for v in pre.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(float(v) for v in pre.get("std", (0.229, 0.224, 0.225))),
        flip=checkpoint_flip(meta),
        detect=options,
        trained_detector=trained,
    )


def detector_mismatch(settings: InferenceSettings) -> str | None:
    """A one-line warning when the detector differs from the one the checkpoint's shards used."""
    trained = settings.trained_detector
    if not trained:
        return None
    if trained.get("backend") != settings.detect.backend:
        return (
            f"detector {settings.detect.backend} differs from the checkpoint's ({trained.get('backend')}): "
            "features will not equal those of its shards"
        )
    stored = trained.get("weights")
    given = settings.detect.weights
    if isinstance(stored, dict) and "sha256" in stored and given and Path(given).is_file():
        if sha256_file(given) != stored["sha256"]:
            return (
                f"{FLAG_OF_WEIGHTS} {given}: not the detector weights the checkpoint's shards were "
                "detected with (sha256 differs): features will not equal those of its shards"
            )
    return None
