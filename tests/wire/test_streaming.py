"""Client-streaming and bidi calls: our ``Channel`` against our ``Server``, in one Trio run.

The pair talks over ``trio.testing.memory_stream_pair`` so that ``wait_all_tasks_blocked`` can
tell when both sides have come to rest: that is how the flow-control tests see that a sender is
held back by the peer's HTTP/2 window (and not by anything else) without measuring time. Time
itself (deadlines) runs on ``MockClock``. Every test runs on both HTTP/2 engines.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from tests.interop.grpcio_streaming import COUNT, ECHO, HANG, message, parse_count
from wire import (
    BidiStream,
    Channel,
    RpcError,
    Server,
    ServerConfig,
    StatusCode,
    open_channel,
    stream_unary,
)

from .streaming_service import (
    FAIL_AFTER,
    FAIL_CODE,
    FLOOD,
    FLOOD_SIZE,
    HOLD,
    StreamingService,
    flood_request,
)

#: A bound on waits for an event, against hangs; the tests never assert durations.
WAIT = 10.0


@pytest.fixture
def service() -> StreamingService:
    return StreamingService()


@asynccontextmanager
async def connected(service: StreamingService, http2: str) -> AsyncIterator[Channel]:
    """A channel to a server of ``service`` over an in-memory stream."""
    server = Server(service.handlers(), config=ServerConfig(http2=http2))
    async with trio.open_nursery() as nursery:

        async def connect() -> trio.abc.Stream:
            client, server_side = trio.testing.memory_stream_pair()
            nursery.start_soon(server.serve_stream, server_side)
            return client

        async with open_channel("memory:1", connector=connect) as channel:
            yield channel
        nursery.cancel_scope.cancel()


async def numbered(count: int, size: int = 16) -> AsyncIterator[bytes]:
    for i in range(count):
        yield message(i, size)


async def test_client_stream_of_1000_messages(service: StreamingService, http2: str) -> None:
    async with connected(service, http2) as channel:
        result = await channel.stream_unary(COUNT, numbered(1000), timeout=WAIT)
    assert parse_count(result.response) == (1000, 16_000)
    assert result.code is StatusCode.OK
    assert service.counts == [(1000, 16_000)]


async def test_client_stream_from_a_plain_iterable(service: StreamingService, http2: str) -> None:
    async with connected(service, http2) as channel:
        result = await channel.stream_unary(COUNT, [b"a", b"bb", b"ccc"], timeout=WAIT)
        empty = await channel.stream_unary(COUNT, [], timeout=WAIT)
    assert parse_count(result.response) == (3, 6)
    # Half-close without a single message ends the handler's iteration at once.
    assert parse_count(empty.response) == (0, 0)


async def test_bidi_echo_interleaves(service: StreamingService, http2: str) -> None:
    async with connected(service, http2) as channel, \
            channel.stream_stream(ECHO, timeout=WAIT) as stream:
        for i in range(100):
            # Each answer arrives before the next request is sent: nothing waits for the end.
            await stream.send(message(i))
            assert await stream.receive() == message(i)
        await stream.done_writing()
        assert [m async for m in stream] == []
    assert stream.code is StatusCode.OK


async def test_bidi_half_close_then_drain(service: StreamingService, http2: str) -> None:
    async with connected(service, http2) as channel, \
            channel.stream_stream(ECHO, timeout=WAIT) as stream:
        for i in range(50):
            await stream.send(message(i))
        await stream.done_writing()
        got = [m async for m in stream]
    assert got == [message(i) for i in range(50)]
    with pytest.raises(RuntimeError, match="after done_writing"):
        await stream.send(b"late")


async def test_slow_handler_holds_the_client_back_by_flow_control(
        service: StreamingService, http2: str) -> None:
    size = 16 * 1024
    count = 512  # 8 MiB: eight times the server's stream window
    window = ServerConfig().initial_window_size
    sent = 0
    async with connected(service, http2) as channel, trio.open_nursery() as nursery:
        result: list[bytes] = []

        async def requests() -> AsyncIterator[bytes]:
            nonlocal sent
            for i in range(count):
                yield message(i, size)
                sent += 1

        async def call() -> None:
            response = await channel.stream_unary(HOLD, requests(), timeout=60)
            result.append(response.response)

        nursery.start_soon(call)
        with trio.fail_after(WAIT):
            await service.hold_started.wait()
        await trio.testing.wait_all_tasks_blocked()
        buffered = service.hold_requests.buffered
        # The server holds at most one window of unread messages; the client stopped at its
        # own small send buffer beyond that, far short of what it wanted to send.
        assert 0 < buffered <= window
        assert sent * size <= window + 4 * size + 256 * 1024
        assert sent < count
        service.release.set()
    assert parse_count(result[0]) == (count, count * size)


async def test_client_that_does_not_read_holds_the_handler_back(
        service: StreamingService, http2: str) -> None:
    count = 2000  # 32 MiB of responses
    async with connected(service, http2) as channel, \
            channel.stream_stream(FLOOD, timeout=60) as stream:
        await stream.send(flood_request(count))
        await trio.testing.wait_all_tasks_blocked()
        held_at = service.flood_sent
        # Our client's window (1 MiB by default) plus the server's stream high-water mark.
        assert held_at * FLOOD_SIZE <= 2 * 1024 * 1024
        assert not service.flood_done.is_set()
        got = 0
        async for data in stream:
            assert len(data) == FLOOD_SIZE
            got += 1
    assert got == count


async def test_client_cancel_cancels_the_handler(service: StreamingService, http2: str) -> None:
    async with connected(service, http2) as channel:
        async with channel.stream_stream(HANG, timeout=WAIT) as stream:
            with trio.fail_after(WAIT):
                await service.hang_started.wait()
            stream.cancel()
            with pytest.raises(RpcError) as info:
                await stream.receive()
        assert info.value.code is StatusCode.CANCELLED
        with trio.fail_after(WAIT):
            await service.hang_cancelled.wait()


async def test_leaving_the_block_early_resets_the_call(service: StreamingService,
                                                       http2: str) -> None:
    async with connected(service, http2) as channel:
        async with channel.stream_stream(HANG, timeout=WAIT):
            with trio.fail_after(WAIT):
                await service.hang_started.wait()
        with trio.fail_after(WAIT):
            await service.hang_cancelled.wait()


async def test_bidi_deadline_cancels_both_sides(service: StreamingService, http2: str,
                                                autojump_clock: trio.testing.MockClock) -> None:
    async with connected(service, http2) as channel:
        async with channel.stream_stream(HANG, timeout=5) as stream:
            with pytest.raises(RpcError) as info:
                await stream.receive()
        assert info.value.code is StatusCode.DEADLINE_EXCEEDED
        # The server got the deadline (grpc-timeout, or the reset that followed it) and
        # cancelled the handler while the connection was still up.
        with trio.fail_after(WAIT):
            await service.hang_cancelled.wait()


async def test_client_stream_deadline(service: StreamingService, http2: str,
                                      autojump_clock: trio.testing.MockClock) -> None:
    async def never_ending() -> AsyncIterator[bytes]:
        yield b"one"
        await trio.sleep_forever()
        yield b"unreachable"

    async with connected(service, http2) as channel:
        with pytest.raises(RpcError) as info:
            await channel.stream_unary(COUNT, never_ending(), timeout=3)
    assert info.value.code is StatusCode.DEADLINE_EXCEEDED


async def test_handler_failure_mid_stream_ends_the_call(service: StreamingService,
                                                        http2: str) -> None:
    async with connected(service, http2) as channel:
        with pytest.raises(RpcError) as info:
            # The server answers after the first message; the rest are never needed.
            await channel.stream_unary(FAIL_AFTER, numbered(100_000, 1024), timeout=WAIT)
    assert info.value.code is FAIL_CODE
    assert info.value.message == "failed after the first request"


async def test_send_after_the_server_ended_the_call_raises_its_status(
        service: StreamingService, http2: str) -> None:
    # A bidi call whose server ends it while the client still sends: send() says so.
    async with connected(service, http2) as channel, \
            channel.stream_stream(FAIL_AFTER, timeout=WAIT) as stream:
        await stream.send(b"first")
        with pytest.raises(RpcError) as info:
            await stream.receive()
        assert info.value.code is FAIL_CODE
        with pytest.raises(RpcError):
            await stream.send(b"second")


async def test_unary_methods_refuse_a_second_request_still(http2: str) -> None:
    # Client-streaming into a unary method: the server's unary rule (UNIMPLEMENTED) holds.
    from wire import unary_unary

    async def echo(request: bytes, call: object) -> bytes:
        return request

    server = Server([unary_unary("/t.U/Echo", echo, bytes, bytes)],
                    config=ServerConfig(http2=http2))
    async with trio.open_nursery() as nursery:

        async def connect() -> trio.abc.Stream:
            client, server_side = trio.testing.memory_stream_pair()
            nursery.start_soon(server.serve_stream, server_side)
            return client

        async with open_channel("memory:1", connector=connect) as channel:
            with pytest.raises(RpcError) as info:
                await channel.stream_unary("/t.U/Echo", [b"a", b"b"], timeout=WAIT)
        nursery.cancel_scope.cancel()
    assert info.value.code is StatusCode.UNIMPLEMENTED


async def test_messages_larger_than_the_windows_both_ways(service: StreamingService,
                                                          http2: str) -> None:
    big = message(7, 3 * 1024 * 1024)  # three stream windows, in one message
    async with connected(service, http2) as channel:
        result = await channel.stream_unary(COUNT, [big, b"x"], timeout=WAIT)
        assert parse_count(result.response) == (2, len(big) + 1)
        async with channel.stream_stream(ECHO, timeout=WAIT) as stream:
            await stream.send(big)
            await stream.send(big)
            await stream.done_writing()
            assert [len(m) async for m in stream] == [len(big), len(big)]


async def test_a_handler_that_does_not_read_stalls_no_other_call(service: StreamingService,
                                                                 http2: str) -> None:
    size = 16 * 1024
    async with connected(service, http2) as channel, trio.open_nursery() as nursery:

        async def stalled() -> None:
            await channel.stream_unary(HOLD, (message(i, size) for i in range(512)), timeout=60)

        nursery.start_soon(stalled)
        with trio.fail_after(WAIT):
            await service.hold_started.wait()
        await trio.testing.wait_all_tasks_blocked()
        # 6 MiB on the same connection: more than its whole receive window (4 MiB).
        result = await channel.stream_unary(COUNT, (message(i, size) for i in range(384)),
                                            timeout=WAIT)
        assert parse_count(result.response) == (384, 384 * size)
        service.release.set()


async def test_shutdown_ends_open_bidi_calls_unavailable(http2: str) -> None:
    service = StreamingService()
    server = Server(service.handlers(), config=ServerConfig(http2=http2))
    async with trio.open_nursery() as nursery:

        async def connect() -> trio.abc.Stream:
            client, server_side = trio.testing.memory_stream_pair()
            nursery.start_soon(server.serve_stream, server_side)
            return client

        async with open_channel("memory:1", connector=connect) as channel, \
                channel.stream_stream(HANG, timeout=WAIT) as stream:
            with trio.fail_after(WAIT):
                await service.hang_started.wait()
            with trio.fail_after(WAIT):
                await server.shutdown(grace=0)
            with pytest.raises(RpcError) as info:
                await stream.receive()
        nursery.cancel_scope.cancel()
    assert info.value.code is StatusCode.UNAVAILABLE
    assert service.hang_cancelled.is_set()


async def test_gzip_requests_stream_through(service: StreamingService, http2: str) -> None:
    async with connected(service, http2) as channel:
        result = await channel.stream_unary(COUNT, [b"z" * 5000] * 20, timeout=WAIT,
                                            compression="gzip")
    assert parse_count(result.response) == (20, 100_000)


async def test_unparsable_request_mid_stream_is_internal(http2: str) -> None:
    def strict(data: bytes) -> bytes:
        if data == b"bad":
            raise ValueError("not a request")
        return data

    seen: list[bytes] = []

    async def collect(requests: AsyncIterator[bytes], call: object) -> bytes:
        async for request in requests:
            seen.append(request)
        return b"done"

    server = Server([stream_unary("/t.S/Collect", collect, strict, bytes)],
                    config=ServerConfig(http2=http2))
    async with trio.open_nursery() as nursery:

        async def connect() -> trio.abc.Stream:
            client, server_side = trio.testing.memory_stream_pair()
            nursery.start_soon(server.serve_stream, server_side)
            return client

        async with open_channel("memory:1", connector=connect) as channel:
            with pytest.raises(RpcError) as info:
                await channel.stream_unary("/t.S/Collect", [b"ok", b"bad", b"never"],
                                           timeout=WAIT)
        nursery.cancel_scope.cancel()
    assert info.value.code is StatusCode.INTERNAL
    assert "error unmarshalling request" in info.value.message
    assert seen == [b"ok"]


async def test_an_exception_from_the_callers_requests_cancels_the_call(
        service: StreamingService, http2: str) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"one"
        raise KeyError("the caller's own bug")

    async with connected(service, http2) as channel:
        with pytest.raises(KeyError, match="the caller's own bug"):
            await channel.stream_unary(COUNT, broken(), timeout=WAIT)
        # The channel is fine afterwards.
        result = await channel.stream_unary(COUNT, [b"a"], timeout=WAIT)
    assert parse_count(result.response) == (1, 1)


async def test_deadline_while_send_waits_for_the_window(service: StreamingService, http2: str,
                                                        autojump_clock: trio.testing.MockClock,
                                                        ) -> None:
    # The server's handler never reads: send() blocks on flow control until the deadline.
    sent = 0

    async def send_many(stream: BidiStream) -> None:
        nonlocal sent
        for _ in range(1000):  # bounded: far more than the windows take
            await stream.send(message(sent, 16 * 1024))
            sent += 1

    async with connected(service, http2) as channel, \
            channel.stream_stream(HOLD, timeout=5) as stream:
        with pytest.raises(RpcError) as info:
            await send_many(stream)
    assert info.value.code is StatusCode.DEADLINE_EXCEEDED
    assert 0 < sent < 1000
