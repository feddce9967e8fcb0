"""Tests for wire.reflection (sans-I/O server reflection) and its generated proto module.

Requests and responses are encoded and decoded with the generated classes of
wire._reflection_pb2 (v1 and v1alpha) and with grpcio-reflection's own classes; grpcio's
reflection servicer and its client-side descriptor database serve as independent oracles. The
descriptors under test are built by hand in a private pool: three files with imports, nested
types, enums, oneofs, a service and extensions.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from health import _health_pb2
from wire import RpcError, StatusCode
from wire._reflection_pb2 import v1, v1alpha
from wire.reflection import (
    METHOD_PATHS,
    SERVICE_NAMES,
    V1_METHOD,
    V1ALPHA_METHOD,
    ReflectionRegistry,
    ReflectionStream,
    ReflectionVersion,
    serve_reflection_stream,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
#: grpcio-reflection (test extra) is the independent oracle of several tests.
needs_grpcio_reflection = pytest.mark.skipif(
    importlib.util.find_spec("grpc_reflection") is None,
    reason="grpcio-reflection is not installed (test extra: grpcio-reflection>=1.60)",
)
HEALTH = "grpc.health.v1.Health"
HEALTH_FILE = "grpc/health/v1/health.proto"
BASE, COMMON, APP = "test/base.proto", "test/common.proto", "test/app.proto"

FDP = descriptor_pb2.FileDescriptorProto
Field = descriptor_pb2.FieldDescriptorProto


# --- a small descriptor world ------------------------------------------------------------


def _field(
    name: str, number: int, kind: Field.Type.ValueType, type_name: str = "", **extra: Any
) -> Field:
    if type_name:
        # descriptor.proto is proto2: even an empty type_name would count as set.
        extra["type_name"] = type_name
    return Field(name=name, number=number, type=kind, label=Field.LABEL_OPTIONAL, **extra)


def _base_file() -> FDP:
    proto = FDP(name=BASE, package="test.base", syntax="proto2")
    base = proto.message_type.add(name="Base")
    base.extension_range.add(start=100, end=200)
    color = proto.enum_type.add(name="Color")
    color.value.add(name="RED", number=0)
    color.value.add(name="GREEN", number=1)
    return proto


def _common_file() -> FDP:
    proto = FDP(name=COMMON, package="test.common", syntax="proto2", dependency=[BASE])
    common = proto.message_type.add(name="Common")
    common.field.append(_field("color", 1, Field.TYPE_ENUM, ".test.base.Color"))
    return proto


def _app_file() -> FDP:
    proto = FDP(name=APP, package="test.app", syntax="proto2", dependency=[COMMON, BASE])
    outer = proto.message_type.add(name="Outer")
    inner = outer.nested_type.add(name="Inner")
    kind = inner.enum_type.add(name="Kind")
    kind.value.add(name="KIND_A", number=0)
    kind.value.add(name="KIND_B", number=1)
    outer.field.append(_field("inner", 1, Field.TYPE_MESSAGE, ".test.app.Outer.Inner"))
    outer.oneof_decl.add(name="choice")
    outer.field.append(_field("a", 2, Field.TYPE_STRING, oneof_index=0))
    outer.field.append(_field("b", 3, Field.TYPE_INT32, oneof_index=0))
    outer.extension.append(_field("nested_ext", 151, Field.TYPE_STRING, extendee=".test.base.Base"))
    proto.extension.append(_field("app_ext", 150, Field.TYPE_INT32, extendee=".test.base.Base"))
    service = proto.service.add(name="App")
    service.method.add(name="Do", input_type=".test.app.Outer", output_type=".test.common.Common")
    return proto


def _world() -> tuple[descriptor_pool.DescriptorPool, FileDescriptor]:
    pool = descriptor_pool.DescriptorPool()
    for proto in (_base_file(), _common_file(), _app_file()):
        pool.Add(proto)
    return pool, pool.FindFileByName(APP)


@pytest.fixture
def world() -> descriptor_pool.DescriptorPool:
    return _world()[0]


@pytest.fixture
def registry(world: descriptor_pool.DescriptorPool) -> ReflectionRegistry:
    registry = ReflectionRegistry()
    registry.add_pool_service(world, "test.app.App")
    registry.add_pool_service(_health_pb2.DESCRIPTOR.pool, HEALTH)
    registry.add_reflection_services()
    return registry


# --- helpers -----------------------------------------------------------------------------


def ask(stream: ReflectionStream, **fields: Any) -> v1.ServerReflectionResponse:
    request = v1.ServerReflectionRequest(**fields).SerializeToString()
    return v1.ServerReflectionResponse.FromString(stream.handle(request))


def file_names(response: v1.ServerReflectionResponse) -> list[str]:
    assert response.WhichOneof("message_response") == "file_descriptor_response", response
    protos = response.file_descriptor_response.file_descriptor_proto
    return [FDP.FromString(data).name for data in protos]


def assert_not_found(response: v1.ServerReflectionResponse, needle: str) -> None:
    assert response.WhichOneof("message_response") == "error_response", response
    assert response.error_response.error_code == StatusCode.NOT_FOUND
    assert needle in response.error_response.error_message


# --- the generated module ----------------------------------------------------------------


def _layout(file: FileDescriptor) -> dict[str, list[tuple[object, ...]]]:
    proto = FDP.FromString(file.serialized_pb)
    return {
        message.name: [
            (f.name, f.number, f.type, f.label, f.type_name.rpartition(".")[2],
             f.HasField("oneof_index"))
            for f in message.field
        ]
        for message in proto.message_type
    }


def test_v1_and_v1alpha_messages_have_one_wire_layout() -> None:
    # wire.reflection encodes both versions with v1's classes; this is what makes it sound.
    assert _layout(v1.DESCRIPTOR) == _layout(v1alpha.DESCRIPTOR)
    assert len(_layout(v1.DESCRIPTOR)) == 8


@needs_grpcio_reflection
def test_layout_matches_grpcio_reflection() -> None:
    from grpc_reflection.v1alpha import reflection_pb2

    assert _layout(v1alpha.DESCRIPTOR) == _layout(reflection_pb2.DESCRIPTOR)
    theirs = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]
    ours = v1alpha.DESCRIPTOR.services_by_name["ServerReflection"]
    assert ours.full_name == theirs.full_name == SERVICE_NAMES["v1alpha"]
    assert [m.name for m in ours.methods] == [m.name for m in theirs.methods]


def test_generated_module_is_private_and_named_ours() -> None:
    default = descriptor_pool.Default()
    assert v1.DESCRIPTOR.pool is v1alpha.DESCRIPTOR.pool
    assert v1.DESCRIPTOR.pool is not default
    assert v1.ServerReflectionRequest.__module__ == "wire._reflection_pb2"
    assert v1alpha.ErrorResponse.__qualname__ == "v1alpha.ErrorResponse"
    assert v1.DESCRIPTOR.name == "grpc/reflection/v1/reflection.proto"
    assert v1alpha.DESCRIPTOR.package == "grpc.reflection.v1alpha"
    for name in (v1.DESCRIPTOR.name, v1alpha.DESCRIPTOR.name):
        with pytest.raises(KeyError):
            default.FindFileByName(name)
    text = (REPO_ROOT / "wire" / "_reflection_pb2.py").read_text(encoding="utf-8")
    assert "Generated by proto/generate.py" in text.splitlines()[1]
    assert "_descriptor_pool.Default()" not in text
    assert "_symbol_database" not in text


def test_method_paths() -> None:
    assert V1_METHOD == "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
    assert V1ALPHA_METHOD == "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    assert METHOD_PATHS == {"v1": V1_METHOD, "v1alpha": V1ALPHA_METHOD}
    files: dict[ReflectionVersion, FileDescriptor] = {
        "v1": v1.DESCRIPTOR, "v1alpha": v1alpha.DESCRIPTOR,
    }
    for version, file in files.items():
        method = file.services_by_name["ServerReflection"].methods_by_name["ServerReflectionInfo"]
        assert f"/{method.containing_service.full_name}/{method.name}" == METHOD_PATHS[version]


# --- list_services and the echo ----------------------------------------------------------


def test_list_services_echoes_host_and_request(registry: ReflectionRegistry) -> None:
    response = ask(ReflectionStream(registry), host="example:50051", list_services="*")
    names = [s.name for s in response.list_services_response.service]
    assert names == sorted([HEALTH, "test.app.App", *SERVICE_NAMES.values()])
    assert response.valid_host == "example:50051"
    assert response.original_request == v1.ServerReflectionRequest(
        host="example:50051", list_services="*"
    )


def test_list_services_without_reflection_services() -> None:
    registry = ReflectionRegistry()
    registry.add_pool_service(_health_pb2.DESCRIPTOR.pool, HEALTH)
    registry.add_service("custom.NoDescriptor")
    response = ask(ReflectionStream(registry), list_services="")
    assert [s.name for s in response.list_services_response.service] == [
        "custom.NoDescriptor", HEALTH,
    ]
    # Listed without a descriptor: reflection cannot describe it.
    assert_not_found(ask(ReflectionStream(registry), file_containing_symbol="custom.NoDescriptor"),
                     "custom.NoDescriptor")


# --- file_by_filename and dependencies ---------------------------------------------------


def test_file_by_filename_sends_transitive_imports(registry: ReflectionRegistry) -> None:
    stream = ReflectionStream(registry)
    # Breadth first from the requested file; base.proto is imported twice but sent once.
    assert file_names(ask(stream, file_by_filename=APP)) == [APP, COMMON, BASE]
    assert stream.sent_files == {APP, COMMON, BASE}
    # The requested file is always sent; its already-sent imports are not.
    assert file_names(ask(stream, file_by_filename=COMMON)) == [COMMON]
    assert file_names(ask(stream, file_containing_symbol="test.base.Color")) == [BASE]
    # A new stream starts from nothing.
    assert file_names(ask(ReflectionStream(registry), file_by_filename=COMMON)) == [COMMON, BASE]


def test_file_bytes_are_the_registered_descriptors(registry: ReflectionRegistry) -> None:
    response = ask(ReflectionStream(registry), file_by_filename=HEALTH_FILE)
    assert list(response.file_descriptor_response.file_descriptor_proto) == [
        _health_pb2.DESCRIPTOR.serialized_pb
    ]


@pytest.mark.parametrize("name", ["no/such.proto", "", "test/app", "/test/app.proto"])
def test_unknown_file_is_not_found(registry: ReflectionRegistry, name: str) -> None:
    stream = ReflectionStream(registry)
    assert_not_found(ask(stream, host="h", file_by_filename=name), f"file {name!r}")
    assert stream.sent_files == frozenset()


def test_serialized_file_with_unregistered_import_is_sent_alone() -> None:
    registry = ReflectionRegistry()
    lonely = FDP(name="lonely.proto", package="lonely", dependency=["missing/dep.proto", BASE])
    lonely.message_type.add(name="Alone")
    registry.add_file_descriptor(lonely.SerializeToString())
    stream = ReflectionStream(registry)
    assert file_names(ask(stream, file_containing_symbol="lonely.Alone")) == ["lonely.proto"]
    # An import registered later is found by later requests.
    registry.add_file_descriptor(_base_file().SerializeToString())
    assert file_names(ask(stream, file_by_filename="lonely.proto")) == ["lonely.proto", BASE]


# --- file_containing_symbol --------------------------------------------------------------

SYMBOLS = {
    "test.app.App": APP,  # service
    "test.app.App.Do": APP,  # method
    "test.app.Outer": APP,  # message
    "test.app.Outer.Inner": APP,  # nested message
    "test.app.Outer.Inner.Kind": APP,  # nested enum
    "test.app.Outer.Inner.KIND_B": APP,  # enum value, scoped beside its enum
    "test.app.Outer.inner": APP,  # field
    "test.app.Outer.choice": APP,  # oneof
    "test.app.Outer.nested_ext": APP,  # extension declared inside a message
    "test.app.app_ext": APP,  # top-level extension
    "test.common.Common": COMMON,
    "test.common.Common.color": COMMON,
    "test.base.Base": BASE,
    "test.base.Color": BASE,
    "test.base.GREEN": BASE,  # top-level enum value
    HEALTH: HEALTH_FILE,
    f"{HEALTH}.Watch": HEALTH_FILE,
    "grpc.health.v1.HealthCheckResponse.ServingStatus": HEALTH_FILE,
    "grpc.health.v1.HealthListResponse.StatusesEntry": HEALTH_FILE,  # map entry
    SERVICE_NAMES["v1alpha"]: "grpc/reflection/v1alpha/reflection.proto",
    "grpc.reflection.v1.ServerReflectionRequest": "grpc/reflection/v1/reflection.proto",
}


@pytest.mark.parametrize(("symbol", "file"), sorted(SYMBOLS.items()))
def test_file_containing_symbol(registry: ReflectionRegistry, symbol: str, file: str) -> None:
    names = file_names(ask(ReflectionStream(registry), file_containing_symbol=symbol))
    assert names[0] == file
    assert registry.file_containing_symbol(symbol) == file


@pytest.mark.parametrize(
    "symbol", ["", "test", "test.app", ".test.app.Outer", "test.app.Missing", "test.app.App.Nope",
               "test.app.Outer.Inner.Kind.KIND_B", "grpc.health.v1.health"],
)
def test_unknown_symbol_is_not_found(registry: ReflectionRegistry, symbol: str) -> None:
    assert_not_found(ask(ReflectionStream(registry), file_containing_symbol=symbol),
                     f"symbol {symbol!r}")


def test_symbols_agree_with_the_descriptor_pool(world: descriptor_pool.DescriptorPool) -> None:
    # protobuf's own pool as an oracle for the symbols it resolves (it knows fewer kinds).
    registry = ReflectionRegistry()
    registry.add_file_descriptor(world.FindFileByName(APP))
    checked = 0
    for symbol, file in SYMBOLS.items():
        try:
            expected = world.FindFileContainingSymbol(symbol).name
        except KeyError:
            continue
        assert expected == file, symbol
        assert registry.file_containing_symbol(symbol) == file
        checked += 1
    assert checked >= 10


# --- extensions --------------------------------------------------------------------------


def test_file_containing_extension(registry: ReflectionRegistry) -> None:
    stream = ReflectionStream(registry)
    request = v1.ExtensionRequest(containing_type="test.base.Base", extension_number=151)
    assert file_names(ask(stream, file_containing_extension=request)) == [APP, COMMON, BASE]
    request = v1.ExtensionRequest(containing_type="test.base.Base", extension_number=150)
    assert file_names(ask(stream, file_containing_extension=request)) == [APP]


@pytest.mark.parametrize(
    ("type_name", "number"),
    [("test.base.Base", 199), ("test.base.Base", 0), ("test.app.Outer", 150), ("no.Such", 150)],
)
def test_unknown_extension_is_not_found(
    registry: ReflectionRegistry, type_name: str, number: int
) -> None:
    request = v1.ExtensionRequest(containing_type=type_name, extension_number=number)
    response = ask(ReflectionStream(registry), file_containing_extension=request)
    assert_not_found(response, f"extension {number} of {type_name!r}")


def test_all_extension_numbers_of_type(registry: ReflectionRegistry) -> None:
    stream = ReflectionStream(registry)
    response = ask(stream, host="h", all_extension_numbers_of_type="test.base.Base")
    numbers = response.all_extension_numbers_response
    assert numbers.base_type_name == "test.base.Base"
    assert list(numbers.extension_number) == [150, 151]
    assert response.valid_host == "h"


def test_extension_numbers_of_known_type_without_extensions_is_empty(
    registry: ReflectionRegistry,
) -> None:
    # grpc-go: an empty list for a known type; NOT_FOUND only when the type is unknown.
    type_name = "grpc.health.v1.HealthCheckRequest"
    response = ask(ReflectionStream(registry), all_extension_numbers_of_type=type_name)
    assert response.WhichOneof("message_response") == "all_extension_numbers_response"
    assert response.all_extension_numbers_response.base_type_name == type_name
    assert list(response.all_extension_numbers_response.extension_number) == []


def test_extension_numbers_of_unknown_type_is_not_found(registry: ReflectionRegistry) -> None:
    response = ask(ReflectionStream(registry), all_extension_numbers_of_type="no.such.Type")
    assert_not_found(response, "type 'no.such.Type'")


# --- bad requests ------------------------------------------------------------------------


def test_request_without_kind_ends_the_call_invalid_argument(registry: ReflectionRegistry) -> None:
    stream = ReflectionStream(registry)
    for request in (b"", v1.ServerReflectionRequest(host="only-host").SerializeToString(),
                    # field 8 is no kind this proto knows: it arrives as an unknown field
                    b"\x42\x01x"):
        with pytest.raises(RpcError) as info:
            stream.handle(request)
        assert info.value.code == StatusCode.INVALID_ARGUMENT
        assert "invalid MessageRequest" in info.value.message


@pytest.mark.parametrize("data", [b"\xff", b"\x0a\x05ab", b"\x22\x80"])
def test_unparsable_request_is_internal(registry: ReflectionRegistry, data: bytes) -> None:
    with pytest.raises(RpcError) as info:
        ReflectionStream(registry).handle(data)
    assert info.value.code == StatusCode.INTERNAL
    assert "unmarshalling" in info.value.message


_REGISTRY_FOR_FUZZ = ReflectionRegistry()
_REGISTRY_FOR_FUZZ.add_file_descriptor(_world()[1])
_REGISTRY_FOR_FUZZ.add_pool_service(_health_pb2.DESCRIPTOR.pool, HEALTH)
_KNOWN_NAMES = [*SYMBOLS, APP, COMMON, BASE, HEALTH_FILE, "", "no.Such"]
_requests = st.one_of(
    st.binary(max_size=64),
    st.builds(
        lambda host, field, name: v1.ServerReflectionRequest(
            host=host, **{field: name}).SerializeToString(),
        st.text(max_size=8),
        st.sampled_from(["file_by_filename", "file_containing_symbol",
                         "all_extension_numbers_of_type", "list_services"]),
        st.one_of(st.sampled_from(_KNOWN_NAMES), st.text(max_size=16)),
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_requests, max_size=8))
def test_any_bytes_get_a_response_or_a_status(requests: list[bytes]) -> None:
    stream = ReflectionStream(_REGISTRY_FOR_FUZZ, "v1alpha")
    for data in requests:
        failed: StatusCode | None = None
        try:
            answer = stream.handle(data)
        except RpcError as exc:
            failed = exc.code
        if failed is not None:
            assert failed in (StatusCode.INTERNAL, StatusCode.INVALID_ARGUMENT)
            continue
        response = v1alpha.ServerReflectionResponse.FromString(answer)
        assert response.original_request == v1alpha.ServerReflectionRequest.FromString(data)
        assert response.WhichOneof("message_response") is not None
        assert stream.sent_files <= set(_REGISTRY_FOR_FUZZ.file_names)


def test_unknown_version_is_refused(registry: ReflectionRegistry) -> None:
    with pytest.raises(ValueError, match="v1beta"):
        ReflectionStream(registry, "v1beta")  # type: ignore[arg-type]


# --- many requests on one stream ---------------------------------------------------------


def test_many_requests_on_one_stream_send_each_dependency_once(
    registry: ReflectionRegistry,
) -> None:
    stream = ReflectionStream(registry, "v1alpha")
    kinds: list[dict[str, Any]] = [
        {"file_containing_symbol": s} for s in SYMBOLS
    ] + [
        {"file_by_filename": f} for f in registry.file_names
    ] + [
        {"list_services": ""},
        {"file_containing_symbol": "no.Such"},
        {"all_extension_numbers_of_type": "test.base.Base"},
    ]
    as_dependency: list[str] = []
    answered = 0
    for round_number in range(20):
        for fields in kinds:
            request = v1alpha.ServerReflectionRequest(host=f"r{round_number}", **fields)
            data = stream.handle(request.SerializeToString())
            response = v1alpha.ServerReflectionResponse.FromString(data)
            assert response.original_request == request
            answered += 1
            if response.WhichOneof("message_response") != "file_descriptor_response":
                continue
            names = [FDP.FromString(b).name
                     for b in response.file_descriptor_response.file_descriptor_proto]
            as_dependency.extend(names[1:])
    assert answered == 20 * len(kinds)
    # Every dependency went out at most once over 500+ requests, and only before round two.
    assert len(as_dependency) == len(set(as_dependency))
    assert set(as_dependency) <= set(registry.file_names)
    assert stream.sent_files == set(registry.file_names)


# --- both versions, decoded by independent classes ---------------------------------------


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_versions_answer_identical_bytes(
    registry: ReflectionRegistry, version: ReflectionVersion
) -> None:
    request = v1alpha.ServerReflectionRequest(host="x", file_by_filename=APP).SerializeToString()
    ours = ReflectionStream(registry, version).handle(request)
    assert ours == ReflectionStream(registry, "v1").handle(request)


@needs_grpcio_reflection
def test_v1alpha_answers_decode_with_grpcio_classes(registry: ReflectionRegistry) -> None:
    from grpc_reflection.v1alpha import reflection_pb2 as theirs

    stream = ReflectionStream(registry, "v1alpha")
    request = theirs.ServerReflectionRequest(host="grpcio", file_containing_symbol=HEALTH)
    response = theirs.ServerReflectionResponse.FromString(
        stream.handle(request.SerializeToString())
    )
    assert response.valid_host == "grpcio"
    assert response.original_request == request
    protos = response.file_descriptor_response.file_descriptor_proto
    assert [FDP.FromString(b).name for b in protos] == [HEALTH_FILE]
    listed = theirs.ServerReflectionResponse.FromString(
        stream.handle(theirs.ServerReflectionRequest(list_services="").SerializeToString())
    )
    assert HEALTH in [s.name for s in listed.list_services_response.service]


def _grpcio_servicer_files(pool: descriptor_pool.DescriptorPool, **fields: Any) -> set[str] | int:
    """What grpcio-reflection's own servicer answers: file names, or an error code."""
    from grpc_reflection.v1alpha import reflection
    from grpc_reflection.v1alpha import reflection_pb2 as theirs

    servicer = reflection.ReflectionServicer(["test.app.App"], pool=pool)
    request = theirs.ServerReflectionRequest(**fields)
    (response,) = servicer.ServerReflectionInfo(iter([request]), None)
    if response.HasField("error_response"):
        return int(response.error_response.error_code)
    return {FDP.FromString(b).name for b in response.file_descriptor_response.file_descriptor_proto}


