"""Differential fuzzing of the two HTTP/2 engines under ``wire.ServerConnection``.

The input is a program: each op (read from the bytes) writes one step of a client's traffic --
valid calls, malformed and oversized header lists, header blocks in CONTINUATION frames,
content-length lies, trailers, DATA of any size (flow-control sequences), resets, pings,
settings, window updates, GOAWAY, self-dependent priorities and garbage frames, on new, open,
closed, idle and even stream ids. Each step goes to a ``ServerConnection`` on the h2 engine and
one on the native engine; calls that complete are answered (a message and OK, or an error status
for some methods), as a server would.

Invariant: after every step the gRPC-level outcome is the same on both: the events (calls with
their method, metadata, timeout and encoding, their messages, ends, resets, aborts and
rejections), and per stream what went back (decoded header lists, DATA bytes, RST_STREAM codes),
and how the connection ended (GOAWAY code and last stream id). A step may make them differ only
as the README's engine table says: h2 ends the connection (PROTOCOL_ERROR or FLOW_CONTROL_ERROR)
where native answers a malformed request, or is lenient, on a step of one of the kinds listed
there; from then on the connections have parted and comparing stops.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import hpack

from wire.connection import ServerConfig, ServerConnection
from wire.errors import ProtocolError
from wire.events import (
    CallAborted,
    ConnectionTerminated,
    MessageReceived,
    RequestEnded,
    RequestReceived,
    RequestRejected,
    StreamReset,
)
from wire.status import ErrorCode, StatusCode

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_HEADER = struct.Struct(">IBI")
#: Steps of the kinds the README's engine table lists (h2 may end the connection there).
LISTED = frozenset({"malformed", "content-length", "self-dependency", "second-headers",
                    "burst", "even"})
_ALLOWED_H2_CODES = frozenset({ErrorCode.PROTOCOL_ERROR, ErrorCode.FLOW_CONTROL_ERROR})


def _frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return _HEADER.pack((len(payload) << 8) | ftype, flags, sid) + payload


def _literal(name: bytes, value: bytes) -> bytes:
    # HPACK literal without indexing, 7-bit lengths below 127 (longer ones use the integer
    # continuation, RFC 7541 section 5.1).
    return b"\x00" + _hpack_len(name) + name + _hpack_len(value) + value


def _hpack_len(data: bytes) -> bytes:
    n = len(data)
    if n < 127:
        return bytes((n,))
    out = bytearray((127,))
    n -= 127
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


PATHS = [b"/t.S/Echo", b"/t.S/Fail", b"/t.S/Quiet"]
BAD_FIELDS = [(b"X-Upper", b"1"), (b"connection", b"close"), (b"te", b"gzip"),
              (b"x-bad", b"a\r\nb"), (b"x-space", b" v"), (b"", b"e"), (b"x:c", b"1"),
              (b":method", b"POST"), (b":status", b"200"), (b":foo", b"1"),
              (b"content-length", b"x"), (b"x-nul", b"a\0b"), (b"x-tab", b"v\t")]


class _Reader:
    """The fuzzer's bytes as a stream of small choices (zeros once exhausted)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        b = self.data[self.pos]
        self.pos += 1
        return b

    def take(self, n: int) -> bytes:
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    @property
    def done(self) -> bool:
        return self.pos >= len(self.data)


