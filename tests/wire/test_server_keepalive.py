"""Server keepalive, lifetimes and admission: PING keepalive, ping enforcement,
max_connection_idle / age / grace, the connection cap that evicts idle connections, and TCP
keepalive on accepted sockets. Virtual time (MockClock) where the logic is the point; loopback
TCP where sockets are."""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable
from dataclasses import replace

import pytest
import trio
import trio.testing
from hyperframe.frame import GoAwayFrame, PingFrame

import wire.server as server_module
from wire import Server, ServerConfig, ServerOptions, StatusCode, open_channel
from wire.sockopts import TcpKeepalive
from wire.status import ErrorCode

from ..blackhole import open_blackhole_proxy
from .rawconn import (
    BOUND,
    PREFACE,
    RawConn,
    open_raw,
    parse_frames,
    ping_frame,
    request_frames,
    settings_frame,
)
from .service import SLEEP, WireService


def _server(service: WireService, http2: str, *, config: ServerConfig | None = None,
            **options: object) -> Server:
    config = config or ServerConfig()
    return Server(service.handlers(), config=replace(config, http2=http2),
                  options=ServerOptions(**options))  # type: ignore[arg-type]


def _pings(raw: RawConn) -> list[PingFrame]:
    return [f for f in raw.frames if isinstance(f, PingFrame) and "ACK" not in f.flags]


async def _ack(raw: RawConn, frame: PingFrame) -> None:
    await raw.send(PingFrame(0, opaque_data=frame.opaque_data, flags=["ACK"]).serialize())


# ---------------------------------------------------------------------- PING keepalive


async def test_a_quiet_connection_is_pinged_then_closed_unanswered(
        autojump_clock: trio.testing.MockClock, service: WireService, http2: str) -> None:
    srv = _server(service, http2, keepalive_time=30, keepalive_timeout=5, idle_timeout=10_000)
    async with open_raw(srv) as raw:
        start = trio.current_time()
        await raw.wait_until(lambda: bool(_pings(raw)), bound=100)
        pinged = trio.current_time() - start
        await raw.wait_eof(bound=100)
        closed = trio.current_time() - start
    assert 30 <= pinged < 31
    assert 35 <= closed < 36


async def test_answered_pings_keep_a_connection(
        autojump_clock: trio.testing.MockClock, service: WireService, http2: str) -> None:
    srv = _server(service, http2, keepalive_time=30, keepalive_timeout=5, idle_timeout=10_000)
    async with open_raw(srv) as raw:
        for n in range(1, 5):
            await raw.wait_until(lambda n=n: len(_pings(raw)) == n, bound=100)  # type: ignore[misc]
            await _ack(raw, _pings(raw)[-1])
        assert not raw.eof.is_set()
        assert not raw.goaways


async def test_a_dead_peer_has_its_calls_ended(
        autojump_clock: trio.testing.MockClock, service: WireService, http2: str) -> None:
    srv = _server(service, http2, keepalive_time=10, keepalive_timeout=2)
    async with open_raw(srv) as raw:
        await raw.send(request_frames(raw.new_sid(), SLEEP))
        with trio.fail_after(BOUND):
            await service.started.wait()
        with trio.fail_after(13):
            await service.cancelled.wait()
            await raw.wait_eof()
        assert srv.connection_count == 0


async def test_server_keepalive_releases_a_call_behind_a_blackhole(
        service: WireService, http2: str) -> None:
    """Real sockets, a silent path: the call is released within time + timeout + 1 s."""
    time, timeout = 1.0, 1.0
    srv = _server(service, http2, keepalive_time=time, keepalive_timeout=timeout)
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(srv.serve_tcp, "127.0.0.1", 0)
        async with open_blackhole_proxy(port) as proxy, \
                open_channel(f"127.0.0.1:{proxy.port}") as channel:

            async def call() -> None:
                # Never answered (the path is dead); cancelled when the test is over.
                await channel.unary_unary(SLEEP, b"", timeout=60)

            nursery.start_soon(call)
            with trio.fail_after(BOUND):
                await service.started.wait()
            proxy.blackhole()
            start = trio.current_time()
            with trio.fail_after(time + timeout + 1):
                await service.cancelled.wait()
                await srv.wait_no_connections()
            print(f"server keepalive released the call {trio.current_time() - start:.2f} s "
                  "after the path went silent")
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------- enforcement


async def _ping_every(raw: RawConn, interval: float, count: int) -> None:
    for i in range(count):
        if raw.goaways:
            return
        await raw.send(ping_frame(b"%08d" % i))
        await trio.sleep(interval)


async def test_pings_without_calls_are_strikes_unless_permitted(
        autojump_clock: trio.testing.MockClock, service: WireService, http2: str) -> None:
    strict = ServerConfig(keepalive_permit_without_calls=False, clock=trio.current_time)
    srv = _server(service, http2, config=strict, idle_timeout=10_000)
    async with open_raw(srv) as raw:
        await _ping_every(raw, 60, 5)
        await raw.wait_eof(bound=100)
    assert raw.goaway.error_code == ErrorCode.ENHANCE_YOUR_CALM
    assert raw.goaway.debug == b"too_many_pings"
    lenient = ServerConfig(keepalive_permit_without_calls=True, clock=trio.current_time)
    srv = _server(service, http2, config=lenient, idle_timeout=10_000)
    async with open_raw(srv) as raw:
        await _ping_every(raw, 60, 5)
        assert not raw.goaways


