"""The connection driver as an operator and a test see it: DEBUG log lines and read-only stats.

Over an in-memory connection with the raw h2 client.
"""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from wire import ConnectionStats, Server, ServerCall, ServerOptions, StatusCode, unary_unary

from .h2client import grpc_frame, grpc_request_headers, open_memory_client
from .service import BLOCK, ECHO, FAIL, SLEEP, STREAM_FOREVER, WireService
from .test_server_raw import BOUND, assert_ok, unary

SECRET = "Bearer s3cr3t-t0ken"
PAYLOAD = b"payload-bytes-7d1f"
SLOW = "/test.Slow/Wait"


def _call_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "wire.server"
            and r.levelno == logging.DEBUG and ": call " in r.getMessage()]


async def test_debug_lines_name_method_code_and_reason_never_values(
        server: Server, service: WireService, caplog: pytest.LogCaptureFixture) -> None:
    secret_headers = [(b"authorization", SECRET.encode()), (b"x-api-key", b"k3y-v4lue-99")]
    with caplog.at_level(logging.DEBUG, logger="wire.server"):
        async with open_memory_client(server.serve_stream) as client:
            ok = await unary(client, ECHO, PAYLOAD, headers=secret_headers)
            failed = await unary(client, FAIL, b"no")
            unknown = await unary(client, "/test.Wire/Nope", PAYLOAD, headers=secret_headers)
            bad_type = [(k, b"application/s3cr3t-type" if k == b"content-type" else v)
                        for k, v in grpc_request_headers(ECHO)]
            refused = await client.wait(await client.request(ECHO, grpc_frame(PAYLOAD),
                                                             base=bad_type))
            expired = await unary(client, SLEEP, PAYLOAD, headers=[(b"grpc-timeout", b"1m")])
            sid = await client.request(SLEEP, grpc_frame(PAYLOAD), headers=secret_headers)
            with trio.fail_after(BOUND):
                await service.started.wait()
            await client.reset(sid)
            with trio.fail_after(BOUND):
                await service.cancelled.wait()
    assert_ok(ok, [PAYLOAD])
    assert failed.grpc_status == StatusCode.FAILED_PRECONDITION
    assert unknown.grpc_status == StatusCode.UNIMPLEMENTED
    assert expired.grpc_status == StatusCode.DEADLINE_EXCEEDED
    assert refused.headers.get(":status") == "415"

    lines = _call_lines(caplog)
    # One line per call, however it ended: every ending goes through the same path.
    assert len(lines) == 5, lines
    echo, fail, nope, deadline, reset = lines
    assert echo.startswith("memory: call /test.Wire/Echo ended OK in ")
    assert echo.endswith(" ms")
    assert "/test.Wire/Fail ended FAILED_PRECONDITION" in fail
    assert "call '/test.Wire/Nope' ended UNIMPLEMENTED" in nope
    assert "/test.Wire/Sleep ended DEADLINE_EXCEEDED" in deadline
    assert "/test.Wire/Sleep ended CANCELLED" in reset
    assert reset.endswith(": 'client reset the stream'")

    messages = [r.getMessage() for r in caplog.records if r.name.startswith("wire")]
    assert any(m == "memory: connection opened (local memory)" for m in messages), messages
    assert "memory: connection closed (client closed the connection)" in messages
    assert f"memory: request on stream {refused.stream_id} refused (HTTP 415, INTERNAL)" in messages
    for text in messages:
        assert "s3cr3t" not in text
        assert "k3y-v4lue" not in text
        assert "payload-bytes" not in text


async def test_call_duration_is_logged(autojump_clock: trio.testing.MockClock,
                                       caplog: pytest.LogCaptureFixture) -> None:
    async def wait(request: bytes, call: ServerCall) -> bytes:
        await trio.sleep(2.5)
        return request

    server = Server([unary_unary(SLOW, wait, bytes, bytes)])
    with caplog.at_level(logging.DEBUG, logger="wire.server"):
        async with open_memory_client(server.serve_stream) as client:
            assert_ok(await unary(client, SLOW, b"x"), [b"x"])
    assert _call_lines(caplog) == [f"memory: call {SLOW} ended OK in 2500.0 ms"]


async def test_idle_timeout_is_the_close_reason(autojump_clock: trio.testing.MockClock,
                                                caplog: pytest.LogCaptureFixture) -> None:
    server = Server(WireService().handlers(), options=ServerOptions(idle_timeout=5))
    with caplog.at_level(logging.DEBUG, logger="wire.server"):
        async with open_memory_client(server.serve_stream) as client:
            await unary(client, ECHO)
            await trio.sleep(6)  # virtual time, past the idle timeout
            assert client.goaways
    assert "memory: connection closed (idle timeout)" in [r.getMessage() for r in caplog.records]


