"""gRPC server reflection (``grpc.reflection.v1`` and ``v1alpha``), sans-I/O.

Owns two things: the registry of what a server describes (file descriptors, indexed by file
name, by fully-qualified symbol and by extension; and the service names ``list_services``
answers), and the answer logic of one ``ServerReflectionInfo`` stream. It knows nothing of the
services themselves (health registers its own private pool like any application) and nothing
of Trio: ``serve_reflection_stream`` only awaits what it is given.

Theory of operation. The RPC is bidi-streaming; "each request gets one response on the stream"
(SPEC, Server reflection). A ``ReflectionStream`` is created per call and turns one serialized
``ServerReflectionRequest`` into one serialized ``ServerReflectionResponse``. It remembers which
files it has sent, because the proto allows "avoid sending FileDescriptorProtos that were
previously sent in response to earlier requests in the stream": as in grpc-go, the requested
file is always sent and each dependency at most once per stream. Answers follow grpc-go's
server: ``valid_host`` and ``original_request`` echo the request; an unknown file, symbol,
extension or type is an ``error_response`` with NOT_FOUND; ``all_extension_numbers_of_type`` of
a known type without extensions is an empty list (NOT_FOUND only for an unknown type); a request
with no kind set ends the whole call with INVALID_ARGUMENT (``RpcError``), as grpc-go returns
that status from the handler rather than answering it.

Serving it: ``add_reflection(server)`` registers ``ServerReflectionInfo`` of both versions as
bidi handlers (``wire.handlers.stream_stream``) answered from one registry, and lists the two
reflection services in it; the application then adds its own services to the registry it
returns (``add_service``, ``add_file_descriptor``, ``add_pool_service``).

v1 and v1alpha messages have the same field names, numbers and types (a test compares their
descriptors), so their encodings are identical and one set of classes (v1's) decodes and
encodes both; only the method path differs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import DecodeError

from ._reflection_pb2 import v1 as _v1
from ._reflection_pb2 import v1alpha as _v1alpha
from .errors import RpcError
from .handlers import MethodHandler, stream_stream
from .status import StatusCode

if TYPE_CHECKING:
    # Types only: this module stays sans-I/O (the server side imports Trio).
    from .calls import ServerCall
    from .server import Server

__all__ = [
    "METHOD_PATHS",
    "SERVICE_NAMES",
    "V1ALPHA_METHOD",
    "V1ALPHA_SERVICE",
    "V1_METHOD",
    "V1_SERVICE",
    "ReflectionRegistry",
    "ReflectionStream",
    "ReflectionVersion",
    "add_reflection",
    "reflection_handlers",
    "serve_reflection_stream",
]

ReflectionVersion = Literal["v1", "v1alpha"]

V1_SERVICE = "grpc.reflection.v1.ServerReflection"
V1ALPHA_SERVICE = "grpc.reflection.v1alpha.ServerReflection"
V1_METHOD = f"/{V1_SERVICE}/ServerReflectionInfo"
V1ALPHA_METHOD = f"/{V1ALPHA_SERVICE}/ServerReflectionInfo"
#: The service name of each version.
SERVICE_NAMES: dict[ReflectionVersion, str] = {"v1": V1_SERVICE, "v1alpha": V1ALPHA_SERVICE}
#: The method path of each version, for registering the bidi handler.
METHOD_PATHS: dict[ReflectionVersion, str] = {"v1": V1_METHOD, "v1alpha": V1ALPHA_METHOD}

_SERVICE_DESCRIPTORS: dict[ReflectionVersion, ServiceDescriptor] = {
    "v1": _v1.DESCRIPTOR.services_by_name["ServerReflection"],
    "v1alpha": _v1alpha.DESCRIPTOR.services_by_name["ServerReflection"],
}


@dataclass(frozen=True)
class _File:
    """One registered file: its serialized ``FileDescriptorProto`` and its imports' names."""

    name: str
    serialized: bytes
    dependencies: tuple[str, ...]


def _enum_symbols(enum: descriptor_pb2.EnumDescriptorProto, scope: str) -> Iterator[str]:
    yield scope + enum.name
    # protobuf scopes enum values like C++: as siblings of their enum, not children.
    for value in enum.value:
        yield scope + value.name


