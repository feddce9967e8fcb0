"""A minimal, strict HTTP/2 server codec (RFC 9113) for the gRPC subset.

Theory of operation
-------------------
``H2ServerCodec`` is a sans-I/O object: bytes read from the socket go into ``receive_data()``,
bytes to write come out of ``data_to_send()``. It knows HTTP/2 framing, stream states, flow
control and HPACK, and nothing about gRPC. What the peer says is reported *as it is parsed*, by
calling methods of a handler object (``wire.http2.interface.EngineHandler``) -- not by building
event objects -- so the handler always sees the connection in the state the frame just left it
in, and may answer (send HEADERS, DATA, RST_STREAM) from inside the callback.

Why not h2 (which the client still uses): h2 is general (both roles, push, priorities), and its
per-frame event objects, state machines and header normalization were about 80% of the ~280 us a
unary Check cost in the sans-I/O layer (bench/profile.md). This codec does the server's subset
in ~40 us, answers malformed requests with a stream error where h2 ends the connection, and
reports frames in order, so an answer never races a later frame of the same read.

Only what a gRPC server needs is implemented:

* The server role only. Clients open streams with HEADERS; we never push (SETTINGS_ENABLE_PUSH
  is 0 and a client's PUSH_PROMISE is a connection error) and never open streams, so every
  even-numbered stream stays "idle" (section 5.1) however high the client's streams go.
* Receiving: every frame type of RFC 9113 section 6 is parsed and checked; PRIORITY is checked
  and ignored; unknown frame types are ignored (section 4.1). A header block (HEADERS plus any
  CONTINUATION) is collected up to a byte cap *before* decoding, then decoded with
  ``hpack.Decoder`` and validated (sections 8.2 and 8.3). A malformed request is a *stream*
  error: the stream is reset with PROTOCOL_ERROR and the handler hears ``on_malformed`` (the
  connection lives on). Frames that break the connection's rules end it: a GOAWAY with the
  error code goes into the output and ``H2ConnectionError`` is raised; afterwards all input is
  ignored.
* Receive flow control: received DATA is accounted against the stream and connection windows
  (padding included) and the windows are reopened automatically once half of them has been
  consumed. The handler is expected to bound what it buffers itself (the gRPC layer decodes
  messages as they come, with a size limit). With ``manual_stream_credit`` a stream's window
  reopens only as the handler gives its credit back (``acknowledge``, which sends the
  WINDOW_UPDATE at once: the caller batches), so a consumer that stops reading keeps the
  client's stream window shut; the connection window stays automatic, so one slow stream never
  stalls the others.
* Sending: header blocks are taken already HPACK-encoded (``encode_headers()`` writes literal
  fields *without indexing*, so the peer's dynamic table is never touched and a constant header
  list is the same bytes on every stream -- see ``HeaderBlockCache``); DATA leaves only within
  the peer's stream and connection windows and SETTINGS_MAX_FRAME_SIZE (``send_data()`` says how
  much it took).
* Closed streams are remembered (a bounded number of them) with how they closed, because
  RFC 9113 section 5.1 answers late frames differently: ignored after we reset a stream, one
  RST_STREAM(STREAM_CLOSED) after the peer reset it, a connection error after a clean close.
  Nothing is answered frame for frame, so a flood of frames on dead streams cannot make us write
  more than it costs the peer.

Output is appended to one ``bytearray``; every frame header is 9 bytes packed with ``struct``.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from typing import TYPE_CHECKING

import hpack
import hpack.exceptions
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

from .status import ErrorCode

if TYPE_CHECKING:
    # Typing only: wire.http2 imports this module to build the native engine.
    from .http2.interface import EngineHandler

__all__ = [
    "CANCEL",
    "COMPRESSION_ERROR",
    "ENHANCE_YOUR_CALM",
    "FLOW_CONTROL_ERROR",
    "FRAME_SIZE_ERROR",
    "NO_ERROR",
    "PROTOCOL_ERROR",
    "REFUSED_STREAM",
    "STREAM_CLOSED",
    "H2ConnectionError",
    "H2ServerCodec",
    "encode_headers",
]

# Error codes (RFC 9113 section 7): the shared ``ErrorCode`` members, also importable under
# their old module-level names.
NO_ERROR = ErrorCode.NO_ERROR
PROTOCOL_ERROR = ErrorCode.PROTOCOL_ERROR
INTERNAL_ERROR = ErrorCode.INTERNAL_ERROR
FLOW_CONTROL_ERROR = ErrorCode.FLOW_CONTROL_ERROR
STREAM_CLOSED = ErrorCode.STREAM_CLOSED
FRAME_SIZE_ERROR = ErrorCode.FRAME_SIZE_ERROR
REFUSED_STREAM = ErrorCode.REFUSED_STREAM
CANCEL = ErrorCode.CANCEL
COMPRESSION_ERROR = ErrorCode.COMPRESSION_ERROR
ENHANCE_YOUR_CALM = ErrorCode.ENHANCE_YOUR_CALM

# Frame types (section 6).
_DATA = 0x0
_HEADERS = 0x1
_PRIORITY = 0x2
_RST_STREAM = 0x3
_SETTINGS = 0x4
_PUSH_PROMISE = 0x5
_PING = 0x6
_GOAWAY = 0x7
_WINDOW_UPDATE = 0x8
_CONTINUATION = 0x9

# Flags.
_END_STREAM = 0x1
_ACK = 0x1
_END_HEADERS = 0x4
_PADDED = 0x8
_PRIORITY_FLAG = 0x20

# Settings identifiers (section 6.5.2).
_HEADER_TABLE_SIZE = 0x1
_ENABLE_PUSH = 0x2
_MAX_CONCURRENT_STREAMS = 0x3
_INITIAL_WINDOW_SIZE = 0x4
_MAX_FRAME_SIZE = 0x5
_MAX_HEADER_LIST_SIZE = 0x6

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_MAX_WINDOW = 2**31 - 1
_DEFAULT_WINDOW = 65535
_MIN_FRAME_SIZE = 16384
_MAX_FRAME_SIZE_LIMIT = 2**24 - 1

# length (24 bits) and type share one big-endian 32-bit word; then flags and stream id.
_FRAME_HEADER = struct.Struct(">IBI")
_pack_header = _FRAME_HEADER.pack
_unpack_header = _FRAME_HEADER.unpack_from
_U32 = struct.Struct(">I")
_TWO_U32 = struct.Struct(">II")
_SETTING = struct.Struct(">HI")

# How a remembered closed stream ended (section 5.1 treats late frames differently).
_CLOSED_CLEANLY = 0  # END_STREAM both ways
_RESET_BY_US = 1  # we sent RST_STREAM: ignore what is still in flight
_RESET_BY_PEER = 2  # the peer sent RST_STREAM: answer a late frame once with STREAM_CLOSED

#: A header block may be split over at most this many CONTINUATION frames; empty ones cost us
#: a frame parse each and carry nothing.
MAX_CONTINUATION_FRAMES = 64

# RFC 9113 section 8.2.1: "A field name MUST NOT contain characters in the ranges 0x00-0x20,
# 0x41-0x5a, or 0x7f-0xff (all ranges inclusive)" and, except pseudo-header fields, no colon.
_VALID_NAME = re.compile(rb"[\x21-\x39\x3b-\x40\x5b-\x7e]+").fullmatch
# "A field value MUST NOT contain the zero value (ASCII NUL, 0x00), line feed (ASCII LF, 0x0a),
# or carriage return (ASCII CR, 0x0d) at any position" and "MUST NOT start or end with an ASCII
# whitespace character (ASCII SP or HTAB, 0x20 or 0x09)".
_BAD_VALUE = re.compile(rb"[\x00\n\r]|\A[ \t]|[ \t]\Z").search
# Section 8.2.2: connection-specific header fields make a message malformed.
_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"}
)
# Section 8.3.1: the request pseudo-header fields (":protocol" only exists with RFC 8441's
# SETTINGS_ENABLE_CONNECT_PROTOCOL, which we do not send).
_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path"})


class H2ConnectionError(Exception):
    """The peer broke a connection-level rule; GOAWAY ``error_code`` is already queued."""

    def __init__(self, error_code: int, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message


#: A decoded request header block: the fields, why it is malformed (None if it is not), and
#: its content-length.
_Decoded = tuple[list[tuple[bytes, bytes]], str | None, int | None]


class _Stream:
    """Per-stream state of a stream that is open or half-closed."""

    __slots__ = ("content_length", "local_closed", "received", "recv_window", "remote_closed",
                 "send_window", "unacked")

    def __init__(self, recv_window: int, send_window: int) -> None:
        self.recv_window = recv_window
        self.send_window = send_window
        # DATA consumed since our last WINDOW_UPDATE for this stream.
        self.unacked = 0
        self.remote_closed = False
        self.local_closed = False
        # Section 8.1.1: content-length must equal the sum of DATA payload lengths.
        self.content_length: int | None = None
        self.received = 0


# ------------------------------------------------------------------------------ HPACK (send)

_HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)

# RFC 7541 Appendix A: static table names we send, by index (literal without indexing,
# indexed name: 4-bit prefix 0000).
_STATIC_NAMES = {
    b":status": 8,
    b"content-type": 31,
    b"content-length": 28,
    b"user-agent": 58,
}


def _hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    """RFC 7541 section 5.1 integer with ``first`` holding the bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(data: bytes, huffman: bool) -> bytes:
    """RFC 7541 section 5.2 string literal; Huffman-coded when asked and shorter."""
    if huffman:
        coded = _HUFFMAN.encode(data)
        if len(coded) < len(data):
            return _hpack_int(len(coded), 7, 0x80) + coded
    return _hpack_int(len(data), 7, 0x00) + data


