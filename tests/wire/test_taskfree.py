"""Task-free handler kinds: sync unary handlers run inline, and push streams (``PushCall``).

Over an in-memory connection with the raw h2 client, so that every frame is visible.
"""

from __future__ import annotations

import logging
from typing import Any

import h2.errors
import pytest
import trio
import trio.testing

from wire import (
    MethodKind,
    RpcError,
    Server,
    ServerCall,
    ServerOptions,
    StatusCode,
    unary_unary,
)
from wire.calls import PushCall
from wire.handlers import unary_stream_push

from .h2client import grpc_frame, open_memory_client
from .test_server_raw import BOUND, CANCEL, assert_ok, assert_trailers_only, unary

SYNC_ECHO = "/test.Sync/Echo"
SYNC_FAIL = "/test.Sync/Fail"
SYNC_BOOM = "/test.Sync/Boom"
SYNC_PARSE = "/test.Sync/Parse"
SYNC_META = "/test.Sync/Meta"
PUSH = "/test.Push/Subscribe"
PUSH_FAIL = "/test.Push/Fail"


def _identity(data: bytes) -> bytes:
    return data


def _strict(data: bytes) -> bytes:
    if data == b"bad":
        raise ValueError("not a request")
    return data


class TaskFreeService:
    """Sync unary methods, and a push stream whose calls the test drives by hand."""

    def __init__(self) -> None:
        self.calls: list[PushCall] = []
        self.closed: list[int] = []
        self.writable: list[int] = []
        self.tasks: list[trio.lowlevel.Task] = []

    def handlers(self) -> list[Any]:
        return [
            unary_unary(SYNC_ECHO, self.echo, _identity, _identity),
            unary_unary(SYNC_FAIL, self.fail, _identity, _identity),
            unary_unary(SYNC_BOOM, self.boom, _identity, _identity),
            unary_unary(SYNC_PARSE, self.echo, _strict, _identity),
            unary_unary(SYNC_META, self.meta, _identity, _identity),
            unary_stream_push(PUSH, self.start, _identity, _identity),
            unary_stream_push(PUSH_FAIL, self.start_fail, _identity, _identity),
        ]

    def echo(self, request: bytes, call: ServerCall) -> bytes:
        self.tasks.append(trio.lowlevel.current_task())
        return request

    def fail(self, request: bytes, call: ServerCall) -> bytes:
        raise RpcError(StatusCode.FAILED_PRECONDITION, "not now", metadata=[("x-why", "test")])

    def boom(self, request: bytes, call: ServerCall) -> bytes:
        raise KeyError("secret internals")

    def meta(self, request: bytes, call: ServerCall) -> bytes:
        call.set_initial_metadata([("x-initial", "1")])
        call.set_trailing_metadata([("x-trailing", "2")])
        return request

    def start(self, request: bytes, call: PushCall) -> None:
        self.calls.append(call)
        sid = call.stream_id
        call.on_close(lambda: self.closed.append(sid))
        call.on_writable(lambda: self.writable.append(sid))
        call.send(b"hello " + request)

    def start_fail(self, request: bytes, call: PushCall) -> None:
        call.on_close(lambda: self.closed.append(call.stream_id))
        if request == b"boom":
            raise KeyError("secret internals")
        raise RpcError(StatusCode.PERMISSION_DENIED, "no")


@pytest.fixture
def tf() -> TaskFreeService:
    return TaskFreeService()


@pytest.fixture
def tf_server(tf: TaskFreeService) -> Server:
    return Server(tf.handlers())


# ------------------------------------------------------------------------------ sync unary


def test_kind_detection() -> None:
    async def coro(request: bytes, call: ServerCall) -> bytes:
        return request

    class AsyncCallable:
        async def __call__(self, request: bytes, call: ServerCall) -> bytes:
            return request

    def plain(request: bytes, call: ServerCall) -> bytes:
        return request

    assert unary_unary("/a.B/C", coro, _identity, _identity).kind is MethodKind.UNARY_UNARY
    assert unary_unary("/a.B/C", AsyncCallable(), _identity,
                       _identity).kind is MethodKind.UNARY_UNARY
    assert unary_unary("/a.B/C", plain, _identity, _identity).kind is MethodKind.UNARY_UNARY_SYNC
    assert unary_unary("/a.B/C", plain, _identity, _identity,
                       sync=False).kind is MethodKind.UNARY_UNARY
    push = unary_stream_push("/a.B/C", lambda r, c: None, _identity, _identity)
    assert push.server_streaming
    assert not unary_unary("/a.B/C", plain, _identity, _identity).server_streaming


