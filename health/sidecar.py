"""Builds and runs what a :class:`~health.config.SidecarConfig` describes.

This module owns the step from configuration to running objects: the probes of the checks
(:func:`build_probe`, :func:`build_check`, :func:`build_runner`), the TLS contexts (the gRPC
port's and the probes' CA files), the metrics and the admin server, and running them:

* :class:`Sidecar` is what a config adds to a health server someone else runs: the check
  runner and, when asked for, Prometheus metrics (``run_sidecar`` runs it);
* :class:`SidecarProcess` is the whole ``python -m health serve`` process: the health server,
  the sidecar, the admin API, TLS files followed as they rotate (reloaded on SIGHUP and when
  they change), and the stop on SIGTERM / SIGINT: ``shutdown_delay`` seconds of NOT_SERVING
  while still answering, then the drain (a second signal stops at once).

Everything is built in the constructors, before any task starts, so a bad CA file, a bad
certificate, a bad token file or a missing optional dependency stops the process before it
listens. Errors about a value from the file are ``ConfigError`` with its ``file:line: key``;
other startup problems (files, addresses, a port in use) are :class:`StartupError`, one line
naming the ``serve`` flag.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import ssl
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from wire.connection import ServerConfig
from wire.tls import ServerTLS, TLSConfigError, server_context

from .admin import AdminServer, AdminTokenError, format_address
from .checks import Check, CheckRunner, Probe
from .config import (
    CheckConfig,
    CommandProbeConfig,
    ConfigError,
    HttpProbeConfig,
    Origin,
    ProbeConfig,
    SidecarConfig,
    TcpProbeConfig,
    TlsConfig,
)
from .errors import HealthError
from .probes import command_check, grpc_check, http_check, tcp_check
from .service import HealthServer, HealthService
from .status import ServingStatus
from .status_map import HealthState

if TYPE_CHECKING:
    from pathlib import Path

    from .metrics import HealthMetrics

__all__ = [
    "Sidecar",
    "SidecarProcess",
    "StartupError",
    "build_check",
    "build_probe",
    "build_runner",
    "run_sidecar",
    "server_ssl_context",
    "server_tls",
]

logger = logging.getLogger("health")

Route = Callable[[], tuple[int, str, bytes]]

#: Seconds between looks at the TLS files (handshakes look too; this catches a bad file early).
TLS_CHECK_INTERVAL = 2.0


class StartupError(HealthError):
    """The process cannot start as configured; the message is one line naming the flag."""


# ------------------------------------------------------------------------- building


def _ca_context(ca: Path | None, origin: Origin) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    except (ssl.SSLError, OSError) as exc:
        raise origin.error(f"cannot load CA file: {exc}") from None


def build_probe(probe: ProbeConfig, timeout: float) -> Probe:
    """The live probe a probe configuration describes (``timeout`` bounds gRPC connects)."""
    if isinstance(probe, TcpProbeConfig):
        return tcp_check(probe.host, probe.port)
    if isinstance(probe, HttpProbeConfig):
        context: ssl.SSLContext | None = None
        if probe.url.lower().startswith("https:"):
            context = _ca_context(probe.tls_ca, probe.tls_ca_origin)
            if probe.tls_no_verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        return http_check(probe.url, expect_status=probe.expect_status, ssl_context=context,
                          headers=probe.headers)
    if isinstance(probe, CommandProbeConfig):
        return command_check(probe.argv, cwd=probe.cwd)
    context = _ca_context(probe.tls_ca, probe.tls_ca_origin) if probe.tls else None
    return grpc_check(probe.target, probe.service, rpc_timeout=timeout,
                      connect_timeout=timeout, ssl_context=context)


def build_check(check: CheckConfig) -> Check:
    """The ``health.checks.Check`` a check configuration describes."""
    return Check(check.name, build_probe(check.probe, check.timeout), service=check.service,
                 interval=check.interval, timeout=check.timeout,
                 failure_threshold=check.failure_threshold,
                 success_threshold=check.success_threshold, threaded=False)


def build_runner(config: SidecarConfig, state: HealthState) -> CheckRunner:
    """A ``CheckRunner`` with every check of ``config``, writing into ``state``."""
    return CheckRunner(state, [build_check(c) for c in config.checks],
                       aggregate=config.aggregate, initial=config.pending_statuses())


def server_ssl_context(tls: TlsConfig | None) -> ssl.SSLContext | None:
    """The gRPC port's TLS context (None for plaintext); raises ``wire.tls.TLSConfigError``."""
    if tls is None:
        return None
    return server_context(str(tls.cert), str(tls.key) if tls.key is not None else None,
                          client_ca=str(tls.client_ca) if tls.client_ca is not None else None,
                          require_client_cert=tls.require_client_cert)


