"""Client PING keepalive finds a backend behind a silent path, and a healed path brings it back.

A real health server on loopback behind the blackhole proxy (``tests/blackhole.py``): while it
forwards, the follower and the pool see SERVING; once it silently discards everything both
ways (sockets open, no FIN, no RST), only the channel's PING keepalive can tell. The follower
must turn unhealthy and ``pool.pick()`` stop returning the backend within keepalive_time +
keepalive_timeout + 1 s; after healing, new connections bring it back.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from health import HealthServer
from health.follow import BackendFollower, Backoff
from health.pool import HealthyPool, NoHealthyBackendError, open_pool
from health.status import ServingStatus
from wire import open_channel

from ..blackhole import open_blackhole_proxy

TIME, TIMEOUT = 1.0, 1.0
# Retries come quickly in the test, so healing is seen soon after it happens; a connection
# attempt made while the path was black stays black, so it must give up soon too.
FAST = Backoff(initial=0.2, maximum=1.0)
CONNECT_TIMEOUT = 2.0
HEAL_BOUND = 15.0


async def _wait_until(predicate: Callable[[], bool], bound: float) -> None:
    """Poll ``predicate`` every 10 ms (two sources change: the follower and the pool)."""
    for _ in range(int(bound / 0.01)):
        if predicate():
            return
        await trio.sleep(0.01)
    raise AssertionError(f"not within {bound} s")


def _picks(pool: HealthyPool, address: str) -> bool:
    try:
        return pool.pick() == address
    except NoHealthyBackendError:
        return False


async def test_keepalive_drops_a_silent_backend_and_healing_restores_it() -> None:
    async with trio.open_nursery() as nursery:
        server = HealthServer()
        server.state.set("svc", ServingStatus.SERVING)
        _, port = await nursery.start(server.server.serve_tcp, "127.0.0.1", 0)
        async with open_blackhole_proxy(port) as proxy:
            address = f"127.0.0.1:{proxy.port}"
            async with open_channel(address, connect_timeout=CONNECT_TIMEOUT,
                                    keepalive_time=TIME, keepalive_timeout=TIMEOUT) as channel, \
                    open_pool([address], service="svc", backoff=FAST,
                              connect_timeout=CONNECT_TIMEOUT,
                              keepalive_time=TIME, keepalive_timeout=TIMEOUT) as pool:
                follower = BackendFollower(channel, "svc", backoff=FAST)
                nursery.start_soon(follower.run)
                await _wait_until(lambda: follower.healthy and _picks(pool, address),
                                  10)
                proxy.blackhole()
                start = trio.current_time()
                lost: dict[str, float] = {}

                def record() -> bool:
                    now = trio.current_time() - start
                    if not follower.healthy:
                        lost.setdefault("follower", now)
                    if not _picks(pool, address):
                        lost.setdefault("pool", now)
                    return len(lost) == 2

                await _wait_until(record, TIME + TIMEOUT + 1)
                print(f"silent backend noticed: follower after {lost['follower']:.2f} s, "
                      f"pool.pick() after {lost['pool']:.2f} s (keepalive {TIME} + {TIMEOUT} s)")
                proxy.heal()
                healed = trio.current_time()
                await _wait_until(lambda: follower.healthy and _picks(pool, address),
                                  HEAL_BOUND)
                print(f"healed path: back after {trio.current_time() - healed:.2f} s")
            nursery.cancel_scope.cancel()