async def test_keepalive_min_time_is_configurable(
        autojump_clock: trio.testing.MockClock, service: WireService, http2: str) -> None:
    config = ServerConfig(keepalive_min_time=1, clock=trio.current_time)
    srv = _server(service, http2, config=config, idle_timeout=10_000)
    async with open_raw(srv) as raw:
        await _ping_every(raw, 1, 10)
        assert not raw.goaways
        await _ping_every(raw, 0.5, 5)
        await raw.wait_eof(bound=100)
    assert raw.goaway.debug == b"too_many_pings"


def test_bad_enforcement_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="min_time"):
        ServerConfig(keepalive_min_time=-1)
    with pytest.raises(ValueError, match="keepalive time"):
        ServerOptions(keepalive_time=0)
    with pytest.raises(ValueError, match="max_connection_age_grace"):
        ServerOptions(max_connection_age_grace=-1)


# ---------------------------------------------------------------------- lifetimes


async def test_max_connection_idle_sends_goaway_to_a_connection_without_calls(
        autojump_clock: trio.testing.MockClock, service: WireService, http2: str) -> None:
    srv = _server(service, http2, max_connection_idle=60, idle_timeout=10_000)
    async with open_raw(srv) as raw:
        start = trio.current_time()
        await raw.wait_eof(bound=100)
        assert 60 <= trio.current_time() - start < 61
    assert raw.goaways
    assert raw.goaways[-1].error_code == ErrorCode.NO_ERROR


async def test_a_connection_with_an_open_call_is_not_idle(
        autojump_clock: trio.testing.MockClock, service: WireService, http2: str) -> None:
    # As in grpc-go, idleness is "no active stream": a Watch-like call keeps it busy.
    srv = _server(service, http2, max_connection_idle=60, idle_timeout=10_000)
    async with open_raw(srv) as raw:
        await raw.send(request_frames(raw.new_sid(), SLEEP))
        await trio.sleep(600)
        assert not raw.goaways
        assert not raw.eof.is_set()


async def test_max_connection_age_goaway_then_calls_end_unavailable_after_grace(
        autojump_clock: trio.testing.MockClock, service: WireService, http2: str) -> None:
    srv = _server(service, http2, max_connection_age=100, max_connection_age_grace=10,
                  idle_timeout=10_000)
    async with open_raw(srv) as raw:
        start = trio.current_time()
        sid = raw.new_sid()
        await raw.send(request_frames(sid, SLEEP))
        await raw.wait_until(lambda: bool(raw.goaways), bound=200)
        aged = trio.current_time() - start
        # The GOAWAY and its PING; answer the PING as a client would.
        for ping in _pings(raw):
            await _ack(raw, ping)
        rec = raw.record(sid)
        await raw.wait_until(rec.closed.is_set, bound=100)
        graced = trio.current_time() - start - aged
        await raw.wait_eof(bound=100)
    assert 90 <= aged <= 110
    assert 10 <= graced < 11
    assert rec.grpc_status == StatusCode.UNAVAILABLE
    assert rec.grpc_message == "max connection age reached, grace period over"
    assert all(g.error_code == ErrorCode.NO_ERROR for g in raw.goaways)


# ---------------------------------------------------------------------- admission


_PREFACE_AND_SETTINGS = PREFACE + settings_frame()


