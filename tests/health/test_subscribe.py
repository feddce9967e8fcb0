"""``HealthState.subscribe`` (the task-free watcher) and the Watch stream built on it."""

from __future__ import annotations

import itertools
import logging

import pytest
import trio
import trio.testing

from health._health_pb2 import HealthCheckRequest, HealthCheckResponse
from health.errors import ServiceNameError, WatcherLimitError
from health.service import WATCH_PATH, HealthServer
from health.status import ServingStatus
from health.status_map import HealthState
from health.subscriptions import Subscription, SubscriptionRegistry
from tests.tasks import count_tasks
from tests.wire.h2client import grpc_frame, open_memory_client
from tests.wire.rawconn import BOUND
from wire import ServerConfig, ServerOptions, StatusCode

SERVING = ServingStatus.SERVING
NOT_SERVING = ServingStatus.NOT_SERVING
UNKNOWN = ServingStatus.UNKNOWN
SERVICE_UNKNOWN = ServingStatus.SERVICE_UNKNOWN


class Recorder:
    """A subscriber that counts notifications and takes on demand."""

    def __init__(self) -> None:
        self.notified = 0
        self.sub: Subscription | None = None

    def __call__(self) -> None:
        self.notified += 1


def subscribe(state: HealthState, service: str, owner: object = None,
              ) -> tuple[Subscription, Recorder]:
    rec = Recorder()
    sub = state.subscribe(service, rec, owner=owner)
    rec.sub = sub
    return sub, rec


# ------------------------------------------------------------------ HealthState.subscribe


def test_take_current_then_changes_never_twice() -> None:
    state = HealthState({"svc": SERVING})
    sub, rec = subscribe(state, "svc")
    assert rec.notified == 0  # no call for the current status: the subscriber takes it
    assert sub.take() is SERVING
    assert sub.take() is None
    state.set("svc", SERVING)  # not a change
    assert rec.notified == 0
    state.set("svc", NOT_SERVING)
    assert rec.notified == 1
    assert sub.take() is NOT_SERVING
    assert sub.take() is None


def test_latest_wins_and_flapping_back_is_not_news() -> None:
    state = HealthState({"svc": SERVING})
    sub, rec = subscribe(state, "svc")
    assert sub.take() is SERVING
    for status in (NOT_SERVING, UNKNOWN, NOT_SERVING):
        state.set("svc", status)
    assert rec.notified == 3
    assert sub.take() is NOT_SERVING  # intermediate statuses skipped
    state.set("svc", SERVING)
    state.set("svc", NOT_SERVING)
    assert sub.take() is None  # back where it was: nothing new to say


def test_unknown_service_then_set_then_removed_and_isolation() -> None:
    state = HealthState()
    sub, rec = subscribe(state, "later")
    other, other_rec = subscribe(state, "other")
    assert sub.take() is SERVICE_UNKNOWN
    state.set("later", SERVING)
    assert sub.take() is SERVING
    state.remove("later")
    assert sub.take() is SERVICE_UNKNOWN
    assert rec.notified == 2
    assert other_rec.notified == 0  # one service's changes never reach another's subscribers
    assert other.take() is SERVICE_UNKNOWN


def test_close_unregisters_and_silences() -> None:
    state = HealthState({"svc": SERVING})
    sub, rec = subscribe(state, "svc", owner="conn")
    assert state.watcher_count == 1
    assert state.watcher_count_for("conn") == 1
    sub.close()
    sub.close()  # idempotent
    assert sub.closed
    assert state.watcher_count == 0
    assert state.watcher_count_for("conn") == 0
    assert state.watched_service_count == 0
    assert state.watcher_owner_count == 0
    state.set("svc", NOT_SERVING)
    assert rec.notified == 0
    assert sub.take() is None


