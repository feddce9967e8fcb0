"""Deprecated: the old home of the client that follows a backend's health.

It is now :class:`health.follow.BackendFollower` (the name ``HealthWatcher`` was easy to
confuse with the server-side ``health.subscriptions.Watcher``). This module keeps the old
names importable for one release; it raises no DeprecationWarning because ``health.pool``
still imports it and the test suite turns warnings into errors.
"""

from __future__ import annotations

from .follow import BackendFollower, Backoff, HealthReport

#: Deprecated alias of :class:`health.follow.BackendFollower`.
HealthWatcher = BackendFollower

__all__ = ["Backoff", "HealthReport", "HealthWatcher"]
