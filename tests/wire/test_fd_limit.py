"""A server under ``ulimit -n 1024`` is not locked shut by idle connections.

The server runs in a child process whose RLIMIT_NOFILE is 1,024 (soft and hard, so it cannot
raise it). 1,100 idle connections, each past the HTTP/2 preface, take it to its connection
cap; the longest-idle ones are closed to admit the newest, so a fresh call is still answered
within 1 s (a functional bound: before, every new client timed out).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.streams import receive_or_eof
from wire import open_channel

from .rawconn import BOUND, PREFACE, settings_frame
from .service import ECHO

resource = pytest.importorskip("resource")

ROOT = Path(__file__).resolve().parents[2]
FLOOD = 1_100

_SERVER = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
import trio
from wire import Server
from tests.wire.service import WireService

async def main():
    server = Server(WireService().handlers())
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
        print(port, server.connection_cap, flush=True)
        # Until the test closes our stdin.
        await trio.to_thread.run_sync(sys.stdin.read)
        nursery.cancel_scope.cancel()

trio.run(main)
"""


class _Flood:
    def __init__(self) -> None:
        self.served = 0
        self.closed = 0
        self.all_served = trio.Event()
        self.changed = trio.Event()

    async def connect(self, port: int, held: list[trio.SocketStream]) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        held.append(stream)
        await stream.send_all(PREFACE + settings_frame())
        served = False
        while True:
            data = await receive_or_eof(stream)
            if not data:
                self.closed += 1
                self.changed.set()
                return
            if not served:
                served = True
                self.served += 1
                self.changed.set()

    async def wait(self, predicate: object) -> None:
        while not predicate():  # type: ignore[operator]
            await self.changed.wait()
            self.changed = trio.Event()


@pytest.mark.skipif(resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 2 * FLOOD + 100,
                    reason="the test process itself needs more than 2,300 descriptors")
async def test_idle_connections_cannot_lock_out_a_fresh_call() -> None:
    proc = await trio.lowlevel.open_process([sys.executable, "-c", _SERVER], cwd=ROOT,
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdin is not None
    held: list[trio.SocketStream] = []
    try:
        line = b""
        with trio.fail_after(30):
            while not line.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(100)
                assert chunk, "the server exited before listening"
                line += chunk
        port, cap = (int(x) for x in line.split())
        assert 0 < cap < 1024
        flood = _Flood()
        async with trio.open_nursery() as nursery:
            for _ in range(FLOOD):
                nursery.start_soon(flood.connect, port, held)
            # Every connection got the server's SETTINGS; those beyond the cap made room by
            # evicting the longest idle ones (GOAWAY, close).
            with trio.fail_after(60):
                await flood.wait(lambda: flood.served + flood.closed >= FLOOD
                                 and flood.closed >= FLOOD - cap)
            print(f"{FLOOD} idle connections: {flood.served} served, {flood.closed} closed "
                  f"by the server (cap {cap})")
            async with open_channel(f"127.0.0.1:{port}") as channel:
                start = trio.current_time()
                with trio.fail_after(1):
                    reply = await channel.unary_unary(ECHO, b"fresh", timeout=1)
                print(f"fresh call answered in {trio.current_time() - start:.3f} s")
            assert reply.response == b"fresh"
            nursery.cancel_scope.cancel()
    finally:
        for stream in held:
            await trio.aclose_forcefully(stream)
        await proc.stdin.aclose()
        with trio.move_on_after(BOUND):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proc.stdout.aclose()