@needs_grpcio_reflection
@pytest.mark.parametrize(
    "fields",
    [{"file_by_filename": APP}, {"file_by_filename": COMMON}, {"file_by_filename": "x.proto"},
     {"file_containing_symbol": "test.app.Outer.Inner"},
     {"file_containing_symbol": "test.base.Base"},
     {"file_containing_symbol": "test.app.App"}, {"file_containing_symbol": "no.Such"},
     {"file_containing_extension": {"containing_type": "test.base.Base", "extension_number": 150}},
     {"file_containing_extension": {"containing_type": "test.base.Base", "extension_number": 9}}],
    ids=lambda fields: "-".join(f"{k}={v}" for k, v in fields.items()),
)
def test_fresh_stream_agrees_with_grpcio_servicer(fields: dict[str, Any]) -> None:
    pool, app = _world()
    registry = ReflectionRegistry()
    registry.add_file_descriptor(app)
    response = ask(ReflectionStream(registry), **fields)
    if response.HasField("error_response"):
        ours: set[str] | int = int(response.error_response.error_code)
    else:
        ours = set(file_names(response))
    assert ours == _grpcio_servicer_files(pool, **fields)


class _InProcessChannel:
    """Just enough of grpc.Channel for grpcio's reflection client: calls go to our streams."""

    def __init__(self, registry: ReflectionRegistry) -> None:
        self.registry = registry
        self.calls = 0

    def stream_stream(
        self,
        path: str,
        request_serializer: Callable[[Message], bytes],
        response_deserializer: Callable[[bytes], Message],
        **_: object,
    ) -> Callable[[Iterable[Message]], Iterator[Message]]:
        version: ReflectionVersion = "v1alpha" if path == V1ALPHA_METHOD else "v1"
        assert path == METHOD_PATHS[version]

        def call(requests: Iterable[Message]) -> Iterator[Message]:
            self.calls += 1
            stream = ReflectionStream(self.registry, version)
            for request in requests:
                yield response_deserializer(stream.handle(request_serializer(request)))

        return call


