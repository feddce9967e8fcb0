"""Raw HTTP/2 tests of the Trio ``Server``: every error case, limits, deadlines, shutdown.

Most run over an in-memory stream pair (fast and deterministic, and compatible with the
autojump clock); a few use loopback TCP and a Unix socket.
"""

from __future__ import annotations

import base64
import gzip
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import h2.errors
import pytest
import trio
import trio.testing
from hyperframe.frame import Frame, GoAwayFrame, PingFrame, SettingsFrame, WindowUpdateFrame

from wire import RpcError, Server, ServerCall, ServerConfig, StatusCode, unary_stream, unary_unary
from wire.metadata import percent_decode

from .h2client import (
    H2Client,
    StreamRecord,
    grpc_frame,
    grpc_request_headers,
    open_h2_client,
    open_memory_client,
)
from .rawconn import GoAway, RawConn, open_raw, request_frames
from .service import (
    BLOCK,
    BOOM,
    BOOM_SECRET,
    ECHO,
    FAIL,
    FAIL_CODE,
    FAIL_DETAILS,
    META,
    SLEEP,
    STREAM,
    STREAM_FOREVER,
    WireService,
    stream_message,
    stream_request,
)

NO_ERROR = int(h2.errors.ErrorCodes.NO_ERROR)
CANCEL = int(h2.errors.ErrorCodes.CANCEL)
REFUSED_STREAM = int(h2.errors.ErrorCodes.REFUSED_STREAM)
ENHANCE_YOUR_CALM = int(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)

#: Safety bound on waits that should be immediate (a failure, never a speed assertion).
BOUND = 10


async def unary(client: H2Client, path: str, payload: bytes = b"ping",
                headers: list[tuple[bytes, bytes]] | None = None) -> StreamRecord:
    sid = await client.request(path, grpc_frame(payload), headers=headers or [])
    with trio.fail_after(BOUND):
        return await client.wait(sid)


async def held_call(client: H2Client, service: WireService, payload: bytes) -> int:
    """Start a Block call; its stream id once the handler holds it (until ``release``)."""
    sid = await client.request(BLOCK, grpc_frame(payload))
    with trio.fail_after(BOUND):
        await service.all_in.wait()
    return sid


def assert_ok(rec: StreamRecord, payloads: list[bytes]) -> None:
    assert rec.reset_code is None, rec
    assert rec.ended
    assert len(rec.blocks) == 2, rec.blocks
    assert rec.headers.get(":status") == "200"
    assert rec.headers.get("content-type") == "application/grpc"
    assert not rec.headers.end_stream
    assert rec.grpc_status == StatusCode.OK
    assert rec.payloads() == payloads


def assert_trailers_only(rec: StreamRecord, code: StatusCode, http: str = "200") -> None:
    assert rec.trailers_only, rec
    block = rec.blocks[0]
    assert block.get(":status") == http
    assert block.get("content-type") == "application/grpc"
    assert rec.grpc_status == code, rec.grpc_message


# ---------------------------------------------------------------------------------- basics


async def test_echo_ok_exact_response_shape(server: Server, service: WireService) -> None:
    async with open_memory_client(server.serve_stream) as client:
        rec = await unary(client, ECHO, b"hello", headers=[(b"x-custom", b"v")])
    assert_ok(rec, [b"hello"])
    assert rec.headers.names() == [":status", "content-type", "grpc-accept-encoding"]
    assert rec.headers.get("grpc-accept-encoding") == "identity,gzip"
    # grpc-status always, even for OK; no grpc-message for OK.
    assert rec.blocks[1].headers == [(b"grpc-status", b"0")]
    assert service.requests == [b"hello"]
    assert service.metadata[0].get("x-custom") == "v"
    assert rec.reset_code is None


@pytest.mark.parametrize("authority", [b":5000", b"localhost:5000", b"[::1]:50051"])
async def test_probe_style_request(server: Server, service: WireService,
                                   authority: bytes) -> None:
    # grpc_health_probe sends an :authority such as ":5000"; kube-probe its own user-agent.
    base = grpc_request_headers(ECHO, authority=authority)
    async with open_memory_client(server.serve_stream) as client:
        sid = await client.request(ECHO, grpc_frame(b"probe"), base=base,
                                   headers=[(b"user-agent", b"kube-probe/1.30"),
                                            (b"grpc-timeout", b"999m")])
        rec = await client.wait(sid)
    assert_ok(rec, [b"probe"])
    assert service.metadata[0].get("user-agent") == "kube-probe/1.30"


async def test_request_split_across_data_frames(server: Server) -> None:
    body = grpc_frame(b"split" * 100)
    async with open_memory_client(server.serve_stream) as client:
        sid = await client.request(ECHO, None, end_stream=False)
        for cut in (body[:1], body[1:4], body[4:7], body[7:200], body[200:]):
            await client.send_data(sid, cut)
        await client.end_stream(sid)
        rec = await client.wait(sid)
    assert_ok(rec, [b"split" * 100])