@dataclass
class _Program:
    """Turns the reader's choices into client steps: (kinds, bytes)."""

    r: _Reader
    highest: int = 0
    sids: list[int] = field(default_factory=list)
    #: Streams a request's HEADERS went out on.
    opened: set[int] = field(default_factory=set)

    def sid(self) -> int:
        b = self.r.byte()
        choice = b % 8
        if choice < 4 and self.sids:
            return self.sids[b % len(self.sids)]
        if choice == 4:
            return self.highest + 2 if self.highest else 1  # idle
        if choice == 5:
            return (b % 6) * 2 + 2  # even
        if choice == 6:
            return 0
        return self.new_sid()

    def new_sid(self) -> int:
        self.highest = self.highest + 2 if self.highest else 1
        self.sids.append(self.highest)
        return self.highest

    def request_headers(self, path: bytes, extra: list[tuple[bytes, bytes]]) -> bytes:
        self.opened.add(self.highest)
        fields = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path),
                  (b":authority", b"fuzz"), (b"te", b"trailers"),
                  (b"content-type", b"application/grpc"), *extra]
        return b"".join(_literal(n, v) for n, v in fields)

    def message(self) -> bytes:
        n = self.r.byte() % 24
        payload = self.r.take(n)
        return b"\0" + struct.pack(">I", len(payload)) + payload

    def step(self) -> tuple[set[str], bytes]:
        """The next op: the kinds of step it is (see LISTED) and its bytes."""
        op = self.r.byte() % 16
        kinds: set[str] = set()
        return kinds, _OPS[op](self, kinds)

    def call(self, kinds: set[str]) -> bytes:
        """A valid call, possibly with metadata, a timeout, identity encoding, open-ended."""
        r = self.r
        sid = self.new_sid()
        extra: list[tuple[bytes, bytes]] = []
        flags = r.byte()
        if flags & 1:
            extra.append((b"x-meta", r.take(r.byte() % 8).hex().encode()))
        if flags & 2:
            extra.append((b"grpc-timeout", b"%dS" % (r.byte() % 100 + 1)))
        if flags & 4:
            extra.append((b"grpc-encoding", b"identity"))
        block = self.request_headers(PATHS[flags >> 4 & 1 if flags & 8 else 0], extra)
        end = not flags & 64
        return _frame(0x1, 0x4, sid, block) + _frame(0x0, 0x1 if end else 0, sid, self.message())

    def bad_headers(self, kinds: set[str]) -> bytes:
        """A malformed or oversized header list."""
        r = self.r
        sid = self.new_sid()
        b = r.byte()
        bad = BAD_FIELDS[b % len(BAD_FIELDS)]
        if b & 0x80:
            bad = (b"x-big", b"v" * (r.byte() * 100))
        kinds.add("malformed")
        return _frame(0x1, 0x5, sid, self.request_headers(PATHS[0], [bad]))

    def data(self, kinds: set[str]) -> bytes:
        """DATA on some stream: sizes up to a burst beyond the stream window."""
        r = self.r
        sid = self.sid()
        b = r.byte()
        size = (b % 4) * 5000 if not b & 0x40 else 16384
        count = 1 if not b & 0x80 else 70
        if count > 1:
            kinds.add("burst")
        flags = 0x1 if b & 0x10 else 0
        body = bytes(size)
        if b & 0x20:
            flags |= 0x8
            body = bytes((r.byte() % 8,)) + body + bytes(8)
        if sid % 2 == 0:
            kinds.add("even")
        return _frame(0x0, flags, sid, body) * count

    def rst(self, kinds: set[str]) -> bytes:
        sid = self.sid()
        if sid and sid % 2 == 0:
            kinds.add("even")
        return _frame(0x3, 0, sid, struct.pack(">I", self.r.byte() % 14))

    def ping(self, kinds: set[str]) -> bytes:
        return _frame(0x6, self.r.byte() & 1, 0, self.r.take(8).ljust(8, b"\0"))

    def settings(self, kinds: set[str]) -> bytes:
        r = self.r
        b = r.byte()
        if b & 1:
            return _frame(0x4, 1, 0, b"")
        pairs = b"".join(struct.pack(">HI", r.byte() % 8, r.byte() * 300) for _ in range(b >> 5))
        return _frame(0x4, 0, 0, pairs)

    def window_update(self, kinds: set[str]) -> bytes:
        sid = self.sid()
        if sid and sid % 2 == 0:
            kinds.add("even")
        inc = self.r.byte() * 1000 if self.r.byte() & 1 else 2**31 - 1
        return _frame(0x8, 0, sid, struct.pack(">I", inc))

    def continued(self, kinds: set[str]) -> bytes:
        """A request whose header block is split over CONTINUATION frames."""
        r = self.r
        sid = self.new_sid()
        block = self.request_headers(PATHS[0], [])
        cut = r.byte() % len(block)
        out = _frame(0x1, 0, sid, block[:cut])
        for _ in range(r.byte() % 3):
            out += _frame(0x9, 0, sid, b"")
        return out + _frame(0x9, 0x4, sid, block[cut:]) + _frame(0x0, 0x1, sid, self.message())

    def trailers(self, kinds: set[str]) -> bytes:
        """Trailers, or a second HEADERS without END_STREAM."""
        sid = self.sid()
        end = self.r.byte() & 1
        if not end:
            kinds.add("second-headers")
        if sid not in self.opened:
            kinds.add("malformed")  # a request without pseudo-header fields
        if sid and sid % 2 == 0:
            kinds.add("even")
        return _frame(0x1, 0x4 | end, sid, _literal(b"x-trailer", b"1"))

    def content_length(self, kinds: set[str]) -> bytes:
        """A content-length that may not match the DATA."""
        sid = self.new_sid()
        kinds.add("content-length")
        extra = [(b"content-length", b"%d" % (self.r.byte() % 12))]
        return (_frame(0x1, 0x4, sid, self.request_headers(PATHS[0], extra))
                + _frame(0x0, 0x1, sid, self.message()))

    def self_dependency(self, kinds: set[str]) -> bytes:
        """A priority on the stream's own id (PRIORITY frame or HEADERS' fields)."""
        kinds.add("self-dependency")
        sid = self.sid() or 1
        if self.r.byte() & 1:
            return _frame(0x2, 0, sid, struct.pack(">IB", sid, 15))
        block = self.request_headers(PATHS[0], [])
        sid = self.new_sid()
        return _frame(0x1, 0x25, sid, struct.pack(">IB", sid, 15) + block)

    def goaway(self, kinds: set[str]) -> bytes:
        return _frame(0x7, 0, 0, struct.pack(">II", self.r.byte(), 0) + self.r.take(4))

    def trickle(self, kinds: set[str]) -> bytes:
        """A request whose message trickles in 3-byte DATA frames, then an empty END_STREAM."""
        sid = self.new_sid()
        msg = self.message()
        out = _frame(0x1, 0x4, sid, self.request_headers(PATHS[0], []))
        for i in range(0, len(msg), 3):
            out += _frame(0x0, 0, sid, msg[i:i + 3])
        return out + _frame(0x0, 0x1, sid, b"")

    def garbage(self, kinds: set[str]) -> bytes:
        """A frame of any type with any flags and payload (unknown types are ignored)."""
        r = self.r
        kinds.add("malformed")
        ftype = r.byte() % 12
        return _frame(ftype, r.byte(), self.sid(), r.take(r.byte() % 16))


