"""A pool of backends that hands out only the healthy ones, round robin, and calls them.

``open_pool(target)`` keeps one channel and one ``HealthWatcher`` (gRFC A17) per backend and the
healthy set current. The backends are

* a fixed list: ``open_pool(["10.0.0.1:50051", "10.0.0.2:50051"])`` (or one ``unix:PATH``);
* or a name to resolve: ``open_pool("dns:///orders.default.svc.cluster.local:50051")``,
  ``dns:host:port`` or a plain ``host:port``; every A and AAAA record is a backend, as a
  Kubernetes headless service answers with one record per ready pod. The name is resolved
  again every ``resolve_interval`` seconds (30) and at once when no backend is healthy, never
  more often than every ``min_resolve_interval`` seconds (5); see ``health.resolver``. An
  address that appears gets a channel and a watcher; one that disappears is drained: it is
  never picked again, its watcher stops, and its channel closes once the pool's calls in flight
  on it finished (at most ``drain_timeout`` seconds later); an address in both answers keeps its
  channel and its health. A failed or empty resolution keeps the last good set.

Choosing:

* ``pick()`` fails fast: it returns the next healthy address round robin, or raises
  ``NoHealthyBackendError`` at once when none is healthy. A caller serving a request usually
  prefers an immediate, explicit failure over a request that hangs on a dead fleet.
* ``await pick_wait()`` waits until some backend is healthy (bound it with a Trio cancel scope);
  for start-up, where backends are expected to come up.
* ``await pool.unary_unary(path, request, ...)`` and ``async with pool.unary_stream(...)`` pick
  a backend and make the call on its channel. No healthy backend: ``RpcError(UNAVAILABLE, "no
  healthy backend...")`` at once. A call the server provably never processed is retried once
  on another healthy backend (``unprocessed``).

Changes are announced three ways, none of which queues: an ``on_change`` callback, ``await
wait_changed(version)``, and ``changes()``, an async iterator that yields the current healthy set
after each change (a slow reader skips intermediate sets, never the latest). A change is either a
change of the healthy set or of the membership (``addresses``); both bump ``version`` once, so a
reader woken by a membership change reads ``addresses`` (or ``state``) for what it is now. A
backend whose server does not implement health checking counts as healthy (A17).
"""

from __future__ import annotations

import inspect
import logging
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import trio

from wire import (
    Channel,
    ConnectError,
    Metadata,
    ResponseStream,
    RpcError,
    StatusCode,
    UnaryResponse,
    open_channel,
)
from wire.client import DEFAULT_CONNECT_TIMEOUT
from wire.metadata import MetadataLike

from .errors import HealthError
from .resolver import (
    DEFAULT_RESOLVE_INTERVAL,
    DEFAULT_RESOLVE_TIMEOUT,
    Resolver,
    ResolverLoop,
)
from .watch import Backoff, HealthReport, HealthWatcher

_P = ParamSpec("_P")
_T = TypeVar("_T")

__all__ = [
    "DEFAULT_DRAIN_TIMEOUT",
    "ChannelOpener",
    "HealthyPool",
    "NoHealthyBackendError",
    "PoolChanges",
    "PoolResponseStream",
    "PoolState",
    "open_pool",
    "unprocessed",
]

logger = logging.getLogger(__name__)

#: How long a backend that left the membership keeps its channel for the calls still on it.
DEFAULT_DRAIN_TIMEOUT = 30.0

ChannelOpener = Callable[[str], AbstractAsyncContextManager[Channel]]


class NoHealthyBackendError(HealthError):
    """``pick()`` found no healthy backend."""


