"""Hostile input: under attack or garbage the server keeps serving well-behaved clients.

Every test attacks one connection of a ``Server`` and checks two things:

* the precise answer to the attack (GOAWAY code and debug data, RST_STREAM code, grpc-status);
* that a *bystander*, a well-behaved client on a separate connection to the same ``Server``,
  gets its Echo calls answered before, during and after the attack.

The attacker is ``RawConn`` (``rawconn.py``): hand-made frames, and a reader that records every
frame the server sends and counts bytes in both directions. Everything runs over in-memory
streams or loopback; every wait is bounded by ``trio.fail_after`` and no test asserts timing
beyond those generous bounds.
"""

from __future__ import annotations

import functools
import gc
import socket
import struct
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import h2.errors
import pytest
import trio
import trio.testing
from hpack.hpack import encode_integer
from hyperframe.frame import GoAwayFrame, PingFrame, SettingsFrame

import wire.server
from wire import (
    ConnectionInfo,
    ConnectionStats,
    Server,
    ServerCall,
    ServerConfig,
    ServerConnection,
    ServerOptions,
    StatusCode,
    unary_unary,
)
from wire.events import Event

from .h2client import (
    H2Client,
    StreamRecord,
    grpc_frame,
    grpc_request_headers,
    open_h2_client,
    open_memory_client,
)
from .rawconn import (
    BOUND,
    PREFACE,
    GoAway,
    RawConn,
    continuation_frame,
    data_frame,
    headers_frame,
    hpack_block,
    open_raw,
    parse_frames,
    ping_frame,
    request_frames,
    rss_bytes,
    rst_frame,
    settings_frame,
    table_size_update,
    window_update_frame,
)
from .service import ECHO, SLEEP, STREAM_FOREVER, WireService

E = h2.errors.ErrorCodes
NO_ERROR = int(E.NO_ERROR)
PROTOCOL_ERROR = int(E.PROTOCOL_ERROR)
FLOW_CONTROL_ERROR = int(E.FLOW_CONTROL_ERROR)
STREAM_CLOSED = int(E.STREAM_CLOSED)
COMPRESSION_ERROR = int(E.COMPRESSION_ERROR)
ENHANCE_YOUR_CALM = int(E.ENHANCE_YOUR_CALM)

MAX_STREAM_ID = 2**31 - 1
MAX_WINDOW = 2**31 - 1
#: The size of one StreamForever message on the wire (1000 bytes plus the 5-byte prefix).
FOREVER_MESSAGE = 1005


# ---------------------------------------------------------------------------------- bystander


async def unary(client: H2Client, path: str = ECHO, payload: bytes = b"ping",
                headers: Sequence[tuple[bytes, bytes]] = ()) -> StreamRecord:
    sid = await client.request(path, grpc_frame(payload), headers=headers)
    with trio.fail_after(BOUND):
        return await client.wait(sid)


def assert_ok(rec: StreamRecord, payloads: list[bytes]) -> None:
    assert rec.reset_code is None, rec
    assert rec.ended, rec
    assert len(rec.blocks) == 2, rec.blocks
    assert rec.headers.get(":status") == "200"
    assert rec.grpc_status == StatusCode.OK
    assert rec.payloads() == payloads


def assert_trailers_only(rec: StreamRecord, code: StatusCode) -> None:
    assert rec.blocks, rec
    assert len(rec.blocks) == 1, rec
    assert rec.blocks[0].end_stream, rec
    assert not rec.data, rec
    assert rec.blocks[0].get(":status") == "200"
    assert rec.grpc_status == code, (rec.grpc_status, rec.grpc_message)


class Bystander:
    """A well-behaved client on its own connection, calling Echo before, during and after."""

    def __init__(self, client: H2Client, interval: float) -> None:
        self.client = client
        self.interval = interval
        self.ok = 0
        #: The server's ConnectionInfo of this connection (when known).
        self.info: ConnectionInfo | None = None

    async def check(self) -> None:
        """One Echo that must succeed now."""
        payload = b"bystander %d" % self.ok
        rec = await unary(self.client, ECHO, payload)
        assert_ok(rec, [payload])
        self.ok += 1

    async def loop(self) -> None:
        while True:
            await self.check()
            await trio.sleep(self.interval)


@asynccontextmanager
async def bystander(server: Server, *, interval: float = 0.05,
                    stream: trio.abc.Stream | None = None) -> AsyncIterator[Bystander]:
    """A bystander connected before the attack, calling Echo every ``interval`` seconds.

    Exiting checks one last Echo (the server still serves after the attack) and that every
    call succeeded (a failure raises at once from the background loop).
    """
    ctx = open_memory_client(server.serve_stream) if stream is None else open_h2_client(stream)
    async with ctx as client:
        b = Bystander(client, interval)
        await b.check()
        if stream is None:
            [b.info] = server.connections()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(b.loop)
            yield b
            nursery.cancel_scope.cancel()
        await b.check()
    assert b.ok >= 3  # before, at least once during, after


async def send_until_closed(raw: RawConn, b: Bystander, *frames: bytes) -> None:
    """Send ``frames``; the server closes ``raw`` and goes on serving the bystander."""
    await raw.send(*frames)
    await raw.wait_eof()
    await b.check()


def make_server(service: WireService | None = None, *, http2: str,
                extra: Sequence[Any] = (), config: ServerConfig | None = None,
                options: ServerOptions | None = None) -> Server:
    """A server of the test service on the engine ``http2`` (the ``http2`` fixture)."""
    service = service or WireService()
    config = replace(config or ServerConfig(), http2=http2)
    return Server([*service.handlers(), *extra], config=config, options=options)


def attack_requests(service: WireService) -> list[bytes]:
    """The requests the service's handlers saw, the bystander's left out."""
    return [r for r in service.requests if not r.startswith(b"bystander")]


def attacker_stats(server: Server, b: Bystander) -> ConnectionStats:
    """A snapshot of the one connection that is not the bystander's."""
    stats = [s for s in server.connection_stats() if s.info is not b.info]
    assert len(stats) == 1, stats
    return stats[0]


