"""The Trio gRPC server: listeners, one task per connection, one task per call.

``Server`` maps method paths to handlers and serves them over any Trio stream: TCP
(``serve_tcp``), Unix sockets (``serve_unix``), listeners you made yourself (``serve_listeners``),
or a single stream such as one end of ``trio.testing.memory_stream_pair`` (``serve_stream``).
The serve methods follow Trio's convention: ``port = (await nursery.start(server.serve_tcp,
"127.0.0.1", 0))[1]`` returns once listening, with the bound address.

Per connection there are two tasks, a reader that feeds the sans-I/O ``ServerConnection`` and
dispatches its events and the single writer (``Transport``), plus one task per call of an async
handler, running it inside a cancel scope whose deadline is the call's ``grpc-timeout``.

Two kinds of method need no task (see ``wire.handlers``): sync unary handlers run inline in the
reader once their request is complete, and push streams (``PushCall``) are driven by sync calls
from anywhere in the Trio thread. Their deadlines sit in a per-connection heap that the reader
enforces through the timeout of its socket read; their messages are queued on the call and
handed to the connection by the writer just before it writes, so a burst of pushes over many
connections (a health status change fanned out to thousands of Watch streams) reaches the first
connections' sockets without waiting for the last connection's messages to be encoded.

Graceful shutdown (``await server.shutdown(grace)``): run the shutdown hooks (the health service
marks itself NOT_SERVING and ends its Watch streams there), stop accepting, send GOAWAY on every
connection, let calls in flight finish for up to ``grace`` seconds, then cancel what is left
(those calls end with UNAVAILABLE) and close.
"""

from __future__ import annotations

import heapq
import inspect
import logging
import math
import os
import socket
import ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from .connection import ServerConfig, ServerConnection
from .errors import ProtocolError, RpcError
from .events import (
    CallAborted,
    ConnectionTerminated,
    MessageReceived,
    RequestEnded,
    RequestReceived,
    StreamReset,
)
from .h2codec import CANCEL, ENHANCE_YOUR_CALM, NO_ERROR, PROTOCOL_ERROR
from .handlers import MethodHandler, MethodKind
from .metadata import Metadata, MetadataLike
from .status import StatusCode
from .tls import negotiated_h2, peer_certificate
from .transport import Transport

__all__ = ["ConnectionInfo", "PushCall", "Server", "ServerCall", "ServerOptions"]

logger = logging.getLogger("wire.server")

_CANCEL = CANCEL


@dataclass(frozen=True)
class ServerOptions:
    """Timeouts and sizes of the Trio layer (the protocol limits are in ``ServerConfig``)."""

    #: The client must send its connection preface (and SETTINGS) within this many seconds.
    preface_timeout: float = 10.0
    #: A connection with no calls and no bytes received for this long is closed with GOAWAY.
    idle_timeout: float = 300.0
    #: A write that makes no progress for this long means the peer stopped reading: close.
    write_timeout: float = 30.0
    #: Response bytes a stream may queue beyond the peer's window before ``send`` waits.
    stream_high_water: int = 64 * 1024
    #: Bytes asked of the socket per read.
    read_size: int = 64 * 1024
    #: Connections served at once; more are sent GOAWAY(ENHANCE_YOUR_CALM) and closed.
    max_connections: int = 10_000
    #: While this many bytes wait to be written, stop reading the connection: a peer that
    #: floods us with frames needing replies (PING, SETTINGS) but does not read them gets its
    #: own input throttled instead of growing our output buffer.
    max_write_backlog: int = 1024 * 1024


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


