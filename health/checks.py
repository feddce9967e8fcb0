"""Dependency checks: probes run on a schedule whose results drive services' health statuses.

This module owns :class:`Check` (a probe plus its schedule and thresholds), :class:`CheckRunner`
(runs every check in the server's nursery and writes the resulting statuses into a
``HealthState``) and the per-check record kept for metrics (:class:`CheckRecord`,
:class:`CheckResult`). The built-in probes (tcp, http, command, grpc) live in
:mod:`health.probes`; their old names here still work for one release, with a
DeprecationWarning.

Theory of operation
-------------------
A *probe* is an async callable taking no arguments. It passes by returning (anything but
``False``) and fails by returning ``False`` or raising; :class:`CheckFailed` carries a reason
meant for humans, any other exception is reported as ``Type: message``. A probe that outlives
its ``timeout`` is cancelled and counts as a failure too. A plain (sync) function is run in a
worker thread with ``trio.to_thread.run_sync(abandon_on_cancel=True)``, so the Trio loop never
blocks on it; on timeout the thread is abandoned (it runs on, its result ignored).

Each check keeps a *verdict* that only changes after ``failure_threshold`` failures in a row
(healthy -> failing) or ``success_threshold`` successes in a row (failing -> healthy), as
Kubernetes probes do, so a single slow or flaky result does not flap the status. The first
result sets the verdict at once: there is no earlier verdict to protect, and it lets
``CheckRunner.run`` report a real status as soon as the first round is over.

Statuses written to the ``HealthState``:

* A service with checks is SERVING when every one of its checks' verdicts is healthy, and
  NOT_SERVING as soon as one is failing.
* Until every check of a service has its first result, the service reports UNKNOWN (or the
  ``initial`` status given for it). UNKNOWN rather than NOT_SERVING because both keep traffic
  away (gRFC A17 clients and ``grpc_health_probe`` treat anything but SERVING as not ready),
  but UNKNOWN tells an operator "not checked yet" apart from "checked and failing".
* ``""`` (the whole server), when ``aggregate`` is true (the default) and there is at least one
  check, is the aggregate of every check the runner has (those of every service and those
  registered on ``""`` itself): NOT_SERVING as soon as one is failing, SERVING when all are
  healthy, else (some have no result yet) UNKNOWN or ``""``'s ``initial`` status. Services
  without checks (set by the application or the admin API) do not take part.
  With ``aggregate=False`` the runner leaves ``""`` alone unless checks are registered on it.
* The runner writes a service's status only when its own computed status changes, so a status
  set by hand (admin API) stands until the checks next change their mind. A drain
  (``HealthState.shutdown``) still wins: the state remembers the sets and applies them on resume.

Failures are logged to the ``health.checks`` logger: WARNING with the reason for the first
failure of a streak and whenever the reason changes, DEBUG for repeats; verdict changes at
WARNING (to failing) or INFO (to healthy).
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import cast

import trio

from ._moved import moved_names
from .callbacks import Callbacks
from .errors import HealthError
from .status import ServingStatus
from .status_map import HealthState

__all__ = [
    "Check",
    "CheckFailed",
    "CheckRecord",
    "CheckResult",
    "CheckRunner",
    "Probe",
    "ResultListener",
    "managed_services",
]

logger = logging.getLogger("health.checks")

Probe = Callable[[], Awaitable[object]]
"""An async callable with no arguments: returning (not ``False``) passes, raising fails."""

ResultListener = Callable[["CheckResult"], None]
"""Called with each result, after the statuses it implies have been written."""

# Kubernetes probe defaults (periodSeconds, timeoutSeconds, failureThreshold, successThreshold).
DEFAULT_INTERVAL = 10.0
DEFAULT_TIMEOUT = 1.0
DEFAULT_FAILURE_THRESHOLD = 3
DEFAULT_SUCCESS_THRESHOLD = 1

# Reasons end up in logs and /status-like outputs; an exception message can be arbitrarily long.
_MAX_REASON = 300

# The probes' old home was this module; resolved lazily so that the engine never loads them.
__getattr__ = moved_names(__name__, "health.probes",
                          ("command_check", "grpc_check", "http_check", "tcp_check"))


def managed_services(check_services: Iterable[str], *, aggregate: bool) -> list[str]:
    """The services whose status checks on ``check_services`` write (``""`` last)."""
    names = list(dict.fromkeys(check_services))
    if names and aggregate and "" not in names:
        names.append("")
    elif "" in names:
        # Keep "" last: it may depend on every other service.
        names.remove("")
        names.append("")
    return names


class CheckFailed(HealthError):
    """Raised by a probe to fail with a human-readable reason (no traceback is logged)."""


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def _single_leaf(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-member exception groups, or ``exc`` itself."""
    # A probe that opens a nursery reports its failure wrapped in an ExceptionGroup; the
    # reason should name the failure itself. Bounded: groups nest only so deep in practice.
    for _ in range(16):
        members = getattr(exc, "exceptions", None)
        if not isinstance(members, tuple) or len(members) != 1:
            break
        exc = members[0]
    return exc


