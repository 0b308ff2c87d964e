"""What a parsing network expects as input: channel order, normalisation, output stride.

Kept apart from the networks and the Parser so that both can import it (no cycle).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InputSpec:
    """How a parsing network wants its input and where its logits come out.

    bgr: channel order of the input; mean/std: per-channel stats in that order (on [0, 1] values);
    output_stride: logits are at 1/output_stride of the input (upsampled to the square by the Parser);
    size_multiple: the square side must be a multiple of this; input_size: preferred side, or None.
    """

    bgr: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    output_stride: int = 1
    size_multiple: int = 1
    input_size: int | None = None


SCHP_SPEC = InputSpec(bgr=True, mean=(0.406, 0.456, 0.485), std=(0.225, 0.224, 0.229), output_stride=4)
