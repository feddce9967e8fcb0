"""A drop-in for ``grpc_health_probe``: check a gRPC server's health from the command line.

``main(argv)`` parses Go-style flags (``-flag value``, ``-flag=value``, ``--flag`` all work;
durations like ``1s``, ``500ms``, ``1m30s``), validates them as grpc_health_probe does, runs one
Check and returns grpc_health_probe's exit codes:

    0 SERVING; 1 bad arguments or TLS files; 2 connection failure or timeout;
    3 RPC failure (NOT_FOUND, UNIMPLEMENTED, DEADLINE_EXCEEDED, ...); 4 status other than SERVING

Messages go to stderr in grpc_health_probe's words ("status: SERVING", "error: health rpc
failed: ...", "timeout: failed to connect service ..."). Beyond it:

* several ``-service`` flags check each one on the same connection; the exit code is the worst
  outcome, ranked connection failure (2) > RPC failure (3) > not serving (4) > serving (0);
* ``-list`` prints every service from the List RPC (exit 4 unless all are SERVING);
* ``-watch`` prints each status change until interrupted (Ctrl-C: exit 0 if the last status was
  SERVING, else 4; a failed Watch call exits 3); ``-rpc-timeout`` does not apply to it;
* ``-wait DURATION`` retries connecting and checking until SERVING or the duration is spent,
  then reports the last attempt;
* ``-authority`` sets ``:authority``; ``-output json`` writes one JSON document to stdout
  (one line per change with ``-watch``) instead of the messages.

TLS is real: ``-tls`` wraps the connection in TLS with ALPN ``h2``, verifying against the system
roots or ``-tls-ca-cert`` (unless ``-tls-no-verify``), presenting ``-tls-client-cert``/``-key``,
checking ``-tls-server-name`` when given.
"""

from __future__ import annotations

import json
import re
import signal
import ssl
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import trio

import wire
from wire import ConnectError, RpcError, StatusCode, open_channel, parse_target

from .client import HealthClient
from .status import ServingStatus

__all__ = [
    "EXIT_CONNECTION_FAILURE",
    "EXIT_INVALID_ARGUMENTS",
    "EXIT_RPC_FAILURE",
    "EXIT_SERVING",
    "EXIT_UNHEALTHY",
    "ProbeOptions",
    "UsageError",
    "build_ssl_context",
    "format_duration",
    "main",
    "parse_args",
    "parse_duration",
]

EXIT_SERVING = 0
EXIT_INVALID_ARGUMENTS = 1
EXIT_CONNECTION_FAILURE = 2
EXIT_RPC_FAILURE = 3
EXIT_UNHEALTHY = 4

# "worst" for several services: a connection failure hides everything, then RPC failures.
_SEVERITY = {EXIT_SERVING: 0, EXIT_UNHEALTHY: 1, EXIT_RPC_FAILURE: 2, EXIT_CONNECTION_FAILURE: 3,
             EXIT_INVALID_ARGUMENTS: 4}

PROBE_NAME = "grpc_health_probe"


class UsageError(Exception):
    """The command line is not acceptable (exit code 1)."""


class _HelpRequested(Exception):
    pass


# ---------------------------------------------------------------------- Go durations

_DURATION_UNITS = {
    "ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0,
    "m": 60.0, "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d*\.?\d*)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Parse a Go duration ("1s", "500ms", "1m30s", "1.5h", "-2s") into seconds."""
    s = text.strip()
    sign = 1.0
    if s[:1] in ("-", "+"):
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"invalid duration {text!r}")
    total = 0.0
    pos = 0
    while pos < len(s):  # bounded: every match consumes at least one character
        m = _DURATION_PART.match(s, pos)
        if m is None or m.group(1) in ("", "."):
            if m is None and re.fullmatch(r"\d*\.?\d*", s[pos:]):
                raise ValueError(f"missing unit in duration {text!r}")
            raise ValueError(f"invalid duration {text!r}")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return sign * total


def _frac(value: int, unit: int) -> str:
    whole, rest = divmod(value, unit)
    digits = len(str(unit)) - 1
    tail = str(rest).rjust(digits, "0").rstrip("0")
    return f"{whole}.{tail}" if tail else str(whole)


