"""A small test service for the wire tests (raw bytes in and out, no protobuf).

Every method lives under ``/test.Wire/``; the service records what its handlers saw and exposes
``trio.Event``s so tests can wait for a handler to start, to be cancelled, and so on.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from wire import Metadata, MethodHandler, RpcError, ServerCall, StatusCode
from wire import unary_stream as _unary_stream
from wire import unary_unary as _unary_unary

SERVICE = "test.Wire"

ECHO = f"/{SERVICE}/Echo"
META = f"/{SERVICE}/Meta"
FAIL = f"/{SERVICE}/Fail"
BOOM = f"/{SERVICE}/Boom"
BLOCK = f"/{SERVICE}/Block"
SLEEP = f"/{SERVICE}/Sleep"
STREAM = f"/{SERVICE}/Stream"
STREAM_FOREVER = f"/{SERVICE}/StreamForever"

#: What Fail raises with (its message is the request, decoded as UTF-8).
FAIL_CODE = StatusCode.FAILED_PRECONDITION
FAIL_METADATA: tuple[tuple[str, str | bytes], ...] = (
    ("x-why", "because"),
    ("x-why-bin", b"\x00\xff\x10"),
)
FAIL_DETAILS = b"\x08\x09\x12\x04nope"  # a serialized google.rpc.Status {code: 9, message: "nope"}

INITIAL_METADATA: tuple[tuple[str, str | bytes], ...] = (
    ("x-initial", "hello"),
    ("x-initial-bin", b"\x00\x01\xfe\xff"),
)
TRAILING_METADATA: tuple[tuple[str, str | bytes], ...] = (
    ("x-trailing", "bye"),
    ("x-trailing-bin", b"\xff\x00"),
)

BOOM_SECRET = "secret internal detail 4242"

#: StreamForever stops by itself after this many messages, so no loop is unbounded.
STREAM_FOREVER_LIMIT = 100_000


def stream_request(count: int, size: int) -> bytes:
    """The request of Stream: ``count`` messages of ``size`` bytes."""
    return struct.pack(">II", count, size)


def stream_message(index: int, size: int) -> bytes:
    """The ``index``-th message of Stream: recognisable bytes of length ``size``."""
    return bytes([index % 251]) * size


def _identity(data: bytes) -> bytes:
    return data


class WireService:
    """Handlers plus what they observed."""

    def __init__(self, *, block_target: int = 1) -> None:
        self.requests: list[bytes] = []
        self.metadata: list[Metadata] = []
        self.block_target = block_target
        self.blocked = 0
        self.all_in = trio.Event()  # block_target Block calls are waiting
        self.release = trio.Event()  # lets Block calls return
        self.started = trio.Event()  # a Sleep or StreamForever handler is running
        self.cancelled = trio.Event()  # ... and has been cancelled (set in a finally)
        self.sent = 0  # messages StreamForever has sent

    def handlers(self) -> list[MethodHandler[Any, Any]]:
        """Every method, ready for ``Server``."""

        def uu(path: str, fn: Callable[[bytes, ServerCall], Awaitable[bytes]]
               ) -> MethodHandler[Any, Any]:
            return _unary_unary(path, fn, _identity, _identity)

        def us(path: str,
               fn: Callable[[bytes, ServerCall, Callable[[bytes], Awaitable[None]]],
                            Awaitable[None]]) -> MethodHandler[Any, Any]:
            return _unary_stream(path, fn, _identity, _identity)

        return [
            uu(ECHO, self.echo),
            uu(META, self.meta),
            uu(FAIL, self.fail),
            uu(BOOM, self.boom),
            uu(BLOCK, self.block),
            uu(SLEEP, self.sleep),
            us(STREAM, self.stream),
            us(STREAM_FOREVER, self.stream_forever),
        ]

    def _record(self, request: bytes, call: ServerCall) -> None:
        self.requests.append(request)
        self.metadata.append(call.metadata)

    async def echo(self, request: bytes, call: ServerCall) -> bytes:
        self._record(request, call)
        return request

    async def meta(self, request: bytes, call: ServerCall) -> bytes:
        self._record(request, call)
        call.set_initial_metadata(INITIAL_METADATA)
        call.set_trailing_metadata(TRAILING_METADATA)
        return request

    async def fail(self, request: bytes, call: ServerCall) -> bytes:
        self._record(request, call)
        raise RpcError(FAIL_CODE, request.decode("utf-8"), FAIL_METADATA, details=FAIL_DETAILS)

    async def boom(self, request: bytes, call: ServerCall) -> bytes:
        self._record(request, call)
        raise ValueError(BOOM_SECRET)

    async def block(self, request: bytes, call: ServerCall) -> bytes:
        self._record(request, call)
        self.blocked += 1
        if self.blocked == self.block_target:
            self.all_in.set()
        await self.release.wait()
        return request

    async def sleep(self, request: bytes, call: ServerCall) -> bytes:
        self._record(request, call)
        try:
            self.started.set()
            await trio.sleep_forever()
        finally:
            self.cancelled.set()
        raise AssertionError("unreachable")

    async def stream(self, request: bytes, call: ServerCall,
                     send: Callable[[bytes], Awaitable[None]]) -> None:
        self._record(request, call)
        count, size = struct.unpack(">II", request)
        for i in range(count):
            await send(stream_message(i, size))

    async def stream_forever(self, request: bytes, call: ServerCall,
                             send: Callable[[bytes], Awaitable[None]]) -> None:
        self._record(request, call)
        try:
            self.started.set()
            for i in range(STREAM_FOREVER_LIMIT):
                await send(stream_message(i, 1000))
                self.sent += 1
        finally:
            self.cancelled.set()
        raise RpcError(StatusCode.INTERNAL, "StreamForever was never cancelled")
