"""A pool of backends that hands out only the healthy ones, round robin.

``open_pool(addresses)`` opens one channel and one ``HealthWatcher`` (gRFC A17) per address and
keeps the healthy set current. Choosing:

* ``pick()`` fails fast: it returns the next healthy address round robin, or raises
  ``NoHealthyBackendError`` at once when none is healthy. A caller serving a request usually
  prefers an immediate, explicit failure over a request that hangs on a dead fleet.
* ``await pick_wait()`` waits until some backend is healthy (bound it with a Trio cancel scope);
  for start-up, where backends are expected to come up.

Changes of the healthy set are announced three ways, none of which queues: an ``on_change``
callback, ``await wait_changed(version)``, and ``changes()``, an async iterator that yields the
current healthy set after each change (a slow reader skips intermediate sets, never the latest).
A backend whose server does not implement health checking counts as healthy (A17).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import trio

from wire import Channel, open_channel

from .errors import HealthError
from .watch import Backoff, HealthReport, HealthWatcher

__all__ = ["ChannelOpener", "HealthyPool", "NoHealthyBackendError", "PoolChanges", "open_pool"]


class NoHealthyBackendError(HealthError):
    """``pick()`` found no healthy backend."""


class HealthyPool:
    """The healthy subset of a fixed list of backends; create it with ``open_pool``."""

    def __init__(self, addresses: Sequence[str],
                 on_change: Callable[[tuple[str, ...]], None] | None = None) -> None:
        if not addresses:
            raise ValueError("a pool needs at least one address")
        if len(set(addresses)) != len(addresses):
            raise ValueError("pool addresses must be distinct")
        self.addresses = tuple(addresses)
        self.watchers: dict[str, HealthWatcher] = {}
        self._on_change = on_change
        self._healthy: tuple[str, ...] = ()
        self._next = 0
        self._version = 0
        self._changed = trio.Event()

    @property
    def healthy(self) -> tuple[str, ...]:
        """The healthy addresses, in the order they were given."""
        return self._healthy

    @property
    def version(self) -> int:
        """Increases by one on every change of the healthy set."""
        return self._version

    def report(self, address: str) -> HealthReport:
        """What the watcher of ``address`` currently believes."""
        return self.watchers[address].report

    def pick(self) -> str:
        """The next healthy address, round robin; raise NoHealthyBackendError if none."""
        healthy = self._healthy
        if not healthy:
            raise NoHealthyBackendError(
                f"none of the {len(self.addresses)} backends is healthy")
        address = healthy[self._next % len(healthy)]
        self._next = (self._next + 1) % len(healthy)
        return address

    async def pick_wait(self) -> str:
        """Like ``pick()``, but wait for a healthy backend instead of failing."""
        while not self._healthy:  # bounded: each wake-up is a change or a cancellation
            await self._changed.wait()
        return self.pick()

    async def wait_changed(self, since: int) -> tuple[str, ...]:
        """Wait until ``version`` differs from ``since``; return the healthy set then."""
        while self._version == since:  # bounded: each wake-up is a change or a cancellation
            await self._changed.wait()
        return self._healthy

    def changes(self) -> PoolChanges:
        """Iterate the healthy set now and after every change (latest only, never queued)."""
        return PoolChanges(self)

    def channel(self, address: str) -> Channel:
        """The open channel to ``address``, for the calls the caller sends it."""
        return self.watchers[address].channel

    def _update(self, _report: HealthReport | None = None) -> None:
        healthy = tuple(a for a in self.addresses
                        if a in self.watchers and self.watchers[a].healthy)
        if healthy == self._healthy:
            return
        self._healthy = healthy
        self._next = self._next % len(healthy) if healthy else 0
        self._version += 1
        self._changed.set()
        self._changed = trio.Event()
        if self._on_change is not None:
            self._on_change(healthy)


class PoolChanges:
    """Async iterator over a pool's healthy sets: the current one first, then each change."""

    def __init__(self, pool: HealthyPool) -> None:
        self._pool = pool
        self._seen: int | None = None

    def __aiter__(self) -> PoolChanges:
        return self

    async def __anext__(self) -> tuple[str, ...]:
        pool = self._pool
        if self._seen is None:
            await trio.lowlevel.checkpoint()
        else:
            await pool.wait_changed(self._seen)
        self._seen = pool.version
        return pool.healthy


ChannelOpener = Callable[[str], AbstractAsyncContextManager[Channel]]


@asynccontextmanager
async def open_pool(
    addresses: Sequence[str],
    *,
    service: str = "",
    on_change: Callable[[tuple[str, ...]], None] | None = None,
    backoff: Backoff | None = None,
    rng: random.Random | None = None,
    connect_timeout: float = 20.0,
    open_channel_for: ChannelOpener | None = None,
) -> AsyncIterator[HealthyPool]:
    """Watch ``service`` on every address; yield the pool; stop watching on exit.

    ``open_channel_for(address)`` returns an async context manager yielding a
    ``wire.Channel`` (default: ``wire.open_channel(address, connect_timeout=...)``); tests
    use it to connect over memory streams.
    """
    pool = HealthyPool(addresses, on_change)
    rng = rng or random.Random()

    def opener(address: str) -> AbstractAsyncContextManager[Channel]:
        if open_channel_for is not None:
            return open_channel_for(address)
        return open_channel(address, connect_timeout=connect_timeout)

    async def watch(address: str, *, task_status: trio.TaskStatus[None]) -> None:
        async with opener(address) as channel:
            watcher = HealthWatcher(channel, service, backoff=backoff, rng=rng,
                                    on_change=pool._update)
            pool.watchers[address] = watcher
            await watcher.run(task_status=task_status)
            # Health checking is off for this backend (UNIMPLEMENTED): it stays healthy and
            # its channel stays open for the requests the caller will send it.
            await trio.sleep_forever()

    error: Exception | None = None
    async with trio.open_nursery() as nursery:
        for address in pool.addresses:
            await nursery.start(watch, address)
        try:
            yield pool
        except Exception as exc:
            # Re-raised outside the nursery so callers see it rather than an ExceptionGroup.
            error = exc
        finally:
            nursery.cancel_scope.cancel()
    if error is not None:
        raise error
