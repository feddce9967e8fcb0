"""Tests of ``health.client.HealthClient``: against grpcio's health server and against ours.

The grpcio server (grpcio-health-checking) runs as a subprocess driven through stdin (see
``tests/grpcio_health_server.py``); the project's own ``HealthServer`` runs in memory.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio
import trio.testing

from health._health_pb2 import HealthCheckResponse
from health.client import CHECK_PATH, HealthClient, HealthWatchStream
from health.protocol import parse_check_response
from health.status import ServingStatus
from tests.grpcio_health_server import SLOW_SERVICE, GrpcioHealthServer
from wire import RpcError, ServerConfig, StatusCode, open_channel

from .memnet import HealthBackend, channel_to


@pytest.fixture(scope="module")
def grpcio_server() -> Iterator[GrpcioHealthServer]:
    with GrpcioHealthServer.start() as server:
        yield server


# ---------------------------------------------------------------------- against grpcio


async def test_check_overall_health_against_grpcio(grpcio_server: GrpcioHealthServer) -> None:
    async with open_channel(grpcio_server.address, connect_timeout=5) as channel:
        client = HealthClient(channel)
        assert await client.check(timeout=5) is ServingStatus.SERVING


async def test_check_named_service_against_grpcio(grpcio_server: GrpcioHealthServer) -> None:
    await grpcio_server.set("check.a", "NOT_SERVING")
    async with open_channel(grpcio_server.address, connect_timeout=5) as channel:
        client = HealthClient(channel)
        assert await client.check("check.a", timeout=5) is ServingStatus.NOT_SERVING
        await grpcio_server.set("check.a", "SERVING")
        assert await client.check("check.a", timeout=5) is ServingStatus.SERVING


async def test_unknown_service_is_not_found_against_grpcio(
        grpcio_server: GrpcioHealthServer) -> None:
    async with open_channel(grpcio_server.address, connect_timeout=5) as channel:
        with pytest.raises(RpcError) as info:
            await HealthClient(channel).check("no.such.service", timeout=5)
    assert info.value.code is StatusCode.NOT_FOUND


async def test_gzip_and_metadata_against_grpcio(grpcio_server: GrpcioHealthServer) -> None:
    async with open_channel(grpcio_server.address, connect_timeout=5) as channel:
        client = HealthClient(channel, metadata=[("x-probe", "1"), ("x-trace-bin", b"\x01")],
                              compression="gzip")
        assert await client.check(timeout=5) is ServingStatus.SERVING


async def test_list_against_grpcio_is_an_rpc_error_if_unimplemented(
        grpcio_server: GrpcioHealthServer) -> None:
    async with open_channel(grpcio_server.address, connect_timeout=5) as channel:
        client = HealthClient(channel)
        failure: StatusCode | None = None
        try:
            statuses = await client.list(timeout=5)
        except RpcError as exc:
            failure = exc.code
        else:
            assert statuses[""] is ServingStatus.SERVING
        # grpcio-health-checking releases without List answer UNIMPLEMENTED.
        assert failure in (None, StatusCode.UNIMPLEMENTED)
        # The channel is still usable afterwards.
        assert await client.check(timeout=5) is ServingStatus.SERVING


async def test_deadline_against_grpcio(grpcio_server: GrpcioHealthServer) -> None:
    async with open_channel(grpcio_server.address, connect_timeout=5) as channel:
        with pytest.raises(RpcError) as info:
            await HealthClient(channel).check(SLOW_SERVICE, timeout=0.2)
    assert info.value.code is StatusCode.DEADLINE_EXCEEDED


async def test_watch_sees_status_flips_against_grpcio(
        grpcio_server: GrpcioHealthServer) -> None:
    await grpcio_server.set("watch.a", "SERVING")
    seen: list[ServingStatus] = []
    async with open_channel(grpcio_server.address, connect_timeout=5) as channel:
        client = HealthClient(channel)
        with trio.fail_after(10):
            async with client.watch("watch.a") as stream:
                async for status in stream:
                    seen.append(status)
                    if len(seen) == 1:
                        await grpcio_server.set("watch.a", "NOT_SERVING")
                    elif len(seen) == 2:
                        await grpcio_server.set("watch.a", "SERVING")
                    else:
                        break
    assert seen == [ServingStatus.SERVING, ServingStatus.NOT_SERVING, ServingStatus.SERVING]


async def test_watch_unknown_then_registered_against_grpcio(
        grpcio_server: GrpcioHealthServer) -> None:
    seen: list[ServingStatus] = []
    async with open_channel(grpcio_server.address, connect_timeout=5) as channel:
        with trio.fail_after(10):
            async with HealthClient(channel).watch("watch.later") as stream:
                async for status in stream:
                    seen.append(status)
                    if status is ServingStatus.SERVICE_UNKNOWN:
                        await grpcio_server.set("watch.later", "NOT_SERVING")
                    else:
                        break
    assert seen == [ServingStatus.SERVICE_UNKNOWN, ServingStatus.NOT_SERVING]


async def test_raw_unary_call_against_grpcio(grpcio_server: GrpcioHealthServer) -> None:
    # The wire client alone, with hand-made protobuf bytes.
    async with open_channel(grpcio_server.address, connect_timeout=5) as channel:
        result = await channel.unary_unary(CHECK_PATH, b"", timeout=5)
    resp = HealthCheckResponse()
    resp.ParseFromString(result.response)
    assert int(resp.status) == int(ServingStatus.SERVING)
    assert result.code is StatusCode.OK


async def test_unimplemented_method_against_grpcio(grpcio_server: GrpcioHealthServer) -> None:
    async with open_channel(grpcio_server.address, connect_timeout=5) as channel:
        with pytest.raises(RpcError) as info:
            await channel.unary_unary("/no.Such/Method", b"", timeout=5)
    assert info.value.code is StatusCode.UNIMPLEMENTED


# ---------------------------------------------------------------------- against our server


async def test_check_list_against_our_server(server_config: ServerConfig) -> None:
    async with trio.open_nursery() as nursery:
        backend = HealthBackend(nursery, server_config,
                                a=ServingStatus.SERVING, b=ServingStatus.NOT_SERVING)
        async with channel_to(backend) as channel:
            client = HealthClient(channel)
            assert await client.check() is ServingStatus.SERVING
            assert await client.check("b") is ServingStatus.NOT_SERVING
            with pytest.raises(RpcError) as info:
                await client.check("c")
            assert info.value.code is StatusCode.NOT_FOUND
            assert await client.list() == {
                "": ServingStatus.SERVING, "a": ServingStatus.SERVING,
                "b": ServingStatus.NOT_SERVING,
            }
        nursery.cancel_scope.cancel()


async def test_watch_against_our_server(autojump_clock: trio.testing.MockClock,
                                        server_config: ServerConfig) -> None:
    async with trio.open_nursery() as nursery:
        backend = HealthBackend(nursery, server_config, a=ServingStatus.SERVING)
        seen: list[ServingStatus] = []
        async with channel_to(backend) as channel, HealthClient(channel).watch("a") as stream:
            async for status in stream:
                seen.append(status)
                if len(seen) == 1:
                    backend.set("a", ServingStatus.NOT_SERVING)
                else:
                    break
        nursery.cancel_scope.cancel()
    assert seen == [ServingStatus.SERVING, ServingStatus.NOT_SERVING]


async def test_watch_ends_with_unavailable_on_server_shutdown(
        autojump_clock: trio.testing.MockClock, server_config: ServerConfig) -> None:
    async with trio.open_nursery() as nursery:
        backend = HealthBackend(nursery, server_config)
        seen: list[ServingStatus] = []
        async with channel_to(backend) as channel:
            streams: list[HealthWatchStream] = []

            async def follow() -> None:
                async with HealthClient(channel).watch() as stream:
                    streams.append(stream)
                    async for status in stream:
                        seen.append(status)
                        if len(seen) == 1:
                            nursery.start_soon(backend.health.shutdown, 1.0)

            with pytest.raises(RpcError) as info:
                await follow()
            assert info.value.code is StatusCode.UNAVAILABLE
            assert streams[0].code is StatusCode.UNAVAILABLE
        nursery.cancel_scope.cancel()
    assert seen == [ServingStatus.SERVING, ServingStatus.NOT_SERVING]


async def test_unknown_status_number_is_reported_as_unknown() -> None:
    assert parse_check_response(b"\x08\x07") is ServingStatus.UNKNOWN
    with pytest.raises(RpcError) as info:
        parse_check_response(b"\xff\xff")
    assert info.value.code is StatusCode.INTERNAL


async def test_cancelling_a_watch_ends_it_on_both_sides(
        autojump_clock: trio.testing.MockClock, server_config: ServerConfig) -> None:
    async with trio.open_nursery() as nursery:
        backend = HealthBackend(nursery, server_config)
        async with channel_to(backend) as channel, HealthClient(channel).watch() as stream:
            assert await stream.__anext__() is ServingStatus.SERVING
            stream.cancel()
            with pytest.raises(RpcError) as info:
                await stream.__anext__()
            assert info.value.code is StatusCode.CANCELLED
            assert stream.code is StatusCode.CANCELLED
            # Once everything has run, the reset has reached the server and unregistered it.
            await trio.testing.wait_all_tasks_blocked()
            assert backend.health.state.watcher_count == 0
        nursery.cancel_scope.cancel()
