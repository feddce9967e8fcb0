"""Tests of the gRFC A17 backend follower, on Trio's MockClock: no real sleeps, exact timings.

Backends are in-memory servers (``tests.health.memnet``) that can go away and come back.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from health.follow import BackendFollower, Backoff, BackoffDelays, HealthReport
from health.status import ServingStatus
from wire import Server, ServerConfig

from .memnet import HealthBackend, MemoryBackend, channel_to


class LowJitter(random.Random):
    """A random source whose ``uniform`` always returns the low end: jitter of -20 %."""

    def uniform(self, a: float, b: float) -> float:
        return a


class NoJitter(random.Random):
    """A random source whose ``uniform`` returns the middle: no jitter at all."""

    def uniform(self, a: float, b: float) -> float:
        return (a + b) / 2


# ---------------------------------------------------------------------- backoff


def test_backoff_series_without_jitter() -> None:
    state = BackoffDelays(Backoff(), NoJitter())
    delays = [state.next_delay() for _ in range(14)]
    expected = [1.0]
    for _ in range(13):
        expected.append(min(expected[-1] * 1.6, 120.0))
    assert delays == pytest.approx(expected)
    assert delays[-1] == 120.0


def test_backoff_jitter_bounds_and_reset() -> None:
    state = BackoffDelays(Backoff(), random.Random(1234))
    current = 1.0
    # The first retry is jittered too (so watchers of one backend spread out).
    assert 0.8 <= state.next_delay() <= 1.2
    for _ in range(20):
        current = min(current * 1.6, 120.0)
        delay = state.next_delay()
        assert current * 0.8 <= delay <= current * 1.2
    state.reset()
    assert 0.8 <= state.next_delay() <= 1.2
    assert 0.0 <= state.first_retry_delay() <= 0.2


def test_backoff_is_deterministic_with_a_seeded_random() -> None:
    a = BackoffDelays(Backoff(), random.Random(7))
    b = BackoffDelays(Backoff(), random.Random(7))
    assert [a.next_delay() for _ in range(10)] == [b.next_delay() for _ in range(10)]


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="multiplier >= 1"):
        Backoff(multiplier=0.5)
    with pytest.raises(ValueError, match="jitter < 1"):
        Backoff(jitter=1.5)


# ---------------------------------------------------------------------- watching


async def wait_for(watcher: BackendFollower, healthy: bool) -> HealthReport:
    """Wait (bounded by MockClock time) until the watcher reports ``healthy``."""
    with trio.fail_after(600):
        while watcher.healthy is not healthy:  # bounded by the fail_after above
            await watcher.wait_changed(watcher.version)
    return watcher.report


@asynccontextmanager
async def following(nursery: trio.Nursery, backend: HealthBackend,
                    **options: Any) -> AsyncIterator[BackendFollower]:
    """A follower of ``backend``'s ``""``, running in ``nursery``, once it reports healthy."""
    async with channel_to(backend) as channel:
        follower = BackendFollower(channel, **options)
        nursery.start_soon(follower.run)
        await wait_for(follower, True)
        yield follower


async def test_reports_follow_serving_status(
        autojump_clock: trio.testing.MockClock, server_config: ServerConfig) -> None:
    reports: list[HealthReport] = []
    async with trio.open_nursery() as nursery:
        backend = HealthBackend(nursery, server_config, svc=ServingStatus.SERVING)
        async with channel_to(backend) as channel:
            watcher = BackendFollower(channel, "svc", on_change=reports.append)
            assert not watcher.healthy  # not yet checked
            nursery.start_soon(watcher.run)
            await wait_for(watcher, True)
            backend.set("svc", ServingStatus.NOT_SERVING)
            report = await wait_for(watcher, False)
            assert report.status is ServingStatus.NOT_SERVING
            backend.set("svc", ServingStatus.SERVING)
            await wait_for(watcher, True)
            assert watcher.attempts == 1  # one Watch call carried every change
            assert [r.status for r in reports] == [
                ServingStatus.SERVING, ServingStatus.NOT_SERVING, ServingStatus.SERVING]
        # Closing the channel ends the watcher rather than leaving it retrying.
        with trio.fail_after(10):
            await wait_for(watcher, False)
        assert watcher.report.detail == "channel closed"
        nursery.cancel_scope.cancel()


async def test_unknown_service_is_unhealthy_until_registered(
        autojump_clock: trio.testing.MockClock, server_config: ServerConfig) -> None:
    async with trio.open_nursery() as nursery:
        backend = HealthBackend(nursery, server_config)
        async with channel_to(backend) as channel:
            watcher = BackendFollower(channel, "later")
            nursery.start_soon(watcher.run)
            with trio.fail_after(10):
                while watcher.report.status is not ServingStatus.SERVICE_UNKNOWN:
                    await watcher.wait_changed(watcher.version)
            assert not watcher.healthy
            backend.set("later", ServingStatus.SERVING)
            await wait_for(watcher, True)
        nursery.cancel_scope.cancel()


async def test_unimplemented_means_healthy_and_stops_watching(
        autojump_clock: trio.testing.MockClock, server_config: ServerConfig) -> None:
    async with trio.open_nursery() as nursery:
        backend = MemoryBackend(Server(config=server_config), nursery)  # no health service at all
        async with channel_to(backend) as channel:
            watcher = BackendFollower(channel)
            with trio.fail_after(10):
                await watcher.run()  # returns instead of retrying
            assert watcher.healthy
            assert watcher.report.disabled
            assert watcher.attempts == 1
        nursery.cancel_scope.cancel()


