"""The Trio gRPC client: a channel carrying many concurrent calls over one HTTP/2 connection.

``open_channel(target)`` is an async context manager owning a ``Channel``. The channel connects
lazily (or at once with ``await channel.connect()``) and keeps one connection in use; per
connection there is one reader task, which feeds the sans-I/O ``ClientConnection`` and hands
events to the calls, and the single writer (``Transport``). Calls run in the caller's task.

Outcomes
--------
* A call that does not end OK raises ``RpcError(code, message, metadata)``.
* The deadline (``timeout=``) is sent as ``grpc-timeout`` and enforced here with a cancel scope:
  when it passes the stream is reset (RST_STREAM CANCEL) and the call raises DEADLINE_EXCEEDED.
  It covers connecting and waiting for a stream slot too. A deadline the caller set around the
  call (``trio.fail_after``) is sent as ``grpc-timeout`` as well. Cancelling the caller resets
  the stream the same way.
* Connecting is bounded by ``connect_timeout`` on its own, and counts as done only once the
  server's SETTINGS arrived (as in grpc-go). A connection that cannot be made (refused,
  unreachable, TLS failure, a peer that does not speak HTTP/2, timeout) raises
  ``ConnectError``, an ``RpcError`` with code UNAVAILABLE and ``timed_out`` telling a timeout
  apart from a refusal; a connection lost later fails its calls with plain UNAVAILABLE.
* GOAWAY: calls the server did not take (above ``last_stream_id``) fail UNAVAILABLE, the others
  finish, and the next call opens a new connection. There is no transparent retry.
* MAX_CONCURRENT_STREAMS: calls beyond the server's limit wait for a slot (queue) within their
  deadline, rather than failing at once.
* Flow control: a streaming call's messages are acknowledged to the server as the caller
  takes them, so a caller that stops reading stops the server after one window. The other way,
  a client-streaming or bidi call's ``send`` waits while more than ``STREAM_HIGH_WATER`` bytes
  of its requests wait for the server's window, so a server that does not read holds the
  caller back instead of letting requests pile up here.
* Client-streaming (``stream_unary``, requests from any iterable or async iterable) and bidi
  (``stream_stream``, a ``BidiStream`` to ``send`` on, ``done_writing`` and iterate) follow the
  same deadline and cancellation rules as the other calls.

Dead peers
----------
TCP sockets get TCP keepalive and TCP_USER_TIMEOUT (``ClientConfig.tcp_keepalive``; on by
default). HTTP/2 PING keepalive follows grpc-go's ``keepalive.ClientParameters``: with
``keepalive_time`` set, a connection that received nothing for that long is PINGed, and if no
frame at all arrives within ``keepalive_timeout`` it is closed and its calls fail UNAVAILABLE.
Without open calls it rests unless ``keepalive_without_calls``. GOAWAY ENHANCE_YOUR_CALM with
``too_many_pings`` doubles the channel's interval, as grpc-go does. A connection known dead (a
keepalive failure, a connection error, the server's GOAWAY, a lost socket) is never handed to a
new call: the next call opens a new connection.
"""

from __future__ import annotations

import dataclasses
import math
import ssl
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from .client_connection import ClientConfig, ClientConnection, ServerProtocolError
from .errors import RpcError
from .events import (
    CallEnded,
    ClientEvent,
    ConnectionReady,
    ConnectionTerminated,
    ResponseHeadersReceived,
    ResponseMessageReceived,
)
from .framing import DEFAULT_MAX_MESSAGE_SIZE
from .keepalive import ClientKeepalive, ClientParameters, KeepaliveAction, is_too_many_pings
from .metadata import Metadata, MetadataLike
from .oserrors import describe_os_error  # re-exported; defined once, in wire.oserrors
from .sockopts import TcpKeepalive, apply_tcp_keepalive
from .status import ErrorCode, StatusCode
from .transport import Transport

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "STREAM_HIGH_WATER",
    "BidiStream",
    "Channel",
    "ConnectError",
    "Connector",
    "ResponseStream",
    "Target",
    "UnaryResponse",
    "connect_tcp",
    "describe_os_error",
    "open_channel",
    "parse_target",
]

#: grpc-go's default minimum connect timeout.
DEFAULT_CONNECT_TIMEOUT = 20.0
#: Request bytes a streaming call may queue beyond the server's window before ``send`` waits.
STREAM_HIGH_WATER = 64 * 1024

_READ_SIZE = 64 * 1024
_WRITE_TIMEOUT = 30.0
# How long closing a connection waits for its GOAWAY to leave before cutting the socket.
_CLOSE_FLUSH_TIMEOUT = 1.0


Connector = Callable[[], Awaitable[trio.abc.Stream]]


async def connect_tcp(host: str, port: int,
                      keepalive: TcpKeepalive | None = None) -> trio.SocketStream:
    """Open a TCP connection with TCP keepalive set (``TcpKeepalive()`` unless told)."""
    stream = await trio.open_tcp_stream(host, port)
    try:
        apply_tcp_keepalive(stream.socket, keepalive if keepalive is not None else TcpKeepalive())
    except OSError:
        await trio.aclose_forcefully(stream)
        raise
    return stream


