"""The sidecar configuration file (``python -m health serve --config health.toml``).

This module owns the TOML schema below and its validation: :func:`load_config` and
:func:`parse_config` turn TOML into frozen dataclasses (:class:`SidecarConfig` and what it
holds), or raise :class:`ConfigError` naming the file, the line and the key. It is pure: it
builds no probe, TLS context or server and starts nothing; :mod:`health.sidecar` builds and
runs what a ``SidecarConfig`` describes. See ``examples/health.toml`` for a commented example.

Adding a setting: a field on :class:`SidecarConfig` (its default is the flag's), one line in
``_Loader.load`` reading the key, its name in :data:`FLAG_SETTINGS` if a ``serve`` flag sets
it too, and its use in :mod:`health.sidecar`.

Schema (every key optional unless marked required; unknown keys are errors, to catch typos)::

    [server]
    host = "127.0.0.1"          # gRPC listen address
    port = 50051                # 0 picks a free port
    unix = "/run/health.sock"   # listen on a Unix socket instead of TCP
    admin_port = 8081           # HTTP/1.1 admin API (absent: no admin API)
    admin_host = "127.0.0.1"    # the admin API's address (needs admin_port; default loopback)
    admin_token_file = "token"  # bearer token for the admin API's mutating endpoints
    grace = 5.0                 # seconds calls in flight get on shutdown
    shutdown_delay = 0.0        # seconds of NOT_SERVING (still answering) before the drain
    http2 = "h2"                # HTTP/2 engine: "h2" (the h2 library) or "native"
    list_limit = 100            # most services List returns
    metrics = false             # GET /metrics on the admin port (needs admin_port)
    reflection = true           # gRPC server reflection (grpcurl list/describe); false: off
    aggregate = true            # "" is the aggregate of every check (see health.checks)
    tls_cert = "server.pem"     # TLS files: must exist (relative to this file's folder);
    tls_key = "server.key"      #   cert and key go together
    tls_client_ca = "ca.pem"    #   CA for client certificates
    require_client_cert = false #   needs tls_client_ca

    [check_defaults]            # defaults for every check (Kubernetes probe defaults)
    interval = 10.0             # seconds from the start of one run to the next
    timeout = 1.0               # seconds a run may take before it counts as failed
    failure_threshold = 3       # failures in a row to turn a healthy check failing
    success_threshold = 1       # successes in a row to turn a failing check healthy

    [services."pkg.Service"]    # one table per service; [services.""] is the whole server
    status = "SERVING"          # without checks: its fixed initial status;
                                # with checks: its status until the first results (UNKNOWN)

    [[services."pkg.Service".checks]]
    type = "tcp"                # required: tcp | http | command | grpc
    name = "db"                 # unique; default "<service>/<type><index>"
    host = "127.0.0.1"          # tcp: host and port (required)
    port = 5432
    # http: url (required, http/https), expect_status = [200, 399] (inclusive; or one
    #       number), tls_ca (file), tls_no_verify = false, headers = { Name = "value" }
    # command: argv = ["pg_isready", "-q"] (required; passes on exit status 0), cwd
    # grpc: target = "host:port" or "unix:PATH" (required), service = "" (the service asked
    #       about), tls = false, tls_ca (file; implies tls)
    # any check: interval, timeout, failure_threshold, success_threshold (override defaults)

Relative file paths (TLS files, ``admin_token_file``, ``tls_ca``, ``cwd``) are relative to the
config file's folder.
Errors read like ``health.toml:12: services."pkg.Service".checks[0].port: must be an integer
between 1 and 65535, got 'x'``. Syntax errors carry tomllib's line; for semantic errors the
line is found by scanning the text for the key (best effort: a key written inside an inline
table points at the line of its enclosing key).
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from wire.http2 import ENGINES, EngineName

from ._moved import moved_names
from ._toml_lines import KeyPath, format_key, key_lines
from .checks import (
    DEFAULT_FAILURE_THRESHOLD,
    DEFAULT_INTERVAL,
    DEFAULT_SUCCESS_THRESHOLD,
    DEFAULT_TIMEOUT,
    Check,
    CheckRunner,
    managed_services,
)
from .errors import HealthError, InvalidStatusError
from .service import DEFAULT_LIST_LIMIT
from .status import ServingStatus, parse_status

if TYPE_CHECKING:
    from .status_map import HealthState

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "CHECK_TYPES",
    "FLAG_SETTINGS",
    "HTTP2_ENGINES",
    "SETTABLE_STATUSES",
    "CheckConfig",
    "CommandProbeConfig",
    "ConfigError",
    "GrpcProbeConfig",
    "HttpProbeConfig",
    "Origin",
    "ProbeConfig",
    "ServiceConfig",
    "SidecarConfig",
    "TcpProbeConfig",
    "TlsConfig",
    "load_config",
    "parse_config",
    "parse_settable_status",
]

CHECK_TYPES = ("tcp", "http", "command", "grpc")

#: The SidecarConfig fields that ``serve`` flags of the same name (``--admin-port`` ->
#: ``admin_port``) also set; the flag wins over the file.
FLAG_SETTINGS = ("host", "port", "unix", "admin_port", "admin_host", "admin_token_file", "grace",
                 "shutdown_delay", "list_limit", "metrics", "reflection", "http2")

#: The HTTP/2 engines ``server.http2`` and ``serve --http2`` choose from.
HTTP2_ENGINES: tuple[EngineName, ...] = ENGINES


# Running a config moved to health.sidecar; resolved lazily so that this module stays pure.
__getattr__ = moved_names(__name__, "health.sidecar", ("Sidecar", "run_sidecar"))


class ConfigError(HealthError):
    """The configuration file is unreadable or invalid; the message names the key and line."""

    def __init__(self, message: str, *, file: str = "", key: str = "",
                 line: int | None = None) -> None:
        where = file
        if line is not None:
            where = f"{where}:{line}" if where else f"line {line}"
        prefix = ": ".join(part for part in (where, key) if part)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.file = file
        self.key = key
        self.line = line
        self.reason = message


#: The statuses a service can be given (SERVICE_UNKNOWN is what Watch says of no service).
SETTABLE_STATUSES = ("SERVING", "NOT_SERVING", "UNKNOWN")


def parse_settable_status(value: str | int) -> ServingStatus:
    """A status name or number a service may be set to; InvalidStatusError otherwise."""
    try:
        status = parse_status(value)
    except InvalidStatusError:
        # parse_status lists every member; SERVICE_UNKNOWN is refused here, so not offered.
        raise InvalidStatusError(f"not a serving status name: {value!r} (expected one of "
                                 f"{', '.join(SETTABLE_STATUSES)})") from None
    if status is ServingStatus.SERVICE_UNKNOWN:
        raise InvalidStatusError("SERVICE_UNKNOWN cannot be set; it is Watch-only "
                                 f"(expected one of {', '.join(SETTABLE_STATUSES)})")
    return status


# ------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Origin:
    """Where a value was written (file, line, key), for errors found after parsing."""

    file: str = ""
    key: str = ""
    line: int | None = None

    def error(self, message: str) -> ConfigError:
        """A ConfigError about this value."""
        return ConfigError(message, file=self.file, key=self.key, line=self.line)


@dataclass(frozen=True)
class TlsConfig:
    """TLS files for the gRPC port (validated to exist when the file is loaded).

    ``key`` may be None only when set from flags (``--tls-cert`` holding the key too).
    """

    cert: Path
    key: Path | None
    client_ca: Path | None = None
    require_client_cert: bool = False


@dataclass(frozen=True)
class TcpProbeConfig:
    """``type = "tcp"``: connect to ``host:port``."""

    host: str
    port: int


@dataclass(frozen=True)
class HttpProbeConfig:
    """``type = "http"``: GET ``url`` and expect a status within ``expect_status``."""

    url: str
    expect_status: tuple[int, int] = (200, 399)
    tls_ca: Path | None = None
    tls_no_verify: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    #: Where ``tls_ca`` was written, for an unloadable CA file.
    tls_ca_origin: Origin = field(default=Origin(), compare=False, repr=False)


@dataclass(frozen=True)
class CommandProbeConfig:
    """``type = "command"``: run ``argv`` (in ``cwd``) and expect exit status 0."""

    argv: tuple[str, ...]
    cwd: str | None = None


@dataclass(frozen=True)
class GrpcProbeConfig:
    """``type = "grpc"``: ask the health server at ``target`` about ``service``."""

    target: str
    service: str = ""
    tls: bool = False
    tls_ca: Path | None = None
    #: Where ``tls_ca`` was written, for an unloadable CA file.
    tls_ca_origin: Origin = field(default=Origin(), compare=False, repr=False)


ProbeConfig = TcpProbeConfig | HttpProbeConfig | CommandProbeConfig | GrpcProbeConfig


@dataclass(frozen=True)
class CheckConfig:
    """One check from the file: its probe's parameters, schedule and thresholds."""

    name: str
    service: str
    type: str
    probe: ProbeConfig
    interval: float = DEFAULT_INTERVAL
    timeout: float = DEFAULT_TIMEOUT
    failure_threshold: int = DEFAULT_FAILURE_THRESHOLD
    success_threshold: int = DEFAULT_SUCCESS_THRESHOLD

    def to_check(self) -> Check:
        """Deprecated: use ``health.sidecar.build_check(check_config)``."""
        warnings.warn("CheckConfig.to_check() moved to health.sidecar.build_check()",
                      DeprecationWarning, stacklevel=2)
        # Imported on use only: parsing stays free of what builds and runs checks.
        from .sidecar import build_check

        return build_check(self)

    @property
    def params(self) -> dict[str, Any]:
        """The probe's parameters as plain values (paths as strings, headers as a dict)."""
        values = {f.name: getattr(self.probe, f.name) for f in dataclasses.fields(self.probe)
                  if f.compare}
        for key, value in values.items():
            if isinstance(value, Path):
                values[key] = str(value)
        if isinstance(self.probe, HttpProbeConfig):
            values["headers"] = dict(self.probe.headers)
        if isinstance(self.probe, CommandProbeConfig):
            values["argv"] = list(self.probe.argv)
        return values


