"""HTTP/2 keepalive, grpc-go's model and names: parameters and the state machines that run them.

Theory of operation
-------------------
Three parameter sets, named and defaulted as grpc-go's ``keepalive`` package names them (times
in seconds, ``math.inf`` for grpc-go's "infinity"):

* ``ClientParameters(time, timeout, permit_without_stream)``: after ``time`` without reading
  anything the client sends a PING; if nothing at all (the ACK or any other frame) arrives in
  ``timeout`` the connection is dead. Off by default (``time`` infinite), as in grpc-go.
* ``ServerParameters(max_connection_idle, max_connection_age, max_connection_age_grace, time,
  timeout)``: the same PING from the server's side (every 2 h by default), plus connection
  lifetimes: GOAWAY after ``max_connection_idle`` with no stream open, GOAWAY after
  ``max_connection_age`` (with +-10 % jitter so a fleet does not reconnect at once) and a hard
  close ``max_connection_age_grace`` later.
* ``EnforcementPolicy(min_time, permit_without_stream)``: what the server tolerates of a
  client's PINGs (``PingEnforcer``).

The machines never read a clock or touch a socket. The I/O layer tells them what happened
(``data_received(now)`` for every read, ``streams_changed(open_streams, now)``,
``data_sent()`` for HEADERS or DATA written, ``ping_received(now, open_streams)``), asks
``next_due()`` when to come back, and at that time calls ``poll(now)``, which returns the
``KeepaliveAction`` list to carry out (send a PING, close a dead connection, GOAWAY for idleness
or age, close once the grace is over). Every test runs them on a fake clock.

Idleness is grpc-go's: a connection is idle while it has no active stream, whatever bytes flow.
A connection holding only a Watch stream therefore is never idle (its stream is open), so
``max_connection_idle`` does not end health watchers; ``max_connection_age`` and PING keepalive
do. Unlike grpc-go, the server keeps PINGing during the age grace period, so a peer that dies
then is still noticed before the grace ends.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from .status import ErrorCode

__all__ = [
    "MAX_PING_STRIKES",
    "PING_INTERVAL_WITHOUT_STREAMS",
    "TOO_MANY_PINGS",
    "ClientKeepalive",
    "ClientParameters",
    "EnforcementPolicy",
    "KeepaliveAction",
    "PingEnforcer",
    "ServerKeepalive",
    "ServerParameters",
    "is_too_many_pings",
    "jittered_age",
]

#: The GOAWAY debug data of a server that found a client pinging too often (grpc-go's
#: ``too_many_pings``); a gRPC client then doubles its keepalive time.
TOO_MANY_PINGS = b"too_many_pings"
#: Strikes tolerated before that GOAWAY (grpc-go's ``maxPingStrikes``).
MAX_PING_STRIKES = 2
#: With no stream open and no permission to ping without one, a client should not ping more
#: often than this (grpc-go's ``defaultPingTimeout``, 2 h).
PING_INTERVAL_WITHOUT_STREAMS = 2 * 3600.0


def _check_seconds(owner: str, name: str, value: float, *, zero_ok: bool = False,
                   infinite_ok: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{owner} {name} must be a number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not zero_ok):
        least = ">= 0" if zero_ok else "> 0"
        raise ValueError(f"{owner} {name} must be {least} seconds, got {value!r}")
    if math.isinf(value) and not infinite_ok:
        raise ValueError(f"{owner} {name} must be finite, got {value!r}")


@dataclass(frozen=True)
class ClientParameters:
    """grpc-go's ``keepalive.ClientParameters``: PING keepalive from the client's side."""

    #: Seconds without reading anything after which the client sends a PING; infinite = off.
    time: float = math.inf
    #: Seconds after that PING within which something must be read, else the connection is
    #: closed and its calls fail UNAVAILABLE.
    timeout: float = 20.0
    #: PING even with no call open (otherwise keepalive rests while the connection is unused).
    permit_without_stream: bool = False

    def __post_init__(self) -> None:
        _check_seconds("keepalive", "time", self.time)
        _check_seconds("keepalive", "timeout", self.timeout, infinite_ok=False)

    @property
    def enabled(self) -> bool:
        """True when the client pings at all."""
        return not math.isinf(self.time)

    def backed_off(self) -> ClientParameters:
        """These parameters after the server's ``too_many_pings``: ``time`` doubled (grpc-go)."""
        return replace(self, time=self.time * 2)


@dataclass(frozen=True)
class ServerParameters:
    """grpc-go's ``keepalive.ServerParameters``: PING keepalive and connection lifetimes."""

    #: GOAWAY after this many seconds with no stream open (since the last one ended, or since
    #: the connection opened).
    max_connection_idle: float = math.inf
    #: GOAWAY after this many seconds (+-10 % jitter) whatever the connection does.
    max_connection_age: float = math.inf
    #: Seconds calls in flight get after the age GOAWAY before the connection is closed.
    max_connection_age_grace: float = math.inf
    #: Seconds without reading anything after which the server sends a PING.
    time: float = 2 * 3600.0
    #: Seconds after that PING within which something must be read, else the connection is
    #: closed and its calls end.
    timeout: float = 20.0

    def __post_init__(self) -> None:
        _check_seconds("server", "max_connection_idle", self.max_connection_idle)
        _check_seconds("server", "max_connection_age", self.max_connection_age)
        _check_seconds("server", "max_connection_age_grace", self.max_connection_age_grace,
                       zero_ok=True)
        _check_seconds("server keepalive", "time", self.time)
        _check_seconds("server keepalive", "timeout", self.timeout, infinite_ok=False)


