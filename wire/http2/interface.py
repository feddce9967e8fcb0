"""The HTTP/2 engine interface: what the gRPC server connection needs from HTTP/2, and no more.

Theory of operation
-------------------
An engine is a sans-I/O HTTP/2 server connection. Bytes go in through ``receive_data()``; what
the peer said is reported *in the order it was said* by calling the methods of an
``EngineHandler`` (the gRPC layer), and what we answer is given back through the engine's
commands (``send_headers``, ``send_data``, ``reset_stream``, ...); bytes to write come out of
``data_to_send()``. The handler may call commands from inside its callbacks.

Both engines report the same facts with the same meaning:

* ``on_request`` is a new stream whose request header list passed the engine's RFC 9113
  section 8.2/8.3 checks; ``on_malformed`` a new stream whose header list did not, already
  reset with PROTOCOL_ERROR (section 8.1.1: a stream error). An engine may instead end the
  whole connection for some malformed requests (see the README's engine table).
* ``on_data`` carries the payload and ``flow_length``, the flow-control credit the frame used
  (padding included). The engine reopens the *connection* window by itself as DATA arrives; the
  owner gives the *stream's* credit back with ``acknowledge_data()`` once it has consumed the
  bytes, which is what keeps a slow consumer's stream window shut without stalling the other
  streams (as grpc-go splits the two windows).
* A connection-level fault of the peer ends the connection inside ``receive_data()``: the
  GOAWAY with the RFC 9113 error code is already queued when ``RemoteProtocolError`` is raised,
  and every later call of ``receive_data()`` is ignored.

Engines: ``wire.http2.h2engine.H2Engine`` (the default, over the ``h2`` library) and
``wire.http2.native.NativeEngine`` (over our own codec). ``open_engine()`` picks one by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["MAX_STREAM_ID", "Engine", "EngineHandler", "EngineLimits", "HeaderList"]

#: A header list as it goes on the wire: lower-case names and values, both bytes. A tuple is
#: taken to be a constant the engine may encode once and reuse.
HeaderList = Sequence[tuple[bytes, bytes]]

#: The largest stream identifier (RFC 9113 section 5.1.1: 31 bits); the first GOAWAY of a
#: graceful drain names it (section 6.8).
MAX_STREAM_ID = 2**31 - 1


@dataclass(frozen=True)
class EngineLimits:
    """The HTTP/2 settings and limits an engine is created with."""

    #: SETTINGS_MAX_CONCURRENT_STREAMS advertised. Engines do not enforce it themselves: the
    #: gRPC layer refuses streams beyond it with REFUSED_STREAM, a stream error.
    max_concurrent_streams: int
    #: SETTINGS_MAX_HEADER_LIST_SIZE advertised (the gRPC layer answers larger lists).
    max_header_list_size: int
    #: Header blocks above this many bytes (before decoding) or decoding above it end the
    #: connection with ENHANCE_YOUR_CALM.
    header_block_limit: int
    #: SETTINGS_INITIAL_WINDOW_SIZE advertised: each stream's receive window.
    initial_window_size: int
    #: SETTINGS_MAX_FRAME_SIZE advertised and enforced on received frames.
    max_frame_size: int
    #: Extra connection receive window opened at the start (WINDOW_UPDATE on stream 0).
    connection_window_increment: int


class EngineHandler(Protocol):
    """What an engine tells the gRPC layer, synchronously, in the order the peer said it."""

    def on_settings(self, initial_window_changed: bool) -> None:
        """A SETTINGS frame (not an ACK) was applied and acknowledged."""

    def on_request(self, stream_id: int, headers: list[tuple[bytes, bytes]],
                   end_stream: bool) -> None:
        """A new stream's valid request header list; ``end_stream``: the request is complete."""

    def on_malformed(self, stream_id: int, reason: str) -> None:
        """A new stream's request was malformed; the stream has been reset (PROTOCOL_ERROR)."""

    def on_data(self, stream_id: int, data: bytes, flow_length: int, end_stream: bool) -> None:
        """DATA on an open stream; ``flow_length`` is the credit to give back when consumed."""

    def on_trailers(self, stream_id: int) -> None:
        """The client ended its side with a trailer section."""

    def on_stream_reset(self, stream_id: int, error_code: int, remote: bool) -> None:
        """A stream was reset: by the peer (``remote``; the stream may be closed already, which
        still counts against rapid reset), or by the engine for a stream error."""

    def on_window_update(self, stream_id: int) -> None:
        """Our send window grew on ``stream_id`` (0: the whole connection)."""

    def on_ping(self) -> None:
        """A PING (not an ACK) arrived and has been answered."""

    def on_ping_ack(self, opaque: bytes) -> None:
        """The peer acknowledged one of our PINGs."""

    def on_goaway(self, error_code: int, last_stream_id: int, debug: bytes) -> None:
        """The peer sent GOAWAY (streams at or below ``last_stream_id`` go on)."""


class Engine(Protocol):
    """The server side of one HTTP/2 connection, as the gRPC layer drives it."""

    @property
    def highest_stream_id(self) -> int:
        """The highest stream the client opened (what a final GOAWAY names)."""

    @property
    def closed(self) -> bool:
        """True once the connection ended (GOAWAY sent by ``close()`` or a peer's fault)."""

    def receive_data(self, data: bytes) -> None:
        """Parse bytes read from the socket, calling the handler for each thing they say.

        Raises ``wire.errors.RemoteProtocolError`` (GOAWAY already queued) when the peer broke a
        connection-level rule. An exception raised by the handler propagates unchanged.
        """

    def data_to_send(self) -> bytes:
        """Bytes to write to the socket now (possibly empty)."""

    def buffered(self) -> int:
        """How many bytes ``data_to_send()`` would return."""

    def can_send(self, stream_id: int) -> bool:
        """True while ``stream_id`` is open and our side has not ended (END_STREAM or reset)."""

    def remote_closed(self, stream_id: int) -> bool:
        """True once the client can send nothing more on ``stream_id``."""

    def send_headers(self, stream_id: int, headers: HeaderList, end_stream: bool = False) -> None:
        """HEADERS (and CONTINUATION) on an open stream; nothing if we cannot send on it."""

    def send_data(self, stream_id: int, data: bytes | bytearray | memoryview,
                  end_stream: bool = False) -> int:
        """As much of ``data`` as the flow-control windows allow; return the bytes sent.

        END_STREAM is set only when all of ``data`` went out.
        """

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        """RST_STREAM on an open stream (nothing on one closed or never opened)."""

    def acknowledge_data(self, stream_id: int, flow_length: int) -> None:
        """Reopen ``stream_id``'s receive window by ``flow_length`` consumed bytes (at once;
        the gRPC layer batches). Nothing once the client can send no more on the stream."""

    def ping(self, opaque: bytes) -> None:
        """Send a PING carrying ``opaque`` (8 bytes)."""

    def goaway(self, error_code: int, debug: bytes = b"", last_stream_id: int | None = None,
               ) -> None:
        """GOAWAY naming ``last_stream_id`` (default: the highest stream processed), never
        more than an earlier GOAWAY named; the connection goes on until ``close()``."""

    def close(self, error_code: int, debug: bytes = b"") -> None:
        """GOAWAY and ignore all further input."""
