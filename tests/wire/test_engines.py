"""The two HTTP/2 engines side by side, sans-I/O: where they must agree, and where they differ.

Every case is a byte string sent after the connection preface to a ``ServerConnection`` on each
engine; the outcome is what the gRPC layer and the peer see (events, RST_STREAM codes, the
GOAWAY code and last stream id). ``DIFFERENCES`` is the README's engine table, case by case;
every other case must come out the same on both engines.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

import pytest
from hyperframe.frame import GoAwayFrame, PingFrame, RstStreamFrame, WindowUpdateFrame

from wire import ProtocolError, ServerConfig, ServerConnection
from wire.http2 import Engine, open_engine
from wire.status import ErrorCode

from .h2client import grpc_frame, grpc_request_headers
from .rawconn import (
    PREFACE,
    continuation_frame,
    data_frame,
    headers_frame,
    hpack_block,
    parse_frames,
    ping_frame,
    request_frames,
    rst_frame,
    settings_frame,
    table_size_update,
    window_update_frame,
)
from .service import ECHO, SLEEP

PROTOCOL_ERROR = ErrorCode.PROTOCOL_ERROR
FLOW_CONTROL_ERROR = ErrorCode.FLOW_CONTROL_ERROR


def raw(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", sid) \
        + payload


@dataclass(frozen=True)
class Outcome:
    events: tuple[str, ...]
    resets: tuple[tuple[int, int], ...]  # (stream, code) of the RST_STREAMs we sent
    goaway: tuple[int, int] | None  # (code, last stream) of a connection error


def outcome(http2: str, data: bytes) -> Outcome:
    conn = ServerConnection(ServerConfig(http2=http2))  # type: ignore[arg-type]
    conn.receive_data(PREFACE + settings_frame())
    conn.data_to_send()
    events: list[str] = []
    error = None
    try:
        events = [type(e).__name__ for e in conn.receive_data(data)]
    except ProtocolError as exc:
        error = int(exc.error_code)
    out = parse_frames(conn.data_to_send())
    resets = tuple((f.stream_id, f.error_code) for f in out if isinstance(f, RstStreamFrame))
    goaways = [(f.error_code, f.last_stream_id) for f in out if isinstance(f, GoAwayFrame)]
    if error is not None:
        assert goaways
        assert goaways[-1][0] == error
    return Outcome(tuple(events), resets, goaways[-1] if goaways else None)


HEADERS = grpc_request_headers(ECHO)
BLOCK = hpack_block(HEADERS)
OPEN = request_frames(1, SLEEP, None, end_stream=False)


def malformed(headers: list[tuple[bytes, bytes]]) -> bytes:
    return headers_frame(1, hpack_block(headers)) + data_frame(1, grpc_frame(b"x"),
                                                               end_stream=True)


STREAM_ERROR = Outcome(("RequestRejected",), ((1, PROTOCOL_ERROR),), None)
CONNECTION_ERROR = Outcome((), (), (PROTOCOL_ERROR, 1))

#: The README's engine table: (case, native's answer, h2's answer); None: served, no error.
DIFFERENCES: dict[str, tuple[bytes, Outcome | None, Outcome]] = {
    # RFC 9113 sections 8.1.1, 8.2, 8.3: a malformed request is a stream error; h2 makes it
    # a connection error.
    "malformed: te other than trailers": (
        malformed([(k, b"gzip" if k == b"te" else v) for k, v in HEADERS]),
        STREAM_ERROR, CONNECTION_ERROR),
    "malformed: upper-case field name": (
        malformed([*HEADERS, (b"X-Upper", b"1")]), STREAM_ERROR, CONNECTION_ERROR),
    "malformed: connection-specific field": (
        malformed([*HEADERS, (b"connection", b"close")]), STREAM_ERROR, CONNECTION_ERROR),
    "malformed: CR/LF in a value": (
        malformed([*HEADERS, (b"x-bad", b"a\r\nb")]), STREAM_ERROR, CONNECTION_ERROR),
    "malformed: space around a value": (
        malformed([*HEADERS, (b"x-space", b" padded")]), STREAM_ERROR, CONNECTION_ERROR),
    "malformed: pseudo-header after a regular field": (
        malformed([(b"x-first", b"1"), *HEADERS]), STREAM_ERROR, CONNECTION_ERROR),
    "malformed: repeated or unknown pseudo-header": (
        malformed([*HEADERS, (b":method", b"POST")]), STREAM_ERROR, CONNECTION_ERROR),
    "malformed: missing or empty :path": (
        malformed([h for h in HEADERS if h[0] != b":path"]), STREAM_ERROR, CONNECTION_ERROR),
    "malformed: invalid content-length": (
        malformed([*HEADERS, (b"content-length", b"x")]), STREAM_ERROR, CONNECTION_ERROR),
    "content-length unlike the DATA": (
        malformed([*HEADERS, (b"content-length", b"3")]),
        Outcome(("RequestReceived", "StreamReset"), ((1, PROTOCOL_ERROR),), None),
        CONNECTION_ERROR),
    # RFC 9113 section 5.3.2 deprecates the priority signals and drops RFC 7540's rule that
    # a stream may not depend on itself: the native codec ignores the field, h2 still ends
    # the connection.
    "HEADERS depending on its own stream": (
        raw(0x1, 0x4 | 0x20, 1, struct.pack(">IB", 1, 15) + BLOCK),
        Outcome(("RequestReceived",), (), None), CONNECTION_ERROR),
    "PRIORITY frame depending on its own stream": (
        OPEN + raw(0x2, 0, 1, struct.pack(">IB", 1, 15)),
        Outcome(("RequestReceived",), (), None),
        Outcome((), (), (PROTOCOL_ERROR, 1))),
    "second HEADERS without END_STREAM": (
        OPEN + headers_frame(1, hpack_block([(b"x-trailer", b"1")])),
        Outcome(("RequestReceived", "StreamReset"), ((1, PROTOCOL_ERROR),), None),
        Outcome((), (), (PROTOCOL_ERROR, 1))),
    # The native codec credits a window as it parses, so one burst may exceed what it had
    # advertised; h2 counts against what the client was told.
    "DATA beyond the stream window in one read": (
        OPEN + b"".join(data_frame(1, b"\0" * 16384) for _ in range(70)),
        None,
        Outcome((), (), (FLOW_CONTROL_ERROR, 1))),
    # Native answers as it parses: a call the gRPC layer ends at its END_STREAM (here a
    # truncated message: INTERNAL, Trailers-Only) is closed both ways before the next frame of
    # the same read, which is then a connection error; h2 reports the read's events after all
    # of it, so that frame met a half-closed stream: a stream error, and the answer is dropped.
    "DATA after END_STREAM in the read that ends the call": (
        headers_frame(1, BLOCK) + data_frame(1, b"\0\0\0\0\x09abc", end_stream=True)
        + data_frame(1, b"x"),
        Outcome((), (), (ErrorCode.STREAM_CLOSED, 1)),
        Outcome(("RequestReceived", "CallAborted"), ((1, ErrorCode.STREAM_CLOSED),), None)),
}

SAME: dict[str, bytes] = {
    "a plain request": request_frames(1),
    # The native-codec audit (issue 10, items 1 and 3), now answered alike:
    "HEADERS with padding into the priority fields":
        raw(0x1, 0x8 | 0x20, 1, bytes([2]) + b"\0" * 6),
    "DATA on an even stream below the highest": request_frames(3) + data_frame(2, b"x"),
    "RST_STREAM on an even stream below the highest": request_frames(3) + rst_frame(2),
    "DATA after END_STREAM": request_frames(1, SLEEP, b"x") + data_frame(1, b"x"),
    "trailers twice": OPEN + headers_frame(1, hpack_block([(b"x-t", b"1")]), end_stream=True)
    * 2,
    "stream window above 2^31-1": OPEN + window_update_frame(1, 2**31 - 1),
    "connection window above 2^31-1": window_update_frame(0, 2**31 - 1),
    "WINDOW_UPDATE of 0 on a stream": OPEN + raw(0x8, 0, 1, b"\0\0\0\0"),
    "WINDOW_UPDATE of 0 on the connection": raw(0x8, 0, 0, b"\0\0\0\0"),
    "WINDOW_UPDATE on an idle stream": window_update_frame(7, 1),
    "RST_STREAM on an idle stream": rst_frame(7),
    "RST_STREAM on stream 0": raw(0x3, 0, 0, b"\0\0\0\x08"),
    "RST_STREAM of 5 bytes": OPEN + raw(0x3, 0, 1, b"\0" * 5),
    "client reset of an open stream": OPEN + rst_frame(1),
    "HEADERS padding too long": raw(0x1, 0x4 | 0x8, 1, bytes([200]) + BLOCK),
    "DATA padding too long": OPEN + raw(0x0, 0x8, 1, bytes([10]) + b"abc"),
    "even stream id": request_frames(2),
    "lower stream id after a higher": request_frames(5) + request_frames(3),
    "PUSH_PROMISE from a client": raw(0x5, 0x4, 1, b"\0\0\0\x02" + BLOCK),
    "unknown frame type": raw(0x20, 0, 0, b"abc") + request_frames(1),
    "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1": raw(0x4, 0, 0, struct.pack(">HI", 4, 2**31)),
    "SETTINGS_MAX_FRAME_SIZE out of range": raw(0x4, 0, 0, struct.pack(">HI", 5, 100)),
    "SETTINGS_ENABLE_PUSH of 2": raw(0x4, 0, 0, struct.pack(">HI", 2, 2)),
    "SETTINGS ACK with a payload": raw(0x4, 0x1, 0, b"\0" * 6),
    "SETTINGS of 5 bytes": raw(0x4, 0, 0, b"\0" * 5),
    "CONTINUATION without HEADERS": raw(0x9, 0x4, 1, BLOCK),
    "DATA inside a header block": raw(0x1, 0, 1, BLOCK) + data_frame(1, b"x"),
    "GOAWAY on a stream": raw(0x7, 0, 1, b"\0" * 8),
    "GOAWAY of 4 bytes": raw(0x7, 0, 0, b"\0" * 4),
    "GOAWAY, then a request": raw(0x7, 0, 0, b"\0" * 8) + request_frames(1),
    "PING on a stream": raw(0x6, 0, 1, b"\0" * 8),
    "PING of 7 bytes": raw(0x6, 0, 0, b"\0" * 7),
    "PING": ping_frame(),
    "PING ACK": PingFrame(0, flags=["ACK"]).serialize(),
    "DATA on stream 0": raw(0x0, 0, 0, b"x"),
    "HEADERS on stream 0": raw(0x1, 0x4, 0, BLOCK),
    "frame above SETTINGS_MAX_FRAME_SIZE": raw(0x0, 0, 1, b"\0" * 16385),
    "HPACK garbage": headers_frame(1, b"\xff\xff\xff\xff\xff"),
    "HPACK table size above our setting": headers_frame(1, table_size_update(8192) + BLOCK),
    "header block above the hard limit": raw(0x1, 0, 1, b"\0" * 16000)
    + b"".join(continuation_frame(1, b"\0" * 16000) for _ in range(4)),
    "65 CONTINUATION frames": headers_frame(1, BLOCK[:1], end_headers=False)
    + continuation_frame(1, b"") * 65,
    "a header block in CONTINUATION frames": headers_frame(1, BLOCK[:5], end_headers=False)
    + continuation_frame(1, BLOCK[5:20]) + continuation_frame(1, BLOCK[20:], end_headers=True)
    + data_frame(1, grpc_frame(b"x"), end_stream=True),
    # Found by the differential fuzzer (fuzz/fuzz_engines.py), each once a difference:
    "PING of 0 bytes on a stream": raw(0x6, 0, 1, b""),
    "SETTINGS of 9 bytes on a stream": raw(0x4, 0, 7, b"\0" * 9),
    "HEADERS on stream 0, too short for its priority": raw(0x1, 0x20, 0, b"\0"),
    "ALTSVC from a client (ignored)": raw(0xA, 0, 0, b"") + request_frames(1),
    "PUSH_PROMISE of 4 bytes": raw(0x5, 0, 8, b"\0" * 4),
    "CONTINUATION on a closed stream": request_frames(1) + raw(0x9, 0x4, 1, b"\0"),
    "padded DATA of 0 bytes": OPEN + raw(0x0, 0x8, 1, b""),
    "PRIORITY inside a header block": raw(0x1, 0, 1, BLOCK[:4]) + raw(0x2, 0, 1, b"\0" * 3),
    "SETTINGS_MAX_FRAME_SIZE invalid, then valid, in one frame": raw(
        0x4, 0, 0, struct.pack(">HIHI", 5, 900, 5, 20000)),
    "DATA on a stream closed both ways": request_frames(1) + data_frame(1, b"x"),
    "DATA on a stream never opened, below the highest": raw(0xB, 0, 1, b"")
    + request_frames(3) + data_frame(1),
    "WINDOW_UPDATE after the client's reset": OPEN + rst_frame(1) + window_update_frame(1, 9),
    "DATA frames after the client's reset": OPEN + rst_frame(1) + data_frame(1, b"x") * 5,
    "header list between the soft and hard limits":
        request_frames(1, ECHO, b"x", extra=[(b"x-big", b"v" * 20_000)]),
}


@pytest.mark.parametrize("case", list(DIFFERENCES))
def test_documented_difference(case: str) -> None:
    data, native, h2 = DIFFERENCES[case]
    got_native = outcome("native", data)
    if native is None:
        assert got_native.goaway is None
        assert not got_native.resets
    else:
        assert got_native == native
    assert outcome("h2", data) == h2


@pytest.mark.parametrize("case", list(SAME))
def test_engines_agree(case: str) -> None:
    assert outcome("h2", SAME[case]) == outcome("native", SAME[case])


def test_unknown_engine_is_a_value_error_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"ServerConfig\.http2 .*'spdy'"):
        ServerConfig(http2="spdy")  # type: ignore[arg-type]


def test_default_engine_is_h2() -> None:
    assert ServerConfig().http2 == "h2"
    assert ServerConnection().http2 == "h2"


class _Recorder:
    """An EngineHandler that writes down what it is told."""

    def __init__(self) -> None:
        self.seen: list[tuple[object, ...]] = []

    def on_settings(self, initial_window_changed: bool) -> None:
        self.seen.append(("settings", initial_window_changed))

    def on_request(self, stream_id: int, headers: list[tuple[bytes, bytes]],
                   end_stream: bool) -> None:
        self.seen.append(("request", stream_id, end_stream))

    def on_malformed(self, stream_id: int, reason: str) -> None:
        self.seen.append(("malformed", stream_id))

    def on_data(self, stream_id: int, data: bytes, flow_length: int, end_stream: bool) -> None:
        self.seen.append(("data", stream_id, len(data), flow_length, end_stream))

    def on_trailers(self, stream_id: int) -> None:
        self.seen.append(("trailers", stream_id))

    def on_stream_reset(self, stream_id: int, error_code: int, remote: bool) -> None:
        self.seen.append(("reset", stream_id, error_code, remote))

    def on_window_update(self, stream_id: int) -> None:
        self.seen.append(("window", stream_id))

    def on_ping(self) -> None:
        self.seen.append(("ping",))

    def on_ping_ack(self, opaque: bytes) -> None:
        self.seen.append(("ping-ack", opaque))

    def on_goaway(self, error_code: int, last_stream_id: int, debug: bytes) -> None:
        self.seen.append(("goaway", error_code, last_stream_id, debug))


def _engine(http2: str, handler: _Recorder) -> Engine:
    limits = replace(ServerConfig(), initial_window_size=65535,
                     connection_window_increment=0).engine_limits()
    engine = open_engine(http2, handler, limits)
    engine.receive_data(PREFACE + settings_frame())
    engine.data_to_send()
    return engine


def _window_updates(engine: Engine) -> list[tuple[int, int]]:
    return [(f.stream_id, f.window_increment) for f in parse_frames(engine.data_to_send())
            if isinstance(f, WindowUpdateFrame)]


@pytest.mark.parametrize("http2", ["h2", "native"])
def test_engine_reopens_the_connection_on_arrival_and_a_stream_when_acknowledged(
        http2: str) -> None:
    # What client streaming needs: a stream's window reopens as the handler consumes, not on
    # arrival; the connection's on arrival, so one slow stream never stalls the others.
    rec = _Recorder()
    engine = _engine(http2, rec)
    engine.receive_data(headers_frame(1, BLOCK) + data_frame(1, b"x" * 16000) * 3)
    assert rec.seen[-1][:4] == ("data", 1, 16000, 16000)
    assert _window_updates(engine) == [(0, 48000)]
    engine.acknowledge_data(1, 48000)
    assert _window_updates(engine) == [(1, 48000)]
    engine.receive_data(data_frame(1, b"", end_stream=True))
    engine.acknowledge_data(1, 100)  # the client has ended its side: nothing to reopen
    assert _window_updates(engine) == []


@pytest.mark.parametrize("http2", ["h2", "native"])
def test_engine_reports_in_order_and_goaway_never_increases(http2: str) -> None:
    rec = _Recorder()
    engine = _engine(http2, rec)
    engine.receive_data(request_frames(1) + ping_frame(b"12345678")
                        + PingFrame(0, flags=["ACK"], opaque_data=b"drain\0\0\0").serialize()
                        + raw(0x7, 0, 0, struct.pack(">II", 1, 0) + b"bye"))
    assert [s[0] for s in rec.seen] == ["settings", "request", "data", "ping", "ping-ack",
                                        "goaway"]
    assert rec.seen[-1] == ("goaway", 0, 1, b"bye")
    engine.goaway(0, last_stream_id=2**31 - 1)
    engine.goaway(0)
    engine.goaway(0, last_stream_id=2**31 - 1)
    assert [f.last_stream_id for f in parse_frames(engine.data_to_send())
            if isinstance(f, GoAwayFrame)] == [2**31 - 1, 1, 1]


def test_server_http2_argument_picks_the_engine() -> None:
    from wire import Server, ServerConfig

    assert Server().config.http2 == "h2"
    assert Server(http2="native").config.http2 == "native"
    config = ServerConfig(max_concurrent_streams=7, http2="native")
    server = Server(config=config, http2="h2")
    assert server.config.http2 == "h2"
    assert server.config.max_concurrent_streams == 7
    with pytest.raises(ValueError, match=r"ServerConfig\.http2"):
        Server(http2="h3")  # type: ignore[arg-type]
