"""Tests of the healthy-backend pool, with in-memory backends on Trio's MockClock."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import h2.config
import h2.connection
import h2.events
import pytest
import trio
import trio.testing

import health.pool
from health._health_pb2 import HealthCheckRequest, HealthCheckResponse
from health.pool import HealthyPool, NoHealthyBackendError, open_pool, unprocessed
from health.resolver import format_address, resolve_dns
from health.service import HealthServer
from health.status import ServingStatus
from tests.rpc_errors import record_rpc_error
from wire import (
    Channel,
    ConnectError,
    ErrorCode,
    Metadata,
    RpcError,
    Server,
    ServerCall,
    ServerConfig,
    StatusCode,
    open_channel,
    unary_stream,
    unary_unary,
)

from .memnet import HealthBackend, MemoryBackend, channel_to

ADDRS = ("a:1", "b:1", "c:1")


@asynccontextmanager
async def backends(nursery: trio.Nursery, *, config: ServerConfig | None = None,
                   service: str = "svc",
                   statuses: tuple[ServingStatus, ...] = (ServingStatus.SERVING,) * 3,
                   ) -> AsyncIterator[dict[str, HealthBackend]]:
    yield {addr: HealthBackend(nursery, config, **{service: status})
           for addr, status in zip(ADDRS, statuses, strict=True)}


def opener(table: Mapping[str, MemoryBackend],
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
        autojump_clock: trio.testing.MockClock, server_config: ServerConfig) -> None:
    async with trio.open_nursery() as nursery, backends(nursery, config=server_config) as table:
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
        autojump_clock: trio.testing.MockClock, server_config: ServerConfig) -> None:
    down = (ServingStatus.NOT_SERVING,) * 3
    async with trio.open_nursery() as nursery, \
            backends(nursery, config=server_config, statuses=down) as table:
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
        autojump_clock: trio.testing.MockClock, server_config: ServerConfig) -> None:
    changes: list[tuple[str, ...]] = []
    async with trio.open_nursery() as nursery, backends(nursery, config=server_config) as table:
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
        autojump_clock: trio.testing.MockClock, server_config: ServerConfig) -> None:
    async with trio.open_nursery() as nursery, backends(nursery, config=server_config) as table:
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
        autojump_clock: trio.testing.MockClock, server_config: ServerConfig) -> None:
    async with trio.open_nursery() as nursery:
        table = {"a:1": MemoryBackend(Server(config=server_config), nursery)}
        async with open_pool(["a:1"], open_channel_for=opener(table)) as pool:
            await settle(pool, ("a:1",))
            assert pool.report("a:1").disabled
            assert pool.pick() == "a:1"
        nursery.cancel_scope.cancel()


async def test_errors_in_pool_body_are_not_wrapped(
        autojump_clock: trio.testing.MockClock, server_config: ServerConfig) -> None:
    async with trio.open_nursery() as nursery, backends(nursery, config=server_config) as table:
        with pytest.raises(KeyError):
            async with open_pool(ADDRS, service="svc", open_channel_for=opener(table)):
                raise KeyError("mine")
        nursery.cancel_scope.cancel()


def test_pool_rejects_bad_address_lists() -> None:
    with pytest.raises(ValueError, match="at least one address"):
        HealthyPool([])
    with pytest.raises(ValueError, match="distinct"):
        HealthyPool(["a:1", "a:1"])



# ---------------------------------------------------------------------- resolved targets

WHO = "/test.Pool/Who"
STREAM = "/test.Pool/Stream"
SLOW = "/test.Pool/Slow"
FAIL = "/test.Pool/Fail"


def ident(data: bytes) -> bytes:
    return data


class AppBackend(MemoryBackend):
    """An in-memory backend with a few methods that say who answered.

    ``health=None`` leaves the health service out: the pool then counts it healthy (A17).
    """

    def __init__(self, nursery: trio.Nursery, name: str,
                 health: ServingStatus | None = ServingStatus.SERVING,
                 config: ServerConfig | None = None) -> None:
        self.name = name
        self.calls = 0
        #: (x-req metadata, seconds left of the deadline) of every Who call.
        self.seen: list[tuple[object, float]] = []
        self.release = trio.Event()
        handlers = [
            unary_unary(WHO, self.who, ident, ident),
            unary_unary(SLOW, self.slow, ident, ident),
            unary_unary(FAIL, self.fail, ident, ident),
            unary_stream(STREAM, self.stream, ident, ident),
        ]
        self.health: HealthServer | None = None
        if health is None:
            server = Server(handlers, config=config)
        else:
            self.health = HealthServer(extra_handlers=handlers, config=config)
            self.health.set("", health)
            server = self.health.server
        super().__init__(server, nursery)

    def set(self, status: ServingStatus) -> None:
        assert self.health is not None
        self.health.set("", status)

    def who(self, request: bytes, call: ServerCall) -> bytes:
        self.calls += 1
        self.seen.append((call.metadata.get("x-req"), call.time_remaining()))
        return self.name.encode()

    async def slow(self, request: bytes, call: ServerCall) -> bytes:
        self.calls += 1
        await self.release.wait()
        return self.name.encode()

    def fail(self, request: bytes, call: ServerCall) -> bytes:
        self.calls += 1
        raise RpcError(StatusCode.UNAVAILABLE, f"{self.name} is overloaded")

    async def stream(self, request: bytes, call: ServerCall,
                     send: Callable[[bytes], Awaitable[None]]) -> None:
        self.calls += 1
        for i in range(3):
            await send(f"{self.name}{i}".encode())


def app_backends(nursery: trio.Nursery, config: ServerConfig,
                 *addresses: str) -> dict[str, AppBackend]:
    """A healthy AppBackend per address, named by the address's first letter."""
    return {address: AppBackend(nursery, address[0], config=config) for address in addresses}


