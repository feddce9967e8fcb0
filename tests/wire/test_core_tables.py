"""Every branch of the sans-I/O core's tables and small value types.

The core modules (framing, timeout, status, compression, metadata, events, errors) are pure
functions and tables; CI requires 100% branch coverage of them. Most branches are reached by
the protocol tests; this file covers the rest through the public API: the RFC 9113 error-code
names, the HTTP and RST_STREAM mappings of the gRPC spec, and the ``Metadata`` sequence.
"""

from __future__ import annotations

import pytest

from wire.errors import RpcError
from wire.metadata import Metadata
from wire.status import ErrorCode, StatusCode, status_from_http, status_from_rst_stream

# ------------------------------------------------------------------ wire.status


@pytest.mark.parametrize(("code", "name"), [(0x0, "NO_ERROR"), (0x8, "CANCEL"),
                                            (0xD, "HTTP_1_1_REQUIRED")])
def test_error_code_names_are_the_rfcs(code: int, name: str) -> None:
    assert ErrorCode.describe(code) == name


@pytest.mark.parametrize(("code", "text"), [(0xE, "0xe"), (0x1234, "0x1234")])
def test_unknown_error_codes_are_described_in_hex(code: int, text: str) -> None:
    # RFC 9113 section 7: "Unknown or unsupported error codes MUST NOT trigger any special
    # behavior"; they are still worth naming in a log line.
    assert ErrorCode.describe(code) == text


@pytest.mark.parametrize(("http", "grpc"), [
    # PROTOCOL-HTTP2 / http-grpc-status-mapping.md.
    (400, StatusCode.INTERNAL), (401, StatusCode.UNAUTHENTICATED),
    (403, StatusCode.PERMISSION_DENIED), (404, StatusCode.UNIMPLEMENTED),
    (429, StatusCode.UNAVAILABLE), (502, StatusCode.UNAVAILABLE),
    (503, StatusCode.UNAVAILABLE), (504, StatusCode.UNAVAILABLE),
    (500, StatusCode.UNKNOWN), (200, StatusCode.UNKNOWN),
])
def test_http_status_mapping(http: int, grpc: StatusCode) -> None:
    assert status_from_http(http) is grpc


@pytest.mark.parametrize(("error", "grpc"), [
    # PROTOCOL-HTTP2 "Errors": RST_STREAM codes a client maps to gRPC codes.
    (ErrorCode.REFUSED_STREAM, StatusCode.UNAVAILABLE),
    (ErrorCode.CANCEL, StatusCode.CANCELLED),
    (ErrorCode.ENHANCE_YOUR_CALM, StatusCode.RESOURCE_EXHAUSTED),
    (ErrorCode.INADEQUATE_SECURITY, StatusCode.PERMISSION_DENIED),
    (ErrorCode.PROTOCOL_ERROR, StatusCode.INTERNAL),
    (ErrorCode.NO_ERROR, StatusCode.INTERNAL),
])
def test_rst_stream_mapping(error: int, grpc: StatusCode) -> None:
    assert status_from_rst_stream(error) is grpc


# ------------------------------------------------------------------ wire.errors


def test_rpc_error_text_and_repr() -> None:
    error = RpcError(StatusCode.NOT_FOUND, "unknown service")
    assert str(error) == "NOT_FOUND: unknown service"
    assert repr(error) == "RpcError(NOT_FOUND, 'unknown service')"
    assert str(RpcError(StatusCode.CANCELLED)) == "CANCELLED"


# ---------------------------------------------------------------- wire.metadata


def test_metadata_is_an_immutable_sequence() -> None:
    md = Metadata([("a", "1"), ("b", b"\x00"), ("a", "2")])
    assert md[0] == ("a", "1")
    assert list(md[1:]) == [("b", b"\x00"), ("a", "2")]
    assert len(md) == 3
    assert list(md) == [("a", "1"), ("b", b"\x00"), ("a", "2")]
    assert md.get("a") == "2"
    assert md.get("missing") is None
    assert md.get("missing", "x") == "x"
    assert md.get_all("a") == ["1", "2"]
    assert repr(md) == "Metadata([('a', '1'), ('b', b'\\x00'), ('a', '2')])"


def test_metadata_equality_and_hash() -> None:
    md = Metadata([("a", "1")])
    assert md == Metadata([("a", "1")])
    assert md != Metadata([("a", "2")])
    assert md == [("a", "1")]
    assert md == (("a", "1"),)
    assert md != [("a", "2")]
    # Anything else is not comparable: __eq__ defers, and Python falls back to identity.
    assert md != "a"
    assert md.__eq__(42) is NotImplemented
    assert hash(md) == hash(Metadata([("a", "1")]))
    assert len({md, Metadata([("a", "1")])}) == 1
