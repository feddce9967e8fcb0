"""The container image's install steps, run for real in a fresh venv (no container runtime here).

``.ci/image-install.sh install PREFIX`` is the one script the Dockerfile runs; this test runs it
into a temporary venv, then uses only what it installed: the console scripts start, pip is gone,
and a server started from that venv on 127.0.0.1 port 0 answers the probe from that venv and
serves ``/metrics``. The Dockerfile itself is only read (it must run that script and use its
entry points), not built.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / ".ci" / "image-install.sh"
STEP = 30.0


def _env() -> dict[str, str]:
    # Only the venv under test: nothing from this checkout may leak onto its path.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    prefix = tmp_path_factory.mktemp("image") / "venv"
    result = subprocess.run(["sh", str(SCRIPT), "install", str(prefix)], cwd=prefix.parent,
                            env=_env(), capture_output=True, text=True, timeout=240,
                            check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    return prefix


def _run(venv: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / argv[0]), *argv[1:]], cwd=venv.parent,
                          env=_env(), capture_output=True, text=True, timeout=STEP,
                          check=False)


def test_console_scripts_start(venv: Path) -> None:
    main_help = _run(venv, "trio-grpc-health", "--help")
    assert main_help.returncode == 0
    assert "serve" in main_help.stdout
    assert "probe" in main_help.stdout
    serve_help = _run(venv, "trio-grpc-health", "serve", "--help")
    assert serve_help.returncode == 0
    assert "--grace" in serve_help.stdout
    version = _run(venv, "trio-grpc-health-probe", "-version")
    assert version.returncode == 0
    assert "version" in version.stdout


def test_the_venv_cannot_install_anything(venv: Path) -> None:
    assert not list((venv / "bin").glob("pip*"))
    no_pip = _run(venv, "python", "-c", "import pip")
    assert no_pip.returncode != 0
    assert "No module named 'pip'" in no_pip.stderr
    # Imported from the venv, not from this checkout.
    where = _run(venv, "python", "-c", "import health, wire; print(health.__file__)")
    assert where.stdout.strip().startswith(str(venv))


def _read_ports(proc: subprocess.Popen[bytes], *names: str) -> dict[str, int]:
    """The ``NAME PORT`` lines the server prints on stdout, or fail after STEP seconds."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + STEP
    buffer = b""
    ports: dict[str, int] = {}
    while not set(names) <= set(ports):  # bounded by the deadline
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"the server printed only {buffer!r} in time")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise AssertionError(f"the server exited with {proc.wait(STEP)}")
            buffer += chunk
            for line in buffer.decode(errors="replace").splitlines():
                m = re.fullmatch(r"(\w+) (\d+)", line.strip())
                if m:
                    ports[m.group(1)] = int(m.group(2))
    return ports


@pytest.fixture
def server(venv: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, int]]:
    proc = subprocess.Popen(
        [str(venv / "bin" / "trio-grpc-health"), "serve", "--host", "127.0.0.1", "--port", "0",
         "--admin-port", "0", "--metrics", "--service", "app=SERVING"],
        cwd=venv.parent, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        bufsize=0)
    try:
        ports = _read_ports(proc, "listening", "admin")
        yield proc, ports["listening"], ports["admin"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(STEP)
        if proc.stdout is not None:
            proc.stdout.close()


def test_probe_from_the_venv_against_its_server(
        venv: Path, server: tuple[subprocess.Popen[bytes], int, int]) -> None:
    proc, port, admin = server
    ok = _run(venv, "trio-grpc-health-probe", f"-addr=127.0.0.1:{port}", "-service=app")
    assert (ok.returncode, ok.stderr) == (0, "status: SERVING\n")
    unknown = _run(venv, "trio-grpc-health-probe", f"-addr=127.0.0.1:{port}", "-service=nope")
    assert unknown.returncode == 3
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=STEP) as reply:
        assert reply.status == 200
        assert 'grpc_health_service_status{service="app"} 1.0' in reply.read().decode()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(STEP) == 0


def test_remove_pip_empties_an_interpreter_with_pip(tmp_path: Path) -> None:
    # What the runtime stage does to the base image's own Python, on a venv that has pip.
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "v")], check=True,
                   timeout=STEP * 4)
    python = tmp_path / "v" / "bin" / "python"
    assert subprocess.run([str(python), "-c", "import pip"], check=False).returncode == 0
    result = subprocess.run(["sh", str(SCRIPT), "remove-pip", str(python)], env=_env(),
                            capture_output=True, text=True, timeout=STEP * 4, check=False)
    assert result.returncode == 0, result.stderr
    assert subprocess.run([str(python), "-c", "import pip"], capture_output=True,
                          check=False).returncode != 0
    assert not list((tmp_path / "v" / "bin").glob("pip*"))


def test_the_script_refuses_a_bad_command_line() -> None:
    for argv in ([], ["install"], ["remove-pip"], ["bogus", "x"]):
        result = subprocess.run(["sh", str(SCRIPT), *argv], capture_output=True, text=True,
                                timeout=STEP, check=False)
        assert result.returncode == 2
        assert result.stderr.startswith("usage: ")


def test_dockerfile_runs_the_script_and_its_entry_points() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    assert len(stages) == 2, "a build stage and a runtime stage"
    build, runtime = stages
    assert "image-install.sh install /opt/trio-grpc-health" in build
    assert "image-install.sh remove-pip" in runtime
    assert "COPY --from=build /opt/trio-grpc-health /opt/trio-grpc-health" in runtime
    user = re.search(r"^USER (\S+)", runtime, flags=re.MULTILINE)
    assert user is not None
    assert user.group(1).split(":")[0] not in ("0", "root")
    assert 'ENTRYPOINT ["/opt/trio-grpc-health/bin/trio-grpc-health"]' in runtime
    assert "/opt/trio-grpc-health/bin" in re.search(r"^ENV PATH=(\S+)", runtime,
                                                    flags=re.MULTILINE).group(1)  # type: ignore[union-attr]
    assert 'CMD ["trio-grpc-health-probe", "-addr=127.0.0.1:50051"' in runtime
    # Nothing in the runtime stage installs packages or compilers.
    assert not re.search(r"apt-get|pip install|gcc|build-essential", runtime)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ignored[ignored.index("*") + 1:].count("!.ci/image-install.sh") == 1
