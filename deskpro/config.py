"""Frozen settings: the method's hyper-parameters per dataset preset, and training options.

Library code takes these as explicit arguments; nothing here reads the command line or the
environment. The defaults are the paper's and the official release's (see DESIGN.md).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

# ImageNet normalisation of every network input (RGB, /255, then (x - mean) / std).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# What `--recipe` chooses where deskpro deliberately differs from the official code (docs/differences.md).
RECIPES = ("deskpro", "official")
TEACHER_MODES = ("train", "eval")
# How the L_att target is built (deskpro.model.losses.attention_target): "official" (OpenCV bilinear
# resize of the binary mask, then eps on the cells exactly 0) or "paper" (Eq. 3's eps, then area).
ATT_TARGETS = ("official", "paper")  # the teacher's BatchNorm / drop block during distillation
OFFICIAL_WORKERS = 4  # the official DataLoader's workers: one augmentation configuration each
# Where a batch's JPEG images are decoded: the loader worker (CPU), the training device
# (`deskpro.shards.device_decode`, nvjpeg on CUDA), or auto (device on CUDA with JPEG shards).
DECODE_ON = ("auto", "worker", "device")

# Cloth labels per parser label set: the regions that the CSA mask marks as cloth-relevant.
CLOTH_LABELS: dict[str, tuple[int, ...]] = {
    # LIP: upper-clothes, dress, coat, pants, jumpsuits, skirt
    "lip": (5, 6, 7, 9, 10, 12),
    # ATR: upper-clothes, skirt, pants, dress
    "atr": (4, 5, 6, 7),
    # Pascal-Person-Part has no garment labels; torso and upper legs are the closest regions.
    "pascal": (2, 5),
}


@dataclass(frozen=True)
class MethodSettings:
    """Loss weights of Eq. 7: L = lam*L_att + L_trip + (alpha*L_fkp + (1-alpha)*L_ce^s) + L_ce^g."""

    eps: float = 0.1  # mask value on cloth pixels
    lam: float = 7.0  # weight of the attention loss
    tau: float = 5.0  # distillation temperature
    alpha: float = 0.7  # weight of the distillation term against the student's CE


@dataclass(frozen=True)
class DatasetPreset:
    """What differs between datasets: evaluation protocols and the method's settings."""

    name: str
    protocols: tuple[str, ...]
    method: MethodSettings = MethodSettings()
    label_set: str = "lip"


PRESETS: dict[str, DatasetPreset] = {
    "celeb-reid": DatasetPreset("celeb-reid", protocols=("standard",)),
    "celeb-reid-light": DatasetPreset("celeb-reid-light", protocols=("standard",)),
    "prcc": DatasetPreset("prcc", protocols=("cc", "sc"), method=MethodSettings(tau=1.0, alpha=0.8)),
    "market1501": DatasetPreset("market1501", protocols=("standard",)),
    # The synthetic set is written in the PRCC layout and evaluated like PRCC.
    "synthetic": DatasetPreset(
        "synthetic", protocols=("cc", "sc"), method=MethodSettings(tau=1.0, alpha=0.8)
    ),
}


def preset(name: str) -> DatasetPreset:
    """The preset for a dataset name, with an error listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; stored resolved in every checkpoint."""

    dataset: str = "celeb-reid"
    # "teacher", "deskpro", "baseline" (global stream only, no CSA loss, no faces) or "student" (the
    # face student alone, no distillation)
    phase: str = "deskpro"
    body_size: tuple[int, int] = (384, 128)
    face_size: int = 224
    p: int = 5  # identities per batch
    k: int = 6  # images per identity
    base_lr: float = 6e-4  # scaled by sqrt(p*k/20)
    weight_decay: float = 5e-4
    epochs: int = 140
    warmup_epochs: int = 10
    min_lr_factor: float = 1e-3
    flip_p: float = 0.5
    translate_p: float = 0.5
    translate_scale: float = 1.05  # Random2DTranslation enlargement
    erase_p: float = 0.5
    label_smoothing: float = 0.1
    triplet_margin: float = 0.7
    method: MethodSettings = MethodSettings()
    label_set: str = "lip"
    csa_form: str = "official"  # "official" (two 1x1 convs) or "paper" (one point-wise conv)
    att_target: str = "official"  # ATT_TARGETS: how the L_att target is built
    backbone: str = "osnet_x1_0"  # OSNet variant of every stream (deskpro.model.osnet.BACKBONES)
    amp: str = "none"  # "none", "bf16", "fp16"
    channels_last: bool = False
    compile: bool = False
    num_workers: int = 2
    decode_on: str = "auto"  # DECODE_ON: how, not what (resume may change it, as num_workers)
    seed: int = 0
    # "deskpro": keep faceless bodies, P x K sampler, per-sample augmentation draws, flip-averaged
    # test features, numeric class order. "official": the official code's behaviour on each point.
    recipe: str = "deskpro"
    teacher_mode: str = "train"  # "train": the official (batch statistics, drop block); "eval": frozen

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ValueError(
                f"--recipe: unknown recipe {self.recipe!r}; expected one of {', '.join(RECIPES)}"
            )
        if self.decode_on not in DECODE_ON:
            raise ValueError(
                f"--decode-on: unknown place {self.decode_on!r}; expected one of {', '.join(DECODE_ON)}"
            )
        if self.att_target not in ATT_TARGETS:
            raise ValueError(
                f"--att-target: unknown target {self.att_target!r}; expected one of {', '.join(ATT_TARGETS)}"
            )
        if self.teacher_mode not in TEACHER_MODES:
            raise ValueError(
                f"--teacher-mode: unknown mode {self.teacher_mode!r}; "
                f"expected one of {', '.join(TEACHER_MODES)}"
            )

    @property
    def official(self) -> bool:
        return self.recipe == "official"

    @property
    def class_order(self) -> str:
        """How train pids become class numbers: "official" sorts pid strings, "numeric" sorts the ints."""
        return "official" if self.official else "numeric"

    @property
    def test_flip(self) -> bool:
        """Flip-averaged test features; the official code's flip never runs on CUDA (docs/differences.md)."""
        return not self.official

    @property
    def lr(self) -> float:
        return self.base_lr * math.sqrt(self.p * self.k / 20)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        d.pop("translate_pad", None)  # written by deskpro 0.1 (a pad-crop shift); now translate_scale
        d.setdefault("att_target", "paper")  # runs saved before the switch built the target the paper's way
        if isinstance(d.get("method"), dict):
            d["method"] = MethodSettings(**d["method"])
        if "body_size" in d:
            d["body_size"] = tuple(d["body_size"])
        return cls(**d)

    @classmethod
    def for_dataset(cls, dataset: str, **overrides) -> TrainConfig:
        p = preset(dataset)
        return dataclasses.replace(cls(dataset=dataset, method=p.method, label_set=p.label_set), **overrides)
