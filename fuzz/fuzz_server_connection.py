"""Fuzz the sans-I/O server connection with arbitrary bytes after a valid preface.

The input is fed twice to fresh connections: whole, and one byte at a time (which exposes
partial-frame bugs). Invariants, for both feeds: ``receive_data`` raises only
``wire.ProtocolError``; a call reported as started is either still active or ended by a later
event of the same batch, and no event follows a call's end; the output queued stays bounded
relative to the input. Across the feeds: both end the same way (clean, or the same HTTP/2
error code) and, on a clean end, report the same calls and messages.
"""

from __future__ import annotations

from wire.connection import ServerConnection
from wire.errors import ProtocolError
from wire.events import CallAborted, MessageReceived, RequestEnded, RequestReceived, StreamReset

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"

Summary = list[tuple[str, int, bytes]]


def _check_batch(conn: ServerConnection, events: list[object], ended: set[int]) -> None:
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


def _summary(events: list[object]) -> Summary:
    out: Summary = []
    for ev in events:
        if isinstance(ev, RequestReceived):
            out.append(("request", ev.stream_id, ev.method.encode()))
        elif isinstance(ev, MessageReceived):
            out.append(("message", ev.stream_id, bytes(ev.data)))
        elif isinstance(ev, RequestEnded):
            out.append(("end", ev.stream_id, b""))
    return out


def feed(data: bytes, step: int) -> tuple[Summary, object]:
    """Feed ``data`` in ``step``-byte pieces; return what was reported and how it ended."""
    conn = ServerConnection()
    conn.data_to_send()
    conn.receive_data(PREFACE + EMPTY_SETTINGS)
    out = 0
    ended: set[int] = set()
    summary: Summary = []
    end: object = None
    for i in range(0, len(data), step):
        try:
            events = conn.receive_data(data[i : i + step])
        except ProtocolError as exc:
            conn.data_to_send()
            end = exc.error_code
            break
        _check_batch(conn, events, ended)
        summary.extend(_summary(events))
        out += len(conn.data_to_send())
    # Replies to a few bytes must not amplify without bound (SETTINGS ACK, PING ACK, resets...).
    if out > 64 * 1024 + 64 * len(data):
        raise AssertionError(f"{len(data)} input bytes produced {out} output bytes")
    return summary, end


def one_input(data: bytes) -> None:
    """Feed ``data`` whole and byte by byte to fresh ServerConnections after the preface."""
    whole, whole_end = feed(data, max(1, len(data)))
    bytewise, byte_end = feed(data, 1)
    if whole_end != byte_end:
        raise AssertionError(f"whole ended {whole_end!r}, byte-by-byte {byte_end!r}")
    if whole_end is None and whole != bytewise:
        raise AssertionError(f"whole {whole!r} != byte-by-byte {bytewise!r}")


if __name__ == "__main__":
    from _common import run

    run(one_input, "server_connection")