@asynccontextmanager
async def settled_pool(table: Mapping[str, MemoryBackend]) -> AsyncIterator[HealthyPool]:
    """A pool over ``table``'s addresses, yielded once every one of them is healthy."""
    async with open_pool(list(table), open_channel_for=opener(table)) as pool:
        await settle(pool, tuple(table))
        yield pool


class Answers:
    """An injected resolver: the test sets ``answer`` (a list, or an exception to raise)."""

    def __init__(self, *answer: str) -> None:
        self.answer: list[str] | Exception = list(answer)
        self.asked: list[float] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(trio.current_time())
        await trio.lowlevel.checkpoint()
        if isinstance(self.answer, Exception):
            raise self.answer
        return list(self.answer)


async def until(condition: Callable[[], bool], limit: float) -> None:
    """Poll ``condition`` every 0.1 s of MockClock time, for at most ``limit`` seconds."""
    for _ in range(int(limit * 10) + 1):
        if condition():
            return
        await trio.sleep(0.1)
    raise AssertionError(f"condition still false after {limit:g} s")


async def settle_members(pool: HealthyPool, expected: tuple[str, ...]) -> None:
    with trio.fail_after(600):
        while pool.addresses != expected:  # bounded by the fail_after above
            await pool.wait_changed(pool.version)


async def test_dns_localhost_against_a_running_server(server_config: ServerConfig) -> None:
    # localhost may resolve to 127.0.0.1, ::1 or both: serve on the first answer only, so
    # exactly one backend is healthy and any other address is a member that is not.
    resolved = await resolve_dns("localhost", 1)
    host = resolved[0].rpartition(":")[0].strip("[]")
    async with trio.open_nursery() as nursery:
        server: HealthServer = await nursery.start(
            HealthServer(config=server_config).serve_tcp, host, 0)
        server.set("svc", ServingStatus.SERVING)
        async with open_pool(f"dns:///localhost:{server.port}", service="svc",
                             connect_timeout=2) as pool:
            serving = format_address(host, server.port)
            assert set(pool.addresses) == {a.replace(":1", f":{server.port}")
                                            for a in resolved}
            with trio.fail_after(10):
                while pool.healthy != (serving,):  # bounded by the fail_after above
                    await pool.wait_changed(pool.version)
            assert pool.pick() == serving
            request = HealthCheckRequest(service="svc").SerializeToString()
            reply = await pool.unary_unary("/grpc.health.v1.Health/Check", request, timeout=5)
            assert HealthCheckResponse.FromString(reply.response).status == 1  # SERVING
            # The channel's :authority is the name the pool was given, not the address.
            assert pool.channel(serving).authority == f"localhost:{server.port}"
        nursery.cancel_scope.cancel()