async def test_outage_retries_with_backoff_then_recovers(
        autojump_clock: trio.testing.MockClock, server_config: ServerConfig) -> None:
    async with trio.open_nursery() as nursery:
        backend = HealthBackend(nursery, server_config)
        async with following(nursery, backend, rng=LowJitter()) as watcher:
            backend.connects.clear()
            t0 = trio.current_time()
            await backend.down()
            report = await wait_for(watcher, False)
            assert "UNAVAILABLE" in report.detail
            # Let five refused attempts happen, then compare their times with the backoff.
            with trio.fail_after(600):
                await backend.wait_connects(6)
            offsets = [t - t0 for t in backend.connects[:6]]
            # The broken stream had received a message: the first retry comes within 0.2 s
            # (LowJitter: at once); then 0.8 s, and 1.6^n x 0.8 apart, each measured from the
            # previous start.
            expected = [0.0]
            gap = 0.8
            for i in range(5):
                expected.append(expected[-1] + gap)
                gap = 1.6 ** (i + 1) * 0.8
            assert offsets == pytest.approx(expected)
            backend.up()
            await wait_for(watcher, True)
            assert watcher.report.status is ServingStatus.SERVING
            # A message arrived, so the backoff starts over: the next outage retries at once
            # (LowJitter) and then after 0.8 s again.
            backend.connects.clear()
            t1 = trio.current_time()
            await backend.down()
            with trio.fail_after(600):
                await backend.wait_connects(2)
            assert [t - t1 for t in backend.connects[:2]] == pytest.approx([0.0, 0.8])
        nursery.cancel_scope.cancel()


async def test_backoff_caps_at_the_maximum(
        autojump_clock: trio.testing.MockClock, server_config: ServerConfig) -> None:
    async with trio.open_nursery() as nursery:
        backend = HealthBackend(nursery, server_config)
        backend.is_up = False  # never reachable
        async with channel_to(backend) as channel:
            watcher = BackendFollower(channel, rng=NoJitter(),
                                    backoff=Backoff(initial=1.0, maximum=10.0))
            nursery.start_soon(watcher.run)
            with trio.fail_after(600):
                await backend.wait_connects(12)
            gaps = [b - a for a, b in zip(backend.connects, backend.connects[1:], strict=False)]
            assert gaps[:5] == pytest.approx([1.0, 1.6, 2.56, 4.096, 6.5536])
            assert gaps[6:11] == pytest.approx([10.0] * 5)
            assert not watcher.healthy
            assert "refused" in watcher.report.detail.lower()
        nursery.cancel_scope.cancel()


async def test_server_shutdown_ends_watch_and_watcher_retries(
        autojump_clock: trio.testing.MockClock, server_config: ServerConfig) -> None:
    async with trio.open_nursery() as nursery:
        first = HealthBackend(nursery, server_config)
        async with following(nursery, first, rng=NoJitter()) as watcher:
            # Graceful shutdown: NOT_SERVING is pushed, then the Watch ends with UNAVAILABLE.
            nursery.start_soon(first.health.shutdown, 1.0)
            report = await wait_for(watcher, False)
            assert report.status in (ServingStatus.NOT_SERVING, None)
            connects = len(first.connects)
            with trio.fail_after(60):
                await first.wait_connects(connects + 2)  # it keeps trying to get back
            assert not watcher.healthy
            assert watcher.attempts >= 3
        nursery.cancel_scope.cancel()


async def test_wait_changed_returns_the_latest_report(
        autojump_clock: trio.testing.MockClock, server_config: ServerConfig) -> None:
    async with trio.open_nursery() as nursery:
        backend = HealthBackend(nursery, server_config, svc=ServingStatus.NOT_SERVING)
        async with channel_to(backend) as channel:
            watcher = BackendFollower(channel, "svc")
            version = watcher.version
            nursery.start_soon(watcher.run)
            report = await watcher.wait_changed(version)
            assert report.status is ServingStatus.NOT_SERVING
            assert watcher.version == version + 1
        nursery.cancel_scope.cancel()


async def test_fifty_followers_of_one_backend_do_not_reconnect_together(
        autojump_clock: trio.testing.MockClock) -> None:
    """The first reconnect after a backend is lost is jittered, and so is the second."""
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        backend = HealthBackend(nursery)
        followers = []
        for i in range(50):
            channel = await stack.enter_async_context(channel_to(backend))
            follower = BackendFollower(channel, rng=random.Random(i))
            nursery.start_soon(follower.run)
            followers.append(follower)
        for follower in followers:
            await wait_for(follower, True)
        backend.connects.clear()
        t0 = trio.current_time()
        await backend.down()
        with trio.fail_after(600):
            await backend.wait_connects(100)
        first = sorted(t - t0 for t in backend.connects[:50])
        second = sorted(t - t0 for t in backend.connects[50:100])
        assert all(0 <= t <= 0.2 for t in first)
        assert len({round(t, 6) for t in first}) >= 45
        assert all(0.8 <= t <= 1.4 for t in second)
        assert len({round(t, 6) for t in second}) >= 45
        nursery.cancel_scope.cancel()