def stats_with(server: Server, sid: int) -> ConnectionStats:
    """A snapshot of the one connection with a call on stream ``sid``."""
    [stats] = [s for s in server.connection_stats() if sid in s.calls]
    return stats


# ================================================================================ 1. rapid reset


class HoldService:
    """A handler that holds its call open and counts how many run at once."""

    PATH = "/test.Hostile/Hold"

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.started = 0

    def handler(self) -> Any:
        return unary_unary(self.PATH, self.hold, bytes, bytes)

    async def hold(self, request: bytes, call: ServerCall) -> bytes:
        self.running += 1
        self.started += 1
        self.peak = max(self.peak, self.running)
        try:
            await trio.sleep_forever()
        finally:
            self.running -= 1
        raise AssertionError("unreachable")


async def test_rapid_reset_goaway_and_handlers_bounded(http2: str) -> None:
    hold = HoldService()
    config = ServerConfig()
    limit = config.max_concurrent_streams
    server = make_server(http2=http2, extra=[hold.handler()], config=config)
    async with bystander(server) as b, open_raw(server) as raw:
        # Phase 1: full requests whose handlers start, all reset and replaced in the same
        # write, twice: 200 resets, exactly the limit, which is still allowed.
        sids = [raw.new_sid() for _ in range(limit)]
        await raw.send(*(request_frames(s, hold.PATH) for s in sids))
        await raw.wait_until(lambda: hold.running == limit)
        for _ in range(2):
            fresh = [raw.new_sid() for _ in range(limit)]
            await raw.send(*(rst_frame(s) for s in sids),
                           *(request_frames(s, hold.PATH) for s in fresh))
            sids = fresh
            await raw.wait_until(lambda: hold.running == limit)
            await trio.testing.wait_all_tasks_blocked()
            assert hold.running == limit
        assert not raw.goaways
        assert not raw.eof.is_set()
        assert hold.peak <= limit
        await b.check()
        # Phase 2: the textbook attack, HEADERS then RST_STREAM at once, in one write.
        burst = []
        for _ in range(50):
            s = raw.new_sid()
            burst += [request_frames(s, hold.PATH), rst_frame(s)]
        await send_until_closed(raw, b, *burst)
    # The 201st reset in the window ends the connection.
    assert raw.goaway.error_code == ENHANCE_YOUR_CALM
    assert raw.goaway.debug == b"too many stream resets"
    # Handlers never ran beyond the stream limit, and every one of them was cancelled.
    assert hold.peak <= limit
    assert hold.running == 0
    # No stream was answered with anything but the GOAWAY (they were all reset by us).
    assert not any(rec.blocks for rec in raw.streams.values())


@pytest.mark.parametrize(
    "kind", ["refused", "http-error", "bad-message", "unknown-method", "window-update"]
)
async def test_reset_in_the_same_read_as_the_request(kind: str, http2: str) -> None:
    # The server answers some requests while still parsing the bytes of one read (refusal,
    # HTTP errors, a bad message, a WINDOW_UPDATE flushing queued data); by then h2 has already
    # processed the client's RST_STREAM that followed in the same read. That must neither crash
    # the connection (nor, through it, the server) nor leave a call behind.
    hold = HoldService()
    config = ServerConfig(max_concurrent_streams=2)
    service = WireService()
    server = make_server(service, http2=http2, extra=[hold.handler()], config=config)
    async with bystander(server) as b, open_raw(server) as raw:
        if kind == "refused":
            held = [raw.new_sid() for _ in range(config.max_concurrent_streams)]
            await raw.send(*(request_frames(s, hold.PATH) for s in held))
            await raw.wait_until(lambda: hold.running == len(held))
        frames: list[bytes] = []
        for _ in range(10):
            s = raw.new_sid()
            if kind == "http-error":
                bad = [(b":method", b"GET"), *grpc_request_headers(ECHO)[1:]]
                frames.append(headers_frame(s, hpack_block(bad)))
            elif kind == "bad-message":
                frames += [request_frames(s, ECHO, None, end_stream=False),
                           data_frame(s, b"\x07\x00\x00\x00\x01x")]
            elif kind == "unknown-method":
                frames.append(request_frames(s, "/test.Wire/Nope"))
            elif kind == "window-update":
                # Handlers first queue data against a zero window; then, in one read, a
                # WINDOW_UPDATE (which flushes the queue) and the reset.
                await raw.send(settings_frame({0x4: 0}),
                               request_frames(s, STREAM_FOREVER, b""))
                await trio.testing.wait_all_tasks_blocked()
                frames.append(window_update_frame(s, 100))
            else:
                frames.append(request_frames(s, hold.PATH))
            frames.append(rst_frame(s))
        await raw.send(*frames)
        await trio.testing.wait_all_tasks_blocked()
        if kind == "window-update":
            await raw.send(settings_frame({0x4: 65535}))
        await b.check()
        stats = attacker_stats(server, b)
        if kind == "refused":
            assert len(stats.calls) == stats.open_streams == len(held)
            await raw.send(*(rst_frame(s) for s in held))
            await raw.wait_until(lambda: hold.running == 0)
        # The connection is fine and forgot every reset call.
        ok_sid = raw.new_sid()
        await raw.send(request_frames(ok_sid, ECHO, b"alive"))
        assert_ok(await raw.wait_closed(ok_sid), [b"alive"])
        stats = attacker_stats(server, b)
        assert not stats.calls
        assert stats.open_streams == 0
        assert not raw.goaways
    if kind == "refused":
        assert hold.running == 0
    assert service.requests.count(b"alive") == 1


# ================================================================================ 2. CONTINUATION


