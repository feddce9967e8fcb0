"""How an application describes its methods to the server.

A method is a path (``/package.Service/Method``, case-sensitive) bound to a handler, a request
deserializer and a response serializer. Six handler shapes exist:

* unary, async: ``async def handler(request, call) -> response``; runs in its own task, under a
  cancel scope carrying the call's deadline.
* unary, sync: ``def handler(request, call) -> response``; must not block. The server calls it
  inline, in the connection's reader, as soon as the request is complete: no task, no cancel
  scope, no events, which makes cheap methods (a health Check is a dictionary lookup) cheaper.
* server streaming, async: ``async def handler(request, call, send)``; calls ``await
  send(response)`` once per message, in its own task.
* server streaming, push: ``def start(request, call) -> None``; sets the stream up and returns.
  Messages are pushed later, from anywhere in the Trio thread, with the call's sync methods
  (``call.send``, ``call.finish``, ``call.on_writable``, ``call.on_close``; see
  ``wire.calls.PushCall``). No task exists per call, so thousands of idle streams (health
  Watch) cost little memory.
* client streaming, async: ``async def handler(requests, call) -> response``; ``requests`` is
  an async iterator of request messages (``async for request in requests``) that ends when the
  client half-closes. The client's flow-control window reopens only as the handler consumes
  messages, so a client sending faster than the handler reads is held back by HTTP/2.
* bidi streaming, async: ``async def handler(requests, call, send)``; both at once: requests
  are pulled as above while responses go out through ``await send(response)``, interleaved in
  any order the handler likes.

Every async shape runs in a task of its own under a cancel scope carrying the call's deadline;
a client reset or the deadline cancels it.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    # Types only: wire.calls imports Trio, and this module must not.
    from .calls import PushCall, ServerCall

__all__ = [
    "BidiHandler",
    "ClientStreamHandler",
    "MethodHandler",
    "MethodKind",
    "PushStart",
    "StreamHandler",
    "SyncUnaryHandler",
    "UnaryHandler",
    "stream_stream",
    "stream_unary",
    "unary_stream",
    "unary_stream_push",
    "unary_unary",
]

Req = TypeVar("Req")
Resp = TypeVar("Resp")

UnaryHandler = Callable[[Req, "ServerCall"], Awaitable[Resp]]
SyncUnaryHandler = Callable[[Req, "ServerCall"], Resp]
StreamHandler = Callable[[Req, "ServerCall", Callable[[Resp], Awaitable[None]]], Awaitable[None]]
PushStart = Callable[[Req, "PushCall"], None]
ClientStreamHandler = Callable[[AsyncIterator[Req], "ServerCall"], Awaitable[Resp]]
BidiHandler = Callable[
    [AsyncIterator[Req], "ServerCall", Callable[[Resp], Awaitable[None]]], Awaitable[None]
]


class MethodKind(enum.Enum):
    """The request/response shape of a method, and how its handler runs."""

    #: One request, one response, from an async handler running in its own task.
    UNARY_UNARY = "unary_unary"
    #: One request, one response, from a sync handler the reader calls inline.
    UNARY_UNARY_SYNC = "unary_unary_sync"
    #: One request, a stream of responses, from an async handler running in its own task.
    UNARY_STREAM = "unary_stream"
    #: One request, a stream of responses pushed through the call's sync methods; no task.
    UNARY_STREAM_PUSH = "unary_stream_push"
    #: A stream of requests, one response, from an async handler running in its own task.
    STREAM_UNARY = "stream_unary"
    #: Streams both ways, from an async handler running in its own task.
    STREAM_STREAM = "stream_stream"


@dataclass(frozen=True)
class MethodHandler(Generic[Req, Resp]):
    """One method of a service, ready to be registered with a ``Server``."""

    path: str
    kind: MethodKind
    handler: Callable[..., Any]
    request_deserializer: Callable[[bytes], Req]
    response_serializer: Callable[[Resp], bytes]

    def __post_init__(self) -> None:
        parts = self.path.split("/")
        if len(parts) != 3 or parts[0] or not parts[1] or not parts[2]:
            raise ValueError(f"method path {self.path!r} must look like /package.Service/Method")

    @property
    def server_streaming(self) -> bool:
        """True for methods that send a stream of responses (whatever runs them)."""
        return self.kind in (MethodKind.UNARY_STREAM, MethodKind.UNARY_STREAM_PUSH,
                             MethodKind.STREAM_STREAM)

    @property
    def client_streaming(self) -> bool:
        """True for methods that take a stream of requests (pulled by the handler)."""
        return self.kind in (MethodKind.STREAM_UNARY, MethodKind.STREAM_STREAM)


def _is_async(handler: Callable[..., Any]) -> bool:
    """Whether calling ``handler`` returns a coroutine (functions, partials, callables)."""
    if inspect.iscoroutinefunction(handler):
        return True
    # An instance with ``async def __call__``: inspect looks at the function, not the object.
    call = getattr(handler, "__call__", None)  # noqa: B004 - the attribute itself is wanted
    return call is not None and inspect.iscoroutinefunction(call)


def unary_unary(
    path: str,
    handler: UnaryHandler[Req, Resp] | SyncUnaryHandler[Req, Resp],
    request_deserializer: Callable[[bytes], Req],
    response_serializer: Callable[[Resp], bytes],
    *,
    sync: bool | None = None,
) -> MethodHandler[Req, Resp]:
    """Describe a method taking one request and returning one response.

    ``handler`` may be an ``async def`` (it runs in a task of its own and may wait) or a plain
    function that never blocks (it runs inline in the connection's reader, which is cheaper).
    Which one is detected; ``sync`` overrides the detection (for a callable whose nature
    ``inspect`` cannot see).
    """
    if sync is None:
        sync = not _is_async(handler)
    kind = MethodKind.UNARY_UNARY_SYNC if sync else MethodKind.UNARY_UNARY
    return MethodHandler(path, kind, handler, request_deserializer, response_serializer)


def unary_stream(
    path: str,
    handler: StreamHandler[Req, Resp],
    request_deserializer: Callable[[bytes], Req],
    response_serializer: Callable[[Resp], bytes],
) -> MethodHandler[Req, Resp]:
    """Describe a method taking one request and sending a stream of responses."""
    return MethodHandler(path, MethodKind.UNARY_STREAM, handler, request_deserializer,
                         response_serializer)


def unary_stream_push(
    path: str,
    start: PushStart[Req],
    request_deserializer: Callable[[bytes], Req],
    response_serializer: Callable[[Resp], bytes],
) -> MethodHandler[Req, Resp]:
    """Describe a server-streaming method whose messages are pushed without a task.

    ``start(request, call)`` runs inline once the request is complete. It (or anyone it hands
    ``call`` to) then uses ``call.send(message)``, ``call.finish(code, message)``,
    ``call.on_writable(callback)`` and ``call.on_close(callback)`` from the Trio thread. Raising
    ``RpcError`` from ``start`` ends the call with that status, as for any handler.
    """
    return MethodHandler(path, MethodKind.UNARY_STREAM_PUSH, start, request_deserializer,
                         response_serializer)


def stream_unary(
    path: str,
    handler: ClientStreamHandler[Req, Resp],
    request_deserializer: Callable[[bytes], Req],
    response_serializer: Callable[[Resp], bytes],
) -> MethodHandler[Req, Resp]:
    """Describe a method taking a stream of requests and returning one response.

    ``handler(requests, call)`` iterates ``requests`` with ``async for`` (the iteration ends at
    the client's half-close) and returns the response.
    """
    return MethodHandler(path, MethodKind.STREAM_UNARY, handler, request_deserializer,
                         response_serializer)


def stream_stream(
    path: str,
    handler: BidiHandler[Req, Resp],
    request_deserializer: Callable[[bytes], Req],
    response_serializer: Callable[[Resp], bytes],
) -> MethodHandler[Req, Resp]:
    """Describe a bidi-streaming method: ``handler(requests, call, send)``.

    Requests are pulled with ``async for`` as in ``stream_unary``; responses go out with
    ``await send(response)``, in any interleaving.
    """
    return MethodHandler(path, MethodKind.STREAM_STREAM, handler, request_deserializer,
                         response_serializer)
