"""The sans-I/O gRPC client connection: start calls, feed bytes in, get call events out.

Theory of operation
-------------------
``ClientConnection`` wraps one client-side ``h2.connection.H2Connection`` and adds gRPC on top.
It never touches a socket: the I/O layer writes ``data_to_send()`` and feeds what it reads to
``receive_data()``, which returns small immutable events named in the past tense (defined in
``wire.events``).

* ``start_call`` sends the request headers, reserved ones first (PROTOCOL-HTTP2.md,
  "Request-Headers"), then the caller's custom metadata; ``send_message`` sends the request
  message and half-closes the stream. Request DATA waits in a per-stream queue whenever the
  server's flow-control window is shut (or our output backlog is high) and leaves later.
* Each call has exactly one final event, ``CallEnded``, whatever ended it: trailers, a
  Trailers-Only response, a non-gRPC HTTP answer, RST_STREAM, a malformed response, a bad
  message, GOAWAY, or the connection being lost (``connection_lost()``). The status is derived
  by ``wire.grpc_headers``: no gRPC content-type or no ``grpc-status`` -> from the HTTP status;
  RST_STREAM -> from its code; ``grpc-status`` must be ``1*DIGIT``; ``grpc-message`` decoded
  leniently.

How h2 is wrapped
-----------------
h2 is kept for what it does right (stream states, flow-control accounting, SETTINGS, HPACK), but
it never sees raw bytes. ``receive_data`` cuts the byte stream into frames itself, checks each
one, and hands h2 one frame at a time (``_H2ClientConnection.receive_frame``), so:

* the outcome never depends on how TCP split the bytes: events of frames before a bad one are
  kept, and a call that received its trailers is OK whatever follows (a connection error
  raises ``ServerProtocolError`` carrying those events);
* a frame's length is judged from its 9-byte header before its body is buffered, a header block
  (HEADERS + CONTINUATION) is capped at the SETTINGS_MAX_HEADER_LIST_SIZE we advertise before
  it is decoded, and frames on idle streams (RST_STREAM included) are connection errors;
* malformed responses (RFC 9113 section 8.1.1) are **stream** errors: h2's inbound header
  validation is off and ``wire.grpc_headers.malformed_reason`` judges each header list; what h2
  still rejects on an open call (trailers without END_STREAM, content-length) is turned into a
  stream error too. The call ends INTERNAL, RST_STREAM PROTOCOL_ERROR goes out, and the
  connection and its other calls live on;
* an HPACK decoding error is a connection error COMPRESSION_ERROR (RFC 9113 section 4.3);
* output is bounded: replies the server's frames cause (SETTINGS and PING acks, ...) are counted
  in ``output_backlog``; the I/O layer stops reading above ``ClientConfig.output_backlog_pause``
  and past ``output_backlog_limit`` the connection ends with GOAWAY ENHANCE_YOUR_CALM (RFC 9113
  section 10.5).

Flow control: a message's bytes are handed back to the server (WINDOW_UPDATE) only when the
consumer says it has taken the message (``acknowledge_received``); bytes of a message still being
assembled are acknowledged at once, otherwise a message larger than the window could never
complete. MAX_CONCURRENT_STREAMS: ``can_start_call`` says whether the server's limit leaves room.
GOAWAY: h2 stops all processing when it receives GOAWAY, but a graceful GOAWAY (RFC 9113 section
6.8) lets streams at or below ``last_stream_id`` finish, so calls above it end UNAVAILABLE, the
others continue, and no new call may start (``going_away``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import h2
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack.exceptions
import hyperframe.exceptions
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PriorityFrame,
    PushPromiseFrame,
)

from .compression import ACCEPT_ENCODING, SUPPORTED_ENCODINGS, compress
from .errors import LocalProtocolError, RemoteProtocolError, RpcError
from .events import (
    CallEnded,
    ClientEvent,
    ConnectionReady,
    ConnectionTerminated,
    ResponseHeadersReceived,
    ResponseMessageReceived,
)
from .framing import DEFAULT_MAX_MESSAGE_SIZE, MessageDecoder, encode_message
from .grpc_headers import (
    HeaderError,
    ResponseHead,
    http_fallback,
    malformed_reason,
    parse_encoding,
    parse_response_headers,
    split_metadata,
    status_from_trailers,
)
from .metadata import Metadata, MetadataLike, to_headers
from .sockopts import TcpKeepalive
from .status import ErrorCode, StatusCode, status_from_rst_stream
from .timeout import format_timeout

__all__ = [
    "H2_VERSIONS_CHECKED",
    "CallEnded",
    "ClientConfig",
    "ClientConnection",
    "ClientEvent",
    "ConnectionReady",
    "ConnectionTerminated",
    "ResponseHeadersReceived",
    "ResponseMessageReceived",
    "ServerProtocolError",
    "StreamLimitError",
]

_FRAME_HEADER = 9
# RFC 9113 section 6.10 puts no limit on CONTINUATION frames; h2 allows 64 per block and so do
# we (an empty CONTINUATION costs nothing to buffer but something to parse).
_MAX_CONTINUATIONS = 64
# Whose reset a message describes.
_BY_SERVER = "the server"
_BY_US = "the client"


class StreamLimitError(RpcError):
    """No new stream may be opened now: the server's MAX_CONCURRENT_STREAMS is reached."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            StatusCode.RESOURCE_EXHAUSTED,
            f"the server allows at most {limit} concurrent streams on this connection",
        )
        self.limit = limit