async def test_continuation_flood_of_big_frames_is_cut_at_hard_limit(http2: str) -> None:
    config = ServerConfig()
    hard = config.header_list_hard_limit
    server = make_server(http2=http2, config=config)
    chunk = b"\x00" * config.max_frame_size  # any bytes: the block is never decoded
    async with bystander(server) as b, open_raw(server) as raw:
        sid = raw.new_sid()
        first = hpack_block(grpc_request_headers(ECHO))
        await raw.send(headers_frame(sid, first, end_headers=False))
        sent = len(first)
        for _ in range(64):  # what h2 alone would buffer: 64 x 16 KiB = 1 MiB
            if not await raw.send(continuation_frame(sid, chunk)):
                break
            sent += len(chunk)
            await trio.testing.wait_all_tasks_blocked()
            if raw.goaways:
                break
        await raw.wait_eof()
        await b.check()
    assert raw.goaway.error_code == ENHANCE_YOUR_CALM
    # Cut off as soon as the buffered block passed the hard limit, not after 1 MiB.
    assert hard < sent <= hard + len(chunk)
    assert raw.goaway.last_stream_id == 0
    assert not raw.record(sid).blocks


async def test_continuation_flood_of_empty_frames_is_protocol_error(http2: str) -> None:
    server = make_server(http2=http2)
    async with bystander(server) as b, open_raw(server) as raw:
        sid = raw.new_sid()
        flood = [headers_frame(sid, hpack_block(grpc_request_headers(ECHO)), end_headers=False)]
        flood += [continuation_frame(sid, b"")] * 10_000
        await send_until_closed(raw, b, *flood)
    # h2 allows 64 CONTINUATION frames per block.
    assert raw.goaway.error_code == PROTOCOL_ERROR
    assert not raw.record(sid).blocks
    # One GOAWAY for ten thousand frames: nothing was answered frame by frame.
    assert raw.bytes_in < 200


async def test_header_list_between_soft_and_hard_limit_refuses_only_the_stream(http2: str) -> None:
    service = WireService()
    server = make_server(service, http2=http2)
    async with bystander(server) as b, open_raw(server) as raw:
        sid = raw.new_sid()
        block = hpack_block([*grpc_request_headers(ECHO), (b"x-pad", b"p" * 40_000)])
        assert 16 * 1024 < len(block) < 64 * 1024
        pieces = [block[i : i + 10_000] for i in range(0, len(block), 10_000)]
        frames = [headers_frame(sid, pieces[0], end_headers=False)]
        frames += [continuation_frame(sid, p, end_headers=i == len(pieces) - 1)
                   for i, p in enumerate(pieces[1:], 1)]
        await raw.send(*frames, data_frame(sid, grpc_frame(b"big"), end_stream=True))
        rec = await raw.wait_closed(sid)
        await b.check()
        # The connection lives on: an ordinary call on it succeeds.
        ok_sid = raw.new_sid()
        await raw.send(request_frames(ok_sid, ECHO, b"after"))
        ok = await raw.wait_closed(ok_sid)
        assert not raw.goaways
    assert_trailers_only(rec, StatusCode.RESOURCE_EXHAUSTED)
    assert "exceeds the limit of 16384" in (rec.grpc_message or "")
    assert_ok(ok, [b"after"])
    assert b"big" not in service.requests


# ================================================================================ 3. HPACK


async def test_hpack_table_size_update_above_our_setting_is_compression_error(http2: str) -> None:
    server = make_server(http2=http2)
    async with bystander(server) as b, open_raw(server) as raw:
        sid = raw.new_sid()
        block = table_size_update(8192) + hpack_block(grpc_request_headers(ECHO))
        await send_until_closed(raw, b, headers_frame(sid, block, end_stream=True))
    assert raw.goaway.error_code == COMPRESSION_ERROR
    assert not raw.record(sid).blocks


async def test_hpack_table_size_update_within_our_setting_is_fine(http2: str) -> None:
    server = make_server(http2=http2)
    async with open_raw(server) as raw:
        sid = raw.new_sid()
        block = table_size_update(4096) + hpack_block(grpc_request_headers(ECHO))
        await raw.send(headers_frame(sid, block),
                       data_frame(sid, grpc_frame(b"sized"), end_stream=True))
        rec = await raw.wait_closed(sid)
    assert_ok(rec, [b"sized"])


async def test_hpack_bomb_decoded_size_is_bounded(http2: str) -> None:
    # One 4000-byte header inserted into the dynamic table, then referenced by its one-byte
    # index: a 3 KB block that would decode to 12 MB.
    config = ServerConfig()
    server = make_server(http2=http2, config=config)
    value = b"v" * 4000
    insert = b"\x40" + encode_integer(5, 7) + b"x-big" + encode_integer(len(value), 7) + value
    refs = 3000
    block = hpack_block(grpc_request_headers(ECHO)) + insert + bytes([0x80 | 62]) * refs
    assert (4000 + 5 + 32) * refs > 100 * config.header_list_hard_limit
    async with bystander(server) as b, open_raw(server) as raw:
        sid = raw.new_sid()
        pieces = [block[i : i + 16384] for i in range(0, len(block), 16384)]
        frames = [headers_frame(sid, pieces[0], end_stream=True, end_headers=len(pieces) == 1)]
        frames += [continuation_frame(sid, p, end_headers=i == len(pieces) - 1)
                   for i, p in enumerate(pieces[1:], 1)]
        await send_until_closed(raw, b, *frames)
    assert raw.goaway.error_code == ENHANCE_YOUR_CALM
    assert not raw.record(sid).blocks


async def test_hpack_small_bomb_between_limits_refuses_only_the_stream(http2: str) -> None:
    # Decoded between the soft (16 KiB) and hard (64 KiB) limits from a tiny block: the
    # stream is refused with a status, the connection (and its HPACK context) lives on.
    server = make_server(http2=http2)
    value = b"v" * 4000
    insert = b"\x40" + encode_integer(5, 7) + b"x-big" + encode_integer(len(value), 7) + value
    async with bystander(server) as b, open_raw(server) as raw:
        sid = raw.new_sid()
        block = hpack_block(grpc_request_headers(ECHO)) + insert + bytes([0x80 | 62]) * 8
        await raw.send(headers_frame(sid, block),
                       data_frame(sid, grpc_frame(b"x"), end_stream=True))
        rec = await raw.wait_closed(sid)
        await b.check()
        # The entry is still in the table: a normal request referencing it works.
        ok_sid = raw.new_sid()
        block = hpack_block(grpc_request_headers(ECHO)) + bytes([0x80 | 62])
        await raw.send(headers_frame(ok_sid, block),
                       data_frame(ok_sid, grpc_frame(b"ref"), end_stream=True))
        ok = await raw.wait_closed(ok_sid)
    assert_trailers_only(rec, StatusCode.RESOURCE_EXHAUSTED)
    assert_ok(ok, [b"ref"])


