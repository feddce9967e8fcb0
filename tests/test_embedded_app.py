"""examples/kubernetes/embedded_app.py, the program embedded.yaml runs, run as a real process.

It starts on 127.0.0.1 port 0 with the manifest's flags; the kubelet's view is played by the
probe CLI (in process) and an HTTP client for the admin API. On SIGTERM it must report
readiness NOT_SERVING while still answering (liveness SERVING) for ``--shutdown-delay``, then
drain and exit 0; a second signal stops it at once.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
import trio
import yaml

from health.probe import EXIT_SERVING, EXIT_UNHEALTHY
from health.probe import main as probe_main

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "examples" / "kubernetes" / "embedded_app.py"
STEP = 20.0
TOKEN = "example-token"


def _load_app() -> ModuleType:
    spec = importlib.util.spec_from_file_location("embedded_app", APP)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_manifest_runs_this_program_with_flags_it_accepts() -> None:
    manifest = (ROOT / "examples" / "kubernetes" / "embedded.yaml").read_text()
    [deployment] = [d for d in yaml.safe_load_all(manifest) if d]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", f"/app/{APP.name}"]
    args = _load_app().build_parser().parse_args(container["args"])
    assert (args.grpc_host, args.grpc_port, args.admin_host, args.admin_port) == (
        "0.0.0.0", 50051, "0.0.0.0", 8081)
    assert args.metrics
    assert args.shutdown_delay + args.grace <= deployment["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"]


@dataclass
class Running:
    proc: trio.Process
    port: int
    admin: int

    async def probe(self, service: str) -> int:
        argv = [f"-addr=127.0.0.1:{self.port}", f"-service={service}"]
        call = functools.partial(probe_main, argv, stdout=io.StringIO(), stderr=io.StringIO())
        with trio.fail_after(STEP):
            return await trio.to_thread.run_sync(call)

    async def http(self, method: str, path: str, token: str | None = None) -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{self.admin}{path}", method=method)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")

        def send() -> int:
            try:
                with urllib.request.urlopen(request, timeout=STEP) as reply:
                    return int(reply.status)
            except urllib.error.HTTPError as exc:
                return exc.code

        return await trio.to_thread.run_sync(send)


async def _start(tmp_path: Path, *flags: str) -> AsyncIterator[Running]:
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(APP), "--grpc-port=0", "--admin-port=0",
         f"--admin-token-file={token}", "--metrics", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    try:
        buffer = b""
        with trio.fail_after(STEP):
            while buffer.count(b"\n") < 2:  # bounded by the fail_after
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, "the app exited before listening"
                buffer += chunk
        ports = dict(line.split() for line in buffer.decode().splitlines()[:2])
        yield Running(proc, int(ports["listening"]), int(ports["admin"]))
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proc.stdout.aclose()


@pytest.fixture
async def long_delay(tmp_path: Path) -> AsyncIterator[Running]:
    async for running in _start(tmp_path, "--shutdown-delay=600", "--grace=1"):
        yield running


async def test_serves_health_admin_and_metrics(long_delay: Running) -> None:
    assert await long_delay.probe("readiness") == EXIT_SERVING
    assert await long_delay.probe("liveness") == EXIT_SERVING
    assert await long_delay.http("GET", "/metrics") == 200
    assert await long_delay.http("GET", "/status") == 200
    assert await long_delay.http("POST", "/drain") == 401
    assert await long_delay.http("POST", "/drain", "wrong") == 403
    assert await long_delay.http("POST", "/resume", TOKEN) == 200


async def test_sigterm_reports_not_serving_while_answering(long_delay: Running) -> None:
    long_delay.proc.send_signal(signal.SIGTERM)
    with trio.fail_after(STEP):
        # Polls another process, so no Event to wait on; bounded by the fail_after.
        while await long_delay.probe("readiness") != EXIT_UNHEALTHY:  # noqa: ASYNC110
            await trio.sleep(0.05)
    # Still answering during the delay, and not asking for a restart.
    assert await long_delay.probe("liveness") == EXIT_SERVING
    assert long_delay.proc.returncode is None
    long_delay.proc.send_signal(signal.SIGTERM)  # a second signal stops at once
    with trio.fail_after(STEP):
        assert await long_delay.proc.wait() == 0


async def test_after_the_delay_it_drains_and_exits_0(tmp_path: Path) -> None:
    async for running in _start(tmp_path, "--shutdown-delay=0.2", "--grace=1"):
        assert await running.probe("readiness") == EXIT_SERVING
        running.proc.send_signal(signal.SIGTERM)
        with trio.fail_after(STEP):
            assert await running.proc.wait() == 0


async def test_startup_mistakes_are_one_line(tmp_path: Path) -> None:
    result = await trio.run_process(
        [sys.executable, str(APP), f"--admin-token-file={tmp_path / 'missing'}"],
        capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 2
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("embedded_app.py: error: --admin-token-file: cannot read")