@dataclass(frozen=True)
class ServiceConfig:
    """A service from the file: its initial status (if given) and its checks."""

    name: str
    status: ServingStatus | None = None
    checks: tuple[CheckConfig, ...] = ()


@dataclass(frozen=True)
class SidecarConfig:
    """Everything a config file says; defaults match ``python -m health serve``'s flags."""

    path: Path | None = None
    host: str = "127.0.0.1"
    port: int = 50051
    unix: str | None = None
    admin_port: int | None = None
    #: The admin API's address; None means 127.0.0.1 (set only to open it wider).
    admin_host: str | None = None
    admin_token_file: Path | None = None
    grace: float = 5.0
    shutdown_delay: float = 0.0
    list_limit: int = DEFAULT_LIST_LIMIT
    metrics: bool = False
    http2: EngineName = "h2"
    #: Serve gRPC server reflection describing the Health service (``--no-reflection``: off).
    reflection: bool = True
    aggregate: bool = True
    tls: TlsConfig | None = None
    services: tuple[ServiceConfig, ...] = ()
    #: Initial statuses that win over the file's (``serve --service NAME=STATUS``).
    status_overrides: tuple[tuple[str, ServingStatus], ...] = ()

    @property
    def checks(self) -> tuple[CheckConfig, ...]:
        """Every check of every service, in file order."""
        return tuple(check for service in self.services for check in service.checks)

    def arg_defaults(self) -> dict[str, Any]:
        """The ``serve`` flags' values from the file, for ``ArgumentParser.set_defaults``."""
        tls = self.tls
        return {**{name: getattr(self, name) for name in FLAG_SETTINGS},
                "tls_cert": str(tls.cert) if tls else None,
                "tls_key": str(tls.key) if tls and tls.key else None,
                "tls_client_ca": str(tls.client_ca) if tls and tls.client_ca else None,
                "require_client_cert": bool(tls and tls.require_client_cert)}

    def pending_statuses(self) -> dict[str, ServingStatus]:
        """The statuses the file gives its services (for checked ones: until first results)."""
        return {s.name: s.status for s in self.services if s.status is not None}

    def managed_services(self) -> list[str]:
        """The services whose status the checks write (``""`` last when aggregated)."""
        return managed_services((c.service for c in self.checks), aggregate=self.aggregate)

    def check_runner(self, state: HealthState) -> CheckRunner:
        """Deprecated: use ``health.sidecar.build_runner(config, state)``."""
        warnings.warn("SidecarConfig.check_runner() moved to health.sidecar.build_runner()",
                      DeprecationWarning, stacklevel=2)
        # Imported on use only: parsing stays free of what builds and runs checks.
        from .sidecar import build_runner

        return build_runner(self, state)

    def initial_statuses(self) -> dict[str, ServingStatus]:
        """The statuses a ``HealthState`` should start with.

        Services without checks get their ``status``; services the checks manage (and ``""``
        when aggregated) get their status until the first results: ``status`` or UNKNOWN.
        ``status_overrides`` win over both.
        """
        initial = self.pending_statuses()
        for name in self.managed_services():
            initial.setdefault(name, ServingStatus.UNKNOWN)
        initial.update(self.status_overrides)
        return initial