# ================================================================================ 4. floods


async def test_ping_flood_too_many_pings(http2: str) -> None:
    config = ServerConfig()
    server = make_server(http2=http2, config=config)
    async with bystander(server) as b:
        # Pings one at a time: the first is free, then max_ping_strikes strikes are
        # tolerated, and the next one ends the connection.
        async with open_raw(server) as raw:
            for i in range(config.max_ping_strikes + 2):
                assert not raw.goaways
                await raw.send(ping_frame(b"%08d" % i))
                await raw.wait_until(functools.partial(_acked_or_gone, raw, i + 1))
            await raw.wait_eof()
            await b.check()
        assert raw.goaway == GoAway(ENHANCE_YOUR_CALM, 0, b"too_many_pings")
        assert isinstance(raw.frames[-1], GoAwayFrame)
        # A thousand in one write: answered at most ping for ping (no amplification), then
        # the same GOAWAY.
        async with open_raw(server) as raw:
            before_out, before_in = raw.bytes_out, raw.bytes_in
            await send_until_closed(raw, b, *(ping_frame(b"%08d" % i) for i in range(1000)))
        assert raw.goaway == GoAway(ENHANCE_YOUR_CALM, 0, b"too_many_pings")
        assert isinstance(raw.frames[-1], GoAwayFrame)
        assert raw.bytes_in - before_in <= raw.bytes_out - before_out + 100


def _acked_or_gone(raw: RawConn, pings: int) -> bool:
    return bool(raw.goaways) or sum(isinstance(f, PingFrame) for f in raw.frames) == pings


async def test_pings_spaced_out_are_fine(autojump_clock: trio.testing.MockClock,
                                         http2: str) -> None:
    config = ServerConfig(clock=trio.current_time)
    server = make_server(http2=http2, config=config, options=ServerOptions(idle_timeout=10_000))
    async with open_raw(server) as raw:
        for i in range(10):
            await raw.send(ping_frame(b"%08d" % i))
            await trio.sleep(config.keepalive_min_time)
        await raw.wait_until(lambda: sum(isinstance(f, PingFrame) for f in raw.frames) == 10)
        assert not raw.goaways


async def test_settings_flood(http2: str) -> None:
    config = ServerConfig()
    limit = config.max_settings_frames
    server = make_server(http2=http2, config=config)
    async with bystander(server) as b:
        # Exactly the limit in the window (the preface's SETTINGS included) is fine; one more
        # is not.
        async with open_raw(server) as raw:
            await raw.send(*(settings_frame({0x4: 65535}) for _ in range(limit - 1)))
            await raw.wait_until(lambda: _settings_acks(raw) == limit)
            await trio.testing.wait_all_tasks_blocked()
            assert not raw.goaways
            await send_until_closed(raw, b, settings_frame({0x4: 65535}))
        assert raw.goaway == GoAway(ENHANCE_YOUR_CALM, 0, b"too many SETTINGS frames")
        assert isinstance(raw.frames[-1], GoAwayFrame)
        # A thousand in one write: at most one ACK each (no amplification), then the GOAWAY.
        async with open_raw(server) as raw:
            before_out, before_in = raw.bytes_out, raw.bytes_in
            await send_until_closed(raw, b, *(settings_frame({0x4: 65535}) for _ in range(1000)))
        assert raw.goaway == GoAway(ENHANCE_YOUR_CALM, 0, b"too many SETTINGS frames")
        assert isinstance(raw.frames[-1], GoAwayFrame)
        assert _settings_acks(raw) <= 1001
        assert raw.bytes_in - before_in < raw.bytes_out - before_out


def _settings_acks(raw: RawConn) -> int:
    return sum(isinstance(f, SettingsFrame) and "ACK" in f.flags for f in raw.frames)


async def test_empty_data_flood(http2: str) -> None:
    config = ServerConfig()
    service = WireService()
    server = make_server(service, http2=http2, config=config)
    async with bystander(server) as b, open_raw(server) as raw:
        sid = raw.new_sid()
        await raw.send(request_frames(sid, SLEEP, None, end_stream=False))
        # The limit is tolerated (and never answered)...
        await raw.send(*([data_frame(sid)] * config.max_empty_data_frames))
        await trio.testing.wait_all_tasks_blocked()
        assert not raw.goaways
        assert not raw.record(sid).closed.is_set()
        quiet = raw.bytes_in
        # ... one more is not.
        await send_until_closed(raw, b, *([data_frame(sid)] * 100))
    assert raw.goaway == GoAway(ENHANCE_YOUR_CALM, sid, b"too many empty DATA frames")
    assert quiet < 200  # SETTINGS, WINDOW_UPDATE, SETTINGS ACK: no per-frame answer


