"""grpcio's client against our server over loopback TCP.

grpcio is only a test peer: its blocking API runs in worker threads (``trio.to_thread``), every
call has a timeout so a hang fails the test, and the fixtures close the channel and shut the
server down after each test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
import pytest
import trio

from wire import Server, StatusCode
from wire.compression import compress as real_compress
from wire.compression import decompress as real_decompress

from .service import (
    ECHO,
    FAIL,
    FAIL_CODE,
    FAIL_DETAILS,
    INITIAL_METADATA,
    META,
    SLEEP,
    STREAM,
    STREAM_FOREVER,
    TRAILING_METADATA,
    WireService,
    stream_message,
    stream_request,
)

T = TypeVar("T")

#: Every grpcio call's own deadline: a bound against hangs, not a speed assertion.
CALL_TIMEOUT = 10.0


async def in_thread(fn: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(fn)


@pytest.fixture
async def target(server: Server, nursery: trio.Nursery) -> AsyncIterator[str]:
    _, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
    yield f"127.0.0.1:{port}"
    with trio.fail_after(CALL_TIMEOUT):
        await server.shutdown(grace=1)


@pytest.fixture
async def channel(target: str) -> AsyncIterator[grpc.Channel]:
    ch = grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)])
    try:
        yield ch
    finally:
        await in_thread(ch.close)


def unary(channel: grpc.Channel, path: str) -> Any:
    return channel.unary_unary(path, request_serializer=None, response_deserializer=None)


def streaming(channel: grpc.Channel, path: str) -> Any:
    return channel.unary_stream(path, request_serializer=None, response_deserializer=None)


def code_of(exc: grpc.RpcError) -> grpc.StatusCode:
    code: grpc.StatusCode = exc.code()
    return code


async def test_unary_ok(channel: grpc.Channel, service: WireService) -> None:
    stub = unary(channel, ECHO)
    response, call = await in_thread(lambda: stub.with_call(b"hello", timeout=CALL_TIMEOUT))
    assert response == b"hello"
    assert call.code() == grpc.StatusCode.OK
    assert service.requests == [b"hello"]
    # Twice on the same channel (and connection).
    assert await in_thread(lambda: stub(b"again", timeout=CALL_TIMEOUT)) == b"again"


async def test_server_streaming_1000_messages(channel: grpc.Channel) -> None:
    stub = streaming(channel, STREAM)
    got = await in_thread(lambda: list(stub(stream_request(1000, 100), timeout=CALL_TIMEOUT)))
    assert got == [stream_message(i, 100) for i in range(1000)]


async def test_server_streaming_one_3mib_message(channel: grpc.Channel) -> None:
    stub = streaming(channel, STREAM)
    size = 3 << 20
    got = await in_thread(lambda: list(stub(stream_request(1, size), timeout=CALL_TIMEOUT)))
    assert len(got) == 1
    assert got[0] == stream_message(0, size)


async def test_metadata_both_ways(channel: grpc.Channel, service: WireService) -> None:
    stub = unary(channel, META)
    sent = [("x-req", "value"), ("x-req-bin", b"\x00\x01\x02\xff")]
    response, call = await in_thread(
        lambda: stub.with_call(b"m", metadata=sent, timeout=CALL_TIMEOUT)
    )
    assert response == b"m"
    seen = service.metadata[0]
    assert seen.get("x-req") == "value"
    assert seen.get("x-req-bin") == b"\x00\x01\x02\xff"
    user_agent = seen.get("user-agent")
    assert isinstance(user_agent, str)
    assert user_agent.startswith("grpc-python/")
    assert not any(k.startswith("grpc-") or k.startswith(":") for k, _ in seen)
    initial = list(call.initial_metadata())
    trailing = list(call.trailing_metadata())
    for pair in INITIAL_METADATA:
        assert pair in initial
    for pair in TRAILING_METADATA:
        assert pair in trailing


async def test_deadline_exceeded(channel: grpc.Channel, service: WireService) -> None:
    stub = unary(channel, SLEEP)

    def call() -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as info:
            stub(b"", timeout=0.3)
        return info.value

    err = await in_thread(call)
    assert code_of(err) == grpc.StatusCode.DEADLINE_EXCEEDED
    # Our server cancelled the handler on its own copy of the deadline.
    with trio.fail_after(CALL_TIMEOUT):
        await service.cancelled.wait()


async def test_cancel_mid_stream(channel: grpc.Channel, service: WireService) -> None:
    stub = streaming(channel, STREAM_FOREVER)

    def call() -> tuple[list[bytes], grpc.RpcError]:
        it = stub(b"", timeout=CALL_TIMEOUT)
        got = [next(it) for _ in range(5)]
        it.cancel()
        def drain() -> None:
            for _ in range(1_000_000):  # drains what was buffered, then raises
                next(it)

        with pytest.raises(grpc.RpcError) as info:
            drain()
        return got, info.value

    got, err = await in_thread(call)
    assert got == [stream_message(i, 1000) for i in range(5)]
    assert code_of(err) == grpc.StatusCode.CANCELLED
    with trio.fail_after(CALL_TIMEOUT):
        await service.cancelled.wait()
    assert service.sent < 100_000


async def test_gzip_both_directions(channel: grpc.Channel, service: WireService,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    decompressed: list[str | None] = []
    compressed: list[str] = []

    def spy_decompress(encoding: str | None, data: bytes, limit: int) -> bytes:
        decompressed.append(encoding)
        return real_decompress(encoding, data, limit)

    def spy_compress(encoding: str, data: bytes) -> bytes:
        compressed.append(encoding)
        return real_compress(encoding, data)

    # The names the decoder and the connection call, as they imported them.
    monkeypatch.setattr("wire.framing.decompress", spy_decompress)
    monkeypatch.setattr("wire.connection.compress", spy_compress)

    payload = b"squeeze me please " * 5000
    stub = unary(channel, ECHO)
    response = await in_thread(
        lambda: stub(payload, compression=grpc.Compression.Gzip, timeout=CALL_TIMEOUT)
    )
    assert response == payload
    assert service.requests == [payload]
    assert decompressed == ["gzip"]  # the request really arrived gzip-compressed
    assert compressed == ["gzip"]  # and the response went back gzip-compressed


async def test_rpc_error_status_and_message_round_trip(channel: grpc.Channel) -> None:
    text = "naïve 100% ünïcode ✓ %41 %zz \t tab and \x7f del"
    stub = unary(channel, FAIL)

    def call() -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as info:
            stub(text.encode("utf-8"), timeout=CALL_TIMEOUT)
        return info.value

    err = await in_thread(call)
    assert code_of(err) == grpc.StatusCode.FAILED_PRECONDITION
    assert int(FAIL_CODE) == StatusCode.FAILED_PRECONDITION
    assert err.details() == text
    trailing = dict(err.trailing_metadata())
    assert trailing["x-why"] == "because"
    assert trailing["x-why-bin"] == b"\x00\xff\x10"
    assert trailing["grpc-status-details-bin"] == FAIL_DETAILS


async def test_unimplemented_method(channel: grpc.Channel) -> None:
    stub = unary(channel, "/test.Wire/Nope")

    def call() -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as info:
            stub(b"", timeout=CALL_TIMEOUT)
        return info.value

    err = await in_thread(call)
    assert code_of(err) == grpc.StatusCode.UNIMPLEMENTED
