"""grpcio's client against our keepalive and lifetime settings (loopback, bounded).

* ``max_connection_age``: the GOAWAY arrives within the age plus its jitter (grpcio then opens
  a new connection for new calls), a unary call in flight finishes OK, and a Watch-like stream
  ends UNAVAILABLE once the grace is over, as grpc-go ends one, so A17 clients retry.
* grpcio's own PING keepalive against our enforcement: no ``too_many_pings``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
import trio

from wire import Server, ServerCall, ServerConfig, ServerOptions
from wire import unary_stream as _unary_stream
from wire import unary_unary as _unary_unary
from wire.keepalive import PingEnforcer

from .service import ECHO, WireService

CALL_TIMEOUT = 30.0
WATCH = "/test.Keepalive/Watch"
SLOW = "/test.Keepalive/Slow"
PEER = "/test.Keepalive/Peer"


def _identity(data: bytes) -> bytes:
    return data


class _Extra:
    """A Watch-like stream (one message, then open until the server ends it), a slow unary
    call, and a call that answers with the peer address of its connection."""

    def __init__(self) -> None:
        self.watching = trio.Event()

    async def watch(self, request: bytes, call: ServerCall,
                    send: Callable[[bytes], Awaitable[None]]) -> None:
        await send(b"SERVING")
        self.watching.set()
        await trio.sleep_forever()

    async def slow(self, request: bytes, call: ServerCall) -> bytes:
        await trio.sleep(float(request.decode()))
        return b"done"

    async def peer(self, request: bytes, call: ServerCall) -> bytes:
        return call.peer.encode()

    def handlers(self) -> list[Any]:
        return [_unary_stream(WATCH, self.watch, _identity, _identity),
                _unary_unary(SLOW, self.slow, _identity, _identity),
                _unary_unary(PEER, self.peer, _identity, _identity)]


async def in_thread(fn: Callable[[], Any]) -> Any:
    return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)


@pytest.fixture
async def serve(nursery: trio.Nursery) -> AsyncIterator[Callable[..., Awaitable[str]]]:
    servers: list[Server] = []

    async def start(config: ServerConfig, options: ServerOptions) -> str:
        srv = Server([*WireService().handlers(), *_Extra().handlers()], config=config,
                     options=options)
        servers.append(srv)
        _, port = await nursery.start(srv.serve_tcp, "127.0.0.1", 0)
        return f"127.0.0.1:{port}"

    yield start
    for srv in servers:
        with trio.fail_after(10):
            await srv.shutdown(grace=0.5)


def _unary(channel: grpc.Channel, path: str) -> Any:
    return channel.unary_unary(path, request_serializer=None, response_deserializer=None)


async def test_max_connection_age_with_grpcio(serve: Callable[..., Awaitable[str]],
                                              http2: str) -> None:
    age, grace = 2.0, 3.0
    target = await serve(ServerConfig(http2=http2),
                         ServerOptions(max_connection_age=age, max_connection_age_grace=grace))
    channel = grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)])
    try:
        peer = _unary(channel, PEER)
        first_peer = await in_thread(lambda: peer(b"", timeout=CALL_TIMEOUT))
        start = trio.current_time()
        watch = channel.unary_stream(WATCH, request_serializer=None,
                                     response_deserializer=None)(b"", timeout=CALL_TIMEOUT)
        assert await in_thread(lambda: next(watch)) == b"SERVING"
        watch_end: dict[str, Any] = {}

        def wait_watch() -> None:
            try:
                next(watch)
            except grpc.RpcError as exc:
                watch_end["code"] = exc.code()
            watch_end["at"] = trio.from_thread.run_sync(trio.current_time)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(in_thread, wait_watch)
            # A unary call in flight across the GOAWAY: started before the earliest GOAWAY,
            # it finishes after it, inside the grace period.
            await trio.sleep(age * 0.9 - 0.3 - (trio.current_time() - start))
            slow = _unary(channel, SLOW)
            slow_result: list[bytes] = []

            async def slow_call() -> None:
                slow_result.append(await in_thread(lambda: slow(b"1.0", timeout=10)))

            nursery.start_soon(slow_call)
            # New calls move to a new connection once the GOAWAY is in.
            moved_at = None
            with trio.fail_after(age * 1.1 + 2):
                while True:
                    now_peer = await in_thread(lambda: peer(b"", timeout=CALL_TIMEOUT))
                    if now_peer != first_peer:
                        moved_at = trio.current_time() - start
                        break
                    await trio.sleep(0.05)
        assert slow_result == [b"done"]
        assert watch_end["code"] == grpc.StatusCode.UNAVAILABLE
        ended_after = watch_end["at"] - start
        print(f"new connection after {moved_at:.2f} s, Watch ended UNAVAILABLE after "
              f"{ended_after:.2f} s (age {age} s +-10 %, grace {grace} s)")
        assert age * 0.9 <= moved_at <= age * 1.1 + 1
        assert age * 0.9 + grace <= ended_after <= age * 1.1 + grace + 1
    finally:
        await in_thread(channel.close)


async def test_grpcio_keepalive_gets_no_too_many_pings(
        serve: Callable[..., Awaitable[str]], http2: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """grpcio pinging every second, our min_time matching it: no strikes, no GOAWAY."""
    judged: list[bool] = []
    real = PingEnforcer.ping_received

    def counting(self: PingEnforcer, now: float, open_streams: int) -> bool:
        verdict = real(self, now, open_streams)
        judged.append(verdict)
        return verdict

    monkeypatch.setattr(PingEnforcer, "ping_received", counting)
    target = await serve(ServerConfig(http2=http2, keepalive_min_time=1.0), ServerOptions())
    channel = grpc.insecure_channel(target, options=[
        ("grpc.enable_http_proxy", 0),
        ("grpc.keepalive_time_ms", 1000),
        ("grpc.keepalive_timeout_ms", 5000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ])
    try:
        watch = channel.unary_stream(WATCH, request_serializer=None,
                                     response_deserializer=None)(b"", timeout=CALL_TIMEOUT)
        assert await in_thread(lambda: next(watch)) == b"SERVING"
        await trio.sleep(3.5)
        echo = _unary(channel, ECHO)
        assert await in_thread(lambda: echo(b"still here", timeout=CALL_TIMEOUT)) == b"still here"
        watch.cancel()
    finally:
        await in_thread(channel.close)
    print(f"grpcio sent {len(judged)} keepalive PINGs in 3.5 s")
    assert len(judged) >= 3
    assert not any(judged)
