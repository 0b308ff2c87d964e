"""Optional dependencies: import one, or fail with one line naming the extra that installs it."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the pip extra that installs it."""


def require(module: str, extra: str, purpose: str | None = None) -> ModuleType:
    """`module` imported, or MissingExtraError: "... needs <module>: pip install 'deskpro[extra]'".

    Only a missing `module` itself (or its top-level package) is turned into this error; a module that
    is installed but fails on a missing dependency of its own raises the same error naming that one,
    since installing the extra is the fix in both cases.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or module
        what = f"{purpose} needs" if purpose else "this command needs"
        raise MissingExtraError(
            f"{what} the Python module {missing!r}, which is not installed: pip install 'deskpro[{extra}]'"
        ) from None