def test_limits_are_shared_with_watchers() -> None:
    state = HealthState(max_watchers=3, max_watchers_per_owner=2)
    watcher = state.watch("a", owner="x")
    subscribe(state, "b", owner="x")
    with pytest.raises(WatcherLimitError, match="owner 'x' already has 2"):
        subscribe(state, "c", owner="x")
    with pytest.raises(WatcherLimitError, match="owner 'x' already has 2"):
        state.watch("c", owner="x")
    subscribe(state, "c", owner="y")
    with pytest.raises(WatcherLimitError, match="3 watchers already registered"):
        subscribe(state, "d")
    watcher.close()
    subscribe(state, "d", owner="x")
    assert state.watcher_count == 3
    with pytest.raises(ServiceNameError):
        state.subscribe("x" * 2000, lambda: None)


def test_end_watches_notifies_and_marks_ending() -> None:
    state = HealthState({"svc": SERVING})
    sub, rec = subscribe(state, "svc")
    assert sub.take() is SERVING
    assert not sub.ending
    state.shutdown()
    assert rec.notified == 1
    state.end_watches()
    assert rec.notified == 2
    assert sub.ending
    assert sub.take() is NOT_SERVING
    state.resume()
    assert not sub.ending


def test_callback_failures_are_logged_and_closing_during_fan_out_is_safe(
        caplog: pytest.LogCaptureFixture) -> None:
    state = HealthState({"svc": SERVING})
    subs: list[Subscription] = []

    def close_all() -> None:
        for s in subs:
            s.close()

    def fail() -> None:
        raise RuntimeError("subscriber bug")

    subs.append(state.subscribe("svc", close_all))
    subs.append(state.subscribe("svc", fail))
    subs.append(state.subscribe("svc", close_all))
    with caplog.at_level(logging.ERROR, logger="health"):
        state.set("svc", NOT_SERVING)
        state.end_watches()
    assert state.get("svc") is NOT_SERVING
    assert state.watcher_count == 0
    assert all(s.closed for s in subs)


async def test_subscriptions_and_watchers_both_see_changes(
        autojump_clock: trio.abc.Clock) -> None:
    state = HealthState({"svc": SERVING})
    sub, _ = subscribe(state, "svc")
    with state.watch("svc") as watcher:
        assert await anext(watcher) is SERVING
        state.set("svc", NOT_SERVING)
        assert await anext(watcher) is NOT_SERVING
        assert sub.take() is NOT_SERVING
        assert state.watcher_count == 2


# ------------------------------------------------------------------ Watch over the wire


def response(status: ServingStatus) -> bytes:
    return HealthCheckResponse(status=int(status)).SerializeToString()


def request(service: str) -> bytes:
    return grpc_frame(HealthCheckRequest(service=service).SerializeToString())


async def test_idle_watch_streams_have_no_task(server_config: ServerConfig) -> None:
    hs = HealthServer(HealthState({"svc": SERVING}), config=server_config)
    async with open_memory_client(hs.server.serve_stream) as client:
        first = await client.request(WATCH_PATH, request("svc"))
        await client.wait_for(first, 5 + len(response(SERVING)))
        await trio.testing.wait_all_tasks_blocked()
        before = count_tasks()
        sids = [await client.request(WATCH_PATH, request("svc")) for _ in range(50)]
        for sid in sids:
            with trio.fail_after(BOUND):
                await client.wait_for(sid, 5 + len(response(SERVING)))
        await trio.testing.wait_all_tasks_blocked()
        assert count_tasks() == before
        assert hs.state.watcher_count == 51
        hs.set("svc", NOT_SERVING)
        for sid in [first, *sids]:
            with trio.fail_after(BOUND):
                rec = await client.wait_for(sid, 2 * (5 + len(response(SERVING))))
            assert rec.payloads() == [response(SERVING), response(NOT_SERVING)]


