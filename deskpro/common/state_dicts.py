"""Compares a checkpoint's tensors with a module's layout and says what differs, in one line.

`layout_problems` finds the missing and unexpected keys and the tensors of the wrong shape;
`check_keys` and `check_shapes` raise an error naming the checkpoint when there are any; `load_checked`
runs both, then a strict ``load_state_dict``. Each loader keeps its own heading (`what`), and a message
template where its wording is relied on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

KEYS_MESSAGE = "{source}: {what}: {n_missing} missing [{missing}], {n_unexpected} unexpected [{unexpected}]"
SHAPES_MESSAGE = "{source}: {what}: [{wrong}]"


def brief_keys(keys: list[str], limit: int = 5, *, quote: bool = False) -> str:
    """The first ``limit`` keys, comma-separated (``repr``-quoted if asked), and how many more there are."""
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(repr(k) if quote else k for k in keys[:limit]) + more


def layout_problems(
    expected: Mapping[str, object], given: Mapping[str, object]
) -> tuple[list[str], list[str], list[str]]:
    """(missing keys, unexpected keys, "key (given shape) != (expected shape)" for the shared keys).

    Values are tensors (anything with ``.shape``); keys are sorted, wrong shapes follow ``given``'s order.
    """
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = [
        f"{k} {tuple(v.shape)} != {tuple(expected[k].shape)}"
        for k, v in given.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    return missing, unexpected, wrong


def check_keys(
    expected: Mapping[str, object],
    given: Mapping[str, object],
    *,
    source: object,
    what: str,
    error: type[Exception] = ValueError,
    message: str = KEYS_MESSAGE,
    limit: int = 5,
    quote: bool = False,
    prefix: str = "",
) -> None:
    """Raise ``error`` when ``given`` lacks keys of ``expected`` or has others.

    ``message`` is formatted with ``source``, ``what``, ``n_missing``, ``missing``, ``n_unexpected`` and
    ``unexpected`` (the key lists via `brief_keys`, each key preceded by ``prefix``).
    """
    missing, unexpected, _ = layout_problems(expected, given)
    if missing or unexpected:
        raise error(
            message.format(
                source=source,
                what=what,
                n_missing=len(missing),
                missing=brief_keys([prefix + k for k in missing], limit, quote=quote),
                n_unexpected=len(unexpected),
                unexpected=brief_keys([prefix + k for k in unexpected], limit, quote=quote),
            )
        )


def check_shapes(
    expected: Mapping[str, object],
    given: Mapping[str, object],
    *,
    source: object,
    what: str,
    error: type[Exception] = ValueError,
    message: str = SHAPES_MESSAGE,
    limit: int = 3,
    quote: bool = False,
    prefix: str = "",
) -> None:
    """Raise ``error`` when a tensor of ``given`` has another shape than in ``expected``.

    ``message`` is formatted with ``source``, ``what``, ``n_wrong`` and ``wrong`` (via `brief_keys`).
    """
    wrong = layout_problems(expected, given)[2]
    if wrong:
        listed = brief_keys([prefix + w for w in wrong], limit, quote=quote)
        raise error(message.format(source=source, what=what, n_wrong=len(wrong), wrong=listed))


def load_checked(
    module: nn.Module,
    state: Mapping[str, object],
    *,
    source: object,
    keys_what: str,
    shapes_what: str,
    **options,
) -> None:
    """`check_keys` (heading ``keys_what``), `check_shapes` (``shapes_what``), then a strict load.

    ``options`` (``error``, ``quote``, ``prefix``) go to both checks.
    """
    expected = module.state_dict()
    check_keys(expected, state, source=source, what=keys_what, **options)
    check_shapes(expected, state, source=source, what=shapes_what, **options)
    module.load_state_dict(state, strict=True)
