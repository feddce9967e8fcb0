"""Checks shared by the tests of both generated protobuf modules (health's and reflection's).

``proto/generate.py`` is loaded once by path (``proto/`` is deliberately not a package); the
helpers here compare its fresh output with the committed files, and run a coexistence script
in a fresh interpreter so that each import order really is the first import.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_proto_generate",
                                                  REPO_ROOT / "proto" / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generator = _load_generator()


def skip_unless_protoc_matches(target_file: str) -> None:
    """Skip the calling test when no protoc of the series the committed files come from."""
    if shutil.which("protoc") is None:
        pytest.skip(f"protoc is not on PATH; cannot regenerate {target_file} to compare")
    version = generator.protoc_version("protoc")
    if not version.startswith(generator.PROTOC_SERIES):
        pytest.skip(f"protoc {version} is on PATH but the checked-in files come from "
                    f"protoc {generator.PROTOC_SERIES}x, whose output the script expects")


def assert_committed_files_are_fresh(tmp_path: Path, target: str, package: str,
                                     names: tuple[str, ...]) -> None:
    """``target`` regenerated into ``tmp_path`` is byte for byte what ``package/`` holds."""
    written = generator.generate(tmp_path, target=target)
    assert sorted(path.name for path in written) == sorted(names)
    for name in names:
        fresh = (tmp_path / name).read_bytes()
        committed = (REPO_ROOT / package / name).read_bytes()
        assert fresh == committed, f"{package}/{name} is stale; run python proto/generate.py"
    assert generator.stale_files(REPO_ROOT / package, target=target) == []


def coexist_script(ours: str, theirs: str, body: str) -> str:
    """A script importing ``ours`` and ``theirs`` in the order ``argv[1]`` names.

    ``argv[2]`` is the protobuf backend expected (or "any"); ``body`` runs after with
    ``ours``, ``theirs``, ``backend`` and ``default_pool`` defined.
    """
    first, second = textwrap.indent(ours, "    "), textwrap.indent(theirs, "    ")
    return f"""\
import sys
import warnings

warnings.simplefilter("error")
order, expected_backend = sys.argv[1], sys.argv[2]
if order == "ours-first":
{first}
{second}
else:
{second}
{first}

from google.protobuf import descriptor_pool
from google.protobuf.internal import api_implementation

backend = api_implementation.Type()
assert expected_backend in ("any", backend), (expected_backend, backend)
default_pool = descriptor_pool.Default()
{body}"""


def run_coexist_script(script: str, order: str, backend: str) -> list[str]:
    """The words ``script`` prints, run with ``order`` and protobuf's ``backend`` (or default)."""
    env = {k: v for k, v in os.environ.items() if k != "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    expected = "any"
    if backend == "python":
        env["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"
        expected = "python"
    result = subprocess.run(
        [sys.executable, "-X", "dev", "-c", script, order, expected],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    words = result.stdout.split()
    assert words[:1] == ["ok"], result.stdout
    if backend == "python":
        assert words[1] == "python"
    return words