class ServerCall:
    """The server side of one call, as its handler sees it."""

    # Thousands may be open at once (one per Watch stream): slots, and no Trio objects
    # created for calls that do not run in a task.
    __slots__ = (
        "_conn",
        "_initial_metadata",
        "_ready",
        "_request",
        "_request_count",
        "_reset",
        "_scope",
        "_send_wakeup",
        "_state",
        "_trailing_metadata",
        "authority",
        "connection",
        "deadline",
        "handler",
        "metadata",
        "method",
        "stream_id",
    )

    def __init__(self, state: _ConnectionState, event: RequestReceived,
                 handler: MethodHandler[Any, Any] | None) -> None:
        self._state = state
        self._conn = state.conn
        self.stream_id = event.stream_id
        # The handler's copy of the path: one string shared by every call of the method.
        self.method = handler.path if handler is not None else event.method
        self.metadata: Metadata = event.metadata
        self.authority = event.authority
        self.connection: ConnectionInfo = state.info
        self.handler = handler
        self.deadline = (
            trio.current_time() + event.timeout if event.timeout is not None else math.inf
        )
        self._request: bytes | None = None
        self._request_count = 0
        # Set once the request message and END_STREAM are in and the handler may run; only
        # calls that run in a task of their own have one.
        self._ready: trio.Event | None = None
        self._scope: trio.CancelScope | None = None
        self._initial_metadata: MetadataLike = ()
        self._trailing_metadata: MetadataLike = ()
        self._send_wakeup: trio.Event | None = None
        self._reset = False

    @property
    def peer(self) -> str:
        """The remote address, like ``ipv4:127.0.0.1:5000`` or ``unix:/path``."""
        return self.connection.peer

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
        if encoding is not None and encoding != "identity":
            accepted = self._state.accept_encodings.get(self.stream_id, frozenset())
            if encoding not in accepted:
                return
        self._conn.set_send_encoding(self.stream_id, encoding)

    async def send_message(self, payload: bytes) -> None:
        """Send one serialized response message, waiting while the peer's window is full."""
        conn = self._conn
        sid = self.stream_id
        if self._initial_metadata:
            conn.send_headers(sid, self._initial_metadata)
            self._initial_metadata = ()
        if not conn.send_message(sid, payload):
            # The stream is gone (reset, or aborted by the connection): stop the handler.
            await trio.lowlevel.checkpoint()
            raise RpcError(StatusCode.CANCELLED, "call was cancelled")
        transport = self._state.transport
        transport.wake()
        options = self._state.options
        high = options.stream_high_water
        while conn.pending_output(sid) > high:
            self._send_wakeup = event = trio.Event()
            self._state.blocked[sid] = self
            await event.wait()
        # Past flow control, output waits on the socket: a peer that opened its windows and
        # stopped reading must not make us buffer without bound until the write timeout.
        while (transport.broken is None
               and transport.backlog + conn.buffered_output() > options.max_write_backlog):
            await transport.flushed()
        await trio.lowlevel.checkpoint()

    def _pending_output(self) -> int:
        """Response bytes of this call waiting for flow-control window."""
        return self._conn.pending_output(self.stream_id)

    def _wake_sender(self) -> None:
        """The stream's output fell below the high-water mark (or the call ended)."""
        if self._send_wakeup is not None:
            self._send_wakeup.set()
            self._send_wakeup = None


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

    Queued messages are handed to the connection by its writer task just before it writes, so a
    status change pushed to thousands of streams on many connections reaches the first
    connections' sockets without waiting for every message to be encoded.
    """

    __slots__ = ("_on_close", "_on_writable", "_outbox", "_over")

    def __init__(self, state: _ConnectionState, event: RequestReceived,
                 handler: MethodHandler[Any, Any]) -> None:
        super().__init__(state, event, handler)
        # Serialized messages waiting for the writer; None (not an empty list) while idle, so
        # that an idle stream carries no list.
        self._outbox: list[bytes] | None = None
        self._on_writable: Callable[[], None] | None = None
        self._on_close: Callable[[], None] | None = None
        self._over = False

    @property
    def closed(self) -> bool:
        """True once the call has ended (nothing more can be sent)."""
        return self._over

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
        assert self.handler is not None
        payload = self.handler.response_serializer(message)
        state = self._state
        outbox = self._outbox
        if outbox is None:
            self._outbox = [payload]
            state.push_ready.append(self)
            state.transport.wake()
        else:
            outbox.append(payload)
        options = state.options
        if self._pending_output() > options.stream_high_water:
            state.blocked[self.stream_id] = self
            return False
        if state.transport.backlog > options.max_write_backlog:
            # Windows open but the peer is not reading its socket: the writer reports when
            # the write in progress completes.
            state.write_blocked[self.stream_id] = self
            return False
        return True

    def finish(self, code: StatusCode = StatusCode.OK, message: str = "", *,
               metadata: MetadataLike | None = None, details: bytes | None = None) -> None:
        """End the call with ``code`` after the messages already queued; idempotent."""
        if self._over:
            return
        self._flush()
        if metadata is not None:
            self._trailing_metadata = tuple(metadata)
        conn = self._conn
        sid = self.stream_id
        if self._initial_metadata and conn.is_active(sid):
            conn.send_headers(sid, self._initial_metadata)
        conn.send_status(sid, code, message, self._trailing_metadata, details=details)
        state = self._state
        self._close()
        state.forget(self)
        state.transport.wake()

    def _pending_output(self) -> int:
        pending = self._conn.pending_output(self.stream_id)
        if self._outbox is not None:
            # Each message also takes a 5-byte gRPC prefix (compression aside).
            pending += sum(len(p) + 5 for p in self._outbox)
        return pending

    def _flush(self) -> None:
        """Hand the queued messages to the connection (the writer calls this)."""
        outbox = self._outbox
        if outbox is None:
            return
        self._outbox = None
        if self._over:
            return
        conn = self._conn
        sid = self.stream_id
        if self._initial_metadata:
            conn.send_headers(sid, self._initial_metadata)
            self._initial_metadata = ()
        for payload in outbox:
            if not conn.send_message(sid, payload):
                return  # the stream is gone; its reset or abort ends the call

    def _wake_sender(self) -> None:
        callback = self._on_writable
        if (not self._over and callback is not None
                and not _run_callback(callback, self, "on_writable")):
            self.finish(StatusCode.UNKNOWN, "unexpected error in method handler")

    def _close(self) -> None:
        """Mark the call over and run its on_close callback (once)."""
        if self._over:
            return
        self._over = True
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


class _ConnectionState:
    """Bookkeeping the reader, the writer and the calls of one connection share."""

    def __init__(self, conn: ServerConnection, stream: trio.abc.SendStream,
                 info: ConnectionInfo, options: ServerOptions) -> None:
        self.conn = conn
        # The writer takes its bytes from ``data_to_send`` here, which first flushes pushes.
        self.transport = Transport(stream, self, write_timeout=options.write_timeout)
        self.info = info
        self.options = options
        self.calls: dict[int, ServerCall] = {}
        # Calls whose stream is above high water, to wake when the client opens its window.
        self.blocked: dict[int, ServerCall] = {}
        # Push calls held back because the socket is not taking our writes.
        self.write_blocked: dict[int, PushCall] = {}
        # Push calls with messages queued, for the writer to hand to the connection.
        self.push_ready: list[PushCall] = []
        # (deadline, stream id, call) of task-less calls with a deadline; the reader's read
        # times out at the first one. Entries of calls already over are skipped when popped.
        self.deadlines: list[tuple[float, int, ServerCall]] = []
        # Task-less calls with a deadline started in the current read, for the heap if they
        # are still open after it (a Check answered in the same read never gets there).
        self.new_timed: list[ServerCall] = []
        self.accept_encodings: dict[int, frozenset[str]] = {}
        self.all_done = trio.Event()
        self.all_done.set()
        self.peer_gone_away = False
        # False once a draining connection has no calls left: the read loop then ends. Only
        # the socket read itself is interrupted (through receive_scope), never a write.
        self.reading = True
        # The timeout of the read in progress; the idle timer is armed through it when the
        # last call ends while the reader waits (it started waiting with no timeout).
        self.receive_scope: trio.CancelScope | None = None

    def stop_reading(self) -> None:
        """End the read loop: at once if it is waiting for input, else after its batch."""
        self.reading = False
        if self.receive_scope is not None:
            self.receive_scope.cancel()

    def data_to_send(self) -> bytes:
        """The writer's source: pushed messages go to the connection first."""
        if self.write_blocked:
            # The writer only asks again once its last write completed: the socket took it.
            calls = list(self.write_blocked.values())
            self.write_blocked.clear()
            high = self.options.stream_high_water
            for call in calls:
                if call._pending_output() > high:
                    self.blocked[call.stream_id] = call
                else:
                    call._wake_sender()
        if self.push_ready:
            ready, self.push_ready = self.push_ready, []
            for call in ready:
                call._flush()
        return self.conn.data_to_send()

    def add_deadline(self, call: ServerCall) -> None:
        """Have the reader end ``call`` at its deadline (for calls without a task)."""
        heap = self.deadlines
        if len(heap) > 64 and len(heap) > 2 * len(self.calls):
            # Calls that ended early leave entries behind; drop them before they pile up.
            heap[:] = [e for e in heap if self.calls.get(e[1]) is e[2]]
            heapq.heapify(heap)
        heapq.heappush(heap, (call.deadline, call.stream_id, call))

    def next_deadline(self) -> float:
        """The earliest deadline of a task-less call (``inf`` if none)."""
        return self.deadlines[0][0] if self.deadlines else math.inf

    def forget(self, call: ServerCall) -> None:
        """Drop an ended call from the bookkeeping."""
        if self.calls.pop(call.stream_id, None) is not None:
            self.accept_encodings.pop(call.stream_id, None)
            self.blocked.pop(call.stream_id, None)
            self.write_blocked.pop(call.stream_id, None)
            if not self.calls:
                self.deadlines.clear()
                self.all_done.set()
                if self.conn.draining or self.peer_gone_away:
                    self.stop_reading()
                elif self.receive_scope is not None and self.conn.preface_received:
                    # Not min(): the read may be waiting for the deadline of a call that has
                    # just ended, and an idle connection's timer is the idle timeout.
                    self.receive_scope.deadline = trio.current_time() + self.options.idle_timeout