def format_duration(seconds: float) -> str:
    """Format seconds like Go's ``time.Duration.String`` ("1s", "1.5s", "1m30s", "500ms")."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    sign, u = ("-", -ns) if ns < 0 else ("", ns)
    if u < 1_000:
        text = f"{u}ns"
    elif u < 1_000_000:
        text = _frac(u, 1_000) + "\u00b5s"
    elif u < 1_000_000_000:
        text = _frac(u, 1_000_000) + "ms"
    else:
        hours, rest = divmod(u, 3600 * 10**9)
        minutes, rest = divmod(rest, 60 * 10**9)
        text = _frac(rest, 10**9) + "s"
        if hours:
            text = f"{hours}h{minutes}m{text}"
        elif minutes:
            text = f"{minutes}m{text}"
    return sign + text


# ---------------------------------------------------------------------- flags


@dataclass
class ProbeOptions:
    """The parsed command line."""

    addr: str = ""
    services: list[str] = field(default_factory=list)
    connect_timeout: float = 1.0
    rpc_timeout: float = 1.0
    rpc_headers: list[tuple[str, str | bytes]] = field(default_factory=list)
    user_agent: str = PROBE_NAME
    tls: bool = False
    tls_no_verify: bool = False
    tls_ca_cert: str = ""
    tls_client_cert: str = ""
    tls_client_key: str = ""
    tls_server_name: str = ""
    gzip: bool = False
    verbose: bool = False
    version: bool = False
    watch: bool = False
    list: bool = False
    authority: str | None = None
    output: str = "text"
    wait: float = 0.0


_BOOL_FLAGS = {"tls", "tls-no-verify", "gzip", "v", "version", "watch", "list"}
_VALUE_FLAGS = {
    "addr", "service", "connect-timeout", "rpc-timeout", "rpc-header", "user-agent",
    "tls-ca-cert", "tls-client-cert", "tls-client-key", "tls-server-name", "authority",
    "output", "wait",
}

_USAGE = """\
usage: grpc_health_probe -addr=HOST:PORT [flags]

  -addr string              (required) tcp host:port (or unix:PATH) to connect
  -service string           service name to check (default: ""); repeat for several
  -connect-timeout duration timeout for establishing connection (default 1s)
  -rpc-timeout duration     timeout for health check rpc (default 1s)
  -rpc-header "k: v"        additional RPC header (repeatable)
  -user-agent string        user-agent header value (default "grpc_health_probe")
  -tls                      use TLS (default: false, INSECURE plaintext transport)
  -tls-no-verify            (with -tls) don't verify the server's certificate (INSECURE)
  -tls-ca-cert string       (with -tls, optional) file of trusted certificates
  -tls-client-cert string   (with -tls, optional) client certificate (requires -tls-client-key)
  -tls-client-key string    (with -tls) client private key (requires -tls-client-cert)
  -tls-server-name string   (with -tls) override the hostname used to verify the certificate
  -gzip                     use GZIPCompressor for requests
  -v                        verbose logs
  -version                  print the probe version and exit
  -watch                    print each status change until interrupted
  -list                     list every service's status (grpc.health.v1.Health/List)
  -authority string         override the :authority header
  -output text|json         output format (default text)
  -wait duration            retry until SERVING or this much time has passed
