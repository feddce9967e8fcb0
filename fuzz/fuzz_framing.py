"""Fuzz the gRPC message decoder.

Invariant: feeding the input whole and feeding it one byte at a time end the same way (the same
RpcError code, or a clean end) and, on a clean end, yield the same messages; when the input ends
in an error, the messages a whole feed returned are a prefix of the byte-by-byte ones (a feed that
raises does not also return what it decoded before the error). Only ``RpcError`` may escape.
The first input byte picks the receive limit and whether gzip is the negotiated encoding.
"""

from __future__ import annotations

from wire.errors import RpcError
from wire.framing import MessageDecoder


def _decode(data: bytes, limit: int, encoding: str | None, step: int) -> tuple[list[bytes], object]:
    dec = MessageDecoder(max_message_size=limit, encoding=encoding)
    out: list[bytes] = []
    try:
        for i in range(0, len(data), step):
            out.extend(dec.feed(data[i : i + step]))
        dec.end()
    except RpcError as exc:
        return out, exc.code
    return out, None


def one_input(data: bytes) -> None:
    """Decode ``data[1:]`` whole and byte by byte; the results must agree."""
    if not data:
        return
    knob, body = data[0], data[1:]
    limit = (knob & 0x3F) * 64 + 1
    encoding = "gzip" if knob & 0x40 else None
    whole = _decode(body, limit, encoding, max(1, len(body)))
    bytewise = _decode(body, limit, encoding, 1)
    (whole_msgs, whole_end), (byte_msgs, byte_end) = whole, bytewise
    if whole_end != byte_end:
        raise AssertionError(f"whole ended {whole_end!r}, byte-by-byte {byte_end!r}")
    if whole_end is None and whole_msgs != byte_msgs:
        raise AssertionError(f"whole {whole_msgs!r} != byte-by-byte {byte_msgs!r}")
    if byte_msgs[: len(whole_msgs)] != whole_msgs:
        raise AssertionError(f"whole {whole_msgs!r} is not a prefix of {byte_msgs!r}")
    for message in byte_msgs:
        if len(message) > limit:
            raise AssertionError("a message above the receive limit was returned")


if __name__ == "__main__":
    from _common import run

    run(one_input, "framing")
