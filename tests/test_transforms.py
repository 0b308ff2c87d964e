"""The official training transforms (deskpro.train.transforms) on small hand-worked cases."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deskpro.config import IMAGENET_MEAN, IMAGENET_STD
from deskpro.train.transforms import (
    AugmentSettings,
    Draws,
    _erase,
    augment_batch,
    crop_offsets,
    crop_windows,
    draw,
    epoch_draws,
    erase_masks,
    erase_rectangles,
    translate_and_flip,
    translated_size,
)

NO_ERASE = AugmentSettings(erase_p=0.0)


def _draws(n, *, flip=1.0, translate=1.0, crop=(0.5, 0.5), erase=1.0, attempts=4, seed=0):
    """Draws with chosen decisions (a uniform below p applies it) and random erase candidates."""
    g = torch.Generator().manual_seed(seed)
    base = draw(n, g, "cpu", attempts)

    def full(v):
        return torch.as_tensor(v, dtype=torch.float32).expand(n).clone()

    return Draws(
        flip=full(flip),
        translate=full(translate),
        crop=torch.as_tensor(crop, dtype=torch.float32).expand(n, 2).clone(),
        erase=full(erase),
        erase_shape=base.erase_shape,
        erase_place=base.erase_place,
    )


def _batch(n=4, h=16, w=8, f=10, seed=0):
    rng = np.random.default_rng(seed)
    body = torch.from_numpy(rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8))
    face = torch.from_numpy(rng.integers(0, 256, (n, f, f, 3), dtype=np.uint8))
    return {
        "body": body,
        "parse": torch.from_numpy(rng.integers(0, 20, (n, h, w), dtype=np.uint8)),
        "face_lr": face,
        "face_hr": 255 - face,
        "has_face": torch.ones(n, dtype=torch.bool),
        "label": torch.arange(n),
    }


def _bilinear(x_nhwc: torch.Tensor, size) -> torch.Tensor:
    y = F.interpolate(x_nhwc.permute(0, 3, 1, 2).float(), size=size, mode="bilinear", align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    """uint8 images equal within one level (uint8 and float bilinear round differently)."""
    assert a.shape == b.shape and (a.int() - b.int()).abs().max() <= 1


def test_translation_sizes_and_crop_ranges_are_the_officials():
    # Python round: 384*1.05 = 403.2 -> 403, 128*1.05 = 134.4 -> 134, 224*1.05 = 235.2 -> 235.
    assert translated_size((384, 128), 1.05) == (403, 134)
    assert translated_size((224, 224), 1.05) == (235, 235)
    fractions = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.5, 0.5]])
    dy, dx = crop_offsets(fractions, (384, 128), (403, 134))
    # round(0.5 * 19) = round(9.5) = 10 and round(0.5 * 6) = 3: half to even, as Python's round.
    assert dy.tolist() == [0, 19, 10] and dx.tolist() == [0, 6, 3]
    dy, dx = crop_offsets(fractions, (224, 224), (235, 235))
    assert dy.tolist() == [0, 11, 6] and dx.tolist() == [0, 11, 6]  # round(5.5) = 6


def test_translate_crops_the_enlarged_image_at_the_drawn_corner():
    x = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 20, 20, 3), dtype=np.uint8))
    draws = _draws(3, flip=1.0, translate=0.0)  # translate applied, no flip
    draws = Draws(**{**draws.__dict__, "crop": torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0]])})
    out = translate_and_flip(x, draws, NO_ERASE)
    big = _bilinear(x, (21, 21))  # round(20 * 1.05) = 21: one pixel of play each way
    _close(out[0], big[0, 0:20, 0:20])
    _close(out[1], big[1, 1:21, 1:21])
    _close(out[2], big[2, 0:20, 1:21])


def test_untranslated_images_are_unchanged_and_flip_mirrors():
    x = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (2, 6, 4, 3), dtype=np.uint8))
    same = translate_and_flip(x, _draws(2, flip=1.0, translate=1.0), NO_ERASE)
    assert torch.equal(same, x)
    mirrored = translate_and_flip(x, _draws(2, flip=0.0, translate=1.0), NO_ERASE)
    assert torch.equal(mirrored, x.flip(2))


def test_parse_map_follows_the_body_geometry_with_nearest():
    batch = _batch(n=3, h=40, w=20)
    draws = _draws(3, flip=0.0, translate=0.0, crop=(0.7, 0.3))
    out = augment_batch(batch, settings=NO_ERASE, draws=draws)
    enlarged = translated_size((40, 20), 1.05)  # (42, 21)
    dy, dx = crop_offsets(draws.crop, (40, 20), enlarged)
    assert (int(dy[0]), int(dx[0])) == (1, 0)  # round(0.7 * 2) = 1, round(0.3 * 1) = 0
    parse = F.interpolate(batch["parse"].flip(2)[:, None].float(), size=enlarged, mode="nearest")[:, 0]
    expected = parse[:, 1:41, 0:20].long()
    assert torch.equal(out["parse"], expected)
    assert set(out["parse"].unique().tolist()) <= set(batch["parse"].unique().tolist())
    body = _bilinear(batch["body"].flip(2), enlarged)[:, 1:41, 0:20]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    restored = ((out["body"] * std + mean) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    _close(restored, body)


def test_faces_get_the_same_flip_translation_and_erasing():
    batch = _batch(n=64, f=22)
    batch["face_hr"] = batch["face_lr"].clone()
    out = augment_batch(batch, torch.Generator().manual_seed(3))
    # Same input, same draws: the teacher's and the student's face get the same augmented image.
    assert torch.equal(out["face_lr"], out["face_hr"])
    plain = augment_batch(batch, train=False)
    changed = (out["face_lr"] != plain["face_lr"]).flatten(1).any(1)
    assert 0 < int(changed.sum()) < 64  # some faces augmented, some untouched (p = 0.5 each, three times)


def test_images_of_a_sample_share_their_draws():
    g = torch.Generator().manual_seed(4)
    draws = draw(400, g, "cpu", 100)
    settings = AugmentSettings()
    body_on, _, _, body_h, body_w = erase_rectangles(draws, (384, 128), settings)
    face_on, _, _, face_h, face_w = erase_rectangles(draws, (224, 224), settings)
    # One erase decision per sample (a candidate fits at both sizes for all but very rare draws).
    assert torch.equal(body_on, face_on)
    # Their first candidate is the same (area, aspect) draw: where it fits at both sizes, both
    # images lose the same fraction of their area (up to rounding of the sides).
    frac = 0.02 + 0.38 * draws.erase_shape[:, 0, 0]
    aspect = 0.3 + (1 / 0.3 - 0.3) * draws.erase_shape[:, 0, 1]

    def first_fits(h, w):
        eh, ew = torch.sqrt(frac * h * w * aspect).round(), torch.sqrt(frac * h * w / aspect).round()
        return (eh < h) & (ew < w)

    both = first_fits(384, 128) & first_fits(224, 224) & body_on
    assert both.sum() > 20
    body_frac = (body_h * body_w)[both] / (384 * 128)
    face_frac = (face_h * face_w)[both] / (224 * 224)
    torch.testing.assert_close(body_frac, frac[both], atol=0.01, rtol=0)
    torch.testing.assert_close(face_frac, frac[both], atol=0.01, rtol=0)
    # The mask is the rectangle.
    first = torch.arange(40)
    masks = erase_masks(draws.take(first), (384, 128), settings)
    assert torch.equal(masks.flatten(1).sum(1), torch.where(body_on, body_h * body_w, 0)[first])


def _official_erase(h, w, rnd: random.Random):
    """The official RandomErasing's rectangle (spec in docs/differences.md), in plain Python."""
    if rnd.uniform(0, 1) > 0.5:
        return None
    for _ in range(100):
        area = rnd.uniform(0.02, 0.4) * h * w
        aspect = rnd.uniform(0.3, 1 / 0.3)
        eh, ew = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
        if ew < w and eh < h:
            return eh, ew
    return None


