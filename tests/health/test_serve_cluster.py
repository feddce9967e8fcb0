"""``python -m health serve`` in a cluster: shutdown delay, certificate rotation, the admin
listener's flags, HTTP/2 engines, logs (no header values; JSON lines), and startup errors that
are one line naming the flag.

Processes run on 127.0.0.1 with port 0 (see ``test_serve.serve``); TLS files come from
trustme. Waiting on the log is a bounded poll of the process's stderr file.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from health.config import SidecarConfig
from health.sidecar import SidecarProcess, StartupError

from .test_serve import (
    NOT_SERVING,
    PROCESS_WAIT,
    RPC_TIMEOUT,
    SERVING,
    STEP,
    Served,
    check,
    in_thread,
    serve,
)

SIDECAR_MANIFEST = Path(__file__).resolve().parents[2] / "examples" / "kubernetes" / "sidecar.yaml"


async def wait_for_log(served: Served, text: str, count: int = 1) -> str:
    """Poll the process's stderr until ``text`` appears ``count`` times; return the log."""
    with trio.fail_after(PROCESS_WAIT):
        while served.log().count(text) < count:  # noqa: ASYNC110 (a file to poll, no event)
            await trio.sleep(0.05)
    return served.log()


async def run_serve(*args: str, program: str | None = None) -> tuple[int, str, str]:
    """Run ``serve`` to completion: (exit code, stdout, stderr)."""
    cmd = [program] if program else [sys.executable, "-m", "health"]
    with trio.fail_after(PROCESS_WAIT):
        result = await trio.run_process([*cmd, "serve", *args], capture_stdout=True,
                                        capture_stderr=True, check=False)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def _admin(port: int, method: str, target: str, body: bytes | None = None,
           token: str | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=RPC_TIMEOUT)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn.request(method, target, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


# ------------------------------------------------------------------ --shutdown-delay


async def test_shutdown_delay_answers_not_serving_then_drains(tmp_path: Path) -> None:
    async with serve(tmp_path, "--shutdown-delay", "4", "--grace", "1",
                     "--service", "app=SERVING", admin=False) as served:
        assert await check(served, "app") == SERVING
        stub = health_pb2_grpc.HealthStub(served.channel())
        watch = stub.Watch(health_pb2.HealthCheckRequest(service="app"), timeout=60)
        with trio.fail_after(STEP):
            assert int((await in_thread(next, watch)).status) == SERVING
        served.process.send_signal(signal.SIGTERM)
        await wait_for_log(served, "shutdown delay: NOT_SERVING for 4.0 s")
        # Still answering, every service NOT_SERVING; the watcher hears it on its open stream.
        assert await check(served, "app") == NOT_SERVING
        assert await check(served, "") == NOT_SERVING
        with trio.fail_after(STEP):
            assert int((await in_thread(next, watch)).status) == NOT_SERVING
        assert served.process.returncode is None
        assert "graceful shutdown" not in served.log()
        assert await served.wait() == 0, served.log()
        log = served.log()
        assert log.index("shutdown delay") < log.index("graceful shutdown") < log.index("stopped")


async def test_second_signal_during_the_delay_stops_at_once(tmp_path: Path) -> None:
    async with serve(tmp_path, "--shutdown-delay", "600", admin=False) as served:
        served.process.send_signal(signal.SIGTERM)
        await wait_for_log(served, "shutdown delay")
        served.process.send_signal(signal.SIGTERM)
        assert await served.wait() == 0, served.log()
        assert "second signal: stopping now" in served.log()


# ------------------------------------------------------------------ TLS rotation


class Rotation:
    """Two CAs, each with a server certificate; ``install`` copies one to the served paths."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.cas = [trustme.CA(), trustme.CA()]
        self.leaves = [ca.issue_cert("localhost", "127.0.0.1") for ca in self.cas]
        self.cert = folder / "tls.crt"
        self.key = folder / "tls.key"
        self.ca_files = []
        for i, ca in enumerate(self.cas):
            path = folder / f"ca{i}.pem"
            ca.cert_pem.write_to_path(str(path))
            self.ca_files.append(str(path))

    def install(self, index: int) -> None:
        """Write certificate and key ``index`` over the served files (as a renewal does)."""
        self.leaves[index].cert_chain_pems[0].write_to_path(str(self.cert))
        self.leaves[index].private_key_pem.write_to_path(str(self.key))

    def served_by(self, port: int) -> int | None:
        """(Thread) Which CA signed the certificate a new connection gets; None if neither."""
        for index, ca_file in enumerate(self.ca_files):
            ctx = ssl.create_default_context(cafile=ca_file)
            ctx.set_alpn_protocols(["h2"])
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=RPC_TIMEOUT) as raw, \
                        ctx.wrap_socket(raw, server_hostname="localhost"):
                    return index
            except ssl.SSLCertVerificationError:
                continue
        return None


async def _probe(port: int, ca_file: str) -> int:
    cmd = [sys.executable, "-m", "health", "probe", f"-addr=localhost:{port}", "-tls",
           f"-tls-ca-cert={ca_file}"]
    with trio.fail_after(PROCESS_WAIT):
        result = await trio.run_process(cmd, check=False, capture_stdout=True,
                                        capture_stderr=True)
    return result.returncode


async def test_sighup_reloads_the_rotated_certificate(tmp_path: Path) -> None:
    pki = Rotation(tmp_path)
    pki.install(0)
    async with serve(tmp_path, "--tls-cert", str(pki.cert), "--tls-key", str(pki.key),
                     admin=False) as served:
        assert await in_thread(pki.served_by, served.port) == 0
        # An open grpcio channel, made with the old certificate, keeps working.
        ca_pem = pki.cas[0].cert_pem.bytes()
        creds = grpc.ssl_channel_credentials(ca_pem)
        channel = grpc.secure_channel(f"localhost:{served.port}", creds)
        served.channels.append(channel)
        stub = health_pb2_grpc.HealthStub(channel)
        assert (await in_thread(stub.Check, health_pb2.HealthCheckRequest(),
                                timeout=RPC_TIMEOUT)).status == SERVING

        pki.install(1)
        served.process.send_signal(signal.SIGHUP)
        await wait_for_log(served, "received SIGHUP: reloading the TLS files")
        await wait_for_log(served, "TLS certificate reloaded")
        assert await in_thread(pki.served_by, served.port) == 1
        assert await _probe(served.port, pki.ca_files[1]) == 0
        assert await _probe(served.port, pki.ca_files[0]) == 2
        assert (await in_thread(stub.Check, health_pb2.HealthCheckRequest(),
                                timeout=RPC_TIMEOUT)).status == SERVING
        assert served.process.returncode is None  # SIGHUP does not stop the server


async def test_changed_files_are_picked_up_and_a_bad_one_keeps_the_old(tmp_path: Path) -> None:
    pki = Rotation(tmp_path)
    pki.install(0)
    async with serve(tmp_path, "--tls-cert", str(pki.cert), "--tls-key", str(pki.key),
                     admin=False) as served:
        # No signal: the periodic look at the files (and each handshake) notices the change.
        pki.install(1)
        await wait_for_log(served, "TLS certificate reloaded")
        assert await in_thread(pki.served_by, served.port) == 1

        pki.cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
        await wait_for_log(served, "TLS files not reloaded")
        assert await _probe(served.port, pki.ca_files[1]) == 0
        # Several more looks at the files (2 s apart) and connections: still one error.
        for _ in range(3):
            assert await in_thread(pki.served_by, served.port) == 1
            await trio.sleep(1.5)
        log = served.log()
        assert log.count("TLS files not reloaded") == 1, log
        assert "Traceback" not in log
        assert str(pki.cert) in log


# ------------------------------------------------------------------ admin listener


async def test_admin_host_and_token_file(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-t0ken\n")
    async with serve(tmp_path, "--admin-host", "0.0.0.0", "--admin-token-file",
                     str(token)) as served:
        port = served.admin_port
        assert port is not None
        await wait_for_log(served, f"admin API on http://0.0.0.0:{port}")
        put = ("PUT", "/status?service=x", b"SERVING")
        assert await in_thread(_admin, port, *put) == 401
        assert await in_thread(_admin, port, *put, token="wrong") == 403
        assert await in_thread(_admin, port, *put, token="s3cret-t0ken") == 200
        assert await check(served, "x") == SERVING
        assert await in_thread(_admin, port, "GET", "/healthz") == 200
        # Metrics were not asked for: /metrics is a 404 saying how to turn them on.
        assert await in_thread(_admin, port, "GET", "/metrics") == 404


# ------------------------------------------------------------------ HTTP/2 engines


@pytest.mark.parametrize(("flags", "engine"), [
    ((), "h2"), (("--http2", "native"), "native"), (("--http2", "h2"), "h2"),
])
async def test_http2_engines_answer_and_are_logged(tmp_path: Path, flags: tuple[str, ...],
                                                   engine: str) -> None:
    async with serve(tmp_path, *flags, admin=False) as served:
        assert await check(served, "") == SERVING
        await wait_for_log(
            served, f"health server listening on 127.0.0.1:{served.port} (http2={engine})")


async def test_http2_engine_from_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "health.toml"
    config.write_text('[server]\nhttp2 = "native"\n')
    async with serve(tmp_path, "--config", str(config), admin=False) as served:
        assert await check(served, "") == SERVING
        await wait_for_log(served, "(http2=native)")


# ------------------------------------------------------------------ logs


@pytest.mark.parametrize("engine", ["h2", "native"])
async def test_debug_logs_never_show_header_values(tmp_path: Path, engine: str) -> None:
    secret = "Bearer do-not-log-me-0123456789"
    async with serve(tmp_path, "--log-level", "debug", "--http2", engine,
                     admin=False) as served:
        stub = health_pb2_grpc.HealthStub(served.channel())
        reply = await in_thread(stub.Check, health_pb2.HealthCheckRequest(service=""),
                                timeout=RPC_TIMEOUT,
                                metadata=[("authorization", secret), ("x-trace", "tr4ce-id")])
        assert reply.status == SERVING
        await wait_for_log(served, "call /grpc.health.v1.Health/Check ended OK")
        served.process.send_signal(signal.SIGTERM)
        assert await served.wait() == 0
    log = served.log()
    assert "DEBUG wire.server" in log
    assert "connection opened" in log
    assert "do-not-log-me" not in log
    assert "tr4ce-id" not in log
    assert "hpack" not in log


async def test_json_log_lines(tmp_path: Path) -> None:
    async with serve(tmp_path, "--log-format", "json", "--log-level", "Info") as served:
        assert served.admin_port is not None
        assert await in_thread(_admin, served.admin_port, "PUT", "/status?service=s",
                               b"NOT_SERVING") == 200
        await wait_for_log(served, '"service": "s"')
        served.process.send_signal(signal.SIGTERM)
        assert await served.wait() == 0
    lines = served.log().splitlines()
    entries = [json.loads(line) for line in lines]
    assert len(entries) >= 4
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= entry.keys()
        assert entry["time"].endswith("Z")
    change = next(e for e in entries if e.get("service") == "s")
    assert (change["level"], change["logger"]) == ("INFO", "health")
    assert (change["old"], change["new"]) == ("absent", "NOT_SERVING")
    assert any(e["message"].startswith("health server listening on") for e in entries)


# ------------------------------------------------------------------ startup errors


def _busy_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def _one_line_error(code: int, stdout: str, stderr: str, prog: str = "python -m health serve",
                    ) -> str:
    assert code == 2, stderr
    assert stderr.count("\n") == 1, stderr
    assert stderr.startswith(f"{prog}: error: "), stderr
    assert "Traceback" not in stderr
    assert "listening" not in stdout
    return stderr


async def test_ports_in_use_and_the_same_port_twice() -> None:
    with _busy_port() as busy:
        port = busy.getsockname()[1]
        err = _one_line_error(*await run_serve("--port", str(port)))
        assert f"--port {port}: 127.0.0.1:{port} is already in use" in err
        err = _one_line_error(*await run_serve("--port", "0", "--admin-port", str(port)))
        assert f"--admin-port {port}: 127.0.0.1:{port} is already in use" in err
    err = _one_line_error(*await run_serve("--port", "50123", "--admin-port", "50123"))
    assert "--admin-port 50123: the same port as --port" in err


def _file(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(("make_args", "expected"), [
    (lambda d: ["--host", ""], "--host: must not be empty"),
    (lambda d: ["--admin-port", "0", "--admin-host", ""], "--admin-host: must not be empty"),
    (lambda d: ["--unix", str(d / "missing" / "h.sock")], "directory"),
    (lambda d: ["--unix", _file(d / "plain", "x")], "exists and is not a socket"),
    (lambda d: ["--unix", str(d / "h.sock"), "--port", "1"], "--unix listens instead of --port"),
    (lambda d: ["--tls-cert", _file(d / "c.pem", "junk")], "--tls-cert: invalid certificate"),
    (lambda d: ["--tls-cert", str(d / "none.pem")], "--tls-cert: cannot read"),
    (lambda d: ["--tls-cert", "c", "--require-client-cert"],
     "--require-client-cert needs --tls-client-ca"),
    (lambda d: ["--admin-port", "0", "--admin-token-file", str(d / "none")],
     "--admin-token-file: cannot read"),
    (lambda d: ["--admin-port", "0", "--admin-token-file", _file(d / "empty", "\n")],
     "--admin-token-file: admin token file"),
    (lambda d: ["--admin-token-file", "t"], "--admin-token-file needs --admin-port"),
    (lambda d: ["--admin-host", "::1"], "--admin-host needs --admin-port"),
    (lambda d: ["--config", _file(d / "a.toml", "[server]\nadmin_host = '::1'\n")],
     "--admin-host needs --admin-port (or admin_port in the config file)"),
    (lambda d: ["--shutdown-delay", "soon"], "argument --shutdown-delay: not a number"),
    (lambda d: ["--http2", "h3"], "argument --http2: invalid choice: 'h3'"),
    (lambda d: ["--log-level", "loud"], "argument --log-level: invalid choice: 'LOUD'"),
    (lambda d: ["--list-limit", "-1"], "argument --list-limit: must be >= 0"),
    (lambda d: ["--config", _file(d / "h.toml", "[server]\nhttp2 = 'x'\n")],
     "h.toml:2: server.http2: must be one of"),
])
async def test_startup_errors_are_one_line_naming_the_flag(
        tmp_path: Path, make_args: Callable[[Path], list[str]], expected: str) -> None:
    err = _one_line_error(*await run_serve(*make_args(tmp_path)))
    assert expected in err


async def test_errors_start_with_the_program_the_user_ran(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "trio-grpc-health"
    if not script.exists():
        pytest.skip(f"console script not installed next to {sys.executable}")
    err = _one_line_error(*await run_serve("--host", "", program=str(script)),
                          prog="trio-grpc-health serve")
    assert "--host" in err


async def test_version() -> None:
    from importlib.metadata import version

    for args in (["--version"], ["serve", "--version"]):
        with trio.fail_after(PROCESS_WAIT):
            result = await trio.run_process([sys.executable, "-m", "health", *args],
                                            capture_stdout=True, check=False)
        assert result.returncode == 0
        assert result.stdout.decode() == f"trio-grpc-health {version('trio-grpc-health')}\n"


async def test_an_unresolvable_host_names_the_flag() -> None:
    # A resolver of our own: the test sends no DNS query anywhere.
    class Refuses(trio.abc.HostnameResolver):
        async def getaddrinfo(self, host: Any, *args: Any, **kwargs: Any) -> Any:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        async def getnameinfo(self, *args: Any) -> Any:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    for config, flag in ((SidecarConfig(host="db.example", port=0), "--host db.example"),
                         (SidecarConfig(port=0, admin_port=0, admin_host="db.example"),
                          "--admin-host db.example")):
        process = SidecarProcess(config)
        previous = trio.socket.set_custom_hostname_resolver(Refuses())
        try:
            with pytest.raises(StartupError, match="cannot resolve this host name") as info:
                await process.run()
        finally:
            trio.socket.set_custom_hostname_resolver(previous)
        assert str(info.value).startswith(flag)


async def test_other_bind_failures_name_the_flag(tmp_path: Path) -> None:
    long_path = tmp_path / ("x" * 120)
    with pytest.raises(StartupError, match=r"^--unix .*: cannot listen"):
        await SidecarProcess(SidecarConfig(unix=str(long_path))).run()
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: binding fails, nothing is sent.
    with pytest.raises(StartupError, match=r"^--host 192\.0\.2\.1: not an address of this machine"):
        await SidecarProcess(SidecarConfig(host="192.0.2.1", port=0)).run()


# ------------------------------------------------------------------ the shipped manifest


async def test_the_sidecar_manifest_command_line_runs(tmp_path: Path) -> None:
    import yaml

    docs = {d["kind"]: d for d in yaml.safe_load_all(SIDECAR_MANIFEST.read_text()) if d}
    config = tmp_path / "health.toml"
    config.write_text(docs["ConfigMap"]["data"]["health.toml"])
    token = tmp_path / "token"
    token.write_text("manifest-token\n")
    [health] = [c for c in docs["Deployment"]["spec"]["template"]["spec"]["containers"]
                if c["name"] == "health"]
    command, *flags = health["args"]
    assert command == "serve"
    # The pod's files are here instead; everything else is the manifest's, with loopback
    # and port 0 instead of the pod's addresses (--port 0 and --admin-port 0 come from serve()).
    local = {"--config": str(config), "--admin-token-file": str(token),
             "--admin-host": "127.0.0.1"}
    args = []
    for flag in flags:
        name, _, value = flag.partition("=")
        args.append(f"{name}={local.get(name, value)}")
    async with serve(tmp_path, *args, "--host", "127.0.0.1") as served:
        assert await check(served, "liveness") == SERVING
        assert served.admin_port is not None
        assert await in_thread(_admin, served.admin_port, "POST", "/drain") == 401
        served.process.send_signal(signal.SIGTERM)
        log = await wait_for_log(served, "shutdown delay: NOT_SERVING for 5.0 s")
        assert await check(served, "liveness") == NOT_SERVING
        assert "metrics need prometheus_client" not in log


# ------------------------------------------------------------------ in process


def test_json_formatter_fields_and_tracebacks() -> None:
    import logging

    from health.logs import JsonFormatter

    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.getLogger("health.x").makeRecord(
            "health.x", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info(),
            extra={"peer": ("127.0.0.1", 5), "service": "s"}, sinfo="stack here")
    entry = json.loads(JsonFormatter().format(record))
    assert (entry["level"], entry["logger"], entry["message"]) == ("ERROR", "health.x",
                                                                    "failed here")
    assert (entry["peer"], entry["service"]) == ("('127.0.0.1', 5)", "s")
    assert "RuntimeError: boom" in entry["exception"]
    assert entry["stack"] == "stack here"


def test_configure_logging_holds_the_header_loggers_quiet() -> None:
    import io
    import logging

    from health.logs import configure_logging

    root = logging.getLogger()
    saved = (list(root.handlers), root.level,
             [logging.getLogger(n).level for n in ("hpack", "h2")])
    out = io.StringIO()
    try:
        configure_logging("DEBUG", "json", out)
        assert logging.getLogger("hpack.hpack").getEffectiveLevel() == logging.WARNING
        logging.getLogger("hpack.hpack").debug("header value s3cret")
        logging.getLogger("wire.server").debug("connection opened")
        configure_logging("ERROR", "text", out)
        assert logging.getLogger("h2").level == logging.ERROR
        with pytest.raises(ValueError, match="log format"):
            configure_logging("INFO", "xml")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for name, level in zip(("hpack", "h2"), saved[2], strict=True):
            logging.getLogger(name).setLevel(level)
    assert "s3cret" not in out.getvalue()
    assert json.loads(out.getvalue().splitlines()[0])["message"] == "connection opened"


def test_bind_problems_name_the_flag() -> None:
    from health.sidecar import _bind_problem

    def problem(code: int) -> str:
        return _bind_problem(OSError(code, os.strerror(code)), "--admin-host", "--admin-port",
                             "::1", 80)

    assert problem(errno.EACCES) == "--admin-port 80: permission denied to listen on [::1]:80"
    assert problem(errno.EADDRINUSE) == "--admin-port 80: [::1]:80 is already in use"
    assert problem(errno.ENOBUFS).startswith("--admin-host ::1 --admin-port 80: cannot listen: ")


def test_server_tls_names_the_flag(tmp_path: Path) -> None:
    from health.config import TlsConfig
    from health.sidecar import server_tls

    leaf = trustme.CA().issue_cert("localhost")
    cert, key, other = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "o.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    trustme.CA().issue_cert("x").private_key_pem.write_to_path(str(other))
    assert server_tls(None) is None
    assert server_tls(TlsConfig(cert, key)) is not None
    with pytest.raises(StartupError, match=r"^--tls-key: key file .* does not match"):
        server_tls(TlsConfig(cert, other))
    with pytest.raises(StartupError, match=r"^--tls-client-ca: invalid CA file"):
        server_tls(TlsConfig(cert, key, client_ca=key))
    with pytest.raises(StartupError, match=r"^--require-client-cert: needs --tls-client-ca$"):
        server_tls(TlsConfig(cert, key, require_client_cert=True))


async def test_a_failure_other_than_binding_is_not_hidden(
        monkeypatch: pytest.MonkeyPatch) -> None:
    process = SidecarProcess(SidecarConfig(port=0))

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug, not a bind failure")

    monkeypatch.setattr(process.server, "serve_tcp", broken)
    # Grouped by the nursery, which is what a bug should look like: it is not a flag error.
    with pytest.raises(Exception) as info:  # noqa: PT011 (a group: its member is checked)
        await process.run()
    assert info.group_contains(RuntimeError, match="a bug")
    assert not info.group_contains(StartupError)


async def test_admin_host_from_the_file_with_the_port_from_a_flag(tmp_path: Path) -> None:
    config = tmp_path / "health.toml"
    config.write_text('[server]\nadmin_host = "127.0.0.1"\n')
    async with serve(tmp_path, "--config", str(config)) as served:
        await wait_for_log(served, f"admin API on http://127.0.0.1:{served.admin_port}")
