"""Server and client over streams that expose hidden buffering and partial-frame bugs.

Trio's testing streams stand in for the socket:

* ``lockstep_stream_pair``: every ``send_all`` waits until the peer has read all of it, so a
  side that writes without reading concurrently (or that expects the peer to buffer for it)
  deadlocks here instead of working by luck;
* a ``memory_stream_pair`` whose pump moves one byte at a time (``memory_stream_pump(...,
  max_bytes=1)``): every ``receive_some`` returns a single byte, so every frame header,
  HPACK block and gRPC message prefix arrives split at every possible point.

The server side is ``wire.Server.serve_stream``; the client side is ``wire.open_channel``
with a ``connector`` handing it the other end, so both Trio layers and both sans-I/O
connections run unchanged.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing
import trustme

from wire import (
    Channel,
    ClientConfig,
    RpcError,
    Server,
    ServerCall,
    ServerConfig,
    StatusCode,
    open_channel,
)
from wire.handlers import unary_stream, unary_unary
from wire.tls import client_context, server_context

from ..streams import PAIRS, StreamPair, one_byte_stream_pair

#: Generous for a slow CI box; never reached when the code is right (a deadlock hits it).
LIMIT = 20.0
# Both sides advertise a small stream window, so a BIG message crosses it several times and
# WINDOW_UPDATEs must flow while the bytes trickle. (Byte by byte every byte is one
# receive_data call, hence small sizes: the suite stays fast.)
WINDOW = 2048
BIG = 3 * WINDOW + 100


async def _echo(request: bytes, call: ServerCall) -> bytes:
    await trio.lowlevel.checkpoint()
    return request[::-1]


def _fail(request: bytes, call: ServerCall) -> bytes:
    raise RpcError(StatusCode.NOT_FOUND, "no " + request.decode())


def _peer(request: bytes, call: ServerCall) -> bytes:
    info = call.connection
    cert = info.peer_certificate or {}
    names = [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]
    return f"tls={info.tls} peer={','.join(names)}".encode()


async def _count(request: bytes, call: ServerCall,
                 send: Callable[[bytes], object]) -> None:
    for i in range(int(request)):
        await send(str(i).encode() * 100)  # type: ignore[misc]


def _server() -> Server:
    ident: Callable[[bytes], bytes] = bytes
    return Server([
        unary_unary("/t.T/Echo", _echo, ident, ident),
        unary_unary("/t.T/Fail", _fail, ident, ident, sync=True),
        unary_unary("/t.T/Peer", _peer, ident, ident, sync=True),
        unary_stream("/t.T/Count", _count, ident, ident),
    ], config=ServerConfig(initial_window_size=WINDOW, connection_window_increment=0))


@asynccontextmanager
async def _connected(pair: StreamPair, *, server_tls: ssl.SSLContext | None = None,
                     client_tls: ssl.SSLContext | None = None,
                     ) -> AsyncIterator[tuple[Channel, list[int]]]:
    """A channel whose connections are served by one Server over ``pair()`` streams."""
    server = _server()
    connects: list[int] = []
    async with trio.open_nursery() as nursery:

        async def connect() -> trio.abc.Stream:
            client_end, server_end = pair()
            connects.append(1)
            served: trio.abc.Stream = server_end
            if server_tls is not None:
                served = trio.SSLStream(server_end, server_tls, server_side=True)
            nursery.start_soon(server.serve_stream, served)
            return client_end

        config = ClientConfig(initial_window_size=WINDOW, connection_window_increment=0)
        async with open_channel("localhost:1", connector=connect, connect_timeout=LIMIT,
                                config=config, ssl_context=client_tls) as ch:
            yield ch, connects
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("pair", PAIRS)
async def test_unary_calls(pair: StreamPair) -> None:
    with trio.fail_after(LIMIT):
        async with _connected(pair) as (channel, connects):
            result = await channel.unary_unary("/t.T/Echo", b"hello", timeout=LIMIT)
            assert result.response == b"olleh"
            assert result.code is StatusCode.OK
            with pytest.raises(RpcError) as info:
                await channel.unary_unary("/t.T/Fail", b"such thing", timeout=LIMIT)
            assert info.value.code is StatusCode.NOT_FOUND
            assert info.value.message == "no such thing"
            with pytest.raises(RpcError) as info:
                await channel.unary_unary("/t.T/Missing", b"", timeout=LIMIT)
            assert info.value.code is StatusCode.UNIMPLEMENTED
            # Every call went over the one connection.
            assert len(connects) == 1


@pytest.mark.parametrize("pair", PAIRS)
async def test_large_messages_cross_flow_control(pair: StreamPair) -> None:
    payload = bytes(range(256)) * (BIG // 256)
    with trio.fail_after(LIMIT):
        async with _connected(pair) as (channel, _):
            result = await channel.unary_unary("/t.T/Echo", payload, timeout=LIMIT)
    assert result.response == payload[::-1]


@pytest.mark.parametrize("pair", PAIRS)
async def test_server_streaming(pair: StreamPair) -> None:
    got: list[bytes] = []
    with trio.fail_after(LIMIT):
        async with _connected(pair) as (channel, _), \
                channel.unary_stream("/t.T/Count", b"60", timeout=LIMIT) as stream:
            got = [message async for message in stream]
            assert stream.code is StatusCode.OK
    # 60 messages of 100-200 bytes: more than one stream window of responses.
    assert got == [str(i).encode() * 100 for i in range(60)]


@pytest.mark.parametrize("pair", PAIRS)
async def test_concurrent_calls_share_the_connection(pair: StreamPair) -> None:
    results: dict[int, bytes] = {}
    with trio.fail_after(LIMIT):
        async with _connected(pair) as (channel, connects):

            async def one(i: int) -> None:
                reply = await channel.unary_unary("/t.T/Echo", b"x" * (i * 197), timeout=LIMIT)
                results[i] = reply.response

            async with trio.open_nursery() as nursery:
                for i in range(8):
                    nursery.start_soon(one, i)
            assert len(connects) == 1
    assert results == {i: b"x" * (i * 197) for i in range(8)}


async def test_one_byte_pair_really_trickles() -> None:
    # The harness itself: without this the tests above could pass on whole-frame reads.
    a, b = one_byte_stream_pair()
    with trio.fail_after(LIMIT):
        await a.send_all(b"abcd")
        # The write moved "a"; the first read moves "b" and returns both; then one at a time.
        assert await b.receive_some(100) == b"ab"
        assert await b.receive_some(100) == b"c"
        assert await b.receive_some(100) == b"d"
        await a.aclose()
        assert await b.receive_some(100) == b""


@pytest.mark.parametrize("pair", PAIRS)
async def test_mutual_tls_over_the_pair(pair: StreamPair, tmp_path: Path) -> None:
    # TLS records split at every byte, and a handshake that must not wait on buffering.
    ca = trustme.CA()
    server_cert = ca.issue_cert("localhost")
    client_cert = ca.issue_cert("client.example")
    files = {"ca": ca.cert_pem, "server": server_cert.cert_chain_pems[0],
             "server.key": server_cert.private_key_pem,
             "client": client_cert.cert_chain_pems[0],
             "client.key": client_cert.private_key_pem}
    for name, blob in files.items():
        blob.write_to_path(str(tmp_path / name))
    server_tls = server_context(str(tmp_path / "server"), str(tmp_path / "server.key"),
                                client_ca=str(tmp_path / "ca"), require_client_cert=True)
    client_tls = client_context(ca=str(tmp_path / "ca"), cert=str(tmp_path / "client"),
                                key=str(tmp_path / "client.key"))
    with trio.fail_after(LIMIT):
        async with _connected(pair, server_tls=server_tls, client_tls=client_tls) as (
                channel, _):
            result = await channel.unary_unary("/t.T/Peer", b"", timeout=LIMIT)
            echoed = await channel.unary_unary("/t.T/Echo", b"x" * BIG, timeout=LIMIT)
    # The server saw TLS and the client's verified certificate.
    assert result.response == b"tls=True peer=client.example"
    assert echoed.response == b"x" * BIG


@pytest.mark.parametrize("pair", PAIRS)
async def test_a_client_that_vanishes_mid_stream_frees_the_server(pair: StreamPair) -> None:
    # The server is blocked writing a long stream the client stopped reading; when the client
    # goes away the write must fail, the call end and serve_stream return: nothing hangs.
    server = _server()
    client_end, server_end = pair()
    served = trio.Event()

    async def serve() -> None:
        await server.serve_stream(server_end)
        served.set()

    async def connect() -> trio.abc.Stream:
        return client_end

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            async with open_channel("memory:1", connector=connect, connect_timeout=LIMIT,
                                    ) as channel, channel.unary_stream(
                    "/t.T/Count", b"100000", timeout=LIMIT) as stream:
                first = [await stream.__anext__() for _ in range(3)]
            await served.wait()
    assert first == [b"0" * 100, b"1" * 100, b"2" * 100]
