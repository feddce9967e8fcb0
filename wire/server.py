"""The Trio gRPC server: listeners, one task per connection, one task per call.

``Server`` maps method paths to handlers and serves them over any Trio stream: TCP
(``serve_tcp``), Unix sockets (``serve_unix``), listeners you made yourself (``serve_listeners``),
or a single stream such as one end of ``trio.testing.memory_stream_pair`` (``serve_stream``).
The serve methods follow Trio's convention: ``port = (await nursery.start(server.serve_tcp,
"127.0.0.1", 0))[1]`` returns once listening, with the bound address.

Per connection there are three kinds of task: a reader that feeds the sans-I/O
``ServerConnection`` and dispatches its events, the single writer (``Transport``), and one task
per call running the handler inside a cancel scope whose deadline is the call's ``grpc-timeout``.

Graceful shutdown (``await server.shutdown(grace)``): run the shutdown hooks (the health service
marks itself NOT_SERVING and ends its Watch streams there), stop accepting, send GOAWAY on every
connection, let calls in flight finish for up to ``grace`` seconds, then cancel what is left
(those calls end with UNAVAILABLE) and close.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import h2.errors
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
from .handlers import MethodHandler, MethodKind
from .metadata import Metadata, MetadataLike
from .status import StatusCode
from .tls import negotiated_h2, peer_certificate
from .transport import Transport

__all__ = ["ConnectionInfo", "Server", "ServerCall", "ServerOptions"]

logger = logging.getLogger("wire.server")

_CANCEL = h2.errors.ErrorCodes.CANCEL


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

    __slots__ = (
        "_conn",
        "_done",
        "_initial_metadata",
        "_ready",
        "_request",
        "_request_count",
        "_reset",
        "_scope",
        "_send_wakeup",
        "_state",
        "_trailing_metadata",
        "_transport",
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
        self._transport = state.transport
        self.stream_id = event.stream_id
        self.method = event.method
        self.metadata: Metadata = event.metadata
        self.authority = event.authority
        self.connection: ConnectionInfo = state.info
        self.handler = handler
        self.deadline = (
            trio.current_time() + event.timeout if event.timeout is not None else math.inf
        )
        self._request: bytes | None = None
        self._request_count = 0
        # Set once the request message and END_STREAM are in and the handler may run.
        self._ready = trio.Event()
        self._scope: trio.CancelScope | None = None
        self._initial_metadata: MetadataLike = ()
        self._trailing_metadata: MetadataLike = ()
        self._send_wakeup: trio.Event | None = None
        self._done = False
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
        transport = self._transport
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

    def _wake_sender(self) -> None:
        if self._send_wakeup is not None:
            self._send_wakeup.set()
            self._send_wakeup = None


class _ConnectionState:
    """Bookkeeping the reader and the call tasks of one connection share."""

    def __init__(self, conn: ServerConnection, transport: Transport, info: ConnectionInfo,
                 options: ServerOptions) -> None:
        self.conn = conn
        self.transport = transport
        self.info = info
        self.options = options
        self.calls: dict[int, ServerCall] = {}
        self.blocked: dict[int, ServerCall] = {}
        self.accept_encodings: dict[int, frozenset[str]] = {}
        self.all_done = trio.Event()
        self.all_done.set()
        self.peer_gone_away = False
        # Cancelled to stop reading once a draining connection has no calls left.
        self.read_scope = trio.CancelScope()
        # The timeout of the read in progress; the idle timer is armed through it when the
        # last call ends while the reader waits (it started waiting with no timeout).
        self.receive_scope: trio.CancelScope | None = None


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
                conn.close(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, "too many connections")
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
        transport = Transport(stream, conn, write_timeout=self.options.write_timeout)
        state = _ConnectionState(conn, transport, info, self.options)
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
                    with state.read_scope:
                        await self._read_loop(stream, state, nursery)
                    # Reading is over (EOF, GOAWAY, drain): let calls in flight end, say goodbye.
                    await state.all_done.wait()
                    conn.close()
                    await transport.flushed()
                    nursery.cancel_scope.cancel()
        finally:
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
        while True:
            preface = not conn.preface_received
            if preface:
                deadline = preface_deadline
            elif not state.calls:
                deadline = trio.current_time() + opts.idle_timeout
            else:
                deadline = math.inf
            with trio.move_on_at(deadline) as scope:
                state.receive_scope = scope
                try:
                    data = await stream.receive_some(opts.read_size)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
            if scope.cancelled_caught:
                if preface:
                    logger.debug("%s: no HTTP/2 preface within %s s", state.info.peer,
                                 opts.preface_timeout)
                    conn.close(h2.errors.ErrorCodes.PROTOCOL_ERROR, "preface timeout")
                else:
                    conn.close(h2.errors.ErrorCodes.NO_ERROR, "idle timeout")
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
            if state.blocked:
                for sid, call in list(state.blocked.items()):
                    if conn.pending_output(sid) <= opts.stream_high_water:
                        del state.blocked[sid]
                        call._wake_sender()
            state.transport.wake()
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
            call._ready.set()
        elif isinstance(ev, RequestReceived):
            handler = self._handlers.get(ev.method)
            call = ServerCall(state, ev, handler)
            state.calls[ev.stream_id] = call
            state.all_done = trio.Event() if state.all_done.is_set() else state.all_done
            state.accept_encodings[ev.stream_id] = ev.accept_encoding
            if handler is None:
                service = ev.method.split("/")[1] if ev.method.count("/") >= 2 else ""
                if service in self._services:
                    msg = f"unknown method {ev.method.rsplit('/', 1)[-1]} for service {service}"
                else:
                    msg = f"unknown service {service}"
                self._end_call(state, call, StatusCode.UNIMPLEMENTED, msg)
                return
            if self._shutting_down and not conn.draining:
                conn.start_drain()
            # The call's task starts now, not when the request is complete, so that its
            # deadline also covers a client that never finishes sending the request.
            nursery.start_soon(self._run_call, state, call)
        elif isinstance(ev, (StreamReset, CallAborted)):
            call = state.calls.get(ev.stream_id)
            if call is not None:
                call._reset = isinstance(ev, StreamReset)
                self._cancel_call(state, call)
        elif isinstance(ev, ConnectionTerminated):
            state.peer_gone_away = True
            # Streams above the peer's last id will never be read by it.
            for sid, call in list(state.calls.items()):
                if sid > ev.last_stream_id:
                    self._cancel_call(state, call)

    def _end_call(self, state: _ConnectionState, call: ServerCall, code: StatusCode,
                  message: str) -> None:
        state.conn.send_status(call.stream_id, code, message)
        self._cancel_call(state, call)

    def _cancel_call(self, state: _ConnectionState, call: ServerCall) -> None:
        if call._scope is not None:
            call._scope.cancel()
        call._wake_sender()
        self._forget(state, call)

    def _forget(self, state: _ConnectionState, call: ServerCall) -> None:
        if state.calls.pop(call.stream_id, None) is not None:
            state.accept_encodings.pop(call.stream_id, None)
            state.blocked.pop(call.stream_id, None)
            if not state.calls:
                state.all_done.set()
                if state.conn.draining:
                    state.read_scope.cancel()
                elif state.receive_scope is not None:
                    scope = state.receive_scope
                    scope.deadline = min(scope.deadline,
                                         trio.current_time() + state.options.idle_timeout)

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
                await call._ready.wait()
                assert call._request is not None
                try:
                    request = handler.request_deserializer(call._request)
                except Exception as exc:
                    raise RpcError(StatusCode.INTERNAL,
                                   f"grpc: error unmarshalling request: {exc}") from None
                call._request = None
                if handler.kind is MethodKind.UNARY_UNARY:
                    response = await handler.handler(request, call)
                    await call.send_message(handler.response_serializer(response))
                else:
                    serialize = handler.response_serializer

                    async def send(msg: Any) -> None:
                        await call.send_message(serialize(msg))

                    await handler.handler(request, call, send)
            except RpcError as exc:
                code, message, details = exc.code, exc.message, exc.details
                if exc.metadata:
                    call._trailing_metadata = exc.metadata
            except Exception:
                logger.exception("handler for %s raised", call.method)
                # Never leak internals to the client: the traceback went to the log.
                code, message = StatusCode.UNKNOWN, "unexpected error in method handler"
        if scope.cancelled_caught:
            if call.stream_id not in state.calls:
                return  # reset by the client or ended by the connection: nothing to say
            if trio.current_time() >= call.deadline:
                # SPEC: on deadline, answer DEADLINE_EXCEEDED and RST_STREAM CANCEL. The reset
                # goes out only if the client is still sending (a closed stream takes no more
                # frames); trailers stuck behind flow control are dropped for it.
                conn.send_status(sid, StatusCode.DEADLINE_EXCEEDED, "deadline exceeded",
                                 reset_code=_CANCEL)
                conn.reset(sid, _CANCEL)
            else:
                conn.send_status(sid, StatusCode.UNAVAILABLE, "server is shutting down")
        else:
            if call._initial_metadata and conn.is_active(sid):
                conn.send_headers(sid, call._initial_metadata)
            conn.send_status(sid, code, message, call._trailing_metadata, details=details)
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
                    state.read_scope.cancel()
        with trio.move_on_after(grace):
            await self._no_connections.wait()
        # Grace is over: calls still running end with UNAVAILABLE ("server is shutting down").
        for state in list(self._connections):
            for call in list(state.calls.values()):
                if call._scope is not None:
                    call._scope.cancel()
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