async def test_one_byte_at_a_time_pump(server: Server) -> None:
    # Every receive on either side returns a single byte: exposes partial-frame bugs.
    def one_byte_pair() -> tuple[trio.testing.MemorySendStream,
                                 trio.testing.MemoryReceiveStream]:
        send = trio.testing.MemorySendStream()
        recv = trio.testing.MemoryReceiveStream()

        async def pump() -> None:
            trio.testing.memory_stream_pump(send, recv, max_bytes=1)

        send.send_all_hook = pump
        send.close_hook = lambda: trio.testing.memory_stream_pump(send, recv)
        recv.receive_some_hook = pump
        return send, recv

    s1, r1 = one_byte_pair()
    s2, r2 = one_byte_pair()
    client_end = trio.StapledStream(s1, r2)
    server_end = trio.StapledStream(s2, r1)
    async with open_memory_client(server.serve_stream, server_end=server_end,
                                  client_end=client_end) as client:
        rec = await unary(client, ECHO, b"tiny")
        rec2 = await unary(client, STREAM, stream_request(3, 10))
    assert_ok(rec, [b"tiny"])
    assert_ok(rec2, [stream_message(i, 10) for i in range(3)])


async def test_lockstep_stream(server: Server) -> None:
    # No hidden buffering: every send_all waits for the peer to receive.
    client_end, server_end = trio.testing.lockstep_stream_pair()
    async with open_memory_client(server.serve_stream, server_end=server_end,
                                  client_end=client_end) as client:
        rec = await unary(client, STREAM, stream_request(5, 20_000))
    assert_ok(rec, [stream_message(i, 20_000) for i in range(5)])


async def test_serve_tcp_loopback(server: Server) -> None:
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
        assert host == "127.0.0.1"
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with open_h2_client(stream) as client:
            rec = await unary(client, ECHO, b"over tcp")
            big = await unary(client, STREAM, stream_request(2, 1 << 20))
        assert_ok(rec, [b"over tcp"])
        assert_ok(big, [stream_message(i, 1 << 20) for i in range(2)])
        with trio.fail_after(BOUND):
            await server.shutdown(grace=1)


async def test_serve_unix(server: Server, tmp_path: Path) -> None:
    path = str(tmp_path / "wire.sock")
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(server.serve_unix, path)
        assert bound == path
        stream = await trio.open_unix_socket(path)
        async with open_h2_client(stream) as client:
            rec = await unary(client, ECHO, b"over unix")
        assert_ok(rec, [b"over unix"])
        with trio.fail_after(BOUND):
            await server.shutdown(grace=1)
    assert not await trio.Path(path).exists()


async def test_serve_unix_replaces_stale_socket(server: Server, tmp_path: Path) -> None:
    path = str(tmp_path / "stale.sock")
    stale = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await stale.bind(path)
    stale.close()  # the file stays behind, as after a crash
    assert await trio.Path(path).is_socket()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_unix, path)
        stream = await trio.open_unix_socket(path)
        async with open_h2_client(stream) as client:
            rec = await unary(client, ECHO, b"fresh")
        with trio.fail_after(BOUND):
            await server.shutdown(grace=1)
    assert_ok(rec, [b"fresh"])


# ---------------------------------------------------------------------------------- HTTP errors


async def test_get_is_405(server: Server) -> None:
    headers = [(b":method", b"GET"), *grpc_request_headers(ECHO)[1:]]
    async with open_memory_client(server.serve_stream) as client:
        sid = await client.request(ECHO, None, base=headers)
        rec = await client.wait(sid)
    assert_trailers_only(rec, StatusCode.INTERNAL, http="405")


def _headers_with_content_type(content_type: bytes | None) -> list[tuple[bytes, bytes]]:
    """Echo's request headers with content-type replaced by ``content_type`` (None: left out)."""
    return [(k, content_type if k == b"content-type" else v)
            for k, v in grpc_request_headers(ECHO)
            if k != b"content-type" or content_type is not None]


async def _echo_with_headers(server: Server, headers: list[tuple[bytes, bytes]]) -> StreamRecord:
    async with open_memory_client(server.serve_stream) as client:
        sid = await client.request(ECHO, grpc_frame(b"x"), base=headers)
        return await client.wait(sid)


# None: no content-type at all.
@pytest.mark.parametrize("content_type",
                         [b"text/plain", b"application/grpcx", b"application/json", None])
async def test_bad_or_missing_content_type_is_415(server: Server,
                                                  content_type: bytes | None) -> None:
    rec = await _echo_with_headers(server, _headers_with_content_type(content_type))
    assert_trailers_only(rec, StatusCode.INTERNAL, http="415")


@pytest.mark.parametrize(
    "content_type", [b"application/grpc+proto", b"application/grpc;charset=utf-8"]
)
async def test_grpc_content_type_variants_accepted(server: Server, content_type: bytes) -> None:
    rec = await _echo_with_headers(server, _headers_with_content_type(content_type))
    assert_ok(rec, [b"x"])


@pytest.mark.parametrize(("name", "value"), [
    *((b"grpc-timeout", v) for v in (b"1x", b"123456789S", b"S", b"", b"1.5S", b"-1S")),
    *((b"x-data-bin", v) for v in (b"!!!!", b"A", b"AA-_")),
])
async def test_malformed_grpc_timeout_or_bin_metadata_is_400(
        server: Server, service: WireService, name: bytes, value: bytes) -> None:
    async with open_memory_client(server.serve_stream) as client:
        rec = await unary(client, ECHO, headers=[(name, value)])
    assert_trailers_only(rec, StatusCode.INTERNAL, http="400")
    assert service.requests == []


