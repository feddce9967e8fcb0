"""A small raw HTTP/2 client for poking a gRPC server, built from h2 over any Trio stream.

Unlike a real gRPC client it sends exactly what a test asks for (any headers, any DATA, RST_STREAM)
and records exactly what came back, per stream: every HEADERS block with its END_STREAM flag, the
DATA bytes, a RST_STREAM code; per connection: every GOAWAY and the end of the byte stream.

``open_h2_client(stream)`` is an async context manager that sends the preface, runs a reader task
and closes the stream on exit.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import trio
import trio.testing
from hyperframe.frame import Frame, GoAwayFrame

from tests.streams import receive_or_eof

__all__ = [
    "GoAway",
    "H2Client",
    "HeaderBlock",
    "StreamRecord",
    "grpc_frame",
    "grpc_request_headers",
    "open_h2_client",
    "open_memory_client",
]

Headers = list[tuple[bytes, bytes]]


def grpc_frame(payload: bytes, *, compressed: bool = False) -> bytes:
    """One length-prefixed gRPC message."""
    return struct.pack(">BI", int(compressed), len(payload)) + payload


@dataclass(frozen=True)
class HeaderBlock:
    """One HEADERS frame (with its CONTINUATIONs) as received."""

    headers: Headers
    end_stream: bool

    def get(self, name: str) -> str | None:
        """The last value of header ``name``, decoded as latin-1, or None."""
        key = name.encode("ascii")
        found = None
        for k, v in self.headers:
            if k == key:
                found = v.decode("latin-1")
        return found

    def names(self) -> list[str]:
        """Header names in order."""
        return [k.decode("ascii") for k, _ in self.headers]


@dataclass(frozen=True)
class GoAway:
    """A GOAWAY frame received."""

    error_code: int
    last_stream_id: int
    additional_data: bytes | None


@dataclass
class StreamRecord:
    """Everything received on one stream."""

    stream_id: int
    blocks: list[HeaderBlock] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)
    ended: bool = False  # END_STREAM received
    reset_code: int | None = None  # RST_STREAM received
    connection_lost: bool = False
    #: Set when the server's side is over: END_STREAM, RST_STREAM or the connection ended.
    closed: trio.Event = field(default_factory=trio.Event)
    #: What to await for "more arrived"; replaced after every change.
    changed: trio.Event = field(default_factory=trio.Event)

    @property
    def headers(self) -> HeaderBlock:
        """The response headers (the first block)."""
        assert self.blocks, f"stream {self.stream_id}: no HEADERS received"
        return self.blocks[0]

    @property
    def trailers(self) -> HeaderBlock:
        """The block that ended the stream: trailers, or the only block of Trailers-Only."""
        why = (f"stream {self.stream_id}: no HEADERS with END_STREAM (blocks={self.blocks!r}, "
               f"reset={self.reset_code})")
        assert self.blocks, why
        assert self.blocks[-1].end_stream, why
        return self.blocks[-1]

    @property
    def trailers_only(self) -> bool:
        """True if the response was exactly one HEADERS frame with END_STREAM and no DATA."""
        return len(self.blocks) == 1 and self.blocks[0].end_stream and not self.data

    @property
    def grpc_status(self) -> int:
        """The grpc-status of the trailers, as an int."""
        value = self.trailers.get("grpc-status")
        assert value is not None, f"stream {self.stream_id}: trailers without grpc-status"
        return int(value)

    @property
    def grpc_message(self) -> str | None:
        """The raw (still percent-encoded) grpc-message of the trailers."""
        return self.trailers.get("grpc-message")

    def messages(self) -> list[tuple[bool, bytes]]:
        """The DATA parsed into (compressed flag, payload) gRPC messages; must parse exactly."""
        out: list[tuple[bool, bytes]] = []
        buf = bytes(self.data)
        pos = 0
        while pos < len(buf):
            assert len(buf) - pos >= 5, "DATA ends inside a message prefix"
            flag, length = struct.unpack_from(">BI", buf, pos)
            assert flag in (0, 1), f"bad compressed flag {flag}"
            end = pos + 5 + length
            assert end <= len(buf), "DATA ends inside a message"
            out.append((bool(flag), buf[pos + 5 : end]))
            pos = end
        return out

    def payloads(self) -> list[bytes]:
        """Payloads of the uncompressed messages (asserts none was compressed)."""
        msgs = self.messages()
        assert not any(c for c, _ in msgs), "unexpected compressed message"
        return [p for _, p in msgs]

    def touch(self) -> None:
        """Wake whoever waits on ``changed`` (the reader calls it after each update)."""
        self.changed.set()
        self.changed = trio.Event()


class _AnySettings(h2.settings.Settings):
    """Remote settings that never stop us from opening another stream (to test refusal)."""

    @property  # type: ignore[misc]
    def max_concurrent_streams(self) -> int:
        return 2**31 - 1


class _ClientConnection(h2.connection.H2Connection):
    """h2 client that keeps processing frames after a GOAWAY.

    h2 treats a received GOAWAY as the end of the connection and rejects every later frame, but
    a graceful GOAWAY lets streams at or below its last stream id finish, which tests must see.
    """

    def _receive_goaway_frame(
        self, frame: GoAwayFrame
    ) -> tuple[list[Frame], list[h2.events.Event]]:
        ev = h2.events.ConnectionTerminated()
        ev.error_code = frame.error_code
        ev.last_stream_id = frame.last_stream_id
        ev.additional_data = frame.additional_data or None
        return [], [ev]


class H2Client:
    """A raw HTTP/2 client connection; use ``open_h2_client``."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        auto_ack: bool = True,
        initial_window_size: int | None = None,
        ignore_max_concurrent_streams: bool = False,
    ) -> None:
        self.stream = stream
        config = h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.conn = _ClientConnection(config=config)
        # Plain (not Huffman) string literals: pure-Python Huffman coding of the huge header
        # values some tests send is slow on both ends, and the server must accept both forms.
        self.conn.encoder.encode = functools.partial(  # type: ignore[method-assign]
            self.conn.encoder.encode, huffman=False
        )
        if ignore_max_concurrent_streams:
            self.conn.remote_settings = _AnySettings(client=False)
        #: Acknowledge received DATA at once (reopening flow-control windows); tests of flow
        #: control turn it off and call ``ack_all()`` when they want the window to open.
        self.auto_ack = auto_ack
        self.streams: dict[int, StreamRecord] = {}
        self.goaways: list[GoAway] = []
        self.goaway_received = trio.Event()
        #: Set (and replaced) on every GOAWAY, for tests waiting for a second one.
        self.another_goaway = trio.Event()
        self.settings_received = trio.Event()
        self.eof = trio.Event()  # the server closed the connection (or it broke)
        self.protocol_error: Exception | None = None
        self._unacked: dict[int, int] = {}
        self._window_changed = trio.Event()
        self._send_lock = trio.StrictFIFOLock()
        self._initial_window_size = initial_window_size

    # ----------------------------------------------------------------- sending

    async def flush(self) -> None:
        """Write whatever h2 has queued."""
        async with self._send_lock:
            data = self.conn.data_to_send()
            if data:
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._lost()

    async def send_raw(self, data: bytes) -> None:
        """Write bytes h2 knows nothing of, between (never inside) the client's own writes."""
        async with self._send_lock:
            await self.stream.send_all(data)

    def new_stream(self) -> int:
        """Allocate the next stream id and its record."""
        sid = self.conn.get_next_available_stream_id()
        self.streams[sid] = StreamRecord(sid)
        return sid

    async def send_headers(self, stream_id: int, headers: Sequence[tuple[bytes, bytes]],
                           *, end_stream: bool = False) -> None:
        """Send a HEADERS frame (h2 splits it into CONTINUATIONs when needed)."""
        self.streams.setdefault(stream_id, StreamRecord(stream_id))
        self.conn.send_headers(stream_id, list(headers), end_stream=end_stream)
        await self.flush()

    async def send_data(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> bool:
        """Send DATA within the flow-control windows, waiting for WINDOW_UPDATE as needed.

        Returns False (sending no more) if the stream was reset or closed meanwhile.
        """
        rec = self.streams[stream_id]
        view = memoryview(data)
        while True:
            if rec.closed.is_set():
                return False
            try:
                window = self.conn.local_flow_control_window(stream_id)
            except h2.exceptions.StreamClosedError:
                return False
            n = min(window, len(view), self.conn.max_outbound_frame_size)
            if n <= 0 and len(view) > 0:
                event = self._window_changed
                await event.wait()
                continue
            last = n == len(view)
            try:
                self.conn.send_data(stream_id, bytes(view[:n]), end_stream=end_stream and last)
            except h2.exceptions.StreamClosedError:
                return False
            view = view[n:]
            await self.flush()
            if last:
                return True

    async def end_stream(self, stream_id: int) -> None:
        """Half-close the stream with an empty DATA frame carrying END_STREAM."""
        self.conn.end_stream(stream_id)
        await self.flush()

    async def reset(self, stream_id: int, error_code: int = 0x8) -> None:
        """Send RST_STREAM (CANCEL by default)."""
        self.conn.reset_stream(stream_id, error_code)
        await self.flush()

    async def ack_all(self) -> None:
        """Acknowledge all DATA received so far, reopening the windows, and auto-ack from now."""
        self.auto_ack = True
        for sid, n in list(self._unacked.items()):
            self.conn.acknowledge_received_data(n, sid)
        self._unacked.clear()
        await self.flush()

    async def request(
        self,
        path: str,
        body: bytes | None = b"",
        *,
        headers: Sequence[tuple[bytes, bytes]] = (),
        end_stream: bool = True,
        base: Sequence[tuple[bytes, bytes]] | None = None,
    ) -> int:
        """Start a gRPC call: standard request headers plus ``headers``, then ``body``.

        ``body`` is sent as raw DATA bytes (frame it with ``grpc_frame``); None sends no DATA, and
        then ``end_stream`` goes on the HEADERS frame.
        """
        sid = self.new_stream()
        if base is None:
            base = grpc_request_headers(path)
        hdrs = [*base, *headers]
        if body is None:
            await self.send_headers(sid, hdrs, end_stream=end_stream)
        else:
            await self.send_headers(sid, hdrs)
            await self.send_data(sid, body, end_stream=end_stream)
        return sid

    async def wait(self, stream_id: int) -> StreamRecord:
        """Wait until the server's side of ``stream_id`` is over; return its record."""
        rec = self.streams[stream_id]
        await rec.closed.wait()
        return rec

    async def wait_for(self, stream_id: int, nbytes: int) -> StreamRecord:
        """Wait until at least ``nbytes`` of DATA arrived on the stream (or it closed)."""
        rec = self.streams[stream_id]
        while len(rec.data) < nbytes and not rec.closed.is_set():
            await rec.changed.wait()
        return rec

    # ----------------------------------------------------------------- receiving

    async def start(self) -> None:
        """Send the preface and our SETTINGS."""
        self.conn.initiate_connection()
        if self._initial_window_size is not None:
            self.conn.update_settings(
                {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self._initial_window_size}
            )
        await self.flush()

    async def read_loop(self) -> None:
        """Read and handle the server's frames until the connection ends."""
        while True:
            data = await receive_or_eof(self.stream)
            if not data:
                self._lost()
                return
            try:
                events = self.conn.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                self.protocol_error = exc
                self._lost()
                await self.flush()
                return
            for ev in events:
                self._on_event(ev)
            await self.flush()

    def _on_event(self, ev: h2.events.Event) -> None:
        if isinstance(ev, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
            rec = self.streams[ev.stream_id]
            rec.blocks.append(HeaderBlock(list(ev.headers or []), ev.stream_ended is not None))
            rec.touch()
        elif isinstance(ev, h2.events.DataReceived):
            rec = self.streams[ev.stream_id]
            rec.data += ev.data or b""
            n = ev.flow_controlled_length or 0
            if n:
                if self.auto_ack:
                    self.conn.acknowledge_received_data(n, ev.stream_id)
                else:
                    self._unacked[ev.stream_id] = self._unacked.get(ev.stream_id, 0) + n
            rec.touch()
        elif isinstance(ev, h2.events.StreamEnded):
            rec = self.streams[ev.stream_id]
            rec.ended = True
            rec.closed.set()
            rec.touch()
        elif isinstance(ev, h2.events.StreamReset):
            rec = self.streams[ev.stream_id]
            if ev.remote_reset:
                rec.reset_code = int(ev.error_code or 0)
            rec.closed.set()
            rec.touch()
            self._wake_senders()
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaways.append(
                GoAway(int(ev.error_code or 0), ev.last_stream_id or 0, ev.additional_data)
            )
            self.goaway_received.set()
            self.another_goaway.set()
            self.another_goaway = trio.Event()
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            self.settings_received.set()
            self._wake_senders()
        elif isinstance(ev, h2.events.WindowUpdated):
            self._wake_senders()

    def _wake_senders(self) -> None:
        self._window_changed.set()
        self._window_changed = trio.Event()

    def _lost(self) -> None:
        self.eof.set()
        for rec in self.streams.values():
            if not rec.closed.is_set():
                rec.connection_lost = True
                rec.closed.set()
                rec.touch()
        self._wake_senders()


def grpc_request_headers(path: str, *, authority: bytes = b"localhost") -> Headers:
    """The headers of a well-formed gRPC request for ``path``."""
    return [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path.encode("ascii")),
        (b":authority", authority),
        (b"te", b"trailers"),
        (b"content-type", b"application/grpc"),
    ]


@asynccontextmanager
async def open_h2_client(
    stream: trio.abc.Stream,
    *,
    auto_ack: bool = True,
    initial_window_size: int | None = None,
    ignore_max_concurrent_streams: bool = False,
) -> AsyncIterator[H2Client]:
    """Connect over ``stream`` (already open), yield the client, close the stream on exit."""
    client = H2Client(stream, auto_ack=auto_ack, initial_window_size=initial_window_size,
                      ignore_max_concurrent_streams=ignore_max_concurrent_streams)
    try:
        async with trio.open_nursery() as nursery:
            await client.start()
            nursery.start_soon(client.read_loop)
            try:
                yield client
            finally:
                nursery.cancel_scope.cancel()
    finally:
        # Not inside the cancelled nursery: a checkpoint there would raise Cancelled, which
        # the nursery would absorb together with whatever the test body raised.
        await trio.aclose_forcefully(stream)


@asynccontextmanager
async def open_memory_client(
    serve_stream: Callable[[trio.abc.Stream], Awaitable[None]],
    *,
    server_end: trio.abc.Stream | None = None,
    client_end: trio.abc.Stream | None = None,
    auto_ack: bool = True,
    initial_window_size: int | None = None,
    ignore_max_concurrent_streams: bool = False,
) -> AsyncIterator[H2Client]:
    """Run ``serve_stream`` on one end of an in-memory stream pair and a client on the other.

    On exit the client closes its end, and the server must then finish serving the stream
    promptly (a server that hangs on a closed connection fails here instead of hanging).
    """
    if server_end is None or client_end is None:
        server_end, client_end = trio.testing.memory_stream_pair()
    served = trio.Event()

    async def serve() -> None:
        try:
            await serve_stream(server_end)
        finally:
            served.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        async with open_h2_client(
            client_end, auto_ack=auto_ack, initial_window_size=initial_window_size,
            ignore_max_concurrent_streams=ignore_max_concurrent_streams,
        ) as client:
            yield client
        with trio.move_on_after(10):
            await served.wait()
        hung = not served.is_set()
        nursery.cancel_scope.cancel()
    if hung:
        raise AssertionError("the server did not finish a connection the client closed")
