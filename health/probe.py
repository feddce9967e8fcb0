"""A drop-in for ``grpc_health_probe``: check a gRPC server's health from the command line.

``main(argv)`` parses Go-style flags (``-flag value``, ``-flag=value``, ``--flag`` all work;
durations like ``1s``, ``500ms``, ``1m30s``), validates them as grpc_health_probe does, runs one
Check and returns grpc_health_probe's exit codes:

    0 SERVING; 1 bad arguments or TLS files; 2 connection failure or timeout;
    3 RPC failure (NOT_FOUND, UNIMPLEMENTED, DEADLINE_EXCEEDED, ...); 4 status other than SERVING

Flags parse as Go's flag package does: parsing stops at the first non-flag argument (or after
``--``) and the rest is ignored; ``-h`` prints the usage on stderr and exits 1. As grpc-go dials,
an address without a port means port 443, and a refused connection is retried (with a short
backoff) until ``-connect-timeout``, so a server that starts listening meanwhile is reached.

Messages go to stderr in grpc_health_probe's words ("status: SERVING", "error: health rpc
failed: ...", "timeout: failed to connect service ..."), with a hint where the cause can be
guessed: plaintext to a TLS port ("is it a TLS port? try -tls"), a client certificate the
server refused, or a server that answers Check but not List. Beyond it:

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

import errno
import ipaddress
import json
import os
import re
import signal
import ssl
import sys
import threading
from collections.abc import Callable, Sequence
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
    "dial_address",
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


def _split_flag(arg: str) -> tuple[str, str | None] | None:
    """``(name, value or None)`` for a flag argument; None where Go's flag package stops."""
    # Go's flag package: parsing stops just before the first non-flag argument ("-" is one)
    # and just after "--"; grpc_health_probe ignores whatever follows.
    if len(arg) < 2 or not arg.startswith("-") or arg == "--":
        return None
    name = arg[2:] if arg.startswith("--") else arg[1:]
    if not name or name.startswith(("-", "=")):
        raise UsageError(f"bad flag syntax: {arg}")
    flag, sep, value = name.partition("=")
    return flag, value if sep else None


def _set_bool(opts: ProbeOptions, name: str, value: str | None) -> None:
    flag = _parse_bool(name, value) if value is not None else True
    attr = {"v": "verbose"}.get(name, name.replace("-", "_"))
    setattr(opts, attr, flag)


def _set_output(opts: ProbeOptions, value: str) -> None:
    if value not in ("text", "json"):
        raise UsageError(f"-output must be text or json (specified: {value!r})")
    opts.output = value


# Value flags that need more than storing the string.
_SETTERS: dict[str, Callable[[ProbeOptions, str], None]] = {
    "service": lambda o, v: o.services.append(v),
    "connect-timeout": lambda o, v: setattr(o, "connect_timeout",
                                            _duration_flag("connect-timeout", v)),
    "rpc-timeout": lambda o, v: setattr(o, "rpc_timeout", _duration_flag("rpc-timeout", v)),
    "wait": lambda o, v: setattr(o, "wait", _duration_flag("wait", v)),
    "rpc-header": lambda o, v: o.rpc_headers.append(_rpc_header(v)),
    "output": _set_output,
}


def parse_args(argv: Sequence[str]) -> ProbeOptions:
    """Parse and validate a grpc_health_probe command line; raise UsageError."""
    opts = ProbeOptions()
    i = 0
    while i < len(argv):  # bounded: i grows every pass
        split = _split_flag(argv[i])
        i += 1
        if split is None:
            break
        name, value = split
        if name in ("h", "help"):
            raise _HelpRequested
        if name in _BOOL_FLAGS:
            _set_bool(opts, name, value)
            continue
        if name not in _VALUE_FLAGS:
            raise UsageError(f"flag provided but not defined: -{name}")
        if value is None:
            if i >= len(argv):
                raise UsageError(f"flag needs an argument: -{name}")
            value = argv[i]
            i += 1
        setter = _SETTERS.get(name)
        if setter is not None:
            setter(opts, value)
        else:
            setattr(opts, name.replace("-", "_"), value)
    explicit_services = bool(opts.services)
    if not opts.services:
        opts.services = [""]
    if opts.version:
        return opts
    _validate(opts)
    if opts.list and explicit_services:
        raise UsageError("cannot specify -service with -list (List reports every service)")
    return opts


def dial_address(addr: str) -> str:
    """The address grpc-go dials for ``addr``: without a port, port 443 (its DNS resolver's)."""
    if addr.startswith("unix:"):
        return addr
    scheme, rest = "", addr
    for prefix in ("dns:///", "dns:"):
        if rest.startswith(prefix):
            scheme, rest = prefix, rest[len(prefix):]
            break
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(rest)
    except ValueError:
        ip = None
    if ip is not None:
        return f"{scheme}[{rest}]:443" if ip.version == 6 else f"{scheme}{rest}:443"
    if rest.startswith("["):
        return addr if "]:" in rest else f"{scheme}{rest}:443"
    if rest and ":" not in rest:
        return f"{scheme}{rest}:443"
    return addr