@needs_grpcio_reflection
def test_grpcio_reflection_client_finds_health_and_app(registry: ReflectionRegistry) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    channel = _InProcessChannel(registry)
    database = ProtoReflectionDescriptorDatabase(channel)
    assert HEALTH in database.get_services()
    pool = descriptor_pool.DescriptorPool(database)
    health = pool.FindServiceByName(HEALTH)
    assert [m.name for m in health.methods] == ["Check", "List", "Watch"]
    request = pool.FindMessageTypeByName("grpc.health.v1.HealthCheckRequest")
    assert [f.name for f in request.fields] == ["service"]
    status = pool.FindEnumTypeByName("grpc.health.v1.HealthCheckResponse.ServingStatus")
    assert status.values_by_name["SERVICE_UNKNOWN"].number == 3
    # The app's service pulls its imports through the database too.
    do = pool.FindMethodByName("test.app.App.Do")
    color = do.output_type.fields_by_name["color"].enum_type
    assert color is not None
    assert color.full_name == "test.base.Color"
    assert sorted(database.FindAllExtensionNumbers("test.base.Base")) == [150, 151]
    with pytest.raises(KeyError):
        pool.FindMessageTypeByName("no.such.Message")
    assert channel.calls >= 3


# --- the async loop ----------------------------------------------------------------------


