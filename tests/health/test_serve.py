"""``python -m health serve`` as a real process: flags, the admin API, grpcio, signals.

Each test starts the server on port 0 (gRPC and admin), reads the ``listening N`` and
``admin N`` lines from its stdout, and talks to it over loopback: HTTP/1.1 with
``http.client`` and gRPC with grpcio, both blocking and so run in worker threads. The process
is killed at teardown if a test left it running; its stderr (the log) goes to a file that
failing assertions quote.
"""

from __future__ import annotations

import functools
import http.client
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest
import trio
from grpc_health.v1 import health_pb2, health_pb2_grpc

RPC_TIMEOUT = 10.0
STEP = 10.0
#: How long a process gets to start (imports included) or to exit; generous for slow CI.
PROCESS_WAIT = 20.0

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
UNKNOWN = health_pb2.HealthCheckResponse.UNKNOWN
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


async def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a blocking call in a worker thread, abandoned if the test is cancelled."""
    return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs),
                                         abandon_on_cancel=True)


@dataclass
class Served:
    """A running ``python -m health serve`` and what it announced."""

    process: trio.Process
    port: int
    admin_port: int | None
    stderr_path: Path
    channels: list[grpc.Channel]

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def channel(self) -> grpc.Channel:
        channel = grpc.insecure_channel(f"127.0.0.1:{self.port}",
                                        options=[("grpc.use_local_subchannel_pool", 1)])
        self.channels.append(channel)
        return channel

    async def wait(self) -> int:
        """Wait (bounded) for the process to exit and return its exit code."""
        with trio.fail_after(PROCESS_WAIT):
            return await self.process.wait()


async def read_announcements(stdout: trio.abc.ReceiveStream, want: set[str]) -> dict[str, int]:
    """Read stdout lines until every ``<word> <port>`` line in ``want`` has been seen."""
    found: dict[str, int] = {}
    buf = b""
    while not want <= found.keys():
        chunk = await stdout.receive_some(4096)
        if not chunk:
            raise AssertionError(f"stdout ended before {sorted(want - found.keys())}: {buf!r}")
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            word, _, value = line.decode().strip().partition(" ")
            if word in want:
                found[word] = int(value)
    return found


@asynccontextmanager
async def serve(tmp_path: Path, *args: str, admin: bool = True,
                until_listening: bool = False) -> AsyncIterator[Served]:
    """Run ``python -m health serve --port 0 [--admin-port 0] *args`` for the block.

    The block starts once every port is announced, or, with ``until_listening``, as soon as
    the ``listening`` line is read.
    """
    stderr_path = tmp_path / "serve-stderr.log"
    cmd = [sys.executable, "-m", "health", "serve", "--port", "0", *args]
    if admin:
        cmd += ["--admin-port", "0"]
    # A local file: opening it cannot block the loop in any way that matters.
    with open(stderr_path, "wb") as stderr:  # noqa: ASYNC230
        process = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE, stderr=stderr)
    served: Served | None = None
    try:
        assert process.stdout is not None
        want = {"listening", "admin"} if admin and not until_listening else {"listening"}
        with trio.fail_after(PROCESS_WAIT):
            ports = await read_announcements(process.stdout, want)
        served = Served(process, ports["listening"], ports.get("admin"), stderr_path, [])
        yield served
    finally:
        with trio.CancelScope(shield=True), trio.fail_after(PROCESS_WAIT):
            if served is not None:
                for channel in served.channels:
                    await in_thread(channel.close)
            if process.returncode is None:
                process.kill()
            await process.wait()
            if process.stdout is not None:
                await process.stdout.aclose()


def _http(port: int, method: str, target: str, body: bytes | None = None,
          conn: http.client.HTTPConnection | None = None) -> tuple[int, Any]:
    own = conn is None
    if conn is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=RPC_TIMEOUT)
    try:
        conn.request(method, target, body=body)
        resp = conn.getresponse()
        data = resp.read()
        assert resp.getheader("content-type") == "application/json"
        return resp.status, json.loads(data)
    finally:
        if own:
            conn.close()


async def admin_request(served: Served, method: str, target: str,
               body: bytes | None = None) -> tuple[int, Any]:
    """One admin request on a fresh connection: (HTTP status, decoded JSON body)."""
    assert served.admin_port is not None
    with trio.fail_after(STEP):
        return await in_thread(_http, served.admin_port, method, target, body)  # type: ignore[no-any-return]


async def check(served: Served, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(served.channel())
    with trio.fail_after(STEP):
        resp = await in_thread(stub.Check, health_pb2.HealthCheckRequest(service=service),
                               timeout=RPC_TIMEOUT)
    return int(resp.status)


async def check_error(served: Served, service: str) -> grpc.StatusCode:
    stub = health_pb2_grpc.HealthStub(served.channel())
    with trio.fail_after(STEP):
        try:
            resp = await in_thread(stub.Check, health_pb2.HealthCheckRequest(service=service),
                                   timeout=RPC_TIMEOUT)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    pytest.fail(f"Check({service!r}) answered {resp}")


def read_to_end(stream: Iterator[Any]) -> tuple[list[int], grpc.StatusCode]:
    """(Thread) read a Watch stream until it ends: statuses and final code."""
    statuses: list[int] = []
    try:
        for resp in stream:
            statuses.append(int(resp.status))
    except grpc.RpcError as exc:
        return statuses, exc.code()
    return statuses, grpc.StatusCode.OK


# ----------------------------------------------------------------------------- admin API


async def test_healthz_status_and_initial_services(
        tmp_path: Path, http2_flags: tuple[str, ...]) -> None:
    async with serve(tmp_path, *http2_flags, "--service", "a=NOT_SERVING",
                     "--service", "b=serving", "--service", "c=0") as served:
        assert await admin_request(served, "GET", "/healthz") == (
            200, {"service": "", "status": "SERVING"})
        assert await admin_request(served, "GET", "/healthz?service=a") == (
            503, {"service": "a", "status": "NOT_SERVING"})
        assert await admin_request(served, "GET", "/healthz?service=c") == (
            503, {"service": "c", "status": "UNKNOWN"})
        assert await admin_request(served, "GET", "/healthz?service=zz") == (
            404, {"service": "zz", "status": "SERVICE_UNKNOWN", "error": "unknown service"})
        assert await admin_request(served, "GET", "/status") == (200, {
            "statuses": {"": "SERVING", "a": "NOT_SERVING", "b": "SERVING", "c": "UNKNOWN"},
            "draining": False,
        })
        assert await check(served, "a") == NOT_SERVING
        assert await check(served, "b") == SERVING
        assert await check(served, "c") == UNKNOWN

        # A UTF-8 name with reserved characters, percent-encoded in the query.
        name = "pkg.Svc/ünï cødé?&=+%#"
        target = "/status?service=" + quote(name, safe="")
        assert await admin_request(served, "PUT", target, b"NOT_SERVING") == (
            200, {"service": name, "status": "NOT_SERVING", "draining": False})
        assert await admin_request(served, "GET", "/healthz?service=" + quote(name, safe="")) == (
            503, {"service": name, "status": "NOT_SERVING"})
        assert await check(served, name) == NOT_SERVING
        assert await check_error(served, "pkg.Svc/") == grpc.StatusCode.NOT_FOUND

        assert await admin_request(served, "POST", "/shutdown") == (202, {"draining": True})
        assert await served.wait() == 0, served.log()
        assert f"(http2={http2_flags[-1]})" in served.log()  # the engine asked for


async def test_put_delete_drain_resume_then_shutdown(
        tmp_path: Path, http2_flags: tuple[str, ...]) -> None:
    async with serve(tmp_path, *http2_flags, "--service", "b=SERVING",
                     "--service", "c=NOT_SERVING") as served:
        assert await check_error(served, "x") == grpc.StatusCode.NOT_FOUND
        assert await admin_request(served, "PUT", "/status?service=x", b"SERVING") == (
            200, {"service": "x", "status": "SERVING", "draining": False})
        assert await check(served, "x") == SERVING

        for bad in (b"MAYBE", b"", b"SERVICE_UNKNOWN", b"SERVING NOW", b"\xff\xfe"):
            status, body = await admin_request(served, "PUT", "/status?service=x", bad)
            assert status == 400, bad
            assert "error" in body
        assert await check(served, "x") == SERVING

        assert await admin_request(served, "DELETE", "/status?service=x") == (
            200, {"service": "x", "removed": True})
        assert await check_error(served, "x") == grpc.StatusCode.NOT_FOUND
        assert (await admin_request(served, "DELETE", "/status?service=x"))[0] == 404

        # Drain: everything NOT_SERVING; a status set meanwhile is remembered for resume.
        assert await admin_request(served, "POST", "/drain") == (200, {"draining": True})
        assert await check(served, "") == NOT_SERVING
        assert await check(served, "b") == NOT_SERVING
        assert await admin_request(served, "PUT", "/status?service=c", b"SERVING") == (
            200, {"service": "c", "status": "SERVING", "draining": True})
        assert await check(served, "c") == NOT_SERVING
        assert await admin_request(served, "GET", "/status") == (200, {
            "statuses": {"": "NOT_SERVING", "b": "NOT_SERVING", "c": "NOT_SERVING"},
            "draining": True,
        })
        assert await admin_request(served, "GET", "/healthz") == (
            503, {"service": "", "status": "NOT_SERVING"})

        assert await admin_request(served, "POST", "/resume") == (200, {"draining": False})
        assert await check(served, "") == SERVING
        assert await check(served, "b") == SERVING
        assert await check(served, "c") == SERVING

        assert await admin_request(served, "POST", "/shutdown") == (202, {"draining": True})
        assert await served.wait() == 0, served.log()


async def test_burst_of_puts_on_one_keep_alive_connection(tmp_path: Path) -> None:
    cycle = ["SERVING", "NOT_SERVING", "UNKNOWN"]
    count = 500

    def burst(port: int) -> tuple[list[tuple[int, Any]], bool, tuple[int, Any]]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=RPC_TIMEOUT)
        try:
            answers = [_http(port, "PUT", "/status?service=burst", cycle[0].encode(), conn)]
            sock = conn.sock
            for i in range(1, count):
                answers.append(_http(port, "PUT", "/status?service=burst",
                                     cycle[i % 3].encode(), conn))
            final = _http(port, "GET", "/healthz?service=burst", None, conn)
            return answers, conn.sock is sock, final
        finally:
            conn.close()

    async with serve(tmp_path) as served:
        with trio.fail_after(STEP * 3):
            answers, same_socket, final = await in_thread(burst, served.admin_port)
        assert [a[0] for a in answers] == [200] * count
        assert [a[1]["status"] for a in answers] == [cycle[i % 3] for i in range(count)]
        assert same_socket, "the connection was not kept alive"
        last = cycle[(count - 1) % 3]
        assert final == (503, {"service": "burst", "status": last})
        assert last == "NOT_SERVING"
        assert await check(served, "burst") == NOT_SERVING


# ----------------------------------------------------------------------------- signals


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_drains_watchers_and_exits_zero(tmp_path: Path,
                                                     signum: signal.Signals,
                                                     http2_flags: tuple[str, ...]) -> None:
    async with serve(tmp_path, *http2_flags, "--grace", "5", "--service", "a=SERVING") as served:
        channel = served.channel()
        stub = health_pb2_grpc.HealthStub(channel)
        streams = [stub.Watch(health_pb2.HealthCheckRequest(service=name), timeout=30)
                   for name in ("", "a")]
        with trio.fail_after(STEP):
            firsts = [int((await in_thread(next, s)).status) for s in streams]
        assert firsts == [SERVING, SERVING]

        results: list[tuple[list[int], grpc.StatusCode]] = []

        async def reader(stream: Iterator[Any]) -> None:
            results.append(await in_thread(read_to_end, stream))

        async with trio.open_nursery() as nursery:
            for stream in streams:
                nursery.start_soon(reader, stream)
            served.process.send_signal(signum)
            code = await served.wait()
        assert code == 0, served.log()
        assert results == [([NOT_SERVING], grpc.StatusCode.UNAVAILABLE)] * 2
        assert f"received {signum.name}: draining" in served.log()


async def test_sigterm_right_after_the_listening_line_still_drains(tmp_path: Path) -> None:
    # A supervisor may signal as soon as it reads the readiness line; the default SIGTERM
    # action must not be in force by then. (The admin port is still starting at that point,
    # which is where a late signal handler used to leave a window; a few rounds catch it.)
    for _ in range(3):
        async with serve(tmp_path, until_listening=True) as served:
            served.process.send_signal(signal.SIGTERM)
            assert await served.wait() == 0, served.log()
            assert "received SIGTERM: draining" in served.log()


async def test_second_signal_stops_a_drain_at_once(
        tmp_path: Path, http2_flags: tuple[str, ...]) -> None:
    # A call whose request never completes holds the drain for the whole grace period (60 s);
    # the second SIGTERM must end the process without waiting for it.
    async with serve(tmp_path, *http2_flags, "--grace", "60", admin=False) as served:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.send_headers(1, [(":method", "POST"), (":scheme", "http"),
                              (":path", "/grpc.health.v1.Health/Check"),
                              (":authority", "localhost"), ("te", "trailers"),
                              ("content-type", "application/grpc")])
        stream = await trio.open_tcp_stream("127.0.0.1", served.port)
        try:
            await stream.send_all(conn.data_to_send())
            with trio.fail_after(STEP):
                await stream.receive_some(4096)  # the server's SETTINGS: it is being served
            served.process.send_signal(signal.SIGTERM)
            # The drain's GOAWAY arrives; the open call keeps the process in its grace period.
            with trio.fail_after(STEP):
                goaway = False
                while not goaway:
                    data = await stream.receive_some(4096)
                    assert data, "the server closed the connection instead of draining"
                    try:
                        events = conn.receive_data(data)
                    except h2.exceptions.ProtocolError:
                        # h2 takes no frame after a GOAWAY; the drain's PING follows it.
                        events = [h2.events.ConnectionTerminated()]
                    goaway = any(isinstance(e, h2.events.ConnectionTerminated) for e in events)
            assert served.process.returncode is None
            served.process.send_signal(signal.SIGTERM)
            assert await served.wait() == 0, served.log()
            assert "second signal: stopping now" in served.log()
        finally:
            await stream.aclose()


# ----------------------------------------------------------------------------- flags


@pytest.mark.parametrize(("args", "message"), [
    (["--service", "nonsense"], "expected NAME=STATUS, got 'nonsense'"),
    (["--service", "a=SERVICE_UNKNOWN"], "SERVICE_UNKNOWN cannot be set"),
    (["--service", "a=MAYBE"], "not a serving status name"),
    (["--port", "70000"], "port out of range: 70000"),
    (["--grace", "-1"], "must be a number >= 0"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
async def test_bad_flags_exit_2_with_a_message(args: list[str], message: str) -> None:
    with trio.fail_after(PROCESS_WAIT):
        result = await trio.run_process(
            [sys.executable, "-m", "health", "serve", *args],
            capture_stdout=True, capture_stderr=True, check=False)
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    # One line, starting with the program the user ran, pointing at the help.
    assert stderr.count("\n") == 1, stderr
    assert stderr.startswith("python -m health serve: error: ")
    assert stderr.endswith("(see python -m health serve --help)\n")
    assert message in stderr
    assert "SERVICE_UNKNOWN," not in stderr  # never offered where it is refused
    assert result.stdout == b""


# ------------------------------------------------------- in process: no subprocess


def test_main_usage_and_unknown_commands(capsys: pytest.CaptureFixture[str]) -> None:
    from health.__main__ import main

    assert main([]) == 1
    assert main(["--help"]) == 0
    assert "serve" in capsys.readouterr().out
    assert main(["frobnicate"]) == 1
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["--port", "http"], "not a port number: 'http'"),
    (["--port", "70000"], "port out of range: 70000"),
    (["--grace", "soon"], "not a number: 'soon'"),
    (["--grace", "-1"], "must be a number >= 0"),
    (["--metrics"], "--metrics needs --admin-port"),
    (["--tls-key", "k.pem"], "TLS needs --tls-cert"),
    (["--tls-cert", "c.pem", "--unix", "x.sock"], "TLS is for TCP"),
])
def test_flag_mistakes_are_one_line(capsys: pytest.CaptureFixture[str], argv: list[str],
                                    message: str) -> None:
    from health.__main__ import serve_main

    with pytest.raises(SystemExit) as info:
        serve_main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_config_and_tls_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from health.__main__ import serve_main

    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nport = 'x'\n")
    assert serve_main(["--config", str(bad)]) == 2
    assert f"error: {bad}:2: server.port: must be an integer" in capsys.readouterr().err
    (tmp_path / "cert.pem").write_text("not a certificate")
    assert serve_main(["--tls-cert", str(tmp_path / "cert.pem")]) == 2
    assert "python -m health serve: error: " in capsys.readouterr().err


def test_flags_override_the_file(tmp_path: Path) -> None:
    import argparse

    from health.__main__ import _config_from_args, _serve_parser
    from health.config import load_config

    path = tmp_path / "health.toml"
    path.write_text('[server]\nport = 1234\ngrace = 2\n[services.a]\nstatus = "SERVING"\n')
    base = load_config(path)
    parser = _serve_parser()
    parser.set_defaults(**base.arg_defaults())
    args: argparse.Namespace = parser.parse_args(["--grace", "7", "--service", "a=NOT_SERVING"])
    config = _config_from_args(args, base)
    assert (config.port, config.grace, config.tls) == (1234, 7.0, None)
    assert config.initial_statuses()["a"] == health_pb2.HealthCheckResponse.NOT_SERVING


def test_the_file_sets_the_flag_defaults(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from health.__main__ import serve_main

    path = tmp_path / "health.toml"
    # A valid file whose values become the defaults; a flag then contradicts it.
    path.write_text('[server]\nunix = "never-used.sock"\n')
    with pytest.raises(SystemExit) as info:
        serve_main(["--config", str(path), "--tls-cert", "c.pem"])
    assert info.value.code == 2
    assert "TLS is for TCP" in capsys.readouterr().err
