"""The client against hostile and broken servers (issue 16), over loopback TCP.

Each case is a ``HostileServer`` script writing hand-built frames; each asserts the status the
client reports and, where it matters, what the client answered (RST_STREAM / GOAWAY codes).
Floods also assert that the client's output backlog stays bounded. Real sockets run in real
time, so every wait here is bounded by a short deadline rather than by the autojump clock.
"""

from __future__ import annotations

import datetime
import gzip
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trustme

from wire import ConnectError, RpcError, StatusCode
from wire.client import Channel, open_channel
from wire.client_connection import ClientConfig
from wire.status import ErrorCode

from .hostile_server import (
    RESPONSE,
    HostileServer,
    Peer,
    Script,
    continuation,
    data,
    goaway,
    grpc_message,
    headers,
    indexed,
    indexed_new,
    literal,
    ok_response,
    ping,
    push_promise,
    response_headers,
    rst_stream,
    settings,
    table_size_update,
    trailers,
    window_update,
)

METHOD = "/grpc.health.v1.Health/Check"


@asynccontextmanager
async def hostile(script: Script,
                  **channel_kw: Any) -> AsyncIterator[tuple[Channel, HostileServer]]:
    server = HostileServer(script, receive_buffer=channel_kw.pop("receive_buffer", None))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.run)
        channel_kw.setdefault("connect_timeout", 5.0)
        async with open_channel(f"127.0.0.1:{port}", **channel_kw) as channel:
            yield channel, server
        with trio.move_on_after(2):  # let the script see the client's last frames
            await server.done.wait()
        nursery.cancel_scope.cancel()


async def fails(channel: Channel, seconds: float = 5.0) -> RpcError:
    with pytest.raises(RpcError) as info:
        await channel.unary_unary(METHOD, b"", timeout=seconds)
    return info.value


async def two_calls(channel: Channel) -> list[RpcError | bytes]:
    """Start two calls concurrently; return each outcome in stream order (1, then 3)."""
    results: dict[int, RpcError | bytes] = {}

    async def one(i: int) -> None:
        try:
            results[i] = (await channel.unary_unary(METHOD, b"", timeout=5)).response
        except RpcError as exc:
            results[i] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, 0)
        await trio.sleep(0.05)  # call 0 takes stream 1
        nursery.start_soon(one, 1)
    return [results[0], results[1]]


def one_call(respond: bytes | list[bytes]) -> Script:
    """A script that answers the first call with ``respond`` (``{sid}``-free bytes on 1)."""
    chunks = respond if isinstance(respond, list) else [respond]

    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.next_call()
        for chunk in chunks:
            await peer.send(chunk)
        await peer.drain()
    return script


# ---------------------------------------------------------------- 2: malformed -> stream error


@pytest.mark.parametrize(("first", "fragment"), [
    (headers(1, [(b"content-type", b"application/grpc")], end_stream=True),
     "malformed header: missing HTTP status"),
    (response_headers(1) + headers(1, [(b"grpc-status", b"0")]),
     "malformed response"),
    (headers(1, [*RESPONSE, (b"grpc-status", b"0"), (b"grpc-message", b"a\x00b")],
             end_stream=True), "NUL"),
    (response_headers(1) + trailers(1, extra=[(b":status", b"200")]), "pseudo-header"),
    (headers(1, [(b":status", b"200"), (b"Content-Type", b"application/grpc")]),
     "invalid character"),
    (headers(1, [*RESPONSE, (b"connection", b"close")]), "connection-specific"),
], ids=["no-status", "trailers-without-end-stream", "nul-in-grpc-message",
        "pseudo-in-trailers", "uppercase-name", "connection-header"])
async def test_malformed_response_is_internal_on_its_stream_only(first: bytes,
                                                                 fragment: str) -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake()
        a = await peer.next_call()
        b = await peer.next_call()
        assert (a, b) == (1, 3)
        await peer.send(first, ok_response(b, b"fine"))
        await peer.drain()

    async with hostile(script) as (channel, server):
        first_result, second = await two_calls(channel)
    assert isinstance(first_result, RpcError)
    assert first_result.code is StatusCode.INTERNAL
    assert fragment in first_result.message
    assert second == b"fine"  # the healthy call on the same connection is unharmed
    peer = server.peers[0]
    # A stream the server already closed (END_STREAM) needs no reset; an open one gets
    # RST_STREAM PROTOCOL_ERROR. The connection ends only when the channel closes.
    assert peer.resets().get(1, ErrorCode.PROTOCOL_ERROR) == ErrorCode.PROTOCOL_ERROR
    assert peer.goaway_codes() == [ErrorCode.NO_ERROR]


