"""Human parsing of whole images: letterbox onto the network's square, logits, flip test, back to HxW.

`Parser` wraps any parsing network that carries an `input_spec` (deskpro.pipeline.nets.specs) and
`num_classes`: SCHP (deskpro.pipeline.nets.schp) or a segmentation_models_pytorch model.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch import nn

from deskpro.common.torch_utils import autocast_context, check_amp, prepare_module, to_input
from deskpro.pipeline.nets.schp import FLIP_PAIRS, INPUT_SIZES, LABELS, check_labels, upsample_logits
from deskpro.pipeline.nets.specs import SCHP_SPEC, InputSpec

# ----------------------------------------------------------------------------- letterbox geometry


def letterbox_matrix(height: int, width: int, size: int, inverse: bool = False) -> np.ndarray:
    """The official affine (2x3) mapping the whole image box onto a `size` square, or its inverse.

    Box [0, 0, w-1, h-1] -> centre ((w-1)/2, (h-1)/2), side max(w-1, h-1) mapped onto size-1 pixels,
    aspect ratio kept. Built from three float32 point pairs with cv2.getAffineTransform, as the official
    get_affine_transform does, so the matrix is bit-identical.
    """
    side = float(max(width - 1, height - 1))
    if side <= 0:
        raise ValueError(f"image of {height}x{width} pixels is too small to parse (needs 2 pixels on a side)")
    centre = np.array([(width - 1) * 0.5, (height - 1) * 0.5], np.float32)
    half_dst = (size - 1) * 0.5
    src = np.zeros((3, 2), np.float32)
    dst = np.zeros((3, 2), np.float32)
    src[0], src[1] = centre, centre + np.array([0.0, side * -0.5], np.float32)
    dst[0], dst[1] = [half_dst, half_dst], [half_dst, 0.0]
    src[2], dst[2] = _third_point(src[0], src[1]), _third_point(dst[0], dst[1])
    return cv2.getAffineTransform(dst, src) if inverse else cv2.getAffineTransform(src, dst)


def _third_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """b + (a - b) rotated by 90 degrees: completes a right angle so the affine has no shear."""
    d = a - b
    return b + np.array([-d[1], d[0]], np.float32)


def letterbox(image: np.ndarray, size: int) -> np.ndarray:
    """The image warped onto a `size` square (aspect kept, centred, black border, INTER_LINEAR)."""
    matrix = letterbox_matrix(image.shape[0], image.shape[1], size)
    return cv2.warpAffine(
        np.ascontiguousarray(image),
        matrix,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )


def content_window(height: int, width: int, size: int, margin: int = 2) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), half-open: the part of the `size` square that holds the letterboxed image.

    The inverse warp of an image reads only this window (`margin` pixels cover bilinear neighbours),
    so only it needs to leave the device.
    """
    matrix = letterbox_matrix(height, width, size)
    xs, ys = matrix @ np.array([[0.0, width - 1.0], [0.0, height - 1.0], [1.0, 1.0]])
    x0, y0 = (max(0, int(np.floor(v.min())) - margin) for v in (xs, ys))
    x1, y1 = (min(size, int(np.ceil(v.max())) + margin + 1) for v in (xs, ys))
    return x0, y0, x1, y1


def unletterbox(
    square: np.ndarray,
    height: int,
    width: int,
    interpolation: int = cv2.INTER_LINEAR,
    *,
    size: int | None = None,
    origin: tuple[int, int] = (0, 0),
) -> np.ndarray:
    """Warp a square map [S, S] or [S, S, C] back to the image's [H, W(, C)] (border 0).

    `square` may be a window of the S-square (S = `size`) starting at `origin` (x0, y0), as given by
    content_window: it is pasted into a zero S-square, so the result is bit-identical to warping the
    whole square. Channels are warped one at a time, as the official transform_logits does: cv2's
    multi-channel path rounds differently for more than 4 channels.
    """
    full = size or square.shape[0]
    matrix = letterbox_matrix(height, width, full, inverse=True)
    planes = square[:, :, None] if square.ndim == 2 else square
    rows, cols = planes.shape[:2]
    x0, y0 = origin
    canvas = None
    if (rows, cols) != (full, full):
        canvas = np.zeros((full, full), planes.dtype)
    out = []
    for c in range(planes.shape[2]):
        if canvas is None:
            plane = np.ascontiguousarray(planes[:, :, c])
        else:
            canvas[y0 : y0 + rows, x0 : x0 + cols] = planes[:, :, c]
            plane = canvas
        out.append(
            cv2.warpAffine(
                plane,
                matrix,
                (width, height),
                flags=interpolation,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=0,
            )
        )
    return out[0] if square.ndim == 2 else np.stack(out, axis=2)