async def test_serve_reflection_stream_answers_in_order(registry: ReflectionRegistry) -> None:
    requests = [
        v1.ServerReflectionRequest(list_services=""),
        v1.ServerReflectionRequest(file_by_filename=APP),
        v1.ServerReflectionRequest(file_containing_symbol="test.base.Base"),
        v1.ServerReflectionRequest(file_containing_symbol="nope"),
    ]

    async def incoming() -> AsyncIterator[bytes]:
        for request in requests:
            yield request.SerializeToString()

    sent: list[v1.ServerReflectionResponse] = []

    async def send(data: bytes) -> None:
        sent.append(v1.ServerReflectionResponse.FromString(data))

    await serve_reflection_stream(incoming(), send, registry, "v1")
    assert [r.original_request for r in sent] == requests
    assert file_names(sent[1]) == [APP, COMMON, BASE]
    assert file_names(sent[2]) == [BASE]
    assert_not_found(sent[3], "'nope'")


async def test_serve_reflection_stream_stops_on_a_bad_request(
    registry: ReflectionRegistry,
) -> None:
    async def incoming() -> AsyncIterator[bytes]:
        yield v1.ServerReflectionRequest(list_services="").SerializeToString()
        yield b""
        raise AssertionError("read past the request that ended the call")

    sent: list[bytes] = []

    async def send(data: bytes) -> None:
        sent.append(data)

    with pytest.raises(RpcError) as info:
        await serve_reflection_stream(incoming(), send, registry, "v1alpha")
    assert info.value.code == StatusCode.INVALID_ARGUMENT
    assert len(sent) == 1