def _message_symbols(message: descriptor_pb2.DescriptorProto, scope: str) -> Iterator[str]:
    name = scope + message.name
    yield name
    inner = name + "."
    for field in (*message.field, *message.extension):
        yield inner + field.name
    for oneof in message.oneof_decl:
        yield inner + oneof.name
    for nested in message.nested_type:
        yield from _message_symbols(nested, inner)
    for enum in message.enum_type:
        yield from _enum_symbols(enum, inner)


def _file_symbols(proto: descriptor_pb2.FileDescriptorProto) -> Iterator[str]:
    """Every fully-qualified name a file declares: the names ``file_containing_symbol`` finds."""
    scope = proto.package + "." if proto.package else ""
    for message in proto.message_type:
        yield from _message_symbols(message, scope)
    for enum in proto.enum_type:
        yield from _enum_symbols(enum, scope)
    for extension in proto.extension:
        yield scope + extension.name
    for service in proto.service:
        yield scope + service.name
        for method in service.method:
            yield f"{scope}{service.name}.{method.name}"


def _nested_extensions(
    message: descriptor_pb2.DescriptorProto,
) -> Iterator[descriptor_pb2.FieldDescriptorProto]:
    yield from message.extension
    for nested in message.nested_type:
        yield from _nested_extensions(nested)


def _file_extensions(proto: descriptor_pb2.FileDescriptorProto) -> Iterator[tuple[str, int]]:
    """``(extended type, field number)`` of every extension a file declares."""
    fields = list(proto.extension)
    for message in proto.message_type:
        fields.extend(_nested_extensions(message))
    for field in fields:
        # protoc writes extendee fully qualified, with a leading dot.
        yield field.extendee.lstrip("."), field.number


