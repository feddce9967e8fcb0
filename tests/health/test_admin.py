"""The HTTP/1.1 admin API in process: routing, methods, limits, malformed input, keep-alive.

Requests are written by hand (or with an h11 client) over loopback TCP, so that exactly what
goes on the wire is under the test's control.
"""

from __future__ import annotations

import json
import logging
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
import trio.testing

from health import HealthState, ServingStatus
from health.admin import (
    AdminServer,
    AdminTokenError,
    format_address,
    is_loopback,
    read_token_file,
)

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

    def __init__(self, stream: trio.abc.Stream) -> None:
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
async def start_admin(nursery: trio.Nursery) -> StartAdmin:
    """Start AdminServers on 127.0.0.1:0; they are cancelled with the test's nursery."""

    async def start(state: HealthState | None = None, **kwargs: Any) -> Admin:
        state = state if state is not None else HealthState()
        server = AdminServer(state, **kwargs)
        _host, port = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
        return Admin(state, port, server)

    return start


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


@pytest.mark.parametrize("target", ["/", "/nope", "/healthz/", "/HEALTHZ", "/status/x"])
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


async def test_metrics_off_is_404_that_says_how_to_turn_them_on(admin: Admin) -> None:
    reply = await admin.request("GET", "/metrics")
    assert reply.status == 404
    error = reply.json["error"]
    assert error.startswith("metrics are off")
    assert "--metrics" in error
    assert "trio-grpc-health[metrics]" in error


@pytest.mark.parametrize(("target", "line"), [
    ("/healthz", "HTTP/1.1 200 OK"),
    ("/healthz?service=b", "HTTP/1.1 503 Service Unavailable"),
    ("/nope", "HTTP/1.1 404 Not Found"),
])
async def test_status_lines_carry_reason_phrases(admin: Admin, target: str, line: str) -> None:
    raw = await admin.raw(f"GET {target} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
                          .encode())
    assert split_response(raw)[0] == line
    raw = await admin.raw(b"POST /drain HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n"
                          b"connection: close\r\n\r\n")
    assert split_response(raw)[0] == "HTTP/1.1 200 OK"


async def test_extra_routes_answer_get_only(start_admin: StartAdmin) -> None:
    admin = await start_admin(
        extra_routes={"/metrics": lambda: (200, "text/plain; version=0.0.4", b"up 1\n")})
    reply = await admin.request("GET", "/metrics")
    assert (reply.status, reply.headers["content-type"], reply.body) == (
        200, "text/plain; version=0.0.4", b"up 1\n")
    refused = await admin.request("POST", "/metrics", b"x")
    assert (refused.status, refused.json) == (405, {"error": "use GET"})


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
    # A repeated key is ambiguous: refused, not guessed.
    reply = await admin.request("GET", "/healthz?service=a&service=b")
    assert reply.status == 400
    assert reply.json == {"error": "query key 'service' is repeated; give it once"}
    before = admin.state.snapshot()
    reply = await admin.request("PUT", "/status?service=a&x=1&service=b", b"UNKNOWN")
    assert reply.status == 400
    assert admin.state.snapshot() == before


@pytest.mark.parametrize("target", ["/healthz?service=%zz", "/healthz?service=a%2",
                                    "/healthz?service=%", "/status?service=%G0"])
async def test_bad_percent_escape_is_400(admin: Admin, target: str) -> None:
    before = admin.state.snapshot()
    reply = await admin.request("PUT" if target.startswith("/status") else "GET", target,
                                b"SERVING" if target.startswith("/status") else b"")
    assert reply.status == 400
    assert reply.json["error"].startswith("bad percent-escape ")
    assert "two hex digits" in reply.json["error"]
    assert admin.state.snapshot() == before


async def test_percent_decoding_of_every_byte(admin: Admin) -> None:
    name = "pkg.Svc/ä ✓%&="
    encoded = "".join(f"%{b:02X}" for b in name.encode())
    reply = await admin.request("PUT", f"/status?service={encoded}", b"SERVING")
    assert (reply.status, reply.json["service"]) == (200, name)
    assert admin.state.get(name) is SERVING


