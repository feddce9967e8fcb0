"""The native engine: our own RFC 9113 server codec (``wire.h2codec``) behind the engine API.

The codec already reports as it parses, through a handler with the engine handler's methods, so
this adapter only adds what the interface asks beyond it: header lists in (encoded here, once
per process for constant ones), ``RemoteProtocolError`` out, GOAWAY naming any stream (the first
GOAWAY of a graceful drain names 2^31-1), and PING acknowledgements reported to the handler.

Flow control: the codec reopens the connection window by itself as DATA arrives (once half of
it is used), and each stream's window as ``acknowledge_data()`` gives the credit back
(``manual_stream_credit``), so a handler that does not read keeps its client's stream window
shut, as under the h2 engine.
"""

from __future__ import annotations

import dataclasses
import struct

from ..errors import RemoteProtocolError
from ..h2codec import H2ConnectionError, H2ServerCodec, encode_headers
from .interface import EngineHandler, EngineLimits, HeaderList

__all__ = ["NativeEngine"]

_GOAWAY = 0x7
_ACK = 0x1
_GOAWAY_BODY = struct.Struct(">II")

# Constant header lists (tuples) encoded once, Huffman-coded, for every connection: the codec's
# encoding never touches a dynamic table, so the bytes are the same on any stream.
_constant_blocks: dict[HeaderList, bytes] = {}


class _Codec(H2ServerCodec):
    """The codec with the two additions the engine interface needs."""

    def __init__(self, handler: EngineHandler, limits: EngineLimits) -> None:
        # EngineLimits' fields are the codec's keyword arguments, name for name.
        super().__init__(handler, **dataclasses.asdict(limits), manual_stream_credit=True)
        self._ping_ack = handler.on_ping_ack
        self._last_goaway: int | None = None

    def _receive_ping(self, flags: int, sid: int, buf: bytearray, start: int,
                      length: int) -> None:
        super()._receive_ping(flags, sid, buf, start, length)
        if flags & _ACK:
            # The codec drops PING ACKs; a graceful drain waits for one (RFC 9113 section 6.8).
            self._ping_ack(bytes(buf[start:start + 8]))

    def goaway(self, error_code: int, debug: bytes = b"") -> None:
        # Also the codec's own GOAWAY before a connection error: never above an earlier one.
        self.goaway_to(None, error_code, debug)

    def goaway_to(self, last_stream_id: int | None, error_code: int, debug: bytes) -> None:
        """GOAWAY naming ``last_stream_id`` (None: the highest stream processed)."""
        if self.closed:
            return
        last = self.highest_stream_id if last_stream_id is None else last_stream_id
        # RFC 9113 section 6.8: "Endpoints MUST NOT increase the value they send in the last
        # stream identifier, since the peers might already have retried unprocessed requests".
        if self._last_goaway is not None:
            last = min(last, self._last_goaway)
        self._last_goaway = last
        self._frame(_GOAWAY, 0, 0, _GOAWAY_BODY.pack(last, error_code) + debug)


class NativeEngine:
    """``Engine`` over ``wire.h2codec.H2ServerCodec``."""

    name = "native"

    def __init__(self, handler: EngineHandler, limits: EngineLimits) -> None:
        self._codec = codec = _Codec(handler, limits)
        # The hot commands go straight to the codec.
        self.data_to_send = codec.data_to_send
        self.buffered = codec.buffered
        self.can_send = codec.can_send
        self.remote_closed = codec.remote_closed
        self.send_data = codec.send_data
        self.reset_stream = codec.reset_stream

    @property
    def highest_stream_id(self) -> int:
        return self._codec.highest_stream_id

    @property
    def closed(self) -> bool:
        return self._codec.closed

    def receive_data(self, data: bytes) -> None:
        try:
            self._codec.receive_data(data)
        except H2ConnectionError as exc:
            raise RemoteProtocolError(exc.message, exc.error_code) from None

    def send_headers(self, stream_id: int, headers: HeaderList, end_stream: bool = False) -> None:
        if type(headers) is tuple:
            block = _constant_blocks.get(headers)
            if block is None:
                if len(_constant_blocks) >= 256:
                    _constant_blocks.clear()
                block = _constant_blocks[headers] = encode_headers(headers, huffman=True)
        else:
            block = encode_headers(headers)
        self._codec.send_headers(stream_id, block, end_stream)

    def acknowledge_data(self, stream_id: int, flow_length: int) -> None:
        self._codec.acknowledge(stream_id, flow_length)

    def ping(self, opaque: bytes) -> None:
        self._codec.ping(opaque)

    def goaway(self, error_code: int, debug: bytes = b"", last_stream_id: int | None = None,
               ) -> None:
        self._codec.goaway_to(last_stream_id, error_code, debug)

    def close(self, error_code: int, debug: bytes = b"") -> None:
        self._codec.close(error_code, debug)
