"""Tests of the healthy-backend pool, with in-memory backends on Trio's MockClock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest
import trio
import trio.testing

from health.pool import HealthyPool, NoHealthyBackendError, open_pool
from health.status import ServingStatus
from wire import Channel, Server

from .memnet import HealthBackend, MemoryBackend, channel_to

ADDRS = ("a:1", "b:1", "c:1")


@asynccontextmanager
async def backends(nursery: trio.Nursery, *, service: str = "svc",
                   statuses: tuple[ServingStatus, ...] = (ServingStatus.SERVING,) * 3,
                   ) -> AsyncIterator[dict[str, HealthBackend]]:
    yield {addr: HealthBackend(nursery, **{service: status})
           for addr, status in zip(ADDRS, statuses, strict=True)}


def opener(table: dict[str, HealthBackend] | dict[str, MemoryBackend],
           ) -> Callable[[str], AbstractAsyncContextManager[Channel]]:
    def open_for(address: str) -> AbstractAsyncContextManager[Channel]:
        return channel_to(table[address], target=address)
    return open_for


async def settle(pool: HealthyPool, expected: tuple[str, ...]) -> None:
    """Wait (in MockClock time) until the healthy set is ``expected``."""
    with trio.fail_after(600):
        while pool.healthy != expected:  # bounded by the fail_after above
            await pool.wait_changed(pool.version)


async def test_round_robin_over_healthy_backends(
        autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery, backends(nursery) as table:
        table["b:1"].set("svc", ServingStatus.NOT_SERVING)
        async with open_pool(ADDRS, service="svc", open_channel_for=opener(table)) as pool:
            await settle(pool, ("a:1", "c:1"))
            picks = [pool.pick() for _ in range(6)]
            assert picks == ["a:1", "c:1", "a:1", "c:1", "a:1", "c:1"]
            table["b:1"].set("svc", ServingStatus.SERVING)
            await settle(pool, ADDRS)
            assert sorted(pool.pick() for _ in range(3)) == sorted(ADDRS)
            assert pool.report("b:1").status is ServingStatus.SERVING
            assert isinstance(pool.channel("a:1"), Channel)
        nursery.cancel_scope.cancel()


async def test_pick_fails_fast_when_nothing_is_healthy(
        autojump_clock: trio.testing.MockClock) -> None:
    down = (ServingStatus.NOT_SERVING,) * 3
    async with trio.open_nursery() as nursery, backends(nursery, statuses=down) as table:
        async with open_pool(ADDRS, service="svc", open_channel_for=opener(table)) as pool:
            with trio.fail_after(10):
                for a in ADDRS:
                    watcher = pool.watchers[a]
                    while watcher.report.status is None:  # bounded by the fail_after above
                        await watcher.wait_changed(watcher.version)
            with pytest.raises(NoHealthyBackendError):
                pool.pick()

            async def heal_later() -> None:
                await trio.sleep(5)
                table["c:1"].set("svc", ServingStatus.SERVING)

            nursery.start_soon(heal_later)
            t0 = trio.current_time()
            assert await pool.pick_wait() == "c:1"
            assert trio.current_time() - t0 == pytest.approx(5)
        nursery.cancel_scope.cancel()


async def test_backend_going_away_and_coming_back(
        autojump_clock: trio.testing.MockClock) -> None:
    changes: list[tuple[str, ...]] = []
    async with trio.open_nursery() as nursery, backends(nursery) as table:
        async with open_pool(ADDRS, service="svc", open_channel_for=opener(table),
                             on_change=changes.append) as pool:
            await settle(pool, ADDRS)
            await table["a:1"].down()
            await settle(pool, ("b:1", "c:1"))
            assert "a:1" not in {pool.pick() for _ in range(4)}
            await trio.sleep(30)  # a few backoff rounds while it is gone
            assert pool.healthy == ("b:1", "c:1")
            table["a:1"].up()
            await settle(pool, ADDRS)
        nursery.cancel_scope.cancel()
    assert changes[-3:] == [ADDRS, ("b:1", "c:1"), ADDRS]


async def test_changes_iterator_yields_current_then_latest(
        autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery, backends(nursery) as table:
        async with open_pool(ADDRS, service="svc", open_channel_for=opener(table)) as pool:
            await settle(pool, ADDRS)
            seen: list[tuple[str, ...]] = []
            async for healthy in pool.changes():
                seen.append(healthy)
                if len(seen) == 1:
                    # Two changes before the reader looks again: it sees only the latest.
                    table["a:1"].set("svc", ServingStatus.NOT_SERVING)
                    table["b:1"].set("svc", ServingStatus.NOT_SERVING)
                    await settle(pool, ("c:1",))
                elif len(seen) == 2:
                    break
            assert seen == [ADDRS, ("c:1",)]
        nursery.cancel_scope.cancel()


async def test_backend_without_health_service_counts_as_healthy(
        autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        table = {"a:1": MemoryBackend(Server(), nursery)}
        async with open_pool(["a:1"], open_channel_for=opener(table)) as pool:
            await settle(pool, ("a:1",))
            assert pool.report("a:1").disabled
            assert pool.pick() == "a:1"
        nursery.cancel_scope.cancel()


async def test_errors_in_pool_body_are_not_wrapped(
        autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery, backends(nursery) as table:
        with pytest.raises(KeyError):
            async with open_pool(ADDRS, service="svc", open_channel_for=opener(table)):
                raise KeyError("mine")
        nursery.cancel_scope.cancel()


def test_pool_rejects_bad_address_lists() -> None:
    with pytest.raises(ValueError):
        HealthyPool([])
    with pytest.raises(ValueError):
        HealthyPool(["a:1", "a:1"])

