"""The one place that writes a connection's socket.

hypercorn's rule: exactly one writer per socket, so a write cancelled half-way can never interleave
with another and corrupt the framing. Here that writer is a task: protocol code (the read loop,
call handlers) only changes the sans-I/O connection and calls ``wake()``; the task takes
everything pending from ``data_to_send()`` and writes it in one ``send_all``, which also
coalesces the frames of many concurrent calls into few system calls.

One shortcut: the read loop may call ``send_now()`` after a batch of input. When no write is in
progress it writes from the calling task, under the same lock, which saves a round trip through
the scheduler per batch. Either way every write happens here, one at a time, in order. The read
loop is never cancelled in normal operation (stopping it only interrupts its socket read), so a
write it makes is cut short only when the whole connection is being torn down.
"""

from __future__ import annotations

import math
from typing import Protocol

import trio

__all__ = ["Transport"]


class _Outbox(Protocol):
    def data_to_send(self) -> bytes: ...


class Transport:
    """Owns the writing side of one stream for one sans-I/O connection."""

    def __init__(self, stream: trio.abc.SendStream, outbox: _Outbox, *,
                 write_timeout: float = math.inf) -> None:
        self._stream = stream
        self._outbox = outbox
        self._write_timeout = write_timeout
        self._wakeup = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        self._broken: BaseException | None = None
        # Held around every send_all: by the writer task, or by send_now()'s caller.
        self._lock = trio.StrictFIFOLock()
        #: Bytes handed to the stream and not yet accepted by it.
        self.backlog = 0

    @property
    def broken(self) -> BaseException | None:
        """The error that stopped writing, if any."""
        return self._broken

    def wake(self) -> None:
        """Tell the writer there may be bytes to send (never blocks)."""
        if self._broken is not None:
            return
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._wakeup.set()

    async def flushed(self) -> None:
        """Wait until everything pending when this was called has been written."""
        self.wake()
        await self._idle.wait()

    async def send_now(self) -> None:
        """Write what is pending from this task if no write is in progress, else ``wake()``."""
        if self._broken is not None:
            return
        if self._wakeup.is_set():
            return  # the writer task is about to run and will take it all
        try:
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            self.wake()
            return
        try:
            data = self._outbox.data_to_send()
            if data:
                await self._write(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, TimeoutError) as exc:
            self._broken = exc
            self._idle.set()
            self._wakeup.set()  # let the writer task see it and end the connection
        finally:
            self._lock.release()

    async def _write(self, data: bytes) -> None:
        self.backlog = len(data)
        with trio.move_on_after(self._write_timeout) as scope:
            await self._stream.send_all(data)
        self.backlog = 0
        if scope.cancelled_caught:
            raise TimeoutError(f"no write progress for {self._write_timeout} s; peer not reading")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write until cancelled or the stream breaks (then return, with ``broken`` set)."""
        task_status.started()
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                if self._broken is not None:
                    return
                async with self._lock:
                    data = self._outbox.data_to_send()
                    while data:
                        await self._write(data)
                        data = self._outbox.data_to_send()
                self._idle.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError, TimeoutError) as exc:
            self._broken = exc
            self._idle.set()
