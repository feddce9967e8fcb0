r"""Channels over in-memory networks for the Trio-layer tests: to a ``wire.Server`` through fresh
``memory_stream_pair``\ s, or through any test "net" object whose ``connect`` a channel dials."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

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


class Net(Protocol):
    """A test network: each ``connect()`` is one new connection of the channel."""

    async def connect(self) -> trio.abc.Stream: ...


NetT = TypeVar("NetT", bound=Net)


@asynccontextmanager
async def channel_over(make_net: Callable[[trio.Nursery], NetT], target: str,
                       **channel_options: Any) -> AsyncIterator[tuple[Channel, NetT]]:
    """A channel to ``target`` dialling ``make_net(nursery)``; the net's tasks end with it."""
    async with trio.open_nursery() as nursery:
        net = make_net(nursery)
        async with open_channel(target, connector=net.connect, **channel_options) as channel:
            yield channel, net
        nursery.cancel_scope.cancel()
