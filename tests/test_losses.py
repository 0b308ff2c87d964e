"""DeSKPro losses against small cases worked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deskpro.config import CLOTH_LABELS, MethodSettings
from deskpro.model.lmbn import LMBNOutput
from deskpro.model.losses import (
    attention_loss,
    attention_target,
    batch_hard_triplet,
    cloth_irrelevant_mask,
    cross_entropy_ls,
    deskpro_loss,
    kd_loss,
    reid_loss,
)


def test_label_smoothing_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    z = math.exp(2) + 2
    logp = [2 - math.log(z), -math.log(z), -math.log(z)]
    # targets: 0.9 + 0.1/3 on the true class, 0.1/3 elsewhere
    expected = -((0.9 + 0.1 / 3) * logp[0] + (0.1 / 3) * (logp[1] + logp[2]))
    assert cross_entropy_ls(logits, torch.tensor([0]), eps=0.1).item() == pytest.approx(expected, rel=1e-6)
    no_smoothing = -logp[0]
    assert cross_entropy_ls(logits, torch.tensor([0]), eps=0.0).item() == pytest.approx(
        no_smoothing, rel=1e-6
    )


def test_cross_entropy_sums_heads_and_averages_batch():
    logits = torch.randn(4, 7, 6, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 1, 2, 5])
    per_head = sum(cross_entropy_ls(logits[:, k], targets) for k in range(7))
    torch.testing.assert_close(cross_entropy_ls(logits, targets), per_head)
    row0 = cross_entropy_ls(logits[:1, 0], targets[:1])
    rest = cross_entropy_ls(logits[1:, 0], targets[1:])
    torch.testing.assert_close(cross_entropy_ls(logits[:, 0], targets), (row0 + 3 * rest) / 4)


def test_triplet_picks_hardest_positive_and_negative():
    # 1-D points: ids 0 at 0 and 1; ids 1 at 4 and 2.5. Worked by hand:
    # a=0: ap 1, an 2.5 -> 0;  a=1: ap 1, an 1.5 -> 0.2
    # a=4: ap 1.5, an 3 -> 0;  a=2.5: ap 1.5, an 1.5 -> 0.7
    feats = torch.tensor([[0.0], [1.0], [4.0], [2.5]])
    targets = torch.tensor([0, 0, 1, 1])
    assert batch_hard_triplet(feats, targets, margin=0.7).item() == pytest.approx(0.9 / 4, abs=1e-5)
    # a far positive of id 0 becomes the hardest positive for both id-0 anchors
    feats2 = torch.tensor([[0.0], [1.0], [4.0], [2.5], [-3.0]])
    targets2 = torch.tensor([0, 0, 1, 1, 0])
    # a=0: ap 3, an 2.5 -> 1.2; a=1: ap 4, an 1.5 -> 3.2; a=4: ap 1.5, an 3 -> 0;
    # a=2.5: ap 1.5, an 1.5 -> 0.7; a=-3: ap 4, an 5.5 -> 0
    assert batch_hard_triplet(feats2, targets2, margin=0.7).item() == pytest.approx(5.1 / 5, abs=1e-5)


def test_triplet_uses_euclidean_distance_and_sums_heads():
    feats = torch.tensor([[[0.0, 0.0]], [[3.0, 4.0]], [[0.0, 1.0]]])  # [B=3, K=1, D=2]
    targets = torch.tensor([0, 0, 1])
    # a0: ap 5, an 1 -> 4.7; a1: ap 5, an sqrt(18) -> 5.7 - 4.2426; a2: ap ~0, an 1 -> 0
    expected = (4.7 + (5.7 - math.sqrt(18))) / 3
    assert batch_hard_triplet(feats, targets, 0.7).item() == pytest.approx(expected, abs=1e-4)
    two_heads = torch.cat([feats, feats], dim=1)
    assert batch_hard_triplet(two_heads, targets, 0.7).item() == pytest.approx(2 * expected, abs=1e-4)


def test_triplet_without_negatives_is_zero_and_differentiable():
    feats = torch.randn(3, 4, requires_grad=True)
    loss = batch_hard_triplet(feats, torch.tensor([1, 1, 1]))
    assert loss.item() == 0.0
    loss.backward()


def test_cloth_irrelevant_mask_values():
    parse = torch.tensor([[[5, 0], [13, 9]]], dtype=torch.uint8)  # LIP: upper-clothes, bg / face, pants
    mask = cloth_irrelevant_mask(parse, CLOTH_LABELS["lip"], eps=0.1)
    assert mask.shape == (1, 1, 2, 2)
    torch.testing.assert_close(mask, torch.tensor([[[[0.1, 1.0], [1.0, 0.1]]]]))


def test_attention_loss_resizes_mask_to_attention():
    parse = torch.tensor([[[5, 0], [13, 9]]])
    attn = torch.full((1, 1, 1, 1), 0.5)
    # official: bilinear tap at the centre of the 2x2 block -> (0 + 1 + 1 + 0) / 4 = 0.5, not 0 -> no eps
    assert attention_loss(attn, parse, CLOTH_LABELS["lip"], 0.1).item() == pytest.approx(0.0, abs=1e-12)
    # paper: eps first, then area: (0.1 + 1 + 1 + 0.1) / 4 = 0.55 -> (0.5 - 0.55)^2
    assert attention_loss(attn, parse, CLOTH_LABELS["lip"], 0.1, target="paper").item() == pytest.approx(
        0.0025, abs=1e-6
    )
    same_size = torch.tensor([[[[0.1, 1.0], [1.0, 0.0]]]])
    for target in ("official", "paper"):
        loss = attention_loss(same_size, parse, CLOTH_LABELS["lip"], 0.1, target=target)
        assert loss.item() == pytest.approx(0.01 / 4)
    with pytest.raises(ValueError, match="target must be one of"):
        attention_loss(attn, parse, CLOTH_LABELS["lip"], 0.1, target="nearest")


def test_official_target_keeps_fractional_border_cells_and_sets_eps_on_zero_cells():
    # 16x8 -> 2x1: each cell reads the central 2x2 pixels (rows 3-4 / 11-12, columns 3-4) of its 8x8 block
    parse = torch.zeros(1, 16, 8, dtype=torch.long)
    parse[0, :4, :] = 5  # cloth over rows 0-3: the upper tap reads one cloth row, one free row -> 0.5
    parse[0, 8:, :] = 9  # the lower block is all cloth -> 0 -> eps
    target = attention_target(parse, (2, 1), CLOTH_LABELS["lip"], 0.1)
    torch.testing.assert_close(target, torch.tensor([[[[0.5], [0.1]]]]))
    # the paper's reading counts every pixel: (4 * 0.1 + 4 * 1) / 8 and the whole lower block at eps
    paper = attention_target(parse, (2, 1), CLOTH_LABELS["lip"], 0.1, target="paper")
    torch.testing.assert_close(paper, torch.tensor([[[[0.55], [0.1]]]]))


@pytest.mark.parametrize(
    ("full", "small"),
    [
        ((256, 128), (32, 16)),
        ((384, 128), (48, 16)),
        ((64, 32), (8, 4)),
        ((60, 30), (8, 4)),
        ((16, 8), (8, 4)),
    ],
)
def test_official_target_matches_opencv_resize(full, small):
    """The torch bilinear tap against `cv2.resize` as the official `get_mask_tensor` calls it (float32 HWC
    mask image, dsize (w, h), default interpolation) on garments whose borders miss the 8x8 grid."""
    cv2 = pytest.importorskip("cv2")
    gen = torch.Generator().manual_seed(sum(full))
    height, width = full
    parse = torch.zeros(3, height, width, dtype=torch.long)
    for b in range(3):  # a rectangle of upper-clothes and one of pants, at odd offsets
        top, left = (int(v) for v in torch.randint(1, 7, (2,), generator=gen))
        parse[b, top : top + height // 3 + 3, left : width - 3] = 5
        parse[b, height // 2 + 5 : height - 2, left + 1 : width - left - 2] = 9
        parse[b, torch.rand(height, width, generator=gen) < 0.02] = 13  # speckles of face off the cloth
    mask_image = (~torch.isin(parse, torch.tensor(CLOTH_LABELS["lip"]))).float().numpy()
    expected = []
    for image in mask_image:
        hwc = np.repeat(image[:, :, None], 3, axis=2).astype(np.float32)  # the official mask has 3 channels
        resized = cv2.resize(hwc, (small[1], small[0]))[:, :, 0]
        resized[resized == 0] = 0.1
        expected.append(resized)
    expected = torch.from_numpy(np.stack(expected))[:, None]
    got = attention_target(parse, small, CLOTH_LABELS["lip"], 0.1)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    fractional = (expected > 0.1) & (expected < 1)
    assert bool(fractional.any())  # the case has border cells, where the paper's reading differs
    paper = attention_target(parse, small, CLOTH_LABELS["lip"], 0.1, target="paper")
    assert float((paper - expected).abs().max()) > 0.05


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def _softmax(xs, tau):
    e = [math.exp(x / tau) for x in xs]
    return [v / sum(e) for v in e]


def test_kd_is_tau_squared_kl_teacher_to_student():
    student = torch.tensor([[1.0, 0.0, -1.0]])
    teacher = torch.tensor([[0.0, 2.0, 0.5]])
    tau = 2.0
    p_t, p_s = _softmax([0.0, 2.0, 0.5], tau), _softmax([1.0, 0.0, -1.0], tau)
    expected = tau**2 * _kl(p_t, p_s)
    assert kd_loss(student, teacher, tau).item() == pytest.approx(expected, rel=1e-5)
    reverse = tau**2 * _kl(p_s, p_t)
    assert abs(expected - reverse) > 1e-3  # the case separates the two directions
    assert kd_loss(student, teacher, 1.0).item() == pytest.approx(
        _kl(_softmax([0.0, 2.0, 0.5], 1), _softmax([1.0, 0.0, -1.0], 1)), rel=1e-5
    )


def test_kd_sums_heads_averages_batch_and_leaves_teacher_alone():
    gen = torch.Generator().manual_seed(1)
    student = torch.randn(4, 7, 5, generator=gen, requires_grad=True)
    teacher = torch.randn(4, 7, 5, generator=gen, requires_grad=True)
    total = kd_loss(student, teacher, 5.0)
    by_hand = (
        sum(kd_loss(student[b : b + 1, k], teacher[b : b + 1, k], 5.0) for b in range(4) for k in range(7))
        / 4
    )
    torch.testing.assert_close(total, by_hand)
    total.backward()
    assert student.grad is not None and teacher.grad is None
    assert kd_loss(teacher, teacher, 5.0).item() == pytest.approx(0.0, abs=1e-6)


def _fake_output(batch, classes, seed):
    gen = torch.Generator().manual_seed(seed)
    return LMBNOutput(
        torch.randn(batch, 7, classes, generator=gen),
        torch.randn(batch, 3, 8, generator=gen),
        torch.randn(batch, 7, 8, generator=gen),
    )


def test_deskpro_loss_is_eq7_and_masks_faceless_samples():
    settings = MethodSettings(eps=0.1, lam=7.0, tau=5.0, alpha=0.7)
    targets = torch.tensor([0, 0, 1, 1, 2, 2])
    face_mask = torch.tensor([True, True, True, False, True, True])
    body, student, teacher = _fake_output(6, 3, 0), _fake_output(6, 3, 1), _fake_output(6, 3, 2)
    attn = torch.rand(6, 1, 4, 2, generator=torch.Generator().manual_seed(3))
    parse = torch.randint(0, 20, (6, 16, 8), generator=torch.Generator().manual_seed(4))
    out = {"body": body, "attention": attn, "student": student, "teacher": teacher}
    terms = deskpro_loss(
        out, targets, parse, settings=settings, cloth_labels=CLOTH_LABELS["lip"], face_mask=face_mask
    )

    keep = face_mask
    s_t = targets[keep]
    expected = (
        7.0 * attention_loss(attn, parse, CLOTH_LABELS["lip"], 0.1)
        + batch_hard_triplet(body.triplet, targets, 0.7)
        + batch_hard_triplet(student.triplet[keep], s_t, 0.7)
        + 0.7 * kd_loss(student.logits[keep], teacher.logits[keep], 5.0)
        + 0.3 * cross_entropy_ls(student.logits[keep], s_t)
        + cross_entropy_ls(body.logits, targets)
    )
    torch.testing.assert_close(terms["total"], expected)
    assert set(terms) >= {"total", "att", "triplet", "fkp", "ce_face", "ce_body"}

    # the faceless sample's student/teacher rows do not matter, and pre-selected rows give the same loss
    student2 = LMBNOutput(*(t.clone() for t in student))
    student2.logits[3] += 100.0
    terms2 = deskpro_loss(
        {**out, "student": student2},
        targets,
        parse,
        settings=settings,
        cloth_labels=CLOTH_LABELS["lip"],
        face_mask=face_mask,
    )
    torch.testing.assert_close(terms2["total"], terms["total"])
    selected = {
        **out,
        "student": LMBNOutput(*(t[keep] for t in student)),
        "teacher": LMBNOutput(*(t[keep] for t in teacher)),
    }
    terms3 = deskpro_loss(
        selected, targets, parse, settings=settings, cloth_labels=CLOTH_LABELS["lip"], face_mask=face_mask
    )
    torch.testing.assert_close(terms3["total"], terms["total"])


def test_deskpro_loss_without_student_has_zero_face_terms():
    body = _fake_output(4, 3, 0)
    out = {"body": body, "attention": torch.rand(4, 1, 2, 2), "student": None, "teacher": None}
    terms = deskpro_loss(
        out,
        torch.tensor([0, 0, 1, 1]),
        torch.zeros(4, 8, 8, dtype=torch.long),
        settings=MethodSettings(),
        cloth_labels=CLOTH_LABELS["lip"],
    )
    assert (
        terms["fkp"].item() == 0.0 and terms["ce_face"].item() == 0.0 and terms["triplet_face"].item() == 0.0
    )
    assert terms["total"].item() > 0


def test_reid_loss_is_ce_plus_triplet():
    out = _fake_output(4, 3, 5)
    targets = torch.tensor([0, 0, 1, 1])
    terms = reid_loss(out, targets)
    torch.testing.assert_close(
        terms["total"], cross_entropy_ls(out.logits, targets) + batch_hard_triplet(out.triplet, targets, 0.7)
    )
