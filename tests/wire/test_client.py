"""Tests of the gRPC client: the sans-I/O ``ClientConnection`` first, then the Trio ``Channel``.

Sans-I/O tests pump bytes between a ``ClientConnection`` and either the project's
``ServerConnection`` or a raw h2 server (``RawServer``) that answers exactly what a test asks,
so every response shape the spec names (Trailers-Only, no grpc-status, non-gRPC HTTP answers,
RST_STREAM codes, GOAWAY) is one synchronous test. Trio tests run the client against
``wire.Server`` over memory streams (with ``MockClock`` where time matters), loopback TCP, a Unix
socket and TLS.
"""

from __future__ import annotations

import gzip
import math
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
import trio
import trio.testing
from hyperframe.frame import GoAwayFrame

import wire
from tests.rpc_errors import record_rpc_error
from tests.wire.memory_channel import channel_over
from wire import (
    ConnectError,
    Metadata,
    RpcError,
    Server,
    ServerCall,
    StatusCode,
    open_channel,
    parse_target,
    unary_stream,
    unary_unary,
)
from wire.client_connection import (
    CallEnded,
    ClientConfig,
    ClientConnection,
    ConnectionReady,
    ResponseHeadersReceived,
    ResponseMessageReceived,
    StreamLimitError,
)
from wire.connection import ServerConfig, ServerConnection
from wire.events import ConnectionTerminated, MessageReceived, RequestReceived, StreamReset
from wire.events import RequestEnded as ServerRequestEnded
from wire.status import ErrorCode

# ---------------------------------------------------------------------- sans-I/O helpers


def frame(payload: bytes, *, compressed: bool = False) -> bytes:
    return struct.pack(">BI", int(compressed), len(payload)) + payload


