"""TCP keepalive across a real silent partition (network namespaces; skipped with the reason
where the machine does not allow creating them).

A server in one namespace and a client in another, a call open between them and no HTTP/2
keepalive on either side; then every packet is dropped both ways. Only TCP keepalive (with
TCP_USER_TIMEOUT) can notice: the server must release the call and the client must fail it,
each within the detection time of the settings used here (a few seconds) plus slack.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from queue import Empty, Queue

from .netns import netns_pair, require_netns

ROOT = Path(__file__).resolve().parents[1]
PORT = 7001
# Detection in 3 s on Linux (probe at 1 s and 2 s, dropped at 3 s by the user timeout).
KEEPALIVE = "TcpKeepalive(idle=1, interval=1, count=2, user_timeout=3)"
BOUND = 15.0

_SERVER = f"""
import trio
from wire import Server, ServerOptions
from wire.sockopts import TcpKeepalive
from tests.wire.service import WireService

async def main():
    service = WireService()
    server = Server(service.handlers(), options=ServerOptions(tcp_keepalive={KEEPALIVE}))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_tcp, "0.0.0.0", {PORT})
        print("ready", flush=True)
        await service.started.wait()
        print("started", flush=True)
        await service.cancelled.wait()
        print("released", flush=True)
        nursery.cancel_scope.cancel()

trio.run(main)
"""

_CLIENT = f"""
import sys
import trio
from wire import ClientConfig, RpcError, open_channel
from wire.sockopts import TcpKeepalive

async def main():
    config = ClientConfig(tcp_keepalive={KEEPALIVE})
    async with open_channel(sys.argv[1], config=config) as channel:
        try:
            await channel.unary_unary("/test.Wire/Sleep", b"", timeout=120)
        except RpcError as exc:
            print("failed", exc.code.name, flush=True)

trio.run(main)
"""


def _lines(proc: subprocess.Popen[str], out: Queue[tuple[str, float]]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        out.put((line.strip(), time.monotonic()))


def _expect(out: Queue[tuple[str, float]], prefix: str, bound: float) -> float:
    """Wait for a line starting with ``prefix``; when it came."""
    deadline = time.monotonic() + bound
    while True:
        try:
            line, at = out.get(timeout=max(0.01, deadline - time.monotonic()))
        except Empty:
            raise AssertionError(f"no {prefix!r} within {bound} s") from None
        if line.startswith(prefix):
            return at


def test_tcp_keepalive_finds_a_silently_partitioned_peer() -> None:
    require_netns()
    with netns_pair() as pair:
        events: Queue[tuple[str, float]] = Queue()
        server = pair.popen(pair.server_ns, [sys.executable, "-c", _SERVER], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
        threading.Thread(target=_lines, args=(server, events), daemon=True).start()
        _expect(events, "ready", BOUND)
        client = pair.popen(pair.client_ns, [sys.executable, "-c", _CLIENT,
                                             f"{pair.server_addr}:{PORT}"],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
        threading.Thread(target=_lines, args=(client, events), daemon=True).start()
        _expect(events, "started", BOUND)
        pair.partition()
        cut = time.monotonic()
        seen: dict[str, float] = {}
        deadline = cut + BOUND
        # Both ends must notice; the order is theirs.
        while len(seen) < 2:
            try:
                line, at = events.get(timeout=max(0.01, deadline - time.monotonic()))
            except Empty:
                raise AssertionError(f"not both ends noticed within {BOUND} s: {seen}") from None
            if line in ("released", "failed UNAVAILABLE"):
                seen[line] = at - cut
        print(f"silent partition: server released the call after {seen['released']:.1f} s, "
              f"client failed it UNAVAILABLE after {seen['failed UNAVAILABLE']:.1f} s")
