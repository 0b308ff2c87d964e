"""DeSKPro model: output shapes, gradients from the total loss, frozen teacher, CSA, retrieval features."""

from __future__ import annotations

import pytest
import torch
from _model_utils import images

from deskpro.config import CLOTH_LABELS, MethodSettings
from deskpro.model import DeSKPro, freeze_teacher, retrieval_distance, retrieval_features
from deskpro.model.csa import CSA
from deskpro.model.losses import deskpro_loss

NUM_CLASSES = 4
BODY = (64, 32)
FACE = 32


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)  # module init only
    return DeSKPro(NUM_CLASSES)


def _batch(seed=0, batch=6):
    body = images(batch, *BODY, seed=seed)
    face_lr = images(batch, FACE, FACE, seed=seed + 1)
    face_hr = images(batch, FACE, FACE, seed=seed + 2)
    parse = torch.randint(0, 20, (batch, *BODY), generator=torch.Generator().manual_seed(seed))
    targets = torch.arange(batch) // 2
    return body, face_lr, face_hr, parse, targets


def test_training_forward_shapes(model):
    body, face_lr, face_hr, _, _ = _batch()
    mask = torch.tensor([True, False, True, True, True, True])
    model.train()
    out = model(body, face_lr, face_hr, face_mask=mask)
    assert out["body"].logits.shape == (6, 7, NUM_CLASSES)
    assert out["body"].triplet.shape == (6, 3, 512)
    assert out["body"].embeddings.shape == (6, 7, 512)
    assert out["attention"].shape == (6, 1, BODY[0] // 8, BODY[1] // 8)
    assert out["student"].logits.shape == (5, 7, NUM_CLASSES)
    assert out["teacher"].logits.shape == (5, 7, NUM_CLASSES)
    assert not out["teacher"].logits.requires_grad
    none = model(body)
    assert none["student"] is None and none["teacher"] is None


def test_every_trainable_parameter_gets_a_gradient_teacher_none():
    torch.manual_seed(1)
    model = freeze_teacher(DeSKPro(NUM_CLASSES), "eval")
    model.train()
    assert not model.face_net.training  # --teacher-mode eval: the teacher stays in eval
    assert model.nocloth_net.training and model.lr_face_net.training
    body, face_lr, face_hr, parse, targets = _batch(seed=3)
    mask = torch.tensor([True, True, True, True, False, True])
    out = model(body, face_lr, face_hr, face_mask=mask)
    terms = deskpro_loss(
        out, targets, parse, settings=MethodSettings(), cloth_labels=CLOTH_LABELS["lip"], face_mask=mask
    )
    terms["total"].backward()
    for name, p in model.named_parameters():
        if name.startswith("face_net."):
            assert not p.requires_grad and p.grad is None, name
        elif ".conv2b." in name:  # unused by the official OSBlock (repeat_conv2a): frozen, no gradient
            assert not p.requires_grad and p.grad is None, name
        elif p.requires_grad:
            assert p.grad is not None, f"{name} got no gradient"
            assert torch.isfinite(p.grad).all(), name
    assert model.nocloth_net.spatial_attn.conv1.weight.grad.abs().sum() > 0
    assert terms["fkp"].item() > 0


def test_teacher_mode_train_runs_the_teacher_as_the_official_does():
    torch.manual_seed(2)
    model = freeze_teacher(DeSKPro(NUM_CLASSES))  # default "train": batch statistics, drop block on
    model.train()
    assert model.face_net.training and not any(p.requires_grad for p in model.face_net.parameters())
    bn = next(m for m in model.face_net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    body, face_lr, face_hr, _, _ = _batch(seed=4)
    out = model(body, face_lr, face_hr)
    assert not out["teacher"].logits.requires_grad
    assert not torch.equal(bn.running_mean, before)  # batch statistics used (and tracked)
    model.eval()
    assert not model.face_net.training


def test_embed_shapes_and_optional_face(model):
    model.eval()
    body, face, _, _, _ = _batch()
    with torch.no_grad():
        emb = model.embed(body, face)
        body_only = model.embed(body)
    assert emb["face"].shape == (6, 7, 512) and emb["body"].shape == (6, 7, 512)
    assert body_only["face"] is None
    torch.testing.assert_close(body_only["body"], emb["body"])


def test_embed_does_not_depend_on_batch_composition(model):
    model.eval()
    body, face, _, _, _ = _batch(seed=5)
    with torch.no_grad():
        together = model.embed(body, face)
        alone = model.embed(body[2:3], face[2:3])
    torch.testing.assert_close(alone["body"][0], together["body"][2], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(alone["face"][0], together["face"][2], atol=1e-5, rtol=1e-4)


def test_retrieval_features_normalised_flip_invariant_and_face_masked(model):
    model.eval()
    body, face, _, _, _ = _batch(seed=7, batch=3)
    has_face = torch.tensor([True, False, True])
    feats = retrieval_features(model, body, face, has_face)
    assert feats["body"].shape == (3, 7, 512) and feats["face"].shape == (3, 7, 512)
    torch.testing.assert_close(feats["body"].norm(dim=2), torch.ones(3, 7))
    torch.testing.assert_close(feats["face"][[0, 2]].norm(dim=2), torch.ones(2, 7))
    assert torch.equal(feats["face"][1], torch.zeros(7, 512))
    assert feats["has_face"].tolist() == [True, False, True]
    flipped = retrieval_features(model, body.flip(3), face.flip(3), has_face)
    torch.testing.assert_close(flipped["body"], feats["body"], atol=1e-5, rtol=1e-4)
    no_flip = retrieval_features(model, body, face, has_face, flip=False)
    assert not torch.allclose(no_flip["body"], feats["body"])
    no_face = retrieval_features(model, body, None, None)
    assert not no_face["has_face"].any()


def test_retrieval_distance_uses_body_only_without_faces():
    def unit(x):
        return torch.nn.functional.normalize(x, dim=2)

    gen = torch.Generator().manual_seed(0)
    q = {
        "body": unit(torch.randn(2, 7, 4, generator=gen)),
        "face": unit(torch.randn(2, 7, 4, generator=gen)),
        "has_face": torch.tensor([True, False]),
    }
    g = {
        "body": unit(torch.randn(3, 7, 4, generator=gen)),
        "face": unit(torch.randn(3, 7, 4, generator=gen)),
        "has_face": torch.tensor([True, True, False]),
    }
    dist = retrieval_distance(q, g)
    body_cos = torch.einsum("qkd,gkd->qg", q["body"], g["body"])
    face_cos = torch.einsum("qkd,gkd->qg", q["face"], g["face"])
    assert dist[0, 0] == pytest.approx(float(1 - (body_cos[0, 0] + face_cos[0, 0]) / 14), abs=1e-6)
    for i, j in [(0, 2), (1, 0), (1, 1), (1, 2)]:
        assert dist[i, j] == pytest.approx(float(1 - body_cos[i, j] / 7), abs=1e-6)


def test_csa_forms_and_their_keys():
    official = CSA(384, "official")
    assert {k: tuple(v.shape) for k, v in official.state_dict().items()} == {
        "conv1.weight": (384, 384, 1, 1),
        "conv2.weight": (1, 384, 1, 1),
    }
    paper = CSA(384, "paper")
    assert set(paper.state_dict()) == {"conv.weight", "conv.bias"}
    x = torch.randn(2, 384, 4, 2, generator=torch.Generator().manual_seed(0))
    for csa in (official, paper):
        a = csa(x)
        assert a.shape == (2, 1, 4, 2) and bool(((a > 0) & (a < 1)).all())
    with pytest.raises(ValueError, match="unknown form"):
        CSA(384, "cbam")


def test_global_stream_multiplies_features_by_attention(model):
    model.eval()
    stream = model.nocloth_net
    body = images(2, *BODY, seed=9)
    with torch.no_grad():
        emb, attn = stream(body, full=False)
        trunk = stream.forward_trunk(body)
        torch.testing.assert_close(stream.forward_branches(trunk * attn, full=False), emb)
        assert not torch.allclose(stream.forward_branches(trunk, full=False), emb)


def test_paper_form_model_runs():
    torch.manual_seed(2)
    model = DeSKPro(NUM_CLASSES, csa_form="paper").eval()
    with torch.no_grad():
        out = model.embed(images(1, *BODY))
    assert torch.isfinite(out["body"]).all()
