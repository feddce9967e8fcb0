"""The error types of the wire package.

``WireError`` is the single root. ``RpcError`` is the outcome a caller sees: a gRPC status code,
a message and trailing metadata; raised by handlers it ends a call with that status, raised by
the client it reports how a call ended. ``ProtocolError`` is a peer breaking HTTP/2 or gRPC
framing rules at the connection level; it carries the HTTP/2 error code. As in h11, whose fault
it was is in the type: ``RemoteProtocolError`` (the peer broke a rule; we answer with GOAWAY
carrying ``error_code``) and ``LocalProtocolError`` (our own code asked for something the protocol
forbids, such as sending on a closed stream).
"""

from __future__ import annotations

from collections.abc import Sequence

from .status import ErrorCode, StatusCode

__all__ = [
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "RpcError",
    "WireError",
]

MetadataPairs = Sequence[tuple[str, "str | bytes"]]


class WireError(Exception):
    """Root of every error raised by the wire package."""


class RpcError(WireError):
    """A call ended with a non-OK gRPC status (or must end with one)."""

    def __init__(
        self,
        code: StatusCode,
        message: str = "",
        metadata: MetadataPairs = (),
        *,
        details: bytes | None = None,
    ) -> None:
        super().__init__(code, message)
        self.code = StatusCode(code)
        self.message = message
        self.metadata: tuple[tuple[str, str | bytes], ...] = tuple(metadata)
        # The raw ``grpc-status-details-bin`` payload (a serialized google.rpc.Status), if any.
        self.details = details

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}" if self.message else self.code.name

    def __repr__(self) -> str:
        return f"RpcError({self.code.name}, {self.message!r})"


class ProtocolError(WireError):
    """HTTP/2 or gRPC rules were broken badly enough to end the connection."""

    def __init__(self, message: str, error_code: int = ErrorCode.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.message = message
        # The HTTP/2 error code for GOAWAY; PROTOCOL_ERROR unless said otherwise.
        self.error_code = error_code


class RemoteProtocolError(ProtocolError):
    """The peer broke a rule; the connection ends with GOAWAY ``error_code``."""


class LocalProtocolError(ProtocolError):
    """Our own side asked for something the protocol forbids (a bug in the caller)."""