class _KeepaliveInterval:
    """A channel's current PING keepalive interval, shared by its connections."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds

    def back_off(self) -> None:
        """The server said too_many_pings: ping half as often (grpc-go doubles the time)."""
        if self.seconds is not None:
            self.seconds *= 2


class ConnectError(RpcError):
    """No connection could be made to the target: the call never reached a server.

    The code is always UNAVAILABLE; ``timed_out`` is True when ``connect_timeout`` ran out
    (as opposed to a refusal, a DNS or TLS failure, or a peer that does not speak HTTP/2).
    """

    def __init__(self, reason: str, *, target: str = "", timed_out: bool = False) -> None:
        super().__init__(StatusCode.UNAVAILABLE,
                         f"failed to connect to {target}: {reason}" if target else reason)
        #: What went wrong, without the "failed to connect to TARGET" in front.
        self.reason = reason
        self.target = target
        self.timed_out = timed_out

    def __repr__(self) -> str:
        return f"ConnectError({self.message!r}, timed_out={self.timed_out})"


@dataclass(frozen=True)
class Target:
    """Where to connect: a TCP host and port, or a Unix socket path."""

    host: str = ""
    port: int = 0
    unix_path: str | None = None
    #: The ``:authority`` a call carries unless told otherwise.
    authority: str = "localhost"

    def __str__(self) -> str:
        return f"unix:{self.unix_path}" if self.unix_path is not None else self.authority


def parse_target(target: str) -> Target:
    """Parse ``host:port``, ``[v6]:port``, ``:port``, ``dns:///host:port`` or ``unix:PATH``."""
    if target.startswith("unix://"):
        path = target[len("unix://"):]
        if not path.startswith("/"):
            raise ValueError(f"target {target!r}: unix:// needs an absolute path")
        return Target(unix_path=path)
    if target.startswith("unix:"):
        path = target[len("unix:"):]
        if not path:
            raise ValueError(f"target {target!r}: empty unix socket path")
        return Target(unix_path=path)
    rest = target
    if rest.startswith("dns:///"):
        rest = rest[len("dns:///"):]
    elif rest.startswith("dns:"):
        rest = rest[len("dns:"):]
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0 or rest[close + 1 : close + 2] != ":":
            raise ValueError(f"target {target!r}: expected [ipv6]:port")
        host, port_text = rest[1:close], rest[close + 2 :]
    else:
        host, sep, port_text = rest.rpartition(":")
        if not sep:
            raise ValueError(f"target {target!r}: missing port (expected host:port)")
        if ":" in host:
            raise ValueError(f"target {target!r}: write IPv6 addresses as [addr]:port")
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise ValueError(f"target {target!r}: invalid port {port_text!r}")
    # grpc-go dials ":port" as the local host; the authority stays as written (":5000").
    return Target(host=host or "localhost", port=int(port_text), authority=rest)


@dataclass(frozen=True)
class UnaryResponse:
    """How a unary call ended: its one response message and the metadata around it."""

    response: bytes
    initial_metadata: Metadata
    trailing_metadata: Metadata
    code: StatusCode = StatusCode.OK
    message: str = ""


class _Call:
    """Client-side state of one call, shared by the caller's task and the reader task."""

    __slots__ = ("_wakeup", "conn", "ended", "headers", "messages", "stream_id")

    def __init__(self, conn: _Connection, stream_id: int) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.headers: Metadata | None = None
        self.messages: deque[tuple[bytes, int]] = deque()
        self.ended: CallEnded | None = None
        self._wakeup = trio.Event()

    def notify(self) -> None:
        self._wakeup.set()

    async def receive(self) -> bytes | None:
        """The next response message, or None once the call has ended (check ``ended``)."""
        if not self.messages and self.ended is None:
            # Nothing queued: a message still arriving may need more than the window.
            self.conn.request_more(self.stream_id)
        while not self.messages and self.ended is None:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
        if self.messages:
            data, size = self.messages.popleft()
            # The message is consumed: its bytes may now be handed back to the server.
            self.conn.acknowledge(self.stream_id, size)
            return data
        return None

    def cancel(self) -> None:
        """Reset the stream if it is still open and release what it holds (never blocks)."""
        self.conn.cancel_call(self)


