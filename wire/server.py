"""The Trio gRPC server: the method registry, listeners, TLS, and graceful shutdown.

``Server`` maps method paths to handlers and serves them over any Trio stream: TCP
(``serve_tcp``), Unix sockets (``serve_unix``), listeners you made yourself (``serve_listeners``),
or a single stream such as one end of ``trio.testing.memory_stream_pair`` (``serve_stream``).
The serve methods follow Trio's convention: ``port = (await nursery.start(server.serve_tcp,
"127.0.0.1", 0))[1]`` returns once listening, with the bound address.

Each connection is run by a ``wire.driver.ConnectionDriver`` (read loop, dispatch, deadlines,
the single writer); each call is a ``wire.calls.ServerCall`` or ``PushCall``. This module only
accepts connections, completes TLS handshakes (ALPN ``h2`` required), keeps the set of live
connections and shuts them down. Admission follows ``wire.admission``: TCP keepalive on every
accepted socket, a cap of ``connection_cap`` (``max_connections`` lowered below the open-file
limit, which is first raised to the hard limit), the longest-idle connection without calls
evicted (GOAWAY) to admit a newcomer at the cap, a refusal only when every connection has calls,
and a back-off on EMFILE.

Graceful shutdown (``await server.shutdown(grace)``): run the shutdown hooks (the health service
marks itself NOT_SERVING and ends its Watch streams there), stop accepting, send GOAWAY on every
connection, let calls in flight finish for up to ``grace`` seconds, then end what is left with
UNAVAILABLE and close.

What is open can be observed, read-only: ``connection_count``, ``connections()`` (the
``ConnectionInfo`` of each), ``connection_stats()`` (a ``ConnectionStats`` snapshot of each) and
``wait_no_connections()``; ``drain_connection(info)`` closes one connection gracefully.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import ssl
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import trio

from .admission import (
    RESOURCE_ERRNOS,
    AcceptBackoff,
    effective_max_connections,
    pick_eviction,
    raise_nofile_limit,
)
from .calls import ConnectionInfo, PushCall, ServerCall
from .connection import ServerConfig, ServerConnection
from .driver import ConnectionDriver, ConnectionStats, ServerOptions
from .handlers import MethodHandler
from .http2 import EngineName
from .sockopts import apply_tcp_keepalive
from .status import ErrorCode
from .tls import negotiated_h2, peer_certificate

# PushCall and ServerCall live in wire.calls; they stay importable from here.
__all__ = ["ConnectionInfo", "ConnectionStats", "PushCall", "Server", "ServerCall",
           "ServerOptions"]

logger = logging.getLogger("wire.server")


class Server:
    """A gRPC server for unary and server-streaming methods."""

    def __init__(
        self,
        handlers: Iterable[MethodHandler[Any, Any]] = (),
        *,
        config: ServerConfig | None = None,
        options: ServerOptions | None = None,
        http2: EngineName | None = None,
    ) -> None:
        """``http2`` picks the HTTP/2 engine (``"h2"``, the default, or ``"native"``); it
        overrides ``config.http2``."""
        config = config or ServerConfig()
        if http2 is not None:
            config = dataclasses.replace(config, http2=http2)
        self.config = config
        self.options = options or ServerOptions()
        self._handlers: dict[str, MethodHandler[Any, Any]] = {}
        self._services: set[str] = set()
        self.add_handlers(handlers)
        self._shutdown_hooks: list[Callable[[], None]] = []
        self._connections: set[ConnectionDriver] = set()
        self._listen_scopes: set[trio.CancelScope] = set()
        self._conn_scopes: set[trio.CancelScope] = set()
        self._shutting_down = False
        self._no_connections = trio.Event()
        self._no_connections.set()
        # Accepted streams being served (TLS handshakes included): what the cap counts.
        self._admitted = 0
        self._cap: int | None = None
        self._accept_backoff = AcceptBackoff(logger, trio.current_time)

    # ------------------------------------------------------------------ registration

    def add_handlers(self, handlers: Iterable[MethodHandler[Any, Any]]) -> None:
        """Register methods; a path registered twice is an error."""
        for h in handlers:
            if h.path in self._handlers:
                raise ValueError(f"method {h.path} is already registered")
            self._handlers[h.path] = h
            self._services.add(h.path.split("/")[1])

    def add_shutdown_hook(self, hook: Callable[[], None]) -> None:
        """Run ``hook()`` first thing in ``shutdown()`` (before GOAWAY is sent)."""
        self._shutdown_hooks.append(hook)

    @property
    def methods(self) -> Sequence[str]:
        """The registered method paths."""
        return tuple(self._handlers)

    def handler_for(self, path: str) -> MethodHandler[Any, Any] | None:
        """The handler registered for the method ``path``, if any."""
        return self._handlers.get(path)

    def serves(self, service: str) -> bool:
        """Whether some method of ``service`` (``package.Service``) is registered."""
        return service in self._services

    @property
    def shutting_down(self) -> bool:
        """True once ``shutdown()`` has begun."""
        return self._shutting_down

    # ------------------------------------------------------------------ observing

    @property
    def connection_count(self) -> int:
        """How many connections are being served now (TLS handshakes in progress excluded)."""
        return len(self._connections)

    def connections(self) -> Iterator[ConnectionInfo]:
        """The ``ConnectionInfo`` of each connection being served (a snapshot)."""
        return iter([driver.info for driver in self._connections])

    def connection_stats(self) -> list[ConnectionStats]:
        """A snapshot of each connection's calls, held streams and write backlog."""
        return [driver.stats() for driver in self._connections]

    def drain_connection(self, info: ConnectionInfo) -> bool:
        """Send GOAWAY on one connection, closing it once its calls are over.

        Returns False if ``info`` is not a connection being served. Clients reconnect for new
        calls, as after grpc-go's ``MaxConnectionAge``.
        """
        for driver in self._connections:
            if driver.info is info:
                driver.start_drain("drained by the application")
                return True
        return False

    @property
    def connection_cap(self) -> int:
        """Connections accepted at most: ``max_connections``, lowered below the open-file
        limit (raised to the hard limit first, unless ``raise_nofile_limit`` is off)."""
        if self._cap is None:
            configured = self.options.max_connections
            limit = raise_nofile_limit() if self.options.raise_nofile_limit else None
            nofile = limit.soft if limit is not None else _soft_nofile()
            self._cap = effective_max_connections(configured, nofile)
            raised = (f", raised from {limit.before}" if limit is not None and limit.raised
                      else "")
            logger.info("connection cap %d (max_connections %d, open-file limit %s%s)",
                        self._cap, configured, nofile if nofile is not None else "none", raised)
        return self._cap

    async def wait_no_connections(self) -> None:
        """Return once no connection is being served (at once if none is)."""
        await self._no_connections.wait()

    # ------------------------------------------------------------------ serving

    async def serve_tcp(
        self,
        host: str | None,
        port: int,
        *,
        backlog: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on TCP and serve until cancelled or shut down; reports the bound address.

        With ``ssl_context`` (see ``wire.tls.server_context``) every connection is TLS and must
        negotiate ALPN ``h2``.
        """
        listeners = await trio.open_tcp_listeners(port, host=host, backlog=backlog)
        sock = listeners[0].socket
        addr = sock.getsockname()
        await self.serve_listeners(listeners, ssl_context=ssl_context, task_status=task_status,
                                   _address=(addr[0], addr[1]))

    async def serve_unix(
        self,
        path: str,
        *,
        backlog: int = 128,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on a Unix domain socket at ``path`` (replacing a stale one) and serve."""
        if _is_socket(path):
            os.unlink(path)
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await sock.bind(path)
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        try:
            await self.serve_listeners([trio.SocketListener(sock)], task_status=task_status,
                                       _address=path)
        finally:
            try:
                os.unlink(path)
            except OSError:
                pass

    async def serve_listeners(
        self,
        listeners: Sequence[trio.abc.Listener[Any]],
        *,
        ssl_context: ssl.SSLContext | None = None,
        task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
        _address: Any = None,
    ) -> None:
        """Accept on ``listeners`` and serve each connection; returns after ``shutdown()``."""
        if ssl_context is not None:
            listeners = [trio.SSLListener(lst, ssl_context, https_compatible=False)
                         for lst in listeners]
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as accept_scope:
                self._listen_scopes.add(accept_scope)
                try:
                    for listener in listeners:
                        # The cap is computed (and logged) once, before the first accept.
                        nursery.start_soon(self._accept_loop, listener, nursery,
                                           self.connection_cap)
                    task_status.started(_address)
                    await trio.sleep_forever()
                finally:
                    self._listen_scopes.discard(accept_scope)
                    for listener in listeners:
                        with trio.CancelScope(shield=True):
                            await listener.aclose()

    async def _accept_loop(self, listener: trio.abc.Listener[Any], nursery: trio.Nursery,
                           cap: int) -> None:
        backoff = self._accept_backoff
        while True:
            try:
                stream = await listener.accept()
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return
            except OSError as exc:
                # EMFILE and friends: free a descriptor if an idle connection holds one, back
                # off instead of spinning, keep serving the others; logged once per 10 s.
                if exc.errno in RESOURCE_ERRNOS:
                    self._evict_one()
                await trio.sleep(backoff.failed(exc))
                continue
            backoff.succeeded()
            self._set_tcp_keepalive(stream)
            # At the cap, an idle connection makes room (nginx reuses idle keep-alive
            # connections the same way); only when every connection has calls is the new
            # one refused, so idle connections can never lock everyone out.
            if self._admitted >= cap and not self._evict_one():
                nursery.start_soon(self._turn_away, stream)
                continue
            self._admitted += 1
            nursery.start_soon(self._serve_accepted, stream)

    def _evict_one(self) -> bool:
        """GOAWAY and close the longest-idle connection with no call open; False if none."""
        victim = pick_eviction(d for d in self._connections if not d.closing)
        if victim is None:
            return False
        victim.start_drain("evicted for a new connection: connection cap reached")
        return True

    def _set_tcp_keepalive(self, stream: trio.abc.Stream) -> None:
        if isinstance(stream, trio.SSLStream):
            stream = stream.transport_stream
        if not isinstance(stream, trio.SocketStream):
            return
        sock = stream.socket
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return
        try:
            apply_tcp_keepalive(sock, self.options.tcp_keepalive)
        except OSError:
            pass  # the peer is already gone: its reads will say so

    async def _serve_accepted(self, stream: trio.abc.Stream) -> None:
        """``serve_stream`` for the accept loop: one connection's failure stays its own."""
        peer = _describe(stream, peer=True)
        try:
            await self.serve_stream(stream)
        except Exception:
            # A bug reached by one peer's bytes must not end every other connection (they
            # share the listener's nursery); serve_stream has closed the stream already.
            logger.exception("connection from %s failed", peer)
        finally:
            self._admitted -= 1

    async def _turn_away(self, stream: trio.abc.Stream) -> None:
        """Refuse a connection over the limit politely: SETTINGS and GOAWAY, then close."""
        logger.warning("refusing connection: %d connections already open",
                       len(self._connections))
        try:
            with trio.move_on_after(1.0):
                if isinstance(stream, trio.SSLStream):
                    await stream.do_handshake()
                conn = ServerConnection(self.config)
                conn.close(ErrorCode.ENHANCE_YOUR_CALM, "too many connections")
                await stream.send_all(conn.data_to_send())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def serve_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one already-connected stream until it ends; closes it."""
        peer_cert = None
        if isinstance(stream, trio.SSLStream):
            # Registered like a connection so that shutdown() can cancel a slow handshake.
            handshake_scope = trio.CancelScope()
            self._conn_scopes.add(handshake_scope)
            try:
                with handshake_scope:
                    ok, peer_cert = await self._tls_handshake(stream)
            finally:
                self._conn_scopes.discard(handshake_scope)
            if not ok or handshake_scope.cancelled_caught:
                await trio.aclose_forcefully(stream)
                return
        info = ConnectionInfo(peer=_describe(stream, peer=True),
                              local=_describe(stream, peer=False),
                              tls=isinstance(stream, trio.SSLStream), peer_certificate=peer_cert)
        driver = ConnectionDriver(ServerConnection(self.config), stream, info, self.options,
                                  self)
        self._connections.add(driver)
        if self._no_connections.is_set():
            self._no_connections = trio.Event()
        conn_scope = trio.CancelScope()
        self._conn_scopes.add(conn_scope)
        try:
            with conn_scope:
                await driver.run()
        finally:
            self._conn_scopes.discard(conn_scope)
            self._connections.discard(driver)
            if not self._connections:
                self._no_connections.set()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _tls_handshake(self, stream: trio.SSLStream[Any],
                             ) -> tuple[bool, dict[str, Any] | None]:
        """Complete the TLS handshake and insist on ALPN h2; returns (ok, peer certificate)."""
        try:
            with trio.fail_after(self.options.preface_timeout):
                await stream.do_handshake()
        except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            logger.info("%s: TLS handshake failed: %s",
                        _describe(stream, peer=True), exc.__cause__ or exc)
            return False, None
        if not negotiated_h2(stream):
            # gRPC requires HTTP/2 by ALPN; a client that did not ask for h2 cannot speak it.
            logger.info("%s: refusing TLS client that did not negotiate ALPN h2 (got %r)",
                        _describe(stream, peer=True), stream.selected_alpn_protocol())
            return False, None
        return True, peer_certificate(stream)

    # ------------------------------------------------------------------ shutdown

    async def shutdown(self, grace: float = 5.0) -> None:
        """Drain: hooks, stop accepting, GOAWAY, wait up to ``grace`` s for calls, close."""
        if not self._shutting_down:
            self._shutting_down = True
            for hook in self._shutdown_hooks:
                try:
                    hook()
                except Exception:
                    logger.exception("shutdown hook %r raised", hook)
            for scope in list(self._listen_scopes):
                scope.cancel()
            for driver in list(self._connections):
                driver.start_drain()
        with trio.move_on_after(grace):
            await self._no_connections.wait()
        # Grace is over: calls still running end with UNAVAILABLE ("server is shutting down").
        for driver in list(self._connections):
            driver.end_calls()
        with trio.move_on_after(1.0):
            await self._no_connections.wait()
        for scope in list(self._conn_scopes):
            scope.cancel()
        await self._no_connections.wait()

    async def aclose(self) -> None:
        """Shut down at once (no grace)."""
        await self.shutdown(0)


def _describe(stream: trio.abc.Stream, *, peer: bool) -> str:
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    sock = getattr(stream, "socket", None)
    if sock is None:
        return "memory"
    try:
        addr = sock.getpeername() if peer else sock.getsockname()
    except OSError:
        return "unknown"
    if sock.family == socket.AF_INET:
        return f"ipv4:{addr[0]}:{addr[1]}"
    if sock.family == socket.AF_INET6:
        return f"ipv6:[{addr[0]}]:{addr[1]}"
    return f"unix:{addr}" if addr else "unix:"


def _soft_nofile() -> int | None:
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False
