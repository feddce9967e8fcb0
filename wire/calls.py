"""The server side of one call: ``ServerCall``, the task-free ``PushCall``, and how calls end.

Owns what a handler sees of its call (metadata, deadline, peer, the metadata and compression it
chooses), the buffered request message, and the one way a call ends: ``end()``. Every ending
goes through it (the handler returned or raised, ``PushCall.finish``, the deadline passed, the
client reset the stream, the connection aborted the call, the connection was lost, the server
shut down), so the status, the bookkeeping, the ``on_close`` callback and the log line each
happen exactly once.

A call never touches a socket or a task of its connection. It talks to its ``CallHost``, the
connection driver (``wire.driver``), which wakes the writer, parks calls whose output is above
the high-water mark, hands queued push messages to the connection and forgets ended calls.

Thousands of calls may be open at once (one per health Watch stream), so calls use slots and
create no Trio objects unless they run in a task of their own.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from .connection import ServerConnection
from .errors import RpcError
from .events import RequestReceived
from .metadata import Metadata, MetadataLike
from .status import ErrorCode, StatusCode

__all__ = ["CallHost", "ConnectionInfo", "Ending", "PushCall", "ServerCall"]

logger = logging.getLogger("wire.server")

#: The status message of calls ended by a server shutdown.
SHUTTING_DOWN = "server is shutting down"


@dataclass(frozen=True, eq=False)
class ConnectionInfo:
    """What a handler may know about the connection its call arrived on.

    Instances compare by identity, so they can key per-connection bookkeeping.
    """

    peer: str
    local: str
    #: True when the connection arrived over TLS.
    tls: bool = False
    #: The client's verified certificate (``ssl.SSLSocket.getpeercert()`` form), under mTLS.
    peer_certificate: dict[str, Any] | None = None


class Ending(enum.Enum):
    """What ``ServerCall.end`` puts on the wire; the reason the call ends decides it."""

    #: The handler's answer: initial metadata if still unsent, then the status and the
    #: trailing metadata (handler returned or raised, ``PushCall.finish``).
    ANSWER = "answer"
    #: A status the server chose before or instead of the handler's answer (unknown method,
    #: malformed request stream, shutdown): the status alone.
    STATUS = "status"
    #: The deadline passed. SPEC: answer DEADLINE_EXCEEDED and RST_STREAM CANCEL; the reset
    #: goes out only if the client is still sending (a closed stream takes no more frames).
    DEADLINE = "deadline"
    #: The stream is gone (client reset, aborted by the connection, connection lost): nothing
    #: can be sent, the call is only stopped and forgotten.
    GONE = "gone"


class CallHost(Protocol):
    """What a call needs of the driver of its connection (``wire.driver.ConnectionDriver``)."""

    @property
    def conn(self) -> ServerConnection:
        """The sans-I/O connection the call's stream belongs to."""
        ...

    @property
    def info(self) -> ConnectionInfo:
        """The connection, as handlers see it."""
        ...

    @property
    def high_water(self) -> int:
        """Response bytes a stream may queue beyond the peer's window."""
        ...

    def wake_writer(self) -> None:
        """There may be bytes to write."""

    def hold(self, call: ServerCall) -> None:
        """Call ``call.output_drained()`` once its stream's output falls below high water."""

    def hold_for_socket(self, call: PushCall) -> bool:
        """If the socket is backed up, call ``call.output_drained()`` once it takes our writes.

        Returns whether it was backed up.
        """
        ...

    async def wait_for_socket(self) -> None:
        """Wait while more bytes wait for the socket than the write backlog allows."""

    def queue_push(self, call: PushCall) -> None:
        """Have the writer call ``call.flush_outbox()`` before its next write."""

    def call_ended(self, call: ServerCall, code: StatusCode, how: Ending, message: str) -> None:
        """Forget an ended call (and log it), and wake the writer for what it sent."""