"""


def _parse_bool(name: str, value: str) -> bool:
    # Go's strconv.ParseBool spellings.
    if value in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if value in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise UsageError(f"invalid boolean value {value!r} for -{name}")


def _duration_flag(name: str, value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise UsageError(f"invalid value {value!r} for flag -{name}: {exc}") from None


def _rpc_header(value: str) -> tuple[str, str | bytes]:
    # grpc_health_probe: split at the first ':', trim the spaces that start the value.
    key, sep, rest = value.partition(":")
    if not sep:
        raise UsageError(f"invalid RPC header, expected 'key: value', got {value!r}")
    key = key.strip().lower()
    val = rest.lstrip()
    try:
        wire.metadata.validate_key(key)
    except ValueError as exc:
        raise UsageError(f"invalid RPC header {value!r}: {exc}") from None
    if key.endswith("-bin"):
        return key, val.encode("utf-8")
    if not val.isascii() or any(ord(c) < 0x20 or ord(c) > 0x7E for c in val):
        raise UsageError(f"invalid RPC header {value!r}: value must be printable ASCII")
    return key, val


def parse_args(argv: Sequence[str]) -> ProbeOptions:
    """Parse and validate a grpc_health_probe command line; raise UsageError."""
    opts = ProbeOptions()
    seen_service = False
    i = 0
    while i < len(argv):  # bounded: i grows every pass
        arg = argv[i]
        i += 1
        if arg == "--":
            if i < len(argv):
                raise UsageError(f"unexpected argument {argv[i]!r}")
            break
        if not arg.startswith("-") or arg == "-":
            raise UsageError(f"unexpected argument {arg!r}")
        name = arg[2:] if arg.startswith("--") else arg[1:]
        value: str | None = None
        if "=" in name:
            name, value = name.split("=", 1)
        if name in ("h", "help"):
            raise _HelpRequested
        if name in _BOOL_FLAGS:
            flag = _parse_bool(name, value) if value is not None else True
            attr = {"v": "verbose", "tls-no-verify": "tls_no_verify"}.get(name, name)
            setattr(opts, attr.replace("-", "_"), flag)
            continue
        if name not in _VALUE_FLAGS:
            raise UsageError(f"flag provided but not defined: -{name}")
        if value is None:
            if i >= len(argv):
                raise UsageError(f"flag needs an argument: -{name}")
            value = argv[i]
            i += 1
        if name == "addr":
            opts.addr = value
        elif name == "service":
            if not seen_service:
                opts.services = []
                seen_service = True
            opts.services.append(value)
        elif name == "connect-timeout":
            opts.connect_timeout = _duration_flag(name, value)
        elif name == "rpc-timeout":
            opts.rpc_timeout = _duration_flag(name, value)
        elif name == "wait":
            opts.wait = _duration_flag(name, value)
        elif name == "rpc-header":
            opts.rpc_headers.append(_rpc_header(value))
        elif name == "output":
            if value not in ("text", "json"):
                raise UsageError(f"-output must be text or json (specified: {value!r})")
            opts.output = value
        else:
            setattr(opts, name.replace("-", "_"), value)
    if not opts.services:
        opts.services = [""]
    if opts.version:
        return opts
    _validate(opts)
    return opts


def _validate(opts: ProbeOptions) -> None:
    # The same checks, in the same order and words, as grpc_health_probe.
    if not opts.addr:
        raise UsageError("-addr not specified")
    try:
        parse_target(opts.addr)
    except ValueError as exc:
        raise UsageError(f"invalid -addr: {exc}") from None
    if opts.connect_timeout <= 0:
        raise UsageError("-connect-timeout must be greater than zero (specified: "
                         f"{format_duration(opts.connect_timeout)})")
    if opts.rpc_timeout <= 0:
        raise UsageError("-rpc-timeout must be greater than zero (specified: "
                         f"{format_duration(opts.rpc_timeout)})")
    if opts.wait < 0:
        raise UsageError(f"-wait must not be negative (specified: {format_duration(opts.wait)})")
    if not opts.tls and opts.tls_no_verify:
        raise UsageError("specified -tls-no-verify without specifying -tls")
    if not opts.tls and opts.tls_ca_cert:
        raise UsageError("specified -tls-ca-cert without specifying -tls")
    if not opts.tls and opts.tls_client_cert:
        raise UsageError("specified -tls-client-cert without specifying -tls")
    if not opts.tls and opts.tls_server_name:
        raise UsageError("specified -tls-server-name without specifying -tls")
    if opts.tls_client_cert and not opts.tls_client_key:
        raise UsageError("specified -tls-client-cert without specifying -tls-client-key")
    if not opts.tls_client_cert and opts.tls_client_key:
        raise UsageError("specified -tls-client-key without specifying -tls-client-cert")
    if opts.tls_no_verify and opts.tls_ca_cert:
        raise UsageError("cannot specify -tls-ca-cert with -tls-no-verify (CA cert would not be "
                         "used)")
    if opts.tls_no_verify and opts.tls_server_name:
        raise UsageError("cannot specify -tls-server-name with -tls-no-verify (server name "
                         "would not be used)")
    if opts.watch and opts.list:
        raise UsageError("cannot specify -watch with -list")
    if opts.watch and opts.wait:
        raise UsageError("cannot specify -wait with -watch (a watch already waits)")


class _TLSConfigError(Exception):
    pass


def build_ssl_context(opts: ProbeOptions) -> ssl.SSLContext:
    """The client TLS context the flags describe; raise _TLSConfigError for bad files."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if opts.tls_client_cert:
        try:
            ctx.load_cert_chain(opts.tls_client_cert, opts.tls_client_key)
        except (OSError, ssl.SSLError) as exc:
            raise _TLSConfigError(
                f"failed to load tls client cert/key pair. error={exc}") from None
    if opts.tls_no_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif opts.tls_ca_cert:
        # Like grpc_health_probe: the file replaces the system roots.
        try:
            pem = Path(opts.tls_ca_cert).read_text("ascii", "replace")
        except OSError as exc:
            raise _TLSConfigError(
                f"failed to load root CA certificates from file ({opts.tls_ca_cert}) "
                f"error={exc}") from None
        try:
            ctx.load_verify_locations(cadata=pem)
        except (ssl.SSLError, ValueError):
            raise _TLSConfigError(
                f"no root CA certs parsed from file {opts.tls_ca_cert}") from None
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    return ctx