async def test_missing_te_is_400(server: Server) -> None:
    headers = [h for h in grpc_request_headers(ECHO) if h[0] != b"te"]
    rec = await _echo_with_headers(server, headers)
    assert_trailers_only(rec, StatusCode.INTERNAL, http="400")


async def test_te_other_than_trailers_is_malformed(server: Server, http2: str) -> None:
    # RFC 9113 section 8.2.2: "te" with any value but "trailers" makes the request malformed,
    # and section 8.1.1: "Malformed requests or responses that are detected MUST be treated as
    # a stream error (Section 5.4.2) of type PROTOCOL_ERROR". The native engine resets the
    # stream and the connection lives on; h2 ends the connection (the README's engine table).
    headers = [(k, b"gzip" if k == b"te" else v) for k, v in grpc_request_headers(ECHO)]
    async with open_memory_client(server.serve_stream) as client:
        sid = await client.request(ECHO, grpc_frame(b"x"), base=headers)
        rec = await client.wait(sid)
        ok = await unary(client, ECHO) if http2 == "native" else None
    assert rec.blocks == []
    if http2 == "native":
        assert rec.reset_code == int(h2.errors.ErrorCodes.PROTOCOL_ERROR)
        assert not client.goaways or all(g.error_code == NO_ERROR for g in client.goaways)
        assert ok is not None
        assert_ok(ok, [b"ping"])
    else:
        assert rec.reset_code is None
        assert rec.connection_lost
        assert [g.error_code for g in client.goaways] == [int(h2.errors.ErrorCodes.PROTOCOL_ERROR)]


# ---------------------------------------------------------------------------------- gRPC errors


async def test_unknown_method_trailers_only_exact_shape(server: Server) -> None:
    async with open_memory_client(server.serve_stream) as client:
        rec = await unary(client, "/test.Wire/Nope")
        # The connection is still fine afterwards.
        ok = await unary(client, ECHO)
    # Exactly one HEADERS frame, with END_STREAM, and nothing else on the stream.
    assert rec.trailers_only
    assert rec.ended
    assert rec.reset_code is None
    assert rec.blocks[0].headers == [
        (b":status", b"200"),
        (b"content-type", b"application/grpc"),
        (b"grpc-status", b"12"),
        (b"grpc-message", b"unknown method Nope for service test.Wire"),
    ]
    assert_ok(ok, [b"ping"])


@pytest.mark.parametrize("path", ["/nope.Svc/Check", "/test.wire/Echo", "/test.Wire/echo"])
async def test_unknown_service_or_case_mismatch_is_unimplemented(server: Server,
                                                                  path: str) -> None:
    async with open_memory_client(server.serve_stream) as client:
        rec = await unary(client, path)
    assert_trailers_only(rec, StatusCode.UNIMPLEMENTED)
    if path == "/nope.Svc/Check":
        assert rec.grpc_message == "unknown service nope.Svc"


async def test_message_over_limit_is_resource_exhausted_connection_still_usable(
    server: Server, service: WireService
) -> None:
    payload = b"x" * (5 << 20)
    async with open_memory_client(server.serve_stream) as client:
        sid = await client.request(ECHO, grpc_frame(payload))
        rec = await client.wait(sid)
        follow = await unary(client, ECHO, b"after")
    assert_trailers_only(rec, StatusCode.RESOURCE_EXHAUSTED)
    assert rec.grpc_message == (
        f"received message larger than max ({5 << 20} vs. {4 << 20})"
    )
    # The server stopped the upload it will not read.
    assert rec.reset_code == NO_ERROR
    assert_ok(follow, [b"after"])
    assert service.requests == [b"after"]


async def test_message_at_limit_accepted(service: WireService, http2: str) -> None:
    server = Server(service.handlers(),
                    config=ServerConfig(http2=http2, max_receive_message_size=1000))
    async with open_memory_client(server.serve_stream) as client:
        ok = await unary(client, ECHO, b"y" * 1000)
        big = await unary(client, ECHO, b"y" * 1001)
    assert_ok(ok, [b"y" * 1000])
    assert_trailers_only(big, StatusCode.RESOURCE_EXHAUSTED)


@pytest.mark.parametrize("accept", [None, b"gzip", b"identity"])
async def test_gzip_request_accepted(server: Server, service: WireService,
                                     accept: bytes | None) -> None:
    payload = b"compress me " * 500
    headers = [(b"grpc-encoding", b"gzip")]
    if accept is not None:
        headers.append((b"grpc-accept-encoding", accept))
    async with open_memory_client(server.serve_stream) as client:
        sid = await client.request(ECHO, grpc_frame(gzip.compress(payload), compressed=True),
                                   headers=headers)
        rec = await client.wait(sid)
    assert service.requests == [payload]
    assert rec.grpc_status == StatusCode.OK
    if accept == b"gzip":
        # Answered in the request's encoding because the client accepts it.
        assert rec.headers.get("grpc-encoding") == "gzip"
        [(compressed, body)] = rec.messages()
        assert compressed
        assert gzip.decompress(body) == payload
    else:
        # Never compress with an encoding the peer did not offer.
        assert rec.headers.get("grpc-encoding") is None
        assert rec.payloads() == [payload]


