"""Command line: ``python -m health serve`` (the health server) and ``python -m health probe``.

``serve`` runs a standalone gRPC health server (default 127.0.0.1:50051, ``""`` SERVING) until
SIGTERM or SIGINT, then reports NOT_SERVING for ``--shutdown-delay`` seconds while still
answering and drains gracefully: every service NOT_SERVING, Watch streams ended with
UNAVAILABLE, GOAWAY, calls in flight given ``--grace`` seconds, exit 0. A second signal stops at
once; SIGHUP reloads the TLS files. Logs go to stderr (text or ``--log-format json``), one line
per status change.

This module owns the flags: their parsing, the checks of flags against each other, and turning
every startup mistake into one line ``PROG: error: ...`` naming the flag, with exit status 2
(``PROG`` is what the user ran: ``python -m health serve`` or ``trio-grpc-health serve``).

``probe`` is a ``grpc_health_probe``-compatible client; see ``health.probe``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import trio

from .config import (
    FLAG_SETTINGS,
    HTTP2_ENGINES,
    ConfigError,
    SidecarConfig,
    TlsConfig,
    load_config,
    parse_settable_status,
)
from .errors import HealthError
from .logs import LOG_FORMATS, configure_logging
from .service import DEFAULT_LIST_LIMIT
from .sidecar import SidecarProcess, StartupError
from .status import ServingStatus
from .transport import TRANSPORT_NAMES, TransportSettings, flag_help, parse_flag_value

__all__ = ["main", "serve_main"]

_N = TypeVar("_N", int, float)

#: The program name when it cannot be told how we were started (``main(argv)`` from code).
DEFAULT_PROG = "python -m health"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _version() -> str:
    try:
        return metadata.version("trio-grpc-health")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


def _program() -> str:
    """How the user started us: ``python -m health`` or the console script's name."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if not name or name in ("__main__.py", "-c"):
        return DEFAULT_PROG
    return name


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose mistakes are one line: ``PROG: error: MESSAGE``."""

    def error(self, message: str) -> NoReturn:
        """Print one line naming the problem (and where help is) and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _service_arg(text: str) -> tuple[str, ServingStatus]:
    name, sep, status = text.rpartition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=STATUS, got {text!r}")
    try:
        return name, parse_settable_status(status)
    except HealthError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _bounded(convert: Callable[[str], _N], what: str, ok: Callable[[_N], bool],
             bad: str) -> Callable[[str], _N]:
    """An argparse type: ``convert`` the text, refused unless ``ok``; the messages say why."""

    def parse(text: str) -> _N:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(bad.format(text=text, value=value))
        return value

    return parse


_port = _bounded(int, "a port number", lambda v: 0 <= v <= 65535, "port out of range: {value}")
_nonneg_float = _bounded(float, "a number", lambda v: 0 <= v < float("inf"),
                         "must be a number >= 0: {text!r}")
_nonneg_int = _bounded(int, "a whole number", lambda v: v >= 0, "must be >= 0: {text!r}")


