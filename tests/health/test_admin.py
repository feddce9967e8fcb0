"""The HTTP/1.1 admin API in process: routing, methods, limits, malformed input, keep-alive.

Requests are written by hand (or with an h11 client) over loopback TCP, so that exactly what
goes on the wire is under the test's control.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import h11
import pytest
import trio

from health import HealthState, ServingStatus
from health.admin import AdminServer

SERVING = ServingStatus.SERVING
NOT_SERVING = ServingStatus.NOT_SERVING
UNKNOWN = ServingStatus.UNKNOWN

STEP = 5.0


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        assert self.headers["content-type"] == "application/json"
        return json.loads(self.body)


class Client:
    """An h11 client on one connection; requests on it are kept alive."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def request(self, method: str, target: str, body: bytes = b"",
                      headers: list[tuple[str, str]] | None = None) -> Reply:
        hdrs = [("host", "admin.test"), *(headers or [])]
        if body or method in ("PUT", "POST"):
            hdrs.append(("content-length", str(len(body))))
        out = self.conn.send(h11.Request(method=method, target=target, headers=hdrs)) or b""
        if body:
            out += self.conn.send(h11.Data(data=body)) or b""
        out += self.conn.send(h11.EndOfMessage()) or b""
        with trio.fail_after(STEP):
            await self.stream.send_all(out)
            response: h11.Response | None = None
            chunks = []
            while True:
                event = self.conn.next_event()
                if event is h11.NEED_DATA:
                    self.conn.receive_data(await self.stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    chunks.append(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    raise AssertionError(f"unexpected {event!r}")
        assert response is not None
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        headers = {k.decode(): v.decode() for k, v in response.headers}
        return Reply(response.status_code, headers, b"".join(chunks))


Request = Callable[..., Awaitable[Reply]]


@dataclass
class Admin:
    state: HealthState
    port: int
    server: AdminServer

    async def connect(self) -> trio.SocketStream:
        return await trio.open_tcp_stream("127.0.0.1", self.port)

    async def request(self, method: str, target: str, body: bytes = b"",
                      headers: list[tuple[str, str]] | None = None) -> Reply:
        """One request on a fresh connection."""
        async with await self.connect() as stream:
            return await Client(stream).request(method, target, body, headers)

    async def raw(self, data: bytes) -> bytes:
        """Send raw bytes, then read until the server closes the connection."""
        async with await self.connect() as stream:
            await stream.send_all(data)
            received = b""
            with trio.fail_after(STEP):
                while chunk := await stream.receive_some(65536):
                    received += chunk
            return received


StartAdmin = Callable[..., Awaitable[Admin]]


@pytest.fixture
async def start_admin(nursery: trio.Nursery) -> AsyncIterator[StartAdmin]:
    """Start AdminServers on 127.0.0.1:0; they are cancelled with the test's nursery."""

    async def start(state: HealthState | None = None, **kwargs: Any) -> Admin:
        state = state if state is not None else HealthState()
        server = AdminServer(state, **kwargs)
        _host, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
        return Admin(state, port, server)

    yield start


@pytest.fixture
async def admin(start_admin: StartAdmin) -> Admin:
    return await start_admin(HealthState({"a": SERVING, "b": NOT_SERVING}))


def split_response(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    """Parse one complete raw HTTP/1.1 response (status line, headers, rest)."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep, raw
    status_line, *lines = head.decode().split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status_line, headers, rest


# ----------------------------------------------------------------------------- routing


@pytest.mark.parametrize("target", ["/", "/nope", "/healthz/", "/HEALTHZ", "/status/x",
                                    "/metrics"])
async def test_unknown_path_is_404(admin: Admin, target: str) -> None:
    reply = await admin.request("GET", target)
    assert reply.status == 404
    path = target.split("?")[0]
    assert reply.json == {"error": f"no such endpoint {path}"}


@pytest.mark.parametrize(("method", "target"), [
    ("POST", "/healthz"),
    ("PUT", "/healthz?service=a"),
    ("DELETE", "/healthz"),
    ("POST", "/status?service=a"),
    ("PATCH", "/status?service=a"),
    ("GET", "/drain"),
    ("PUT", "/drain"),
    ("GET", "/resume"),
    ("GET", "/shutdown"),
    ("DELETE", "/shutdown"),
])
async def test_wrong_method_is_405_and_changes_nothing(admin: Admin, method: str,
                                                       target: str) -> None:
    before = admin.state.snapshot()
    reply = await admin.request(method, target, b"NOT_SERVING" if method != "GET" else b"")
    assert reply.status == 405
    assert reply.json["error"].startswith("use ")
    assert admin.state.snapshot() == before
    assert not admin.state.draining


async def test_extra_routes_answer_get_only(start_admin: StartAdmin) -> None:
    admin = await start_admin(
        extra_routes={"/metrics": lambda: (200, "text/plain; version=0.0.4", b"up 1\n")})
    reply = await admin.request("GET", "/metrics")
    assert (reply.status, reply.headers["content-type"], reply.body) == (
        200, "text/plain; version=0.0.4", b"up 1\n")
    assert (await admin.request("POST", "/metrics", b"x")).status == 404


# ----------------------------------------------------------------------------- service names


async def test_empty_service_name_is_the_server(admin: Admin) -> None:
    assert (await admin.request("GET", "/healthz?service=")).json == {
        "service": "", "status": "SERVING"}
    reply = await admin.request("PUT", "/status?service=", b"NOT_SERVING")
    assert (reply.status, reply.json) == (200, {"service": "", "status": "NOT_SERVING",
                                                "draining": False})
    assert admin.state.get("") is NOT_SERVING
    for target in ("/healthz", "/healthz?service=", "/healthz?service"):
        reply = await admin.request("GET", target)
        assert (reply.status, reply.json) == (503, {"service": "", "status": "NOT_SERVING"})

    reply = await admin.request("DELETE", "/status?service=")
    assert (reply.status, reply.json) == (200, {"service": "", "removed": True})
    assert "" not in admin.state
    reply = await admin.request("GET", "/healthz")
    assert reply.status == 404
    assert reply.json["status"] == "SERVICE_UNKNOWN"


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
async def test_changing_without_a_service_parameter_is_400(admin: Admin, method: str) -> None:
    before = admin.state.snapshot()
    reply = await admin.request(method, "/status", b"NOT_SERVING")
    assert reply.status == 400
    assert "service=" in reply.json["error"]
    assert admin.state.snapshot() == before


async def test_percent_encoded_names_and_last_value_wins(admin: Admin) -> None:
    reply = await admin.request("PUT", "/status?service=%E2%9C%93%20ok%2Bplus", b"SERVING")
    assert reply.json["service"] == "✓ ok+plus"
    assert admin.state.get("✓ ok+plus") is SERVING
    # "+" in a query is a space.
    assert (await admin.request("GET", "/healthz?service=%E2%9C%93+ok%2Bplus")).status == 200
    # Repeated parameter: the last one counts.
    reply = await admin.request("GET", "/healthz?service=a&service=b")
    assert (reply.status, reply.json["service"]) == (503, "b")


@pytest.mark.parametrize("target", ["/healthz?service=%ff", "/status?service=%C3%28"])
async def test_query_not_utf8_is_400(admin: Admin, target: str) -> None:
    before = admin.state.snapshot()
    reply = await admin.request("PUT" if target.startswith("/status") else "GET", target,
                                b"SERVING" if target.startswith("/status") else b"")
    assert reply.status == 400
    assert reply.json == {"error": "query is not valid UTF-8"}
    assert admin.state.snapshot() == before


async def test_service_name_too_long_is_400(admin: Admin) -> None:
    name = "x" * (admin.state.max_service_name_bytes + 1)
    reply = await admin.request("PUT", f"/status?service={name}", b"SERVING")
    assert reply.status == 400
    assert "limit is 1024" in reply.json["error"]
    assert name not in admin.state


# ----------------------------------------------------------------------------- bodies


@pytest.mark.parametrize(("body", "expected"), [
    (b"SERVING", SERVING), (b"not_serving", NOT_SERVING), (b"  Unknown\r\n", UNKNOWN),
])
async def test_put_accepts_status_names_in_any_case(admin: Admin, body: bytes,
                                                    expected: ServingStatus) -> None:
    admin.state.set("a", NOT_SERVING if expected is SERVING else SERVING)
    reply = await admin.request("PUT", "/status?service=a", body)
    assert (reply.status, reply.json) == (200, {"service": "a", "status": expected.name,
                                                "draining": False})
    assert admin.state.get("a") is expected


@pytest.mark.parametrize("body", [b"", b"SERVICE_UNKNOWN", b"1", b"SERV ING", b"\xff",
                                  b"SERVING\x00"])
async def test_put_rejects_other_bodies(admin: Admin, body: bytes) -> None:
    reply = await admin.request("PUT", "/status?service=a", body)
    assert reply.status == 400
    assert reply.json["error"].startswith("status must be one of")
    assert admin.state.get("a") is SERVING


async def test_body_at_the_limit_passes_and_above_it_is_413(admin: Admin) -> None:
    limit = 4096
    body = b" " * (limit - len(b"NOT_SERVING")) + b"NOT_SERVING"
    assert len(body) == limit
    assert (await admin.request("PUT", "/status?service=a", body)).status == 200
    assert admin.state.get("a") is NOT_SERVING

    for size in (limit + 1, 100_000):
        head = (f"PUT /status?service=a HTTP/1.1\r\nhost: x\r\ncontent-length: {size}\r\n"
                "\r\n").encode()
        raw = await admin.raw(head + b"S" * size)
        status_line, headers, rest = split_response(raw)
        assert status_line.startswith("HTTP/1.1 413")
        assert headers["connection"] == "close"
        assert json.loads(rest) == {"error": "request body larger than 4096 bytes"}
    assert admin.state.get("a") is NOT_SERVING


async def test_chunked_body_above_a_custom_limit_is_413(start_admin: StartAdmin) -> None:
    admin = await start_admin(max_body=16)
    chunk = b"SERVING" + b" " * 10
    raw = await admin.raw(
        b"PUT /status?service=c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
        + f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n0\r\n\r\n")
    status_line, _headers, rest = split_response(raw)
    assert status_line.startswith("HTTP/1.1 413")
    assert json.loads(rest) == {"error": "request body larger than 16 bytes"}
    assert "c" not in admin.state
    # Chunked within the limit is fine.
    raw = await admin.raw(
        b"PUT /status?service=c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n"
        b"connection: close\r\n\r\n4\r\nSERV\r\n3\r\nING\r\n0\r\n\r\n")
    assert split_response(raw)[0].startswith("HTTP/1.1 200")
    assert admin.state.get("c") is SERVING


# ----------------------------------------------------------------------------- malformed HTTP


@pytest.mark.parametrize("data", [
    b"GARBAGE\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
    b"GET /healthz HTTP/1.1\r\nhost: x\r\ncontent-length: nope\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # a TLS ClientHello
])
async def test_malformed_http_is_400_and_closes(admin: Admin, data: bytes) -> None:
    raw = await admin.raw(data)
    status_line, headers, rest = split_response(raw)
    assert status_line.startswith(("HTTP/1.1 400", "HTTP/1.1 505")), status_line
    assert headers["connection"] == "close"
    assert "error" in json.loads(rest)
    assert admin.state.snapshot() == {"": SERVING, "a": SERVING, "b": NOT_SERVING}


async def test_oversized_headers_are_431(admin: Admin) -> None:
    raw = await admin.raw(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: "
                          + b"a" * 100_000 + b"\r\n\r\n")
    assert split_response(raw)[0].startswith("HTTP/1.1 431")


async def test_eof_before_any_request_just_closes(admin: Admin) -> None:
    async with await admin.connect() as stream:
        await stream.send_eof()
        with trio.fail_after(STEP):
            assert await stream.receive_some(100) == b""


# ----------------------------------------------------------------------------- HEAD, keep-alive


async def test_head_healthz_has_headers_and_no_body(admin: Admin) -> None:
    get = await admin.request("GET", "/healthz?service=b")
    # HEAD then GET pipelined on one connection: the HEAD answer must carry no body, or the
    # GET answer would be misread.
    raw = await admin.raw(b"HEAD /healthz?service=b HTTP/1.1\r\nhost: x\r\n\r\n"
                          b"GET /healthz?service=b HTTP/1.1\r\nhost: x\r\n"
                          b"connection: close\r\n\r\n")
    head_line, head_headers, rest = split_response(raw)
    assert head_line.startswith("HTTP/1.1 503")
    assert head_headers["content-length"] == str(len(get.body))
    get_line, _get_headers, get_body = split_response(rest)
    assert get_line.startswith("HTTP/1.1 503")
    assert get_body == get.body


async def test_keep_alive_and_pipelining(admin: Admin) -> None:
    async with await admin.connect() as stream:
        client = Client(stream)
        for status in ("NOT_SERVING", "SERVING", "UNKNOWN"):
            reply = await client.request("PUT", "/status?service=k", status.encode())
            assert reply.json["status"] == status
        assert (await client.request("GET", "/healthz?service=k")).json == {
            "service": "k", "status": "UNKNOWN"}
    raw = await admin.raw(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n" * 3
                          + b"GET /healthz?service=b HTTP/1.1\r\nhost: x\r\n"
                          b"connection: close\r\n\r\n")
    assert raw.count(b"HTTP/1.1 200") == 3
    assert raw.count(b"HTTP/1.1 503") == 1
    assert raw.index(b"HTTP/1.1 503") > raw.rindex(b"HTTP/1.1 200")


async def test_idle_connection_is_closed(start_admin: StartAdmin) -> None:
    admin = await start_admin(idle_timeout=0.2)
    async with await admin.connect() as stream:
        with trio.fail_after(STEP):
            assert await stream.receive_some(100) == b""


async def test_connections_above_the_cap_get_503(start_admin: StartAdmin) -> None:
    admin = await start_admin(max_connections=1)
    async with await admin.connect() as first:
        client = Client(first)
        assert (await client.request("GET", "/healthz")).status == 200
        raw = await admin.raw(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        status_line, headers, rest = split_response(raw)
        assert status_line.startswith("HTTP/1.1 503")
        assert headers["connection"] == "close"
        assert json.loads(rest) == {"error": "too many admin connections"}
        # The held connection still works.
        assert (await client.request("GET", "/healthz")).status == 200
    # Its slot is freed once it closes.
    with trio.fail_after(STEP):
        while (reply := await admin.request("GET", "/healthz")).status == 503:  # noqa: ASYNC110
            await trio.sleep(0.01)
    assert reply.status == 200


# ----------------------------------------------------------------------------- drain, shutdown


async def test_drain_resume_and_status(admin: Admin) -> None:
    assert (await admin.request("POST", "/drain")).json == {"draining": True}
    assert admin.state.draining
    reply = await admin.request("GET", "/status")
    assert reply.json == {"statuses": {"": "NOT_SERVING", "a": "NOT_SERVING",
                                       "b": "NOT_SERVING"}, "draining": True}
    # Set during the drain: remembered, not shown.
    assert (await admin.request("PUT", "/status?service=b", b"SERVING")).status == 200
    assert (await admin.request("GET", "/healthz?service=b")).status == 503
    # Draining twice is harmless.
    assert (await admin.request("POST", "/drain")).status == 200

    assert (await admin.request("POST", "/resume")).json == {"draining": False}
    reply = await admin.request("GET", "/status")
    assert reply.json == {"statuses": {"": "SERVING", "a": "SERVING", "b": "SERVING"},
                          "draining": False}


async def test_shutdown_and_resume_callbacks(start_admin: StartAdmin) -> None:
    calls: list[str] = []
    admin = await start_admin(on_shutdown=lambda: calls.append("shutdown"),
                              on_resume=lambda: calls.append("resume"))
    reply = await admin.request("POST", "/shutdown")
    assert (reply.status, reply.json) == (202, {"draining": True})
    assert (await admin.request("POST", "/resume")).status == 200
    assert calls == ["shutdown", "resume"]
    # The callbacks replace the default actions.
    assert not admin.state.draining


async def test_shutdown_without_callback_drains(admin: Admin) -> None:
    reply = await admin.request("POST", "/shutdown")
    assert (reply.status, reply.json) == (202, {"draining": True})
    assert admin.state.draining
    assert admin.state.get("a") is NOT_SERVING