async def test_window_update_flood_then_overflow(http2: str) -> None:
    service = WireService()
    server = make_server(service, http2=http2)
    async with bystander(server) as b, open_raw(server) as raw:
        await raw.wait_until(lambda: bool(raw.frames))
        # A stream blocked on flow control: the client opened no window for it.
        await raw.send(settings_frame({0x4: 0}))
        sid = raw.new_sid()
        await raw.send(request_frames(sid, STREAM_FOREVER, b""))
        with trio.fail_after(BOUND):
            await service.started.wait()
        await trio.testing.wait_all_tasks_blocked()
        before_in, before_out = raw.bytes_in, raw.bytes_out
        # 20,000 one-byte increments on the connection: tolerated, and never answered.
        await raw.send(*([window_update_frame(0, 1)] * 20_000))
        await trio.testing.wait_all_tasks_blocked()
        assert not raw.goaways
        assert not raw.eof.is_set()
        assert raw.bytes_in == before_in
        await b.check()
        # One-byte increments on the stream: each lets one byte out, never more than came in.
        await raw.send(*([window_update_frame(sid, 1)] * 2_000))
        await raw.wait_until(lambda: len(raw.record(sid).data) >= 2_000)
        await trio.testing.wait_all_tasks_blocked()
        assert len(raw.record(sid).data) == 2_000
        assert raw.bytes_in - before_in < raw.bytes_out - before_out
        # A stream window past 2^31-1: stream error FLOW_CONTROL_ERROR (RFC 9113 6.9.1). The
        # first increment takes the window to exactly 2^31-1, which is allowed, and the server
        # at once sends as much as the connection window allows. After that an increment of 1
        # no longer overflows (the window shrank by what was sent), so the second increment is
        # the maximum again.
        await raw.send(window_update_frame(sid, MAX_WINDOW), window_update_frame(sid, MAX_WINDOW))
        rec = await raw.wait_closed(sid)
        assert rec.reset_code == FLOW_CONTROL_ERROR
        with trio.fail_after(BOUND):
            await service.cancelled.wait()
        assert not raw.goaways
        # The connection window past 2^31-1: connection error FLOW_CONTROL_ERROR.
        await send_until_closed(raw, b, window_update_frame(0, MAX_WINDOW))
    assert raw.goaway.error_code == FLOW_CONTROL_ERROR


# ================================================================================ 5. slow readers


async def test_zero_window_reader_output_bounded(http2: str) -> None:
    service = WireService()
    options = ServerOptions()
    server = make_server(service, http2=http2, options=options)
    async with bystander(server) as b, open_raw(server, settings={0x4: 0}) as raw:
        sid = raw.new_sid()
        await raw.send(request_frames(sid, STREAM_FOREVER, b""))
        with trio.fail_after(BOUND):
            await service.started.wait()
        for _ in range(5):  # the handler stays parked however often we look
            await trio.testing.wait_all_tasks_blocked()
            await b.check()
        stats = stats_with(server, sid)
        queued = stats.pending_output[sid]
        assert 0 < queued <= options.stream_high_water + FOREVER_MESSAGE
        assert service.sent <= (options.stream_high_water + FOREVER_MESSAGE) // FOREVER_MESSAGE
        assert sid in stats.held  # the handler waits in send(), it is not producing
        assert not raw.record(sid).data  # a zero window lets nothing out
        await raw.send(rst_frame(sid))
        with trio.fail_after(BOUND):
            await service.cancelled.wait()
        await b.check()
        assert not raw.goaways


async def test_many_zero_window_streams_bounded_per_connection(http2: str) -> None:
    # Every stream of the connection parked: the total queued is streams x high water.
    options = ServerOptions(stream_high_water=16 * 1024)
    service = WireService()
    server = make_server(service, http2=http2, options=options)
    async with bystander(server) as b, open_raw(server, settings={0x4: 0}) as raw:
        sids = [raw.new_sid() for _ in range(50)]
        await raw.send(*(request_frames(s, STREAM_FOREVER, b"") for s in sids))
        await trio.testing.wait_all_tasks_blocked()
        await b.check()
        stats = stats_with(server, sids[0])
        per_stream = options.stream_high_water + FOREVER_MESSAGE
        assert all(stats.pending_output[s] <= per_stream for s in sids)
        assert sum(stats.pending_output[s] for s in sids) <= len(sids) * per_stream
        assert stats.held == set(sids)


def serve_lockstep(server: Server, nursery: trio.Nursery) -> tuple[RawConn, trio.Event]:
    """A RawConn to ``server`` over lockstep streams, served in ``nursery``; the event is set
    once the server is done with the connection."""
    server_end, client_end = trio.testing.lockstep_stream_pair()
    served = trio.Event()

    async def serve() -> None:
        await server.serve_stream(server_end)
        served.set()

    nursery.start_soon(serve)
    return RawConn(client_end), served


async def test_client_that_stops_reading_is_disconnected_after_write_timeout(
    autojump_clock: trio.testing.MockClock, http2: str) -> None:
    # Lockstep streams: a write completes only when the peer reads it, like a full socket.
    options = ServerOptions(write_timeout=3.0, max_write_backlog=256 * 1024)
    service = WireService()
    server = make_server(service, http2=http2, options=options)
    async with bystander(server, interval=0.5) as b, trio.open_nursery() as nursery:
        raw, served = serve_lockstep(server, nursery)
        # Open every window wide, ask for an endless stream, read a little, then stop.
        await raw.send_preface(settings_frame({0x4: MAX_WINDOW}),
                               window_update_frame(0, MAX_WINDOW - 65535))
        sid = raw.new_sid()
        await raw.send(request_frames(sid, STREAM_FOREVER, b""))
        await _read_until(raw, lambda: len(raw.record(sid).data) > 50_000)
        stopped = trio.current_time()
        sent_when_stopped = service.sent
        info = stats_with(server, sid).info
        await b.check()
        with trio.fail_after(options.write_timeout + BOUND):
            await served.wait()
        elapsed = trio.current_time() - stopped
        with trio.fail_after(BOUND):
            await service.cancelled.wait()
        await b.check()
        assert info not in list(server.connections())
    assert elapsed >= options.write_timeout  # virtual time
    # While the writer was stuck the handler was held back: what it produced meanwhile is
    # bounded by the write backlog (the chunk being written plus what waits behind it).
    produced = (service.sent - sent_when_stopped) * FOREVER_MESSAGE
    assert produced <= 2 * options.max_write_backlog + options.stream_high_water + 65536


async def _read_until(raw: RawConn, done: Callable[[], bool]) -> None:
    """Read (and answer SETTINGS) until ``done()``, then stop reading for good."""
    with trio.fail_after(BOUND):
        while not done():
            assert await raw.receive_once(), "connection closed early"


