"""Tests of the pool's name resolution: target parsing, the DNS resolver, the re-resolve loop."""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence

import pytest
import trio
import trio.testing

from health.resolver import ResolverLoop, format_address, parse_dns_target, resolve_dns


class Answers:
    """A resolver whose answer the test sets; records when and what it was asked."""

    def __init__(self, *answer: str) -> None:
        self.answer: Sequence[str] | Exception = list(answer)
        self.asked: list[float] = []
        self.queries: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.asked.append(trio.current_time())
        self.queries.append((host, port))
        await trio.lowlevel.checkpoint()
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


# ---------------------------------------------------------------------- parsing


@pytest.mark.parametrize(("target", "expected"), [
    ("dns:///orders.default.svc.cluster.local:50051",
     ("orders.default.svc.cluster.local", 50051, "orders.default.svc.cluster.local:50051")),
    ("dns:orders:7", ("orders", 7, "orders:7")),
    ("orders:7", ("orders", 7, "orders:7")),
    ("[::1]:8", ("::1", 8, "[::1]:8")),
    ("127.0.0.1:9", ("127.0.0.1", 9, "127.0.0.1:9")),
])
def test_parse_dns_target(target: str, expected: tuple[str, int, str]) -> None:
    assert parse_dns_target(target) == expected


@pytest.mark.parametrize(("target", "needle"), [
    ("dns://8.8.8.8/orders:7", "not supported"),
    ("unix:/tmp/x.sock", "unix"),
    ("orders", "missing port"),
    ("orders:0", "invalid port"),
    ("::1:5", "IPv6"),
])
def test_parse_dns_target_rejects(target: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        parse_dns_target(target)


def test_format_address_brackets_ipv6() -> None:
    assert format_address("10.0.0.1", 5) == "10.0.0.1:5"
    assert format_address("fd00::1", 5) == "[fd00::1]:5"


# ---------------------------------------------------------------------- DNS


async def test_resolve_dns_numeric_and_localhost() -> None:
    assert await resolve_dns("127.0.0.1", 50051) == ["127.0.0.1:50051"]
    local = await resolve_dns("localhost", 50051)
    assert local
    assert set(local) <= {"127.0.0.1:50051", "[::1]:50051"}
    assert len(set(local)) == len(local)  # one entry per address, not per socket type
    try:
        socket.getaddrinfo("::1", 1, type=socket.SOCK_STREAM)
    except OSError as exc:
        pytest.skip(f"no IPv6 on this machine: {exc}")
    assert await resolve_dns("::1", 7) == ["[::1]:7"]


async def test_resolve_dns_failure_raises_oserror() -> None:
    with pytest.raises(socket.gaierror):
        await resolve_dns("name.invalid", 1)  # RFC 6761: .invalid never resolves


# ---------------------------------------------------------------------- one resolution


async def test_good_answer_is_kept_and_deduplicated() -> None:
    answers = Answers("a:1", "b:1", "a:1")
    loop = ResolverLoop("dns:///svc:1", answers)
    assert await loop.resolve() == ("a:1", "b:1")
    assert loop.addresses == ("a:1", "b:1")
    assert loop.error is None
    assert answers.queries == [("svc", 1)]


async def test_failure_and_empty_answer_keep_the_last_set(
        caplog: pytest.LogCaptureFixture) -> None:
    answers = Answers("a:1")
    loop = ResolverLoop("svc:1", answers)
    await loop.resolve()
    with caplog.at_level(logging.DEBUG, logger="health.resolver"):
        answers.answer = OSError("Temporary failure in name resolution")
        assert await loop.resolve() is None
        assert await loop.resolve() is None
        assert loop.addresses == ("a:1",)
        assert loop.error == "Temporary failure in name resolution"
        answers.answer = []
        assert await loop.resolve() is None
        assert loop.addresses == ("a:1",)
        assert loop.error == "the resolver returned no address"
        answers.answer = ["b:1"]
        assert await loop.resolve() == ("b:1",)
        assert loop.error is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # The repeated failure is logged once as a warning, then at debug level.
    assert warnings == [
        "resolving svc:1 failed: Temporary failure in name resolution; keeping the last 1 "
        "addresses",
        "resolving svc:1: the resolver returned no address; keeping the last 1 addresses",
    ]
    assert loop.resolutions == 5


@pytest.mark.parametrize("bad", [["a:1", "nope"], ["unix:/x"], "a:1", [b"a:1"]])
async def test_malformed_answer_is_a_failure(bad: object) -> None:
    answers = Answers("a:1")
    loop = ResolverLoop("svc:1", answers)
    await loop.resolve()
    answers.answer = bad  # type: ignore[assignment]
    assert await loop.resolve() is None
    assert loop.addresses == ("a:1",)
    assert loop.error


async def test_slow_resolver_times_out(autojump_clock: trio.testing.MockClock) -> None:
    async def never(host: str, port: int) -> list[str]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    loop = ResolverLoop("svc:1", never, timeout=3)
    t0 = trio.current_time()
    assert await loop.resolve() is None
    assert trio.current_time() - t0 == pytest.approx(3)
    assert loop.error == "no answer within 3 s"


async def test_answer_is_cut_at_max_addresses(caplog: pytest.LogCaptureFixture) -> None:
    loop = ResolverLoop("svc:1", Answers(*(f"10.0.0.{i}:1" for i in range(1, 6))),
                        max_addresses=3)
    with caplog.at_level(logging.WARNING, logger="health.resolver"):
        assert await loop.resolve() == ("10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1")
    assert "keeping the first 3" in caplog.text


def test_interval_validation() -> None:
    assert ResolverLoop("svc:1").min_interval == 5
    assert ResolverLoop("svc:1", interval=2).min_interval == 2
    with pytest.raises(ValueError, match="min_resolve_interval"):
        ResolverLoop("svc:1", interval=1, min_interval=2)
    with pytest.raises(ValueError, match="min_resolve_interval"):
        ResolverLoop("svc:1", interval=1, min_interval=0)
    with pytest.raises(ValueError, match="timeout"):
        ResolverLoop("svc:1", timeout=0)


# ---------------------------------------------------------------------- the schedule


async def test_schedule_periodic_and_rate_limited_on_demand(
        autojump_clock: trio.testing.MockClock) -> None:
    answers = Answers("a:1")
    applied: list[tuple[str, ...]] = []
    wanted = trio.Event()

    async def apply(addresses: tuple[str, ...]) -> None:
        applied.append(addresses)
        await trio.lowlevel.checkpoint()

    async def wanted_now() -> None:
        await wanted.wait()

    loop = ResolverLoop("svc:1", answers, interval=30, min_interval=5)
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        await nursery.start(loop.run, apply, wanted_now)
        assert applied == [("a:1",)]  # the first answer is applied before started
        await trio.sleep(65)
        assert [t - t0 for t in answers.asked] == pytest.approx([0, 30, 60])
        wanted.set()  # from now on the pool keeps asking at once: the floor rules
        await trio.sleep(12)
        assert [t - t0 for t in answers.asked] == pytest.approx([0, 30, 60, 65, 70, 75])
        wanted = trio.Event()
        await trio.sleep(40)
        assert [t - t0 for t in answers.asked[6:]] == pytest.approx([105])
        nursery.cancel_scope.cancel()
    # Unchanged answers are still handed on; the pool ignores what did not change.
    assert set(applied) == {("a:1",)}
