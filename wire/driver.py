"""The connection driver: runs one server connection from its first byte to its last.

Owns, per connection: the read loop that feeds the sans-I/O ``ServerConnection``, the dispatch
of its events (a table from event class to method), the calls in flight and how their handlers
run, the heap of deadlines of calls without a task, the single writer (``wire.transport``) and
the DEBUG log lines an operator reads (connection opened and closed, with peer and reason; each
call, with method, status and duration; never header values or message bytes).

Handlers run three ways (see ``wire.handlers``): an async handler in a task of its own, under a
cancel scope whose deadline is the call's ``grpc-timeout`` (client-streaming and bidi handlers
start at once and pull their requests from a ``wire.request_stream.StreamingCall``, whose
messages keep their flow-control credit until pulled); a sync unary handler inline in the
read loop once its request is complete; a push stream's ``start`` inline, the ``PushCall`` then
living without a task. Deadlines of task-less calls sit in a heap that the read loop enforces
through the timeout of its socket read.

Push messages are queued on their call and handed to the connection by the writer just before
it writes, so a burst of pushes over many connections (a health status change fanned out to
thousands of Watch streams) reaches the first connections' sockets without waiting for the last
connection's messages to be encoded.

Liveness and lifetimes (``ServerOptions.keepalive_time`` and friends, grpc-go's
``ServerParameters``) are a ``wire.keepalive.ServerKeepalive`` fed every read and every change
between "some calls" and "no calls"; its next due time is one more bound on the socket read,
so keepalive needs no task of its own. A PING left unanswered ends the calls and closes the
connection without waiting for the goodbye to be written; idleness and age drain it gracefully.

The driver does not own the stream (the server opens and closes it) nor decide which methods
exist (it asks its ``Registry``, the server).
"""

from __future__ import annotations

import heapq
import inspect
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import trio

from .calls import ConnectionInfo, Ending, PushCall, ServerCall
from .connection import ServerConnection
from .errors import ProtocolError
from .events import (
    CallAborted,
    ConnectionTerminated,
    MessageReceived,
    RequestEnded,
    RequestReceived,
    RequestRejected,
    StreamReset,
)
from .handlers import MethodHandler, MethodKind
from .keepalive import KeepaliveAction, ServerKeepalive, ServerParameters
from .request_stream import StreamingCall
from .sockopts import TcpKeepalive
from .status import ErrorCode, StatusCode
from .transport import Transport

__all__ = ["ConnectionDriver", "ConnectionStats", "Registry", "ServerOptions"]

logger = logging.getLogger("wire.server")

# A method path is the client's choice: logged quoted and cut short.
_MAX_LOGGED_PATH = 128


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

    # Liveness and lifetimes, grpc-go's keepalive.ServerParameters (see wire.keepalive).
    #: A connection that sent nothing for this many seconds is PINGed ...
    keepalive_time: float = 2 * 3600.0
    #: ... and closed, its calls ended, if nothing at all comes back within this many.
    keepalive_timeout: float = 20.0
    #: GOAWAY after this many seconds with no call open (a Watch stream is a call: a
    #: connection holding one is never idle, as in grpc-go).
    max_connection_idle: float = math.inf
    #: GOAWAY after this many seconds, +-10 % jitter, whatever the connection does ...
    max_connection_age: float = math.inf
    #: ... then this many seconds for calls in flight before they end UNAVAILABLE and the
    #: connection closes.
    max_connection_age_grace: float = math.inf
    #: TCP keepalive and TCP_USER_TIMEOUT on accepted TCP sockets (``TcpKeepalive.off()``:
    #: leave them as the OS makes them).
    tcp_keepalive: TcpKeepalive = field(default_factory=TcpKeepalive)
    #: At start, raise the soft RLIMIT_NOFILE to the hard limit (``max_connections`` is then
    #: lowered to what the descriptor limit allows, see wire.admission).
    raise_nofile_limit: bool = True

    def __post_init__(self) -> None:
        self.keepalive_parameters()  # refuses bad keepalive and lifetime values

    def keepalive_parameters(self) -> ServerParameters:
        """The keepalive and lifetime settings as grpc-go's ``ServerParameters``."""
        return ServerParameters(
            max_connection_idle=self.max_connection_idle,
            max_connection_age=self.max_connection_age,
            max_connection_age_grace=self.max_connection_age_grace,
            time=self.keepalive_time, timeout=self.keepalive_timeout)


