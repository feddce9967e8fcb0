"""The sans-I/O gRPC client connection: start calls, feed bytes in, get call events out.

Theory of operation
-------------------
``ClientConnection`` wraps one client-side ``h2.connection.H2Connection`` and adds gRPC on top.
It never touches a socket: the I/O layer writes ``data_to_send()`` and feeds what it reads to
``receive_data()``, which returns small immutable events named in the past tense.

* ``start_call`` sends the request headers, reserved ones first (PROTOCOL-HTTP2.md,
  "Request-Headers"), then the caller's custom metadata; ``send_message`` sends the request
  message and half-closes the stream. Request DATA waits in a per-stream queue whenever the
  server's flow-control window is shut and leaves on WINDOW_UPDATE, like the server side does.
* Each call has exactly one final event, ``CallEnded``, whatever ended it: trailers, a
  Trailers-Only response, a non-gRPC HTTP answer, RST_STREAM, a bad message, GOAWAY, or the
  connection being lost (``connection_lost()``). The status is derived as the spec says:
  no gRPC content-type or no ``grpc-status`` -> from the HTTP status; RST_STREAM -> from its
  code; ``grpc-message`` decoded leniently.
* Flow control: a message's bytes are handed back to the server (WINDOW_UPDATE) only when the
  consumer says it has taken the message (``acknowledge_received``), so a client that stops
  reading stops the server after one window. Bytes of a message still being assembled are
  acknowledged at once, otherwise a message larger than the window could never complete.
* MAX_CONCURRENT_STREAMS: ``can_start_call`` says whether the server's limit leaves room;
  ``start_call`` beyond it raises ``StreamLimitError`` rather than letting h2 fail. Queueing is
  the I/O layer's choice (``wire.client`` waits for a slot within the call's deadline).
* GOAWAY: h2 stops all processing when it receives GOAWAY, but a graceful GOAWAY (RFC 9113
  section 6.8) lets streams at or below ``last_stream_id`` finish. So GOAWAY is handled here:
  calls above ``last_stream_id`` end with UNAVAILABLE (the server never saw them), the others
  continue, and no new call may start (``going_away``).
"""

from __future__ import annotations

from dataclasses import dataclass

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import Frame, GoAwayFrame

from .compression import ACCEPT_ENCODING, SUPPORTED_ENCODINGS, compress
from .errors import ProtocolError, RpcError
from .events import ConnectionTerminated
from .framing import DEFAULT_MAX_MESSAGE_SIZE, MessageDecoder, encode_message
from .metadata import Metadata, MetadataLike, decode_bin, from_headers, percent_decode, to_headers
from .status import StatusCode, status_from_http, status_from_rst_stream
from .timeout import format_timeout

__all__ = [
    "CallEnded",
    "ClientConfig",
    "ClientConnection",
    "ClientEvent",
    "ConnectionReady",
    "ConnectionTerminated",
    "ResponseHeadersReceived",
    "ResponseMessageReceived",
    "StreamLimitError",
]

_CANCEL = h2.errors.ErrorCodes.CANCEL
_NO_ERROR = h2.errors.ErrorCodes.NO_ERROR


# ---------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class ConnectionReady:
    """The server's first SETTINGS arrived: the connection speaks HTTP/2 and may carry calls."""


@dataclass(frozen=True, slots=True)
class ResponseHeadersReceived:
    """The response headers of a call arrived (not sent for Trailers-Only responses)."""

    stream_id: int
    metadata: Metadata


@dataclass(frozen=True, slots=True)
class ResponseMessageReceived:
    """One whole response message (decompressed) arrived.

    ``flow_controlled_length`` bytes must be passed to ``acknowledge_received`` once the
    message has been consumed, so the server may send more.
    """

    stream_id: int
    data: bytes
    flow_controlled_length: int


@dataclass(frozen=True, slots=True)
class CallEnded:
    """A call is over, with its final status; nothing more will be reported for it.

    ``reset_code`` is the HTTP/2 error code when the call ended by RST_STREAM (sent by the
    server, or by us because the response broke the rules), else None.
    """

    stream_id: int
    code: StatusCode
    message: str
    metadata: Metadata
    details: bytes | None = None
    reset_code: int | None = None

    def to_error(self) -> RpcError:
        """The ``RpcError`` a caller sees for this (non-OK) end."""
        return RpcError(self.code, self.message, self.metadata, details=self.details)


ClientEvent = (
    ConnectionReady
    | ResponseHeadersReceived
    | ResponseMessageReceived
    | CallEnded
    | ConnectionTerminated
)