class ServerProtocolError(RemoteProtocolError):
    """The server broke HTTP/2 badly enough to end the connection (GOAWAY already queued).

    ``events`` are what the bytes before the offending frame caused, in order (calls that
    completed there included); they must be handled like a normal ``receive_data`` result.
    """

    def __init__(self, message: str, error_code: int,
                 events: list[ClientEvent] | None = None) -> None:
        super().__init__(message, error_code)
        self.events: list[ClientEvent] = events if events is not None else []


class _ConnectionError(Exception):
    """Internal: a connection error found while a frame was processed."""

    def __init__(self, message: str, error_code: ErrorCode, stream_id: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.error_code = error_code
        # The call this error is about, which ends INTERNAL rather than UNAVAILABLE.
        self.stream_id = stream_id


# ---------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class ClientConfig:
    """Limits and settings of a client connection; every field has a production default."""

    #: Largest response message, judged from its 5-byte prefix (or after decompression).
    max_receive_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    #: Our per-stream receive window (SETTINGS_INITIAL_WINDOW_SIZE): how far the server may run
    #: ahead of a consumer that does not read.
    initial_window_size: int = 1024 * 1024
    #: Extra receive window opened on the connection as a whole at the start.
    connection_window_increment: int = 4 * 1024 * 1024 - 65535
    #: SETTINGS_MAX_HEADER_LIST_SIZE we advertise and enforce on response headers: a header
    #: block larger than this is refused before it is decoded.
    max_header_list_size: int = 64 * 1024
    #: The I/O layer stops reading while more output than this waits (``output_backlog``);
    #: request DATA is queued for sending only up to half of it.
    output_backlog_pause: int = 128 * 1024
    #: Past this much queued output while receiving, GOAWAY ENHANCE_YOUR_CALM (a server that
    #: floods frames needing an answer while not reading ours).
    output_backlog_limit: int = 1024 * 1024

    # HTTP/2 PING keepalive, grpc-go's keepalive.ClientParameters (run by wire.client).
    #: Seconds without any frame from the server after which it is PINGed; None (the default,
    #: as in grpc-go) is off.
    keepalive_time: float | None = None
    #: Seconds after that PING within which some frame must arrive, else the connection is
    #: dead: it closes and its calls fail UNAVAILABLE.
    keepalive_timeout: float = 20.0
    #: PING also while no call is open (otherwise keepalive rests on an idle connection).
    keepalive_without_calls: bool = False
    #: TCP keepalive and TCP_USER_TIMEOUT on the channel's TCP sockets.
    tcp_keepalive: TcpKeepalive = field(default_factory=TcpKeepalive)

    def __post_init__(self) -> None:
        time = self.keepalive_time
        if time is not None and not (math.isfinite(time) and time > 0):
            raise ValueError("keepalive_time must be a positive number of seconds, or None")
        if not (math.isfinite(self.keepalive_timeout) and self.keepalive_timeout > 0):
            raise ValueError("keepalive_timeout must be a positive number of seconds")


# ---------------------------------------------------------------------- the h2 override

#: The h2 versions (major, minor) whose private API ``_H2ClientConnection`` was checked against;
#: tests/wire/test_client_h2_pin.py fails when the installed h2 is outside this range.
H2_VERSIONS_CHECKED = ((4, 1), (4, 4))


class _H2ClientConnection(h2.connection.H2Connection):
    """The one place that relies on h2's private API (pinned to ``H2_VERSIONS_CHECKED``).

    * ``receive_frame`` hands h2 one frame we parsed and checked ourselves, through
      ``_receive_frame``: the per-frame half of ``receive_data`` without its buffering and
      without its reaction to errors (which ``ClientConnection`` decides: stream or connection
      error, and which code).
    * ``_receive_goaway_frame``: h2 moves to CLOSED and drops queued output on GOAWAY, which
      would break the calls at or below last_stream_id that the server promised to finish.
    """

    def receive_frame(self, frame: Frame) -> list[h2.events.Event]:
        """Process one complete frame (a HEADERS frame carries its whole header block)."""
        return self._receive_frame(frame)

    def _receive_goaway_frame(
        self, frame: GoAwayFrame
    ) -> tuple[list[Frame], list[h2.events.Event]]:
        # Report it and carry on; ClientConnection refuses new calls itself.
        event = h2.events.ConnectionTerminated()
        event.error_code = _h2_error_code(frame.error_code)
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


def _h2_error_code(code: int) -> h2.errors.ErrorCodes | int:
    try:
        return h2.errors.ErrorCodes(code)
    except ValueError:
        return code


# ---------------------------------------------------------------------- frames


class _FrameSplitter:
    """Cuts the server's byte stream into hyperframe frames, judging lengths from the header."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes received and not yet part of a whole frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        """Add bytes read from the socket."""
        self._buffer += data

    def clear(self) -> None:
        """Drop what is buffered (the connection is over)."""
        self._buffer.clear()

    def next_frame(self, max_frame_size: int) -> Frame | None:
        """The next whole frame, or None until more bytes arrive; raise _ConnectionError."""
        buf = self._buffer
        if len(buf) < _FRAME_HEADER:
            return None
        try:
            frame, length = Frame.parse_frame_header(memoryview(buf)[:_FRAME_HEADER])
        except (hyperframe.exceptions.InvalidFrameError,
                hyperframe.exceptions.InvalidDataError) as exc:
            raise _ConnectionError(f"invalid frame header: {exc}",
                                   ErrorCode.PROTOCOL_ERROR) from None
        # RFC 9113 section 4.2: "An endpoint MUST send an error code of FRAME_SIZE_ERROR if a
        # frame exceeds the size defined in SETTINGS_MAX_FRAME_SIZE". Judged before buffering.
        if length > max_frame_size:
            raise _ConnectionError(
                f"the server sent a frame of {length} bytes, above SETTINGS_MAX_FRAME_SIZE "
                f"{max_frame_size}", ErrorCode.FRAME_SIZE_ERROR, frame.stream_id)
        end = _FRAME_HEADER + length
        if len(buf) < end:
            return None
        body = bytes(buf[_FRAME_HEADER:end])
        del buf[:end]
        try:
            frame.parse_body(memoryview(body))
        except hyperframe.exceptions.InvalidPaddingError:
            raise _ConnectionError(f"{_frame_name(frame)} frame with invalid padding",
                                   ErrorCode.PROTOCOL_ERROR) from None
        except hyperframe.exceptions.InvalidDataError as exc:
            raise _ConnectionError(f"invalid {_frame_name(frame)} frame: {exc}",
                                   ErrorCode.PROTOCOL_ERROR) from None
        except hyperframe.exceptions.InvalidFrameError as exc:
            raise _ConnectionError(f"invalid {_frame_name(frame)} frame: {exc}",
                                   ErrorCode.FRAME_SIZE_ERROR) from None
        return frame


def _frame_name(frame: Frame) -> str:
    name = type(frame).__name__.removesuffix("Frame")
    names = {"RstStream": "RST_STREAM", "GoAway": "GOAWAY", "WindowUpdate": "WINDOW_UPDATE",
             "PushPromise": "PUSH_PROMISE", "AltSvc": "ALTSVC", "Extension": "unknown"}
    return names.get(name, name.upper())


# ---------------------------------------------------------------------- calls


class _Call:
    """Per-stream state of a call in progress."""

    __slots__ = (
        "credit_due",
        "decoder",
        "end_sent",
        "ending",
        "head",
        "metadata",
        "pending",
        "send_encoding",
        "starved",
        "unattributed",
    )

    def __init__(self, send_encoding: str | None) -> None:
        self.send_encoding = send_encoding
        self.decoder: MessageDecoder | None = None
        self.head = ResponseHead(0, None, False, None)
        self.metadata = Metadata()
        self.pending = bytearray()
        # The caller has ended the request side / END_STREAM has actually gone out.
        self.ending = False
        self.end_sent = False
        # Receive credit (see ``request_more``): of a message not yet complete, whether the
        # caller waits with nothing queued (true until a first message arrives), and credit
        # given back but not yet sent (a quarter window at a time).
        self.unattributed = 0
        self.starved = True
        self.credit_due = 0


def _truncated(sid: int, call: _Call, events: list[ClientEvent]) -> bool:
    """End ``call`` and say so when its response stream stopped inside a message."""
    if call.decoder is None:
        return False
    try:
        call.decoder.end()
    except RpcError as exc:
        events.append(CallEnded(sid, exc.code, exc.message, call.metadata))
        return True
    return False


class ClientConnection:
    """One HTTP/2 connection's gRPC client state machine (no I/O)."""

    def __init__(
        self,
        config: ClientConfig | None = None,
        *,
        scheme: str = "http",
        authority: str = "localhost",
        user_agent: str | None = None,
    ) -> None:
        self.config = config = config or ClientConfig()
        self.scheme = scheme
        self.authority = authority
        self.user_agent = user_agent
        # Inbound header validation is ours (grpc_headers.malformed_reason), so that a malformed
        # response is a stream error as RFC 9113 section 8.1.1 says, not h2's connection error.
        h2_config = h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False,
            validate_inbound_headers=False,
        )
        conn = _H2ClientConnection(config=h2_config)
        conn.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: config.initial_window_size,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: config.max_header_list_size,
            },
        )
        # HPACK's own cap on the decoded list (an HPACK bomb), on top of ours on the block.
        conn.decoder.max_header_list_size = config.max_header_list_size
        conn.initiate_connection()
        if config.connection_window_increment > 0:
            conn.increment_flow_control_window(config.connection_window_increment)
        self._h2 = conn
        self._calls: dict[int, _Call] = {}
        # Receive flow control, split as grpc-go splits it: the connection window reopens as
        # DATA arrives (half a window at a time), a stream's only as its messages are consumed
        # (a quarter window at a time), so a caller that stops reading shuts its own stream and
        # never the connection.
        self._conn_unacked = 0
        self._conn_credit_batch = (65535 + max(config.connection_window_increment, 0)) // 2
        self._stream_credit_batch = max(1, config.initial_window_size // 4)
        self._ready = False
        self._going_away = False
        self._closed = False
        # The first bytes from the server, until 9 have arrived to check its preface.
        self._preface: bytearray | None = bytearray()
        self._frames = _FrameSplitter()
        # A header block (HEADERS + CONTINUATION) being assembled, and its frame count.
        self._block: HeadersFrame | None = None
        self._block_frames = 0
        # Bytes ready for data_to_send(); h2's own buffer is moved here after every step.
        self._out = bytearray()
        # Request DATA held back because the output backlog was high, and the request DATA
        # handed to h2 since data_to_send() last ran (counted without copying h2's buffer).
        self._data_held = False
        self._data_queued = 0

    # ------------------------------------------------------------------ inspection

    @property
    def ready(self) -> bool:
        """True once the server's SETTINGS arrived."""
        return self._ready

    @property
    def going_away(self) -> bool:
        """True once the server sent GOAWAY (or the connection is closed): no new calls."""
        return self._going_away or self._closed

    @property
    def closed(self) -> bool:
        """True once the connection is over (closed by us, lost, or broken by the peer)."""
        return self._closed

    @property
    def open_calls(self) -> int:
        """Calls started and not yet ended."""
        return len(self._calls)

    @property
    def max_concurrent_streams(self) -> int:
        """The server's SETTINGS_MAX_CONCURRENT_STREAMS (huge until it says otherwise)."""
        return int(self._h2.remote_settings.max_concurrent_streams)

    @property
    def can_start_call(self) -> bool:
        """True when ``start_call`` would succeed now."""
        if self.going_away:
            return False
        return self._h2.open_outbound_streams < self.max_concurrent_streams

    @property
    def output_backlog(self) -> int:
        """Bytes queued for ``data_to_send()`` and not taken yet (read-only)."""
        self._take_h2_output()
        return len(self._out)

    @property
    def input_buffered(self) -> int:
        """Bytes received and not yet processed (part of a frame or of a header block)."""
        block = len(self._block.data) if self._block is not None else 0
        return self._frames.buffered + block

    def is_active(self, stream_id: int) -> bool:
        """True while ``stream_id`` is a call that has not ended."""
        return stream_id in self._calls

    def pending_output(self, stream_id: int) -> int:
        """Request bytes of ``stream_id`` queued and not yet sent (waiting for window)."""
        call = self._calls.get(stream_id)
        return len(call.pending) if call is not None else 0

    # ------------------------------------------------------------------ commands

    def start_call(
        self,
        path: str,
        metadata: MetadataLike = (),
        *,
        timeout: float | None = None,
        authority: str | None = None,
        encoding: str | None = None,
    ) -> int:
        """Send a call's request headers; return its stream id.

        ``encoding`` compresses the request message (``gzip``); ``timeout`` (seconds) becomes
        ``grpc-timeout``. Raises ValueError/TypeError for bad metadata, ``StreamLimitError``
        when the server's stream limit is reached and RpcError UNAVAILABLE after GOAWAY.
        """
        if self.going_away:
            raise RpcError(StatusCode.UNAVAILABLE, "connection is closing; open a new one")
        if encoding == "identity":
            encoding = None
        if encoding is not None and encoding not in SUPPORTED_ENCODINGS:
            raise ValueError(f"unsupported encoding {encoding!r}")
        custom = to_headers(metadata)  # validated before anything is sent
        if not self.can_start_call:
            raise StreamLimitError(self.max_concurrent_streams)
        # PROTOCOL-HTTP2.md: "Request-Headers are delivered as HTTP2 headers in HEADERS +
        # CONTINUATION frames": Call-Definition (reserved headers) first, then Custom-Metadata.
        headers = [
            (b":method", b"POST"),
            (b":scheme", self.scheme.encode("ascii")),
            (b":path", path.encode("utf-8")),
            (b":authority", (authority if authority is not None else self.authority).encode()),
            (b"te", b"trailers"),
            (b"content-type", b"application/grpc"),
        ]
        if self.user_agent:
            headers.append((b"user-agent", self.user_agent.encode("ascii", "replace")))
        if timeout is not None:
            headers.append((b"grpc-timeout", format_timeout(timeout).encode("ascii")))
        if encoding is not None:
            headers.append((b"grpc-encoding", encoding.encode("ascii")))
        headers.append((b"grpc-accept-encoding", ACCEPT_ENCODING.encode("ascii")))
        headers.extend(custom)
        try:
            sid = self._h2.get_next_available_stream_id()
        except h2.exceptions.NoAvailableStreamIDError:
            # Stream ids are spent: this connection can carry no more calls.
            self._going_away = True
            raise RpcError(StatusCode.UNAVAILABLE, "connection ran out of stream ids") from None
        self._h2.send_headers(sid, headers)
        self._calls[sid] = _Call(encoding)
        return sid

    def send_message(self, stream_id: int, payload: bytes, *, end: bool = True) -> bool:
        """Queue one request message (compressed if the call asked); ``end`` half-closes.

        Returns False if the call is already over.
        """
        call = self._calls.get(stream_id)
        if call is None or call.ending:
            return False
        if call.send_encoding is not None:
            call.pending += encode_message(compress(call.send_encoding, payload), compressed=True)
        else:
            call.pending += encode_message(payload)
        call.ending = end
        self._flush(stream_id)
        return True

    def end_request(self, stream_id: int) -> bool:
        """Half-close a call's request side without sending another message."""
        call = self._calls.get(stream_id)
        if call is None or call.ending:
            return False
        call.ending = True
        self._flush(stream_id)
        return True

    def cancel(self, stream_id: int) -> bool:
        """Cancel a call (RST_STREAM CANCEL); return False if it had already ended.

        No ``CallEnded`` is reported for a call cancelled this way: the canceller knows.
        """
        if self._calls.pop(stream_id, None) is None:
            return False
        self._reset(stream_id, ErrorCode.CANCEL)
        return True

    def acknowledge_received(self, stream_id: int, size: int) -> None:
        """Hand ``size`` consumed bytes of ``stream_id`` back to the server's stream window."""
        if size < 0:
            raise LocalProtocolError(f"cannot acknowledge {size} bytes on stream {stream_id}")
        call = self._calls.get(stream_id)
        if call is not None and size and not self._closed:
            self._stream_credit(stream_id, call, size)

    def request_more(self, stream_id: int) -> None:
        """The caller has consumed every message of ``stream_id`` and waits for the next.

        Until a message completes, the credit of its bytes goes back at once, so a message
        larger than the window can arrive; otherwise received bytes keep the stream's window
        shut until their message is consumed (``acknowledge_received``). What a call buffers
        thus stays below its stream window plus one message.
        """
        call = self._calls.get(stream_id)
        if call is None or self._closed:
            return
        call.starved = True
        credit, call.unattributed = call.unattributed, 0
        if credit:
            self._stream_credit(stream_id, call, credit)

    def _connection_credit(self, length: int) -> None:
        """Reopen the connection window as DATA arrives, half a window at a time."""
        unacked = self._conn_unacked + length
        if unacked >= self._conn_credit_batch:
            self._h2.increment_flow_control_window(unacked)
            unacked = 0
        self._conn_unacked = unacked

    def _stream_credit(self, sid: int, call: _Call, length: int) -> None:
        """Reopen a stream's window by consumed bytes, a quarter window at a time."""
        due = call.credit_due + length
        if due < self._stream_credit_batch:
            call.credit_due = due
            return
        call.credit_due = 0
        try:
            self._h2.increment_flow_control_window(due, stream_id=sid)
        except (h2.exceptions.ProtocolError, ValueError, KeyError):
            pass  # the stream closed on h2's side: its window no longer matters

    def close(self, error_code: int = ErrorCode.NO_ERROR, message: str = "") -> list[CallEnded]:
        """Send GOAWAY and stop; every call still open ends (returned) with UNAVAILABLE."""
        if self._closed:
            return []
        self._going_away = True
        self._closed = True
        self._goaway(error_code, message)
        return self._end_all(StatusCode.UNAVAILABLE, message or "connection closed")

    def connection_lost(self, why: str = "connection lost") -> list[CallEnded]:
        """The socket is gone: every call still open ends (returned) with UNAVAILABLE."""
        self._going_away = True
        self._closed = True
        return self._end_all(StatusCode.UNAVAILABLE, why)

    def ping(self, opaque: bytes = b"\0" * 8) -> None:
        """Send a PING (8 bytes of ``opaque``); LocalProtocolError once the connection is over."""
        if self._closed:
            raise LocalProtocolError("cannot PING: the connection is closed")
        if len(opaque) != 8:
            # RFC 9113 section 6.7: "PING frames MUST contain 8 octets of opaque data".
            raise LocalProtocolError(f"PING opaque data must be 8 bytes, not {len(opaque)}")
        self._h2.ping(opaque)

    def data_to_send(self) -> bytes:
        """Bytes to write to the socket now (possibly empty)."""
        self._take_h2_output()
        self._data_queued = 0
        if self._data_held and not self._closed:
            # Request DATA held back while the backlog was high may follow what leaves now.
            out = bytes(self._out)
            self._out.clear()
            self._data_held = False
            self._flush_all()
            self._take_h2_output()
            out += self._out
        else:
            out = bytes(self._out)
        self._out.clear()
        return out

    def _take_h2_output(self) -> None:
        data = self._h2.data_to_send()
        if data:
            self._out += data

    def _goaway(self, error_code: int, message: str) -> None:
        debug = message.encode("utf-8")[:256] or None
        try:
            self._h2.close_connection(error_code, debug)
        except h2.exceptions.ProtocolError:
            # h2 already considers the connection closed; write the GOAWAY ourselves.
            frame = GoAwayFrame(0)
            frame.last_stream_id = 0
            frame.error_code = error_code
            frame.additional_data = debug or b""
            self._out += frame.serialize()

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes) -> list[ClientEvent]:
        """Feed bytes read from the socket; return the events they caused.

        Raises ``ServerProtocolError`` when the server broke HTTP/2 so badly that the
        connection must end: the GOAWAY is then in ``data_to_send()``, the error's ``events``
        hold what the frames before the bad one caused, and ``connection_lost()`` ends the
        calls still open.
        """
        if self._closed:
            return []
        events: list[ClientEvent] = []
        try:
            if self._preface is not None:
                self._check_preface(data)
            self._frames.feed(data)
            limit = self.config.output_backlog_limit
            while True:
                frame = self._frames.next_frame(self._h2.max_inbound_frame_size)
                if frame is None:
                    break
                self._receive_frame(frame, events)
                if len(self._out) > limit:  # _receive_frame moved h2's output here
                    # RFC 9113 section 10.5: ENHANCE_YOUR_CALM for a peer that makes us queue
                    # answers it does not read.
                    self._out.clear()
                    raise _ConnectionError(
                        f"the server sent frames needing more than {limit} bytes of answers "
                        "it does not read", ErrorCode.ENHANCE_YOUR_CALM)
        except _ConnectionError as exc:
            self._fail(exc, events)
        return events

    def _fail(self, exc: _ConnectionError, events: list[ClientEvent]) -> None:
        self._going_away = True
        self._closed = True
        self._frames.clear()
        self._block = None
        # h2 queued nothing for the failing frame (its handler raised before any output), so
        # our GOAWAY, with the code we chose, follows what earlier frames and calls queued.
        self._goaway(exc.error_code, exc.message)
        call = self._calls.pop(exc.stream_id, None) if exc.stream_id else None
        if call is not None:
            events.append(CallEnded(exc.stream_id, StatusCode.INTERNAL, exc.message,
                                    call.metadata, reset_code=None))
        raise ServerProtocolError(exc.message, exc.error_code, events)

    def _check_preface(self, data: bytes) -> None:
        assert self._preface is not None
        self._preface += data[: 9 - len(self._preface)]
        head = bytes(self._preface)
        # RFC 9113 3.4: "The server connection preface consists of a potentially empty SETTINGS
        # frame that MUST be the first frame the server sends". Checked at once: an HTTP/1.1
        # answer would otherwise parse as a frame header.
        if head[:5] == b"HTTP/"[: len(head)] and len(head) >= 5:
            why = "the server answered in HTTP/1.x, not HTTP/2"
        elif len(head) >= 4 and head[3] != 0x4:
            why = f"the server's first frame is of type {head[3]}, not SETTINGS"
        else:
            if len(head) >= 9:
                self._preface = None
            return
        raise _ConnectionError(why, ErrorCode.PROTOCOL_ERROR)

    def _receive_frame(self, frame: Frame, events: list[ClientEvent]) -> None:
        whole = self._assemble(frame)
        if whole is None:
            return
        self._check_stream(whole)
        try:
            h2_events = self._h2.receive_frame(whole)
        except h2.exceptions.ProtocolError as exc:
            self._on_h2_error(whole, exc, events)
            return
        self._take_h2_output()
        for ev in h2_events:
            self._on_h2_event(ev, events)

    def _assemble(self, frame: Frame) -> Frame | None:
        """A whole frame for h2 (HEADERS with its block), or None while a block is open."""
        block = self._block
        if block is not None:
            # RFC 9113 section 6.10: "any other type or a frame on a different stream MUST be
            # treated as a connection error of type PROTOCOL_ERROR".
            if not isinstance(frame, ContinuationFrame) or frame.stream_id != block.stream_id:
                raise _ConnectionError(
                    f"{_frame_name(frame)} frame inside the header block of stream "
                    f"{block.stream_id}", ErrorCode.PROTOCOL_ERROR)
            self._block_frames += 1
            if self._block_frames > _MAX_CONTINUATIONS:
                raise _ConnectionError(
                    f"more than {_MAX_CONTINUATIONS} CONTINUATION frames in one header block",
                    ErrorCode.ENHANCE_YOUR_CALM, block.stream_id)
            block.data += frame.data
            self._check_block_size(block)
            if "END_HEADERS" not in frame.flags:
                return None
            self._block = None
            block.flags.add("END_HEADERS")
            return block
        if isinstance(frame, ContinuationFrame):
            raise _ConnectionError("CONTINUATION frame without a header block to continue",
                                   ErrorCode.PROTOCOL_ERROR)
        if isinstance(frame, PushPromiseFrame):
            # RFC 9113 section 8.4: "A client cannot push ... a server MUST NOT send a
            # PUSH_PROMISE" when SETTINGS_ENABLE_PUSH is 0; "receipt ... as a connection error".
            raise _ConnectionError("the server sent PUSH_PROMISE although push is disabled",
                                   ErrorCode.PROTOCOL_ERROR)
        if isinstance(frame, HeadersFrame):
            self._check_block_size(frame)
            if "END_HEADERS" not in frame.flags:
                self._block = frame
                self._block_frames = 0
                return None
        return frame

    def _check_block_size(self, frame: HeadersFrame) -> None:
        limit = self.config.max_header_list_size
        if len(frame.data) > limit:
            # The block is refused before it is decoded: a compressed block is never larger
            # than the list it decodes to, so this is the advertised limit, enforced early.
            raise _ConnectionError(
                f"response header block of more than {limit} bytes (SETTINGS_MAX_HEADER_LIST_"
                "SIZE)", ErrorCode.ENHANCE_YOUR_CALM, frame.stream_id)

    def _check_stream(self, frame: Frame) -> None:
        sid = frame.stream_id
        if sid == 0 or isinstance(frame, PriorityFrame):
            return
        # RFC 9113 section 5.1, idle: "Receiving any frame other than HEADERS or PRIORITY on a
        # stream in this state MUST be treated as a connection error of type PROTOCOL_ERROR";
        # a server opens no stream here (push is off), so HEADERS on an idle stream is one too.
        highest = self._h2.highest_outbound_stream_id or 0
        if sid % 2 == 0 or sid > highest:
            raise _ConnectionError(f"the server sent {_frame_name(frame)} on idle stream {sid}",
                                   ErrorCode.PROTOCOL_ERROR)

    def _on_h2_error(self, frame: Frame, exc: h2.exceptions.ProtocolError,
                     events: list[ClientEvent]) -> None:
        sid = frame.stream_id
        cause = exc.__cause__
        if isinstance(cause, hpack.exceptions.HPACKError) and not isinstance(
                cause, hpack.exceptions.OversizedHeaderListError):
            # RFC 9113 section 4.3: "A decoding error in a field block MUST be treated as a
            # connection error of type COMPRESSION_ERROR."
            raise _ConnectionError(f"HPACK decoding error in a header block on stream {sid}: "
                                   f"{cause}", ErrorCode.COMPRESSION_ERROR, sid)
        malformed = (isinstance(exc, h2.exceptions.InvalidBodyLengthError)
                     or (type(exc) is h2.exceptions.ProtocolError
                         and isinstance(frame, HeadersFrame)))
        if malformed and sid % 2 == 1:
            # RFC 9113 section 8.1.1: "Malformed requests or responses that are detected MUST
            # be treated as a stream error of type PROTOCOL_ERROR." h2 said connection error.
            # (_check_stream made sure this is a stream we opened, ended or not.)
            if isinstance(frame, DataFrame) and frame.flow_controlled_length:
                self._connection_credit(frame.flow_controlled_length)
            self._stream_error(sid, f"malformed response: {exc}", events)
            return
        raise _ConnectionError(_describe_h2_error(exc, frame), _error_code_of(exc), sid)

    def _stream_error(self, sid: int, why: str, events: list[ClientEvent]) -> None:
        call = self._calls.pop(sid, None)
        self._reset(sid, ErrorCode.PROTOCOL_ERROR)
        self._take_h2_output()
        if call is None:
            return  # a call already over (cancelled): only the server needs telling
        events.append(CallEnded(sid, StatusCode.INTERNAL, why, call.metadata,
                                reset_code=ErrorCode.PROTOCOL_ERROR))

    def _on_h2_event(self, ev: h2.events.Event, events: list[ClientEvent]) -> None:
        if isinstance(ev, h2.events.DataReceived):
            self._on_data(ev, events)
        elif isinstance(ev, h2.events.ResponseReceived):
            self._on_response(ev.stream_id, ev.headers or [], ev.stream_ended is not None,
                              events)
        elif isinstance(ev, h2.events.TrailersReceived):
            self._on_trailers(ev.stream_id, ev.headers or [], events)
        elif isinstance(ev, h2.events.InformationalResponseReceived):
            reason = malformed_reason(ev.headers or [], response=True)
            if reason is not None:
                self._stream_error(ev.stream_id, f"malformed header: {reason}", events)
        elif isinstance(ev, h2.events.StreamEnded):
            self._on_stream_ended(ev.stream_id, events)
        elif isinstance(ev, h2.events.StreamReset):
            self._on_stream_reset(ev, events)
        elif isinstance(ev, h2.events.WindowUpdated):
            if ev.stream_id:
                self._flush(ev.stream_id)
            else:
                self._flush_all()
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in ev.changed_settings:
                self._flush_all()
            if not self._ready:
                self._ready = True
                events.append(ConnectionReady())
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self._on_goaway(ev, events)

    def _on_stream_reset(self, ev: h2.events.StreamReset, events: list[ClientEvent]) -> None:
        call = self._calls.pop(ev.stream_id, None)
        if call is None:
            return
        code = int(ev.error_code or 0)
        name = ErrorCode.describe(code)
        if ev.remote_reset:
            # PROTOCOL-HTTP2.md "Errors": REFUSED_STREAM -> UNAVAILABLE, CANCEL -> CANCELLED,
            # ENHANCE_YOUR_CALM -> RESOURCE_EXHAUSTED, others -> INTERNAL.
            events.append(CallEnded(ev.stream_id, status_from_rst_stream(code),
                                    f"stream reset by {_BY_SERVER} with HTTP/2 error code "
                                    f"{code} ({name})", call.metadata, reset_code=code))
            return
        # h2 reset the stream itself: the server broke a rule on it (a WINDOW_UPDATE that
        # overflowed the stream's window is the case h2 handles this way).
        why = ("the server's WINDOW_UPDATE overflowed the stream's flow-control window"
               if code == ErrorCode.FLOW_CONTROL_ERROR else "the server broke HTTP/2 on it")
        events.append(CallEnded(ev.stream_id, StatusCode.INTERNAL,
                                f"stream reset by {_BY_US} with HTTP/2 error code {code} "
                                f"({name}): {why}", call.metadata, reset_code=code))

    def _on_response(self, sid: int, headers: list[tuple[bytes, bytes]], ended: bool,
                     events: list[ClientEvent]) -> None:
        call = self._calls.get(sid)
        if call is None:
            return
        reason = malformed_reason(headers, response=True)
        if reason is not None:
            self._stream_error(sid, f"malformed header: {reason}", events)
            return
        call.head = head = parse_response_headers(headers)
        if ended:
            # Trailers-Only: a single HEADERS frame carries both headers and the status.
            self._finish_from_trailers(sid, call, headers, events)
            return
        if head.http_status != 200 or not head.is_grpc:
            # Not a gRPC answer (a proxy's error page, a plain HTTP server): the status comes
            # from HTTP (http-grpc-status-mapping.md) and the body is of no interest.
            status = http_fallback(head, call.metadata)
            self._end_reset(sid, CallEnded(sid, status.code, status.message, status.metadata),
                            events)
            return
        try:
            call.metadata = split_metadata(headers)
            encoding = parse_encoding(head.encoding)
        except HeaderError as exc:
            self._end_reset(sid, CallEnded(sid, StatusCode.INTERNAL,
                                           f"{exc.message} (in response headers)",
                                           call.metadata), events)
            return
        call.decoder = MessageDecoder(max_message_size=self.config.max_receive_message_size,
                                      encoding=encoding)
        events.append(ResponseHeadersReceived(sid, call.metadata))

    def _on_data(self, ev: h2.events.DataReceived, events: list[ClientEvent]) -> None:
        sid = ev.stream_id
        length = ev.flow_controlled_length or 0
        data = ev.data or b""
        if length:
            self._connection_credit(length)
        call = self._calls.get(sid)
        if call is None or call.decoder is None:
            return  # nobody will consume these bytes: only the connection window mattered
        decoder = call.decoder
        try:
            messages = decoder.feed(data)
        except RpcError as exc:
            self._end_reset(sid, CallEnded(sid, exc.code, exc.message, call.metadata), events)
            return
        # Received bytes are held until their message is consumed; a message's credit rides
        # on it (the start of the next message stays with the call).
        credit = call.unattributed + length
        if messages:
            leftover = min(decoder.buffered, credit)
            last = len(messages) - 1
            for i, message in enumerate(messages):
                events.append(ResponseMessageReceived(sid, message,
                                                      credit - leftover if i == last else 0))
            credit = leftover
            call.starved = False
        call.unattributed = credit
        if call.starved and credit:
            # The caller waits with nothing queued: a message larger than the window must
            # still be able to complete.
            call.unattributed = 0
            self._stream_credit(sid, call, credit)

    def _on_trailers(self, sid: int, headers: list[tuple[bytes, bytes]],
                     events: list[ClientEvent]) -> None:
        call = self._calls.get(sid)
        if call is None:
            return
        reason = malformed_reason(headers, response=True, trailers=True)
        if reason is not None:
            self._stream_error(sid, f"malformed trailers: {reason}", events)
            return
        self._finish_from_trailers(sid, call, headers, events)

    def _on_stream_ended(self, sid: int, events: list[ClientEvent]) -> None:
        # Reached only when END_STREAM came on a DATA frame: trailers never arrived.
        call = self._calls.pop(sid, None)
        if call is None or _truncated(sid, call, events):
            return
        events.append(CallEnded(sid, StatusCode.INTERNAL,
                                "server closed the stream without sending trailers",
                                call.metadata))

    def _finish_from_trailers(self, sid: int, call: _Call, headers: list[tuple[bytes, bytes]],
                              events: list[ClientEvent]) -> None:
        del self._calls[sid]
        if not call.end_sent:
            # The server answered before our request side ended; the stream must not stay
            # half-open, where it would count against MAX_CONCURRENT_STREAMS for ever.
            self._reset(sid, ErrorCode.CANCEL)
        if _truncated(sid, call, events):
            return
        status = status_from_trailers(call.head, headers)
        events.append(CallEnded(sid, status.code, status.message, status.metadata,
                                status.details))

    def _on_goaway(self, ev: h2.events.ConnectionTerminated, events: list[ClientEvent]) -> None:
        self._going_away = True
        last = ev.last_stream_id or 0
        code = int(ev.error_code or 0)
        events.append(ConnectionTerminated(code, last, ev.additional_data))
        # RFC 9113 6.8: streams above last_stream_id were not processed; they may be retried.
        for sid in sorted(s for s in self._calls if s > last):
            call = self._calls.pop(sid)
            self._reset(sid, ErrorCode.CANCEL)
            events.append(CallEnded(
                sid, StatusCode.UNAVAILABLE,
                f"the server sent GOAWAY ({ErrorCode.describe(code)}) before processing this "
                "call", call.metadata))

    def _end_reset(self, sid: int, ended: CallEnded, events: list[ClientEvent]) -> None:
        # The response broke the rules for this call only: stop the server sending more.
        self._calls.pop(sid, None)
        self._reset(sid, ErrorCode.CANCEL)
        events.append(ended)

    def _end_all(self, code: StatusCode, message: str) -> list[CallEnded]:
        ended = [CallEnded(sid, code, message, call.metadata) for sid, call in self._calls.items()]
        self._calls.clear()
        return ended

    def _reset(self, sid: int, error_code: int) -> None:
        try:
            self._h2.reset_stream(sid, error_code)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass  # already closed on the h2 side: nothing to tell the server

    # ------------------------------------------------------------------ output

    def _flush_all(self) -> None:
        for sid in [sid for sid, c in self._calls.items() if c.pending or
                    (c.ending and not c.end_sent)]:
            self._flush(sid)

    def _flush(self, sid: int) -> None:
        call = self._calls.get(sid)
        if call is None or call.end_sent:
            return
        pending = call.pending
        h2conn = self._h2
        high_water = self.config.output_backlog_pause // 2
        try:
            while pending:
                window = h2conn.local_flow_control_window(sid)
                if window <= 0:
                    return
                if self._data_queued + len(self._out) >= high_water:
                    # Leaves when data_to_send() has taken what is queued.
                    self._data_held = True
                    return
                n = min(window, len(pending), h2conn.max_outbound_frame_size)
                end = call.ending and n == len(pending)
                h2conn.send_data(sid, bytes(pending[:n]), end_stream=end)
                self._data_queued += n + _FRAME_HEADER
                del pending[:n]
                call.end_sent = end
            if call.ending and not call.end_sent:
                h2conn.end_stream(sid)
                call.end_sent = True
        except h2.exceptions.StreamClosedError:
            # The server already ended the stream (e.g. Trailers-Only before our body):
            # the request no longer matters.
            pending.clear()
            call.end_sent = True


def _error_code_of(exc: h2.exceptions.ProtocolError) -> ErrorCode:
    try:
        return ErrorCode(int(exc.error_code))
    except ValueError:
        return ErrorCode.PROTOCOL_ERROR


def _describe_h2_error(exc: h2.exceptions.ProtocolError, frame: Frame) -> str:
    """A message that says what the server did, never a bare stream id."""
    text = str(exc)
    where = f"{_frame_name(frame)} frame on stream {frame.stream_id}" if frame.stream_id \
        else f"{_frame_name(frame)} frame"
    if isinstance(exc, h2.exceptions.StreamClosedError):
        return f"the server sent a {where} after the stream was closed (STREAM_CLOSED)"
    if isinstance(exc, h2.exceptions.FlowControlError):
        return f"the server broke HTTP/2 flow control with a {where}: {text}"
    if not text or text.isdigit():
        text = type(exc).__name__
    return f"the server sent a bad {where}: {text}"
