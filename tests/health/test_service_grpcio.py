"""The Health service end to end, with grpcio's client (the reference peer) over loopback TCP.

Our server runs in the Trio test; every blocking grpcio call runs in a worker thread. Threads
are abandoned on cancellation and unblocked by closing their channel at teardown, so a failing
test cannot hang. One test drives a raw h2 client with a zero receive window, because grpcio
keeps widening its window and never lets flow control bite on small health messages.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
import trio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from health import HealthServer, HealthService, HealthState
from health.service import CHECK_PATH, LIST_PATH, WATCH_PATH
from wire import Server, ServerCall, ServerConfig, ServerOptions, unary_unary

from .constants import NOT_SERVING, SERVICE_UNKNOWN, SERVING, UNKNOWN

#: Deadline of every grpcio unary call; a backstop only, tests bound themselves tighter.
RPC_TIMEOUT = 10.0
#: Deadline of every grpcio Watch call, so a reader thread always ends eventually.
WATCH_TIMEOUT = 30.0
#: Bound of each step of a test.
STEP = 10.0

StartServer = Callable[..., Awaitable[HealthServer]]
OpenChannel = Callable[[int], grpc.Channel]


# ----------------------------------------------------------------------------- helpers


async def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a blocking grpcio call in a worker thread, abandoned if the test is cancelled."""
    return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs),
                                         abandon_on_cancel=True)


async def check(channel: grpc.Channel, service: str) -> int:
    """Check ``service`` and return the status number grpcio decoded."""
    stub = health_pb2_grpc.HealthStub(channel)
    with trio.fail_after(STEP):
        resp = await in_thread(stub.Check, health_pb2.HealthCheckRequest(service=service),
                               timeout=RPC_TIMEOUT)
    return int(resp.status)


