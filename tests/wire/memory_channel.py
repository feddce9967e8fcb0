"""A ``wire.Channel`` to a ``wire.Server`` over in-memory streams, for the Trio-layer tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing

from wire import Channel, Server, open_channel


@asynccontextmanager
async def memory_channel_to(server: Server) -> AsyncIterator[Channel]:
    """A channel to ``server``: each connection it makes is a fresh ``memory_stream_pair``."""
    async with trio.open_nursery() as nursery:

        async def connect() -> trio.abc.Stream:
            client, server_side = trio.testing.memory_stream_pair()
            nursery.start_soon(server.serve_stream, server_side)
            return client

        async with open_channel("memory:1", connector=connect) as channel:
            yield channel
        nursery.cancel_scope.cancel()
