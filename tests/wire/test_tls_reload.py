"""Certificate rotation (``wire.tls.ServerTLS``) and TLS alerts for refused client certificates
(``wire.tls.AlertingContext``), against a running ``wire.Server`` on loopback.

Certificates are made in the test run with ``trustme``; files are rotated the way cert-manager
and Kubernetes secret volumes do it (a new file moved into place), and also rewritten in place.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trustme

from wire import Server
from wire.tls import AlertingContext, ServerTLS, TLSConfigError, client_context, server_context

from .rawconn import RawConn, request_frames
from .service import ECHO, WireService

#: Safety bound on waits that should be quick (a failure bound, never a speed assertion).
BOUND = 10


class Files:
    """A server's certificate, key and client CA files, and the CAs behind them."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.cert = str(directory / "tls.crt")
        self.key = str(directory / "tls.key")
        self.client_ca = str(directory / "client-ca.crt")
        self.ca = trustme.CA()
        self.client_ca_obj = trustme.CA()
        self.ca_file = str(directory / "ca.crt")
        self.ca.cert_pem.write_to_path(self.ca_file)
        self.serial = 0
        self.leaf_der = b""
        self.rotate()
        self.rotate_client_ca(self.client_ca_obj)

    def _replace(self, path: str, data: bytes) -> None:
        # Write beside, then rename over: a new inode, never a half-written file.
        tmp = f"{path}.new"
        Path(tmp).write_bytes(data)
        os.replace(tmp, path)

    def rotate(self) -> bytes:
        """A new server certificate and key in place; returns the certificate (DER)."""
        self.serial += 1
        leaf = self.ca.issue_cert("localhost", "127.0.0.1",
                                  organization_unit_name=f"rotation {self.serial}")
        self._replace(self.key, leaf.private_key_pem.bytes())
        self._replace(self.cert, leaf.cert_chain_pems[0].bytes())
        self.leaf_der = ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
        self.key_pem = leaf.private_key_pem.bytes()
        return self.leaf_der

    def rotate_client_ca(self, ca: trustme.CA) -> None:
        self._replace(self.client_ca, ca.cert_pem.bytes())

    def spoil(self, how: str) -> str:
        """Break one file as a failed rotation would; returns the file an error must name."""
        if how == "cert":
            Path(self.cert).write_text("-----BEGIN CERTIFICATE-----\ntruncated")
            return self.cert
        if how == "key":
            Path(self.key).write_text("not a key")
            return self.key
        if how == "mismatch":
            Path(self.key).write_bytes(self.ca.issue_cert("other").private_key_pem.bytes())
            return self.key
        if how == "missing-cert":
            os.unlink(self.cert)
            return self.cert
        Path(self.client_ca).write_text("")
        return self.client_ca

    def client_cert(self, ca: trustme.CA, name: str) -> tuple[str, str]:
        leaf = ca.issue_cert(name)
        cert, key = str(self.dir / f"{name}.crt"), str(self.dir / f"{name}.key")
        leaf.cert_chain_pems[0].write_to_path(cert)
        leaf.private_key_pem.write_to_path(key)
        return cert, key


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return Files(tmp_path)


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


async def serve(ctx: ssl.SSLContext, nursery: trio.Nursery) -> tuple[Server, int]:
    server = Server(WireService().handlers())
    addr = await nursery.start(lambda task_status: server.serve_tcp(
        "127.0.0.1", 0, ssl_context=ctx, task_status=task_status))
    return server, addr[1]


async def connect(port: int, files: Files, *, client: tuple[str, str] | None = None,
                  tls12: bool = False) -> trio.SSLStream[trio.SocketStream]:
    """A TLS connection to the server, handshake done (may raise BrokenResourceError)."""
    ctx = client_context(ca=files.ca_file, cert=client[0] if client else None,
                         key=client[1] if client else None)
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, ctx, server_hostname="localhost")
    try:
        with trio.fail_after(BOUND):
            await stream.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream


async def handshake_and_read(port: int, files: Files, client: tuple[str, str] | None,
                             tls12: bool) -> bytes | bytearray:
    stream = await connect(port, files, client=client, tls12=tls12)
    try:
        with trio.fail_after(BOUND):
            return await stream.receive_some(1024)
    finally:
        await trio.aclose_forcefully(stream)


def server_cert(stream: trio.SSLStream[trio.SocketStream]) -> bytes:
    der = stream.getpeercert(binary_form=True)
    assert isinstance(der, bytes)
    return der


