"""In-memory "network" for the health client tests: servers that go away and come back.

``MemoryBackend`` serves a ``wire.Server`` over ``trio.testing.memory_stream_pair`` through a
channel ``connector``. ``down()`` refuses new connections and cuts the open ones (the server
vanished); ``up()`` brings it back. Everything runs in the test's Trio run, so tests can use
``MockClock(autojump_threshold=0)`` and never sleep for real.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing

from health.service import HealthServer
from health.status import ServingStatus
from wire import Channel, Server, ServerConfig, open_channel


class MemoryBackend:
    """One backend address: a server reachable over memory streams while it is up."""

    def __init__(self, server: Server, nursery: trio.Nursery) -> None:
        self.server = server
        self.nursery = nursery
        self.is_up = True
        self.connects: list[float] = []
        self._streams: list[trio.abc.Stream] = []
        self._tick = trio.Event()

    async def connect(self) -> trio.abc.Stream:
        """The channel connector: a fresh memory connection, or ConnectionRefusedError."""
        self.connects.append(trio.current_time())
        self._tick.set()
        self._tick = trio.Event()
        await trio.lowlevel.checkpoint()
        if not self.is_up:
            raise ConnectionRefusedError(111, "Connection refused")
        client, server = trio.testing.memory_stream_pair()
        self._streams.append(server)
        self.nursery.start_soon(self.server.serve_stream, server)
        return client

    async def wait_connects(self, count: int) -> None:
        """Wait until ``connects`` holds at least ``count`` attempts."""
        while len(self.connects) < count:  # bounded: each wake-up is one more attempt
            await self._tick.wait()

    async def down(self) -> None:
        """Refuse new connections and cut every open one."""
        self.is_up = False
        streams, self._streams = self._streams, []
        for stream in streams:
            await trio.aclose_forcefully(stream)

    def up(self) -> None:
        """Accept connections again."""
        self.is_up = True


class HealthBackend(MemoryBackend):
    """A MemoryBackend running the project's health service."""

    def __init__(self, nursery: trio.Nursery, config: ServerConfig | None = None,
                 **statuses: ServingStatus) -> None:
        self.health = HealthServer(config=config)
        for name, status in statuses.items():
            self.health.set(name, status)
        super().__init__(self.health.server, nursery)

    def set(self, service: str, status: ServingStatus) -> None:
        """Publish a status."""
        self.health.set(service, status)


@asynccontextmanager
async def channel_to(backend: MemoryBackend, target: str = "backend:1",
                     connect_timeout: float = 5.0) -> AsyncIterator[Channel]:
    """A channel whose connections go to ``backend``."""
    async with open_channel(target, connector=backend.connect,
                            connect_timeout=connect_timeout) as channel:
        yield channel