def _is_async_callable(fn: object) -> bool:
    # inspect sees through functools.partial; objects with an async __call__ need the second look.
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 (we want the method, not callable())
    )


def _positive_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        value > 0 and math.isfinite(value)
    ):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


@dataclass(frozen=True)
class Check:
    """A probe feeding ``service``, run every ``interval`` s, each run bounded by ``timeout`` s.

    ``threaded`` says whether ``probe`` is a sync function to run in a worker thread; by
    default it is guessed (async functions run in the Trio thread, anything else in a thread).
    """

    name: str
    probe: Callable[[], object]
    service: str = ""
    interval: float = DEFAULT_INTERVAL
    timeout: float = DEFAULT_TIMEOUT
    failure_threshold: int = DEFAULT_FAILURE_THRESHOLD
    success_threshold: int = DEFAULT_SUCCESS_THRESHOLD
    threaded: bool | None = None

    def __post_init__(self) -> None:
        """Validate the schedule and thresholds."""
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"check name must be a non-empty str, got {self.name!r}")
        if not isinstance(self.service, str):
            raise TypeError(f"service name must be str, got {type(self.service).__name__}")
        if not callable(self.probe):
            raise TypeError(f"probe must be callable, got {self.probe!r}")
        object.__setattr__(self, "interval", _positive_number("interval", self.interval))
        object.__setattr__(self, "timeout", _positive_number("timeout", self.timeout))
        _positive_int("failure_threshold", self.failure_threshold)
        _positive_int("success_threshold", self.success_threshold)
        if self.threaded is None:
            object.__setattr__(self, "threaded", not _is_async_callable(self.probe))

    async def run_probe(self) -> CheckResult:
        """Run the probe once, bounded by the timeout, and return what happened."""
        start = trio.current_time()
        ok = False
        reason = ""
        error: BaseException | None = None
        with trio.move_on_after(self.timeout) as scope:
            try:
                if self.threaded:
                    outcome = await trio.to_thread.run_sync(self.probe, abandon_on_cancel=True)
                else:
                    outcome = await cast(Probe, self.probe)()
            except CheckFailed as exc:
                reason = _shorten(str(exc)) or "check failed"
            except Exception as exc:
                # Any failure of the probe is a failed check, never a crashed runner.
                leaf = _single_leaf(exc)
                if isinstance(leaf, CheckFailed):
                    reason = _shorten(str(leaf)) or "check failed"
                else:
                    reason = _shorten(f"{type(leaf).__name__}: {leaf}")
                    error = exc
            else:
                if outcome is False:
                    reason = "probe returned False"
                else:
                    ok = True
        if scope.cancelled_caught:
            ok = False
            reason = f"timed out after {self.timeout:g} s"
        duration = trio.current_time() - start
        return CheckResult(self, ok, reason, duration, start, error)


@dataclass(frozen=True)
class CheckResult:
    """One run of a check: whether it passed, why not, and how long it took (seconds)."""

    check: Check
    ok: bool
    reason: str
    duration: float
    started_at: float
    error: BaseException | None = field(default=None, compare=False, repr=False)


@dataclass
class CheckRecord:
    """What the runner knows about one check: its verdict, streaks and last result."""

    check: Check
    #: True healthy, False failing, None before the first result.
    healthy: bool | None = None
    consecutive_successes: int = 0
    consecutive_failures: int = 0
    successes: int = 0
    failures: int = 0
    last: CheckResult | None = None

    def apply(self, result: CheckResult) -> bool:
        """Fold ``result`` into the streaks and verdict; return whether the verdict changed."""
        before = self.healthy
        self.last = result
        if result.ok:
            self.successes += 1
            self.consecutive_successes += 1
            self.consecutive_failures = 0
            if self.healthy is None or (
                not self.healthy
                and self.consecutive_successes >= self.check.success_threshold
            ):
                self.healthy = True
        else:
            self.failures += 1
            self.consecutive_failures += 1
            self.consecutive_successes = 0
            if self.healthy is None or (
                self.healthy and self.consecutive_failures >= self.check.failure_threshold
            ):
                self.healthy = False
        return self.healthy is not before


