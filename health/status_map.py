"""The health status map: what each service's health is, as configured and as published.

This module owns :class:`HealthState`, the single source of truth a health server answers
Check, List and Watch from. It does no network I/O; the service turns its answers into gRPC
responses, :mod:`health.subscriptions` holds who is watching, and
:mod:`health.thread_bridge` carries changes in from other threads.

Two layers of status are kept per service. The *configured* status is what the application
last set. The *effective* status is what clients are told: the configured one normally,
NOT_SERVING for everything while the state is draining (between :meth:`HealthState.shutdown`
and :meth:`HealthState.resume`). Subscribers and listeners only ever see effective changes,
each exactly once, even when a listener re-enters.

Everything except the ``*_threadsafe`` methods must run in the Trio thread.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Hashable, Mapping

import trio

from .callbacks import Callbacks
from .errors import InvalidStatusError, ServiceNameError
from .status import ServingStatus
from .subscriptions import (
    DEFAULT_MAX_WATCHERS,
    DEFAULT_MAX_WATCHERS_PER_OWNER,
    Subscription,
    SubscriptionRegistry,
    Watcher,
)
from .thread_bridge import TrioThreadBridge

__all__ = [
    "DEFAULT_MAX_SERVICE_NAME_BYTES",
    "DEFAULT_MAX_WATCHERS",
    "DEFAULT_MAX_WATCHERS_PER_OWNER",
    "HealthState",
    "StatusListener",
]

logger = logging.getLogger("health")

# Real service names are dotted protobuf names, well under 100 bytes. The cap bounds what one
# request can make us hash and store, and is far above any legitimate name.
DEFAULT_MAX_SERVICE_NAME_BYTES = 1024

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


def _check_limit(name: str, limit: object, minimum: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {limit!r}")
    return limit


class HealthState:
    """The status of every service a health server knows, plus its watchers.

    ``""`` is the health of the server as a whole and starts SERVING; other services are
    unknown until set. ``initial`` may override ``""`` and add services. Service names must
    encode to at most ``max_service_name_bytes`` bytes of UTF-8.

    All methods must be called from the Trio thread (or before any Trio run has touched the
    object), except :meth:`set_threadsafe` and :meth:`remove_threadsafe`, which any thread may
    call. The state binds to the Trio run it is first used in (or that a server serving it
    starts in); calling a plain method from another thread while that run is alive raises
    RuntimeError.
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
        self._max_name_bytes = _check_limit("max_service_name_bytes", max_service_name_bytes, 1)
        self._registry = SubscriptionRegistry(
            _check_limit("max_watchers", max_watchers, 0),
            _check_limit("max_watchers_per_owner", max_watchers_per_owner, 0),
        )
        # What the application asked for, per service.
        self._configured: dict[str, ServingStatus] = {"": ServingStatus.SERVING}
        # What clients are told; kept separately so every change to it can be detected and
        # published exactly once, even when listeners re-enter.
        self._effective: dict[str, ServingStatus] = {}
        self._draining = False
        self._watches_ended = False
        self._listeners: Callbacks[[str, ServingStatus | None, ServingStatus | None]] = (
            Callbacks(logger, "health status listener"))
        self._bridge = TrioThreadBridge(trio_token)

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
        """The number of registered watchers (subscriptions included)."""
        return self._registry.count

    @property
    def watched_service_count(self) -> int:
        """The number of services with at least one registered watcher."""
        return self._registry.service_count

    @property
    def watcher_owner_count(self) -> int:
        """The number of owners (e.g. connections) with at least one registered watcher."""
        return self._registry.owner_count

    def watcher_count_for(self, owner: Hashable) -> int:
        """Return the number of registered watchers belonging to ``owner``."""
        return self._registry.count_for(owner)

    # -------------------------------------------------------------- changes

    def set(self, service: str, status: ServingStatus) -> None:
        """Record ``status`` for ``service`` and publish it if it changes what clients see."""
        self._check_name(service)
        value = _settable_status(status)
        self._bridge.check_thread("HealthState.set()")
        self._apply_set(service, value)

    def remove(self, service: str) -> bool:
        """Forget ``service`` (Check: NOT_FOUND, Watch: SERVICE_UNKNOWN); return whether known."""
        self._bridge.check_thread("HealthState.remove()")
        return self._apply_remove(service)

    def set_threadsafe(self, service: str, status: ServingStatus) -> None:
        """Like :meth:`set` but callable from any thread; it takes effect on the Trio thread.

        Arguments are validated in the calling thread, so errors raise here. The change has
        been applied when the call returns (``trio.from_thread.run_sync``), so calls from one
        thread take effect in the order they were made. Before any Trio run has used the
        state, or after that run has finished, the change is applied in the calling thread.
        """
        self._check_name(service)
        value = _settable_status(status)
        self._bridge.run(functools.partial(self._apply_set, service, value))

    def remove_threadsafe(self, service: str) -> None:
        """Like :meth:`remove` but callable from any thread; it takes effect on the Trio thread."""
        self._bridge.run(functools.partial(self._apply_remove, service))

    def shutdown(self) -> None:
        """Report every service as NOT_SERVING until :meth:`resume`; later sets are remembered."""
        self._bridge.check_thread("HealthState.shutdown()")
        if self._draining:
            return
        self._draining = True
        for service in list(self._effective):
            self._sync(service)

    def resume(self) -> None:
        """Undo :meth:`shutdown` and :meth:`end_watches`; publish each configured status."""
        self._bridge.check_thread("HealthState.resume()")
        self._watches_ended = False
        if not self._draining:
            return
        self._draining = False
        for service in list(self._configured):
            self._sync(service)

    def end_watches(self) -> None:
        """Make every watcher, current or new, stop after delivering the current status.

        Subscriptions are notified and see ``Subscription.ending``. A server calls this
        during graceful shutdown to finish Watch streams cleanly. It stays in force until
        :meth:`resume`.
        """
        self._bridge.check_thread("HealthState.end_watches()")
        self._watches_ended = True
        self._registry.wake_all()

    def add_listener(self, listener: StatusListener) -> Callable[[], None]:
        """Call ``listener(service, old, new)`` after each effective change; return a remover.

        Listeners run synchronously in the Trio thread, after watchers have been woken. An
        exception from a listener is logged to the ``health`` logger and otherwise ignored.
        """
        return self._listeners.add(listener)

    # -------------------------------------------------------------- watching

    def watch(self, service: str, *, owner: Hashable | None = None) -> Watcher:
        """Register and return a :class:`~health.subscriptions.Watcher` for ``service``.

        ``owner`` (for example the connection the Watch call arrived on) is what
        ``max_watchers_per_owner`` counts against; None counts only towards the total.
        Raises WatcherLimitError when a limit is reached.
        """
        self._check_name(service)
        self._bridge.check_thread("HealthState.watch()")
        return Watcher(self, self._registry, service, owner)

    def subscribe(self, service: str, notify: Callable[[], object], *,
                  owner: Hashable | None = None) -> Subscription:
        """Register and return a :class:`~health.subscriptions.Subscription` for ``service``.

        ``notify()`` is called (synchronously, in the Trio thread) after each effective
        change of ``service`` and when :meth:`end_watches` takes effect; it is not called for
        the current status, which the caller takes with ``Subscription.take`` when it is
        ready. Limits and ``owner`` work as for :meth:`watch` (the two share the counts);
        raises WatcherLimitError when a limit is reached.
        """
        self._check_name(service)
        self._bridge.check_thread("HealthState.watch()")
        return self._registry.subscribe(self, service, notify, owner)

    # ---------------------------------------------------------- Trio binding

    def bind_trio(self, token: trio.lowlevel.TrioToken | None = None) -> None:
        """Bind to the Trio run that ``*_threadsafe`` calls hand changes to (default: current)."""
        self._bridge.bind(token)

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
        self._registry.wake(service)
        if self._listeners:
            self._listeners.call(service, old, target)
