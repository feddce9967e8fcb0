"""A userspace blackhole proxy for fault tests (loopback only).

``open_blackhole_proxy(port)`` listens on 127.0.0.1 and forwards every connection, byte for
byte, to ``127.0.0.1:port``. ``proxy.blackhole()`` then turns the path silent the way a dead
peer or a dropping firewall does: both sockets of every connection stay open, everything read
from either side is thrown away, and no FIN or RST is passed on (an end closing its socket is
not told to the other end). A connection made while the path is black reaches nothing: it is
accepted and read from, but never connected to the target. ``proxy.heal()`` makes new
connections forward again; the ones already black stay black (their lost bytes cannot be
replayed), as after a real partition heals under a connection that already gave up.

TCP itself stays healthy on both legs (the kernel acknowledges everything), so this proves
HTTP/2 PING keepalive; TCP keepalive needs a real partition (``tests/netns.py``).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

__all__ = ["BlackholeProxy", "open_blackhole_proxy"]


class _Pair:
    """One proxied connection: the client's stream and, unless born black, the target's."""

    def __init__(self, client: trio.SocketStream, black: bool) -> None:
        self.client = client
        self.upstream: trio.SocketStream | None = None
        self.black = black


class BlackholeProxy:
    """A running proxy; see the module docstring."""

    def __init__(self, target_port: int, target_host: str) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self._black = False
        self._pairs: set[_Pair] = set()
        self._empty = trio.Event()
        self._empty.set()
        #: Connections accepted so far (black ones included).
        self.accepted = 0
        #: Bytes read and thrown away while black, both directions.
        self.discarded = 0

    @property
    def black(self) -> bool:
        """True while new connections go nowhere."""
        return self._black

    @property
    def open_connections(self) -> int:
        """Connections whose client side is still open."""
        return len(self._pairs)

    async def wait_no_connections(self) -> None:
        """Return once no proxied connection is open."""
        await self._empty.wait()

    def blackhole(self) -> None:
        """Silence every connection, open and future, in both directions."""
        self._black = True
        for pair in self._pairs:
            pair.black = True

    def heal(self) -> None:
        """New connections forward again (black ones stay black)."""
        self._black = False

    async def handle(self, client: trio.SocketStream) -> None:
        """Serve one accepted client connection (``trio.serve_tcp``'s handler)."""
        pair = _Pair(client, self._black)
        self.accepted += 1
        self._pairs.add(pair)
        if self._empty.is_set():
            self._empty = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                if not pair.black:
                    try:
                        pair.upstream = await trio.open_tcp_stream(self.target_host,
                                                                   self.target_port)
                    except OSError:
                        return
                    nursery.start_soon(self._pump, pair, pair.upstream, client)
                nursery.start_soon(self._pump, pair, client, pair.upstream)
        finally:
            self._pairs.discard(pair)
            if not self._pairs:
                self._empty.set()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(client)
                if pair.upstream is not None:
                    await trio.aclose_forcefully(pair.upstream)

    async def _pump(self, pair: _Pair, src: trio.SocketStream,
                    dst: trio.SocketStream | None) -> None:
        """Copy ``src`` to ``dst`` until EOF; while black, read and drop instead."""
        while True:
            try:
                data = await src.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                if not pair.black and dst is not None:
                    # A live path passes the close on; a black one never does.
                    await trio.aclose_forcefully(dst)
                return
            if pair.black or dst is None:
                self.discarded += len(data)
                continue
            try:
                await dst.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                if not pair.black:
                    await trio.aclose_forcefully(src)
                    return


def _require_loopback(host: str) -> None:
    if host == "localhost":
        return
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"the blackhole proxy only forwards to loopback, not {host!r}")


@asynccontextmanager
async def open_blackhole_proxy(target_port: int, target_host: str = "127.0.0.1",
                               ) -> AsyncIterator[BlackholeProxy]:
    """Run a proxy to ``target_host:target_port`` (loopback) on 127.0.0.1; stop it on exit."""
    _require_loopback(target_host)
    proxy = BlackholeProxy(target_port, target_host)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, proxy.handle, 0, host="127.0.0.1"))
        proxy.port = listeners[0].socket.getsockname()[1]
        try:
            yield proxy
        finally:
            nursery.cancel_scope.cancel()