async def test_sync_unary_ok_runs_in_the_reader(tf_server: Server, tf: TaskFreeService) -> None:
    async with open_memory_client(tf_server.serve_stream) as client:
        first = await unary(client, SYNC_ECHO, b"one")
        second = await unary(client, SYNC_ECHO, b"two")
    assert_ok(first, [b"one"])
    assert_ok(second, [b"two"])
    # No task per call: both ran in the same (reader) task.
    assert len(tf.tasks) == 2
    assert tf.tasks[0] is tf.tasks[1]


async def test_sync_unary_metadata(tf_server: Server) -> None:
    async with open_memory_client(tf_server.serve_stream) as client:
        rec = await unary(client, SYNC_META, b"m")
    assert_ok(rec, [b"m"])
    assert rec.headers.get("x-initial") == "1"
    assert rec.trailers.get("x-trailing") == "2"


async def test_sync_unary_rpc_error(tf_server: Server) -> None:
    async with open_memory_client(tf_server.serve_stream) as client:
        rec = await unary(client, SYNC_FAIL)
    assert_trailers_only(rec, StatusCode.FAILED_PRECONDITION)
    assert rec.grpc_message == "not now"
    assert rec.trailers.get("x-why") == "test"


async def test_sync_unary_exception_is_unknown_and_logged(
        tf_server: Server, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="wire.server"):
        async with open_memory_client(tf_server.serve_stream) as client:
            rec = await unary(client, SYNC_BOOM)
            ok = await unary(client, SYNC_ECHO, b"still fine")
    assert_trailers_only(rec, StatusCode.UNKNOWN)
    assert "secret" not in (rec.grpc_message or "")
    assert any("handler for /test.Sync/Boom raised" in r.getMessage() for r in caplog.records)
    assert_ok(ok, [b"still fine"])


async def test_sync_unary_bad_request_is_internal(tf_server: Server) -> None:
    async with open_memory_client(tf_server.serve_stream) as client:
        rec = await unary(client, SYNC_PARSE, b"bad")
    assert_trailers_only(rec, StatusCode.INTERNAL)
    assert "unmarshalling" in (rec.grpc_message or "")


async def test_sync_unary_returning_a_coroutine_is_unknown(
        caplog: pytest.LogCaptureFixture) -> None:
    async def handler(request: bytes, call: ServerCall) -> bytes:
        return request

    # Forced sync by mistake: the coroutine is closed (no warning) and the call fails cleanly.
    server = Server([unary_unary(SYNC_ECHO, handler, _identity, _identity, sync=True)])
    with caplog.at_level(logging.ERROR, logger="wire.server"):
        async with open_memory_client(server.serve_stream) as client:
            rec = await unary(client, SYNC_ECHO)
    assert_trailers_only(rec, StatusCode.UNKNOWN)


async def test_sync_unary_deadline_passed_on_arrival(tf_server: Server,
                                                     tf: TaskFreeService) -> None:
    async with open_memory_client(tf_server.serve_stream) as client:
        rec = await unary(client, SYNC_ECHO, headers=[(b"grpc-timeout", b"0n")])
    assert rec.grpc_status == StatusCode.DEADLINE_EXCEEDED
    assert tf.tasks == []  # never ran


async def test_sync_unary_deadline_while_request_incomplete(
        tf_server: Server, tf: TaskFreeService, autojump_clock: trio.abc.Clock) -> None:
    async with open_memory_client(tf_server.serve_stream) as client:
        sid = await client.request(SYNC_ECHO, None, end_stream=False,
                                   headers=[(b"grpc-timeout", b"50m")])
        with trio.fail_after(BOUND):
            rec = await client.wait(sid)
        # The connection is fine afterwards.
        ok = await unary(client, SYNC_ECHO, b"next")
    assert rec.grpc_status == StatusCode.DEADLINE_EXCEEDED
    assert rec.reset_code == CANCEL
    assert tf.tasks == [tf.tasks[0]]  # only the second call ran
    assert_ok(ok, [b"next"])


