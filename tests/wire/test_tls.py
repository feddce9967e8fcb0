"""TLS and mTLS on the server: grpcio over TLS, ALPN enforcement, client certificates.

Certificates are made in the test run with ``trustme``; everything runs on 127.0.0.1.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio
import trustme

from wire import Server, ServerCall, unary_unary
from wire.tls import TLSConfigError, client_context, server_context

ECHO = "/test.Tls/Echo"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def pki(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("pki")
    server_cert = ca.issue_cert("localhost", "127.0.0.1")
    client_cert = ca.issue_cert("client.example")
    paths = {
        "ca": d / "ca.pem",
        "server_cert": d / "server.pem",
        "server_key": d / "server.key",
        "client_cert": d / "client.pem",
        "client_key": d / "client.key",
    }
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server_cert.private_key_pem.write_to_path(str(paths["server_key"]))
    server_cert.cert_chain_pems[0].write_to_path(str(paths["server_cert"]))
    client_cert.private_key_pem.write_to_path(str(paths["client_key"]))
    client_cert.cert_chain_pems[0].write_to_path(str(paths["client_cert"]))
    return {k: str(v) for k, v in paths.items()}


class _Seen:
    def __init__(self) -> None:
        self.calls: list[ServerCall] = []

    async def echo(self, request: bytes, call: ServerCall) -> bytes:
        self.calls.append(call)
        return request


def _ident(b: bytes) -> bytes:
    return b


async def _serve(ctx: ssl.SSLContext, nursery: trio.Nursery) -> tuple[Server, _Seen, int]:
    seen = _Seen()
    server = Server([unary_unary(ECHO, seen.echo, _ident, _ident)])
    addr = await nursery.start(lambda task_status: server.serve_tcp(
        "127.0.0.1", 0, ssl_context=ctx, task_status=task_status))
    return server, seen, addr[1]


def _grpc_call(port: int, pki: dict[str, str], *, client_cert: bool = False,
               secure: bool = True) -> bytes:
    root = Path(pki["ca"]).read_bytes()
    if secure:
        if client_cert:
            creds = grpc.ssl_channel_credentials(
                root, Path(pki["client_key"]).read_bytes(), Path(pki["client_cert"]).read_bytes())
        else:
            creds = grpc.ssl_channel_credentials(root)
        channel = grpc.secure_channel(f"localhost:{port}", creds)
    else:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    with channel:
        result: bytes = channel.unary_unary(ECHO)(b"over tls", timeout=5)
        return result


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


async def test_grpcio_over_tls(pki: dict[str, str], nursery: trio.Nursery) -> None:
    server, seen, port = await _serve(server_context(pki["server_cert"], pki["server_key"]),
                                      nursery)
    assert await trio.to_thread.run_sync(_grpc_call, port, pki) == b"over tls"
    assert seen.calls[0].connection.tls is True
    assert seen.calls[0].connection.peer_certificate is None
    await server.shutdown(1)


async def test_mtls_required(pki: dict[str, str], nursery: trio.Nursery) -> None:
    ctx = server_context(pki["server_cert"], pki["server_key"], client_ca=pki["ca"],
                         require_client_cert=True)
    server, seen, port = await _serve(ctx, nursery)
    with pytest.raises(grpc.RpcError) as info:
        await trio.to_thread.run_sync(_grpc_call, port, pki)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await trio.to_thread.run_sync(
        lambda: _grpc_call(port, pki, client_cert=True)) == b"over tls"
    cert = seen.calls[-1].connection.peer_certificate
    assert cert is not None
    assert ("DNS", "client.example") in cert["subjectAltName"]
    await server.shutdown(1)


async def test_plaintext_client_to_tls_port_fails_cleanly(
        pki: dict[str, str], nursery: trio.Nursery) -> None:
    server, _, port = await _serve(server_context(pki["server_cert"], pki["server_key"]), nursery)
    with pytest.raises(grpc.RpcError) as info:
        await trio.to_thread.run_sync(lambda: _grpc_call(port, pki, secure=False))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # The server keeps serving well-behaved TLS clients.
    assert await trio.to_thread.run_sync(_grpc_call, port, pki) == b"over tls"
    await server.shutdown(1)


async def test_tls_client_without_alpn_h2_is_refused(
        pki: dict[str, str], nursery: trio.Nursery) -> None:
    server, seen, port = await _serve(server_context(pki["server_cert"], pki["server_key"]),
                                      nursery)
    ctx = ssl.create_default_context(cafile=pki["ca"])
    ctx.set_alpn_protocols(["http/1.1"])
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, ctx, server_hostname="localhost")
    # The server offers only h2, so either the handshake fails (no common protocol) or it
    # completes without ALPN and the server closes the connection without a byte of HTTP/2.
    with trio.fail_after(5):
        try:
            await stream.do_handshake()
            data = await stream.receive_some(1024)
        except trio.BrokenResourceError:
            data = b""
    assert data == b""
    await trio.aclose_forcefully(stream)
    assert seen.calls == []
    assert await trio.to_thread.run_sync(_grpc_call, port, pki) == b"over tls"
    await server.shutdown(1)


def test_context_errors(pki: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(TLSConfigError, match="cannot read"):
        server_context(str(tmp_path / "missing.pem"), pki["server_key"])
    with pytest.raises(TLSConfigError, match="client_ca"):
        server_context(pki["server_cert"], pki["server_key"], require_client_cert=True)
    with pytest.raises(TLSConfigError, match="CA file"):
        client_context(ca=str(tmp_path / "nope.pem"))
    with pytest.raises(TLSConfigError, match="without a client certificate"):
        client_context(ca=pki["ca"], key=pki["client_key"])
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(TLSConfigError, match="invalid"):
        server_context(str(bad), pki["server_key"])
