"""grpcio-reflection's client against our served reflection, over a real grpcio channel.

``ProtoReflectionDescriptorDatabase`` (v1alpha, as grpcio ships it) runs bidi
``ServerReflectionInfo`` calls on loopback TCP to our server on each HTTP/2 engine. It must find
the Health service and its messages, and an application's own service registered with its file
descriptor, imports included.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator

import grpc
import pytest
import trio
from google.protobuf import descriptor_pb2, descriptor_pool

from health.service import HealthService
from tests.interop.grpcio_streaming import CALL_TIMEOUT, grpcio_channel
from wire import Server, ServerConfig
from wire.reflection import V1_SERVICE, V1ALPHA_SERVICE, add_reflection

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("grpc_reflection") is None,
    reason="grpcio-reflection (test extra) is not installed",
)

HEALTH = "grpc.health.v1.Health"


def _app_file() -> descriptor_pb2.FileDescriptorProto:
    """An application's file that imports the health proto (to prove imports travel)."""
    proto = descriptor_pb2.FileDescriptorProto(name="app/echo.proto", package="app.v1",
                                               syntax="proto3")
    proto.dependency.append("grpc/health/v1/health.proto")
    message = proto.message_type.add(name="EchoReply")
    message.field.add(name="text", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                      label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    message.field.add(name="health", number=2,
                      type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
                      label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
                      type_name=".grpc.health.v1.HealthCheckResponse")
    service = proto.service.add(name="Echo")
    service.method.add(name="Say", input_type=".grpc.health.v1.HealthCheckRequest",
                       output_type=".app.v1.EchoReply")
    return proto


@pytest.fixture
async def target(http2: str, nursery: trio.Nursery) -> AsyncIterator[str]:
    server = Server(config=ServerConfig(http2=http2))
    registry = add_reflection(server)
    HealthService().attach(server, reflection=registry)
    # An application's service, described by serialized bytes (its import is health's file).
    registry.add_file_descriptor(_app_file().SerializeToString())
    registry.add_service("app.v1.Echo")
    _, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
    yield f"127.0.0.1:{port}"
    with trio.fail_after(CALL_TIMEOUT):
        await server.shutdown(grace=0)


def _lookup(target: str) -> dict[str, object]:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    channel = grpcio_channel(target)
    try:
        grpc.channel_ready_future(channel).result(timeout=CALL_TIMEOUT)
        database = ProtoReflectionDescriptorDatabase(channel)
        pool = descriptor_pool.DescriptorPool(database)
        health = pool.FindServiceByName(HEALTH)
        request = pool.FindMessageTypeByName("grpc.health.v1.HealthCheckRequest")
        status = pool.FindEnumTypeByName("grpc.health.v1.HealthCheckResponse.ServingStatus")
        say = pool.FindMethodByName("app.v1.Echo.Say")
        missing = False
        try:
            pool.FindMessageTypeByName("no.such.Message")
        except KeyError:
            missing = True
        return {
            "services": sorted(database.get_services()),
            "methods": [m.name for m in health.methods],
            "watch_streams": health.methods_by_name["Watch"].server_streaming,
            "request_fields": [f.name for f in request.fields],
            "service_unknown": status.values_by_name["SERVICE_UNKNOWN"].number,
            "say_output": say.output_type.fields_by_name["health"].message_type.full_name,
            "missing_is_key_error": missing,
        }
    finally:
        channel.close()


async def test_grpcio_reflection_client_finds_health_and_the_app(target: str) -> None:
    found = await trio.to_thread.run_sync(_lookup, target)
    assert found == {
        "services": sorted([HEALTH, V1_SERVICE, V1ALPHA_SERVICE, "app.v1.Echo"]),
        "methods": ["Check", "List", "Watch"],
        "watch_streams": True,
        "request_fields": ["service"],
        "service_unknown": 3,
        "say_output": "grpc.health.v1.HealthCheckResponse",
        "missing_is_key_error": True,
    }
