"""Events a sans-I/O gRPC connection reports, named in the past tense like h2's.

Each is a small immutable record. A server connection reports calls arriving, their messages, the
end of the request side, resets, requests it refused itself, and the peer going away. A client
connection reports the server's first SETTINGS, response headers, response messages, and exactly
one ``CallEnded`` per call, whatever ended it; GOAWAY is ``ConnectionTerminated`` on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import RpcError
from .metadata import Metadata
from .status import StatusCode

__all__ = [
    "CallAborted",
    "CallEnded",
    "ClientEvent",
    "ConnectionReady",
    "ConnectionTerminated",
    "Event",
    "MessageReceived",
    "RequestEnded",
    "RequestReceived",
    "RequestRejected",
    "ResponseHeadersReceived",
    "ResponseMessageReceived",
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
    """One whole request message (decompressed) arrived.

    ``credit`` is the flow-control window it holds closed until the I/O layer gives it back
    (``ServerConnection.release_credit``); 0 unless the call holds credit.
    """

    stream_id: int
    data: bytes
    credit: int = 0


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


# ---------------------------------------------------------------------- client events


@dataclass(frozen=True, slots=True)
class ConnectionReady:
    """The server's first SETTINGS arrived: the connection speaks HTTP/2 and may carry calls."""


@dataclass(frozen=True, slots=True)
class ResponseHeadersReceived:
    """The response headers of a call arrived (not sent for Trailers-Only responses)."""

    stream_id: int
    metadata: Metadata


@dataclass(frozen=True, slots=True)
class ResponseMessageReceived:
    """One whole response message (decompressed) arrived.

    ``flow_controlled_length`` bytes must be passed to ``acknowledge_received`` once the
    message has been consumed, so the server may send more.
    """

    stream_id: int
    data: bytes
    flow_controlled_length: int


@dataclass(frozen=True, slots=True)
class CallEnded:
    """A call is over, with its final status; nothing more will be reported for it.

    ``reset_code`` is the HTTP/2 error code when the call ended by RST_STREAM (sent by the
    server, or by us because the response broke the rules), else None.
    """

    stream_id: int
    code: StatusCode
    message: str
    metadata: Metadata
    details: bytes | None = None
    reset_code: int | None = None

    def to_error(self) -> RpcError:
        """The ``RpcError`` a caller sees for this (non-OK) end."""
        return RpcError(self.code, self.message, self.metadata, details=self.details)


ClientEvent = (
    ConnectionReady
    | ResponseHeadersReceived
    | ResponseMessageReceived
    | CallEnded
    | ConnectionTerminated
)
