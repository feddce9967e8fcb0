"""Tests for the health status map, its watchers, listeners and thread hand-off."""

from __future__ import annotations

import itertools
import logging
import random
import threading
from collections.abc import Sequence

import pytest
import trio
import trio.testing

from health.errors import HealthError, InvalidStatusError, ServiceNameError, WatcherLimitError
from health.status import ServingStatus, parse_status
from health.status_map import DEFAULT_MAX_SERVICE_NAME_BYTES, HealthState
from health.subscriptions import DEFAULT_MAX_WATCHERS, DEFAULT_MAX_WATCHERS_PER_OWNER, Watcher

SERVING = ServingStatus.SERVING
NOT_SERVING = ServingStatus.NOT_SERVING
UNKNOWN = ServingStatus.UNKNOWN
SERVICE_UNKNOWN = ServingStatus.SERVICE_UNKNOWN

Event = tuple[str, "ServingStatus | None", "ServingStatus | None"]


async def take(watcher: Watcher) -> ServingStatus:
    """Return the watcher's next status, failing the test instead of hanging."""
    with trio.fail_after(5):
        return await anext(watcher)


async def next_or_none(watcher: Watcher, wait: float = 5) -> ServingStatus | None:
    """Return the watcher's next status, or None if none arrives in ``wait`` seconds.

    Tests that expect None use the autojump clock, so the wait costs no real time.
    """
    with trio.move_on_after(wait):
        return await anext(watcher)
    return None


def record_events(state: HealthState) -> list[Event]:
    """Attach a listener that appends every event to the returned list."""
    events: list[Event] = []
    state.add_listener(lambda service, old, new: events.append((service, old, new)))
    return events


def is_subsequence(needle: Sequence[ServingStatus], haystack: Sequence[ServingStatus]) -> bool:
    """Return whether ``needle`` appears in ``haystack`` in order (gaps allowed)."""
    position = iter(haystack)
    return all(any(item == candidate for candidate in position) for item in needle)


# ------------------------------------------------------------------ basics


def test_whole_server_starts_serving_and_initial_applies() -> None:
    state = HealthState()
    assert state.get("") is SERVING
    assert state.snapshot() == {"": SERVING}
    assert len(state) == 1
    assert "" in state
    assert "svc" not in state
    assert state.get("svc") is None

    state = HealthState({"": NOT_SERVING, "a": SERVING, "b": UNKNOWN})
    assert state.snapshot() == {"": NOT_SERVING, "a": SERVING, "b": UNKNOWN}
    assert len(state) == 3


def test_snapshot_is_a_copy() -> None:
    state = HealthState()
    snap = state.snapshot()
    snap["x"] = SERVING
    assert "x" not in state
    assert state.snapshot() == {"": SERVING}


def test_limits_are_validated_and_exposed() -> None:
    assert HealthState().max_service_name_bytes == DEFAULT_MAX_SERVICE_NAME_BYTES == 1024
    assert DEFAULT_MAX_WATCHERS == 10_000
    assert DEFAULT_MAX_WATCHERS_PER_OWNER == 100
    with pytest.raises(ValueError, match="max_watchers"):
        HealthState(max_watchers=-1)
    with pytest.raises(ValueError, match="max_watchers_per_owner"):
        HealthState(max_watchers_per_owner=True)
    with pytest.raises(ValueError, match="max_service_name_bytes"):
        HealthState(max_service_name_bytes=0)


# ------------------------------------------------------------- validation


@pytest.mark.parametrize("bad", [SERVICE_UNKNOWN, 3, 4, -1, True, "SERVING", None, 1.0])
def test_set_rejects_service_unknown_and_invalid_values(bad: object) -> None:
    state = HealthState()
    with pytest.raises(InvalidStatusError) as info:
        state.set("svc", bad)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, HealthError)
    assert "svc" not in state
    with pytest.raises(InvalidStatusError):
        state.set_threadsafe("svc", bad)  # type: ignore[arg-type]
    assert "svc" not in state


def test_service_unknown_message_points_at_remove() -> None:
    with pytest.raises(InvalidStatusError, match=r"SERVICE_UNKNOWN cannot be set.*remove\(\)"):
        HealthState().set("svc", SERVICE_UNKNOWN)
    with pytest.raises(InvalidStatusError):
        HealthState({"svc": SERVICE_UNKNOWN})


def test_plain_ints_for_settable_statuses_are_accepted() -> None:
    state = HealthState()
    state.set("svc", 2)  # type: ignore[arg-type]
    assert state.get("svc") is NOT_SERVING