# ---------------------------------------------------------------- 3: no lost outcome


async def test_ok_call_stays_ok_when_a_bad_frame_follows_in_the_same_write() -> None:
    # The whole response and a connection error (WINDOW_UPDATE of 0 on the connection,
    # RFC 9113 section 6.9) in one send_all: the client reads them in one chunk.
    script = one_call(ok_response(1, b"served") + window_update(0, 0))
    async with hostile(script) as (channel, server):
        assert (await channel.unary_unary(METHOD, b"", timeout=5)).response == b"served"
        with trio.move_on_after(2):
            await server.done.wait()
    assert server.peers[0].goaway_codes() == [ErrorCode.PROTOCOL_ERROR]


# ---------------------------------------------------------------- 5: grpc-status grammar


@pytest.mark.parametrize("raw", [b"0_0", b"+0", b"00x", b"\xd9\xa0"])
async def test_grpc_status_outside_the_grammar_is_internal(raw: bytes) -> None:
    script = one_call(response_headers(1) + trailers(1, raw))
    async with hostile(script) as (channel, _):
        err = await fails(channel)
    assert err.code is StatusCode.INTERNAL
    assert "malformed grpc-status" in err.message


async def test_grpc_status_with_padding_is_internal() -> None:
    script = one_call(response_headers(1) + trailers(1, b" 0"))
    async with hostile(script) as (channel, _):
        err = await fails(channel)
    assert err.code is StatusCode.INTERNAL


@pytest.mark.parametrize(("raw", "message"), [
    (b"%E2%9C%93", "\u2713"), (b"%zz%", "%zz%"), (b"\xff\xfe", "\ufffd\ufffd"),
])
async def test_bad_grpc_message_is_decoded_leniently(raw: bytes, message: str) -> None:
    script = one_call(headers(1, [*RESPONSE, (b"grpc-status", b"9"), (b"grpc-message", raw)],
                              end_stream=True))
    async with hostile(script) as (channel, _):
        err = await fails(channel)
    assert (err.code, err.message) == (StatusCode.FAILED_PRECONDITION, message)


# ---------------------------------------------------------------- 6: who reset, no bare ids


async def test_reset_by_the_client_says_so() -> None:
    # A stream WINDOW_UPDATE that overflows 2^31-1: h2 resets the stream itself.
    script = one_call(response_headers(1) + window_update(1, 0x7FFFFFFF))
    async with hostile(script) as (channel, server):
        err = await fails(channel)
    assert err.code is StatusCode.INTERNAL
    assert "stream reset by the client" in err.message
    assert "FLOW_CONTROL_ERROR" in err.message
    assert server.peers[0].resets()[1] == ErrorCode.FLOW_CONTROL_ERROR


async def test_reset_by_the_server_says_so() -> None:
    script = one_call(rst_stream(1, ErrorCode.INTERNAL_ERROR))
    async with hostile(script) as (channel, _):
        err = await fails(channel)
    assert err.code is StatusCode.INTERNAL
    assert "stream reset by the server" in err.message


async def test_connection_error_message_is_never_a_bare_stream_id() -> None:
    # DATA after END_STREAM: STREAM_CLOSED, which h2 describes as just "1".
    script = one_call([headers(1, [*RESPONSE, (b"grpc-status", b"0")], end_stream=False)
                       + data(1, b"", end_stream=True) + data(1, b"x")])
    async with hostile(script) as (channel, _):
        err = await fails(channel)
    assert not err.message.rstrip().endswith(": 1")
    assert "stream" in err.message


# ---------------------------------------------------------------- 7: connection error codes


async def test_hpack_error_is_compression_error() -> None:
    # A dynamic table size update above the 4096 the client allows (RFC 7541 section 6.3).
    script = one_call(headers(1, [], block=table_size_update(1 << 20) + literal(RESPONSE)))
    async with hostile(script) as (channel, server):
        err = await fails(channel)
    assert err.code in (StatusCode.INTERNAL, StatusCode.UNAVAILABLE)
    assert "HPACK" in err.message
    assert server.peers[0].goaway_codes() == [ErrorCode.COMPRESSION_ERROR]


async def test_rst_stream_on_idle_stream_is_protocol_error() -> None:
    script = one_call(rst_stream(99, ErrorCode.CANCEL))
    async with hostile(script) as (channel, server):
        err = await fails(channel)
    assert err.code is StatusCode.UNAVAILABLE
    assert "idle stream 99" in err.message
    assert server.peers[0].goaway_codes() == [ErrorCode.PROTOCOL_ERROR]