@dataclass(frozen=True)
class EnforcementPolicy:
    """grpc-go's ``keepalive.EnforcementPolicy``: how often a client may PING the server.

    Our defaults are more lenient than grpc-go's (5 min, no pings without streams): a PING
    every 10 s is accepted, with or without calls open, as this server always has.
    """

    #: The least interval between a client's PINGs; a PING sooner than this after the
    #: previous one is a strike (unless we sent HEADERS or DATA in between).
    min_time: float = 10.0
    #: Accept PINGs while no call is open; if False such a PING within 2 h of the previous one
    #: is a strike.
    permit_without_stream: bool = True
    #: Strikes tolerated; one more ends the connection with GOAWAY ENHANCE_YOUR_CALM.
    max_ping_strikes: int = MAX_PING_STRIKES

    def __post_init__(self) -> None:
        _check_seconds("keepalive", "min_time", self.min_time, zero_ok=True, infinite_ok=False)
        strikes = self.max_ping_strikes
        if isinstance(strikes, bool) or not isinstance(strikes, int) or strikes < 0:
            raise ValueError(f"max_ping_strikes must be a whole number >= 0, got {strikes!r}")


class KeepaliveAction(enum.Enum):
    """What a keepalive machine asks the I/O layer to do; the value is the reason to log."""

    #: Send a PING (any 8 bytes).
    PING = "keepalive ping"
    #: The PING was not answered in time: close the connection, end its calls (UNAVAILABLE).
    CLOSE_DEAD = "keepalive ping not acknowledged"
    #: No stream for ``max_connection_idle``: graceful GOAWAY (debug data ``max_idle``).
    GOAWAY_IDLE = "max_idle"
    #: ``max_connection_age`` reached: graceful GOAWAY (debug data ``max_age``).
    GOAWAY_AGE = "max_age"
    #: ``max_connection_age_grace`` over: close now, ending the calls still open.
    CLOSE_AGE_GRACE = "max_age grace period over"


def jittered_age(age: float, rng: Callable[[], float] = random.random) -> float:
    """``age`` with grpc-go's uniform +-10 % jitter; ``rng()`` returns a float in [0, 1)."""
    if math.isinf(age):
        return age
    return age + age / 10 * (2 * rng() - 1)


def is_too_many_pings(error_code: int, debug: bytes) -> bool:
    """True for the GOAWAY that tells a client to double its keepalive time."""
    return error_code == ErrorCode.ENHANCE_YOUR_CALM and debug == TOO_MANY_PINGS


class _PingTimer:
    """What both sides share: PING after ``time`` without reads, judge ``timeout`` later."""

    __slots__ = ("_last_read", "_outstanding", "time", "timeout")

    def __init__(self, time: float, timeout: float, now: float) -> None:
        self.time = time
        self.timeout = timeout
        self._last_read = now
        # When the PING in flight must have been answered by (None: no PING in flight).
        self._outstanding: float | None = None

    def data_received(self, now: float) -> None:
        # Any frame proves the peer alive, the ACK included (grpc-go checks lastRead).
        self._last_read = max(self._last_read, now)
        self._outstanding = None

    def forget_ping(self) -> None:
        self._outstanding = None

    def send(self, now: float) -> KeepaliveAction:
        self._outstanding = now + self.timeout
        return KeepaliveAction.PING

    @property
    def due(self) -> float:
        if self._outstanding is not None:
            return self._outstanding
        return self._last_read + self.time

    def poll(self, now: float) -> KeepaliveAction | None:
        if self._outstanding is not None:
            return KeepaliveAction.CLOSE_DEAD if now >= self._outstanding else None
        if now >= self._last_read + self.time:
            return self.send(now)
        return None


