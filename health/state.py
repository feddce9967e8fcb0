"""The health status map: what each service's health is, and who is watching it.

This module owns :class:`HealthState`, the single source of truth a health
server answers Check, List and Watch from, and :class:`Watcher`, the per-call
subscription a Watch stream iterates. It does no network I/O; the server turns
its answers into gRPC responses.

Two layers of status are kept per service. The *configured* status is what
the application last set. The *effective* status is what clients are told:
the configured one normally, NOT_SERVING for everything while the state is
draining (between :meth:`HealthState.shutdown` and :meth:`HealthState.resume`).
Watchers and listeners only ever see effective changes.

Watchers follow the "latest value wins" model: a change does not queue a
message, it only wakes the watcher (through a one-slot Trio memory channel),
which then re-reads the current status. A slow reader therefore skips
intermediate statuses but always ends on the newest one, memory per watcher
stays constant however fast statuses change, and ``set`` never waits.

:class:`Subscription` is the same interest without a task: instead of being
iterated, it calls a plain callback ("look again") synchronously from the
change, and its owner takes the latest status with :meth:`Subscription.take`.
The health service's Watch streams use it, so that an idle Watch costs a few
small objects rather than a Trio task, its cancel scope and a memory channel.
Watchers and subscriptions share one registry and the same limits.

Everything except the ``*_threadsafe`` methods must run in the Trio thread.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Hashable, Mapping
from types import TracebackType

import trio

from health.errors import InvalidStatusError, ServiceNameError, WatcherLimitError
from health.status import ServingStatus

__all__ = [
    "DEFAULT_MAX_SERVICE_NAME_BYTES",
    "DEFAULT_MAX_WATCHERS",
    "DEFAULT_MAX_WATCHERS_PER_OWNER",
    "HealthState",
    "StatusListener",
    "Subscription",
    "Watcher",
]

logger = logging.getLogger("health")

# Real service names are dotted protobuf names, well under 100 bytes. The cap
# bounds what one request can make us hash and store, and is far above any
# legitimate name.
DEFAULT_MAX_SERVICE_NAME_BYTES = 1024
DEFAULT_MAX_WATCHERS = 10_000
DEFAULT_MAX_WATCHERS_PER_OWNER = 100

StatusListener = Callable[[str, "ServingStatus | None", "ServingStatus | None"], None]
"""Called as ``listener(service, old, new)``; ``None`` means the service is absent."""

_NOT_SERVING = ServingStatus.NOT_SERVING
_SERVICE_UNKNOWN = ServingStatus.SERVICE_UNKNOWN


def _settable_status(status: object) -> ServingStatus:
    """Return ``status`` as a ServingStatus that ``set`` accepts, or raise InvalidStatusError."""
    # bool is an int subclass; True meaning SERVING would hide a bug.
    if isinstance(status, bool) or not isinstance(status, int):
        raise InvalidStatusError(f"status must be a ServingStatus, got {status!r}")
    try:
        value = ServingStatus(status)
    except ValueError:
        raise InvalidStatusError(f"not a serving status: {status!r}") from None
    if value is _SERVICE_UNKNOWN:
        raise InvalidStatusError(
            "SERVICE_UNKNOWN cannot be set: Watch reports it for services the server "
            "does not know; call remove() to make a service unknown"
        )
    return value


def _noop() -> None:
    """Do nothing; used to probe whether a Trio run still accepts callbacks."""


class Watcher:
    """A registered interest in one service's status, iterated for its changes.

    Obtain one from :meth:`HealthState.watch`. It is registered from the
    moment it is created until it is closed, so use it as a context manager
    (or call :meth:`close` / :meth:`aclose`)::

        with state.watch("svc") as watcher:
            async for status in watcher:
                ...

    Iteration yields the current status at once (SERVICE_UNKNOWN if the
    service is unknown), then each change, never the same status twice in a
    row. It ends once the watcher is closed, or after delivering the current
    status once :meth:`HealthState.end_watches` has been called.
    """

    # An async-iterator face on a Subscription whose callback wakes the
    # iterating task: the registry, the limits and "latest wins" live there.
    __slots__ = ("_receive", "_send", "_sub")

    def __init__(self, state: HealthState, service: str, owner: Hashable | None) -> None:
        """Create an unregistered watcher; use HealthState.watch() instead."""
        # One slot is enough: the message means "look again", so a second
        # pending wake-up would carry no extra information.
        self._send, self._receive = trio.open_memory_channel[None](1)
        self._sub = Subscription(state, service, owner, self._wake)

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
        # Checkpoint even when a status is ready at once, as Trio expects of
        # every async call: the loop stays cancellable and cannot starve the
        # tasks that change statuses.
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
            # A wake-up is already pending; the reader will see the latest
            # status when it gets to it.
            pass

    def __repr__(self) -> str:
        """Describe the watcher for debugging."""
        state = "closed" if self.closed else "open"
        return f"<Watcher service={self.service!r} owner={self.owner!r} {state}>"


class Subscription:
    """A registered interest in one service's status, delivered through a callback.

    Obtain one from :meth:`HealthState.subscribe`. ``notify()`` is called
    synchronously, in the Trio thread, whenever there may be something new:
    after an effective change of the service, and when
    :meth:`HealthState.end_watches` takes effect. The subscriber then calls
    :meth:`take` for the status (whenever it is ready for it: a subscriber
    that is held back simply takes later, and gets the latest status). It is
    registered until :meth:`close`.
    """

    # As many as there are Watch streams; slots keep each one small.
    __slots__ = ("_closed", "_last", "_notify", "_owner", "_service", "_state")

    def __init__(self, state: HealthState, service: str, owner: Hashable | None,
                 notify: Callable[[], object]) -> None:
        """Create an unregistered subscription; use HealthState.subscribe() instead."""
        self._state = state
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
        """Whether :meth:`HealthState.end_watches` is in force: take the last status, close."""
        return self._state._watches_ended

    def take(self) -> ServingStatus | None:
        """Return the current status if it differs from the last one taken, else None.

        The first call returns the current status (SERVICE_UNKNOWN for an
        unknown service). Statuses that came and went between two calls are
        never seen: latest wins.
        """
        if self._closed:
            return None
        current = self._state._effective.get(self._service, _SERVICE_UNKNOWN)
        if current is self._last:
            return None
        self._last = current
        return current

    def close(self) -> None:
        """Unregister now; ``notify`` is not called again. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._state._unregister(self)

    def _wake(self) -> None:
        """Tell the subscriber to look again (a failure is logged, not raised to ``set``)."""
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


