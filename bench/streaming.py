"""Client-streaming and bidi throughput, ours against grpcio, and what a stalled handler holds.

Runs in one process on 127.0.0.1, our ``Channel`` as the client of both servers (so the
servers are compared, not the clients): grpcio's ``grpc.server`` (its own threads) and ours
(``wire.Server`` in this Trio run, on each HTTP/2 engine: h2 and native).

* ``client-stream``: one call sending ``--messages`` messages of ``--size`` bytes to Count;
  messages per second, best of ``--runs``.
* ``bidi ping-pong``: ``--round-trips`` send/receive pairs on one Echo call; round trips per
  second, best of ``--runs``.
* ``stalled handler``: our server only. The handler does not read while the client offers 64
  MiB; the bytes our server then buffers (``RequestStream.buffered``) against its stream window.

Usage: ``.venv/bin/python bench/streaming.py [--messages 20000] [--size 64] [--round-trips 2000]
[--runs 3]``. Takes a few seconds; every wait is bounded. Numbers depend on the machine's load.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.interop.grpcio_streaming import COUNT, ECHO, GrpcioStreamingServer
from tests.wire.streaming_service import HOLD, StreamingService
from wire import Server, ServerConfig, open_channel
from wire.http2 import ENGINES

#: Bounds every measurement, against hangs.
STEP_TIMEOUT = 120.0


def _config(engine: str) -> ServerConfig:
    return ServerConfig(http2=engine)


async def _payloads(count: int, size: int) -> AsyncIterator[bytes]:
    data = b"s" * size
    for _ in range(count):
        yield data


async def client_stream(target: str, count: int, size: int) -> float:
    """Messages per second of one client stream of ``count`` messages."""
    async with open_channel(target) as channel:
        await channel.stream_unary(COUNT, [b"warm"], timeout=STEP_TIMEOUT)
        start = time.perf_counter()
        await channel.stream_unary(COUNT, _payloads(count, size), timeout=STEP_TIMEOUT)
        return count / (time.perf_counter() - start)


async def ping_pong(target: str, round_trips: int, size: int) -> float:
    """Round trips per second of send-then-receive on one bidi call."""
    data = b"p" * size
    async with open_channel(target) as channel, \
            channel.stream_stream(ECHO, timeout=STEP_TIMEOUT) as stream:
        await stream.send(data)
        await stream.receive()
        start = time.perf_counter()
        for _ in range(round_trips):
            await stream.send(data)
            await stream.receive()
        elapsed = time.perf_counter() - start
        await stream.done_writing()
        return round_trips / elapsed


async def stalled_buffer(engine: str) -> tuple[int, int]:
    """(bytes buffered by a handler that does not read, the stream window) on our server."""
    service = StreamingService()
    config = _config(engine)
    server = Server(service.handlers(), config=config)
    async with trio.open_nursery() as nursery:

        async def connect() -> trio.abc.Stream:
            client, server_side = trio.testing.memory_stream_pair()
            nursery.start_soon(server.serve_stream, server_side)
            return client

        async with open_channel("memory:1", connector=connect) as channel, \
                trio.open_nursery() as calls:

            async def offer() -> None:
                await channel.stream_unary(HOLD, _payloads(4096, 16 * 1024),
                                           timeout=STEP_TIMEOUT)

            calls.start_soon(offer)
            with trio.fail_after(STEP_TIMEOUT):
                await service.hold_started.wait()
            await trio.testing.wait_all_tasks_blocked()
            buffered = int(service.hold_requests.buffered)
            service.release.set()  # the call then completes before the channel closes
        nursery.cancel_scope.cancel()
    return buffered, config.initial_window_size


async def _ours(engine: str, args: argparse.Namespace) -> tuple[float, float]:
    server = Server(StreamingService().handlers(), config=_config(engine))
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
        target = f"127.0.0.1:{port}"
        streams = [await client_stream(target, args.messages, args.size) for _ in range(args.runs)]
        pongs = [await ping_pong(target, args.round_trips, args.size) for _ in range(args.runs)]
        await server.shutdown(grace=1)
    return max(streams), max(pongs)


async def _grpcio(args: argparse.Namespace) -> tuple[float, float]:
    with GrpcioStreamingServer() as peer:
        streams = [await client_stream(peer.target, args.messages, args.size)
                   for _ in range(args.runs)]
        pongs = [await ping_pong(peer.target, args.round_trips, args.size)
                 for _ in range(args.runs)]
    return max(streams), max(pongs)


async def main(args: argparse.Namespace) -> None:
    print(f"client stream: {args.messages} x {args.size} B; ping-pong: {args.round_trips} "
          f"round trips of {args.size} B; best of {args.runs}; client: wire.Channel")
    print(f"{'server':<16} {'client-stream msg/s':>20} {'bidi round trips/s':>20}")
    for engine in ENGINES:
        with trio.fail_after(STEP_TIMEOUT * 4):
            stream, pong = await _ours(engine, args)
        print(f"{'ours (' + engine + ')':<16} {stream:>20,.0f} {pong:>20,.0f}")
    with trio.fail_after(STEP_TIMEOUT * 4):
        stream, pong = await _grpcio(args)
    print(f"{'grpcio':<16} {stream:>20,.0f} {pong:>20,.0f}")
    for engine in ENGINES:
        buffered, window = await stalled_buffer(engine)
        print(f"stalled handler ({engine}), 64 MiB offered: {buffered:,} B buffered "
              f"(stream window {window:,} B)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--round-trips", type=int, default=2_000)
    parser.add_argument("--runs", type=int, default=3)
    trio.run(main, parser.parse_args())
