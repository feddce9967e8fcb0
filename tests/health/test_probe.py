"""Tests of the grpc_health_probe drop-in: flag parsing, validation, messages and exit codes.

Exit codes are checked end to end: ``health.probe.main`` runs in a worker thread (it calls
``trio.run`` itself) against grpcio's health server in a subprocess, against the project's own
servers on loopback, and against ports where nothing (or nothing useful) listens. ``-watch`` is
run as a real subprocess and stopped with SIGINT, as a person would.
"""

from __future__ import annotations

import functools
import io
import json
import re
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from health._health_pb2 import HealthCheckRequest, HealthCheckResponse
from health.client import CHECK_PATH
from health.probe import (
    EXIT_CONNECTION_FAILURE,
    EXIT_INVALID_ARGUMENTS,
    EXIT_RPC_FAILURE,
    EXIT_SERVING,
    EXIT_UNHEALTHY,
    UsageError,
    dial_address,
    format_duration,
    main,
    parse_args,
    parse_duration,
)
from health.service import HealthServer
from health.status import ServingStatus
from tests.grpcio_health_server import SLOW_SERVICE, GrpcioHealthServer
from wire import RpcError, Server, ServerCall, ServerConfig, StatusCode, unary_unary
from wire.tls import server_context


@dataclass
class Run:
    code: int
    out: str
    err: str


def run_probe(*argv: str) -> Run:
    """Run the probe in this thread, capturing its output."""
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return Run(code, out.getvalue(), err.getvalue())


async def probe(*argv: str) -> Run:
    """Run the probe in a worker thread, so servers in this Trio run keep serving."""
    # Every probe run here ends by itself within seconds; a hang fails the test instead.
    with trio.fail_after(60):
        return await trio.to_thread.run_sync(functools.partial(run_probe, *argv),
                                             abandon_on_cancel=True)


@pytest.fixture(scope="module")
def grpcio_server() -> Iterator[GrpcioHealthServer]:
    with GrpcioHealthServer.start() as server:
        server.command("set probe.down NOT_SERVING")
        server.command("set probe.up SERVING")
        yield server


@pytest.fixture
def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# ---------------------------------------------------------------------- durations


