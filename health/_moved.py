"""Old names that moved to another module: resolved on first use, with a DeprecationWarning.

This module owns :func:`moved_names`, which builds the module-level ``__getattr__`` (PEP 562)
of a module whose names moved: the new home is imported only when an old name is used, so the
old module does not load what it no longer needs.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterable

__all__ = ["moved_names"]


def moved_names(old: str, new: str, names: Iterable[str]) -> Callable[[str], object]:
    """A ``__getattr__`` for module ``old`` that finds ``names`` in module ``new``, warning."""
    moved = frozenset(names)

    def __getattr__(name: str) -> object:
        if name in moved:
            warnings.warn(f"{old}.{name} moved to {new}.{name}", DeprecationWarning,
                          stacklevel=2)
            return getattr(importlib.import_module(new), name)
        raise AttributeError(f"module {old!r} has no attribute {name!r}")

    return __getattr__