async def test_gzip_bomb_request_is_resource_exhausted(service: WireService, http2: str) -> None:
    server = Server(service.handlers(),
                    config=ServerConfig(http2=http2, max_receive_message_size=1 << 16))
    bomb = gzip.compress(bytes(16 << 20))
    async with open_memory_client(server.serve_stream) as client:
        sid = await client.request(ECHO, grpc_frame(bomb, compressed=True),
                                   headers=[(b"grpc-encoding", b"gzip")])
        rec = await client.wait(sid)
    assert_trailers_only(rec, StatusCode.RESOURCE_EXHAUSTED)
    assert service.requests == []


async def test_unsupported_encoding_is_unimplemented_with_accept_encoding(
    server: Server, service: WireService
) -> None:
    async with open_memory_client(server.serve_stream) as client:
        sid = await client.request(ECHO, grpc_frame(b"zzz", compressed=True),
                                   headers=[(b"grpc-encoding", b"br")])
        rec = await client.wait(sid)
    assert_trailers_only(rec, StatusCode.UNIMPLEMENTED)
    accept = rec.blocks[0].get("grpc-accept-encoding")
    assert accept is not None
    assert {e.strip() for e in accept.split(",")} == {"identity", "gzip"}
    assert service.requests == []


async def test_truncated_message_is_internal(server: Server, service: WireService) -> None:
    async with open_memory_client(server.serve_stream) as client:
        sid = await client.request(ECHO, struct.pack(">BI", 0, 10) + b"abc")
        rec = await client.wait(sid)
    assert_trailers_only(rec, StatusCode.INTERNAL)
    assert rec.grpc_message == "stream ended inside a message (received 3 of 10 bytes)"
    assert service.requests == []


async def test_compressed_flag_without_encoding_is_internal(server: Server,
                                                            service: WireService) -> None:
    async with open_memory_client(server.serve_stream) as client:
        sid = await client.request(ECHO, grpc_frame(gzip.compress(b"hi"), compressed=True))
        rec = await client.wait(sid)
    assert_trailers_only(rec, StatusCode.INTERNAL)
    assert service.requests == []


@pytest.mark.parametrize("count", [0, 2])
async def test_zero_or_two_request_messages_is_unimplemented(
    server: Server, service: WireService, count: int
) -> None:
    async with open_memory_client(server.serve_stream) as client:
        sid = await client.request(ECHO, grpc_frame(b"m") * count)
        rec = await client.wait(sid)
    assert_trailers_only(rec, StatusCode.UNIMPLEMENTED)
    assert service.requests == []


async def test_zero_messages_end_stream_on_headers(server: Server) -> None:
    async with open_memory_client(server.serve_stream) as client:
        sid = await client.request(ECHO, None, end_stream=True)
        rec = await client.wait(sid)
    assert_trailers_only(rec, StatusCode.UNIMPLEMENTED)


async def test_unparsable_request_is_internal(http2: str) -> None:
    called = False

    def parse(data: bytes) -> int:
        return int(data.decode("ascii"))

    async def handler(request: int, call: ServerCall) -> bytes:
        nonlocal called
        called = True
        return b"%d" % (request + 1)

    server = Server([unary_unary("/test.Parse/Inc", handler, parse, bytes)],
                    config=ServerConfig(http2=http2))
    async with open_memory_client(server.serve_stream) as client:
        ok = await unary(client, "/test.Parse/Inc", b"41")
        assert called
        called = False
        bad = await unary(client, "/test.Parse/Inc", b"forty-one")
    assert_ok(ok, [b"42"])
    assert_trailers_only(bad, StatusCode.INTERNAL)
    assert not called


async def test_handler_exception_is_unknown_without_leaking(server: Server) -> None:
    async with open_memory_client(server.serve_stream) as client:
        rec = await unary(client, BOOM)
    assert_trailers_only(rec, StatusCode.UNKNOWN)
    message = rec.grpc_message or ""
    assert BOOM_SECRET not in percent_decode(message)
    assert "ValueError" not in percent_decode(message)
    assert "Traceback" not in percent_decode(message)


async def test_handler_rpc_error_passes_status_metadata_and_details(server: Server) -> None:
    text = "précondition 100% ✓ failed"
    async with open_memory_client(server.serve_stream) as client:
        rec = await unary(client, FAIL, text.encode("utf-8"))
    assert_trailers_only(rec, FAIL_CODE)
    block = rec.blocks[0]
    assert block.get("grpc-message") == "pr%C3%A9condition 100%25 %E2%9C%93 failed"
    assert percent_decode(block.get("grpc-message") or "") == text
    assert block.get("x-why") == "because"
    assert block.get("x-why-bin") == "AP8Q"  # base64 of 00 ff 10, unpadded
    details = block.get("grpc-status-details-bin")
    assert details is not None
    assert "=" not in details
    assert details.encode() + b"=" * (-len(details) % 4) == base64.b64encode(FAIL_DETAILS)


