"""The exception hierarchy of the health package.

Every error the package raises on purpose derives from :class:`HealthError`,
so callers can catch the whole family in one clause. Errors about bad
arguments also derive from :class:`ValueError`, matching what Python code
expects for a well-typed but unacceptable value.
"""

from __future__ import annotations

__all__ = [
    "HealthError",
    "InvalidStatusError",
    "ServiceNameError",
    "WatcherLimitError",
]


class HealthError(Exception):
    """Root of every exception the health package raises deliberately."""


class InvalidStatusError(HealthError, ValueError):
    """A serving status is unknown, or may not be used where it was given."""


class ServiceNameError(HealthError, ValueError):
    """A service name cannot be used (too long, or not encodable as UTF-8)."""


class WatcherLimitError(HealthError):
    """Registering another watcher would exceed a configured limit."""
