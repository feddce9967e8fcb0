"""wire.admission: descriptor limit, connection cap, eviction choice and accept back-off."""

from __future__ import annotations

import errno
import json
import logging
import subprocess
import sys
from dataclasses import dataclass

import pytest

from wire.admission import (
    RESOURCE_ERRNOS,
    AcceptBackoff,
    connection_cap,
    effective_max_connections,
    pick_eviction,
    raise_nofile_limit,
)

resource = pytest.importorskip("resource")


def test_raise_nofile_limit_lifts_the_soft_limit_to_the_hard_one() -> None:
    # In a child, so this test process keeps its own limits.
    script = (
        "import json, resource\n"
        "from wire.admission import raise_nofile_limit\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))\n"
        "got = raise_nofile_limit()\n"
        "print(json.dumps([got.before, got.soft, got.hard, got.raised,\n"
        "                  resource.getrlimit(resource.RLIMIT_NOFILE)[0]]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    before, soft, hard, raised, now = json.loads(out)
    hard_here = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    expected = hard_here if hard_here != resource.RLIM_INFINITY else 1 << 20
    assert before == min(256, hard_here)
    assert soft == now == expected
    assert hard == hard_here
    assert raised == (expected > before)


def test_raise_nofile_limit_under_an_unlimited_hard_limit_uses_the_ceiling(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (1024, resource.RLIM_INFINITY))
    monkeypatch.setattr(resource, "setrlimit", lambda _which, limits: calls.append(limits))
    got = raise_nofile_limit(ceiling=65536)
    assert got is not None
    assert (got.before, got.soft, got.raised) == (1024, 65536, True)
    assert calls == [(65536, resource.RLIM_INFINITY)]


def test_a_refused_raise_keeps_the_old_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(_which: int, _limits: tuple[int, int]) -> None:
        raise ValueError("not allowed")

    monkeypatch.setattr(resource, "getrlimit", lambda _which: (1024, 4096))
    monkeypatch.setattr(resource, "setrlimit", refuse)
    got = raise_nofile_limit()
    assert got is not None
    assert (got.before, got.soft, got.hard, got.raised) == (1024, 1024, 4096, False)


def test_an_already_high_limit_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(_which: int, _limits: tuple[int, int]) -> None:
        raise AssertionError("setrlimit called")

    monkeypatch.setattr(resource, "getrlimit", lambda _which: (4096, 4096))
    monkeypatch.setattr(resource, "setrlimit", forbidden)
    got = raise_nofile_limit()
    assert got is not None
    assert not got.raised


@pytest.mark.parametrize(("nofile", "cap"), [
    (1024, 896), (256, 192), (100, 36), (64, 32), (20000, 17500), (1 << 20, (1 << 20) - 4096),
    (2, 1), (1, 1),
])
def test_connection_cap_keeps_a_reserve(nofile: int, cap: int) -> None:
    assert connection_cap(nofile) == cap


def test_effective_cap_is_the_lower_of_configured_and_descriptors() -> None:
    assert effective_max_connections(10_000, 1024) == 896
    assert effective_max_connections(500, 1024) == 500
    assert effective_max_connections(10_000, None) == 10_000
    assert effective_max_connections(10_000, resource.RLIM_INFINITY) == 10_000


@dataclass
class _Conn:
    name: str
    open_calls: int
    idle_since: float


def test_eviction_takes_the_longest_idle_without_calls() -> None:
    conns = [_Conn("busy-oldest", 1, 0.0), _Conn("idle-new", 0, 50.0),
             _Conn("idle-old", 0, 10.0), _Conn("busy", 3, 5.0), _Conn("idle-newest", 0, 60.0)]
    chosen = pick_eviction(conns)
    assert chosen is not None
    assert chosen.name == "idle-old"


def test_eviction_refuses_when_every_connection_has_calls() -> None:
    assert pick_eviction([_Conn("a", 1, 0.0), _Conn("b", 2, 1.0)]) is None
    assert pick_eviction([]) is None


def test_resource_errnos() -> None:
    assert {errno.EMFILE, errno.ENFILE} <= RESOURCE_ERRNOS
    assert errno.ECONNABORTED not in RESOURCE_ERRNOS


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _emfile() -> OSError:
    return OSError(errno.EMFILE, "Too many open files")


def test_backoff_doubles_to_a_second_and_resets(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    backoff = AcceptBackoff(logging.getLogger("test.accept"), clock)
    delays = [backoff.failed(_emfile()) for _ in range(10)]
    assert delays[:4] == [0.01, 0.02, 0.04, 0.08]
    assert delays[-1] == 1.0
    assert max(delays) == 1.0
    backoff.succeeded()
    assert backoff.failed(_emfile()) == 0.01
    assert backoff.failures == 11


def test_backoff_logs_at_most_once_per_ten_seconds_with_a_count(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    backoff = AcceptBackoff(logging.getLogger("test.accept"), clock)
    with caplog.at_level(logging.WARNING, logger="test.accept"):
        for _ in range(200):  # 200 failures over 20 s
            backoff.failed(_emfile())
            clock.now += 0.1
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("accept failed (EMFILE: Too many open files)")
    assert lines[1].startswith("accept failed 100 times since the last report 10 s ago")
    # Nothing in the log names a peer (there is none: accept itself failed).
    assert all("EMFILE" in line for line in lines)