class RawServer:
    """A bare h2 server: records requests, sends whatever a test tells it to."""

    def __init__(self, *, max_concurrent_streams: int | None = None,
                 initial_window_size: int | None = None) -> None:
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None))
        settings: dict[Any, int] = {}
        if max_concurrent_streams is not None:
            settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = max_concurrent_streams
        if initial_window_size is not None:
            settings[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] = initial_window_size
        self.h2.initiate_connection()
        if settings:
            self.h2.update_settings(settings)
        self.requests: dict[int, list[tuple[bytes, bytes]]] = {}
        self.data: dict[int, bytes] = {}
        self.ended: set[int] = set()
        self.resets: dict[int, int] = {}
        self.window_updates = 0
        self.extra = bytearray()

    def feed(self, data: bytes) -> None:
        for ev in self.h2.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                self.requests[ev.stream_id] = list(ev.headers or [])
            elif isinstance(ev, h2.events.DataReceived):
                self.data[ev.stream_id] = self.data.get(ev.stream_id, b"") + (ev.data or b"")
                self.h2.acknowledge_received_data(ev.flow_controlled_length or 0, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                self.ended.add(ev.stream_id)
            elif isinstance(ev, h2.events.StreamReset):
                self.resets[ev.stream_id] = int(ev.error_code or 0)
            elif isinstance(ev, h2.events.WindowUpdated):
                self.window_updates += 1

    def headers(self, sid: int, status: bytes = b"200",
                extra: list[tuple[bytes, bytes]] | None = None, *, end: bool = False,
                content_type: bytes | None = b"application/grpc") -> None:
        hs = [(b":status", status)]
        if content_type is not None:
            hs.append((b"content-type", content_type))
        hs.extend(extra or [])
        self.h2.send_headers(sid, hs, end_stream=end)

    def data_frame(self, sid: int, data: bytes, *, end: bool = False) -> None:
        self.h2.send_data(sid, data, end_stream=end)

    def trailers(self, sid: int, items: list[tuple[bytes, bytes]]) -> None:
        self.h2.send_headers(sid, items, end_stream=True)

    def goaway(self, last_stream_id: int, error_code: int = 0) -> None:
        # Written by hand: h2's own GOAWAY would stop this server processing anything.
        f = GoAwayFrame(0)
        f.last_stream_id = last_stream_id
        f.error_code = error_code
        self.extra += self.h2.data_to_send() + f.serialize()

    def out(self) -> bytes:
        data = bytes(self.extra) + self.h2.data_to_send()
        self.extra.clear()
        return data


class Pair:
    """A ClientConnection wired to a peer (RawServer or ServerConnection) by explicit pumps."""

    def __init__(self, server: RawServer | ServerConnection,
                 client: ClientConnection | None = None) -> None:
        self.client = client or ClientConnection(authority="example.test:50051",
                                                 user_agent="test-agent/1")
        self.server = server
        self.server_events: list[Any] = []
        self.events: list[Any] = []
        self.pump()

    def pump(self) -> list[Any]:
        """Move bytes both ways until neither side has anything left to say."""
        got: list[Any] = []
        for _ in range(20):  # bounded: a few round trips settle any exchange here
            up = self.client.data_to_send()
            if up:
                if isinstance(self.server, RawServer):
                    self.server.feed(up)
                else:
                    self.server_events.extend(self.server.receive_data(up))
            down = self.server.out() if isinstance(self.server, RawServer) \
                else self.server.data_to_send()
            if down:
                new = self.client.receive_data(down)
                self.events.extend(new)
                got.extend(new)
            if not up and not down:
                break
        return got

    def ended(self, sid: int) -> CallEnded:
        found = [e for e in self.events if isinstance(e, CallEnded) and e.stream_id == sid]
        assert len(found) == 1, self.events
        return found[0]


def start(pair: Pair, path: str = "/pkg.Svc/M", request: bytes = b"req", **kw: Any) -> int:
    sid = pair.client.start_call(path, **kw)
    pair.client.send_message(sid, request)
    pair.pump()
    return sid


def started(client: ClientConnection | None = None) -> tuple[RawServer, Pair, int]:
    """A bare server, a client wired to it, and one call the client started."""
    server = RawServer()
    pair = Pair(server, client)
    return server, pair, start(pair)


def assert_ended(pair: Pair, sid: int, code: StatusCode, fragment: str) -> None:
    """The call ended once, with ``code`` and a message containing ``fragment``."""
    end = pair.ended(sid)
    assert end.code is code
    assert fragment in end.message, end.message


# ---------------------------------------------------------------------- sans-I/O: requests


def test_connection_ready_after_server_settings() -> None:
    pair = Pair(RawServer())
    assert pair.client.ready
    assert any(isinstance(e, ConnectionReady) for e in pair.events)


def test_request_headers_reserved_first_then_metadata() -> None:
    server = RawServer()
    pair = Pair(server)
    sid = start(pair, metadata=[("x-custom", "v"), ("x-bin", b"\x00\x01")], timeout=1.5,
                encoding="gzip")
    names = [n for n, _ in server.requests[sid]]
    assert names[:4] == [b":method", b":scheme", b":path", b":authority"]
    headers = dict(server.requests[sid])
    assert headers[b":method"] == b"POST"
    assert headers[b":scheme"] == b"http"
    assert headers[b":path"] == b"/pkg.Svc/M"
    assert headers[b":authority"] == b"example.test:50051"
    assert headers[b"te"] == b"trailers"
    assert headers[b"content-type"] == b"application/grpc"
    assert headers[b"user-agent"] == b"test-agent/1"
    assert headers[b"grpc-timeout"] == b"1500000u"
    assert headers[b"grpc-encoding"] == b"gzip"
    assert b"gzip" in headers[b"grpc-accept-encoding"]
    # Custom metadata comes after every reserved header; -bin values are unpadded base64.
    assert names.index(b"x-custom") > names.index(b"grpc-accept-encoding")
    assert headers[b"x-bin"] == b"AAE"
    assert sid in server.ended


def test_no_grpc_timeout_without_deadline() -> None:
    server, _, sid = started()
    assert b"grpc-timeout" not in dict(server.requests[sid])
    assert b"grpc-encoding" not in dict(server.requests[sid])


def test_authority_override_per_call() -> None:
    server = RawServer()
    pair = Pair(server)
    sid = start(pair, authority=":5000")
    assert dict(server.requests[sid])[b":authority"] == b":5000"


def test_reserved_metadata_rejected_before_anything_is_sent() -> None:
    pair = Pair(RawServer())
    with pytest.raises(ValueError, match="reserved"):
        pair.client.start_call("/a.B/C", [("grpc-foo", "x")])
    assert pair.client.open_calls == 0


def test_gzip_request_reaches_server_connection_decompressed() -> None:
    server = ServerConnection()
    pair = Pair(server)
    sid = pair.client.start_call("/a.B/C", encoding="gzip")
    pair.client.send_message(sid, b"hello " * 100)
    pair.pump()
    received = [e for e in pair.server_events if isinstance(e, RequestReceived)]
    assert received[0].encoding == "gzip"
    messages = [e for e in pair.server_events if isinstance(e, MessageReceived)]
    assert messages[0].data == b"hello " * 100
    assert any(isinstance(e, ServerRequestEnded) for e in pair.server_events)


def test_request_larger_than_server_window_waits_for_window_update() -> None:
    server = ServerConnection(ServerConfig(initial_window_size=1000,
                                           connection_window_increment=0))
    pair = Pair(server)
    sid = pair.client.start_call("/a.B/C")
    payload = bytes(range(256)) * 40  # 10240 bytes, ten windows' worth
    pair.client.send_message(sid, payload)
    for _ in range(30):  # bounded: each round trip moves one window
        pair.pump()
        if any(isinstance(e, ServerRequestEnded) for e in pair.server_events):
            break
    messages = [e for e in pair.server_events if isinstance(e, MessageReceived)]
    assert [m.data for m in messages] == [payload]


# ---------------------------------------------------------------------- sans-I/O: responses


def test_full_response_headers_messages_trailers() -> None:
    server, pair, sid = started()
    server.headers(sid, extra=[(b"x-initial", b"a")])
    server.data_frame(sid, frame(b"one") + frame(b"two"))
    server.trailers(sid, [(b"grpc-status", b"0"), (b"x-trail", b"b")])
    pair.pump()
    kinds = [type(e) for e in pair.events if not isinstance(e, ConnectionReady)]
    assert kinds == [ResponseHeadersReceived, ResponseMessageReceived, ResponseMessageReceived,
                     CallEnded]
    headers = next(e for e in pair.events if isinstance(e, ResponseHeadersReceived))
    assert headers.metadata == [("x-initial", "a")]
    msgs = [e.data for e in pair.events if isinstance(e, ResponseMessageReceived)]
    assert msgs == [b"one", b"two"]
    end = pair.ended(sid)
    assert end.code is StatusCode.OK
    assert end.metadata == [("x-trail", "b")]
    assert not pair.client.is_active(sid)


def test_trailers_only_response() -> None:
    server, pair, sid = started()
    server.headers(sid, extra=[(b"grpc-status", b"5"), (b"grpc-message", b"unknown service"),
                               (b"x-md", b"v")], end=True)
    pair.pump()
    assert not any(isinstance(e, ResponseHeadersReceived) for e in pair.events)
    end = pair.ended(sid)
    assert (end.code, end.message) == (StatusCode.NOT_FOUND, "unknown service")
    assert end.metadata == [("x-md", "v")]
    error = end.to_error()
    assert isinstance(error, RpcError)
    assert error.code is StatusCode.NOT_FOUND


def test_grpc_message_is_decoded_leniently() -> None:
    server, pair, sid = started()
    server.headers(sid, extra=[(b"grpc-status", b"13"),
                               (b"grpc-message", b"%E2%9C%93 bad %ZZ 100%")], end=True)
    pair.pump()
    assert pair.ended(sid).message == "\u2713 bad %ZZ 100%"


def test_status_details_bin_is_kept() -> None:
    server, pair, sid = started()
    server.headers(sid, extra=[(b"grpc-status", b"9"),
                               (b"grpc-status-details-bin", b"CAkSBG5vcGU")], end=True)
    pair.pump()
    end = pair.ended(sid)
    assert end.details == b"\x08\x09\x12\x04nope"
    assert end.to_error().details == b"\x08\x09\x12\x04nope"


@pytest.mark.parametrize(("http", "code"), [
    (b"400", StatusCode.INTERNAL), (b"401", StatusCode.UNAUTHENTICATED),
    (b"403", StatusCode.PERMISSION_DENIED), (b"404", StatusCode.UNIMPLEMENTED),
    (b"429", StatusCode.UNAVAILABLE), (b"431", StatusCode.INTERNAL),
    (b"502", StatusCode.UNAVAILABLE), (b"503", StatusCode.UNAVAILABLE),
    (b"504", StatusCode.UNAVAILABLE), (b"500", StatusCode.UNKNOWN),
])
def test_status_from_http_when_not_200(http: bytes, code: StatusCode) -> None:
    server, pair, sid = started()
    # Even a grpc-status present on a non-200 answer is ignored: HTTP decides.
    server.headers(sid, http, [(b"grpc-status", b"0")], content_type=b"text/html", end=True)
    pair.pump()
    assert_ended(pair, sid, code, http.decode())


def test_non_200_headers_with_body_end_call_and_reset() -> None:
    server, pair, sid = started()
    server.headers(sid, b"503", content_type=b"text/plain")
    pair.pump()
    assert pair.ended(sid).code is StatusCode.UNAVAILABLE
    assert server.resets[sid] == ErrorCode.CANCEL


def test_non_grpc_content_type_is_unknown() -> None:
    server, pair, sid = started()
    server.headers(sid, content_type=b"text/html", extra=[(b"grpc-status", b"0")], end=True)
    pair.pump()
    assert_ended(pair, sid, StatusCode.UNKNOWN, "content-type")


def test_missing_grpc_status_in_trailers_is_from_http() -> None:
    server, pair, sid = started()
    server.headers(sid)
    server.trailers(sid, [(b"x-other", b"1")])
    pair.pump()
    assert pair.ended(sid).code is StatusCode.UNKNOWN  # HTTP 200 maps to UNKNOWN


@pytest.mark.parametrize(("raw", "code", "fragment"), [
    (b"42", StatusCode.UNKNOWN, "unknown grpc-status 42"),
    (b"abc", StatusCode.INTERNAL, "malformed grpc-status"),
])
def test_odd_grpc_status_values(raw: bytes, code: StatusCode, fragment: str) -> None:
    server, pair, sid = started()
    server.headers(sid, extra=[(b"grpc-status", raw), (b"grpc-message", b"m")], end=True)
    pair.pump()
    assert_ended(pair, sid, code, fragment)


@pytest.mark.parametrize(("rst", "code"), [
    (ErrorCode.REFUSED_STREAM, StatusCode.UNAVAILABLE),
    (ErrorCode.CANCEL, StatusCode.CANCELLED),
    (ErrorCode.ENHANCE_YOUR_CALM, StatusCode.RESOURCE_EXHAUSTED),
    (ErrorCode.INTERNAL_ERROR, StatusCode.INTERNAL),
    (ErrorCode.NO_ERROR, StatusCode.INTERNAL),
])
def test_rst_stream_mapping(rst: int, code: StatusCode) -> None:
    server, pair, sid = started()
    server.h2.reset_stream(sid, rst)
    pair.pump()
    end = pair.ended(sid)
    assert end.code is code
    assert end.reset_code == rst


def test_rst_no_error_after_trailers_is_not_a_second_end() -> None:
    server = RawServer()
    pair = Pair(server)
    sid = pair.client.start_call("/a.B/C")  # request side left open, as in a server's early answer
    pair.pump()
    server.headers(sid, extra=[(b"grpc-status", b"0")], end=True)
    pair.pump()
    assert pair.ended(sid).code is StatusCode.OK
    # The client reset its half-open stream itself so it does not count against the limit.
    assert server.resets.get(sid) == ErrorCode.CANCEL


def test_data_end_stream_without_trailers_is_internal() -> None:
    server, pair, sid = started()
    server.headers(sid)
    server.data_frame(sid, frame(b"x"), end=True)
    pair.pump()
    assert_ended(pair, sid, StatusCode.INTERNAL, "without sending trailers")


def test_trailers_inside_a_message_is_internal() -> None:
    server, pair, sid = started()
    server.headers(sid)
    server.data_frame(sid, frame(b"abcdef")[:7])
    server.trailers(sid, [(b"grpc-status", b"0")])
    pair.pump()
    assert_ended(pair, sid, StatusCode.INTERNAL, "inside a message")


def test_messages_split_byte_by_byte_are_reassembled() -> None:
    server, pair, sid = started()
    server.headers(sid)
    wire_bytes = frame(b"hello") + frame(b"") + frame(b"world!")
    for i in range(len(wire_bytes)):
        server.data_frame(sid, wire_bytes[i : i + 1])
    server.trailers(sid, [(b"grpc-status", b"0")])
    pair.pump()
    msgs = [e.data for e in pair.events if isinstance(e, ResponseMessageReceived)]
    assert msgs == [b"hello", b"", b"world!"]
    assert pair.ended(sid).code is StatusCode.OK


def test_flow_control_window_reopens_only_when_messages_are_consumed() -> None:
    client = ClientConnection(ClientConfig(initial_window_size=1000,
                                           connection_window_increment=0))
    server, pair, sid = started(client)
    server.headers(sid)
    server.data_frame(sid, frame(b"a" * 495) + frame(b"b" * 495))  # the whole 1000-byte window
    pair.pump()
    msgs = [e for e in pair.events if isinstance(e, ResponseMessageReceived)]
    assert [len(m.data) for m in msgs] == [495, 495]
    assert server.h2.local_flow_control_window(sid) == 0
    # Consuming gives the bytes back (h2 batches small WINDOW_UPDATEs, so consume everything).
    for m in msgs:
        client.acknowledge_received(sid, m.flow_controlled_length)
    pair.pump()
    assert server.h2.local_flow_control_window(sid) == 1000


def test_message_larger_than_window_still_arrives() -> None:
    client = ClientConnection(ClientConfig(initial_window_size=1000,
                                           connection_window_increment=0))
    server, pair, sid = started(client)
    server.headers(sid)
    big = frame(bytes(5000))
    sent = 0
    for _ in range(20):  # bounded: each pass sends what the window allows
        n = min(server.h2.local_flow_control_window(sid), len(big) - sent)
        if n:
            server.data_frame(sid, big[sent : sent + n])
            sent += n
        pair.pump()
        if sent == len(big):
            break
    msgs = [e for e in pair.events if isinstance(e, ResponseMessageReceived)]
    assert [len(m.data) for m in msgs] == [5000]


def test_oversized_response_message_is_resource_exhausted() -> None:
    client = ClientConnection(ClientConfig(max_receive_message_size=10))
    server, pair, sid = started(client)
    server.headers(sid)
    server.data_frame(sid, frame(b"x" * 11))
    pair.pump()
    end = pair.ended(sid)
    assert end.code is StatusCode.RESOURCE_EXHAUSTED
    assert server.resets[sid] == ErrorCode.CANCEL


def test_gzip_response_is_decompressed() -> None:
    server, pair, sid = started()
    server.headers(sid, extra=[(b"grpc-encoding", b"gzip")])
    server.data_frame(sid, frame(gzip.compress(b"zipped"), compressed=True))
    server.trailers(sid, [(b"grpc-status", b"0")])
    pair.pump()
    assert [e.data for e in pair.events if isinstance(e, ResponseMessageReceived)] == [b"zipped"]


def test_compressed_flag_without_encoding_is_internal() -> None:
    server, pair, sid = started()
    server.headers(sid)
    server.data_frame(sid, frame(gzip.compress(b"zipped"), compressed=True))
    pair.pump()
    assert pair.ended(sid).code is StatusCode.INTERNAL


def test_unsupported_response_encoding_is_internal() -> None:
    server, pair, sid = started()
    server.headers(sid, extra=[(b"grpc-encoding", b"snappy")])
    pair.pump()
    assert_ended(pair, sid, StatusCode.INTERNAL, "snappy")


def test_cancel_sends_rst_stream_cancel_and_reports_nothing() -> None:
    server, pair, sid = started()
    assert pair.client.cancel(sid)
    assert not pair.client.cancel(sid)
    pair.pump()
    assert server.resets[sid] == ErrorCode.CANCEL
    assert not [e for e in pair.events if isinstance(e, CallEnded)]


def test_cancel_reaches_server_connection_as_stream_reset() -> None:
    server = ServerConnection()
    pair = Pair(server)
    sid = start(pair)
    pair.client.cancel(sid)
    pair.pump()
    resets = [e for e in pair.server_events if isinstance(e, StreamReset)]
    assert resets
    assert resets[0].error_code == ErrorCode.CANCEL


def test_max_concurrent_streams_is_respected() -> None:
    server = RawServer(max_concurrent_streams=1)
    pair = Pair(server)
    assert pair.client.max_concurrent_streams == 1
    sid = start(pair)
    assert not pair.client.can_start_call
    with pytest.raises(StreamLimitError) as info:
        pair.client.start_call("/a.B/C")
    assert info.value.code is StatusCode.RESOURCE_EXHAUSTED
    server.headers(sid, extra=[(b"grpc-status", b"0")], end=True)
    pair.pump()
    assert pair.client.can_start_call
    start(pair)


def test_goaway_ends_calls_above_last_stream_id_only() -> None:
    server = RawServer()
    pair = Pair(server)
    first = start(pair)
    second = start(pair)
    server.goaway(first)
    pair.pump()
    terminated = [e for e in pair.events if isinstance(e, ConnectionTerminated)]
    assert terminated
    assert terminated[0].last_stream_id == first
    assert pair.client.going_away
    assert pair.ended(second).code is StatusCode.UNAVAILABLE
    assert pair.client.is_active(first)
    with pytest.raises(RpcError) as info:
        pair.client.start_call("/a.B/C")
    assert info.value.code is StatusCode.UNAVAILABLE


def test_graceful_goaway_lets_the_spared_call_finish() -> None:
    server = ServerConnection()
    pair = Pair(server)
    sid = start(pair)
    server.start_drain()
    pair.pump()
    assert pair.client.going_away
    server.send_message(sid, b"answer")
    server.send_status(sid, StatusCode.OK)
    pair.pump()
    assert [e.data for e in pair.events if isinstance(e, ResponseMessageReceived)] == [b"answer"]
    assert pair.ended(sid).code is StatusCode.OK


def test_connection_lost_ends_every_call_unavailable() -> None:
    pair = Pair(RawServer())
    a, b = start(pair), start(pair)
    ended = pair.client.connection_lost("socket closed")
    assert {e.stream_id for e in ended} == {a, b}
    assert all(e.code is StatusCode.UNAVAILABLE and e.message == "socket closed" for e in ended)
    assert pair.client.closed
    assert not pair.client.can_start_call


def test_garbage_from_server_is_a_protocol_error() -> None:
    client = ClientConnection()
    with pytest.raises(wire.ProtocolError):
        client.receive_data(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    assert client.closed


def test_against_server_connection_end_to_end() -> None:
    server = ServerConnection()
    pair = Pair(server)
    sid = pair.client.start_call("/a.B/C", [("x-in", "1")], timeout=5)
    pair.client.send_message(sid, b"ping")
    pair.pump()
    request = next(e for e in pair.server_events if isinstance(e, RequestReceived))
    assert request.method == "/a.B/C"
    assert request.authority == "example.test:50051"
    assert request.timeout is not None
    assert 4.9 < request.timeout <= 5
    assert request.metadata.get("x-in") == "1"
    server.send_headers(sid, [("x-h", "h")])
    server.send_message(sid, b"pong")
    server.send_status(sid, StatusCode.ABORTED, "n\u00e9e %", [("x-t-bin", b"\xff")])
    pair.pump()
    end = pair.ended(sid)
    assert (end.code, end.message) == (StatusCode.ABORTED, "n\u00e9e %")
    assert end.metadata == [("x-t-bin", b"\xff")]


# ---------------------------------------------------------------------- targets


@pytest.mark.parametrize(("text", "host", "port", "path", "authority"), [
    ("localhost:50051", "localhost", 50051, None, "localhost:50051"),
    ("127.0.0.1:1", "127.0.0.1", 1, None, "127.0.0.1:1"),
    ("[::1]:443", "::1", 443, None, "[::1]:443"),
    (":5000", "localhost", 5000, None, ":5000"),
    ("dns:///example.com:80", "example.com", 80, None, "example.com:80"),
    ("unix:/tmp/x.sock", "", 0, "/tmp/x.sock", "localhost"),
    ("unix:///tmp/x.sock", "", 0, "/tmp/x.sock", "localhost"),
    ("unix:rel.sock", "", 0, "rel.sock", "localhost"),
])
def test_parse_target(text: str, host: str, port: int, path: str | None,
                      authority: str) -> None:
    t = parse_target(text)
    assert (t.host, t.port, t.unix_path, t.authority) == (host, port, path, authority)


@pytest.mark.parametrize("text", ["localhost", "host:", "host:99999", "host:x", "::1:5",
                                  "unix:", "[::1]5"])
def test_parse_target_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="target"):
        parse_target(text)


# ---------------------------------------------------------------------- the Trio client

ECHO = "/test.Client/Echo"
FAIL = "/test.Client/Fail"
BLOCK = "/test.Client/Block"
STREAM = "/test.Client/Stream"
TWO = "/test.Client/Two"
NONE = "/test.Client/None"
SEEN = "/test.Client/Seen"


class ClientTestService:
    """Handlers recording what they saw; Block waits until released or cancelled."""

    def __init__(self) -> None:
        self.started = trio.Event()
        self.release = trio.Event()
        self.cancelled = trio.Event()
        self.active = 0
        self.max_active = 0
        self.seen: list[ServerCall] = []

    async def echo(self, req: bytes, call: ServerCall) -> bytes:
        self.seen.append(call)
        call.set_initial_metadata([("x-initial", "i")])
        call.set_trailing_metadata([("x-trailing", "t")])
        return req

    async def fail(self, req: bytes, call: ServerCall) -> bytes:
        raise RpcError(StatusCode.FAILED_PRECONDITION, req.decode(), [("x-why", "because")],
                       details=b"\x08\x09")

    async def block(self, req: bytes, call: ServerCall) -> bytes:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.started.set()
        try:
            await self.release.wait()
        except trio.Cancelled:
            self.cancelled.set()
            raise
        finally:
            self.active -= 1
        return req

    async def stream(self, req: bytes, call: ServerCall,
                     send: Callable[[bytes], Awaitable[None]]) -> None:
        count = int(req or b"0")
        try:
            for i in range(count if count >= 0 else 10**9):
                await send(b"m%d" % i)
                if count < 0:
                    await trio.sleep(1)
        except trio.Cancelled:
            self.cancelled.set()
            raise

    async def two(self, req: bytes, call: ServerCall,
                  send: Callable[[bytes], Awaitable[None]]) -> None:
        await send(b"1")
        await send(b"2")

    async def none(self, req: bytes, call: ServerCall,
                   send: Callable[[bytes], Awaitable[None]]) -> None:
        return

    def handlers(self) -> list[Any]:
        ident: Callable[[bytes], bytes] = bytes
        return [
            unary_unary(ECHO, self.echo, ident, ident),
            unary_unary(FAIL, self.fail, ident, ident),
            unary_unary(BLOCK, self.block, ident, ident),
            unary_stream(STREAM, self.stream, ident, ident),
            # Declared unary-stream on the server, called as unary by the client.
            unary_stream(TWO, self.two, ident, ident),
            unary_stream(NONE, self.none, ident, ident),
        ]


class MemoryNet:
    """Connects channels to an in-process server over memory streams; can refuse or stall."""

    def __init__(self, server: Server, nursery: trio.Nursery) -> None:
        self.server = server
        self.nursery = nursery
        self.refuse = False
        self.stall = False
        self.connects = 0
        self.server_streams: list[trio.abc.Stream] = []

    async def connect(self) -> trio.abc.Stream:
        self.connects += 1
        await trio.lowlevel.checkpoint()
        if self.refuse:
            raise ConnectionRefusedError(111, "Connection refused")
        client, server = trio.testing.memory_stream_pair()
        self.server_streams.append(server)
        if not self.stall:
            self.nursery.start_soon(self.server.serve_stream, server)
        return client


@pytest.fixture
def svc() -> ClientTestService:
    return ClientTestService()


@asynccontextmanager
async def memory_channel(svc: ClientTestService, *, config: ServerConfig | None = None,
                         **kw: Any) -> AsyncIterator[tuple[wire.Channel, MemoryNet]]:
    server = Server(svc.handlers(), config=config)
    async with channel_over(lambda nursery: MemoryNet(server, nursery), "backend:50051",
                            **kw) as connected:
        yield connected


async def test_unary_call_returns_response_and_metadata(svc: ClientTestService) -> None:
    async with memory_channel(svc, user_agent="myapp/2") as (channel, _):
        result = await channel.unary_unary(ECHO, b"hi", metadata=[("x-req", "r")])
    assert result.response == b"hi"
    assert result.code is StatusCode.OK
    assert result.initial_metadata == [("x-initial", "i")]
    assert result.trailing_metadata == [("x-trailing", "t")]
    call = svc.seen[0]
    assert call.authority == "backend:50051"
    assert call.metadata.get("x-req") == "r"
    agent = call.metadata.get("user-agent")
    assert agent == f"myapp/2 grpc-python-trio/{wire.__version__}"


async def test_default_user_agent_and_authority_override(svc: ClientTestService) -> None:
    async with memory_channel(svc, authority="override.test") as (channel, _):
        await channel.unary_unary(ECHO, b"")
    assert svc.seen[0].authority == "override.test"
    assert svc.seen[0].metadata.get("user-agent") == f"grpc-python-trio/{wire.__version__}"


async def test_error_status_raises_rpc_error(svc: ClientTestService) -> None:
    async with memory_channel(svc) as (channel, _):
        with pytest.raises(RpcError) as info:
            await channel.unary_unary(FAIL, "no w\u00e4y".encode())
    err = info.value
    assert err.code is StatusCode.FAILED_PRECONDITION
    assert err.message == "no w\u00e4y"
    assert ("x-why", "because") in err.metadata
    assert err.details == b"\x08\x09"


async def test_unknown_method_is_unimplemented(svc: ClientTestService) -> None:
    async with memory_channel(svc) as (channel, _):
        with pytest.raises(RpcError) as info:
            await channel.unary_unary("/test.Client/Nope", b"")
    assert info.value.code is StatusCode.UNIMPLEMENTED


async def test_deadline_exceeded_resets_stream_and_cancels_handler(
        svc: ClientTestService, autojump_clock: trio.testing.MockClock) -> None:
    async with memory_channel(svc) as (channel, _):
        t0 = trio.current_time()
        with pytest.raises(RpcError) as info:
            await channel.unary_unary(BLOCK, b"", timeout=2.5)
        assert info.value.code is StatusCode.DEADLINE_EXCEEDED
        assert trio.current_time() - t0 == pytest.approx(2.5)
        with trio.fail_after(1):
            await svc.cancelled.wait()


async def test_outer_cancel_scope_is_sent_as_grpc_timeout(
        svc: ClientTestService, autojump_clock: trio.testing.MockClock) -> None:
    async with memory_channel(svc) as (channel, _):
        with trio.move_on_after(3):
            await channel.unary_unary(ECHO, b"")
    assert svc.seen[0].time_remaining() <= 3


async def test_caller_cancellation_resets_the_stream(
        svc: ClientTestService, autojump_clock: trio.testing.MockClock) -> None:
    async with memory_channel(svc) as (channel, _):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(channel.unary_unary, BLOCK, b"")
            await svc.started.wait()
            nursery.cancel_scope.cancel()
        with trio.fail_after(1):
            await svc.cancelled.wait()
        # The connection is still fine for the next call.
        assert (await channel.unary_unary(ECHO, b"ok")).response == b"ok"


async def test_server_streaming_call(svc: ClientTestService) -> None:
    async with memory_channel(svc) as (channel, _):
        async with channel.unary_stream(STREAM, b"3") as stream:
            got = [m async for m in stream]
        assert got == [b"m0", b"m1", b"m2"]
        assert stream.code is StatusCode.OK
        assert stream.done


async def test_leaving_a_stream_early_cancels_it(
        svc: ClientTestService, autojump_clock: trio.testing.MockClock) -> None:
    async with memory_channel(svc) as (channel, _):
        async with channel.unary_stream(STREAM, b"-1") as stream:
            async for message in stream:
                assert message == b"m0"
                break
        with trio.fail_after(5):
            await svc.cancelled.wait()


async def test_stream_deadline_applies_to_reads(
        svc: ClientTestService, autojump_clock: trio.testing.MockClock) -> None:
    async with memory_channel(svc) as (channel, _):
        got: list[bytes] = []

        async def read_all() -> None:
            async with channel.unary_stream(STREAM, b"-1", timeout=2.5) as stream:
                async for message in stream:
                    got.append(message)

        with pytest.raises(RpcError) as info:
            await read_all()
        assert info.value.code is StatusCode.DEADLINE_EXCEEDED
        assert got == [b"m0", b"m1", b"m2"]


async def test_stream_cancel_method(svc: ClientTestService,
                                   autojump_clock: trio.testing.MockClock) -> None:
    async with memory_channel(svc) as (channel, _):
        async with channel.unary_stream(STREAM, b"-1") as stream:
            assert await stream.__anext__() == b"m0"
            stream.cancel()
            with pytest.raises(RpcError) as info:
                await stream.__anext__()
        assert info.value.code is StatusCode.CANCELLED


async def test_unary_cardinality_violations(svc: ClientTestService) -> None:
    async with memory_channel(svc) as (channel, _):
        for path in (TWO, NONE):
            with pytest.raises(RpcError) as info:
                await channel.unary_unary(path, b"")
            assert info.value.code is StatusCode.INTERNAL
            assert "cardinality" in info.value.message


async def test_many_concurrent_calls_share_one_connection(svc: ClientTestService) -> None:
    results: list[bytes] = []

    async def one(i: int) -> None:
        results.append((await channel.unary_unary(ECHO, b"%d" % i)).response)

    async with memory_channel(svc) as (channel, net):
        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(one, i)
        assert net.connects == 1
    assert sorted(results) == sorted(b"%d" % i for i in range(40))


async def test_calls_beyond_max_concurrent_streams_wait_for_a_slot(
        svc: ClientTestService, autojump_clock: trio.testing.MockClock) -> None:
    done: list[bytes] = []

    async def one(i: int) -> None:
        done.append((await channel.unary_unary(BLOCK, b"%d" % i, timeout=60)).response)

    config = ServerConfig(max_concurrent_streams=2)
    async with memory_channel(svc, config=config) as (channel, _), \
            trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(one, i)
        await trio.sleep(1)
        assert svc.active == 2  # the rest are queued in the client, not refused
        svc.release.set()
    assert sorted(done) == [b"0", b"1", b"2", b"3", b"4"]
    assert svc.max_active == 2


async def test_queued_call_times_out_while_waiting_for_a_slot(
        svc: ClientTestService, autojump_clock: trio.testing.MockClock) -> None:
    config = ServerConfig(max_concurrent_streams=1)
    async with memory_channel(svc, config=config) as (channel, _), \
            trio.open_nursery() as nursery:
        nursery.start_soon(channel.unary_unary, BLOCK, b"")
        await svc.started.wait()
        with pytest.raises(RpcError) as info:
            await channel.unary_unary(ECHO, b"", timeout=1)
        assert info.value.code is StatusCode.DEADLINE_EXCEEDED
        svc.release.set()


async def test_large_messages_both_ways_with_gzip(svc: ClientTestService) -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB: beyond every initial window
    async with memory_channel(svc) as (channel, _):
        result = await channel.unary_unary(ECHO, payload, compression="gzip")
    assert result.response == payload


async def test_response_above_receive_limit_is_resource_exhausted(
        svc: ClientTestService) -> None:
    async with memory_channel(svc, max_receive_message_size=100) as (channel, _):
        with pytest.raises(RpcError) as info:
            await channel.unary_unary(ECHO, b"x" * 101)
        assert info.value.code is StatusCode.RESOURCE_EXHAUSTED
        assert (await channel.unary_unary(ECHO, b"x" * 100)).response == b"x" * 100


async def test_connect_refused_is_connect_error(svc: ClientTestService) -> None:
    async with memory_channel(svc) as (channel, net):
        net.refuse = True
        with pytest.raises(ConnectError) as info:
            await channel.unary_unary(ECHO, b"")
        assert info.value.code is StatusCode.UNAVAILABLE
        assert not info.value.timed_out
        assert "refused" in info.value.message.lower()
        net.refuse = False
        assert (await channel.unary_unary(ECHO, b"back")).response == b"back"


async def test_silent_peer_is_a_connect_timeout(
        svc: ClientTestService, autojump_clock: trio.testing.MockClock) -> None:
    async with memory_channel(svc, connect_timeout=3) as (channel, net):
        net.stall = True  # accepts the bytes but never answers with SETTINGS
        t0 = trio.current_time()
        with pytest.raises(ConnectError) as info:
            await channel.connect()
        assert info.value.timed_out
        assert trio.current_time() - t0 == pytest.approx(3)


async def test_connect_timeout_is_separate_from_call_deadline(
        svc: ClientTestService, autojump_clock: trio.testing.MockClock) -> None:
    async with memory_channel(svc, connect_timeout=30) as (channel, net):
        net.stall = True
        with pytest.raises(RpcError) as info:
            await channel.unary_unary(ECHO, b"", timeout=2)
        assert info.value.code is StatusCode.DEADLINE_EXCEEDED
        assert not isinstance(info.value, ConnectError)


async def test_concurrent_calls_share_one_failed_connect(
        svc: ClientTestService, autojump_clock: trio.testing.MockClock) -> None:
    errors: list[BaseException] = []

    async def one() -> None:
        try:
            await channel.unary_unary(ECHO, b"")
        except ConnectError as exc:
            errors.append(exc)

    async with memory_channel(svc, connect_timeout=5) as (channel, net):
        net.stall = True
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(one)
        assert net.connects == 1
    assert len(errors) == 5
    assert all(isinstance(e, ConnectError) and e.timed_out
                                    for e in errors)


async def test_non_http2_peer_is_a_connect_error(svc: ClientTestService) -> None:
    async def http1() -> trio.abc.Stream:
        client, server = trio.testing.memory_stream_pair()
        await server.send_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        return client

    async with open_channel("x:1", connector=http1, connect_timeout=5) as channel:
        with pytest.raises(ConnectError) as info:
            await channel.connect()
    assert "HTTP/2" in info.value.message
    assert not info.value.timed_out


async def test_lost_connection_fails_calls_unavailable_and_reconnects(
        svc: ClientTestService) -> None:
    async with memory_channel(svc) as (channel, net):
        async with trio.open_nursery() as nursery:
            errors: list[RpcError] = []
            nursery.start_soon(record_rpc_error, lambda: channel.unary_unary(BLOCK, b""), errors)
            await svc.started.wait()
            await trio.aclose_forcefully(net.server_streams[0])
        assert errors[0].code is StatusCode.UNAVAILABLE
        assert "connection lost" in errors[0].message
        assert not isinstance(errors[0], ConnectError)
        assert (await channel.unary_unary(ECHO, b"again")).response == b"again"
        assert net.connects == 2


async def test_calls_after_channel_close_fail(svc: ClientTestService) -> None:
    async with memory_channel(svc) as (channel, _):
        await channel.unary_unary(ECHO, b"")
        await channel.aclose()
        with pytest.raises(RpcError) as info:
            await channel.unary_unary(ECHO, b"")
        assert info.value.code is StatusCode.UNAVAILABLE


async def test_errors_in_channel_body_are_not_wrapped(svc: ClientTestService) -> None:
    server = Server(svc.handlers())
    async with trio.open_nursery() as nursery:
        net = MemoryNet(server, nursery)

        async def body() -> None:
            async with open_channel("b:1", connector=net.connect) as channel:
                await channel.unary_unary(ECHO, b"")
                raise KeyError("mine")

        with pytest.raises(KeyError, match="mine"):
            await body()
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------- real sockets


async def test_loopback_tcp(svc: ClientTestService) -> None:
    server = Server(svc.handlers())
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
        async with open_channel(f"127.0.0.1:{port}", connect_timeout=5) as channel:
            assert (await channel.unary_unary(ECHO, b"tcp", timeout=5)).response == b"tcp"
        assert svc.seen[0].authority == f"127.0.0.1:{port}"
        await server.shutdown(1)


async def test_nothing_listening_is_connect_error() -> None:
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # the port is free and nothing listens on it
    async with open_channel(f"127.0.0.1:{port}", connect_timeout=5) as channel:
        with pytest.raises(ConnectError) as info:
            await channel.connect()
    assert not info.value.timed_out


async def test_unix_socket(svc: ClientTestService, tmp_path: Path) -> None:
    path = str(tmp_path / "grpc.sock")
    server = Server(svc.handlers())
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_unix, path)
        async with open_channel(f"unix:{path}", connect_timeout=5) as channel:
            assert (await channel.unary_unary(ECHO, b"unix", timeout=5)).response == b"unix"
        assert svc.seen[0].authority == "localhost"
        await server.shutdown(1)


