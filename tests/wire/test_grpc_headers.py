"""Table-driven tests of ``wire.grpc_headers``: the gRPC header rules both directions share."""

from __future__ import annotations

import h2.config
import h2.connection
import pytest

from wire.connection import ServerConnection
from wire.events import RequestReceived, RequestRejected
from wire.grpc_headers import (
    GrpcStatus,
    HeaderError,
    RequestHead,
    ResponseHead,
    decode_grpc_message,
    header_list_size,
    http_fallback,
    is_grpc_content_type,
    malformed_reason,
    parse_encoding,
    parse_grpc_status,
    parse_request_headers,
    parse_response_headers,
    split_metadata,
    status_from_trailers,
)
from wire.metadata import Metadata
from wire.status import StatusCode

H = list[tuple[bytes, bytes]]


@pytest.mark.parametrize(("value", "ok"), [
    (b"application/grpc", True),
    (b"application/grpc+proto", True),
    (b"application/grpc;charset=utf-8", True),
    (b"application/grpcx", False),
    (b"application/json", False),
    (b"", False),
])
def test_content_type(value: bytes, ok: bool) -> None:
    assert is_grpc_content_type(value) is ok


def test_header_list_size_counts_32_per_field() -> None:
    assert header_list_size([(b"ab", b"cde"), (b"x", b"")]) == 5 + 32 + 1 + 32


@pytest.mark.parametrize(("raw", "expected"), [
    (None, None), (b"identity", None), (b" GZIP ", "gzip"), (b"gzip", "gzip"),
])
def test_parse_encoding(raw: bytes | None, expected: str | None) -> None:
    assert parse_encoding(raw) == expected


def test_parse_encoding_unsupported_is_unimplemented_with_accept_encoding() -> None:
    with pytest.raises(HeaderError) as info:
        parse_encoding(b"snappy")
    assert info.value.code is StatusCode.UNIMPLEMENTED
    assert info.value.advertise_encodings
    assert "snappy" in info.value.message


def test_split_metadata() -> None:
    md = split_metadata([(b":status", b"200"), (b"content-type", b"application/grpc"),
                         (b"x-a", b"1"), (b"x-b-bin", b"AAE"), (b"x-a", b"2")])
    assert md == [("x-a", "1"), ("x-b-bin", b"\x00\x01"), ("x-a", "2")]
    with pytest.raises(HeaderError, match="binary metadata") as info:
        split_metadata([(b"x-bin", b"!!!")])
    assert info.value.code is StatusCode.INTERNAL


GOOD_RESPONSE: H = [(b":status", b"200"), (b"content-type", b"application/grpc")]


@pytest.mark.parametrize(("headers", "trailers", "fragment"), [
    (GOOD_RESPONSE, False, None),
    ([(b"grpc-status", b"0"), (b"te", b"trailers")], True, None),
    ([(b"grpc-status", b"0"), (b"x", b"")], True, None),
    ([(b"content-type", b"application/grpc")], False, "missing HTTP status"),
    ([(b"", b"x"), *GOOD_RESPONSE], False, "empty header name"),
    ([(b":status", b"200"), (b":status", b"200")], False, "duplicate :status"),
    ([(b":status", b"20")], False, "invalid :status"),
    ([(b":status", b"2x0")], False, "invalid :status"),
    ([(b":status", b"101")], False, ":status 101"),
    ([(b":path", b"/")], False, "unexpected pseudo-header"),
    ([(b"content-type", b"a"), (b":status", b"200")], False, "after a regular header"),
    ([(b":status", b"200"), (b"grpc-status", b"0")], True, "in trailers"),
    ([(b":status", b"200"), (b"Content-Type", b"x")], False, "invalid character"),
    ([(b":status", b"200"), (b"a b", b"x")], False, "invalid character"),
    ([(b":status", b"200"), (b"connection", b"close")], False, "connection-specific"),
    ([(b":status", b"200"), (b"te", b"gzip")], False, "te header"),
    ([(b"grpc-message", b"a\x00b")], True, "NUL, CR or LF"),
    ([(b"grpc-message", b"a\r\nb")], True, "NUL, CR or LF"),
    ([(b"grpc-message", b" a")], True, "whitespace"),
    ([(b"grpc-message", b"a\t")], True, "whitespace"),
])
def test_malformed_response(headers: H, trailers: bool, fragment: str | None) -> None:
    reason = malformed_reason(headers, response=True, trailers=trailers)
    if fragment is None:
        assert reason is None
    else:
        assert reason is not None
        assert fragment in reason


