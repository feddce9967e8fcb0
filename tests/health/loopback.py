"""Tiny loopback TCP servers for the probe and sidecar tests (127.0.0.1, port 0)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


@asynccontextmanager
async def tcp_server(reply: bytes | None = None) -> AsyncIterator[int]:
    """Accept connections on a free port; yield the port.

    With ``reply``, each connection's request is read and ``reply`` written back before the
    server closes it; without, the server closes it at once.
    """

    async def handler(stream: trio.SocketStream) -> None:
        try:
            if reply is not None:
                await stream.receive_some(65536)
                await stream.send_all(reply)
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(stream)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handler, listeners)
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()