async def echo(stream: trio.SSLStream[trio.SocketStream], payload: bytes) -> list[bytes]:
    """One gRPC Echo call over ``stream`` (a raw HTTP/2 connection); the response payloads."""
    raw = RawConn(stream)
    async with trio.open_nursery() as n:
        n.start_soon(raw.read_loop)
        await raw.handshake()
        await raw.send(request_frames(1, ECHO, payload))
        rec = await raw.wait_closed(1)
        n.cancel_scope.cancel()
    return rec.payloads()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------------------ rotation


async def test_rotated_certificate_reaches_new_connections_only(
        files: Files, nursery: trio.Nursery) -> None:
    tls = ServerTLS(files.cert, files.key, check_interval=0)
    server, port = await serve(tls.context, nursery)
    first = files.leaf_der
    old = await connect(port, files)
    assert server_cert(old) == first
    second = files.rotate()
    assert second != first
    new = await connect(port, files)  # the handshake itself notices the change
    assert server_cert(new) == second
    assert tls.current is not tls.context
    # Both connections serve calls; the open one kept the certificate it was made with.
    assert await echo(new, b"new") == [b"new"]
    assert await echo(old, b"old") == [b"old"]
    assert server_cert(old) == first
    await trio.aclose_forcefully(old)
    await trio.aclose_forcefully(new)
    # reload() (SIGHUP) takes the files at once and says whether they changed.
    third = files.rotate()
    assert tls.reload() is True
    assert tls.reload() is False
    stream = await connect(port, files)
    assert server_cert(stream) == third
    await trio.aclose_forcefully(stream)
    await server.shutdown(1)


def test_check_looks_at_most_once_per_interval(files: Files) -> None:
    clock = Clock()
    tls = ServerTLS(files.cert, files.key, check_interval=1.0, clock=clock)
    first = tls.current
    files.rotate()
    clock.now = 0.5
    assert tls.check() is False  # not yet time to look
    assert tls.current is first
    clock.now = 1.0
    assert tls.check() is True
    assert tls.current is not first
    second = tls.current
    clock.now = 2.5
    assert tls.check() is False  # looked, nothing changed
    assert tls.current is second


def test_reload_on_demand_reports_whether_anything_changed(files: Files) -> None:
    tls = ServerTLS(files.cert, files.key, check_interval=3600)
    first = tls.current
    assert tls.reload() is False  # same contents: the context stays
    assert tls.current is first
    # Rewritten in place with new contents (same inode): reload() reads, it does not stat.
    pem = Path(files.cert).read_bytes()
    files.rotate()
    new_cert = Path(files.cert).read_bytes()
    Path(files.cert).write_bytes(pem)
    assert tls.reload() is False  # the old certificate with the new key: an unusable pair
    assert tls.current is first
    Path(files.cert).write_bytes(new_cert)
    assert tls.reload() is True
    assert tls.current is not first


def test_check_notices_in_place_rewrite(files: Files) -> None:
    clock = Clock()
    tls = ServerTLS(files.cert, files.key, check_interval=1.0, clock=clock)
    first = tls.current
    key_inode = os.stat(files.key).st_ino
    leaf = files.ca.issue_cert("localhost")
    Path(files.key).write_bytes(leaf.private_key_pem.bytes())
    Path(files.cert).write_bytes(leaf.cert_chain_pems[0].bytes())
    assert os.stat(files.key).st_ino == key_inode
    clock.now = 1.0
    assert tls.check() is True
    assert tls.current is not first


# ------------------------------------------------------------------------------ bad files