async def test_push_promise_is_protocol_error() -> None:
    script = one_call(push_promise(1, 2, [(b":method", b"GET"), (b":path", b"/")]))
    async with hostile(script) as (channel, server):
        err = await fails(channel)
    assert err.code is StatusCode.UNAVAILABLE
    assert "PUSH_PROMISE" in err.message
    assert server.peers[0].goaway_codes() == [ErrorCode.PROTOCOL_ERROR]


# ---------------------------------------------------------------- 8 and floods: bounded input


async def test_header_block_over_the_advertised_size_is_refused_before_decoding() -> None:
    big = literal([*RESPONSE, (b"x-big", b"v" * 70_000)])
    chunks = [big[i:i + 16_000] for i in range(0, len(big), 16_000)]
    frames = headers(1, [], block=chunks[0], end_headers=False) + b"".join(
        continuation(1, c, end_headers=i == len(chunks) - 2) for i, c in enumerate(chunks[1:]))
    async with hostile(one_call(frames)) as (channel, server):
        err = await fails(channel)
    assert err.code is StatusCode.INTERNAL
    assert "65536" in err.message
    assert server.peers[0].goaway_codes() == [ErrorCode.ENHANCE_YOUR_CALM]


async def test_continuation_flood_is_enhance_your_calm() -> None:
    flood = headers(1, [], block=literal(RESPONSE), end_headers=False) + \
        continuation(1, b"") * 10_000
    async with hostile(one_call(flood)) as (channel, server):
        err = await fails(channel)
    assert err.code is StatusCode.INTERNAL
    assert "CONTINUATION" in err.message
    assert server.peers[0].goaway_codes() == [ErrorCode.ENHANCE_YOUR_CALM]


async def test_hpack_bomb_is_enhance_your_calm() -> None:
    # One 4000-byte entry in the dynamic table, then referenced 100 times: a 6 KB block that
    # decodes to 400 KB (above the 64 KiB list the client advertised).
    block = indexed_new(b"x-bomb", b"b" * 4000) + indexed(62) * 100 + literal(RESPONSE)
    async with hostile(one_call(headers(1, [], block=block))) as (channel, server):
        err = await fails(channel)
    assert err.code in (StatusCode.INTERNAL, StatusCode.UNAVAILABLE)
    assert server.peers[0].goaway_codes() == [ErrorCode.ENHANCE_YOUR_CALM]


async def test_ping_flood_from_a_server_that_does_not_read_keeps_the_backlog_bounded() -> None:
    sent = 0

    async def script(peer: Peer) -> None:
        nonlocal sent
        await peer.handshake()
        await peer.next_call()
        batch = ping(b"flooding") * 1024
        for _ in range(256):  # bounded: at most 4.4 MB of PINGs, and we never read again
            await peer.send(batch)
            sent += len(batch)

    async def small_send_buffer() -> trio.abc.Stream:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        await sock.connect(("127.0.0.1", port))
        return trio.SocketStream(sock)

    server = HostileServer(script, receive_buffer=4096)
    high = 0
    pause = ClientConfig().output_backlog_pause
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.run)
        async with open_channel(f"127.0.0.1:{port}", connector=small_send_buffer) as channel:

            async def watch() -> None:
                nonlocal high
                while True:
                    high = max(high, channel.output_backlog)
                    await trio.sleep(0.005)

            nursery.start_soon(watch)
            err = await fails(channel, seconds=1.5)
            assert err.code is StatusCode.DEADLINE_EXCEEDED
        nursery.cancel_scope.cancel()
    # The flood really backed up the client (it had to pause), and the pause held: what is
    # queued is the pause threshold plus one read's answers, twice (queued + being written).
    assert high > pause
    assert high <= 2 * (pause + 64 * 1024)
    assert sent >= high  # every queued byte is the ack of a PING the server sent


# ---------------------------------------------------------------- regressions: messages


async def test_five_mib_message_is_resource_exhausted() -> None:
    script = one_call(response_headers(1) + data(1, grpc_message(b"", length=5 << 20)))
    async with hostile(script) as (channel, _):
        err = await fails(channel)
    assert err.code is StatusCode.RESOURCE_EXHAUSTED


