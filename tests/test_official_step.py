"""deskpro's training step against the official one (re-derived in `_reference.official_training_step`).

Same weights, same batch, fp32 on the CPU, tiny sizes (OSNet x0.25, 64x32 bodies, 32x32 faces): each
loss term, the total, every gradient and every running statistic after the step agree, with deskpro's
defaults (`--recipe deskpro`, the preset's method settings). The parse maps put garment borders off the
8x8 grid of the attention map, where the L_att targets of the two readings differ.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from _reference import official_training_step, use_official_osblocks

from deskpro.config import CLOTH_LABELS, TrainConfig
from deskpro.model.deskpro import DeSKPro, freeze_teacher
from deskpro.train.phases import loss_terms

NUM_CLASSES, P, K = 3, 3, 2
BODY, FACE = (64, 32), 32


def _batch(seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    n = P * K
    parse = torch.zeros(n, *BODY, dtype=torch.long)
    parse[:, :10] = 13  # face
    for i in range(n):  # upper clothes and pants with borders at rows/columns that miss multiples of 8
        top, left = (int(v) for v in torch.randint(11, 19, (2,), generator=gen) - torch.tensor([0, 10]))
        parse[i, top : top + 19, left : BODY[1] - 2] = 5
        parse[i, top + 21 : BODY[0] - 3, left + 1 : BODY[1] - left] = 9
    return {
        "body": torch.randn(n, 3, *BODY, generator=gen),
        "face_lr": torch.randn(n, 3, FACE, FACE, generator=gen),
        "face_hr": torch.randn(n, 3, FACE, FACE, generator=gen),
        "has_face": torch.ones(n, dtype=torch.bool),
        "label": torch.arange(P).repeat_interleave(K),
        "parse": parse,
    }


def _model() -> DeSKPro:
    torch.manual_seed(0)  # module init only
    model = DeSKPro(NUM_CLASSES, backbone="osnet_x0_25")
    with torch.no_grad():  # a confident teacher: L_fkp well above float32's rounding of a near-zero KL
        for module in model.face_net.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.mul_(50.0)
    freeze_teacher(model, "train")
    return model.train()


@pytest.fixture(scope="module")
def steps():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors; two threads on a loaded machine cost 20x
    try:
        yield _steps()
    finally:
        torch.set_num_threads(threads)


def _steps():
    config = TrainConfig.for_dataset(
        "celeb-reid-light", backbone="osnet_x0_25", body_size=BODY, face_size=FACE
    )
    ours, official = _model(), _model()
    official.load_state_dict(ours.state_dict())
    use_official_osblocks(official)
    batch = _batch()
    terms = loss_terms(ours, batch, config)
    terms["total"].backward()
    method = config.method
    reference = official_training_step(
        official,
        batch,
        num_classes=NUM_CLASSES,
        alpha=method.alpha,
        temperature=method.tau,
        mse_weight=method.lam,
        cloth_labels=CLOTH_LABELS[config.label_set],
    )
    reference["total"].backward()
    return config, batch, ours, official, terms, reference


def test_each_loss_term_and_the_total_agree(steps):
    _, _, _, _, terms, reference = steps
    for name in ("ce_face", "ce_body", "triplet", "fkp", "att", "total"):
        assert terms[name].item() == pytest.approx(reference[name].item(), rel=1e-4), name
    assert reference["att"].item() > 0 and reference["fkp"].item() > 0.1


def test_every_gradient_agrees(steps):
    """Relative 1e-4 per parameter; a gradient that is zero but for float32 rounding (a norm below 1e-7 of
    the whole step's) is held to that rounding instead (one BatchNorm weight of the channel branch)."""
    _, _, ours, official, _, _ = steps
    grads = [p.grad for p in official.parameters() if p.grad is not None]
    floor = 1e-7 * float(torch.sqrt(sum((g**2).sum() for g in grads)))
    compared = 0
    for (name, mine), (_, theirs) in zip(ours.named_parameters(), official.named_parameters()):
        assert (mine.grad is None) == (theirs.grad is None), name
        if mine.grad is not None:
            difference = float((mine.grad - theirs.grad).norm())
            assert difference <= 1e-4 * float(theirs.grad.norm()) + floor, name
            compared += 1
    assert compared > 100  # the body stream, the CSA and the student


def test_running_statistics_agree_after_the_step(steps):
    _, _, ours, official, _, _ = steps
    buffers = dict(official.named_buffers())
    for name, mine in ours.named_buffers():
        if mine.dtype == torch.long:  # num_batches_tracked: conv2a's BatchNorm counts two per step
            assert torch.equal(mine, buffers[name]), name
        else:
            torch.testing.assert_close(mine, buffers[name], rtol=1e-5, atol=1e-6, msg=name)
    assert int(ours.nocloth_net.backbone[2][0].conv2a.bn.num_batches_tracked) == 2


def test_the_paper_reading_of_l_att_is_what_the_comparison_tells_apart(steps):
    config, batch, ours, _, _, reference = steps
    paper = dataclasses.replace(config, att_target="paper")
    with torch.no_grad():
        terms = loss_terms(copy.deepcopy(ours), batch, paper)
    assert abs(terms["att"].item() / reference["att"].item() - 1) > 1e-3