def test_service_name_limits() -> None:
    state = HealthState(max_service_name_bytes=8)
    state.set("a" * 8, SERVING)
    assert state.get("a" * 8) is SERVING
    for name in ("a" * 9, "\u00e9" * 5, "\u4e2d\u4e2d\u4e2d"):
        with pytest.raises(ServiceNameError, match="limit is 8"):
            state.set(name, SERVING)
        with pytest.raises(ServiceNameError):
            state.watch(name)
    with pytest.raises(ServiceNameError, match="UTF-8"):
        state.set("\ud800", SERVING)
    with pytest.raises(ServiceNameError):
        HealthState({"a" * 9: SERVING}, max_service_name_bytes=8)
    with pytest.raises(TypeError):
        state.set(b"svc", SERVING)  # type: ignore[arg-type]
    assert state.snapshot() == {"": SERVING, "a" * 8: SERVING}

    default = HealthState()
    default.set("x" * 1024, SERVING)
    with pytest.raises(ServiceNameError, match="1025 bytes"):
        default.set("x" * 1025, SERVING)
    assert isinstance(ServiceNameError("x"), ValueError)


def test_parse_status() -> None:
    assert parse_status("SERVING") is SERVING
    assert parse_status(" not_serving ") is NOT_SERVING
    assert parse_status("not-serving") is NOT_SERVING
    assert parse_status("Service_Unknown") is SERVICE_UNKNOWN
    assert parse_status("0") is UNKNOWN
    assert parse_status(2) is NOT_SERVING
    assert parse_status(SERVING) is SERVING
    for bad in ("serv", "", "9", "\u00b2", 4, -1, True, 1.5, None):
        with pytest.raises(InvalidStatusError):
            parse_status(bad)  # type: ignore[arg-type]
    assert [int(s) for s in ServingStatus] == [0, 1, 2, 3]


# --------------------------------------------------------------- watchers


async def test_watch_yields_current_status_then_changes(autojump_clock: trio.abc.Clock) -> None:
    state = HealthState({"svc": SERVING})
    with state.watch("svc") as watcher, state.watch("nope") as unknown:
        assert await take(watcher) is SERVING
        assert await take(unknown) is SERVICE_UNKNOWN
        assert await next_or_none(watcher) is None
        state.set("svc", NOT_SERVING)
        assert await take(watcher) is NOT_SERVING
        state.set("nope", UNKNOWN)
        assert await take(unknown) is UNKNOWN


async def test_latest_status_wins_after_burst(autojump_clock: trio.abc.Clock) -> None:
    state = HealthState()
    cycle = [SERVING, NOT_SERVING, UNKNOWN]
    with state.watch("svc") as watcher:
        assert await take(watcher) is SERVICE_UNKNOWN
        for i in range(1000):
            state.set("svc", cycle[i % 3])
        # 999 % 3 == 0, so the burst ended on SERVING.
        assert state.get("svc") is SERVING
        # However many changes happened, the reader gets the latest once, then nothing.
        assert await take(watcher) is SERVING
        assert await next_or_none(watcher) is None

        # A burst that ends where the reader already is yields nothing at all.
        for i in range(1, 1000):
            state.set("svc", cycle[i % 3])
        state.set("svc", SERVING)
        assert await next_or_none(watcher) is None


async def test_no_consecutive_duplicates_under_random_load() -> None:
    producer_rng = random.Random(20240611)
    consumer_rng = random.Random(11062024)
    state = HealthState({"svc": SERVING})
    events = record_events(state)
    choices = [SERVING, NOT_SERVING, UNKNOWN]
    history = [SERVING]
    seen: list[ServingStatus] = []

    async def consume(watcher: Watcher) -> None:
        async for status in watcher:
            seen.append(status)
            for _ in range(consumer_rng.randrange(3)):
                await trio.lowlevel.checkpoint()

    with trio.fail_after(60), state.watch("svc") as watcher:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume, watcher)
            for _ in range(10_000):
                status = producer_rng.choice(choices)
                state.set("svc", status)
                if status != history[-1]:
                    history.append(status)
                if producer_rng.random() < 0.3:
                    await trio.lowlevel.checkpoint()
            state.end_watches()

    assert all(a != b for a, b in itertools.pairwise(seen)), "a status was yielded twice in a row"
    assert seen[0] is SERVING
    assert seen[-1] is history[-1]
    assert is_subsequence(seen, history)
    # The reader really ran concurrently and skipped some, not all, changes.
    assert 100 < len(seen) < len(history)
    # Listeners see every effective change, in order.
    assert [new for _, _, new in events] == history[1:]
    assert state.watcher_count == 0