async def test_initial_and_trailing_metadata(server: Server) -> None:
    async with open_memory_client(server.serve_stream) as client:
        rec = await unary(client, META, b"m")
    assert_ok(rec, [b"m"])
    assert rec.headers.get("x-initial") == "hello"
    assert rec.headers.get("x-initial-bin") == "AAH+/w"
    trailers = rec.blocks[1]
    assert trailers.get("x-trailing") == "bye"
    assert trailers.get("x-trailing-bin") == "/wA"
    assert trailers.names()[0] == "grpc-status"


async def test_rst_no_error_after_trailers_when_client_not_half_closed(
    server: Server
) -> None:
    async with open_memory_client(server.serve_stream) as client:
        # Headers only, no END_STREAM: the server answers at once (unknown method).
        sid = await client.request("/test.Wire/Nope", None, end_stream=False)
        rec = await client.wait(sid)
        assert_trailers_only(rec, StatusCode.UNIMPLEMENTED)
        # The reset follows the trailers; wait for it (it is in the same write).
        with trio.fail_after(BOUND):
            while rec.reset_code is None:
                await rec.changed.wait()
        assert rec.reset_code == NO_ERROR


async def test_no_rst_when_client_half_closed(server: Server) -> None:
    async with open_memory_client(server.serve_stream) as client:
        rec = await unary(client, "/test.Wire/Nope")
        ok = await unary(client, ECHO)  # anything the server sent for the first is in by now
    assert rec.reset_code is None
    assert_ok(ok, [b"ping"])


# ---------------------------------------------------------------------------------- limits


async def test_101st_concurrent_stream_refused(service: WireService, http2: str) -> None:
    service.block_target = 100
    server = Server(service.handlers(), config=ServerConfig(http2=http2))
    async with open_memory_client(server.serve_stream,
                                  ignore_max_concurrent_streams=True) as client:
        sids = [await client.request(BLOCK, grpc_frame(b"%d" % i)) for i in range(100)]
        with trio.fail_after(BOUND):
            await service.all_in.wait()
        extra = await client.request(BLOCK, grpc_frame(b"extra"))
        rec = await client.wait(extra)
        assert rec.reset_code == REFUSED_STREAM
        assert rec.blocks == []
        service.release.set()
        with trio.fail_after(BOUND):
            records = [await client.wait(sid) for sid in sids]
        # The connection is still good for new calls once the others are done.
        after = await unary(client, ECHO, b"after")
    for i, r in enumerate(records):
        assert_ok(r, [b"%d" % i])
    assert service.blocked == 100
    assert b"extra" not in service.requests
    assert_ok(after, [b"after"])


async def test_header_list_over_limit_is_resource_exhausted(server: Server,
                                                            service: WireService) -> None:
    base = grpc_request_headers(ECHO)
    base_size = sum(len(k) + len(v) + 32 for k, v in base)
    name = b"x-pad"
    pad = 16 * 1024 - base_size - len(name) - 32  # the list is then exactly 16 KiB
    async with open_memory_client(server.serve_stream) as client:
        fits = await unary(client, ECHO, b"fits", headers=[(name, b"a" * pad)])
        over = await unary(client, ECHO, b"over", headers=[(name, b"a" * (pad + 1))])
        big = await unary(client, ECHO, b"big", headers=[(name, b"a" * 40_000)])
        after = await unary(client, ECHO, b"after")
    assert_ok(fits, [b"fits"])
    assert_trailers_only(over, StatusCode.RESOURCE_EXHAUSTED)
    assert_trailers_only(big, StatusCode.RESOURCE_EXHAUSTED)
    assert_ok(after, [b"after"])
    assert service.requests == [b"fits", b"after"]


async def test_header_list_over_hard_limit_ends_connection(server: Server) -> None:
    async with open_memory_client(server.serve_stream) as client:
        sid = await client.request(ECHO, grpc_frame(b"x"),
                                   headers=[(b"x-pad", b"a" * 100_000)])
        with trio.fail_after(BOUND):
            await client.eof.wait()
        rec = client.streams[sid]
    assert [g.error_code for g in client.goaways] == [ENHANCE_YOUR_CALM]
    assert rec.blocks == []


# ---------------------------------------------------------------------------------- deadlines


async def test_deadline_exceeded(server: Server, service: WireService,
                                 autojump_clock: trio.testing.MockClock) -> None:
    async with open_memory_client(server.serve_stream) as client:
        start = trio.current_time()
        rec = await unary(client, SLEEP, headers=[(b"grpc-timeout", b"100m")])
        elapsed = trio.current_time() - start
        ok = await unary(client, ECHO)
    assert service.cancelled.is_set()
    assert_trailers_only(rec, StatusCode.DEADLINE_EXCEEDED)
    # The client had half-closed, so the trailers closed the stream: no RST_STREAM may follow.
    assert rec.reset_code is None
    assert 0.1 <= elapsed < 0.2  # virtual time: the deadline is honoured, not early
    assert_ok(ok, [b"ping"])