def unprocessed(exc: RpcError) -> bool:
    """True when ``exc`` proves the server never processed the call, so a retry is safe.

    The channel does not say whether response bytes arrived, so this is the narrowest rule
    that is safe without it: a connection that could not be made (``ConnectError``), a stream
    refused, or a stream above a GOAWAY's last stream id. A connection lost after the request
    left is not retried: the server may have acted on it.
    """
    if exc.code is not StatusCode.UNAVAILABLE:
        return False
    if isinstance(exc, ConnectError):
        return True
    message = exc.message
    # RFC 9113 section 8.7: "REFUSED_STREAM ... indicates that the stream is being closed prior
    # to any processing having occurred. Any request that was sent on the reset stream can be
    # safely retried."
    if "stream reset" in message and "REFUSED_STREAM" in message:
        return True
    # RFC 9113 section 6.8: streams above the GOAWAY's last stream id "were not processed"; the
    # client "can treat the streams as though they had never been created".
    return "GOAWAY" in message and "before processing this call" in message


@dataclass(frozen=True)
class PoolState:
    """One consistent view of a pool: its members, the healthy ones, and the version."""

    version: int
    addresses: tuple[str, ...]
    healthy: tuple[str, ...]


class _Backend:
    """One member: its channel, its watcher, and the pool's calls in flight on it."""

    __slots__ = ("_idle", "address", "channel", "inflight", "watcher", "watching")

    def __init__(self, address: str) -> None:
        self.address = address
        self.channel: Channel | None = None
        self.watcher: HealthWatcher | None = None
        #: Cancelled when the backend leaves the membership: the watcher stops.
        self.watching = trio.CancelScope()
        self.inflight = 0
        self._idle: trio.Event | None = None

    @property
    def healthy(self) -> bool:
        return self.watcher is not None and self.watcher.healthy

    def call_started(self) -> None:
        self.inflight += 1

    def call_ended(self) -> None:
        self.inflight -= 1
        if not self.inflight and self._idle is not None:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no call the pool made on this backend is in flight."""
        # Bounded: a backend that left is never picked again, so calls only end.
        while self.inflight:
            self._idle = trio.Event()
            await self._idle.wait()


def _deadline(timeout: float | None) -> float:
    return math.inf if timeout is None else trio.current_time() + timeout


def _remaining(deadline: float) -> float | None:
    return None if deadline == math.inf else max(0.0, deadline - trio.current_time())


class PoolResponseStream:
    """The responses of a pool's server-streaming call: a ``ResponseStream`` and its backend."""

    def __init__(self, address: str, stream: ResponseStream, first: bytes | None) -> None:
        #: The backend that answered.
        self.address = address
        self._stream = stream
        self._first = first

    def __aiter__(self) -> PoolResponseStream:
        return self

    async def __anext__(self) -> bytes:
        first, self._first = self._first, None
        if first is not None:
            await trio.lowlevel.checkpoint()
            return first
        return await self._stream.__anext__()

    @property
    def initial_metadata(self) -> Metadata:
        """The response headers' metadata."""
        return self._stream.initial_metadata

    @property
    def trailing_metadata(self) -> Metadata:
        """The trailers' metadata, once iteration finished."""
        return self._stream.trailing_metadata

    @property
    def code(self) -> StatusCode | None:
        """The final status, once iteration finished."""
        return self._stream.code

    @property
    def message(self) -> str:
        """The final status message, once iteration finished."""
        return self._stream.message

    @property
    def done(self) -> bool:
        """True once the call has ended and every message was read."""
        return self._first is None and self._stream.done

    def cancel(self) -> None:
        """Stop the call now (RST_STREAM CANCEL)."""
        self._stream.cancel()


async def _first_message(stream: ResponseStream) -> bytes | None:
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None


