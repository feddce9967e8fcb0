"""The h2 engine (the default): ``h2.connection.H2Connection`` behind the engine interface.

Theory of operation
-------------------
h2 parses, validates (``validate_inbound_headers=True``), keeps stream states and flow control,
and encodes our headers with HPACK. It returns events only after a whole ``receive_data()`` call,
and a few of its choices do not hold our protections, so before any byte reaches h2 this adapter
reads the 9-byte header of every frame (nothing else of the payload, except of the two frame
types it handles itself) and enforces:

* SETTINGS first after the preface (RFC 9113 section 3.4).
* The header-block cap *before decoding*: a block (HEADERS plus CONTINUATION) larger than
  ``header_block_limit`` bytes ends the connection with ENHANCE_YOUR_CALM, and more than
  ``MAX_CONTINUATION_FRAMES`` CONTINUATION frames with PROTOCOL_ERROR; h2 alone would buffer up to
  64 CONTINUATION frames of any size before looking at them. h2's HPACK decoder is held at the
  same limit, so a compressed header list that decodes larger (an HPACK bomb) is
  ENHANCE_YOUR_CALM too; HPACK errors are COMPRESSION_ERROR (section 4.3; h2 says PROTOCOL_ERROR).
* RST_STREAM on an idle stream is a connection error PROTOCOL_ERROR (section 6.4; h2 ignores it).
  Every RST_STREAM from the client is reported to the handler, also on streams already closed
  (h2 reports none of those), so that rapid reset is counted however the resets cross ours.
* GOAWAY from the client is reported and not given to h2, which would stop sending anything,
  where RFC 9113 section 6.8 lets the streams at or below its last stream id finish.
* No amplification: h2 answers every frame on a reset stream with RST_STREAM(STREAM_CLOSED). Of
  those answers (only RST_STREAM frames h2 wrote while parsing are looked at) one is kept per
  stream the client reset and none for streams we reset, as section 5.1 asks and the native
  codec does.
* h2 would end the connection when a stream beyond SETTINGS_MAX_CONCURRENT_STREAMS opens; the
  gRPC layer refuses such a stream with REFUSED_STREAM instead (a stream error), so h2's own
  check is set above any count a read can reach while the setting is still advertised.

The GOAWAY frames are written here, not by h2: after sending GOAWAY h2 refuses to send anything
more, and a graceful drain keeps answering the streams in flight.

Receive flow control is split as grpc-go splits it: the connection window reopens here as DATA
arrives (half a window at a time), while a stream's window reopens only as the gRPC layer gives
its credit back (``acknowledge_data``), so a handler that does not read shuts its own stream and
never the connection. h2's own automatic acknowledgement (``acknowledge_received_data``) is not
used: it would tie the two windows together.

Frames reach h2 whole: bytes of an incomplete frame wait here for the rest. Events are handed to
the handler right after the h2 call that produced them, in order, so the handler sees the
connection as those frames left it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import Any, cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack.exceptions
from h2.stream import StreamState

from ..errors import RemoteProtocolError
from ..status import ErrorCode
from .interface import EngineHandler, EngineLimits, HeaderList

__all__ = ["MAX_CONTINUATION_FRAMES", "H2Engine"]

#: A header block may be split over at most this many CONTINUATION frames (as the native codec).
MAX_CONTINUATION_FRAMES = 64

_PREFACE_LENGTH = 24
_FRAME_HEADER = struct.Struct(">IBI")
_unpack_header = _FRAME_HEADER.unpack_from
_GOAWAY_BODY = struct.Struct(">II")
_U32 = struct.Struct(">I")

_DATA = 0x0
_HEADERS = 0x1
_PRIORITY_FRAME = 0x2
_RST_STREAM = 0x3
_SETTINGS = 0x4
_PING = 0x6
_GOAWAY = 0x7
_WINDOW_UPDATE = 0x8
_CONTINUATION = 0x9
#: Frame types whose header this adapter checks (DATA and unknown types go straight to h2).
_CHECKED = frozenset({_HEADERS, _PRIORITY_FRAME, _RST_STREAM, _SETTINGS, _PING, _GOAWAY,
                      _WINDOW_UPDATE, _CONTINUATION, 0x5, 0xA})
# RFC 9113 section 6: control frames of a fixed length; any other length is FRAME_SIZE_ERROR
# (hyperframe rejects them too, but h2 then says PROTOCOL_ERROR).
_FIXED_LENGTH = {_PRIORITY_FRAME: 5, _RST_STREAM: 4, _PING: 8, _WINDOW_UPDATE: 4}
_PUSH_PROMISE = 0x5
_SETTING = struct.Struct(">HI")
_SET_ENABLE_PUSH = 0x2
_SET_INITIAL_WINDOW_SIZE = 0x4
_SET_MAX_FRAME_SIZE = 0x5
_CONNECTION_ONLY = frozenset({_SETTINGS, _PING, _GOAWAY})
_STREAM_ONLY = frozenset({_DATA, _HEADERS, _PRIORITY_FRAME, _RST_STREAM})
# RFC 7838 section 4: "An ALTSVC frame from a client to a server MUST be ignored"; h2 would
# parse it (and end the connection over a malformed one), so it never reaches h2.
_ALTSVC = 0xA
_ACK = 0x1
_END_HEADERS = 0x4
_PADDED = 0x8
_PRIORITY = 0x20

# Compared by identity: an enum's hash is a Python-level call, and these run per response.
_OPEN = StreamState.OPEN
_HALF_CLOSED_REMOTE = StreamState.HALF_CLOSED_REMOTE
_STREAM_CLOSED = StreamState.CLOSED
#: Reset streams remembered to answer their late frames (as the native codec's memory).
_RESET_MEMORY = 1024
#: h2's own concurrent-stream check, kept out of the way (see the module docstring).
_UNLIMITED = 2**32 + 1


def _check_stream_and_length(ftype: int, sid: int, length: int) -> None:
    """The stream-id and fixed-length rules, in the order the native codec applies them."""
    if ftype in _CONNECTION_ONLY:
        if sid:
            # Sections 6.5, 6.7 and 6.8: SETTINGS, PING and GOAWAY "with a stream identifier
            # other than 0x00" are a connection error PROTOCOL_ERROR.
            raise _Violation(ErrorCode.PROTOCOL_ERROR, f"frame of type {ftype} on a stream")
    elif ftype in _STREAM_ONLY and not sid:
        # Sections 6.1 to 6.4: DATA, HEADERS, PRIORITY and RST_STREAM on stream 0 are a
        # connection error PROTOCOL_ERROR.
        raise _Violation(ErrorCode.PROTOCOL_ERROR, f"frame of type {ftype} on stream 0")
    fixed = _FIXED_LENGTH.get(ftype)
    if fixed is not None and length != fixed:
        # Sections 6.3, 6.4, 6.7 and 6.9: "... MUST be treated as a connection error ...
        # FRAME_SIZE_ERROR" (for PRIORITY a stream error, but the stream may be idle).
        raise _Violation(ErrorCode.FRAME_SIZE_ERROR, f"frame of type {ftype} with length "
                         f"{length} (must be {fixed})")


def _check_settings(flags: int, view: bytes, pos: int, length: int) -> None:
    if flags & _ACK and length:
        # Section 6.5: "Receipt of a SETTINGS frame with the ACK flag set and a length field
        # value other than 0 MUST be treated as a connection error ... FRAME_SIZE_ERROR."
        raise _Violation(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
    if length % 6:
        raise _Violation(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6")
    # Section 6.5.2, for every entry: h2 sees only the last value of a repeated setting.
    for at in range(pos + 9, pos + 9 + length, 6):
        ident, value = _SETTING.unpack_from(view, at)
        if ident == _SET_INITIAL_WINDOW_SIZE and value > 2**31 - 1:
            raise _Violation(ErrorCode.FLOW_CONTROL_ERROR,
                             "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1")
        if ident == _SET_MAX_FRAME_SIZE and not 16384 <= value <= 2**24 - 1:
            raise _Violation(ErrorCode.PROTOCOL_ERROR,
                             f"SETTINGS_MAX_FRAME_SIZE {value} out of range")
        if ident == _SET_ENABLE_PUSH and value > 1:
            raise _Violation(ErrorCode.PROTOCOL_ERROR, f"SETTINGS_ENABLE_PUSH {value}")


def _zero_increment(sid: int, view: bytes, pos: int) -> bool:
    """True for a WINDOW_UPDATE of 0 on a stream (a stream error, which h2 cannot make)."""
    if _U32.unpack_from(view, pos + 9)[0] & 0x7FFFFFFF:
        return False
    if sid == 0:
        # Section 6.9: an increment of 0 on the connection is a connection error.
        raise _Violation(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
    return True


class _AdvertisedSettings(h2.settings.Settings):
    """Our SETTINGS as h2 sends them: only the ones we set (the same frame as the native
    engine's), and without h2 enforcing MAX_CONCURRENT_STREAMS itself."""

    def __init__(self, values: dict[h2.settings.SettingCodes, int]) -> None:
        super().__init__(client=False, initial_values=values)
        self._advertised = tuple(values)

    def __iter__(self) -> Iterator[h2.settings.SettingCodes | int]:
        # What initiate_connection() puts in the SETTINGS frame; the rest are RFC defaults.
        return iter(self._advertised)

    def __len__(self) -> int:
        return len(self._advertised)

    @property
    def max_concurrent_streams(self) -> int:
        return _UNLIMITED

    @max_concurrent_streams.setter
    def max_concurrent_streams(self, value: int) -> None:
        self[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = value


class _Violation(Exception):
    """A connection error found in a frame header, before h2 saw the frame."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _remember(memory: dict[int, bool], sid: int, value: bool) -> None:
    memory[sid] = value
    if len(memory) > _RESET_MEMORY:
        del memory[next(iter(memory))]


class H2Engine:
    """``Engine`` over ``h2.connection.H2Connection`` (see the module docstring)."""

    name = "h2"

    def __init__(self, handler: EngineHandler, limits: EngineLimits) -> None:
        self._handler = handler
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_inbound_headers=True,
            normalize_inbound_headers=False,
            # What we send is built from validated metadata; h2's checks would only cost time.
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            split_outbound_cookies=False,
        )
        conn = self._conn = h2.connection.H2Connection(config=config)
        codes = h2.settings.SettingCodes
        conn.local_settings = _AdvertisedSettings({
            codes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
            codes.MAX_HEADER_LIST_SIZE: limits.max_header_list_size,
            codes.INITIAL_WINDOW_SIZE: limits.initial_window_size,
            codes.MAX_FRAME_SIZE: limits.max_frame_size,
            codes.ENABLE_PUSH: 0,
        })
        conn.max_inbound_frame_size = limits.max_frame_size
        # We advertise the soft limit but decode up to the hard one, so that a request between
        # the two is refused as a stream (with a gRPC status), not as a connection. The values
        # above are in force at once, so no SETTINGS ACK lowers this again.
        conn.decoder.max_header_list_size = limits.header_block_limit
        conn.initiate_connection()
        if limits.connection_window_increment > 0:
            conn.increment_flow_control_window(limits.connection_window_increment)
        # Connection credit consumed since our last connection WINDOW_UPDATE, and the size
        # at which to send one (half the connection window).
        self._conn_unacked = 0
        self._conn_credit_batch = (65535 + max(limits.connection_window_increment, 0)) // 2
        self._block_limit = limits.header_block_limit
        self._max_frame_size = limits.max_frame_size
        self._out = bytearray()
        self._buf = b""
        self._preface_left = _PREFACE_LENGTH
        self._settings_seen = False
        self._closed = False
        self._last_goaway: int | None = None
        # The header block in progress: its stream (0: none), bytes so far, CONTINUATIONs.
        self._block_sid = 0
        self._block_size = 0
        self._block_frames = 0
        # The highest client stream id seen in a HEADERS frame (before h2 processed it).
        self._seen_highest = 0
        # Streams reset by us (or by the peer and answered once with STREAM_CLOSED since),
        # and streams the peer reset, not yet answered.
        self._reset_by_us: dict[int, bool] = {}
        self._reset_by_peer: dict[int, bool] = {}
        # Streams opened by a request (remembered as many as the resets).
        self._opened: dict[int, bool] = {}
        # Client RST_STREAM frames of the segment being processed, not yet reported; the
        # streams reset in the read being scanned; WINDOW_UPDATEs that may follow a reset.
        self._resets_seen: list[tuple[int, int]] = []
        self._read_resets: set[int] = set()
        self._late_window_updates: list[int] = []
        on: dict[type[Any], Callable[[Any], None]] = {
            h2.events.RequestReceived: self._on_request,
            h2.events.DataReceived: self._on_data,
            h2.events.TrailersReceived: self._on_trailers,
            h2.events.StreamEnded: self._on_stream_ended,
            h2.events.StreamReset: self._on_stream_reset,
            h2.events.WindowUpdated: self._on_window_updated,
            h2.events.RemoteSettingsChanged: self._on_settings,
            h2.events.PingReceived: self._on_ping,
            h2.events.PingAckReceived: self._on_ping_ack,
        }
        self._dispatch_table = on
        self._ended: object = None

    # ------------------------------------------------------------------ inspection

    @property
    def highest_stream_id(self) -> int:
        return self._conn.highest_inbound_stream_id

    @property
    def closed(self) -> bool:
        return self._closed

    def data_to_send(self) -> bytes:
        pending = self._conn.data_to_send()
        out = self._out
        if not out:
            return pending
        out += pending
        data = bytes(out)
        out.clear()
        return data

    def buffered(self) -> int:
        self._out += self._conn.data_to_send()
        return len(self._out)

    def can_send(self, stream_id: int) -> bool:
        st = self._conn.streams.get(stream_id)
        if st is None or self._closed:
            return False
        state = st.state_machine.state
        return state is _OPEN or state is _HALF_CLOSED_REMOTE

    def remote_closed(self, stream_id: int) -> bool:
        st = self._conn.streams.get(stream_id)
        if st is None:
            return True
        state = st.state_machine.state
        return state is _HALF_CLOSED_REMOTE or state is _STREAM_CLOSED

    # ------------------------------------------------------------------ commands

    def send_headers(self, stream_id: int, headers: HeaderList, end_stream: bool = False) -> None:
        if self.can_send(stream_id):
            self._conn.send_headers(stream_id, headers, end_stream=end_stream)

    def send_data(self, stream_id: int, data: bytes | bytearray | memoryview,
                  end_stream: bool = False) -> int:
        if not self.can_send(stream_id):
            return 0
        conn = self._conn
        total = len(data)
        limit = conn.max_outbound_frame_size
        if total <= limit:
            # The common case, one frame within the windows: h2 checks them itself. It
            # serializes the frame at once, so a bytearray the caller reuses is safe.
            try:
                conn.send_data(stream_id, cast(bytes, data), end_stream=end_stream)
            except h2.exceptions.FlowControlError:
                pass
            else:
                return total
        window = min(conn.local_flow_control_window(stream_id), total)
        if window <= 0 and total:
            return 0
        view = memoryview(data)
        sent = 0
        while sent < window:
            n = min(window - sent, limit)
            last = end_stream and sent + n == total
            conn.send_data(stream_id, bytes(view[sent:sent + n]), end_stream=last)
            sent += n
        return sent

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        st = self._conn.streams.get(stream_id)
        if st is None or self._closed or st.closed:
            return
        self._conn.reset_stream(stream_id, error_code)
        _remember(self._reset_by_us, stream_id, True)

    def acknowledge_data(self, stream_id: int, flow_length: int) -> None:
        # The stream's window only (the connection's reopened on arrival); not once the client
        # has ended its side: no more DATA can come on it.
        if flow_length <= 0 or self._closed or self.remote_closed(stream_id):
            return
        try:
            self._conn.increment_flow_control_window(flow_length, stream_id=stream_id)
        except (h2.exceptions.ProtocolError, ValueError):
            pass  # the stream closed on h2's side, or its window would overflow 2^31-1

    def ping(self, opaque: bytes) -> None:
        if not self._closed:
            self._conn.ping(opaque[:8].ljust(8, b"\0"))

    def goaway(self, error_code: int, debug: bytes = b"", last_stream_id: int | None = None,
               ) -> None:
        if self._closed:
            return
        last = self._conn.highest_inbound_stream_id if last_stream_id is None else last_stream_id
        # RFC 9113 section 6.8: "Endpoints MUST NOT increase the value they send in the last
        # stream identifier, since the peers might already have retried unprocessed requests".
        if self._last_goaway is not None:
            last = min(last, self._last_goaway)
        self._last_goaway = last
        out = self._out
        out += self._conn.data_to_send()
        body = _GOAWAY_BODY.pack(last, error_code) + debug
        out += _FRAME_HEADER.pack((len(body) << 8) | _GOAWAY, 0, 0)
        out += body

    def close(self, error_code: int, debug: bytes = b"") -> None:
        if self._closed:
            return
        self.goaway(error_code, debug)
        self._closed = True

    # ------------------------------------------------------------------ receiving

    def receive_data(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            self._receive(data)
        except h2.exceptions.ProtocolError as exc:
            raise self._h2_failed(exc) from None

    def _receive(self, data: bytes) -> None:
        if self._preface_left:
            # h2 checks the preface byte by byte as it arrives.
            n = min(self._preface_left, len(data))
            self._preface_left -= n
            self._feed(data[:n])
            data = data[n:]
        if self._buf:
            data = self._buf + data
        view = data
        self._read_resets.clear()
        pos = seg = 0
        end = len(view)
        while end - pos >= 9:
            lt, flags, sid = _unpack_header(view, pos)
            length = lt >> 8
            if length > self._max_frame_size:
                self._feed_segment(view, seg, pos)
                # Section 4.2: "An endpoint MUST send an error code of FRAME_SIZE_ERROR if a
                # frame exceeds the size defined in SETTINGS_MAX_FRAME_SIZE".
                raise self._fail(ErrorCode.FRAME_SIZE_ERROR,
                                 f"frame of {length} bytes exceeds {self._max_frame_size}")
            nxt = pos + 9 + length
            if nxt > end:
                break
            ftype = lt & 0xFF
            sid &= 0x7FFFFFFF
            if (ftype in _CHECKED or not self._settings_seen or self._block_sid
                    or (flags & _PADDED and not length)):
                try:
                    special = self._check_frame(ftype, flags, sid, view, pos, length)
                except _Violation as exc:
                    # Process what came before the frame, then end the connection.
                    self._feed_segment(view, seg, pos)
                    raise self._fail(exc.code, exc.message) from None
                if special:
                    # Handled here, not by h2: process what came before it, then the frame.
                    self._feed_segment(view, seg, pos)
                    seg = nxt
                    if ftype == _GOAWAY:
                        self._goaway_received(sid, view, pos + 9, length)
                    elif ftype == _WINDOW_UPDATE:
                        self._zero_window_update(sid)
                    if self._closed:
                        return
            pos = nxt
        self._buf = view[pos:]
        self._feed_segment(view, seg, pos)
        self._report_resets()
        if self._late_window_updates:
            self._answer_late_window_updates()

    def _check_frame(self, ftype: int, flags: int, sid: int, view: bytes, pos: int,
                     length: int) -> bool:
        """The frame-header checks; True for a frame handled here instead of by h2."""
        if not self._settings_seen:
            if ftype != _SETTINGS or flags & _ACK:
                # Section 3.4: the preface is followed by a SETTINGS frame; "Clients and
                # servers MUST treat an invalid connection preface as a connection error".
                raise _Violation(ErrorCode.PROTOCOL_ERROR,
                                 "invalid HTTP/2 preamble: SETTINGS must come first")
            self._settings_seen = True
        if self._block_sid:
            self._check_continuation(ftype, flags, sid, length)
            return False
        _check_stream_and_length(ftype, sid, length)
        if ftype == _HEADERS:
            self._check_headers(flags, sid, view, pos, length)
        elif ftype == _CONTINUATION:
            # Section 6.10: "A CONTINUATION frame MUST be preceded by a HEADERS, PUSH_PROMISE or
            # CONTINUATION frame without the END_HEADERS flag set ... PROTOCOL_ERROR."
            raise _Violation(ErrorCode.PROTOCOL_ERROR, "unexpected CONTINUATION")
        elif ftype == _DATA and flags & _PADDED and not length:
            # Section 6.1: padding "the length of the frame payload or greater" is a
            # PROTOCOL_ERROR (h2 says FRAME_SIZE_ERROR for the missing Pad Length).
            raise _Violation(ErrorCode.PROTOCOL_ERROR, "DATA padding too long")
        elif ftype == _SETTINGS:
            _check_settings(flags, view, pos, length)
        elif ftype == _WINDOW_UPDATE:
            return self._check_window_update(sid, view, pos)
        elif ftype == _PUSH_PROMISE:
            # Section 8.4: "servers MUST treat the receipt of a PUSH_PROMISE frame as a
            # connection error of type PROTOCOL_ERROR" (h2 first parses it).
            raise _Violation(ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        elif ftype == _RST_STREAM:
            if sid == 0 or not sid & 1 or sid > self._seen_highest:
                # Section 6.4: "If a RST_STREAM frame identifying an idle stream is received,
                # the recipient MUST treat this as a connection error ... PROTOCOL_ERROR."
                raise _Violation(ErrorCode.PROTOCOL_ERROR, f"RST_STREAM on idle stream {sid}")
            self._resets_seen.append((sid, _U32.unpack_from(view, pos + 9)[0]))
            self._read_resets.add(sid)
        return ftype in (_GOAWAY, _ALTSVC)

    def _check_window_update(self, sid: int, view: bytes, pos: int) -> bool:
        if _zero_increment(sid, view, pos):
            return True
        if sid and (sid in self._reset_by_peer or sid in self._read_resets):
            self._late_window_updates.append(sid)
        return False

    def _check_continuation(self, ftype: int, flags: int, sid: int, length: int) -> None:
        if ftype != _CONTINUATION or sid != self._block_sid:
            # Section 6.10: "A receiver MUST treat the receipt of any other type of frame or a
            # frame on a different stream as a connection error of type PROTOCOL_ERROR."
            raise _Violation(ErrorCode.PROTOCOL_ERROR, "header block interrupted")
        self._block_frames += 1
        if self._block_frames > MAX_CONTINUATION_FRAMES:
            raise _Violation(ErrorCode.PROTOCOL_ERROR,
                             f"more than {MAX_CONTINUATION_FRAMES} CONTINUATION frames")
        self._block_size += length
        self._check_block_size()
        if flags & _END_HEADERS:
            self._block_sid = 0

    def _check_headers(self, flags: int, sid: int, view: bytes, pos: int, length: int) -> None:
        if sid & 1 and sid > self._seen_highest:
            self._seen_highest = sid
        size = length
        if flags & _PADDED:
            if not length:
                # Section 4.2: a frame "too small to contain mandatory frame data".
                raise _Violation(ErrorCode.FRAME_SIZE_ERROR, "HEADERS too short for padding")
            size -= 1 + view[pos + 9]
        if flags & _PRIORITY:
            if length - (1 if flags & _PADDED else 0) < 5:
                raise _Violation(ErrorCode.FRAME_SIZE_ERROR,
                                 "HEADERS too short for priority fields")
            size -= 5
        if size < 0:
            # Section 6.2: "Padding that exceeds the size remaining for the field block
            # fragment MUST be treated as a PROTOCOL_ERROR."
            raise _Violation(ErrorCode.PROTOCOL_ERROR, "HEADERS padding too long")
        if flags & _END_HEADERS:
            return
        self._block_sid = sid or -1
        self._block_size = max(size, 0)
        self._block_frames = 0
        self._check_block_size()

    def _check_block_size(self) -> None:
        # Cut a CONTINUATION flood (CVE-2024-27316 style) at the hard limit, before any of it
        # is decoded: a block this large would decode past the limit anyway.
        if self._block_size > self._block_limit:
            raise _Violation(ErrorCode.ENHANCE_YOUR_CALM,
                                f"header block larger than {self._block_limit} bytes")

    def _goaway_received(self, sid: int, view: bytes, start: int, length: int) -> None:
        if sid != 0:
            # Section 6.8: "An endpoint MUST treat a GOAWAY frame with a stream identifier
            # other than 0x00 as a connection error ... PROTOCOL_ERROR."
            raise self._fail(ErrorCode.PROTOCOL_ERROR, "GOAWAY on a stream")
        if length < 8:
            raise self._fail(ErrorCode.FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
        last, code = _GOAWAY_BODY.unpack_from(view, start)
        self._handler.on_goaway(code, last & 0x7FFFFFFF, bytes(view[start + 8:start + length]))

    def _zero_window_update(self, sid: int) -> None:
        # Section 6.9: "A receiver MUST treat the receipt of a WINDOW_UPDATE frame with a
        # flow-control window increment of 0 as a stream error ... PROTOCOL_ERROR".
        if sid > self._conn.highest_inbound_stream_id or not sid & 1:
            raise self._fail(ErrorCode.PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {sid}")
        if self.can_send(sid) or not self.remote_closed(sid):
            self.reset_stream(sid, ErrorCode.PROTOCOL_ERROR)
            self._handler.on_stream_reset(sid, ErrorCode.PROTOCOL_ERROR, False)

    def _feed_segment(self, view: bytes, start: int, stop: int) -> None:
        if stop > start:
            self._feed(view if start == 0 and stop == len(view) else view[start:stop])

    def _feed(self, data: bytes) -> None:
        conn = self._conn
        events = conn.receive_data(data)
        out = conn.data_to_send()
        if out:
            self._out += self._drop_amplified_resets(out, events)
        table = self._dispatch_table
        for ev in events:
            on = table.get(type(ev))
            if on is not None:
                on(ev)
                if self._closed:
                    return
        self._report_resets()

    def _report_resets(self) -> None:
        # Client resets h2 did not report (the stream was closed already) still count.
        seen = self._resets_seen
        if seen:
            self._resets_seen = []
            reset = self._handler.on_stream_reset
            for sid, code in seen:
                reset(sid, code, True)
                if self._closed:
                    return

    def _drop_amplified_resets(self, out: bytes, events: list[Any]) -> bytes:
        """h2's output while parsing, less the RST_STREAMs section 5.1 does not ask for."""
        pos = 0
        keep: list[bytes] = []
        kept_from = 0
        end = len(out)
        while end - pos >= 9:
            lt, _flags, sid = _unpack_header(out, pos)
            nxt = pos + 9 + (lt >> 8)
            if lt & 0xFF == _RST_STREAM and _U32.unpack_from(out, pos + 9)[0] == (
                    ErrorCode.STREAM_CLOSED):
                if sid in self._reset_by_us:
                    # Section 5.1: "An endpoint MUST ignore frames that it receives on closed
                    # streams after it has sent a RST_STREAM frame."
                    keep.append(out[kept_from:pos])
                    kept_from = nxt
                elif sid in self._reset_by_peer:
                    # After the peer's RST_STREAM: answered once, and from then on the stream
                    # is one we reset.
                    del self._reset_by_peer[sid]
                    _remember(self._reset_by_us, sid, True)
                elif sid not in self._opened or sid in self._stream_errors(events):
                    # h2's stream error (DATA after END_STREAM, or on a stream closed without
                    # ever being opened): once per stream.
                    _remember(self._reset_by_us, sid, True)
                else:
                    # h2 answers DATA on a stream closed by END_STREAM both ways with a stream
                    # error; section 5.1 "closed": "an endpoint that receives any frames after
                    # receiving a frame with the END_STREAM flag set MUST treat that as a
                    # connection error (Section 5.4.1) of type STREAM_CLOSED".
                    self._out += out[:pos]
                    raise self._fail(ErrorCode.STREAM_CLOSED, f"DATA on closed stream {sid}")
            pos = nxt
        if not kept_from:
            return out
        keep.append(out[kept_from:])
        return b"".join(keep)

    @staticmethod
    def _stream_errors(events: list[Any]) -> set[int]:
        return {ev.stream_id for ev in events
                if type(ev) is h2.events.StreamReset and not ev.remote_reset}

    def _answer_late_window_updates(self) -> None:
        # Section 5.1: "An endpoint that receives any frame other than PRIORITY after receiving
        # a RST_STREAM MUST treat that as a stream error ... STREAM_CLOSED"; h2 ignores a
        # WINDOW_UPDATE there. Answered once, like DATA (see _drop_amplified_resets).
        late = self._late_window_updates
        self._late_window_updates = []
        for sid in late:
            if self._closed:
                return
            if sid in self._reset_by_peer:
                del self._reset_by_peer[sid]
                _remember(self._reset_by_us, sid, True)
                out = self._out
                out += self._conn.data_to_send()
                out += _FRAME_HEADER.pack((4 << 8) | _RST_STREAM, 0, sid)
                out += _U32.pack(ErrorCode.STREAM_CLOSED)

    def _fail(self, code: int, message: str) -> RemoteProtocolError:
        # Section 5.4.1: "An endpoint that encounters a connection error SHOULD first send a
        # GOAWAY frame ... with the stream identifier of the last stream that it successfully
        # received from its peer."
        self.close(code, message.encode("utf-8", "replace"))
        return RemoteProtocolError(message, code)

    def _h2_failed(self, exc: h2.exceptions.ProtocolError) -> RemoteProtocolError:
        """h2 found a connection error: our GOAWAY replaces the one h2 queued."""
        out = self._conn.data_to_send()
        # h2's GOAWAY comes last, 17 bytes without debug data.
        if len(out) >= 17 and out[-14] == _GOAWAY and out[-17:-14] == b"\0\0\x08":
            out = out[:-17]
        self._out += out
        code = int(exc.error_code)
        cause = exc.__cause__
        if isinstance(cause, hpack.exceptions.HPACKError) and not isinstance(
                cause, hpack.exceptions.OversizedHeaderListError):
            # Section 4.3: "A decoding error in a field block MUST be treated as a connection
            # error (Section 5.4.1) of type COMPRESSION_ERROR."
            code = ErrorCode.COMPRESSION_ERROR
        return self._fail(code, str(exc) or type(exc).__name__)

    # ------------------------------------------------------------------ h2 events

    def _on_request(self, ev: h2.events.RequestReceived) -> None:
        self._ended = ev.stream_ended
        _remember(self._opened, ev.stream_id, True)
        self._handler.on_request(ev.stream_id, ev.headers, ev.stream_ended is not None)

    def _on_data(self, ev: h2.events.DataReceived) -> None:
        self._ended = ev.stream_ended
        credit = ev.flow_controlled_length
        if credit:
            unacked = self._conn_unacked + credit
            if unacked >= self._conn_credit_batch:
                unacked = 0
                self._conn.increment_flow_control_window(self._conn_unacked + credit)
            self._conn_unacked = unacked
        self._handler.on_data(ev.stream_id, ev.data, ev.flow_controlled_length,
                              ev.stream_ended is not None)

    def _on_trailers(self, ev: h2.events.TrailersReceived) -> None:
        self._ended = ev.stream_ended
        self._handler.on_trailers(ev.stream_id)

    def _on_stream_ended(self, ev: h2.events.StreamEnded) -> None:
        # Already told with the event that carried END_STREAM.
        if ev is not self._ended:
            self._handler.on_data(ev.stream_id, b"", 0, True)
        self._ended = None

    def _on_stream_reset(self, ev: h2.events.StreamReset) -> None:
        sid = ev.stream_id
        if ev.remote_reset:
            seen = self._resets_seen
            for i, (rsid, _code) in enumerate(seen):
                if rsid == sid:
                    del seen[i]
                    break
            _remember(self._reset_by_peer, sid, True)
        else:
            _remember(self._reset_by_us, sid, True)
        self._handler.on_stream_reset(sid, ev.error_code, bool(ev.remote_reset))

    def _on_window_updated(self, ev: h2.events.WindowUpdated) -> None:
        self._handler.on_window_update(ev.stream_id)

    def _on_settings(self, ev: h2.events.RemoteSettingsChanged) -> None:
        changed = h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in ev.changed_settings
        self._handler.on_settings(changed)

    def _on_ping(self, ev: h2.events.PingReceived) -> None:
        self._handler.on_ping()

    def _on_ping_ack(self, ev: h2.events.PingAckReceived) -> None:
        self._handler.on_ping_ack(ev.ping_data)