async def test_deadline_exceeded_mid_stream(server: Server, service: WireService,
                                            autojump_clock: trio.testing.MockClock) -> None:
    # The client never reads: the handler blocks on flow control, the deadline cancels it.
    async with open_memory_client(server.serve_stream, auto_ack=False) as client:
        sid = await client.request(STREAM_FOREVER, grpc_frame(b""),
                                   headers=[(b"grpc-timeout", b"1S")])
        with trio.fail_after(BOUND):
            rec = await client.wait(sid)
    assert service.cancelled.is_set()
    # Trailers are stuck behind data the client will not accept: RST_STREAM CANCEL instead.
    assert rec.reset_code == CANCEL
    assert not rec.ended


async def test_deadline_while_request_incomplete(server: Server, service: WireService,
                                                 autojump_clock: trio.testing.MockClock) -> None:
    # Headers with a deadline, then nothing: the call must still end at the deadline.
    async with open_memory_client(server.serve_stream) as client:
        sid = await client.request(ECHO, None, end_stream=False,
                                   headers=[(b"grpc-timeout", b"100m")])
        with trio.fail_after(BOUND):
            rec = await client.wait(sid)
            while rec.reset_code is None:
                await rec.changed.wait()
    assert_trailers_only(rec, StatusCode.DEADLINE_EXCEEDED)
    assert rec.grpc_message == "deadline exceeded"
    # Whole trailers went out before the client ended its side: RST_STREAM CANCEL follows, as
    # the spec asks on a deadline.
    assert rec.reset_code == CANCEL
    assert service.requests == []


async def reset_cancels_handler(client: H2Client, service: WireService,
                                sid: int) -> StreamRecord:
    """Reset ``sid``: its handler is cancelled; the Echo call made afterwards is returned."""
    await client.reset(sid, CANCEL)
    with trio.fail_after(BOUND):
        await service.cancelled.wait()
    return await unary(client, ECHO)


async def test_client_reset_cancels_handler(server: Server, service: WireService) -> None:
    async with open_memory_client(server.serve_stream) as client:
        sid = await client.request(SLEEP, grpc_frame(b"zzz"))
        with trio.fail_after(BOUND):
            await service.started.wait()
        # Nothing went out on the reset stream before the call that follows the reset.
        ok = await reset_cancels_handler(client, service, sid)
        rec = client.streams[sid]
    assert rec.blocks == []
    assert not rec.data
    assert_ok(ok, [b"ping"])


async def test_client_reset_mid_stream_cancels_handler(server: Server,
                                                       service: WireService) -> None:
    async with open_memory_client(server.serve_stream) as client:
        sid = await client.request(STREAM_FOREVER, grpc_frame(b""))
        with trio.fail_after(BOUND):
            await client.wait_for(sid, 10_000)
        ok = await reset_cancels_handler(client, service, sid)
    assert 10 <= service.sent < 1000
    assert_ok(ok, [b"ping"])


# ---------------------------------------------------------------------------------- shutdown


async def test_client_goaway_lets_calls_in_flight_finish(server: Server,
                                                        service: WireService) -> None:
    # The client's GOAWAY (last stream id 0: it processed no server-initiated stream) must not
    # cancel the calls it started; the server answers them, then closes.
    async with open_memory_client(server.serve_stream) as client:
        sid = await held_call(client, service, b"in flight")
        goaway = GoAwayFrame(0)
        goaway.last_stream_id = 0
        goaway.error_code = NO_ERROR
        # Written by hand (h2 would stop processing after its own GOAWAY), never interleaved
        # with the client's own frames.
        await client.send_raw(goaway.serialize())
        await trio.testing.wait_all_tasks_blocked()
        service.release.set()
        with trio.fail_after(BOUND):
            rec = await client.wait(sid)
            await client.eof.wait()
    assert_ok(rec, [b"in flight"])


async def test_graceful_shutdown(server: Server, service: WireService) -> None:
    shut = trio.Event()

    async def shutdown() -> None:
        await server.shutdown(grace=BOUND)
        shut.set()

    async with open_memory_client(server.serve_stream) as client:
        sid = await held_call(client, service, b"in flight")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(shutdown)
            with trio.fail_after(BOUND):
                await client.goaway_received.wait()
                # RFC 9113 section 6.8: GOAWAY(2^31-1) first; the last stream is named once
                # the client has answered the PING that follows it (h2 answers by itself).
                while len(client.goaways) < 2:
                    await client.another_goaway.wait()
            assert client.goaways[0].error_code == NO_ERROR
            assert client.goaways[0].last_stream_id == 2**31 - 1
            assert client.goaways[1].last_stream_id == sid
            # A stream opened after the final GOAWAY is refused (safe to retry elsewhere).
            late = await client.request(ECHO, grpc_frame(b"late"))
            rec_late = await client.wait(late)
            assert rec_late.reset_code == REFUSED_STREAM
            assert not client.eof.is_set()
            assert not shut.is_set()
            service.release.set()
            with trio.fail_after(BOUND):
                rec = await client.wait(sid)
                await client.eof.wait()
                await shut.wait()
    assert_ok(rec, [b"in flight"])
    assert b"late" not in service.requests
    assert all(g.error_code == NO_ERROR for g in client.goaways)


