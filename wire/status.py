"""gRPC status codes, and the mappings from HTTP and HTTP/2 outcomes to them.

Owns the numbers from the gRPC spec (``doc/statuscodes.md``) and the two tables a client needs
when a response carries no ``grpc-status`` (``doc/http-grpc-status-mapping.md``) or when a stream
is reset (``doc/PROTOCOL-HTTP2.md``, "Errors").
"""

from __future__ import annotations

import enum

__all__ = ["ErrorCode", "StatusCode", "status_from_http", "status_from_rst_stream"]


class StatusCode(enum.IntEnum):
    """The canonical gRPC status codes, spelled as the spec spells them."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class ErrorCode(enum.IntEnum):
    """HTTP/2 error codes (RFC 9113 section 7), for RST_STREAM and GOAWAY."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD

    @classmethod
    def describe(cls, code: int) -> str:
        """The code's RFC name, or ``0x..`` for a code the RFC does not define."""
        try:
            return cls(code).name
        except ValueError:
            return f"0x{code:x}"


_HTTP_TO_GRPC = {
    400: StatusCode.INTERNAL,
    401: StatusCode.UNAUTHENTICATED,
    403: StatusCode.PERMISSION_DENIED,
    404: StatusCode.UNIMPLEMENTED,
    429: StatusCode.UNAVAILABLE,
    431: StatusCode.INTERNAL,
    502: StatusCode.UNAVAILABLE,
    503: StatusCode.UNAVAILABLE,
    504: StatusCode.UNAVAILABLE,
}


def status_from_http(http_status: int) -> StatusCode:
    """Map an HTTP status of a response without ``grpc-status`` to a gRPC code."""
    return _HTTP_TO_GRPC.get(http_status, StatusCode.UNKNOWN)




def status_from_rst_stream(error_code: int) -> StatusCode:
    """Map the error code of a received RST_STREAM to a gRPC code."""
    if error_code == ErrorCode.REFUSED_STREAM:
        # "REFUSED_STREAM -> UNAVAILABLE": the request was not processed and may be retried.
        return StatusCode.UNAVAILABLE
    if error_code == ErrorCode.CANCEL:
        return StatusCode.CANCELLED
    if error_code == ErrorCode.ENHANCE_YOUR_CALM:
        return StatusCode.RESOURCE_EXHAUSTED
    if error_code == ErrorCode.INADEQUATE_SECURITY:
        return StatusCode.PERMISSION_DENIED
    return StatusCode.INTERNAL