async def test_membership_follows_the_resolver(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture,
        server_config: ServerConfig) -> None:
    changes: list[tuple[str, ...]] = []
    answers = Answers("a:1")
    async with trio.open_nursery() as nursery:
        table = {name: AppBackend(nursery, name, config=server_config) for name in ("a:1", "b:1")}
        async with open_pool("dns:///svc.local:1", resolver=answers, resolve_interval=30,
                             open_channel_for=opener(table), on_change=changes.append) as pool:
            assert pool.addresses == ("a:1",)
            await settle(pool, ("a:1",))
            channel_a = pool.channel("a:1")
            watcher_a = pool.watchers["a:1"]

            answers.answer = ["b:1", "a:1"]  # a second backend joins
            await settle_members(pool, ("a:1", "b:1"))
            await settle(pool, ("a:1", "b:1"))
            assert pool.channel("a:1") is channel_a
            assert pool.watchers["a:1"] is watcher_a
            assert watcher_a.attempts == 1  # a's Watch was never interrupted
            channel_b = pool.channel("b:1")

            answers.answer = ["b:1"]  # the first leaves
            await settle_members(pool, ("b:1",))
            assert pool.healthy == ("b:1",)
            assert "a:1" not in pool.watchers
            assert {pool.pick() for _ in range(5)} == {"b:1"}
            await until(lambda: channel_a.closed, limit=5)

            version = pool.version
            with caplog.at_level(logging.WARNING, logger="health.resolver"):
                # Off the 30 s grid, so the test never races a resolution at the same instant.
                await trio.sleep(5)
                answers.answer = []  # an empty answer keeps the last set
                await trio.sleep(30)
                answers.answer = OSError("DNS is down")  # and so does a failure
                await trio.sleep(30)
            assert len(answers.asked) >= 5
            assert pool.addresses == ("b:1",)
            assert pool.healthy == ("b:1",)
            assert pool.version == version
            assert pool.channel("b:1") is channel_b
            assert pool.resolver is not None
            assert pool.resolver.error == "DNS is down"
            assert "the resolver returned no address" in caplog.text
            assert "failed: DNS is down; keeping the last 1 addresses" in caplog.text
            for _ in range(10):
                assert pool.pick() == "b:1"
        nursery.cancel_scope.cancel()
    # Joins and leaves are reported like health changes; a leave that keeps the healthy set
    # the same is still one change (the membership changed).
    assert ("a:1", "b:1") in changes
    assert changes[-1] == ("b:1",)


async def test_membership_change_reaches_changes_and_wait_changed(
        autojump_clock: trio.testing.MockClock, server_config: ServerConfig) -> None:
    answers = Answers("a:1")
    async with trio.open_nursery() as nursery:
        table = {"a:1": AppBackend(nursery, "a", config=server_config),
                 "b:1": AppBackend(nursery, "b", ServingStatus.NOT_SERVING, config=server_config)}
        async with open_pool("svc:1", resolver=answers, resolve_interval=10,
                             open_channel_for=opener(table)) as pool:
            await settle(pool, ("a:1",))
            states = []
            async for healthy in pool.changes():
                states.append((healthy, pool.addresses))
                if len(states) == 1:
                    answers.answer = ["a:1", "b:1"]  # joins, but is not healthy
                else:
                    break
            assert states == [(("a:1",), ("a:1",)), (("a:1",), ("a:1", "b:1"))]
            assert pool.state.addresses == ("a:1", "b:1")
            assert pool.state.healthy == ("a:1",)
        nursery.cancel_scope.cancel()


