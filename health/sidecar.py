"""Builds and runs what a :class:`~health.config.SidecarConfig` describes.

This module owns the step from configuration to running objects: the probes of the checks
(:func:`build_probe`, :func:`build_check`, :func:`build_runner`), the TLS contexts (the gRPC
port's and the probes' CA files), the metrics and the admin server, and running them:

* :class:`Sidecar` is what a config adds to a health server someone else runs: the check
  runner and, when asked for, Prometheus metrics (``run_sidecar`` runs it);
* :class:`SidecarProcess` is the whole ``python -m health serve`` process: the health server,
  the sidecar, the admin API, and the drain on SIGTERM / SIGINT (a second signal stops at
  once).

Everything is built in the constructors, before any task starts, so a bad CA file, a bad
certificate or a missing optional dependency stops the process before it listens. Errors
about a value from the file are ``ConfigError`` with its ``file:line: key``.
"""

from __future__ import annotations

import logging
import signal
import ssl
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import TYPE_CHECKING

import trio

from wire.tls import server_context

from .admin import AdminServer
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
    "build_check",
    "build_probe",
    "build_runner",
    "run_sidecar",
    "server_ssl_context",
]

logger = logging.getLogger("health")

Route = Callable[[], tuple[int, str, bytes]]


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
    logger.info("status %r: %s -> %s", service, old.name if old is not None else "absent",
                new.name if new is not None else "absent")


def _ignore(_line: str) -> None:
    """Drop an announcement (the default when nobody reads them)."""


class SidecarProcess:
    """The ``serve`` process a config describes: server, checks, metrics, admin API, signals."""

    def __init__(self, config: SidecarConfig) -> None:
        """Build everything; raises ConfigError or ``wire.tls.TLSConfigError`` if it cannot."""
        self.config = config
        self.ssl_context = server_ssl_context(config.tls)
        self.state = HealthState(config.initial_statuses())
        self.state.add_listener(_log_change)
        self.server = HealthServer(self.state, list_limit=config.list_limit,
                                   reflection=config.reflection)
        self.sidecar = Sidecar(config, self.state, service=self.server.service)
        #: Set by the first signal or the admin API's shutdown: drain, then stop.
        self.stop = trio.Event()
        self.admin: AdminServer | None = None
        if config.admin_port is not None:
            self.admin = AdminServer(self.state, on_shutdown=self.stop.set,
                                     extra_routes=self.sidecar.admin_routes())

    async def run(self, announce: Callable[[str], None] = _ignore) -> int:
        """Serve until a signal or the admin API asks to stop, then drain; return 0.

        ``announce`` gets the machine-readable lines ``listening PORT|PATH`` and
        ``admin PORT`` once each is true, for wrappers and tests that ask for port 0.
        """
        config = self.config
        # Catch SIGTERM/SIGINT before announcing the ports: a supervisor may signal as soon
        # as it reads the "listening" line, and the default action would kill us undrained.
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._wait_signals, signals, nursery.cancel_scope)
                await self._listen(nursery)
                # Every configured check has run once before we announce ourselves.
                await nursery.start(self.sidecar.run)
                announce(f"listening {self.server.address if config.unix else self.server.port}")
                if self.admin is not None:
                    admin_addr = await nursery.start(self.admin.serve_tcp, "127.0.0.1",
                                                     config.admin_port)
                    logger.info("admin API on http://127.0.0.1:%d", admin_addr[1])
                    announce(f"admin {admin_addr[1]}")
                await self.stop.wait()
                logger.info("graceful shutdown: grace %.1f s", config.grace)
                await self.server.shutdown(config.grace)
                logger.info("stopped")
                nursery.cancel_scope.cancel()
        return 0

    async def _listen(self, nursery: trio.Nursery) -> None:
        config = self.config
        if config.unix:
            await nursery.start(self.server.serve_unix, config.unix)
            logger.info("health server listening on unix:%s", config.unix)
            return
        await nursery.start(partial(self.server.serve_tcp, config.host, config.port,
                                    ssl_context=self.ssl_context))
        host, port = self.server.address
        logger.info("health server listening on %s:%d%s", host, port,
                    " (TLS)" if self.ssl_context is not None else "")

    async def _wait_signals(self, signals: AsyncIterator[int],
                            cancel_scope: trio.CancelScope) -> None:
        async for signum in signals:
            if self.stop.is_set():
                logger.warning("second signal: stopping now")
                cancel_scope.cancel()
                return
            logger.info("received %s: draining", signal.Signals(signum).name)
            self.stop.set()
