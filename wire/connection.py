"""The sans-I/O gRPC server connection: bytes in, call events out, bytes to send.

Theory of operation
-------------------
``ServerConnection`` wraps one ``h2.connection.H2Connection`` and adds the gRPC layer on top:

* Every request's headers are validated here, in the order grpc-go applies them. A request that
  fails is answered by this object itself (an HTTP error or a Trailers-Only response) and is
  reported as ``RequestRejected``; only valid requests become ``RequestReceived``.
* Request bodies go through a per-call ``MessageDecoder``; a bad or oversized message ends the
  call here (``CallAborted``) with the status already queued.
* Responses are queued per stream. DATA leaves only as far as the peer's flow-control windows
  allow; the rest waits in the stream's queue until WINDOW_UPDATE arrives, and trailers wait
  behind the data so order is never broken. The I/O layer reads ``pending_output()`` to apply
  back-pressure, so a queue holds at most one message beyond its high-water mark.
* Nothing here knows about sockets, Trio or which methods exist: the I/O layer answers unknown
  methods with ``send_status(UNIMPLEMENTED)`` like any other outcome.

Graceful shutdown uses ``start_drain()``: a GOAWAY naming the last stream we accepted; streams the
client opens afterwards are refused with REFUSED_STREAM (safe for it to retry elsewhere) while
calls in flight run to completion.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.frame_buffer
import h2.settings
import h2.stream
import hpack.exceptions
from hyperframe.frame import Frame, GoAwayFrame, HeadersFrame, RstStreamFrame

from .compression import ACCEPT_ENCODING, SUPPORTED_ENCODINGS, compress, parse_accept_encoding
from .errors import ProtocolError, RpcError
from .events import (
    CallAborted,
    ConnectionTerminated,
    Event,
    MessageReceived,
    RequestEnded,
    RequestReceived,
    RequestRejected,
    StreamReset,
)
from .framing import DEFAULT_MAX_MESSAGE_SIZE, MessageDecoder, encode_message
from .metadata import MetadataLike, encode_bin, from_headers, percent_encode, to_headers
from .status import StatusCode
from .timeout import parse_timeout

__all__ = ["ServerConfig", "ServerConnection"]

_NO_ERROR = h2.errors.ErrorCodes.NO_ERROR
_REFUSED_STREAM = h2.errors.ErrorCodes.REFUSED_STREAM

# Encoded once: every response starts with these (PROTOCOL-HTTP2.md "Response-Headers").
_STATUS_200 = (b":status", b"200")
_CONTENT_TYPE = (b"content-type", b"application/grpc")
_ACCEPT_ENCODING = (b"grpc-accept-encoding", ACCEPT_ENCODING.encode())
_STATUS_BYTES = {code: str(int(code)).encode() for code in StatusCode}


@dataclass(frozen=True)
class ServerConfig:
    """Limits and settings of a server connection; every field has a production default."""

    #: SETTINGS_MAX_CONCURRENT_STREAMS; streams beyond it get RST_STREAM REFUSED_STREAM.
    max_concurrent_streams: int = 100
    #: Largest request header list (RFC 9113 size: name + value + 32 per field) we serve;
    #: larger ones get RESOURCE_EXHAUSTED. Advertised as SETTINGS_MAX_HEADER_LIST_SIZE.
    max_header_list_size: int = 16 * 1024
    #: Header blocks above this many bytes are a connection error (ENHANCE_YOUR_CALM) before
    #: they are decoded any further; between the two limits only the stream is refused.
    header_list_hard_limit: int = 64 * 1024
    #: Largest request message, judged from its 5-byte prefix (or after decompression).
    max_receive_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    #: Our per-stream receive window (SETTINGS_INITIAL_WINDOW_SIZE).
    initial_window_size: int = 1024 * 1024
    #: Extra receive window opened on the connection as a whole at the start.
    connection_window_increment: int = 4 * 1024 * 1024 - 65535
    #: SETTINGS_MAX_FRAME_SIZE we accept.
    max_frame_size: int = 16384

    # Abuse limits: past any of them the connection gets GOAWAY(ENHANCE_YOUR_CALM) and closes.
    # Each counts events in a sliding window of ``abuse_window`` seconds.
    #: Client RST_STREAMs (CVE-2023-44487 "rapid reset").
    max_client_resets: int = 200
    #: SETTINGS frames from the client.
    max_settings_frames: int = 100
    #: DATA frames that carry nothing and do not end the stream.
    max_empty_data_frames: int = 1000
    abuse_window: float = 10.0
    #: gRPC's keepalive enforcement: a PING sooner than this after the previous one is a
    #: "strike" (unless we sent HEADERS or DATA in between); more than ``max_ping_strikes``
    #: strikes -> GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings").
    min_ping_interval: float = 10.0
    max_ping_strikes: int = 2
    #: Time source for the windows above (seconds, monotonic).
    clock: Callable[[], float] = time.monotonic


class _Rate:
    """Counts events in a sliding window; memory bounded by the limit."""

    __slots__ = ("_clock", "_hits", "_limit", "_window")

    def __init__(self, limit: int, window: float, clock: Callable[[], float]) -> None:
        self._limit = limit
        self._window = window
        self._clock = clock
        self._hits: collections.deque[float] = collections.deque(maxlen=limit + 1)

    def exceeded(self) -> bool:
        """Record one event; True when more than ``limit`` fell inside the window."""
        now = self._clock()
        hits = self._hits
        hits.append(now)
        return len(hits) > self._limit and now - hits[0] <= self._window


class _BoundedFrameBuffer(h2.frame_buffer.FrameBuffer):
    """h2's frame buffer with a byte cap on a header block still being assembled.

    h2 alone accepts up to 64 CONTINUATION frames of up to 16 KiB each (1 MiB) before it
    decodes anything; CVE-2024-27316-style floods are cut off here at the hard header limit.
    """

    header_block_limit = 64 * 1024

    def _update_header_buffer(self, f: Frame | None) -> Frame | None:
        out = super()._update_header_buffer(f)
        pending = self._headers_buffer
        if pending and sum(len(x.data) for x in pending) > self.header_block_limit:
            raise h2.exceptions.DenialOfServiceError(
                f"header block larger than {self.header_block_limit} bytes"
            )
        return out


class _LocalSettings(h2.settings.Settings):
    """h2's local settings, except that h2 must not enforce the stream limit itself.

    h2 answers one stream too many with a *connection* error; RFC 9113 section 5.1.2 allows
    (and gRPC clients expect) refusing only that stream, which ServerConnection does.
    """

    @property  # type: ignore[misc]
    def max_concurrent_streams(self) -> int:
        return 2**31 - 1


class _H2ServerConnection(h2.connection.H2Connection):
    """H2Connection with our header hard limit kept after the SETTINGS ACK, and hardened.

    * An HPACK decoding error is a connection error of type COMPRESSION_ERROR (RFC 9113
      section 4.3); h2 reports it as PROTOCOL_ERROR.
    * Frames on a closed stream are answered with at most one RST_STREAM(STREAM_CLOSED) per
      stream, and not at all on a stream we reset ourselves (RFC 9113 sections 5.1 and 5.4.2);
      h2 answers every such frame, so a client could make us write a frame per frame it sends.
    """

    header_hard_limit = 64 * 1024
    #: Streams recently reset (by either side), to answer their later frames once at most.
    _reset_memory = 1024

    def __init__(self, config: h2.config.H2Configuration) -> None:
        super().__init__(config=config)
        self._receiving = False
        self._rst_sent: dict[int, None] = {}

    def receive_data(self, data: Any) -> list[h2.events.Event]:
        self._receiving = True
        try:
            return super().receive_data(data)
        finally:
            self._receiving = False

    def _receive_headers_frame(
        self, frame: HeadersFrame
    ) -> tuple[list[Frame], list[h2.events.Event]]:
        try:
            return super()._receive_headers_frame(frame)
        except h2.exceptions.DenialOfServiceError:
            raise  # an oversized header list: ENHANCE_YOUR_CALM
        except h2.exceptions.ProtocolError as exc:
            if not isinstance(exc.__cause__, hpack.exceptions.HPACKError):
                raise
            err = h2.exceptions.ProtocolError(str(exc))
            err.error_code = h2.errors.ErrorCodes.COMPRESSION_ERROR
            raise err from exc.__cause__

    def _prepare_for_sending(self, frames: list[Frame]) -> None:
        kept = []
        for f in frames:
            if isinstance(f, RstStreamFrame):
                sid = f.stream_id
                if (self._receiving and f.error_code == h2.errors.ErrorCodes.STREAM_CLOSED
                        and sid in self._rst_sent):
                    continue  # this stream has had its RST_STREAM already
                self._rst_sent[sid] = None
                if len(self._rst_sent) > self._reset_memory:
                    del self._rst_sent[next(iter(self._rst_sent))]
            kept.append(f)
        super()._prepare_for_sending(kept)

    def _local_settings_acked(
        self,
    ) -> dict[h2.settings.SettingCodes | int, h2.settings.ChangedSetting]:
        changes = super()._local_settings_acked()
        # We advertise the soft limit but decode up to the hard one, so that a request between
        # the two is refused as a stream (with a gRPC status), not as a connection.
        self.decoder.max_header_list_size = self.header_hard_limit
        return changes


class _Call:
    """Per-stream state of a call in progress."""

    __slots__ = ("client_done", "decoder", "headers_sent", "pending", "reset_code",
                 "send_encoding", "trailers")

    def __init__(self, decoder: MessageDecoder, send_encoding: str | None) -> None:
        self.decoder = decoder
        self.send_encoding = send_encoding
        self.headers_sent = False
        self.client_done = False
        self.pending = bytearray()
        self.trailers: list[tuple[bytes, bytes]] | None = None
        # RST_STREAM code sent after the trailers when the client has not half-closed.
        self.reset_code: int = _NO_ERROR


class ServerConnection:
    """One HTTP/2 connection's gRPC server state machine (no I/O)."""

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config = config or ServerConfig()
        h2_config = h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_outbound_headers=False
        )
        conn = _H2ServerConnection(config=h2_config)
        conn.header_hard_limit = config.header_list_hard_limit
        frames = _BoundedFrameBuffer(server=True)
        frames.max_frame_size = conn.incoming_buffer.max_frame_size
        frames.header_block_limit = config.header_list_hard_limit
        conn.incoming_buffer = frames
        conn.local_settings = _LocalSettings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: config.max_concurrent_streams,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: config.max_header_list_size,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: config.initial_window_size,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: config.max_frame_size,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        # Until the ACK, h2 decodes with its own default; bound it from the first byte.
        conn.decoder.max_header_list_size = config.header_list_hard_limit
        conn.initiate_connection()
        if config.connection_window_increment > 0:
            conn.increment_flow_control_window(config.connection_window_increment)
        self._h2 = conn
        self._calls: dict[int, _Call] = {}
        # Output ahead of h2's: frames we write ourselves (graceful GOAWAY), and h2's output
        # moved here by buffered_output().
        self._extra = bytearray()
        self._drain_last_stream_id: int | None = None
        self._closed = False
        clock = config.clock
        self._resets = _Rate(config.max_client_resets, config.abuse_window, clock)
        self._settings = _Rate(config.max_settings_frames, config.abuse_window, clock)
        self._empty_data = _Rate(config.max_empty_data_frames, config.abuse_window, clock)
        self._last_ping: float | None = None
        self._ping_strikes = 0
        self._preface_received = False

    # ------------------------------------------------------------------ inspection

    @property
    def open_calls(self) -> int:
        """Calls started and not yet finished."""
        return len(self._calls)

    @property
    def draining(self) -> bool:
        """True once ``start_drain()`` has sent GOAWAY."""
        return self._drain_last_stream_id is not None

    @property
    def closed(self) -> bool:
        """True once the connection has been closed (by us or by a protocol error)."""
        return self._closed

    @property
    def preface_received(self) -> bool:
        """True once the client's connection preface, up to its first SETTINGS, is in."""
        return self._preface_received

    def buffered_output(self) -> int:
        """Bytes ready for ``data_to_send()`` that the I/O layer has not taken yet.

        With what the I/O layer is still writing, this is the output waiting on the socket;
        a peer that stops reading (its flow-control windows wide open, or its requests
        answered at once) would otherwise make it grow without bound until the write timeout.
        """
        self._extra += self._h2.data_to_send()
        return len(self._extra)

    def pending_output(self, stream_id: int) -> int:
        """Bytes of response data queued on ``stream_id`` waiting for flow-control window."""
        call = self._calls.get(stream_id)
        return len(call.pending) if call is not None else 0

    def is_active(self, stream_id: int) -> bool:
        """True while ``stream_id`` is a call that may still send."""
        return stream_id in self._calls

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes read from the socket; return the events they caused.

        Raises ``ProtocolError`` when the peer broke HTTP/2 so badly that the connection must
        end; the GOAWAY to send is then already in ``data_to_send()``.
        """
        if self._closed:
            return []
        try:
            h2_events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._closed = True
            code = int(getattr(exc, "error_code", h2.errors.ErrorCodes.PROTOCOL_ERROR))
            message = str(exc) or type(exc).__name__
            if self._h2.state_machine.state is not h2.connection.ConnectionState.CLOSED:
                # h2 checks the preface before its frame loop and says nothing about a bad
                # one; RFC 9113 section 3.4 allows a GOAWAY, which tells a confused peer why.
                self._h2.close_connection(code, message.encode("utf-8", "replace"))
            raise ProtocolError(message, code) from None
        events: list[Event] = []
        for ev in h2_events:
            if isinstance(ev, h2.events.DataReceived):
                self._on_data(ev, events)
            elif isinstance(ev, h2.events.RequestReceived):
                self._on_request(ev, events)
            elif isinstance(ev, h2.events.StreamEnded):
                self._on_stream_ended(ev.stream_id, events)
            elif isinstance(ev, h2.events.WindowUpdated):
                if ev.stream_id:
                    self._flush(ev.stream_id)
                else:
                    self._flush_all()
            elif isinstance(ev, h2.events.StreamReset):
                if ev.remote_reset and self._resets.exceeded():
                    self._calm_down("too many stream resets", events)
                if self._calls.pop(ev.stream_id, None) is not None:
                    events.append(StreamReset(ev.stream_id, int(ev.error_code or 0)))
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                self._preface_received = True
                if self._settings.exceeded():
                    self._calm_down("too many SETTINGS frames", events)
                if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in ev.changed_settings:
                    self._flush_all()
            elif isinstance(ev, h2.events.PingReceived):
                self._on_ping()
            elif isinstance(ev, h2.events.ConnectionTerminated):
                events.append(
                    ConnectionTerminated(
                        int(ev.error_code or 0), ev.last_stream_id or 0, ev.additional_data
                    )
                )
        return events

    def _calm_down(self, why: str, events: list[Event]) -> None:
        """End an abusive connection: GOAWAY(ENHANCE_YOUR_CALM) and a ProtocolError."""
        self.close(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, why)
        raise ProtocolError(why, h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)

    def _on_ping(self) -> None:
        now = self.config.clock()
        last, self._last_ping = self._last_ping, now
        if last is not None and now - last < self.config.min_ping_interval:
            self._ping_strikes += 1
            if self._ping_strikes > self.config.max_ping_strikes:
                # The debug data grpc-go sends, which gRPC clients recognize to back off.
                self.close(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, "too_many_pings")
                raise ProtocolError("too many pings", h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)

    def _on_request(self, ev: h2.events.RequestReceived, events: list[Event]) -> None:
        sid = ev.stream_id
        if len(self._calls) >= self.config.max_concurrent_streams:
            self._refuse(sid, f"more than {self.config.max_concurrent_streams} concurrent streams",
                         events)
            return
        if self._drain_last_stream_id is not None and sid > self._drain_last_stream_id:
            self._refuse(sid, "server is shutting down", events)
            return
        method = path = content_type = te = timeout_raw = encoding = accept = None
        authority = b""
        size = 0
        headers = ev.headers or []
        for name, value in headers:
            size += len(name) + len(value) + 32
            if name == b":path":
                path = value
            elif name == b":method":
                method = value
            elif name == b":authority":
                authority = value
            elif name == b"content-type":
                content_type = value
            elif name == b"te":
                te = value
            elif name == b"grpc-timeout":
                timeout_raw = value
            elif name == b"grpc-encoding":
                encoding = value
            elif name == b"grpc-accept-encoding":
                accept = value
        limit = self.config.max_header_list_size
        if size > limit:
            self._reject(sid, 200, StatusCode.RESOURCE_EXHAUSTED,
                         f"request header list of {size} bytes exceeds the limit of {limit}",
                         events)
            return
        if method != b"POST":
            # PROTOCOL-HTTP2.md: only POST is a gRPC request.
            shown = method.decode("ascii", "replace") if method else ""
            self._reject(sid, 405, StatusCode.INTERNAL,
                         f"invalid gRPC request method {shown!r}", events)
            return
        if content_type is None or not _is_grpc_content_type(content_type):
            shown = content_type.decode("ascii", "replace") if content_type else ""
            self._reject(sid, 415, StatusCode.INTERNAL,
                         f"invalid gRPC request content-type {shown!r}", events)
            return
        if te != b"trailers":
            # "TE → 'te' 'trailers' # Used to detect incompatible proxies"
            self._reject(sid, 400, StatusCode.INTERNAL,
                         "missing or invalid te header: gRPC requires 'te: trailers'", events)
            return
        timeout: float | None = None
        if timeout_raw is not None:
            try:
                timeout = parse_timeout(timeout_raw)
            except ValueError as exc:
                self._reject(sid, 400, StatusCode.INTERNAL, f"malformed grpc-timeout: {exc}",
                             events)
                return
        try:
            metadata = from_headers(headers)
        except ValueError as exc:
            self._reject(sid, 400, StatusCode.INTERNAL, f"malformed binary metadata: {exc}",
                         events)
            return
        enc: str | None = None
        if encoding is not None:
            enc = encoding.decode("ascii", "replace").strip().lower()
            if enc not in SUPPORTED_ENCODINGS:
                # compression.md: unsupported encoding -> UNIMPLEMENTED, listing what we accept.
                self._reject(sid, 200, StatusCode.UNIMPLEMENTED,
                             f"grpc: Decompressor is not installed for grpc-encoding {enc!r}",
                             events, extra=[_ACCEPT_ENCODING])
                return
            if enc == "identity":
                enc = None
        accepted = parse_accept_encoding(accept.decode("ascii", "replace") if accept else None)
        # Answer in the request's encoding when the client also accepts it, as grpc-go does;
        # never compress toward a peer that did not offer the encoding.
        send_encoding = enc if enc is not None and enc in accepted else None
        decoder = MessageDecoder(max_message_size=self.config.max_receive_message_size,
                                 encoding=enc)
        self._calls[sid] = _Call(decoder, send_encoding)
        events.append(
            RequestReceived(
                stream_id=sid,
                method=path.decode("utf-8", "replace") if path else "",
                metadata=metadata,
                timeout=timeout,
                authority=authority.decode("utf-8", "replace"),
                encoding=enc,
                accept_encoding=accepted,
            )
        )

    def _on_data(self, ev: h2.events.DataReceived, events: list[Event]) -> None:
        sid = ev.stream_id
        length = ev.flow_controlled_length or 0
        call = self._calls.get(sid)
        if length:
            # The decoder bounds what it holds (one message up to the receive limit), so the
            # window can be reopened as soon as bytes are handed to it.
            self._h2.acknowledge_received_data(length, sid)
        if not length and not ev.stream_ended and self._empty_data.exceeded():
            self._calm_down("too many empty DATA frames", events)
        if call is None or ev.data is None:
            return
        try:
            for message in call.decoder.feed(ev.data):
                events.append(MessageReceived(sid, message))
        except RpcError as exc:
            self._abort(sid, exc, events)

    def _on_stream_ended(self, sid: int, events: list[Event]) -> None:
        call = self._calls.get(sid)
        if call is None:
            return
        call.client_done = True
        try:
            call.decoder.end()
        except RpcError as exc:
            self._abort(sid, exc, events)
            return
        events.append(RequestEnded(sid))

    def _abort(self, sid: int, exc: RpcError, events: list[Event]) -> None:
        self.send_status(sid, exc.code, exc.message)
        events.append(CallAborted(sid, exc.code, exc.message))

    def _refuse(self, sid: int, why: str, events: list[Event]) -> None:
        if self._can_send(sid):
            self._h2.reset_stream(sid, _REFUSED_STREAM)
        events.append(RequestRejected(sid, 0, None, why))

    def _reject(
        self,
        sid: int,
        http_status: int,
        code: StatusCode,
        message: str,
        events: list[Event],
        extra: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        headers = [(b":status", str(http_status).encode()), _CONTENT_TYPE, *extra,
                   (b"grpc-status", _STATUS_BYTES[code]),
                   (b"grpc-message", percent_encode(message).encode("ascii"))]
        if self._can_send(sid):
            self._h2.send_headers(sid, headers, end_stream=True)
            if not self._h2_stream_remote_closed(sid):
                self._h2.reset_stream(sid, _NO_ERROR)
        events.append(RequestRejected(sid, http_status, code, message))

    def _can_send(self, sid: int) -> bool:
        """False once h2 has closed the stream although it may still be a call of ours.

        h2 parses every frame of a read before we see its events, so when we answer an event
        (refuse or reject a request, abort a call, flush on WINDOW_UPDATE) the client's
        RST_STREAM from later in the same read may already have closed the stream; h2 then
        raises on any frame we send. Nothing needs saying on such a stream, and the call is
        forgotten when its StreamReset event, which follows, is handled.
        """
        stream = self._h2.streams.get(sid)
        return stream is not None and not stream.closed

    def _h2_stream_remote_closed(self, sid: int) -> bool:
        stream = self._h2.streams.get(sid)
        return stream is None or stream.closed or stream.state_machine.state in (
            h2.stream.StreamState.HALF_CLOSED_REMOTE,
        )

    # ------------------------------------------------------------------ output

    def send_headers(self, stream_id: int, metadata: MetadataLike = ()) -> None:
        """Send the response headers (with initial metadata) unless already sent."""
        call = self._calls.get(stream_id)
        if call is None or call.headers_sent or not self._can_send(stream_id):
            return
        headers = [_STATUS_200, _CONTENT_TYPE]
        if call.send_encoding is not None:
            headers.append((b"grpc-encoding", call.send_encoding.encode("ascii")))
        headers.append(_ACCEPT_ENCODING)
        headers.extend(to_headers(metadata))
        self._h2.send_headers(stream_id, headers)
        call.headers_sent = True
        self._ping_strikes = 0

    def set_send_encoding(self, stream_id: int, encoding: str | None) -> None:
        """Choose the response encoding before headers go out; the client must accept it."""
        call = self._calls.get(stream_id)
        if call is None or call.headers_sent:
            return
        if encoding == "identity":
            encoding = None
        if encoding is not None and encoding not in SUPPORTED_ENCODINGS:
            raise ValueError(f"unsupported encoding {encoding!r}")
        call.send_encoding = encoding

    def send_message(self, stream_id: int, payload: bytes) -> bool:
        """Queue one response message; return False if the call is already over."""
        call = self._calls.get(stream_id)
        if call is None or call.trailers is not None:
            return False
        if not call.headers_sent:
            self.send_headers(stream_id)
        if call.send_encoding is not None:
            data = encode_message(compress(call.send_encoding, payload), compressed=True)
        else:
            data = encode_message(payload)
        call.pending += data
        self._ping_strikes = 0
        self._flush(stream_id)
        return True

    def send_status(
        self,
        stream_id: int,
        code: StatusCode,
        message: str = "",
        metadata: MetadataLike = (),
        *,
        details: bytes | None = None,
        reset_code: int = _NO_ERROR,
    ) -> bool:
        """End the call with a status (trailers); return False if it was already over.

        Before any message this is a Trailers-Only response: one HEADERS frame with END_STREAM.
        If the client has not ended its side by then, RST_STREAM ``reset_code`` follows (a
        closed stream may carry no more frames, so there is none otherwise).
        """
        call = self._calls.get(stream_id)
        if call is None or call.trailers is not None:
            return False
        if not self._can_send(stream_id):
            del self._calls[stream_id]
            return False
        call.reset_code = reset_code
        trailers = [(b"grpc-status", _STATUS_BYTES[StatusCode(code)])]
        if message:
            trailers.append((b"grpc-message", percent_encode(message).encode("ascii")))
        if details is not None:
            trailers.append((b"grpc-status-details-bin", encode_bin(details)))
        try:
            trailers.extend(to_headers(metadata))
        except (ValueError, TypeError) as exc:
            # A handler's bad trailing metadata must not leave the stream hanging.
            trailers = [(b"grpc-status", _STATUS_BYTES[StatusCode.INTERNAL]),
                        (b"grpc-message", percent_encode(f"invalid trailing metadata: {exc}")
                         .encode("ascii"))]
        if not call.headers_sent:
            call.headers_sent = True
            self._h2.send_headers(stream_id, [_STATUS_200, _CONTENT_TYPE, *trailers],
                                  end_stream=True)
            self._finish(stream_id, call)
            return True
        call.trailers = trailers
        self._flush(stream_id)
        return True

    def reset(self, stream_id: int, error_code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        """Reset a stream (RST_STREAM) and forget its call."""
        self._calls.pop(stream_id, None)
        try:
            self._h2.reset_stream(stream_id, error_code)
        except h2.exceptions.StreamClosedError:
            pass

    def start_drain(self) -> None:
        """Send GOAWAY(NO_ERROR) naming the last accepted stream; refuse later ones."""
        if self._drain_last_stream_id is not None or self._closed:
            return
        last = self._h2.highest_inbound_stream_id
        self._drain_last_stream_id = last
        # Written by hand because h2 treats its own GOAWAY as the end of all processing, while
        # a graceful drain must keep serving the streams at or below ``last``.
        frame = GoAwayFrame(0)
        frame.last_stream_id = last
        frame.error_code = _NO_ERROR
        self._extra += self._h2.data_to_send()
        self._extra += frame.serialize()

    def close(self, error_code: int = _NO_ERROR, message: str = "") -> None:
        """Send GOAWAY and stop processing the connection."""
        if self._closed:
            return
        self._closed = True
        self._calls.clear()
        self._h2.close_connection(error_code, message.encode("utf-8") or None)

    def data_to_send(self) -> bytes:
        """Bytes to write to the socket now (possibly empty)."""
        if self._extra:
            out = bytes(self._extra) + self._h2.data_to_send()
            self._extra.clear()
            return out
        return self._h2.data_to_send()

    def ping(self, opaque: bytes = b"\0" * 8) -> None:
        """Send a PING (keepalive)."""
        self._h2.ping(opaque)

    def _flush_all(self) -> None:
        for sid in [sid for sid, call in self._calls.items() if call.pending or call.trailers]:
            self._flush(sid)

    def _flush(self, sid: int) -> None:
        call = self._calls.get(sid)
        if call is None:
            return
        if not self._can_send(sid):
            return  # reset later in the read being processed; its StreamReset event follows
        pending = call.pending
        h2conn = self._h2
        while pending:
            window = h2conn.local_flow_control_window(sid)
            if window <= 0:
                return
            n = min(window, len(pending), h2conn.max_outbound_frame_size)
            if n == len(pending):
                h2conn.send_data(sid, bytes(pending))
                pending.clear()
            else:
                h2conn.send_data(sid, bytes(pending[:n]))
                del pending[:n]
        if call.trailers is not None:
            h2conn.send_headers(sid, call.trailers, end_stream=True)
            self._finish(sid, call)

    def _finish(self, sid: int, call: _Call) -> None:
        del self._calls[sid]
        if not call.client_done:
            # PROTOCOL-HTTP2.md: trailers sent before the client half-closed are followed by
            # RST_STREAM NO_ERROR so the client stops sending.
            try:
                self._h2.reset_stream(sid, call.reset_code)
            except h2.exceptions.StreamClosedError:
                pass


def _is_grpc_content_type(value: bytes) -> bool:
    # "application/grpc" optionally followed by "+proto", "+json", ... or ";params".
    if not value.startswith(b"application/grpc"):
        return False
    rest = value[16:]
    return not rest or rest[:1] in (b"+", b";")