class ServerCall:
    """The server side of one call, as its handler sees it.

    Handlers use the attributes and the methods of the first section (``metadata``,
    ``deadline``, ``time_remaining()``, ``peer``, ``connection``, ``set_*``, ``send_message``);
    the rest is how the connection driver feeds the call its request and ends it.
    """

    __slots__ = (
        "_accept_encoding",
        "_conn",
        "_host",
        "_initial_metadata",
        "_over",
        "_ready",
        "_request",
        "_scope",
        "_send_wakeup",
        "_trailing_metadata",
        "authority",
        "connection",
        "deadline",
        "metadata",
        "method",
        "started",
        "stream_id",
    )

    def __init__(self, host: CallHost, event: RequestReceived, method: str) -> None:
        self._host = host
        self._conn = host.conn
        self.stream_id = event.stream_id
        #: The method path; for a registered method the handler's copy, one string per method.
        self.method = method
        self.metadata: Metadata = event.metadata
        self.authority = event.authority
        self.connection: ConnectionInfo = host.info
        #: When the request headers arrived (``trio.current_time()``).
        self.started = trio.current_time()
        self.deadline = self.started + event.timeout if event.timeout is not None else math.inf
        self._accept_encoding = event.accept_encoding
        self._request: bytes | None = None
        # Set once the request message and END_STREAM are in and the handler may run; only
        # calls that run in a task of their own have one.
        self._ready: trio.Event | None = None
        self._scope: trio.CancelScope | None = None
        self._initial_metadata: MetadataLike = ()
        self._trailing_metadata: MetadataLike = ()
        self._send_wakeup: trio.Event | None = None
        self._over = False

    # ------------------------------------------------------------------ the handler's view

    @property
    def peer(self) -> str:
        """The remote address, like ``ipv4:127.0.0.1:5000`` or ``unix:/path``."""
        return self.connection.peer

    @property
    def closed(self) -> bool:
        """True once the call has ended (nothing more can be sent)."""
        return self._over

    def time_remaining(self) -> float:
        """Seconds until the call's deadline (``inf`` when the client set none)."""
        return max(0.0, self.deadline - trio.current_time())

    def set_initial_metadata(self, metadata: MetadataLike) -> None:
        """Metadata to send with the response headers (before the first message)."""
        self._initial_metadata = tuple(metadata)

    def set_trailing_metadata(self, metadata: MetadataLike) -> None:
        """Metadata to send with the status in the trailers."""
        self._trailing_metadata = tuple(metadata)

    def set_compression(self, encoding: str | None) -> None:
        """Compress responses with ``encoding`` if the client offered it (else send as is)."""
        if encoding not in (None, "identity") and encoding not in self._accept_encoding:
            return
        self._conn.set_send_encoding(self.stream_id, encoding)

    async def send_message(self, payload: bytes) -> None:
        """Send one serialized response message, waiting while the peer's window is full."""
        conn = self._conn
        sid = self.stream_id
        self._send_initial_metadata()
        if not conn.send_message(sid, payload):
            # The stream is gone (reset, or aborted by the connection): stop the handler.
            await trio.lowlevel.checkpoint()
            raise RpcError(StatusCode.CANCELLED, "call was cancelled")
        host = self._host
        host.wake_writer()
        high = host.high_water
        while conn.pending_output(sid) > high:
            self._send_wakeup = event = trio.Event()
            host.hold(self)
            await event.wait()
        # Past flow control, output waits on the socket: a peer that opened its windows and
        # stopped reading must not make us buffer without bound until the write timeout.
        await host.wait_for_socket()
        await trio.lowlevel.checkpoint()

    # ------------------------------------------------------------------ the one way to end

    def end(self, code: StatusCode, message: str = "", *, details: bytes | None = None,
            how: Ending = Ending.ANSWER) -> bool:
        """End the call: send what ``how`` says, stop its handler, forget it; idempotent.

        Returns False if the call had already ended.
        """
        if self._over:
            return False
        self._over = True
        conn = self._conn
        sid = self.stream_id
        if how is Ending.ANSWER:
            if self._initial_metadata and conn.is_active(sid):
                conn.send_headers(sid, self._initial_metadata)
            conn.send_status(sid, code, message, self._trailing_metadata, details=details)
        elif how is Ending.STATUS:
            conn.send_status(sid, code, message)
        elif how is Ending.DEADLINE:
            # Trailers stuck behind flow control are dropped by the reset.
            conn.send_status(sid, code, message, reset_code=ErrorCode.CANCEL)
            conn.reset(sid, ErrorCode.CANCEL)
        if self._scope is not None:
            self._scope.cancel()
        self._ended()
        self._host.call_ended(self, code, how, message)
        return True

    def fail(self, exc: Exception) -> None:
        """End the call with the status a handler's exception stands for."""
        if isinstance(exc, RpcError):
            if exc.metadata:
                self._trailing_metadata = tuple(exc.metadata)
            self.end(exc.code, exc.message, details=exc.details)
            return
        logger.error("handler for %s raised", self.method, exc_info=exc)
        # Never leak internals to the client: the traceback went to the log.
        self.end(StatusCode.UNKNOWN, "unexpected error in method handler")

    def expire(self) -> None:
        """End the call because its deadline has passed."""
        self.end(StatusCode.DEADLINE_EXCEEDED, "deadline exceeded", how=Ending.DEADLINE)

    def shut_down(self) -> None:
        """The server's grace period is over: end the call with UNAVAILABLE."""
        if self._scope is not None:
            # Its task answers once the cancellation reaches it.
            self._scope.cancel()
        else:
            self.end(StatusCode.UNAVAILABLE, SHUTTING_DOWN, how=Ending.STATUS)

    # ------------------------------------------------------------------ the driver's side

    def receive_message(self, data: bytes, credit: int = 0) -> None:
        """Buffer the request message; a second one ends the call (the request is unary).

        ``credit`` is always 0 here: only streaming calls hold flow-control credit.
        """
        if self._request is not None:
            # grpc-go: a unary request stream carrying a second message is UNIMPLEMENTED.
            self.end(StatusCode.UNIMPLEMENTED, "grpc: received more than one request message "
                     "for a unary request method", how=Ending.STATUS)
            return
        self._request = data

    def request_complete(self) -> bool:
        """The client ended its side; True if the handler should now run inline.

        A call without a request message ends UNIMPLEMENTED; a call with a task of its own
        lets that task go on.
        """
        if self._request is None:
            self.end(StatusCode.UNIMPLEMENTED,
                     "grpc: received no request message for a unary request method",
                     how=Ending.STATUS)
            return False
        if self._ready is not None:
            self._ready.set()
            return False
        return True

    def take_request(self, deserialize: Callable[[bytes], Any]) -> Any:
        """The request object (once); unparsable bytes are RpcError INTERNAL."""
        data, self._request = self._request, None
        assert data is not None
        try:
            return deserialize(data)
        except Exception as exc:
            raise RpcError(StatusCode.INTERNAL,
                           f"grpc: error unmarshalling request: {exc}") from None

    def prepare_task(self) -> None:
        """The handler will run in a task of its own, which waits in ``wait_request()``."""
        self._ready = trio.Event()

    async def wait_request(self, scope: trio.CancelScope) -> None:
        """In the call's task, under ``scope``: wait until the request is complete."""
        self._scope = scope
        assert self._ready is not None
        await self._ready.wait()

    def pending_output(self) -> int:
        """Response bytes of this call waiting for flow-control window."""
        return self._conn.pending_output(self.stream_id)

    def output_drained(self) -> None:
        """The stream's output fell below the high-water mark: let the sender go on."""
        if self._send_wakeup is not None:
            self._send_wakeup.set()
            self._send_wakeup = None

    def answer(self, payload: bytes) -> None:
        """A sync handler's response: queue it (the status follows with ``end``)."""
        if self._initial_metadata:
            self._send_initial_metadata()
        self._conn.send_message(self.stream_id, payload)

    def _send_initial_metadata(self) -> None:
        if self._initial_metadata:
            self._conn.send_headers(self.stream_id, self._initial_metadata)
            self._initial_metadata = ()

    def _ended(self) -> None:
        """The call is over: release a sender waiting for window."""
        if self._send_wakeup is not None:
            self.output_drained()