# ---------------------------------------------------------------------- running


def _quote(text: str) -> str:
    # Go's %q: a double-quoted string with escapes (JSON's rules are close enough).
    return json.dumps(text, ensure_ascii=False)


def _go_code(code: StatusCode) -> str:
    # grpc-go spells codes in CamelCase in "rpc error: code = NotFound desc = ...".
    return "".join(part.capitalize() for part in code.name.split("_")) if code.name != "OK" \
        else "OK"


@dataclass
class _Outcome:
    service: str
    exit_code: int
    status: ServingStatus | None = None
    error: str | None = None


class _Output:
    """Where the probe's words go: grpc_health_probe's lines on stderr, or JSON on stdout."""

    def __init__(self, opts: ProbeOptions, out: TextIO, err: TextIO) -> None:
        self.opts = opts
        self.out = out
        self.err = err
        self.json = opts.output == "json"

    def log(self, line: str) -> None:
        if not self.json:
            print(line, file=self.err, flush=True)

    def verbose(self, line: str) -> None:
        if self.opts.verbose:
            print(line, file=self.err, flush=True)

    def emit(self, doc: dict[str, Any]) -> None:
        if self.json:
            print(json.dumps(doc, sort_keys=True), file=self.out, flush=True)


def _worst(codes: Sequence[int]) -> int:
    return max(codes, key=lambda c: _SEVERITY.get(c, 0), default=EXIT_SERVING)


