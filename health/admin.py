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

Every answer is a small JSON object. Requests are handled one at a time per keep-alive
connection and none of them waits on watchers (setting a status only wakes them), so a burst of
PUTs is as quick as the parsing. Bodies are capped, a connection idle too long is closed, and
connections are capped in number.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
import trio

from .errors import HealthError
from .state import HealthState
from .status import ServingStatus

__all__ = ["AdminServer"]

logger = logging.getLogger("health.admin")

_SETTABLE = {"SERVING", "NOT_SERVING", "UNKNOWN"}
# Bounds of the lingering close after an error answer (see _linger).
_LINGER_SECONDS = 1.0
_LINGER_BYTES = 1024 * 1024


class AdminServer:
    """An HTTP/1.1 server exposing a ``HealthState``."""

    def __init__(
        self,
        state: HealthState,
        *,
        on_shutdown: Callable[[], None] | None = None,
        on_resume: Callable[[], None] | None = None,
        max_body: int = 4096,
        idle_timeout: float = 60.0,
        max_connections: int = 64,
        extra_routes: dict[str, Callable[[], tuple[int, str, bytes]]] | None = None,
    ) -> None:
        self.state = state
        self._on_shutdown = on_shutdown
        self._on_resume = on_resume
        self._max_body = max_body
        self._idle_timeout = idle_timeout
        self._connections = trio.CapacityLimiter(max_connections)
        # GET routes added by other parts (e.g. /metrics): path -> () -> (status, type, body).
        self.extra_routes = dict(extra_routes or {})

    async def serve_tcp(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen and serve until cancelled; ``nursery.start`` returns the bound address."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        addr = listeners[0].socket.getsockname()
        async with trio.open_nursery() as nursery:
            task_status.started((addr[0], addr[1]))
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            self._connections.acquire_nowait()
        except trio.WouldBlock:
            await _reply_raw(stream, 503, {"error": "too many admin connections"})
            await _linger(stream)
            await stream.aclose()
            return
        try:
            await self._serve_connection(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._connections.release()
            await trio.aclose_forcefully(stream)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        while True:
            try:
                with trio.fail_after(self._idle_timeout):
                    request, body = await self._read_request(stream, conn)
            except trio.TooSlowError:
                return
            except _BadRequest as exc:
                await self._send(stream, conn, exc.status, {"error": exc.message}, close=True)
                await _linger(stream)
                return
            if request is None:
                return
            status, payload, ctype = self._route(request, body)
            await self._send(stream, conn, status, payload, ctype=ctype,
                             head=request.method == b"HEAD")
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _read_request(
        self, stream: trio.SocketStream, conn: h11.Connection
    ) -> tuple[h11.Request | None, bytes]:
        request: h11.Request | None = None
        body = bytearray()
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise _BadRequest(exc.error_status_hint, str(exc)) from None
            if event is h11.NEED_DATA:
                data = await stream.receive_some(16 * 1024)
                try:
                    conn.receive_data(data)
                except h11.RemoteProtocolError as exc:
                    raise _BadRequest(exc.error_status_hint, str(exc)) from None
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

    async def _send(self, stream: trio.SocketStream, conn: h11.Connection, status: int,
                    payload: Any, *, ctype: str = "application/json", close: bool = False,
                    head: bool = False) -> None:
        body = payload if isinstance(payload, bytes) else (
            json.dumps(payload, ensure_ascii=False) + "\n").encode()
        headers = [("content-type", ctype), ("content-length", str(len(body)))]
        if close:
            headers.append(("connection", "close"))
        try:
            data = conn.send(h11.Response(status_code=status, headers=headers)) or b""
            # A HEAD answer carries the GET headers (content-length included) but no body;
            # h11 refuses body bytes after a HEAD request.
            if not head:
                data += conn.send(h11.Data(data=body)) or b""
            data += conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            return
        await stream.send_all(data)

    # ------------------------------------------------------------------ routing

    def _route(self, request: h11.Request, body: bytes) -> tuple[int, Any, str]:
        method = request.method.decode("ascii", "replace")
        target = request.target.decode("ascii", "replace")
        parts = urlsplit(target)
        try:
            query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False,
                             encoding="utf-8", errors="strict")
        except UnicodeDecodeError:
            return 400, {"error": "query is not valid UTF-8"}, "application/json"
        service_values = query.get("service")
        service = service_values[-1] if service_values else ""
        path = parts.path
        json_type = "application/json"
        if path in self.extra_routes and method == "GET":
            status, ctype, data = self.extra_routes[path]()
            return status, data, ctype
        if path == "/healthz":
            if method not in ("GET", "HEAD"):
                return 405, {"error": "use GET"}, json_type
            current = self.state.get(service)
            if current is None:
                return 404, {"service": service, "status": "SERVICE_UNKNOWN",
                             "error": "unknown service"}, json_type
            code = 200 if current is ServingStatus.SERVING else 503
            return code, {"service": service, "status": current.name}, json_type
        if path == "/status":
            if method == "GET":
                statuses = {name: st.name for name, st in self.state.snapshot().items()}
                return 200, {"statuses": statuses, "draining": self.state.draining}, json_type
            if service_values is None:
                return 400, {"error": "missing ?service= (use service= for the server)"}, json_type
            if method == "PUT":
                name = body.decode("utf-8", "replace").strip().upper()
                if name not in _SETTABLE:
                    return 400, {"error": f"status must be one of {sorted(_SETTABLE)}, "
                                          f"got {name!r}"}, json_type
                try:
                    self.state.set(service, ServingStatus[name])
                except HealthError as exc:
                    return 400, {"error": str(exc)}, json_type
                return 200, {"service": service, "status": name,
                             "draining": self.state.draining}, json_type
            if method == "DELETE":
                if service not in self.state:
                    return 404, {"service": service, "error": "unknown service"}, json_type
                self.state.remove(service)
                return 200, {"service": service, "removed": True}, json_type
            return 405, {"error": "use GET, PUT or DELETE"}, json_type
        if path == "/shutdown":
            if method != "POST":
                return 405, {"error": "use POST"}, json_type
            logger.info("admin: shutdown requested")
            if self._on_shutdown is not None:
                self._on_shutdown()
            else:
                self.state.shutdown()
            return 202, {"draining": True}, json_type
        if path == "/drain":
            if method != "POST":
                return 405, {"error": "use POST"}, json_type
            self.state.shutdown()
            return 200, {"draining": True}, json_type
        if path == "/resume":
            if method != "POST":
                return 405, {"error": "use POST"}, json_type
            if self._on_resume is not None:
                self._on_resume()
            else:
                self.state.resume()
            return 200, {"draining": self.state.draining}, json_type
        return 404, {"error": f"no such endpoint {path}"}, json_type


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status if 400 <= status < 600 else 400
        self.message = message


async def _reply_raw(stream: trio.SocketStream, status: int, payload: Any) -> None:
    # Written by hand: h11 only lets a server answer after reading a request, and this answer
    # (connection refused for capacity) is sent before reading anything.
    body = (json.dumps(payload) + "\n").encode()
    head = (f"HTTP/1.1 {status} Service Unavailable\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
    try:
        await stream.send_all(head + body)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _linger(stream: trio.SocketStream) -> None:
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
