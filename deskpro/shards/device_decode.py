"""JPEG shards decoded on the accelerator: the loader worker only reads bytes, the GPU decodes.

`ShardReader.read_jpeg_many` gives a batch's JPEG bytes (the worker's share: HDF5 reads, no
decoding); `decode_batch` turns them into the uint8 NHWC tensors `read_many` would give, with
`torchvision.io.decode_jpeg` on a list of tensors, which decodes the whole list in one batched call
on CUDA (nvjpeg). On the CPU the same function runs torchvision's CPU decoder, so the code path is
tested without a GPU. Faces of rows without one stay zeros, as in `read_many`. The byte buffers,
parse and has_face may be numpy arrays (`read_jpeg_many`) or CPU tensors (a DataLoader batch).
"""

from __future__ import annotations

import numpy as np
import torch

from deskpro.shards.format import IMAGE_KEYS, ShardError


def _tensor(data, dtype) -> torch.Tensor:
    """A CPU tensor of `data` (numpy arrays are shared, tensors, e.g. pinned ones, kept as they are)."""
    if isinstance(data, torch.Tensor):
        return data
    return torch.from_numpy(np.ascontiguousarray(data, dtype))


def decode_batch(jpeg: dict, face_size: int, device: str | torch.device = "cuda") -> dict[str, torch.Tensor]:
    """`read_jpeg_many` output -> body, face_lr, face_hr uint8 [B,H,W,3], parse uint8 [B,H,W] and
    has_face bool [B], all on `device`; `face_size` is the reader's ``options["face_size"]``."""
    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    out: dict[str, torch.Tensor] = {
        "parse": _tensor(jpeg["parse"], np.uint8).to(device, non_blocking=True),
        "has_face": _tensor(jpeg["has_face"], np.bool_).to(device, non_blocking=True),
    }
    n = len(jpeg["body"])
    for key in IMAGE_KEYS:
        present = [i for i, data in enumerate(jpeg[key]) if data is not None and len(data)]
        if key == "body" and len(present) != n:
            raise ShardError(f"decode_batch: {n - len(present)} body rows hold no JPEG bytes")
        buffers = [_tensor(jpeg[key][i], np.uint8) for i in present]
        if not buffers:  # no face in the whole batch
            out[key] = torch.zeros((n, face_size, face_size, 3), dtype=torch.uint8, device=device)
            continue
        decoded = decode_jpeg(buffers, mode=ImageReadMode.RGB, device=device)
        images = torch.stack(decoded).permute(0, 2, 3, 1)  # CHW -> HWC, as read_many gives
        if len(present) == n:
            out[key] = images.contiguous()
        else:
            full = torch.zeros((n, *images.shape[1:]), dtype=torch.uint8, device=device)
            full[torch.as_tensor(present, device=device)] = images
            out[key] = full
    return out
