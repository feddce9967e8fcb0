"""The Health service end to end, with grpc-js (Node.js) as the client.

A session fixture installs the pinned ``@grpc/grpc-js`` and ``@grpc/proto-loader`` from
``grpcjs/package.json`` into a pytest temp directory (the repo tree stays clean); each test starts
our server in-process on 127.0.0.1:0 and runs ``grpcjs/health_client.js`` against it as a
subprocess. Skipped when node/npm are missing or the npm registry cannot be reached; a failing
assertion against a running node client fails the test.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

import wire.compression
import wire.framing
from health import HealthServer, ServingStatus
from wire import ServerConfig

HERE = Path(__file__).parent / "grpcjs"
CLIENT = HERE / "health_client.js"
#: Bound of ``npm install`` (a cold cache downloads a few MB).
NPM_TIMEOUT = 180.0
#: Bound of each node client run (the client's own deadlines are 10 s).
STEP = 15.0
#: npm error codes and phrases that mean "no network", not "broken package.json".
NETWORK_ERRORS = ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ECONNRESET", "ETIMEDOUT",
                  "ENETUNREACH", "EHOSTUNREACH", "network request", "socket hang up")


@pytest.fixture(scope="session")
def node_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Install the grpc-js client's dependencies once per session; the env to run it with."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("grpc-js interop needs node and npm on PATH")
    prefix = tmp_path_factory.mktemp("grpcjs")
    shutil.copy(HERE / "package.json", prefix / "package.json")
    try:
        result = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--ignore-scripts", "--prefix",
             str(prefix)],
            cwd=prefix, capture_output=True, text=True, timeout=NPM_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        pytest.skip(f"npm install took over {NPM_TIMEOUT:.0f} s (registry unreachable?)")
    if result.returncode != 0:
        output = result.stdout + result.stderr
        for line in output.splitlines():
            if any(marker in line for marker in NETWORK_ERRORS):
                pytest.skip(f"npm registry unreachable: {line.strip()[:300]}")
        pytest.fail(f"npm install failed ({result.returncode}):\n{output}")
    env = dict(os.environ)
    # The client lives in the repo; its dependencies are resolved from the temp install.
    env["NODE_PATH"] = str(prefix / "node_modules")
    return env


@pytest.fixture
async def server(nursery: trio.Nursery, http2: str) -> AsyncIterator[HealthServer]:
    """Our health server on 127.0.0.1:0 on each HTTP/2 engine, shut down at teardown."""
    hs: HealthServer = await nursery.start(
        HealthServer(config=ServerConfig(http2=http2)).serve_tcp, "127.0.0.1", 0)
    yield hs
    with trio.fail_after(STEP):
        await hs.shutdown(0)


def client_argv(hs: HealthServer, *args: str) -> list[str]:
    return ["node", str(CLIENT), f"127.0.0.1:{hs.port}", *args]


async def run_client(env: dict[str, str], hs: HealthServer, *args: str) -> str:
    """Run the node client to completion; its stdout (it must exit 0 with empty stderr)."""
    with trio.fail_after(STEP):
        proc = await trio.run_process(client_argv(hs, *args), env=env, capture_stdout=True,
                                      capture_stderr=True, check=False)
    stdout, stderr = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, f"node exited {proc.returncode}: {stdout}{stderr}"
    assert stderr == ""
    return stdout


async def test_check(node_env: dict[str, str], server: HealthServer) -> None:
    server.set("svc/ünï", ServingStatus.NOT_SERVING)
    assert await run_client(node_env, server, "check", "") == "SERVING\n"
    assert await run_client(node_env, server, "check", "svc/ünï") == "NOT_SERVING\n"
    assert (await run_client(node_env, server, "check", "nope")
            == "ERROR NOT_FOUND unknown service\n")


async def test_check_gzip(node_env: dict[str, str], server: HealthServer,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    # A fresh grpc-js channel with a default algorithm gzips its first request (flag 1,
    # grpc-encoding: gzip) before it has seen the server's grpc-accept-encoding.
    decompressed: list[str | None] = []
    real = wire.compression.decompress

    def spy(encoding: str | None, data: bytes, limit: int) -> bytes:
        decompressed.append(encoding)
        return real(encoding, data, limit)

    monkeypatch.setattr(wire.framing, "decompress", spy)
    assert await run_client(node_env, server, "--gzip", "check", "") == "SERVING\n"
    assert decompressed == ["gzip"], "grpc-js did not send a gzip-compressed request"


async def test_list(node_env: dict[str, str], server: HealthServer) -> None:
    server.set("a", ServingStatus.SERVING)
    server.set("b", ServingStatus.NOT_SERVING)
    server.set("c", ServingStatus.UNKNOWN)
    out = await run_client(node_env, server, "list")
    assert json.loads(out) == {"": "SERVING", "a": "SERVING", "b": "NOT_SERVING",
                               "c": "UNKNOWN"}


async def test_watch_sees_change(node_env: dict[str, str], server: HealthServer,
                                 nursery: trio.Nursery) -> None:
    server.set("flip", ServingStatus.SERVING)
    with trio.fail_after(STEP):
        proc: trio.Process = await nursery.start(functools.partial(
            trio.run_process, client_argv(server, "watch", "flip", "2"), env=node_env,
            stdout=subprocess.PIPE, check=False))
        assert proc.stdout is not None
        buf = b""
        lines: list[str] = []
        while len(lines) < 2:
            chunk = await proc.stdout.receive_some()
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf and len(lines) < 2:
                line, buf = buf.split(b"\n", 1)
                lines.append(line.decode())
                if len(lines) == 1:
                    # The watch is established and has reported SERVING: now flip it.
                    server.set("flip", ServingStatus.NOT_SERVING)
        # The client cancels after two statuses and exits; nothing else may follow.
        while chunk := await proc.stdout.receive_some():
            buf += chunk
        await proc.wait()
    assert lines == ["SERVING", "NOT_SERVING"]
    assert buf == b""
    assert proc.returncode == 0