async def test_tls_with_alpn_h2(svc: ClientTestService) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    server_ctx.set_alpn_protocols(["h2"])
    server = Server(svc.handlers())
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_ssl_over_tcp_listeners(0, server_ctx, host="127.0.0.1")
        port = listeners[0].transport_listener.socket.getsockname()[1]  # type: ignore[attr-defined]
        await nursery.start(server.serve_listeners, listeners)
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        async with open_channel(f"127.0.0.1:{port}", ssl_context=client_ctx,
                                connect_timeout=5) as channel:
            assert (await channel.unary_unary(ECHO, b"tls", timeout=5)).response == b"tls"
        # A client that does not trust the CA fails to connect.
        async with open_channel(f"127.0.0.1:{port}", ssl_context=ssl.create_default_context(),
                                connect_timeout=5) as channel:
            with pytest.raises(ConnectError) as info:
                await channel.connect()
            assert "TLS" in info.value.message
        # Not server.shutdown(): the server keeps a connection whose TLS handshake failed
        # until its preface timeout, which is the server's business, not the client's.
        nursery.cancel_scope.cancel()


def test_public_names_are_exported() -> None:
    for name in ("Channel", "ConnectError", "ResponseStream", "UnaryResponse", "open_channel",
                 "ClientConnection", "ClientConfig", "parse_target"):
        assert hasattr(wire, name)
    assert isinstance(Metadata(), Metadata)
    assert math.isfinite(wire.client.DEFAULT_CONNECT_TIMEOUT)
