"""Fuzz the sans-I/O server connection with arbitrary bytes after a valid preface.

Invariants: ``receive_data`` raises only ``wire.ProtocolError``; a call reported as started is
either still active or ended by a later event of the same batch, and no event follows a call's
end; the output queued stays bounded relative to the input.
"""

from __future__ import annotations

from wire.connection import ServerConnection
from wire.errors import ProtocolError
from wire.events import CallAborted, MessageReceived, RequestEnded, RequestReceived, StreamReset

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def one_input(data: bytes) -> None:
    """Feed ``data`` (in two pieces) to a fresh ServerConnection after the preface."""
    conn = ServerConnection()
    conn.data_to_send()
    conn.receive_data(PREFACE + EMPTY_SETTINGS)
    half = len(data) // 2
    out = 0
    ended: set[int] = set()
    for piece in (data[:half], data[half:]):
        try:
            events = conn.receive_data(piece)
        except ProtocolError:
            conn.data_to_send()
            return
        started: set[int] = set()
        for ev in events:
            if isinstance(ev, RequestReceived):
                started.add(ev.stream_id)
            elif isinstance(ev, (MessageReceived, RequestEnded)) and ev.stream_id in ended:
                raise AssertionError(f"{ev!r} after the call ended")
            elif isinstance(ev, (CallAborted, StreamReset)):
                ended.add(ev.stream_id)
        for sid in started - ended:
            if not conn.is_active(sid):
                raise AssertionError(f"stream {sid} started, not ended, yet not active")
        out += len(conn.data_to_send())
    # Replies to a few bytes must not amplify without bound (SETTINGS ACK, PING ACK, resets...).
    if out > 64 * 1024 + 64 * len(data):
        raise AssertionError(f"{len(data)} input bytes produced {out} output bytes")


if __name__ == "__main__":
    from _common import run

    run(one_input, "server_connection")