# grpc_health_probe's TLS checks, in its order and words: (applies, message).
_TLS_RULES: tuple[tuple[Callable[[ProbeOptions], bool], str], ...] = (
    (lambda o: not o.tls and o.tls_no_verify,
     "specified -tls-no-verify without specifying -tls"),
    (lambda o: not o.tls and bool(o.tls_ca_cert),
     "specified -tls-ca-cert without specifying -tls"),
    (lambda o: not o.tls and bool(o.tls_client_cert),
     "specified -tls-client-cert without specifying -tls"),
    (lambda o: not o.tls and bool(o.tls_server_name),
     "specified -tls-server-name without specifying -tls"),
    (lambda o: bool(o.tls_client_cert) and not o.tls_client_key,
     "specified -tls-client-cert without specifying -tls-client-key"),
    (lambda o: not o.tls_client_cert and bool(o.tls_client_key),
     "specified -tls-client-key without specifying -tls-client-cert"),
    (lambda o: o.tls_no_verify and bool(o.tls_ca_cert),
     "cannot specify -tls-ca-cert with -tls-no-verify (CA cert would not be used)"),
    (lambda o: o.tls_no_verify and bool(o.tls_server_name),
     "cannot specify -tls-server-name with -tls-no-verify (server name would not be used)"),
)


def _validate(opts: ProbeOptions) -> None:
    # The same checks, in the same order and words, as grpc_health_probe.
    if not opts.addr:
        raise UsageError("-addr not specified")
    try:
        parse_target(dial_address(opts.addr))
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
    for applies, message in _TLS_RULES:
        if applies(opts):
            raise UsageError(message)
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


# Pauses between connection attempts a refusal ends (doubling), within -connect-timeout.
_RETRY_FIRST = 0.02
_RETRY_MAX = 0.25
# TLS alerts a server sends when it does not accept the client's certificate (or its absence).
_CERT_ALERTS = re.compile(r"ALERT_(CERTIFICATE_REQUIRED|BAD_CERTIFICATE|UNKNOWN_CA|"
                          r"CERTIFICATE_UNKNOWN|UNSUPPORTED_CERTIFICATE|CERTIFICATE_EXPIRED|"
                          r"CERTIFICATE_REVOKED|ACCESS_DENIED)")


def _refused(exc: ConnectError) -> bool:
    return exc.reason.endswith(os.strerror(errno.ECONNREFUSED))


def _connect_hint(opts: ProbeOptions, exc: ConnectError) -> str:
    """A likely cause of a failed connection, in a few words ("" when there is no guess)."""
    reason = exc.reason
    if not opts.tls:
        # A TLS server answers an HTTP/2 preface with an alert or by closing.
        if reason.startswith(("the server closed the connection before its HTTP/2",
                              "the server does not speak HTTP/2", "connection failed")):
            return "is it a TLS port? try -tls"
        return ""
    # TLS 1.3: the client's handshake is done before the server checks the client
    # certificate, so a refusal shows as an alert (or a bare close) right after it.
    if _CERT_ALERTS.search(reason) or reason.startswith(
            ("connection failed", "the server closed the connection before its HTTP/2")):
        if opts.tls_client_cert:
            return "the server refused the client certificate"
        return ("the server refused the client certificate: it may require one "
                "(-tls-client-cert, -tls-client-key)")
    return ""


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
            dial_address(opts.addr), connect_timeout=opts.connect_timeout,
            authority=opts.authority, user_agent=opts.user_agent, ssl_context=self.ssl_context,
            server_hostname=server_hostname,
        ) as channel:
            failure = await self._connect(channel)
            if failure is not None:
                if not quiet:
                    self._report_connect_failure(failure)
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

    async def _connect(self, channel: wire.Channel) -> ConnectError | None:
        """Connect, retrying a refused connection until -connect-timeout (grpc-go's blocking
        dial does), so a server that starts listening meanwhile is reached."""
        deadline = trio.current_time() + self.opts.connect_timeout
        delay = _RETRY_FIRST
        last: ConnectError | None = None
        with trio.move_on_at(deadline):
            while True:  # bounded by the -connect-timeout deadline
                try:
                    await channel.connect()
                    return None
                except ConnectError as exc:
                    if exc.timed_out or not _refused(exc):
                        return exc
                    last = exc
                self.output.verbose(f"connection refused; retrying in {format_duration(delay)}")
                await trio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
        reason = "timed out; last attempt: connection refused" if last else "timed out"
        return ConnectError(reason, target=self.opts.addr, timed_out=True)

    def _report_connect_failure(self, exc: ConnectError) -> None:
        opts, out = self.opts, self.output
        hint = _connect_hint(opts, exc)
        if exc.timed_out:
            last = exc.reason.partition("last attempt: ")[2]
            out.log(f"timeout: failed to connect service {_quote(opts.addr)} within "
                    f"{format_duration(opts.connect_timeout)}"
                    + (f" (last attempt: {last})" if last else ""))
        else:
            out.log(f"error: failed to connect service at {_quote(opts.addr)}: "
                    f"{exc.reason}" + (f" ({hint})" if hint else ""))
        doc: dict[str, Any] = {"addr": opts.addr, "exit_code": EXIT_CONNECTION_FAILURE,
                               "error": exc.message}
        if hint:
            doc["hint"] = hint
        out.emit(doc)

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
                if exc.code is StatusCode.UNIMPLEMENTED and await self._answers_check(client):
                    out.log("error: this server answers Check but does not implement List "
                            f"(grpc.health.v1.Health/List): {exc.message}")
                else:
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

    async def _answers_check(self, client: HealthClient) -> bool:
        """True when the server implements Check (whatever it says about ``""``)."""
        try:
            await client.check("", timeout=self.opts.rpc_timeout)
        except RpcError as exc:
            return exc.code is not StatusCode.UNIMPLEMENTED
        return True

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
        # Go's flag package: usage on stderr, and grpc_health_probe exits 1 after -h.
        print(_USAGE, file=err, end="")
        return EXIT_INVALID_ARGUMENTS
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