@pytest.mark.parametrize("size", [(384, 128), (224, 224)])
def test_erase_rectangles_match_the_official_statistics(size):
    h, w = size
    n = 6000
    rnd = random.Random(0)
    ref = [_official_erase(h, w, rnd) for _ in range(n)]
    ref_on = np.array([r is not None for r in ref])
    ref_area = np.array([r[0] * r[1] / (h * w) for r in ref if r])
    ref_aspect = np.array([r[0] / r[1] for r in ref if r])
    draws = draw(n, torch.Generator().manual_seed(0), "cpu", 100)
    on, top, left, eh, ew = (t.numpy() for t in erase_rectangles(draws, size, AugmentSettings()))
    area, aspect = (eh * ew / (h * w))[on], (eh / ew)[on]
    assert abs(on.mean() - ref_on.mean()) < 0.03  # p = 0.5
    assert area.min() >= 0.015 and area.max() <= 0.41
    assert abs(area.mean() - ref_area.mean()) < 0.01
    # A linear aspect draw has mean about 1.8 (a log-uniform one about 1.3): the two must agree.
    assert abs(np.median(aspect) - np.median(ref_aspect)) < 0.1
    assert abs(aspect.mean() - ref_aspect.mean()) < 0.08
    # Corners are uniform over the inclusive range: rectangles touch every edge, never cross one.
    assert (top[on] >= 0).all() and (top + eh <= h)[on].all() and (left + ew <= w)[on].all()
    assert (top[on] == 0).any() and (top + eh == h)[on].any() and (left[on] == 0).any()
    assert (left + ew == w)[on].any()