@dataclass(frozen=True)
class ConnectionStats:
    """A snapshot of one connection's bookkeeping (``Server.connection_stats()``)."""

    info: ConnectionInfo
    #: Stream ids of the calls in flight.
    calls: frozenset[int]
    #: Streams the HTTP/2 connection counts as open calls.
    open_streams: int
    #: Calls whose output is above the high-water mark, waiting for the client's window.
    held: frozenset[int]
    #: Response bytes per call in flight still waiting for flow-control window.
    pending_output: Mapping[int, int]
    #: Bytes handed to the socket and not yet taken, plus bytes encoded but not yet written.
    write_backlog: int
    #: True once GOAWAY announced the end (a drain or the client's GOAWAY).
    draining: bool


class Registry(Protocol):
    """What the driver needs of the server: the methods, and whether it is shutting down."""

    @property
    def shutting_down(self) -> bool:
        """True once ``shutdown()`` has begun."""
        ...

    def handler_for(self, path: str) -> MethodHandler[Any, Any] | None:
        """The handler registered for ``path``."""
        ...

    def serves(self, service: str) -> bool:
        """Whether some method of ``service`` is registered."""
        ...


_EventHandler = Callable[["ConnectionDriver", Any], None]

#: How calls still open when the max_connection_age grace ends are told (UNAVAILABLE).
MAX_AGE_GRACE_OVER = "max connection age reached, grace period over"

# The opaque data of our keepalive PINGs (any 8 bytes do; these read well in a capture).
_KEEPALIVE_PING = b"keepaliv"