async def test_sync_unary_with_deadline_answered_in_time_leaves_no_timer(
        tf_server: Server, autojump_clock: trio.abc.Clock) -> None:
    async with open_memory_client(tf_server.serve_stream) as client:
        for _ in range(3):
            rec = await unary(client, SYNC_ECHO, b"x", headers=[(b"grpc-timeout", b"1S")])
            assert_ok(rec, [b"x"])
        # Past every deadline: nothing fires on the answered calls.
        await trio.sleep(5)
        rec = await unary(client, SYNC_ECHO, b"y")
        assert_ok(rec, [b"y"])
        assert not client.goaways


# ------------------------------------------------------------------------------ push streams


async def _open_push(client: Any, tf: TaskFreeService, payload: bytes = b"w",
                     headers: list[tuple[bytes, bytes]] | None = None) -> tuple[int, PushCall]:
    before = len(tf.calls)
    sid = await client.request(PUSH, grpc_frame(payload), headers=headers or [])
    # In memory, "every task blocked" means the server has handled the request.
    await trio.testing.wait_all_tasks_blocked()
    assert len(tf.calls) == before + 1
    return sid, tf.calls[-1]


async def test_push_sends_and_finishes(tf_server: Server, tf: TaskFreeService) -> None:
    async with open_memory_client(tf_server.serve_stream) as client:
        sid, call = await _open_push(client, tf)
        rec = await client.wait_for(sid, 5 + len(b"hello w"))
        assert rec.payloads() == [b"hello w"]
        assert call.send(b"more")
        call.finish(StatusCode.OK)
        assert call.closed
        assert not call.send(b"too late")
        call.finish(StatusCode.INTERNAL)  # idempotent
        with trio.fail_after(BOUND):
            rec = await client.wait(sid)
    assert_ok(rec, [b"hello w", b"more"])
    assert tf.closed == [sid]  # on_close runs once, also for finish()


async def test_push_start_errors(tf_server: Server, tf: TaskFreeService,
                                 caplog: pytest.LogCaptureFixture) -> None:
    async with open_memory_client(tf_server.serve_stream) as client:
        denied = await unary(client, PUSH_FAIL, b"x")
        with caplog.at_level(logging.ERROR, logger="wire.server"):
            boom = await unary(client, PUSH_FAIL, b"boom")
    assert_trailers_only(denied, StatusCode.PERMISSION_DENIED)
    assert_trailers_only(boom, StatusCode.UNKNOWN)
    assert tf.closed == [denied.stream_id, boom.stream_id]


async def test_push_back_pressure_and_on_writable(tf: TaskFreeService) -> None:
    server = Server(tf.handlers(), options=ServerOptions(stream_high_water=64))
    async with open_memory_client(server.serve_stream, initial_window_size=0,
                                  auto_ack=False) as client:
        sid, call = await _open_push(client, tf)
        await trio.testing.wait_all_tasks_blocked()
        # Nothing can leave with a zero window; the producer is told to hold back once more
        # than the high-water mark is queued.
        results = [call.send(b"x" * 20) for _ in range(4)]
        assert results == [True, True, False, False]
        await trio.testing.wait_all_tasks_blocked()
        assert client.streams[sid].data == b""
        assert tf.writable == []
        # The client opens its window: the queue drains and on_writable runs (once).
        client.conn.increment_flow_control_window(1 << 20, stream_id=sid)
        await client.flush()
        rec = await client.wait_for(sid, 5 + 7 + 4 * 25)
        await trio.testing.wait_all_tasks_blocked()
        assert tf.writable == [sid]
        assert rec.payloads() == [b"hello w"] + [b"x" * 20] * 4
        assert call.send(b"again")


async def test_push_client_reset_runs_on_close(tf_server: Server, tf: TaskFreeService) -> None:
    async with open_memory_client(tf_server.serve_stream) as client:
        sid, call = await _open_push(client, tf)
        await client.reset(sid)
        await trio.testing.wait_all_tasks_blocked()
        assert call.closed
        assert tf.closed == [sid]
        assert not call.send(b"x")
        # The connection goes on.
        rec = await unary(client, SYNC_ECHO, b"after")
    assert_ok(rec, [b"after"])


