"""Name resolution for the pool: which ``host:port`` addresses a target names, now and later.

A pool target such as ``dns:///orders.default.svc.cluster.local:50051`` (or ``dns:host:port``,
or a plain ``host:port``) names a set of backends: one per A and AAAA record, as a Kubernetes
headless service answers with one record per ready pod. This module owns

* ``parse_dns_target``: the host and port of such a target (``wire.parse_target`` rules;
  ``dns://AUTHORITY/...``, a custom DNS server, is refused);
* ``resolve_dns``: the default resolver, ``trio.socket.getaddrinfo`` turned into a list of
  distinct ``host:port`` strings, IPv6 in brackets;
* ``ResolverLoop``: asks a resolver again every ``interval`` seconds and whenever the pool
  wants it at once (no backend healthy), never more often than once per ``min_interval``
  seconds, and hands on only good answers. As in grpc's DNS resolver, a failed resolution
  keeps the last good set (logged), and so does an empty answer (logged as a warning: a
  headless service with no ready pod answers NXDOMAIN or nothing, and dropping every backend
  on a DNS hiccup would turn a partial outage into a full one).

Any async callable ``(host, port) -> list[str]`` of ``host:port`` strings is a resolver, so
tests and service registries plug in without DNS.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable, Sequence

import trio

from wire import parse_target

__all__ = [
    "DEFAULT_MAX_ADDRESSES",
    "DEFAULT_MIN_RESOLVE_INTERVAL",
    "DEFAULT_RESOLVE_INTERVAL",
    "DEFAULT_RESOLVE_TIMEOUT",
    "Resolver",
    "ResolverLoop",
    "format_address",
    "parse_dns_target",
    "resolve_dns",
]

logger = logging.getLogger(__name__)

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

#: grpc's DNS resolver re-resolves at most every 30 s (grpc-go ``MinResolutionInterval``,
#: grpc-core ``grpc.dns_min_time_between_resolutions_ms``); we poll at that period.
DEFAULT_RESOLVE_INTERVAL = 30.0
#: The floor between two resolutions of any cause. Lower than grpc's 30 s: when a rollout
#: replaced every pod, each second with no healthy backend is a second of failed calls, and one
#: query per 5 s per client is still light DNS load.
DEFAULT_MIN_RESOLVE_INTERVAL = 5.0
#: One resolution that takes longer than this counts as failed.
DEFAULT_RESOLVE_TIMEOUT = 10.0
#: Answers beyond this many addresses are cut (with a warning): every address costs a
#: connection, a Watch call and their tasks.
DEFAULT_MAX_ADDRESSES = 10_000


def format_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets (``[::1]:50051``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_dns_target(target: str) -> tuple[str, int, str]:
    """``(host, port, authority)`` of ``dns:///host:port``, ``dns:host:port`` or ``host:port``."""
    if target.startswith("dns://") and not target.startswith("dns:///"):
        # gRPC naming (doc/naming.md): dns://AUTHORITY/host names the DNS server to ask.
        raise ValueError(f"target {target!r}: dns://AUTHORITY/ (a chosen DNS server) is not "
                         "supported; use dns:///host:port")
    if target.startswith("unix:"):
        raise ValueError(f"target {target!r}: a unix: socket path is not resolved through DNS")
    parsed = parse_target(target)
    return parsed.host, parsed.port, parsed.authority


async def resolve_dns(host: str, port: int) -> list[str]:
    """Every A and AAAA record of ``host`` as ``host:port`` strings, in answer order."""
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[str, None] = {}
    for family, _type, _proto, _canonname, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        seen[format_address(str(sockaddr[0]), port)] = None
    return list(seen)


def _checked(answer: Sequence[str], limit: int) -> tuple[str, ...]:
    """The distinct addresses of ``answer`` in order; ValueError for one that is not host:port."""
    if isinstance(answer, str):
        raise ValueError("the resolver returned a string, not a list of addresses")
    seen: dict[str, None] = {}
    for address in answer:
        if not isinstance(address, str) or address.startswith(("unix:", "dns:")):
            raise ValueError(f"the resolver returned {address!r}, not a host:port address")
        parse_target(address)  # raises ValueError naming the address
        seen[address] = None
    addresses = tuple(seen)
    if len(addresses) > limit:
        logger.warning("the resolver returned %d addresses; keeping the first %d",
                       len(addresses), limit)
        addresses = addresses[:limit]
    return addresses