async def test_watch_deadline_and_reset_unregister(
        autojump_clock: trio.abc.Clock, server_config: ServerConfig) -> None:
    hs = HealthServer(HealthState({"svc": SERVING}), config=server_config)
    async with open_memory_client(hs.server.serve_stream) as client:
        timed = await client.request(WATCH_PATH, request("svc"),
                                     headers=[(b"grpc-timeout", b"2S")])
        reset = await client.request(WATCH_PATH, request("svc"))
        await client.wait_for(reset, 5)
        assert hs.state.watcher_count == 2
        await client.reset(reset)
        await trio.testing.wait_all_tasks_blocked()
        assert hs.state.watcher_count == 1
        with trio.fail_after(BOUND):
            rec = await client.wait(timed)
        assert rec.grpc_status == StatusCode.DEADLINE_EXCEEDED
        assert rec.payloads() == [response(SERVING)]
        assert hs.state.watcher_count == 0


async def test_watch_never_read_keeps_only_latest(server_config: ServerConfig) -> None:
    # A client that never opens its window: the server holds back once the stream is above
    # high water, and only the latest status goes out when the window opens.
    hs = HealthServer(HealthState({"w": SERVING}), options=ServerOptions(stream_high_water=64),
                      config=server_config)
    async with open_memory_client(hs.server.serve_stream, initial_window_size=0,
                                  auto_ack=False) as client:
        sid = await client.request(WATCH_PATH, request("w"))
        await trio.testing.wait_all_tasks_blocked()
        assert hs.state.watcher_count == 1
        for i in range(2000):
            hs.set("w", NOT_SERVING if i % 2 == 0 else SERVING)
            if i % 100 == 0:
                await trio.testing.wait_all_tasks_blocked()
        hs.set("w", UNKNOWN)
        await trio.testing.wait_all_tasks_blocked()
        assert client.streams[sid].data == b""
        # At most high water (64 bytes: about nine 7-byte messages) plus one was queued.
        client.conn.increment_flow_control_window(1 << 20, stream_id=sid)
        await client.flush()
        with trio.fail_after(BOUND):
            while True:
                got = [HealthCheckResponse.FromString(p).status
                       for p in client.streams[sid].payloads()]
                if got and got[-1] == UNKNOWN:
                    break
                await client.streams[sid].changed.wait()
        await trio.testing.wait_all_tasks_blocked()
        got = [HealthCheckResponse.FromString(p).status for p in client.streams[sid].payloads()]
    assert got[0] == SERVING
    assert got[-1] == UNKNOWN
    assert got.count(UNKNOWN) == 1
    assert all(a != b for a, b in itertools.pairwise(got))
    assert len(got) <= 64 // 7 + 3


def test_a_failing_callback_is_logged_and_set_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    state = HealthState()
    woken: list[str] = []

    def fail() -> None:
        raise RuntimeError("subscriber bug")

    failing = state.subscribe("svc", fail)
    state.subscribe("svc", lambda: woken.append("other"))
    with caplog.at_level(logging.ERROR, logger="health"):
        state.set("svc", NOT_SERVING)
    assert state.get("svc") is NOT_SERVING
    assert woken == ["other"]
    (record,) = [r for r in caplog.records if "subscription callback" in r.getMessage()]
    assert record.exc_info is not None
    assert "subscriber bug" in str(record.exc_info[1])
    assert repr(failing) == "<Subscription service='svc' owner=None open>"
    failing.close()
    assert repr(failing) == "<Subscription service='svc' owner=None closed>"


def test_the_registry_ignores_what_it_does_not_hold() -> None:
    registry = SubscriptionRegistry(max_total=2, max_per_owner=1)
    state = HealthState()
    sub = registry.subscribe(state, "svc", lambda: None, "conn")
    other = SubscriptionRegistry().subscribe(state, "svc", lambda: None, None)
    registry.unregister(other)  # never registered here
    assert registry.count == 1
    registry.unregister(sub)
    registry.unregister(sub)  # already gone
    assert (registry.count, registry.service_count, registry.owner_count) == (0, 0, 0)
