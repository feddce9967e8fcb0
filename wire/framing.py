"""gRPC length-prefixed message framing.

Owns the 5-byte prefix (1 byte compressed flag, 4 bytes big-endian length) and an incremental
decoder. DATA frame boundaries are unrelated to message boundaries, so the decoder accepts any
split of the byte stream. The receive limit is decided from the prefix alone: a message announced
larger than the limit is refused before a single byte of its body is buffered.
"""

from __future__ import annotations

import struct

from .compression import decompress
from .errors import RpcError
from .status import StatusCode

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "MessageDecoder", "encode_message"]

DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024

_PREFIX = struct.Struct(">BI")
_PREFIX_LEN = _PREFIX.size


def encode_message(payload: bytes, *, compressed: bool = False) -> bytes:
    """Prefix an (already compressed, if ``compressed``) payload for the wire."""
    return _PREFIX.pack(1 if compressed else 0, len(payload)) + payload


class MessageDecoder:
    """Incremental decoder of length-prefixed messages from one direction of one stream."""

    __slots__ = ("_buffer", "_encoding", "_max_size")

    def __init__(
        self, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, encoding: str | None = None
    ) -> None:
        self._max_size = max_message_size
        self._encoding = encoding
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes held for a message not yet complete."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return every message they complete (decompressed)."""
        buf = self._buffer
        if not buf and len(data) >= _PREFIX_LEN:
            # Fast path: one whole message in one DATA frame, the common unary case.
            flag, length = _PREFIX.unpack_from(data)
            if len(data) == _PREFIX_LEN + length:
                self._check_prefix(flag, length)
                return [self._finish(flag, bytes(data[_PREFIX_LEN:]))]
        buf += data
        messages: list[bytes] = []
        while True:
            if len(buf) < _PREFIX_LEN:
                return messages
            flag, length = _PREFIX.unpack_from(buf)
            self._check_prefix(flag, length)
            end = _PREFIX_LEN + length
            if len(buf) < end:
                return messages
            payload = bytes(buf[_PREFIX_LEN:end])
            del buf[:end]
            messages.append(self._finish(flag, payload))

    def end(self) -> None:
        """Declare the stream ended; a partial message left over is an error."""
        if self._buffer:
            have = len(self._buffer)
            if have < _PREFIX_LEN:
                detail = f"{have} of 5 prefix bytes"
            else:
                _, length = _PREFIX.unpack_from(self._buffer)
                detail = f"{have - _PREFIX_LEN} of {length} bytes"
            raise RpcError(
                StatusCode.INTERNAL, f"stream ended inside a message (received {detail})"
            )

    def _check_prefix(self, flag: int, length: int) -> None:
        if flag > 1:
            raise RpcError(StatusCode.INTERNAL, f"invalid compressed flag {flag} in message prefix")
        if length > self._max_size:
            raise RpcError(
                StatusCode.RESOURCE_EXHAUSTED,
                f"received message larger than max ({length} vs. {self._max_size})",
            )

    def _finish(self, flag: int, payload: bytes) -> bytes:
        if flag:
            return decompress(self._encoding, payload, self._max_size)
        return payload