class ReflectionRegistry:
    """The file descriptors and service names a server describes through reflection.

    Files come in as ``FileDescriptor`` objects (from any descriptor pool, private or default;
    their imports are added with them) or as serialized ``FileDescriptorProto`` bytes (whose
    imports must be added separately, else they are left out of answers, as grpc-go skips
    unresolvable imports). Adding a file that declares a symbol or extension another file
    already declares is an error, as it is in a descriptor pool. Fill the registry before
    serving; streams read it without copying.
    """

    def __init__(self) -> None:
        self._files: dict[str, _File] = {}
        self._symbols: dict[str, str] = {}
        self._extensions: dict[tuple[str, int], str] = {}
        self._services: set[str] = set()

    def add_file_descriptor(self, file: FileDescriptor | bytes) -> None:
        """Make a file's symbols resolvable (a ``FileDescriptor`` brings its imports along)."""
        if isinstance(file, FileDescriptor):
            known = self._files.get(file.name)
            if known is not None and known.serialized == file.serialized_pb:
                return
            # Imports first, so a failure leaves no file whose imports are missing.
            for dependency in file.dependencies:
                self.add_file_descriptor(dependency)
            serialized = bytes(file.serialized_pb)
        else:
            serialized = bytes(file)
        try:
            proto = descriptor_pb2.FileDescriptorProto.FromString(serialized)
        except DecodeError as exc:
            raise ValueError(f"not a serialized FileDescriptorProto: {exc}") from None
        self._add_proto(proto, serialized)

    def _add_proto(self, proto: descriptor_pb2.FileDescriptorProto, serialized: bytes) -> None:
        name = proto.name
        if not name:
            raise ValueError("FileDescriptorProto has no name")
        known = self._files.get(name)
        if known is not None:
            if known.serialized != serialized:
                raise ValueError(f"file {name!r} is already registered with other contents")
            return
        symbols = set(_file_symbols(proto))
        extensions = set(_file_extensions(proto))
        # Check everything before changing anything: a refused file leaves no trace.
        for symbol in symbols:
            if symbol in self._symbols:
                raise ValueError(
                    f"symbol {symbol!r} of {name!r} is already declared by "
                    f"{self._symbols[symbol]!r}"
                )
        for extension in extensions:
            if extension in self._extensions:
                raise ValueError(
                    f"extension {extension[1]} of {extension[0]!r} in {name!r} is already "
                    f"declared by {self._extensions[extension]!r}"
                )
        self._files[name] = _File(name, serialized, tuple(proto.dependency))
        self._symbols.update(dict.fromkeys(symbols, name))
        self._extensions.update(dict.fromkeys(extensions, name))

    def add_service(self, service: ServiceDescriptor | str) -> None:
        """List a service; given its descriptor, also add the file declaring it (and imports).

        A bare name is listed as is: ``list_services`` shows it, and its symbols resolve only
        if a registered file declares them.
        """
        if isinstance(service, str):
            if not service:
                raise ValueError("service name must not be empty")
            self._services.add(service)
            return
        self.add_file_descriptor(service.file)
        self._services.add(service.full_name)

    def add_pool_service(self, pool: DescriptorPool, full_name: str) -> None:
        """List the service ``full_name`` of ``pool`` and add its file (and imports)."""
        try:
            service = pool.FindServiceByName(full_name)
        except KeyError:
            raise ValueError(f"service {full_name!r} is not in the given pool") from None
        self.add_service(service)

    def add_reflection_services(
        self, versions: tuple[ReflectionVersion, ...] = ("v1", "v1alpha")
    ) -> None:
        """List the reflection services themselves (their protos come from wire's own pool)."""
        for version in versions:
            self.add_service(_SERVICE_DESCRIPTORS[version])

    @property
    def service_names(self) -> tuple[str, ...]:
        """The listed service names, sorted (as grpc-go lists them)."""
        return tuple(sorted(self._services))

    @property
    def file_names(self) -> tuple[str, ...]:
        """The registered file names, sorted."""
        return tuple(sorted(self._files))

    def file_containing_symbol(self, symbol: str) -> str | None:
        """The name of the file declaring ``symbol`` (fully qualified, no leading dot)."""
        return self._symbols.get(symbol)

    def file_containing_extension(self, extended_type: str, number: int) -> str | None:
        """The name of the file declaring extension ``number`` of ``extended_type``."""
        return self._extensions.get((extended_type, number))

    def extension_numbers(self, extended_type: str) -> list[int] | None:
        """Sorted extension numbers of a type; ``[]`` if it has none, None if it is unknown."""
        numbers = sorted(n for t, n in self._extensions if t == extended_type)
        if numbers or extended_type in self._symbols:
            return numbers
        return None

    def serialized_files(self, name: str, sent: set[str]) -> list[bytes] | None:
        """File ``name`` and those of its transitive imports not in ``sent`` (updated).

        None when ``name`` is not registered. Breadth first from the requested file, which is
        always included; unregistered imports are skipped.
        """
        root = self._files.get(name)
        if root is None:
            return None
        out = [root.serialized]
        sent.add(name)
        queue = deque(root.dependencies)
        visited = {name}
        while queue:
            current = self._files.get(queue.popleft())
            if current is None or current.name in visited:
                continue
            visited.add(current.name)
            if current.name not in sent:
                sent.add(current.name)
                out.append(current.serialized)
            queue.extend(current.dependencies)
        return out


def _not_found(message: str) -> _v1.ServerReflectionResponse:
    error = _v1.ErrorResponse(error_code=int(StatusCode.NOT_FOUND), error_message=message)
    return _v1.ServerReflectionResponse(error_response=error)