class _Connection:
    """One HTTP/2 connection of a channel: its socket, its protocol state and its tasks."""

    def __init__(self, channel: Channel, forget: Callable[[_Connection], None],
                 keepalive: _KeepaliveInterval) -> None:
        self.channel = channel
        # Tells the channel this connection takes no new calls (GOAWAY) or is over.
        self._forget = forget
        self._keepalive_interval = keepalive
        # PING keepalive's state machine (wire.keepalive), once it runs; fed every read and
        # every change in the number of calls, woken by the latter.
        self._keepalive_state: ClientKeepalive | None = None
        self._keepalive_wake = trio.Event()
        # Set (and replaced) after each read and whenever a call ends: streaming senders
        # waiting for the server's window look again then.
        self._progress = trio.Event()
        self.conn = ClientConnection(
            channel.config,
            scheme="https" if channel.ssl_context is not None else "http",
            authority=channel.authority,
            user_agent=channel.user_agent,
        )
        self.calls: dict[int, _Call] = {}
        self.transport: Transport | None = None
        self.slot_freed = trio.Event()
        self.read_scope = trio.CancelScope()
        #: Why the connection ended, once it was lost rather than closed on purpose.
        self.lost_reason: str | None = None

    @property
    def usable(self) -> bool:
        """True while new calls may be started here."""
        return not self.conn.going_away

    @property
    def output_backlog(self) -> int:
        """Bytes queued in the sans-I/O connection plus those the writer holds."""
        held = self.transport.backlog if self.transport is not None else 0
        return self.conn.output_backlog + held

    # ------------------------------------------------------------------ running

    async def run(self, *, task_status: trio.TaskStatus[_Connection]) -> None:
        """Connect, report started, then serve the connection until it ends."""
        channel = self.channel
        stream: trio.abc.Stream | None = None
        try:
            with trio.move_on_after(channel.connect_timeout) as scope:
                stream = await self._establish()
            if scope.cancelled_caught:
                if stream is not None:
                    await trio.aclose_forcefully(stream)
                raise ConnectError(f"timed out after {channel.connect_timeout:g} s",
                                   target=channel.target, timed_out=True)
            assert stream is not None
            transport = Transport(stream, self.conn, write_timeout=_WRITE_TIMEOUT)
            self.transport = transport
            async with trio.open_nursery() as nursery:
                await nursery.start(self._write, transport)
                transport.wake()  # our SETTINGS ACK
                if self._keepalive_interval.seconds is not None:
                    nursery.start_soon(self._keepalive)
                task_status.started(self)
                with self.read_scope:
                    await self._read_loop(stream)
                if self.lost_reason is not None:
                    self._fail_all(self.conn.connection_lost(self.lost_reason), self.lost_reason)
                else:
                    self._fail_all(self.conn.close(), "connection closed")
                with trio.move_on_after(_CLOSE_FLUSH_TIMEOUT):
                    await transport.flushed()
                nursery.cancel_scope.cancel()
        finally:
            reason = self.lost_reason or "connection closed"
            self._fail_all(self.conn.connection_lost(reason), reason)
            self._forget(self)
            if stream is not None:
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(stream)

    async def _establish(self) -> trio.abc.Stream:
        """Open the socket (and TLS) and exchange HTTP/2 prefaces; raise ConnectError."""
        channel = self.channel
        target = channel.parsed
        where = channel.target
        try:
            if channel.connector is not None:
                stream: trio.abc.Stream = await channel.connector()
            elif target.unix_path is not None:
                stream = await trio.open_unix_socket(target.unix_path)
            else:
                stream = await connect_tcp(target.host, target.port,
                                           channel.config.tcp_keepalive)
        except OSError as exc:
            raise ConnectError(describe_os_error(exc), target=where) from None
        try:
            if channel.ssl_context is not None:
                tls = trio.SSLStream(stream, channel.ssl_context,
                                     server_hostname=channel.server_hostname)
                stream = tls
                try:
                    await tls.do_handshake()
                except trio.BrokenResourceError as exc:
                    cause = exc.__cause__ or exc
                    raise ConnectError(f"TLS handshake failed: {cause}", target=where) from None
                alpn = tls.selected_alpn_protocol()
                if alpn != "h2":
                    # PROTOCOL-HTTP2.md: gRPC over TLS is HTTP/2 selected by ALPN; grpcio and
                    # grpc-go refuse a server that selects nothing ("missing selected ALPN").
                    got = "no ALPN protocol" if alpn is None else f"ALPN {alpn!r}"
                    raise ConnectError(f"the TLS server negotiated {got}; gRPC requires ALPN h2",
                                       target=where)
            await self._exchange_settings(stream)
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)
            raise
        return stream

    async def _exchange_settings(self, stream: trio.abc.Stream) -> None:
        # The connection is ready only when the server's SETTINGS arrived, as in grpc-go: a
        # port that accepts TCP but does not speak HTTP/2 is a failed connection, not a call
        # that hangs until its deadline.
        where = self.channel.target
        try:
            await stream.send_all(self.conn.data_to_send())
            while not self.conn.ready:
                data = await stream.receive_some(_READ_SIZE)
                if not data:
                    raise ConnectError("the server closed the connection before its HTTP/2 "
                                       "SETTINGS", target=where)
                try:
                    events = self.conn.receive_data(bytes(data))
                except ServerProtocolError as exc:
                    raise ConnectError(f"the server does not speak HTTP/2: {exc.message}",
                                       target=where) from None
                for ev in events:
                    if isinstance(ev, ConnectionTerminated):
                        raise ConnectError("the server sent GOAWAY while connecting",
                                           target=where)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ConnectError(f"connection failed: {exc.__cause__ or exc}",
                               target=where) from None

    async def _keepalive(self) -> None:
        """grpc-go's client keepalive (``wire.keepalive.ClientKeepalive``) on this connection.

        The interval is the channel's when the connection starts: a ``too_many_pings`` GOAWAY
        doubles it for the connections after this one, as grpc-go applies it.
        """
        interval = self._keepalive_interval.seconds
        if interval is None:
            return
        config = self.channel.config
        now = trio.current_time()
        machine = self._keepalive_state = ClientKeepalive(
            ClientParameters(time=interval, timeout=config.keepalive_timeout,
                             permit_without_stream=config.keepalive_without_calls), now)
        machine.streams_changed(len(self.calls), now)
        while not self.conn.closed:
            wake = self._keepalive_wake = trio.Event()
            due = machine.next_due()
            if due != math.inf:
                # Reads do not wake this task: look again at least every interval, so an
                # answered PING is followed by the next one keepalive_time after the answer
                # (grpc-go sleeps min(Time, timeout left) the same way).
                due = min(due, trio.current_time() + interval)
            with trio.move_on_at(due):
                await wake.wait()
            if self.conn.closed:
                return  # closed while this task slept (the channel is closing)
            for action in machine.poll(trio.current_time()):
                if action is KeepaliveAction.PING:
                    self.conn.ping(b"keepaliv")
                    self._wake()
                else:
                    # Not even the PING ACK came back: the peer or the path is gone.
                    self._lost(f"connection lost: keepalive PING not answered within "
                               f"{config.keepalive_timeout:g} s")
                    return

    def _calls_changed(self) -> None:
        machine = self._keepalive_state
        if machine is not None:
            machine.streams_changed(len(self.calls), trio.current_time())
            self._keepalive_wake.set()

    def _lost(self, reason: str) -> None:
        """Declare the connection dead now: its calls fail and no new call may use it."""
        self.lost_reason = reason
        self._fail_all(self.conn.connection_lost(reason), reason)
        self._forget(self)
        self.read_scope.cancel()

    async def _write(self, transport: Transport, *,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await transport.run(task_status=task_status)
        # run() returns only when writing failed: nothing more can be said here.
        self.lost_reason = f"connection lost: {transport.broken}"
        self.read_scope.cancel()

    async def _read_loop(self, stream: trio.abc.Stream) -> None:
        conn = self.conn
        pause = conn.config.output_backlog_pause
        while True:
            transport = self.transport
            if transport is not None and conn.output_backlog > pause:
                # RFC 9113 section 10.5: a server flooding PINGs or SETTINGS while not reading
                # our answers must not make them pile up; stop reading until they have left
                # (the write timeout ends a server that never reads).
                await transport.flushed()
                continue
            try:
                data = await stream.receive_some(_READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self.lost_reason = f"connection lost: {exc.__cause__ or exc}"
                return
            if not data:
                self.lost_reason = "connection lost: the server closed the connection"
                return
            if self._keepalive_state is not None:
                self._keepalive_state.data_received(trio.current_time())
            try:
                events = conn.receive_data(bytes(data))
            except ServerProtocolError as exc:
                # Outcomes the bytes before the bad frame decided stand (a call that got its
                # trailers is OK); the calls still open end with the reason below.
                for ev in exc.events:
                    self._dispatch(ev)
                self.lost_reason = (f"HTTP/2 protocol error from the server "
                                    f"({ErrorCode.describe(exc.error_code)}): {exc.message}")
                self._wake()
                return
            for ev in events:
                self._dispatch(ev)
            self._wake()
            self._made_progress()
            if conn.going_away and not self.calls:
                return

    def _dispatch(self, ev: ClientEvent) -> None:
        if isinstance(ev, ResponseMessageReceived):
            call = self.calls.get(ev.stream_id)
            if call is None:
                self.conn.acknowledge_received(ev.stream_id, ev.flow_controlled_length)
                return
            call.messages.append((ev.data, ev.flow_controlled_length))
            call.notify()
        elif isinstance(ev, ResponseHeadersReceived):
            call = self.calls.get(ev.stream_id)
            if call is not None:
                call.headers = ev.metadata
                call.notify()
        elif isinstance(ev, CallEnded):
            self._ended(ev)
        elif isinstance(ev, ConnectionTerminated):
            # New calls go to a new connection; the calls the server kept run on here.
            self._forget(self)
            if is_too_many_pings(ev.error_code, ev.additional_data or b""):
                self._keepalive_interval.back_off()
        elif isinstance(ev, ConnectionReady):
            pass

    def _ended(self, ev: CallEnded) -> None:
        call = self.calls.pop(ev.stream_id, None)
        if call is not None:
            call.ended = ev
            call.notify()
            self._calls_changed()
        self._slot_freed()
        self._made_progress()

    def _made_progress(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    def _fail_all(self, ended: list[CallEnded], reason: str) -> None:
        for ev in ended:
            self._ended(ev)
        # Calls the protocol object no longer knows (shouldn't happen) still must not hang.
        for sid in list(self.calls):
            self._ended(CallEnded(sid, StatusCode.UNAVAILABLE, reason, Metadata()))

    def _slot_freed(self) -> None:
        self.slot_freed.set()
        self.slot_freed = trio.Event()

    def _wake(self) -> None:
        if self.transport is not None:
            self.transport.wake()

    # ------------------------------------------------------------------ used by calls

    def start(self, path: str, request: bytes, metadata: MetadataLike, timeout: float | None,
              authority: str | None, compression: str | None) -> _Call:
        """Open a stream and send the whole request (raises StreamLimitError when full)."""
        sid = self.conn.start_call(path, metadata, timeout=timeout, authority=authority,
                                   encoding=compression)
        call = _Call(self, sid)
        self.calls[sid] = call
        self._calls_changed()
        self.conn.send_message(sid, request, end=True)
        self._wake()
        return call

    def open(self, path: str, metadata: MetadataLike, timeout: float | None,
             authority: str | None, compression: str | None) -> _Call:
        """Open a stream for a streaming request; messages follow with ``send_request``."""
        sid = self.conn.start_call(path, metadata, timeout=timeout, authority=authority,
                                   encoding=compression)
        call = _Call(self, sid)
        self.calls[sid] = call
        self._calls_changed()
        self._wake()
        return call

    async def send_request(self, call: _Call, payload: bytes) -> bool:
        """Queue one request message, then wait while too much of it waits for window.

        Returns False (nothing sent) if the call has ended or its request side is closed.
        """
        if call.ended is not None or not self.conn.send_message(call.stream_id, payload,
                                                                end=False):
            await trio.lowlevel.checkpoint()
            return False
        self._wake()
        sid = call.stream_id
        conn = self.conn
        while call.ended is None and conn.pending_output(sid) > STREAM_HIGH_WATER:
            progress = self._progress
            transport = self.transport
            if transport is not None:
                # Output may be held until the writer takes what is queued (data_to_send).
                await transport.flushed()
                if call.ended is not None or conn.pending_output(sid) <= STREAM_HIGH_WATER:
                    break
            # The server's window is shut: wait for its WINDOW_UPDATE (or the call's end).
            await progress.wait()
        await trio.lowlevel.checkpoint()
        return True

    def end_request(self, call: _Call) -> None:
        """Half-close the call's request side (END_STREAM after what is queued)."""
        if call.ended is None and self.conn.end_request(call.stream_id):
            self._wake()

    def request_more(self, stream_id: int) -> None:
        """The call's caller waits with nothing queued (see ``ClientConnection.request_more``)."""
        self.conn.request_more(stream_id)
        self._wake()

    def acknowledge(self, stream_id: int, size: int) -> None:
        if size:
            self.conn.acknowledge_received(stream_id, size)
            self._wake()

    def cancel_call(self, call: _Call) -> None:
        if call.ended is None:
            self.conn.cancel(call.stream_id)
            self.calls.pop(call.stream_id, None)
            self._calls_changed()
            call.ended = CallEnded(call.stream_id, StatusCode.CANCELLED, "call cancelled",
                                   Metadata())
            call.notify()
            self._slot_freed()
            self._made_progress()
        # Messages never consumed still occupy the connection's window.
        held = sum(size for _, size in call.messages)
        call.messages.clear()
        if held:
            self.conn.acknowledge_received(call.stream_id, held)
        self._wake()
        if self.conn.going_away and not self.calls:
            self.read_scope.cancel()

    def close(self) -> None:
        """Say GOAWAY and stop reading; calls still open fail UNAVAILABLE."""
        self._fail_all(self.conn.close(message="channel closed"), "channel closed")
        self._wake()
        self.read_scope.cancel()


class _Attempt:
    """One connection attempt that several calls may be waiting on."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: ConnectError | None = None


class ResponseStream:
    """The responses of a server-streaming call: an async iterator of message bytes.

    ``initial_metadata`` is available once the first message (or the end) arrived;
    ``trailing_metadata``, ``code`` and ``message`` once iteration has finished. A call ending
    with a non-OK status raises ``RpcError`` from the iteration.
    """

    def __init__(self, call: _Call, deadline: float, timeout: float | None) -> None:
        self._call = call
        self._deadline = deadline
        self._timeout = timeout
        self.initial_metadata = Metadata()
        self.trailing_metadata = Metadata()
        self.code: StatusCode | None = None
        self.message = ""

    def __aiter__(self) -> ResponseStream:
        return self

    async def __anext__(self) -> bytes:
        call = self._call
        with trio.move_on_at(self._deadline) as scope:
            try:
                data = await call.receive()
            except BaseException:
                call.cancel()  # the caller was cancelled: reset the stream
                raise
        if scope.cancelled_caught:
            call.cancel()
            raise RpcError(StatusCode.DEADLINE_EXCEEDED,
                           f"deadline exceeded after {self._timeout:g} s")
        if call.headers is not None:
            self.initial_metadata = call.headers
        if data is not None:
            return data
        ended = call.ended
        assert ended is not None
        self.trailing_metadata = ended.metadata
        self.code = ended.code
        self.message = ended.message
        if ended.code is not StatusCode.OK:
            raise ended.to_error()
        raise StopAsyncIteration

    def cancel(self) -> None:
        """Stop the call now (RST_STREAM CANCEL); iteration then ends with CANCELLED."""
        self._call.cancel()

    @property
    def done(self) -> bool:
        """True once the call has ended (its status may still be unread)."""
        return self._call.ended is not None and not self._call.messages


class BidiStream(ResponseStream):
    """A bidi-streaming call: ``send`` requests, ``done_writing``, iterate the responses.

    Sending and receiving may happen in any order and from different tasks. ``receive()`` is
    ``anext()`` that returns None at an OK end instead of stopping the iteration.
    """

    def __init__(self, call: _Call, deadline: float, timeout: float | None) -> None:
        super().__init__(call, deadline, timeout)
        self._writing_done = False

    async def send(self, message: bytes) -> None:
        """Send one request, waiting while the server's window is full.

        Once the call has ended this raises its ``RpcError`` (after an OK end the message is
        dropped); after ``done_writing()`` it raises RuntimeError.
        """
        if self._writing_done:
            raise RuntimeError("send() after done_writing()")
        call = self._call
        with trio.move_on_at(self._deadline) as scope:
            try:
                sent = await call.conn.send_request(call, message)
            except BaseException:
                call.cancel()  # the caller was cancelled: reset the stream
                raise
        if scope.cancelled_caught:
            call.cancel()
            raise RpcError(StatusCode.DEADLINE_EXCEEDED,
                           f"deadline exceeded after {self._timeout:g} s")
        ended = call.ended
        if not sent and ended is not None and ended.code is not StatusCode.OK:
            raise ended.to_error()

    async def done_writing(self) -> None:
        """Half-close: the server's iteration over the requests ends after those sent."""
        self._writing_done = True
        self._call.conn.end_request(self._call)
        await trio.lowlevel.checkpoint()

    async def receive(self) -> bytes | None:
        """The next response, or None once the call ended OK (other ends raise RpcError)."""
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            return None


class Channel:
    """A client for one target; create it with ``open_channel``."""

    def __init__(
        self,
        target: str,
        nursery: trio.Nursery,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        authority: str | None = None,
        user_agent: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        max_receive_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        config: ClientConfig | None = None,
        connector: Connector | None = None,
        keepalive_time: float | None = None,
        keepalive_timeout: float | None = None,
        keepalive_without_calls: bool | None = None,
    ) -> None:
        from . import __version__  # late: wire/__init__ imports this module

        self.target = target
        self.parsed = parse_target(target)
        self.connect_timeout = connect_timeout
        self.authority = authority if authority is not None else self.parsed.authority
        base = f"grpc-python-trio/{__version__}"
        # Like grpc-go's WithUserAgent: the application's name first, ours after it.
        self.user_agent = f"{user_agent} {base}" if user_agent else base
        self.ssl_context = ssl_context
        if ssl_context is not None:
            # gRPC over TLS is HTTP/2 selected by ALPN (PROTOCOL-HTTP2.md).
            ssl_context.set_alpn_protocols(["h2"])
        host = self.parsed.host if self.parsed.unix_path is None else "localhost"
        self.server_hostname = server_hostname or host
        if config is None:
            config = ClientConfig(max_receive_message_size=max_receive_message_size)
        overrides: dict[str, float | bool] = {}
        if keepalive_time is not None:
            overrides["keepalive_time"] = keepalive_time
        if keepalive_timeout is not None:
            overrides["keepalive_timeout"] = keepalive_timeout
        if keepalive_without_calls is not None:
            overrides["keepalive_without_calls"] = keepalive_without_calls
        if overrides:
            config = dataclasses.replace(config, **overrides)  # type: ignore[arg-type]
        self.config = config
        self._keepalive = _KeepaliveInterval(config.keepalive_time)
        self.connector = connector
        self._nursery = nursery
        self._current: _Connection | None = None
        self._connections: set[_Connection] = set()
        self._attempt: _Attempt | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once the channel has been closed: every call fails UNAVAILABLE."""
        return self._closed

    @property
    def keepalive_time(self) -> float | None:
        """The PING keepalive interval in use (doubled after each ``too_many_pings``)."""
        return self._keepalive.seconds

    @property
    def connected(self) -> bool:
        """True while the channel holds a connection that takes new calls."""
        return self._current is not None and self._current.usable

    @property
    def output_backlog(self) -> int:
        """Bytes waiting to be written on the channel's connections (read-only).

        What the sans-I/O connections queued plus what their writers hold; the read loops keep
        it bounded (``ClientConfig.output_backlog_pause``) even against a server that floods
        frames needing an answer while never reading.
        """
        return sum(conn.output_backlog for conn in self._connections)

    # ------------------------------------------------------------------ connections

    async def connect(self) -> None:
        """Make sure a connection is up (raises ``ConnectError`` if it cannot be made)."""
        await self._connection()

    async def _connection(self) -> _Connection:
        # Concurrent callers share one connection attempt and its outcome. Bounded: a pass
        # returns, raises, or follows an attempt that was cancelled by its own caller.
        for _ in range(3):
            if self._closed:
                raise RpcError(StatusCode.UNAVAILABLE, "channel is closed")
            current = self._current
            if current is not None and current.usable:
                return current
            pending = self._attempt
            if pending is not None:
                await pending.done.wait()
                if pending.error is not None:
                    err = pending.error
                    raise ConnectError(err.reason, target=err.target, timed_out=err.timed_out)
                continue
            attempt = self._attempt = _Attempt()
            conn = _Connection(self, self._forget, self._keepalive)
            self._connections.add(conn)
            try:
                result: _Connection = await self._nursery.start(conn.run)
                self._current = result
            except BaseException as exc:
                self._connections.discard(conn)
                if isinstance(exc, ConnectError):
                    attempt.error = exc
                raise
            finally:
                self._attempt = None
                attempt.done.set()
            return result
        raise RpcError(StatusCode.UNAVAILABLE, f"could not get a connection to {self.target}")

    def _forget(self, conn: _Connection) -> None:
        if self._current is conn:
            self._current = None
        if conn.conn.closed:
            self._connections.discard(conn)

    async def _start_within(
        self, path: str, request: bytes | None,
        timeout: float | None,  # noqa: ASYNC109 (the server must learn it: grpc-timeout)
        metadata: MetadataLike, compression: str | None,
    ) -> tuple[_Call, float]:
        """Start a call whose responses are read later; the call and its deadline."""
        deadline = trio.current_time() + timeout if timeout is not None else math.inf
        with trio.move_on_at(deadline) as scope:
            call = await self._start(path, request, deadline, metadata, compression)
        if scope.cancelled_caught:
            raise RpcError(StatusCode.DEADLINE_EXCEEDED, f"deadline exceeded after {timeout:g} s")
        return call, deadline

    async def _start(self, path: str, request: bytes | None, deadline: float,
                     metadata: MetadataLike, compression: str | None) -> _Call:
        # A request of None opens the stream for a streaming request instead.
        # Bounded: each pass either starts the call, waits for a slot (bounded by the
        # deadline's cancel scope), or replaces a connection that went away.
        while True:
            conn = await self._connection()
            if conn.conn.can_start_call:
                # A deadline the caller set around us (trio.fail_after) is sent too, so the
                # server stops working when nobody waits for the answer any more.
                effective = min(deadline, trio.current_effective_deadline())
                timeout = None
                if effective != math.inf:
                    timeout = effective - trio.current_time()
                    if timeout <= 0:
                        await trio.sleep_until(effective)  # let the deadline scope fire
                if request is None:
                    return conn.open(path, metadata, timeout, None, compression)
                return conn.start(path, request, metadata, timeout, None, compression)
            if conn.usable:
                # MAX_CONCURRENT_STREAMS reached: queue until a call ends.
                await conn.slot_freed.wait()
            else:
                await trio.lowlevel.checkpoint()

    # ------------------------------------------------------------------ calls

    async def unary_unary(
        self,
        path: str,
        request: bytes,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the server must learn it: grpc-timeout)
        metadata: MetadataLike = (),
        compression: str | None = None,
    ) -> UnaryResponse:
        """Make a unary call; return its response or raise ``RpcError``."""
        deadline = trio.current_time() + timeout if timeout is not None else math.inf
        call: _Call | None = None
        messages: list[bytes] = []
        with trio.move_on_at(deadline) as scope:
            try:
                call = await self._start(path, request, deadline, metadata, compression)
                while True:
                    data = await call.receive()
                    if data is None:
                        break
                    messages.append(data)
                    if len(messages) > 1:
                        call.cancel()
                        raise RpcError(StatusCode.INTERNAL,
                                       "cardinality violation: a unary call received more "
                                       "than one response message")
            finally:
                if call is not None and call.ended is None:
                    call.cancel()  # deadline or caller cancelled: RST_STREAM CANCEL
        if scope.cancelled_caught:
            raise RpcError(StatusCode.DEADLINE_EXCEEDED, f"deadline exceeded after {timeout:g} s")
        assert call is not None
        assert call.ended is not None
        ended = call.ended
        if ended.code is not StatusCode.OK:
            raise ended.to_error()
        if not messages:
            raise RpcError(StatusCode.INTERNAL,
                           "cardinality violation: received no response message from a unary "
                           "call", ended.metadata)
        return UnaryResponse(messages[0], call.headers or Metadata(), ended.metadata,
                             ended.code, ended.message)

    @asynccontextmanager
    async def unary_stream(
        self,
        path: str,
        request: bytes,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the server must learn it: grpc-timeout)
        metadata: MetadataLike = (),
        compression: str | None = None,
    ) -> AsyncIterator[ResponseStream]:
        """Start a server-streaming call; iterate the yielded ``ResponseStream``.

        The deadline bounds starting the call and every read; leaving the block before the
        call ended cancels it (RST_STREAM CANCEL).
        """
        call, deadline = await self._start_within(path, request, timeout, metadata, compression)
        try:
            yield ResponseStream(call, deadline, timeout)
        finally:
            call.cancel()

    async def stream_unary(
        self,
        path: str,
        requests: AsyncIterable[bytes] | Iterable[bytes],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the server must learn it: grpc-timeout)
        metadata: MetadataLike = (),
        compression: str | None = None,
    ) -> UnaryResponse:
        """Make a client-streaming call: send ``requests``, half-close, return the response.

        ``requests`` is any iterable or async iterable of serialized messages; it is consumed
        as the server's window allows, concurrently with waiting for the answer, so a server
        that answers early (an error) stops it. An exception from ``requests`` cancels the
        call and is raised as it is.
        """
        deadline = trio.current_time() + timeout if timeout is not None else math.inf
        call: _Call | None = None
        failure: list[Exception] = []
        messages: list[bytes] = []
        with trio.move_on_at(deadline) as scope:
            try:
                call = await self._start(path, None, deadline, metadata, compression)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_send_all, call, requests, failure)
                    messages = await _receive_unary(call)
                    nursery.cancel_scope.cancel()
            finally:
                if call is not None and call.ended is None:
                    call.cancel()  # deadline or caller cancelled: RST_STREAM CANCEL
        if failure:
            raise failure[0]
        if scope.cancelled_caught:
            raise RpcError(StatusCode.DEADLINE_EXCEEDED, f"deadline exceeded after {timeout:g} s")
        assert call is not None
        return _unary_response(call, messages)

    @asynccontextmanager
    async def stream_stream(
        self,
        path: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the server must learn it: grpc-timeout)
        metadata: MetadataLike = (),
        compression: str | None = None,
    ) -> AsyncIterator[BidiStream]:
        """Start a bidi-streaming call; ``send``, ``done_writing`` and iterate the stream.

        The deadline bounds starting the call, every send and every read; leaving the block
        before the call ended cancels it (RST_STREAM CANCEL).
        """
        call, deadline = await self._start_within(path, None, timeout, metadata, compression)
        try:
            yield BidiStream(call, deadline, timeout)
        finally:
            call.cancel()

    # ------------------------------------------------------------------ closing

    async def aclose(self) -> None:
        """Close every connection (GOAWAY); calls still open fail UNAVAILABLE."""
        self._closed = True
        for conn in list(self._connections):
            conn.close()
        self._current = None


async def _send_all(call: _Call, requests: AsyncIterable[bytes] | Iterable[bytes],
                    failure: list[Exception]) -> None:
    """Send every request of a client-streaming call, then half-close."""
    conn = call.conn
    try:
        if isinstance(requests, AsyncIterable):
            async for payload in requests:
                if not await conn.send_request(call, payload):
                    return  # the call ended: its outcome is what the caller gets
        else:
            for payload in requests:
                if not await conn.send_request(call, payload):
                    return
    except Exception as exc:
        # The caller's own iterable failed: the call cannot be completed.
        failure.append(exc)
        call.cancel()
        return
    conn.end_request(call)


async def _receive_unary(call: _Call) -> list[bytes]:
    """Read a call's responses until it ends, stopping (and cancelling) at a second one."""
    messages: list[bytes] = []
    while True:
        data = await call.receive()
        if data is None:
            return messages
        messages.append(data)
        if len(messages) > 1:
            call.cancel()
            return messages


def _unary_response(call: _Call, messages: list[bytes]) -> UnaryResponse:
    """The outcome of a call with one response message, or the RpcError it ended with."""
    if len(messages) > 1:
        raise RpcError(StatusCode.INTERNAL, "cardinality violation: a unary call received more "
                       "than one response message")
    ended = call.ended
    assert ended is not None
    if ended.code is not StatusCode.OK:
        raise ended.to_error()
    if not messages:
        raise RpcError(StatusCode.INTERNAL, "cardinality violation: received no response "
                       "message from a unary call", ended.metadata)
    return UnaryResponse(messages[0], call.headers or Metadata(), ended.metadata, ended.code,
                         ended.message)


@asynccontextmanager
async def open_channel(
    target: str,
    *,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    authority: str | None = None,
    user_agent: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    max_receive_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    config: ClientConfig | None = None,
    connector: Connector | None = None,
    keepalive_time: float | None = None,
    keepalive_timeout: float | None = None,
    keepalive_without_calls: bool | None = None,
) -> AsyncIterator[Channel]:
    """Open a channel to ``host:port`` or ``unix:PATH``; close it (and its calls) on exit.

    ``ssl_context`` turns on TLS (ALPN ``h2`` is set on it); ``server_hostname`` overrides the
    name checked against the certificate; ``authority`` the ``:authority`` calls carry.
    ``connector``, an async callable returning a connected Trio stream, replaces the TCP or
    Unix connect (tests pass one end of ``trio.testing.memory_stream_pair``); raising OSError
    from it is a failed connection. ``keepalive_time``, ``keepalive_timeout`` and
    ``keepalive_without_calls`` (grpc-go's names; see ``ClientConfig``) override ``config``.
    """
    error: Exception | None = None
    async with trio.open_nursery() as nursery:
        channel = Channel(
            target, nursery, connect_timeout=connect_timeout, authority=authority,
            user_agent=user_agent, ssl_context=ssl_context, server_hostname=server_hostname,
            max_receive_message_size=max_receive_message_size, config=config,
            connector=connector, keepalive_time=keepalive_time,
            keepalive_timeout=keepalive_timeout,
            keepalive_without_calls=keepalive_without_calls)
        try:
            yield channel
        except Exception as exc:
            # Re-raised below, outside the nursery, so callers see the error itself rather
            # than an ExceptionGroup wrapping it.
            error = exc
        finally:
            await channel.aclose()
    if error is not None:
        raise error