_OPS = [_Program.call, _Program.call, _Program.call, _Program.bad_headers, _Program.data,
        _Program.rst, _Program.ping, _Program.settings, _Program.window_update,
        _Program.continued, _Program.trailers, _Program.content_length,
        _Program.self_dependency, _Program.goaway, _Program.trickle, _Program.garbage]


@dataclass
class _Side:
    """One engine's connection and what a peer saw of it."""

    conn: ServerConnection
    decoder: hpack.Decoder = field(default_factory=hpack.Decoder)
    streams: dict[int, list[Any]] = field(default_factory=dict)
    goaway: tuple[int, int] | None = None
    error: int | None = None
    block: tuple[int, bytearray] | None = None
    methods: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The client's SETTINGS_HEADER_TABLE_SIZE (any value the program sends) is what the
        # server's encoder may use.
        self.decoder.max_allowed_table_size = 1 << 32
        self.decoder.max_header_list_size = 1 << 24

    def feed(self, data: bytes) -> list[Any]:
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as exc:
            self.error = int(exc.error_code)
            self._read_output()
            return []
        out = [_event(ev) for ev in events]
        for ev in events:
            self._serve(ev)
        self._read_output()
        return out

    def _serve(self, ev: Any) -> None:
        conn = self.conn
        if isinstance(ev, RequestReceived):
            self.methods[ev.stream_id] = ev.method
        elif isinstance(ev, RequestEnded):
            method = self.methods.get(ev.stream_id, "")
            if method.endswith("/Fail"):
                conn.send_status(ev.stream_id, StatusCode.NOT_FOUND, "nope %")
            elif method.endswith("/Echo"):
                conn.send_message(ev.stream_id, b"answer")
                conn.send_status(ev.stream_id, StatusCode.OK)

    def _read_output(self) -> None:
        data = self.conn.data_to_send()
        pos = 0
        while pos + 9 <= len(data):
            lt, flags, sid = _HEADER.unpack_from(data, pos)
            length, ftype = lt >> 8, lt & 0xFF
            body = data[pos + 9:pos + 9 + length]
            pos += 9 + length
            rec = self.streams.setdefault(sid, [])
            if ftype == 0x0:
                rec.append(("data", bytes(body)))
            elif ftype == 0x1:
                self.block = (sid, bytearray(body))
                if flags & 0x4:
                    self._end_block(flags & 0x1)
            elif ftype == 0x9 and self.block is not None:
                self.block[1].extend(body)
                if flags & 0x4:
                    self._end_block(0)
            elif ftype == 0x3:
                rec.append(("rst", struct.unpack(">I", body)[0]))
            elif ftype == 0x7:
                last, code = struct.unpack_from(">II", body)
                self.goaway = (code, last)

    def _end_block(self, end_stream: int) -> None:
        assert self.block is not None
        sid, block = self.block
        self.block = None
        headers = self.decoder.decode(bytes(block), raw=True)
        self.streams.setdefault(sid, []).append(("headers", tuple(headers), bool(end_stream)))