def _transport_arg(name: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return parse_flag_value(name, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = name  # argparse names the type in some messages
    return parse


def _metavar(name: str) -> str:
    default = getattr(TransportSettings(), name)
    if isinstance(default, bool):
        return "{true,false}"
    return "N" if isinstance(default, int) else "SECONDS"


def _serve_parser(prog: str = f"{DEFAULT_PROG} serve") -> argparse.ArgumentParser:
    p = _Parser(
        prog=prog,
        description="Run a gRPC health server (grpc.health.v1.Health: Check, List, Watch).",
    )
    p.add_argument("--version", action="version", version=f"trio-grpc-health {_version()}")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    # None until parsed: an explicit --port is refused with --unix.
    p.add_argument("--port", type=_port, default=None, help="TCP port (default 50051)")
    p.add_argument("--unix", metavar="PATH", help="listen on a Unix socket instead of TCP")
    p.add_argument("--service", action="append", type=_service_arg, default=[],
                   metavar="NAME=STATUS",
                   help="initial status of a service (repeatable); NAME may be empty for the "
                        "server as a whole; STATUS is SERVING, NOT_SERVING or UNKNOWN")
    p.add_argument("--grace", type=_nonneg_float, default=5.0, metavar="SECONDS",
                   help="seconds calls in flight get to finish on shutdown (default %(default)s)")
    p.add_argument("--shutdown-delay", type=_nonneg_float, default=0.0, metavar="SECONDS",
                   help="on SIGTERM, report NOT_SERVING this long while still answering, then "
                        "drain (default %(default)s)")
    p.add_argument("--admin-port", type=_port, default=None, metavar="N",
                   help="also serve the HTTP/1.1 admin API on port N")
    p.add_argument("--admin-host", default=None, metavar="HOST",
                   help="address of the admin API (default 127.0.0.1; 0.0.0.0 for a "
                        "Prometheus scrape)")
    p.add_argument("--admin-token-file", type=Path, default=None, metavar="FILE",
                   help="bearer token the admin API's mutating endpoints require (without "
                        "it they accept loopback peers only)")
    p.add_argument("--list-limit", type=_nonneg_int, default=DEFAULT_LIST_LIMIT, metavar="N",
                   help="most services List returns before RESOURCE_EXHAUSTED "
                        "(default %(default)s)")
    p.add_argument("--config", metavar="FILE",
                   help="TOML file: services, dependency checks, ports, TLS (see "
                        "examples/health.toml); flags on the command line override it")
    p.add_argument("--metrics", action="store_true", default=False,
                   help="serve Prometheus metrics at GET /metrics on the admin port (needs "
                        "the metrics extra)")
    p.add_argument("--no-reflection", dest="reflection", action="store_false", default=True,
                   help="do not serve gRPC server reflection (on by default: grpcurl lists "
                        "and describes the Health service without a .proto file)")
    p.add_argument("--http2", choices=HTTP2_ENGINES, default="h2",
                   help="HTTP/2 engine: the h2 library or our native codec (default "
                        "%(default)s)")
    p.add_argument("--tls-cert", metavar="FILE",
                   help="serve TLS with this certificate (PEM); reloaded on SIGHUP and when "
                        "the file changes")
    p.add_argument("--tls-key", metavar="FILE", help="private key of --tls-cert (PEM)")
    p.add_argument("--tls-client-ca", metavar="FILE",
                   help="verify client certificates against this CA (mTLS)")
    p.add_argument("--require-client-cert", action="store_true", default=False,
                   help="refuse clients without a certificate signed by --tls-client-ca")
    for name in TRANSPORT_NAMES:
        p.add_argument("--" + name.replace("_", "-"), dest=name,
                       type=_transport_arg(name), default=getattr(TransportSettings(), name),
                       metavar=_metavar(name), help=flag_help(name))
    p.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS,
                   help="DEBUG, INFO, WARNING or ERROR, any case (default %(default)s)")
    p.add_argument("--log-format", default="text", choices=LOG_FORMATS,
                   help="text, or json: one JSON object per line (default %(default)s)")
    return p


def _tls_from_args(args: argparse.Namespace) -> TlsConfig | None:
    if not args.tls_cert:
        return None
    return TlsConfig(Path(args.tls_cert), Path(args.tls_key) if args.tls_key else None,
                     Path(args.tls_client_ca) if args.tls_client_ca else None,
                     args.require_client_cert)


def _config_from_args(args: argparse.Namespace, base: SidecarConfig) -> SidecarConfig:
    """The file's config with every flag applied (flags default to the file's values)."""
    values = {name: getattr(args, name) for name in FLAG_SETTINGS}
    if values["port"] is None:
        values["port"] = base.port
    transport = TransportSettings(**{name: getattr(args, name) for name in TRANSPORT_NAMES})
    return dataclasses.replace(base, **values, tls=_tls_from_args(args),
                               status_overrides=tuple(args.service), transport=transport)


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace,
                port_flag: bool) -> None:
    """Refuse flags that contradict each other or do nothing, naming them."""
    if args.admin_port is None:
        for flag, value in (("--metrics", args.metrics), ("--admin-host", args.admin_host),
                            ("--admin-token-file", args.admin_token_file)):
            if value:
                parser.error(f"{flag} needs --admin-port (or admin_port in the config file)")
    if args.tls_cert or args.tls_key or args.tls_client_ca or args.require_client_cert:
        if not args.tls_cert:
            parser.error("TLS needs --tls-cert (and --tls-key unless the key is in it)")
        if args.unix:
            parser.error("TLS is for TCP; do not combine it with --unix")
        if args.require_client_cert and not args.tls_client_ca:
            parser.error("--require-client-cert needs --tls-client-ca")
    if args.unix and port_flag:
        parser.error("--unix listens instead of --port: give one of them")


def _error(prog: str, message: object) -> int:
    sys.stderr.write(f"{prog}: error: {message}\n")
    return 2


def _announce(line: str) -> None:
    print(line, flush=True)


def serve_main(argv: Sequence[str], prog: str = f"{DEFAULT_PROG} serve") -> int:
    """Run ``serve`` with the given arguments; returns the exit code."""
    parser = _serve_parser(prog)
    args = parser.parse_args(list(argv))
    port_flag = args.port is not None
    base = SidecarConfig()
    if args.config is not None:
        try:
            base = load_config(args.config)
        except ConfigError as exc:
            return _error(prog, exc)
        # The file's values become the flags' defaults, so explicit flags still win.
        parser.set_defaults(**base.arg_defaults())
        args = parser.parse_args(list(argv))
    _check_args(parser, args, port_flag)
    config = _config_from_args(args, base)
    configure_logging(args.log_level, args.log_format)
    try:
        process = SidecarProcess(config)
        return trio.run(partial(process.run, _announce))
    except (ConfigError, StartupError) as exc:
        return _error(prog, exc)


_USAGE = """usage: python -m health {serve,probe} [options]

  serve   run a gRPC health server (python -m health serve --help)
  probe   check a gRPC health server, like grpc_health_probe (python -m health probe -help)
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m health`` and the ``trio-grpc-health`` script."""
    prog = _program() if argv is None else DEFAULT_PROG
    args = list(sys.argv[1:] if argv is None else argv)
    usage = _USAGE.replace(DEFAULT_PROG, prog)
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(usage)
        return 0 if args else 1
    if args[0] == "--version":
        sys.stdout.write(f"trio-grpc-health {_version()}\n")
        return 0
    command, rest = args[0], args[1:]
    if command == "serve":
        return serve_main(rest, f"{prog} serve")
    if command == "probe":
        from .probe import main as probe_main

        return probe_main(rest)
    sys.stderr.write(f"{prog}: error: unknown command {command!r}\n{usage}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
