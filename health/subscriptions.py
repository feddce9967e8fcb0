"""Server-side interest in a service's status: subscriptions, watchers and their registry.

This module owns :class:`Subscription` (a callback says "look again"; the owner takes the
latest status with :meth:`Subscription.take`), :class:`Watcher` (the same interest as an async
iterator, a thin adapter over a subscription) and :class:`SubscriptionRegistry` (who is
subscribed to which service, and the limits: in total and per owner, e.g. per connection).

Both follow "latest value wins": a change never queues a message, it only wakes the
subscriber, which then re-reads the current status. A slow reader skips intermediate statuses
but always ends on the newest one, memory per subscriber stays constant however fast statuses
change, and a ``set`` never waits. The Health service's Watch streams use subscriptions, so
an idle Watch costs a few small objects rather than a Trio task, a cancel scope and a channel.

A subscription reads statuses only through the public face of the status map
(:class:`StatusSource`); everything here runs in the Trio thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from types import TracebackType
from typing import Protocol

import trio

from .errors import WatcherLimitError
from .status import ServingStatus

__all__ = [
    "DEFAULT_MAX_WATCHERS",
    "DEFAULT_MAX_WATCHERS_PER_OWNER",
    "StatusSource",
    "Subscription",
    "SubscriptionRegistry",
    "Watcher",
]

logger = logging.getLogger("health")

DEFAULT_MAX_WATCHERS = 10_000
DEFAULT_MAX_WATCHERS_PER_OWNER = 100

_SERVICE_UNKNOWN = ServingStatus.SERVICE_UNKNOWN


class StatusSource(Protocol):
    """What a subscription reads: the effective status map (``HealthState``)."""

    def get(self, service: str) -> ServingStatus | None:
        """The effective status of ``service``, None if unknown."""

    @property
    def watches_ended(self) -> bool:
        """Whether watchers should deliver the current status and stop."""


class Subscription:
    """A registered interest in one service's status, delivered through a callback.

    Obtain one from ``HealthState.subscribe``. ``notify()`` is called synchronously, in the
    Trio thread, whenever there may be something new: after an effective change of the
    service, and when ``HealthState.end_watches`` takes effect. The subscriber then calls
    :meth:`take` for the status (whenever it is ready for it: a subscriber that is held back
    simply takes later, and gets the latest status). It is registered until :meth:`close`.
    """

    # As many as there are Watch streams; slots keep each one small.
    __slots__ = ("_closed", "_last", "_notify", "_owner", "_registry", "_service", "_source")

    def __init__(self, source: StatusSource, registry: SubscriptionRegistry, service: str,
                 owner: Hashable | None, notify: Callable[[], object]) -> None:
        """Create an unregistered subscription; use ``HealthState.subscribe()`` instead."""
        self._source = source
        self._registry = registry
        self._service = service
        self._owner = owner
        self._notify = notify
        self._last: ServingStatus | None = None
        self._closed = False

    @property
    def service(self) -> str:
        """The service this subscription follows."""
        return self._service

    @property
    def owner(self) -> Hashable | None:
        """The owner the subscription counts against (e.g. a connection), if any."""
        return self._owner

    @property
    def closed(self) -> bool:
        """Whether the subscription has been unregistered."""
        return self._closed

    @property
    def ending(self) -> bool:
        """Whether ``HealthState.end_watches`` is in force: take the last status, then close."""
        return self._source.watches_ended

    def take(self) -> ServingStatus | None:
        """Return the current status if it differs from the last one taken, else None.

        The first call returns the current status (SERVICE_UNKNOWN for an unknown service).
        Statuses that came and went between two calls are never seen: latest wins.
        """
        if self._closed:
            return None
        current = self._source.get(self._service)
        if current is None:
            current = _SERVICE_UNKNOWN
        if current is self._last:
            return None
        self._last = current
        return current

    def close(self) -> None:
        """Unregister now; ``notify`` is not called again. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._registry.unregister(self)

    def wake(self) -> None:
        """Tell the subscriber to look again (a failure is logged, never raised to ``set``)."""
        if self._closed:
            return
        try:
            self._notify()
        except Exception:
            logger.exception("health subscription callback %r failed for service %r",
                             self._notify, self._service)

    def __repr__(self) -> str:
        """Describe the subscription for debugging."""
        state = "closed" if self._closed else "open"
        return f"<Subscription service={self._service!r} owner={self._owner!r} {state}>"