# --- the registry ------------------------------------------------------------------------


def test_registry_refuses_conflicts_and_keeps_state(registry: ReflectionRegistry) -> None:
    before = (registry.file_names, registry.file_containing_symbol("test.app.Outer"))
    clash = FDP(name="clash.proto", package="test.app")
    clash.message_type.add(name="Fresh")
    clash.message_type.add(name="Outer")
    with pytest.raises(ValueError, match=r"'test\.app\.Outer' of 'clash\.proto'.*test/app\.proto"):
        registry.add_file_descriptor(clash.SerializeToString())
    ext_clash = FDP(name="ext.proto", package="other", syntax="proto2")
    ext_clash.extension.append(_field("dup", 150, Field.TYPE_INT32, extendee=".test.base.Base"))
    with pytest.raises(ValueError, match=r"extension 150 of 'test\.base\.Base'"):
        registry.add_file_descriptor(ext_clash.SerializeToString())
    assert (registry.file_names, registry.file_containing_symbol("test.app.Outer")) == before
    assert registry.file_containing_symbol("test.app.Fresh") is None


def test_registry_accepts_the_same_file_twice_but_not_a_different_one(
    registry: ReflectionRegistry,
) -> None:
    registry.add_file_descriptor(_health_pb2.DESCRIPTOR)
    registry.add_file_descriptor(_health_pb2.DESCRIPTOR.serialized_pb)
    registry.add_pool_service(_health_pb2.DESCRIPTOR.pool, HEALTH)
    changed = FDP.FromString(_health_pb2.DESCRIPTOR.serialized_pb)
    changed.message_type.add(name="Extra")
    with pytest.raises(ValueError, match="already registered with other contents"):
        registry.add_file_descriptor(changed.SerializeToString())


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda r: r.add_file_descriptor(b"\xff\xff"), "not a serialized FileDescriptorProto"),
        (lambda r: r.add_file_descriptor(FDP(package="x").SerializeToString()), "has no name"),
        (lambda r: r.add_pool_service(_health_pb2.DESCRIPTOR.pool, "no.Such"), "'no.Such'"),
        (lambda r: r.add_service(""), "must not be empty"),
    ],
)
def test_registry_refuses_bad_input(
    call: Callable[[ReflectionRegistry], None], message: str
) -> None:
    registry = ReflectionRegistry()
    with pytest.raises(ValueError, match=message):
        call(registry)
    assert registry.file_names == ()
    assert registry.service_names == ()


