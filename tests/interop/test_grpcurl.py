"""grpcurl as an interop peer: the helper in tests/interop/grpcurl.py, then grpcurl against us.

grpcurl never gets a .proto file here: everything it knows of the Health service it learns
through server reflection (grpcurl 1.8 speaks ``grpc.reflection.v1alpha``). The server is an
embedded one (``HealthService.attach`` plus ``wire.reflection.add_reflection``) on each HTTP/2
engine, and ``python -m health serve`` as a real process, where reflection is on by default.
grpcurl runs in a worker thread so that the server, in this Trio run, keeps serving.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from health import ServingStatus
from health.service import HealthService
from tests.interop.grpcurl import grpcurl_command, require_grpcurl, run_grpcurl
from wire import Server, ServerConfig
from wire.reflection import V1_SERVICE, V1ALPHA_SERVICE, add_reflection

HEALTH = "grpc.health.v1.Health"


def test_packaged_grpcurl_runs() -> None:
    binary = require_grpcurl()
    assert binary.name == "grpcurl"
    assert binary.parent.name == "lib"
    result = run_grpcurl(binary, "127.0.0.1:1", flags=("-version",))
    assert "grpcurl v1.8" in result.stdout + result.stderr


def test_command_puts_flags_before_the_target() -> None:
    argv = grpcurl_command(Path("g"), "127.0.0.1:5000", "grpc.health.v1.Health/Check",
                           flags=("-d", '{"service":""}'))
    assert argv == ["g", "-plaintext", "-d", '{"service":""}', "127.0.0.1:5000",
                    "grpc.health.v1.Health/Check"]
    assert grpcurl_command(Path("g"), "[::1]:5000", "list", plaintext=False) == [
        "g", "[::1]:5000", "list",
    ]
    assert grpcurl_command(Path("g"), "localhost:1", "list")[2] == "localhost:1"


@pytest.mark.parametrize("target", ["10.0.0.1:50051", "example.com:443", "[2001:db8::1]:1", "x"])
def test_command_refuses_non_loopback_targets(target: str) -> None:
    with pytest.raises(ValueError, match="not a loopback address"):
        grpcurl_command(Path("g"), target, "list")


def test_missing_package_skips_with_the_requirement(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import tests.interop.grpcurl as helper

    monkeypatch.setattr(helper, "PACKAGE", "no_such_grpcurl_package")
    path, reason = helper.find_grpcurl()
    assert path is None
    assert helper.REQUIREMENT in reason
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        helper.require_grpcurl()
    assert "skipping grpcurl interop" in capsys.readouterr().err


# ---------------------------------------------------------------------- grpcurl against us


@pytest.fixture
def grpcurl() -> Path:
    return require_grpcurl()


@pytest.fixture
async def target(http2: str, nursery: trio.Nursery) -> AsyncIterator[str]:
    server = Server(config=ServerConfig(http2=http2))
    service = HealthService()
    service.state.set("known", ServingStatus.SERVING)
    service.state.set("down", ServingStatus.NOT_SERVING)
    # The one call an embedding application makes; health then lists itself in it.
    registry = add_reflection(server)
    service.attach(server, reflection=registry)
    _, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
    yield f"127.0.0.1:{port}"
    with trio.fail_after(10):
        await server.shutdown(grace=0)


async def grpcurl_run(binary: Path, target: str, *args: str,
                      flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return await trio.to_thread.run_sync(
        lambda: run_grpcurl(binary, target, *args, flags=flags))


async def test_list_services(grpcurl: Path, target: str) -> None:
    result = await grpcurl_run(grpcurl, target, "list")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == sorted([HEALTH, V1_SERVICE, V1ALPHA_SERVICE])


async def test_list_methods(grpcurl: Path, target: str) -> None:
    result = await grpcurl_run(grpcurl, target, "list", HEALTH)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [f"{HEALTH}.Check", f"{HEALTH}.List", f"{HEALTH}.Watch"]


async def test_describe_service(grpcurl: Path, target: str) -> None:
    result = await grpcurl_run(grpcurl, target, "describe", HEALTH)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert f"{HEALTH} is a service:" in text
    assert ("rpc Check ( .grpc.health.v1.HealthCheckRequest ) returns "
            "( .grpc.health.v1.HealthCheckResponse );") in text
    assert ("rpc Watch ( .grpc.health.v1.HealthCheckRequest ) returns "
            "( stream .grpc.health.v1.HealthCheckResponse );") in text
    assert "rpc List ( .grpc.health.v1.HealthListRequest )" in text


async def test_describe_message(grpcurl: Path, target: str) -> None:
    result = await grpcurl_run(grpcurl, target, "describe", "grpc.health.v1.HealthCheckRequest")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "grpc.health.v1.HealthCheckRequest is a message:" in text
    assert "message HealthCheckRequest { string service = 1; }" in text


async def test_check_known_service(grpcurl: Path, target: str) -> None:
    for name, status in (("known", "SERVING"), ("down", "NOT_SERVING"), ("", "SERVING")):
        result = await grpcurl_run(grpcurl, target, f"{HEALTH}/Check",
                                   flags=("-d", json.dumps({"service": name})))
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"status": status}


async def test_check_unknown_service(grpcurl: Path, target: str) -> None:
    result = await grpcurl_run(grpcurl, target, f"{HEALTH}/Check",
                               flags=("-d", '{"service":"nope"}'))
    assert result.returncode != 0
    assert "Code: NotFound" in result.stderr
    assert "Message: unknown service" in result.stderr


async def test_list_rpc(grpcurl: Path, target: str) -> None:
    result = await grpcurl_run(grpcurl, target, f"{HEALTH}/List")
    assert result.returncode == 0, result.stderr
    statuses = json.loads(result.stdout)["statuses"]
    assert statuses == {
        "": {"status": "SERVING"},
        "known": {"status": "SERVING"},
        "down": {"status": "NOT_SERVING"},
    }


async def test_watch_prints_the_first_status(grpcurl: Path, target: str) -> None:
    # Watch never ends by itself: grpcurl's own deadline stops it after the first message.
    result = await grpcurl_run(grpcurl, target, f"{HEALTH}/Watch",
                               flags=("-max-time", "2", "-d", '{"service":"known"}'))
    assert json.loads(result.stdout) == {"status": "SERVING"}
    assert "DeadlineExceeded" in result.stderr


async def test_describe_unknown_symbol_fails_cleanly(grpcurl: Path, target: str) -> None:
    result = await grpcurl_run(grpcurl, target, "describe", "no.such.Service")
    assert result.returncode != 0
    assert "Symbol not found: no.such.Service" in result.stderr
    assert "panic" not in result.stderr
    # The server is unharmed: the next reflection call works.
    again = await grpcurl_run(grpcurl, target, "list")
    assert again.returncode == 0, again.stderr


async def _serve_process(*args: str) -> tuple[trio.Process, int]:
    cmd = [sys.executable, "-m", "health", "serve", "--port", "0", *args]
    process = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE,
                                               stderr=subprocess.DEVNULL)
    assert process.stdout is not None
    buf = b""
    with trio.fail_after(20):
        while True:
            chunk = await process.stdout.receive_some(4096)
            assert chunk, f"python -m health serve ended early: {buf!r}"
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                word, _, port = line.decode().strip().partition(" ")
                if word == "listening":
                    return process, int(port)


@pytest.mark.parametrize("flags", [(), ("--no-reflection",)], ids=["default", "off"])
async def test_health_serve_reflection_flag(grpcurl: Path, flags: tuple[str, ...]) -> None:
    process, port = await _serve_process(*flags)
    try:
        result = await grpcurl_run(grpcurl, f"127.0.0.1:{port}", "list")
    finally:
        process.kill()
        with trio.fail_after(20):
            await process.wait()
        assert process.stdout is not None
        await process.stdout.aclose()
    if flags:
        assert result.returncode != 0
        assert "does not support the reflection API" in result.stderr
    else:
        assert result.returncode == 0, result.stderr
        assert HEALTH in result.stdout.split()
