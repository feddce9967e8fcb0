"""Prometheus metrics for a health server: statuses, calls, watchers and dependency checks.

This module owns :class:`HealthMetrics`, which registers everything below in its own
``prometheus_client.CollectorRegistry`` (never the global one, so tests and several servers in
one process do not collide) and renders it for ``GET /metrics`` on the admin port. It needs the
optional ``prometheus_client`` package (``pip install trio-grpc-health[metrics]``).

Most values are read at scrape time (from ``HealthState``, ``HealthService.call_counts`` and
``CheckRunner.records``), so serving calls costs nothing extra. Only status transitions and
check durations are events, recorded as they happen (a ``HealthState`` listener and a
``CheckRunner`` result listener).

==========================================================  ======  ==============================
Metric                                                      Type    Meaning
==========================================================  ======  ==============================
``grpc_health_service_status{service}``                     gauge   effective status of each
                                                                    known service, as its wire
                                                                    number: 0 UNKNOWN, 1 SERVING,
                                                                    2 NOT_SERVING (alert on
                                                                    ``!= 1``); a removed service's
                                                                    series disappears
``grpc_health_draining``                                    gauge   1 between drain and resume
``grpc_health_watchers``                                    gauge   open Watch streams
``grpc_health_requests_total{method,code}``                 counter Check/List/Watch calls
                                                                    answered, by gRPC code name
                                                                    (``OK``, ``NOT_FOUND``, ...)
``grpc_health_status_transitions_total{service,to}``        counter effective status changes, by
                                                                    new status name;
                                                                    ``to="SERVICE_UNKNOWN"`` when
                                                                    a service is removed
``grpc_health_check_healthy{check,service}``                gauge   a check's verdict after its
                                                                    thresholds: 1 healthy, 0
                                                                    failing (absent before its
                                                                    first result)
``grpc_health_check_runs_total{check,result}``              counter check runs, ``result`` is
                                                                    ``success`` or ``failure``
``grpc_health_check_duration_seconds{check}``               histo-  how long each check run took
                                                            gram    (a timed-out run counts its
                                                                    timeout)
==========================================================  ======  ==============================

The whole server (``""``) appears as ``service=""``, which PromQL treats like a missing label:
select it with ``{service=""}``. Service names are label values, so a server with very many
services has as many series; the names come from configuration or the application, not from
clients.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client import generate_latest as _generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .checks import CheckResult, CheckRunner
from .service import HealthService
from .status import ServingStatus
from .status_map import HealthState

__all__ = ["DEFAULT_NAMESPACE", "DURATION_BUCKETS", "HealthMetrics"]

DEFAULT_NAMESPACE = "grpc_health"

#: Check durations are bounded by check timeouts (1 s by default), so the buckets are finer
#: than prometheus_client's default below one second.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0)


class _ScrapeCollector(Collector):
    """Reads the values that already exist elsewhere, at scrape time."""

    def __init__(self, namespace: str, state: HealthState, service: HealthService | None,
                 runner: CheckRunner | None) -> None:
        self._ns = namespace
        self._state = state
        self._service = service
        self._runner = runner

    def collect(self) -> Iterator[Metric]:
        """Yield the scrape-time metric families."""
        ns = self._ns
        status = GaugeMetricFamily(
            f"{ns}_service_status",
            "Effective health status per service (0 UNKNOWN, 1 SERVING, 2 NOT_SERVING).",
            labels=["service"])
        for name, value in sorted(self._state.snapshot().items()):
            status.add_metric([name], float(int(value)))
        yield status
        yield GaugeMetricFamily(f"{ns}_draining",
                                "1 while the server is draining (every service NOT_SERVING).",
                                value=1.0 if self._state.draining else 0.0)
        yield GaugeMetricFamily(f"{ns}_watchers", "Open Watch streams.",
                                value=float(self._state.watcher_count))
        if self._service is not None:
            requests = CounterMetricFamily(
                f"{ns}_requests", "Health calls answered, by method and gRPC status code.",
                labels=["method", "code"])
            # Copy first: the dict may gain keys while we iterate if a call lands mid-scrape.
            for (method, code), count in sorted(dict(self._service.call_counts).items()):
                requests.add_metric([method, code], float(count))
            yield requests
        if self._runner is not None:
            healthy = GaugeMetricFamily(
                f"{ns}_check_healthy",
                "Check verdict after its thresholds: 1 healthy, 0 failing.",
                labels=["check", "service"])
            runs = CounterMetricFamily(f"{ns}_check_runs", "Check runs by result.",
                                       labels=["check", "result"])
            for name, record in self._runner.records.items():
                if record.healthy is not None:
                    healthy.add_metric([name, record.check.service],
                                       1.0 if record.healthy else 0.0)
                runs.add_metric([name, "success"], float(record.successes))
                runs.add_metric([name, "failure"], float(record.failures))
            yield healthy
            yield runs


class HealthMetrics:
    """The Prometheus metrics of one health server, in a registry of their own.

    ``service`` adds the per-call counters and ``runner`` the check metrics. Call
    :meth:`close` to detach the listeners when the server goes away.
    """

    def __init__(
        self,
        state: HealthState,
        *,
        service: HealthService | None = None,
        runner: CheckRunner | None = None,
        registry: CollectorRegistry | None = None,
        namespace: str = DEFAULT_NAMESPACE,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.registry.register(_ScrapeCollector(namespace, state, service, runner))
        self._transitions = Counter(
            f"{namespace}_status_transitions",
            "Effective status changes, by service and new status (SERVICE_UNKNOWN: removed).",
            ["service", "to"], registry=self.registry)
        self._removers: list[Callable[[], None]] = [state.add_listener(self._on_change)]
        self._durations: Histogram | None = None
        if runner is not None:
            self._durations = Histogram(
                f"{namespace}_check_duration_seconds", "Duration of each check run.",
                ["check"], registry=self.registry, buckets=DURATION_BUCKETS)
            # Create the series up front so that a dashboard sees every check from the start.
            for check in runner.checks:
                self._durations.labels(check.name)
            self._removers.append(runner.add_result_listener(self._on_result))

    def _on_change(self, service: str, old: ServingStatus | None,
                   new: ServingStatus | None) -> None:
        to = new.name if new is not None else ServingStatus.SERVICE_UNKNOWN.name
        self._transitions.labels(service, to).inc()

    def _on_result(self, result: CheckResult) -> None:
        if self._durations is not None:
            self._durations.labels(result.check.name).observe(result.duration)

    def render(self) -> bytes:
        """The current metrics in the Prometheus text exposition format."""
        return _generate_latest(self.registry)

    def http_response(self) -> tuple[int, str, bytes]:
        """``(200, content type, body)``: a route for ``AdminServer.extra_routes["/metrics"]``."""
        return 200, CONTENT_TYPE_LATEST, self.render()

    def close(self) -> None:
        """Stop listening to the state and the runner. Idempotent."""
        removers, self._removers = self._removers, []
        for remove in removers:
            remove()