class ServerKeepalive:
    """One server connection's keepalive: PINGs, idleness and age (``ServerParameters``)."""

    def __init__(self, params: ServerParameters, now: float,
                 rng: Callable[[], float] = random.random) -> None:
        self.params = params
        self._pings = _PingTimer(params.time, params.timeout, now)
        self._open_streams = 0
        # Since when no stream has been open (None while one is).
        self._idle_since: float | None = now
        self._idle_sent = False
        #: When this connection's age runs out, jitter included.
        self.age_deadline = now + jittered_age(params.max_connection_age, rng)
        # When the age grace ends (None until the age GOAWAY).
        self._grace_deadline: float | None = None
        self._done = False

    @property
    def done(self) -> bool:
        """True once the machine asked for the connection to be closed."""
        return self._done

    @property
    def idle(self) -> bool:
        """True while no stream is open (what ``max_connection_idle`` counts)."""
        return self._idle_since is not None

    def data_received(self, now: float) -> None:
        """Something was read from the peer."""
        self._pings.data_received(now)

    def streams_changed(self, open_streams: int, now: float) -> None:
        """The number of open streams is now ``open_streams``."""
        self._open_streams = open_streams
        if open_streams:
            self._idle_since = None
        elif self._idle_since is None:
            self._idle_since = now

    def next_due(self) -> float:
        """When ``poll`` has something to do next (``math.inf``: never)."""
        if self._done:
            return math.inf
        due = self._pings.due
        if self._idle_since is not None and not self._idle_sent:
            due = min(due, self._idle_since + self.params.max_connection_idle)
        if self._grace_deadline is not None:
            due = min(due, self._grace_deadline)
        else:
            due = min(due, self.age_deadline)
        return due

    def poll(self, now: float) -> list[KeepaliveAction]:
        """The actions due at ``now``, in the order to carry them out."""
        if self._done:
            return []
        actions: list[KeepaliveAction] = []
        if self._grace_deadline is None and now >= self.age_deadline:
            actions.append(KeepaliveAction.GOAWAY_AGE)
            self._grace_deadline = now + self.params.max_connection_age_grace
            # The age GOAWAY drains the connection: no separate idle GOAWAY after it.
            self._idle_sent = True
        if self._grace_deadline is not None and now >= self._grace_deadline:
            actions.append(KeepaliveAction.CLOSE_AGE_GRACE)
            self._done = True
            return actions
        if (not self._idle_sent and self._idle_since is not None
                and now >= self._idle_since + self.params.max_connection_idle):
            actions.append(KeepaliveAction.GOAWAY_IDLE)
            self._idle_sent = True
        ping = self._pings.poll(now)
        if ping is not None:
            actions.append(ping)
            if ping is KeepaliveAction.CLOSE_DEAD:
                self._done = True
        return actions


class ClientKeepalive:
    """One client connection's PING keepalive (``ClientParameters``), grpc-go's rules.

    Without ``permit_without_stream`` the machine goes dormant when a PING falls due with no
    stream open; the next stream to open wakes it and a PING goes out at once.
    """

    def __init__(self, params: ClientParameters, now: float) -> None:
        self.params = params
        self._pings = _PingTimer(params.time, params.timeout, now)
        self._open_streams = 0
        self._dormant = False
        # When a PING is owed since a stream woke the machine from dormancy.
        self._wake_at: float | None = None
        self._done = False

    @property
    def done(self) -> bool:
        """True once the machine found the connection dead."""
        return self._done

    @property
    def dormant(self) -> bool:
        """True while keepalive rests for want of an open stream."""
        return self._dormant

    def data_received(self, now: float) -> None:
        """Something was read from the server."""
        self._pings.data_received(now)

    def streams_changed(self, open_streams: int, now: float) -> None:
        """The number of open streams is now ``open_streams``."""
        self._open_streams = open_streams
        if open_streams and self._dormant:
            self._dormant = False
            self._wake_at = now

    def next_due(self) -> float:
        """When ``poll`` has something to do next (``math.inf``: never)."""
        if self._done or self._dormant or not self.params.enabled:
            return math.inf
        if self._wake_at is not None:
            return self._wake_at
        return self._pings.due

    def poll(self, now: float) -> list[KeepaliveAction]:
        """The actions due at ``now``: a PING, or closing the connection as dead."""
        if self._done or self._dormant or not self.params.enabled:
            return []
        if self._wake_at is not None:
            self._wake_at = None
            return [self._pings.send(now)]
        if now < self._pings.due:
            return []
        if not self._open_streams and not self.params.permit_without_stream:
            # grpc-go: a PING that was in flight is forgotten; one goes out on waking.
            self._pings.forget_ping()
            self._dormant = True
            return []
        action = self._pings.poll(now)
        if action is KeepaliveAction.CLOSE_DEAD:
            self._done = True
        return [action] if action is not None else []


class PingEnforcer:
    """The server's judge of a client's PINGs (``EnforcementPolicy``), grpc-go's strike rule."""

    __slots__ = ("_last_ping", "_reset", "_strikes", "policy")

    def __init__(self, policy: EnforcementPolicy) -> None:
        self.policy = policy
        self._last_ping: float | None = None
        self._strikes = 0
        # HEADERS or DATA went out since the last PING: the next one is not judged.
        self._reset = False

    @property
    def strikes(self) -> int:
        """Strikes counted so far."""
        return self._strikes

    def data_sent(self) -> None:
        """We sent HEADERS or DATA: a PING that follows our output is fair (BDP pings)."""
        self._reset = True

    def ping_received(self, now: float, open_streams: int) -> bool:
        """Judge one PING; True when the connection must end (GOAWAY ENHANCE_YOUR_CALM,
        debug data ``too_many_pings``)."""
        last, self._last_ping = self._last_ping, now
        if self._reset:
            self._reset = False
            self._strikes = 0
            return False
        if last is not None:
            policy = self.policy
            least = (policy.min_time if open_streams or policy.permit_without_stream
                     else PING_INTERVAL_WITHOUT_STREAMS)
            if now - last < least:
                self._strikes += 1
        return self._strikes > self.policy.max_ping_strikes
