"""TCP keepalive and TCP_USER_TIMEOUT: socket options that find a peer that vanished silently.

A peer that loses power, or a path that starts dropping every packet, sends no FIN and no RST:
without help a connection with nothing to send waits forever, and one with data to send waits
for the kernel's retransmission timeout (about 15 minutes on Linux). Two socket options bound
that, below HTTP/2, so no server's PING policy ever sees them:

* TCP keepalive (``SO_KEEPALIVE`` with ``TCP_KEEPIDLE`` / ``TCP_KEEPINTVL`` / ``TCP_KEEPCNT``):
  after ``idle`` seconds of silence the kernel probes every ``interval`` seconds and drops the
  connection after ``count`` unanswered probes, at most ``idle + interval * count`` seconds.
* ``TCP_USER_TIMEOUT`` (Linux, RFC 5482): data sent and not acknowledged for that long fails the
  socket. On Linux it also replaces ``count`` for keepalive: once a probe is out and nothing
  has been heard for ``user_timeout``, the connection is dropped.

The defaults (idle 10 s, interval 5 s, 3 probes, user timeout 20 s) find a silently dead peer
within 20 s on Linux and 25 s where only the keepalive options exist. ``TcpKeepalive.off()``
leaves a socket as the operating system made it.

Sans-I/O in spirit: plain ``setsockopt`` calls on a socket someone else opened (a standard
socket or a Trio one), no Trio import.
"""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass
from typing import Protocol

__all__ = ["SocketOptions", "TcpKeepalive", "apply_tcp_keepalive", "tcp_keepalive_options"]

# TCP_USER_TIMEOUT is an unsigned int of milliseconds; Linux refuses values above INT_MAX.
_MAX_USER_TIMEOUT = (2**31 - 1) / 1000


@dataclass(frozen=True)
class TcpKeepalive:
    """TCP keepalive settings for one socket; ``enabled=False`` (``off()``) changes nothing."""

    enabled: bool = True
    #: Seconds of silence before the first probe (TCP_KEEPIDLE); at least 1.
    idle: float = 10.0
    #: Seconds between probes (TCP_KEEPINTVL); at least 1.
    interval: float = 5.0
    #: Unanswered probes before the connection is dropped (TCP_KEEPCNT), 1 to 127.
    count: int = 3
    #: Seconds sent data (or a keepalive probe) may stay unanswered before the socket fails
    #: (TCP_USER_TIMEOUT); 0 leaves the operating system's default.
    user_timeout: float = 20.0

    def __post_init__(self) -> None:
        # The kernel counts the first two in whole seconds and refuses 0 (and Linux caps them
        # at 32767 s); TCP_KEEPCNT is at most 127 there.
        for name in ("idle", "interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (math.isfinite(value) and 1 <= value <= 32767):
                raise ValueError(f"tcp keepalive {name} must be 1 to 32767 seconds, got {value!r}")
        count = self.count
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 127:
            raise ValueError(f"tcp keepalive count must be a whole number 1 to 127, got {count!r}")
        timeout = self.user_timeout
        if isinstance(timeout, bool) or not (math.isfinite(timeout)
                                             and 0 <= timeout <= _MAX_USER_TIMEOUT):
            raise ValueError(f"tcp keepalive user_timeout must be >= 0 seconds, got {timeout!r}")

    @classmethod
    def off(cls) -> TcpKeepalive:
        """The form that leaves sockets alone."""
        return cls(enabled=False)

    @property
    def detection_time(self) -> float | None:
        """Worst-case seconds until a silently dead idle peer is noticed; None when off."""
        if not self.enabled:
            return None
        if self.user_timeout > 0 and hasattr(socket, "TCP_USER_TIMEOUT"):
            # Linux (tcp_keepalive_timer) then ignores TCP_KEEPCNT: the connection is dropped
            # at the first probe timer at least user_timeout after the last thing heard, once
            # one probe is out.
            probes = max(1, math.ceil((self.user_timeout - self.idle) / self.interval))
            return self.idle + self.interval * probes
        return self.idle + self.interval * self.count


class SocketOptions(Protocol):
    """What is needed of a socket here: a standard one or a Trio one."""

    def setsockopt(self, level: int, optname: int, value: int, /) -> None:
        """Set one option."""


def tcp_keepalive_options(options: TcpKeepalive) -> tuple[list[tuple[int, int, int]], list[str]]:
    """The ``(level, option, value)`` triples ``options`` needs here, and the names missing."""
    if not options.enabled:
        return [], []
    wanted = [
        ("TCP_KEEPIDLE", math.ceil(options.idle)),
        ("TCP_KEEPINTVL", math.ceil(options.interval)),
        ("TCP_KEEPCNT", options.count),
    ]
    if options.user_timeout > 0:
        # Milliseconds; never 0 there, which would mean "the system default".
        wanted.append(("TCP_USER_TIMEOUT", max(1, math.ceil(options.user_timeout * 1000))))
    triples = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    missing: list[str] = []
    for name, value in wanted:
        number = getattr(socket, name, None)
        if number is None:
            missing.append(name)
        else:
            triples.append((socket.IPPROTO_TCP, number, value))
    return triples, missing


def apply_tcp_keepalive(sock: SocketOptions, options: TcpKeepalive) -> list[str]:
    """Set ``options`` on a TCP socket; return the names of options this platform lacks.

    Raises ``OSError`` when the socket refuses one (it is not TCP, or it is closed).
    """
    triples, missing = tcp_keepalive_options(options)
    for level, name, value in triples:
        sock.setsockopt(level, name, value)
    return missing
