"""Hostile input to the Health service: garbage requests, huge names, watcher churn.

As in ``tests/wire/test_hostile.py``, every test checks the precise answer to the attack and
that a bystander, a well-behaved client on a separate connection to the same server, keeps
getting its Check answered (before, during and after). Memory is judged from the process's
resident set size after ``gc.collect()``, against generous bounds.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from health._health_pb2 import HealthCheckRequest, HealthCheckResponse
from health.service import CHECK_PATH, LIST_PATH, WATCH_PATH, HealthServer
from health.status import ServingStatus
from health.subscriptions import DEFAULT_MAX_WATCHERS_PER_OWNER
from tests.wire.h2client import H2Client, StreamRecord, grpc_frame, open_memory_client
from tests.wire.rawconn import BOUND, RawConn, open_raw, request_frames, rss_bytes, rst_frame
from wire import ServerConfig, StatusCode

SERVING = HealthCheckResponse(status=int(ServingStatus.SERVING)).SerializeToString()
SERVICE_UNKNOWN = HealthCheckResponse(
    status=int(ServingStatus.SERVICE_UNKNOWN)
).SerializeToString()
MIB = 1 << 20


def check_request(service: str) -> bytes:
    return HealthCheckRequest(service=service).SerializeToString()


async def call(client: H2Client, path: str, request: bytes) -> StreamRecord:
    sid = await client.request(path, grpc_frame(request))
    with trio.fail_after(BOUND):
        return await client.wait(sid)


def assert_trailers_only(rec: StreamRecord, code: StatusCode) -> None:
    assert rec.trailers_only, rec
    assert rec.blocks[0].get(":status") == "200"
    assert rec.grpc_status == code, (rec.grpc_status, rec.grpc_message)


class Bystander:
    """A well-behaved client calling Check("") on its own connection."""

    def __init__(self, client: H2Client) -> None:
        self.client = client
        self.ok = 0

    async def check(self) -> None:
        rec = await call(self.client, CHECK_PATH, check_request(""))
        assert rec.reset_code is None, rec
        assert rec.ended, rec
        assert rec.grpc_status == StatusCode.OK
        assert rec.payloads() == [SERVING]
        self.ok += 1

    async def loop(self, interval: float) -> None:
        while True:
            await self.check()
            await trio.sleep(interval)


@asynccontextmanager
async def bystander(hs: HealthServer, interval: float = 0.05) -> AsyncIterator[Bystander]:
    async with open_memory_client(hs.server.serve_stream) as client:
        b = Bystander(client)
        await b.check()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(b.loop, interval)
            yield b
            nursery.cancel_scope.cancel()
        await b.check()
    assert b.ok >= 3


# ---------------------------------------------------------------------------------- garbage


@pytest.mark.parametrize(
    "payload",
    [b"\xff\xff\xff", b"\x0a\x05ab", b"\x0a\x02\xff\xfe"],
    ids=["corrupt", "truncated-field", "bad-utf8"],
)
@pytest.mark.parametrize("path", [CHECK_PATH, WATCH_PATH, LIST_PATH])
async def test_malformed_protobuf_is_internal(
        path: str, payload: bytes, server_config: ServerConfig) -> None:
    hs = HealthServer(config=server_config)
    if path == LIST_PATH and payload == b"\x0a\x02\xff\xfe":
        payload = b"\x0a\x05ab"  # HealthListRequest has no string field to spoil
    async with bystander(hs) as b, open_memory_client(hs.server.serve_stream) as client:
        rec = await call(client, path, payload)
        await b.check()
        # The connection is fine afterwards.
        ok = await call(client, CHECK_PATH, check_request(""))
    assert_trailers_only(rec, StatusCode.INTERNAL)
    assert "cannot parse Health" in (rec.grpc_message or "")
    assert ok.grpc_status == StatusCode.OK
    assert ok.payloads() == [SERVING]
    assert hs.state.watcher_count == 0


# ---------------------------------------------------------------------------------- huge names


async def test_1mib_service_name_check_not_found_watch_invalid_argument(
        server_config: ServerConfig) -> None:
    hs = HealthServer(config=server_config)
    rounds = 32
    huge = "s" * MIB
    request = check_request(huge)
    assert len(request) > MIB
    async with bystander(hs) as b, open_memory_client(hs.server.serve_stream) as client:
        # Warm up (buffers sized for a 1 MiB message) before measuring.
        first_check = await call(client, CHECK_PATH, request)
        first_watch = await call(client, WATCH_PATH, request)
        gc.collect()
        base = rss_bytes()
        for i in range(rounds):
            name = f"{i:08d}" + huge[8:]  # a different name every time
            check = await call(client, CHECK_PATH, check_request(name))
            watch = await call(client, WATCH_PATH, check_request(name))
            assert_trailers_only(check, StatusCode.NOT_FOUND)
            assert_trailers_only(watch, StatusCode.INVALID_ARGUMENT)
        await b.check()
        gc.collect()
        growth = rss_bytes() - base
    assert_trailers_only(first_check, StatusCode.NOT_FOUND)
    assert first_check.grpc_message == "unknown service"
    assert_trailers_only(first_watch, StatusCode.INVALID_ARGUMENT)
    assert first_watch.grpc_message == (
        f"service name is {MIB} bytes of UTF-8; the limit is {hs.state.max_service_name_bytes}"
    )
    # Nothing was kept per call: 64 MiB went in, and no watcher or name stayed behind.
    assert growth < rounds * MIB // 2, f"RSS grew by {growth / MIB:.1f} MiB"
    assert hs.state.watcher_count == 0
    assert hs.state.watched_service_count == 0
    assert len(hs.state) == 1


# ---------------------------------------------------------------------------------- churn


def all_received(raw: RawConn, sids: list[int], expected: bytes) -> bool:
    return all(raw.record(s).data == expected for s in sids)


async def test_memory_bounded_after_10000_watch_streams_opened_and_closed(
        server_config: ServerConfig) -> None:
    hs = HealthServer(config=server_config)
    state = hs.state
    total = 10_000
    per_round = DEFAULT_MAX_WATCHERS_PER_OWNER  # the per-connection watcher cap
    # Two rounds per connection: 200 resets, within the rapid-reset limit of a connection.
    rounds_per_connection = 2
    expected = grpc_frame(SERVICE_UNKNOWN)

    async def churn(connections: int, first_name: int) -> None:
        name = first_name
        for _ in range(connections):
            async with open_raw(hs.server) as raw:
                for _ in range(rounds_per_connection):
                    sids = [raw.new_sid() for _ in range(per_round)]
                    frames = []
                    for sid in sids:
                        # A distinct unknown name per watcher: SERVICE_UNKNOWN, stream kept open.
                        frames.append(request_frames(sid, WATCH_PATH, check_request(f"w{name}")))
                        name += 1
                    await raw.send(*frames)
                    await raw.wait_until(functools.partial(all_received, raw, sids, expected))
                    assert state.watcher_count == per_round
                    await raw.send(*(rst_frame(s) for s in sids))
                    await trio.testing.wait_all_tasks_blocked()
                    assert state.watcher_count == 0  # unregistered as soon as reset
                assert not raw.goaways

    per_connection = per_round * rounds_per_connection
    async with bystander(hs, interval=0.5) as b:
        await churn(1, 0)  # warm up
        gc.collect()
        base = rss_bytes()
        await churn(total // per_connection, per_connection)
        await b.check()
        gc.collect()
        growth = rss_bytes() - base
    assert growth < 50 * MIB, f"RSS grew by {growth / MIB:.1f} MiB"
    # Every watcher was unregistered at once, and no per-name bookkeeping stayed behind.
    assert state.watcher_count == 0
    assert state.watched_service_count == 0
    assert state.watcher_owner_count == 0
    assert len(state) == 1