class HealthState:
    """The status of every service a health server knows, plus its watchers.

    ``""`` is the health of the server as a whole and starts SERVING; other
    services are unknown until set. ``initial`` may override ``""`` and add
    services. Service names must encode to at most ``max_service_name_bytes``
    bytes of UTF-8.

    All methods must be called from the Trio thread (or before any Trio run
    has touched the object), except :meth:`set_threadsafe` and
    :meth:`remove_threadsafe`, which any thread may call. The state binds to
    the Trio run it is first used in; calling a plain method from another
    thread while that run is alive raises RuntimeError.
    """

    def __init__(
        self,
        initial: Mapping[str, ServingStatus] | None = None,
        *,
        max_service_name_bytes: int = DEFAULT_MAX_SERVICE_NAME_BYTES,
        max_watchers: int = DEFAULT_MAX_WATCHERS,
        max_watchers_per_owner: int = DEFAULT_MAX_WATCHERS_PER_OWNER,
        trio_token: trio.lowlevel.TrioToken | None = None,
    ) -> None:
        """Create the map with ``""`` SERVING, then apply ``initial``."""
        for name, limit, minimum in (
            ("max_service_name_bytes", max_service_name_bytes, 1),
            ("max_watchers", max_watchers, 0),
            ("max_watchers_per_owner", max_watchers_per_owner, 0),
        ):
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {limit!r}")
        self._max_name_bytes = max_service_name_bytes
        self._max_watchers = max_watchers
        self._max_per_owner = max_watchers_per_owner

        # What the application asked for, per service.
        self._configured: dict[str, ServingStatus] = {"": ServingStatus.SERVING}
        # What clients are told; kept separately so every change to it can be
        # detected and published exactly once, even when listeners re-enter.
        self._effective: dict[str, ServingStatus] = {}
        self._draining = False
        self._watches_ended = False

        # Watchers and subscriptions alike, by service.
        self._watchers: dict[str, set[Subscription]] = {}
        self._watcher_total = 0
        self._owner_counts: dict[Hashable, int] = {}
        # Keyed by registration number so one callable can be added twice and
        # each remover takes away only its own registration.
        self._listeners: dict[int, StatusListener] = {}
        self._next_listener_id = 0

        self._trio_token: trio.lowlevel.TrioToken | None = None
        self._trio_thread: int | None = None
        if trio_token is not None:
            self.bind_trio(trio_token)

        if initial is not None:
            for service, status in initial.items():
                self._check_name(service)
                self._configured[service] = _settable_status(status)
        self._effective.update(self._configured)

    # ----------------------------------------------------------------- reads

    def get(self, service: str) -> ServingStatus | None:
        """Return the effective status of ``service``, or None if it is unknown."""
        return self._effective.get(service)

    def snapshot(self) -> dict[str, ServingStatus]:
        """Return a copy of every known service's effective status, ``""`` included."""
        return dict(self._effective)

    def __len__(self) -> int:
        """Return the number of known services."""
        return len(self._effective)

    def __contains__(self, service: object) -> bool:
        """Return whether ``service`` is known."""
        return service in self._effective

    @property
    def draining(self) -> bool:
        """Whether :meth:`shutdown` is in force (everything reported NOT_SERVING)."""
        return self._draining

    @property
    def watches_ended(self) -> bool:
        """Whether :meth:`end_watches` is in force."""
        return self._watches_ended

    @property
    def max_service_name_bytes(self) -> int:
        """The longest accepted service name, in bytes of UTF-8."""
        return self._max_name_bytes

    @property
    def watcher_count(self) -> int:
        """The number of registered watchers."""
        return self._watcher_total

    def watcher_count_for(self, owner: Hashable) -> int:
        """Return the number of registered watchers belonging to ``owner``."""
        return self._owner_counts.get(owner, 0)

    # -------------------------------------------------------------- changes

    def set(self, service: str, status: ServingStatus) -> None:
        """Record ``status`` for ``service`` and publish it if it changes what clients see."""
        self._check_name(service)
        value = _settable_status(status)
        self._check_thread("set")
        self._apply_set(service, value)

    def remove(self, service: str) -> bool:
        """Forget ``service`` (Check: NOT_FOUND, Watch: SERVICE_UNKNOWN); return whether known."""
        self._check_thread("remove")
        return self._apply_remove(service)

    def set_threadsafe(self, service: str, status: ServingStatus) -> None:
        """Like :meth:`set` but callable from any thread; it takes effect on the Trio thread.

        Arguments are validated in the calling thread, so errors raise here.
        Calls from one thread take effect in the order they were made. Before
        any Trio run has used the state, or after that run has finished, the
        change is applied in the calling thread at once.
        """
        self._check_name(service)
        value = _settable_status(status)
        self._dispatch(functools.partial(self._apply_set, service, value))

    def remove_threadsafe(self, service: str) -> None:
        """Like :meth:`remove` but callable from any thread; it takes effect on the Trio thread."""
        self._dispatch(functools.partial(self._apply_remove, service))

    def shutdown(self) -> None:
        """Report every service as NOT_SERVING until :meth:`resume`; later sets are remembered."""
        self._check_thread("shutdown")
        if self._draining:
            return
        self._draining = True
        for service in list(self._effective):
            self._sync(service)

    def resume(self) -> None:
        """Undo :meth:`shutdown` and :meth:`end_watches`; publish each configured status."""
        self._check_thread("resume")
        self._watches_ended = False
        if not self._draining:
            return
        self._draining = False
        for service in list(self._configured):
            self._sync(service)

    def end_watches(self) -> None:
        """Make every watcher, current or new, stop after delivering the current status.

        Subscriptions are notified and see :attr:`Subscription.ending`. A
        server calls this during graceful shutdown to finish Watch streams
        cleanly. It stays in force until :meth:`resume`.
        """
        self._check_thread("end_watches")
        self._watches_ended = True
        # Copies: a subscription's callback may close it (and others) while we iterate.
        for watchers in list(self._watchers.values()):
            for watcher in tuple(watchers):
                watcher._wake()

    def add_listener(self, listener: StatusListener) -> Callable[[], None]:
        """Call ``listener(service, old, new)`` after each effective change; return a remover.

        Listeners run synchronously in the Trio thread, after watchers have
        been woken. An exception from a listener is logged to the ``health``
        logger and otherwise ignored.
        """
        key = self._next_listener_id
        self._next_listener_id += 1
        self._listeners[key] = listener

        def remove_listener() -> None:
            self._listeners.pop(key, None)

        return remove_listener

    # -------------------------------------------------------------- watching

    def watch(self, service: str, *, owner: Hashable | None = None) -> Watcher:
        """Register and return a :class:`Watcher` for ``service``.

        ``owner`` (for example the connection the Watch call arrived on) is
        what ``max_watchers_per_owner`` counts against; None counts only
        towards the total. Raises WatcherLimitError when a limit is reached.
        """
        self._check_admission(service, owner, "watch")
        watcher = Watcher(self, service, owner)
        self._register(watcher._sub)
        return watcher

    def subscribe(self, service: str, notify: Callable[[], object], *,
                  owner: Hashable | None = None) -> Subscription:
        """Register and return a :class:`Subscription` for ``service``.

        ``notify()`` is called (synchronously, in the Trio thread) after each
        effective change of ``service`` and when :meth:`end_watches` takes
        effect; it is not called for the current status, which the caller
        takes with :meth:`Subscription.take` when it is ready. Limits and
        ``owner`` work as for :meth:`watch` (the two share the counts); raises
        WatcherLimitError when a limit is reached.
        """
        self._check_admission(service, owner, "watch")
        subscription = Subscription(self, service, owner, notify)
        self._register(subscription)
        return subscription

    def _check_admission(self, service: str, owner: Hashable | None, method: str) -> None:
        """Validate the name and thread, and raise WatcherLimitError at a limit."""
        self._check_name(service)
        self._check_thread(method)
        if self._watcher_total >= self._max_watchers:
            raise WatcherLimitError(
                f"cannot watch {service!r}: {self._watcher_total} watchers already "
                f"registered (limit {self._max_watchers})"
            )
        if owner is not None:
            owned = self._owner_counts.get(owner, 0)
            if owned >= self._max_per_owner:
                raise WatcherLimitError(
                    f"cannot watch {service!r}: owner {owner!r} already has {owned} "
                    f"watchers (limit {self._max_per_owner})"
                )

    def _register(self, watcher: Subscription) -> None:
        """Add an admitted watcher or subscription to the registry and the counts."""
        self._watchers.setdefault(watcher.service, set()).add(watcher)
        self._watcher_total += 1
        owner = watcher.owner
        if owner is not None:
            self._owner_counts[owner] = self._owner_counts.get(owner, 0) + 1

    def _unregister(self, watcher: Subscription) -> None:
        """Drop a watcher or subscription from the registry and counts; called by close()."""
        watchers = self._watchers.get(watcher.service)
        if watchers is None or watcher not in watchers:
            return
        watchers.discard(watcher)
        if not watchers:
            # Keep the registry proportional to live watchers, not to every
            # name anyone has ever watched.
            del self._watchers[watcher.service]
        self._watcher_total -= 1
        owner = watcher.owner
        if owner is not None:
            remaining = self._owner_counts[owner] - 1
            if remaining:
                self._owner_counts[owner] = remaining
            else:
                del self._owner_counts[owner]

    # ---------------------------------------------------------- Trio binding

    def bind_trio(self, token: trio.lowlevel.TrioToken | None = None) -> None:
        """Bind to the Trio run that ``*_threadsafe`` calls hand changes to (default: current)."""
        try:
            current: trio.lowlevel.TrioToken | None = trio.lowlevel.current_trio_token()
        except RuntimeError:
            current = None
        if token is None:
            if current is None:
                raise RuntimeError("bind_trio() without a token must be called inside trio.run()")
            token = current
        self._trio_token = token
        # The thread is only known when we are inside the run being bound.
        self._trio_thread = threading.get_ident() if current is token else None

    def _check_thread(self, method: str) -> None:
        """Bind to the current run, or refuse a call from outside the bound run's thread."""
        try:
            current = trio.lowlevel.current_trio_token()
        except RuntimeError:
            current = None
        if current is not None:
            if current is not self._trio_token:
                # First use in this run (or in a new run after an old one
                # ended): *_threadsafe calls must now be delivered here.
                self._trio_token = current
                self._trio_thread = threading.get_ident()
            return
        bound_thread = self._trio_thread
        if bound_thread is None or bound_thread == threading.get_ident():
            return
        if not self._bound_run_alive():
            return
        raise RuntimeError(
            f"HealthState.{method}() called from a thread other than the Trio thread "
            "it is bound to; use set_threadsafe()/remove_threadsafe() from other threads"
        )

    def _bound_run_alive(self) -> bool:
        """Return whether the bound Trio run still exists; forget it if it does not."""
        token = self._trio_token
        if token is None:
            return False
        try:
            token.run_sync_soon(_noop)
        except trio.RunFinishedError:
            self._trio_token = None
            self._trio_thread = None
            return False
        return True

    def _dispatch(self, change: Callable[[], object]) -> None:
        """Run ``change`` on the bound Trio thread, or here if that is safe."""
        token = self._trio_token
        if token is not None:
            try:
                in_run = trio.lowlevel.current_trio_token() is token
            except RuntimeError:
                in_run = False
            if not in_run:
                try:
                    token.run_sync_soon(change)
                    return
                except trio.RunFinishedError:
                    # The run is gone, and with it every task that could be
                    # watching; applying here is the only way to keep the
                    # change.
                    self._trio_token = None
                    self._trio_thread = None
        change()

    # -------------------------------------------------------------- internals

    def _check_name(self, service: object) -> None:
        """Raise unless ``service`` is a usable service name."""
        if not isinstance(service, str):
            raise TypeError(f"service name must be str, got {type(service).__name__}")
        try:
            size = len(service.encode("utf-8"))
        except UnicodeEncodeError:
            # Lone surrogates cannot be sent in a protobuf string field.
            raise ServiceNameError(f"service name is not valid UTF-8: {service!r}") from None
        if size > self._max_name_bytes:
            raise ServiceNameError(
                f"service name is {size} bytes of UTF-8; the limit is {self._max_name_bytes}"
            )

    def _apply_set(self, service: str, status: ServingStatus) -> None:
        """Store an already validated status and publish any effective change."""
        self._configured[service] = status
        self._sync(service)

    def _apply_remove(self, service: str) -> bool:
        """Forget a service and publish that it is gone; return whether it was known."""
        if self._configured.pop(service, None) is None:
            return False
        self._sync(service)
        return True

    def _sync(self, service: str) -> None:
        """Bring the effective status of ``service`` in line with the configuration."""
        target = self._configured.get(service)
        if target is not None and self._draining:
            target = _NOT_SERVING
        old = self._effective.get(service)
        if old is target:
            return
        if target is None:
            del self._effective[service]
        else:
            self._effective[service] = target
        watchers = self._watchers.get(service)
        if watchers:
            # A copy: a subscription's callback may close subscriptions while we iterate.
            for watcher in tuple(watchers):
                watcher._wake()
        if self._listeners:
            self._notify(service, old, target)

    def _notify(self, service: str, old: ServingStatus | None, new: ServingStatus | None) -> None:
        """Call every listener, logging rather than propagating their failures."""
        # Copy, so a listener may add or remove listeners while being called.
        for listener in list(self._listeners.values()):
            try:
                listener(service, old, new)
            except Exception:
                logger.exception(
                    "health status listener %r failed for service %r (%s -> %s)",
                    listener,
                    service,
                    old,
                    new,
                )