async def test_graceful_drain_names_the_last_stream_after_the_ping_ack(
        server: Server, service: WireService) -> None:
    # RFC 9113 section 6.8, as grpc-go does it: GOAWAY(2^31-1) and a PING; a request the
    # client sent before it saw that GOAWAY is served; after the PING's ACK a second GOAWAY
    # names the last stream, and only streams above it are refused.
    async with open_raw(server) as raw:
        held = raw.new_sid()
        await raw.send(request_frames(held, BLOCK, b"held"))
        with trio.fail_after(BOUND):
            await service.all_in.wait()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.shutdown, BOUND)
            await raw.wait_until(lambda: bool(raw.goaways) and bool(pings(raw)))
            assert raw.goaways == [GoAway(NO_ERROR, 2**31 - 1, b"")]
            [ping] = pings(raw)
            in_flight = raw.new_sid()
            await raw.send(request_frames(in_flight, ECHO, b"in flight"))
            assert_ok(await raw.wait_closed(in_flight), [b"in flight"])
            assert len(raw.goaways) == 1  # no final GOAWAY before the ACK
            await raw.send(PingFrame(0, flags=["ACK"], opaque_data=ping.opaque_data).serialize())
            await raw.wait_until(lambda: len(raw.goaways) == 2)
            assert raw.goaways[1] == GoAway(NO_ERROR, in_flight, b"")
            late = raw.new_sid()
            await raw.send(request_frames(late, ECHO, b"late"))
            assert (await raw.wait_closed(late)).reset_code == REFUSED_STREAM
            service.release.set()
            held_rec = await raw.wait_closed(held)
            await raw.wait_eof()
    assert_ok(held_rec, [b"held"])
    assert b"late" not in service.requests
    assert all(g.last_stream_id <= in_flight for g in raw.goaways[1:])


def pings(raw: RawConn) -> list[PingFrame]:
    """The PINGs (not ACKs) the server sent."""
    return [f for f in raw.frames if isinstance(f, PingFrame) and "ACK" not in f.flags]


async def test_shutdown_grace_expires_unavailable(server: Server, service: WireService,
                                                  autojump_clock: trio.testing.MockClock) -> None:
    async with open_memory_client(server.serve_stream) as client:
        sid = await client.request(SLEEP, grpc_frame(b"forever"))
        with trio.fail_after(BOUND):
            await service.started.wait()
        await server.shutdown(grace=2)
        rec = await client.wait(sid)
        with trio.fail_after(BOUND):
            await client.eof.wait()
    assert service.cancelled.is_set()
    assert_trailers_only(rec, StatusCode.UNAVAILABLE)
    assert rec.grpc_message == "server is shutting down"


async def test_shutdown_idle_connection(server: Server) -> None:
    async with open_memory_client(server.serve_stream) as client:
        ok = await unary(client, ECHO)
        with trio.fail_after(BOUND):
            await server.shutdown(grace=BOUND)
            await client.eof.wait()
    assert_ok(ok, [b"ping"])
    assert client.goaways
    assert client.goaways[-1].error_code == NO_ERROR


# ---------------------------------------------------------------------------------- flow control


async def test_response_waits_for_window_update(server: Server) -> None:
    count, size = 4, 50_000  # 200 KB of messages against the default 65535-byte windows
    async with open_memory_client(server.serve_stream, auto_ack=False) as client:
        sid = await client.request(STREAM, grpc_frame(stream_request(count, size)))
        rec = await client.wait_for(sid, 65535)
        await trio.testing.wait_all_tasks_blocked()
        # Exactly the window arrived, and the server is waiting, not finished.
        assert len(rec.data) == 65535
        assert not rec.closed.is_set()
        await client.ack_all()
        with trio.fail_after(BOUND):
            rec = await client.wait(sid)
    assert_ok(rec, [stream_message(i, size) for i in range(count)])


async def test_small_window_large_message(server: Server) -> None:
    # A 1000-byte window: a 300 KB message crawls through, one window at a time.
    async with open_memory_client(server.serve_stream, initial_window_size=1000) as client:
        rec = await unary(client, STREAM, stream_request(1, 300_000))
    assert_ok(rec, [stream_message(0, 300_000)])


async def test_concurrent_streams_share_connection_window(server: Server) -> None:
    async with open_memory_client(server.serve_stream, auto_ack=False) as client:
        sids = [await client.request(STREAM, grpc_frame(stream_request(3, 40_000)))
                for _ in range(3)]
        await trio.testing.wait_all_tasks_blocked()
        total = sum(len(client.streams[s].data) for s in sids)
        assert total == 65535  # the connection window bounds the sum
        await client.ack_all()
        with trio.fail_after(BOUND):
            records = [await client.wait(s) for s in sids]
    for r in records:
        assert_ok(r, [stream_message(i, 40_000) for i in range(3)])


# ---------------------------------------------------------------------------------- more handlers