def server_tls(tls: TlsConfig | None) -> ServerTLS | None:
    """A ``ServerTLS`` following the gRPC port's files (None for plaintext).

    Raises :class:`StartupError` naming the flag of the file that cannot be used.
    """
    if tls is None:
        return None
    files = (("--tls-cert", tls.cert), ("--tls-key", tls.key), ("--tls-client-ca", tls.client_ca))
    try:
        return ServerTLS(str(tls.cert), str(tls.key) if tls.key is not None else None,
                         client_ca=str(tls.client_ca) if tls.client_ca is not None else None,
                         require_client_cert=tls.require_client_cert)
    except TLSConfigError as exc:
        message = str(exc)
        # The error names the file it refused (its repr) first; name that file's flag in front.
        named = [(message.find(repr(str(path))), flag) for flag, path in files
                 if path is not None and repr(str(path)) in message]
        flag = min(named)[1] if named else "--tls-cert"
        if tls.require_client_cert and tls.client_ca is None:
            flag, message = "--require-client-cert", "needs --tls-client-ca"
        raise StartupError(f"{flag}: {message}") from None


# ---------------------------------------------------------------- checks and metrics


class Sidecar:
    """What a config adds to a running health server: its check runner and its metrics."""

    def __init__(self, config: SidecarConfig | None, state: HealthState, *,
                 service: HealthService | None = None, metrics: bool = False) -> None:
        """Build the runner (and metrics, if the config or ``metrics`` asks) for ``state``."""
        self.config = config if config is not None else SidecarConfig()
        self.state = state
        runner = build_runner(self.config, state)
        #: None when the config has no checks.
        self.runner: CheckRunner | None = runner if runner.checks else None
        #: None unless metrics are enabled (by the file or by ``metrics=True``).
        self.metrics: HealthMetrics | None = None
        if metrics or self.config.metrics:
            # Imported only when asked for: prometheus_client is an optional dependency.
            try:
                from .metrics import HealthMetrics
            except ImportError as exc:
                raise ConfigError(f"metrics need prometheus_client ({exc}); install "
                                  "trio-grpc-health[metrics]") from None
            self.metrics = HealthMetrics(state, service=service, runner=self.runner)

    def admin_routes(self) -> dict[str, Route]:
        """Extra GET routes for ``AdminServer(extra_routes=...)`` (``/metrics`` if enabled)."""
        if self.metrics is None:
            return {}
        return {"/metrics": self.metrics.http_response}

    async def run(self, *, task_status: trio.TaskStatus[Sidecar] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        """Run the checks until cancelled; ``started(self)`` after their first round."""
        try:
            if self.runner is None:
                task_status.started(self)
                await trio.sleep_forever()
            else:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self.runner.run)
                    task_status.started(self)
        finally:
            self.close()

    def close(self) -> None:
        """Detach the metrics listeners. Idempotent."""
        if self.metrics is not None:
            self.metrics.close()