class ResolverLoop:
    """The last good answer for one target, and the schedule that asks for a new one."""

    def __init__(
        self,
        target: str,
        resolver: Resolver | None = None,
        *,
        interval: float = DEFAULT_RESOLVE_INTERVAL,
        min_interval: float | None = None,
        timeout: float = DEFAULT_RESOLVE_TIMEOUT,
        max_addresses: int = DEFAULT_MAX_ADDRESSES,
    ) -> None:
        if min_interval is None:
            # A short period asked for on purpose is its own floor.
            min_interval = min(DEFAULT_MIN_RESOLVE_INTERVAL, interval)
        if not 0 < min_interval <= interval:
            raise ValueError("resolve intervals need 0 < min_resolve_interval <= "
                             f"resolve_interval, got {min_interval:g} and {interval:g}")
        if timeout <= 0 or max_addresses < 1:
            raise ValueError("a resolver needs timeout > 0 and max_addresses >= 1")
        self.target = target
        self.host, self.port, self.authority = parse_dns_target(target)
        self._resolver: Resolver = resolver if resolver is not None else resolve_dns
        self.interval = interval
        self.min_interval = min_interval
        self.timeout = timeout
        self.max_addresses = max_addresses
        #: The last good (non-empty) answer; empty until one arrived.
        self.addresses: tuple[str, ...] = ()
        #: Why the last resolution was not used, or None when it was.
        self.error: str | None = None
        #: Resolutions attempted so far (for logs, tests and benchmarks).
        self.resolutions = 0

    async def resolve(self) -> tuple[str, ...] | None:
        """Ask once; return the new answer, or None when it failed or was empty (kept last)."""
        self.resolutions += 1
        kept = f"keeping the last {len(self.addresses)} addresses"
        try:
            with trio.fail_after(self.timeout):
                raw = await self._resolver(self.host, self.port)
            answer = _checked(raw, self.max_addresses)
        except trio.TooSlowError:
            self._failed(f"no answer within {self.timeout:g} s", kept)
            return None
        except Exception as exc:  # a resolver's failure, whatever its type, must not end the pool
            self._failed(str(exc) or type(exc).__name__, kept)
            return None
        if not answer:
            why = "the resolver returned no address"
            if self.error != why:
                logger.warning("resolving %s: %s; %s", self.target, why, kept)
            self.error = why
            return None
        if self.error is not None:
            logger.info("resolving %s works again: %d addresses", self.target, len(answer))
        self.error = None
        self.addresses = answer
        return answer

    def _failed(self, why: str, kept: str) -> None:
        # A fleet whose DNS is down would log every few seconds: say it when it changes.
        if why != self.error:
            logger.warning("resolving %s failed: %s; %s", self.target, why, kept)
        else:
            logger.debug("resolving %s failed again: %s", self.target, why)
        self.error = why

    async def run(
        self,
        apply: Callable[[tuple[str, ...]], Awaitable[None]],
        wanted_now: Callable[[], Awaitable[None]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Resolve, ``apply`` the answer, report started; then re-resolve until cancelled.

        The next resolution starts ``interval`` seconds after the previous one started, or
        earlier when ``wanted_now()`` returns, but never sooner than ``min_interval`` seconds
        after it.
        """
        last = trio.current_time()
        answer = await self.resolve()
        if answer is not None:
            await apply(answer)
        task_status.started()
        # Runs for the pool's lifetime; every pass sleeps at least min_interval or until the
        # periodic deadline, so it is bounded by cancellation.
        while True:
            with trio.move_on_at(last + self.interval):
                await trio.sleep_until(last + self.min_interval)
                await wanted_now()
            last = trio.current_time()
            answer = await self.resolve()
            if answer is not None:
                await apply(answer)