class StreamLimitError(RpcError):
    """No new stream may be opened now: the server's MAX_CONCURRENT_STREAMS is reached."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            StatusCode.RESOURCE_EXHAUSTED,
            f"the server allows at most {limit} concurrent streams on this connection",
        )
        self.limit = limit


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
    #: SETTINGS_MAX_HEADER_LIST_SIZE we advertise and enforce on response headers.
    max_header_list_size: int = 64 * 1024


class _H2ClientConnection(h2.connection.H2Connection):
    """H2Connection that keeps working after a GOAWAY, for the streams GOAWAY spares."""

    def _receive_goaway_frame(
        self, frame: GoAwayFrame
    ) -> tuple[list[Frame], list[h2.events.Event]]:
        # h2 moves to CLOSED and drops queued output here, which would break the calls at or
        # below last_stream_id that the server promised to finish. Report it and carry on;
        # ClientConnection refuses new calls itself.
        event = h2.events.ConnectionTerminated()
        event.error_code = _error_code(frame.error_code)
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


class _Call:
    """Per-stream state of a call in progress."""

    __slots__ = (
        "decoder",
        "end_sent",
        "ending",
        "http_status",
        "is_grpc",
        "metadata",
        "pending",
        "send_encoding",
    )

    def __init__(self, send_encoding: str | None) -> None:
        self.send_encoding = send_encoding
        self.decoder: MessageDecoder | None = None
        self.http_status = 0
        self.is_grpc = False
        self.metadata = Metadata()
        self.pending = bytearray()
        # The caller has ended the request side / END_STREAM has actually gone out.
        self.ending = False
        self.end_sent = False


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
        h2_config = h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False
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
        conn.initiate_connection()
        if config.connection_window_increment > 0:
            conn.increment_flow_control_window(config.connection_window_increment)
        self._h2 = conn
        self._calls: dict[int, _Call] = {}
        self._ready = False
        self._going_away = False
        self._closed = False
        # The first bytes from the server, until 9 have arrived to check its preface.
        self._preface: bytearray | None = bytearray()

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

    def is_active(self, stream_id: int) -> bool:
        """True while ``stream_id`` is a call that has not ended."""
        return stream_id in self._calls

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
        self._reset(stream_id, _CANCEL)
        return True

    def acknowledge_received(self, stream_id: int, size: int) -> None:
        """Hand ``size`` consumed bytes of ``stream_id`` back to the server's window."""
        if size > 0 and not self._closed:
            self._h2.acknowledge_received_data(size, stream_id)

    def close(self, error_code: int = _NO_ERROR, message: str = "") -> list[CallEnded]:
        """Send GOAWAY and stop; every call still open ends (returned) with UNAVAILABLE."""
        if self._closed:
            return []
        self._going_away = True
        self._closed = True
        try:
            self._h2.close_connection(error_code, message.encode("utf-8") or None)
        except h2.exceptions.ProtocolError:
            pass
        return self._end_all(StatusCode.UNAVAILABLE, message or "connection closed")

    def connection_lost(self, why: str = "connection lost") -> list[CallEnded]:
        """The socket is gone: every call still open ends (returned) with UNAVAILABLE."""
        self._going_away = True
        self._closed = True
        return self._end_all(StatusCode.UNAVAILABLE, why)

    def ping(self, opaque: bytes = b"\0" * 8) -> None:
        """Send a PING."""
        self._h2.ping(opaque)

    def data_to_send(self) -> bytes:
        """Bytes to write to the socket now (possibly empty)."""
        return self._h2.data_to_send()

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes) -> list[ClientEvent]:
        """Feed bytes read from the socket; return the events they caused.

        Raises ``ProtocolError`` when the server broke HTTP/2 so badly that the connection must
        end; the GOAWAY to send is then in ``data_to_send()``, and ``connection_lost()`` ends
        the calls that were open.
        """
        if self._closed:
            return []
        if self._preface is not None:
            self._check_preface(data)
        try:
            h2_events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # The GOAWAY h2 queued is in data_to_send(); the I/O layer ends the open calls with
            # connection_lost().
            self._going_away = True
            self._closed = True
            code = int(getattr(exc, "error_code", h2.errors.ErrorCodes.PROTOCOL_ERROR))
            raise ProtocolError(str(exc) or type(exc).__name__, code) from None
        events: list[ClientEvent] = []
        for ev in h2_events:
            if isinstance(ev, h2.events.DataReceived):
                self._on_data(ev, events)
            elif isinstance(ev, h2.events.ResponseReceived):
                self._on_response(ev.stream_id, ev.headers or [], ev.stream_ended is not None,
                                  events)
            elif isinstance(ev, h2.events.TrailersReceived):
                self._on_trailers(ev.stream_id, ev.headers or [], events)
            elif isinstance(ev, h2.events.StreamEnded):
                self._on_stream_ended(ev.stream_id, events)
            elif isinstance(ev, h2.events.StreamReset):
                call = self._calls.pop(ev.stream_id, None)
                if call is not None:
                    code = int(ev.error_code or 0)
                    # PROTOCOL-HTTP2.md "Errors": REFUSED_STREAM -> UNAVAILABLE, CANCEL ->
                    # CANCELLED, ENHANCE_YOUR_CALM -> RESOURCE_EXHAUSTED, others -> INTERNAL.
                    events.append(CallEnded(
                        ev.stream_id, status_from_rst_stream(code),
                        f"stream reset by the server with HTTP/2 error code {code}"
                        f" ({_error_name(code)})",
                        call.metadata, reset_code=code))
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
        return events

    def _check_preface(self, data: bytes) -> None:
        assert self._preface is not None
        self._preface += data[: 9 - len(self._preface)]
        head = bytes(self._preface)
        # RFC 9113 3.4: "The server connection preface consists of a potentially empty SETTINGS
        # frame that MUST be the first frame the server sends". Checked here because h2 would
        # wait for a whole "frame" first: an HTTP/1.1 answer parses as a 4 MiB frame header.
        if head[:5] == b"HTTP/"[: len(head)] and len(head) >= 5:
            why = "the server answered in HTTP/1.x, not HTTP/2"
        elif len(head) >= 4 and head[3] != 0x4:
            why = f"the server's first frame is of type {head[3]}, not SETTINGS"
        else:
            if len(head) >= 9:
                self._preface = None
            return
        self._going_away = True
        self._closed = True
        raise ProtocolError(why, h2.errors.ErrorCodes.PROTOCOL_ERROR)

    def _on_response(self, sid: int, headers: list[tuple[bytes, bytes]], ended: bool,
                     events: list[ClientEvent]) -> None:
        call = self._calls.get(sid)
        if call is None:
            return
        status = content_type = encoding = None
        for name, value in headers:
            if name == b":status":
                status = value
            elif name == b"content-type":
                content_type = value
            elif name == b"grpc-encoding":
                encoding = value
        try:
            call.http_status = int(status or b"0")
        except ValueError:
            call.http_status = 0
        call.is_grpc = content_type is not None and _is_grpc_content_type(content_type)
        if ended:
            # Trailers-Only: a single HEADERS frame carries both headers and the status.
            self._finish_from_trailers(sid, call, headers, events)
            return
        if call.http_status != 200 or not call.is_grpc:
            # Not a gRPC answer (a proxy's error page, a plain HTTP server): the status comes
            # from HTTP (http-grpc-status-mapping.md) and the body is of no interest.
            self._end_reset(sid, self._http_status_end(sid, call, content_type), events)
            return
        try:
            call.metadata = from_headers(headers)
        except ValueError as exc:
            self._end_reset(sid, CallEnded(sid, StatusCode.INTERNAL,
                                           f"malformed binary metadata in response headers: {exc}",
                                           Metadata()), events)
            return
        enc: str | None = None
        if encoding is not None:
            enc = encoding.decode("ascii", "replace").strip().lower()
            if enc == "identity":
                enc = None
            elif enc not in SUPPORTED_ENCODINGS:
                self._end_reset(sid, CallEnded(
                    sid, StatusCode.INTERNAL,
                    f"response compressed with unsupported grpc-encoding {enc!r}",
                    call.metadata), events)
                return
        call.decoder = MessageDecoder(max_message_size=self.config.max_receive_message_size,
                                      encoding=enc)
        events.append(ResponseHeadersReceived(sid, call.metadata))

    def _on_data(self, ev: h2.events.DataReceived, events: list[ClientEvent]) -> None:
        sid = ev.stream_id
        length = ev.flow_controlled_length or 0
        data = ev.data or b""
        call = self._calls.get(sid)
        if call is None or call.decoder is None:
            # Nobody will consume these bytes (call over, or not a gRPC body): release them.
            if length:
                self._h2.acknowledge_received_data(length, sid)
            return
        decoder = call.decoder
        try:
            messages = decoder.feed(data)
        except RpcError as exc:
            self._h2.acknowledge_received_data(length, sid)
            self._end_reset(sid, CallEnded(sid, exc.code, exc.message, call.metadata), events)
            return
        after = decoder.buffered
        # Bytes of this frame that completed messages are held until those messages are
        # consumed; the rest (padding, the start of a message still incomplete) is released
        # now, or a message larger than the window could never arrive.
        held = len(data) - after if messages else 0
        release = length - held
        if release:
            self._h2.acknowledge_received_data(release, sid)
        last = len(messages) - 1
        for i, message in enumerate(messages):
            events.append(ResponseMessageReceived(sid, message, held if i == last else 0))

    def _on_trailers(self, sid: int, headers: list[tuple[bytes, bytes]],
                     events: list[ClientEvent]) -> None:
        call = self._calls.get(sid)
        if call is None:
            return
        self._finish_from_trailers(sid, call, headers, events)

    def _on_stream_ended(self, sid: int, events: list[ClientEvent]) -> None:
        # Reached only when END_STREAM came on a DATA frame: trailers never arrived.
        call = self._calls.pop(sid, None)
        if call is None:
            return
        if call.decoder is not None:
            try:
                call.decoder.end()
            except RpcError as exc:
                events.append(CallEnded(sid, exc.code, exc.message, call.metadata))
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
            self._reset(sid, _CANCEL)
        if call.decoder is not None:
            try:
                call.decoder.end()
            except RpcError as exc:
                events.append(CallEnded(sid, exc.code, exc.message, call.metadata))
                return
        raw_status = raw_message = raw_details = content_type = None
        for name, value in headers:
            if name == b"grpc-status":
                raw_status = value
            elif name == b"grpc-message":
                raw_message = value
            elif name == b"grpc-status-details-bin":
                raw_details = value
            elif name == b"content-type":
                content_type = value
        if call.http_status != 200 or not call.is_grpc or raw_status is None:
            # http-grpc-status-mapping.md: without a usable grpc-status, HTTP decides.
            events.append(self._http_status_end(sid, call, content_type))
            return
        try:
            metadata = from_headers(headers)
        except ValueError as exc:
            events.append(CallEnded(sid, StatusCode.INTERNAL,
                                    f"malformed binary metadata in trailers: {exc}", Metadata()))
            return
        message = percent_decode(raw_message) if raw_message is not None else ""
        try:
            number = int(raw_status.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            shown = raw_status.decode("ascii", "replace")
            events.append(CallEnded(sid, StatusCode.INTERNAL,
                                    f"malformed grpc-status {shown!r}" +
                                    (f": {message}" if message else ""), metadata))
            return
        try:
            code = StatusCode(number)
        except ValueError:
            # statuscodes.md: an unknown code is UNKNOWN; keep the number for the reader.
            code = StatusCode.UNKNOWN
            message = f"unknown grpc-status {number}" + (f": {message}" if message else "")
        details: bytes | None = None
        if raw_details is not None:
            try:
                details = decode_bin(raw_details)
            except ValueError:
                details = None  # optional extra detail; never fail the call over it
        events.append(CallEnded(sid, code, message, metadata, details))

    def _http_status_end(self, sid: int, call: _Call, content_type: bytes | None) -> CallEnded:
        http = call.http_status
        code = status_from_http(http)
        if http == 0:
            code, why = StatusCode.INTERNAL, "response without a valid :status"
        elif http != 200:
            why = f"unexpected HTTP status code received from server: {http}"
        elif not call.is_grpc:
            shown = content_type.decode("ascii", "replace") if content_type else ""
            why = f"unexpected content-type {shown!r} (not application/grpc)"
        else:
            why = "response ended without grpc-status"
        return CallEnded(sid, code, why, call.metadata)

    def _on_goaway(self, ev: h2.events.ConnectionTerminated, events: list[ClientEvent]) -> None:
        self._going_away = True
        last = ev.last_stream_id or 0
        code = int(ev.error_code or 0)
        events.append(ConnectionTerminated(code, last, ev.additional_data))
        # RFC 9113 6.8: streams above last_stream_id were not processed; they may be retried.
        for sid in sorted(s for s in self._calls if s > last):
            call = self._calls.pop(sid)
            self._reset(sid, _CANCEL)
            events.append(CallEnded(
                sid, StatusCode.UNAVAILABLE,
                f"the server sent GOAWAY ({_error_name(code)}) before processing this call",
                call.metadata))

    def _end_reset(self, sid: int, ended: CallEnded, events: list[ClientEvent]) -> None:
        # The response broke the rules for this call only: stop the server sending more.
        self._calls.pop(sid, None)
        self._reset(sid, _CANCEL)
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
        for sid in [sid for sid, c in self._calls.items() if c.pending]:
            self._flush(sid)

    def _flush(self, sid: int) -> None:
        call = self._calls.get(sid)
        if call is None or call.end_sent:
            return
        pending = call.pending
        h2conn = self._h2
        try:
            while pending:
                window = h2conn.local_flow_control_window(sid)
                if window <= 0:
                    return
                n = min(window, len(pending), h2conn.max_outbound_frame_size)
                end = call.ending and n == len(pending)
                h2conn.send_data(sid, bytes(pending[:n]), end_stream=end)
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


def _is_grpc_content_type(value: bytes) -> bool:
    # "application/grpc" optionally followed by "+proto", "+json", ... or ";params".
    if not value.startswith(b"application/grpc"):
        return False
    rest = value[16:]
    return not rest or rest[:1] in (b"+", b";")


def _error_code(code: int) -> h2.errors.ErrorCodes | int:
    try:
        return h2.errors.ErrorCodes(code)
    except ValueError:
        return code


def _error_name(code: int) -> str:
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return f"0x{code:x}"
