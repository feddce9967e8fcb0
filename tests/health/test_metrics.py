"""Prometheus metrics: every metric checked by parsing the text exposition, then /metrics on
the admin port over loopback, with calls made by our own client to our own server."""

from __future__ import annotations

from collections.abc import Iterable

import h11
import trio
import trio.testing
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from health import HealthServer, HealthService, HealthState, ServingStatus
from health.admin import AdminServer
from health.checks import Check, CheckRunner
from health.client import HealthClient
from health.metrics import HealthMetrics
from wire import RpcError, ServerConfig, open_channel

SERVING = ServingStatus.SERVING
NOT_SERVING = ServingStatus.NOT_SERVING

RPC_TIMEOUT = 10.0


def samples(text: bytes | str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples called ``name``, keyed by their sorted labels."""
    if isinstance(text, bytes):
        text = text.decode()
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def value(text: bytes, name: str, **labels: str) -> float | None:
    """One sample's value, or None if absent."""
    return samples(text, name).get(tuple(sorted(labels.items())))


async def test_service_status_gauge_follows_the_state() -> None:
    state = HealthState({"a": SERVING, "b": NOT_SERVING})
    metrics = HealthMetrics(state)
    text = metrics.render()
    assert samples(text, "grpc_health_service_status") == {
        (("service", ""),): 1.0,
        (("service", "a"),): 1.0,
        (("service", "b"),): 2.0,
    }
    state.remove("b")
    state.set("a", ServingStatus.UNKNOWN)
    assert samples(metrics.render(), "grpc_health_service_status") == {
        (("service", ""),): 1.0,
        (("service", "a"),): 0.0,
    }


async def test_draining_and_watchers() -> None:
    state = HealthState()
    metrics = HealthMetrics(state)
    assert value(metrics.render(), "grpc_health_draining") == 0.0
    assert value(metrics.render(), "grpc_health_watchers") == 0.0
    with state.watch("x"), state.watch(""):
        assert value(metrics.render(), "grpc_health_watchers") == 2.0
    state.shutdown()
    text = metrics.render()
    assert value(text, "grpc_health_draining") == 1.0
    assert value(text, "grpc_health_watchers") == 0.0
    assert value(text, "grpc_health_service_status", service="") == 2.0


async def test_transitions_counter() -> None:
    state = HealthState()
    metrics = HealthMetrics(state)
    state.set("svc", SERVING)
    state.set("svc", SERVING)  # no change, not counted
    state.set("svc", NOT_SERVING)
    state.set("svc", SERVING)
    state.remove("svc")
    got = samples(metrics.render(), "grpc_health_status_transitions_total")
    assert got == {
        (("service", "svc"), ("to", "SERVING")): 2.0,
        (("service", "svc"), ("to", "NOT_SERVING")): 1.0,
        (("service", "svc"), ("to", "SERVICE_UNKNOWN")): 1.0,
    }
    metrics.close()
    state.set("svc", SERVING)
    assert value(metrics.render(), "grpc_health_status_transitions_total",
                 service="svc", to="SERVING") == 2.0


def _scripted(outcomes: Iterable[bool]) -> Check:
    items = list(outcomes)

    async def probe() -> bool:
        await trio.sleep(0.25)  # a duration the mock clock makes exact
        return items.pop(0) if len(items) > 1 else items[0]

    return Check("db", probe, service="svc", interval=1, failure_threshold=1)


async def test_check_metrics(autojump_clock: trio.testing.MockClock) -> None:
    state = HealthState()
    runner = CheckRunner(state, [_scripted([True, True, False])])
    metrics = HealthMetrics(state, runner=runner)
    text = metrics.render()
    # Declared before the first run, so dashboards see the check from the start.
    assert value(text, "grpc_health_check_duration_seconds_count", check="db") == 0.0
    assert samples(text, "grpc_health_check_healthy") == {}
    for _ in range(3):
        await runner.run_once()
    text = metrics.render()
    assert value(text, "grpc_health_check_duration_seconds_count", check="db") == 3.0
    assert value(text, "grpc_health_check_duration_seconds_sum", check="db") == 0.75
    assert value(text, "grpc_health_check_duration_seconds_bucket", check="db", le="0.25") == 3.0
    assert value(text, "grpc_health_check_duration_seconds_bucket", check="db", le="0.1") == 0.0
    assert value(text, "grpc_health_check_runs_total", check="db", result="success") == 2.0
    assert value(text, "grpc_health_check_runs_total", check="db", result="failure") == 1.0
    assert value(text, "grpc_health_check_healthy", check="db", service="svc") == 0.0
    assert value(text, "grpc_health_service_status", service="svc") == 2.0


async def test_request_counters_from_real_calls(server_config: ServerConfig) -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(HealthServer(config=server_config).serve_tcp, "127.0.0.1", 0)
        server.set("svc", SERVING)
        metrics = HealthMetrics(server.state, service=server.service)
        with trio.fail_after(RPC_TIMEOUT):
            async with open_channel(f"127.0.0.1:{server.port}") as channel:
                client = HealthClient(channel)
                assert await client.check("svc") is SERVING
                assert await client.check("") is SERVING
                try:
                    await client.check("missing")
                except RpcError:
                    pass
                await client.list()
        text = metrics.render()
        assert samples(text, "grpc_health_requests_total") == {
            (("code", "OK"), ("method", "Check")): 2.0,
            (("code", "NOT_FOUND"), ("method", "Check")): 1.0,
            (("code", "OK"), ("method", "List")): 1.0,
        }
        nursery.cancel_scope.cancel()


async def test_registries_are_separate() -> None:
    first = HealthMetrics(HealthState({"one": SERVING}))
    second = HealthMetrics(HealthState({"two": SERVING}), service=HealthService())
    assert first.registry is not second.registry
    assert value(first.render(), "grpc_health_service_status", service="two") is None
    assert value(second.render(), "grpc_health_service_status", service="one") is None


async def _http_get(port: int, path: str) -> tuple[int, str, bytes]:
    """A minimal HTTP/1.1 GET over loopback: (status, content type, body)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = h11.Connection(h11.CLIENT)
    async with stream:
        await stream.send_all(conn.send(h11.Request(method="GET", target=path, headers=[
            ("host", "localhost"), ("connection", "close")])) or b"")
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
        status, ctype, body = 0, "", b""
        for _ in range(1000):
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
            elif isinstance(event, h11.Response):
                status = event.status_code
                ctype = dict(event.headers).get(b"content-type", b"").decode()
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return status, ctype, body
        raise AssertionError("response never ended")


async def test_metrics_route_on_the_admin_port() -> None:
    state = HealthState({"svc": NOT_SERVING})
    metrics = HealthMetrics(state)
    assert metrics.http_response()[:2] == (200, CONTENT_TYPE_LATEST)
    admin = AdminServer(state, extra_routes={"/metrics": metrics.http_response})
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(admin.serve_tcp, "127.0.0.1", 0)
        with trio.fail_after(RPC_TIMEOUT):
            status, ctype, body = await _http_get(port, "/metrics")
        assert status == 200
        assert ctype == CONTENT_TYPE_LATEST
        assert value(body, "grpc_health_service_status", service="svc") == 2.0
        nursery.cancel_scope.cancel()
