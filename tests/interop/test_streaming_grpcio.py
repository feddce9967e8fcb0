"""Client-streaming and bidi calls with grpcio as the peer, in both directions, over loopback.

grpcio's client against our server (on each HTTP/2 engine), and our ``Channel`` against a
grpcio server (``tests.interop.grpcio_streaming``): a 1,000-message client stream, a bidi echo
that interleaves (each request waits for the previous answer), cancelling mid-stream and a
deadline, each seen from the other side too (the peer's handler ends).

grpcio's blocking API runs in worker threads; every call carries a timeout so a hang fails.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

import grpc
import pytest
import trio

from tests.interop.grpcio_streaming import (
    CALL_TIMEOUT,
    COUNT,
    ECHO,
    HANG,
    GrpcioStreamingServer,
    Lockstep,
    count_call,
    echo_call,
    grpcio_channel,
    message,
    parse_count,
)
from tests.wire.streaming_service import StreamingService
from wire import RpcError, Server, ServerConfig, StatusCode, open_channel

T = TypeVar("T")


async def in_thread(fn: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(fn)


def code_of(exc: grpc.RpcError) -> grpc.StatusCode:
    code: grpc.StatusCode = exc.code()
    return code


# ---------------------------------------------------------------------- grpcio -> our server


@pytest.fixture
def service() -> StreamingService:
    return StreamingService()


@pytest.fixture
async def our_target(service: StreamingService, http2: str,
                     nursery: trio.Nursery) -> AsyncIterator[str]:
    server = Server(service.handlers(), config=ServerConfig(http2=http2))
    _, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
    yield f"127.0.0.1:{port}"
    with trio.fail_after(CALL_TIMEOUT):
        await server.shutdown(grace=1)


@pytest.fixture
async def grpcio_client(our_target: str) -> AsyncIterator[grpc.Channel]:
    channel = grpcio_channel(our_target)
    try:
        yield channel
    finally:
        await in_thread(channel.close)


async def test_grpcio_client_streams_1000_messages(grpcio_client: grpc.Channel,
                                                   service: StreamingService) -> None:
    stub = count_call(grpcio_client)
    requests = [message(i) for i in range(1000)]
    response = await in_thread(lambda: stub(iter(requests), timeout=CALL_TIMEOUT))
    assert parse_count(response) == (1000, 16_000)
    assert service.counts == [(1000, 16_000)]


async def test_grpcio_bidi_echo_interleaves(grpcio_client: grpc.Channel) -> None:
    stub = echo_call(grpcio_client)
    requests = Lockstep(message(i) for i in range(200))

    def call() -> list[bytes]:
        got = []
        for answer in stub(iter(requests), timeout=CALL_TIMEOUT):
            got.append(answer)
            requests.answered()
        return got

    assert await in_thread(call) == [message(i) for i in range(200)]


async def test_grpcio_cancels_mid_stream(grpcio_client: grpc.Channel,
                                         service: StreamingService) -> None:
    stub = echo_call(grpcio_client, HANG)
    stop = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def requests() -> Iterator[bytes]:
        yield b"first"

    def call() -> grpc.StatusCode:
        it = stub(requests(), timeout=CALL_TIMEOUT)
        trio.from_thread.run(stop.wait, trio_token=token)
        it.cancel()
        with pytest.raises(grpc.RpcError) as info:
            next(it)
        return code_of(info.value)

    async with trio.open_nursery() as nursery:
        results: list[grpc.StatusCode] = []

        async def run() -> None:
            results.append(await in_thread(call))

        nursery.start_soon(run)
        with trio.fail_after(CALL_TIMEOUT):
            await service.hang_started.wait()
        stop.set()
    assert results == [grpc.StatusCode.CANCELLED]
    with trio.fail_after(CALL_TIMEOUT):
        await service.hang_cancelled.wait()


async def test_grpcio_deadline_reaches_our_handler(grpcio_client: grpc.Channel,
                                                   service: StreamingService) -> None:
    stub = echo_call(grpcio_client, HANG)

    def call() -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as info:
            list(stub(iter([b"x"]), timeout=0.5))
        return code_of(info.value)

    assert await in_thread(call) == grpc.StatusCode.DEADLINE_EXCEEDED
    with trio.fail_after(CALL_TIMEOUT):
        await service.hang_cancelled.wait()


async def test_grpcio_client_stream_to_unknown_method(grpcio_client: grpc.Channel) -> None:
    stub = count_call(grpcio_client, "/test.Streaming/Nope")

    def call() -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as info:
            stub(iter([b"a", b"b"]), timeout=CALL_TIMEOUT)
        return code_of(info.value)

    assert await in_thread(call) == grpc.StatusCode.UNIMPLEMENTED


# ---------------------------------------------------------------------- our client -> grpcio


@pytest.fixture
def grpcio_server() -> Iterator[GrpcioStreamingServer]:
    with GrpcioStreamingServer() as server:
        yield server


async def numbered(count: int) -> AsyncIterator[bytes]:
    for i in range(count):
        yield message(i)


async def test_our_client_streams_1000_messages(grpcio_server: GrpcioStreamingServer) -> None:
    async with open_channel(grpcio_server.target) as channel:
        result = await channel.stream_unary(COUNT, numbered(1000), timeout=CALL_TIMEOUT)
    assert parse_count(result.response) == (1000, 16_000)
    assert grpcio_server.counts == [(1000, 16_000)]


async def test_our_bidi_echo_interleaves(grpcio_server: GrpcioStreamingServer) -> None:
    async with open_channel(grpcio_server.target) as channel, \
            channel.stream_stream(ECHO, timeout=CALL_TIMEOUT) as stream:
        for i in range(200):
            await stream.send(message(i))
            assert await stream.receive() == message(i)
        await stream.done_writing()
        assert await stream.receive() is None
    assert stream.code is StatusCode.OK
    assert grpcio_server.echoed == 200


async def test_our_client_cancels_mid_stream(grpcio_server: GrpcioStreamingServer) -> None:
    async with open_channel(grpcio_server.target) as channel:
        async with channel.stream_stream(HANG, timeout=CALL_TIMEOUT) as stream:
            await stream.send(b"first")
            started = await in_thread(lambda: grpcio_server.hang_started.wait(CALL_TIMEOUT))
            assert started
            stream.cancel()
            with pytest.raises(RpcError) as info:
                await stream.receive()
        assert info.value.code is StatusCode.CANCELLED
    # grpcio saw the RST_STREAM: its handler's call ended.
    assert await in_thread(lambda: grpcio_server.ended.wait(CALL_TIMEOUT))


async def test_our_deadline_reaches_grpcio(grpcio_server: GrpcioStreamingServer) -> None:
    async with open_channel(grpcio_server.target) as channel:
        with pytest.raises(RpcError) as info:
            await channel.stream_unary(HANG, numbered(1), timeout=0.5)
    assert info.value.code is StatusCode.DEADLINE_EXCEEDED
    assert await in_thread(lambda: grpcio_server.ended.wait(CALL_TIMEOUT))


async def test_our_bidi_deadline(grpcio_server: GrpcioStreamingServer) -> None:
    async with open_channel(grpcio_server.target) as channel, \
            channel.stream_stream(HANG, timeout=0.5) as stream:
        await stream.send(b"x")
        with pytest.raises(RpcError) as info:
            await stream.receive()
    assert info.value.code is StatusCode.DEADLINE_EXCEEDED
    assert await in_thread(lambda: grpcio_server.ended.wait(CALL_TIMEOUT))