async def test_request_flood_from_a_client_that_never_reads_is_throttled(
    autojump_clock: trio.testing.MockClock, http2: str) -> None:
    # Requests answered at once from a client that never reads: the server stops reading it
    # once its output is backed up, rather than answering into an ever-growing buffer, and
    # drops it after the write timeout. Observed from outside: how many requests it served.
    options = ServerOptions(write_timeout=3.0, max_write_backlog=64 * 1024)
    service = WireService()
    server = make_server(service, http2=http2, options=options)
    requests_sent = 0

    async def flood(raw: RawConn) -> None:
        nonlocal requests_sent
        for _ in range(200):
            batch = [request_frames(raw.new_sid(), ECHO, b"flood") for _ in range(100)]
            if not await raw.send(*batch):
                return
            requests_sent += len(batch)

    async with bystander(server, interval=0.5) as b, trio.open_nursery() as nursery:
        raw, served = serve_lockstep(server, nursery)
        await raw.send(PREFACE, settings_frame())
        nursery.start_soon(flood, raw)
        with trio.fail_after(options.write_timeout + BOUND):
            await served.wait()
        await b.check()
    # Every answer is at least its three frame headers (HEADERS, DATA, trailers: 27 bytes),
    # and a lockstep peer that never reads takes none of them: what the server answered is
    # what it held, at most one read's answers on top of the backlog limit.
    answered = len(attack_requests(service))
    per_read = options.read_size // len(request_frames(1, ECHO, b"flood")) + 1
    assert 0 < answered <= options.max_write_backlog // 27 + per_read, answered
    assert requests_sent < 20_000  # the flood was cut short: the server stopped reading it


async def test_one_connection_failing_does_not_take_down_the_server(
    monkeypatch: pytest.MonkeyPatch, http2: str) -> None:
    # Defence in depth: whatever a connection's bytes make go wrong stays in that connection.
    class Fragile(ServerConnection):
        def receive_data(self, data: bytes) -> list[Event]:
            if b"x-crash-me" in data:
                raise RuntimeError("a bug reached by this connection's bytes")
            return super().receive_data(data)

    monkeypatch.setattr(wire.server, "ServerConnection", Fragile)
    server = make_server(http2=http2)
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
        good = await trio.open_tcp_stream("127.0.0.1", port)
        async with bystander(server, stream=good) as b:
            bad = await trio.open_tcp_stream("127.0.0.1", port)
            async with open_h2_client(bad) as client:
                await client.request(ECHO, grpc_frame(b"x"), headers=[(b"x-crash-me", b"1")])
                with trio.fail_after(BOUND):
                    await client.eof.wait()
            await b.check()
            # The listener still accepts.
            again = await trio.open_tcp_stream("127.0.0.1", port)
            async with open_h2_client(again) as client:
                await Bystander(client, 0).check()
        with trio.fail_after(BOUND):
            await server.shutdown(grace=1)


# ================================================================================ 6. connections


async def test_preface_timeout(autojump_clock: trio.testing.MockClock, http2: str) -> None:
    options = ServerOptions(preface_timeout=5.0)
    server = make_server(http2=http2, options=options)
    async with bystander(server, interval=0.5) as b, open_raw(server, handshake=False) as raw:
        start = trio.current_time()
        await raw.wait_eof(options.preface_timeout + BOUND)
        elapsed = trio.current_time() - start
        await b.check()
    assert elapsed >= options.preface_timeout  # virtual time
    assert raw.goaway == GoAway(PROTOCOL_ERROR, 0, b"preface timeout")


async def test_partial_preface_then_silence_times_out(
    autojump_clock: trio.testing.MockClock, http2: str) -> None:
    options = ServerOptions(preface_timeout=5.0)
    server = make_server(http2=http2, options=options)
    async with bystander(server, interval=0.5) as b, open_raw(server, handshake=False) as raw:
        await raw.send(PREFACE[:10])
        await raw.wait_eof(options.preface_timeout + BOUND)
        await b.check()
    assert raw.goaway.error_code == PROTOCOL_ERROR


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS ClientHello
        bytes(range(256)) * 64,
        PREFACE[:-1] + b"X" + settings_frame(),
    ],
    ids=["http1", "tls", "binary", "almost-preface"],
)
async def test_garbage_instead_of_preface(garbage: bytes, http2: str) -> None:
    server = make_server(http2=http2)
    async with bystander(server) as b, open_raw(server, handshake=False) as raw:
        await send_until_closed(raw, b, garbage)
    # RFC 9113 3.4: a connection error; the GOAWAY (which the RFC makes optional here) says why.
    assert raw.goaway.error_code == PROTOCOL_ERROR
    assert b"preamble" in raw.goaway.debug
    assert raw.bytes_in < 200


async def test_idle_timeout(autojump_clock: trio.testing.MockClock, http2: str) -> None:
    options = ServerOptions(idle_timeout=7.0)
    server = make_server(http2=http2, options=options)
    async with bystander(server, interval=0.5) as b, open_raw(server) as raw:
        sid = raw.new_sid()
        await raw.send(request_frames(sid, ECHO, b"once"))
        assert_ok(await raw.wait_closed(sid), [b"once"])
        idle_from = trio.current_time()
        await raw.wait_eof(options.idle_timeout + BOUND)
        elapsed = trio.current_time() - idle_from
        await b.check()
    assert elapsed >= options.idle_timeout  # virtual time; the bystander was never idle
    assert raw.goaway == GoAway(NO_ERROR, sid, b"idle timeout")


