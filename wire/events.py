"""Events a sans-I/O gRPC connection reports, named in the past tense like h2's.

Each is a small immutable record. A server connection reports calls arriving, their messages, the
end of the request side, resets, requests it refused itself, and the peer going away.
"""

from __future__ import annotations

from dataclasses import dataclass

from .metadata import Metadata
from .status import StatusCode

__all__ = [
    "CallAborted",
    "ConnectionTerminated",
    "Event",
    "MessageReceived",
    "RequestEnded",
    "RequestReceived",
    "RequestRejected",
    "StreamReset",
]


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A valid gRPC request's headers arrived: a call has started."""

    stream_id: int
    method: str
    metadata: Metadata
    timeout: float | None
    authority: str
    # grpc-encoding of the request messages (None means identity), and what the client accepts.
    encoding: str | None
    accept_encoding: frozenset[str]


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """One whole request message (decompressed) arrived."""

    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class RequestEnded:
    """The client ended its side of the stream (END_STREAM) after all its messages."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The client reset the stream; the call is over and nothing more may be sent on it."""

    stream_id: int
    error_code: int


@dataclass(frozen=True, slots=True)
class CallAborted:
    """The connection ended a started call itself (bad message, size limit, ...).

    The status has already been queued for sending; whoever runs the call must stop it.
    """

    stream_id: int
    code: StatusCode
    message: str


@dataclass(frozen=True, slots=True)
class RequestRejected:
    """A request was refused before it became a call; the answer has been queued.

    ``http_status`` is 0 when the stream was refused with RST_STREAM rather than a response.
    """

    stream_id: int
    http_status: int
    code: StatusCode | None
    message: str


@dataclass(frozen=True, slots=True)
class ConnectionTerminated:
    """The peer sent GOAWAY."""

    error_code: int
    last_stream_id: int
    additional_data: bytes | None


Event = (
    RequestReceived
    | MessageReceived
    | RequestEnded
    | StreamReset
    | CallAborted
    | RequestRejected
    | ConnectionTerminated
)