class _Probe:
    def __init__(self, opts: ProbeOptions, ssl_context: ssl.SSLContext | None,
                 output: _Output) -> None:
        self.opts = opts
        self.ssl_context = ssl_context
        self.output = output
        #: Exit code per watched service, from its latest status (for -watch).
        self.watch_codes: dict[str, int] = {}

    def _prefix(self, service: str) -> str:
        # One service: grpc_health_probe's exact words; several: say which one.
        return f"service {_quote(service)}: " if len(self.opts.services) > 1 else ""

    async def main(self) -> int:
        """Run the probe; a SIGINT (in the main thread) stops it like grpc_health_probe's."""
        code: int | None = None
        async with trio.open_nursery() as nursery:
            if threading.current_thread() is threading.main_thread():
                await nursery.start(self._interrupts, nursery.cancel_scope)
            code = await self.run()
            nursery.cancel_scope.cancel()
        if code is None:  # interrupted
            self.output.log("cancellation received")
            return self.interrupted_code()
        return code

    def interrupted_code(self) -> int:
        """The exit code after an interrupt: -watch reports the latest status."""
        if self.opts.watch:
            return _worst(list(self.watch_codes.values())) if self.watch_codes \
                else EXIT_UNHEALTHY
        return EXIT_RPC_FAILURE

    @staticmethod
    async def _interrupts(scope: trio.CancelScope, *,
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGINT) as signals:
            task_status.started()
            async for _ in signals:
                scope.cancel()
                return

    async def run(self) -> int:
        opts = self.opts
        if opts.wait <= 0:
            return await self.attempt()
        deadline = trio.current_time() + opts.wait
        delay = 0.1
        attempts = 0
        while True:  # bounded by the -wait deadline
            attempts += 1
            quiet = trio.current_time() + delay < deadline
            code = await self.attempt(quiet=quiet)
            if code in (EXIT_SERVING, EXIT_INVALID_ARGUMENTS) or not quiet:
                return code
            self.output.verbose(f"attempt {attempts} failed (exit code {code}); retrying")
            await trio.sleep_until(min(deadline, trio.current_time() + delay))
            delay = min(delay * 1.6, 1.0)

    async def attempt(self, *, quiet: bool = False) -> int:
        """Connect and check once; ``quiet`` (a -wait attempt that may be retried) reports only
        success."""
        opts = self.opts
        out = self.output
        server_hostname = opts.tls_server_name or None
        out.verbose("establishing connection")
        t0 = trio.current_time()
        async with open_channel(
            opts.addr, connect_timeout=opts.connect_timeout, authority=opts.authority,
            user_agent=opts.user_agent, ssl_context=self.ssl_context,
            server_hostname=server_hostname,
        ) as channel:
            try:
                await channel.connect()
            except ConnectError as exc:
                if not quiet:
                    if exc.timed_out:
                        out.log(f"timeout: failed to connect service {_quote(opts.addr)} within "
                                f"{format_duration(opts.connect_timeout)}")
                    else:
                        out.log(f"error: failed to connect service at {_quote(opts.addr)}: "
                                f"{exc.reason}")
                    out.emit({"addr": opts.addr, "exit_code": EXIT_CONNECTION_FAILURE,
                              "error": exc.message})
                return EXIT_CONNECTION_FAILURE
            connected = trio.current_time() - t0
            out.verbose(f"connection established (took {format_duration(connected)})")
            client = HealthClient(channel, metadata=opts.rpc_headers,
                                  compression="gzip" if opts.gzip else None)
            if opts.list:
                return await self._list(client, quiet)
            if opts.watch:
                return await self._watch(client)
            outcomes = []
            for service in opts.services:
                outcomes.append(await self._check(client, service, quiet, connected))
            code = _worst([o.exit_code for o in outcomes])
            if not quiet or code == EXIT_SERVING:
                out.emit({
                    "addr": opts.addr, "exit_code": code,
                    "services": [{"service": o.service, "exit_code": o.exit_code,
                                  "status": o.status.name if o.status is not None else None,
                                  "error": o.error} for o in outcomes],
                })
            return code

    def _rpc_error(self, exc: RpcError, prefix: str) -> str:
        opts = self.opts
        if exc.code is StatusCode.UNIMPLEMENTED:
            return (f"{prefix}error: this server does not implement the grpc health protocol "
                    f"(grpc.health.v1.Health): {exc.message}")
        if exc.code is StatusCode.DEADLINE_EXCEEDED:
            return (f"{prefix}timeout: health rpc did not complete within "
                    f"{format_duration(opts.rpc_timeout)}")
        return (f"{prefix}error: health rpc failed: rpc error: code = {_go_code(exc.code)} "
                f"desc = {exc.message}")

    async def _check(self, client: HealthClient, service: str, quiet: bool,
                     connected: float) -> _Outcome:
        out = self.output
        prefix = self._prefix(service)
        t0 = trio.current_time()
        try:
            status = await client.check(service, timeout=self.opts.rpc_timeout)
        except RpcError as exc:
            if not quiet:
                out.log(self._rpc_error(exc, prefix))
            return _Outcome(service, EXIT_RPC_FAILURE, error=str(exc))
        rpc = trio.current_time() - t0
        if status is not ServingStatus.SERVING:
            if not quiet:
                out.log(f"{prefix}service unhealthy (responded with {_quote(status.name)})")
            return _Outcome(service, EXIT_UNHEALTHY, status)
        out.verbose(f"time elapsed: connect={format_duration(connected)} "
                    f"rpc={format_duration(rpc)}")
        out.log(f"{prefix}status: {status.name}")
        return _Outcome(service, EXIT_SERVING, status)

    async def _list(self, client: HealthClient, quiet: bool) -> int:
        out = self.output
        try:
            statuses = await client.list(timeout=self.opts.rpc_timeout)
        except RpcError as exc:
            if not quiet:
                out.log(self._rpc_error(exc, ""))
                out.emit({"addr": self.opts.addr, "exit_code": EXIT_RPC_FAILURE,
                          "error": str(exc)})
            return EXIT_RPC_FAILURE
        all_serving = all(s is ServingStatus.SERVING for s in statuses.values())
        code = EXIT_SERVING if all_serving else EXIT_UNHEALTHY
        if not quiet or code == EXIT_SERVING:
            for name in sorted(statuses):
                out.log(f"{_quote(name)}: {statuses[name].name}")
            out.emit({"addr": self.opts.addr, "exit_code": code,
                      "statuses": {k: v.name for k, v in sorted(statuses.items())}})
        return code

    async def _watch(self, client: HealthClient) -> int:
        codes = self.watch_codes

        async def watch_one(service: str) -> None:
            prefix = self._prefix(service)
            try:
                async with client.watch(service) as stream:
                    async for status in stream:
                        codes[service] = (EXIT_SERVING if status is ServingStatus.SERVING
                                          else EXIT_UNHEALTHY)
                        self.output.log(f"{prefix}status: {status.name}")
                        self.output.emit({"addr": self.opts.addr, "service": service,
                                          "status": status.name})
                self.output.log(f"{prefix}error: watch ended by the server")
                codes[service] = EXIT_RPC_FAILURE
            except RpcError as exc:
                self.output.log(self._rpc_error(exc, prefix).replace(
                    "health rpc did not complete", "health watch did not complete"))
                self.output.emit({"addr": self.opts.addr, "service": service,
                                  "error": str(exc)})
                codes[service] = EXIT_RPC_FAILURE

        async with trio.open_nursery() as nursery:
            for service in self.opts.services:
                nursery.start_soon(watch_one, service)
        return _worst(list(codes.values()))