def test_registry_of_a_file_descriptor_brings_its_imports() -> None:
    registry = ReflectionRegistry()
    registry.add_file_descriptor(_world()[1])
    assert registry.file_names == (APP, BASE, COMMON)
    assert registry.service_names == ()
    assert registry.extension_numbers("test.base.Base") == [150, 151]
    assert registry.extension_numbers("test.base.Color") == []
    assert registry.extension_numbers("test.base") is None


# --- sans-I/O and coexistence ------------------------------------------------------------


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_reflection_modules_never_import_trio_or_health() -> None:
    for name in ("reflection.py", "_reflection_pb2.py"):
        imported = _imported_modules(REPO_ROOT / "wire" / name)
        assert not {m for m in imported if m.split(".")[0] in ("trio", "health", "grpc")}, name


# Runs in a fresh interpreter so each import order really is the first import.
_COEXIST_SCRIPT = r"""
import sys
import warnings

warnings.simplefilter("error")
order, expected_backend = sys.argv[1], sys.argv[2]
if order == "ours-first":
    from wire import _reflection_pb2 as ours
    from grpc_reflection.v1alpha import reflection_pb2 as theirs
    from grpc_reflection.v1alpha import reflection as theirs_service
else:
    from grpc_reflection.v1alpha import reflection_pb2 as theirs
    from grpc_reflection.v1alpha import reflection as theirs_service
    from wire import _reflection_pb2 as ours

from google.protobuf import descriptor_pool
from google.protobuf.internal import api_implementation

backend = api_implementation.Type()
assert expected_backend in ("any", backend), (expected_backend, backend)

default_pool = descriptor_pool.Default()
found = default_pool.FindMessageTypeByName("grpc.reflection.v1alpha.ServerReflectionRequest")
assert found.file.name == "grpc_reflection/v1alpha/reflection.proto", found.file.name
for name in ("grpc/reflection/v1/reflection.proto", "grpc/reflection/v1alpha/reflection.proto"):
    try:
        default_pool.FindFileByName(name)
    except KeyError:
        pass
    else:
        raise AssertionError(name + " registered in the default pool")
for symbol in ("grpc.reflection.v1.ServerReflectionRequest", "grpc.reflection.v1.ServerReflection"):
    try:
        default_pool.FindFileContainingSymbol(symbol)
    except KeyError:
        pass
    else:
        raise AssertionError(symbol + " leaked into the default pool")
assert ours.v1.DESCRIPTOR.pool is not default_pool
assert theirs_service.SERVICE_NAME == "grpc.reflection.v1alpha.ServerReflection"

checked = 0
for make in (
    lambda m: m.ServerReflectionRequest(host="h", file_containing_symbol="a.B"),
    lambda m: m.ServerReflectionRequest(
        file_containing_extension=m.ExtensionRequest(containing_type="a.B", extension_number=7)),
    lambda m: m.ServerReflectionResponse(
        valid_host="h", error_response=m.ErrorResponse(error_code=5, error_message="x")),
    lambda m: m.ServerReflectionResponse(
        list_services_response=m.ListServiceResponse(service=[m.ServiceResponse(name="s")])),
    lambda m: m.ServerReflectionResponse(
        file_descriptor_response=m.FileDescriptorResponse(file_descriptor_proto=[b"\x0a\x01x"])),
):
    ours_v1 = make(ours.v1).SerializeToString(deterministic=True)
    ours_alpha = make(ours.v1alpha).SerializeToString(deterministic=True)
    them = make(theirs).SerializeToString(deterministic=True)
    assert ours_v1 == ours_alpha == them, (ours_v1, ours_alpha, them)
    cls = type(make(theirs)).__name__
    assert getattr(ours.v1alpha, cls).FromString(them) == make(ours.v1alpha)
    checked += 1

from wire.reflection import ReflectionRegistry, ReflectionStream
registry = ReflectionRegistry()
registry.add_reflection_services()
stream = ReflectionStream(registry, "v1alpha")
request = theirs.ServerReflectionRequest(file_containing_symbol=theirs_service.SERVICE_NAME)
response = theirs.ServerReflectionResponse.FromString(stream.handle(request.SerializeToString()))
assert len(response.file_descriptor_response.file_descriptor_proto) == 1
checked += 1
print(f"ok {backend} {checked}")
"""