async def test_services_are_isolated(autojump_clock: trio.abc.Clock) -> None:
    state = HealthState({"a": SERVING, "b": SERVING})
    wakeups_b: list[None] = []
    state.subscribe("b", lambda: wakeups_b.append(None))
    with state.watch("a") as watch_a, state.watch("b") as watch_b:
        assert await take(watch_a) is SERVING
        assert await take(watch_b) is SERVING
        for i in range(101):
            state.set("a", NOT_SERVING if i % 2 == 0 else SERVING)
        state.set("c", NOT_SERVING)
        state.remove("c")
        # b's subscribers were never even woken.
        assert wakeups_b == []
        assert await next_or_none(watch_b) is None
        assert await take(watch_a) is NOT_SERVING
        assert state.get("b") is SERVING


async def test_cancelled_iteration_unregisters(autojump_clock: trio.abc.Clock) -> None:
    state = HealthState()
    got: list[ServingStatus] = []

    async def watch_forever(
        *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with state.watch("svc", owner="conn-1") as watcher:
            task_status.started()
            async for status in watcher:
                got.append(status)

    async with trio.open_nursery() as nursery:
        await nursery.start(watch_forever)
        await nursery.start(watch_forever)
        assert state.watcher_count == 2
        assert state.watcher_count_for("conn-1") == 2
        await trio.sleep(1)
        state.set("svc", NOT_SERVING)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()

    assert got == [SERVICE_UNKNOWN, SERVICE_UNKNOWN, NOT_SERVING, NOT_SERVING]
    assert state.watcher_count == 0
    assert state.watcher_count_for("conn-1") == 0
    # The per-service registry does not keep empty entries around.
    assert state.watched_service_count == 0
    assert state.watcher_owner_count == 0


async def test_close_and_aclose_unregister_and_end_iteration(
    autojump_clock: trio.abc.Clock,
) -> None:
    state = HealthState()
    watcher = state.watch("svc", owner="o")
    assert state.watcher_count == 1
    assert not watcher.closed
    await watcher.aclose()
    assert watcher.closed
    assert state.watcher_count == 0
    assert state.watcher_count_for("o") == 0
    with pytest.raises(StopAsyncIteration):
        await take(watcher)
    watcher.close()
    assert state.watcher_count == 0

    # close() from another task ends an iteration that is blocked waiting.
    blocked = state.watch("svc")
    finished = trio.Event()
    received: list[ServingStatus] = []

    async def reader() -> None:
        async for status in blocked:
            received.append(status)
        finished.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.sleep(1)
        assert not finished.is_set()
        blocked.close()
        with trio.fail_after(1):
            await finished.wait()
    assert received == [SERVICE_UNKNOWN]
    assert state.watcher_count == 0
    assert "closed" in repr(blocked)


def test_watcher_caps_total_and_per_owner() -> None:
    state = HealthState(max_watchers=3, max_watchers_per_owner=2)
    a1 = state.watch("x", owner="a")
    state.watch("y", owner="a")
    with pytest.raises(WatcherLimitError, match=r"owner 'a' already has 2 watchers \(limit 2\)"):
        state.watch("x", owner="a")
    assert state.watcher_count_for("a") == 2
    state.watch("x", owner="b")
    with pytest.raises(WatcherLimitError, match=r"limit 3"):
        state.watch("z")
    with pytest.raises(WatcherLimitError):
        state.watch("z", owner="c")
    assert state.watcher_count == 3
    assert state.watcher_count_for("c") == 0

    a1.close()
    a1.close()
    assert state.watcher_count == 2
    assert state.watcher_count_for("a") == 1
    state.watch("x", owner="a")
    assert state.watcher_count == 3
    assert state.watcher_count_for("a") == 2

    # Watchers without an owner only count towards the total.
    state = HealthState(max_watchers=5, max_watchers_per_owner=1)
    for _ in range(5):
        state.watch("x")
    assert state.watcher_count == 5

    assert HealthState(max_watchers=0).watcher_count == 0
    with pytest.raises(WatcherLimitError):
        HealthState(max_watchers=0).watch("x")


# ------------------------------------------------------- shutdown / resume


async def test_shutdown_and_resume_restore_configured_statuses(
    autojump_clock: trio.abc.Clock,
) -> None:
    state = HealthState({"a": SERVING, "b": NOT_SERVING, "c": UNKNOWN})
    events = record_events(state)
    with state.watch("a") as watch_a, state.watch("b") as watch_b, state.watch("") as watch_all:
        assert await take(watch_a) is SERVING
        assert await take(watch_b) is NOT_SERVING
        assert await take(watch_all) is SERVING

        state.shutdown()
        assert state.draining
        assert state.snapshot() == {"": NOT_SERVING, "a": NOT_SERVING, "b": NOT_SERVING,
                                    "c": NOT_SERVING}
        assert await take(watch_a) is NOT_SERVING
        assert await take(watch_all) is NOT_SERVING
        assert await next_or_none(watch_b) is None

        # Remembered but not published while draining.
        state.set("b", SERVING)
        state.set("a", UNKNOWN)
        assert state.get("b") is NOT_SERVING
        assert await next_or_none(watch_b) is None
        # A service added while draining appears, as NOT_SERVING.
        state.set("d", SERVING)
        assert state.get("d") is NOT_SERVING
        state.shutdown()

        state.resume()
        assert not state.draining
        assert state.snapshot() == {"": SERVING, "a": UNKNOWN, "b": SERVING, "c": UNKNOWN,
                                    "d": SERVING}
        assert await take(watch_a) is UNKNOWN
        assert await take(watch_b) is SERVING
        assert await take(watch_all) is SERVING
        state.resume()

    assert events == [
        ("", SERVING, NOT_SERVING),
        ("a", SERVING, NOT_SERVING),
        ("c", UNKNOWN, NOT_SERVING),
        ("d", None, NOT_SERVING),
        ("", NOT_SERVING, SERVING),
        ("a", NOT_SERVING, UNKNOWN),
        ("b", NOT_SERVING, SERVING),
        ("c", NOT_SERVING, UNKNOWN),
        ("d", NOT_SERVING, SERVING),
    ]


async def test_remove_makes_service_unknown(autojump_clock: trio.abc.Clock) -> None:
    state = HealthState({"svc": SERVING})
    events = record_events(state)
    with state.watch("svc") as watcher:
        assert await take(watcher) is SERVING
        assert state.remove("svc") is True
        assert state.get("svc") is None
        assert "svc" not in state
        assert len(state) == 1
        assert "svc" not in state.snapshot()
        assert await take(watcher) is SERVICE_UNKNOWN
        assert state.remove("svc") is False
        state.set("svc", NOT_SERVING)
        assert await take(watcher) is NOT_SERVING
        state.shutdown()
        state.remove("svc")
        assert await take(watcher) is SERVICE_UNKNOWN
    assert events == [
        ("svc", SERVING, None),
        ("svc", None, NOT_SERVING),
        ("", SERVING, NOT_SERVING),
        ("svc", NOT_SERVING, None),
    ]
    assert state.remove("") is True
    assert len(state) == 0


async def test_end_watches_finishes_iteration(autojump_clock: trio.abc.Clock) -> None:
    state = HealthState({"svc": SERVING})
    with state.watch("svc") as delivered, state.watch("svc") as fresh:
        assert await take(delivered) is SERVING
        state.set("svc", NOT_SERVING)
        state.end_watches()
        assert state.watches_ended
        # Each gets the current status it has not seen yet, then stops.
        assert [s async for s in delivered] == [NOT_SERVING]
        assert [s async for s in fresh] == [NOT_SERVING]
        assert delivered.closed
        assert fresh.closed
        assert state.watcher_count == 0

    # New watchers end too until resume().
    with state.watch("other") as late:
        assert [s async for s in late] == [SERVICE_UNKNOWN]

    # A reader blocked waiting for a change is released.
    state.resume()
    assert not state.watches_ended
    result: list[ServingStatus] = []
    async with trio.open_nursery() as nursery:
        watcher = state.watch("svc")

        async def reader() -> None:
            with watcher:
                result.extend([s async for s in watcher])

        nursery.start_soon(reader)
        await trio.sleep(1)
        assert result == []
        assert state.watcher_count == 1
        state.end_watches()
    assert result == [NOT_SERVING]
    assert state.watcher_count == 0

    state.resume()
    with state.watch("svc") as watcher:
        assert await take(watcher) is NOT_SERVING
        assert await next_or_none(watcher) is None


# -------------------------------------------------------------- listeners


def test_listener_events_and_removal(caplog: pytest.LogCaptureFixture) -> None:
    state = HealthState()
    events = record_events(state)
    calls: list[str] = []

    def broken(service: str, old: ServingStatus | None, new: ServingStatus | None) -> None:
        calls.append(service)
        raise RuntimeError("listener bug")

    remove_broken = state.add_listener(broken)
    state.set("a", SERVING)
    state.set("a", SERVING)
    state.set("a", NOT_SERVING)
    state.remove("a")
    state.remove("a")
    assert events == [
        ("a", None, SERVING),
        ("a", SERVING, NOT_SERVING),
        ("a", NOT_SERVING, None),
    ]
    assert calls == ["a", "a", "a"]
    # The failure was logged, and did not stop the set() or later listeners.
    errors = [r for r in caplog.records if r.name == "health" and r.levelno == logging.ERROR]
    assert len(errors) == 3
    assert errors[0].exc_info is not None
    assert "listener bug" in str(errors[0].exc_info[1])

    remove_broken()
    remove_broken()
    state.set("b", SERVING)
    assert calls == ["a", "a", "a"]
    assert events[-1] == ("b", None, SERVING)

    # The same callable added twice is called twice; each remover drops one.
    twice: list[Event] = []

    def append(service: str, old: ServingStatus | None, new: ServingStatus | None) -> None:
        twice.append((service, old, new))

    first = state.add_listener(append)
    state.add_listener(append)
    state.set("b", NOT_SERVING)
    assert len(twice) == 2
    first()
    state.set("b", SERVING)
    assert len(twice) == 3


def test_reentrant_listener_keeps_events_consistent() -> None:
    state = HealthState({"a": SERVING, "b": SERVING, "c": SERVING})
    events = record_events(state)

    def meddle(service: str, old: ServingStatus | None, new: ServingStatus | None) -> None:
        # While shutdown() is still walking the services, change later ones.
        if service == "a" and new is NOT_SERVING:
            state.remove("b")
            state.set("c", UNKNOWN)

    state.add_listener(meddle)
    state.shutdown()
    state.resume()
    # For every service, each event starts where the previous one ended.
    last: dict[str, ServingStatus | None] = {"": SERVING, "a": SERVING, "b": SERVING,
                                             "c": SERVING}
    for service, old, new in events:
        assert old == last.get(service), (service, old, new)
        last[service] = new
    assert last == {"": SERVING, "a": SERVING, "b": None, "c": UNKNOWN}
    assert state.snapshot() == {"": SERVING, "a": SERVING, "c": UNKNOWN}


# ----------------------------------------------------------------- threads


async def test_set_threadsafe_from_worker_thread() -> None:
    state = HealthState()
    trio_thread = threading.get_ident()
    listener_threads: set[int] = set()
    state.add_listener(lambda *_: listener_threads.add(threading.get_ident()))
    state.set("other", SERVING)

    def worker() -> None:
        state.set_threadsafe("svc", NOT_SERVING)
        state.set_threadsafe("svc", SERVING)
        state.remove_threadsafe("other")
        with pytest.raises(InvalidStatusError):
            state.set_threadsafe("svc", SERVICE_UNKNOWN)
        with pytest.raises(RuntimeError, match="set_threadsafe"):
            state.set("svc", NOT_SERVING)
        with pytest.raises(RuntimeError, match="Trio thread"):
            state.shutdown()

    with trio.fail_after(10), state.watch("svc") as watcher:
        assert await take(watcher) is SERVICE_UNKNOWN
        await trio.to_thread.run_sync(worker)
        # The hand-offs were queued before the worker's result, so they ran first.
        assert state.get("svc") is SERVING
        assert "other" not in state
        assert await take(watcher) is SERVING
    assert listener_threads == {trio_thread}
    assert not state.draining


def test_threadsafe_calls_apply_directly_without_a_live_run() -> None:
    state = HealthState()
    thread = threading.Thread(target=state.set_threadsafe, args=("svc", NOT_SERVING))
    thread.start()
    thread.join()
    assert state.get("svc") is NOT_SERVING

    async def use_in_trio() -> None:
        state.bind_trio()
        state.set("svc", SERVING)

    trio.run(use_in_trio)
    # The run the state was bound to has finished: both kinds of call work.
    errors: list[BaseException] = []

    def from_thread() -> None:
        try:
            state.set_threadsafe("svc", UNKNOWN)
            state.set("late", SERVING)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=from_thread)
    thread.start()
    thread.join()
    assert errors == []
    assert state.get("svc") is UNKNOWN
    assert state.get("late") is SERVING
    with pytest.raises(RuntimeError, match=r"inside trio\.run"):
        state.bind_trio()


async def test_explicit_trio_token_binding() -> None:
    token = trio.lowlevel.current_trio_token()
    state = HealthState(trio_token=token)
    with state.watch("svc") as watcher:
        assert await take(watcher) is SERVICE_UNKNOWN
        await trio.to_thread.run_sync(state.set_threadsafe, "svc", SERVING)
        with trio.fail_after(10):
            assert await take(watcher) is SERVING
