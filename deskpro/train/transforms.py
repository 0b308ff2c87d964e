"""The training transforms of the official code, on batched tensors (on the GPU when there is one).

Every image of a sample goes through the official chain at its own size, in this order:
horizontal flip (p 0.5), Random2DTranslation (p 0.5: resize to round(1.05 H) x round(1.05 W),
bilinear, then an H x W crop; otherwise unchanged), ImageNet normalisation, RandomErasing (p 0.5:
area in [0.02, 0.4] of the image, aspect ratio drawn linearly in [0.3, 1/0.3], up to 100
attempts, filled with (0.4914, 0.4822, 0.4465) in normalised space). The body and both faces get
the whole chain; the parse map gets the body's flip and translation (nearest) and no erasing.

The images of one sample share their random draws, as the official `isolate_rng` makes them: the
same flip and translate decisions, the same crop fractions (scaled to each image's range), the same
erase decision and the same candidate rectangles (the first that fits each size is used). The
draws are uniforms from a seeded torch.Generator (`draw`), one vector per decision, so a batch
costs a few kernels.

Across samples the official code draws nothing: `isolate_rng` restores the RNG state after each
transform and nothing else in `__getitem__` consumes it, so every sample one DataLoader worker
builds in an epoch gets the same draws (4 workers, batches dealt round robin: batch b shares one
configuration with batches b+4, b+8, ...). `epoch_draws(workers=4)` reproduces that for
`--recipe official`; the deskpro recipe draws per sample (`epoch_draws(workers=None)`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from deskpro.config import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AugmentSettings",
    "Draws",
    "EpochDraws",
    "augment_batch",
    "crop_offsets",
    "crop_windows",
    "draw",
    "epoch_draws",
    "erase_masks",
    "erase_rectangles",
    "normalize_uint8",
    "translate_and_flip",
    "translated_size",
]


@dataclass(frozen=True)
class AugmentSettings:
    """Probabilities and sizes of the training transforms (the official values by default)."""

    flip_p: float = 0.5
    translate_p: float = 0.5
    translate_scale: float = 1.05  # Random2DTranslation's enlargement (torchreid uses 1.125)
    erase_p: float = 0.5
    erase_area: tuple[float, float] = (0.02, 0.4)
    erase_aspect: tuple[float, float] = (0.3, 1 / 0.3)
    erase_attempts: int = 100
    erase_fill: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)  # written into the normalised image


@dataclass(frozen=True)
class Draws:
    """Uniform [0,1) draws for n samples: one value per decision, `attempts` per erase candidate."""

    flip: torch.Tensor  # [n]
    translate: torch.Tensor  # [n]
    crop: torch.Tensor  # [n,2] (y, x) fractions of the crop range
    erase: torch.Tensor  # [n]
    erase_shape: torch.Tensor  # [n,A,2] (area, aspect) fractions of their ranges
    erase_place: torch.Tensor  # [n,A,2] (y, x) fractions of the placement range

    def __len__(self) -> int:
        return int(self.flip.shape[0])

    def take(self, index: torch.Tensor) -> Draws:
        """The draws of rows `index` (a row may repeat: samples sharing one configuration)."""
        return Draws(*(getattr(self, f)[index] for f in Draws.__dataclass_fields__))


def draw(n: int, generator: torch.Generator, device, attempts: int = 100) -> Draws:
    """n independent sets of draws from `generator` (which must live on `device`)."""

    def u(*shape):
        return torch.rand(*shape, generator=generator, device=device)

    return Draws(u(n), u(n), u(n, 2), u(n), u(n, attempts, 2), u(n, attempts, 2))


@dataclass(frozen=True)
class EpochDraws:
    """Where one epoch's batches take their draws: per sample, or one configuration per worker."""

    generator: torch.Generator
    device: torch.device | str
    attempts: int
    configurations: Draws | None = None  # one row per loader worker; None: independent per sample

    def for_batch(self, batch_index: int, n: int) -> Draws:
        if self.configurations is None:
            return draw(n, self.generator, self.device, self.attempts)
        row = batch_index % len(self.configurations)
        return self.configurations.take(torch.full((n,), row, dtype=torch.long, device=self.device))


def epoch_draws(
    generator: torch.Generator, settings: AugmentSettings = AugmentSettings(), *, device="cpu", workers=None
) -> EpochDraws:
    """One epoch's draws: `workers=None` per sample (deskpro), an int: per official loader worker."""
    configurations = None
    if workers is not None:
        configurations = draw(max(1, int(workers)), generator, device, settings.erase_attempts)
    return EpochDraws(generator, device, settings.erase_attempts, configurations)


