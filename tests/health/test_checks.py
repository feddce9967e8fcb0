"""The check engine: thresholds, timeouts, aggregation (mock clock), sync probes in threads.

The runner tests use ``autojump_clock`` so that intervals and timeouts take no real time, and
synchronise on the runner's result listener rather than on sleeps. The built-in probes are
tested in ``test_probes.py``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from health import HealthState, ServingStatus
from health.checks import Check, CheckFailed, CheckResult, CheckRunner, managed_services

SERVING = ServingStatus.SERVING
NOT_SERVING = ServingStatus.NOT_SERVING
UNKNOWN = ServingStatus.UNKNOWN

#: For probes in real threads: long enough for a slow CI box, never reached when passing.
REAL_TIMEOUT = 10.0


def scripted(outcomes: Iterable[object]) -> Callable[[], object]:
    """An async probe that, run after run, passes (True), fails (False) or raises the items."""
    items = list(outcomes)

    async def probe() -> object:
        await trio.lowlevel.checkpoint()
        # Past the script, keep repeating the last outcome.
        item = items.pop(0) if len(items) > 1 else items[0]
        if isinstance(item, BaseException):
            raise item
        return item

    return probe


@asynccontextmanager
async def running(runner: CheckRunner) -> AsyncIterator[trio.MemoryReceiveChannel[CheckResult]]:
    """Start ``runner`` (first round done) and yield a channel of every later result."""
    send, receive = trio.open_memory_channel[CheckResult](1000)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        # Added only now, with no checkpoint since start() returned: the first round's results
        # stay out of the channel and no later one can be missed.
        runner.add_result_listener(send.send_nowait)
        yield receive
        nursery.cancel_scope.cancel()


async def next_result(results: trio.MemoryReceiveChannel[CheckResult],
                      name: str) -> CheckResult:
    """The next result of check ``name`` (results of other checks are skipped)."""
    for _ in range(100):
        result = await results.receive()
        if result.check.name == name:
            return result
    raise AssertionError(f"no result for {name!r}")


# ------------------------------------------------------------------ Check validation


def test_check_validates_its_settings() -> None:
    async def probe() -> None:
        pass

    with pytest.raises(ValueError, match="interval"):
        Check("c", probe, interval=0)
    with pytest.raises(ValueError, match="timeout"):
        Check("c", probe, timeout=float("nan"))
    with pytest.raises(ValueError, match="failure_threshold"):
        Check("c", probe, failure_threshold=0)
    with pytest.raises(ValueError, match="name"):
        Check("", probe)
    with pytest.raises(TypeError, match="service name must be str"):
        Check("c", probe, service=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="probe must be callable"):
        Check("c", "not a function")  # type: ignore[arg-type]
    assert Check("c", probe).threaded is False
    assert Check("c", lambda: None).threaded is True


async def test_a_reason_inside_nested_exception_groups_is_found() -> None:
    async def fail() -> None:
        await trio.lowlevel.checkpoint()
        raise CheckFailed("db is down")

    async def inner() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail)

    async def probe() -> None:
        # Two nurseries deep: the failure arrives wrapped in two exception groups.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(inner)

    result = await Check("c", probe).run_probe()
    assert (result.ok, result.reason) == (False, "db is down")
    assert result.error is None  # an expected failure: no traceback to log


def test_runner_rejects_an_unsettable_initial_status() -> None:
    with pytest.raises(ValueError, match="initial status must be settable"):
        CheckRunner(HealthState(), initial={"a": ServingStatus.SERVICE_UNKNOWN})


async def test_runner_cannot_be_changed_or_run_twice_while_running(
        autojump_clock: trio.testing.MockClock) -> None:
    runner = CheckRunner(HealthState(), [Check("c", scripted([True]), service="a")])
    assert runner.service_status("not-managed") is None
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        with pytest.raises(RuntimeError, match="cannot be added while the runner is running"):
            runner.add(Check("d", scripted([True])))
        with pytest.raises(RuntimeError, match="already running"):
            await runner.run()
        nursery.cancel_scope.cancel()


def test_runner_rejects_duplicate_names() -> None:
    probe = scripted([True])
    runner = CheckRunner(HealthState(), [Check("c", probe)])
    with pytest.raises(ValueError, match="duplicate"):
        runner.add(Check("c", probe))


# ---------------------------------------------------------------- runner (mock clock)


async def test_thresholds_keep_a_flaky_probe_from_flapping(
        autojump_clock: trio.testing.MockClock) -> None:
    state = HealthState()
    check = Check("db", scripted([True, False, True, False, False, True]), service="svc",
                  interval=5, failure_threshold=2, success_threshold=1)
    runner = CheckRunner(state, [check])
    async with running(runner) as results:
        # First result decides at once.
        assert state.get("svc") is SERVING
        seen = []
        for _ in range(5):
            result = await next_result(results, "db")
            seen.append((result.ok, state.get("svc")))
    assert seen == [
        (False, SERVING),      # one failure: below the threshold of 2
        (True, SERVING),       # streak reset
        (False, SERVING),
        (False, NOT_SERVING),  # second failure in a row
        (True, SERVING),       # one success is enough to come back
    ]


async def test_success_threshold_above_one(autojump_clock: trio.testing.MockClock) -> None:
    state = HealthState()
    check = Check("db", scripted([False, True, True]), service="svc", interval=1,
                  success_threshold=2)
    async with running(CheckRunner(state, [check])) as results:
        assert state.get("svc") is NOT_SERVING
        await next_result(results, "db")
        assert state.get("svc") is NOT_SERVING
        await next_result(results, "db")
        assert state.get("svc") is SERVING


async def test_timeout_counts_as_failure(autojump_clock: trio.testing.MockClock) -> None:
    async def hangs() -> None:
        await trio.sleep_forever()

    state = HealthState()
    runner = CheckRunner(state, [Check("slow", hangs, service="svc", timeout=2, interval=10)])
    async with running(runner):
        assert state.get("svc") is NOT_SERVING
        last = runner.records["slow"].last
        assert last is not None
        assert not last.ok
        assert "timed out" in last.reason


async def test_raising_counts_as_failure_and_logs_the_reason(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    state = HealthState()
    probe = scripted([CheckFailed("disk full"), ZeroDivisionError("boom")])
    runner = CheckRunner(state, [Check("disk", probe, service="svc", interval=1)])
    with caplog.at_level(logging.WARNING, logger="health.checks"):
        async with running(runner) as results:
            assert state.get("svc") is NOT_SERVING
            record = runner.records["disk"]
            assert record.last is not None
            assert record.last.reason == "disk full"
            second = await next_result(results, "disk")
    assert second.reason == "ZeroDivisionError: boom"
    messages = [r.getMessage() for r in caplog.records if r.name == "health.checks"]
    assert any("disk full" in m for m in messages)
    assert any("ZeroDivisionError: boom" in m for m in messages)


async def test_returning_false_is_a_failure(autojump_clock: trio.testing.MockClock) -> None:
    state = HealthState()
    async with running(CheckRunner(state, [Check("c", scripted([False]), service="s")])):
        assert state.get("s") is NOT_SERVING


async def test_several_checks_feed_one_service(autojump_clock: trio.testing.MockClock) -> None:
    state = HealthState()
    a = Check("a", scripted([True]), service="svc", interval=1)
    b = Check("b", scripted([True, False]), service="svc", interval=1, failure_threshold=1)
    async with running(CheckRunner(state, [a, b])) as results:
        assert state.get("svc") is SERVING
        await next_result(results, "b")
        assert state.get("svc") is NOT_SERVING


async def test_empty_name_aggregates_every_check(autojump_clock: trio.testing.MockClock) -> None:
    state = HealthState()
    checks = [
        Check("a", scripted([True]), service="one", interval=1),
        Check("b", scripted([True, False]), service="two", interval=1, failure_threshold=1),
    ]
    async with running(CheckRunner(state, checks)) as results:
        assert state.snapshot() == {"": SERVING, "one": SERVING, "two": SERVING}
        await next_result(results, "b")
        assert state.snapshot() == {"": NOT_SERVING, "one": SERVING, "two": NOT_SERVING}


async def test_aggregate_off_leaves_empty_name_alone(
        autojump_clock: trio.testing.MockClock) -> None:
    state = HealthState()
    check = Check("a", scripted([False]), service="one")
    async with running(CheckRunner(state, [check], aggregate=False)):
        assert state.snapshot() == {"": SERVING, "one": NOT_SERVING}


async def test_checks_on_empty_name_without_aggregate(
        autojump_clock: trio.testing.MockClock) -> None:
    state = HealthState()
    checks = [Check("self", scripted([True]), service=""),
              Check("other", scripted([False]), service="one")]
    async with running(CheckRunner(state, checks, aggregate=False)):
        assert state.snapshot() == {"": SERVING, "one": NOT_SERVING}


async def test_status_before_the_first_result(autojump_clock: trio.testing.MockClock) -> None:
    release = trio.Event()

    async def waits() -> None:
        await release.wait()

    state = HealthState()
    runner = CheckRunner(state, [Check("a", waits, service="one", timeout=100),
                                 Check("b", waits, service="two", timeout=100)],
                         initial={"two": NOT_SERVING})
    started = False
    async with trio.open_nursery() as nursery:

        async def start() -> None:
            nonlocal started
            await nursery.start(runner.run)
            started = True

        nursery.start_soon(start)
        await trio.testing.wait_all_tasks_blocked()
        assert not started
        assert state.snapshot() == {"": UNKNOWN, "one": UNKNOWN, "two": NOT_SERVING}
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert started
        assert state.snapshot() == {"": SERVING, "one": SERVING, "two": SERVING}
        nursery.cancel_scope.cancel()


async def test_started_after_every_first_result(autojump_clock: trio.testing.MockClock) -> None:
    async def slow() -> None:
        await trio.sleep(0.5)

    state = HealthState()
    runner = CheckRunner(state, [Check("fast", scripted([True]), service="a"),
                                 Check("slow", slow, service="b")])
    async with running(runner):
        assert all(r.last is not None for r in runner.records.values())


async def test_manual_status_stands_until_checks_change(
        autojump_clock: trio.testing.MockClock) -> None:
    state = HealthState()
    check = Check("c", scripted([True, True, False, True]), service="svc", interval=1,
                  failure_threshold=1)
    async with running(CheckRunner(state, [check])) as results:
        state.set("svc", NOT_SERVING)  # an operator, through the admin API
        await next_result(results, "c")  # still passing: nothing written
        assert state.get("svc") is NOT_SERVING
        await next_result(results, "c")  # fails: the checks speak again
        assert state.get("svc") is NOT_SERVING
        await next_result(results, "c")  # passes again: written
        assert state.get("svc") is SERVING


async def test_run_once_applies_results(autojump_clock: trio.testing.MockClock) -> None:
    state = HealthState()
    runner = CheckRunner(state, [Check("c", scripted([False]), service="s")])
    results = await runner.run_once()
    assert [r.ok for r in results] == [False]
    assert state.get("s") is NOT_SERVING


async def test_no_checks_starts_at_once(autojump_clock: trio.testing.MockClock) -> None:
    state = HealthState()
    async with running(CheckRunner(state)):
        assert state.snapshot() == {"": SERVING}


async def test_a_failing_listener_does_not_stop_the_runner(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    state = HealthState()
    runner = CheckRunner(state, [Check("c", scripted([True, False]), service="s", interval=1,
                                       failure_threshold=1)])

    def broken(result: CheckResult) -> None:
        raise RuntimeError("listener bug")

    runner.add_result_listener(broken)
    async with running(runner) as results:
        await next_result(results, "c")
        assert state.get("s") is NOT_SERVING
    assert any("listener" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------- sync probes (real threads)


async def test_sync_probe_runs_in_a_thread() -> None:
    trio_thread = threading.get_ident()
    seen: list[int] = []

    def probe() -> None:
        seen.append(threading.get_ident())

    def failing() -> None:
        raise OSError("no route")

    state = HealthState()
    runner = CheckRunner(state, [Check("ok", probe, service="a", timeout=REAL_TIMEOUT),
                                 Check("bad", failing, service="b", timeout=REAL_TIMEOUT)])
    async with running(runner):
        assert state.get("a") is SERVING
        assert state.get("b") is NOT_SERVING
    assert seen
    assert seen[0] != trio_thread
    last = runner.records["bad"].last
    assert last is not None
    assert last.reason == "OSError: no route"


async def test_hung_sync_probe_times_out() -> None:
    release = threading.Event()

    def hangs() -> None:
        release.wait(REAL_TIMEOUT)

    check = Check("hung", hangs, timeout=0.05)
    try:
        result = await check.run_probe()
    finally:
        release.set()
    assert not result.ok
    assert "timed out" in result.reason


# ------------------------------------------------------------------ moved names


def test_managed_services_put_the_aggregate_last() -> None:
    assert managed_services([], aggregate=True) == []
    assert managed_services(["b", "a", "b"], aggregate=True) == ["b", "a", ""]
    assert managed_services(["b"], aggregate=False) == ["b"]
    assert managed_services(["", "b"], aggregate=False) == ["b", ""]