class Server:
    """A gRPC server for unary and server-streaming methods."""

    def __init__(
        self,
        handlers: Iterable[MethodHandler[Any, Any]] = (),
        *,
        config: ServerConfig | None = None,
        options: ServerOptions | None = None,
    ) -> None:
        self.config = config or ServerConfig()
        self.options = options or ServerOptions()
        self._handlers: dict[str, MethodHandler[Any, Any]] = {}
        self._services: set[str] = set()
        self.add_handlers(handlers)
        self._shutdown_hooks: list[Callable[[], None]] = []
        self._connections: set[_ConnectionState] = set()
        self._listen_scopes: set[trio.CancelScope] = set()
        self._conn_scopes: set[trio.CancelScope] = set()
        self._shutting_down = False
        self._no_connections = trio.Event()
        self._no_connections.set()

    # ------------------------------------------------------------------ registration

    def add_handlers(self, handlers: Iterable[MethodHandler[Any, Any]]) -> None:
        """Register methods; a path registered twice is an error."""
        for h in handlers:
            if h.path in self._handlers:
                raise ValueError(f"method {h.path} is already registered")
            self._handlers[h.path] = h
            self._services.add(h.path.split("/")[1])

    def add_shutdown_hook(self, hook: Callable[[], None]) -> None:
        """Run ``hook()`` first thing in ``shutdown()`` (before GOAWAY is sent)."""
        self._shutdown_hooks.append(hook)

    @property
    def methods(self) -> Sequence[str]:
        """The registered method paths."""
        return tuple(self._handlers)

    @property
    def shutting_down(self) -> bool:
        """True once ``shutdown()`` has begun."""
        return self._shutting_down

    # ------------------------------------------------------------------ serving

    async def serve_tcp(
        self,
        host: str | None,
        port: int,
        *,
        backlog: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on TCP and serve until cancelled or shut down; reports the bound address.

        With ``ssl_context`` (see ``wire.tls.server_context``) every connection is TLS and must
        negotiate ALPN ``h2``.
        """
        listeners = await trio.open_tcp_listeners(port, host=host, backlog=backlog)
        sock = listeners[0].socket
        addr = sock.getsockname()
        await self.serve_listeners(listeners, ssl_context=ssl_context, task_status=task_status,
                                   _address=(addr[0], addr[1]))

    async def serve_unix(
        self,
        path: str,
        *,
        backlog: int = 128,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on a Unix domain socket at ``path`` (replacing a stale one) and serve."""
        if _is_socket(path):
            os.unlink(path)
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await sock.bind(path)
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        try:
            await self.serve_listeners([trio.SocketListener(sock)], task_status=task_status,
                                       _address=path)
        finally:
            try:
                os.unlink(path)
            except OSError:
                pass

    async def serve_listeners(
        self,
        listeners: Sequence[trio.abc.Listener[Any]],
        *,
        ssl_context: ssl.SSLContext | None = None,
        task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
        _address: Any = None,
    ) -> None:
        """Accept on ``listeners`` and serve each connection; returns after ``shutdown()``."""
        if ssl_context is not None:
            listeners = [trio.SSLListener(lst, ssl_context, https_compatible=False)
                         for lst in listeners]
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as accept_scope:
                self._listen_scopes.add(accept_scope)
                try:
                    for listener in listeners:
                        nursery.start_soon(self._accept_loop, listener, nursery)
                    task_status.started(_address)
                    await trio.sleep_forever()
                finally:
                    self._listen_scopes.discard(accept_scope)
                    for listener in listeners:
                        with trio.CancelScope(shield=True):
                            await listener.aclose()

    async def _accept_loop(self, listener: trio.abc.Listener[Any],
                           nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return
            except OSError as exc:
                # EMFILE and friends: back off instead of spinning, keep serving the others.
                logger.warning("accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            if len(self._connections) >= self.options.max_connections:
                nursery.start_soon(self._turn_away, stream)
                continue
            nursery.start_soon(self._serve_accepted, stream)

    async def _serve_accepted(self, stream: trio.abc.Stream) -> None:
        """``serve_stream`` for the accept loop: one connection's failure stays its own."""
        peer = _describe(stream, peer=True)
        try:
            await self.serve_stream(stream)
        except Exception:
            # A bug reached by one peer's bytes must not end every other connection (they
            # share the listener's nursery); serve_stream has closed the stream already.
            logger.exception("connection from %s failed", peer)

    async def _turn_away(self, stream: trio.abc.Stream) -> None:
        """Refuse a connection over the limit politely: SETTINGS and GOAWAY, then close."""
        logger.warning("refusing connection: %d connections already open",
                       len(self._connections))
        try:
            with trio.move_on_after(1.0):
                if isinstance(stream, trio.SSLStream):
                    await stream.do_handshake()
                conn = ServerConnection(self.config)
                conn.close(ENHANCE_YOUR_CALM, "too many connections")
                await stream.send_all(conn.data_to_send())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def serve_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one already-connected stream until it ends; closes it."""
        peer_cert = None
        if isinstance(stream, trio.SSLStream):
            # Registered like a connection so that shutdown() can cancel a slow handshake.
            handshake_scope = trio.CancelScope()
            self._conn_scopes.add(handshake_scope)
            try:
                with handshake_scope:
                    ok, peer_cert = await self._tls_handshake(stream)
            finally:
                self._conn_scopes.discard(handshake_scope)
            if not ok or handshake_scope.cancelled_caught:
                await trio.aclose_forcefully(stream)
                return
        info = ConnectionInfo(peer=_describe(stream, peer=True),
                              local=_describe(stream, peer=False),
                              tls=isinstance(stream, trio.SSLStream), peer_certificate=peer_cert)
        conn = ServerConnection(self.config)
        state = _ConnectionState(conn, stream, info, self.options)
        transport = state.transport
        self._connections.add(state)
        if self._no_connections.is_set():
            self._no_connections = trio.Event()
        conn_scope = trio.CancelScope()
        self._conn_scopes.add(conn_scope)
        try:
            with conn_scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self._run_writer, transport, nursery.cancel_scope)
                    if self._shutting_down:
                        conn.start_drain()
                    transport.wake()
                    await self._read_loop(stream, state, nursery)
                    # Reading is over (EOF, GOAWAY, drain): let calls in flight end, say goodbye.
                    await state.all_done.wait()
                    conn.close()
                    await transport.flushed()
                    nursery.cancel_scope.cancel()
        finally:
            # Calls without a task learn here that the connection is gone (their tasks
            # told the others).
            for call in list(state.calls.values()):
                if isinstance(call, PushCall):
                    call._close()
            self._conn_scopes.discard(conn_scope)
            self._connections.discard(state)
            if not self._connections:
                self._no_connections.set()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _tls_handshake(self, stream: trio.SSLStream[Any],
                             ) -> tuple[bool, dict[str, Any] | None]:
        """Complete the TLS handshake and insist on ALPN h2; returns (ok, peer certificate)."""
        try:
            with trio.fail_after(self.options.preface_timeout):
                await stream.do_handshake()
        except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            logger.info("%s: TLS handshake failed: %s",
                        _describe(stream, peer=True), exc.__cause__ or exc)
            return False, None
        if not negotiated_h2(stream):
            # gRPC requires HTTP/2 by ALPN; a client that did not ask for h2 cannot speak it.
            logger.info("%s: refusing TLS client that did not negotiate ALPN h2 (got %r)",
                        _describe(stream, peer=True), stream.selected_alpn_protocol())
            return False, None
        return True, peer_certificate(stream)

    @staticmethod
    async def _run_writer(transport: Transport, scope: trio.CancelScope, *,
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await transport.run(task_status=task_status)
        # run() returns only when the socket broke or the peer stopped reading: nothing more
        # can be said on this connection, so end it and every call on it.
        if transport.broken is not None:
            logger.debug("closing connection: %s", transport.broken)
        scope.cancel()

    async def _read_loop(self, stream: trio.abc.Stream, state: _ConnectionState,
                         nursery: trio.Nursery) -> None:
        conn = state.conn
        opts = self.options
        # The whole preface (magic and SETTINGS) must be in by then, however it is dripped.
        preface_deadline = trio.current_time() + opts.preface_timeout
        while state.reading:
            preface = not conn.preface_received
            if preface:
                deadline = preface_deadline
            elif not state.calls:
                deadline = trio.current_time() + opts.idle_timeout
            else:
                deadline = state.next_deadline()
            with trio.move_on_at(deadline) as scope:
                state.receive_scope = scope
                try:
                    data = await stream.receive_some(opts.read_size)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
            state.receive_scope = None
            if not state.reading:
                return
            if scope.cancelled_caught and not preface and state.calls:
                # Not idle: the deadline of a task-less call has come.
                self._expire_due(state)
                state.transport.wake()
                if (conn.draining or state.peer_gone_away) and not state.calls:
                    return
                continue
            if scope.cancelled_caught:
                if preface:
                    logger.debug("%s: no HTTP/2 preface within %s s", state.info.peer,
                                 opts.preface_timeout)
                    conn.close(PROTOCOL_ERROR, "preface timeout")
                else:
                    conn.close(NO_ERROR, "idle timeout")
                state.transport.wake()
                return
            if not data:
                # EOF: the client can send nothing more; calls in flight are cancelled.
                for call in list(state.calls.values()):
                    self._cancel_call(state, call)
                return
            try:
                events = conn.receive_data(bytes(data))
            except ProtocolError as exc:
                logger.info("%s: HTTP/2 protocol error: %s", state.info.peer, exc.message)
                for call in list(state.calls.values()):
                    self._cancel_call(state, call)
                state.transport.wake()
                return
            for ev in events:
                self._dispatch(ev, state, nursery)
            if state.new_timed:
                for call in state.new_timed:
                    if state.calls.get(call.stream_id) is call:
                        state.add_deadline(call)
                state.new_timed.clear()
            if state.blocked:
                for sid, call in list(state.blocked.items()):
                    if call._pending_output() <= opts.stream_high_water:
                        del state.blocked[sid]
                        call._wake_sender()
            await state.transport.send_now()
            if (conn.draining or state.peer_gone_away) and not state.calls:
                return
            if state.transport.backlog + conn.buffered_output() > opts.max_write_backlog:
                await state.transport.flushed()

    def _dispatch(self, ev: Any, state: _ConnectionState, nursery: trio.Nursery) -> None:
        conn = state.conn
        if isinstance(ev, MessageReceived):
            call = state.calls.get(ev.stream_id)
            if call is None:
                return
            call._request_count += 1
            if call._request_count > 1:
                # grpc-go: a unary request stream carrying a second message is UNIMPLEMENTED.
                self._end_call(state, call, StatusCode.UNIMPLEMENTED,
                               "grpc: received more than one request message for a unary "
                               "request method")
                return
            call._request = ev.data
        elif isinstance(ev, RequestEnded):
            call = state.calls.get(ev.stream_id)
            if call is None:
                return
            if call._request is None:
                self._end_call(state, call, StatusCode.UNIMPLEMENTED,
                               "grpc: received no request message for a unary request method")
                return
            if call._ready is not None:
                call._ready.set()
            elif isinstance(call, PushCall):
                self._start_push(state, call)
            else:
                self._run_sync(state, call)
        elif isinstance(ev, RequestReceived):
            handler = self._handlers.get(ev.method)
            started = (PushCall(state, ev, handler)
                       if handler is not None and handler.kind is MethodKind.UNARY_STREAM_PUSH
                       else ServerCall(state, ev, handler))
            state.calls[ev.stream_id] = started
            state.all_done = trio.Event() if state.all_done.is_set() else state.all_done
            state.accept_encodings[ev.stream_id] = ev.accept_encoding
            if handler is None:
                service = ev.method.split("/")[1] if ev.method.count("/") >= 2 else ""
                if service in self._services:
                    msg = f"unknown method {ev.method.rsplit('/', 1)[-1]} for service {service}"
                else:
                    msg = f"unknown service {service}"
                self._end_call(state, started, StatusCode.UNIMPLEMENTED, msg)
                return
            if self._shutting_down and not conn.draining:
                conn.start_drain()
            kind = handler.kind
            if kind is MethodKind.UNARY_UNARY or kind is MethodKind.UNARY_STREAM:
                # The call's task starts now, not when the request is complete, so that its
                # deadline also covers a client that never finishes sending the request.
                started._ready = trio.Event()
                nursery.start_soon(self._run_call, state, started)
            elif started.deadline != math.inf:
                # No task: the reader enforces the deadline (if the call is still open after
                # this read; most sync calls are answered within it).
                state.new_timed.append(started)
        elif isinstance(ev, (StreamReset, CallAborted)):
            call = state.calls.get(ev.stream_id)
            if call is not None:
                call._reset = isinstance(ev, StreamReset)
                self._cancel_call(state, call)
        elif isinstance(ev, ConnectionTerminated):
            # A client's GOAWAY names the last *server-initiated* stream it processed (RFC 9113
            # section 6.8); we initiate none, so every call it started stays valid: let them
            # finish, then close (the read loop ends once no call is left).
            state.peer_gone_away = True

    def _end_call(self, state: _ConnectionState, call: ServerCall, code: StatusCode,
                  message: str) -> None:
        state.conn.send_status(call.stream_id, code, message)
        self._cancel_call(state, call)

    def _cancel_call(self, state: _ConnectionState, call: ServerCall) -> None:
        if call._scope is not None:
            call._scope.cancel()
        if isinstance(call, PushCall):
            call._close()
        else:
            call._wake_sender()
        state.forget(call)

    def _forget(self, state: _ConnectionState, call: ServerCall) -> None:
        state.forget(call)

    def _expire(self, state: _ConnectionState, call: ServerCall) -> None:
        """End a call whose deadline has passed, as the cancel scope of a task would."""
        # SPEC: on deadline, answer DEADLINE_EXCEEDED and RST_STREAM CANCEL. The reset goes
        # out only if the client is still sending (a closed stream takes no more frames);
        # trailers stuck behind flow control are dropped for it.
        sid = call.stream_id
        state.conn.send_status(sid, StatusCode.DEADLINE_EXCEEDED, "deadline exceeded",
                               reset_code=_CANCEL)
        state.conn.reset(sid, _CANCEL)
        self._cancel_call(state, call)

    def _expire_due(self, state: _ConnectionState) -> None:
        """End every task-less call whose deadline has passed."""
        heap = state.deadlines
        now = trio.current_time()
        while heap and heap[0][0] <= now:
            _, sid, call = heapq.heappop(heap)
            if state.calls.get(sid) is call:
                self._expire(state, call)

    def _request_of(self, state: _ConnectionState, call: ServerCall) -> Any:
        """Deserialize a task-less call's request; None (call ended) if late or unparsable."""
        if trio.current_time() >= call.deadline:
            # The deadline passed before the request was complete (or on arrival, for a
            # zero timeout): a handler that cannot block still must not answer late.
            self._expire(state, call)
            return None
        try:
            return _deserialize(call)
        except RpcError as exc:
            self._end_call(state, call, exc.code, exc.message)
            return None

    def _run_sync(self, state: _ConnectionState, call: ServerCall) -> None:
        """Run a sync unary handler inline: no task, no cancel scope, no events."""
        request = self._request_of(state, call)
        if request is None and call.stream_id not in state.calls:
            return
        handler = call.handler
        assert handler is not None
        conn = state.conn
        sid = call.stream_id
        code, message, details = StatusCode.OK, "", None
        try:
            response = handler.handler(request, call)
            if inspect.iscoroutine(response):
                response.close()  # never awaited: no "coroutine was never awaited" warning
                raise TypeError(f"sync handler for {call.method} returned a coroutine; "
                                "register it with unary_unary(..., sync=False)")
            payload = handler.response_serializer(response)
            if call._initial_metadata:
                conn.send_headers(sid, call._initial_metadata)
                call._initial_metadata = ()
            conn.send_message(sid, payload)
        except Exception as exc:
            code, message, details = _outcome(call, exc)
        _answer(conn, call, code, message, details)
        state.forget(call)
        # The reader wakes the writer once it has handled the whole read.

    def _start_push(self, state: _ConnectionState, call: PushCall) -> None:
        """Run a push stream's ``start`` inline; the call then lives without a task."""
        request = self._request_of(state, call)
        if request is None and call.stream_id not in state.calls:
            return
        handler = call.handler
        assert handler is not None
        try:
            handler.handler(request, call)
        except RpcError as exc:
            call.finish(exc.code, exc.message, metadata=exc.metadata or None,
                        details=exc.details)
        except Exception:
            logger.exception("handler for %s raised", call.method)
            call.finish(StatusCode.UNKNOWN, "unexpected error in method handler")

    async def _run_call(self, state: _ConnectionState, call: ServerCall) -> None:
        conn = state.conn
        handler = call.handler
        assert handler is not None
        sid = call.stream_id
        if sid not in state.calls:
            return  # ended before this task ran (bad message, reset, ...)
        code, message, details = StatusCode.OK, "", None
        with trio.CancelScope(deadline=call.deadline) as scope:
            call._scope = scope
            try:
                assert call._ready is not None
                await call._ready.wait()
                request = _deserialize(call)
                if handler.kind is MethodKind.UNARY_UNARY:
                    response = await handler.handler(request, call)
                    await call.send_message(handler.response_serializer(response))
                else:
                    serialize = handler.response_serializer

                    async def send(msg: Any) -> None:
                        await call.send_message(serialize(msg))

                    await handler.handler(request, call, send)
            except Exception as exc:
                code, message, details = _outcome(call, exc)
        if scope.cancelled_caught:
            if call.stream_id not in state.calls:
                return  # reset by the client or ended by the connection: nothing to say
            if trio.current_time() >= call.deadline:
                self._expire(state, call)
            else:
                conn.send_status(sid, StatusCode.UNAVAILABLE, "server is shutting down")
        else:
            _answer(conn, call, code, message, details)
        self._forget(state, call)
        state.transport.wake()

    # ------------------------------------------------------------------ shutdown

    async def shutdown(self, grace: float = 5.0) -> None:
        """Drain: hooks, stop accepting, GOAWAY, wait up to ``grace`` s for calls, close."""
        if not self._shutting_down:
            self._shutting_down = True
            for hook in self._shutdown_hooks:
                try:
                    hook()
                except Exception:
                    logger.exception("shutdown hook %r raised", hook)
            for scope in list(self._listen_scopes):
                scope.cancel()
            for state in list(self._connections):
                state.conn.start_drain()
                state.transport.wake()
                if not state.calls:
                    state.stop_reading()
        with trio.move_on_after(grace):
            await self._no_connections.wait()
        # Grace is over: calls still running end with UNAVAILABLE ("server is shutting down").
        for state in list(self._connections):
            for call in list(state.calls.values()):
                if call._scope is not None:
                    call._scope.cancel()
                elif isinstance(call, PushCall):
                    call.finish(StatusCode.UNAVAILABLE, "server is shutting down")
                else:
                    self._end_call(state, call, StatusCode.UNAVAILABLE, "server is shutting down")
            state.transport.wake()
        with trio.move_on_after(1.0):
            await self._no_connections.wait()
        for scope in list(self._conn_scopes):
            scope.cancel()
        await self._no_connections.wait()

    async def aclose(self) -> None:
        """Shut down at once (no grace)."""
        await self.shutdown(0)


def _deserialize(call: ServerCall) -> Any:
    """The call's request object; unparsable bytes are RpcError INTERNAL."""
    handler = call.handler
    assert handler is not None and call._request is not None
    data, call._request = call._request, None
    try:
        return handler.request_deserializer(data)
    except Exception as exc:
        raise RpcError(StatusCode.INTERNAL, f"grpc: error unmarshalling request: {exc}") from None


def _outcome(call: ServerCall, exc: Exception) -> tuple[StatusCode, str, bytes | None]:
    """The status a handler's exception ends its call with."""
    if isinstance(exc, RpcError):
        if exc.metadata:
            call._trailing_metadata = exc.metadata
        return exc.code, exc.message, exc.details
    logger.error("handler for %s raised", call.method, exc_info=exc)
    # Never leak internals to the client: the traceback went to the log.
    return StatusCode.UNKNOWN, "unexpected error in method handler", None


def _answer(conn: ServerConnection, call: ServerCall, code: StatusCode, message: str,
            details: bytes | None) -> None:
    """End a call that ran to completion: initial metadata if still unsent, then trailers."""
    sid = call.stream_id
    if call._initial_metadata and conn.is_active(sid):
        conn.send_headers(sid, call._initial_metadata)
    conn.send_status(sid, code, message, call._trailing_metadata, details=details)


def _describe(stream: trio.abc.Stream, *, peer: bool) -> str:
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    sock = getattr(stream, "socket", None)
    if sock is None:
        return "memory"
    try:
        addr = sock.getpeername() if peer else sock.getsockname()
    except OSError:
        return "unknown"
    if sock.family == socket.AF_INET:
        return f"ipv4:{addr[0]}:{addr[1]}"
    if sock.family == socket.AF_INET6:
        return f"ipv6:[{addr[0]}]:{addr[1]}"
    return f"unix:{addr}" if addr else "unix:"


def _is_socket(path: str) -> bool:
    import stat

    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False
