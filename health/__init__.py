"""gRPC health checking (``grpc.health.v1``) for Trio, in pure Python.

Server side: ``HealthState`` (the status map, ``health.status_map``; its watchers live in
``health.subscriptions``), ``HealthService`` (Check, List, Watch on a ``wire.Server``) and
``serve_health`` / ``HealthServer`` (a standalone server); dependency checks in
``health.checks`` and ``health.probes``; the config file in ``health.config`` and what runs it
in ``health.sidecar``. Client side: ``health.client``, ``health.follow`` (following a backend's
health), ``health.pool`` and ``health.probe``. ``health.protocol`` is shared by both sides.
Imports point one way: ``health`` uses ``wire``; ``wire`` never imports ``health``.
"""

from .errors import HealthError, InvalidStatusError, ServiceNameError, WatcherLimitError
from .service import HealthServer, HealthService, serve_health
from .status import ServingStatus, parse_status
from .status_map import HealthState
from .subscriptions import Watcher

__all__ = [
    "HealthError",
    "HealthServer",
    "HealthService",
    "HealthState",
    "InvalidStatusError",
    "ServiceNameError",
    "ServingStatus",
    "Watcher",
    "WatcherLimitError",
    "parse_status",
    "serve_health",
]