class HealthyPool:
    """The healthy subset of a pool's backends; create it with ``open_pool``."""

    def __init__(
        self,
        target: str | Sequence[str],
        on_change: Callable[[tuple[str, ...]], None] | None = None,
        *,
        service: str = "",
        resolver: Resolver | None = None,
        resolve_interval: float = DEFAULT_RESOLVE_INTERVAL,
        min_resolve_interval: float | None = None,
        resolve_timeout: float = DEFAULT_RESOLVE_TIMEOUT,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        channel_options: Mapping[str, Any] | None = None,
        open_channel_for: ChannelOpener | None = None,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        keepalive_time: float | None = None,
        keepalive_timeout: float | None = None,
    ) -> None:
        self._members: dict[str, _Backend] = {}
        self._resolution: ResolverLoop | None = None
        options: dict[str, Any] = {"connect_timeout": connect_timeout}
        if isinstance(target, str) and not target.startswith("unix:"):
            self._resolution = ResolverLoop(
                target, resolver, interval=resolve_interval, min_interval=min_resolve_interval,
                timeout=resolve_timeout)
            # grpc's :authority (and TLS name) for a resolved target is the name, not the IP.
            options["authority"] = self._resolution.authority
            options["server_hostname"] = self._resolution.host
        else:
            fixed = [target] if isinstance(target, str) else list(target)
            if resolver is not None:
                raise ValueError("resolver= needs a target name to resolve, not an address list")
            if not fixed:
                raise ValueError("a pool needs at least one address")
            if len(set(fixed)) != len(fixed):
                raise ValueError("pool addresses must be distinct")
            self._members = {address: _Backend(address) for address in fixed}
        # keepalive_* are shorthands for the channel options of the same names.
        options.update({name: value for name, value in (("keepalive_time", keepalive_time),
                                                        ("keepalive_timeout", keepalive_timeout))
                        if value is not None})
        options.update(channel_options or {})
        try:
            inspect.signature(open_channel).bind("target", **options)
        except TypeError as exc:
            raise TypeError(f"channel_options: {exc}") from None
        self._channel_options = options
        self.target = target if isinstance(target, str) else None
        self.service = service
        #: The current members' watchers, by address.
        self.watchers: dict[str, HealthWatcher] = {}
        self._on_change = on_change
        self._backoff = backoff
        self._rng = rng or random.Random()
        self._open_channel_for = open_channel_for
        self._drain_timeout = drain_timeout
        self._healthy: tuple[str, ...] = ()
        self._next = 0
        self._version = 0
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None

    # ------------------------------------------------------------------ reading

    @property
    def addresses(self) -> tuple[str, ...]:
        """The current members, in the order they joined."""
        return tuple(self._members)

    @property
    def healthy(self) -> tuple[str, ...]:
        """The healthy members, in the order they joined."""
        return self._healthy

    @property
    def version(self) -> int:
        """Increases by one on every change of the healthy set or the membership."""
        return self._version

    @property
    def state(self) -> PoolState:
        """Members, healthy members and version, read together."""
        return PoolState(self._version, self.addresses, self._healthy)

    @property
    def resolver(self) -> ResolverLoop | None:
        """The resolution of the target (last answer, last error), None for a fixed list."""
        return self._resolution

    def report(self, address: str) -> HealthReport:
        """What the watcher of ``address`` currently believes."""
        return self.watchers[address].report

    def channel(self, address: str) -> Channel:
        """The open channel to ``address`` (calls made on it directly are not drained)."""
        channel = self._members[address].channel
        if channel is None:
            raise KeyError(f"{address}: the backend is not open yet")
        return channel

    # ------------------------------------------------------------------ picking

    def _why_none(self) -> str:
        if self._members:
            return f"none of the {len(self._members)} backends is healthy"
        resolution = self._resolution
        assert resolution is not None  # a fixed list is never empty
        why = f": {resolution.error}" if resolution.error else ""
        return f"{resolution.target} resolved to no address yet{why}"

    def pick(self) -> str:
        """The next healthy address, round robin; raise NoHealthyBackendError if none."""
        healthy = self._healthy
        if not healthy:
            raise NoHealthyBackendError(self._why_none())
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

    def _choose(self, avoid: str | None = None) -> _Backend | None:
        """The next healthy backend round robin other than ``avoid``; None if there is none."""
        for _ in range(len(self._healthy)):
            address = self.pick()
            if address != avoid:
                return self._members[address]
        return None

    def _unavailable(self) -> RpcError:
        return RpcError(StatusCode.UNAVAILABLE, f"no healthy backend: {self._why_none()}")

    # ------------------------------------------------------------------ calls

    async def unary_unary(
        self,
        path: str,
        request: bytes,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (passed on as the call's grpc-timeout)
        metadata: MetadataLike = (),
        compression: str | None = None,
    ) -> UnaryResponse:
        """Make a unary call on a healthy backend; retry once elsewhere if it was unprocessed."""
        deadline = _deadline(timeout)
        return await self._retrying_once(path, lambda backend: self._unary_on(
            backend, path, request, deadline, metadata, compression))

    async def _retrying_once(self, path: str, attempt: Callable[[_Backend], Awaitable[_T]]
                             ) -> _T:
        """``attempt`` on a healthy backend, then once on another if the server never saw it."""
        backend = self._choose()
        if backend is None:
            raise self._unavailable()
        try:
            return await attempt(backend)
        except RpcError as exc:
            retry = self._choose(avoid=backend.address) if unprocessed(exc) else None
            if retry is None:
                raise
            logger.debug("%s on %s was not processed (%s): retrying on %s", path,
                         backend.address, exc, retry.address)
        return await attempt(retry)

    async def _unary_on(self, backend: _Backend, path: str, request: bytes, deadline: float,
                        metadata: MetadataLike, compression: str | None) -> UnaryResponse:
        channel = backend.channel
        assert channel is not None  # members are opened before they can be healthy
        backend.call_started()
        try:
            return await channel.unary_unary(path, request, timeout=_remaining(deadline),
                                             metadata=metadata, compression=compression)
        finally:
            backend.call_ended()

    @asynccontextmanager
    async def unary_stream(
        self,
        path: str,
        request: bytes,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (passed on as the call's grpc-timeout)
        metadata: MetadataLike = (),
        compression: str | None = None,
    ) -> AsyncIterator[PoolResponseStream]:
        """Start a server-streaming call on a healthy backend; iterate the yielded stream.

        Entering waits for the first message (or the end of the call), so that a call the
        server never processed can be retried once on another healthy backend.
        """
        deadline = _deadline(timeout)
        stack, stream = await self._retrying_once(path, lambda backend: self._stream_on(
            backend, path, request, deadline, metadata, compression))
        async with stack:
            yield stream

    async def _stream_on(self, backend: _Backend, path: str, request: bytes, deadline: float,
                         metadata: MetadataLike, compression: str | None,
                         ) -> tuple[AsyncExitStack, PoolResponseStream]:
        channel = backend.channel
        assert channel is not None  # members are opened before they can be healthy
        stack = AsyncExitStack()
        backend.call_started()
        stack.callback(backend.call_ended)
        try:
            stream = await stack.enter_async_context(channel.unary_stream(
                path, request, timeout=_remaining(deadline), metadata=metadata,
                compression=compression))
            first = await _first_message(stream)
        except BaseException:
            await stack.aclose()
            raise
        return stack, PoolResponseStream(backend.address, stream, first)

    # ------------------------------------------------------------------ running

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                    ) -> None:
        """Open and watch every backend and follow the target, until cancelled.

        Reports started once the backends of the fixed list, or of the first resolution, are
        open (whether or not that resolution succeeded).
        """
        if self._nursery is not None:
            raise RuntimeError("this pool is already running")
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self._resolution is None:
                for backend in list(self._members.values()):
                    await nursery.start(self._run_backend, backend)
            else:
                await nursery.start(self._resolution.run, self._apply, self._none_healthy)
            task_status.started()
            await trio.sleep_forever()

    def _open(self, address: str) -> AbstractAsyncContextManager[Channel]:
        if self._open_channel_for is not None:
            return self._open_channel_for(address)
        return open_channel(address, **self._channel_options)

    async def _run_backend(self, backend: _Backend, *, task_status: trio.TaskStatus[None],
                           ) -> None:
        async with self._open(backend.address) as channel:
            watcher = HealthWatcher(channel, self.service, backoff=self._backoff, rng=self._rng,
                                    on_change=self._on_report)
            backend.channel = channel
            backend.watcher = watcher
            self.watchers[backend.address] = watcher
            with backend.watching:
                await watcher.run(task_status=task_status)
                # Health checking is off for this backend (UNIMPLEMENTED): it stays healthy
                # and its channel stays open for the requests the caller will send it.
                await trio.sleep_forever()
            # The backend left the membership: let the pool's calls on it finish.
            with trio.move_on_after(self._drain_timeout) as scope:
                await backend.wait_idle()
            if scope.cancelled_caught:
                logger.warning("%s left the pool; closing it with %d calls still open after "
                               "%g s", backend.address, backend.inflight, self._drain_timeout)

    async def _apply(self, addresses: tuple[str, ...]) -> None:
        """Make the membership ``addresses``: open the new ones, drain the ones gone."""
        assert self._nursery is not None
        wanted = set(addresses)
        joined = [a for a in addresses if a not in self._members]
        left = [a for a in self._members if a not in wanted]
        for address in joined:
            backend = self._members[address] = _Backend(address)
            await self._nursery.start(self._run_backend, backend)
        for address in left:
            gone = self._members.pop(address)
            self.watchers.pop(address, None)
            gone.watching.cancel()
        if joined or left:
            logger.info("pool %s: %d joined, %d left, %d members", self.target, len(joined),
                        len(left), len(self._members))
            self._refresh(membership_changed=True)

    async def _none_healthy(self) -> None:
        """Return once no member is healthy (the resolver then asks again at once)."""
        while self._healthy:  # bounded: each wake-up is a change or a cancellation
            await self._changed.wait()

    def _on_report(self, _report: HealthReport) -> None:
        self._refresh()

    def _refresh(self, *, membership_changed: bool = False) -> None:
        healthy = tuple(a for a, b in self._members.items() if b.healthy)
        if healthy == self._healthy and not membership_changed:
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


def _running(make: Callable[_P, HealthyPool]
             ) -> Callable[_P, AbstractAsyncContextManager[HealthyPool]]:
    """An async context manager taking ``make``'s parameters: it runs the pool it builds."""

    @asynccontextmanager
    async def open_pool(*args: _P.args, **kwargs: _P.kwargs) -> AsyncIterator[HealthyPool]:
        """Watch ``service`` on every backend of ``target``; yield the pool; stop on exit.

        The parameters are those of :class:`HealthyPool`.
        ``target`` is a list of addresses, or a name to resolve (``dns:///host:port``,
        ``dns:host:port``, ``host:port``) with ``resolver`` (default: DNS, ``getaddrinfo``), again
        every ``resolve_interval`` seconds and when no backend is healthy, at most once per
        ``min_resolve_interval`` seconds (default 5, or ``resolve_interval`` if that is shorter).
        ``channel_options`` are passed to ``wire.open_channel`` for every backend (after
        ``connect_timeout``, and for a resolved name ``authority`` and ``server_hostname`` set to
        the name). ``open_channel_for(address)`` replaces ``wire.open_channel`` altogether: it
        returns an async context manager yielding a ``wire.Channel``; tests use it to connect
        over memory streams. ``keepalive_time`` / ``keepalive_timeout`` are the channels' HTTP/2
        PING keepalive (``wire.open_channel``'s options of the same names; off by default): with
        them a backend that vanishes without closing its connections stops being picked within
        ``keepalive_time + keepalive_timeout``.
        """
        pool = make(*args, **kwargs)
        error: Exception | None = None
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.serve)
            try:
                yield pool
            except Exception as exc:
                # Re-raised outside the nursery so callers see it rather than an ExceptionGroup.
                error = exc
            finally:
                nursery.cancel_scope.cancel()
        if error is not None:
            raise error

    # So that help() and inspect show HealthyPool's parameters, not (*args, **kwargs).
    open_pool.__signature__ = inspect.signature(make).replace(  # type: ignore[attr-defined]
        return_annotation="AbstractAsyncContextManager[HealthyPool]")
    return open_pool


#: ``open_pool(target, on_change=None, *, service="", ...)``: the parameters are those of
#: :class:`HealthyPool`, written once there.
open_pool = _running(HealthyPool)