def _encode_field(name: bytes, value: bytes, huffman: bool = False) -> bytes:
    """One field as "literal header field without indexing" (RFC 7541 section 6.2.2): it never
    enters the decoder's dynamic table, so the bytes mean the same in any header block on any
    connection."""
    if name == b":status" and value == b"200":
        return b"\x88"  # indexed field 8 of the static table: ":status: 200"
    index = _STATIC_NAMES.get(name)
    if index is None:  # a literal name
        return b"\x00" + _string(name, huffman) + _string(value, huffman)
    return _hpack_int(index, 4, 0x00) + _string(value, huffman)  # a static-table name


_field_cache: dict[tuple[bytes, bytes], bytes] = {}


def encode_headers(headers: Iterable[tuple[bytes, bytes]], *, huffman: bool = False) -> bytes:
    """HPACK-encode a header list without touching any dynamic table (see ``_encode_field``).

    Fields are memoized process-wide (bounded): response header lists repeat. ``huffman``
    (not memoized: hpack's Huffman coder is slow) is for blocks encoded once at import.
    """
    if huffman:
        return b"".join(_encode_field(name, value, True) for name, value in headers)
    cache = _field_cache
    parts = []
    for field in headers:
        enc = cache.get(field)
        if enc is None:
            enc = _encode_field(*field)
            if len(cache) >= 4096:
                cache.clear()
            cache[field] = enc
        parts.append(enc)
    return b"".join(parts)


# --------------------------------------------------------------------------------- the codec