@needs_grpcio_reflection
@pytest.mark.parametrize("order", ["ours-first", "theirs-first"])
@pytest.mark.parametrize("backend", ["default", "python"])
def test_coexists_with_grpcio_reflection(order: str, backend: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"}
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), existing]))
    expected = "any"
    if backend == "python":
        env["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"
        expected = "python"
    result = subprocess.run(
        [sys.executable, "-X", "dev", "-c", _COEXIST_SCRIPT, order, expected],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", result.stdout.split()[1], "6"], result.stdout
    if backend == "python":
        assert result.stdout.split()[1] == "python"


# --- regeneration ------------------------------------------------------------------------


def _load_generator() -> ModuleType:
    # proto/ is deliberately not a package, so load the script by path.
    spec = importlib.util.spec_from_file_location(
        "_reflection_proto_generate", REPO_ROOT / "proto" / "generate.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generator = _load_generator()
GENERATED = ("_reflection_pb2.py", "_reflection_pb2.pyi")


def _protoc_skip_reason() -> str | None:
    if shutil.which("protoc") is None:
        return "protoc is not on PATH; cannot regenerate wire/_reflection_pb2.py to compare"
    version = generator.protoc_version("protoc")
    if not version.startswith(generator.PROTOC_SERIES):
        return (f"protoc {version} is on PATH but the checked-in files come from "
                f"protoc {generator.PROTOC_SERIES}x, whose output the script expects")
    return None


def test_generated_reflection_files_are_up_to_date(tmp_path: Path) -> None:
    reason = _protoc_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    written = generator.generate(tmp_path, target="reflection")
    assert sorted(path.name for path in written) == sorted(GENERATED)
    for name in GENERATED:
        fresh = (tmp_path / name).read_bytes()
        committed = (REPO_ROOT / "wire" / name).read_bytes()
        assert fresh == committed, f"wire/{name} is stale; run python proto/generate.py"
    assert generator.stale_files(REPO_ROOT / "wire", target="reflection") == []
    assert generator.main(["--check"]) == 0


def test_check_flag_reports_stale_reflection_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reason = _protoc_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    generator.generate(tmp_path, target="reflection")
    args = ["--check", "--target", "reflection", "--out-dir", str(tmp_path)]
    assert generator.main(args) == 0
    (tmp_path / "_reflection_pb2.py").write_text("# edited by hand\n", encoding="utf-8")
    assert generator.main(args) == 1
    assert "stale: _reflection_pb2.py" in capsys.readouterr().err
    assert generator.main(["--check", "--out-dir", str(tmp_path), "--target", "health",
                           "--target", "reflection"]) == 2


def test_reflection_rewrite_rejects_unexpected_protoc_output() -> None:
    with pytest.raises(generator.GenerateError, match="new layout"):
        generator.rewrite_reflection_py({"v1": "# -*- coding: utf-8 -*-\n", "v1alpha": ""})
    with pytest.raises(generator.GenerateError, match="new header"):
        generator.rewrite_reflection_pyi({"v1": "import os\n", "v1alpha": ""})
