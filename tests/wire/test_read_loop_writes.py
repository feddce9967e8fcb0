"""The read loop's own writes (``Transport.send_now``) are bounded by the write timeout.

These pin what any reshaping of the read loop's timeouts (for example one cancel scope per
connection whose deadline moves between the read and the write timeout) must keep: its own
writes give up on a client that stopped reading, and a write timeout never lingers into the
idle waits between calls.
"""

from __future__ import annotations

import trio
import trio.testing
from hyperframe.frame import Frame, HeadersFrame, SettingsFrame

from wire import Server, ServerConfig, ServerOptions

from .rawconn import BOUND, PREFACE, parse_frames, ping_frame, request_frames, settings_frame
from .service import WireService

_ACK = SettingsFrame(0, flags=["ACK"]).serialize()


def _server(http2: str, options: ServerOptions) -> Server:
    return Server(WireService().handlers(), config=ServerConfig(http2=http2), options=options)


async def _read_until(stream: trio.abc.ReceiveStream, kind: type[Frame],
                      flag: str) -> list[Frame]:
    """Read frames until one of ``kind`` with ``flag`` has arrived; all of them."""
    buf = b""
    while True:
        buf += await stream.receive_some(65536)
        frames = parse_frames(buf)
        if any(isinstance(f, kind) and flag in f.flags for f in frames):
            return frames


async def test_reader_write_to_a_client_that_stops_reading_times_out(
        autojump_clock: trio.testing.MockClock, http2: str) -> None:
    options = ServerOptions(write_timeout=3.0)
    server = _server(http2, options)
    # Lockstep streams: a write completes only when the peer reads it, like a full socket.
    server_end, client_end = trio.testing.lockstep_stream_pair()
    served = trio.Event()

    async def serve() -> None:
        await server.serve_stream(server_end)
        served.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        with trio.fail_after(BOUND):
            async with trio.open_nursery() as hello:
                hello.start_soon(client_end.send_all, PREFACE + settings_frame())
                # The server's SETTINGS, then its ACK of ours: the writer is idle after that.
                frames = await _read_until(client_end, SettingsFrame, "ACK")
        assert isinstance(frames[0], SettingsFrame)
        # Now stop reading: the PING's ACK is written by the read loop and never taken.
        await client_end.send_all(_ACK + ping_frame(b"stalled!"))
        stopped = trio.current_time()
        with trio.fail_after(options.write_timeout + BOUND):
            await served.wait()
        elapsed = trio.current_time() - stopped
    assert elapsed >= options.write_timeout  # virtual time
    assert not list(server.connections())


async def test_slow_but_steady_answers_outlive_the_write_timeout(
        autojump_clock: trio.testing.MockClock, http2: str) -> None:
    # Reads spaced wider than the write timeout: its deadline must not linger between writes.
    options = ServerOptions(write_timeout=1.0)
    server = _server(http2, options)
    server_end, client_end = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve_stream, server_end)
        await client_end.send_all(PREFACE + settings_frame())
        with trio.fail_after(BOUND):
            await _read_until(client_end, SettingsFrame, "ACK")
        await client_end.send_all(_ACK)
        for i in range(5):
            # Calls, not PINGs: PINGs this often with no call open would be ping strikes.
            await trio.sleep(5 * options.write_timeout)
            sid = 1 + 2 * i
            await client_end.send_all(request_frames(sid))
            with trio.fail_after(BOUND):
                frames = await _read_until(client_end, HeadersFrame, "END_STREAM")
            ended = [f.stream_id for f in frames
                     if isinstance(f, HeadersFrame) and "END_STREAM" in f.flags]
            assert ended == [sid]
        assert len(list(server.connections())) == 1
        nursery.cancel_scope.cancel()