def test_malformed_request_pseudo_headers_are_not_status() -> None:
    assert malformed_reason([(b":status", b"200")], response=False) is not None
    assert malformed_reason([(b"x", b"y")], response=False) is None


def test_malformed_reason_never_echoes_long_values() -> None:
    reason = malformed_reason([(b":status", b"9" * 1000)], response=True)
    assert reason is not None
    assert len(reason) < 80


# ---------------------------------------------------------------------- requests

GOOD_REQUEST: H = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/a.B/C"),
                   (b":authority", b"h:1"), (b"te", b"trailers"),
                   (b"content-type", b"application/grpc")]


def test_request_parsed() -> None:
    head = parse_request_headers(
        [*GOOD_REQUEST, (b"grpc-timeout", b"1S"), (b"grpc-encoding", b"gzip"),
         (b"grpc-accept-encoding", b"gzip, identity"), (b"x-md", b"v")],
        max_header_list_size=16384)
    assert head.path == "/a.B/C"
    assert head.authority == "h:1"
    assert head.timeout == 1.0
    assert head.encoding == "gzip"
    assert head.accept_encoding == frozenset({"gzip", "identity"})
    assert head.metadata == [("x-md", "v")]


def test_request_defaults() -> None:
    head = parse_request_headers(
        [(b":method", b"POST"), (b"te", b"trailers"), (b"content-type", b"application/grpc")],
        max_header_list_size=16384)
    assert (head.path, head.authority, head.timeout, head.encoding) == ("", "", None, None)
    assert head.accept_encoding == frozenset()


def _replace(headers: H, name: bytes, value: bytes | None) -> H:
    """``headers`` with ``name`` set to ``value`` in place (or dropped when None)."""
    if value is None:
        return [(n, v) for n, v in headers if n != name]
    return [(n, value if n == name else v) for n, v in headers]


@pytest.mark.parametrize(("headers", "http", "code", "fragment"), [
    (_replace(GOOD_REQUEST, b":method", b"GET"), 405, StatusCode.INTERNAL, "method 'GET'"),
    (_replace(GOOD_REQUEST, b":method", None), 405, StatusCode.INTERNAL, "method ''"),
    (_replace(GOOD_REQUEST, b"content-type", b"text/html"), 415, StatusCode.INTERNAL,
     "content-type 'text/html'"),
    (_replace(GOOD_REQUEST, b"content-type", None), 415, StatusCode.INTERNAL, "content-type"),
    (_replace(GOOD_REQUEST, b"te", None), 400, StatusCode.INTERNAL, "te: trailers"),
    ([*GOOD_REQUEST, (b"grpc-timeout", b"1X")], 400, StatusCode.INTERNAL, "grpc-timeout"),
    ([*GOOD_REQUEST, (b"x-bin", b"!")], 400, StatusCode.INTERNAL, "binary metadata"),
    ([*GOOD_REQUEST, (b"grpc-encoding", b"br")], 200, StatusCode.UNIMPLEMENTED, "'br'"),
    ([*GOOD_REQUEST, (b"x-big", b"v" * 20000)], 200, StatusCode.RESOURCE_EXHAUSTED,
     "exceeds the limit of 16384"),
])
def test_request_rejected(headers: H, http: int, code: StatusCode, fragment: str) -> None:
    with pytest.raises(HeaderError) as info:
        parse_request_headers(headers, max_header_list_size=16384)
    assert (info.value.http_status, info.value.code) == (http, code)
    assert fragment in info.value.message


