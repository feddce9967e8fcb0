"""Client keepalive (issue 11, client half): HTTP/2 PING keepalive on the autojump clock against
silent and answering in-memory peers, TCP keepalive options on loopback sockets, and the channel
replacing a connection known to be dead.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from wire import RpcError, StatusCode
from wire.client import Channel, connect_tcp
from wire.client_connection import ClientConfig
from wire.keepalive import TOO_MANY_PINGS
from wire.sockopts import TcpKeepalive, apply_tcp_keepalive
from wire.status import ErrorCode

from .hostile_server import ACK, PING, Peer, goaway, ok_response, ping
from .memory_channel import channel_over

METHOD = "/grpc.health.v1.Health/Check"

PeerScript = Callable[[Peer], Awaitable[None]]


class Net:
    """In-memory connections to one script each; counts them and the PINGs they received."""

    def __init__(self, nursery: trio.Nursery, script: PeerScript) -> None:
        self.nursery = nursery
        self.script = script
        self.peers: list[Peer] = []

    async def connect(self) -> trio.abc.Stream:
        client, server = trio.testing.memory_stream_pair()
        peer = Peer(server)
        self.peers.append(peer)
        self.nursery.start_soon(self.script, peer)
        return client

    def pings(self) -> int:
        return sum(1 for p in self.peers for f in p.received if f.kind == PING
                   and not f.flags & ACK)


@asynccontextmanager
async def channel_to(script: PeerScript, **kw: Any) -> AsyncIterator[tuple[Channel, Net]]:
    async with channel_over(lambda nursery: Net(nursery, script), "peer:1", **kw) as connected:
        yield connected


async def silent(peer: Peer) -> None:
    """Says SETTINGS, then never another byte (a blackholed path looks like this)."""
    await peer.handshake()
    await peer.drain()


async def answers_pings(peer: Peer) -> None:
    """Acks every PING; answers a call only when the test says (via ``release``)."""
    await peer.handshake()
    while (f := await peer.read_frame()) is not None:
        if f.kind == PING and not f.flags & ACK:
            await peer.send(ping(f.payload, ack=True))


async def test_unanswered_ping_fails_the_call_unavailable_in_time(
        autojump_clock: trio.testing.MockClock) -> None:
    async with channel_to(silent, keepalive_time=10, keepalive_timeout=5) as (channel, net):
        start = trio.current_time()
        with pytest.raises(RpcError) as info:
            await channel.unary_unary(METHOD, b"", timeout=300)
        took = trio.current_time() - start
        assert info.value.code is StatusCode.UNAVAILABLE
        assert "keepalive PING not answered within 5 s" in info.value.message
        assert took <= 10 + 5 + 1
        assert net.pings() == 1
        assert not channel.connected


async def test_next_call_after_a_keepalive_failure_uses_a_new_connection(
        autojump_clock: trio.testing.MockClock) -> None:
    calls = 0

    async def first_silent_then_serving(peer: Peer) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await silent(peer)
            return
        await peer.handshake()
        sid = await peer.next_call()
        await peer.send(ok_response(sid, b"fresh"))
        await peer.drain()

    async with channel_to(first_silent_then_serving, keepalive_time=10,
                          keepalive_timeout=5) as (channel, net):
        with pytest.raises(RpcError):
            await channel.unary_unary(METHOD, b"", timeout=300)
        assert (await channel.unary_unary(METHOD, b"", timeout=300)).response == b"fresh"
        assert len(net.peers) == 2


async def test_answered_pings_keep_a_long_call_alive(
        autojump_clock: trio.testing.MockClock) -> None:
    async with channel_to(answers_pings, keepalive_time=10, keepalive_timeout=5) as (channel,
                                                                                     net):
        with pytest.raises(RpcError) as info:
            await channel.unary_unary(METHOD, b"", timeout=100)
        # The call outlived many keepalive rounds and ended only by its own deadline.
        assert info.value.code is StatusCode.DEADLINE_EXCEEDED
        assert 8 <= net.pings() <= 11
        assert len(net.peers) == 1


async def test_idle_connection_is_not_pinged_unless_asked(
        autojump_clock: trio.testing.MockClock) -> None:
    async with channel_to(answers_pings, keepalive_time=10) as (channel, net):
        await channel.connect()
        await trio.sleep(100)
        assert net.pings() == 0
    async with channel_to(answers_pings, keepalive_time=10,
                          keepalive_without_calls=True) as (channel, net):
        await channel.connect()
        await trio.sleep(100)
        assert 8 <= net.pings() <= 11


async def test_keepalive_is_off_by_default(autojump_clock: trio.testing.MockClock) -> None:
    async with channel_to(silent) as (channel, net):
        with pytest.raises(RpcError) as info:
            await channel.unary_unary(METHOD, b"", timeout=200)
        assert info.value.code is StatusCode.DEADLINE_EXCEEDED
        assert net.pings() == 0
        assert channel.keepalive_time is None


async def test_too_many_pings_doubles_the_interval(
        autojump_clock: trio.testing.MockClock) -> None:
    async def calm_down(peer: Peer) -> None:
        await peer.handshake()
        await peer.next_call()
        await peer.send(goaway(0, ErrorCode.ENHANCE_YOUR_CALM, TOO_MANY_PINGS))
        await peer.drain()

    async with channel_to(calm_down, keepalive_time=10) as (channel, _):
        with pytest.raises(RpcError) as info:
            await channel.unary_unary(METHOD, b"", timeout=5)
        assert info.value.code is StatusCode.UNAVAILABLE
        assert channel.keepalive_time == 20


async def test_other_goaway_debug_data_leaves_the_interval(
        autojump_clock: trio.testing.MockClock) -> None:
    async def calm_down(peer: Peer) -> None:
        await peer.handshake()
        await peer.next_call()
        await peer.send(goaway(0, ErrorCode.ENHANCE_YOUR_CALM, b"slow down"))
        await peer.drain()

    async with channel_to(calm_down, keepalive_time=10) as (channel, _):
        with pytest.raises(RpcError):
            await channel.unary_unary(METHOD, b"", timeout=5)
        assert channel.keepalive_time == 10


@pytest.mark.parametrize("kw", [{"keepalive_time": 0.0}, {"keepalive_time": -1.0},
                                {"keepalive_timeout": 0.0},
                                {"keepalive_time": float("inf")}])
def test_bad_keepalive_settings_are_refused(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="keepalive"):
        ClientConfig(**kw)


@pytest.mark.parametrize("kw", [{"count": 0}, {"idle": -1.0}, {"user_timeout": float("nan")}])
def test_bad_tcp_keepalive_settings_are_refused(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="tcp keepalive"):
        TcpKeepalive(**kw)


# ---------------------------------------------------------------- TCP keepalive


def _tcp(sock: Any, name: str) -> int:
    return int(sock.getsockopt(socket.IPPROTO_TCP, getattr(socket, name)))


async def _loopback_listener() -> trio.SocketListener:
    return (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]


async def test_connect_tcp_sets_keepalive_defaults() -> None:
    listener = await _loopback_listener()
    port = listener.socket.getsockname()[1]
    async with listener:
        stream = await connect_tcp("127.0.0.1", port)
        async with stream:
            sock = stream.socket
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            if hasattr(socket, "TCP_KEEPIDLE"):
                assert _tcp(sock, "TCP_KEEPIDLE") == 10
                assert _tcp(sock, "TCP_KEEPINTVL") == 5
                assert _tcp(sock, "TCP_KEEPCNT") == 3
            if hasattr(socket, "TCP_USER_TIMEOUT"):
                assert _tcp(sock, "TCP_USER_TIMEOUT") == 20_000


async def test_connect_tcp_keepalive_configurable_and_switchable_off() -> None:
    listener = await _loopback_listener()
    port = listener.socket.getsockname()[1]
    async with listener:
        custom = await connect_tcp("127.0.0.1", port, TcpKeepalive(idle=30, interval=2.5,
                                                                   count=7, user_timeout=0))
        async with custom:
            if hasattr(socket, "TCP_KEEPIDLE"):
                assert _tcp(custom.socket, "TCP_KEEPIDLE") == 30
                assert _tcp(custom.socket, "TCP_KEEPINTVL") == 3  # whole seconds, rounded up
                assert _tcp(custom.socket, "TCP_KEEPCNT") == 7
        off = await connect_tcp("127.0.0.1", port, TcpKeepalive(enabled=False))
        async with off:
            assert off.socket.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0


def test_apply_reports_options_the_platform_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(socket, "TCP_USER_TIMEOUT", raising=False)
    with socket.socket() as sock:
        missing = apply_tcp_keepalive(sock, TcpKeepalive())
        assert "TCP_USER_TIMEOUT" in missing
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1


async def test_a_call_on_a_resting_connection_pings_at_once(
        autojump_clock: trio.testing.MockClock) -> None:
    # grpc-go: keepalive that went dormant for want of calls wakes with the next call and
    # PINGs at once (the connection may have died while nobody used it).
    async with channel_to(answers_pings, keepalive_time=10) as (channel, net):
        await channel.connect()
        await trio.sleep(50)
        assert net.pings() == 0
        with trio.move_on_after(1):
            await channel.unary_unary(METHOD, b"", timeout=300)
        assert net.pings() == 1
