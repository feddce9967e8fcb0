"""Keepalive settings: TCP keepalive on sockets and HTTP/2 PING keepalive parameters.

Owns the knobs that let a connection notice a peer that vanished without FIN or RST:

* ``TcpKeepalive``: SO_KEEPALIVE with TCP_KEEPIDLE / TCP_KEEPINTVL / TCP_KEEPCNT where the
  platform has them, and TCP_USER_TIMEOUT (unacknowledged data for that long fails the socket).
  The defaults (idle 10 s, interval 5 s, 3 probes, user timeout 20 s) find a silently dead peer
  within about 25 s; the kernel sends the probes, so servers' HTTP/2 ping policies never see
  them, which makes them safe as a default against any server.
* ``TOO_MANY_PINGS``: the GOAWAY debug data that makes a client back off its HTTP/2 PING
  keepalive (whose parameters, grpc-go's names, live on ``ClientConfig``).

Sans-I/O: plain ``socket`` calls on a socket someone else opened, no Trio.
"""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass
from typing import Protocol

__all__ = ["TOO_MANY_PINGS", "SocketOptions", "TcpKeepalive", "apply_tcp_keepalive"]

#: The GOAWAY debug data grpc-go sends a client that pings too often; the client then doubles
#: its keepalive interval.
TOO_MANY_PINGS = b"too_many_pings"


@dataclass(frozen=True)
class TcpKeepalive:
    """TCP keepalive for one socket; ``enabled=False`` leaves the socket as the OS made it."""

    enabled: bool = True
    #: Seconds of silence before the first probe (TCP_KEEPIDLE).
    idle: float = 10.0
    #: Seconds between probes (TCP_KEEPINTVL).
    interval: float = 5.0
    #: Unanswered probes before the connection is dropped (TCP_KEEPCNT).
    count: int = 3
    #: Seconds sent data may stay unacknowledged before the socket fails (TCP_USER_TIMEOUT);
    #: 0 leaves the OS default.
    user_timeout: float = 20.0

    def __post_init__(self) -> None:
        for name in ("idle", "interval", "user_timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"tcp keepalive {name} must be a number of seconds >= 0")
        if self.count < 1:
            raise ValueError("tcp keepalive count must be at least 1")


class SocketOptions(Protocol):
    """What is needed of a socket here: a standard one or a Trio one."""

    def setsockopt(self, level: int, optname: int, value: int, /) -> None:
        """Set one option."""


def apply_tcp_keepalive(sock: SocketOptions, options: TcpKeepalive) -> list[str]:
    """Set ``options`` on a TCP socket; return the names of options this platform lacks."""
    if not options.enabled:
        return []
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    missing: list[str] = []
    # The kernel counts these in whole seconds (milliseconds for TCP_USER_TIMEOUT); never 0,
    # which would mean "default" or be refused.
    wanted = [
        ("TCP_KEEPIDLE", max(1, math.ceil(options.idle))),
        ("TCP_KEEPINTVL", max(1, math.ceil(options.interval))),
        ("TCP_KEEPCNT", options.count),
    ]
    if options.user_timeout > 0:
        wanted.append(("TCP_USER_TIMEOUT", max(1, math.ceil(options.user_timeout * 1000))))
    for name, value in wanted:
        number = getattr(socket, name, None)
        if number is None:
            missing.append(name)
            continue
        sock.setsockopt(socket.IPPROTO_TCP, number, value)
    return missing