async def test_four_gib_prefix_is_resource_exhausted_at_once() -> None:
    script = one_call(response_headers(1) + data(1, grpc_message(b"x", length=0xFFFFFFFF)))
    async with hostile(script) as (channel, _):
        err = await fails(channel)
    assert err.code is StatusCode.RESOURCE_EXHAUSTED
    assert "4294967295" in err.message


async def test_gzip_bomb_is_resource_exhausted() -> None:
    bomb = gzip.compress(b"\0" * (16 << 20))
    frames = response_headers(1, [(b"grpc-encoding", b"gzip")]) + b"".join(
        data(1, chunk) for chunk in _chunks(grpc_message(bomb, compressed=True), 16_000))
    async with hostile(one_call(frames)) as (channel, _):
        err = await fails(channel)
    assert err.code is StatusCode.RESOURCE_EXHAUSTED
    assert "decompressed" in err.message


def _chunks(raw: bytes, size: int) -> list[bytes]:
    return [raw[i:i + size] for i in range(0, len(raw), size)]


# ---------------------------------------------------------------- regressions: time


async def test_silent_server_is_a_connect_timeout() -> None:
    async def silent(peer: Peer) -> None:
        await peer.drain()

    async with hostile(silent, connect_timeout=0.3) as (channel, _):
        with pytest.raises(ConnectError) as info:
            await channel.unary_unary(METHOD, b"", timeout=5)
    assert info.value.timed_out


async def test_server_silent_after_settings_is_deadline_exceeded() -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.drain()

    async with hostile(script) as (channel, server):
        err = await fails(channel, seconds=0.3)
        assert err.code is StatusCode.DEADLINE_EXCEEDED
        await trio.sleep(0.1)
        assert server.peers[0].resets() == {1: ErrorCode.CANCEL}


async def test_trickling_server_is_deadline_exceeded() -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.next_call()
        for byte in ok_response(1, b"slow"):  # bounded: one byte per 50 ms
            await peer.send(bytes([byte]))
            await trio.sleep(0.05)

    async with hostile(script) as (channel, _):
        err = await fails(channel, seconds=0.5)
    assert err.code is StatusCode.DEADLINE_EXCEEDED


# ---------------------------------------------------------------- regressions: flow control


async def test_data_beyond_the_stream_window_is_flow_control_error() -> None:
    messages = b"".join(data(1, grpc_message(b"m" * 50)) for _ in range(3))

    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.next_call()
        await peer.send(response_headers(1) + messages)
        await peer.drain()

    config = ClientConfig(initial_window_size=100)
    async with hostile(script, config=config) as (channel, server), \
            channel.unary_stream(METHOD, b"", timeout=5) as stream:
        await trio.sleep(0.3)  # hold the messages: their bytes stay counted in the window
        with pytest.raises(RpcError) as info:
            async for _ in stream:
                pass
    # A connection error, blamed on the stream whose DATA broke the window: that call is
    # INTERNAL (a broken server, not one to retry), any other would be UNAVAILABLE.
    assert info.value.code is StatusCode.INTERNAL
    assert "flow control" in info.value.message
    assert server.peers[0].goaway_codes() == [ErrorCode.FLOW_CONTROL_ERROR]


async def test_connection_window_overflow_is_flow_control_error() -> None:
    script = one_call(window_update(0, 0x7FFFFFFF))
    async with hostile(script) as (channel, server):
        err = await fails(channel)
    assert err.code is StatusCode.UNAVAILABLE
    assert server.peers[0].goaway_codes() == [ErrorCode.FLOW_CONTROL_ERROR]


# ---------------------------------------------------------------- regressions: GOAWAY


async def test_goaway_before_the_call_was_processed_is_unavailable() -> None:
    script = one_call(goaway(0, ErrorCode.NO_ERROR))
    async with hostile(script) as (channel, _):
        err = await fails(channel)
    assert err.code is StatusCode.UNAVAILABLE
    assert "before processing" in err.message


async def test_graceful_goaway_lets_the_call_finish() -> None:
    script = one_call(goaway(1, ErrorCode.NO_ERROR) + ok_response(1, b"finished"))
    async with hostile(script) as (channel, _):
        assert (await channel.unary_unary(METHOD, b"", timeout=5)).response == b"finished"


