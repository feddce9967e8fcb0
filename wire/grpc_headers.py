"""The gRPC header rules shared by both directions (sans-I/O, no Trio).

Owns what gRPC says about header fields on HTTP/2, for requests and responses alike:

* the content-type check (``application/grpc`` optionally followed by ``+format`` or ``;params``);
* ``grpc-timeout`` (delegated to ``wire.timeout``) and ``grpc-encoding`` names;
* the split of a header list into transport fields and custom metadata;
* RFC 9113 field rules that make a message *malformed* (section 8.1.1: a stream error);
* ``grpc-status`` (grammar ``1*DIGIT``), ``grpc-message`` (lenient percent-decoding) and
  ``grpc-status-details-bin`` in trailers;
* the fallback from the HTTP status when a response carries no usable ``grpc-status``
  (``doc/http-grpc-status-mapping.md``).

Nothing here sends anything: functions take header lists (``(bytes, bytes)`` pairs as h2 and the
native codec produce them) and return parsed values, or raise ``HeaderError`` carrying the
answer the spec asks for. The client connection uses it today; the server's request validation
uses ``parse_request_headers`` (same order of checks as grpc-go).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from .compression import SUPPORTED_ENCODINGS, parse_accept_encoding
from .metadata import Metadata, decode_bin, from_headers, percent_decode
from .status import StatusCode, status_from_http
from .timeout import parse_timeout

__all__ = [
    "GrpcStatus",
    "HeaderError",
    "Headers",
    "RequestHead",
    "ResponseHead",
    "decode_grpc_message",
    "header_list_size",
    "http_fallback",
    "is_grpc_content_type",
    "malformed_reason",
    "parse_encoding",
    "parse_grpc_status",
    "parse_request_headers",
    "parse_response_headers",
    "split_metadata",
    "status_from_trailers",
]

Headers = Iterable[tuple[bytes, bytes]]

# RFC 9113 section 8.2.2: "An endpoint MUST NOT generate an HTTP/2 message containing
# connection-specific header fields ... Any message containing connection-specific header
# fields MUST be treated as malformed."
_CONNECTION_SPECIFIC = frozenset({
    b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade",
})
# RFC 9113 section 8.2.1: "A field name MUST NOT contain characters in the ranges 0x00-0x20,
# 0x41-0x5a, or 0x7f-0xff (all ranges inclusive)."
_BAD_NAME_BYTES = frozenset(range(0x00, 0x21)) | frozenset(range(0x41, 0x5B)) | frozenset(
    range(0x7F, 0x100))
_BAD_VALUE_BYTES = (b"\x00", b"\r", b"\n")
_WHITESPACE = (0x20, 0x09)
_DIGITS = frozenset(b"0123456789")


class HeaderError(ValueError):
    """A header list breaks a gRPC rule; carries the answer the spec asks for.

    ``http_status`` is what a server answers with (0 when only a stream reset will do), and
    ``code`` the gRPC status both sides report. ``advertise_encodings`` asks the server to add
    ``grpc-accept-encoding`` (compression.md, for an unsupported ``grpc-encoding``).
    """

    def __init__(self, http_status: int, code: StatusCode, message: str, *,
                 advertise_encodings: bool = False) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.code = code
        self.message = message
        self.advertise_encodings = advertise_encodings


def is_grpc_content_type(value: bytes) -> bool:
    """True for ``application/grpc``, ``application/grpc+proto``, ``application/grpc;x=y``."""
    if not value.startswith(b"application/grpc"):
        return False
    rest = value[16:]
    return not rest or rest[:1] in (b"+", b";")


def header_list_size(headers: Headers) -> int:
    """RFC 9113 section 6.5.2 size of a header list: name + value + 32 for each field."""
    return sum(len(name) + len(value) + 32 for name, value in headers)


def parse_encoding(value: bytes | None) -> str | None:
    """The ``grpc-encoding`` a peer used (None for identity); HeaderError if unsupported."""
    if value is None:
        return None
    enc = value.decode("ascii", "replace").strip().lower()
    if enc not in SUPPORTED_ENCODINGS:
        # compression.md: "If a client message is compressed by an algorithm that is not
        # supported by a server, the message will result in an UNIMPLEMENTED error status".
        raise HeaderError(200, StatusCode.UNIMPLEMENTED,
                          f"grpc: Decompressor is not installed for grpc-encoding {enc!r}",
                          advertise_encodings=True)
    return None if enc == "identity" else enc


def split_metadata(headers: Headers) -> Metadata:
    """Custom metadata of a header list; HeaderError INTERNAL for a malformed ``-bin`` value."""
    try:
        return from_headers(headers)
    except ValueError as exc:
        raise HeaderError(400, StatusCode.INTERNAL, f"malformed binary metadata: {exc}") from None


def malformed_reason(headers: Headers, *, response: bool, trailers: bool = False) -> str | None:
    """Why a received header list is malformed under RFC 9113 section 8, or None if it is not.

    ``response`` selects the pseudo-header rule (``:status`` only, exactly once); ``trailers``
    allows no pseudo-header at all. Only field syntax is judged, never gRPC meaning.
    """
    seen_regular = False
    status_count = 0
    for name, value in headers:
        if not name:
            return "empty header name"
        if name[:1] == b":":
            # 8.3: "Pseudo-header fields MUST NOT appear in a trailer section"; "All
            # pseudo-header fields MUST appear in a field block before all regular field lines".
            if trailers:
                return f"pseudo-header {_show(name)} in trailers"
            if seen_regular:
                return f"pseudo-header {_show(name)} after a regular header"
            if not response or name != b":status":
                return f"unexpected pseudo-header {_show(name)}"
            status_count += 1
            if status_count > 1:
                return "duplicate :status"
            if len(value) != 3 or not set(value) <= _DIGITS:
                return f"invalid :status {_show(value)}"
            if value == b"101":
                # 8.6: "The 101 (Switching Protocols) informational status code ... is not
                # supported by HTTP/2"; a response carrying it is malformed.
                return ":status 101 (Switching Protocols) in HTTP/2"
            continue
        seen_regular = True
        reason = _field_problem(name, value)
        if reason is not None:
            return reason
    if response and not trailers and status_count == 0:
        # grpc-go's wording for the same case.
        return "missing HTTP status"
    return None


def _field_problem(name: bytes, value: bytes) -> str | None:
    if any(b in _BAD_NAME_BYTES for b in name):
        return f"invalid character in header name {_show(name)}"
    if name in _CONNECTION_SPECIFIC:
        return f"connection-specific header {_show(name)}"
    if name == b"te" and value != b"trailers":
        # 8.2.2: "The only exception to this is the TE header field, which MAY be present in an
        # HTTP/2 request; when it is, it MUST NOT contain any value other than 'trailers'."
        return "te header other than 'trailers'"
    # 8.2.1: "A field value MUST NOT contain the zero value (ASCII NUL, 0x00), line feed (ASCII
    # LF, 0x0a), or carriage return (ASCII CR, 0x0d) at any position" and "MUST NOT start or
    # end with an ASCII whitespace character".
    if any(bad in value for bad in _BAD_VALUE_BYTES):
        return f"NUL, CR or LF in the value of {_show(name)}"
    if value and (value[0] in _WHITESPACE or value[-1] in _WHITESPACE):
        return f"leading or trailing whitespace in the value of {_show(name)}"
    return None


def _show(raw: bytes) -> str:
    # Names and short values only, never whole header values (logs must not carry them).
    return repr(raw[:40].decode("ascii", "replace"))


# ---------------------------------------------------------------------- requests


class RequestHead(NamedTuple):
    """The gRPC meaning of a valid request header list."""

    # A NamedTuple, not a frozen dataclass: built once per request on the server's hot path,
    # where a frozen dataclass's __init__ costs about twice as much.

    path: str
    authority: str
    timeout: float | None
    metadata: Metadata
    encoding: str | None
    accept_encoding: frozenset[str]


#: The request fields gRPC gives a meaning to (the rest is metadata).
_REQUEST_FIELDS = frozenset({b":path", b":method", b":authority", b"content-type", b"te",
                             b"grpc-timeout", b"grpc-encoding", b"grpc-accept-encoding"})


def parse_request_headers(headers: list[tuple[bytes, bytes]], *,
                          max_header_list_size: int) -> RequestHead:
    """Validate a request's headers in grpc-go's order; raise HeaderError with the answer."""
    # One pass (every request of a server goes through here): the RFC 9113 size, and the
    # fields gRPC reads, the last occurrence of each deciding (metadata keeps every one).
    fields: dict[bytes, bytes] = {}
    size = 0
    wanted = _REQUEST_FIELDS
    for name, value in headers:
        size += len(name) + len(value) + 32
        if name in wanted:
            fields[name] = value
    if size > max_header_list_size:
        raise HeaderError(200, StatusCode.RESOURCE_EXHAUSTED,
                          f"request header list of {size} bytes exceeds the limit of "
                          f"{max_header_list_size}")
    method = fields.get(b":method")
    if method != b"POST":
        # PROTOCOL-HTTP2.md: only POST is a gRPC request.
        shown = method.decode("ascii", "replace") if method else ""
        raise HeaderError(405, StatusCode.INTERNAL, f"invalid gRPC request method {shown!r}")
    content_type = fields.get(b"content-type")
    if content_type is None or not is_grpc_content_type(content_type):
        shown = content_type.decode("ascii", "replace") if content_type else ""
        raise HeaderError(415, StatusCode.INTERNAL,
                          f"invalid gRPC request content-type {shown!r}")
    if fields.get(b"te") != b"trailers":
        # "TE -> 'te' 'trailers' # Used to detect incompatible proxies"
        raise HeaderError(400, StatusCode.INTERNAL,
                          "missing or invalid te header: gRPC requires 'te: trailers'")
    timeout: float | None = None
    raw_timeout = fields.get(b"grpc-timeout")
    if raw_timeout is not None:
        try:
            timeout = parse_timeout(raw_timeout)
        except ValueError as exc:
            raise HeaderError(400, StatusCode.INTERNAL, f"malformed grpc-timeout: {exc}") from None
    metadata = split_metadata(headers)
    encoding = parse_encoding(fields.get(b"grpc-encoding"))
    accept = fields.get(b"grpc-accept-encoding")
    return RequestHead(  # positional: path, authority, timeout, metadata, encodings
        fields.get(b":path", b"").decode("utf-8", "replace"),
        fields.get(b":authority", b"").decode("utf-8", "replace"),
        timeout,
        metadata,
        encoding,
        parse_accept_encoding(accept.decode("ascii", "replace") if accept is not None else None),
    )


# ---------------------------------------------------------------------- responses


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """What the first HEADERS of a response says (before any gRPC meaning is applied)."""

    http_status: int
    content_type: bytes | None
    is_grpc: bool
    encoding: bytes | None


@dataclass(frozen=True, slots=True)
class GrpcStatus:
    """A call's final status as the trailers (or the HTTP fallback) decide it."""

    code: StatusCode
    message: str
    metadata: Metadata
    details: bytes | None = None


