"""Health Watch streams over Trio's revealing test streams (lockstep and one byte at a time).

The push-driven Watch (no task per stream, back-pressure through ``on_writable``) is where
hidden buffering would show: over ``lockstep_stream_pair`` every server write waits for the
client to read it, and over a one-byte pump every frame arrives in pieces. The client side is
``HealthClient`` on a channel whose connector hands it the other end.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from health import HealthServer, ServingStatus
from health.client import HealthClient
from tests.streams import PAIRS, StreamPair
from wire import Channel, RpcError, ServerConfig, StatusCode, open_channel

SERVING = ServingStatus.SERVING
NOT_SERVING = ServingStatus.NOT_SERVING

LIMIT = 20.0


@asynccontextmanager
async def connected(health: HealthServer, pair: StreamPair) -> AsyncIterator[Channel]:
    """A channel to ``health`` over ``pair()`` streams."""
    async with trio.open_nursery() as nursery:

        async def connect() -> trio.abc.Stream:
            client_end, server_end = pair()
            nursery.start_soon(health.server.serve_stream, server_end)
            return client_end

        async with open_channel("memory:1", connector=connect,
                                connect_timeout=LIMIT) as channel:
            yield channel
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("pair", PAIRS)
async def test_watch_ends_on_the_latest_status_after_a_burst(
        pair: StreamPair, server_config: ServerConfig) -> None:
    health = HealthServer(config=server_config)
    health.set("svc", SERVING)
    seen: list[ServingStatus] = []
    with trio.fail_after(LIMIT):
        async with connected(health, pair) as channel, \
                HealthClient(channel).watch("svc") as stream:
            seen.append(await stream.__anext__())
            # Many changes while the client is not reading: latest wins, nothing queues.
            for i in range(500):
                health.set("svc", NOT_SERVING if i % 2 == 0 else SERVING)
            health.set("svc", NOT_SERVING)
            async for status in stream:
                seen.append(status)
                if status is NOT_SERVING and health.state.get("svc") is NOT_SERVING:
                    break
    assert seen[0] is SERVING
    assert seen[-1] is NOT_SERVING
    # Never the same status twice in a row, and far fewer messages than changes.
    assert all(a is not b for a, b in itertools.pairwise(seen))
    assert len(seen) < 100


async def collect(stream: AsyncIterator[ServingStatus], into: list[ServingStatus]) -> None:
    """Append every status of ``stream`` to ``into`` until it ends (or raises)."""
    async for status in stream:
        into.append(status)


@pytest.mark.parametrize("pair", PAIRS)
async def test_drain_pushes_not_serving_then_ends_watch_with_unavailable(
        pair: StreamPair, server_config: ServerConfig) -> None:
    health = HealthServer(config=server_config)
    seen: list[ServingStatus] = []
    with trio.fail_after(LIMIT):
        async with connected(health, pair) as channel:
            client = HealthClient(channel)
            async with client.watch() as stream:
                seen.append(await stream.__anext__())
                health.service.drain()
                with pytest.raises(RpcError) as info:
                    await collect(stream, seen)
            # Check still answers, with the drained status.
            assert await client.check(timeout=LIMIT) is NOT_SERVING
    assert seen == [SERVING, NOT_SERVING]
    assert info.value.code is StatusCode.UNAVAILABLE
    assert info.value.message == "health server is shutting down"
    assert health.state.watcher_count == 0
