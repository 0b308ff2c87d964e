"""Where the official checkpoints' key layouts live: `tests/data/reference/` in this repository.

Each `*_keys.json` maps a checkpoint name to `{state_dict key: shape}`, read from the official code;
`README.md` beside them holds the facts (sources, sizes, conventions). `DESKPRO_REFERENCE` points the
tests at another copy. The tests need these files and never the real checkpoints.
"""

from __future__ import annotations

import os
from pathlib import Path

REFERENCE_DIR = Path(os.environ.get("DESKPRO_REFERENCE") or Path(__file__).parent / "data" / "reference")
if not (REFERENCE_DIR / "deskpro_keys.json").is_file():
    raise FileNotFoundError(f"{REFERENCE_DIR}: no deskpro_keys.json (the key layouts the tests build from)")


# ---- the official training step, re-derived from the official code (KimbingNg/DeskPro, commit 662902d)
#
# Written out plainly from `main.py` `Model.training_step`, `loss/__init__.py` `LossFunction.compute`,
# `loss/triplet.py`, `loss/kd_loss.py`, `model/deskpro/deskpro.py` and `model/osnet.py` `OSBlock.forward`,
# on deskpro's network modules (whose forward equals the official networks': tests/test_checkpoint.py and
# friends). Nothing here calls deskpro's loss code, so a test can hold deskpro's step against it.

OFFICIAL_MASK_EPS = 0.1  # `deskpro.py:59` `nocloth_mask[nocloth_mask == 0] = 0.1`, hard-coded
OFFICIAL_LABEL_SMOOTH = 0.1  # `CrossEntropyLabelSmooth(epsilon=0.1)`
OFFICIAL_MARGIN = 0.7  # `config_files/base.yaml` margin


def official_osblock_forward(block, x):
    """`model/osnet.py:186-198`: stream a is `conv2a` called twice; conv2b is never called."""
    import torch.nn.functional as F

    identity = x
    x = block.conv1(x)
    x = block.conv3(
        block.gate(block.conv2a(x))
        + block.gate(block.conv2a(x))
        + block.gate(block.conv2c(x))
        + block.gate(block.conv2d(x))
    )
    if block.downsample is not None:
        identity = block.downsample(identity)
    return F.relu(x + identity)


def use_official_osblocks(model) -> None:
    """Run every OSBlock of `model` as the official forward (an instance attribute shadows the class's)."""
    import types

    from deskpro.model.osnet import OSBlock

    for module in model.modules():
        if isinstance(module, OSBlock):
            module.forward = types.MethodType(official_osblock_forward, module)


def official_ce_label_smooth(logits, targets, num_classes):
    """`CrossEntropyLabelSmooth.forward`: scattered one-hot, (1 - e) y + e / K, (-y log p).mean(0).sum()."""
    import torch

    log_probs = torch.log_softmax(logits, dim=1)
    one_hot = torch.zeros(log_probs.size()).scatter_(1, targets.unsqueeze(1), 1)
    smooth = (1 - OFFICIAL_LABEL_SMOOTH) * one_hot + OFFICIAL_LABEL_SMOOTH / num_classes
    return (-smooth * log_probs).mean(0).sum()


def official_triplet(inputs, targets):
    """`TripletLoss.forward`: distances by addmm, an anchor loop over hardest positive and negative,
    `MarginRankingLoss(margin)(d_an, d_ap, 1)`."""
    import torch

    n = inputs.size(0)
    dist = torch.pow(inputs, 2).sum(dim=1, keepdim=True).expand(n, n)
    dist = dist + dist.t()
    dist = dist.addmm(inputs, inputs.t(), beta=1, alpha=-2)
    dist = dist.clamp(min=1e-12).sqrt()
    mask = targets.expand(n, n).eq(targets.expand(n, n).t())
    dist_ap = torch.cat([dist[i][mask[i]].max().unsqueeze(0) for i in range(n)])
    dist_an = torch.cat([dist[i][mask[i] == 0].min().unsqueeze(0) for i in range(n)])
    return torch.nn.MarginRankingLoss(margin=OFFICIAL_MARGIN)(dist_an, dist_ap, torch.ones_like(dist_an))


def official_kd(student_logits, teacher_logits, temperature):
    """`KDLoss.forward`: over the 7 heads, KLDivLoss(batchmean)(log_softmax(s / T), softmax(t / T)) * T^2."""
    import torch
    import torch.nn.functional as F

    loss = 0
    for student, teacher in zip(student_logits, teacher_logits):
        kl = torch.nn.KLDivLoss(reduction="batchmean")(
            F.log_softmax(student / temperature, dim=1), F.softmax(teacher.detach() / temperature, dim=1)
        )
        loss = loss + kl * temperature * temperature
    return loss


def official_mask_target(parse, cloth_labels, size):
    """`NoClothNet.get_mask_tensor` + `deskpro.py:59`: the 3-channel mask image (1 off the cloth labels, 0
    on them) through `cv2.resize(hm, (w, h))`, channel 0, then the cells exactly 0 set to 0.1."""
    import cv2
    import numpy as np
    import torch

    height, width = size
    images = []
    for labels in parse.numpy():
        mask_image = (~np.isin(labels, list(cloth_labels))).astype(np.float32)
        hwc = np.repeat(mask_image[:, :, None], 3, axis=2)
        images.append(cv2.resize(hwc, (width, height))[:, :, 0])
    target = torch.from_numpy(np.stack(images))[:, None].float()
    target[target == 0] = OFFICIAL_MASK_EPS
    return target


def official_training_step(model, batch: dict, *, num_classes, alpha, temperature, mse_weight, cloth_labels):
    """`Model.training_step` with `forward_mode all` and `kd_loss.enable`: returns its loss terms.

    CE runs over the 14 logits [face 7, body 7] (`forward_branches` puts the face stream first), the
    face ones weighted 1 - alpha (`special_ce`); the triplet over the 6 features (tr_weight 1); then
    + alpha * kd + mse_weight * attn. The teacher runs under `no_grad` in the model's (train) mode.
    """
    import torch

    labels = batch["label"]
    student = model.lr_face_net(batch["face_lr"], full=True)
    with torch.no_grad():
        teacher = model.face_net(batch["face_hr"], full=True)
    body, attention = model.nocloth_net(batch["body"], full=True)
    target = official_mask_target(batch["parse"], cloth_labels, tuple(attention.shape[-2:]))
    attn_loss = torch.nn.MSELoss()(attention, target)
    heads = lambda t: [t[:, i] for i in range(t.shape[1])]  # noqa: E731 - [B,K,...] -> K tensors
    kd = official_kd(heads(student.logits), heads(teacher.logits), temperature)
    ce_face = sum(official_ce_label_smooth(x, labels, num_classes) for x in heads(student.logits))
    ce_body = sum(official_ce_label_smooth(x, labels, num_classes) for x in heads(body.logits))
    triplet = sum(official_triplet(x, labels) for x in heads(student.triplet) + heads(body.triplet))
    reid = (1 - alpha) * ce_face + ce_body + triplet  # `LossFunction.compute`
    total = reid + kd * alpha + attn_loss * mse_weight
    return {
        "total": total,
        "ce_face": ce_face,
        "ce_body": ce_body,
        "triplet": triplet,
        "fkp": kd,
        "att": attn_loss,
    }