async def rpc_error(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> grpc.RpcError:
    """Run a blocking grpcio call that must fail, and return its error."""
    with trio.fail_after(STEP):
        try:
            result = await in_thread(fn, *args, **kwargs)
        except grpc.RpcError as exc:
            return exc
    pytest.fail(f"expected an RpcError, got {result!r}")


def watch(channel: grpc.Channel, service: str) -> Iterator[Any]:
    """Start a grpcio Watch (not blocking); iterate it in a thread."""
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Watch(health_pb2.HealthCheckRequest(service=service),  # type: ignore[no-any-return]
                      timeout=WATCH_TIMEOUT)


async def next_status(stream: Iterator[Any]) -> int:
    """The next status a grpcio Watch stream delivers."""
    with trio.fail_after(STEP):
        return int((await in_thread(next, stream)).status)


def read_to_end(stream: Iterator[Any]) -> tuple[list[int], grpc.StatusCode, str]:
    """(Thread) read a Watch stream until it ends: statuses, final code and details."""
    statuses: list[int] = []
    try:
        for resp in stream:
            statuses.append(int(resp.status))
    except grpc.RpcError as exc:
        return statuses, exc.code(), exc.details()
    return statuses, grpc.StatusCode.OK, ""


def no_repeats(statuses: list[int]) -> bool:
    """Whether no status follows an identical one."""
    return all(a != b for a, b in itertools.pairwise(statuses))


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll ``predicate`` (cheap, in the Trio thread) until true; fail after STEP seconds."""
    # Polling, because the server exposes no event for "the peer's RST_STREAM was processed".
    with trio.fail_after(STEP):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.01)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
async def start_server(nursery: trio.Nursery,
                       server_config: ServerConfig) -> AsyncIterator[StartServer]:
    """Start HealthServers on 127.0.0.1:0 (on this run's engine unless ``config`` is given);
    every one is shut down at teardown."""
    servers: list[HealthServer] = []

    async def start(state: HealthState | None = None, **kwargs: Any) -> HealthServer:
        kwargs.setdefault("config", server_config)
        hs = HealthServer(state, **kwargs)
        await nursery.start(hs.serve_tcp, "127.0.0.1", 0)
        servers.append(hs)
        return hs

    yield start
    with trio.fail_after(STEP):
        for hs in servers:
            await hs.shutdown(0)


@pytest.fixture
async def open_channel() -> AsyncIterator[OpenChannel]:
    """Open grpcio channels to 127.0.0.1:port, one connection each; closed at teardown."""
    channels: list[grpc.Channel] = []

    def open_(port: int) -> grpc.Channel:
        # grpcio shares connections between channels to the same target unless told not to.
        channel = grpc.insecure_channel(f"127.0.0.1:{port}",
                                        options=[("grpc.use_local_subchannel_pool", 1)])
        channels.append(channel)
        return channel

    yield open_
    with trio.fail_after(STEP):
        for channel in channels:
            # Closing cancels the channel's calls, which unblocks any abandoned reader thread.
            await in_thread(channel.close)


# ----------------------------------------------------------------------------- Check


async def test_check_known_unknown_and_removed(start_server: StartServer,
                                               open_channel: OpenChannel) -> None:
    state = HealthState({"a": SERVING, "b": NOT_SERVING, "u": UNKNOWN, "svc/ünï": SERVING})
    hs = await start_server(state)
    channel = open_channel(hs.port)
    stub = health_pb2_grpc.HealthStub(channel)

    assert await check(channel, "") == health_pb2.HealthCheckResponse.SERVING
    assert await check(channel, "a") == health_pb2.HealthCheckResponse.SERVING
    assert await check(channel, "b") == health_pb2.HealthCheckResponse.NOT_SERVING
    assert await check(channel, "u") == health_pb2.HealthCheckResponse.UNKNOWN
    assert await check(channel, "svc/ünï") == health_pb2.HealthCheckResponse.SERVING

    for name in ("nope", "A", "a ", "svc/uni"):
        err = await rpc_error(stub.Check, health_pb2.HealthCheckRequest(service=name),
                              timeout=RPC_TIMEOUT)
        assert err.code() == grpc.StatusCode.NOT_FOUND, name
        assert err.details() == "unknown service"

    assert hs.remove("a") is True
    err = await rpc_error(stub.Check, health_pb2.HealthCheckRequest(service="a"),
                          timeout=RPC_TIMEOUT)
    assert err.code() == grpc.StatusCode.NOT_FOUND
    hs.set("a", NOT_SERVING)
    assert await check(channel, "a") == health_pb2.HealthCheckResponse.NOT_SERVING

    # The empty service is the server itself; removing it makes it unknown too.
    hs.remove("")
    err = await rpc_error(stub.Check, health_pb2.HealthCheckRequest(service=""),
                          timeout=RPC_TIMEOUT)
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == "unknown service"

    counts = hs.service.call_counts
    assert counts[("Check", "OK")] == 6
    assert counts[("Check", "NOT_FOUND")] == 6


async def test_unknown_method_is_unimplemented(start_server: StartServer,
                                               open_channel: OpenChannel) -> None:
    hs = await start_server()
    channel = open_channel(hs.port)
    call = channel.unary_unary("/grpc.health.v1.Health/Nope")
    err = await rpc_error(call, b"", timeout=RPC_TIMEOUT)
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize(("path", "streaming"), [(CHECK_PATH, False), (LIST_PATH, False),
                                                 (WATCH_PATH, True)])
async def test_unparsable_request_is_internal(start_server: StartServer,
                                              open_channel: OpenChannel, path: str,
                                              streaming: bool) -> None:
    hs = await start_server()
    channel = open_channel(hs.port)
    if streaming:
        call = channel.unary_stream(path)
        stream = call(b"\xff\xff", timeout=RPC_TIMEOUT)
        err = await rpc_error(next, stream)
    else:
        call = channel.unary_unary(path)  # no serializers: raw bytes in and out
        err = await rpc_error(call, b"\xff\xff", timeout=RPC_TIMEOUT)
    assert err.code() == grpc.StatusCode.INTERNAL
    # Nothing was registered and the server still answers.
    assert hs.state.watcher_count == 0
    assert await check(channel, "") == health_pb2.HealthCheckResponse.SERVING


# ----------------------------------------------------------------------------- List


async def test_list_exactly_at_the_default_limit(start_server: StartServer,
                                                 open_channel: OpenChannel) -> None:
    initial = {f"svc-{i:02d}": (SERVING if i % 3 else NOT_SERVING) for i in range(99)}
    state = HealthState(initial)
    hs = await start_server(state)
    channel = open_channel(hs.port)
    stub = health_pb2_grpc.HealthStub(channel)

    with trio.fail_after(STEP):
        resp = await in_thread(stub.List, health_pb2.HealthListRequest(), timeout=RPC_TIMEOUT)
    got = {name: int(entry.status) for name, entry in resp.statuses.items()}
    expected = {"": int(SERVING), **{name: int(st) for name, st in initial.items()}}
    assert len(got) == 100
    assert got == expected
    # No side effects: the state is what it was.
    assert state.snapshot() == {"": SERVING, **initial}

    hs.set("one-too-many", SERVING)
    err = await rpc_error(stub.List, health_pb2.HealthListRequest(), timeout=RPC_TIMEOUT)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "101" in err.details()

    hs.remove("svc-00")
    with trio.fail_after(STEP):
        resp = await in_thread(stub.List, health_pb2.HealthListRequest(), timeout=RPC_TIMEOUT)
    assert len(resp.statuses) == 100
    assert "svc-00" not in resp.statuses
    assert resp.statuses["one-too-many"].status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("limit", [0, 1, 3])
async def test_list_limit_is_configurable(start_server: StartServer, open_channel: OpenChannel,
                                          limit: int) -> None:
    state = HealthState()
    hs = await start_server(state, list_limit=limit)
    channel = open_channel(hs.port)
    stub = health_pb2_grpc.HealthStub(channel)
    for i in range(limit - 1):
        hs.set(f"s{i}", NOT_SERVING)
    assert len(state) == max(limit, 1)

    if limit >= 1:
        with trio.fail_after(STEP):
            resp = await in_thread(stub.List, health_pb2.HealthListRequest(),
                                   timeout=RPC_TIMEOUT)
        assert len(resp.statuses) == limit
        hs.set("extra", SERVING)
    err = await rpc_error(stub.List, health_pb2.HealthListRequest(), timeout=RPC_TIMEOUT)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# ----------------------------------------------------------------------------- Watch


async def test_watch_sends_now_then_each_change_never_twice(start_server: StartServer,
                                                            open_channel: OpenChannel) -> None:
    hs = await start_server(HealthState({"a": SERVING, "b": SERVING}))
    channel = open_channel(hs.port)
    a = watch(channel, "a")
    b = watch(channel, "b")
    assert await next_status(a) == SERVING
    assert await next_status(b) == SERVING

    hs.set("a", NOT_SERVING)
    assert await next_status(a) == NOT_SERVING
    # Re-setting the same status is not a change: nothing may be sent for it, so the next
    # message is the following real change, even after the server had time to send.
    hs.set("a", NOT_SERVING)
    await trio.sleep(0.2)
    hs.set("a", SERVING)
    assert await next_status(a) == SERVING

    # b's watcher saw none of a's changes: its next message is its own.
    hs.set("b", UNKNOWN)
    assert await next_status(b) == UNKNOWN

    # Check answers while Watch streams are open on the same connection.
    assert await check(channel, "a") == health_pb2.HealthCheckResponse.SERVING
    assert hs.state.watcher_count == 2


async def test_watch_unknown_then_set_then_removed(start_server: StartServer,
                                                   open_channel: OpenChannel) -> None:
    hs = await start_server()
    channel = open_channel(hs.port)
    stream = watch(channel, "later")
    assert await next_status(stream) == SERVICE_UNKNOWN
    # The stream stays open for an unknown service.
    await wait_until(lambda: hs.state.watcher_count == 1)

    hs.set("later", SERVING)
    assert await next_status(stream) == SERVING
    hs.remove("later")
    assert await next_status(stream) == SERVICE_UNKNOWN
    hs.set("later", NOT_SERVING)
    assert await next_status(stream) == NOT_SERVING


async def test_cancelled_watch_is_unregistered(start_server: StartServer,
                                               open_channel: OpenChannel) -> None:
    hs = await start_server()
    channel = open_channel(hs.port)
    streams = [watch(channel, "") for _ in range(3)]
    for stream in streams:
        assert await next_status(stream) == SERVING
    assert hs.state.watcher_count == 3

    streams[0].cancel()  # type: ignore[attr-defined]
    await wait_until(lambda: hs.state.watcher_count == 2)
    # The others are unaffected.
    hs.set("", NOT_SERVING)
    assert await next_status(streams[1]) == NOT_SERVING
    assert await next_status(streams[2]) == NOT_SERVING


async def test_slow_grpcio_watcher_ends_on_latest(start_server: StartServer,
                                                  open_channel: OpenChannel) -> None:
    hs = await start_server(HealthState({"w": SERVING}))
    channel = open_channel(hs.port)
    stream = watch(channel, "w")
    assert await next_status(stream) == SERVING

    # The client reads nothing while the status flips, each flip given time to be sent.
    flips = 10_000
    stop_flipping = trio.Event()

    async def flip() -> None:
        for i in range(flips):
            hs.set("w", NOT_SERVING if i % 2 == 0 else SERVING)
            await trio.lowlevel.checkpoint()
        stop_flipping.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flip)
        # A Check in the middle of it all is answered (bounded by STEP inside check()).
        assert await check(channel, "w") in (health_pb2.HealthCheckResponse.SERVING,
                                             health_pb2.HealthCheckResponse.NOT_SERVING)
        with trio.fail_after(STEP * 3):
            await stop_flipping.wait()
    # A final status that never occurred before: reading must end on it.
    hs.set("w", UNKNOWN)

    def read_until_unknown() -> list[int]:
        got = []
        for resp in stream:
            got.append(int(resp.status))
            if resp.status == health_pb2.HealthCheckResponse.UNKNOWN:
                break
        return got

    with trio.fail_after(STEP * 3):
        got = await in_thread(read_until_unknown)
    assert got[-1] == UNKNOWN
    assert got.count(UNKNOWN) == 1
    assert no_repeats([SERVING, *got])
    assert len(got) <= flips + 1
    assert await check(channel, "w") == health_pb2.HealthCheckResponse.UNKNOWN


# ----------------------------------------------------------------------------- flow control


class RawH2Client:
    """A minimal h2 client that grants no receive window unless told to."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        # Zero stream window from the first SETTINGS on: the server can send no DATA at all.
        self.h2.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        self.h2.initiate_connection()
        self.data: dict[int, bytearray] = {}
        self.trailers: dict[int, dict[str, str]] = {}

    async def flush(self) -> None:
        out = self.h2.data_to_send()
        if out:
            await self.stream.send_all(out)

    async def start_call(self, path: str, request: bytes) -> int:
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, [
            (":method", "POST"), (":scheme", "http"), (":path", path),
            (":authority", "127.0.0.1"), ("te", "trailers"),
            ("content-type", "application/grpc"),
        ])
        self.h2.send_data(sid, b"\x00" + len(request).to_bytes(4, "big") + request,
                          end_stream=True)
        self.data[sid] = bytearray()
        await self.flush()
        return sid

    async def pump(self) -> None:
        chunk = await self.stream.receive_some(65536)
        assert chunk, "server closed the connection"
        for event in self.h2.receive_data(chunk):
            if isinstance(event, h2.events.DataReceived):
                self.data[event.stream_id] += event.data
            elif isinstance(event, h2.events.TrailersReceived):
                self.trailers[event.stream_id] = dict(event.headers)  # type: ignore[arg-type]
            elif isinstance(event, h2.events.StreamReset):
                pytest.fail(f"stream {event.stream_id} reset: {event.error_code!r}")
        await self.flush()

    def statuses(self, sid: int) -> list[int]:
        """Decode every complete gRPC message received so far on ``sid``."""
        buf = bytes(self.data[sid])
        out = []
        while len(buf) >= 5:
            size = int.from_bytes(buf[1:5], "big")
            if len(buf) < 5 + size:
                break
            assert buf[0] == 0
            out.append(health_pb2.HealthCheckResponse.FromString(buf[5:5 + size]).status)
            buf = buf[5 + size:]
        return out


async def test_flow_controlled_watcher_is_bounded_and_ends_on_latest(
        start_server: StartServer) -> None:
    # The server queues at most ~8 KiB (about 1170 messages) for a stream beyond its window.
    hs = await start_server(HealthState({"w": SERVING}),
                            options=ServerOptions(stream_high_water=8192))
    stream = await trio.open_tcp_stream("127.0.0.1", hs.port)
    async with stream:
        client = RawH2Client(stream)
        await client.flush()
        request = health_pb2.HealthCheckRequest(service="w").SerializeToString()
        watch_sid = await client.start_call(WATCH_PATH, request)
        await wait_until(lambda: hs.state.watcher_count == 1)

        # Far more 7-byte messages than the server may buffer for the stream: with a zero
        # window nothing leaves, so an unbounded queue would hold every flip.
        flips = 5_000
        for i in range(flips):
            hs.set("w", NOT_SERVING if i % 2 == 0 else SERVING)
            await trio.lowlevel.checkpoint()
        latest = hs.state.get("w")

        # The connection still answers a Check at once (granting that stream a window).
        check_sid = await client.start_call(CHECK_PATH, request)
        client.h2.increment_flow_control_window(65535, stream_id=check_sid)
        await client.flush()
        with trio.fail_after(STEP):
            while check_sid not in client.trailers:
                await client.pump()
        assert client.trailers[check_sid]["grpc-status"] == "0"
        assert client.statuses(check_sid) == [latest]
        assert client.data[watch_sid] == b""

        # A status that never occurred before, then open the windows wide and read it all.
        hs.set("w", UNKNOWN)
        client.h2.increment_flow_control_window(1 << 30)
        client.h2.increment_flow_control_window(1 << 30, stream_id=watch_sid)
        await client.flush()
        with trio.fail_after(STEP * 3):
            while UNKNOWN not in client.statuses(watch_sid):
                await client.pump()
        got = client.statuses(watch_sid)
        assert got[0] == SERVING
        assert got[-1] == UNKNOWN
        assert got.count(UNKNOWN) == 1
        assert no_repeats(got)
        # Intermediate statuses were dropped: the queue was bounded.
        assert len(got) < flips // 2
        assert hs.state.watcher_count == 1


# ----------------------------------------------------------------------------- watcher caps


async def test_watchers_per_connection_are_capped(start_server: StartServer,
                                                  open_channel: OpenChannel,
                                                  server_config: ServerConfig) -> None:
    # More concurrent streams than the per-connection watcher cap (100), else grpcio would
    # queue the 101st call locally instead of sending it.
    hs = await start_server(config=replace(server_config, max_concurrent_streams=200))
    channel = open_channel(hs.port)
    streams = [watch(channel, f"s{i % 7}") for i in range(100)]

    def read_first(items: list[Iterator[Any]]) -> list[int]:
        return [int(next(s).status) for s in items]

    with trio.fail_after(STEP * 2):
        firsts = await in_thread(read_first, streams)
    assert firsts == [SERVICE_UNKNOWN] * 100
    assert hs.state.watcher_count == 100

    extra = watch(channel, "")
    err = await rpc_error(next, extra)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert hs.state.watcher_count == 100
    assert hs.service.call_counts[("Watch", "RESOURCE_EXHAUSTED")] == 1

    # Another connection has its own allowance; unary calls on the full one still work.
    other = open_channel(hs.port)
    other_stream = watch(other, "")
    assert await next_status(other_stream) == SERVING
    assert await check(channel, "") == health_pb2.HealthCheckResponse.SERVING

    # A cancelled watcher frees its slot at once.
    streams[0].cancel()  # type: ignore[attr-defined]
    await wait_until(lambda: hs.state.watcher_count == 100)
    again = watch(channel, "")
    assert await next_status(again) == SERVING


async def test_total_watchers_are_capped(start_server: StartServer,
                                         open_channel: OpenChannel) -> None:
    hs = await start_server(HealthState(max_watchers=3))
    first, second = open_channel(hs.port), open_channel(hs.port)
    streams = [watch(first, ""), watch(second, ""), watch(second, "x")]
    assert [await next_status(s) for s in streams] == [SERVING, SERVING, SERVICE_UNKNOWN]
    for channel in (first, second):
        err = await rpc_error(next, watch(channel, ""))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert hs.state.watcher_count == 3
    # Existing watchers keep working.
    hs.set("x", NOT_SERVING)
    assert await next_status(streams[2]) == NOT_SERVING


# ----------------------------------------------------------------------------- shutdown


async def test_shutdown_ends_watchers_with_not_serving_then_unavailable(
        start_server: StartServer, open_channel: OpenChannel) -> None:
    hs = await start_server(HealthState({"a": SERVING, "b": NOT_SERVING}))
    channel = open_channel(hs.port)
    names = ("", "a", "b", "gone")
    streams = {name: watch(channel, name) for name in names}
    assert [await next_status(streams[name]) for name in names] == [
        SERVING, SERVING, NOT_SERVING, SERVICE_UNKNOWN]

    results: dict[str, tuple[list[int], grpc.StatusCode, str]] = {}

    async def reader(name: str) -> None:
        results[name] = await in_thread(read_to_end, streams[name])

    with trio.fail_after(STEP):
        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(reader, name)
            # A grace far longer than the fail_after: the watchers must not hold it up.
            await hs.shutdown(60)
    # NOT_SERVING reaches every watcher it is news to (and only those), then the stream
    # ends UNAVAILABLE so that A17 clients retry elsewhere.
    assert {name: r[0] for name, r in results.items()} == {
        "": [NOT_SERVING], "a": [NOT_SERVING], "b": [], "gone": []}
    assert {r[1] for r in results.values()} == {grpc.StatusCode.UNAVAILABLE}
    assert {r[2] for r in results.values()} == {"health server is shutting down"}
    assert hs.state.draining
    assert hs.state.watcher_count == 0
    assert hs.service.call_counts[("Watch", "UNAVAILABLE")] == 4


# ----------------------------------------------------------------------------- embedding


async def test_health_service_embedded_next_to_application_methods(
        open_channel: OpenChannel, server_config: ServerConfig) -> None:
    async def reverse(request: bytes, call: ServerCall) -> bytes:
        return request[::-1]

    def identity(data: bytes) -> bytes:
        return data

    state = HealthState({"demo.Echo": SERVING})
    server = Server([unary_unary("/demo.Echo/Reverse", reverse, identity, identity)],
                    config=server_config)
    HealthService(state).attach(server)
    assert set(server.methods) == {"/demo.Echo/Reverse", CHECK_PATH, LIST_PATH, WATCH_PATH}

    async with trio.open_nursery() as nursery:
        _host, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
        channel = open_channel(port)
        with trio.fail_after(STEP):
            echoed = await in_thread(channel.unary_unary("/demo.Echo/Reverse"), b"abc",
                                     timeout=RPC_TIMEOUT)
        assert echoed == b"cba"
        assert await check(channel, "demo.Echo") == health_pb2.HealthCheckResponse.SERVING
        stream = watch(channel, "demo.Echo")
        assert await next_status(stream) == SERVING

        with trio.fail_after(STEP):
            await server.shutdown(30)
            statuses, code, _ = await in_thread(read_to_end, stream)
        assert statuses == [NOT_SERVING]
        assert code == grpc.StatusCode.UNAVAILABLE
        # The shutdown hook drained the shared state.
        assert state.draining
        assert state.get("demo.Echo") is NOT_SERVING