async def run_sidecar(
    config: SidecarConfig | None,
    state: HealthState,
    service: HealthService | None = None,
    metrics: bool = False,
    *,
    task_status: trio.TaskStatus[Sidecar] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a config's checks (and metrics) until cancelled.

    ``sidecar = await nursery.start(run_sidecar, config, state, service, metrics)`` returns
    once every check has run once; ``sidecar.admin_routes()`` then feeds the admin server.
    """
    await Sidecar(config, state, service=service, metrics=metrics).run(task_status=task_status)


# ------------------------------------------------------------------- the whole process


def _log_change(service: str, old: ServingStatus | None, new: ServingStatus | None) -> None:
    old_name = old.name if old is not None else "absent"
    new_name = new.name if new is not None else "absent"
    logger.info("status %r: %s -> %s", service, old_name, new_name,
                extra={"service": service, "old": old_name, "new": new_name})


def _ignore(_line: str) -> None:
    """Drop an announcement (the default when nobody reads them)."""


def _check_unix_path(path: str) -> None:
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise StartupError(f"--unix {path}: directory {folder} does not exist")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StartupError(f"--unix {path}: {exc.strerror}") from None
    # A stale socket is replaced; anything else at that path is someone's file.
    if not stat.S_ISSOCK(mode):
        raise StartupError(f"--unix {path}: exists and is not a socket (not replacing it)")


def _check_addresses(config: SidecarConfig) -> None:
    """What can be refused before binding: empty hosts, the same port twice, Unix paths."""
    if config.unix is not None:
        _check_unix_path(config.unix)
    elif not config.host:
        raise StartupError("--host: must not be empty (0.0.0.0 or :: listens everywhere)")
    if config.admin_port is None:
        return
    if config.admin_host == "":
        raise StartupError("--admin-host: must not be empty (0.0.0.0 or :: listens everywhere)")
    if config.unix is None and config.admin_port != 0 and config.admin_port == config.port:
        raise StartupError(f"--admin-port {config.admin_port}: the same port as --port; the "
                           "admin API needs a port of its own")


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError that ``exc`` is or carries alone in (nested) exception groups; else None."""
    # A serve method that opens a nursery reports a bind failure wrapped in a group.
    for _ in range(16):
        members = getattr(exc, "exceptions", None)
        if not isinstance(members, tuple) or len(members) != 1:
            break
        exc = members[0]
    return exc if isinstance(exc, OSError) else None


def _bind_problem(exc: OSError, host_flag: str, port_flag: str, host: str, port: int) -> str:
    """One line saying why listening on ``host:port`` failed, naming the flag to change."""
    if isinstance(exc, socket.gaierror):
        return f"{host_flag} {host}: cannot resolve this host name ({exc.strerror})"
    where = format_address(host, port)
    if exc.errno == errno.EADDRINUSE:
        return f"{port_flag} {port}: {where} is already in use"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{host_flag} {host}: not an address of this machine"
    if exc.errno == errno.EACCES:
        return f"{port_flag} {port}: permission denied to listen on {where}"
    return f"{host_flag} {host} {port_flag} {port}: cannot listen: {exc.strerror or exc}"


async def _start_listening(nursery: trio.Nursery, serve: Callable[..., Awaitable[Any]],
                           problem: Callable[[OSError], str]) -> Any:
    """``nursery.start(serve)``; a failure to bind becomes a StartupError from ``problem``."""
    try:
        return await nursery.start(serve)
    except Exception as exc:
        os_error = _os_error(exc)
        if os_error is None:
            raise
        raise StartupError(problem(os_error)) from None


class SidecarProcess:
    """The ``serve`` process a config describes: server, checks, metrics, admin API, signals."""

    def __init__(self, config: SidecarConfig) -> None:
        """Build everything; raises ConfigError or StartupError (one line) if it cannot."""
        self.config = config
        _check_addresses(config)
        #: Follows the TLS files (None for plaintext).
        self.tls = server_tls(config.tls)
        self.ssl_context = self.tls.context if self.tls is not None else None
        self.state = HealthState(config.initial_statuses())
        self.state.add_listener(_log_change)
        self.server = HealthServer(self.state, list_limit=config.list_limit,
                                   config=ServerConfig(http2=config.http2),
                                   reflection=config.reflection)
        self.sidecar = Sidecar(config, self.state, service=self.server.service)
        #: Set by the first signal or the admin API's shutdown: drain, then stop.
        self.stop = trio.Event()
        self.admin: AdminServer | None = None
        if config.admin_port is not None:
            try:
                self.admin = AdminServer(self.state, on_shutdown=self.stop.set,
                                         extra_routes=self.sidecar.admin_routes(),
                                         token_file=config.admin_token_file)
            except AdminTokenError as exc:
                raise StartupError(f"--admin-token-file: {exc}") from None

    async def run(self, announce: Callable[[str], None] = _ignore) -> int:
        """Serve until a signal or the admin API asks to stop, then drain; return 0.

        ``announce`` gets the machine-readable lines ``listening PORT|PATH`` and
        ``admin PORT`` once each is true, for wrappers and tests that ask for port 0. A port
        that cannot be listened on raises :class:`StartupError`.
        """
        failure: StartupError | None = None
        # Catch the signals before announcing the ports: a supervisor may signal as soon as
        # it reads the "listening" line, and the default action would kill us undrained.
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._wait_signals, signals, nursery.cancel_scope)
                try:
                    await self._start(nursery, announce)
                except StartupError as exc:
                    # Raised after the nursery, so that it is not wrapped in a group.
                    failure = exc
                else:
                    await self._stop_when_asked()
                nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
        return 0

    async def _start(self, nursery: trio.Nursery, announce: Callable[[str], None]) -> None:
        config = self.config
        await self._listen(nursery)
        admin_addr: tuple[str, int] | None = None
        if self.admin is not None and config.admin_port is not None:
            # Bound before anything is announced, so a port in use fails the start.
            host = config.admin_host or "127.0.0.1"
            admin_addr = await _start_listening(
                nursery, partial(self.admin.serve_tcp, host, config.admin_port),
                partial(_bind_problem, host_flag="--admin-host", port_flag="--admin-port",
                        host=host, port=config.admin_port))
        # Logged once every port is bound: a failure to start is then the only line.
        self._log_listening()
        # Every configured check has run once before we announce ourselves.
        await nursery.start(self.sidecar.run)
        announce(f"listening {self.server.address if config.unix else self.server.port}")
        if admin_addr is not None:
            logger.info("admin API on http://%s", format_address(*admin_addr))
            announce(f"admin {admin_addr[1]}")
        if self.tls is not None:
            nursery.start_soon(self._watch_tls, self.tls)

    async def _stop_when_asked(self) -> None:
        config = self.config
        await self.stop.wait()
        if config.shutdown_delay > 0:
            # Endpoints and load balancers drop the pod on NOT_SERVING; calls keep being
            # answered meanwhile, so nothing in flight fails before they have.
            logger.info("shutdown delay: NOT_SERVING for %.1f s while still answering",
                        config.shutdown_delay)
            self.state.shutdown()
            await trio.sleep(config.shutdown_delay)
        logger.info("graceful shutdown: grace %.1f s", config.grace)
        await self.server.shutdown(config.grace)
        logger.info("stopped")

    async def _listen(self, nursery: trio.Nursery) -> None:
        config = self.config
        if config.unix:
            await _start_listening(
                nursery, partial(self.server.serve_unix, config.unix),
                lambda exc: f"--unix {config.unix}: cannot listen: {exc.strerror or exc}")
            return
        await _start_listening(
            nursery, partial(self.server.serve_tcp, config.host, config.port,
                             ssl_context=self.ssl_context),
            partial(_bind_problem, host_flag="--host", port_flag="--port", host=config.host,
                    port=config.port))

    def _log_listening(self) -> None:
        config = self.config
        where = config.unix if config.unix else format_address(*self.server.address)
        logger.info("health server listening on %s (http2=%s%s)", where, config.http2,
                    ", TLS" if self.ssl_context is not None else "")

    async def _watch_tls(self, tls: ServerTLS) -> None:
        # Handshakes look at the files too; this loop notices a change (or a bad file) even
        # while no client connects, so the log says so when it happens.
        while True:
            await trio.sleep(TLS_CHECK_INTERVAL)
            tls.check()

    def _reload_tls(self) -> None:
        if self.tls is None:
            logger.info("received SIGHUP: no TLS files to reload")
            return
        logger.info("received SIGHUP: reloading the TLS files")
        if not self.tls.reload():
            logger.info("TLS files unchanged (or unusable): still serving the same certificate")

    async def _wait_signals(self, signals: AsyncIterator[int],
                            cancel_scope: trio.CancelScope) -> None:
        async for signum in signals:
            if signum == signal.SIGHUP:
                self._reload_tls()
                continue
            if self.stop.is_set():
                logger.warning("second signal: stopping now")
                cancel_scope.cancel()
                return
            logger.info("received %s: draining", signal.Signals(signum).name)
            self.stop.set()
