"""How an application describes its methods to the server.

A method is a path (``/package.Service/Method``, case-sensitive) bound to an async handler, a
request deserializer and a response serializer. Unary methods return their one response; server
streaming methods get a ``send`` coroutine function and call it once per response message.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from .server import ServerCall

__all__ = [
    "MethodHandler",
    "MethodKind",
    "StreamHandler",
    "UnaryHandler",
    "unary_stream",
    "unary_unary",
]

Req = TypeVar("Req")
Resp = TypeVar("Resp")

UnaryHandler = Callable[[Req, "ServerCall"], Awaitable[Resp]]
StreamHandler = Callable[[Req, "ServerCall", Callable[[Resp], Awaitable[None]]], Awaitable[None]]


class MethodKind(enum.Enum):
    """The request/response shape of a method."""

    UNARY_UNARY = "unary_unary"
    UNARY_STREAM = "unary_stream"


@dataclass(frozen=True)
class MethodHandler(Generic[Req, Resp]):
    """One method of a service, ready to be registered with a ``Server``."""

    path: str
    kind: MethodKind
    handler: Callable[..., Awaitable[Any]]
    request_deserializer: Callable[[bytes], Req]
    response_serializer: Callable[[Resp], bytes]

    def __post_init__(self) -> None:
        parts = self.path.split("/")
        if len(parts) != 3 or parts[0] or not parts[1] or not parts[2]:
            raise ValueError(f"method path {self.path!r} must look like /package.Service/Method")


def unary_unary(
    path: str,
    handler: UnaryHandler[Req, Resp],
    request_deserializer: Callable[[bytes], Req],
    response_serializer: Callable[[Resp], bytes],
) -> MethodHandler[Req, Resp]:
    """Describe a method taking one request and returning one response."""
    return MethodHandler(path, MethodKind.UNARY_UNARY, handler, request_deserializer,
                         response_serializer)


def unary_stream(
    path: str,
    handler: StreamHandler[Req, Resp],
    request_deserializer: Callable[[bytes], Req],
    response_serializer: Callable[[Resp], bytes],
) -> MethodHandler[Req, Resp]:
    """Describe a method taking one request and sending a stream of responses."""
    return MethodHandler(path, MethodKind.UNARY_STREAM, handler, request_deserializer,
                         response_serializer)