def parse_response_headers(headers: Headers) -> ResponseHead:
    """Pick ``:status``, content-type and grpc-encoding out of response headers (last wins)."""
    fields = dict(headers)
    status = fields.get(b":status")
    content_type = fields.get(b"content-type")
    encoding = fields.get(b"grpc-encoding")
    http = int(status) if status is not None and len(status) == 3 and status.isdigit() else 0
    grpc = content_type is not None and is_grpc_content_type(content_type)
    return ResponseHead(http, content_type, grpc, encoding)


def parse_grpc_status(raw: bytes) -> int:
    """The number in a ``grpc-status`` value; ValueError unless it is ``1*DIGIT``."""
    # PROTOCOL-HTTP2.md: Status -> "grpc-status" 1*DIGIT ; 0-9. int() would also take "+0",
    # " 0", "0_0" and non-ASCII digits.
    if not raw or not set(raw) <= _DIGITS:
        raise ValueError(f"malformed grpc-status {raw[:16].decode('ascii', 'replace')!r}")
    return int(raw)


def decode_grpc_message(raw: bytes | None) -> str:
    """``grpc-message`` decoded leniently: bad escapes pass through, bad UTF-8 is replaced."""
    return percent_decode(raw) if raw is not None else ""


def http_fallback(head: ResponseHead, metadata: Metadata) -> GrpcStatus:
    """The status of a response that carries no usable ``grpc-status``: HTTP decides."""
    http = head.http_status
    if http == 0:
        return GrpcStatus(StatusCode.INTERNAL, "malformed header: missing HTTP status", metadata)
    if http != 200:
        # http-grpc-status-mapping.md
        return GrpcStatus(status_from_http(http),
                          f"unexpected HTTP status code received from server: {http}", metadata)
    if not head.is_grpc:
        shown = head.content_type.decode("ascii", "replace") if head.content_type else ""
        return GrpcStatus(StatusCode.UNKNOWN,
                          f"unexpected content-type {shown!r} (not application/grpc)", metadata)
    return GrpcStatus(StatusCode.UNKNOWN, "response ended without grpc-status", metadata)