def _event(ev: Any) -> tuple[Any, ...]:
    if isinstance(ev, RequestReceived):
        return ("request", ev.stream_id, ev.method, tuple(ev.metadata), ev.timeout,
                ev.encoding, ev.authority)
    if isinstance(ev, MessageReceived):
        return ("message", ev.stream_id, ev.data)
    if isinstance(ev, RequestEnded):
        return ("ended", ev.stream_id)
    if isinstance(ev, StreamReset):
        return ("reset", ev.stream_id, ev.error_code)
    if isinstance(ev, CallAborted):
        return ("aborted", ev.stream_id, ev.code)
    if isinstance(ev, RequestRejected):
        return ("rejected", ev.stream_id, ev.http_status, ev.code)
    if isinstance(ev, ConnectionTerminated):
        return ("goaway", ev.error_code, ev.last_stream_id)
    raise AssertionError(f"unknown event {ev!r}")


def _merged(streams: dict[int, list[Any]]) -> dict[int, list[Any]]:
    """Per stream, DATA joined (frame boundaries are the engines' own business)."""
    out: dict[int, list[Any]] = {}
    for sid, items in streams.items():
        merged: list[Any] = []
        for item in items:
            if item[0] == "data" and merged and merged[-1][0] == "data":
                merged[-1] = ("data", merged[-1][1] + item[1])
            elif not (item[0] == "data" and not item[1]):
                merged.append(item)
        if merged:
            out[sid] = merged
    return out


def one_input(data: bytes) -> None:
    """Run the program in ``data`` against both engines; raise if they part unlisted."""
    program = _Program(_Reader(data))
    sides = {name: _Side(ServerConnection(ServerConfig(http2=name)))  # type: ignore[arg-type]
             for name in ("h2", "native")}
    for side in sides.values():
        side.conn.data_to_send()
        side.feed(PREFACE + _frame(0x4, 0, 0, b""))
    h2, native = sides["h2"], sides["native"]
    for _ in range(64):
        if program.r.done:
            break
        kinds, step = program.step()
        got_h2 = h2.feed(step)
        got_native = native.feed(step)
        if h2.error != native.error:
            if (kinds & LISTED and h2.error in _ALLOWED_H2_CODES
                    and native.error in (None, h2.error)):
                return  # a difference the README's table lists: the connections part here
            if ("burst" in kinds and native.error == ErrorCode.STREAM_CLOSED
                    and h2.error is None):
                return  # the table's "DATA after END_STREAM in the read that ends the call"
            raise AssertionError(f"connection errors differ after {kinds or 'a step'} "
                                 f"{step[:64]!r}: h2 {h2.error}, native {native.error}")
        if got_h2 != got_native:
            raise AssertionError(f"events differ after {step[:64]!r}:\n h2     {got_h2}\n"
                                 f" native {got_native}")
        if _merged(h2.streams) != _merged(native.streams):
            raise AssertionError(f"answers differ after {step[:64]!r}:\n h2     "
                                 f"{_merged(h2.streams)}\n native {_merged(native.streams)}")
        if (h2.goaway or (0, 0))[0] != (native.goaway or (0, 0))[0] or (
                h2.error is not None and h2.goaway != native.goaway):
            raise AssertionError(f"GOAWAY differs: h2 {h2.goaway}, native {native.goaway}")
        if h2.error is not None:
            return


if __name__ == "__main__":
    from _common import run

    run(one_input, "engines")