class ReflectionStream:
    """The answers of one ``ServerReflectionInfo`` call: one response per request.

    Create one per call; it remembers which files this call has already been sent.
    """

    def __init__(self, registry: ReflectionRegistry, version: ReflectionVersion = "v1") -> None:
        if version not in METHOD_PATHS:
            raise ValueError(f"unknown reflection version {version!r}; use 'v1' or 'v1alpha'")
        self.registry = registry
        self.version: ReflectionVersion = version
        self._sent: set[str] = set()

    @property
    def sent_files(self) -> frozenset[str]:
        """The names of the files this stream has sent so far."""
        return frozenset(self._sent)

    def handle(self, request: bytes) -> bytes:
        """Answer one serialized request with one serialized response.

        Raises ``RpcError``: INTERNAL for bytes that are not a request (as the server answers
        any unparsable request), INVALID_ARGUMENT for a request with no kind set (grpc-go ends
        the call with that status).
        """
        try:
            parsed = _v1.ServerReflectionRequest.FromString(request)
        except DecodeError as exc:
            raise RpcError(
                StatusCode.INTERNAL, f"grpc: error unmarshalling request: {exc}"
            ) from None
        response = self._answer(parsed)
        response.valid_host = parsed.host
        response.original_request.CopyFrom(parsed)
        return response.SerializeToString()

    def _answer(self, request: _v1.ServerReflectionRequest) -> _v1.ServerReflectionResponse:
        kind = request.WhichOneof("message_request")
        if kind == "list_services":
            services = [_v1.ServiceResponse(name=n) for n in self.registry.service_names]
            return _v1.ServerReflectionResponse(
                list_services_response=_v1.ListServiceResponse(service=services)
            )
        if kind == "file_by_filename":
            return self._files(request.file_by_filename, f"file {request.file_by_filename!r}")
        if kind == "file_containing_symbol":
            symbol = request.file_containing_symbol
            return self._files(self.registry.file_containing_symbol(symbol), f"symbol {symbol!r}")
        if kind == "file_containing_extension":
            ext = request.file_containing_extension
            name = self.registry.file_containing_extension(ext.containing_type,
                                                           ext.extension_number)
            return self._files(
                name, f"extension {ext.extension_number} of {ext.containing_type!r}"
            )
        if kind == "all_extension_numbers_of_type":
            type_name = request.all_extension_numbers_of_type
            numbers = self.registry.extension_numbers(type_name)
            if numbers is None:
                return _not_found(f"type {type_name!r} not found")
            return _v1.ServerReflectionResponse(
                all_extension_numbers_response=_v1.ExtensionNumberResponse(
                    base_type_name=type_name, extension_number=numbers
                )
            )
        # No kind set, or one this proto does not know (it arrived as an unknown field).
        raise RpcError(StatusCode.INVALID_ARGUMENT, "invalid MessageRequest: no request kind set")

    def _files(self, name: str | None, what: str) -> _v1.ServerReflectionResponse:
        files = None if name is None else self.registry.serialized_files(name, self._sent)
        if files is None:
            return _not_found(f"{what} not found")
        return _v1.ServerReflectionResponse(
            file_descriptor_response=_v1.FileDescriptorResponse(file_descriptor_proto=files)
        )


async def serve_reflection_stream(
    requests: AsyncIterable[bytes],
    send: Callable[[bytes], Awaitable[None]],
    registry: ReflectionRegistry,
    version: ReflectionVersion = "v1",
) -> None:
    """Run one ``ServerReflectionInfo`` call: answer each request in order until half-close."""
    stream = ReflectionStream(registry, version)
    async for request in requests:
        await send(stream.handle(request))


def _identity(data: bytes) -> bytes:
    return data


def reflection_handlers(
    registry: ReflectionRegistry, versions: tuple[ReflectionVersion, ...] = ("v1", "v1alpha")
) -> list[MethodHandler[bytes, bytes]]:
    """The ``ServerReflectionInfo`` method of each version, answered from ``registry``."""
    handlers: list[MethodHandler[bytes, bytes]] = []
    for version in versions:
        if version not in METHOD_PATHS:
            raise ValueError(f"unknown reflection version {version!r}; use 'v1' or 'v1alpha'")

        async def info(requests: AsyncIterator[bytes], call: ServerCall,
                       send: Callable[[bytes], Awaitable[None]], *,
                       version: ReflectionVersion = version) -> None:
            await serve_reflection_stream(requests, send, registry, version)

        handlers.append(stream_stream(METHOD_PATHS[version], info, _identity, _identity))
    return handlers


def add_reflection(
    server: Server,
    registry: ReflectionRegistry | None = None,
    *,
    versions: tuple[ReflectionVersion, ...] = ("v1", "v1alpha"),
) -> ReflectionRegistry:
    """Serve gRPC server reflection on ``server``; return the registry it answers from.

    Registers ``ServerReflectionInfo`` of each version (grpcurl 1.8 speaks v1alpha; newer
    clients try v1 first) and lists the reflection services themselves. Add your services to
    the returned registry: ``registry.add_service(descriptor)`` for a ``ServiceDescriptor``
    (its file and imports come along), or ``add_file_descriptor(serialized)`` plus
    ``add_service(name)``.
    """
    if registry is None:
        registry = ReflectionRegistry()
    server.add_handlers(reflection_handlers(registry, versions))
    registry.add_reflection_services(versions)
    return registry
