"""A registry of callbacks: add one and get its remover, call them all, log their failures.

This module owns :class:`Callbacks`, used for the status map's listeners and the check
runner's result listeners. Callbacks are keyed by registration number, so one callable may be
added twice and each remover takes away only its own registration; they are called in
registration order on a copy, so a callback may add or remove callbacks while being called;
an exception from one is logged (with the arguments it was given) and never
reaches the code that reported the event, nor stops the other callbacks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Generic, ParamSpec

__all__ = ["Callbacks"]

P = ParamSpec("P")


class Callbacks(Generic[P]):
    """Callbacks taking ``P``, failures logged to ``logger`` as ``what %r failed ...``."""

    __slots__ = ("_callbacks", "_logger", "_next", "_what")

    def __init__(self, logger: logging.Logger, what: str) -> None:
        """An empty registry; ``what`` names a callback in log lines ("status listener")."""
        self._logger = logger
        self._what = what
        self._callbacks: dict[int, Callable[P, object]] = {}
        self._next = 0

    def __bool__(self) -> bool:
        """Whether any callback is registered."""
        return bool(self._callbacks)

    def add(self, callback: Callable[P, object]) -> Callable[[], None]:
        """Register ``callback``; return a function that removes it (idempotent)."""
        key = self._next
        self._next += 1
        self._callbacks[key] = callback

        def remove() -> None:
            self._callbacks.pop(key, None)

        return remove

    def call(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Call every callback with the arguments; a failure is logged with them."""
        for callback in list(self._callbacks.values()):
            try:
                callback(*args, **kwargs)
            except Exception:
                self._logger.exception("%s %r failed with arguments %r", self._what, callback,
                                       args)