class CheckRunner:
    """Runs checks on their schedules and writes the statuses they imply into a HealthState.

    Start it in the server's nursery: ``await nursery.start(runner.run)`` returns once every
    check has completed its first run, so the statuses are real from then on. ``initial``
    gives the status a managed service (``""`` included) reports before its first results
    (default UNKNOWN).
    """

    def __init__(
        self,
        state: HealthState,
        checks: Iterable[Check] = (),
        *,
        aggregate: bool = True,
        initial: Mapping[str, ServingStatus] | None = None,
    ) -> None:
        self.state = state
        self.aggregate = aggregate
        self._records: dict[str, CheckRecord] = {}
        self._initial = dict(initial or {})
        for status in self._initial.values():
            if status not in (ServingStatus.UNKNOWN, ServingStatus.SERVING,
                              ServingStatus.NOT_SERVING):
                raise ValueError(f"initial status must be settable, got {status!r}")
        # What the runner last wrote per service, so it writes only on change.
        self._written: dict[str, ServingStatus] = {}
        self._listeners: Callbacks[[CheckResult]] = Callbacks(logger, "check result listener")
        self._running = False
        for check in checks:
            self.add(check)

    # ------------------------------------------------------------ registration

    def add(self, check: Check) -> None:
        """Register a check; only before :meth:`run`. Names must be unique."""
        if self._running:
            raise RuntimeError("checks cannot be added while the runner is running")
        if check.name in self._records:
            raise ValueError(f"duplicate check name {check.name!r}")
        self._records[check.name] = CheckRecord(check)

    def add_result_listener(self, listener: ResultListener) -> Callable[[], None]:
        """Call ``listener(result)`` after every check run; return a remover."""
        return self._listeners.add(listener)

    # ------------------------------------------------------------------- reads

    @property
    def checks(self) -> tuple[Check, ...]:
        """Every registered check, in registration order."""
        return tuple(record.check for record in self._records.values())

    @property
    def records(self) -> Mapping[str, CheckRecord]:
        """Each check's verdict, streaks and last result, by check name (live, read-only)."""
        return self._records

    def services(self) -> list[str]:
        """The services whose status this runner writes (``""`` last if aggregated)."""
        return managed_services((r.check.service for r in self._records.values()),
                                aggregate=self.aggregate)

    def service_status(self, service: str) -> ServingStatus | None:
        """The status the checks imply for ``service``, or None if the runner does not manage it."""
        if service == "" and self.aggregate:
            # Every check: the same as combining the services' statuses, without recursion.
            verdicts = [r.healthy for r in self._records.values()]
        else:
            verdicts = [r.healthy for r in self._records.values() if r.check.service == service]
        if not verdicts:
            return None
        if False in verdicts:
            return ServingStatus.NOT_SERVING
        if None in verdicts:
            return self._initial.get(service, ServingStatus.UNKNOWN)
        return ServingStatus.SERVING

    # ----------------------------------------------------------------- running

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        """Run every check until cancelled; ``started()`` once each has completed one run."""
        if self._running:
            raise RuntimeError("CheckRunner.run is already running")
        self._running = True
        try:
            self._publish()
            remaining = len(self._records)
            first_round = trio.Event()
            if remaining == 0:
                first_round.set()

            def first_done() -> None:
                nonlocal remaining
                remaining -= 1
                if remaining == 0:
                    first_round.set()

            async with trio.open_nursery() as nursery:
                for record in self._records.values():
                    nursery.start_soon(self._loop, record, first_done,
                                       name=f"health check {record.check.name}")
                await first_round.wait()
                task_status.started()
        finally:
            self._running = False

    async def run_once(self) -> list[CheckResult]:
        """Run every check once, concurrently, apply the results and return them."""
        results: list[CheckResult] = []

        async def one(record: CheckRecord) -> None:
            results.append(await self._run(record))

        self._publish()
        async with trio.open_nursery() as nursery:
            for record in self._records.values():
                nursery.start_soon(one, record)
        return results

    async def _loop(self, record: CheckRecord, first_done: Callable[[], None]) -> None:
        interval = record.check.interval
        next_run = trio.current_time()
        await self._run(record)
        first_done()
        # Runs until the runner is cancelled; each pass sleeps or runs a bounded probe.
        while True:
            # Start-to-start spacing (like Kubernetes periodSeconds); a probe slower than the
            # interval is followed by the next one at once rather than by a burst of catch-ups.
            next_run = max(next_run + interval, trio.current_time())
            await trio.sleep_until(next_run)
            await self._run(record)

    async def _run(self, record: CheckRecord) -> CheckResult:
        result = await record.check.run_probe()
        self._apply(record, result)
        return result

    def _apply(self, record: CheckRecord, result: CheckResult) -> None:
        check = record.check
        previous = record.last
        changed = record.apply(result)
        if not result.ok:
            first_of_streak = record.consecutive_failures == 1
            new_reason = previous is None or previous.reason != result.reason
            level = logging.WARNING if first_of_streak or new_reason else logging.DEBUG
            # A traceback helps only for unexpected exceptions, and only once per streak.
            exc_info = result.error if (result.error is not None and first_of_streak) else None
            logger.log(level, "check %r (service %r) failed (%d in a row): %s", check.name,
                       check.service, record.consecutive_failures, result.reason,
                       exc_info=exc_info)
        if changed:
            if record.healthy:
                logger.info("check %r (service %r) is healthy", check.name, check.service)
            else:
                logger.warning("check %r (service %r) is failing: %s", check.name,
                               check.service, result.reason)
            self._publish()
        self._listeners.call(result)

    def _publish(self) -> None:
        """Write every managed service's implied status that differs from the last written."""
        for service in self.services():
            status = self.service_status(service)
            if status is None or self._written.get(service) is status:
                continue
            self._written[service] = status
            self.state.set(service, status)
