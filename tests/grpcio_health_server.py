"""A grpcio health server run as a subprocess: the interop peer for client and probe tests.

Run as a script it starts ``grpc.server`` with grpcio-health-checking's ``HealthServicer`` on
127.0.0.1 (port 0, or a Unix socket with ``--unix PATH``; TLS with ``--tls CERT KEY``), prints
the bound port on the first line of stdout, then obeys one command per stdin line, answering
each with ``ok``:

* ``set SERVICE STATUS`` (``-`` names the ``""`` service), ``clear SERVICE``
* ``shutdown`` (graceful: every service NOT_SERVING), ``stop`` (the server stops at once)

A Check for the service ``slow`` sleeps 5 s first, to exercise deadlines. The server exits when
stdin closes. Imported, this module offers ``GrpcioHealthServer`` to start and drive it; only the
subprocess imports grpc.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import trio

SLOW_SERVICE = "slow"


def _serve(argv: list[str]) -> int:
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    parser = argparse.ArgumentParser()
    parser.add_argument("--unix")
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    args = parser.parse_args(argv)

    class Servicer(health.HealthServicer):  # type: ignore[misc]
        def Check(self, request: object, context: object) -> object:
            if getattr(request, "service", "") == SLOW_SERVICE:
                time.sleep(5)
            return super().Check(request, context)

    servicer = Servicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    address = f"unix:{args.unix}" if args.unix else "127.0.0.1:0"
    if args.tls:
        cert, key = (Path(p).read_bytes() for p in args.tls)
        port = server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
    else:
        port = server.add_insecure_port(address)
    server.start()
    print(port, flush=True)
    statuses = health_pb2.HealthCheckResponse.ServingStatus
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "set":
            name = "" if words[1] == "-" else words[1]
            servicer.set(name, statuses.Value(words[2]))
        elif words[0] == "clear":
            name = "" if words[1] == "-" else words[1]
            # grpcio's servicer has no removal; forget the name so Check says NOT_FOUND again.
            with servicer._lock:  # noqa: SLF001 (grpcio's servicer has no public removal)
                servicer._server_status.pop(name, None)  # noqa: SLF001 (as above)
        elif words[0] == "shutdown":
            servicer.enter_graceful_shutdown()
        elif words[0] == "stop":
            server.stop(None).wait()
        print("ok", flush=True)
    server.stop(None)
    # A "slow" Check may still be sleeping in a worker thread; don't wait for it.
    sys.stdout.flush()
    os._exit(0)


class GrpcioHealthServer:
    """A running grpcio health server subprocess, driven through its stdin."""

    def __init__(self, proc: subprocess.Popen[str], port: int) -> None:
        self.proc = proc
        self.port = port
        self.address = f"127.0.0.1:{port}"

    @classmethod
    @contextmanager
    def start(cls, *args: str) -> Iterator[GrpcioHealthServer]:
        """Start the subprocess and wait for its port; stop it on exit."""
        proc = subprocess.Popen(
            [sys.executable, __file__, *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            if not first.strip().isdigit():
                raise RuntimeError(f"grpcio health server did not start: {first!r}")
            yield cls(proc, int(first))
        finally:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()

    def command(self, line: str) -> None:
        """Send one command and wait for its ``ok`` (blocking; use ``acommand`` in Trio)."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if answer.strip() != "ok":
            raise RuntimeError(f"grpcio health server answered {answer!r} to {line!r}")

    async def acommand(self, line: str) -> None:
        """``command`` from a Trio task, in a thread so the event loop keeps running."""
        # A wedged server fails the test instead of hanging it.
        with trio.fail_after(10):
            await trio.to_thread.run_sync(self.command, line, abandon_on_cancel=True)

    async def set(self, service: str, status: str) -> None:
        """Set a service's status (``""`` is the server as a whole)."""
        await self.acommand(f"set {service or '-'} {status}")

    async def clear(self, service: str) -> None:
        """Forget a service, so Check answers NOT_FOUND for it."""
        await self.acommand(f"clear {service or '-'}")


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[1:]))