@pytest.mark.parametrize(("text", "seconds"), [
    ("1s", 1.0), ("500ms", 0.5), ("1m30s", 90.0), ("1.5h", 5400.0), ("250us", 250e-6),
    ("250\u00b5s", 250e-6), ("10ns", 10e-9), ("0", 0.0), ("-2s", -2.0), ("+3s", 3.0),
    ("2h45m", 9900.0), (".5s", 0.5),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "s", "1x", "1.s2", "--1s", "1 s", "."])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(("seconds", "text"), [
    (1.0, "1s"), (0.5, "500ms"), (90.0, "1m30s"), (3600.0, "1h0m0s"), (1.5, "1.5s"),
    (0.0015, "1.5ms"), (2e-6, "2\u00b5s"), (5e-9, "5ns"), (0.0, "0s"), (-1.0, "-1s"),
])
def test_format_duration_like_go(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# ---------------------------------------------------------------------- flags


def test_go_and_gnu_flag_spellings() -> None:
    opts = parse_args(["--addr=localhost:5000", "-service", "a", "--service=b",
                       "-connect-timeout=250ms", "--rpc-timeout", "2s", "-tls=true",
                       "-tls-no-verify", "-gzip=false", "-v", "-rpc-header", "x-a:  b",
                       "-rpc-header=x-c:d", "-user-agent", "kube-probe/1.30",
                       "-authority", ":5000", "-output=json", "-wait", "1m"])
    assert opts.addr == "localhost:5000"
    assert opts.services == ["a", "b"]
    assert opts.connect_timeout == 0.25
    assert opts.rpc_timeout == 2.0
    assert opts.tls
    assert opts.tls_no_verify
    assert not opts.gzip
    assert opts.verbose
    assert opts.rpc_headers == [("x-a", "b"), ("x-c", "d")]
    assert opts.user_agent == "kube-probe/1.30"
    assert opts.authority == ":5000"
    assert opts.output == "json"
    assert opts.wait == 60.0


def test_defaults_match_grpc_health_probe() -> None:
    opts = parse_args(["-addr", "h:1"])
    assert opts.services == [""]
    assert opts.connect_timeout == 1.0
    assert opts.rpc_timeout == 1.0
    assert opts.user_agent == "grpc_health_probe"
    assert not opts.tls
    assert opts.output == "text"
    assert opts.wait == 0


@pytest.mark.parametrize(("argv", "message"), [
    ([], "-addr not specified"),
    (["-addr", "h:1", "-connect-timeout", "0s"], "-connect-timeout must be greater than zero"),
    (["-addr", "h:1", "-rpc-timeout", "-1s"], "-rpc-timeout must be greater than zero"),
    (["-addr", "h:1", "-rpc-timeout", "10"], "missing unit"),
    (["-addr", "h:1", "-tls-no-verify"], "specified -tls-no-verify without specifying -tls"),
    (["-addr", "h:1", "-tls-ca-cert", "x"], "specified -tls-ca-cert without specifying -tls"),
    (["-addr", "h:1", "-tls-client-cert", "x"],
     "specified -tls-client-cert without specifying -tls"),
    (["-addr", "h:1", "-tls-server-name", "x"],
     "specified -tls-server-name without specifying -tls"),
    (["-addr", "h:1", "-tls", "-tls-client-cert", "c"],
     "specified -tls-client-cert without specifying -tls-client-key"),
    (["-addr", "h:1", "-tls", "-tls-client-key", "k"],
     "specified -tls-client-key without specifying -tls-client-cert"),
    (["-addr", "h:1", "-tls", "-tls-no-verify", "-tls-ca-cert", "c"],
     "cannot specify -tls-ca-cert with -tls-no-verify"),
    (["-addr", "h:1", "-tls", "-tls-no-verify", "-tls-server-name", "n"],
     "cannot specify -tls-server-name with -tls-no-verify"),
    (["-addr", "h:1", "-bogus"], "flag provided but not defined: -bogus"),
    (["-addr"], "flag needs an argument: -addr"),
    (["-addr", "h:1", "---addr"], "bad flag syntax: ---addr"),
    (["-addr", "h:1", "-=x"], "bad flag syntax: -=x"),
    (["-addr", "h:1", "-tls=maybe"], "invalid boolean value"),
    (["-addr", "h:1", "-rpc-header", "novalue"], "invalid RPC header"),
    (["-addr", "h:1", "-rpc-header", "Bad Key: v"], "invalid RPC header"),
    (["-addr", "h:1", "-output", "xml"], "-output must be text or json"),
    (["-addr", "h:"], "invalid -addr"),
    (["-addr", "h:1", "-watch", "-list"], "cannot specify -watch with -list"),
    (["-addr", "h:1", "-list", "-service", "a"], "cannot specify -service with -list"),
    (["-addr", "h:1", "-service=", "-list"], "cannot specify -service with -list"),
])
def test_bad_arguments_exit_1(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        parse_args(argv)
    result = run_probe(*argv)
    assert result.code == EXIT_INVALID_ARGUMENTS
    assert result.err.startswith("error: ")
    assert message in result.err


@pytest.mark.parametrize("flag", ["-h", "--h", "-help", "--help"])
def test_help_goes_to_stderr_and_exits_1(flag: str) -> None:
    # Go's flag package prints the usage on stderr; grpc_health_probe then exits 1.
    help_run = run_probe(flag, "-addr", "h:1")
    assert help_run.code == EXIT_INVALID_ARGUMENTS
    assert help_run.out == ""
    assert help_run.err.startswith("usage: grpc_health_probe")
    assert "-addr" in help_run.err


def test_version_exits_0() -> None:
    version_run = run_probe("-version")
    assert version_run.code == EXIT_SERVING
    assert "version" in version_run.out


@pytest.mark.parametrize(("argv", "services"), [
    # Go's flag package stops at the first non-flag argument; the rest is ignored.
    (["-addr", "h:1", "-service", "s", "extra"], ["s"]),
    (["-addr", "h:1", "extra", "-service", "ns"], [""]),
    (["-addr", "h:1", "-", "-service", "ns"], [""]),
    (["-addr", "h:1", "--", "-service", "ns"], [""]),
    (["-addr", "h:1", "-tls", "false", "-service", "ns"], [""]),  # -tls takes no separate value
    (["-addr", "h:1", "-service", "-odd-name"], ["-odd-name"]),  # a value may start with "-"
    (["-addr", "h:1", "-list", "x", "-service", "ignored"], [""]),
])
def test_parsing_stops_at_the_first_non_flag(argv: list[str], services: list[str]) -> None:
    opts = parse_args(argv)
    assert opts.services == services
    assert opts.addr == "h:1"


async def test_extra_arguments_are_ignored_end_to_end(server_config: ServerConfig) -> None:
    health = HealthServer(config=server_config)
    health.set("s", ServingStatus.SERVING)
    health.set("ns", ServingStatus.NOT_SERVING)
    async with trio.open_nursery() as nursery:
        await nursery.start(health.serve_tcp, "127.0.0.1", 0)
        addr = f"127.0.0.1:{health.port}"
        checks_s = await probe("-addr", addr, "-service", "s", "extra")
        checks_empty = await probe("-addr", addr, "extra", "-service", "ns")
        await health.shutdown(0)
    assert (checks_s.code, checks_s.err) == (EXIT_SERVING, "status: SERVING\n")
    assert (checks_empty.code, checks_empty.err) == (EXIT_SERVING, "status: SERVING\n")


@pytest.mark.parametrize(("addr", "dialed"), [
    ("127.0.0.1", "127.0.0.1:443"), ("localhost", "localhost:443"), ("::1", "[::1]:443"),
    ("[::1]", "[::1]:443"), ("dns:///example.test", "dns:///example.test:443"),
    ("127.0.0.1:50051", "127.0.0.1:50051"), ("[::1]:5", "[::1]:5"), (":5", ":5"),
    ("unix:/run/x.sock", "unix:/run/x.sock"), ("h:", "h:"),
])
def test_dial_address_defaults_to_port_443_like_grpc_go(addr: str, dialed: str) -> None:
    assert dial_address(addr) == dialed


async def test_address_without_port_dials_443_and_times_out() -> None:
    # grpc-go dials 127.0.0.1:443; nothing listens there, so the real probe keeps trying
    # until the connect timeout and exits 2.
    result = await probe("-addr", "127.0.0.1", "-connect-timeout", "300ms")
    assert result.code == EXIT_CONNECTION_FAILURE
    assert result.err.startswith('timeout: failed to connect service "127.0.0.1" within 300ms')


def test_missing_tls_files_exit_1(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    result = run_probe("-addr", "127.0.0.1:1", "-tls", "-tls-ca-cert", missing)
    assert result.code == EXIT_INVALID_ARGUMENTS
    assert "failed to initialize tls credentials" in result.err
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    result = run_probe("-addr", "127.0.0.1:1", "-tls", "-tls-ca-cert", str(garbage))
    assert result.code == EXIT_INVALID_ARGUMENTS
    assert "no root CA certs parsed" in result.err
    result = run_probe("-addr", "127.0.0.1:1", "-tls", "-tls-client-cert", missing,
                       "-tls-client-key", missing)
    assert result.code == EXIT_INVALID_ARGUMENTS
    assert "client cert/key" in result.err


# ---------------------------------------------------------------------- exit codes vs grpcio


async def test_serving_exits_0(grpcio_server: GrpcioHealthServer) -> None:
    result = await probe("-addr", grpcio_server.address)
    assert (result.code, result.err) == (EXIT_SERVING, "status: SERVING\n")


async def test_not_serving_exits_4(grpcio_server: GrpcioHealthServer) -> None:
    result = await probe("-addr", grpcio_server.address, "-service", "probe.down")
    assert result.code == EXIT_UNHEALTHY
    assert result.err == 'service unhealthy (responded with "NOT_SERVING")\n'


async def test_unknown_service_exits_3(grpcio_server: GrpcioHealthServer) -> None:
    result = await probe("-addr", grpcio_server.address, "-service", "probe.unknown")
    assert result.code == EXIT_RPC_FAILURE
    assert result.err.startswith("error: health rpc failed: rpc error: code = NotFound")


async def test_rpc_deadline_exits_3(grpcio_server: GrpcioHealthServer) -> None:
    result = await probe("-addr", grpcio_server.address, "-service", SLOW_SERVICE,
                         "-rpc-timeout", "200ms")
    assert result.code == EXIT_RPC_FAILURE
    assert result.err == "timeout: health rpc did not complete within 200ms\n"


async def test_list_unimplemented_by_grpcio_exits_3(grpcio_server: GrpcioHealthServer) -> None:
    result = await probe("-addr", grpcio_server.address, "-list")
    assert result.code in (EXIT_RPC_FAILURE, EXIT_UNHEALTHY, EXIT_SERVING)
    if result.code == EXIT_RPC_FAILURE:
        # grpcio-health-checking releases without List answer Check.
        assert result.err.startswith("error: this server answers Check but does not "
                                     "implement List")


async def test_gzip_headers_user_agent_verbose(grpcio_server: GrpcioHealthServer) -> None:
    result = await probe("-addr", grpcio_server.address, "-gzip", "-v",
                         "-rpc-header", "x-token: abc", "-rpc-header", "x-bin-bin: raw",
                         "-user-agent", "kube-probe/1.30", "-authority", "health.test")
    assert result.code == EXIT_SERVING
    assert "parsed options:" in result.err
    assert "connection established" in result.err
    assert result.err.endswith("status: SERVING\n")


async def test_several_services_report_the_worst(grpcio_server: GrpcioHealthServer) -> None:
    result = await probe("-addr", grpcio_server.address, "-service", "probe.up",
                         "-service", "probe.down")
    assert result.code == EXIT_UNHEALTHY
    assert 'service "probe.up": status: SERVING' in result.err
    result = await probe("-addr", grpcio_server.address, "-service", "probe.down",
                         "-service", "probe.unknown", "-service", "probe.up")
    assert result.code == EXIT_RPC_FAILURE  # an RPC failure is worse than NOT_SERVING


async def test_json_output(grpcio_server: GrpcioHealthServer) -> None:
    result = await probe("-addr", grpcio_server.address, "-output", "json",
                         "-service", "probe.up", "-service", "probe.down")
    assert result.code == EXIT_UNHEALTHY
    assert result.err == ""
    doc = json.loads(result.out)
    assert doc["exit_code"] == EXIT_UNHEALTHY
    assert [(s["service"], s["status"], s["exit_code"]) for s in doc["services"]] == [
        ("probe.up", "SERVING", 0), ("probe.down", "NOT_SERVING", 4)]


async def test_wait_retries_until_serving(server_config: ServerConfig) -> None:
    # A Check that answers NOT_FOUND until released: the probe must have been refused at
    # least twice (so it did retry) before the status it finally reports.
    calls: list[str] = []
    refused_twice = trio.Event()
    released = trio.Event()

    def check(request: bytes, call: ServerCall) -> bytes:
        calls.append(HealthCheckRequest.FromString(request).service)
        if len(calls) >= 2:
            refused_twice.set()
        if not released.is_set():
            raise RpcError(StatusCode.NOT_FOUND, "unknown service")
        return HealthCheckResponse(status=ServingStatus.SERVING).SerializeToString()

    server = Server([unary_unary(CHECK_PATH, check, bytes, bytes)], config=server_config)
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
        results: list[Run] = []
        done = trio.Event()

        async def run() -> None:
            results.append(await probe("-addr", f"127.0.0.1:{port}", "-service", "probe.later",
                                       "-wait", "20s", "-v"))
            done.set()

        nursery.start_soon(run)
        with trio.fail_after(20):
            await refused_twice.wait()
        released.set()
        with trio.fail_after(20):
            await done.wait()
        await server.shutdown(0)
    assert results[0].code == EXIT_SERVING
    assert "attempt 1 failed (exit code 3); retrying" in results[0].err
    assert "attempt 2 failed (exit code 3); retrying" in results[0].err
    assert results[0].err.endswith("status: SERVING\n")
    assert len(calls) >= 3
    assert set(calls) == {"probe.later"}


async def test_wait_gives_up_with_the_last_outcome(free_port: int) -> None:
    result = await probe("-addr", f"127.0.0.1:{free_port}", "-wait", "300ms",
                         "-connect-timeout", "100ms")
    assert result.code == EXIT_CONNECTION_FAILURE
    assert result.err.count("failed to connect") == 1


# ---------------------------------------------------------------------- connection failures


async def test_nothing_listening_retries_until_the_connect_timeout(free_port: int) -> None:
    result = await probe("-addr", f"127.0.0.1:{free_port}", "-connect-timeout", "300ms", "-v")
    assert result.code == EXIT_CONNECTION_FAILURE
    assert result.err.count("connection refused; retrying") >= 2
    assert result.err.endswith(f'timeout: failed to connect service "127.0.0.1:{free_port}" '
                               "within 300ms (last attempt: connection refused)\n")


async def test_a_server_that_starts_within_the_connect_timeout_is_reached(
        free_port: int, server_config: ServerConfig) -> None:
    health = HealthServer(config=server_config)
    async with trio.open_nursery() as nursery:
        results: list[Run] = []
        done = trio.Event()

        async def run() -> None:
            results.append(await probe("-addr", f"127.0.0.1:{free_port}",
                                       "-connect-timeout", "20s", "-v"))
            done.set()

        nursery.start_soon(run)
        await trio.sleep(0.3)  # refused meanwhile (the test checks it did retry)
        await nursery.start(health.serve_tcp, "127.0.0.1", free_port)
        with trio.fail_after(20):
            await done.wait()
        await health.shutdown(0)
    assert results[0].code == EXIT_SERVING
    assert "connection refused; retrying" in results[0].err
    assert results[0].err.endswith("status: SERVING\n")


async def test_connect_timeout_exits_2() -> None:
    # A socket that completes TCP handshakes (backlog) but never speaks HTTP/2.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        port = sock.getsockname()[1]
        result = await probe("-addr", f"127.0.0.1:{port}", "-connect-timeout", "250ms")
    assert result.code == EXIT_CONNECTION_FAILURE
    assert result.err == (f'timeout: failed to connect service "127.0.0.1:{port}" '
                          "within 250ms\n")


async def test_unix_socket_address(tmp_path: Path, server_config: ServerConfig) -> None:
    health = HealthServer(config=server_config)
    path = str(tmp_path / "health.sock")
    async with trio.open_nursery() as nursery:
        await nursery.start(health.serve_unix, path)
        result = await probe("-addr", f"unix:{path}")
        await health.shutdown(0)
    assert result.code == EXIT_SERVING


# ---------------------------------------------------------------------- against our servers


async def test_server_without_health_service_exits_3(server_config: ServerConfig) -> None:
    server = Server(config=server_config)
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
        result = await probe("-addr", f"127.0.0.1:{port}")
        await server.shutdown(0)
    assert result.code == EXIT_RPC_FAILURE
    assert result.err.startswith("error: this server does not implement the grpc health "
                                 "protocol (grpc.health.v1.Health)")


async def test_list_against_our_server(server_config: ServerConfig) -> None:
    health = HealthServer(config=server_config)
    health.set("a", ServingStatus.SERVING)
    async with trio.open_nursery() as nursery:
        await nursery.start(health.serve_tcp, "127.0.0.1", 0)
        ok = await probe("-addr", f"127.0.0.1:{health.port}", "-list")
        health.set("b", ServingStatus.NOT_SERVING)
        bad = await probe("-addr", f"127.0.0.1:{health.port}", "-list", "-output", "json")
        await health.shutdown(0)
    assert ok.code == EXIT_SERVING
    assert ok.err == '"": SERVING\n"a": SERVING\n'
    assert bad.code == EXIT_UNHEALTHY
    assert json.loads(bad.out)["statuses"] == {"": "SERVING", "a": "SERVING",
                                               "b": "NOT_SERVING"}


async def test_watch_ends_with_exit_3_when_server_shuts_down(server_config: ServerConfig) -> None:
    health = HealthServer(config=server_config)
    async with trio.open_nursery() as nursery:
        await nursery.start(health.serve_tcp, "127.0.0.1", 0)
        results: list[Run] = []

        async def run() -> None:
            results.append(await probe("-addr", f"127.0.0.1:{health.port}", "-watch"))

        nursery.start_soon(run)
        for _ in range(500):  # bounded: about 5 s for the probe to start watching
            if health.state.watcher_count:
                break
            await trio.sleep(0.01)
        assert health.state.watcher_count == 1
        await health.shutdown(1)
    assert results[0].code == EXIT_RPC_FAILURE
    lines = results[0].err.splitlines()
    assert lines[:2] == ["status: SERVING", "status: NOT_SERVING"]


async def test_watch_subprocess_until_interrupted(grpcio_server: GrpcioHealthServer) -> None:
    await grpcio_server.set("probe.watch", "SERVING")
    code = "import sys; from health.probe import main; sys.exit(main())"
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", code, "-addr", grpcio_server.address, "-service", "probe.watch",
         "-watch"], stderr=subprocess.PIPE)
    assert proc.stderr is not None
    buffer = b""

    async def next_line() -> str:
        nonlocal buffer
        with trio.fail_after(20):
            while b"\n" not in buffer:  # bounded by the fail_after above
                chunk = await proc.stderr.receive_some(4096)  # type: ignore[union-attr]
                if not chunk:
                    break
                buffer += chunk
        line, _, buffer = buffer.partition(b"\n")
        return line.decode()

    try:
        assert await next_line() == "status: SERVING"
        await grpcio_server.set("probe.watch", "NOT_SERVING")
        assert await next_line() == "status: NOT_SERVING"
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(20):
            returncode = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proc.stderr.aclose()
    assert returncode == EXIT_UNHEALTHY  # interrupted while NOT_SERVING


async def test_cli_exit_code_through_a_real_process() -> None:
    code = "import sys; from health.probe import main; sys.exit(main())"
    result = await trio.run_process([sys.executable, "-c", code, "-tls-no-verify"],
                                    capture_stderr=True, check=False)
    assert result.returncode == EXIT_INVALID_ARGUMENTS
    assert b"error: -addr not specified" in result.stderr


# ---------------------------------------------------------------------- TLS for real


@dataclass
class TLSFiles:
    ca: str
    cert: str
    key: str
    client_cert: str
    client_key: str


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    client_cert = ca.issue_cert("client.test")
    base = tmp_path_factory.mktemp("tls")
    files = TLSFiles(ca=str(base / "ca.pem"), cert=str(base / "cert.pem"),
                     key=str(base / "key.pem"), client_cert=str(base / "client.pem"),
                     client_key=str(base / "client-key.pem"))
    ca.cert_pem.write_to_path(files.ca)
    server_cert.cert_chain_pems[0].write_to_path(files.cert)
    server_cert.private_key_pem.write_to_path(files.key)
    client_cert.cert_chain_pems[0].write_to_path(files.client_cert)
    client_cert.private_key_pem.write_to_path(files.client_key)
    return files


@pytest.fixture(scope="module")
def grpcio_tls_server(tls_files: TLSFiles) -> Iterator[GrpcioHealthServer]:
    with GrpcioHealthServer.start("--tls", tls_files.cert, tls_files.key) as server:
        yield server


async def test_tls_with_ca_exits_0(grpcio_tls_server: GrpcioHealthServer,
                                   tls_files: TLSFiles) -> None:
    result = await probe("-addr", grpcio_tls_server.address, "-tls",
                         "-tls-ca-cert", tls_files.ca)
    assert (result.code, result.err) == (EXIT_SERVING, "status: SERVING\n")
    with_client_cert = await probe(
        "-addr", grpcio_tls_server.address, "-tls", "-tls-ca-cert", tls_files.ca,
        "-tls-client-cert", tls_files.client_cert, "-tls-client-key", tls_files.client_key)
    assert with_client_cert.code == EXIT_SERVING


async def test_tls_no_verify_exits_0(grpcio_tls_server: GrpcioHealthServer) -> None:
    result = await probe("-addr", grpcio_tls_server.address, "-tls", "-tls-no-verify")
    assert result.code == EXIT_SERVING


async def test_tls_untrusted_or_wrong_name_exits_2(grpcio_tls_server: GrpcioHealthServer,
                                                   tls_files: TLSFiles) -> None:
    untrusted = await probe("-addr", grpcio_tls_server.address, "-tls")
    assert untrusted.code == EXIT_CONNECTION_FAILURE
    wrong_name = await probe("-addr", grpcio_tls_server.address, "-tls", "-tls-ca-cert",
                             tls_files.ca, "-tls-server-name", "other.test")
    assert wrong_name.code == EXIT_CONNECTION_FAILURE
    assert "TLS" in wrong_name.err


async def test_plaintext_probe_against_tls_server_exits_2_with_a_hint(
        grpcio_tls_server: GrpcioHealthServer) -> None:
    result = await probe("-addr", grpcio_tls_server.address, "-connect-timeout", "500ms")
    assert result.code == EXIT_CONNECTION_FAILURE
    assert result.err.startswith("error: failed to connect service at")
    assert result.err.endswith("(is it a TLS port? try -tls)\n")


@pytest.fixture
async def mtls_server(tls_files: TLSFiles, server_config: ServerConfig) -> AsyncIterator[str]:
    """Our server on 127.0.0.1, requiring a client certificate signed by the test CA."""
    health = HealthServer(config=server_config)
    ctx = server_context(tls_files.cert, tls_files.key, client_ca=tls_files.ca,
                         require_client_cert=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(health.serve_tcp, "127.0.0.1", 0,
                                              ssl_context=ctx))
        yield f"127.0.0.1:{health.port}"
        await health.shutdown(0)


async def test_plaintext_against_our_tls_server_hints_tls(mtls_server: str) -> None:
    result = await probe("-addr", mtls_server)
    assert result.code == EXIT_CONNECTION_FAILURE
    assert result.err.endswith("(is it a TLS port? try -tls)\n")
    as_json = await probe("-addr", mtls_server, "-output", "json")
    assert json.loads(as_json.out)["hint"] == "is it a TLS port? try -tls"


async def test_refused_client_certificate_hints_so(mtls_server: str, tls_files: TLSFiles,
                                                    tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    stranger = trustme.CA().issue_cert("stranger.test")
    cert, key = tmp_path / "stranger.pem", tmp_path / "stranger-key.pem"
    stranger.cert_chain_pems[0].write_to_path(cert)
    stranger.private_key_pem.write_to_path(key)
    wrong = await probe("-addr", mtls_server, "-tls", "-tls-ca-cert", tls_files.ca,
                        "-tls-client-cert", str(cert), "-tls-client-key", str(key))
    assert wrong.code == EXIT_CONNECTION_FAILURE
    assert wrong.err.endswith("(the server refused the client certificate)\n")
    none = await probe("-addr", mtls_server, "-tls", "-tls-ca-cert", tls_files.ca)
    assert none.code == EXIT_CONNECTION_FAILURE
    assert "the server refused the client certificate: it may require one" in none.err
    good = await probe("-addr", mtls_server, "-tls", "-tls-ca-cert", tls_files.ca,
                       "-tls-client-cert", tls_files.client_cert,
                       "-tls-client-key", tls_files.client_key)
    assert (good.code, good.err) == (EXIT_SERVING, "status: SERVING\n")


async def test_list_against_a_server_with_check_only_says_so(server_config: ServerConfig) -> None:
    def check(request: bytes, call: ServerCall) -> bytes:
        return HealthCheckResponse(status=ServingStatus.SERVING).SerializeToString()

    server = Server([unary_unary(CHECK_PATH, check, bytes, bytes)], config=server_config)
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
        listed = await probe("-addr", f"127.0.0.1:{port}", "-list")
        await server.shutdown(0)
    assert listed.code == EXIT_RPC_FAILURE
    assert listed.err.startswith("error: this server answers Check but does not implement "
                                 "List (grpc.health.v1.Health/List)")


def test_ssl_module_available() -> None:
    assert ssl.HAS_ALPN