# ------------------------------------------------------------------------- reading


class _Missing:
    pass


_MISSING = _Missing()


class _Table:
    """A TOML table being validated; errors name the key and its line."""

    def __init__(self, loader: _Loader, data: Mapping[str, Any], path: KeyPath) -> None:
        self.loader = loader
        self.data = data
        self.path = path
        self.used: set[str] = set()

    def error(self, key: str | int | None, message: str) -> ConfigError:
        """A ConfigError about ``key`` of this table (or the table itself)."""
        path = self.path if key is None else (*self.path, key)
        return self.loader.error(path, message)

    def get(self, key: str) -> Any:
        """The raw value of ``key``, marking it known; _MISSING if absent."""
        self.used.add(key)
        return self.data.get(key, _MISSING)

    def string(self, key: str, default: Any = _MISSING) -> Any:
        """A string value."""
        value = self.get(key)
        if value is _MISSING:
            if default is _MISSING:
                raise self.error(None, f"missing required key {key!r}")
            return default
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, got {value!r}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        """A boolean value."""
        value = self.get(key)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {value!r}")
        return value

    def integer(self, key: str, default: Any, low: int, high: int | None = None) -> Any:
        """An integer within ``low..high``."""
        value = self.get(key)
        if value is _MISSING:
            if default is _MISSING:
                raise self.error(None, f"missing required key {key!r}")
            return default
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        if (isinstance(value, bool) or not isinstance(value, int) or value < low
                or (high is not None and value > high)):
            raise self.error(key, f"must be an integer {bounds}, got {value!r}")
        return value

    def number(self, key: str, default: float, *, positive: bool) -> float:
        """A finite int or float, > 0 or >= 0."""
        value = self.get(key)
        if value is _MISSING:
            return default
        ok = (not isinstance(value, bool) and isinstance(value, (int, float))
              and math.isfinite(value) and (value > 0 if positive else value >= 0))
        if not ok:
            bound = "> 0" if positive else ">= 0"
            raise self.error(key, f"must be a number of seconds {bound}, got {value!r}")
        return float(value)

    def file(self, key: str) -> Path | None:
        """A path to an existing file, relative to the config file's folder."""
        value = self.string(key, None)
        if value is None:
            return None
        path = self.loader.resolve(value)
        if not path.is_file():
            raise self.error(key, f"file not found: {str(path)!r}")
        return path

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        """A string among ``choices``."""
        value = self.string(key, default)
        if value not in choices:
            raise self.error(key, f"must be one of {', '.join(map(repr, choices))}, "
                                  f"got {value!r}")
        return str(value)

    def table(self, key: str) -> _Table:
        """A sub-table (empty if absent)."""
        value = self.get(key)
        if value is _MISSING:
            return _Table(self.loader, {}, (*self.path, key))
        if not isinstance(value, dict):
            raise self.error(key, f"must be a table, got {value!r}")
        return _Table(self.loader, value, (*self.path, key))

    def finish(self) -> None:
        """Reject keys nobody asked for (typos, unsupported options)."""
        for key in self.data:
            if key not in self.used:
                expected = ", ".join(sorted(self.used)) or "none"
                raise self.error(key, f"unknown key (expected one of: {expected})")


