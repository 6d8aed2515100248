"""Names that moved to another public module stay importable from the old one for a release."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Collection
from typing import Any


def moved(old: str, new: str, names: Collection[str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``old`` that finds ``names`` in ``new``, with a warning.

    The DeprecationWarning names the import to write instead.
    """

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        warnings.warn(
            f"{old}.{name} has moved: use 'from {new} import {name}'",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(new), name)

    return __getattr__