async def test_streaming_error_after_messages_uses_trailers(http2: str) -> None:
    async def handler(request: bytes, call: ServerCall,
                      send: Callable[[bytes], Awaitable[None]]) -> None:
        call.set_initial_metadata([("x-first", "1")])
        await send(b"one")
        await send(b"two")
        raise RpcError(StatusCode.NOT_FOUND, "gone", [("x-last", "2")])

    server = Server([unary_stream("/test.S/Fail", handler, bytes, bytes)],
                    config=ServerConfig(http2=http2))
    async with open_memory_client(server.serve_stream) as client:
        rec = await unary(client, "/test.S/Fail")
    assert len(rec.blocks) == 2
    assert rec.ended
    assert rec.headers.get("x-first") == "1"
    assert rec.payloads() == [b"one", b"two"]
    assert rec.blocks[1].headers == [
        (b"grpc-status", b"5"), (b"grpc-message", b"gone"), (b"x-last", b"2")
    ]


@pytest.mark.parametrize(
    ("accept", "compressed"), [(b"gzip", True), (b"identity", False), (None, False)]
)
async def test_set_compression_only_when_offered(accept: bytes | None, compressed: bool,
                                                 http2: str) -> None:
    async def handler(request: bytes, call: ServerCall) -> bytes:
        call.set_compression("gzip")
        return request * 100

    server = Server([unary_unary("/test.C/Zip", handler, bytes, bytes)],
                    config=ServerConfig(http2=http2))
    headers = [] if accept is None else [(b"grpc-accept-encoding", accept)]
    async with open_memory_client(server.serve_stream) as client:
        rec = await unary(client, "/test.C/Zip", b"abc", headers=headers)
    assert rec.grpc_status == StatusCode.OK
    [(flag, body)] = rec.messages()
    assert flag is compressed
    assert rec.headers.get("grpc-encoding") == ("gzip" if compressed else None)
    assert (gzip.decompress(body) if compressed else body) == b"abc" * 100


@pytest.mark.parametrize("auto_ack", [True, False])
async def test_client_reset_while_handler_blocked_on_flow_control(
    server: Server, service: WireService, auto_ack: bool
) -> None:
    async with open_memory_client(server.serve_stream, auto_ack=auto_ack) as client:
        sid = await client.request(STREAM_FOREVER, grpc_frame(b""))
        await client.wait_for(sid, 65535)
        if not auto_ack:
            await trio.testing.wait_all_tasks_blocked()  # the handler is stuck in send()
        await client.reset(sid, CANCEL)
        with trio.fail_after(BOUND):
            await service.cancelled.wait()
        await client.ack_all()  # give back the connection window the stream used up
        ok = await unary(client, ECHO)
    assert_ok(ok, [b"ping"])


# ---------------------------------------------------------------------------------- timeouts


async def test_preface_timeout_closes_connection(
    server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    # A peer that connects and never sends the HTTP/2 preface.
    server_end, client_end = trio.testing.memory_stream_pair()
    received = bytearray()
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve_stream, server_end)
        with trio.fail_after(server.options.preface_timeout + 5):
            while chunk := await client_end.receive_some():
                received += chunk
        elapsed = trio.current_time() - start
    assert elapsed >= server.options.preface_timeout  # virtual time
    frames: list[Frame] = []
    pos = 0
    while pos < len(received):
        frame, length = Frame.parse_frame_header(memoryview(received[pos : pos + 9]))
        frame.parse_body(memoryview(received[pos + 9 : pos + 9 + length]))
        frames.append(frame)
        pos += 9 + length
    # Its SETTINGS and connection window, then GOAWAY PROTOCOL_ERROR, then EOF.
    assert [type(f) for f in frames] == [SettingsFrame, WindowUpdateFrame, GoAwayFrame]
    goaway = frames[-1]
    assert isinstance(goaway, GoAwayFrame)
    assert goaway.error_code == int(h2.errors.ErrorCodes.PROTOCOL_ERROR)
    assert goaway.additional_data == b"preface timeout"


async def test_idle_timeout_closes_connection(
    server: Server, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_memory_client(server.serve_stream) as client:
        ok = await unary(client, ECHO)
        start = trio.current_time()
        with trio.fail_after(server.options.idle_timeout + 5):
            await client.eof.wait()
        elapsed = trio.current_time() - start
    assert_ok(ok, [b"ping"])
    assert elapsed >= server.options.idle_timeout  # virtual time
    assert [g.error_code for g in client.goaways] == [NO_ERROR]
    assert client.goaways[0].additional_data == b"idle timeout"


async def test_idle_timer_armed_when_last_call_ends(
    server: Server, service: WireService, autojump_clock: trio.testing.MockClock
) -> None:
    idle = server.options.idle_timeout
    async with open_memory_client(server.serve_stream) as client:
        sid = await client.request(BLOCK, grpc_frame(b"slow"))
        await service.all_in.wait()
        # A call in progress is not idleness, however long it takes.
        await trio.sleep(idle * 2)
        assert not client.goaways
        # The reader now waits with no timeout; the call ending must arm the idle timer.
        await trio.testing.wait_all_tasks_blocked()
        service.release.set()
        rec = await client.wait(sid)
        ended = trio.current_time()
        with trio.fail_after(idle + 5):
            await client.eof.wait()
        elapsed = trio.current_time() - ended
    assert_ok(rec, [b"slow"])
    assert elapsed >= idle  # virtual time
    assert [g.additional_data for g in client.goaways] == [b"idle timeout"]
