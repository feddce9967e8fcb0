"""The sans-I/O gRPC server connection: bytes in, call events out, bytes to send.

Theory of operation
-------------------
``ServerConnection`` drives one HTTP/2 engine (``wire.http2``: h2 by default, or our native
codec; ``ServerConfig.http2`` picks), which calls back into this object in the order the peer
spoke, and adds the gRPC layer on top. It depends only on the engine interface:

* Every request's headers are validated by ``wire.grpc_headers.parse_request_headers`` (the
  gRPC header rules the client reads with too), in the order grpc-go applies them. A request
  that fails is answered by this object itself (an HTTP error or a Trailers-Only response) and is
  reported as ``RequestRejected``; only valid requests become ``RequestReceived``.
* Request bodies go through a per-call ``MessageDecoder``; a bad or oversized message ends the
  call here (``CallAborted``) with the status already queued.
* Receive flow control: the engine reopens the connection window as DATA arrives; a stream's
  window reopens here, half a window at a time, as soon as its bytes are decoded, except for
  calls of methods ``hold_credit_for`` names (client-streaming and bidi): their messages keep
  their share of the stream window until the I/O layer consumes them (``release_credit``), so
  a handler that does not read holds its client back at one window.
* Responses are queued per stream. DATA leaves only as far as the peer's flow-control windows
  allow; the rest waits in the stream's queue until WINDOW_UPDATE arrives, and trailers wait
  behind the data so order is never broken. The I/O layer reads ``pending_output()`` to apply
  back-pressure, so a queue holds at most one message beyond its high-water mark.
* Nothing here knows about sockets, Trio or which methods exist (``hold_credit_for`` is a
  predicate the I/O layer hands in): the I/O layer answers unknown methods with
  ``send_status(UNIMPLEMENTED)`` like any other outcome.

Graceful shutdown uses ``start_drain()`` in two steps, as RFC 9113 section 6.8 advises and
grpc-go does: a GOAWAY naming stream 2^31-1 and a PING; when the PING's ACK is back, every
request the client sent before it saw the first GOAWAY has arrived, and a second GOAWAY names
the last stream we accepted. Streams the client opens after that are refused with
REFUSED_STREAM (safe for it to retry elsewhere) while calls in flight run to completion.

The plain OK answer is cheap on purpose: the response HEADERS and the ``grpc-status: 0``
trailers are constant header lists (tuples), which an engine may encode once (the native engine
does, per process), so a unary call costs three frame headers and a copy of its message on the
way out.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import get_args

from .compression import ACCEPT_ENCODING, SUPPORTED_ENCODINGS, compress
from .errors import RemoteProtocolError, RpcError
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
from .grpc_headers import HeaderError, parse_request_headers
from .http2 import MAX_STREAM_ID, EngineLimits, EngineName, HeaderList, open_engine
from .keepalive import MAX_PING_STRIKES, TOO_MANY_PINGS, EnforcementPolicy, PingEnforcer
from .metadata import MetadataLike, encode_bin, percent_encode, to_headers
from .status import ErrorCode, StatusCode

__all__ = ["ServerConfig", "ServerConnection"]

_NO_ERROR = ErrorCode.NO_ERROR
_ENHANCE_YOUR_CALM = ErrorCode.ENHANCE_YOUR_CALM
#: The opaque data of the PING that closes the first step of a graceful drain.
_DRAIN_PING = b"drain\0\0\0"

# Every response starts with these (PROTOCOL-HTTP2.md "Response-Headers").
_STATUS_200 = (b":status", b"200")
_CONTENT_TYPE = (b"content-type", b"application/grpc")
_ACCEPT_ENCODING = (b"grpc-accept-encoding", ACCEPT_ENCODING.encode())
_STATUS_BYTES = {code: str(int(code)).encode() for code in StatusCode}
# The header lists of a plain OK call: tuples, which an engine may encode once and reuse.
_RESPONSE_HEADERS: HeaderList = (_STATUS_200, _CONTENT_TYPE, _ACCEPT_ENCODING)
_OK_TRAILERS: HeaderList = ((b"grpc-status", b"0"),)


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
    #: Keepalive enforcement (grpc-go's ``EnforcementPolicy.MinTime``, see wire.keepalive): a
    #: PING sooner than this after the previous one is a "strike" (unless we sent HEADERS or
    #: DATA in between); more than ``max_ping_strikes`` strikes -> GOAWAY(ENHANCE_YOUR_CALM,
    #: "too_many_pings"). More lenient than grpc-go's 5 minutes.
    keepalive_min_time: float = 10.0
    #: ``EnforcementPolicy.PermitWithoutStream``: PINGs with no call open are judged by
    #: ``keepalive_min_time`` too; if False each one within 2 h of the previous is a strike.
    keepalive_permit_without_calls: bool = True
    max_ping_strikes: int = MAX_PING_STRIKES
    #: Time source for the windows above (seconds, monotonic).
    clock: Callable[[], float] = time.monotonic
    #: The HTTP/2 engine: "h2" (the h2 library, the default) or "native" (our own codec,
    #: less CPU per call). Both enforce every limit above; see the README's engine table.
    http2: EngineName = "h2"

    def __post_init__(self) -> None:
        if self.http2 not in get_args(EngineName):
            raise ValueError(f"ServerConfig.http2 must be one of {list(get_args(EngineName))}, "
                             f"got {self.http2!r}")
        self.ping_policy()  # refuses a bad keepalive_min_time or max_ping_strikes

    def ping_policy(self) -> EnforcementPolicy:
        """The keepalive enforcement policy these settings describe."""
        return EnforcementPolicy(min_time=self.keepalive_min_time,
                                 permit_without_stream=self.keepalive_permit_without_calls,
                                 max_ping_strikes=self.max_ping_strikes)

    def engine_limits(self) -> EngineLimits:
        """The HTTP/2 settings and limits the engine is made with."""
        return EngineLimits(
            max_concurrent_streams=self.max_concurrent_streams,
            # We advertise the soft limit but decode up to the hard one, so that a request
            # between the two is refused as a stream (with a gRPC status), not as a connection.
            max_header_list_size=self.max_header_list_size,
            header_block_limit=self.header_list_hard_limit,
            initial_window_size=self.initial_window_size,
            max_frame_size=self.max_frame_size,
            connection_window_increment=self.connection_window_increment,
        )


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


class _Call:
    """Per-stream state of a call in progress."""

    __slots__ = ("client_done", "credit_due", "decoder", "headers_sent", "holds_credit",
                 "pending", "reset_code", "send_encoding", "starved", "trailers",
                 "unattributed")

    def __init__(self, decoder: MessageDecoder, send_encoding: str | None,
                 holds_credit: bool = False) -> None:
        self.decoder = decoder
        self.send_encoding = send_encoding
        # Received bytes keep their stream credit until ``release_credit`` (see
        # ``hold_credit_for``); credit of a message not yet complete, and whether the handler
        # waits with nothing queued (true until a first message arrives).
        self.holds_credit = holds_credit
        self.unattributed = 0
        self.starved = True
        # Credit given back but not yet sent (WINDOW_UPDATE goes out half a window at once).
        self.credit_due = 0
        self.headers_sent = False
        self.client_done = False
        self.pending = bytearray()
        # The trailer list, once the status is known (sent behind pending data).
        self.trailers: HeaderList | None = None
        # RST_STREAM code sent after the trailers when the client has not half-closed.
        self.reset_code: int = _NO_ERROR


class _Hooks:
    """The engine's handler (``wire.http2.EngineHandler``): the connection's callbacks."""

    __slots__ = ("on_data", "on_goaway", "on_malformed", "on_ping", "on_ping_ack",
                 "on_request", "on_settings", "on_stream_reset", "on_trailers",
                 "on_window_update")

    on_settings: Callable[[bool], None]
    on_request: Callable[[int, list[tuple[bytes, bytes]], bool], None]
    on_malformed: Callable[[int, str], None]
    on_data: Callable[[int, bytes, int, bool], None]
    on_trailers: Callable[[int], None]
    on_stream_reset: Callable[[int, int, bool], None]
    on_window_update: Callable[[int], None]
    on_ping: Callable[[], None]
    on_ping_ack: Callable[[bytes], None]
    on_goaway: Callable[[int, int, bytes], None]

    def __init__(self, **callbacks: Callable[..., None]) -> None:
        for name, callback in callbacks.items():
            setattr(self, name, callback)


class ServerConnection:
    """One HTTP/2 connection's gRPC server state machine (no I/O)."""

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config = config or ServerConfig()
        hooks = _Hooks(
            on_settings=self._h2_settings,
            on_request=self._h2_request,
            on_malformed=self._h2_malformed,
            on_data=self._h2_data,
            on_trailers=self._h2_trailers,
            on_stream_reset=self._h2_stream_reset,
            on_window_update=self._h2_window_update,
            on_ping=self._h2_ping,
            on_ping_ack=self._h2_ping_ack,
            on_goaway=self._h2_goaway,
        )
        self._engine = open_engine(config.http2, hooks, config.engine_limits())
        self._calls: dict[int, _Call] = {}
        # Events of the receive_data() call in progress (the engine reports as it parses).
        self._events: list[Event] = []
        self._draining = False
        # Set by the drain's second GOAWAY: streams above it are refused.
        self._drain_last_stream_id: int | None = None
        self._closed = False
        clock = config.clock
        self._resets = _Rate(config.max_client_resets, config.abuse_window, clock)
        self._settings = _Rate(config.max_settings_frames, config.abuse_window, clock)
        self._empty_data = _Rate(config.max_empty_data_frames, config.abuse_window, clock)
        self._pings = PingEnforcer(config.ping_policy())
        self._preface_received = False
        # Which methods' calls keep their messages' flow-control credit (see hold_credit_for).
        self._holds_credit: Callable[[str], bool] | None = None
        # A stream WINDOW_UPDATE once half the window is consumed, as h2 and our codec do.
        self._credit_batch = max(1, config.initial_window_size // 2)

    # ------------------------------------------------------------------ inspection

    @property
    def open_calls(self) -> int:
        """Calls started and not yet finished."""
        return len(self._calls)

    @property
    def http2(self) -> str:
        """The name of the HTTP/2 engine under this connection ("h2" or "native")."""
        return self.config.http2

    @property
    def draining(self) -> bool:
        """True once ``start_drain()`` has sent its first GOAWAY."""
        return self._draining

    @property
    def drain_complete(self) -> bool:
        """True once the drain's final GOAWAY (naming the last stream accepted) went out:
        no new call can start on this connection."""
        return self._drain_last_stream_id is not None or (self._draining and self._closed)

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
        return self._engine.buffered()

    def pending_output(self, stream_id: int) -> int:
        """Bytes of response data queued on ``stream_id`` waiting for flow-control window."""
        call = self._calls.get(stream_id)
        return len(call.pending) if call is not None else 0

    def is_active(self, stream_id: int) -> bool:
        """True while ``stream_id`` is a call that may still send."""
        return stream_id in self._calls

    def hold_credit_for(self, predicate: Callable[[str], bool] | None) -> None:
        """Calls whose method path ``predicate`` accepts hold back their flow-control credit.

        For such a call each ``MessageReceived`` carries ``credit``: the stream receive window
        its bytes took, which stays closed until the I/O layer hands it back with
        ``release_credit`` once the message is consumed. A client streaming faster than its
        handler reads is then held back by HTTP/2 flow control (RFC 9113 section 5.2.2: "flow
        control can be used to limit the amount of memory" a receiver commits) instead of
        being buffered without bound. The bytes of a message not yet complete are held too,
        except while ``request_more`` says the handler waits with nothing queued: then they go
        back at once, so a message larger than the window can complete. What is buffered for
        a call stays below its stream window plus one message. Other calls give their credit
        back as bytes arrive. The connection window is the engine's and reopens as DATA
        arrives, so one slow handler never stalls the connection's other calls.
        """
        self._holds_credit = predicate

    def release_credit(self, stream_id: int, credit: int) -> None:
        """Give back ``credit`` of a consumed message (see ``hold_credit_for``)."""
        call = self._calls.get(stream_id)
        if call is not None and credit > 0:
            self._give_credit(stream_id, call, credit)

    def request_more(self, stream_id: int) -> None:
        """The call's handler has consumed every message and waits for the next one."""
        call = self._calls.get(stream_id)
        if call is None or not call.holds_credit:
            return
        call.starved = True
        credit, call.unattributed = call.unattributed, 0
        if credit:
            self._give_credit(stream_id, call, credit)

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes read from the socket; return the events they caused.

        Raises ``RemoteProtocolError`` when the peer broke HTTP/2 so badly that the connection
        must end; the GOAWAY to send is then already in ``data_to_send()``.
        """
        if self._closed:
            return []
        events = self._events = []
        try:
            self._engine.receive_data(data)
        except RemoteProtocolError:
            self._closed = True
            self._calls.clear()
            raise
        finally:
            self._events = []
        return events

    def _calm_down(self, why: str) -> None:
        """End an abusive connection: GOAWAY(ENHANCE_YOUR_CALM) and a RemoteProtocolError."""
        self.close(_ENHANCE_YOUR_CALM, why)
        raise RemoteProtocolError(why, _ENHANCE_YOUR_CALM)

    # The engine's callbacks (see wire.http2.EngineHandler), called in the peer's order.

    def _h2_settings(self, initial_window_changed: bool) -> None:
        self._preface_received = True
        if self._settings.exceeded():
            self._calm_down("too many SETTINGS frames")
        if initial_window_changed:
            self._flush_all()

    def _h2_ping(self) -> None:
        if self._pings.ping_received(self.config.clock(), len(self._calls)):
            # The debug data grpc-go sends, which gRPC clients recognize to back off.
            self.close(_ENHANCE_YOUR_CALM, TOO_MANY_PINGS.decode())
            raise RemoteProtocolError("too many pings", _ENHANCE_YOUR_CALM)

    def _h2_ping_ack(self, opaque: bytes) -> None:
        if opaque == _DRAIN_PING and self._draining and self._drain_last_stream_id is None:
            # The client has seen the first GOAWAY: everything it sent before is in, so the
            # final GOAWAY can name the last stream for real (RFC 9113 section 6.8).
            engine = self._engine
            self._drain_last_stream_id = engine.highest_stream_id
            engine.goaway(_NO_ERROR)

    def _h2_goaway(self, error_code: int, last_stream_id: int, debug: bytes) -> None:
        self._events.append(ConnectionTerminated(error_code, last_stream_id, debug))

    def _h2_stream_reset(self, sid: int, error_code: int, remote: bool) -> None:
        if remote and self._resets.exceeded():
            self._calm_down("too many stream resets")
        if self._calls.pop(sid, None) is not None:
            self._events.append(StreamReset(sid, error_code))

    def _h2_window_update(self, sid: int) -> None:
        if sid:
            if sid in self._calls:
                self._flush(sid)
        else:
            self._flush_all()

    def _h2_malformed(self, sid: int, reason: str) -> None:
        # RFC 9113 section 8.1.1: the engine has reset the stream with PROTOCOL_ERROR.
        self._events.append(RequestRejected(sid, 0, None, f"malformed request: {reason}"))

    def _h2_request(self, sid: int, headers: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        self._on_request(sid, headers)
        if end_stream:
            self._on_stream_ended(sid)

    def _h2_data(self, sid: int, data: bytes, flow_length: int, end_stream: bool) -> None:
        if not flow_length and not end_stream and self._empty_data.exceeded():
            self._calm_down("too many empty DATA frames")
        call = self._calls.get(sid)
        if call is None:
            return  # the engine reopened the connection window; the stream's is moot
        messages: list[bytes] = []
        if data:
            try:
                messages = call.decoder.feed(data)
            except RpcError as exc:
                self._abort(sid, exc)
                return
        if call.holds_credit:
            self._hold_credit(sid, call, messages, flow_length)
        else:
            # The decoder bounds what it holds (one message up to the receive limit), so the
            # credit goes back as soon as the bytes are decoded.
            self._give_credit(sid, call, flow_length)
            events = self._events
            for message in messages:
                events.append(MessageReceived(sid, message))
        if end_stream:
            self._on_stream_ended(sid)

    def _hold_credit(self, sid: int, call: _Call, messages: list[bytes], flow_length: int) -> None:
        """Report messages of a call holding credit; each carries the credit it took."""
        credit = call.unattributed + flow_length
        if messages:
            # Whatever the decoder still holds is the start of the next message.
            leftover = min(call.decoder.buffered, credit)
            events = self._events
            for message in messages[:-1]:
                events.append(MessageReceived(sid, message))
            events.append(MessageReceived(sid, messages[-1], credit - leftover))
            credit = leftover
            call.starved = False
        call.unattributed = credit
        if call.starved and credit:
            # The handler waits with nothing queued: a message larger than the window must
            # still be able to complete.
            call.unattributed = 0
            self._give_credit(sid, call, credit)

    def _give_credit(self, sid: int, call: _Call, credit: int) -> None:
        """Reopen the stream's window by ``credit``, in batches of half a window."""
        due = call.credit_due + credit
        if due >= self._credit_batch:
            call.credit_due = 0
            self._engine.acknowledge_data(sid, due)
        else:
            call.credit_due = due

    def _h2_trailers(self, sid: int) -> None:
        self._on_stream_ended(sid)

    def _on_request(self, sid: int, headers: list[tuple[bytes, bytes]]) -> None:
        refusal = self._refusal(sid)
        if refusal is not None:
            self._refuse(sid, refusal)
            return
        try:
            head = parse_request_headers(
                headers, max_header_list_size=self.config.max_header_list_size)
        except HeaderError as exc:
            # compression.md: an unsupported grpc-encoding is answered with what we accept.
            extra = (_ACCEPT_ENCODING,) if exc.advertise_encodings else ()
            self._reject(sid, exc.http_status, exc.code, exc.message, extra)
            return
        enc = head.encoding
        accepted = head.accept_encoding
        # Answer in the request's encoding when the client also accepts it, as grpc-go does;
        # never compress toward a peer that did not offer the encoding.
        send_encoding = enc if enc is not None and enc in accepted else None
        decoder = MessageDecoder(max_message_size=self.config.max_receive_message_size,
                                 encoding=enc)
        method = head.path
        holds = self._holds_credit is not None and self._holds_credit(method)
        self._calls[sid] = _Call(decoder, send_encoding, holds)
        self._events.append(
            RequestReceived(
                stream_id=sid,
                method=method,
                metadata=head.metadata,
                timeout=head.timeout,
                authority=head.authority,
                encoding=enc,
                accept_encoding=accepted,
            )
        )

    def _refusal(self, sid: int) -> str | None:
        """Why a new stream cannot become a call (REFUSED_STREAM), or None."""
        limit = self.config.max_concurrent_streams
        if len(self._calls) >= limit:
            return f"more than {limit} concurrent streams"
        last = self._drain_last_stream_id
        if last is not None and sid > last:
            return "server is shutting down"
        return None

    def _on_stream_ended(self, sid: int) -> None:
        call = self._calls.get(sid)
        if call is None:
            return
        call.client_done = True
        try:
            call.decoder.end()
        except RpcError as exc:
            self._abort(sid, exc)
            return
        self._events.append(RequestEnded(sid))

    def _abort(self, sid: int, exc: RpcError) -> None:
        self.send_status(sid, exc.code, exc.message)
        self._events.append(CallAborted(sid, exc.code, exc.message))

    def _refuse(self, sid: int, why: str) -> None:
        self._engine.reset_stream(sid, ErrorCode.REFUSED_STREAM)
        self._events.append(RequestRejected(sid, 0, None, why))

    def _reject(
        self,
        sid: int,
        http_status: int,
        code: StatusCode,
        message: str,
        extra: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        headers = [(b":status", str(http_status).encode()), _CONTENT_TYPE, *extra,
                   (b"grpc-status", _STATUS_BYTES[code]),
                   (b"grpc-message", percent_encode(message).encode("ascii"))]
        engine = self._engine
        if engine.can_send(sid):
            engine.send_headers(sid, headers, end_stream=True)
            if not engine.remote_closed(sid):
                engine.reset_stream(sid, _NO_ERROR)
        self._events.append(RequestRejected(sid, http_status, code, message))

    # ------------------------------------------------------------------ output

    def send_headers(self, stream_id: int, metadata: MetadataLike = ()) -> None:
        """Send the response headers (with initial metadata) unless already sent."""
        call = self._calls.get(stream_id)
        if call is None or call.headers_sent or not self._engine.can_send(stream_id):
            return
        headers: HeaderList
        if call.send_encoding is None and not metadata:
            headers = _RESPONSE_HEADERS
        else:
            headers = [_STATUS_200, _CONTENT_TYPE]
            if call.send_encoding is not None:
                headers.append((b"grpc-encoding", call.send_encoding.encode("ascii")))
            headers.append(_ACCEPT_ENCODING)
            headers.extend(to_headers(metadata))
        self._engine.send_headers(stream_id, headers)
        call.headers_sent = True
        self._pings.data_sent()

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
        self._pings.data_sent()
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
        if not self._engine.can_send(stream_id):
            del self._calls[stream_id]
            return False
        call.reset_code = reset_code
        if code == 0 and not message and not metadata and details is None and call.headers_sent:
            call.trailers = _OK_TRAILERS
            self._flush(stream_id)
            return True
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
            self._engine.send_headers(stream_id, [_STATUS_200, _CONTENT_TYPE, *trailers],
                                      end_stream=True)
            self._finish(stream_id, call)
            return True
        call.trailers = trailers
        self._flush(stream_id)
        return True

    def reset(self, stream_id: int, error_code: int = ErrorCode.CANCEL) -> None:
        """Reset a stream (RST_STREAM) and forget its call."""
        self._calls.pop(stream_id, None)
        self._engine.reset_stream(stream_id, error_code)

    def start_drain(self) -> None:
        """Begin a graceful drain: GOAWAY(NO_ERROR, 2^31-1) and a PING; the final GOAWAY,
        naming the last stream accepted, follows the PING's ACK; later streams are refused."""
        if self._draining or self._closed:
            return
        self._draining = True
        # RFC 9113 section 6.8: "A server that is attempting to gracefully shut down a
        # connection SHOULD send an initial GOAWAY frame with the last stream identifier set to
        # 2^31-1 and a NO_ERROR code ... After allowing time for any in-flight stream creation
        # (at least one round-trip time), the server MAY send another GOAWAY frame with an
        # updated last stream identifier."
        engine = self._engine
        engine.goaway(_NO_ERROR, last_stream_id=MAX_STREAM_ID)
        engine.ping(_DRAIN_PING)

    def close(self, error_code: int = _NO_ERROR, message: str = "") -> None:
        """Send GOAWAY and stop processing the connection."""
        if self._closed:
            return
        self._closed = True
        self._calls.clear()
        self._engine.close(error_code, message.encode("utf-8"))

    def data_to_send(self) -> bytes:
        """Bytes to write to the socket now (possibly empty)."""
        return self._engine.data_to_send()

    def ping(self, opaque: bytes = b"\0" * 8) -> None:
        """Send a PING (keepalive)."""
        self._engine.ping(opaque)

    def _flush_all(self) -> None:
        for sid in [sid for sid, call in self._calls.items() if call.pending or call.trailers]:
            self._flush(sid)

    def _flush(self, sid: int) -> None:
        call = self._calls.get(sid)
        if call is None:
            return
        engine = self._engine
        pending = call.pending
        if pending:
            sent = engine.send_data(sid, pending)
            if sent < len(pending):
                del pending[:sent]
                return  # the trailers wait behind the data
            pending.clear()
        if call.trailers is not None and engine.can_send(sid):
            engine.send_headers(sid, call.trailers, end_stream=True)
            self._finish(sid, call)

    def _finish(self, sid: int, call: _Call) -> None:
        del self._calls[sid]
        if not call.client_done:
            # PROTOCOL-HTTP2.md: trailers sent before the client half-closed are followed by
            # RST_STREAM NO_ERROR so the client stops sending.
            self._engine.reset_stream(sid, call.reset_code)