class H2ServerCodec:
    """The server side of one HTTP/2 connection (see the module docstring)."""

    #: Closed streams remembered to answer their late frames correctly (section 5.1).
    closed_memory = 1024
    #: Request header blocks remembered, decoded and validated, per connection.
    block_cache_size = 64

    def __init__(
        self,
        handler: EngineHandler,
        *,
        max_concurrent_streams: int,
        max_header_list_size: int,
        header_block_limit: int,
        initial_window_size: int,
        max_frame_size: int,
        connection_window_increment: int,
        manual_stream_credit: bool = False,
    ) -> None:
        self._handler = handler
        self._manual_stream_credit = manual_stream_credit
        self._on_request = handler.on_request
        self._on_data = handler.on_data
        self._out = bytearray()
        self._buf = bytearray()
        self._preface_ok = False
        self._settings_seen = False
        self.closed = False
        # Our settings (section 6.5.2). Frames up to our MAX_FRAME_SIZE are accepted from the
        # start: a peer may only exceed 16384 once it has seen our SETTINGS, and accepting
        # more than we must harms nobody.
        self._max_frame_size = max_frame_size
        self._header_block_limit = header_block_limit
        self._local_initial_window = initial_window_size
        # Until the client ACKs our SETTINGS it may still count on the default 65535.
        self._recv_initial = max(initial_window_size, _DEFAULT_WINDOW)
        # The peer's settings, as far as they concern us.
        self.remote_max_frame_size = _MIN_FRAME_SIZE
        self._remote_initial_window = _DEFAULT_WINDOW
        self._hpack_prefix = b""  # a pending dynamic table size update, see on SETTINGS
        self._encoder_table_size = 4096
        # Connection flow control.
        self._conn_send_window = _DEFAULT_WINDOW
        self._conn_recv_target = _DEFAULT_WINDOW + max(connection_window_increment, 0)
        self._conn_recv_window = self._conn_recv_target
        self._conn_unacked = 0
        # Streams.
        self.streams: dict[int, _Stream] = {}
        self.highest_stream_id = 0
        self._closed_streams: dict[int, int] = {}
        self._goaway_last: int | None = None
        # Header block being assembled: (stream id, END_STREAM flag, fragments, size, frames).
        self._block_sid = 0
        self._block_end_stream = False
        self._block_parts: list[bytes] = []
        self._block_size = 0
        self._block_frames = 0
        self._decoder = hpack.Decoder(max_header_list_size=header_block_limit)
        # Decoded and validated blocks by their bytes, valid while the decoder's dynamic table
        # stays as it was (clients resend the same block for every call on a connection).
        self._block_cache: dict[bytes, _Decoded] = {}
        self._table_state: tuple[int, int, object] = self._table_key()

        settings = b"".join(_SETTING.pack(k, v) for k, v in (
            (_MAX_CONCURRENT_STREAMS, max_concurrent_streams),
            (_MAX_HEADER_LIST_SIZE, max_header_list_size),
            (_INITIAL_WINDOW_SIZE, initial_window_size),
            (_MAX_FRAME_SIZE, max_frame_size),
            (_ENABLE_PUSH, 0),
        ))
        self._frame(_SETTINGS, 0, 0, settings)
        if connection_window_increment > 0:
            self._frame(_WINDOW_UPDATE, 0, 0, _U32.pack(connection_window_increment))

    # ------------------------------------------------------------------ output

    def _frame(self, ftype: int, flags: int, sid: int, payload: bytes | memoryview = b"") -> None:
        out = self._out
        out += _pack_header((len(payload) << 8) | ftype, flags, sid)
        out += payload

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def buffered(self) -> int:
        return len(self._out)

    # ------------------------------------------------------------------ sending

    def can_send(self, sid: int) -> bool:
        """True while ``sid`` is open and we have not ended our side (no END_STREAM or reset)."""
        st = self.streams.get(sid)
        return st is not None and not st.local_closed

    def remote_closed(self, sid: int) -> bool:
        st = self.streams.get(sid)
        return st is None or st.remote_closed

    def send_headers(self, sid: int, block: bytes, end_stream: bool = False) -> None:
        """Send an encoded header block (from ``encode_headers``) on an open stream."""
        st = self.streams.get(sid)
        if st is None or st.local_closed or self.closed:
            return
        if self._hpack_prefix:
            block = self._hpack_prefix + block
            self._hpack_prefix = b""
        flags = _END_STREAM if end_stream else 0
        limit = self.remote_max_frame_size
        if len(block) <= limit:
            out = self._out
            out += _pack_header((len(block) << 8) | _HEADERS, flags | _END_HEADERS, sid)
            out += block
        else:
            # Section 4.3: a field block larger than one frame continues in CONTINUATION
            # frames, with nothing in between.
            view = memoryview(block)
            self._frame(_HEADERS, flags, sid, view[:limit])
            pos = limit
            while pos < len(block):
                chunk = view[pos:pos + limit]
                pos += limit
                self._frame(_CONTINUATION, _END_HEADERS if pos >= len(block) else 0, sid, chunk)
        if end_stream:
            self._local_end(sid, st)

    def send_window(self, sid: int) -> int:
        """How many DATA bytes may go out on ``sid`` now."""
        st = self.streams.get(sid)
        if st is None or st.local_closed or self.closed:
            return 0
        return min(st.send_window, self._conn_send_window)

    def send_data(self, sid: int, data: bytes | bytearray | memoryview,
                  end_stream: bool = False) -> int:
        """Send as much of ``data`` as the windows allow, in frames of at most the peer's
        SETTINGS_MAX_FRAME_SIZE; return how many bytes were sent. END_STREAM is set only when
        all of ``data`` went out."""
        st = self.streams.get(sid)
        if st is None or st.local_closed or self.closed:
            return 0
        total = len(data)
        window = min(st.send_window, self._conn_send_window, total)
        if window < 0:
            window = 0
        limit = self.remote_max_frame_size
        out = self._out
        sent = 0
        if window == total and total <= limit:
            # The common case: everything in one frame.
            out += _pack_header((total << 8) | _DATA, _END_STREAM if end_stream else 0, sid)
            out += data
            sent = total
        else:
            view = memoryview(data)
            while sent < window:
                n = min(window - sent, limit)
                last = end_stream and sent + n == total
                out += _pack_header((n << 8) | _DATA, _END_STREAM if last else 0, sid)
                out += view[sent:sent + n]
                sent += n
        st.send_window -= sent
        self._conn_send_window -= sent
        if end_stream and sent == total:
            self._local_end(sid, st)
        return sent

    def _local_end(self, sid: int, st: _Stream) -> None:
        st.local_closed = True
        if st.remote_closed:
            self._forget(sid, _CLOSED_CLEANLY)

    def acknowledge(self, sid: int, length: int) -> None:
        """Give back ``length`` of stream credit the handler consumed (``manual_stream_credit``).

        Nothing for a stream that is gone or whose client side has ended: no more DATA can
        come on it, so its window no longer matters.
        """
        st = self.streams.get(sid)
        if st is None or st.remote_closed or length <= 0 or not self._manual_stream_credit:
            return
        # The caller batches: the window reopens at once.
        self._frame(_WINDOW_UPDATE, 0, sid, _U32.pack(length))
        st.recv_window += length

    def _credit(self, sid: int, st: _Stream, length: int) -> None:
        st.unacked += length
        # One WINDOW_UPDATE per half window, not one per frame.
        if st.unacked >= self._recv_initial >> 1:
            self._frame(_WINDOW_UPDATE, 0, sid, _U32.pack(st.unacked))
            st.recv_window += st.unacked
            st.unacked = 0

    def reset_stream(self, sid: int, error_code: int) -> None:
        """RST_STREAM on an open stream (nothing on one already closed or never opened)."""
        if sid not in self.streams or self.closed:
            return
        self._frame(_RST_STREAM, 0, sid, _U32.pack(error_code))
        self._forget(sid, _RESET_BY_US)

    def _forget(self, sid: int, how: int) -> None:
        del self.streams[sid]
        memory = self._closed_streams
        memory[sid] = how
        if len(memory) > self.closed_memory:
            del memory[next(iter(memory))]

    def ping(self, opaque: bytes) -> None:
        if not self.closed:
            self._frame(_PING, 0, 0, opaque[:8].ljust(8, b"\0"))

    def goaway(self, error_code: int, debug: bytes = b"") -> None:
        """GOAWAY naming the highest stream we processed; the connection goes on (a graceful
        drain) until ``close()``."""
        if self.closed:
            return
        last = self.highest_stream_id
        # Section 6.8: "Endpoints MUST NOT increase the value they send in the last stream
        # identifier, since the peers might already have retried unprocessed requests".
        if self._goaway_last is not None:
            last = min(last, self._goaway_last)
        self._goaway_last = last
        self._frame(_GOAWAY, 0, 0, _TWO_U32.pack(last, error_code) + debug)

    def close(self, error_code: int = ErrorCode.NO_ERROR, debug: bytes = b"") -> None:
        """GOAWAY and ignore all further input."""
        if self.closed:
            return
        self.goaway(error_code, debug)
        self.closed = True
        self.streams.clear()

    def _connection_error(self, error_code: int, message: str) -> H2ConnectionError:
        # Section 5.4.1: "An endpoint that encounters a connection error SHOULD first send a
        # GOAWAY frame ... with the stream identifier of the last stream that it successfully
        # received from its peer."
        self.close(error_code, message.encode("utf-8", "replace"))
        return H2ConnectionError(error_code, message)

    # ------------------------------------------------------------------ receiving

    def receive_data(self, data: bytes) -> None:
        """Parse ``data``; call the handler for each thing it says.

        Raises ``H2ConnectionError`` (GOAWAY queued) when the connection must end. An
        exception raised by the handler propagates unchanged.
        """
        if self.closed:
            return
        buf = self._buf
        buf += data
        if not self._preface_ok:
            # Section 3.4: "the client connection preface starts with a sequence of 24
            # octets"; "Clients and servers MUST treat an invalid connection preface as a
            # connection error of type PROTOCOL_ERROR". Checked as the bytes arrive, so an
            # HTTP/1.1 client or a TLS ClientHello is told at once.
            n = min(len(buf), 24)
            if buf[:n] != PREFACE[:n]:
                raise self._connection_error(ErrorCode.PROTOCOL_ERROR, "invalid HTTP/2 preamble "
                                             "(connection preface)")
            if n < 24:
                return
            del buf[:24]
            self._preface_ok = True
        pos = 0
        end = len(buf)
        max_size = self._max_frame_size
        try:
            while end - pos >= 9:
                lt, flags, sid = _unpack_header(buf, pos)
                length = lt >> 8
                if length > max_size:
                    # Section 4.2: "An endpoint MUST send an error code of FRAME_SIZE_ERROR if
                    # a frame exceeds the size defined in SETTINGS_MAX_FRAME_SIZE".
                    raise self._connection_error(
                        ErrorCode.FRAME_SIZE_ERROR, f"frame of {length} bytes exceeds {max_size}")
                if end - pos - 9 < length:
                    break
                start = pos + 9
                pos = start + length
                # Section 4.1: the reserved bit "MUST be ignored when receiving".
                self._receive_frame(lt & 0xFF, flags, sid & 0x7FFFFFFF, buf, start, length)
                if self.closed:
                    return
        finally:
            if pos:
                del buf[:pos]

    def _receive_frame(self, ftype: int, flags: int, sid: int, buf: bytearray, start: int,
                       length: int) -> None:
        if self._block_parts and ftype != _CONTINUATION:
            # Section 6.10: a header block continues with CONTINUATION "on the same stream";
            # "A receiver MUST treat the receipt of any other type of frame or a frame on a
            # different stream as a connection error of type PROTOCOL_ERROR."
            raise self._connection_error(ErrorCode.PROTOCOL_ERROR, "header block interrupted")
        if not self._settings_seen and ftype != _SETTINGS:
            # Section 3.4: the preface is followed by a SETTINGS frame; "Clients and servers
            # MUST treat an invalid connection preface as a connection error".
            raise self._connection_error(ErrorCode.PROTOCOL_ERROR,
                                         "invalid HTTP/2 preamble: SETTINGS must come first")
        if ftype == _DATA:
            self._receive_data_frame(flags, sid, buf, start, length)
        elif ftype == _HEADERS:
            self._receive_headers(flags, sid, buf, start, length)
        elif ftype == _CONTINUATION:
            self._receive_continuation(flags, sid, buf, start, length)
        elif ftype == _WINDOW_UPDATE:
            self._receive_window_update(sid, buf, start, length)
        elif ftype == _RST_STREAM:
            self._receive_rst(sid, buf, start, length)
        elif ftype == _SETTINGS:
            self._receive_settings(flags, sid, buf, start, length)
        elif ftype == _PING:
            self._receive_ping(flags, sid, buf, start, length)
        elif ftype == _GOAWAY:
            self._receive_goaway(sid, buf, start, length)
        elif ftype == _PRIORITY:
            self._receive_priority(sid, buf, start, length)
        elif ftype == _PUSH_PROMISE:
            # Section 8.4: "A client cannot push. Thus, servers MUST treat the receipt of a
            # PUSH_PROMISE frame as a connection error of type PROTOCOL_ERROR."
            raise self._connection_error(ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        # Section 4.1: "Implementations MUST ignore and discard frames of unknown types."

    def _stream_error(self, sid: int, error_code: int, message: str) -> None:
        """Section 5.4.2: RST_STREAM with the code; the stream is closed, the connection
        goes on. The handler hears of it if the stream was open."""
        was_open = sid in self.streams
        self._frame(_RST_STREAM, 0, sid, _U32.pack(error_code))
        if was_open:
            self._forget(sid, _RESET_BY_US)
            self._handler.on_stream_reset(sid, error_code, False)
        else:
            memory = self._closed_streams
            memory[sid] = _RESET_BY_US
            if len(memory) > self.closed_memory:
                del memory[next(iter(memory))]

    def _idle(self, sid: int) -> bool:
        """True when ``sid`` (not 0) names a stream in the "idle" state (section 5.1)."""
        # Section 5.1.1: "Streams initiated by a client MUST use odd-numbered stream
        # identifiers; those initiated by the server MUST use even-numbered stream
        # identifiers." We never push, so no even stream ever leaves "idle", however high the
        # client's streams go. An odd id is idle until the client uses it or a higher one:
        # "When a stream transitions out of the "idle" state, all streams in the "idle" state
        # that might have been opened by the peer with a lower-valued stream identifier
        # immediately transition to "closed"."
        return sid > self.highest_stream_id or not sid & 1

    def _closed_stream_frame(self, sid: int, what: str) -> None:
        """A DATA or HEADERS frame on a stream that is not open (and not idle)."""
        how = self._closed_streams.get(sid)
        if how == _RESET_BY_US:
            # Section 5.1 "closed": "An endpoint MUST ignore frames that it receives on closed
            # streams after it has sent a RST_STREAM frame."
            return
        if how == _CLOSED_CLEANLY:
            # Section 5.1 "closed": "an endpoint that receives any frames after receiving a
            # frame with the END_STREAM flag set MUST treat that as a connection error
            # (Section 5.4.1) of type STREAM_CLOSED".
            raise self._connection_error(ErrorCode.STREAM_CLOSED, f"{what} on closed stream {sid}")
        # Reset by the peer ("An endpoint that receives any frame other than PRIORITY after
        # receiving a RST_STREAM MUST treat that as a stream error (Section 5.4.2) of type
        # STREAM_CLOSED"), or closed so long ago we forgot how. Answered once: the stream is
        # then one we reset, and later frames are ignored.
        self._stream_error(sid, ErrorCode.STREAM_CLOSED, f"{what} on closed stream {sid}")

    # ------------------------------------------------------------------ DATA

    def _receive_data_frame(self, flags: int, sid: int, buf: bytearray, start: int,
                            length: int) -> None:
        if sid == 0:
            # Section 6.1: "If a DATA frame is received whose Stream Identifier field is 0x00,
            # the recipient MUST respond with a connection error ... PROTOCOL_ERROR."
            raise self._connection_error(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
        # Section 6.9: "The entire DATA frame payload is included in flow control, including
        # the Pad Length and Padding fields if present." Section 6.9.1: "A receiver MUST treat
        # the receipt of a flow-controlled frame ... exceeding the window as a connection
        # error ... FLOW_CONTROL_ERROR" for the connection window. And "A receiver that
        # receives a flow-controlled frame MUST always account for its contribution against
        # the connection flow-control window", whatever the stream's state.
        if length > self._conn_recv_window:
            raise self._connection_error(ErrorCode.FLOW_CONTROL_ERROR,
                                         "DATA beyond the connection flow-control window")
        self._conn_recv_window -= length
        self._conn_unacked += length
        if self._conn_unacked >= self._conn_recv_target >> 1:
            self._frame(_WINDOW_UPDATE, 0, 0, _U32.pack(self._conn_unacked))
            self._conn_recv_window += self._conn_unacked
            self._conn_unacked = 0
        # Section 6.1: "If the length of the padding is the length of the frame payload or
        # greater, the recipient MUST treat this as a connection error ... PROTOCOL_ERROR."
        if flags & _PADDED and (length < 1 or buf[start] >= length):
            raise self._connection_error(ErrorCode.PROTOCOL_ERROR, "DATA padding too long")
        st = self.streams.get(sid)
        if st is None:
            if self._idle(sid):
                # Section 5.1 "idle": "Receiving any frame other than HEADERS or PRIORITY on
                # a stream in this state MUST be treated as a connection error ...
                # PROTOCOL_ERROR."
                raise self._connection_error(ErrorCode.PROTOCOL_ERROR, f"DATA on idle stream {sid}")
            self._closed_stream_frame(sid, "DATA")
            return
        if st.remote_closed:
            # Section 5.1 "half-closed (remote)": "If an endpoint receives additional frames,
            # other than WINDOW_UPDATE, PRIORITY, or RST_STREAM, for a stream that is in this
            # state, it MUST respond with a stream error ... STREAM_CLOSED."
            self._stream_error(sid, ErrorCode.STREAM_CLOSED, "DATA after END_STREAM")
            return
        if length > st.recv_window:
            # Section 6.9: a sender "MUST NOT send a flow-controlled frame with a length that
            # exceeds the space available"; a stream error for the stream's window.
            self._stream_error(sid, ErrorCode.FLOW_CONTROL_ERROR,
                               "DATA beyond the stream flow-control window")
            return
        if flags & _PADDED:
            data = bytes(buf[start + 1:start + length - buf[start]])
        else:
            data = bytes(buf[start:start + length])
        end_stream = bool(flags & _END_STREAM)
        st.recv_window -= length
        limit = st.content_length
        if limit is not None and not _counts_up_to(st, limit, len(data), end_stream):
            # Section 8.1.1: "A request or response is also malformed if the value of a
            # content-length header field does not equal the sum of the DATA frame payload
            # lengths that form the content".
            self._stream_error(sid, ErrorCode.PROTOCOL_ERROR, "content-length mismatch")
            return
        if end_stream:
            st.remote_closed = True
        elif length and not self._manual_stream_credit:
            # Reopen the stream's window once half of it is used (nothing more will come
            # after END_STREAM, so then there is no point).
            self._credit(sid, st, length)
        self._on_data(sid, data, length, end_stream)
        if end_stream and st.local_closed and sid in self.streams:
            self._forget(sid, _CLOSED_CLEANLY)

    # ------------------------------------------------------------------ HEADERS

    def _receive_headers(self, flags: int, sid: int, buf: bytearray, start: int,
                         length: int) -> None:
        if sid == 0:
            # Section 6.2: "If a HEADERS frame is received whose Stream Identifier field is
            # 0x00, the recipient MUST respond with a connection error ... PROTOCOL_ERROR."
            raise self._connection_error(ErrorCode.PROTOCOL_ERROR, "HEADERS on stream 0")
        pos = start
        end = start + length
        if length < (flags & _PADDED and 1) + (flags & _PRIORITY_FLAG and 5):
            # Section 4.2: a frame "too small to contain mandatory frame data" (the Pad
            # Length byte, the five bytes of priority fields) is a FRAME_SIZE_ERROR, whatever
            # its padding says; checked before the padding, as h2 does.
            raise self._connection_error(ErrorCode.FRAME_SIZE_ERROR,
                                         "HEADERS too short for its padding and priority fields")
        if flags & _PADDED:
            pad = buf[pos]
            pos += 1
            if pad >= length:
                # Section 6.2: "If the length of the padding is the length of the frame
                # payload or greater, the recipient MUST treat this as a connection error
                # (Section 5.4.1) of type PROTOCOL_ERROR."
                raise self._connection_error(ErrorCode.PROTOCOL_ERROR,
                                             "HEADERS padding too long")
            end -= pad
        if flags & _PRIORITY_FLAG:
            # Section 5.3.2: "This update to HTTP/2 deprecates the priority signaling defined
            # in RFC 7540"; what it keeps of the fields is their layout (sections 6.2, 6.3).
            # RFC 7540's "A stream cannot depend on itself ... stream error of type
            # PROTOCOL_ERROR" is not among what it keeps, so RFC 9113 requires nothing of the
            # Stream Dependency field: we skip the fields, as for PRIORITY frames.
            pos += 5
            if end < pos:
                # The padding reaches into the priority fields. Section 6.2 measures padding
                # against the payload; RFC 7540 section 6.2 put it for this case: "Padding
                # that exceeds the size remaining for the header block fragment MUST be
                # treated as a PROTOCOL_ERROR."
                raise self._connection_error(ErrorCode.PROTOCOL_ERROR,
                                             "HEADERS padding too long")
        fragment = bytes(buf[pos:end])
        self._block_sid = sid
        self._block_end_stream = bool(flags & _END_STREAM)
        self._block_size = len(fragment)
        self._block_frames = 0
        if flags & _END_HEADERS:
            self._header_block(fragment)
        else:
            self._check_block_size()
            self._block_parts = [fragment]

    def _receive_continuation(self, flags: int, sid: int, buf: bytearray, start: int,
                              length: int) -> None:
        if not self._block_parts or sid != self._block_sid:
            # Section 6.10: "A CONTINUATION frame MUST be preceded by a HEADERS, PUSH_PROMISE
            # or CONTINUATION frame without the END_HEADERS flag set. A recipient that
            # observes violation of this rule MUST respond with a connection error ...
            # PROTOCOL_ERROR."
            raise self._connection_error(ErrorCode.PROTOCOL_ERROR, "unexpected CONTINUATION")
        self._block_frames += 1
        if self._block_frames > MAX_CONTINUATION_FRAMES:
            raise self._connection_error(
                ErrorCode.PROTOCOL_ERROR,
                f"more than {MAX_CONTINUATION_FRAMES} CONTINUATION frames")
        self._block_parts.append(bytes(buf[start:start + length]))
        self._block_size += length
        self._check_block_size()
        if flags & _END_HEADERS:
            parts = self._block_parts
            self._block_parts = []
            self._header_block(b"".join(parts))

    def _check_block_size(self) -> None:
        # Cut a CONTINUATION flood (CVE-2024-27316 style) at the hard limit, before any of it
        # is decoded: a block this large would decode past the limit anyway.
        if self._block_size > self._header_block_limit:
            raise self._connection_error(
                ErrorCode.ENHANCE_YOUR_CALM,
                f"header block larger than {self._header_block_limit} bytes")

    def _table_key(self) -> tuple[int, int, object]:
        # The newest entry's identity (not its value: the same field inserted again is still
        # a change), the entry count and the size limit: any insertion, eviction or size
        # update changes one of them. The tuple keeps the entry alive, so its id is not reused.
        table = self._decoder.header_table
        entries = table.dynamic_entries
        return (len(entries), table.maxsize, entries[0] if entries else None)

    def _table_changed(self, key: tuple[int, int, object]) -> bool:
        old = self._table_state
        return key[0] != old[0] or key[1] != old[1] or key[2] is not old[2]

    def _decode(self, block: bytes) -> _Decoded:
        """Decode and validate a header block; cached while the dynamic table is unchanged."""
        cached = self._block_cache.get(block)
        if cached is not None:
            return cached
        try:
            headers: list[tuple[bytes, bytes]] = self._decoder.decode(block, raw=True)  # type: ignore[assignment]
        except hpack.exceptions.OversizedHeaderListError as exc:
            raise self._connection_error(ErrorCode.ENHANCE_YOUR_CALM,
                                         f"header list too large: {exc}") from None
        except (hpack.exceptions.HPACKError, ValueError, IndexError) as exc:
            # Section 4.3: "A decoding error in a field block MUST be treated as a
            # connection error (Section 5.4.1) of type COMPRESSION_ERROR."
            raise self._connection_error(ErrorCode.COMPRESSION_ERROR,
                                         f"HPACK decoding error: {exc}") from None
        problem = _validate_request(headers)
        content_length, length_problem = _content_length(headers)
        result = (headers, problem or length_problem, content_length)
        key = self._table_key()
        if self._table_changed(key):
            # The block changed the dynamic table: cached decodings may now be wrong, and
            # this block itself would not decode the same way twice.
            self._table_state = key
            self._block_cache.clear()
        else:
            if len(self._block_cache) >= self.block_cache_size:
                self._block_cache.clear()
            self._block_cache[block] = result
        return result

    def _header_block(self, block: bytes) -> None:
        sid = self._block_sid
        end_stream = self._block_end_stream
        # Every block is decoded, whatever becomes of its stream: the HPACK context is shared
        # by the whole connection (section 4.3).
        headers, problem, content_length = self._decode(block)
        st = self.streams.get(sid)
        if st is not None:
            self._trailers(sid, st, headers, end_stream)
            return
        if not sid & 1:
            # Section 5.1 "idle": a HEADERS frame on a stream the server would initiate "MUST
            # also be treated as a connection error (Section 5.4.1) of type PROTOCOL_ERROR";
            # section 5.1.1: "Streams initiated by a client MUST use odd-numbered stream
            # identifiers".
            raise self._connection_error(ErrorCode.PROTOCOL_ERROR,
                                         f"even stream id {sid} from a client")
        if sid <= self.highest_stream_id:
            how = self._closed_streams.get(sid)
            if how is None:
                # Section 5.1.1: a new stream's identifier "MUST be numerically greater than
                # all streams that the initiating endpoint has opened or reserved"; "An
                # endpoint that receives an unexpected stream identifier MUST respond with a
                # connection error ... PROTOCOL_ERROR."
                raise self._connection_error(
                    ErrorCode.PROTOCOL_ERROR,
                    f"stream id {sid} is not above {self.highest_stream_id}")
            self._closed_stream_frame(sid, "HEADERS")
            return
        self.highest_stream_id = sid
        st = _Stream(self._recv_initial, self._remote_initial_window)
        self.streams[sid] = st
        if content_length is not None:
            st.content_length = content_length
            if end_stream and content_length and problem is None:
                problem = "content-length mismatch"
        if problem is not None:
            # Section 8.1.1: "Malformed requests or responses that are detected MUST be
            # treated as a stream error (Section 5.4.2) of type PROTOCOL_ERROR."
            self._frame(_RST_STREAM, 0, sid, _U32.pack(ErrorCode.PROTOCOL_ERROR))
            self._forget(sid, _RESET_BY_US)
            self._handler.on_malformed(sid, problem)
            return
        if end_stream:
            st.remote_closed = True
        self._on_request(sid, headers, end_stream)

    def _trailers(self, sid: int, st: _Stream, headers: list[tuple[bytes, bytes]],
                  end_stream: bool) -> None:
        if st.remote_closed:
            # Section 5.1 "half-closed (remote)": frames other than WINDOW_UPDATE, PRIORITY
            # or RST_STREAM are a stream error STREAM_CLOSED.
            self._stream_error(sid, ErrorCode.STREAM_CLOSED, "HEADERS after END_STREAM")
            return
        if not end_stream:
            # Section 8.1: "An endpoint that receives a HEADERS frame without the END_STREAM
            # flag set after receiving the HEADERS frame that opens a request ... MUST treat
            # the corresponding request or response as malformed".
            self._stream_error(sid, ErrorCode.PROTOCOL_ERROR, "second HEADERS without END_STREAM")
            return
        problem = _validate_fields(headers, trailers=True)
        if problem is None and st.content_length is not None and (
                st.received != st.content_length):
            problem = "content-length mismatch"
        if problem is not None:
            self._stream_error(sid, ErrorCode.PROTOCOL_ERROR, problem)
            return
        st.remote_closed = True
        self._handler.on_trailers(sid)
        if st.local_closed and sid in self.streams:
            self._forget(sid, _CLOSED_CLEANLY)

    # ------------------------------------------------------------------ control frames

    def _receive_window_update(self, sid: int, buf: bytearray, start: int, length: int) -> None:
        if length != 4:
            # Section 6.9: "A WINDOW_UPDATE frame with a length other than 4 octets MUST be
            # treated as a connection error ... FRAME_SIZE_ERROR."
            raise self._connection_error(ErrorCode.FRAME_SIZE_ERROR,
                                         "WINDOW_UPDATE length is not 4")
        increment = _U32.unpack_from(buf, start)[0] & 0x7FFFFFFF
        if sid == 0:
            if increment == 0:
                # Section 6.9: "A receiver MUST treat the receipt of a WINDOW_UPDATE frame with
                # a flow-control window increment of 0 as a stream error ... errors on the
                # connection flow-control window MUST be treated as a connection error".
                raise self._connection_error(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            window = self._conn_send_window + increment
            if window > _MAX_WINDOW:
                # Section 6.9.1: "If a sender receives a WINDOW_UPDATE that causes a
                # flow-control window to exceed this maximum, it MUST terminate either the
                # stream or the connection, as appropriate ... FLOW_CONTROL_ERROR".
                raise self._connection_error(ErrorCode.FLOW_CONTROL_ERROR,
                                             "connection window above 2^31-1")
            self._conn_send_window = window
            self._handler.on_window_update(0)
            return
        st = self.streams.get(sid)
        if st is None:
            if self._idle(sid):
                # Section 5.1 "idle": only HEADERS or PRIORITY; else PROTOCOL_ERROR.
                raise self._connection_error(ErrorCode.PROTOCOL_ERROR,
                                             f"WINDOW_UPDATE on idle stream {sid}")
            if self._closed_streams.get(sid) == _RESET_BY_PEER:
                # Section 5.1: any frame but PRIORITY after the peer's RST_STREAM is a
                # stream error STREAM_CLOSED (answered once, see _closed_stream_frame).
                self._stream_error(sid, ErrorCode.STREAM_CLOSED, "WINDOW_UPDATE on reset stream")
            # Section 5.1 "closed": "WINDOW_UPDATE or RST_STREAM frames can be received in
            # this state for a short period after a DATA or HEADERS frame containing an
            # END_STREAM flag is sent" -- ignored.
            return
        if increment == 0:
            self._stream_error(sid, ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            return
        window = st.send_window + increment
        if window > _MAX_WINDOW:
            self._stream_error(sid, ErrorCode.FLOW_CONTROL_ERROR, "stream window above 2^31-1")
            return
        st.send_window = window
        self._handler.on_window_update(sid)

    def _receive_rst(self, sid: int, buf: bytearray, start: int, length: int) -> None:
        if sid == 0:
            # Section 6.4: "If a RST_STREAM frame is received with a stream identifier of
            # 0x00, the recipient MUST treat this as a connection error ... PROTOCOL_ERROR."
            raise self._connection_error(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if length != 4:
            # Section 6.4: "A RST_STREAM frame with a length other than 4 octets MUST be
            # treated as a connection error ... FRAME_SIZE_ERROR."
            raise self._connection_error(ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM length is not 4")
        if sid not in self.streams:
            if self._idle(sid):
                # Section 6.4: "If a RST_STREAM frame identifying an idle stream is received,
                # the recipient MUST treat this as a connection error ... PROTOCOL_ERROR."
                raise self._connection_error(ErrorCode.PROTOCOL_ERROR,
                                             f"RST_STREAM on idle stream {sid}")
            # Closed already: never an answer to a RST_STREAM (section 5.4.2: "an endpoint
            # MUST NOT send a RST_STREAM in response to a RST_STREAM frame"). The handler still
            # hears of it: a reset that crosses our own refusal of the stream is the classic
            # rapid-reset pattern and must count against the peer.
        else:
            self._forget(sid, _RESET_BY_PEER)
        self._handler.on_stream_reset(sid, _U32.unpack_from(buf, start)[0], True)

    def _receive_settings(self, flags: int, sid: int, buf: bytearray, start: int,
                          length: int) -> None:
        if sid != 0:
            # Section 6.5: "If an endpoint receives a SETTINGS frame whose Stream Identifier
            # field is anything other than 0x00, the endpoint MUST respond with a connection
            # error ... PROTOCOL_ERROR."
            raise self._connection_error(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & _ACK:
            if length:
                # Section 6.5: "Receipt of a SETTINGS frame with the ACK flag set and a length
                # field value other than 0 MUST be treated as a connection error ...
                # FRAME_SIZE_ERROR."
                raise self._connection_error(ErrorCode.FRAME_SIZE_ERROR,
                                             "SETTINGS ACK with a payload")
            if not self._settings_seen:
                raise self._connection_error(ErrorCode.PROTOCOL_ERROR, "invalid HTTP/2 preamble: "
                                             "SETTINGS ACK before SETTINGS")
            # Our (only) SETTINGS now apply: the stream window is exactly what we advertised.
            self._recv_initial = self._local_initial_window
            return
        if length % 6:
            # Section 6.5: "A SETTINGS frame with a length other than a multiple of 6 octets
            # MUST be treated as a connection error ... FRAME_SIZE_ERROR."
            raise self._connection_error(ErrorCode.FRAME_SIZE_ERROR,
                                         "SETTINGS length not a multiple of 6")
        window_changed = False
        for pos in range(start, start + length, 6):
            ident, value = _SETTING.unpack_from(buf, pos)
            if ident == _INITIAL_WINDOW_SIZE:
                window_changed = self._initial_window_setting(value) or window_changed
            elif ident == _MAX_FRAME_SIZE:
                if not _MIN_FRAME_SIZE <= value <= _MAX_FRAME_SIZE_LIMIT:
                    # Section 6.5.2: "Values outside this range MUST be treated as a
                    # connection error ... PROTOCOL_ERROR."
                    raise self._connection_error(ErrorCode.PROTOCOL_ERROR,
                                                 f"SETTINGS_MAX_FRAME_SIZE {value} out of range")
                self.remote_max_frame_size = value
            elif ident == _ENABLE_PUSH:
                if value > 1:
                    # Section 6.5.2: "Any value other than 0 or 1 MUST be treated as a
                    # connection error ... PROTOCOL_ERROR."
                    raise self._connection_error(ErrorCode.PROTOCOL_ERROR,
                                                 f"SETTINGS_ENABLE_PUSH {value}")
            elif ident == _HEADER_TABLE_SIZE and value < self._encoder_table_size:
                # We never insert into the peer's table, but RFC 7541 section 4.2 wants a
                # smaller maximum acknowledged by a dynamic table size update at the start of
                # the next header block (nghttp2 insists on it). Zero fits any limit.
                self._encoder_table_size = 0
                self._hpack_prefix = b"\x20"
            # MAX_CONCURRENT_STREAMS limits streams we would open (none); MAX_HEADER_LIST_SIZE
            # is advisory; section 6.5.2: "An endpoint that receives a SETTINGS frame with any
            # unknown or unsupported identifier MUST ignore that setting."
        # Section 6.5.3: "Upon receiving a SETTINGS frame with the ACK flag unset, the
        # recipient MUST apply the updated settings as soon as possible upon receipt" and
        # answer with an ACK.
        self._frame(_SETTINGS, _ACK, 0)
        self._settings_seen = True
        self._handler.on_settings(window_changed)

    def _initial_window_setting(self, value: int) -> bool:
        """Apply the peer's SETTINGS_INITIAL_WINDOW_SIZE; True if it changed."""
        if value > _MAX_WINDOW:
            # Section 6.5.2: "Values above the maximum flow-control window size of 2^31-1
            # MUST be treated as a connection error ... FLOW_CONTROL_ERROR."
            raise self._connection_error(ErrorCode.FLOW_CONTROL_ERROR,
                                         "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1")
        delta = value - self._remote_initial_window
        if not delta:
            return False
        # Section 6.9.2: the change applies to every open stream's window; "An endpoint MUST
        # treat a change to SETTINGS_INITIAL_WINDOW_SIZE that causes any flow-control window
        # to exceed the maximum size as a connection error ... FLOW_CONTROL_ERROR."
        for st in self.streams.values():
            st.send_window += delta
            if st.send_window > _MAX_WINDOW:
                raise self._connection_error(ErrorCode.FLOW_CONTROL_ERROR,
                                             "stream window above 2^31-1")
        self._remote_initial_window = value
        return True

    def _receive_ping(self, flags: int, sid: int, buf: bytearray, start: int,
                      length: int) -> None:
        if sid != 0:
            # Section 6.7: "If a PING frame is received with a Stream Identifier field value
            # other than 0x00, the recipient MUST respond with a connection error ...
            # PROTOCOL_ERROR."
            raise self._connection_error(ErrorCode.PROTOCOL_ERROR, "PING on a stream")
        if length != 8:
            # Section 6.7: "Receipt of a PING frame with a length field value other than 8
            # MUST be treated as a connection error ... FRAME_SIZE_ERROR."
            raise self._connection_error(ErrorCode.FRAME_SIZE_ERROR, "PING length is not 8")
        if flags & _ACK:
            return  # the answer to our keepalive
        # Section 6.7: "Receivers of a PING frame that does not include an ACK flag MUST send
        # a PING frame with the ACK flag set in response, with an identical frame payload."
        self._frame(_PING, _ACK, 0, bytes(buf[start:start + 8]))
        self._handler.on_ping()

    def _receive_goaway(self, sid: int, buf: bytearray, start: int, length: int) -> None:
        if sid != 0:
            # Section 6.8: "An endpoint MUST treat a GOAWAY frame with a stream identifier
            # other than 0x00 as a connection error ... PROTOCOL_ERROR."
            raise self._connection_error(ErrorCode.PROTOCOL_ERROR, "GOAWAY on a stream")
        if length < 8:
            raise self._connection_error(ErrorCode.FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
        last, code = _TWO_U32.unpack_from(buf, start)
        self._handler.on_goaway(code, last & 0x7FFFFFFF, bytes(buf[start + 8:start + length]))

    def _receive_priority(self, sid: int, buf: bytearray, start: int, length: int) -> None:
        if sid == 0:
            # Section 6.3: "If a PRIORITY frame is received with a stream identifier of 0x00,
            # the recipient MUST respond with a connection error ... PROTOCOL_ERROR."
            raise self._connection_error(ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0")
        if length != 5:
            # Section 6.3: "A PRIORITY frame with a length other than 5 octets MUST be treated
            # as a stream error ... FRAME_SIZE_ERROR." The stream may be idle, where no
            # RST_STREAM may be sent, so the whole connection is ended (section 5.4.2 allows).
            raise self._connection_error(ErrorCode.FRAME_SIZE_ERROR, "PRIORITY length is not 5")
        # Section 6.3: "The PRIORITY frame (type=0x02) is deprecated" and "can be sent in any
        # stream state, including idle or closed streams"; only stream 0 and a length other
        # than 5 are errors. RFC 7540's "A stream cannot depend on itself" (its section
        # 5.3.1) is not part of RFC 9113, whose section 5.3.1 only recounts why that scheme
        # "was not successful": a self-dependency is ignored like any priority signal, as in
        # HEADERS. We serve streams in arrival order.


def _counts_up_to(st: _Stream, limit: int, n: int, end_stream: bool) -> bool:
    """Count ``n`` more DATA bytes on ``st``; False once they pass ``limit`` (its
    content-length) or the stream ends short of it."""
    st.received += n
    return st.received <= limit and (not end_stream or st.received == limit)


def _content_length(headers: list[tuple[bytes, bytes]]) -> tuple[int | None, str | None]:
    """The request's content-length (None without one), and why it is malformed if it is."""
    # Section 8.1.1: a message is malformed "if the value of a content-length header field
    # does not equal the sum of the DATA frame payload lengths". That holds for *every*
    # content-length field, so several of them must all carry the same value (RFC 9110
    # section 8.6 also lets a recipient "reject the message as invalid" when they differ).
    content_length = None
    for name, value in headers:
        if name != b"content-length":
            continue
        # RFC 9110 section 8.6: "Content-Length = 1*DIGIT"; a list such as "3, 3" is refused.
        if not (value.isdigit() and value.isascii()):
            return None, "invalid content-length"
        n = int(value)
        if content_length is not None and n != content_length:
            return None, "conflicting content-length values"
        content_length = n
    return content_length, None


def _validate_fields(headers: list[tuple[bytes, bytes]], trailers: bool) -> str | None:
    """Section 8.2 checks of every field; None when fine, else why the message is malformed."""
    for name, value in headers:
        if name[:1] == b":":
            if trailers:
                # Section 8.1: "Trailers MUST NOT include pseudo-header fields".
                return "pseudo-header field in trailers"
            continue
        if _VALID_NAME(name) is None:
            return f"invalid field name {name[:64]!r}"
        if value and _BAD_VALUE(value) is not None:
            return f"invalid value for field {name[:64]!r}"
        if name in _CONNECTION_SPECIFIC:
            return f"connection-specific field {name.decode('ascii')!r}"
        if name == b"te" and value != b"trailers":
            # Section 8.2.2: TE "MUST NOT contain any value other than 'trailers'".
            return "te header other than 'trailers'"
    return None


def _validate_request(headers: list[tuple[bytes, bytes]]) -> str | None:
    """Sections 8.2 and 8.3 for a request's header section."""
    seen: set[bytes] = set()
    regular = False
    method = None
    for name, value in headers:
        if name[:1] == b":":
            if regular:
                # Section 8.3: "All pseudo-header fields MUST appear in a field block before
                # all regular field lines."
                return "pseudo-header field after a regular field"
            if name not in _REQUEST_PSEUDO:
                # Section 8.3: "Endpoints MUST treat a request or response that contains
                # undefined or invalid pseudo-header fields as malformed".
                return f"unknown pseudo-header field {name[:64]!r}"
            if name in seen:
                # Section 8.3: "The same pseudo-header field name MUST NOT appear more than
                # once in a field block."
                return f"repeated pseudo-header field {name.decode()!r}"
            seen.add(name)
            if _BAD_VALUE(value) is not None:
                return f"invalid value for {name.decode()!r}"
            if name == b":method":
                method = value
            elif name == b":path" and not value:
                # Section 8.3.1: ":path ... MUST NOT be empty for 'http' or 'https' URIs".
                return "empty :path"
        else:
            regular = True
    if method == b"CONNECT":
        # Section 8.5: a CONNECT request has ":method" and ":authority" only.
        if b":scheme" in seen or b":path" in seen or b":authority" not in seen:
            return "malformed CONNECT request"
    elif len(seen & {b":method", b":scheme", b":path"}) != 3:
        # Section 8.3.1: "All HTTP/2 requests MUST include exactly one valid value for the
        # ':method', ':scheme', and ':path' pseudo-header fields, unless they are CONNECT
        # requests".
        return "missing :method, :scheme or :path"
    return _validate_fields(headers, trailers=False)
