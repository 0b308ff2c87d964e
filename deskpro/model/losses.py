"""DeSKPro's losses as pure, vectorised functions (Eq. 7 of the paper, as the official release computes it).

Shapes: B batch, K heads (7 logits or 3 triplet features per LightMBN stream), C classes, D feature size.
Multi-head inputs ``[B,K,...]`` give the *sum* over heads of the per-head loss, as the official loss does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

from deskpro.config import MethodSettings
from deskpro.model.lmbn import LMBNOutput

# How the L_att target is built (docs/differences.md): "official" resizes the binary mask with OpenCV's
# default bilinear filter and sets the cells exactly 0 to eps (`model/deskpro/deskpro.py:48-62`);
# "paper" applies Eq. 3's eps at full resolution, then averages each cell (area).
ATT_TARGETS = ("official", "paper")


def _zero(like: torch.Tensor) -> torch.Tensor:
    """A scalar 0 that stays in ``like``'s graph (so backward never sees a detached total)."""
    return like.sum() * 0.0


def cross_entropy_ls(logits: torch.Tensor, targets: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """Label-smoothed cross-entropy, batch mean; targets are (1 - eps) one-hot + eps / C.

    logits [B,C] or [B,K,C] (summed over K); targets int [B]. An empty batch gives 0.
    """
    if logits.shape[0] == 0:
        return _zero(logits)
    log_probs = F.log_softmax(logits.float(), dim=-1)
    index = targets.long().view(-1, *([1] * (logits.dim() - 1))).expand(*logits.shape[:-1], 1)
    nll = -log_probs.gather(-1, index).squeeze(-1)  # [B] or [B,K]
    uniform = -log_probs.mean(dim=-1)
    return ((1.0 - eps) * nll + eps * uniform).mean(dim=0).sum()


def pairwise_euclidean(x: torch.Tensor) -> torch.Tensor:
    """[...,N,D] -> [...,N,N] distances sqrt(clamp(|a|^2 + |b|^2 - 2ab, 1e-12)), as the official loss."""
    x = x.float()
    sq = x.pow(2).sum(-1)
    return (sq[..., :, None] + sq[..., None, :] - 2.0 * x @ x.transpose(-1, -2)).clamp_min(1e-12).sqrt()


def batch_hard_triplet(feats: torch.Tensor, targets: torch.Tensor, margin: float = 0.7) -> torch.Tensor:
    """Batch-hard triplet loss: mean over anchors of relu(d(a, hardest p) - d(a, hardest n) + margin).

    feats [B,D] or [B,K,D] (summed over K); targets int [B]. The hardest positive is the farthest sample
    with the anchor's label (the anchor itself counts, at distance ~0, as in the official loss); the hardest
    negative the nearest with another label. Anchors without any negative are skipped; none left gives 0.
    """
    same = targets.view(-1, 1) == targets.view(1, -1)
    has_negative = (~same).any(dim=1)
    if not bool(has_negative.any()):
        return _zero(feats)
    heads = feats.transpose(0, 1) if feats.dim() == 3 else feats.unsqueeze(0)  # [K,B,D]
    dist = pairwise_euclidean(heads)  # [K,B,B]
    hardest_pos = dist.masked_fill(~same, float("-inf")).amax(dim=-1)
    hardest_neg = dist.masked_fill(same, float("inf")).amin(dim=-1)
    return F.relu(hardest_pos - hardest_neg + margin)[:, has_negative].mean(dim=1).sum()


def cloth_irrelevant_mask(parse: torch.Tensor, cloth_labels: Sequence[int], eps: float) -> torch.Tensor:
    """Eq. 3 at the parse map's size: parse int [B,H,W] -> float [B,1,H,W], 1 off cloth labels, eps on."""
    if parse.dim() != 3:
        raise ValueError(f"cloth_irrelevant_mask: parse must be [B,H,W], got {tuple(parse.shape)}")
    labels = torch.as_tensor(list(cloth_labels), device=parse.device, dtype=parse.dtype)
    on_cloth = torch.isin(parse, labels)
    mask = torch.ones(parse.shape, dtype=torch.float32, device=parse.device).masked_fill(on_cloth, eps)
    return mask.unsqueeze(1)


def resize_bilinear_cv2(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B,C,H,W] float -> [B,C,h,w] as OpenCV's ``cv2.resize(img, (w, h))`` (INTER_LINEAR) on float32.

    Both sample at half-pixel centres, src = (dst + 0.5) * in / out - 0.5, clamped at the borders, with no
    anti-aliasing; an 8x reduction reads the central 2x2 pixels of each 8x8 block. (OpenCV switches an
    exact 2x reduction to INTER_AREA, which gives the same 2x2 mean.)
    """
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image, size=tuple(size), mode="bilinear", align_corners=False, antialias=False)


def attention_target(
    parse: torch.Tensor,
    size: tuple[int, int],
    cloth_labels: Sequence[int],
    eps: float,
    target: str = "official",
) -> torch.Tensor:
    """The L_att target [B,1,h,w] for the attention map's size (h, w), from the label map parse [B,H,W].

    "official" (default): the mask image (1 off the cloth labels, 0 on them) resized with OpenCV's
    default bilinear filter, then the cells that are exactly 0 set to eps; border cells keep their
    fractional values (0.25 / 0.5 / 0.75 at an 8x reduction). "paper": Eq. 3 (eps on cloth) at full
    resolution, then each cell averaged (area), so every cell of the block counts.
    """
    if target not in ATT_TARGETS:
        raise ValueError(f"attention_target: target must be one of {ATT_TARGETS}, got {target!r}")
    if target == "paper":
        mask = cloth_irrelevant_mask(parse, cloth_labels, eps)
        return mask if mask.shape[-2:] == tuple(size) else F.interpolate(mask, size=tuple(size), mode="area")
    off_cloth = cloth_irrelevant_mask(parse, cloth_labels, 0.0)
    mask = resize_bilinear_cv2(off_cloth, size)
    return mask.masked_fill(mask == 0, eps)


def attention_loss(
    attn: torch.Tensor,
    parse: torch.Tensor,
    cloth_labels: Sequence[int],
    eps: float,
    target: str = "official",
) -> torch.Tensor:
    """L_att: mean squared error between the attention map [B,1,h,w] and `attention_target` at (h, w)."""
    mask = attention_target(parse, tuple(attn.shape[-2:]), cloth_labels, eps, target)
    return F.mse_loss(attn.float(), mask.to(attn.device))


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """L_fkp: tau^2 * sum over heads of KL(teacher || student) at temperature tau, batch mean.

    student/teacher logits [B,C] or [B,K,C]; the teacher is detached. KL(p_t || p_s) =
    sum_c p_t (log p_t - log p_s) with p = softmax(logits / tau), as ``KLDivLoss(log p_s, p_t)``.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"kd_loss: shapes differ {tuple(student_logits.shape)} vs {tuple(teacher_logits.shape)}"
        )
    if student_logits.shape[0] == 0:
        return _zero(student_logits)
    log_s = F.log_softmax(student_logits.float() / tau, dim=-1)
    log_t = F.log_softmax(teacher_logits.detach().float() / tau, dim=-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(dim=-1)  # [B] or [B,K]
    if kl.dim() == 2:
        kl = kl.sum(dim=1)
    return tau * tau * kl.mean()


def reid_loss(
    out: LMBNOutput, targets: torch.Tensor, *, label_smoothing: float = 0.1, margin: float = 0.7
) -> dict:
    """CE over the 7 logits + batch-hard triplet over the 3 pre-BN features (the teacher's training loss)."""
    ce = cross_entropy_ls(out.logits, targets, label_smoothing)
    trip = batch_hard_triplet(out.triplet, targets, margin)
    return {"total": ce + trip, "ce": ce, "triplet": trip}


def _student_rows(student: LMBNOutput, targets: torch.Tensor, face_mask: torch.Tensor | None):
    """(student output, targets) restricted to the samples with a face."""
    if face_mask is None:
        if student.logits.shape[0] != targets.shape[0]:
            raise ValueError("deskpro_loss: the student has fewer rows than the batch; pass face_mask")
        return student, targets
    face_mask = face_mask.to(device=targets.device, dtype=torch.bool)
    n_faces = int(face_mask.sum())
    rows = student.logits.shape[0]
    if rows == targets.shape[0] and rows != n_faces:
        student = LMBNOutput(*(t[face_mask.to(t.device)] for t in student))
    elif rows != n_faces:
        raise ValueError(
            f"deskpro_loss: student has {rows} rows, face_mask marks {n_faces} of {targets.shape[0]}"
        )
    return student, targets[face_mask]


def deskpro_loss(
    out: dict,
    targets: torch.Tensor,
    parse: torch.Tensor,
    *,
    settings: MethodSettings,
    cloth_labels: Sequence[int],
    face_mask: torch.Tensor | None = None,
    label_smoothing: float = 0.1,
    margin: float = 0.7,
    att_target: str = "official",
) -> dict:
    """Eq. 7: L = lam L_att + L_trip + (alpha L_fkp + (1 - alpha) L_ce^s) + L_ce^g.

    out: ``DeSKPro.forward`` output; targets int [B] (class indices); parse int [B,H,W] (label map at the
    body size); face_mask bool [B] (None: every sample has a face). Samples without a face are excluded
    from the student terms; the student rows may be all B (selected here) or only the masked ones.
    L_trip, as in the official loss, sums the batch-hard triplet over the body's and the student's three
    features; att_target says how the L_att target is built (`attention_target`). Returns every term
    (scalars) for logging, the sum under ``"total"``.
    """
    body: LMBNOutput = out["body"]
    ce_body = cross_entropy_ls(body.logits, targets, label_smoothing)
    trip_body = batch_hard_triplet(body.triplet, targets, margin)
    att = attention_loss(out["attention"], parse, cloth_labels, settings.eps, att_target)
    ce_face = trip_face = fkp = _zero(body.logits)
    if out.get("student") is not None:
        student, face_targets = _student_rows(out["student"], targets, face_mask)
        ce_face = cross_entropy_ls(student.logits, face_targets, label_smoothing)
        trip_face = batch_hard_triplet(student.triplet, face_targets, margin)
        if out.get("teacher") is not None:
            teacher, _ = _student_rows(out["teacher"], targets, face_mask)
            fkp = kd_loss(student.logits, teacher.logits, settings.tau)
    triplet = trip_body + trip_face
    total = settings.lam * att + triplet + settings.alpha * fkp + (1.0 - settings.alpha) * ce_face + ce_body
    return {
        "total": total,
        "att": att,
        "triplet": triplet,
        "triplet_body": trip_body,
        "triplet_face": trip_face,
        "fkp": fkp,
        "ce_face": ce_face,
        "ce_body": ce_body,
    }
