"""Admitting connections without locking everyone out: descriptors, the cap, eviction, EMFILE.

A server that accepts until the process runs out of file descriptors stops answering anyone:
``accept()`` fails with EMFILE while idle connections hold every descriptor, and even a fresh
health Check cannot get in. This module owns the rules that prevent it; the Trio server applies
them:

* ``raise_nofile_limit()``: at start, raise the soft ``RLIMIT_NOFILE`` to the hard limit (the
  usual 1,024 soft limit is a relic; the hard limit is what the administrator allows).
* ``connection_cap(nofile)``: how many connections fit below the descriptor limit, keeping a
  reserve for listeners, log and config files, probes (sockets, subprocess pipes) and the event
  loop itself; ``effective_max_connections`` combines it with the configured cap.
* ``pick_eviction(candidates)``: at the cap, the connection to close (GOAWAY) so a new one can
  be admitted: the longest-idle one **with no open call**, as nginx reuses idle keep-alive
  connections. ``None`` when every connection has calls: only then is the new one refused.
* ``AcceptBackoff``: when ``accept()`` fails for want of descriptors or memory, wait a little
  longer each time (up to a second) instead of spinning, and log at most once per 10 s with
  the count of failures since the last line.

No Trio here: the resource calls, the choice and the back-off arithmetic are plain Python.
"""

from __future__ import annotations

import errno
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, TypeVar

try:
    import resource
except ImportError:  # pragma: no cover - Windows has no RLIMIT_NOFILE
    resource = None  # type: ignore[assignment]

__all__ = [
    "RESOURCE_ERRNOS",
    "AcceptBackoff",
    "DescriptorLimit",
    "EvictionCandidate",
    "connection_cap",
    "effective_max_connections",
    "pick_eviction",
    "raise_nofile_limit",
]

#: accept() errors that mean "out of descriptors or memory", not "this peer failed".
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

# Descriptors kept back from connections: an eighth of the limit, at least 64 (listeners,
# files, a probe's sockets and pipes, the event loop's own), at most 4,096.
_RESERVE_FRACTION = 8
_RESERVE_MIN = 64
_RESERVE_MAX = 4096


@dataclass(frozen=True)
class DescriptorLimit:
    """The process's ``RLIMIT_NOFILE`` after ``raise_nofile_limit()``."""

    #: The soft limit before (what the process was started with).
    before: int
    #: The soft limit now: what the process may open.
    soft: int
    #: The hard limit (``resource.RLIM_INFINITY`` when unlimited).
    hard: int

    @property
    def raised(self) -> bool:
        """True when the soft limit went up."""
        return self.soft > self.before


def raise_nofile_limit(ceiling: int = 1 << 20) -> DescriptorLimit | None:
    """Raise the soft RLIMIT_NOFILE to the hard limit (at most ``ceiling``); None if no such
    limit exists here. A refusal leaves the limit as it was."""
    if resource is None:  # pragma: no cover - Windows
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    want = ceiling if hard == infinite else hard
    if soft == infinite or soft >= want:
        return DescriptorLimit(before=soft, soft=soft, hard=hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError):
        # macOS refuses more than OPEN_MAX under an "unlimited" hard limit: keep the old one.
        return DescriptorLimit(before=soft, soft=soft, hard=hard)
    return DescriptorLimit(before=soft, soft=want, hard=hard)


def connection_cap(nofile: int) -> int:
    """The most connections that fit below a descriptor limit of ``nofile``, reserve kept."""
    if nofile < 2:
        return 1
    reserve = min(max(_RESERVE_MIN, nofile // _RESERVE_FRACTION), _RESERVE_MAX)
    if reserve >= nofile:
        reserve = nofile // 2
    return nofile - reserve


def effective_max_connections(configured: int, nofile: int | None) -> int:
    """The cap to apply: the configured one, lowered to what ``nofile`` descriptors allow."""
    if nofile is None or nofile < 0 or nofile == _rlim_infinity():
        return configured
    return min(configured, connection_cap(nofile))


def _rlim_infinity() -> int:
    return resource.RLIM_INFINITY if resource is not None else -1


class EvictionCandidate(Protocol):
    """What the choice needs to know of a connection."""

    @property
    def open_calls(self) -> int:
        """Calls in flight on it."""
        ...

    @property
    def idle_since(self) -> float:
        """When it last had a call or read a byte (monotonic seconds)."""
        ...


_C = TypeVar("_C", bound=EvictionCandidate)


def pick_eviction(candidates: Iterable[_C]) -> _C | None:
    """The connection to close for a newcomer: the longest idle with no open call, or None."""
    best: _C | None = None
    best_since = math.inf
    for candidate in candidates:
        if candidate.open_calls:
            continue
        since = candidate.idle_since
        if since < best_since:
            best, best_since = candidate, since
    return best


class AcceptBackoff:
    """How long to wait after a failed ``accept()``, and when to say so in the log."""

    def __init__(self, logger: logging.Logger, clock: Callable[[], float], *,
                 initial: float = 0.01, maximum: float = 1.0,
                 log_interval: float = 10.0) -> None:
        self._logger = logger
        self._clock = clock
        self._initial = initial
        self._maximum = maximum
        self._log_interval = log_interval
        self._delay = 0.0
        # Failures not yet reported, and when the last line was logged.
        self._unreported = 0
        self._last_log = -math.inf
        self._total = 0

    @property
    def failures(self) -> int:
        """Failed accepts since the server started."""
        return self._total

    def failed(self, exc: OSError) -> float:
        """Record a failed accept; return the seconds to wait before the next one."""
        self._total += 1
        self._unreported += 1
        now = self._clock()
        if now - self._last_log >= self._log_interval:
            what = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            if self._unreported == 1:
                self._logger.warning("accept failed (%s: %s); backing off", what,
                                     exc.strerror or exc)
            else:
                self._logger.warning("accept failed %d times since the last report %.0f s "
                                     "ago (%s: %s); backing off", self._unreported,
                                     now - self._last_log, what, exc.strerror or exc)
            self._unreported = 0
            self._last_log = now
        self._delay = min(self._maximum, max(self._initial, self._delay * 2))
        return self._delay

    def succeeded(self) -> None:
        """An accept worked: the next failure starts again from the shortest wait."""
        self._delay = 0.0