def normalize_uint8(images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 [B,H,W,3] -> ImageNet-normalised float [B,3,H,W]: a uint8 transpose, then one fused op."""
    nchw = images.permute(0, 3, 1, 2).contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )
    scale = torch.tensor([1.0 / (255.0 * s) for s in IMAGENET_STD], device=images.device).view(1, 3, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)], device=images.device)
    return torch.addcmul(shift.view(1, 3, 1, 1), nchw, scale)


def translated_size(size_hw: tuple[int, int], scale: float) -> tuple[int, int]:
    """Random2DTranslation's enlarged size: Python's round (half to even), as the official code."""
    return round(size_hw[0] * scale), round(size_hw[1] * scale)


def crop_offsets(crop: torch.Tensor, size_hw, enlarged_hw) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop corners (y, x) = round(fraction * (enlarged - size)), half to even like Python's round."""
    dy = torch.round(crop[:, 0] * (enlarged_hw[0] - size_hw[0])).long()
    dx = torch.round(crop[:, 1] * (enlarged_hw[1] - size_hw[1])).long()
    return dy, dx


def _resize(images: torch.Tensor, size_hw: tuple[int, int], nearest: bool) -> torch.Tensor:
    """Channel-last [B,H,W(,C)] images resized: bilinear (half-pixel centres), or nearest for labels.

    uint8 pictures on the CPU are resized in uint8 (torch's channels-last fast path, within one
    level of PIL's bilinear and several times faster than PIL); elsewhere in float, then rounded.
    """
    x = images.unsqueeze(-1) if images.dim() == 3 else images
    x = x.permute(0, 3, 1, 2)  # a channels-last view: no copy
    if nearest:
        y = F.interpolate(x if x.device.type == "cpu" else x.float(), size=size_hw, mode="nearest")
    elif x.dtype == torch.uint8 and x.device.type == "cpu":
        y = F.interpolate(x, size=size_hw, mode="bilinear", align_corners=False, antialias=False)
    else:
        y = F.interpolate(x.float(), size=size_hw, mode="bilinear", align_corners=False)
        if images.dtype == torch.uint8:
            y = y.round_().clamp_(0, 255)
    y = y.to(images.dtype).permute(0, 2, 3, 1)
    return y.squeeze(-1) if images.dim() == 3 else y


def crop_windows(
    images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, size_hw, gather=None
) -> torch.Tensor:
    """Per-sample H x W windows at (dy, dx) of [B,H',W'(,C)] images.

    gather=None picks by device: slice copies on the CPU (about ten times faster there than a
    gather), one gather kernel on a GPU.
    """
    h, w = size_hw
    if gather is None:
        gather = images.device.type != "cpu"
    if not gather:
        out = images.new_empty((images.shape[0], h, w, *images.shape[3:]))
        for i, (y, x) in enumerate(zip(dy.tolist(), dx.tolist())):
            out[i].copy_(images[i, y : y + h, x : x + w])
        return out
    b = images.shape[0]
    rows = dy.view(b, 1) + torch.arange(h, device=images.device).view(1, h)
    cols = dx.view(b, 1) + torch.arange(w, device=images.device).view(1, w)
    batch = torch.arange(b, device=images.device).view(b, 1, 1)
    return images[batch, rows.view(b, h, 1), cols.view(b, 1, w)]


def translate_and_flip(
    images: torch.Tensor, draws: Draws, settings: AugmentSettings, *, nearest: bool = False, batched=None
) -> torch.Tensor:
    """Official flip, then Random2DTranslation, of channel-last images [B,H,W(,C)] (any dtype).

    batched=None picks by device: per-sample slices on the CPU (boolean indexing costs more there
    than the work), whole-batch kernels (resize all, gather the windows, select) on a GPU.
    """
    size = tuple(images.shape[1:3])
    enlarged = translated_size(size, settings.translate_scale)
    dy, dx = crop_offsets(draws.crop, size, enlarged)
    flipped = draws.flip < settings.flip_p
    shifted = draws.translate < settings.translate_p
    if batched is None:
        batched = images.device.type != "cpu"
    if batched:
        mirror = flipped.view(-1, *([1] * (images.dim() - 1)))
        images = torch.where(mirror, images.flip(2), images)
        moved = crop_windows(_resize(images, enlarged, nearest), dy, dx, size, gather=True)
        return torch.where(shifted.view_as(mirror), moved, images)
    h, w = size
    out = torch.empty_like(images)
    for i, (f, t, y, x) in enumerate(zip(flipped.tolist(), shifted.tolist(), dy.tolist(), dx.tolist())):
        image = images[i].flip(1) if f else images[i]
        if t:
            image = _resize(image[None], enlarged, nearest)[0, y : y + h, x : x + w]
        out[i].copy_(image)
    return out


def erase_rectangles(draws: Draws, size_hw: tuple[int, int], settings: AugmentSettings):
    """The official RandomErasing's rectangles at this image size: (apply, top, left, height, width) [B].

    Candidate k has area = uniform(lo, hi) * H * W and aspect = uniform(a0, a1) (linear), height
    round(sqrt(area * aspect)), width round(sqrt(area / aspect)); the first with height < H and
    width < W is placed at a uniform integer corner. A sample where none fits is not erased.
    """
    h, w = size_hw
    (lo, hi), (a0, a1) = settings.erase_area, settings.erase_aspect
    area = (lo + (hi - lo) * draws.erase_shape[..., 0]) * (h * w)
    aspect = a0 + (a1 - a0) * draws.erase_shape[..., 1]
    eh = torch.sqrt(area * aspect).round().long()
    ew = torch.sqrt(area / aspect).round().long()
    fits = (eh < h) & (ew < w)
    first = torch.argmax(fits.int(), dim=1, keepdim=True)
    eh, ew = eh.gather(1, first).squeeze(1), ew.gather(1, first).squeeze(1)
    place = draws.erase_place.gather(1, first.unsqueeze(-1).expand(-1, 1, 2)).squeeze(1)
    apply = fits.any(dim=1) & (draws.erase < settings.erase_p)
    top = torch.floor(place[:, 0] * (h - eh + 1).float()).long()  # randint(0, H - h), inclusive
    left = torch.floor(place[:, 1] * (w - ew + 1).float()).long()
    return apply, top, left, eh, ew


def erase_masks(draws: Draws, size_hw: tuple[int, int], settings: AugmentSettings) -> torch.Tensor:
    """Boolean [B,1,H,W]: the pixels `erase_rectangles` erases."""
    h, w = size_hw
    apply, y0, x0, eh, ew = erase_rectangles(draws, size_hw, settings)
    device = y0.device
    rows = torch.arange(h, device=device).view(1, h)
    cols = torch.arange(w, device=device).view(1, w)
    in_rows = (rows >= y0.view(-1, 1)) & (rows < (y0 + eh).view(-1, 1)) & apply.view(-1, 1)
    in_cols = (cols >= x0.view(-1, 1)) & (cols < (x0 + ew).view(-1, 1))
    return (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)


def _erase(images: torch.Tensor, draws: Draws, settings: AugmentSettings) -> torch.Tensor:
    """Fill the erase rectangles of normalised [B,3,H,W] images: in place by slices on the CPU, a
    masked select on a GPU (one kernel, no host sync)."""
    fill = torch.tensor(settings.erase_fill, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    size = tuple(images.shape[2:4])
    if images.device.type != "cpu":
        return torch.where(erase_masks(draws, size, settings), fill, images)
    rects = zip(*(t.tolist() for t in erase_rectangles(draws, size, settings)))
    for i, (apply, top, left, h, w) in enumerate(rects):
        if apply:
            images[i, :, top : top + h, left : left + w] = fill[0]
    return images


def augment_batch(
    batch: dict[str, torch.Tensor],
    generator: torch.Generator | None = None,
    settings: AugmentSettings = AugmentSettings(),
    *,
    device="cpu",
    channels_last: bool = False,
    train: bool = True,
    draws: Draws | None = None,
) -> dict[str, torch.Tensor]:
    """Loader batch (uint8 NHWC images) -> model inputs on the device.

    Returns body, face_lr, face_hr as normalised float [B,3,*,*], parse as long [B,H,W], and
    has_face / label moved to the device. The draws come from `draws` (e.g. `EpochDraws.for_batch`)
    or, without, fresh per sample from `generator` (on `device`). With train=False only conversion
    and normalisation happen.
    """
    body = batch["body"].to(device, non_blocking=True)
    parse = batch["parse"].to(device, non_blocking=True)
    faces = {key: batch[key].to(device, non_blocking=True) for key in ("face_lr", "face_hr")}
    if train and draws is None:
        if generator is None:
            raise ValueError("augment_batch: train=True needs a generator or draws")
        draws = draw(body.shape[0], generator, device, settings.erase_attempts)
    if train:
        body = translate_and_flip(body, draws, settings)
        parse = translate_and_flip(parse, draws, settings, nearest=True)
        faces = {key: translate_and_flip(face, draws, settings) for key, face in faces.items()}
    memory = torch.channels_last if channels_last else torch.contiguous_format
    out = {"body": normalize_uint8(body), "parse": parse.long()}
    out.update({key: normalize_uint8(face) for key, face in faces.items()})
    if train:
        for key in ("body", "face_lr", "face_hr"):
            out[key] = _erase(out[key], draws, settings)
    for key in ("body", "face_lr", "face_hr"):
        out[key] = out[key].contiguous(memory_format=memory)
    for key in ("has_face", "label"):
        if key in batch:
            out[key] = batch[key].to(device, non_blocking=True)
    return out
