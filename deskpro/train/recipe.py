"""What `--recipe` and the initialisation rules decide for a training run (the trainer calls these).

`--recipe deskpro` (the default) and `--recipe official` differ only where deskpro deliberately
departs from the official code; docs/differences.md lists each point with the official file.
The functions here turn a TrainConfig (plus the teacher file) into the run's dataset, sampler,
augmentation draws and precision, so the loop itself stays recipe-agnostic.
"""

from __future__ import annotations

import dataclasses

import torch

from deskpro.config import OFFICIAL_WORKERS, TrainConfig
from deskpro.model.checkpoint import TeacherFile, read_teacher
from deskpro.train.data import OfficialIdentitySampler, PKBatchSampler, ShardDataset
from deskpro.train.phases import FACE_INPUT
from deskpro.train.transforms import AugmentSettings, EpochDraws, epoch_draws

IMAGENET_FILE = "{backbone}_imagenet.pth"  # deep-person-reid's file name of each OSNet variant
SCRATCH_DATASETS = ("synthetic",)  # presets that may train from random init without --from-scratch


def check_init(config: TrainConfig, imagenet: str | None, from_scratch: bool) -> None:
    """A real-dataset run needs the ImageNet OSNet weights (the official code always loads them)."""
    if imagenet or from_scratch or config.dataset in SCRATCH_DATASETS:
        return
    file = IMAGENET_FILE.format(backbone=config.backbone)
    raise ValueError(
        f"--imagenet: training {config.dataset} starts from the OSNet ImageNet weights {file} "
        "(see `deskpro weights list`); pass --imagenet PATH, or --from-scratch for a random init"
    )


def recipe_amp(config: TrainConfig, device: torch.device, amp_given: bool) -> TrainConfig:
    """`--recipe official` runs fp16 autocast on a GPU (PL precision=16) unless --amp was given."""
    if config.official and not amp_given and device.type == "cuda":
        return dataclasses.replace(config, amp="fp16")
    return config


def teacher_file(config: TrainConfig, teacher: str | None, trust: bool) -> TeacherFile | None:
    """The teacher file of a "deskpro" phase run, read once (None for the other phases)."""
    if config.phase != "deskpro":
        return None
    if not teacher:
        raise ValueError("phase 'deskpro' needs a teacher checkpoint (--teacher CKPT)")
    return read_teacher(teacher, trust=trust)


def train_dataset(reader, config: TrainConfig, teacher: TeacherFile | None = None) -> ShardDataset:
    """The training rows and their class table, by the recipe and (for distillation) the teacher.

    Official recipe: faceless rows leave the training set before the classes are made, and the
    classes are the pid strings sorted. A teacher fixes the table: ours by its stored class_pids,
    an official one by the official order of this training set; one that does not match is a
    one-line error (never a silent permutation of its classifier).
    """
    kwargs = {
        "require_face": config.phase in FACE_INPUT and not config.official,  # the face-only phases
        "drop_faceless": config.official,
        "class_order": config.class_order,
    }
    if teacher is None:
        return ShardDataset(reader, "train", **kwargs)
    what = f"--teacher {teacher.path}"
    if teacher.class_pids is not None:
        return ShardDataset(reader, "train", classes=teacher.class_pids, classes_from=what, **kwargs)
    kwargs["class_order"] = teacher.class_order
    dataset = ShardDataset(reader, "train", **kwargs)
    if dataset.num_classes != teacher.num_classes:
        hint = " (an official teacher was trained without faceless images: try --recipe official)"
        raise ValueError(
            f"{what}: the teacher has {teacher.num_classes} classes, the training set {dataset.num_classes} "
            f"pids{hint if teacher.source == 'official' and not config.official else ''}"
        )
    return dataset


def make_sampler(config: TrainConfig, labels, rank: int = 0, world_size: int = 1) -> PKBatchSampler:
    """P x K batches: the official epoch rule (--recipe official), or deskpro's exact-length one."""
    cls = OfficialIdentitySampler if config.official else PKBatchSampler
    return cls(labels, config.p, config.k, seed=config.seed, rank=rank, world_size=world_size)


def augment_settings(config: TrainConfig) -> AugmentSettings:
    return AugmentSettings(
        flip_p=config.flip_p,
        translate_p=config.translate_p,
        translate_scale=config.translate_scale,
        erase_p=config.erase_p,
    )


def draws_of_epoch(config: TrainConfig, generator: torch.Generator, device) -> EpochDraws:
    """Per-sample draws (deskpro), or one configuration per official loader worker (official)."""
    workers = OFFICIAL_WORKERS if config.official else None
    return epoch_draws(generator, augment_settings(config), device=device, workers=workers)
