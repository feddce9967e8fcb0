"""The HTTP/1.1 admin side port, built on h11: read and change health without gRPC.

Endpoints (names are UTF-8, percent-encoded in the query; the empty name is ``service=``):

=========================  ==============================================================
``GET /healthz``           ``""``'s health: 200 when SERVING, 503 otherwise, 404 unknown
``GET /healthz?service=N`` the same for service ``N``
``GET /status``            every status as JSON (like List), plus ``draining``
``PUT /status?service=N``  body ``SERVING``, ``NOT_SERVING`` or ``UNKNOWN``: set it
``DELETE /status?service=N``  forget ``N`` (Check then says NOT_FOUND)
``POST /drain``            every service NOT_SERVING (pushed to watchers); keep serving
``POST /resume``           end a drain: each service gets back its last set status
``POST /shutdown``         graceful drain, then the process exits
=========================  ==============================================================

``GET /metrics`` is there when metrics are on (``extra_routes``); otherwise it is a 404 that
says how to turn them on.

Who may change things: the mutating endpoints (PUT/DELETE ``/status``, ``/drain``, ``/resume``,
``/shutdown``) need ``Authorization: Bearer <token>`` when the server has a token (401 with
``WWW-Authenticate: Bearer`` without one, 403 for a wrong one, compared in constant time);
without a token they are accepted from loopback peers only (403 otherwise), so listening on
``0.0.0.0`` for Prometheus never opens them to the network. ``GET /healthz``, ``GET /status``
and ``GET /metrics`` stay open.

Every answer is a small JSON object, with a reason phrase on its status line. Requests are
handled one at a time per keep-alive connection and none of them waits on watchers (setting a
status only wakes them), so a burst of PUTs is as quick as the parsing. Bodies are capped, a
connection idle too long is closed, and connections are capped in number. A service name is
percent-decoded UTF-8 (``+`` is a space, as in forms); a bad escape, a repeated query key or
raw non-ASCII bytes in the request line are a 400 with a plain message.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

import h11
import trio

from .errors import HealthError
from .state import HealthState
from .status import ServingStatus

__all__ = ["AdminServer", "AdminTokenError", "format_address", "is_loopback",
           "read_token_file"]

logger = logging.getLogger("health.admin")

_SETTABLE = {"SERVING", "NOT_SERVING", "UNKNOWN"}
# Bounds of the lingering close after an error answer (see _linger).
_LINGER_SECONDS = 1.0
_LINGER_BYTES = 1024 * 1024
_JSON = "application/json"
# The requests that change something; the rest only read.
_MUTATIONS = {("/status", "PUT"), ("/status", "DELETE"), ("/drain", "POST"),
              ("/resume", "POST"), ("/shutdown", "POST")}
# RFC 6750 section 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(rb"[A-Za-z0-9\-._~+/]+=*")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_METRICS_OFF = ("metrics are off: start the server with --metrics (or metrics = true in the "
                "config file); they need the metrics extra: "
                "pip install 'trio-grpc-health[metrics]'")

Route = Callable[[], tuple[int, str, bytes]]


class AdminTokenError(HealthError):
    """The admin token (or its file) cannot be used."""


def read_token_file(path: str | os.PathLike[str]) -> str:
    """The bearer token in ``path``, whitespace around it dropped; AdminTokenError if unusable."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(64 * 1024 + 1)
    except (OSError, UnicodeDecodeError) as exc:
        raise AdminTokenError(f"cannot read the admin token file {os.fspath(path)}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
    if len(text) > 64 * 1024:
        raise AdminTokenError(f"admin token file {os.fspath(path)} is larger than 64 KiB")
    return _check_token(text.strip(), f"admin token file {os.fspath(path)}")


def _check_token(token: str, where: str) -> str:
    if not token:
        raise AdminTokenError(f"{where} is empty")
    if not _B64TOKEN.fullmatch(token.encode("utf-8")):
        raise AdminTokenError(f"{where}: a bearer token is letters, digits and -._~+/ "
                              "(then optional '=' padding)")
    return token


def is_loopback(host: str) -> bool:
    """True for a loopback address (127.0.0.0/8, ::1, or 127.x mapped into IPv6)."""
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def format_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets (``[::1]:8081``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    query: Mapping[str, str]
    body: bytes
    authorization: list[bytes]
    peer: tuple[str, int] | None

    @property
    def service(self) -> str:
        return self.query.get("service", "")

    @property
    def peer_text(self) -> str:
        return format_address(*self.peer) if self.peer is not None else "an unknown peer"


@dataclass(frozen=True)
class _Answer:
    status: int
    payload: Any
    ctype: str = _JSON
    headers: tuple[tuple[str, str], ...] = field(default=())


class AdminServer:
    """An HTTP/1.1 server exposing a ``HealthState``.

    ``token`` (or ``token_file``, read once here) protects the mutating endpoints; without
    either they accept loopback peers only. Listen with ``serve_tcp(host, port)``.
    """

    def __init__(
        self,
        state: HealthState,
        *,
        on_shutdown: Callable[[], None] | None = None,
        on_resume: Callable[[], None] | None = None,
        max_body: int = 4096,
        idle_timeout: float = 60.0,
        max_connections: int = 64,
        extra_routes: dict[str, Route] | None = None,
        token: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
    ) -> None:
        if token is not None and token_file is not None:
            raise ValueError("give token or token_file, not both")
        self.state = state
        self._on_shutdown = on_shutdown
        self._on_resume = on_resume
        self._max_body = max_body
        self._idle_timeout = idle_timeout
        self._connections = trio.CapacityLimiter(max_connections)
        # GET routes added by other parts (e.g. /metrics): path -> () -> (status, type, body).
        self.extra_routes = dict(extra_routes or {})
        if token_file is not None:
            token = read_token_file(token_file)
        elif token is not None:
            token = _check_token(token.strip(), "the admin token")
        self._token = token.encode("utf-8") if token is not None else None
        self._handlers: dict[str, Callable[[_Request], _Answer]] = {
            "/healthz": self._healthz, "/status": self._status, "/drain": self._drain,
            "/resume": self._resume, "/shutdown": self._shutdown,
        }

    @property
    def protected(self) -> bool:
        """True when the mutating endpoints need the bearer token (else: loopback only)."""
        return self._token is not None

    async def serve_tcp(
        self,
        host: str | None = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host`` (None: every interface) and serve until cancelled.

        ``nursery.start`` returns the bound ``(host, port)``.
        """
        listeners = await trio.open_tcp_listeners(port, host=host)
        addr = listeners[0].socket.getsockname()
        async with trio.open_nursery() as nursery:
            task_status.started((addr[0], addr[1]))
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            name = stream.socket.getpeername()
            peer: tuple[str, int] | None = (str(name[0]), int(name[1]))
        except (OSError, IndexError, TypeError):
            peer = None
        await self.handle_stream(stream, peer)

    async def handle_stream(self, stream: trio.abc.HalfCloseableStream,
                            peer: tuple[str, int] | None = None) -> None:
        """Serve one accepted connection from ``peer`` (``(host, port)``) until it ends."""
        try:
            self._connections.acquire_nowait()
        except trio.WouldBlock:
            await _reply_raw(stream, 503, {"error": "too many admin connections"})
            await _linger(stream)
            await stream.aclose()
            return
        try:
            await self._serve_connection(stream, peer)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._connections.release()
            await trio.aclose_forcefully(stream)

    async def _serve_connection(self, stream: trio.abc.HalfCloseableStream,
                                peer: tuple[str, int] | None) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        while True:
            try:
                with trio.fail_after(self._idle_timeout):
                    request, body = await self._read_request(stream, conn)
                if request is None:
                    return
                parsed = _parse_request(request, body, peer)
            except trio.TooSlowError:
                return
            except _BadRequest as exc:
                await self._send(stream, conn, _Answer(exc.status, {"error": exc.message}),
                                 close=True)
                await _linger(stream)
                return
            answer = self._route(parsed)
            await self._send(stream, conn, answer, head=request.method == b"HEAD")
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _read_request(
        self, stream: trio.abc.ReceiveStream, conn: h11.Connection
    ) -> tuple[h11.Request | None, bytes]:
        request: h11.Request | None = None
        body = bytearray()
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise _BadRequest(exc.error_status_hint, _plain(str(exc))) from None
            if event is h11.NEED_DATA:
                data = bytes(await stream.receive_some(16 * 1024))
                try:
                    conn.receive_data(data)
                except h11.RemoteProtocolError as exc:
                    raise _BadRequest(exc.error_status_hint, _plain(str(exc))) from None
                if not data and request is None:
                    return None, b""
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self._max_body:
                    raise _BadRequest(413, f"request body larger than {self._max_body} bytes")
            elif isinstance(event, h11.EndOfMessage):
                return request, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                return None, b""

    async def _send(self, stream: trio.abc.SendStream, conn: h11.Connection, answer: _Answer,
                    *, close: bool = False, head: bool = False) -> None:
        payload = answer.payload
        body = payload if isinstance(payload, bytes) else (
            json.dumps(payload, ensure_ascii=False) + "\n").encode()
        headers = [("content-type", answer.ctype), ("content-length", str(len(body))),
                   *answer.headers]
        if close:
            headers.append(("connection", "close"))
        try:
            data = conn.send(h11.Response(status_code=answer.status, headers=headers,
                                          reason=_reason(answer.status))) or b""
            # A HEAD answer carries the GET headers (content-length included) but no body;
            # h11 refuses body bytes after a HEAD request.
            if not head:
                data += conn.send(h11.Data(data=body)) or b""
            data += conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            return
        await stream.send_all(data)

    # ------------------------------------------------------------------ routing

    def _route(self, request: _Request) -> _Answer:
        path = request.path
        if path in self.extra_routes:
            if request.method != "GET":
                return _Answer(405, {"error": "use GET"})
            status, ctype, data = self.extra_routes[path]()
            return _Answer(status, data, ctype)
        handler = self._handlers.get(path)
        if handler is None:
            if path == "/metrics":
                return _Answer(404, {"error": _METRICS_OFF})
            return _Answer(404, {"error": f"no such endpoint {path}"})
        if (path, request.method) in _MUTATIONS:
            refused = self._authorize(request)
            if refused is not None:
                return refused
            answer = handler(request)
            logger.info("admin: %s %s%s from %s: %d %s", request.method, path,
                        f" service={request.service!r}" if path == "/status" else "",
                        request.peer_text, answer.status, _reason(answer.status).decode())
            return answer
        return handler(request)

    def _authorize(self, request: _Request) -> _Answer | None:
        """None when ``request`` may change things, else the refusal to send."""
        if self._token is None:
            if request.peer is not None and is_loopback(request.peer[0]):
                return None
            logger.warning("admin: refused %s %s from %s: no token configured, so changes "
                           "are accepted from loopback only", request.method, request.path,
                           request.peer_text)
            return _Answer(403, {"error": "changes are accepted from loopback only; give the "
                                          "admin API a token (--admin-token-file) to allow "
                                          "other peers"})
        # RFC 6750 section 3: a request without credentials gets 401 and a challenge.
        if len(request.authorization) != 1:
            logger.warning("admin: refused %s %s from %s: %s Authorization header",
                           request.method, request.path, request.peer_text,
                           "no" if not request.authorization else "more than one")
            return _Answer(401, {"error": "this endpoint needs Authorization: Bearer <token>"},
                           headers=(("www-authenticate", 'Bearer realm="trio-grpc-health"'),))
        scheme, _, credentials = request.authorization[0].strip().partition(b" ")
        if scheme.lower() != b"bearer" or not credentials.strip():
            logger.warning("admin: refused %s %s from %s: not a bearer token", request.method,
                           request.path, request.peer_text)
            return _Answer(401, {"error": "this endpoint needs Authorization: Bearer <token>"},
                           headers=(("www-authenticate",
                                     'Bearer realm="trio-grpc-health", error="invalid_request"'),))
        if not hmac.compare_digest(credentials.strip(), self._token):
            logger.warning("admin: refused %s %s from %s: wrong token", request.method,
                           request.path, request.peer_text)
            return _Answer(403, {"error": "wrong token"})
        return None

    def _healthz(self, request: _Request) -> _Answer:
        if request.method not in ("GET", "HEAD"):
            return _Answer(405, {"error": "use GET"})
        service = request.service
        current = self.state.get(service)
        if current is None:
            return _Answer(404, {"service": service, "status": "SERVICE_UNKNOWN",
                                 "error": "unknown service"})
        code = 200 if current is ServingStatus.SERVING else 503
        return _Answer(code, {"service": service, "status": current.name})

    def _status(self, request: _Request) -> _Answer:
        if request.method == "GET":
            statuses = {name: st.name for name, st in self.state.snapshot().items()}
            return _Answer(200, {"statuses": statuses, "draining": self.state.draining})
        if request.method not in ("PUT", "DELETE"):
            return _Answer(405, {"error": "use GET, PUT or DELETE"})
        if "service" not in request.query:
            return _Answer(400, {"error": "missing ?service= (use service= for the server)"})
        service = request.service
        if request.method == "DELETE":
            if service not in self.state:
                return _Answer(404, {"service": service, "error": "unknown service"})
            self.state.remove(service)
            return _Answer(200, {"service": service, "removed": True})
        name = request.body.decode("utf-8", "replace").strip().upper()
        if name not in _SETTABLE:
            return _Answer(400, {"error": f"status must be one of {sorted(_SETTABLE)}, "
                                          f"got {name!r}"})
        try:
            self.state.set(service, ServingStatus[name])
        except HealthError as exc:
            return _Answer(400, {"error": str(exc)})
        return _Answer(200, {"service": service, "status": name,
                             "draining": self.state.draining})

    def _shutdown(self, request: _Request) -> _Answer:
        if request.method != "POST":
            return _Answer(405, {"error": "use POST"})
        if self._on_shutdown is not None:
            self._on_shutdown()
        else:
            self.state.shutdown()
        return _Answer(202, {"draining": True})

    def _drain(self, request: _Request) -> _Answer:
        if request.method != "POST":
            return _Answer(405, {"error": "use POST"})
        self.state.shutdown()
        return _Answer(200, {"draining": True})

    def _resume(self, request: _Request) -> _Answer:
        if request.method != "POST":
            return _Answer(405, {"error": "use POST"})
        if self._on_resume is not None:
            self._on_resume()
        else:
            self.state.resume()
        return _Answer(200, {"draining": self.state.draining})


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def _plain(message: str) -> str:
    """h11's error text without the raw bytes it quotes (they may be header values)."""
    if message.startswith("illegal request line"):
        return ("malformed request line: it must be ASCII without control characters; "
                "percent-encode service names as UTF-8 (for example %E2%9C%93)")
    head, sep, _ = message.partition(": bytearray(")
    return head if sep else message


def _parse_query(query: str) -> dict[str, str]:
    """Decode ``a=1&b=2`` (percent-escapes as UTF-8, ``+`` a space); _BadRequest if it is bad."""
    result: dict[str, str] = {}
    for part in query.split("&") if query else ():
        if not part:
            continue
        raw_key, _, raw_value = part.partition("=")
        key, value = _unquote(raw_key), _unquote(raw_value)
        if key in result:
            raise _BadRequest(400, f"query key {key!r} is repeated; give it once")
        result[key] = value
    return result


def _unquote(text: str) -> str:
    # RFC 3986 section 2.1: pct-encoded = "%" HEXDIG HEXDIG
    bad = _BAD_ESCAPE.search(text)
    if bad is not None:
        raise _BadRequest(400, f"bad percent-escape {text[bad.start():bad.start() + 3]!r} in "
                               "the query (use %XX with two hex digits)")
    try:
        return unquote_to_bytes(text.replace("+", " ")).decode("utf-8")
    except UnicodeDecodeError:
        raise _BadRequest(400, "query is not valid UTF-8") from None


def _parse_request(request: h11.Request, body: bytes,
                   peer: tuple[str, int] | None) -> _Request:
    # h11 accepts only visible ASCII in the request line, so these decodes cannot fail.
    parts = urlsplit(request.target.decode("ascii"))
    return _Request(method=request.method.decode("ascii"), path=parts.path,
                    query=_parse_query(parts.query), body=body,
                    authorization=[v for k, v in request.headers if k == b"authorization"],
                    peer=peer)


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status if 400 <= status < 600 else 400
        self.message = message


async def _reply_raw(stream: trio.abc.SendStream, status: int, payload: Any) -> None:
    # Written by hand: h11 only lets a server answer after reading a request, and this answer
    # (connection refused for capacity) is sent before reading anything.
    body = (json.dumps(payload) + "\n").encode()
    head = (f"HTTP/1.1 {status} {_reason(status).decode()}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
    try:
        await stream.send_all(head + body)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _linger(stream: trio.abc.HalfCloseableStream) -> None:
    """Close in stages after an error answer sent before the whole request was read.

    RFC 9112 section 9.6: closing at once with unread request bytes makes the kernel send a
    TCP reset, which can destroy our answer (a 413, 400 or 503) before the client reads it.
    So stop sending, then read and drop what the client still sends, within bounds.
    """
    with trio.move_on_after(_LINGER_SECONDS):
        try:
            await stream.send_eof()
            received = 0
            while received < _LINGER_BYTES:
                data = await stream.receive_some(16 * 1024)
                if not data:
                    return
                received += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
