"""Batch augmentation on tensors (on the GPU when there is one), seeded by a torch.Generator.

One flip and one shift decision per sample apply alike to the body, its parse map and (flip
always, shift optionally) its faces; random erasing touches the body only; then ImageNet
normalisation. Every per-sample decision is drawn as a vector, so a batch costs a few kernels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class AugmentSettings:
    """Probabilities and sizes of the training augmentation (the official settings by default)."""

    flip_p: float = 0.5
    translate_p: float = 0.5
    translate_pad: float = 0.05  # padded size = size * (1 + translate_pad)
    erase_p: float = 0.5
    erase_area: tuple[float, float] = (0.02, 0.4)
    erase_aspect: float = 0.3
    shift_faces: bool = False


def normalize_uint8(images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 [B,H,W,3] -> ImageNet-normalised float [B,3,H,W]: a uint8 transpose, then one fused op."""
    nchw = images.permute(0, 3, 1, 2).contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )
    scale = torch.tensor([1.0 / (255.0 * s) for s in IMAGENET_STD], device=images.device).view(1, 3, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)], device=images.device)
    return torch.addcmul(shift.view(1, 3, 1, 1), nchw, scale)


def _rand(n: int, generator: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device)


def shift_and_flip(
    images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad: tuple[int, int], flipped: torch.Tensor
) -> torch.Tensor:
    """Mirror (where `flipped`) then pad-crop channel-last images [B,H,W(,C)], any dtype.

    The image is zero-padded by `pad` (y, x) on every side and cropped back at offsets dy, dx in
    [0, 2*pad]; offsets equal to `pad` do not move it. On a GPU this is one gather kernel; on the
    CPU a per-sample slice copy, which is about ten times faster there than a gather.
    """
    h, w = images.shape[1:3]
    py, px = pad
    spatial_pad = (0, 0, px, px, py, py) if images.dim() == 4 else (px, px, py, py)
    padded = torch.nn.functional.pad(images, spatial_pad) if py or px else images
    if images.device.type == "cpu":
        return _shift_flip_slices(padded, dy, dx, flipped, (h, w))
    return _shift_flip_gather(padded, dy, dx, flipped, (h, w), px)


def _shift_flip_slices(padded, dy, dx, flipped, size_hw) -> torch.Tensor:
    h, w = size_hw
    out = padded.new_empty((padded.shape[0], h, w, *padded.shape[3:]))
    for i, (y, x, f) in enumerate(zip(dy.tolist(), dx.tolist(), flipped.tolist())):
        rows = padded[i, y : y + h]
        # Flip first, then shift: mirror the (symmetrically) padded rows, then take the window.
        out[i].copy_(rows.flip(1)[:, x : x + w] if f else rows[:, x : x + w])
    return out


def _shift_flip_gather(padded, dy, dx, flipped, size_hw, px: int) -> torch.Tensor:
    h, w = size_hw
    b = padded.shape[0]
    j = torch.arange(w, device=padded.device).view(1, w)
    rows = dy.view(b, 1) + torch.arange(h, device=padded.device).view(1, h)  # [B,H]
    cols = dx.view(b, 1) + j  # [B,W] in padded coordinates
    # Flip first, then shift: the crop's column c reads padded column (W - 1 + 2 px) - c.
    cols = torch.where(flipped.view(b, 1), (w - 1 + 2 * px) - cols, cols)
    batch = torch.arange(b, device=padded.device).view(b, 1, 1)
    return padded[batch, rows.view(b, h, 1), cols.view(b, 1, w)]


def _shift_offsets(n, size_hw, settings, generator, device):
    """Per-sample crop offsets for the pad-crop shift; unshifted samples sit at the centre."""
    h, w = size_hw
    py = max(1, round(h * settings.translate_pad / 2))
    px = max(1, round(w * settings.translate_pad / 2))
    apply = _rand(n, generator, device) < settings.translate_p
    dy = torch.floor(_rand(n, generator, device) * (2 * py + 1)).long()
    dx = torch.floor(_rand(n, generator, device) * (2 * px + 1)).long()
    dy = torch.where(apply, dy, torch.full_like(dy, py))
    dx = torch.where(apply, dx, torch.full_like(dx, px))
    return dy, dx, (py, px)


