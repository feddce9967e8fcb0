"""HealthService and serve_health arguments, in process (the protocol is tested with grpcio
in test_service_grpcio.py)."""

from __future__ import annotations

from functools import partial

import pytest
import trio

from health import HealthServer, HealthService, HealthState, ServingStatus, serve_health
from health.client import HealthClient
from health.protocol import CHECK_PATH, LIST_PATH, WATCH_PATH
from wire import open_channel

SERVING = ServingStatus.SERVING
NOT_SERVING = ServingStatus.NOT_SERVING

LIMIT = 10.0


def test_list_limit_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="list_limit must be >= 0"):
        HealthService(list_limit=-1)


def test_the_paths_are_defined_once() -> None:
    import health.client
    import health.service

    assert (CHECK_PATH, LIST_PATH, WATCH_PATH) == (
        "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/List",
        "/grpc.health.v1.Health/Watch")
    assert health.service.CHECK_PATH is health.client.CHECK_PATH is CHECK_PATH
    assert health.service.WATCH_PATH is health.client.WATCH_PATH is WATCH_PATH


async def test_port_needs_a_tcp_listener() -> None:
    server = HealthServer()
    with pytest.raises(RuntimeError, match="not serving on TCP"):
        _ = server.port


async def test_serve_health_applies_initial_to_a_given_state() -> None:
    state = HealthState({"a": NOT_SERVING, "b": SERVING})
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(partial(
                serve_health, "127.0.0.1", 0, initial={"a": SERVING, "c": NOT_SERVING},
                state=state))
            assert server.state is state
            async with open_channel(f"127.0.0.1:{server.port}",
                                    connect_timeout=LIMIT) as channel:
                statuses = await HealthClient(channel).list(timeout=LIMIT)
            nursery.cancel_scope.cancel()
    # initial wins for the names it gives; the state keeps the rest.
    assert statuses == {"": SERVING, "a": SERVING, "b": SERVING, "c": NOT_SERVING}

