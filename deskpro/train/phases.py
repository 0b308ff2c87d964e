"""What each training phase builds, trains and optimises: model, streams, loss terms, val stream.

- "teacher": the face teacher (`face_net`, a LightMBN) on restored faces (face_hr), CE with label
  smoothing + batch-hard triplet, on the samples that have a face.
- "deskpro": global stream + student on face_lr with the frozen teacher on face_hr, Eq. 7
  (`deskpro.model.losses.deskpro_loss`); samples without a face train the body stream only.
- "baseline": the global stream alone (CE + triplet), no attention loss, no face streams.
- "student": the face student (`lr_face_net`) alone on the low-res faces (face_lr), CE with label
  smoothing + batch-hard triplet, on the samples that have a face: Table 3's row 4 (the student
  without distillation). These are the student's terms in a "deskpro" run with alpha 0, which
  trains it on separate parameters; alone it costs a third (no body stream, no teacher).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from deskpro.config import CLOTH_LABELS, TrainConfig, preset
from deskpro.model.checkpoint import load_teacher
from deskpro.model.deskpro import DeSKPro, freeze_teacher
from deskpro.model.losses import deskpro_loss, reid_loss
from deskpro.model.osnet import load_imagenet
from deskpro.train.evaluate import evaluate_model

PHASES = ("teacher", "deskpro", "baseline", "student")
VAL_STREAM = {"teacher": "face", "deskpro": "both", "baseline": "body", "student": "face"}
FACE_INPUT = {"teacher": "face_hr", "student": "face_lr"}  # the face-only phases' inputs


def build_model(config: TrainConfig, num_classes: int, *, imagenet=None, teacher=None, trust: bool = False):
    """A DeSKPro model initialised from config.seed (and ImageNet OSNet weights when given); for
    phase "deskpro" with the teacher (a path or a read `TeacherFile`) loaded and frozen as
    `config.teacher_mode` says."""
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(config.seed)
        model = DeSKPro(num_classes, csa_form=config.csa_form, backbone=config.backbone)
    if imagenet:
        for module in phase_modules(model, config.phase):
            load_imagenet(module, imagenet)
    if config.phase == "deskpro":
        if not teacher:
            raise ValueError("phase 'deskpro' needs a teacher checkpoint (--teacher CKPT)")
        load_teacher(model, teacher, trust=trust)
        freeze_teacher(model, config.teacher_mode)
    return model


def trained_module(model, phase: str) -> torch.nn.Module:
    """The sub-module a phase's checkpoint holds and DDP wraps: the teacher or the student alone for
    the face-only phases, else the model."""
    return {"teacher": model.face_net, "student": model.lr_face_net}.get(phase, model)


def phase_modules(model, phase: str) -> list[torch.nn.Module]:
    """The streams a phase trains: ImageNet-initialised and optimised."""
    return {
        "teacher": [model.face_net],
        "deskpro": [model.nocloth_net, model.lr_face_net],
        "baseline": [model.nocloth_net],
        "student": [model.lr_face_net],
    }[phase]


def trainable_parameters(model, phase: str) -> list[torch.nn.Parameter]:
    return [p for m in phase_modules(model, phase) for p in m.parameters() if p.requires_grad]


def loss_terms(forward_model, batch: dict, config: TrainConfig) -> dict:
    """The phase's loss terms (scalars; "total" is optimised) for one augmented batch."""
    if config.phase in FACE_INPUT:
        out = forward_model(batch[FACE_INPUT[config.phase]])
        return reid_loss(
            out, batch["label"], label_smoothing=config.label_smoothing, margin=config.triplet_margin
        )
    settings = config.method
    if config.phase == "baseline":
        out = forward_model(batch["body"])
        settings = dataclasses.replace(settings, lam=0.0)
    else:
        out = forward_model(
            batch["body"], face_lr=batch["face_lr"], face_hr=batch["face_hr"], face_mask=batch["has_face"]
        )
    return deskpro_loss(
        out,
        batch["label"],
        batch["parse"],
        settings=settings,
        cloth_labels=CLOTH_LABELS[config.label_set],
        face_mask=batch["has_face"],
        label_smoothing=config.label_smoothing,
        margin=config.triplet_margin,
        att_target=config.att_target,
    )


def val_score(model, reader, config: TrainConfig, device, progress: bool) -> float:
    """Mean mAP over the dataset's protocols on the val split, with the phase's main stream."""
    rows = evaluate_model(
        model,
        reader,
        preset(config.dataset).protocols,
        split="val",
        streams=(VAL_STREAM[config.phase],),
        device=device,
        progress=progress,
        flip=config.test_flip,  # no flip under --recipe official (docs/differences.md)
        trials=1,
    )
    scores = [r.mAP for r in rows if not r.protocol.endswith("-single")]
    if not scores:
        raise ValueError(f"{reader.shards_dir}: --select-on-val needs val rows (PRCC layout); found none")
    return float(np.mean(scores))