async def test_no_debug_lines_unless_enabled(server: Server,
                                             caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="wire.server"):
        async with open_memory_client(server.serve_stream) as client:
            await unary(client, ECHO)
    assert [r for r in caplog.records if r.name == "wire.server"] == []


# ------------------------------------------------------------------------------ stats


async def test_connection_stats_follow_calls(server: Server, service: WireService) -> None:
    assert server.connection_count == 0
    assert list(server.connections()) == []
    async with open_memory_client(server.serve_stream) as client:
        await unary(client, ECHO)
        [info] = server.connections()
        assert info.peer == "memory"
        assert server.connection_count == 1
        [idle] = server.connection_stats()
        assert idle == ConnectionStats(info=info, calls=frozenset(), open_streams=0,
                                       held=frozenset(), pending_output={}, write_backlog=0,
                                       draining=False)
        sid = await client.request(BLOCK, grpc_frame(b"b"))
        with trio.fail_after(BOUND):
            await service.all_in.wait()
        [busy] = server.connection_stats()
        assert busy.info is info
        assert busy.calls == {sid}
        assert busy.open_streams == 1
        assert busy.pending_output == {sid: 0}
        assert busy.held == frozenset()
        service.release.set()
        with trio.fail_after(BOUND):
            assert_ok(await client.wait(sid), [b"b"])
        await trio.testing.wait_all_tasks_blocked()
        [done] = server.connection_stats()
        assert done.calls == frozenset()
        assert done.open_streams == 0
    with trio.fail_after(BOUND):
        await server.wait_no_connections()
    assert server.connection_count == 0
    assert server.connection_stats() == []


async def test_connection_stats_show_a_stream_held_by_flow_control(
        server: Server, service: WireService) -> None:
    high = server.options.stream_high_water
    async with open_memory_client(server.serve_stream, initial_window_size=0) as client:
        sid = await client.request(STREAM_FOREVER, grpc_frame(b""))
        with trio.fail_after(BOUND):
            await service.started.wait()
        await trio.testing.wait_all_tasks_blocked()
        [stats] = server.connection_stats()
        assert stats.held == {sid}
        assert high < stats.pending_output[sid] <= high + 1005  # one message past high water
        await client.reset(sid)
        with trio.fail_after(BOUND):
            await service.cancelled.wait()
        await trio.testing.wait_all_tasks_blocked()
        [after] = server.connection_stats()
        assert after.calls == frozenset()
        assert after.held == frozenset()


async def test_shutdown_marks_connections_draining(server: Server,
                                                   service: WireService) -> None:
    async with open_memory_client(server.serve_stream) as client:
        sid = await client.request(BLOCK, grpc_frame(b"b"))
        with trio.fail_after(BOUND):
            await service.all_in.wait()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.shutdown, BOUND)
            await trio.testing.wait_all_tasks_blocked()
            [stats] = server.connection_stats()
            assert stats.draining
            assert stats.calls == {sid}
            service.release.set()
        assert_ok(await client.wait(sid), [b"b"])
    assert server.connection_count == 0


async def test_drain_one_connection(server: Server, service: WireService,
                                    caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="wire.server"):
        async with open_memory_client(server.serve_stream) as client, \
                open_memory_client(server.serve_stream) as other:
            sid = await client.request(BLOCK, grpc_frame(b"kept"))
            with trio.fail_after(BOUND):
                await service.all_in.wait()
            [info] = [s.info for s in server.connection_stats() if s.calls]
            assert server.drain_connection(info)
            await trio.testing.wait_all_tasks_blocked()
            # The two-step drain (RFC 9113 section 6.8): GOAWAY 2^31-1 and a PING, then,
            # after the ack, the GOAWAY naming the last stream accepted.
            assert [(g.error_code, g.last_stream_id) for g in client.goaways] == [
                (0, 2**31 - 1), (0, sid)]
            assert other.goaways == []
            # The call in flight finishes; then the drained connection closes.
            service.release.set()
            assert_ok(await client.wait(sid), [b"kept"])
            with trio.fail_after(BOUND):
                while info in list(server.connections()):
                    await trio.testing.wait_all_tasks_blocked()
            assert server.connection_count == 1
            assert_ok(await unary(other, ECHO, b"still"), [b"still"])
            assert not server.drain_connection(info)
    messages = [r.getMessage() for r in caplog.records]
    assert "memory: connection closed (drained by the application)" in messages
