"""Command line: ``python -m health serve`` (the health server) and ``python -m health probe``.

``serve`` runs a standalone gRPC health server (default 127.0.0.1:50051, ``""`` SERVING) until
SIGTERM or SIGINT, then drains gracefully: every service NOT_SERVING, Watch streams ended with
UNAVAILABLE, GOAWAY, calls in flight given ``--grace`` seconds, exit 0. A second signal during the
drain stops at once. Logs go to stderr, one line per status change.

``probe`` is a ``grpc_health_probe``-compatible client; see ``health.probe``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import trio

from wire.tls import TLSConfigError

from .config import FLAG_SETTINGS, ConfigError, SidecarConfig, TlsConfig, load_config
from .errors import HealthError
from .service import DEFAULT_LIST_LIMIT
from .sidecar import SidecarProcess
from .status import ServingStatus, parse_status

__all__ = ["main", "serve_main"]


def _service_arg(text: str) -> tuple[str, ServingStatus]:
    name, sep, status = text.rpartition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=STATUS, got {text!r}")
    try:
        parsed = parse_status(status)
    except HealthError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if parsed is ServingStatus.SERVICE_UNKNOWN:
        raise argparse.ArgumentTypeError("SERVICE_UNKNOWN cannot be set; it is Watch-only")
    return name, parsed


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {value}")
    return value


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def _serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m health serve",
        description="Run a gRPC health server (grpc.health.v1.Health: Check, List, Watch).",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=_port, default=50051, help="TCP port (default %(default)s)")
    p.add_argument("--unix", metavar="PATH", help="listen on a Unix socket instead of TCP")
    p.add_argument("--service", action="append", type=_service_arg, default=[],
                   metavar="NAME=STATUS",
                   help="initial status of a service (repeatable); NAME may be empty for the "
                        "server as a whole; STATUS is SERVING, NOT_SERVING or UNKNOWN")
    p.add_argument("--grace", type=_nonneg_float, default=5.0,
                   help="seconds calls in flight get to finish on shutdown (default %(default)s)")
    p.add_argument("--admin-port", type=_port, default=None, metavar="N",
                   help="also serve the HTTP/1.1 admin API on 127.0.0.1:N")
    p.add_argument("--list-limit", type=int, default=DEFAULT_LIST_LIMIT,
                   help="most services List returns before RESOURCE_EXHAUSTED "
                        "(default %(default)s)")
    p.add_argument("--config", metavar="FILE",
                   help="TOML file: services, dependency checks, ports, TLS (see "
                        "examples/health.toml); flags on the command line override it")
    p.add_argument("--metrics", action="store_true", default=False,
                   help="serve Prometheus metrics at GET /metrics on the admin port")
    p.add_argument("--no-reflection", dest="reflection", action="store_false", default=True,
                   help="do not serve gRPC server reflection (on by default: grpcurl lists "
                        "and describes the Health service without a .proto file)")
    p.add_argument("--tls-cert", metavar="FILE", help="serve TLS with this certificate (PEM)")
    p.add_argument("--tls-key", metavar="FILE", help="private key of --tls-cert (PEM)")
    p.add_argument("--tls-client-ca", metavar="FILE",
                   help="verify client certificates against this CA (mTLS)")
    p.add_argument("--require-client-cert", action="store_true", default=False,
                   help="refuse clients without a certificate signed by --tls-client-ca")
    p.add_argument("--log-level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default %(default)s")
    return p


def _tls_from_args(args: argparse.Namespace) -> TlsConfig | None:
    if not args.tls_cert:
        return None
    return TlsConfig(Path(args.tls_cert), Path(args.tls_key) if args.tls_key else None,
                     Path(args.tls_client_ca) if args.tls_client_ca else None,
                     args.require_client_cert)


def _config_from_args(args: argparse.Namespace, base: SidecarConfig) -> SidecarConfig:
    """The file's config with every flag applied (flags default to the file's values)."""
    return dataclasses.replace(
        base, **{name: getattr(args, name) for name in FLAG_SETTINGS},
        tls=_tls_from_args(args), status_overrides=tuple(args.service))


def _announce(line: str) -> None:
    print(line, flush=True)


def _error(message: object) -> int:
    sys.stderr.write(f"python -m health serve: error: {message}\n")
    return 2


def serve_main(argv: Sequence[str]) -> int:
    """Run ``serve`` with the given arguments; returns the exit code."""
    parser = _serve_parser()
    args = parser.parse_args(list(argv))
    base = SidecarConfig()
    if args.config is not None:
        try:
            base = load_config(args.config)
        except ConfigError as exc:
            return _error(exc)
        # The file's values become the flags' defaults, so explicit flags still win.
        parser.set_defaults(**base.arg_defaults())
        args = parser.parse_args(list(argv))
    if args.metrics and args.admin_port is None:
        parser.error("--metrics needs --admin-port (or admin_port in the config file)")
    if args.tls_cert or args.tls_key or args.tls_client_ca or args.require_client_cert:
        if not args.tls_cert:
            parser.error("TLS needs --tls-cert (and --tls-key unless the key is in it)")
        if args.unix:
            parser.error("TLS is for TCP; do not combine it with --unix")
    config = _config_from_args(args, base)
    try:
        process = SidecarProcess(config)
    except (ConfigError, TLSConfigError) as exc:
        return _error(exc)
    logging.basicConfig(level=getattr(logging, args.log_level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return trio.run(partial(process.run, _announce))


_USAGE = """usage: python -m health {serve,probe} [options]

  serve   run a gRPC health server (python -m health serve --help)
  probe   check a gRPC health server, like grpc_health_probe (python -m health probe -help)
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m health`` and the ``trio-grpc-health`` script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(_USAGE)
        return 0 if args else 1
    command, rest = args[0], args[1:]
    if command == "serve":
        return serve_main(rest)
    if command == "probe":
        from .probe import main as probe_main

        return probe_main(rest)
    sys.stderr.write(f"unknown command {command!r}\n{_USAGE}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
