"""The client of the ``grpc.health.v1.Health`` service: Check, List and Watch over a channel.

``HealthClient`` turns the three RPCs into Python values: a ``ServingStatus`` for Check, a
``dict`` for List, an async iterator of ``ServingStatus`` for Watch. Failures stay
``wire.RpcError`` with the server's code (NOT_FOUND for an unknown service on Check,
UNIMPLEMENTED when the server has no health service or no List, DEADLINE_EXCEEDED, ...), so
callers such as the probe can tell them apart. A status number this client does not know (a
newer server) is reported as UNKNOWN rather than failing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from wire import Channel, ResponseStream, StatusCode
from wire.metadata import MetadataLike

from .protocol import (
    CHECK_PATH,
    LIST_PATH,
    WATCH_PATH,
    check_request,
    list_request,
    parse_check_response,
    parse_list_response,
)
from .status import ServingStatus

# The paths stay importable from here (they were defined here before health.protocol).
__all__ = ["CHECK_PATH", "LIST_PATH", "WATCH_PATH", "HealthClient", "HealthWatchStream"]


class HealthWatchStream:
    """The statuses a Watch call delivers, as an async iterator of ``ServingStatus``."""

    def __init__(self, stream: ResponseStream) -> None:
        self._stream = stream

    def __aiter__(self) -> HealthWatchStream:
        return self

    async def __anext__(self) -> ServingStatus:
        return parse_check_response(await self._stream.__anext__())

    @property
    def code(self) -> StatusCode | None:
        """The call's final status code once the stream has ended (None before)."""
        return self._stream.code

    def cancel(self) -> None:
        """End the Watch call now (RST_STREAM CANCEL)."""
        self._stream.cancel()


class HealthClient:
    """Calls the Health service of the server behind ``channel``."""

    def __init__(self, channel: Channel, *, metadata: MetadataLike = (),
                 compression: str | None = None) -> None:
        self.channel = channel
        self.metadata = tuple(metadata)
        self.compression = compression

    async def check(
        self,
        service: str = "",
        *,
        timeout: float | None = None,  # sent to the server as grpc-timeout
    ) -> ServingStatus:
        """Ask for ``service``'s status once (``""`` is the whole server)."""
        result = await self.channel.unary_unary(
            CHECK_PATH, check_request(service), timeout=timeout, metadata=self.metadata,
            compression=self.compression)
        return parse_check_response(result.response)

    async def list(
        self,
        *,
        timeout: float | None = None,  # sent to the server as grpc-timeout
    ) -> dict[str, ServingStatus]:
        """Every service the server knows, with its status (gRFC A90 ``List``)."""
        result = await self.channel.unary_unary(
            LIST_PATH, list_request(), timeout=timeout,
            metadata=self.metadata, compression=self.compression)
        return parse_list_response(result.response)

    @asynccontextmanager
    async def watch(self, service: str = "") -> AsyncIterator[HealthWatchStream]:
        """Open a Watch on ``service``; iterate the yielded stream for each status change.

        The iteration raises ``RpcError`` when the call fails and stops when the server ends
        it with OK; leaving the block cancels the call.
        """
        async with self.channel.unary_stream(
            WATCH_PATH, check_request(service), metadata=self.metadata,
            compression=self.compression,
        ) as stream:
            yield HealthWatchStream(stream)
