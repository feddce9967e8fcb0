"""A hostile HTTP/2 server for client tests: raw sockets on 127.0.0.1, frames built by hand.

Frames are assembled byte by byte here (RFC 9113 section 4.1 layout) and header blocks are
HPACK literals written by hand (RFC 7541 section 6.2.2, "without indexing"), so a test can send
exactly what a broken or malicious server would: malformed header lists, bad flags, floods,
frames on idle streams, table size updates out of bounds. ``HostileServer`` accepts loopback
connections and runs one script per connection against a ``Peer``; what the client sent back
(RST_STREAM, GOAWAY codes) is recorded for the test to assert on.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from wire.status import ErrorCode

# Frame types (RFC 9113 section 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8

CLIENT_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

Headers = list[tuple[bytes, bytes]]


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame: 24-bit length, type, flags, 31-bit stream id, payload."""
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + \
        struct.pack(">I", stream_id & 0x7FFFFFFF) + payload


def hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """RFC 7541 section 5.1 integer with an N-bit prefix (``first`` holds the high bits)."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(headers: Headers) -> bytes:
    """A header block of literals without indexing: never touches the dynamic table."""
    out = bytearray()
    for name, value in headers:
        out += b"\x00" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value
    return bytes(out)


def indexed_new(name: bytes, value: bytes) -> bytes:
    """A literal *with* incremental indexing (adds the field to the dynamic table)."""
    return b"\x40" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value


def indexed(index: int) -> bytes:
    """An indexed field (RFC 7541 section 6.1): 62 is the newest dynamic-table entry."""
    return hpack_int(index, 7, 0x80)


def table_size_update(size: int) -> bytes:
    """A dynamic table size update (RFC 7541 section 6.3)."""
    return hpack_int(size, 5, 0x20)


def settings(*pairs: tuple[int, int], ack: bool = False) -> bytes:
    return frame(SETTINGS, ACK if ack else 0, 0,
                 b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def ping(opaque: bytes = b"\0" * 8, *, ack: bool = False) -> bytes:
    return frame(PING, ACK if ack else 0, 0, opaque)


def headers(sid: int, hs: Headers, *, end_stream: bool = False, end_headers: bool = True,
            block: bytes | None = None) -> bytes:
    flags = (END_STREAM if end_stream else 0) | (END_HEADERS if end_headers else 0)
    return frame(HEADERS, flags, sid, literal(hs) if block is None else block)


def continuation(sid: int, block: bytes, *, end_headers: bool = False) -> bytes:
    return frame(CONTINUATION, END_HEADERS if end_headers else 0, sid, block)


def data(sid: int, payload: bytes, *, end_stream: bool = False) -> bytes:
    return frame(DATA, END_STREAM if end_stream else 0, sid, payload)


def rst_stream(sid: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, sid, struct.pack(">I", code))


def goaway(last_stream_id: int, code: int = ErrorCode.NO_ERROR, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, struct.pack(">II", last_stream_id, code) + debug)


def window_update(sid: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", increment))


def push_promise(sid: int, promised: int, hs: Headers) -> bytes:
    return frame(PUSH_PROMISE, END_HEADERS, sid, struct.pack(">I", promised) + literal(hs))


def grpc_message(payload: bytes, *, compressed: bool = False, length: int | None = None) -> bytes:
    """The 5-byte gRPC prefix (a lying ``length`` if given) and the payload."""
    return struct.pack(">BI", int(compressed), len(payload) if length is None else length) + \
        payload


RESPONSE: Headers = [(b":status", b"200"), (b"content-type", b"application/grpc")]


def response_headers(sid: int, extra: Headers | None = None) -> bytes:
    return headers(sid, [*RESPONSE, *(extra or [])])


def trailers(sid: int, status: bytes = b"0", extra: Headers | None = None) -> bytes:
    return headers(sid, [(b"grpc-status", status), *(extra or [])], end_stream=True)


def ok_response(sid: int, message: bytes = b"") -> bytes:
    """A whole successful unary response: headers, one message, ``grpc-status: 0``."""
    return response_headers(sid) + data(sid, grpc_message(message)) + trailers(sid)


@dataclass
class ClientFrame:
    kind: int
    flags: int
    stream_id: int
    payload: bytes


@dataclass
class Peer:
    """The server end of one accepted connection."""

    stream: trio.abc.Stream
    received: list[ClientFrame] = field(default_factory=list)
    _buffer: bytearray = field(default_factory=bytearray)
    _preface_seen: bool = False

    async def send(self, *chunks: bytes) -> None:
        """Write the chunks in one ``send_all`` (so they reach the client in as few reads)."""
        await self.stream.send_all(b"".join(chunks))

    async def read_frame(self) -> ClientFrame | None:
        """The client's next frame, or None once it closed the connection."""
        for _ in range(100_000):  # bounded: each pass reads or returns
            buf = self._buffer
            if not self._preface_seen:
                if len(buf) >= len(CLIENT_PREFACE):
                    assert bytes(buf[:24]) == CLIENT_PREFACE
                    del buf[:24]
                    self._preface_seen = True
                    continue
            elif len(buf) >= 9:
                length = int.from_bytes(buf[:3], "big")
                if len(buf) >= 9 + length:
                    f = ClientFrame(buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF,
                                    bytes(buf[9 : 9 + length]))
                    del buf[: 9 + length]
                    self.received.append(f)
                    return f
            try:
                chunk = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            if not chunk:
                return None
            buf += chunk
        raise AssertionError("client frame parser did not finish")

    async def handshake(self, *server_settings: tuple[int, int]) -> None:
        """Send our SETTINGS, then read until the client's SETTINGS arrived, and ack it."""
        await self.send(settings(*server_settings))
        while (f := await self.read_frame()) is not None:
            if f.kind == SETTINGS and not f.flags & ACK:
                await self.send(settings(ack=True))
                return
        raise AssertionError("client went away before its SETTINGS")

    async def next_call(self) -> int:
        """Read until the client opens a stream; return its id."""
        while (f := await self.read_frame()) is not None:
            if f.kind == HEADERS:
                return f.stream_id
        raise AssertionError("client went away before opening a stream")

    async def drain(self) -> None:
        """Keep reading (and recording) until the client closes the connection."""
        while await self.read_frame() is not None:
            pass

    def goaway_codes(self) -> list[int]:
        return [int.from_bytes(f.payload[4:8], "big") for f in self.received if f.kind == GOAWAY]

    def resets(self) -> dict[int, int]:
        return {f.stream_id: int.from_bytes(f.payload[:4], "big")
                for f in self.received if f.kind == RST_STREAM}


Script = Callable[[Peer], Awaitable[None]]


class HostileServer:
    """Listens on 127.0.0.1; each accepted connection runs ``script`` (one at a time)."""

    def __init__(self, script: Script, *, receive_buffer: int | None = None) -> None:
        self.script = script
        self.receive_buffer = receive_buffer
        self.peers: list[Peer] = []
        self.port = 0
        self.done = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        listener = listeners[0]
        if self.receive_buffer is not None:
            # Inherited by accepted sockets: lets a test fill the client's send path quickly.
            listener.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)
        self.port = listener.socket.getsockname()[1]
        task_status.started(self.port)
        async with listener:
            while True:
                stream = await listener.accept()
                peer = Peer(stream)
                self.peers.append(peer)
                try:
                    await self.script(peer)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                finally:
                    await trio.aclose_forcefully(stream)
                    self.done.set()
