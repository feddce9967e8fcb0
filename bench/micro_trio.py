"""Micro-benchmark of the Trio layer: our server answering 1x1 Checks over an in-memory stream.

    python bench/micro_trio.py [--requests 8000]

``wire.Server.serve_stream`` (the connection driver, its read loop and writer, the sans-I/O
connection on the default engine, the health service) runs in the same process as a client that
sends one Check (bytes prepared by ``micro_wire.client_bytes``) and waits for its trailers before
the next, like h2load at 1x1. No sockets: what it times is the per-round-trip Python work of the
Trio layer on top of what ``micro_wire.py`` measures. The figure is client and server together;
compare two versions of wire/ by alternating runs, not with ``run.py``'s numbers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parent))

from micro_wire import client_bytes

WARM_UP = 500


def _trailers(buf: bytearray) -> int:
    """Drop the complete frames at the start of ``buf``; how many ended a stream."""
    ended = 0
    while len(buf) >= 9:
        length = int.from_bytes(buf[:3], "big")
        if len(buf) < 9 + length:
            break
        if buf[3] == 0x1 and buf[4] & 0x1:  # HEADERS with END_STREAM: the call's trailers
            ended += 1
        del buf[:9 + length]
    return ended


async def run(requests: int) -> float:
    """CPU seconds per Check after the warm-up."""
    from health.service import HealthService
    from wire.server import Server

    start, batches = client_bytes(requests + WARM_UP, 1)
    server = Server(HealthService().handlers())
    client, server_end = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve_stream, server_end)
        await client.send_all(start)
        buf = bytearray()
        began = 0.0
        for i, request in enumerate(batches):
            if i == WARM_UP:
                began = time.process_time()
            await client.send_all(request)
            while not _trailers(buf):
                buf += await client.receive_some(65536)
        spent = time.process_time() - began
        await client.aclose()
        nursery.cancel_scope.cancel()
    return spent / requests


def main() -> int:
    """Run and print CPU µs per Check."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=8000, help="timed Checks (after 500 warm-up)")
    args = p.parse_args()
    if args.requests < 1:
        p.error("--requests must be at least 1")
    per = trio.run(run, args.requests)
    print(f"{per * 1e6:.1f} µs CPU per 1x1 Check (client and server, in-process)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