async def _raw_tcp(port: int, *, send_preface: bool) -> tuple[bytes, float]:
    """Connect, optionally send a preface, read to EOF; return the bytes and the time taken."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    start = trio.current_time()
    received = bytearray()
    try:
        if send_preface:
            await stream.send_all(PREFACE + settings_frame())
        with trio.fail_after(BOUND):
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
                received += chunk
    finally:
        await stream.aclose()
    return bytes(received), trio.current_time() - start


async def test_max_connections(http2: str) -> None:
    n = 3
    server = make_server(http2=http2, options=ServerOptions(max_connections=n))
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
        async with trio.open_nursery() as clients:
            # Hold n connections open, each proven served (and so counted).
            opened: list[Bystander] = []
            ready = trio.Event()
            done = trio.Event()

            async def hold() -> None:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                async with open_h2_client(stream) as client:
                    b = Bystander(client, 0)
                    await b.check()
                    # A call left open: only connections without calls are evicted at the cap.
                    sid = client.new_stream()
                    await client.send_headers(sid, grpc_request_headers(SLEEP))
                    await client.send_data(sid, grpc_frame(b""), end_stream=True)
                    opened.append(b)
                    if len(opened) == n:
                        ready.set()
                    await done.wait()
                    await b.check()

            for _ in range(n):
                clients.start_soon(hold)
            with trio.fail_after(BOUND):
                await ready.wait()
            # Over the limit, with or without a preface: told why, then closed.
            for send_preface in (False, True, True):
                data, _ = await _raw_tcp(port, send_preface=send_preface)
                frames = parse_frames(data)
                goaways = [f for f in frames if isinstance(f, GoAwayFrame)]
                assert len(goaways) == 1, frames
                assert goaways[0].error_code == ENHANCE_YOUR_CALM
                assert goaways[0].additional_data == b"too many connections"
                assert goaways[0].last_stream_id == 0
            # The n connections kept working all along.
            for b in opened:
                await b.check()
            done.set()
        # Once they are gone (the server has seen them close), new connections are served.
        with trio.fail_after(BOUND):
            await server.wait_no_connections()
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with open_h2_client(stream) as client:
            await Bystander(client, 0).check()
        with trio.fail_after(BOUND):
            await server.shutdown(grace=1)


# ================================================================================ 7. messages


async def test_4gib_length_prefix_is_resource_exhausted_from_prefix_alone(http2: str) -> None:
    service = WireService()
    server = make_server(service, http2=http2)
    async with bystander(server) as b, open_raw(server) as raw:
        sid = raw.new_sid()
        block = hpack_block(grpc_request_headers(ECHO))
        await raw.send(headers_frame(sid, block), data_frame(sid, b"\x00\xff\xff\xff\xff"))
        rec = await raw.wait_closed(sid)
        await raw.wait_until(lambda: rec.reset_code is not None)
        await b.check()
    assert_trailers_only(rec, StatusCode.RESOURCE_EXHAUSTED)
    assert rec.grpc_message == f"received message larger than max ({2**32 - 1} vs. {4 << 20})"
    # We never ended our side: the server stops the upload with RST_STREAM NO_ERROR.
    assert rec.reset_code == NO_ERROR
    assert attack_requests(service) == []


async def test_prefix_longer_than_data_then_end_stream_is_internal(http2: str) -> None:
    service = WireService()
    server = make_server(service, http2=http2)
    async with bystander(server) as b, open_raw(server) as raw:
        sid = raw.new_sid()
        block = hpack_block(grpc_request_headers(ECHO))
        await raw.send(headers_frame(sid, block),
                       data_frame(sid, struct.pack(">BI", 0, 1000) + b"short", end_stream=True))
        rec = await raw.wait_closed(sid)
        await b.check()
    assert_trailers_only(rec, StatusCode.INTERNAL)
    assert rec.grpc_message == "stream ended inside a message (received 5 of 1000 bytes)"
    assert attack_requests(service) == []


async def test_compressed_flag_without_encoding_is_internal(http2: str) -> None:
    service = WireService()
    server = make_server(service, http2=http2)
    async with bystander(server) as b, open_raw(server) as raw:
        sid = raw.new_sid()
        await raw.send(request_frames(sid, ECHO, None, end_stream=False),
                       data_frame(sid, grpc_frame(b"zz", compressed=True), end_stream=True))
        rec = await raw.wait_closed(sid)
        await b.check()
    assert_trailers_only(rec, StatusCode.INTERNAL)
    assert "grpc-encoding" in (rec.grpc_message or "")
    assert attack_requests(service) == []


# ================================================================================ 8. stream ids


async def test_jump_to_max_stream_id_then_lower_id_is_protocol_error(http2: str) -> None:
    server = make_server(http2=http2)
    async with bystander(server) as b, open_raw(server) as raw:
        await raw.send(request_frames(MAX_STREAM_ID, ECHO, b"max"))
        top = await raw.wait_closed(MAX_STREAM_ID)
        assert_ok(top, [b"max"])
        await b.check()
        await send_until_closed(raw, b, request_frames(3, ECHO, b"lower"))
    assert raw.goaway.error_code == PROTOCOL_ERROR
    assert raw.goaway.last_stream_id == MAX_STREAM_ID
    assert not raw.record(3).blocks


async def test_reuse_of_a_closed_stream_id_is_a_connection_error(http2: str) -> None:
    server = make_server(http2=http2)
    async with bystander(server) as b, open_raw(server) as raw:
        await raw.send(request_frames(1, ECHO, b"first"))
        first = await raw.wait_closed(1)
        await raw.send(request_frames(3, ECHO, b"second"))
        await raw.wait_closed(3)
        await send_until_closed(raw, b, request_frames(1, ECHO, b"again"))
    assert_ok(first, [b"first"])
    # RFC 9113 5.1: frames after END_STREAM both ways are a connection error STREAM_CLOSED.
    assert raw.goaway.error_code == STREAM_CLOSED
    assert raw.goaway.last_stream_id == 3
    assert len(raw.record(1).blocks) == 2  # nothing more was answered on it


async def test_reuse_of_an_id_never_opened_below_the_highest_is_protocol_error(http2: str) -> None:
    server = make_server(http2=http2)
    async with bystander(server) as b, open_raw(server) as raw:
        await raw.send(request_frames(5, ECHO, b"five"))
        await raw.wait_closed(5)
        await send_until_closed(raw, b, request_frames(3, ECHO, b"three"))
    assert raw.goaway.error_code == PROTOCOL_ERROR


async def test_frames_on_reset_streams_are_not_amplified(http2: str) -> None:
    service = WireService()
    server = make_server(service, http2=http2)
    async with bystander(server) as b, open_raw(server) as raw:
        # Streams the client reset itself, and a stream the server reset (trailers sent
        # before the client ended its side: RST_STREAM NO_ERROR).
        client_reset = [raw.new_sid() for _ in range(20)]
        for s in client_reset:
            await raw.send(request_frames(s, SLEEP, None, end_stream=False), rst_frame(s))
        server_reset = raw.new_sid()
        await raw.send(request_frames(server_reset, "/test.Wire/Nope", None, end_stream=False))
        rec = await raw.wait_closed(server_reset)
        await raw.wait_until(lambda: raw.rst_count[server_reset] == 1)
        assert_trailers_only(rec, StatusCode.UNIMPLEMENTED)
        await trio.testing.wait_all_tasks_blocked()
        before_in, before_out = raw.bytes_in, raw.bytes_out
        before_rst = Counter(raw.rst_count)
        # Then a flood of frames on all of them: DATA (empty and not), HEADERS, WINDOW_UPDATE.
        flood: list[bytes] = []
        for s in [*client_reset, server_reset]:
            for i in range(50):
                flood += [data_frame(s), data_frame(s, b"x" * (i % 7)),
                          window_update_frame(s, 1)]
            flood.append(headers_frame(s, hpack_block([(b"x-trailer", b"1")]), end_stream=True))
        await raw.send(*flood)
        await trio.testing.wait_all_tasks_blocked()
        # The connection survives and still serves.
        ok_sid = raw.new_sid()
        await raw.send(request_frames(ok_sid, ECHO, b"still here"))
        ok = await raw.wait_closed(ok_sid)
        await b.check()
        answered_in = raw.bytes_in - before_in
        answered_out = raw.bytes_out - before_out
        new_rst = raw.rst_count - before_rst
    assert_ok(ok, [b"still here"])
    # RFC 9113 5.1 and 5.4.2: a stream the client reset gets one RST_STREAM(STREAM_CLOSED) for
    # the whole flood, not one per frame; frames on a stream we reset are ignored.
    assert new_rst == Counter(client_reset), new_rst
    assert all(raw.record(s).reset_code == STREAM_CLOSED for s in client_reset)
    # Far fewer bytes out than in: a connection WINDOW_UPDATE for the DATA, and those resets.
    assert answered_in < answered_out // 10, (answered_in, answered_out)


# ================================================================================ 9. memory


async def test_memory_bounded_after_10000_open_and_reset_streams(http2: str) -> None:
    hold = HoldService()
    server = make_server(http2=http2, extra=[hold.handler()])
    per_connection = 200  # the reset limit of one connection's window: never crossed
    total = 10_000
    gc.collect()
    async with bystander(server, interval=0.5) as b:
        # Warm up (imports, caches, the first connection's buffers) before measuring.
        async with open_raw(server) as raw:
            s = raw.new_sid()
            await raw.send(request_frames(s, hold.PATH), rst_frame(s))
        gc.collect()
        base = rss_bytes()
        for _ in range(total // per_connection):
            async with open_raw(server) as raw:
                frames: list[bytes] = []
                for _ in range(per_connection):
                    s = raw.new_sid()
                    frames += [request_frames(s, hold.PATH), rst_frame(s)]
                await raw.send(*frames)
                # Prove the server processed the lot: one more call answered after it.
                s = raw.new_sid()
                await raw.send(request_frames(s, ECHO, b"after"))
                assert_ok(await raw.wait_closed(s), [b"after"])
                assert not raw.goaways
        gc.collect()
        growth = rss_bytes() - base
        await b.check()
    assert growth < 50 << 20, f"RSS grew by {growth / (1 << 20):.1f} MiB"
    assert hold.running == 0
    assert all(not s.calls for s in server.connection_stats())


async def test_memory_bounded_after_10000_resets_on_one_connection_with_raised_limit(
        http2: str) -> None:
    hold = HoldService()
    total = 10_000
    server = make_server(http2=http2, extra=[hold.handler()],
                         config=ServerConfig(max_client_resets=total + 1))
    gc.collect()
    async with bystander(server, interval=0.5) as b:
        others = set(server.connections())
        async with open_raw(server) as raw:
            s = raw.new_sid()
            await raw.send(request_frames(s, hold.PATH), rst_frame(s))
            await raw.wait_until(lambda: server.connection_count > len(others))
            [info] = set(server.connections()) - others
            gc.collect()
            base = rss_bytes()
            limit = server.config.max_concurrent_streams
            for _ in range(total // limit):
                # Each handler starts (a task, a cancel scope, a call) before its reset.
                sids = [raw.new_sid() for _ in range(limit)]
                await raw.send(*(request_frames(s, hold.PATH) for s in sids))
                await trio.testing.wait_all_tasks_blocked()
                assert hold.running == limit
                await raw.send(*(rst_frame(s) for s in sids))
                await trio.testing.wait_all_tasks_blocked()
                assert hold.running == 0
            s = raw.new_sid()
            await raw.send(request_frames(s, ECHO, b"after"))
            assert_ok(await raw.wait_closed(s), [b"after"])
            gc.collect()
            growth = rss_bytes() - base
            await b.check()
            assert not raw.goaways
            [stats] = [s for s in server.connection_stats() if s.info is info]
            assert stats.open_streams == 0
            assert not stats.calls
    assert growth < 50 << 20, f"RSS grew by {growth / (1 << 20):.1f} MiB"
    assert hold.started == total
    assert hold.running == 0


# ================================================================================ loopback


async def test_attack_over_loopback_tcp_bystander_unaffected(http2: str) -> None:
    # The same rapid-reset attack through real sockets, with a TCP bystander.
    server = make_server(http2=http2)
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
        good = await trio.open_tcp_stream("127.0.0.1", port)
        async with bystander(server, stream=good) as b:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw = RawConn(stream)
            async with trio.open_nursery() as n:
                n.start_soon(raw.read_loop)
                await raw.handshake()
                frames: list[bytes] = []
                for _ in range(300):
                    s = raw.new_sid()
                    frames += [request_frames(s, SLEEP), rst_frame(s)]
                await send_until_closed(raw, b, *frames)
            await stream.aclose()
        assert raw.goaway.error_code == ENHANCE_YOUR_CALM
        with trio.fail_after(BOUND):
            await server.shutdown(grace=1)
