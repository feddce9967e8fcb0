"""The network-namespace harness itself: traffic passes, a partition silences it, heal restores,
and the namespaces are gone afterwards."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from . import netns
from .netns import NetnsPair, netns_pair, require_netns

_ECHO = """
import socket
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 7000))
srv.listen()
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    conn.settimeout(30)
    try:
        while (data := conn.recv(100)):
            conn.sendall(data)
    except OSError:
        pass
    conn.close()
"""

_CLIENT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], 7000), timeout=float(sys.argv[2])) as sock:
        sock.sendall(b"ping")
        print(sock.recv(100).decode())
except OSError as exc:
    print(type(exc).__name__)
"""


def _client(pair: NetnsPair, timeout: float) -> str:
    done = subprocess.run(pair.exec_argv(pair.client_ns, [sys.executable, "-c", _CLIENT,
                                                           pair.server_addr, str(timeout)]),
                          capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.strip()


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                          timeout=30, check=True).stdout


def test_partition_silences_the_path_and_heal_restores_it() -> None:
    require_netns()
    with netns_pair() as pair:
        names = (pair.client_ns, pair.server_ns)
        assert all(name in _namespaces() for name in names)
        server = pair.popen(pair.server_ns, [sys.executable, "-c", _ECHO],
                            stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        assert _client(pair, 5) == "ping"
        pair.partition()
        # Not refused, not reset: the connection attempt just never hears back.
        assert _client(pair, 1) == "TimeoutError"
        pair.heal()
        assert _client(pair, 5) == "ping"
    assert not any(name in _namespaces() for name in names)
    assert server.poll() is not None


def test_the_reason_is_given_where_namespaces_are_not_allowed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(sys, "platform", "linux")
    assert netns.netns_unavailable() == "creating network namespaces needs root"
    with pytest.raises(pytest.skip.Exception, match="needs root"):
        netns.require_netns()