async def _open_idle(port: int) -> trio.SocketStream:
    """A connection past the preface, served (the server's SETTINGS came), then idle."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(_PREFACE_AND_SETTINGS)
    with trio.fail_after(BOUND):
        assert await stream.receive_some(65536)
    return stream


async def _goaway_of(stream: trio.SocketStream, bound: float = BOUND) -> bytes:
    data = b""
    with trio.fail_after(bound):
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return data  # closed with unread bytes of ours: a reset after the GOAWAY
            if not chunk:
                return data
            data += chunk


async def test_at_the_cap_the_longest_idle_connection_makes_room(
        service: WireService, http2: str) -> None:
    srv = _server(service, http2, max_connections=3)
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(srv.serve_tcp, "127.0.0.1", 0)
        assert srv.connection_cap == 3
        idle = [await _open_idle(port) for _ in range(3)]
        assert srv.connection_count == 3
        async with open_channel(f"127.0.0.1:{port}") as channel:
            reply = await channel.unary_unary("/test.Wire/Echo", b"hi", timeout=5)
            assert reply.response == b"hi"
        # The oldest idle connection got GOAWAY and was closed; the others were kept.
        frames = parse_frames(await _goaway_of(idle[0]))
        assert any(isinstance(f, GoAwayFrame) and f.error_code == ErrorCode.NO_ERROR
                   for f in frames)
        for stream in idle:
            await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_refused_only_when_every_connection_has_calls(
        service: WireService, http2: str) -> None:
    srv = _server(service, http2, max_connections=2)
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(srv.serve_tcp, "127.0.0.1", 0)
        service.block_target = 2
        channels = []
        for _ in range(2):
            channel = await nursery.start(_hold_block, port)
            channels.append(channel)
        with trio.fail_after(BOUND):
            await service.all_in.wait()
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(_PREFACE_AND_SETTINGS)
        data = await _goaway_of(stream)
        assert b"too many connections" in data
        await stream.aclose()
        service.release.set()
        nursery.cancel_scope.cancel()


async def _hold_block(port: int, *, task_status: trio.TaskStatus[None]) -> None:
    async with open_channel(f"127.0.0.1:{port}") as channel:
        task_status.started()
        await channel.unary_unary("/test.Wire/Block", b"x", timeout=30)


async def test_tcp_keepalive_is_set_on_accepted_sockets(
        monkeypatch: pytest.MonkeyPatch, service: WireService, http2: str) -> None:
    seen: list[tuple[int, int]] = []
    real: Callable[..., list[str]] = server_module.apply_tcp_keepalive

    def record(sock: socket.socket, options: TcpKeepalive) -> list[str]:
        missing = real(sock, options)
        seen.append((sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                     sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)))
        return missing

    monkeypatch.setattr(server_module, "apply_tcp_keepalive", record)
    srv = _server(service, http2, tcp_keepalive=TcpKeepalive(idle=7))
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(srv.serve_tcp, "127.0.0.1", 0)
        async with open_channel(f"127.0.0.1:{port}") as channel:
            await channel.unary_unary("/test.Wire/Echo", b"hi", timeout=5)
        nursery.cancel_scope.cancel()
    assert seen == [(1, 7)]


class _ExhaustedListener(trio.abc.Listener[trio.abc.Stream]):
    """accept() fails with EMFILE ``failures`` times, then hands out one in-memory stream."""

    def __init__(self, failures: int, stream: trio.abc.Stream) -> None:
        self.failures = failures
        self.attempts: list[float] = []
        self._stream: trio.abc.Stream | None = stream
        self.handed_out = trio.Event()

    async def accept(self) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        self.attempts.append(trio.current_time())
        if len(self.attempts) <= self.failures:
            raise OSError(errno.EMFILE, "Too many open files")
        if self._stream is None:
            await trio.sleep_forever()
        stream, self._stream = self._stream, None
        self.handed_out.set()
        return stream

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_emfile_backs_off_frees_an_idle_connection_and_logs_rarely(
        autojump_clock: trio.testing.MockClock, service: WireService, http2: str,
        caplog: pytest.LogCaptureFixture) -> None:
    srv = _server(service, http2, idle_timeout=10_000)
    server_end, client_end = trio.testing.memory_stream_pair()
    listener = _ExhaustedListener(40, server_end)
    with caplog.at_level(logging.WARNING, logger="wire.server"):
        async with open_raw(srv) as idle, trio.open_nursery() as nursery:
            await nursery.start(srv.serve_listeners, [listener])
            # The idle connection held a descriptor: freed (GOAWAY) on the first EMFILE.
            await idle.wait_until(lambda: bool(idle.goaways), bound=100)
            with trio.fail_after(100):
                await listener.handed_out.wait()
            fresh = RawConn(client_end)
            nursery.start_soon(fresh.read_loop)
            await fresh.handshake()
            sid = fresh.new_sid()
            await fresh.send(request_frames(sid, "/test.Wire/Echo", b"in at last"))
            rec = await fresh.wait_closed(sid)
            assert rec.payloads() == [b"in at last"]
            nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in zip(listener.attempts, listener.attempts[1:41], strict=False)]
    # 10 ms doubling to 1 s: 40 failures take about 34 s, not 40 x 0 s.
    assert gaps[:4] == pytest.approx([0.01, 0.02, 0.04, 0.08])
    assert max(gaps) == pytest.approx(1.0)
    warnings = [r.getMessage() for r in caplog.records if "accept failed" in r.getMessage()]
    assert 2 <= len(warnings) <= 5  # once per 10 s, with a count
    assert "times since the last report" in warnings[1]


async def test_the_effective_cap_is_logged_at_start(
        service: WireService, http2: str, caplog: pytest.LogCaptureFixture) -> None:
    srv = _server(service, http2, max_connections=50_000_000)
    with caplog.at_level(logging.INFO, logger="wire.server"):
        async with trio.open_nursery() as nursery:
            await nursery.start(srv.serve_tcp, "127.0.0.1", 0)
            nursery.cancel_scope.cancel()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("connection cap")]
    assert len(lines) == 1
    # Lowered from the configured 50,000,000 to what the open-file limit allows.
    assert srv.connection_cap < 50_000_000
    assert lines[0].startswith(f"connection cap {srv.connection_cap} (max_connections 50000000, "
                               "open-file limit ")
