"""Deprecated: the old home of the status map; use the modules named below.

``HealthState`` now lives in :mod:`health.status_map` (also ``from health import
HealthState``), ``Subscription`` and ``Watcher`` in :mod:`health.subscriptions`, the thread
hand-off in :mod:`health.thread_bridge`. This module re-exports the old names for one
release and is then removed. It raises no DeprecationWarning: ``health.admin`` and
``bench/profile_server.py`` still import it, and the test suite turns warnings into errors.
"""

from __future__ import annotations

from .status_map import DEFAULT_MAX_SERVICE_NAME_BYTES, HealthState, StatusListener
from .subscriptions import (
    DEFAULT_MAX_WATCHERS,
    DEFAULT_MAX_WATCHERS_PER_OWNER,
    Subscription,
    Watcher,
)

__all__ = [
    "DEFAULT_MAX_SERVICE_NAME_BYTES",
    "DEFAULT_MAX_WATCHERS",
    "DEFAULT_MAX_WATCHERS_PER_OWNER",
    "HealthState",
    "StatusListener",
    "Subscription",
    "Watcher",
]