async def test_no_healthy_backend_resolves_again_at_once(
        autojump_clock: trio.testing.MockClock, server_config: ServerConfig) -> None:
    answers = Answers("a:1")
    async with trio.open_nursery() as nursery:
        table = app_backends(nursery, server_config, "a:1", "b:1")
        async with open_pool("svc:1", resolver=answers, resolve_interval=30,
                             min_resolve_interval=5, open_channel_for=opener(table)) as pool:
            t0 = answers.asked[0]
            await settle(pool, ("a:1",))
            await trio.sleep(10 - (trio.current_time() - t0))
            answers.answer = ["b:1"]  # the rollout replaced a with b ...
            table["a:1"].set(ServingStatus.NOT_SERVING)  # ... and a is going away
            await settle(pool, ("b:1",))
            # Re-resolved when a stopped serving, not at the 30 s period.
            assert answers.asked[1] - t0 == pytest.approx(10)
            assert trio.current_time() - t0 < 11
        nursery.cancel_scope.cancel()


async def test_first_resolution_failing_leaves_an_empty_pool_that_recovers(
        autojump_clock: trio.testing.MockClock, server_config: ServerConfig) -> None:
    answers = Answers()
    answers.answer = OSError("no such host")
    async with trio.open_nursery() as nursery:
        table = {"a:1": AppBackend(nursery, "a", config=server_config)}
        async with open_pool("svc:1", resolver=answers, open_channel_for=opener(table)) as pool:
            assert pool.addresses == ()
            with pytest.raises(NoHealthyBackendError, match="resolved to no address yet: no "
                                                            "such host"):
                pool.pick()
            with pytest.raises(RpcError, match="no healthy backend") as info:
                await pool.unary_unary(WHO, b"")
            assert info.value.code is StatusCode.UNAVAILABLE
            answers.answer = ["a:1"]
            t0 = trio.current_time()
            assert await pool.pick_wait() == "a:1"
            # An empty pool has no healthy backend: it asks again at the 5 s floor.
            assert trio.current_time() - t0 <= 5.5
        nursery.cancel_scope.cancel()


async def test_leaving_backend_drains_calls_in_flight(
        autojump_clock: trio.testing.MockClock, server_config: ServerConfig) -> None:
    answers = Answers("a:1", "b:1")
    async with trio.open_nursery() as nursery:
        table = app_backends(nursery, server_config, "a:1", "b:1")
        async with open_pool("svc:1", resolver=answers, resolve_interval=10,
                             open_channel_for=opener(table)) as pool:
            await settle(pool, ("a:1", "b:1"))
            channel_a = pool.channel("a:1")
            result: list[bytes] = []

            async def slow_call() -> None:
                result.append((await pool.unary_unary(SLOW, b"")).response)

            nursery.start_soon(slow_call)  # round robin: a first
            await until(lambda: table["a:1"].calls > 0, limit=5)
            answers.answer = ["b:1"]
            await settle_members(pool, ("b:1",))
            await trio.sleep(20)
            assert not channel_a.closed  # the call is still running on it
            table["a:1"].release.set()
            await until(lambda: channel_a.closed, limit=5)
            assert result == [b"a"]
        nursery.cancel_scope.cancel()


async def test_drain_is_bounded_by_drain_timeout(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture,
        server_config: ServerConfig) -> None:
    answers = Answers("a:1")
    async with trio.open_nursery() as nursery:
        table = app_backends(nursery, server_config, "a:1", "b:1")
        async with open_pool("svc:1", resolver=answers, resolve_interval=10, drain_timeout=15,
                             open_channel_for=opener(table)) as pool:
            await settle(pool, ("a:1",))
            channel_a = pool.channel("a:1")
            errors: list[RpcError] = []
            nursery.start_soon(record_rpc_error, lambda: pool.unary_unary(SLOW, b""), errors)
            answers.answer = ["b:1"]
            with caplog.at_level(logging.WARNING, logger="health.pool"):
                await settle_members(pool, ("b:1",))
                left_at = trio.current_time()
                await until(lambda: bool(errors), limit=60)
            assert channel_a.closed
            assert trio.current_time() - left_at == pytest.approx(15, abs=1)
            assert errors[0].code is StatusCode.UNAVAILABLE
            assert "closing it with 1 calls still open after 15 s" in caplog.text
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------- health-aware calls


