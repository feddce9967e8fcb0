"""The blackhole proxy harness itself: it forwards, then goes silent without closing anything."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from .blackhole import BlackholeProxy, open_blackhole_proxy
from .streams import receive_or_eof


class _EchoServer:
    """A loopback echo server that records how its connections ended."""

    def __init__(self) -> None:
        self.accepted = 0
        self.eofs = 0
        self.eof_seen = trio.Event()

    async def handle(self, stream: trio.SocketStream) -> None:
        self.accepted += 1
        async with stream:
            while True:
                data = await receive_or_eof(stream)
                if not data:
                    self.eofs += 1
                    self.eof_seen.set()
                    return
                await stream.send_all(data)


async def _echo_port(nursery: trio.Nursery, echo: _EchoServer) -> int:
    listeners = await nursery.start(trio.serve_tcp, echo.handle, 0)
    return int(listeners[0].socket.getsockname()[1])


@asynccontextmanager
async def _proxied_echo() -> AsyncIterator[tuple[_EchoServer, BlackholeProxy]]:
    """An echo server on loopback and a blackhole proxy in front of it, both stopped on exit."""
    echo = _EchoServer()
    async with trio.open_nursery() as nursery:
        port = await _echo_port(nursery, echo)
        async with open_blackhole_proxy(port) as proxy:
            yield echo, proxy
        nursery.cancel_scope.cancel()


async def _recv_within(stream: trio.SocketStream, seconds: float) -> bytes | None:
    with trio.move_on_after(seconds):
        return bytes(await stream.receive_some(65536))
    return None


async def test_forwards_then_silently_discards_both_ways() -> None:
    async with _proxied_echo() as (echo, proxy):
        client = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        await client.send_all(b"hello")
        assert await _recv_within(client, 5) == b"hello"
        proxy.blackhole()
        await client.send_all(b"lost")
        assert await _recv_within(client, 0.3) is None
        assert proxy.discarded >= 4
        # Closing the client end is not passed on: the server never sees EOF.
        await client.aclose()
        await trio.sleep(0.2)
        assert echo.eofs == 0
        assert echo.accepted == 1


async def test_a_connection_made_while_black_reaches_nothing_and_heal_restores() -> None:
    async with _proxied_echo() as (echo, proxy):
        proxy.blackhole()
        dark = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        await dark.send_all(b"anyone?")
        assert await _recv_within(dark, 0.3) is None
        assert echo.accepted == 0
        proxy.heal()
        fresh = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        await fresh.send_all(b"back")
        assert await _recv_within(fresh, 5) == b"back"
        # The connection made while black stays black.
        await dark.send_all(b"still?")
        assert await _recv_within(dark, 0.2) is None
        assert proxy.accepted == 2
        await fresh.aclose()
        await dark.aclose()


async def test_a_live_path_passes_the_close_on() -> None:
    async with _proxied_echo() as (echo, proxy):
        client = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        await client.send_all(b"x")
        assert await _recv_within(client, 5) == b"x"
        await client.aclose()
        with trio.fail_after(5):
            await echo.eof_seen.wait()
            await proxy.wait_no_connections()
        assert proxy.open_connections == 0


async def test_only_loopback_targets() -> None:
    with pytest.raises(ValueError, match="only forwards to loopback"):
        async with open_blackhole_proxy(80, "192.0.2.1"):
            pass