class PushCall(ServerCall):
    """A server-streaming call driven by sync code, with no task behind it.

    ``start(request, call)`` (see ``wire.handlers.unary_stream_push``) receives one. Its methods
    never block and must be called from the Trio thread:

    * ``send(message)`` queues a response message (serialized at once) and returns whether the
      producer may go on: False means the stream's output is above the high-water mark (the
      client is not reading) or the call is over. After False, hold back; ``on_writable``'s
      callback runs once the output has drained (unless the call ends first).
    * ``finish(code, message)`` ends the call with a status, after the queued messages.
    * ``on_close(callback)``: ``callback()`` runs once when the call ends, however it ends:
      ``finish``, client reset or GOAWAY, connection lost, deadline passed, server shutdown.

    Queued messages are handed to the connection by its writer just before it writes, so a
    status change pushed to thousands of streams on many connections reaches the first
    connections' sockets without waiting for every message to be encoded.
    """

    __slots__ = ("_on_close", "_on_writable", "_outbox", "_serialize")

    def __init__(self, host: CallHost, event: RequestReceived, method: str,
                 serialize: Callable[[Any], bytes]) -> None:
        super().__init__(host, event, method)
        self._serialize = serialize
        # Serialized messages waiting for the writer; None (not an empty list) while idle, so
        # that an idle stream carries no list.
        self._outbox: list[bytes] | None = None
        self._on_writable: Callable[[], None] | None = None
        self._on_close: Callable[[], None] | None = None

    def on_writable(self, callback: Callable[[], None] | None) -> None:
        """Run ``callback()`` whenever output drains below high water after ``send`` said False."""
        self._on_writable = callback

    def on_close(self, callback: Callable[[], None] | None) -> None:
        """Run ``callback()`` once when the call ends (at once if it already has)."""
        if self._over:
            if callback is not None:
                _run_callback(callback, self, "on_close")
            return
        self._on_close = callback

    def send(self, message: Any) -> bool:
        """Queue one response message; return False if the producer should hold back."""
        if self._over:
            return False
        payload = self._serialize(message)
        host = self._host
        outbox = self._outbox
        if outbox is None:
            self._outbox = [payload]
            host.queue_push(self)
        else:
            outbox.append(payload)
        if self.pending_output() > host.high_water:
            host.hold(self)
            return False
        # Windows open but the peer is not reading its socket: the driver reports when the
        # write in progress completes.
        return not host.hold_for_socket(self)

    def finish(self, code: StatusCode = StatusCode.OK, message: str = "", *,
               metadata: MetadataLike | None = None, details: bytes | None = None) -> None:
        """End the call with ``code`` after the messages already queued; idempotent."""
        if self._over:
            return
        if metadata is not None:
            self._trailing_metadata = tuple(metadata)
        self.end(code, message, details=details)

    def end(self, code: StatusCode, message: str = "", *, details: bytes | None = None,
            how: Ending = Ending.ANSWER) -> bool:
        """End the call as ``ServerCall.end`` does; an answer goes after the queued messages."""
        if how is Ending.ANSWER:
            self.flush_outbox()
        return super().end(code, message, details=details, how=how)

    def shut_down(self) -> None:
        """The server's grace period is over: finish with UNAVAILABLE after the queued messages."""
        self.finish(StatusCode.UNAVAILABLE, SHUTTING_DOWN)

    def pending_output(self) -> int:
        """Response bytes waiting for window, the messages not yet handed over included."""
        pending = self._conn.pending_output(self.stream_id)
        if self._outbox is not None:
            # Each message also takes a 5-byte gRPC prefix (compression aside).
            pending += sum(len(p) + 5 for p in self._outbox)
        return pending

    def flush_outbox(self) -> None:
        """Hand the queued messages to the connection (the writer calls this)."""
        outbox = self._outbox
        if outbox is None:
            return
        self._outbox = None
        if self._over:
            return
        conn = self._conn
        sid = self.stream_id
        self._send_initial_metadata()
        for payload in outbox:
            if not conn.send_message(sid, payload):
                return  # the stream is gone; its reset or abort ends the call

    def output_drained(self) -> None:
        """The output drained: run the ``on_writable`` callback (a failing one ends the call)."""
        callback = self._on_writable
        if (not self._over and callback is not None
                and not _run_callback(callback, self, "on_writable")):
            self.finish(StatusCode.UNKNOWN, "unexpected error in method handler")

    def _ended(self) -> None:
        """Drop what is queued and run the on_close callback (once)."""
        self._outbox = None
        self._on_writable = None
        callback, self._on_close = self._on_close, None
        if callback is not None:
            _run_callback(callback, self, "on_close")


def _run_callback(callback: Callable[[], None], call: ServerCall, what: str) -> bool:
    """Run an application callback for ``call``; log and return False if it raised."""
    try:
        callback()
    except Exception:
        logger.exception("%s callback for %s raised", what, call.method)
        return False
    return True