class _Loader:
    def __init__(self, text: str, file: str, base: Path) -> None:
        self.text = text
        self.file = file
        self.base = base
        self._lines: dict[KeyPath, int] | None = None

    def resolve(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base / path

    def line_of(self, path: KeyPath) -> int | None:
        """The line where ``path`` (or its nearest written ancestor) appears."""
        if self._lines is None:
            self._lines = key_lines(self.text)
        for end in range(len(path), 0, -1):
            line = self._lines.get(path[:end])
            if line is not None:
                return line
        return None

    def origin(self, path: KeyPath) -> Origin:
        """Where ``path`` was written."""
        return Origin(self.file, format_key(path), self.line_of(path))

    def error(self, path: KeyPath, message: str) -> ConfigError:
        return self.origin(path).error(message)

    def load(self) -> SidecarConfig:
        try:
            data = tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as exc:
            match = re.search(r"at line (\d+)", str(exc))
            message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
            raise ConfigError(f"invalid TOML: {message}", file=self.file,
                              line=int(match.group(1)) if match else None) from None
        root = _Table(self, data, ())
        server = root.table("server")
        defaults = root.table("check_defaults")
        services_table = root.table("services")
        root.finish()

        host = server.string("host", "127.0.0.1")
        port = server.integer("port", 50051, 0, 65535)
        unix = server.string("unix", None)
        admin_port = server.integer("admin_port", None, 0, 65535)
        admin_host = server.string("admin_host", None)
        admin_token_file = server.file("admin_token_file")
        grace = server.number("grace", 5.0, positive=False)
        shutdown_delay = server.number("shutdown_delay", 0.0, positive=False)
        list_limit = server.integer("list_limit", DEFAULT_LIST_LIMIT, 0)
        metrics = server.boolean("metrics", False)
        http2 = cast("EngineName", server.choice("http2", "h2", HTTP2_ENGINES))
        reflection = server.boolean("reflection", True)
        aggregate = server.boolean("aggregate", True)
        tls = self._tls(server)
        server.finish()
        # admin_host and admin_token_file without admin_port are refused by ``serve`` once
        # its flags are applied (--admin-port may come from the command line).
        if metrics and admin_port is None:
            raise server.error("metrics", "metrics are served on the admin port: set admin_port")
        if unix is not None and "port" in server.data:
            raise server.error("unix", "listens instead of port: set one of them, not both")
        if admin_host == "" or host == "":
            raise server.error("host" if host == "" else "admin_host",
                               "must not be empty (0.0.0.0 or :: listens everywhere)")

        check_defaults = {
            "interval": defaults.number("interval", DEFAULT_INTERVAL, positive=True),
            "timeout": defaults.number("timeout", DEFAULT_TIMEOUT, positive=True),
            "failure_threshold": defaults.integer("failure_threshold",
                                                  DEFAULT_FAILURE_THRESHOLD, 1),
            "success_threshold": defaults.integer("success_threshold",
                                                  DEFAULT_SUCCESS_THRESHOLD, 1),
        }
        defaults.finish()

        services: list[ServiceConfig] = []
        names: set[str] = set()
        for name in services_table.data:
            table = services_table.table(name)
            services.append(self._service(name, table, check_defaults, names))
        services_table.finish()
        return SidecarConfig(
            path=Path(self.file) if self.file else None, host=host, port=port, unix=unix,
            admin_port=admin_port, admin_host=admin_host, admin_token_file=admin_token_file,
            grace=grace, shutdown_delay=shutdown_delay, list_limit=list_limit, metrics=metrics,
            http2=http2, reflection=reflection, aggregate=aggregate, tls=tls,
            services=tuple(services))

    def _tls(self, server: _Table) -> TlsConfig | None:
        cert = server.file("tls_cert")
        key = server.file("tls_key")
        client_ca = server.file("tls_client_ca")
        require = server.boolean("require_client_cert", False)
        if cert is None and key is None:
            if client_ca is not None:
                raise server.error("tls_client_ca", "needs tls_cert and tls_key")
            if require:
                raise server.error("require_client_cert", "needs tls_cert and tls_key")
            return None
        if cert is None or key is None:
            present, missing = ("tls_key", "tls_cert") if cert is None else ("tls_cert",
                                                                            "tls_key")
            raise server.error(present, f"needs {missing} too")
        if require and client_ca is None:
            raise server.error("require_client_cert", "needs tls_client_ca")
        return TlsConfig(cert, key, client_ca, require)

    def _service(self, name: str, table: _Table, defaults: Mapping[str, Any],
                 names: set[str]) -> ServiceConfig:
        status_text = table.get("status")
        status: ServingStatus | None = None
        if status_text is not _MISSING:
            try:
                if not isinstance(status_text, str):
                    raise InvalidStatusError(f"must be a status name, got {status_text!r}")
                status = parse_settable_status(status_text)
            except InvalidStatusError as exc:
                raise table.error("status", str(exc)) from None
        raw_checks = table.get("checks")
        checks: list[CheckConfig] = []
        if raw_checks is not _MISSING:
            if not isinstance(raw_checks, list):
                raise table.error("checks", "must be an array of tables ([[...checks]])")
            for index, raw in enumerate(raw_checks):
                if not isinstance(raw, dict):
                    raise table.error("checks", f"entry {index} must be a table, got {raw!r}")
                entry = _Table(self, raw, (*table.path, "checks", index))
                checks.append(self._check(name, index, entry, defaults, names))
        table.finish()
        return ServiceConfig(name, status, tuple(checks))

    def _check(self, service: str, index: int, entry: _Table, defaults: Mapping[str, Any],
               names: set[str]) -> CheckConfig:
        kind = entry.string("type")
        if kind not in CHECK_TYPES:
            raise entry.error("type", f"unknown check type {kind!r} "
                                      f"(expected one of: {', '.join(CHECK_TYPES)})")
        name = entry.string("name", f"{service}/{kind}{index}")
        if not name:
            raise entry.error("name", "must not be empty")
        if name in names:
            raise entry.error("name", f"duplicate check name {name!r}")
        names.add(name)
        interval = entry.number("interval", defaults["interval"], positive=True)
        timeout = entry.number("timeout", defaults["timeout"], positive=True)
        failure_threshold = entry.integer("failure_threshold", defaults["failure_threshold"], 1)
        success_threshold = entry.integer("success_threshold", defaults["success_threshold"], 1)
        probe: ProbeConfig
        if kind == "tcp":
            probe = TcpProbeConfig(entry.string("host"), entry.integer("port", _MISSING, 1, 65535))
        elif kind == "http":
            probe = self._http(entry)
        elif kind == "command":
            probe = self._command(entry)
        else:
            tls_ca = entry.file("tls_ca")
            probe = GrpcProbeConfig(entry.string("target"), entry.string("service", ""),
                                    entry.boolean("tls", False) or tls_ca is not None, tls_ca,
                                    self.origin((*entry.path, "tls_ca")))
        entry.finish()
        return CheckConfig(name, service, kind, probe, interval, timeout,
                           failure_threshold, success_threshold)

    def _command(self, entry: _Table) -> CommandProbeConfig:
        argv = entry.get("argv")
        if argv is _MISSING:
            raise entry.error(None, "missing required key 'argv'")
        if (not isinstance(argv, list) or not argv
                or not all(isinstance(a, str) and a for a in argv)):
            raise entry.error("argv", f"must be a non-empty array of strings, got {argv!r}")
        cwd = entry.string("cwd", None)
        if cwd is not None:
            cwd_path = self.resolve(cwd)
            if not cwd_path.is_dir():
                raise entry.error("cwd", f"not a directory: {str(cwd_path)!r}")
            cwd = str(cwd_path)
        return CommandProbeConfig(tuple(argv), cwd)

    def _http(self, entry: _Table) -> HttpProbeConfig:
        url = entry.string("url")
        _check_http_url(entry, url)
        raw_expect = entry.get("expect_status")
        expect = (200, 399)
        if raw_expect is not _MISSING:
            if isinstance(raw_expect, int) and not isinstance(raw_expect, bool):
                expect = (raw_expect, raw_expect)
            elif (isinstance(raw_expect, list) and len(raw_expect) == 2
                  and all(isinstance(v, int) and not isinstance(v, bool) for v in raw_expect)):
                expect = (raw_expect[0], raw_expect[1])
            else:
                raise entry.error("expect_status", "must be a status code or [low, high], "
                                                   f"got {raw_expect!r}")
            if not 100 <= expect[0] <= expect[1] <= 599:
                raise entry.error("expect_status",
                                  f"must be a range within 100-599, got {raw_expect!r}")
        tls_ca = entry.file("tls_ca")
        no_verify = entry.boolean("tls_no_verify", False)
        headers_table = entry.table("headers")
        headers = tuple((header, headers_table.string(header)) for header in headers_table.data)
        headers_table.finish()
        return HttpProbeConfig(url, expect, tls_ca, no_verify, headers,
                               self.origin((*entry.path, "tls_ca")))


def _check_http_url(entry: _Table, url: str) -> None:
    """Reject what ``health.probes.http_check`` would refuse, pointing at the ``url`` key."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (read for its ValueError on a bad port)
    except ValueError as exc:
        raise entry.error("url", f"{exc}: {url!r}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise entry.error("url", f"URL scheme must be http or https: {url!r}")
    if not parts.hostname:
        raise entry.error("url", f"URL has no host: {url!r}")


def parse_config(text: str, *, file: str = "", base: Path | str | None = None) -> SidecarConfig:
    """Validate TOML ``text``; ``file`` names it in errors, ``base`` anchors relative paths."""
    if base is None:
        base = Path(file).parent if file else Path.cwd()
    return _Loader(text, file, Path(base)).load()


def load_config(path: str | Path) -> SidecarConfig:
    """Read and validate a config file; raise ConfigError naming the key and line if bad."""
    name = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror or exc}", file=name) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError("not valid UTF-8", file=name, line=line) from None
    return parse_config(text, file=name, base=Path(path).parent)
