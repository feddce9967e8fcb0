"""Following a backend's health from the client, as gRFC A17 describes it: one long Watch each.

``BackendFollower.run()`` keeps a Watch call open on one channel and turns what it hears into a
single bit, *healthy*, plus the detail behind it (``HealthReport``):

* a SERVING message -> healthy; any other status (NOT_SERVING, UNKNOWN, SERVICE_UNKNOWN) ->
  not healthy;
* the call fails with UNIMPLEMENTED -> the server does not do health checking: healthy, and
  watching stops for good (A17: "treat as healthy and stop watching");
* the channel is closed -> not healthy, and watching stops;
* any other end (an error, a clean end, the connection lost, a failed connect) -> not healthy,
  and the Watch is retried with gRPC connection backoff (``Backoff``: 1 s initial, x1.6, jitter
  0.2, 120 s max; the first delay is jittered too). A call that received at least one message
  resets the backoff and is retried within ``jitter x initial`` (0 to 0.2 s), not in the same
  millisecond as every other watcher of that backend: the stream had been working.

Before the first message the backend counts as not healthy. The follower never queues reports:
readers either get a callback (``on_change``) or wait for the next change and read the current
report (``wait_changed``), so nobody is handed a stale value. The random source of the jitter is
injectable for deterministic tests (``rng=random.Random(seed)``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import trio

from wire import Channel, RpcError, StatusCode

from .client import HealthClient
from .status import ServingStatus

__all__ = ["BackendFollower", "Backoff", "BackoffDelays", "HealthReport"]


@dataclass(frozen=True)
class Backoff:
    """gRPC connection backoff parameters (``doc/connection-backoff.md``)."""

    initial: float = 1.0
    multiplier: float = 1.6
    jitter: float = 0.2
    maximum: float = 120.0

    def __post_init__(self) -> None:
        if self.initial < 0 or self.multiplier < 1 or not 0 <= self.jitter < 1:
            raise ValueError("backoff needs initial >= 0, multiplier >= 1, 0 <= jitter < 1")


class BackoffDelays:
    """The delay series of one run of failures; ``reset()`` starts it over."""

    def __init__(self, params: Backoff, rng: random.Random) -> None:
        """Start a series with ``params``, drawing jitter from ``rng``."""
        self._params = params
        self._rng = rng
        self._current: float | None = None

    def reset(self) -> None:
        """Start over: the next delay is the initial one."""
        self._current = None

    def first_retry_delay(self) -> float:
        """The wait before retrying a stream that had been working: up to ``jitter`` times
        the initial backoff (0.2 s by default), instead of all watchers at once."""
        p = self._params
        return self._rng.uniform(0.0, p.jitter * p.initial)

    def next_delay(self) -> float:
        """The delay before the next attempt."""
        p = self._params
        if self._current is None:
            # connection-backoff.md has the first retry wait INITIAL_BACKOFF without jitter;
            # we jitter it like the others, so that the watchers of a backend that went away
            # together do not all retry in the same millisecond.
            self._current = p.initial
            spread = p.jitter * p.initial
            return max(0.0, p.initial + self._rng.uniform(-spread, spread))
        # "current_backoff = Min(current_backoff * MULTIPLIER, MAX_BACKOFF); current_deadline =
        #  now() + current_backoff + UniformRandom(-JITTER * current_backoff, JITTER * ...)"
        self._current = min(self._current * p.multiplier, p.maximum)
        spread = p.jitter * self._current
        return max(0.0, self._current + self._rng.uniform(-spread, spread))


@dataclass(frozen=True)
class HealthReport:
    """What a follower currently believes about its backend."""

    healthy: bool
    #: The last status received on the current Watch, None when there is none.
    status: ServingStatus | None = None
    #: Why, in words: "SERVING", "watch failed: UNAVAILABLE: ...", ...
    detail: str = "not yet checked"
    #: True once the server answered UNIMPLEMENTED: health checking is off for this backend.
    disabled: bool = False


class BackendFollower:
    """Follows one service's health on one channel and keeps ``report`` up to date (gRFC A17)."""

    def __init__(
        self,
        channel: Channel,
        service: str = "",
        *,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        on_change: Callable[[HealthReport], None] | None = None,
        client: HealthClient | None = None,
    ) -> None:
        self.channel = channel
        self.service = service
        self._client = client if client is not None else HealthClient(channel)
        self._backoff = BackoffDelays(backoff or Backoff(), rng or random.Random())
        self._on_change = on_change
        self._report = HealthReport(healthy=False)
        self._version = 0
        self._changed = trio.Event()
        #: Watch calls started so far (for logs and tests).
        self.attempts = 0

    @property
    def report(self) -> HealthReport:
        """The current report."""
        return self._report

    @property
    def healthy(self) -> bool:
        """True when the backend may be sent requests."""
        return self._report.healthy

    @property
    def version(self) -> int:
        """Increases by one on every change of ``report``."""
        return self._version

    async def wait_changed(self, since: int) -> HealthReport:
        """Wait until ``version`` differs from ``since``; return the report of that moment."""
        while self._version == since:  # bounded: each wake-up is a change or a cancellation
            await self._changed.wait()
        return self._report

    def _set(self, report: HealthReport) -> None:
        if report == self._report:
            return
        self._report = report
        self._version += 1
        self._changed.set()
        self._changed = trio.Event()
        if self._on_change is not None:
            self._on_change(report)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch until cancelled, the channel closes, or the server says UNIMPLEMENTED."""
        task_status.started()
        # Runs for the follower's lifetime: every pass makes a Watch call and then either
        # returns (UNIMPLEMENTED, channel closed) or sleeps per the backoff, so it is bounded
        # by cancellation.
        while True:
            started_at = trio.current_time()
            received = await self._watch_once()
            if self._report.disabled:
                return
            if self.channel.closed:
                self._set(HealthReport(healthy=False, detail="channel closed"))
                return
            if received:
                # The stream had been working: retry soon with a fresh backoff (grpc-go retries
                # at once; a little jitter keeps every watcher of one backend from
                # reconnecting in the same millisecond).
                self._backoff.reset()
                await trio.sleep(self._backoff.first_retry_delay())
                continue
            await trio.sleep_until(started_at + self._backoff.next_delay())

    async def _watch_once(self) -> bool:
        """One Watch call; report what it says; return True if any message arrived."""
        self.attempts += 1
        received = False
        try:
            async with self._client.watch(self.service) as stream:
                async for status in stream:
                    received = True
                    self._set(HealthReport(healthy=status is ServingStatus.SERVING,
                                           status=status, detail=status.name))
            self._set(HealthReport(healthy=False, detail="watch ended by the server"))
        except RpcError as exc:
            if exc.code is StatusCode.UNIMPLEMENTED:
                # A17: a server without the health service is assumed healthy, for good.
                self._set(HealthReport(
                    healthy=True, detail=f"health checking not implemented: {exc.message}",
                    disabled=True))
            else:
                self._set(HealthReport(healthy=False, detail=f"watch failed: {exc}"))
        return received