@pytest.mark.parametrize("line", [b"GET /healthz?service=\xe2\x9c\x93 HTTP/1.1",
                                  b"GET /healthz?service=\xff HTTP/1.1",
                                  b"PUT /status?service=a\x01b HTTP/1.1"])
async def test_raw_non_ascii_request_line_is_400_in_plain_words(admin: Admin,
                                                                line: bytes) -> None:
    raw = await admin.raw(line + b"\r\nhost: x\r\ncontent-length: 7\r\n\r\nSERVING")
    status_line, headers, rest = split_response(raw)
    assert status_line == "HTTP/1.1 400 Bad Request"
    assert headers["connection"] == "close"
    error = json.loads(rest)["error"]
    assert error.startswith("malformed request line: it must be ASCII")
    assert "percent-encode service names" in error
    assert "bytearray" not in error
    assert "\\x" not in error
    assert admin.state.snapshot() == {"": SERVING, "a": SERVING, "b": NOT_SERVING}


async def test_header_errors_do_not_echo_the_header(admin: Admin) -> None:
    raw = await admin.raw(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-secret s3cr3t-value\r\n\r\n")
    status_line, _headers, rest = split_response(raw)
    assert status_line == "HTTP/1.1 400 Bad Request"
    assert b"s3cr3t" not in rest


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
        # The slot frees when the server sees the close: no event to wait on from here.
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


# ----------------------------------------------------------------------------- who may change


MUTATIONS = [("PUT", "/status?service=a", b"NOT_SERVING"), ("DELETE", "/status?service=a", b""),
             ("POST", "/drain", b""), ("POST", "/resume", b""), ("POST", "/shutdown", b"")]
TOKEN = "s3cr3t-Token_value.~+/=="


def _unchanged(admin: Admin) -> bool:
    return admin.state.snapshot() == {"": SERVING, "a": SERVING, "b": NOT_SERVING} and \
        not admin.state.draining


@pytest.fixture
async def guarded(start_admin: StartAdmin) -> Admin:
    return await start_admin(HealthState({"a": SERVING, "b": NOT_SERVING}), token=TOKEN)


@pytest.mark.parametrize(("method", "target", "body"), MUTATIONS)
async def test_with_a_token_changes_need_it(guarded: Admin, method: str, target: str,
                                            body: bytes, caplog: pytest.LogCaptureFixture,
                                            ) -> None:
    missing = await guarded.request(method, target, body)
    assert missing.status == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert _unchanged(guarded)
    basic = await guarded.request(method, target, body, [("authorization", "Basic dTpw")])
    assert basic.status == 401
    assert 'error="invalid_request"' in basic.headers["www-authenticate"]
    wrong = await guarded.request(method, target, body,
                                  [("authorization", "Bearer not-the-token")])
    assert (wrong.status, wrong.json) == (403, {"error": "wrong token"})
    twice = await guarded.request(method, target, body, [("authorization", f"Bearer {TOKEN}"),
                                                         ("authorization", f"Bearer {TOKEN}")])
    assert twice.status == 401
    assert _unchanged(guarded)
    right = await guarded.request(method, target, body, [("authorization", f"bearer  {TOKEN}")])
    assert right.status in (200, 202)
    # Refusals are logged with the peer, never with what the client sent as credentials.
    assert "wrong token" in caplog.text
    assert "127.0.0.1:" in caplog.text
    assert "not-the-token" not in caplog.text
    assert TOKEN not in caplog.text


@pytest.mark.parametrize("target", ["/healthz", "/healthz?service=a", "/status"])
async def test_reading_stays_open_with_a_token(guarded: Admin, target: str) -> None:
    assert (await guarded.request("GET", target)).status == 200


async def test_metrics_stay_open_with_a_token(start_admin: StartAdmin) -> None:
    admin = await start_admin(token=TOKEN, extra_routes={"/metrics": lambda: (
        200, "text/plain; version=0.0.4", b"up 1\n")})
    assert (await admin.request("GET", "/metrics")).status == 200


async def test_token_file_is_read_once(start_admin: StartAdmin, tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}\n")
    admin = await start_admin(token_file=path)
    assert admin.server.protected
    path.write_text("changed")
    reply = await admin.request("POST", "/drain", headers=[("authorization", f"Bearer {TOKEN}")])
    assert reply.status == 200


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read the admin token file"),
    ("", "is empty"), ("\n  \n", "is empty"), ("two words", "a bearer token is letters"),
    ("caf\u00e9", "a bearer token is letters"),
])
def test_unusable_token_files(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(AdminTokenError, match=message) as info:
        AdminServer(HealthState(), token_file=path)
    assert str(path) in str(info.value)
    with pytest.raises(AdminTokenError, match=message):
        read_token_file(path)


def test_token_and_token_file_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        AdminServer(HealthState(), token="a", token_file=tmp_path / "t")


async def _over_memory(admin: AdminServer, peer: tuple[str, int], method: str, target: str,
                       body: bytes = b"", headers: list[tuple[str, str]] | None = None) -> Reply:
    # An in-memory connection that the server sees as coming from ``peer``: no traffic leaves
    # the process, yet the peer check runs exactly as for an accepted socket.
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(admin.handle_stream, server_stream, peer)
        reply = await Client(client_stream).request(method, target, body, headers)
        await client_stream.aclose()
    return reply


@pytest.mark.parametrize(("method", "target", "body"), MUTATIONS)
async def test_without_a_token_changes_need_a_loopback_peer(
        method: str, target: str, body: bytes, caplog: pytest.LogCaptureFixture) -> None:
    state = HealthState({"a": SERVING, "b": NOT_SERVING})
    admin = AdminServer(state)
    remote = ("192.0.2.7", 40000)
    refused = await _over_memory(admin, remote, method, target, body)
    assert refused.status == 403
    assert "loopback only" in refused.json["error"]
    assert "--admin-token-file" in refused.json[
        "error"]
    assert state.snapshot() == {"": SERVING, "a": SERVING, "b": NOT_SERVING}
    assert "192.0.2.7:40000" in caplog.text
    assert (await _over_memory(admin, remote, "GET", "/status")).status == 200
    assert (await _over_memory(admin, remote, "GET", "/healthz")).status == 200
    for loopback in (("127.0.0.1", 1), ("127.8.9.10", 2), ("::1", 3), ("::ffff:127.0.0.1", 4)):
        state.resume()
        state.set("a", SERVING)
        reply = await _over_memory(admin, loopback, method, target, body)
        assert reply.status in (200, 202), loopback


async def test_a_token_lets_other_peers_change_things() -> None:
    state = HealthState({"a": SERVING})
    admin = AdminServer(state, token=TOKEN)
    remote = ("2001:db8::5", 40000)
    assert (await _over_memory(admin, remote, "POST", "/drain")).status == 401
    reply = await _over_memory(admin, remote, "POST", "/drain",
                               headers=[("authorization", f"Bearer {TOKEN}")])
    assert reply.status == 200
    assert state.draining


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.255.0.9", True), ("::1", True), ("::ffff:127.0.0.2", True),
    ("10.0.0.1", False), ("192.0.2.1", False), ("::ffff:192.0.2.1", False), ("2001:db8::1", False),
    ("0.0.0.0", False), ("::", False), ("localhost", False), ("", False), ("fe80::1%eth0", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_format_address_brackets_ipv6() -> None:
    assert format_address("::1", 8081) == "[::1]:8081"
    assert format_address("127.0.0.1", 8081) == "127.0.0.1:8081"


async def test_ipv6_listener_logs_the_peer_in_brackets(
        nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    state = HealthState()
    admin = AdminServer(state)
    try:
        host, port = await nursery.start(admin.serve_tcp, "::1", 0)
    except OSError as exc:
        pytest.skip(f"cannot listen on ::1: {exc}")
    assert host == "::1"
    caplog.set_level(logging.INFO, logger="health.admin")
    async with await trio.open_tcp_stream("::1", port) as stream:
        reply = await Client(stream).request("PUT", "/status?service=v6", b"SERVING")
    assert reply.status == 200
    assert re.search(r"admin: PUT /status service='v6' from \[::1\]:\d+: 200 OK", caplog.text)