# ---------------------------------------------------------------------- responses


@pytest.mark.parametrize(("headers", "head"), [
    (GOOD_RESPONSE, ResponseHead(200, b"application/grpc", True, None)),
    ([(b":status", b"503"), (b"content-type", b"text/html"), (b"grpc-encoding", b"gzip")],
     ResponseHead(503, b"text/html", False, b"gzip")),
    ([(b":status", b"2000")], ResponseHead(0, None, False, None)),
    ([(b":status", b"+20")], ResponseHead(0, None, False, None)),
    ([], ResponseHead(0, None, False, None)),
])
def test_parse_response_headers(headers: H, head: ResponseHead) -> None:
    assert parse_response_headers(headers) == head


@pytest.mark.parametrize(("raw", "number"), [
    (b"0", 0), (b"14", 14), (b"007", 7), (b"42", 42),
])
def test_grpc_status_grammar_accepts_digits(raw: bytes, number: int) -> None:
    assert parse_grpc_status(raw) == number


@pytest.mark.parametrize("raw", [b"", b"0_0", b"+0", b" 0", b"0 ", b"-1", b"1.0", b"abc",
                                 "\u0661".encode(), b"0x1"])
def test_grpc_status_grammar_rejects_everything_else(raw: bytes) -> None:
    with pytest.raises(ValueError, match="malformed grpc-status"):
        parse_grpc_status(raw)


@pytest.mark.parametrize(("raw", "text"), [
    (None, ""), (b"plain", "plain"), (b"%E2%9C%93 ok", "\u2713 ok"), (b"100%", "100%"),
    (b"%ZZ", "%ZZ"), (b"%FF", "\ufffd"),
])
def test_grpc_message_lenient(raw: bytes | None, text: str) -> None:
    assert decode_grpc_message(raw) == text


GRPC_HEAD = ResponseHead(200, b"application/grpc", True, None)


@pytest.mark.parametrize(("head", "trailers", "expected"), [
    (GRPC_HEAD, [(b"grpc-status", b"0")], GrpcStatus(StatusCode.OK, "", Metadata())),
    (GRPC_HEAD, [(b"grpc-status", b"5"), (b"grpc-message", b"not%20here"), (b"x-t", b"v")],
     GrpcStatus(StatusCode.NOT_FOUND, "not here", Metadata([("x-t", "v")]))),
    (GRPC_HEAD, [(b"grpc-status", b"9"), (b"grpc-status-details-bin", b"CAk")],
     GrpcStatus(StatusCode.FAILED_PRECONDITION, "", Metadata(), b"\x08\x09")),
    (GRPC_HEAD, [(b"grpc-status", b"9"), (b"grpc-status-details-bin", b"!")],
     GrpcStatus(StatusCode.FAILED_PRECONDITION, "", Metadata(), None)),
    (GRPC_HEAD, [(b"grpc-status", b"42"), (b"grpc-message", b"m")],
     GrpcStatus(StatusCode.UNKNOWN, "unknown grpc-status 42: m", Metadata())),
    (GRPC_HEAD, [(b"grpc-status", b"42")],
     GrpcStatus(StatusCode.UNKNOWN, "unknown grpc-status 42", Metadata())),
    (GRPC_HEAD, [(b"grpc-status", b"0_0")],
     GrpcStatus(StatusCode.INTERNAL, "malformed grpc-status '0_0'", Metadata())),
    (GRPC_HEAD, [(b"grpc-status", b"+0"), (b"grpc-message", b"m")],
     GrpcStatus(StatusCode.INTERNAL, "malformed grpc-status '+0': m", Metadata())),
    (GRPC_HEAD, [(b"x-bin", b"!")],
     GrpcStatus(StatusCode.INTERNAL,
                "malformed binary metadata in trailers: invalid base64 length in -bin metadata",
                Metadata())),
    (GRPC_HEAD, [(b"x", b"1")],
     GrpcStatus(StatusCode.UNKNOWN, "response ended without grpc-status",
                Metadata([("x", "1")]))),
    (ResponseHead(0, None, False, None), [(b"grpc-status", b"0")],
     GrpcStatus(StatusCode.INTERNAL, "malformed header: missing HTTP status", Metadata())),
    (ResponseHead(503, None, False, None), [(b"grpc-status", b"0")],
     GrpcStatus(StatusCode.UNAVAILABLE, "unexpected HTTP status code received from server: 503",
                Metadata())),
    (ResponseHead(200, b"text/html", False, None), [(b"grpc-status", b"0")],
     GrpcStatus(StatusCode.UNKNOWN, "unexpected content-type 'text/html' (not application/grpc)",
                Metadata())),
    (ResponseHead(200, None, False, None), [(b"grpc-status", b"0")],
     GrpcStatus(StatusCode.UNKNOWN, "unexpected content-type '' (not application/grpc)",
                Metadata())),
])
def test_status_from_trailers(head: ResponseHead, trailers: H, expected: GrpcStatus) -> None:
    assert status_from_trailers(head, trailers) == expected


