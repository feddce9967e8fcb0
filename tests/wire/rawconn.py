"""A hand-driven HTTP/2 client for hostile-input tests, and frames crafted by hand.

``RawConn`` writes whatever bytes a test gives it (hyperframe frames, HPACK blocks written
here without the dynamic table so they mean the same whatever was sent before, or plain
garbage) and records every frame the server sends back, per stream and per connection, while
counting bytes in both directions. ``open_raw`` serves one in-memory connection of a
``wire.Server`` with a ``RawConn`` on the client end.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import h2.errors
import hpack
import trio
import trio.testing
from hpack.hpack import encode_integer
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tests.streams import receive_or_eof
from wire import Server

from .h2client import HeaderBlock, StreamRecord, grpc_frame, grpc_request_headers
from .service import ECHO

__all__ = [
    "PREFACE",
    "GoAway",
    "RawConn",
    "continuation_frame",
    "data_frame",
    "headers_frame",
    "hpack_block",
    "open_raw",
    "parse_frames",
    "ping_frame",
    "request_frames",
    "rss_bytes",
    "rst_frame",
    "settings_frame",
    "table_size_update",
    "window_update_frame",
]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CANCEL = int(h2.errors.ErrorCodes.CANCEL)
#: Safety bound on waits that should be quick (a failure bound, never a speed assertion).
BOUND = 10


# ---------------------------------------------------------------------------------- frames


def hpack_block(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """An HPACK block of literal fields without indexing (RFC 7541 6.2.2), no Huffman.

    Such a block never touches the dynamic table, so it decodes the same on the server
    whatever the connection carried before.
    """
    out = bytearray()
    for name, value in headers:
        out += b"\x00"
        out += encode_integer(len(name), 7) + name
        out += encode_integer(len(value), 7) + value
    return bytes(out)


def table_size_update(size: int) -> bytes:
    """An HPACK dynamic table size update (RFC 7541 6.3)."""
    first = encode_integer(size, 5)
    first[0] |= 0x20
    return bytes(first)


def headers_frame(sid: int, block: bytes, *, end_stream: bool = False,
                  end_headers: bool = True) -> bytes:
    f = HeadersFrame(sid)
    f.data = block
    if end_stream:
        f.flags.add("END_STREAM")
    if end_headers:
        f.flags.add("END_HEADERS")
    return f.serialize()


def continuation_frame(sid: int, data: bytes, *, end_headers: bool = False) -> bytes:
    f = ContinuationFrame(sid)
    f.data = data
    if end_headers:
        f.flags.add("END_HEADERS")
    return f.serialize()


def data_frame(sid: int, data: bytes = b"", *, end_stream: bool = False) -> bytes:
    f = DataFrame(sid)
    f.data = data
    if end_stream:
        f.flags.add("END_STREAM")
    return f.serialize()


def rst_frame(sid: int, code: int = CANCEL) -> bytes:
    f = RstStreamFrame(sid)
    f.error_code = code
    return f.serialize()


def ping_frame(opaque: bytes = b"\0" * 8) -> bytes:
    return PingFrame(0, opaque_data=opaque).serialize()


def settings_frame(settings: dict[int, int] | None = None) -> bytes:
    return SettingsFrame(0, settings=settings or {}).serialize()


def window_update_frame(sid: int, increment: int) -> bytes:
    return WindowUpdateFrame(sid, window_increment=increment).serialize()


def request_frames(sid: int, path: str = ECHO, payload: bytes | None = b"ping", *,
                   extra: Sequence[tuple[bytes, bytes]] = (), end_stream: bool = True) -> bytes:
    """HEADERS (+ one DATA with the framed message) of a well-formed gRPC request."""
    block = hpack_block([*grpc_request_headers(path), *extra])
    if payload is None:
        return headers_frame(sid, block, end_stream=end_stream)
    return headers_frame(sid, block) + data_frame(sid, grpc_frame(payload), end_stream=end_stream)


def parse_frames(data: bytes) -> list[Frame]:
    """Split a byte string into complete frames."""
    frames: list[Frame] = []
    pos = 0
    while pos + 9 <= len(data):
        frame, length = Frame.parse_frame_header(memoryview(data[pos : pos + 9]))
        frame.parse_body(memoryview(data[pos + 9 : pos + 9 + length]))
        frames.append(frame)
        pos += 9 + length
    return frames


# ---------------------------------------------------------------------------------- attacker


@dataclass(frozen=True)
class GoAway:
    error_code: int
    last_stream_id: int
    debug: bytes


@dataclass
class RawConn:
    """A hand-driven HTTP/2 client connection that records everything the server sends."""

    stream: trio.abc.Stream
    bytes_out: int = 0  # bytes we sent
    bytes_in: int = 0  # bytes the server sent
    frames: list[Frame] = field(default_factory=list)
    goaways: list[GoAway] = field(default_factory=list)
    streams: dict[int, StreamRecord] = field(default_factory=dict)
    #: RST_STREAM frames received, per stream.
    rst_count: Counter[int] = field(default_factory=Counter)
    eof: trio.Event = field(default_factory=trio.Event)
    changed: trio.Event = field(default_factory=trio.Event)
    next_sid: int = 1
    _buf: bytearray = field(default_factory=bytearray)
    _decoder: hpack.Decoder = field(default_factory=hpack.Decoder)
    _block: tuple[int, bytearray, bool] | None = None
    _lock: trio.StrictFIFOLock = field(default_factory=trio.StrictFIFOLock)
    _preface_sent: bool = False
    _settings_pending: int = 0
    _acked: bool = False

    def __post_init__(self) -> None:
        self._decoder.max_header_list_size = 1 << 24

    async def send(self, *chunks: bytes) -> bool:
        """Write raw bytes; False if the connection is gone."""
        data = b"".join(chunks)
        async with self._lock:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return False
        self.bytes_out += len(data)
        return True

    async def handshake(self, settings: dict[int, int] | None = None) -> None:
        """Preface and SETTINGS; then wait for the server's SETTINGS and acknowledge them.

        Waiting keeps our ACK from landing in the middle of a header block a test sends next.
        """
        await self.send(PREFACE, settings_frame(settings))
        self._preface_sent = True
        await self.wait_until(lambda: self._settings_pending > 0 or self._acked)
        await self._ack_settings()

    async def send_preface(self, *chunks: bytes) -> None:
        """Send the preface followed by ``chunks`` (SETTINGS first) without waiting for the
        server's SETTINGS, which are acknowledged whenever they are read."""
        await self.send(PREFACE, *chunks)
        self._preface_sent = True

    async def _ack_settings(self) -> None:
        # Only after our preface: anything before it would be a bad preface.
        while self._preface_sent and self._settings_pending:
            self._settings_pending -= 1
            await self.send(SettingsFrame(0, flags=["ACK"]).serialize())
            self._acked = True

    def new_sid(self) -> int:
        sid = self.next_sid
        self.next_sid += 2
        return sid

    def record(self, sid: int) -> StreamRecord:
        return self.streams.setdefault(sid, StreamRecord(sid))

    @property
    def goaway(self) -> GoAway:
        assert len(self.goaways) == 1, self.goaways
        return self.goaways[0]

    async def wait_until(self, predicate: Callable[[], bool], bound: float = BOUND) -> None:
        """Wait until ``predicate()``: re-checked on every frame and at least every 10 ms."""
        with trio.fail_after(bound):
            while not predicate():
                with trio.move_on_after(0.01):
                    await self.changed.wait()

    async def wait_closed(self, sid: int) -> StreamRecord:
        rec = self.record(sid)
        await self.wait_until(rec.closed.is_set)
        return rec

    async def wait_eof(self, bound: float = BOUND) -> None:
        with trio.fail_after(bound):
            await self.eof.wait()

    async def read_loop(self) -> None:
        """Read and handle the server's frames until the connection ends."""
        while await self.receive_once():
            pass

    async def receive_once(self) -> bool:
        """One read from the server, its frames handled; False once the connection ended."""
        data = await receive_or_eof(self.stream)
        if not data:
            self.eof.set()
            for rec in self.streams.values():
                rec.closed.set()
            self._touch()
            return False
        self.bytes_in += len(data)
        self._buf += data
        for frame in self._take_frames():
            await self._on_frame(frame)
        self._touch()
        return True

    def _touch(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def _take_frames(self) -> list[Frame]:
        frames: list[Frame] = []
        buf = self._buf
        while len(buf) >= 9:
            length = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + length:
                break
            frames.extend(parse_frames(bytes(buf[: 9 + length])))
            del buf[: 9 + length]
        return frames

    async def _on_frame(self, f: Frame) -> None:
        self.frames.append(f)
        if isinstance(f, GoAwayFrame):
            self.goaways.append(GoAway(f.error_code, f.last_stream_id, f.additional_data))
        elif isinstance(f, SettingsFrame):
            if "ACK" not in f.flags:
                self._settings_pending += 1
                await self._ack_settings()
        elif isinstance(f, RstStreamFrame):
            rec = self.record(f.stream_id)
            self.rst_count[f.stream_id] += 1
            rec.reset_code = f.error_code
            rec.closed.set()
        elif isinstance(f, DataFrame):
            rec = self.record(f.stream_id)
            rec.data += f.data
            if "END_STREAM" in f.flags:
                rec.ended = True
                rec.closed.set()
        elif isinstance(f, HeadersFrame):
            self._block = (f.stream_id, bytearray(f.data), "END_STREAM" in f.flags)
            if "END_HEADERS" in f.flags:
                self._end_block()
        elif isinstance(f, ContinuationFrame):
            assert self._block is not None
            self._block[1].extend(f.data)
            if "END_HEADERS" in f.flags:
                self._end_block()

    def _end_block(self) -> None:
        assert self._block is not None
        sid, block, end_stream = self._block
        self._block = None
        headers = [(bytes(k), bytes(v)) for k, v in self._decoder.decode(bytes(block), raw=True)]
        rec = self.record(sid)
        rec.blocks.append(HeaderBlock(headers, end_stream))
        if end_stream:
            rec.ended = True
            rec.closed.set()


@asynccontextmanager
async def open_raw(server: Server, *, handshake: bool = True,
                   settings: dict[int, int] | None = None,
                   pair: tuple[trio.abc.Stream, trio.abc.Stream] | None = None,
                   ) -> AsyncIterator[RawConn]:
    """Serve one in-memory connection and attach a ``RawConn`` to its client end.

    On exit the client end is closed and the server must finish the connection promptly.
    """
    server_end, client_end = pair or trio.testing.memory_stream_pair()
    served = trio.Event()

    async def serve() -> None:
        try:
            await server.serve_stream(server_end)
        finally:
            served.set()

    raw = RawConn(client_end)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        nursery.start_soon(raw.read_loop)
        if handshake:
            await raw.handshake(settings)
        try:
            yield raw
        finally:
            await trio.aclose_forcefully(client_end)
            with trio.move_on_after(BOUND):
                await served.wait()
            hung = not served.is_set()
            nursery.cancel_scope.cancel()
    assert not hung, "the server did not finish a connection the client closed"


def rss_bytes() -> int:
    """This process's resident set size (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")
