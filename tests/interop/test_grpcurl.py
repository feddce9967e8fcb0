"""grpcurl as an interop peer: the helper in tests/interop/grpcurl.py.

Only the helper is tested here (it finds the packaged binary, reports its version, builds the
argv and refuses non-loopback targets). Tests of grpcurl against our server need bidi-streaming
calls in wire/ (server reflection is one) and come with them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.interop.grpcurl import grpcurl_command, require_grpcurl, run_grpcurl


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