async def test_unary_unary_goes_only_to_healthy_backends(
        autojump_clock: trio.testing.MockClock, server_config: ServerConfig) -> None:
    async with trio.open_nursery() as nursery:
        table = {a: AppBackend(nursery, a[0], config=server_config) for a in ADDRS}
        table["b:1"].set(ServingStatus.NOT_SERVING)
        async with open_pool(ADDRS, open_channel_for=opener(table)) as pool:
            await settle(pool, ("a:1", "c:1"))
            got = [(await pool.unary_unary(WHO, b"", timeout=5)).response for _ in range(6)]
            assert got == [b"a", b"c"] * 3
            assert table["b:1"].calls == 0
            table["a:1"].set(ServingStatus.NOT_SERVING)
            table["c:1"].set(ServingStatus.NOT_SERVING)
            await settle(pool, ())
            t0 = trio.current_time()
            with pytest.raises(RpcError) as info:
                await pool.unary_unary(WHO, b"")
            assert trio.current_time() == t0  # at once, no waiting
            assert info.value.code is StatusCode.UNAVAILABLE
            assert info.value.message == "no healthy backend: none of the 3 backends is healthy"
            with pytest.raises(RpcError, match="no healthy backend"):
                async with pool.unary_stream(STREAM, b""):
                    raise AssertionError("unreachable")
        nursery.cancel_scope.cancel()
    assert table["a:1"].calls == 3
    assert table["c:1"].calls == 3


async def test_unary_unary_retries_once_after_a_refused_connection(
        autojump_clock: trio.testing.MockClock, server_config: ServerConfig) -> None:
    async with trio.open_nursery() as nursery:
        # No health service: both count as healthy for good (A17), so a backend that went
        # away is still picked; the connection to it is refused.
        table = {"a:1": AppBackend(nursery, "a", None, config=server_config),
                 "b:1": AppBackend(nursery, "b", None, config=server_config)}
        async with settled_pool(table) as pool:
            assert (await pool.unary_unary(WHO, b"")).response == b"a"
            assert (await pool.unary_unary(WHO, b"")).response == b"b"
            await table["a:1"].down()
            refused_before = len(table["a:1"].connects)
            got = [(await pool.unary_unary(WHO, b"", timeout=5, metadata=[("x-req", "r")]))
                   .response for _ in range(4)]
            assert got == [b"b"] * 4
            # The retry carries the caller's metadata and what is left of the deadline.
            assert [m for m, _ in table["b:1"].seen[-4:]] == ["r"] * 4
            assert all(0 < left <= 5 for _, left in table["b:1"].seen[-4:])
            assert len(table["a:1"].connects) > refused_before  # a was tried, and refused
            async with pool.unary_stream(STREAM, b"") as stream:
                assert [m async for m in stream] == [b"b0", b"b1", b"b2"]
                assert stream.address == "b:1"
                assert stream.code is StatusCode.OK
            # With b gone too there is nobody to retry on: the refusal itself is raised.
            await table["b:1"].down()
            with pytest.raises(ConnectError):
                await pool.unary_unary(WHO, b"")
        nursery.cancel_scope.cancel()


class SlowToRefuse(AppBackend):
    """Once down, takes ``delay`` seconds to refuse a connection (a SYN lost, then RST)."""

    delay = 0.0

    async def connect(self) -> trio.abc.Stream:
        if not self.is_up:
            await trio.sleep(self.delay)
        return await super().connect()


