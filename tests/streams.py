"""Stream helpers for tests of both packages: pairs that expose hidden buffering and
partial-frame bugs, and a read that treats a broken or closed stream as its end.

``PAIRS`` parametrizes a test over ``trio.testing.lockstep_stream_pair`` (every ``send_all``
waits until the peer has read it all) and :func:`one_byte_stream_pair` (a
``memory_stream_pair`` whose pumps move one byte at a time with ``memory_stream_pump(...,
max_bytes=1)``).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing

StreamPair = Callable[[], tuple[trio.abc.Stream, trio.abc.Stream]]


def _one_byte_one_way() -> tuple[trio.testing.MemorySendStream, trio.testing.MemoryReceiveStream]:
    send = trio.testing.MemorySendStream()
    receive = trio.testing.MemoryReceiveStream()

    def pump() -> None:
        trio.testing.memory_stream_pump(send, receive, max_bytes=1)

    async def pump_async() -> None:
        pump()

    # Each write and each read moves one byte across, so data trickles: a read returns what
    # has been moved since the last one (usually a single byte), never a whole write.
    send.send_all_hook = pump_async
    receive.receive_some_hook = pump_async
    send.close_hook = pump
    return send, receive


def one_byte_stream_pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
    """A ``memory_stream_pair`` whose pumps move one byte per send and per receive."""
    a_send, a_receive = _one_byte_one_way()
    b_send, b_receive = _one_byte_one_way()
    return (trio.StapledStream(a_send, b_receive), trio.StapledStream(b_send, a_receive))


PAIRS = [pytest.param(trio.testing.lockstep_stream_pair, id="lockstep"),
         pytest.param(one_byte_stream_pair, id="one-byte")]


async def receive_or_eof(stream: trio.abc.ReceiveStream) -> bytes:
    """The next bytes from ``stream``; ``b""`` once it has ended, broken or been closed."""
    try:
        return await stream.receive_some(65536)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return b""