def main(argv: list[str] | None = None, *, stdout: TextIO | None = None,
         stderr: TextIO | None = None) -> int:
    """Run the probe with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    args = sys.argv[1:] if argv is None else argv
    try:
        opts = parse_args(args)
    except _HelpRequested:
        print(_USAGE, file=out, end="")
        return EXIT_SERVING
    except UsageError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_INVALID_ARGUMENTS
    if opts.version:
        print(f"{PROBE_NAME} (trio-grpc-health) version: {wire.__version__}", file=out)
        return EXIT_SERVING
    output = _Output(opts, out, err)
    if opts.verbose:
        output.verbose("parsed options:")
        output.verbose(f"> addr={opts.addr} conn_timeout={format_duration(opts.connect_timeout)}"
                       f" rpc_timeout={format_duration(opts.rpc_timeout)}")
        if opts.rpc_headers:
            output.verbose(f"> headers: {opts.rpc_headers}")
        output.verbose(f"> tls={str(opts.tls).lower()}")
        if opts.tls:
            output.verbose(f"  > no-verify={str(opts.tls_no_verify).lower()}")
            output.verbose(f"  > ca-cert={opts.tls_ca_cert}")
            output.verbose(f"  > client-cert={opts.tls_client_cert}")
            output.verbose(f"  > client-key={opts.tls_client_key}")
            output.verbose(f"  > server-name={opts.tls_server_name}")
    ssl_context: ssl.SSLContext | None = None
    if opts.tls:
        try:
            ssl_context = build_ssl_context(opts)
        except _TLSConfigError as exc:
            print(f"failed to initialize tls credentials. error={exc}", file=err)
            return EXIT_INVALID_ARGUMENTS
    probe = _Probe(opts, ssl_context, output)
    try:
        return trio.run(probe.main)
    except KeyboardInterrupt:
        # Only outside the main thread, where SIGINT cannot be caught as a signal.
        output.log("cancellation received")
        return probe.interrupted_code()