class SubscriptionRegistry:
    """Who follows which service, with a cap in total and per owner."""

    __slots__ = ("_by_service", "_max_per_owner", "_max_total", "_owner_counts", "_total")

    def __init__(self, max_total: int = DEFAULT_MAX_WATCHERS,
                 max_per_owner: int = DEFAULT_MAX_WATCHERS_PER_OWNER) -> None:
        """An empty registry with the given limits (validated by the caller)."""
        self._max_total = max_total
        self._max_per_owner = max_per_owner
        self._by_service: dict[str, set[Subscription]] = {}
        self._total = 0
        self._owner_counts: dict[Hashable, int] = {}

    @property
    def count(self) -> int:
        """The number of registered subscriptions (watchers included)."""
        return self._total

    @property
    def service_count(self) -> int:
        """The number of services with at least one subscription."""
        return len(self._by_service)

    @property
    def owner_count(self) -> int:
        """The number of owners with at least one subscription."""
        return len(self._owner_counts)

    def count_for(self, owner: Hashable) -> int:
        """The number of registered subscriptions belonging to ``owner``."""
        return self._owner_counts.get(owner, 0)

    def subscribe(self, source: StatusSource, service: str, notify: Callable[[], object],
                  owner: Hashable | None) -> Subscription:
        """Admit, create and register a subscription; raise WatcherLimitError at a limit."""
        if self._total >= self._max_total:
            raise WatcherLimitError(
                f"cannot watch {service!r}: {self._total} watchers already "
                f"registered (limit {self._max_total})"
            )
        if owner is not None:
            owned = self._owner_counts.get(owner, 0)
            if owned >= self._max_per_owner:
                raise WatcherLimitError(
                    f"cannot watch {service!r}: owner {owner!r} already has {owned} "
                    f"watchers (limit {self._max_per_owner})"
                )
            self._owner_counts[owner] = owned + 1
        subscription = Subscription(source, self, service, owner, notify)
        self._by_service.setdefault(service, set()).add(subscription)
        self._total += 1
        return subscription

    def unregister(self, subscription: Subscription) -> None:
        """Drop ``subscription`` from the registry and counts (``Subscription.close`` calls it)."""
        subscriptions = self._by_service.get(subscription.service)
        if subscriptions is None or subscription not in subscriptions:
            return
        subscriptions.discard(subscription)
        if not subscriptions:
            # Keep the registry proportional to live subscriptions, not to every name
            # anyone has ever watched.
            del self._by_service[subscription.service]
        self._total -= 1
        owner = subscription.owner
        if owner is not None:
            remaining = self._owner_counts[owner] - 1
            if remaining:
                self._owner_counts[owner] = remaining
            else:
                del self._owner_counts[owner]

    def wake(self, service: str) -> None:
        """Wake every subscriber of ``service``."""
        subscriptions = self._by_service.get(service)
        if subscriptions:
            # A copy: a callback may close subscriptions while we iterate.
            for subscription in tuple(subscriptions):
                subscription.wake()

    def wake_all(self) -> None:
        """Wake every subscriber of every service."""
        # Copies: a callback may close it (and others) while we iterate.
        for subscriptions in list(self._by_service.values()):
            for subscription in tuple(subscriptions):
                subscription.wake()


class Watcher:
    """A registered interest in one service's status, iterated for its changes.

    Obtain one from ``HealthState.watch``. It is registered from the moment it is created
    until it is closed, so use it as a context manager (or call :meth:`close` /
    :meth:`aclose`)::

        with state.watch("svc") as watcher:
            async for status in watcher:
                ...

    Iteration yields the current status at once (SERVICE_UNKNOWN if the service is
    unknown), then each change, never the same status twice in a row. It ends once the
    watcher is closed, or after delivering the current status once ``end_watches`` has been
    called.
    """

    # An async-iterator face on a Subscription whose callback wakes the iterating task: the
    # registry, the limits and "latest wins" live there.
    __slots__ = ("_receive", "_send", "_sub")

    def __init__(self, source: StatusSource, registry: SubscriptionRegistry, service: str,
                 owner: Hashable | None) -> None:
        """Create and register a watcher; use ``HealthState.watch()`` instead."""
        # One slot is enough: the message means "look again", so a second pending wake-up
        # would carry no extra information.
        self._send, self._receive = trio.open_memory_channel[None](1)
        self._sub = registry.subscribe(source, service, self._wake, owner)

    @property
    def service(self) -> str:
        """The service this watcher follows."""
        return self._sub.service

    @property
    def owner(self) -> Hashable | None:
        """The owner the watcher counts against (e.g. a connection), if any."""
        return self._sub.owner

    @property
    def closed(self) -> bool:
        """Whether the watcher has been unregistered."""
        return self._sub.closed

    def close(self) -> None:
        """Unregister now; a pending or later iteration step then ends. Idempotent."""
        if self._sub.closed:
            return
        self._sub.close()
        # Let a task blocked in __anext__ notice the closure and stop.
        self._wake()

    async def aclose(self) -> None:
        """Async spelling of :meth:`close`, for ``contextlib.aclosing`` and similar."""
        self.close()
        await trio.lowlevel.checkpoint()

    def __enter__(self) -> Watcher:
        """Return the (already registered) watcher."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Unregister the watcher."""
        self.close()

    def __aiter__(self) -> Watcher:
        """Return self; a watcher is its own iterator."""
        return self

    async def __anext__(self) -> ServingStatus:
        """Wait for and return the next status different from the last one returned."""
        # Checkpoint even when a status is ready at once, as Trio expects of every async
        # call: the loop stays cancellable and cannot starve the tasks that change statuses.
        await trio.lowlevel.checkpoint()
        sub = self._sub
        while not sub.closed:
            status = sub.take()
            if status is not None:
                return status
            if sub.ending:
                self.close()
                break
            await self._receive.receive()
        raise StopAsyncIteration

    def _wake(self) -> None:
        """Ask the iterating task, if any, to re-read the status."""
        try:
            self._send.send_nowait(None)
        except trio.WouldBlock:
            # A wake-up is already pending; the reader will see the latest status when it
            # gets to it.
            pass

    def __repr__(self) -> str:
        """Describe the watcher for debugging."""
        state = "closed" if self.closed else "open"
        return f"<Watcher service={self.service!r} owner={self.owner!r} {state}>"
