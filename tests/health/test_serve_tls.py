"""``python -m health serve`` with TLS and mTLS flags, checked with our probe and grpcio."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .test_serve import in_thread, serve


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    ca = trustme.CA()
    other_ca = trustme.CA()
    d = tmp_path_factory.mktemp("serve-pki")
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("probe.example")
    files: dict[str, Any] = {
        "ca": ca.cert_pem, "other_ca": other_ca.cert_pem,
        "server_cert": server.cert_chain_pems[0], "server_key": server.private_key_pem,
        "client_cert": client.cert_chain_pems[0], "client_key": client.private_key_pem,
    }
    out = {}
    for name, blob in files.items():
        path = d / f"{name}.pem"
        blob.write_to_path(str(path))
        out[name] = str(path)
    return out


async def _probe(port: int, *flags: str) -> int:
    cmd = [sys.executable, "-m", "health", "probe", f"-addr=localhost:{port}", *flags]
    with trio.fail_after(30):
        result = await trio.run_process(cmd, check=False, capture_stdout=True,
                                        capture_stderr=True)
    return result.returncode


async def test_serve_tls_with_probe_and_grpcio(
        tmp_path: Path, pki: dict[str, str], http2_flags: tuple[str, ...]) -> None:
    async with serve(tmp_path, *http2_flags, "--tls-cert", pki["server_cert"], "--tls-key",
                     pki["server_key"], admin=False) as served:
        assert await _probe(served.port, "-tls", f"-tls-ca-cert={pki['ca']}") == 0
        # A CA that did not sign the server certificate: a connection failure, exit 2.
        assert await _probe(served.port, "-tls", f"-tls-ca-cert={pki['other_ca']}") == 2
        # Plaintext against the TLS port fails cleanly (exit 2), the server keeps serving.
        assert await _probe(served.port) == 2

        def check() -> int:
            creds = grpc.ssl_channel_credentials(Path(pki["ca"]).read_bytes())
            with grpc.secure_channel(f"localhost:{served.port}", creds) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
                return int(reply.status)

        assert await in_thread(check) == health_pb2.HealthCheckResponse.SERVING


async def test_serve_mtls_requires_client_cert(
        tmp_path: Path, pki: dict[str, str], http2_flags: tuple[str, ...]) -> None:
    async with serve(tmp_path, *http2_flags, "--tls-cert", pki["server_cert"],
                     "--tls-key", pki["server_key"],
                     "--tls-client-ca", pki["ca"], "--require-client-cert",
                     admin=False) as served:
        assert await _probe(served.port, "-tls", f"-tls-ca-cert={pki['ca']}",
                            f"-tls-client-cert={pki['client_cert']}",
                            f"-tls-client-key={pki['client_key']}") == 0
        assert await _probe(served.port, "-tls", f"-tls-ca-cert={pki['ca']}") == 2


async def test_serve_tls_flag_errors(tmp_path: Path, pki: dict[str, str]) -> None:
    async def run(*args: str) -> tuple[int, str]:
        cmd = [sys.executable, "-m", "health", "serve", "--port", "0", *args]
        with trio.fail_after(30):
            result = await trio.run_process(cmd, check=False, capture_stdout=True,
                                            capture_stderr=True)
        return result.returncode, result.stderr.decode()

    code, err = await run("--tls-key", pki["server_key"])
    assert code == 2
    assert "--tls-cert" in err
    code, err = await run("--tls-cert", str(tmp_path / "missing.pem"))
    assert code == 2
    assert "missing.pem" in err
    code, err = await run("--tls-cert", pki["server_cert"], "--tls-key", pki["server_key"],
                          "--require-client-cert")
    assert code == 2
    assert "--require-client-cert needs --tls-client-ca" in err
