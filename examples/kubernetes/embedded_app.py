"""An application that embeds the health server: the program ``embedded.yaml`` runs.

One ``wire.Server`` carries the application's own method (``/payments.Payments/Echo`` here)
and ``grpc.health.v1.Health``; ``KubernetesProbes`` keeps the ``liveness`` / ``readiness`` pair
the manifest's probes ask for; the admin API (``/metrics`` too, with ``--metrics``) listens on
``--admin-host``, its mutating endpoints behind ``--admin-token-file`` when given.

Shutdown is what the manifest's ``terminationGracePeriodSeconds`` is sized for: on SIGTERM,
readiness turns NOT_SERVING at once while every call is still answered, for
``--shutdown-delay`` seconds (the endpoints drop the pod meanwhile); then the server drains
(every service NOT_SERVING, Watch streams end, GOAWAY) and calls in flight get ``--grace``
seconds. A second signal stops at once. Startup mistakes are one line on stderr, exit 2.

Run it: ``python examples/kubernetes/embedded_app.py --grpc-port 50051 --admin-port 8081``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from functools import partial

import trio

from health import HealthService, HealthState
from health.admin import AdminServer, AdminTokenError, format_address
from health.kubernetes import KubernetesProbes
from wire import Server, ServerCall, unary_unary

logger = logging.getLogger("payments")
PROG = "embedded_app.py"


def echo(request: bytes, call: ServerCall) -> bytes:
    """The application's own method: answer with the request."""
    return request


def build_parser() -> argparse.ArgumentParser:
    """The command line ``embedded.yaml`` passes."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n", 1)[0])
    p.add_argument("--grpc-host", default="127.0.0.1",
                   help="gRPC listen address (0.0.0.0 in a pod; default %(default)s)")
    p.add_argument("--grpc-port", type=int, default=50051, help="default %(default)s")
    p.add_argument("--admin-host", default="127.0.0.1", help="default %(default)s")
    p.add_argument("--admin-port", type=int, default=None, help="admin API port (default: none)")
    p.add_argument("--admin-token-file", default=None,
                   help="bearer token for the admin API's mutating endpoints")
    p.add_argument("--metrics", action="store_true", help="GET /metrics on the admin port")
    p.add_argument("--shutdown-delay", type=float, default=0.0,
                   help="seconds NOT_SERVING (still answering) after SIGTERM before the drain")
    p.add_argument("--grace", type=float, default=5.0,
                   help="seconds calls in flight get once the drain starts")
    return p


class App:
    """The application: its server, its health, its admin API."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.state = HealthState()
        self.probes = KubernetesProbes(self.state)  # readiness NOT_SERVING until started
        self.service = HealthService(self.state)
        self.server = Server([unary_unary("/payments.Payments/Echo", echo, bytes, bytes)])
        self.service.attach(self.server)
        routes = {}
        if args.metrics:
            from health.metrics import HealthMetrics  # needs the metrics extra

            routes["/metrics"] = HealthMetrics(self.state, service=self.service).http_response
        self.admin = AdminServer(self.state, extra_routes=routes,
                                 token_file=args.admin_token_file)

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT, then shut down as the module docstring says."""
        args = self.args
        stop = trio.Event()
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._signals, signals, stop, nursery.cancel_scope)
                host, port = await nursery.start(self.server.serve_tcp, args.grpc_host,
                                                 args.grpc_port)
                logger.info("gRPC on %s", format_address(host, port))
                print(f"listening {port}", flush=True)
                if args.admin_port is not None:
                    admin_host, admin_port = await nursery.start(
                        self.admin.serve_tcp, args.admin_host, args.admin_port)
                    logger.info("admin API on http://%s", format_address(admin_host,
                                                                          admin_port))
                    print(f"admin {admin_port}", flush=True)
                self.probes.set_ready(True)
                await stop.wait()
                logger.info("shutting down: NOT_SERVING for %.1f s, then a %.1f s drain",
                            args.shutdown_delay, args.grace)
                self.probes.drain()
                await trio.sleep(args.shutdown_delay)
                await self.server.shutdown(args.grace)
                nursery.cancel_scope.cancel()

    @staticmethod
    async def _signals(signals: AsyncIterator[int], stop: trio.Event,
                       scope: trio.CancelScope) -> None:
        async for _ in signals:
            if stop.is_set():
                scope.cancel()
                return
            stop.set()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the application; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = App(args)
    except AdminTokenError as exc:
        print(f"{PROG}: error: --admin-token-file: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"{PROG}: error: --metrics needs the metrics extra "
              f"(pip install 'trio-grpc-health[metrics]'): {exc}", file=sys.stderr)
        return 2
    try:
        trio.run(partial(App.run, app))
    except Exception as exc:
        error = _os_error(exc)
        if error is None:
            raise
        print(f"{PROG}: error: cannot listen: {error.strerror or error}", file=sys.stderr)
        return 2
    return 0


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError inside ``exc`` (Trio's nurseries wrap it in exception groups)."""
    for _ in range(8):  # bounded: nurseries nest only a few deep here
        if isinstance(exc, OSError):
            return exc
        members = getattr(exc, "exceptions", None)
        if not members:
            return None
        exc = members[0]
    return None


if __name__ == "__main__":
    sys.exit(main())
