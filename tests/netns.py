"""A network-namespace fault harness: a real silent partition between two processes.

``netns_pair()`` creates two fresh network namespaces, a client's and a server's, joined by a
veth pair (198.18.0.1 and 198.18.0.2, the benchmarking range, which exists only inside them), and
always deletes both on the way out, killing what it started in them. ``pair.popen(ns, argv)``
runs a process in one of them. ``pair.partition()`` installs an nftables table (iptables where
nft is missing) in the server's namespace that drops every packet in both directions: no FIN,
no RST, no ICMP, exactly what a pulled cable or a dead host looks like. ``pair.heal()`` removes
it. The host's own network namespace is never touched.

Creating namespaces needs root and the ``ip`` tool; ``netns_unavailable()`` says why it cannot
be done here and ``require_netns()`` skips a test with that reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest

__all__ = ["CLIENT_ADDR", "SERVER_ADDR", "NetnsPair", "netns_pair", "netns_unavailable",
           "require_netns"]

CLIENT_ADDR = "198.18.0.1"
SERVER_ADDR = "198.18.0.2"
_TABLE = "tgh_fault"
_NFT_DROP = f"""table inet {_TABLE} {{
  chain input {{ type filter hook input priority -100; policy drop; }}
  chain output {{ type filter hook output priority -100; policy drop; }}
}}
"""


def _run(argv: Sequence[str], *, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=30,
                          check=False)


def _firewall() -> str | None:
    for tool in ("nft", "iptables"):
        if shutil.which(tool):
            return tool
    return None


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be used for fault tests here (None: they can)."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces are Linux only (this is {sys.platform})"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    if shutil.which("ip") is None:
        return "the ip tool (iproute2) is not installed"
    if _firewall() is None:
        return "neither nft nor iptables is installed (apt-get install -y nftables)"
    probe = f"tghprobe{uuid.uuid4().hex[:6]}"
    made = _run(["ip", "netns", "add", probe])
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip() or made.returncode}"
    _run(["ip", "netns", "del", probe])
    return None


def require_netns() -> None:
    """Skip the calling test, with the reason, where namespaces are not allowed."""
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(f"network namespace fault test skipped: {reason}")


class NetnsPair:
    """Two namespaces and the veth between them; see the module docstring."""

    def __init__(self, tag: str) -> None:
        self.client_ns = f"tgh{tag}c"
        self.server_ns = f"tgh{tag}s"
        self.client_addr = CLIENT_ADDR
        self.server_addr = SERVER_ADDR
        self._tag = tag
        self._procs: list[subprocess.Popen[Any]] = []
        self.partitioned = False

    def _must(self, argv: Sequence[str], stdin: str | None = None) -> None:
        done = _run(argv, stdin=stdin)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")

    def create(self) -> None:
        """Make the namespaces and the veth pair, addresses up."""
        client, server = self.client_ns, self.server_ns
        vc, vs = f"tgh{self._tag}vc", f"tgh{self._tag}vs"
        self._must(["ip", "netns", "add", client])
        self._must(["ip", "netns", "add", server])
        self._must(["ip", "link", "add", vc, "netns", client, "type", "veth", "peer", "name",
                    vs, "netns", server])
        for ns, dev, addr in ((client, vc, self.client_addr), (server, vs, self.server_addr)):
            self._must(["ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", dev])
            self._must(["ip", "-n", ns, "link", "set", dev, "up"])
            self._must(["ip", "-n", ns, "link", "set", "lo", "up"])

    def exec_argv(self, ns: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside namespace ``ns``."""
        return ["ip", "netns", "exec", ns, *argv]

    def popen(self, ns: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in ``ns``; it is killed when the pair is deleted."""
        proc: subprocess.Popen[Any] = subprocess.Popen(self.exec_argv(ns, argv), **kwargs)
        self._procs.append(proc)
        return proc

    def partition(self) -> None:
        """Drop every packet to and from the server's namespace, silently."""
        if _firewall() == "nft":
            self._must(self.exec_argv(self.server_ns, ["nft", "-f", "-"]), stdin=_NFT_DROP)
        else:
            for chain in ("INPUT", "OUTPUT"):
                self._must(self.exec_argv(self.server_ns,
                                          ["iptables", "-I", chain, "-j", "DROP"]))
        self.partitioned = True

    def heal(self) -> None:
        """Let packets through again."""
        if not self.partitioned:
            return
        if _firewall() == "nft":
            self._must(self.exec_argv(self.server_ns, ["nft", "delete", "table", "inet",
                                                       _TABLE]))
        else:
            for chain in ("INPUT", "OUTPUT"):
                self._must(self.exec_argv(self.server_ns,
                                          ["iptables", "-D", chain, "-j", "DROP"]))
        self.partitioned = False

    def delete(self) -> None:
        """Kill what was started in the namespaces and delete them (deleting the veth too)."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        self._procs.clear()
        for ns in (self.client_ns, self.server_ns):
            _run(["ip", "netns", "del", ns])


@contextmanager
def netns_pair() -> Iterator[NetnsPair]:
    """Two fresh namespaces joined by a veth pair; always deleted on exit."""
    pair = NetnsPair(uuid.uuid4().hex[:6])
    try:
        pair.create()
        yield pair
    finally:
        pair.delete()
