"""Every code block of README.md is run, so the examples cannot rot.

Blocks are taken from the fenced code in README.md, each by its language:

* ``python``: executed. A block that starts its own server has its port 50051 replaced by 0; a
  client block (``127.0.0.1:50051`` or ``localhost:50051``) is pointed at a real server this
  test starts on 127.0.0.1 port 0: the Health service with ``my.Service`` SERVING, plus
  ``/my.Service/Echo`` (unary, answers the request) and ``/my.Service/Tail`` (streams the
  request back three times), the names the README's examples use. Top-level
  ``await`` / ``async with`` run inside this test's Trio loop; a block that calls ``trio.run``
  runs in a worker thread. What they print must name statuses (``SERVING``), never ``1``.
* ``toml``: loaded with ``health.config``;
* ``yaml``: parsed, validated against the Kubernetes schema inside a pod, and checked to be an
  excerpt of the manifest in ``examples/kubernetes/`` it summarises;
* ``sh``: the venv/pip setup lines must be the README's two commands (the test command the one
  ``.ci/run`` runs); the serve, probe and grpcurl commands run against a server on 127.0.0.1
  port 0 (grpcurl's with server reflection on; skipped when grpcurl is not installed);
* ``text``: diagrams, nothing to run (any other language fails the test).
"""

from __future__ import annotations

import ast
import builtins
import functools
import re
import shlex
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import trio
import yaml

from health import HealthServer, ServingStatus
from health.config import parse_config
from tests.interop.grpcurl import require_grpcurl
from wire import ServerCall, unary_stream, unary_unary

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
STEP = 20.0
LANGUAGES = {"python", "toml", "yaml", "sh", "text"}
SETUP = ["python3 -m venv .venv", ".venv/bin/pip install -q -e ."]
TEST_SETUP = ["python3 -m venv .venv", ".venv/bin/pip install -q -e '.[test]'"]


@dataclass(frozen=True)
class Block:
    line: int
    language: str
    code: str


def _blocks() -> list[Block]:
    blocks = []
    lines = README.read_text().splitlines()
    i = 0
    while i < len(lines):  # bounded: i grows every pass
        m = re.fullmatch(r"```(\S*)\s*", lines[i])
        i += 1
        if m is None:
            continue
        start = i
        while i < len(lines) and lines[i] != "```":  # bounded by the file
            i += 1
        assert i < len(lines), f"README.md:{start}: unclosed code block"
        blocks.append(Block(start, m.group(1), "\n".join(lines[start:i]) + "\n"))
        i += 1
    return blocks


BLOCKS = _blocks()


def _of(language: str) -> list[Any]:
    return [pytest.param(b, id=f"README.md:{b.line}") for b in BLOCKS if b.language == language]


def test_every_block_has_a_language_this_test_runs() -> None:
    assert BLOCKS
    unknown = [(b.line, b.language) for b in BLOCKS if b.language not in LANGUAGES]
    assert not unknown, f"blocks no test runs (line, language): {unknown}"
    assert {b.language for b in BLOCKS} >= {"python", "toml", "yaml", "sh"}


# ---------------------------------------------------------------------- python


def _starts_a_server(code: str) -> bool:
    return "serve_health" in code or "serve_tcp" in code


def _printed_lines(out: str) -> list[str]:
    lines = out.splitlines()
    bare_numbers = [line for line in lines if line.strip().isdigit()]
    assert not bare_numbers, f"a status printed as a number: {bare_numbers}"
    return lines


def _echo(request: bytes, call: ServerCall) -> bytes:
    return request


async def _tail(request: bytes, call: ServerCall, send: Callable[[bytes], Awaitable[None]],
                ) -> None:
    for _ in range(3):
        await send(request)


async def _run_python(code: str, namespace: dict[str, Any]) -> None:
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    compiled = compile(code, str(README), "exec", flags=flags)
    if "trio.run(" in code:
        # A whole program: it runs its own Trio loop, so not in this one.
        await trio.to_thread.run_sync(functools.partial(exec, compiled, namespace))
        return
    result = eval(compiled, namespace)  # a coroutine when the block awaits at top level
    if result is not None:
        await result


@pytest.mark.parametrize("block", _of("python"))
async def test_python_block_runs(block: Block, capsys: pytest.CaptureFixture[str]) -> None:
    namespace: dict[str, Any] = {"__name__": "__readme__", "__builtins__": builtins}
    if _starts_a_server(block.code):
        code = block.code.replace("50051", "0")
        with trio.fail_after(STEP):
            await _run_python(code, namespace)
        _printed_lines(capsys.readouterr().out)
        return
    health = HealthServer(extra_handlers=[
        unary_unary("/my.Service/Echo", _echo, bytes, bytes),
        unary_stream("/my.Service/Tail", _tail, bytes, bytes)])
    health.set("my.Service", ServingStatus.SERVING)
    async with trio.open_nursery() as nursery:
        await nursery.start(health.serve_tcp, "127.0.0.1", 0)
        code = re.sub(r"\b(127\.0\.0\.1|localhost):50051\b", f"127.0.0.1:{health.port}",
                      block.code)
        assert code != block.code, "a client block that names no server address"

        async def change_once_watched() -> None:
            while not health.state.watcher_count:  # noqa: ASYNC110 (bounded by fail_after)
                await trio.sleep(0.01)
            health.set("my.Service", ServingStatus.NOT_SERVING)

        with trio.fail_after(STEP):
            if "watch(" in code:
                nursery.start_soon(change_once_watched)
            await _run_python(code, namespace)
        await health.shutdown(0)
    lines = _printed_lines(capsys.readouterr().out)
    if "watch(" in block.code:
        assert lines == ["SERVING", "SERVING", "NOT_SERVING"]


