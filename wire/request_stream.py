"""The request side of client-streaming and bidi calls: ``StreamingCall`` and ``RequestStream``.

Owns the messages a streaming call has received and its handler has not yet pulled, and the
flow-control credit they hold. The connection (``ServerConnection.hold_credit_for``) keeps a
complete message's share of the receive window closed until the message is consumed here; the
handler's ``async for`` over ``RequestStream`` gives it back, message by message. So the
buffer is bounded by the stream's receive window (plus one partial message, bounded by the
message size limit), and a client that streams faster than its handler reads is held back by
HTTP/2 flow control instead of being buffered without bound.

The iteration ends at the client's half-close (END_STREAM); a client reset or the deadline
cancel the handler's task like any other call's. When the call ends, whatever was still
queued is dropped (its credit only ever held the stream's own window, which ends with it).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import trio

from .calls import CallHost, ServerCall
from .errors import RpcError
from .events import RequestReceived
from .status import StatusCode

__all__ = ["RequestStream", "StreamingCall"]

Req = TypeVar("Req")


class RequestStream(Generic[Req]):
    """The request messages of one streaming call: ``async for request in requests``."""

    __slots__ = ("_buffered", "_call", "_deserialize", "_done", "_queue", "_wakeup")

    def __init__(self, call: StreamingCall, deserialize: Callable[[bytes], Req]) -> None:
        self._call = call
        self._deserialize = deserialize
        # (message bytes, flow-control credit to give back once it is taken)
        self._queue: deque[tuple[bytes, int]] = deque()
        self._buffered = 0
        # The client half-closed, or the call is over: nothing more will be queued.
        self._done = False
        self._wakeup: trio.Event | None = None

    @property
    def buffered(self) -> int:
        """Bytes of request messages received and not yet taken by the handler."""
        return self._buffered

    @property
    def done(self) -> bool:
        """True once no more messages will arrive (those queued may still be taken)."""
        return self._done

    def __aiter__(self) -> RequestStream[Req]:
        return self

    async def __anext__(self) -> Req:
        """The next request; ends (StopAsyncIteration) after the client's half-close."""
        await trio.lowlevel.checkpoint()
        queue = self._queue
        while not queue:
            if self._done:
                raise StopAsyncIteration
            # Nothing left to take: a message still arriving may need more than the window.
            self._call.request_more()
            self._wakeup = wakeup = trio.Event()
            await wakeup.wait()
        data, credit = queue.popleft()
        self._buffered -= len(data)
        self._call.release_credit(credit)
        try:
            return self._deserialize(data)
        except Exception as exc:
            raise RpcError(StatusCode.INTERNAL,
                           f"grpc: error unmarshalling request: {exc}") from None

    # ------------------------------------------------------------------ the call's side

    def put(self, data: bytes, credit: int) -> None:
        """Queue one received message (its credit stays held until it is taken)."""
        if self._done:
            self._call.release_credit(credit)
            return
        self._queue.append((data, credit))
        self._buffered += len(data)
        self._wake()

    def finish(self) -> None:
        """The client half-closed: the iteration ends once the queue is empty."""
        self._done = True
        self._wake()

    def discard(self) -> None:
        """The call is over: drop what is queued (its credit ends with the stream)."""
        self._done = True
        self._queue.clear()
        self._buffered = 0
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None


class StreamingCall(ServerCall):
    """A client-streaming or bidi call: its handler runs at once and pulls ``requests``."""

    __slots__ = ("requests",)

    def __init__(self, host: CallHost, event: RequestReceived, method: str,
                 deserialize: Callable[[bytes], Any]) -> None:
        super().__init__(host, event, method)
        #: What the handler iterates over.
        self.requests: RequestStream[Any] = RequestStream(self, deserialize)

    def receive_message(self, data: bytes, credit: int = 0) -> None:
        """Queue a request message for the handler (any number of them is fine)."""
        self.requests.put(data, credit)

    def request_complete(self) -> bool:
        """The client half-closed: end the handler's iteration (never run inline)."""
        self.requests.finish()
        return False

    def prepare_task(self) -> None:
        """The handler runs in a task of its own, at once: it need not wait for the request."""
        ready = trio.Event()
        ready.set()
        self._ready = ready

    def release_credit(self, credit: int) -> None:
        """Hand ``credit`` of consumed request bytes back to the client's window."""
        if credit > 0 and not self.closed:
            self._conn.release_credit(self.stream_id, credit)
            self._host.wake_writer()

    def request_more(self) -> None:
        """The handler waits with nothing queued (see ``ServerConnection.request_more``)."""
        if not self.closed:
            self._conn.request_more(self.stream_id)
            self._host.wake_writer()

    def _ended(self) -> None:
        self.requests.discard()
        super()._ended()
