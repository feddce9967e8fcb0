"""The ``grpc.health.v1.Health`` service (Check, List, Watch) on a ``wire.Server``.

This module owns the translation between a ``HealthState`` and gRPC calls, and the standalone
health server (``serve_health`` / ``HealthServer``) that Trio applications start in their own
nursery.

Semantics (grpc ``doc/health-checking.md`` and gRFC A90):

* Check: a known name answers OK with its status; an unknown name fails NOT_FOUND
  ("unknown service").
* List: every entry, ``""`` included, with no side effects; more entries than ``list_limit``
  (100 by default) fail RESOURCE_EXHAUSTED.
* Watch: the current status at once (SERVICE_UNKNOWN for an unknown name, with the stream kept
  open), then each change; a slow reader skips to the latest status; never the same status twice
  in a row. Watchers are capped in total and per connection (RESOURCE_EXHAUSTED above).
* Graceful server shutdown: every service turns NOT_SERVING, that is pushed to every watcher, and
  then every Watch stream ends with UNAVAILABLE ("health server is shutting down"), so shutdown
  never waits on watchers. Clients following gRFC A17 treat that as "retry elsewhere".

Responses for the four statuses are serialized once and reused: a Check costs a dictionary lookup
and no protobuf encoding. Check and List are sync handlers, which the server runs inline (no task
per call). Watch is a push stream (``wire.handlers.unary_stream_push``) fed by a
``HealthState.subscribe`` callback: an idle Watch is a call object, a subscription and a small
``_WatchStream``, with no Trio task, cancel scope or channel, and a status change is pushed to
every watcher from the ``set`` call itself.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import trio

from wire import MethodHandler, RpcError, Server, ServerCall, StatusCode, unary_unary
from wire.connection import ServerConfig
from wire.handlers import unary_stream_push
from wire.reflection import ReflectionRegistry, add_reflection
from wire.server import PushCall, ServerOptions

from . import _health_pb2
from .errors import ServiceNameError, WatcherLimitError
from .protocol import (
    CHECK_PATH,
    LIST_PATH,
    SERVICE_NAME,
    WATCH_PATH,
    check_response,
    list_response,
    parse_check_request,
    parse_list_request,
)
from .status import ServingStatus
from .status_map import HealthState
from .subscriptions import Subscription

# The paths stay importable from here (they were defined here before health.protocol).
__all__ = [
    "CHECK_PATH",
    "DEFAULT_LIST_LIMIT",
    "LIST_PATH",
    "SERVICE_NAME",
    "WATCH_PATH",
    "HealthServer",
    "HealthService",
    "serve_health",
]

DEFAULT_LIST_LIMIT = 100


def _identity(data: bytes) -> bytes:
    return data


class HealthService:
    """Serves Check, List and Watch from a ``HealthState``."""

    def __init__(self, state: HealthState | None = None, *,
                 list_limit: int = DEFAULT_LIST_LIMIT) -> None:
        if list_limit < 0:
            raise ValueError("list_limit must be >= 0")
        self.state = state if state is not None else HealthState()
        self.list_limit = list_limit
        #: Calls answered, by method name and gRPC code name (for logs and metrics).
        self.call_counts: dict[tuple[str, str], int] = {}

    def handlers(self) -> list[MethodHandler[Any, Any]]:
        """The three methods, ready for ``Server.add_handlers``."""
        return [
            unary_unary(CHECK_PATH, self._check, parse_check_request, _identity),
            unary_unary(LIST_PATH, self._list, parse_list_request, _identity),
            unary_stream_push(WATCH_PATH, self._watch, parse_check_request, _identity),
        ]

    def attach(self, server: Server, *, reflection: ReflectionRegistry | None = None) -> None:
        """Add the Health methods to ``server`` and drain them when it shuts down.

        With ``reflection`` (the registry ``wire.reflection.add_reflection`` returned), the
        Health service is also described there, from health's private descriptor pool.
        """
        server.add_handlers(self.handlers())
        server.add_shutdown_hook(self.drain)
        if reflection is not None:
            self.describe(reflection)

    @staticmethod
    def describe(registry: ReflectionRegistry) -> None:
        """List ``grpc.health.v1.Health`` (and its file) in a reflection registry."""
        registry.add_service(_health_pb2.DESCRIPTOR.services_by_name["Health"])

    def drain(self) -> None:
        """Mark everything NOT_SERVING, push it to watchers, then end every Watch."""
        self.state.shutdown()
        self.state.end_watches()

    def count_call(self, method: str, code: StatusCode) -> None:
        """Record one answered call in ``call_counts``."""
        key = (method, code.name)
        self.call_counts[key] = self.call_counts.get(key, 0) + 1

    def _check(self, service: str, call: ServerCall) -> bytes:
        status = self.state.get(service)
        if status is None:
            self.count_call("Check", StatusCode.NOT_FOUND)
            raise RpcError(StatusCode.NOT_FOUND, "unknown service")
        self.count_call("Check", StatusCode.OK)
        return check_response(status)

    def _list(self, _request: None, call: ServerCall) -> bytes:
        snapshot = self.state.snapshot()
        if len(snapshot) > self.list_limit:
            self.count_call("List", StatusCode.RESOURCE_EXHAUSTED)
            raise RpcError(
                StatusCode.RESOURCE_EXHAUSTED,
                f"server has {len(snapshot)} services, more than the List limit of "
                f"{self.list_limit}",
            )
        self.count_call("List", StatusCode.OK)
        return list_response(snapshot)

    def _watch(self, service: str, call: PushCall) -> None:
        stream = _WatchStream(self, call)
        try:
            stream.sub = self.state.subscribe(service, stream.pump, owner=call.connection)
        except WatcherLimitError as exc:
            self.count_call("Watch", StatusCode.RESOURCE_EXHAUSTED)
            raise RpcError(StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None
        except ServiceNameError as exc:
            self.count_call("Watch", StatusCode.INVALID_ARGUMENT)
            raise RpcError(StatusCode.INVALID_ARGUMENT, str(exc)) from None
        call.on_writable(stream.writable)
        call.on_close(stream.closed)
        stream.pump()  # the current status, at once


class _WatchStream:
    """One Watch call: moves statuses from its subscription to its push call.

    Latest wins: while the call reports back-pressure (the client is not reading), changes
    are not sent, only noticed by the subscription; once the stream drains, ``writable``
    sends whatever is current then, if it differs from what the client last got.
    """

    __slots__ = ("call", "held", "service", "sub")

    def __init__(self, service: HealthService, call: PushCall) -> None:
        self.service = service
        self.call = call
        self.sub: Subscription | None = None
        # True after send() reported back-pressure, until on_writable.
        self.held = False

    def pump(self) -> None:
        """Send the current status if it is news and the client can take it."""
        sub = self.sub
        call = self.call
        if sub is None or call.closed:
            return
        if sub.ending:
            # Drain (end_watches): the last status (not held back: one message is bounded),
            # then end the stream so that shutdown never waits on watchers and A17 clients
            # retry elsewhere instead of believing the service vanished.
            status = sub.take()
            if status is not None:
                call.send(check_response(status))
            sub.close()
            self.service.count_call("Watch", StatusCode.UNAVAILABLE)
            call.finish(StatusCode.UNAVAILABLE, "health server is shutting down")
            return
        if self.held:
            return
        status = sub.take()
        if status is not None and not call.send(check_response(status)):
            self.held = True

    def writable(self) -> None:
        """The stream drained below high water: send what is current now."""
        self.held = False
        self.pump()

    def closed(self) -> None:
        """The call ended (reset, deadline, connection lost, shutdown): unregister at once."""
        if self.sub is not None:
            self.sub.close()


class HealthServer:
    """A standalone health server: a ``wire.Server`` carrying only the Health service.

    ``reflection=True`` also serves gRPC server reflection (v1 and v1alpha) describing it,
    so ``grpcurl -plaintext HOST:PORT list`` works without a .proto file.

    Started with ``await nursery.start(serve_health, host, port)``, which hands this object
    back; set statuses on it (or on ``.state``) from then on.
    """

    def __init__(
        self,
        state: HealthState | None = None,
        *,
        list_limit: int = DEFAULT_LIST_LIMIT,
        config: ServerConfig | None = None,
        options: ServerOptions | None = None,
        extra_handlers: Sequence[MethodHandler[Any, Any]] = (),
        reflection: bool = False,
    ) -> None:
        self.service = HealthService(state, list_limit=list_limit)
        self.state = self.service.state
        self.server = Server(extra_handlers, config=config, options=options)
        #: The server reflection registry when ``reflection`` is on (add services to it).
        self.reflection: ReflectionRegistry | None = (
            add_reflection(self.server) if reflection else None)
        self.service.attach(self.server, reflection=self.reflection)
        #: The bound address once serving: ``(host, port)`` or a Unix socket path.
        self.address: Any = None

    @property
    def port(self) -> int:
        """The bound TCP port."""
        if not isinstance(self.address, tuple):
            raise RuntimeError("not serving on TCP")
        return int(self.address[1])

    def set(self, service: str, status: ServingStatus) -> None:
        """Set a service's status (shortcut for ``state.set``)."""
        self.state.set(service, status)

    def remove(self, service: str) -> bool:
        """Forget a service (shortcut for ``state.remove``)."""
        return self.state.remove(service)

    async def serve_tcp(self, host: str | None, port: int, *,
                        ssl_context: ssl.SSLContext | None = None,
                        task_status: trio.TaskStatus[HealthServer] = trio.TASK_STATUS_IGNORED,
                        ) -> None:
        """Listen on TCP (TLS with ``ssl_context``) and serve until cancelled or shut down.

        ``await nursery.start(health_server.serve_tcp, host, port)`` returns this object
        once listening.
        """
        self.state.bind_trio()
        async with trio.open_nursery() as nursery:
            self.address = await nursery.start(
                partial(self.server.serve_tcp, host, port, ssl_context=ssl_context))
            task_status.started(self)

    async def serve_unix(self, path: str, *,
                         task_status: trio.TaskStatus[HealthServer] = trio.TASK_STATUS_IGNORED,
                         ) -> None:
        """Listen on a Unix socket and serve; ``nursery.start`` returns this object."""
        self.state.bind_trio()
        async with trio.open_nursery() as nursery:
            self.address = await nursery.start(self.server.serve_unix, path)
            task_status.started(self)

    async def shutdown(self, grace: float = 5.0) -> None:
        """Drain (NOT_SERVING, end watches, GOAWAY), wait up to ``grace`` s, then stop."""
        await self.server.shutdown(grace)


async def serve_health(
    host: str | None = "127.0.0.1",
    port: int = 50051,
    *,
    initial: Mapping[str, ServingStatus] | None = None,
    state: HealthState | None = None,
    list_limit: int = DEFAULT_LIST_LIMIT,
    ssl_context: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[HealthServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a standalone health server on TCP until cancelled or shut down.

    ``server = await nursery.start(serve_health, "127.0.0.1", 0)`` returns the running
    ``HealthServer``; ``server.set("svc", ServingStatus.SERVING)`` publishes a status.
    ``initial`` statuses start a new state, or are set on ``state`` when one is given.
    """
    if state is None:
        state = HealthState(initial)
    elif initial is not None:
        for service, status in initial.items():
            state.set(service, status)
    hs = HealthServer(state, list_limit=list_limit)
    await hs.serve_tcp(host, port, ssl_context=ssl_context, task_status=task_status)