def test_http_fallback_keeps_metadata() -> None:
    md = Metadata([("k", "v")])
    assert http_fallback(ResponseHead(404, None, False, None), md).metadata == md
    assert http_fallback(ResponseHead(404, None, False, None), md).code is StatusCode.UNIMPLEMENTED


# ---------------------------------------------------------------------- parity with the server

SERVER_CASES: list[H] = [
    GOOD_REQUEST,
    _replace(GOOD_REQUEST, b":method", b"GET"),
    _replace(GOOD_REQUEST, b"content-type", b"text/html"),
    _replace(GOOD_REQUEST, b"te", None),
    [*GOOD_REQUEST, (b"grpc-timeout", b"1X")],
    [*GOOD_REQUEST, (b"grpc-timeout", b"123456789S")],
    [*GOOD_REQUEST, (b"x-bin", b"!")],
    [*GOOD_REQUEST, (b"grpc-encoding", b"br")],
    [*GOOD_REQUEST, (b"grpc-encoding", b"gzip"), (b"grpc-accept-encoding", b"gzip")],
    [*GOOD_REQUEST, (b"x-big", b"v" * 17000)],
]


def _server_answer(request: H) -> tuple[int, StatusCode | None, RequestHead | None]:
    """What ServerConnection answers to ``request``: HTTP status, gRPC status, or the call."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None, validate_outbound_headers=False))
    client.initiate_connection()
    # Let a 17 KB request out: the server advertises 16 KiB but decodes up to its hard limit.
    client.local_settings.max_header_list_size = 1 << 20
    server = ServerConnection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    client.send_headers(1, request, end_stream=True)
    events = server.receive_data(client.data_to_send())
    for ev in events:
        if isinstance(ev, RequestReceived):
            return 200, None, RequestHead(ev.method, ev.authority, ev.timeout, ev.metadata,
                                          ev.encoding, ev.accept_encoding)
        if isinstance(ev, RequestRejected):
            return ev.http_status, ev.code, None
    raise AssertionError(f"server reported neither a call nor a rejection: {events}")


@pytest.mark.parametrize("request_headers", SERVER_CASES)
def test_parse_request_headers_agrees_with_the_server(request_headers: H) -> None:
    # The server connection will switch to parse_request_headers; until then they must agree.
    http, code, head = _server_answer(request_headers)
    if head is not None:
        assert parse_request_headers(request_headers, max_header_list_size=16 * 1024) == head
        return
    with pytest.raises(HeaderError) as info:
        parse_request_headers(request_headers, max_header_list_size=16 * 1024)
    assert (info.value.http_status, info.value.code) == (http, code)
