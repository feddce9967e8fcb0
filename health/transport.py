"""The server's transport settings as ``serve`` flags and ``[server]`` TOML keys (same names).

This module owns the names, defaults and rules of the settings that keep connections honest
(see ``wire.keepalive``, ``wire.sockopts`` and ``wire.admission``): PING keepalive, ping
enforcement, connection lifetimes, the connection cap and TCP keepalive. A flag is the key with
``-`` for ``_`` (``--keepalive-time`` <-> ``keepalive_time``); times are seconds, decimals
allowed, and ``inf`` means "never" where the key allows it. ``TransportSettings`` holds them
(validated), ``parse_flag_value`` reads a flag's text and ``check_value`` judges a value from
either source, with a message that names no source (the caller adds the flag or key).

Pure: no Trio, no server; ``health.sidecar`` turns the settings into ``wire.ServerConfig`` and
``wire.ServerOptions``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from wire.keepalive import EnforcementPolicy, ServerParameters
from wire.sockopts import TcpKeepalive

__all__ = ["TRANSPORT_NAMES", "TransportSettings", "check_value", "flag_help", "parse_flag_value"]

_SERVER = ServerParameters()
_POLICY = EnforcementPolicy()
_TCP = TcpKeepalive()


@dataclass(frozen=True)
class _Rule:
    kind: type
    low: float = 0.0
    #: True: the value must be above ``low``; False: at least ``low``.
    above: bool = False
    high: float = math.inf
    infinite_ok: bool = False
    help: str = ""


_RULES: dict[str, _Rule] = {
    "keepalive_time": _Rule(float, 0, above=True, infinite_ok=True,
                            help="PING a connection that sent nothing for this long"),
    "keepalive_timeout": _Rule(float, 0, above=True,
                               help="close it if the PING is not answered within this"),
    "keepalive_min_time": _Rule(float, 0,
                                help="least interval accepted between a client's PINGs"),
    "keepalive_permit_without_calls": _Rule(bool, help="accept client PINGs with no call open"),
    "max_connection_idle": _Rule(float, 0, above=True, infinite_ok=True,
                                 help="GOAWAY after this long without calls (a Watch is a "
                                      "call)"),
    "max_connection_age": _Rule(float, 0, above=True, infinite_ok=True,
                                help="GOAWAY after this long (+-10%% jitter)"),
    "max_connection_age_grace": _Rule(float, 0, infinite_ok=True,
                                      help="then this long for calls in flight"),
    "max_connections": _Rule(int, 1, help="connections at most (lowered below the open-file "
                                          "limit)"),
    "tcp_keepalive": _Rule(bool, help="TCP keepalive and TCP_USER_TIMEOUT on sockets"),
    "tcp_keepalive_idle": _Rule(float, 1, high=32767, help="silence before the first probe"),
    "tcp_keepalive_interval": _Rule(float, 1, high=32767, help="between probes"),
    "tcp_keepalive_count": _Rule(int, 1, high=127, help="unanswered probes before giving up"),
    "tcp_user_timeout": _Rule(float, 0, high=(2**31 - 1) / 1000,
                              help="unacknowledged data fails the socket after this (0: OS "
                                   "default)"),
}

_TRUE = {"true", "on", "yes", "1"}
_FALSE = {"false", "off", "no", "0"}


def check_value(name: str, value: Any) -> Any:
    """``value`` for setting ``name`` if it follows the rule; ValueError with why if not."""
    rule = _RULES[name]
    if rule.kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be a number, got {value!r}")
    if rule.kind is int and (not isinstance(value, int) and not float(value).is_integer()):
        raise ValueError(f"must be a whole number, got {value!r}")
    if math.isnan(value) or (math.isinf(value) and not rule.infinite_ok):
        raise ValueError(f"must be a finite number, got {value!r}")
    too_low = value <= rule.low if rule.above else value < rule.low
    if too_low or value > rule.high:
        low = f"> {rule.low:g}" if rule.above else f">= {rule.low:g}"
        span = f"{low} and <= {rule.high:g}" if rule.high != math.inf else low
        unit = "" if rule.kind is int else " seconds"
        raise ValueError(f"must be {span}{unit}, got {value!r}")
    return int(value) if rule.kind is int else float(value)


def parse_flag_value(name: str, text: str) -> Any:
    """A flag's text as the value of setting ``name``; ValueError with why if it is not one."""
    rule = _RULES[name]
    if rule.kind is bool:
        word = text.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise ValueError(f"must be true or false, got {text!r}")
    try:
        value: float = int(text) if rule.kind is int else float(text)
    except ValueError:
        kind = "a whole number" if rule.kind is int else "a number of seconds"
        raise ValueError(f"must be {kind}, got {text!r}") from None
    return check_value(name, value)


def flag_help(name: str) -> str:
    """The help line of the flag for setting ``name``."""
    default = getattr(TransportSettings(), name)
    shown = str(default).lower() if isinstance(default, bool) else f"{default:g}"
    return f"{_RULES[name].help} (default {shown})"


@dataclass(frozen=True)
class TransportSettings:
    """Every transport setting; the defaults are the library's (``wire``)."""

    keepalive_time: float = _SERVER.time
    keepalive_timeout: float = _SERVER.timeout
    keepalive_min_time: float = _POLICY.min_time
    keepalive_permit_without_calls: bool = _POLICY.permit_without_stream
    max_connection_idle: float = _SERVER.max_connection_idle
    max_connection_age: float = _SERVER.max_connection_age
    max_connection_age_grace: float = _SERVER.max_connection_age_grace
    #: ``wire.ServerOptions.max_connections`` (kept equal by a test; importing the Trio layer
    #: here would make the config side load Trio).
    max_connections: int = 10_000
    tcp_keepalive: bool = _TCP.enabled
    tcp_keepalive_idle: float = _TCP.idle
    tcp_keepalive_interval: float = _TCP.interval
    tcp_keepalive_count: int = _TCP.count
    tcp_user_timeout: float = _TCP.user_timeout

    def __post_init__(self) -> None:
        for name in TRANSPORT_NAMES:
            try:
                check_value(name, getattr(self, name))
            except ValueError as exc:
                raise ValueError(f"{name} {exc}") from None

    def values(self) -> dict[str, Any]:
        """Every setting by name."""
        return {name: getattr(self, name) for name in TRANSPORT_NAMES}

    def tcp(self) -> TcpKeepalive:
        """The TCP keepalive these settings describe."""
        return TcpKeepalive(enabled=self.tcp_keepalive, idle=self.tcp_keepalive_idle,
                            interval=self.tcp_keepalive_interval,
                            count=self.tcp_keepalive_count, user_timeout=self.tcp_user_timeout)


TRANSPORT_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TransportSettings))