def status_from_trailers(head: ResponseHead, trailers: list[tuple[bytes, bytes]]) -> GrpcStatus:
    """The final status of a call from its response head and trailers (or Trailers-Only)."""
    fields = dict(trailers)
    raw_status = fields.get(b"grpc-status")
    raw_message = fields.get(b"grpc-message")
    raw_details = fields.get(b"grpc-status-details-bin")
    try:
        metadata = from_headers(trailers)
    except ValueError as exc:
        return GrpcStatus(StatusCode.INTERNAL, f"malformed binary metadata in trailers: {exc}",
                          Metadata())
    if head.http_status != 200 or not head.is_grpc or raw_status is None:
        return http_fallback(head, metadata)
    message = decode_grpc_message(raw_message)
    suffix = f": {message}" if message else ""
    try:
        number = parse_grpc_status(raw_status)
    except ValueError as exc:
        return GrpcStatus(StatusCode.INTERNAL, f"{exc}{suffix}", metadata)
    try:
        code = StatusCode(number)
    except ValueError:
        # statuscodes.md: an unknown code is UNKNOWN; keep the number for the reader.
        code = StatusCode.UNKNOWN
        message = f"unknown grpc-status {number}{suffix}"
    details: bytes | None = None
    if raw_details is not None:
        try:
            details = decode_bin(raw_details)
        except ValueError:
            details = None  # optional extra detail; never fail the call over it
    return GrpcStatus(code, message, metadata, details)
