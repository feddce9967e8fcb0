"""``wire.reflection.add_reflection``: ServerReflectionInfo served as a bidi method.

Our own client runs the bidi calls over an in-memory stream: one request after another on one
stream, answered in order, the v1 and v1alpha paths, an application's service added to the
returned registry, and a server without reflection answering UNIMPLEMENTED (what makes newer
clients fall back from v1 to v1alpha, and grpcurl say "does not support the reflection API").
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from google.protobuf import descriptor_pb2

from wire import Channel, RpcError, Server, StatusCode, open_channel
from wire._reflection_pb2 import v1
from wire.reflection import (
    METHOD_PATHS,
    V1_SERVICE,
    V1ALPHA_SERVICE,
    ReflectionVersion,
    add_reflection,
)

WAIT = 10.0


@asynccontextmanager
async def connected(server: Server) -> AsyncIterator[Channel]:
    async with trio.open_nursery() as nursery:

        async def connect() -> trio.abc.Stream:
            client, server_side = trio.testing.memory_stream_pair()
            nursery.start_soon(server.serve_stream, server_side)
            return client

        async with open_channel("memory:1", connector=connect) as channel:
            yield channel
        nursery.cancel_scope.cancel()


def _app_file() -> bytes:
    proto = descriptor_pb2.FileDescriptorProto(name="app/app.proto", package="app",
                                               syntax="proto3")
    proto.message_type.add(name="Ping")
    proto.service.add(name="App").method.add(name="Do", input_type=".app.Ping",
                                             output_type=".app.Ping")
    return proto.SerializeToString()


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_one_stream_answers_each_request_in_order(version: ReflectionVersion) -> None:
    server = Server()
    registry = add_reflection(server)
    registry.add_file_descriptor(_app_file())
    registry.add_service("app.App")
    requests = [
        v1.ServerReflectionRequest(list_services=""),
        v1.ServerReflectionRequest(file_containing_symbol="app.App.Do"),
        v1.ServerReflectionRequest(file_containing_symbol="no.such.Thing"),
        v1.ServerReflectionRequest(file_by_filename="app/app.proto"),
    ]
    async with connected(server) as channel, \
            channel.stream_stream(METHOD_PATHS[version], timeout=WAIT) as stream:
        answers = []
        for request in requests:
            await stream.send(request.SerializeToString())
            data = await stream.receive()
            assert data is not None
            answers.append(v1.ServerReflectionResponse.FromString(data))
        await stream.done_writing()
        assert await stream.receive() is None
    names = [s.name for s in answers[0].list_services_response.service]
    assert names == ["app.App", V1_SERVICE, V1ALPHA_SERVICE]
    found = answers[1].file_descriptor_response.file_descriptor_proto
    assert [descriptor_pb2.FileDescriptorProto.FromString(f).name for f in found] == [
        "app/app.proto"]
    assert answers[2].error_response.error_code == StatusCode.NOT_FOUND
    # Asked again on the same stream, the requested file is sent again (grpc-go does too).
    assert len(answers[3].file_descriptor_response.file_descriptor_proto) == 1
    assert all(a.original_request == r for a, r in zip(answers, requests, strict=True))


async def test_only_the_versions_asked_for_are_served() -> None:
    server = Server()
    registry = add_reflection(server, versions=("v1alpha",))
    assert registry.service_names == (V1ALPHA_SERVICE,)
    assert METHOD_PATHS["v1"] not in server.methods
    with pytest.raises(ValueError, match="unknown reflection version"):
        add_reflection(Server(), versions=("v2",))  # type: ignore[arg-type]
    async with connected(server) as channel, \
            channel.stream_stream(METHOD_PATHS["v1"], timeout=WAIT) as stream:
        await stream.send(v1.ServerReflectionRequest(list_services="").SerializeToString())
        with pytest.raises(RpcError) as info:
            await stream.receive()
    # A client trying v1 first learns to fall back to v1alpha.
    assert info.value.code is StatusCode.UNIMPLEMENTED


async def test_a_request_without_a_kind_ends_the_call_invalid_argument() -> None:
    server = Server()
    add_reflection(server)
    async with connected(server) as channel, \
            channel.stream_stream(METHOD_PATHS["v1"], timeout=WAIT) as stream:
        await stream.send(v1.ServerReflectionRequest(host="h").SerializeToString())
        with pytest.raises(RpcError) as info:
            await stream.receive()
    assert info.value.code is StatusCode.INVALID_ARGUMENT
