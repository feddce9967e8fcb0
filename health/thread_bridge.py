"""The Trio run a status map belongs to, and how other threads hand it changes.

This module owns :class:`TrioThreadBridge`. A ``HealthState`` belongs to the thread of one
Trio run. The bridge holds that run's ``trio.lowlevel.TrioToken``: passed in explicitly, or
captured when the state is created inside a run, when a server starts serving it
(``HealthServer.serve_*`` calls ``bind``), or on its first use inside a later run. With it:

* :meth:`TrioThreadBridge.check_thread` lets the plain methods refuse a call from a foreign
  thread while the run is alive (a token comparison on the normal path: ``set`` stays a dict
  write plus wake-ups);
* :meth:`TrioThreadBridge.run` carries a change from any thread into the run with Trio's own
  idiom, ``trio.from_thread.run_sync(change, trio_token=token)``: the change is applied on the
  Trio thread before the call returns, so calls from one thread take effect in order.

Before any run has used the state, and after that run has finished (``RunFinishedError``),
there is no task left that could be watching, and the change is applied in the calling thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import trio

__all__ = ["TrioThreadBridge"]


def _current_token() -> trio.lowlevel.TrioToken | None:
    try:
        return trio.lowlevel.current_trio_token()
    except RuntimeError:
        return None


def _noop() -> None:
    """Do nothing; scheduled only to learn whether a run still accepts callbacks."""


class TrioThreadBridge:
    """The Trio run (token and thread) a status map is bound to."""

    __slots__ = ("_thread", "_token")

    def __init__(self, token: trio.lowlevel.TrioToken | None = None) -> None:
        """Bind to ``token``, else to the current run if there is one, else start unbound."""
        self._token: trio.lowlevel.TrioToken | None = None
        # Known only when bound from inside the run (its thread is then the current one).
        self._thread: int | None = None
        token = token if token is not None else _current_token()
        if token is not None:
            self.bind(token)

    def bind(self, token: trio.lowlevel.TrioToken | None = None) -> None:
        """Bind to the run of ``token`` (default: the current run)."""
        current = _current_token()
        if token is None:
            if current is None:
                raise RuntimeError("bind_trio() without a token must be called inside trio.run()")
            token = current
        self._token = token
        self._thread = threading.get_ident() if current is token else None

    def check_thread(self, what: str) -> None:
        """Bind to the current run, or refuse ``what`` from outside the bound run's thread."""
        current = _current_token()
        if current is not None:
            if current is not self._token:
                # First use in this run (or in a new run after an old one ended): changes
                # from other threads must now be delivered here.
                self._token = current
                self._thread = threading.get_ident()
            return
        token, thread = self._token, self._thread
        if token is None or thread is None or thread == threading.get_ident():
            return
        # Only on this foreign-thread path: is the bound run still there?
        try:
            token.run_sync_soon(_noop)
        except trio.RunFinishedError:
            self._forget()
            return
        raise RuntimeError(
            f"{what} called from a thread other than the Trio thread it is bound to; "
            "use set_threadsafe()/remove_threadsafe() from other threads"
        )

    def run(self, change: Callable[[], object]) -> None:
        """Apply ``change`` on the bound Trio thread (here if unbound or the run is over)."""
        token = self._token
        current = _current_token()
        if token is not None and current is not token:
            try:
                if current is None:
                    trio.from_thread.run_sync(change, trio_token=token)
                else:
                    # A thread running another Trio loop must not block on ours.
                    token.run_sync_soon(change)
                return
            except trio.RunFinishedError:
                # The run is gone, and with it every task that could be watching;
                # applying here is the only way to keep the change.
                self._forget()
        change()

    def _forget(self) -> None:
        self._token = None
        self._thread = None
