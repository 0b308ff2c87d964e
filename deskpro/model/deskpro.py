"""The DeSKPro model: a CSA-guided global (body) stream plus a face student distilled from a face teacher.

Sub-modules carry the official names so official checkpoints load unchanged: ``nocloth_net`` (global
stream: OSNet trunk -> CSA -> LightMBN branches), ``face_net`` (teacher LightMBN on restored faces) and
``lr_face_net`` (student LightMBN on the low-resolution aligned faces). Only the body stream and the
student are used at inference.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from deskpro.model.csa import CSA
from deskpro.model.lmbn import NUM_EMBEDDINGS, LightMBN, LMBNOutput
from deskpro.model.osnet import DEFAULT_BACKBONE, OSNet


class GlobalStream(LightMBN):
    """LightMBN whose conv3[0] features are re-weighted by the cloth-irrelevant spatial attention."""

    def __init__(
        self,
        num_classes: int,
        feat_dim: int = 512,
        csa_form: str = "official",
        osnet: OSNet | None = None,
        repeat_conv2a: bool = True,
        backbone: str = DEFAULT_BACKBONE,
    ):
        super().__init__(num_classes, feat_dim, osnet, repeat_conv2a, backbone)
        self.spatial_attn = CSA(self.trunk_channels, csa_form)  # on conv3[0]'s output

    def forward(
        self, x: torch.Tensor, full: bool | None = None
    ) -> tuple[LMBNOutput | torch.Tensor, torch.Tensor]:
        """Images [B,3,H,W] -> (LMBNOutput or eval embeddings [B,7,D], attention [B,1,H/8,W/8])."""
        trunk = self.forward_trunk(x)
        attention = self.spatial_attn(trunk)
        return self.forward_branches(trunk * attention, full=full), attention


class DeSKPro(nn.Module):
    """Global stream ``nocloth_net``, face teacher ``face_net`` and face student ``lr_face_net``.

    ``osnet``: the (ImageNet) OSNet every stream copies its backbone from (None: random init).
    ``repeat_conv2a``: reproduce the official OSBlock quirk (default; see ``deskpro.model.osnet``).
    ``backbone``: the OSNet variant of every stream when ``osnet`` is None (official: osnet_x1_0).
    """

    def __init__(
        self,
        num_classes: int,
        csa_form: str = "official",
        feat_dim: int = 512,
        osnet: OSNet | None = None,
        repeat_conv2a: bool = True,
        backbone: str = DEFAULT_BACKBONE,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.csa_form = csa_form
        self.feat_dim = feat_dim
        self.repeat_conv2a = repeat_conv2a
        self.backbone_name = name = osnet.name if osnet is not None else backbone
        self.face_net = LightMBN(num_classes, feat_dim, osnet, repeat_conv2a, name)
        self.lr_face_net = LightMBN(num_classes, feat_dim, osnet, repeat_conv2a, name)
        self.nocloth_net = GlobalStream(num_classes, feat_dim, csa_form, osnet, repeat_conv2a, name)
        self.teacher_eval = False  # keep face_net in eval mode when the model trains

    def train(self, mode: bool = True) -> DeSKPro:
        super().train(mode)
        if self.teacher_eval:
            self.face_net.eval()  # frozen statistics: running BatchNorm stats, no row drop
        return self

    def forward(
        self,
        body: torch.Tensor,
        face_lr: torch.Tensor | None = None,
        face_hr: torch.Tensor | None = None,
        face_mask: torch.Tensor | None = None,
    ) -> dict:
        """Training forward.

        body [B,3,H,W]; face_lr / face_hr [B,3,F,F] (student / teacher inputs); face_mask bool [B] (None:
        all faces valid). The face streams run only on the masked rows, so ``student``/``teacher`` have
        ``face_mask.sum()`` rows in mask order; they are None without faces (or, in training, with fewer
        than 2, which BatchNorm cannot normalise). The teacher runs without gradients.
        Returns ``dict(body=LMBNOutput, attention=[B,1,h,w], student=LMBNOutput|None,
        teacher=LMBNOutput|None)``.
        """
        body_out, attention = self.nocloth_net(body, full=True)
        result = {"body": body_out, "attention": attention, "student": None, "teacher": None}
        if face_mask is not None:
            face_mask = face_mask.to(device=body.device, dtype=torch.bool)
        if face_lr is not None:
            faces = face_lr if face_mask is None else face_lr[face_mask]
            if faces.shape[0] >= (2 if self.training else 1):
                result["student"] = self.lr_face_net(faces, full=True)
                if face_hr is not None:
                    with torch.no_grad():
                        hr = face_hr if face_mask is None else face_hr[face_mask]
                        result["teacher"] = self.face_net(hr, full=True)
        return result

    def embed(self, body: torch.Tensor, face: torch.Tensor | None = None) -> dict:
        """Official eval features: ``{"face": [B,7,D] (student) or None, "body": [B,7,D]}``, unnormalised.

        Call in eval mode: each sample's features then do not depend on the rest of the batch.
        """
        body_emb, _ = self.nocloth_net(body, full=False)
        face_emb = self.lr_face_net(face, full=False) if face is not None else None
        return {"face": face_emb, "body": body_emb}


def freeze_teacher(model: DeSKPro, mode: str = "train") -> DeSKPro:
    """Freeze the face teacher's weights (no gradients); ``mode`` says how it runs while the model trains.

    "train", the official code's way (model/deskpro/deskpro.py: ``torch.no_grad()`` but never
    ``.eval()``): BatchNorm normalises with batch statistics (and updates its running ones) and the
    drop block is active. "eval": running statistics, no drop, kept so by ``model.train()``.
    """
    if mode not in ("train", "eval"):
        raise ValueError(f"freeze_teacher: mode must be 'train' or 'eval', got {mode!r}")
    model.teacher_eval = mode == "eval"
    model.face_net.requires_grad_(False)
    model.face_net.train(model.training and not model.teacher_eval)
    return model


def _flip_sum(fn, x: torch.Tensor, flip: bool) -> torch.Tensor:
    out = fn(x)
    return out + fn(x.flip(3)) if flip else out


@torch.no_grad()
def retrieval_features(
    model: DeSKPro,
    body: torch.Tensor,
    face: torch.Tensor | None,
    has_face: torch.Tensor | None,
    flip: bool = True,
) -> dict:
    """Features for retrieval, as the official evaluation computes them.

    Each stream's eval embeddings are summed over the image and its horizontal flip (``flip=False``:
    the image alone, which is what the official code computes on CUDA, where its flip fails
    silently: docs/differences.md), then every 512-d chunk is L2-normalised. The student runs only
    on rows with a face; face chunks of face-less rows are zero and ``has_face`` marks them, so
    such pairs can be compared on the body chunks alone.
    Returns ``{"body": [B,7,D], "face": [B,7,D], "has_face": bool [B]}`` (call with the model in eval mode).
    """
    batch = body.shape[0]
    if face is None or has_face is None:
        has_face = torch.full((batch,), face is not None, dtype=torch.bool)
    has_face = has_face.to(device=body.device, dtype=torch.bool)
    body_feat = F.normalize(_flip_sum(lambda x: model.embed(x)["body"], body, flip), dim=2)
    face_feat = body_feat.new_zeros(body_feat.shape)
    if face is not None and bool(has_face.any()):
        emb = _flip_sum(lambda x: model.lr_face_net(x, full=False), face[has_face], flip)
        face_feat[has_face] = F.normalize(emb, dim=2)
    return {"body": body_feat, "face": face_feat, "has_face": has_face}


def retrieval_distance(query: dict, gallery: dict) -> torch.Tensor:
    """Distance [Q,G] = 1 - mean cosine over the chunks both samples have.

    A pair where both have a face averages the 14 face and body chunks (the official ``1 - q.g`` on the
    concatenated features, divided by 14: the same ranking); any other pair uses the 7 body chunks only
    (where the official code yields NaN).
    """
    q_body, g_body = query["body"].flatten(1), gallery["body"].flatten(1)
    body_sim = q_body @ g_body.T
    face_sim = query["face"].flatten(1) @ gallery["face"].flatten(1).T
    both = query["has_face"][:, None] & gallery["has_face"][None, :]
    both = both.to(body_sim.dtype)
    return 1.0 - (body_sim + face_sim * both) / (NUM_EMBEDDINGS * (1.0 + both))
