"""A segmentation_models_pytorch network as a human parser: build from "smp:ARCH:ENCODER", load user weights.

The returned module carries `input_spec` (RGB, ImageNet stats, full-resolution logits) and `num_classes`,
so `deskpro.pipeline.parsing.Parser` runs it exactly like SCHP.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from deskpro.common.state_dicts import check_keys, check_shapes
from deskpro.common.torch_utils import strip_prefix, torch_load_weights, unwrap_state_dict
from deskpro.config import IMAGENET_MEAN, IMAGENET_STD
from deskpro.pipeline.nets.specs import InputSpec

DEFAULT_INPUT_SIZE = 512
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
_KEYS_MESSAGE = (
    "{source}: {what}: {n_missing} missing keys (e.g. [{missing}]), "
    "{n_unexpected} unexpected keys (e.g. [{unexpected}])"
)


def parse_spec(spec: str) -> tuple[str, str]:
    """("ARCH", "ENCODER") from "smp:ARCH:ENCODER"; ValueError with an example otherwise."""
    parts = spec.split(":") if isinstance(spec, str) else []
    if len(parts) != 3 or parts[0] != "smp" or not parts[1] or not parts[2]:
        raise ValueError(f"bad parser spec {spec!r}: expected 'smp:ARCH:ENCODER', e.g. 'smp:Unet:resnet34'")
    return parts[1], parts[2]


def build(
    spec: str,
    num_classes: int,
    *,
    input_size: int = DEFAULT_INPUT_SIZE,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> nn.Module:
    """An untrained smp model for `spec` with `num_classes` outputs, tagged with its InputSpec (eval mode)."""
    import segmentation_models_pytorch as smp  # heavy import: only when an smp parser is asked for

    arch, encoder = parse_spec(spec)
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    try:
        net = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, classes=num_classes)
    except (KeyError, ValueError) as exc:
        message = exc.args[0] if exc.args else exc
        raise ValueError(f"bad parser spec {spec!r}: {message}") from exc
    stride = int(getattr(getattr(net, "encoder", None), "output_stride", 32))
    net.input_spec = InputSpec(
        bgr=False, mean=mean, std=std, output_stride=1, size_multiple=stride, input_size=input_size
    )
    net.num_classes = num_classes
    return net.eval()


def load(spec: str, path: str | Path, num_classes: int, **spec_options: object) -> nn.Module:
    """Build `spec` and load a user checkpoint (weights only; bare or wrapped, `module.` or not), eval mode.

    spec_options (input_size, mean, std) go to `build`.
    """
    net = build(spec, num_classes, **spec_options)
    checkpoint = torch_load_weights(path, what=f"segmentation model ({spec})")
    state = strip_prefix(unwrap_state_dict(checkpoint, path, WRAPPER_KEYS), "module.")
    expected, classes = net.state_dict(), f"with {num_classes} classes"
    check_keys(
        expected,
        state,
        source=path,
        what=f"not a {spec} checkpoint {classes}",
        message=_KEYS_MESSAGE,
        quote=True,
    )
    check_shapes(expected, state, source=path, what=f"wrong tensor shapes for {spec} {classes}", quote=True)
    net.load_state_dict(state, strict=True)
    return net.eval()


def save(net: nn.Module, path: str | Path) -> None:
    """Write `net`'s state dict (the format `load` reads) to `path`."""
    torch.save(net.state_dict(), Path(path))