@pytest.mark.parametrize("broken", ["cert", "key", "mismatch", "missing-cert", "client-ca"])
async def test_bad_new_file_keeps_the_old_certificate_and_logs_once(
        broken: str, files: Files, nursery: trio.Nursery,
        caplog: pytest.LogCaptureFixture) -> None:
    tls = ServerTLS(files.cert, files.key, client_ca=files.client_ca, check_interval=0)
    server, port = await serve(tls.context, nursery)
    good = files.leaf_der
    key_pem = files.key_pem
    expected_file = files.spoil(broken)
    client = files.client_cert(files.client_ca_obj, "client")
    with caplog.at_level(logging.INFO, logger="wire.tls"):
        for _ in range(3):  # every handshake checks; the error is logged once
            stream = await connect(port, files, client=client)
            assert server_cert(stream) == good
            assert await echo(stream, b"still") == [b"still"]
            await trio.aclose_forcefully(stream)
    errors = [r for r in caplog.records if r.name == "wire.tls" and r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    message = errors[0].getMessage()
    assert repr(expected_file) in message
    assert "previous certificate" in message
    assert key_pem.decode() not in caplog.text
    assert "PRIVATE KEY" not in caplog.text
    # Fixed files are picked up at the next handshake.
    fixed = files.rotate()
    files.rotate_client_ca(files.client_ca_obj)
    stream = await connect(port, files, client=client)
    assert server_cert(stream) == fixed
    await trio.aclose_forcefully(stream)
    await server.shutdown(1)


def test_bad_files_at_start_raise(files: Files, tmp_path: Path) -> None:
    Path(files.key).write_text("garbage")
    with pytest.raises(TLSConfigError, match="invalid key file"):
        ServerTLS(files.cert, files.key)
    with pytest.raises(TLSConfigError, match="cannot read"):
        ServerTLS(str(tmp_path / "missing.crt"), files.key)


def test_context_errors_name_the_file(files: Files) -> None:
    other_key = files.dir / "other.key"
    other_key.write_bytes(files.ca.issue_cert("other").private_key_pem.bytes())
    with pytest.raises(TLSConfigError, match="does not match certificate file") as info:
        server_context(files.cert, str(other_key))
    assert repr(str(other_key)) in str(info.value)
    Path(files.cert).write_text("not a certificate")
    with pytest.raises(TLSConfigError, match="invalid certificate file") as info:
        server_context(files.cert, files.key)
    assert repr(files.cert) in str(info.value)


def test_encrypted_key_is_refused_without_a_prompt(files: Files) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(Path(files.key).read_bytes(), password=None)
    Path(files.key).write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(TLSConfigError, match="invalid key file"):
        server_context(files.cert, files.key)


# ------------------------------------------------------------------------------ client CA


async def test_rotated_client_ca_applies_to_new_handshakes(
        files: Files, nursery: trio.Nursery) -> None:
    tls = ServerTLS(files.cert, files.key, client_ca=files.client_ca,
                    require_client_cert=True, check_interval=0)
    server, port = await serve(tls.context, nursery)
    old_client = files.client_cert(files.client_ca_obj, "old-client")
    new_ca = trustme.CA()
    new_client = files.client_cert(new_ca, "new-client")
    stream = await connect(port, files, client=old_client)
    assert await echo(stream, b"old ca") == [b"old ca"]
    await trio.aclose_forcefully(stream)
    files.rotate_client_ca(new_ca)
    stream = await connect(port, files, client=new_client)
    assert await echo(stream, b"new ca") == [b"new ca"]
    await trio.aclose_forcefully(stream)
    # A certificate of the old CA is refused now, with an alert (below).
    stream = await connect(port, files, client=old_client)
    with pytest.raises(trio.BrokenResourceError) as info:
        await stream.receive_some(1024)
    assert isinstance(info.value.__cause__, ssl.SSLError)
    assert info.value.__cause__.reason == "TLSV1_ALERT_UNKNOWN_CA"
    await trio.aclose_forcefully(stream)
    await server.shutdown(1)


# ------------------------------------------------------------------------------ TLS alerts


def test_server_contexts_are_alerting() -> None:
    assert issubclass(AlertingContext, ssl.SSLContext)


@pytest.mark.parametrize("tls12", [False, True], ids=["tls1.3", "tls1.2"])
@pytest.mark.parametrize("client", ["none", "unknown-ca"])
async def test_refused_client_certificate_reaches_the_client_as_an_alert(
        tls12: bool, client: str, files: Files, nursery: trio.Nursery) -> None:
    ctx = server_context(files.cert, files.key, client_ca=files.client_ca,
                         require_client_cert=True)
    assert isinstance(ctx, AlertingContext)
    server, port = await serve(ctx, nursery)
    pair = files.client_cert(trustme.CA(), "stranger") if client == "unknown-ca" else None
    expected = {
        ("none", False): "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        ("none", True): "SSLV3_ALERT_HANDSHAKE_FAILURE",
        ("unknown-ca", False): "TLSV1_ALERT_UNKNOWN_CA",
        ("unknown-ca", True): "TLSV1_ALERT_UNKNOWN_CA",
    }[client, tls12]
    # Under TLS 1.3 the client's handshake ends before the server has judged its certificate,
    # so the alert arrives on the first read; under TLS 1.2 during the handshake. Either way
    # it is the server's alert, not an EOF or a reset.
    with pytest.raises(trio.BrokenResourceError) as info:
        await handshake_and_read(port, files, pair, tls12)
    cause = info.value.__cause__
    assert isinstance(cause, ssl.SSLError)
    assert not isinstance(cause, ssl.SSLEOFError)
    assert cause.reason == expected
    # The server goes on serving good clients.
    good = files.client_cert(files.client_ca_obj, "good")
    stream = await connect(port, files, client=good, tls12=tls12)
    assert await echo(stream, b"welcome") == [b"welcome"]
    await trio.aclose_forcefully(stream)
    await server.shutdown(1)