def test_erased_pixels_hold_the_official_fill():
    batch = _batch(n=8)
    out = augment_batch(batch, settings=AugmentSettings(flip_p=0, translate_p=0), draws=_draws(8, erase=0.0))
    fill = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    plain = augment_batch(batch, train=False)
    for key in ("body", "face_lr", "face_hr"):
        erased = (out[key] != plain[key]).any(1, keepdim=True)
        assert erased.flatten(1).any(1).all(), key
        assert torch.equal(torch.where(erased, out[key], fill), fill.expand_as(out[key]))
    assert torch.equal(out["parse"], batch["parse"].long())  # the parse map is never erased


def test_official_epoch_draws_repeat_every_fourth_batch():
    g = torch.Generator().manual_seed(5)
    epoch = epoch_draws(g, workers=4)
    batches = [epoch.for_batch(b, 6) for b in range(8)]
    for b, d in enumerate(batches):
        assert torch.equal(d.flip, d.flip[:1].expand(6))  # one configuration for the whole batch
        assert torch.equal(d.erase_shape, batches[b % 4].erase_shape)
    assert not torch.equal(batches[0].crop, batches[1].crop)
    per_sample = epoch_draws(torch.Generator().manual_seed(5), workers=None).for_batch(0, 6)
    assert not torch.equal(per_sample.crop, per_sample.crop[:1].expand(6, 2))


def test_augmentation_is_seeded():
    batch = _batch()
    a = augment_batch(batch, torch.Generator().manual_seed(5))
    b = augment_batch(batch, torch.Generator().manual_seed(5))
    c = augment_batch(batch, torch.Generator().manual_seed(6))
    assert torch.equal(a["body"], b["body"]) and torch.equal(a["face_lr"], b["face_lr"])
    assert not torch.equal(a["body"], c["body"])


@pytest.mark.parametrize("channels", [None, 3])
def test_cpu_slices_match_the_gpu_gather(channels):
    rng = np.random.default_rng(0)
    shape = (7, 11, 9) + ((channels,) if channels else ())
    x = torch.from_numpy(rng.integers(0, 256, shape, dtype=np.uint8))
    dy, dx = torch.from_numpy(rng.integers(0, 3, 7)), torch.from_numpy(rng.integers(0, 4, 7))
    sliced = crop_windows(x, dy, dx, (9, 6), gather=False)
    gathered = crop_windows(x, dy, dx, (9, 6), gather=True)
    assert torch.equal(sliced, gathered)
    assert torch.equal(sliced[3], x[3, dy[3] : dy[3] + 9, dx[3] : dx[3] + 6])
    # The whole transform: per-sample slices (CPU) and whole-batch kernels (GPU) agree.
    draws = draw(7, torch.Generator().manual_seed(1), "cpu", 10)
    for nearest in (False, True):
        per_sample = translate_and_flip(x, draws, AugmentSettings(), nearest=nearest, batched=False)
        batched = translate_and_flip(x, draws, AugmentSettings(), nearest=nearest, batched=True)
        assert torch.equal(per_sample, batched)


def test_in_place_erasing_matches_the_masks():
    draws = draw(16, torch.Generator().manual_seed(2), "cpu", 100)
    images = torch.randn(16, 3, 24, 12)
    settings = AugmentSettings()
    fill = torch.tensor(settings.erase_fill).view(1, 3, 1, 1)
    expected = torch.where(erase_masks(draws, (24, 12), settings), fill, images)
    assert torch.equal(_erase(images.clone(), draws, settings), expected)
