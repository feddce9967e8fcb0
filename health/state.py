"""Deprecated: the old home of the status map; use the modules named below.

``HealthState`` now lives in :mod:`health.status_map` (also ``from health import
HealthState``), ``Subscription`` and ``Watcher`` in :mod:`health.subscriptions`, the thread
hand-off in :mod:`health.thread_bridge`. This module re-exports the old names for one
release and is then removed. It raises no DeprecationWarning: ``health.admin`` and
``bench/profile_server.py`` still import it, and the test suite turns warnings into errors.
"""

from __future__ import annotations

# The ``X as X`` form marks each name as re-exported, so the list is not written twice.
from .status_map import DEFAULT_MAX_SERVICE_NAME_BYTES as DEFAULT_MAX_SERVICE_NAME_BYTES
from .status_map import HealthState as HealthState
from .status_map import StatusListener as StatusListener
from .subscriptions import DEFAULT_MAX_WATCHERS as DEFAULT_MAX_WATCHERS
from .subscriptions import DEFAULT_MAX_WATCHERS_PER_OWNER as DEFAULT_MAX_WATCHERS_PER_OWNER
from .subscriptions import Subscription as Subscription
from .subscriptions import Watcher as Watcher