class ConnectionDriver:
    """Reads, dispatches and writes for one connection; implements ``wire.calls.CallHost``."""

    def __init__(self, conn: ServerConnection, stream: trio.abc.Stream, info: ConnectionInfo,
                 options: ServerOptions, registry: Registry) -> None:
        self._conn = conn
        self._stream = stream
        self._info = info
        self._options = options
        self._registry = registry
        # The writer takes its bytes from ``data_to_send``, which first flushes pushes.
        self._transport = Transport(stream, self, write_timeout=options.write_timeout)
        self._calls: dict[int, ServerCall] = {}
        # Handlers of calls that run inline once their request is complete.
        self._inline: dict[int, MethodHandler[Any, Any]] = {}
        # Calls whose stream is above high water, to wake when the client opens its window.
        self._blocked: dict[int, ServerCall] = {}
        # Push calls held back because the socket is not taking our writes.
        self._write_blocked: dict[int, PushCall] = {}
        # Push calls with messages queued, for the writer to hand to the connection.
        self._push_ready: list[PushCall] = []
        # (deadline, stream id, call) of task-less calls with a deadline; the reader's read
        # times out at the first one. Entries of calls already over are skipped when popped.
        self._deadlines: list[tuple[float, int, ServerCall]] = []
        # Task-less calls with a deadline started in the current read, for the heap if they
        # are still open after it (a Check answered in the same read never gets there).
        self._new_timed: list[ServerCall] = []
        self._all_done = trio.Event()
        self._all_done.set()
        self._peer_gone_away = False
        # While the read loop handles a batch of events it writes once at the end of it, so
        # wake-ups from within the batch are not needed (and would defer that write).
        self._in_batch = False
        # False once a draining connection has no calls left: the read loop then ends. Only
        # the socket read itself is interrupted (through _receive_scope), never a write.
        self._reading = True
        # The timeout of the read in progress; the idle timer is armed through it when the
        # last call ends while the reader waits (it started waiting with no timeout).
        self._receive_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        # Why the connection ends, for the log; the first reason found wins.
        self._close_reason: str | None = None
        now = trio.current_time()
        self._keepalive = ServerKeepalive(options.keepalive_parameters(), now)
        # When the connection last read something or ended a call (eviction picks the
        # connection idle the longest).
        self._last_active = now
        # True once keepalive found the peer gone: nothing more is written to it.
        self._dead = False
        # Streaming calls keep their messages' receive window shut until the handler pulls.
        conn.hold_credit_for(self._pulls_requests)

    def _pulls_requests(self, path: str) -> bool:
        handler = self._registry.handler_for(path)
        return handler is not None and handler.client_streaming

    # ------------------------------------------------------------------ read-only views

    @property
    def conn(self) -> ServerConnection:
        """The sans-I/O connection."""
        return self._conn

    @property
    def info(self) -> ConnectionInfo:
        """The connection, as handlers see it."""
        return self._info

    @property
    def transport(self) -> Transport:
        """The single writer of the stream."""
        return self._transport

    @property
    def calls(self) -> Mapping[int, ServerCall]:
        """The calls in flight, by stream id."""
        return self._calls

    @property
    def blocked(self) -> Mapping[int, ServerCall]:
        """Calls waiting for the client's flow-control window, by stream id."""
        return self._blocked

    @property
    def high_water(self) -> int:
        """Response bytes a stream may queue beyond the peer's window."""
        return self._options.stream_high_water

    @property
    def open_calls(self) -> int:
        """Calls in flight."""
        return len(self._calls)

    @property
    def closing(self) -> bool:
        """True once GOAWAY announced the end (a drain, an eviction, the client's GOAWAY)."""
        return self._conn.draining or self._peer_gone_away or self._conn.closed

    @property
    def idle_since(self) -> float:
        """When the connection last read a byte or ended a call (Trio time)."""
        return self._last_active

    def stats(self) -> ConnectionStats:
        """A snapshot of this connection's bookkeeping."""
        conn = self._conn
        return ConnectionStats(
            info=self._info,
            calls=frozenset(self._calls),
            open_streams=conn.open_calls,
            held=frozenset(self._blocked),
            pending_output={sid: conn.pending_output(sid) for sid in self._calls},
            write_backlog=self._transport.backlog + conn.buffered_output(),
            draining=conn.draining or self._peer_gone_away,
        )

    # ------------------------------------------------------------------ the server's commands

    async def run(self) -> None:
        """Serve the connection until it is over; ends every call still open on the way out."""
        conn = self._conn
        transport = self._transport
        logger.debug("%s: connection opened (local %s%s)", self._info.peer, self._info.local,
                     ", TLS" if self._info.tls else "")
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self._run_writer, nursery.cancel_scope)
                if self._registry.shutting_down:
                    conn.start_drain()
                transport.wake()
                await self._read_loop()
                # Reading is over (EOF, GOAWAY, drain): let calls in flight end, say goodbye.
                await self._all_done.wait()
                conn.close()
                if not self._dead:
                    # A peer keepalive found gone would only hold the goodbye until the
                    # write timeout.
                    await transport.flushed()
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            # Calls without a task learn here that the connection is gone (their tasks have
            # been cancelled with the nursery).
            for call in list(self._calls.values()):
                call.end(StatusCode.CANCELLED, "connection lost", how=Ending.GONE)
            logger.debug("%s: connection closed (%s)", self._info.peer, self._why_closed())

    def start_drain(self, reason: str = "server shutdown") -> None:
        """GOAWAY now, close once the calls in flight are over; ``reason`` goes to the log."""
        self._closing(reason)
        self._conn.start_drain()
        self._transport.wake()
        if not self._calls:
            self._stop_reading()

    def end_calls(self) -> None:
        """Shutdown grace is over: end every call still open with UNAVAILABLE."""
        self._closing("server shutdown, grace period over")
        for call in list(self._calls.values()):
            call.shut_down()
        self._transport.wake()

    def _closing(self, reason: str) -> None:
        if self._close_reason is None:
            self._close_reason = reason

    def _why_closed(self) -> str:
        if self._close_reason is not None:
            return self._close_reason
        if self._peer_gone_away:
            return "client sent GOAWAY"
        if self._conn.draining:
            return "drained"
        return "cancelled"

    # ------------------------------------------------------------------ CallHost

    def wake_writer(self) -> None:
        """There may be bytes to write."""
        if not self._in_batch:
            self._transport.wake()

    def hold(self, call: ServerCall) -> None:
        """Wake ``call`` once its output falls below high water."""
        self._blocked[call.stream_id] = call

    def hold_for_socket(self, call: PushCall) -> bool:
        """Park ``call`` until the write in progress completes, if the socket is backed up."""
        if self._transport.backlog > self._options.max_write_backlog:
            self._write_blocked[call.stream_id] = call
            return True
        return False

    async def wait_for_socket(self) -> None:
        """Wait while more bytes wait for the socket than the write backlog allows."""
        transport = self._transport
        limit = self._options.max_write_backlog
        while transport.broken is None and transport.backlog + self._conn.buffered_output() > limit:
            await transport.flushed()

    def queue_push(self, call: PushCall) -> None:
        """Have the writer flush ``call``'s queued messages before it writes."""
        self._push_ready.append(call)
        self.wake_writer()

    def call_ended(self, call: ServerCall, code: StatusCode, how: Ending, message: str) -> None:
        """Forget an ended call, log it, and wake the writer for what it sent."""
        if not self._in_batch:
            self._transport.wake()
        sid = call.stream_id
        if self._calls.pop(sid, None) is None:
            return
        if logger.isEnabledFor(logging.DEBUG):
            self._log_call(call, code, how, message)
        self._inline.pop(sid, None)
        self._blocked.pop(sid, None)
        self._write_blocked.pop(sid, None)
        if self._calls:
            return
        self._deadlines.clear()
        self._all_done.set()
        now = self._last_active = trio.current_time()
        self._keepalive.streams_changed(0, now)
        if self._conn.draining or self._peer_gone_away:
            self._stop_reading()
        elif self._receive_scope is not None and self._conn.preface_received:
            # Not min() with the old one: the read may be waiting for the deadline of a call
            # that has just ended, and an idle connection's timers are the idle timeout and
            # keepalive's.
            self._receive_scope.deadline = min(now + self._options.idle_timeout,
                                               self._keepalive.next_due())

    def _log_call(self, call: ServerCall, code: StatusCode, how: Ending, message: str) -> None:
        # Registered methods are logged by their path; an unknown one quoted and cut short.
        registered = self._registry.handler_for(call.method) is not None
        method = call.method if registered else _quoted(call.method)
        ms = (trio.current_time() - call.started) * 1000
        if how is Ending.ANSWER:
            logger.debug("%s: call %s ended %s in %.1f ms", self._info.peer, method, code.name, ms)
        else:
            # The server's own reason; a handler's message is the application's business.
            logger.debug("%s: call %s ended %s in %.1f ms: %s", self._info.peer, method,
                         code.name, ms, _quoted(message))

    # ------------------------------------------------------------------ writer

    async def _run_writer(self, scope: trio.CancelScope, *,
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        transport = self._transport
        await transport.run(task_status=task_status)
        # run() returns only when the socket broke or the peer stopped reading: nothing more
        # can be said on this connection, so end it and every call on it.
        if transport.broken is not None:
            self._closing(f"write failed: {transport.broken}")
        scope.cancel()

    def data_to_send(self) -> bytes:
        """The writer's source: pushed messages go to the connection first."""
        if self._write_blocked:
            # The writer only asks again once its last write completed: the socket took it.
            calls = list(self._write_blocked.values())
            self._write_blocked.clear()
            high = self._options.stream_high_water
            for call in calls:
                if call.pending_output() > high:
                    self._blocked[call.stream_id] = call
                else:
                    call.output_drained()
        if self._push_ready:
            ready, self._push_ready = self._push_ready, []
            for call in ready:
                call.flush_outbox()
        return self._conn.data_to_send()

    # ------------------------------------------------------------------ read loop

    def _stop_reading(self) -> None:
        """End the read loop: at once if it is waiting for input, else after its batch."""
        self._reading = False
        if self._receive_scope is not None:
            self._receive_scope.cancel()

    def _read_deadline(self, preface_deadline: float) -> float:
        if not self._conn.preface_received:
            # The whole preface (magic and SETTINGS) must be in by then, however it is dripped.
            return preface_deadline
        if not self._calls:
            return trio.current_time() + self._options.idle_timeout
        return self._deadlines[0][0] if self._deadlines else math.inf

    async def _receive(self, deadline: float) -> bytes | bytearray | None:
        """One socket read; None if it timed out (b"" at EOF)."""
        with trio.move_on_at(deadline) as scope:
            self._receive_scope = scope
            try:
                data = await self._stream.receive_some(self._options.read_size)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
        self._receive_scope = None
        return None if scope.cancelled_caught else data

    async def _read_loop(self) -> None:
        conn = self._conn
        opts = self._options
        transport = self._transport
        preface_deadline = trio.current_time() + opts.preface_timeout
        keepalive = self._keepalive
        while self._reading:
            preface = not conn.preface_received
            due = keepalive.next_due()
            data = await self._receive(min(self._read_deadline(preface_deadline), due))
            if not self._reading:
                return
            if data is None:
                if trio.current_time() >= due:
                    if not self._keepalive_due():
                        return
                elif preface or not self._calls:
                    self._timed_out(preface)
                    return
                else:
                    # Not idle: the deadline of a task-less call has come.
                    self._expire_due()
                transport.wake()
            elif not data:
                # EOF: the client can send nothing more; calls in flight are cancelled.
                self._lose_calls("client closed the connection")
                return
            elif not self._feed(bytes(data)):
                return
            else:
                await transport.send_now()
            if (conn.draining or self._peer_gone_away) and not self._calls:
                self._closing("drained")
                return
            if data and transport.backlog + conn.buffered_output() > opts.max_write_backlog:
                await transport.flushed()

    def _keepalive_due(self) -> bool:
        """Carry out what keepalive asks now; False once that ended the connection."""
        for action in self._keepalive.poll(trio.current_time()):
            if action is KeepaliveAction.PING:
                self._conn.ping(_KEEPALIVE_PING)
            elif action is KeepaliveAction.CLOSE_DEAD:
                reason = (f"keepalive PING not acknowledged within "
                          f"{self._options.keepalive_timeout:g} s")
                logger.info("%s: closing: %s", self._info.peer, reason)
                self._dead = True
                self._lose_calls(reason)
                return False
            elif action is KeepaliveAction.CLOSE_AGE_GRACE:
                self._closing("max_connection_age, grace period over")
                for call in list(self._calls.values()):
                    call.shut_down(MAX_AGE_GRACE_OVER)
            else:
                # GOAWAY_IDLE or GOAWAY_AGE: a graceful drain, calls in flight finish.
                what = ("max_connection_idle" if action is KeepaliveAction.GOAWAY_IDLE
                        else "max_connection_age")
                self.start_drain(what)
        return True

    def _timed_out(self, preface: bool) -> None:
        if preface:
            self._closing(f"no HTTP/2 preface within {self._options.preface_timeout} s")
            self._conn.close(ErrorCode.PROTOCOL_ERROR, "preface timeout")
        else:
            self._closing("idle timeout")
            self._conn.close(ErrorCode.NO_ERROR, "idle timeout")
        self._transport.wake()

    def _lose_calls(self, reason: str) -> None:
        self._closing(reason)
        for call in list(self._calls.values()):
            call.end(StatusCode.CANCELLED, reason, how=Ending.GONE)

    def _feed(self, data: bytes) -> bool:
        """Hand one read to the connection and act on its events; False if that ended it."""
        now = self._last_active = trio.current_time()
        self._keepalive.data_received(now)
        try:
            events = self._conn.receive_data(data)
        except ProtocolError as exc:
            logger.info("%s: HTTP/2 protocol error: %s", self._info.peer, exc.message)
            self._lose_calls(f"HTTP/2 protocol error: {exc.message}")
            self._transport.wake()
            return False
        self._in_batch = True
        try:
            on_event = self._ON_EVENT
            for ev in events:
                handler = on_event.get(type(ev))
                if handler is not None:
                    handler(self, ev)
            if self._new_timed:
                for call in self._new_timed:
                    if self._calls.get(call.stream_id) is call:
                        self._add_deadline(call)
                self._new_timed.clear()
            if self._blocked:
                high = self._options.stream_high_water
                for sid, call in list(self._blocked.items()):
                    if call.pending_output() <= high:
                        del self._blocked[sid]
                        call.output_drained()
        finally:
            self._in_batch = False
        return True

    # ------------------------------------------------------------------ events

    def _on_request(self, ev: RequestReceived) -> None:
        handler = self._registry.handler_for(ev.method)
        call: ServerCall
        if handler is None:
            call = ServerCall(self, ev, ev.method)
        elif handler.kind is MethodKind.UNARY_STREAM_PUSH:
            call = PushCall(self, ev, handler.path, handler.response_serializer)
        elif handler.client_streaming:
            call = StreamingCall(self, ev, handler.path, handler.request_deserializer)
        else:
            call = ServerCall(self, ev, handler.path)
        self._calls[ev.stream_id] = call
        if self._all_done.is_set():
            self._all_done = trio.Event()
            self._keepalive.streams_changed(1, self._last_active)
        if handler is None:
            call.end(StatusCode.UNIMPLEMENTED, self._unimplemented(ev.method), how=Ending.STATUS)
            return
        if self._registry.shutting_down and not self._conn.draining:
            self._conn.start_drain()
        if handler.kind in _IN_TASK:
            # The call's task starts now, not when the request is complete, so that its
            # deadline also covers a client that never finishes sending the request.
            call.prepare_task()
            assert self._nursery is not None
            self._nursery.start_soon(self._run_task, call, handler)
            return
        self._inline[ev.stream_id] = handler
        if call.deadline != math.inf:
            # No task: the reader enforces the deadline (if the call is still open after this
            # read; most sync calls are answered within it).
            self._new_timed.append(call)

    def _unimplemented(self, path: str) -> str:
        service = path.split("/")[1] if path.count("/") >= 2 else ""
        if self._registry.serves(service):
            return f"unknown method {path.rsplit('/', 1)[-1]} for service {service}"
        return f"unknown service {service}"

    def _on_message(self, ev: MessageReceived) -> None:
        call = self._calls.get(ev.stream_id)
        if call is not None:
            call.receive_message(ev.data, ev.credit)

    def _on_request_ended(self, ev: RequestEnded) -> None:
        call = self._calls.get(ev.stream_id)
        if call is None or not call.request_complete():
            return
        handler = self._inline.pop(ev.stream_id)
        if trio.current_time() >= call.deadline:
            # The deadline passed before the request was complete (or on arrival, for a zero
            # timeout): a handler that cannot block still must not answer late.
            call.expire()
            return
        try:
            request = call.take_request(handler.request_deserializer)
        except Exception as exc:
            call.fail(exc)
            return
        if isinstance(call, PushCall):
            _start_push(call, handler, request)
        else:
            _run_sync(call, handler, request)

    def _on_reset(self, ev: StreamReset) -> None:
        call = self._calls.get(ev.stream_id)
        if call is not None:
            call.end(StatusCode.CANCELLED, "client reset the stream", how=Ending.GONE)

    def _on_aborted(self, ev: CallAborted) -> None:
        # The connection has queued the call's status already.
        call = self._calls.get(ev.stream_id)
        if call is not None:
            call.end(ev.code, ev.message, how=Ending.GONE)

    def _on_rejected(self, ev: RequestRejected) -> None:
        # Not the message: it may quote the offending header's value.
        if logger.isEnabledFor(logging.DEBUG):
            answer = f"HTTP {ev.http_status}" if ev.http_status else "RST_STREAM"
            code = f", {ev.code.name}" if ev.code is not None else ""
            logger.debug("%s: request on stream %d refused (%s%s)", self._info.peer,
                         ev.stream_id, answer, code)

    def _on_goaway(self, ev: ConnectionTerminated) -> None:
        # A client's GOAWAY names the last *server-initiated* stream it processed (RFC 9113
        # section 6.8); we initiate none, so every call it started stays valid: let them
        # finish, then close (the read loop ends once no call is left).
        self._peer_gone_away = True
        self._closing("client sent GOAWAY")

    _ON_EVENT: ClassVar[dict[type[Any], _EventHandler]] = {
        RequestReceived: _on_request,
        MessageReceived: _on_message,
        RequestEnded: _on_request_ended,
        StreamReset: _on_reset,
        CallAborted: _on_aborted,
        RequestRejected: _on_rejected,
        ConnectionTerminated: _on_goaway,
    }

    # ------------------------------------------------------------------ deadlines

    def _add_deadline(self, call: ServerCall) -> None:
        """Have the reader end ``call`` at its deadline (for calls without a task)."""
        heap = self._deadlines
        if len(heap) > 64 and len(heap) > 2 * len(self._calls):
            # Calls that ended early leave entries behind; drop them before they pile up.
            heap[:] = [e for e in heap if self._calls.get(e[1]) is e[2]]
            heapq.heapify(heap)
        heapq.heappush(heap, (call.deadline, call.stream_id, call))

    def _expire_due(self) -> None:
        """End every task-less call whose deadline has passed."""
        heap = self._deadlines
        now = trio.current_time()
        while heap and heap[0][0] <= now:
            _, sid, call = heapq.heappop(heap)
            if self._calls.get(sid) is call:
                call.expire()

    # ------------------------------------------------------------------ handlers in tasks

    async def _run_task(self, call: ServerCall, handler: MethodHandler[Any, Any]) -> None:
        """Run an async handler in its own task, under a cancel scope with the deadline."""
        if call.closed:
            return  # ended before this task ran (bad message, reset, ...)
        failure: Exception | None = None
        with trio.CancelScope(deadline=call.deadline) as scope:
            try:
                await call.wait_request(scope)
                await _invoke(call, handler)
            except Exception as exc:
                failure = exc
        if not scope.cancelled_caught:
            if failure is None:
                call.end(StatusCode.OK)
            else:
                call.fail(failure)
        elif call.closed:
            return  # reset by the client or ended by the connection: nothing to say
        elif trio.current_time() >= call.deadline:
            call.expire()
        else:
            call.end(StatusCode.UNAVAILABLE, call.shutdown_message, how=Ending.STATUS)


#: The kinds whose handler runs in a task of its own.
_IN_TASK = frozenset({MethodKind.UNARY_UNARY, MethodKind.UNARY_STREAM, MethodKind.STREAM_UNARY,
                      MethodKind.STREAM_STREAM})


async def _invoke(call: ServerCall, handler: MethodHandler[Any, Any]) -> None:
    """Run an async handler of any shape, sending what it answers."""
    serialize = handler.response_serializer
    kind = handler.kind

    async def send(msg: Any) -> None:
        await call.send_message(serialize(msg))

    if isinstance(call, StreamingCall):
        if kind is MethodKind.STREAM_UNARY:
            await send(await handler.handler(call.requests, call))
        else:
            await handler.handler(call.requests, call, send)
        return
    request = call.take_request(handler.request_deserializer)
    if kind is MethodKind.UNARY_UNARY:
        await send(await handler.handler(request, call))
    else:
        await handler.handler(request, call, send)


def _run_sync(call: ServerCall, handler: MethodHandler[Any, Any], request: Any) -> None:
    """Run a sync unary handler inline: no task, no cancel scope, no events."""
    try:
        response = handler.handler(request, call)
        if inspect.iscoroutine(response):
            response.close()  # never awaited: no "coroutine was never awaited" warning
            raise TypeError(f"sync handler for {call.method} returned a coroutine; "
                            "register it with unary_unary(..., sync=False)")
        call.answer(handler.response_serializer(response))
    except Exception as exc:
        call.fail(exc)
        return
    call.end(StatusCode.OK)


def _start_push(call: PushCall, handler: MethodHandler[Any, Any], request: Any) -> None:
    """Run a push stream's ``start`` inline; the call then lives without a task."""
    try:
        handler.handler(request, call)
    except Exception as exc:
        call.fail(exc)


def _quoted(text: str) -> str:
    if len(text) > _MAX_LOGGED_PATH:
        text = text[:_MAX_LOGGED_PATH] + "..."
    return repr(text)