def erase_masks(n, size_hw, settings, generator, device, attempts: int = 10) -> torch.Tensor:
    """Boolean [B,1,H,W] rectangles to erase: area fraction and aspect ratio drawn as in random erasing.

    Each sample draws `attempts` candidate rectangles at once and uses the first that fits; a
    sample where none fits (rare) is not erased.
    """
    h, w = size_hw
    lo, hi = settings.erase_area
    area = (lo + (hi - lo) * torch.rand(n, attempts, generator=generator, device=device)) * h * w
    log_r = math.log(settings.erase_aspect)
    aspect = torch.exp(log_r + (-2 * log_r) * torch.rand(n, attempts, generator=generator, device=device))
    eh = torch.sqrt(area * aspect).round().long()
    ew = torch.sqrt(area / aspect).round().long()
    fits = (eh < h) & (ew < w) & (eh > 0) & (ew > 0)
    first = torch.argmax(fits.int(), dim=1, keepdim=True)
    eh, ew = eh.gather(1, first).squeeze(1), ew.gather(1, first).squeeze(1)
    apply = fits.any(dim=1) & (_rand(n, generator, device) < settings.erase_p)
    y0 = torch.floor(_rand(n, generator, device) * (h - eh + 1).float()).long()
    x0 = torch.floor(_rand(n, generator, device) * (w - ew + 1).float()).long()
    yy = torch.arange(h, device=device).view(1, h, 1)
    xx = torch.arange(w, device=device).view(1, 1, w)
    inside = (
        (yy >= y0.view(-1, 1, 1))
        & (yy < (y0 + eh).view(-1, 1, 1))
        & (xx >= x0.view(-1, 1, 1))
        & (xx < (x0 + ew).view(-1, 1, 1))
    )
    return (inside & apply.view(-1, 1, 1)).unsqueeze(1)


def augment_batch(
    batch: dict[str, torch.Tensor],
    generator: torch.Generator,
    settings: AugmentSettings = AugmentSettings(),
    *,
    device="cpu",
    channels_last: bool = False,
    train: bool = True,
) -> dict[str, torch.Tensor]:
    """Loader batch (uint8 NHWC images) -> model inputs on the device.

    Returns body, face_lr, face_hr as normalised float [B,3,*,*], parse as long [B,H,W], and
    has_face / label moved to the device. `generator` must live on `device`. With train=False
    only conversion and normalisation happen.
    """
    body = batch["body"].to(device, non_blocking=True)
    parse = batch["parse"].to(device, non_blocking=True)
    faces = {key: batch[key].to(device, non_blocking=True) for key in ("face_lr", "face_hr")}
    n, h, w = body.shape[:3]
    if train:
        flipped = _rand(n, generator, device) < settings.flip_p
        dy, dx, pad = _shift_offsets(n, (h, w), settings, generator, device)
        body = shift_and_flip(body, dy, dx, pad, flipped)
        parse = shift_and_flip(parse, dy, dx, pad, flipped)
        for key, face in faces.items():
            size = face.shape[1:3]
            if settings.shift_faces:
                fdy, fdx, fpad = _shift_offsets(n, size, settings, generator, device)
            else:
                fdy = fdx = torch.zeros(n, dtype=torch.long, device=device)
                fpad = (0, 0)
            faces[key] = shift_and_flip(face, fdy, fdx, fpad, flipped)
    body = normalize_uint8(body)
    if train:
        # Erase after normalisation: the rectangle becomes 0, the ImageNet mean colour.
        body = body.masked_fill(erase_masks(n, (h, w), settings, generator, device), 0.0)
    memory = torch.channels_last if channels_last else torch.contiguous_format
    out = {
        "body": body.contiguous(memory_format=memory),
        "parse": parse.long(),
        "face_lr": normalize_uint8(faces["face_lr"], channels_last),
        "face_hr": normalize_uint8(faces["face_hr"], channels_last),
    }
    for key in ("has_face", "label"):
        if key in batch:
            out[key] = batch[key].to(device, non_blocking=True)
    return out