# ----------------------------------------------------------------------------- inference


def flip_permutation(labels: str, num_classes: int) -> list[int]:
    """Channel order that swaps each left/right label pair of `labels` (identity elsewhere)."""
    perm = list(range(num_classes))
    for a, b in FLIP_PAIRS[labels]:
        perm[a], perm[b] = b, a
    return perm


def _check_image(image: object, index: int) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image {index}: expected a uint8 HxWx3 array, got {desc}")
    return image


class Parser:
    """Human parsing of whole images: letterbox, network, (flip test), upsample, warp back, argmax.

    `net` is an SCHP network (or any module with `input_spec` and `num_classes`, e.g. from
    smp_parser.load); images are uint8 HxWx3 BGR of any sizes; each gets a uint8 label map of its own size.
    """

    def __init__(
        self,
        net: nn.Module,
        labels: str = "lip",
        input_size: int | None = None,
        flip: bool = False,
        device: str | torch.device = "cpu",
        amp: str | None = None,
        channels_last: bool = False,
    ) -> None:
        self.labels = check_labels(labels)
        self.spec: InputSpec = getattr(net, "input_spec", SCHP_SPEC)
        self.num_classes = int(getattr(net, "num_classes", len(LABELS[labels])))
        if self.num_classes != len(LABELS[labels]):
            raise ValueError(
                f"the network has {self.num_classes} classes but labels={labels!r} has {len(LABELS[labels])}"
            )
        self.input_size = int(input_size or self.spec.input_size or INPUT_SIZES[labels])
        if self.input_size % self.spec.size_multiple:
            raise ValueError(
                f"input_size {self.input_size} must be a multiple of {self.spec.size_multiple} "
                "for this network"
            )
        self.flip = flip
        self.device = torch.device(device)
        self.amp = check_amp(amp)
        autocast_context(self.device, self.amp)  # fail now, not at the first batch, on e.g. fp16 on CPU
        self.channels_last = channels_last
        self.net = prepare_module(net, self.device, channels_last)
        self._perm = flip_permutation(labels, self.num_classes)
        order = [2, 1, 0] if not self.spec.bgr else [0, 1, 2]  # input arrays are BGR
        self._channel_order = torch.tensor(order, device=self.device)
        self._mean = torch.tensor(self.spec.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.spec.std, device=self.device).view(1, 3, 1, 1)

    def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """uint8 label maps [H, W], one per BGR image, each at that image's size."""
        return [logits.argmax(axis=2).astype(np.uint8) for logits in self.logits(images)]

    def logits(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """float32 logits [H, W, C] per image, warped back to each image's size (border pixels 0)."""
        images = [_check_image(im, i) for i, im in enumerate(images)]
        if not images:
            return []
        squares = np.stack([letterbox(im, self.input_size) for im in images])
        square_logits = self.square_logits(squares)
        out = []
        for sl, im in zip(square_logits, images):
            height, width = im.shape[:2]
            x0, y0, x1, y1 = content_window(height, width, self.input_size)
            window = sl[:, y0:y1, x0:x1].cpu().numpy()  # only the image's part leaves the device
            # [C, h, w] viewed as [h, w, C]: each channel plane stays contiguous for the warp.
            out.append(
                unletterbox(window.transpose(1, 2, 0), height, width, size=self.input_size, origin=(x0, y0))
            )
        return out

    @torch.inference_mode()
    def square_logits(self, squares: np.ndarray) -> torch.Tensor:
        """float32 logits [B, C, S, S] for letterboxed uint8 BGR squares [B, S, S, 3] (flip-averaged)."""
        x = torch.from_numpy(np.ascontiguousarray(squares)).to(self.device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)[:, self._channel_order]
        x = (x - self._mean) / self._std
        batch = x.shape[0]
        if self.flip:
            x = torch.cat([x, x.flip(-1)])
        with autocast_context(self.device, self.amp):
            out = self.net(to_input(x, self.device, self.channels_last))
        out = out.float()
        if self.flip:
            # Official flip test: swap left/right channels of the flipped output, flip it back, average.
            out = (out[:batch] + out[batch:][:, self._perm].flip(-1)) * 0.5
        if out.shape[-2:] != (self.input_size, self.input_size):
            out = upsample_logits(out, (self.input_size, self.input_size))
        return out.contiguous()