async def test_graceful_goaway_lets_the_call_finish_and_the_next_call_reconnects() -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake()
        sid = await peer.next_call()
        await peer.send(goaway(sid, ErrorCode.NO_ERROR) + ok_response(sid, b"kept"))
        await peer.drain()  # the client closes the connection once its last call is over

    async with hostile(script) as (channel, server):
        assert (await channel.unary_unary(METHOD, b"", timeout=5)).response == b"kept"
        for _ in range(100):  # bounded: until the client has let the old connection go
            if not channel.connected:
                break
            await trio.sleep(0.01)
        assert not channel.connected
        assert (await channel.unary_unary(METHOD, b"", timeout=5)).response == b"kept"
    assert len(server.peers) == 2


async def test_goaway_with_error_and_debug_data_fails_calls_not_processed() -> None:
    script = one_call(goaway(0, ErrorCode.ENHANCE_YOUR_CALM, b"too_many_pings"))
    async with hostile(script) as (channel, _):
        err = await fails(channel)
    assert err.code is StatusCode.UNAVAILABLE
    assert "ENHANCE_YOUR_CALM" in err.message


async def test_goaway_then_connection_closed_mid_call_is_unavailable() -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.next_call()
        await peer.send(goaway(1, ErrorCode.NO_ERROR) + response_headers(1))

    async with hostile(script) as (channel, _):
        err = await fails(channel)
    assert err.code is StatusCode.UNAVAILABLE


# ---------------------------------------------------------------- 4 and certificates: TLS


@asynccontextmanager
async def tls_server(cert: trustme.LeafCert, *, alpn: list[str] | None) -> AsyncIterator[int]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)

    async def handle(stream: trio.SSLStream[trio.SocketStream]) -> None:
        try:
            await stream.do_handshake()
            peer = Peer(stream)
            await peer.handshake()
            await peer.next_call()
            await peer.send(ok_response(1, b"tls"))
            await peer.drain()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            trio.serve_ssl_over_tcp, handle, 0, ctx)  # type: ignore[arg-type]
        yield listeners[0].transport_listener.socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def _tls_call(port: int, ca: trustme.CA, **kw: Any) -> bytes:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    async with open_channel(f"127.0.0.1:{port}", ssl_context=ctx, **kw) as channel:
        return (await channel.unary_unary(METHOD, b"", timeout=5)).response


async def test_tls_with_alpn_h2_works() -> None:
    ca = trustme.CA()
    async with tls_server(ca.issue_cert("127.0.0.1"), alpn=["h2"]) as port:
        assert await _tls_call(port, ca) == b"tls"


@pytest.mark.parametrize("alpn", [None, ["http/1.1"]])
async def test_tls_without_alpn_h2_is_refused(alpn: list[str] | None) -> None:
    ca = trustme.CA()
    async with tls_server(ca.issue_cert("127.0.0.1"), alpn=alpn) as port:
        with pytest.raises(ConnectError) as info:
            await _tls_call(port, ca)
    assert "gRPC requires ALPN h2" in info.value.message
    assert not info.value.timed_out


def _expired(ca: trustme.CA) -> trustme.LeafCert:
    now = datetime.datetime.now(datetime.timezone.utc)
    return ca.issue_cert("127.0.0.1", not_before=now - datetime.timedelta(days=30),
                         not_after=now - datetime.timedelta(days=1))


@pytest.mark.parametrize(("make", "fragment"), [
    (_expired, "expired"),
    (lambda ca: trustme.CA().issue_cert("127.0.0.1"), "certificate verify failed"),
    (lambda ca: ca.issue_cert("other.example"), "certificate verify failed"),
])
async def test_bad_certificates_are_refused(make: Any, fragment: str) -> None:
    ca = trustme.CA()
    async with tls_server(make(ca), alpn=["h2"]) as port:
        with pytest.raises(ConnectError) as info:
            await _tls_call(port, ca)
    assert "TLS handshake failed" in info.value.message
    assert fragment in info.value.message


# ---------------------------------------------------------------- the server's first frame


async def test_http1_answer_is_a_connect_error() -> None:
    async def script(peer: Peer) -> None:
        await peer.send(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await peer.drain()

    async with hostile(script) as (channel, _):
        with pytest.raises(ConnectError, match="HTTP/1"):
            await channel.unary_unary(METHOD, b"", timeout=5)


async def test_settings_then_ping_still_answered_during_a_call() -> None:
    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.next_call()
        await peer.send(ping(b"12345678") + settings((3, 10)) + ok_response(1, b"after"))
        await peer.drain()

    async with hostile(script) as (channel, server):
        assert (await channel.unary_unary(METHOD, b"", timeout=5)).response == b"after"
        await trio.sleep(0.1)
    pings = [f for f in server.peers[0].received if f.kind == 6]
    assert pings
    assert pings[0].payload == b"12345678"