# ---------------------------------------------------------------------- toml, yaml


@pytest.mark.parametrize("block", _of("toml"))
def test_toml_block_loads_with_health_config(block: Block) -> None:
    config = parse_config(block.code, file=f"README.md:{block.line}")
    assert config.services


def _is_excerpt(part: Any, whole: Any) -> bool:
    """True when every key of ``part`` is in ``whole`` with the same value (lists equal)."""
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(
            k in whole and _is_excerpt(v, whole[k]) for k, v in part.items())
    return bool(part == whole)


def _manifest_containers() -> list[dict[str, Any]]:
    containers = []
    for path in sorted((ROOT / "examples" / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "Deployment":
                containers += doc["spec"]["template"]["spec"]["containers"]
    return containers


@pytest.mark.parametrize("block", _of("yaml"))
def test_yaml_block_is_a_valid_excerpt_of_the_manifests(block: Block) -> None:
    doc = yaml.safe_load(block.code)
    containers = doc if isinstance(doc, list) else [doc]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "readme"},
           "spec": {"containers": containers}}
    kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)
    shipped = _manifest_containers()
    for container in containers:
        assert any(_is_excerpt(container, c) for c in shipped), (
            f"README.md:{block.line}: container {container['name']!r} is not an excerpt of "
            "examples/kubernetes/")


# ---------------------------------------------------------------------- sh


def _commands(block: Block) -> list[str]:
    return [part.strip() for line in block.code.splitlines() if line.strip()
            for part in line.split("&&")]


def _probe_command() -> list[str]:
    """The installed ``trio-grpc-health-probe`` script, else ``python -m health probe``."""
    script = Path(sys.executable).parent / "trio-grpc-health-probe"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "health", "probe"]


@pytest.mark.parametrize("block", _of("sh"))
async def test_sh_block_runs(block: Block) -> None:
    commands = _commands(block)
    setup = [c for c in commands if c.startswith("python3 -m venv") or "/pip " in c]
    assert setup in ([], SETUP, TEST_SETUP), f"README.md:{block.line}: setup lines {setup}"
    rest = [shlex.split(c) for c in commands if c not in setup]
    for argv in rest:
        if argv[:3] == [".venv/bin/python", "-m", "pytest"]:
            assert argv == [".venv/bin/python", "-m", "pytest"]
            assert setup == TEST_SETUP
            ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
            assert ci == block.code.strip(), "the README's test command is what .ci/run runs"
        elif argv[:4] == [".venv/bin/python", "-m", "health", "serve"]:
            await _run_serve(argv[4:])
        elif argv[0] == "trio-grpc-health-probe":
            await _run_probe(argv[1:])
        elif argv[0] == "grpcurl":
            await _run_grpcurl(argv[1:])
        else:
            raise AssertionError(f"README.md:{block.line}: no test runs {shlex.join(argv)}")


async def _run_serve(flags: list[str]) -> None:
    # The README's serve command, on port 0 so that it runs anywhere; then probed and stopped.
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "health", "serve", *flags, "--port", "0"], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    try:
        buffer = b""
        with trio.fail_after(STEP):
            while not re.search(rb"^listening (\d+)$", buffer, re.MULTILINE):  # fail_after
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, "the server exited before listening"
                buffer += chunk
        found = re.search(rb"^listening (\d+)$", buffer, re.MULTILINE)
        assert found is not None
        port = int(found.group(1))
        probe = await trio.run_process([*_probe_command(),
                                        f"-addr=127.0.0.1:{port}"], capture_stderr=True,
                                       check=False)
        assert (probe.returncode, probe.stderr) == (0, b"status: SERVING\n")
        proc.terminate()
        with trio.fail_after(STEP):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proc.stdout.aclose()


async def _run_grpcurl(args: list[str]) -> None:
    # Against a health server with reflection on, as `python -m health serve` runs by default.
    binary = require_grpcurl()
    health = HealthServer(reflection=True)
    health.set("my.Service", ServingStatus.SERVING)
    async with trio.open_nursery() as nursery:
        await nursery.start(health.serve_tcp, "127.0.0.1", 0)
        argv = [a.replace("127.0.0.1:50051", f"127.0.0.1:{health.port}") for a in args]
        assert argv != args, "a grpcurl command that names no server address"
        with trio.fail_after(STEP):
            result = await trio.run_process([str(binary), *argv], capture_stdout=True,
                                            capture_stderr=True, check=False)
        await health.shutdown(0)
    assert result.returncode == 0, result.stderr
    assert result.stdout


async def _run_probe(flags: list[str]) -> None:
    health = HealthServer()
    async with trio.open_nursery() as nursery:
        await nursery.start(health.serve_tcp, "127.0.0.1", 0)
        services = [f.split("=", 1)[1] for f in flags if f.startswith("-service=")]
        for name in services:
            health.set(name, ServingStatus.SERVING)
        argv = [re.sub(r"^-addr=127\.0\.0\.1:50051$", f"-addr=127.0.0.1:{health.port}", f)
                for f in flags]
        assert argv != flags, "a probe command that names no server address"
        with trio.fail_after(STEP):
            result = await trio.run_process([*_probe_command(), *argv],
                                            capture_stderr=True, check=False)
        await health.shutdown(0)
    assert (result.returncode, result.stderr) == (0, b"status: SERVING\n")