async def test_the_retry_gets_what_is_left_of_the_deadline(
        autojump_clock: trio.testing.MockClock, server_config: ServerConfig) -> None:
    async with trio.open_nursery() as nursery:
        slow = SlowToRefuse(nursery, "a", None, config=server_config)
        table = {"a:1": slow, "b:1": AppBackend(nursery, "b", None, config=server_config)}
        async with settled_pool(table) as pool:
            await slow.down()
            slow.delay = 3
            t0 = trio.current_time()
            assert (await pool.unary_unary(WHO, b"", timeout=5)).response == b"b"
            assert trio.current_time() - t0 == pytest.approx(3, abs=0.1)
            assert table["b:1"].seen[-1][1] == pytest.approx(2, abs=0.1)
            slow.delay = 10  # longer than the whole deadline: no time is left to retry
            calls_b = table["b:1"].calls
            with pytest.raises(RpcError) as info:
                await pool.unary_unary(WHO, b"", timeout=4)  # round robin: a again
            assert info.value.code is StatusCode.DEADLINE_EXCEEDED
            assert table["b:1"].calls == calls_b
        nursery.cancel_scope.cancel()


async def test_errors_after_the_server_processed_the_call_are_not_retried(
        autojump_clock: trio.testing.MockClock, server_config: ServerConfig) -> None:
    async with trio.open_nursery() as nursery:
        table = app_backends(nursery, server_config, "a:1", "b:1")
        async with settled_pool(table) as pool:
            with pytest.raises(RpcError, match="a is overloaded") as info:
                await pool.unary_unary(FAIL, b"")
            assert info.value.code is StatusCode.UNAVAILABLE
            assert (table["a:1"].calls, table["b:1"].calls) == (1, 0)
        nursery.cancel_scope.cancel()


async def test_unary_stream_round_robin_and_metadata(
        autojump_clock: trio.testing.MockClock, server_config: ServerConfig) -> None:
    async with trio.open_nursery() as nursery:
        table = app_backends(nursery, server_config, "a:1", "b:1")
        async with settled_pool(table) as pool:
            seen = []
            for _ in range(2):
                async with pool.unary_stream(STREAM, b"", timeout=5) as stream:
                    seen.append([m async for m in stream])
                    assert stream.done
                    assert isinstance(stream.initial_metadata, Metadata)
                    assert stream.message == ""
            assert seen == [[b"a0", b"a1", b"a2"], [b"b0", b"b1", b"b2"]]
        nursery.cancel_scope.cancel()


class RefusingServer:
    """A raw HTTP/2 server that answers Health with UNIMPLEMENTED (so the pool counts it
    healthy) and every other call with RST_STREAM REFUSED_STREAM or a GOAWAY that leaves the
    call unprocessed."""

    def __init__(self, nursery: trio.Nursery, mode: str) -> None:
        self.nursery = nursery
        self.mode = mode
        self.refused = 0
        self.connects: list[float] = []

    async def connect(self) -> trio.abc.Stream:
        client, server = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self.serve, server)
        await trio.lowlevel.checkpoint()
        return client

    async def serve(self, stream: trio.abc.Stream) -> None:
        async with stream:
            await self.converse(stream)

    async def converse(self, stream: trio.abc.Stream) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        await stream.send_all(conn.data_to_send())
        for _ in range(1000):  # bounded: a test makes a handful of calls
            data = await stream.receive_some(65536)
            if not data:
                return
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    self.answer(conn, ev)
            await stream.send_all(conn.data_to_send())
            if conn.state_machine.state is h2.connection.ConnectionState.CLOSED:
                return  # after our GOAWAY: the client opens a new connection

    def answer(self, conn: h2.connection.H2Connection, ev: h2.events.RequestReceived) -> None:
        path = dict(ev.headers or [])[b":path"]
        if path.startswith(b"/grpc.health.v1.Health/"):
            conn.send_headers(ev.stream_id, [(":status", "200"),
                                             ("content-type", "application/grpc"),
                                             ("grpc-status", "12")], end_stream=True)
            return
        self.refused += 1
        if self.mode == "refuse":
            conn.reset_stream(ev.stream_id, error_code=ErrorCode.REFUSED_STREAM)
        else:
            conn.close_connection(error_code=ErrorCode.NO_ERROR,
                                  last_stream_id=max(0, ev.stream_id - 2))


