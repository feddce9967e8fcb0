"""The status map's thread bridge: which thread may call what, and how changes cross over.

Each test uses real threads (a worker thread, or a second Trio run in its own thread) with
generous timeouts; the assertions are about order and place, never about time.
"""

from __future__ import annotations

import threading

import pytest
import trio

from health import HealthState, ServingStatus

SERVING = ServingStatus.SERVING
NOT_SERVING = ServingStatus.NOT_SERVING

LIMIT = 10.0


async def test_set_threadsafe_has_taken_effect_when_it_returns() -> None:
    # Created inside the run: bound to it at once, before any other use.
    state = HealthState()
    seen_in: list[int] = []
    state.add_listener(lambda *_: seen_in.append(threading.get_ident()))

    def worker() -> ServingStatus | None:
        state.set_threadsafe("svc", NOT_SERVING)
        # Already applied (on the Trio thread) by the time the call returns.
        return state.get("svc")

    with trio.fail_after(LIMIT):
        assert await trio.to_thread.run_sync(worker) is NOT_SERVING
    assert seen_in == [threading.get_ident()]


async def test_a_thread_running_another_trio_loop_hands_changes_over() -> None:
    state = HealthState()
    state.bind_trio()
    errors: list[BaseException] = []

    def other_loop() -> None:
        async def main() -> None:
            # Inside another run: a plain set() would be a foreign thread's; the threadsafe
            # form queues the change without blocking this loop on ours.
            state.set_threadsafe("svc", SERVING)
            state.remove_threadsafe("gone")
            await trio.lowlevel.checkpoint()

        try:
            trio.run(main)
        except BaseException as exc:
            errors.append(exc)

    state.set("gone", SERVING)
    with trio.fail_after(LIMIT):
        await trio.to_thread.run_sync(lambda: _run_thread(other_loop))
        # The queued changes run at our next checkpoint, in order.
        await trio.lowlevel.checkpoint()
    assert state.get("svc") is SERVING
    assert "gone" not in state
    assert errors == []


def _run_thread(target: object) -> None:
    thread = threading.Thread(target=target)  # type: ignore[arg-type]
    thread.start()
    thread.join(LIMIT)


def test_after_the_bound_run_ends_a_plain_call_from_another_thread_is_allowed() -> None:
    state = HealthState()

    async def bind_in_a_run() -> None:
        state.set("svc", SERVING)  # first use binds the state to this run

    errors: list[BaseException] = []

    def in_thread() -> None:
        try:
            trio.run(bind_in_a_run)
        except BaseException as exc:
            errors.append(exc)

    _run_thread(in_thread)
    # That run (in another thread) is over: the state may be used here without a bridge.
    state.set("svc", NOT_SERVING)
    state.shutdown()
    assert state.get("svc") is NOT_SERVING
    assert errors == []


async def test_a_plain_call_from_a_foreign_thread_names_the_method() -> None:
    state = HealthState()
    state.bind_trio()

    def worker() -> None:
        with pytest.raises(RuntimeError, match=r"HealthState\.remove\(\) called from a thread"):
            state.remove("svc")
        with pytest.raises(RuntimeError, match=r"HealthState\.watch\(\)"):
            state.subscribe("svc", lambda: None)

    with trio.fail_after(LIMIT):
        await trio.to_thread.run_sync(worker)
    assert state.watcher_count == 0
