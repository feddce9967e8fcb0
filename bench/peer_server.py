"""A peer gRPC health server for the benchmarks; runs in ``bench/.venv-peers``, never in ours.

    python bench/peer_server.py grpclib|grpcio [--host H] [--port N] [--service NAME=STATUS ...]

* ``grpclib``: ``grpclib.server.Server`` with ``grpclib.health.service.Health``; each named
  service has its own ``grpclib.health.check.ServiceStatus`` (True = SERVING, False =
  NOT_SERVING, None = UNKNOWN).
* ``grpcio``: ``grpc.aio.server()`` with grpcio-health-checking's asyncio servicer
  (``grpc_health.v1.health.aio.HealthServicer``); if the installed version had no asyncio
  servicer, the sync ``HealthServicer`` in a sync ``grpc.server`` would be used (``--sync`` forces
  that) and the first line says which.

Prints ``listening PORT <variant>`` once bound, then obeys one command per stdin line and answers
``ok`` (or ``error ...``):

* ``set NAME STATUS`` (``-`` names the ``""`` service; STATUS SERVING/NOT_SERVING/UNKNOWN)
* ``quit``

It exits when stdin closes. Only the standard library and the peer packages are imported.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from typing import Any

STATUSES = {"UNKNOWN": 0, "SERVING": 1, "NOT_SERVING": 2}
# grpc-core queues calls the application has not yet accepted and, above 1,000 of them (soft
# limit, random early rejection; 3,000 hard), cancels new ones: 2,000 Watch calls arriving at
# once on grpc.aio.server's defaults get CANCELLED. Raised so the fan-out can be measured.
GRPCIO_OPTIONS = [("grpc.server.max_pending_requests", 100000),
                  ("grpc.server.max_pending_requests_hard_limit", 100000)]


def _service(text: str) -> tuple[str, str]:
    name, _, status = text.rpartition("=")
    if status not in STATUSES:
        raise argparse.ArgumentTypeError(f"bad status in {text!r}")
    return name, status


async def _stdin_lines(handle: Any) -> None:
    """Read commands from stdin without a thread; ``handle(name, status)`` may be async."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return
        words = line.decode().split()
        if not words:
            continue
        if words[0] == "quit":
            return
        if words[0] == "set" and len(words) == 3 and words[2] in STATUSES:
            name = "" if words[1] == "-" else words[1]
            result = handle(name, words[2])
            if asyncio.iscoroutine(result):
                await result
            print("ok", flush=True)
        else:
            print(f"error unknown command {line!r}", flush=True)


# ---------------------------------------------------------------------------------- grpclib


async def _run_grpclib(host: str, port: int, services: list[tuple[str, str]]) -> None:
    from grpclib.health.check import ServiceStatus  # type: ignore[import-not-found]
    from grpclib.health.service import OVERALL, Health  # type: ignore[import-not-found]
    from grpclib.server import Server  # type: ignore[import-not-found]

    values = {"SERVING": True, "NOT_SERVING": False, "UNKNOWN": None}

    class _Named:
        """Stands for a service in grpclib's Health: only its ``__mapping__`` is read."""

        def __init__(self, name: str) -> None:
            self.name = name

        def __mapping__(self) -> dict[str, Any]:
            return {f"/{self.name}/Method": None}

    checks: dict[Any, list[Any]] = {}
    statuses: dict[str, Any] = {}
    for name, status in services:
        check = ServiceStatus()
        check.set(values[status])
        statuses[name] = check
        checks[OVERALL if name == "" else _Named(name)] = [check]
    if "" not in statuses:
        # grpclib's "" aggregates every check; keep it SERVING on its own like the others.
        checks[OVERALL] = []
    health = Health(checks)
    server = Server([health])
    # Bound here so the port is known without reading grpclib's private asyncio server.
    sock = socket.create_server((host, port))
    await server.start(sock=sock)
    bound = sock.getsockname()[1]
    print(f"listening {bound} grpclib.health.service.Health on grpclib.server.Server", flush=True)

    def handle(name: str, status: str) -> None:
        if name not in statuses:
            raise SystemExit(f"grpclib peer: service {name!r} was not declared with --service")
        statuses[name].set(values[status])

    try:
        await _stdin_lines(handle)
    finally:
        server.close()
        await server.wait_closed()


# ----------------------------------------------------------------------------------- grpcio


async def _run_grpcio_aio(host: str, port: int, services: list[tuple[str, str]]) -> None:
    import grpc
    from grpc_health.v1 import health, health_pb2_grpc

    servicer = health.aio.HealthServicer()
    for name, status in services:
        await servicer.set(name, STATUSES[status])
    server = grpc.aio.server(options=GRPCIO_OPTIONS)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"listening {bound} grpc_health.v1.health.aio.HealthServicer on grpc.aio.server "
          f"(grpcio {grpc.__version__}; max_pending_requests raised to 100000)", flush=True)
    try:
        await _stdin_lines(lambda name, status: servicer.set(name, STATUSES[status]))
    finally:
        await server.stop(None)


def _run_grpcio_sync(host: str, port: int, services: list[tuple[str, str]]) -> None:
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health, health_pb2_grpc

    servicer = health.HealthServicer()
    for name, status in services:
        servicer.set(name, STATUSES[status])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=GRPCIO_OPTIONS)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    print(f"listening {bound} grpc_health.v1.health.HealthServicer (sync) on grpc.server "
          f"(grpcio {grpc.__version__}, 16 threads)", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "quit":
            break
        if words[0] == "set" and len(words) == 3 and words[2] in STATUSES:
            servicer.set("" if words[1] == "-" else words[1], STATUSES[words[2]])
            print("ok", flush=True)
        else:
            print(f"error unknown command {line!r}", flush=True)
    server.stop(None)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["grpclib", "grpcio"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--service", action="append", type=_service, default=[])
    p.add_argument("--sync", action="store_true", help="grpcio: the sync servicer and server")
    args = p.parse_args()
    services = [("", "SERVING"), *args.service]
    if args.kind == "grpclib":
        asyncio.run(_run_grpclib(args.host, args.port, services))
        return 0
    use_sync = args.sync
    if not use_sync:
        try:
            from grpc_health.v1 import health

            use_sync = not hasattr(health, "aio")
        except ImportError:
            use_sync = True
    if use_sync:
        _run_grpcio_sync(args.host, args.port, services)
    else:
        asyncio.run(_run_grpcio_aio(args.host, args.port, services))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
