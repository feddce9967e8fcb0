"""Client-streaming and bidi methods for the wire tests (raw bytes in and out, no protobuf).

The methods the grpcio peer also serves (``tests.interop.grpcio_streaming``: Count, Echo, Hang)
behave the same here, so one test body runs against either server. The rest observe what only
our server can show: how much request data it buffers while the handler does not read (Hold),
that a handler sending faster than the client reads is held back (Flood), and how a handler's
failure mid-stream ends the call (FailAfter).
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio

from tests.interop.grpcio_streaming import COUNT, ECHO, HANG, SERVICE, count_response
from wire import (
    MethodHandler,
    RpcError,
    ServerCall,
    StatusCode,
    stream_stream,
    stream_unary,
)

HOLD = f"/{SERVICE}/Hold"
FLOOD = f"/{SERVICE}/Flood"
FAIL_AFTER = f"/{SERVICE}/FailAfter"

#: FailAfter's status once it has read its first request.
FAIL_CODE = StatusCode.ABORTED
#: Flood stops by itself after this many messages, so no loop is unbounded.
FLOOD_LIMIT = 10_000
FLOOD_SIZE = 16 * 1024


def flood_request(count: int) -> bytes:
    """Flood's one request: how many messages of ``FLOOD_SIZE`` bytes to send."""
    return struct.pack(">I", count)


def _identity(data: bytes) -> bytes:
    return data


class StreamingService:
    """The handlers, plus what they observed."""

    def __init__(self) -> None:
        self.counts: list[tuple[int, int]] = []
        self.hang_started = trio.Event()
        self.hang_cancelled = trio.Event()
        # Hold: set once the handler runs; it reads only after ``release`` is set.
        self.hold_started = trio.Event()
        self.release = trio.Event()
        self.hold_requests: Any = None
        self.flood_sent = 0
        self.flood_done = trio.Event()

    def handlers(self) -> list[MethodHandler[Any, Any]]:
        """Every method, ready for ``Server``."""
        return [
            stream_unary(COUNT, self.count, _identity, _identity),
            stream_unary(HOLD, self.hold, _identity, _identity),
            stream_unary(FAIL_AFTER, self.fail_after, _identity, _identity),
            stream_stream(ECHO, self.echo, _identity, _identity),
            stream_stream(HANG, self.hang, _identity, _identity),
            stream_stream(FLOOD, self.flood, _identity, _identity),
        ]

    async def count(self, requests: AsyncIterator[bytes], call: ServerCall) -> bytes:
        count = total = 0
        async for request in requests:
            count += 1
            total += len(request)
        self.counts.append((count, total))
        return count_response(count, total)

    async def hold(self, requests: AsyncIterator[bytes], call: ServerCall) -> bytes:
        self.hold_requests = requests
        self.hold_started.set()
        await self.release.wait()
        return await self.count(requests, call)

    async def fail_after(self, requests: AsyncIterator[bytes], call: ServerCall) -> bytes:
        async for _ in requests:
            raise RpcError(FAIL_CODE, "failed after the first request")
        return b""

    async def echo(self, requests: AsyncIterator[bytes], call: ServerCall,
                   send: Callable[[bytes], Awaitable[None]]) -> None:
        async for request in requests:
            await send(request)

    async def hang(self, requests: AsyncIterator[bytes], call: ServerCall,
                   send: Callable[[bytes], Awaitable[None]]) -> None:
        try:
            self.hang_started.set()
            await trio.sleep_forever()
        finally:
            self.hang_cancelled.set()

    async def flood(self, requests: AsyncIterator[bytes], call: ServerCall,
                    send: Callable[[bytes], Awaitable[None]]) -> None:
        try:
            async for request in requests:
                (count,) = struct.unpack(">I", request)
                for _ in range(min(count, FLOOD_LIMIT)):
                    await send(b"f" * FLOOD_SIZE)
                    self.flood_sent += 1
                return
        finally:
            self.flood_done.set()