async def test_push_connection_lost_runs_on_close(tf_server: Server,
                                                  tf: TaskFreeService) -> None:
    async with open_memory_client(tf_server.serve_stream) as client:
        sid, call = await _open_push(client, tf)
    # open_memory_client waited for serve_stream to return after the client closed.
    assert call.closed
    assert tf.closed == [sid]


async def test_push_deadline_ends_with_deadline_exceeded(
        tf_server: Server, tf: TaskFreeService, autojump_clock: trio.abc.Clock) -> None:
    async with open_memory_client(tf_server.serve_stream) as client:
        long_sid, long_call = await _open_push(client, tf, headers=[(b"grpc-timeout", b"10S")])
        sid, call = await _open_push(client, tf, headers=[(b"grpc-timeout", b"100m")])
        start = trio.current_time()
        with trio.fail_after(BOUND):
            rec = await client.wait(sid)
        assert trio.current_time() - start == pytest.approx(0.1, abs=0.01)
        assert rec.grpc_status == StatusCode.DEADLINE_EXCEEDED
        assert rec.payloads() == [b"hello w"]
        assert call.closed
        assert tf.closed == [sid]
        # The other call, with a later deadline, is still open until then.
        assert not long_call.closed
        assert long_call.send(b"later")
        with trio.fail_after(BOUND * 2):
            long_rec = await client.wait(long_sid)
        assert long_rec.grpc_status == StatusCode.DEADLINE_EXCEEDED
        assert tf.closed == [sid, long_sid]


async def test_push_shutdown_ends_after_grace(tf_server: Server, tf: TaskFreeService,
                                              autojump_clock: trio.abc.Clock) -> None:
    async with open_memory_client(tf_server.serve_stream) as client:
        sid, _call = await _open_push(client, tf)
        start = trio.current_time()
        with trio.fail_after(BOUND * 10):
            await tf_server.shutdown(5)
        assert trio.current_time() - start == pytest.approx(5, abs=0.1)
        rec = await client.wait(sid)
    assert rec.grpc_status == StatusCode.UNAVAILABLE
    assert rec.grpc_message == "server is shutting down"
    assert rec.payloads() == [b"hello w"]
    assert tf.closed == [sid]
    assert client.goaways
    assert client.goaways[0].error_code == h2.errors.ErrorCodes.NO_ERROR


async def test_push_finished_by_producer_lets_shutdown_complete(
        tf_server: Server, tf: TaskFreeService, autojump_clock: trio.abc.Clock) -> None:
    async with open_memory_client(tf_server.serve_stream) as client:
        sid, call = await _open_push(client, tf)
        tf_server.add_shutdown_hook(lambda: call.finish(StatusCode.UNAVAILABLE, "bye"))
        start = trio.current_time()
        await tf_server.shutdown(60)
        assert trio.current_time() - start < 1
        rec = await client.wait(sid)
    assert rec.grpc_status == StatusCode.UNAVAILABLE
    assert rec.grpc_message == "bye"


async def test_sync_call_waiting_for_its_request_ends_with_shutdown(
        tf_server: Server, tf: TaskFreeService, autojump_clock: trio.abc.Clock,
        caplog: pytest.LogCaptureFixture) -> None:
    # Its handler never ran: the status alone (Trailers-Only), logged once, like every ending.
    with caplog.at_level(logging.DEBUG, logger="wire.server"):
        async with open_memory_client(tf_server.serve_stream) as client:
            sid = await client.request(SYNC_META, grpc_frame(b"half"), end_stream=False)
            push_sid, _call = await _open_push(client, tf)
            with trio.fail_after(BOUND * 10):
                await tf_server.shutdown(2)
            rec = await client.wait(sid)
            push = await client.wait(push_sid)
    assert_trailers_only(rec, StatusCode.UNAVAILABLE)
    assert rec.grpc_message == "server is shutting down"
    assert rec.trailers.get("x-trailing") is None
    assert push.grpc_status == StatusCode.UNAVAILABLE
    assert tf.tasks == []
    ended = [r.getMessage() for r in caplog.records if " ended " in r.getMessage()]
    assert ended == [
        f"memory: call {SYNC_META} ended UNAVAILABLE in 2000.0 ms: 'server is shutting down'",
        f"memory: call {PUSH} ended UNAVAILABLE in 2000.0 ms",
    ]
