"""The built-in probes against real loopback servers.

A Trio TCP listener, a tiny h11 server (plain and TLS), a child Python process and our own
health server, with the real clock and generous timeouts.
"""

from __future__ import annotations

import socket
import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import h11
import pytest
import trio
import trustme

from health import HealthServer, HealthState, ServingStatus
from health.checks import Check, CheckFailed, CheckRunner
from health.probes import command_check, grpc_check, http_check, tcp_check
from wire import ServerConfig

from .loopback import tcp_server

SERVING = ServingStatus.SERVING
NOT_SERVING = ServingStatus.NOT_SERVING

#: For probes against real servers: long enough for a slow CI box, never reached when passing.
REAL_TIMEOUT = 10.0


# --------------------------------------------------------------- built-in: tcp


async def test_tcp_check_passes_when_listening() -> None:
    async with tcp_server() as port:
        await tcp_check("127.0.0.1", port)()


def _free_port() -> int:
    """A port nothing listens on (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_tcp_check_fails_when_refused() -> None:
    port = _free_port()
    with pytest.raises(CheckFailed, match=f"cannot connect to 127.0.0.1:{port}: .*refused"):
        await tcp_check("127.0.0.1", port)()


# --------------------------------------------------------------- built-in: http


@asynccontextmanager
async def http_server(status: int, *, ssl_context: ssl.SSLContext | None = None,
                      ) -> AsyncIterator[tuple[int, list[h11.Request]]]:
    """A tiny h11 server answering every request with ``status``; yields (port, requests)."""
    requests: list[h11.Request] = []

    async def handler(tcp: trio.SocketStream) -> None:
        stream: trio.abc.Stream = tcp
        if ssl_context is not None:
            stream = trio.SSLStream(tcp, ssl_context, server_side=True)
        conn = h11.Connection(h11.SERVER)
        try:
            for _ in range(100):
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(4096)))
                    continue
                if isinstance(event, h11.Request):
                    requests.append(event)
                if isinstance(event, h11.EndOfMessage):
                    # 204 and 304 answers carry no body.
                    body = b"" if status in (204, 304) else b"hello"
                    data = conn.send(h11.Response(status_code=status, headers=[
                        ("content-length", str(len(body)))]))
                    data = (data or b"") + (conn.send(h11.Data(data=body)) or b"")
                    data += conn.send(h11.EndOfMessage()) or b""
                    await stream.send_all(data)
                    break
        except (trio.BrokenResourceError, h11.RemoteProtocolError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handler, listeners)
        yield port, requests
        nursery.cancel_scope.cancel()


async def test_http_check_passes_on_expected_status() -> None:
    async with http_server(204) as (port, requests):
        with trio.fail_after(REAL_TIMEOUT):
            await http_check(f"http://127.0.0.1:{port}/ready?x=1",
                             headers=[("X-Probe", "yes")])()
    assert requests[0].method == b"GET"
    assert requests[0].target == b"/ready?x=1"
    assert (b"x-probe", b"yes") in list(requests[0].headers)
    assert (b"host", f"127.0.0.1:{port}".encode()) in list(requests[0].headers)


async def test_http_check_fails_on_other_status() -> None:
    async with http_server(503) as (port, _):
        with trio.fail_after(REAL_TIMEOUT), pytest.raises(CheckFailed, match="HTTP 503"):
            await http_check(f"http://127.0.0.1:{port}/")()


async def test_http_check_custom_range() -> None:
    async with http_server(404) as (port, _):
        with trio.fail_after(REAL_TIMEOUT):
            await http_check(f"http://127.0.0.1:{port}/", expect_status=(404, 404))()


async def test_http_check_refused() -> None:
    with pytest.raises(CheckFailed, match="cannot connect"):
        await http_check(f"http://127.0.0.1:{_free_port()}/")()


async def test_https_check() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    async with http_server(200, ssl_context=server_context) as (port, requests):
        with trio.fail_after(REAL_TIMEOUT):
            await http_check(f"https://localhost:{port}/", ssl_context=client_context)()
            # Without the CA the certificate is not trusted.
            with pytest.raises(CheckFailed, match="TLS"):
                await http_check(f"https://localhost:{port}/")()
    assert len(requests) == 1


def test_http_check_rejects_bad_urls() -> None:
    with pytest.raises(ValueError, match="scheme"):
        http_check("ftp://example/")
    with pytest.raises(ValueError, match="host"):
        http_check("http:///path")


# ------------------------------------------------------------- built-in: command


async def test_command_check_exit_status() -> None:
    with trio.fail_after(REAL_TIMEOUT):
        await command_check([sys.executable, "-c", "pass"])()
        with pytest.raises(CheckFailed, match="status 3: oops"):
            await command_check([sys.executable, "-c",
                                 "import sys; sys.stderr.write('oops'); raise SystemExit(3)"])()


async def test_command_check_missing_program() -> None:
    with pytest.raises(CheckFailed, match="cannot run"):
        await command_check(["/nonexistent/program-for-health-test"])()


async def test_command_check_timeout_kills_the_process() -> None:
    check = Check("sleepy", command_check([sys.executable, "-c",
                                           "import time; time.sleep(60)"]), timeout=0.2)
    with trio.fail_after(REAL_TIMEOUT):
        result = await check.run_probe()
    assert not result.ok
    assert "timed out" in result.reason


# ---------------------------------------------------------------- built-in: grpc


async def test_grpc_check_against_our_server(server_config: ServerConfig) -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(HealthServer(config=server_config).serve_tcp, "127.0.0.1", 0)
        server.set("up", SERVING)
        server.set("down", NOT_SERVING)
        target = f"127.0.0.1:{server.port}"
        with trio.fail_after(REAL_TIMEOUT):
            await grpc_check(target)()
            await grpc_check(target, "up", rpc_timeout=REAL_TIMEOUT)()
            with pytest.raises(CheckFailed, match="NOT_SERVING"):
                await grpc_check(target, "down")()
            with pytest.raises(CheckFailed, match="NOT_FOUND"):
                await grpc_check(target, "missing")()
        nursery.cancel_scope.cancel()


async def test_grpc_check_no_server() -> None:
    with trio.fail_after(REAL_TIMEOUT), pytest.raises(CheckFailed, match="UNAVAILABLE"):
        await grpc_check(f"127.0.0.1:{_free_port()}", connect_timeout=REAL_TIMEOUT)()


async def test_runner_with_builtin_checks(server_config: ServerConfig) -> None:
    """The runner drives real probes: a gRPC upstream and a failing command."""
    state = HealthState()
    async with trio.open_nursery() as nursery:
        upstream = await nursery.start(HealthServer(config=server_config).serve_tcp, "127.0.0.1", 0)
        runner = CheckRunner(state, [
            Check("upstream", grpc_check(f"127.0.0.1:{upstream.port}"), service="api",
                  timeout=REAL_TIMEOUT),
            Check("cmd", command_check([sys.executable, "-c", "raise SystemExit(3)"]),
                  service="jobs", timeout=REAL_TIMEOUT),
        ])
        await nursery.start(runner.run)
        assert state.snapshot() == {"": NOT_SERVING, "api": SERVING, "jobs": NOT_SERVING}
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------- bad HTTP peers


@pytest.mark.parametrize(("reply", "reason"), [
    (b"SSH-2.0-OpenSSH\r\n\r\n", "bad HTTP response"),
    (b"HTTP/1.1 100 Continue\r\n\r\n" * 17, "too many 1xx responses"),
    # h11 itself reports a close before the response line as a protocol error.
    (b"", "bad HTTP response: .*ConnectionClosed"),
    (b"HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", None),
])
async def test_http_check_judges_what_the_peer_says(reply: bytes, reason: str | None) -> None:
    async with tcp_server(reply) as port:
        probe = http_check(f"http://127.0.0.1:{port}/")
        with trio.fail_after(REAL_TIMEOUT):
            if reason is None:
                await probe()
            else:
                with pytest.raises(CheckFailed, match=reason):
                    await probe()


def test_http_check_rejects_a_bad_status_range() -> None:
    with pytest.raises(ValueError, match="range within 100-599"):
        http_check("http://h/", expect_status=(399, 200))


def test_command_check_rejects_an_empty_argv() -> None:
    with pytest.raises(ValueError, match="non-empty list"):
        command_check([])


async def test_command_check_keeps_only_the_start_of_stderr() -> None:
    noisy = command_check([sys.executable, "-c",
                           "import sys; sys.stderr.write('e' * 100000); raise SystemExit(1)"])
    with trio.fail_after(REAL_TIMEOUT), pytest.raises(CheckFailed) as info:
        await noisy()
    # The reason shows the start of the text, bounded, never the 100 kB.
    assert "status 1: eee" in str(info.value)
    assert len(str(info.value)) < 1100


async def test_https_check_from_a_config_with_and_without_verification() -> None:
    from health.config import parse_config
    from health.sidecar import build_check

    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    async with http_server(200, ssl_context=server_context) as (port, requests):
        url = f"https://localhost:{port}/"
        strict, lax = parse_config(f"""
[check_defaults]
timeout = {REAL_TIMEOUT}

[[services.a.checks]]
type = "http"
url = "{url}"

[[services.a.checks]]
type = "http"
url = "{url}"
tls_no_verify = true
""").checks
        with trio.fail_after(REAL_TIMEOUT):
            # The certificate is signed by a CA nobody trusts: only tls_no_verify passes.
            assert not (await build_check(strict).run_probe()).ok
            assert (await build_check(lax).run_probe()).ok
    assert len(requests) == 1