@pytest.mark.parametrize("mode", ["refuse", "goaway"])
async def test_refused_stream_and_goaway_are_retried_elsewhere(
        autojump_clock: trio.testing.MockClock, mode: str, server_config: ServerConfig) -> None:
    async with trio.open_nursery() as nursery:
        refusing = RefusingServer(nursery, mode)
        good = AppBackend(nursery, "b", config=server_config)

        def open_for(address: str) -> AbstractAsyncContextManager[Channel]:
            if address == "a:1":
                return open_channel(address, connector=refusing.connect)
            return channel_to(good, target=address)

        async with open_pool(["a:1", "b:1"], open_channel_for=open_for) as pool:
            await settle(pool, ("a:1", "b:1"))
            assert pool.report("a:1").disabled
            assert (await pool.unary_unary(WHO, b"", timeout=5)).response == b"b"
            async with pool.unary_stream(STREAM, b"", timeout=5) as stream:
                assert [m async for m in stream] == [b"b0", b"b1", b"b2"]
            assert refusing.refused == 2
            assert good.calls == 2
        nursery.cancel_scope.cancel()


def test_unprocessed_rule() -> None:
    assert unprocessed(ConnectError("Connection refused", target="a:1"))
    assert unprocessed(RpcError(StatusCode.UNAVAILABLE, "stream reset by the server with "
                                "HTTP/2 error code 7 (REFUSED_STREAM)"))
    assert unprocessed(RpcError(StatusCode.UNAVAILABLE, "the server sent GOAWAY (NO_ERROR) "
                                "before processing this call"))
    # The request may have reached the application: never retried.
    assert not unprocessed(RpcError(StatusCode.UNAVAILABLE, "connection lost: reset by peer"))
    assert not unprocessed(RpcError(StatusCode.UNAVAILABLE, "backend overloaded"))
    assert not unprocessed(RpcError(StatusCode.INTERNAL, "stream reset by the server with "
                                    "HTTP/2 error code 2 (INTERNAL_ERROR)"))


# ---------------------------------------------------------------------- options


def test_pool_validates_target_and_options() -> None:
    pool = HealthyPool("svc.local:7", resolver=Answers("10.0.0.1:7"),
                       channel_options={"user_agent": "orders/1"})
    assert pool.target == "svc.local:7"
    assert pool.addresses == ()  # nothing resolved before the pool runs
    assert HealthyPool("unix:/run/app.sock").addresses == ("unix:/run/app.sock",)
    with pytest.raises(TypeError, match="channel_options: got an unexpected keyword"):
        HealthyPool(["a:1"], channel_options={"no_such_option": 1})
    with pytest.raises(ValueError, match="resolver"):
        HealthyPool(["a:1"], resolver=Answers("a:1"))
    with pytest.raises(ValueError, match="not supported"):
        HealthyPool("dns://8.8.8.8/svc:1")
    with pytest.raises(ValueError, match="min_resolve_interval"):
        HealthyPool("svc:1", resolve_interval=1, min_resolve_interval=2)


async def test_default_opener_passes_channel_options(
        monkeypatch: pytest.MonkeyPatch, server_config: ServerConfig) -> None:
    opened: list[tuple[str, dict[str, object]]] = []
    async with trio.open_nursery() as nursery:
        backend = AppBackend(nursery, "a", config=server_config)

        @asynccontextmanager
        async def spy(address: str, **options: object) -> AsyncIterator[Channel]:
            opened.append((address, options))
            async with channel_to(backend, target=address) as channel:
                yield channel

        monkeypatch.setattr(health.pool, "open_channel", spy)
        async with open_pool("svc.local:7", resolver=Answers("10.0.0.1:7", "[fd00::1]:7"),
                             channel_options={"user_agent": "orders/1"},
                             connect_timeout=3) as pool:
            await settle(pool, ("10.0.0.1:7", "[fd00::1]:7"))
        nursery.cancel_scope.cancel()
    expected = {"connect_timeout": 3, "authority": "svc.local:7",
                "server_hostname": "svc.local", "user_agent": "orders/1"}
    assert opened == [("10.0.0.1:7", expected), ("[fd00::1]:7", expected)]
