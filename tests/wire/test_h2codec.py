"""Sans-I/O tests of the HTTP/2 server codec (wire/h2codec.py) through ``ServerConnection``.

Each test feeds hand-made frames (hyperframe, and HPACK blocks that never touch the dynamic
table) and checks the RFC 9113 answer: the GOAWAY or RST_STREAM code, or the events.
"""

from __future__ import annotations

import struct
from dataclasses import replace

import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from wire import ProtocolError, ServerConfig, ServerConnection, StatusCode
from wire.events import (
    ConnectionTerminated,
    Event,
    MessageReceived,
    RequestEnded,
    RequestReceived,
    RequestRejected,
    StreamReset,
)
from wire.h2codec import encode_headers

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
    window_update_frame,
)
from .service import ECHO

PROTOCOL_ERROR = 0x1
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB


def connect(settings: dict[int, int] | None = None,
            config: ServerConfig | None = None) -> ServerConnection:
    # These are the native codec's own tests (the engine-neutral ones are in test_sansio.py).
    conn = ServerConnection(replace(config or ServerConfig(), http2="native"))
    conn.receive_data(PREFACE + settings_frame(settings))
    conn.data_to_send()
    return conn


def frames_out(conn: ServerConnection) -> list[Frame]:
    return parse_frames(conn.data_to_send())


def goaway_of(conn: ServerConnection, data: bytes) -> GoAwayFrame:
    with pytest.raises(ProtocolError):
        conn.receive_data(data)
    assert conn.closed
    [goaway] = [f for f in frames_out(conn) if isinstance(f, GoAwayFrame)]
    assert conn.receive_data(request_frames(99)) == []  # input after the close is ignored
    return goaway


def rst_of(frames: list[Frame], sid: int) -> int:
    [rst] = [f for f in frames if isinstance(f, RstStreamFrame) and f.stream_id == sid]
    return int(rst.error_code)


def raw_frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((ftype, flags)) + struct.pack(
        ">I", sid) + payload


def kinds(events: list[Event]) -> list[type]:
    return [type(e) for e in events]


# ------------------------------------------------------------------------------- preface


def test_server_preface_settings_and_window() -> None:
    conn = ServerConnection(ServerConfig(max_concurrent_streams=7, initial_window_size=12345,
                                         http2="native"))
    settings, window = parse_frames(conn.data_to_send())
    assert isinstance(settings, SettingsFrame)
    assert isinstance(window, WindowUpdateFrame)
    assert settings.settings == {
        SettingsFrame.MAX_CONCURRENT_STREAMS: 7,
        SettingsFrame.MAX_HEADER_LIST_SIZE: 16 * 1024,
        SettingsFrame.INITIAL_WINDOW_SIZE: 12345,
        SettingsFrame.MAX_FRAME_SIZE: 16384,
        SettingsFrame.ENABLE_PUSH: 0,
    }
    assert window.stream_id == 0
    assert window.window_increment == 4 * 1024 * 1024 - 65535


def test_preface_dripped_byte_by_byte_then_settings_acked() -> None:
    conn = ServerConnection(ServerConfig(http2="native"))
    conn.data_to_send()
    for b in PREFACE + settings_frame():
        assert not conn.preface_received
        conn.receive_data(bytes([b]))
    assert conn.preface_received
    [ack] = frames_out(conn)
    assert isinstance(ack, SettingsFrame)
    assert "ACK" in ack.flags


def test_first_frame_must_be_settings() -> None:
    conn = ServerConnection(ServerConfig(http2="native"))
    goaway = goaway_of(conn, PREFACE + ping_frame())
    assert goaway.error_code == PROTOCOL_ERROR
    assert b"preamble" in goaway.additional_data


# ------------------------------------------------------------------------------- SETTINGS


@pytest.mark.parametrize(
    ("settings", "code"),
    [
        ({SettingsFrame.INITIAL_WINDOW_SIZE: 2**31}, FLOW_CONTROL_ERROR),
        ({SettingsFrame.MAX_FRAME_SIZE: 16383}, PROTOCOL_ERROR),
        ({SettingsFrame.MAX_FRAME_SIZE: 2**24}, PROTOCOL_ERROR),
        ({SettingsFrame.ENABLE_PUSH: 2}, PROTOCOL_ERROR),
    ],
)
def test_invalid_settings_values(settings: dict[int, int], code: int) -> None:
    assert goaway_of(connect(), settings_frame(settings)).error_code == code


def test_settings_malformed_frames() -> None:
    assert goaway_of(connect(), raw_frame(0x4, 0, 0, b"\0" * 5)).error_code == FRAME_SIZE_ERROR
    assert goaway_of(connect(), raw_frame(0x4, 0x1, 0, b"\0" * 6)).error_code == FRAME_SIZE_ERROR
    assert goaway_of(connect(), raw_frame(0x4, 0, 1, b"")).error_code == PROTOCOL_ERROR


def test_unknown_setting_ignored_and_acked() -> None:
    conn = connect()
    conn.receive_data(raw_frame(0x4, 0, 0, struct.pack(">HI", 0x99, 7)))
    [ack] = frames_out(conn)
    assert isinstance(ack, SettingsFrame)
    assert "ACK" in ack.flags


def test_initial_window_change_applies_to_open_streams() -> None:
    conn = connect({SettingsFrame.INITIAL_WINDOW_SIZE: 0})
    conn.receive_data(request_frames(1, ECHO, b"x"))
    conn.send_message(1, b"y" * 100)
    assert conn.pending_output(1) == 105
    frames_out(conn)
    conn.receive_data(settings_frame({SettingsFrame.INITIAL_WINDOW_SIZE: 50}))
    data = [f for f in frames_out(conn) if isinstance(f, DataFrame)]
    assert sum(len(f.data) for f in data) == 50
    assert conn.pending_output(1) == 55
    # Raising an open stream's window past 2^31-1 is a connection error.
    conn.receive_data(window_update_frame(1, 2**31 - 1 - 0))
    assert goaway_of(conn, settings_frame({SettingsFrame.INITIAL_WINDOW_SIZE: 2**31 - 1})
                     ).error_code == FLOW_CONTROL_ERROR


def test_peer_max_frame_size_splits_data_and_headers() -> None:
    conn = connect({SettingsFrame.MAX_FRAME_SIZE: 16384})
    conn.receive_data(request_frames(1, ECHO, b"x"))
    conn.send_headers(1, [("x-big", "v" * 20000)])
    conn.send_message(1, b"z" * 40000)
    out = frames_out(conn)
    assert [type(f) for f in out[:2]] == [HeadersFrame, ContinuationFrame]
    assert "END_HEADERS" not in out[0].flags
    assert "END_HEADERS" in out[1].flags
    data = [f for f in out if isinstance(f, DataFrame)]
    assert all(len(f.data) <= 16384 for f in data)
    assert sum(len(f.data) for f in data) == 40005


def test_smaller_header_table_size_is_acknowledged_in_next_block() -> None:
    conn = connect({SettingsFrame.HEADER_TABLE_SIZE: 0})
    conn.receive_data(request_frames(1, ECHO, b"x"))
    conn.send_message(1, b"y")
    conn.send_status(1, StatusCode.OK)
    blocks = [f.data for f in frames_out(conn) if isinstance(f, HeadersFrame)]
    assert blocks[0][:1] == b"\x20"  # dynamic table size update to 0
    assert blocks[1][:1] != b"\x20"
    dec = hpack.Decoder()
    dec.header_table_size = 0
    assert dec.decode(blocks[0], raw=True)[0] == (b":status", b"200")


# ------------------------------------------------------------------------------- frames


def test_frame_larger_than_our_max_frame_size() -> None:
    conn = connect()
    frame = raw_frame(0x0, 0, 1, b"\0" * 16385)
    assert goaway_of(conn, frame).error_code == FRAME_SIZE_ERROR


def test_unknown_frame_type_ignored() -> None:
    conn = connect()
    events = conn.receive_data(raw_frame(0xEE, 0xFF, 1, b"whatever") + request_frames(1))
    assert kinds(events) == [RequestReceived, MessageReceived, RequestEnded]


def test_push_promise_from_client_is_protocol_error() -> None:
    conn = connect()
    assert goaway_of(conn, raw_frame(0x5, 0x4, 1, b"\0\0\0\x02")).error_code == PROTOCOL_ERROR


def test_ping_acked_with_same_payload() -> None:
    conn = connect()
    conn.receive_data(ping_frame(b"12345678"))
    [ack] = frames_out(conn)
    assert isinstance(ack, PingFrame)
    assert "ACK" in ack.flags
    assert ack.opaque_data == b"12345678"
    conn.receive_data(raw_frame(0x6, 0x1, 0, b"87654321"))  # an ACK: no answer
    assert frames_out(conn) == []
    assert goaway_of(conn, raw_frame(0x6, 0, 0, b"1234567")).error_code == FRAME_SIZE_ERROR


def test_goaway_received() -> None:
    conn = connect()
    events = conn.receive_data(raw_frame(0x7, 0, 0, struct.pack(">II", 0, 0) + b"bye"))
    assert events == [ConnectionTerminated(0, 0, b"bye")]


def test_priority_frames() -> None:
    conn = connect()
    assert conn.receive_data(raw_frame(0x2, 0, 1, b"\0\0\0\0\x10")) == []  # idle: fine
    assert frames_out(conn) == []
    assert goaway_of(connect(), raw_frame(0x2, 0, 1, b"\0" * 4)).error_code == FRAME_SIZE_ERROR
    assert goaway_of(connect(), raw_frame(0x2, 0, 0, b"\0" * 5)).error_code == PROTOCOL_ERROR


# ------------------------------------------------------------------------------- WINDOW_UPDATE


def test_window_update_rules() -> None:
    assert goaway_of(connect(), raw_frame(0x8, 0, 0, b"\0\0\0\0")).error_code == PROTOCOL_ERROR
    assert goaway_of(connect(), raw_frame(0x8, 0, 0, b"\0\0\1")).error_code == FRAME_SIZE_ERROR
    assert goaway_of(connect(), window_update_frame(3, 1)).error_code == PROTOCOL_ERROR  # idle
    conn = connect()
    conn.receive_data(request_frames(1, ECHO, None, end_stream=False))
    events = conn.receive_data(raw_frame(0x8, 0, 1, b"\0\0\0\0"))
    assert events == [StreamReset(1, PROTOCOL_ERROR)]
    assert rst_of(frames_out(conn), 1) == PROTOCOL_ERROR
    assert not conn.closed


def test_receive_windows_reopen_at_half() -> None:
    config = ServerConfig(initial_window_size=65535, connection_window_increment=0)
    conn = connect(config=config)
    conn.receive_data(request_frames(1, ECHO, None, end_stream=False))
    frames_out(conn)
    chunk = b"\0\0\0\x80\0" + b"x" * (16384 - 5)
    conn.receive_data(data_frame(1, chunk))
    assert frames_out(conn) == []
    conn.receive_data(data_frame(1, b"x" * 16384))
    updates = {f.stream_id: f.window_increment for f in frames_out(conn)
               if isinstance(f, WindowUpdateFrame)}
    assert updates == {0: 32768, 1: 32768}


def test_data_beyond_windows() -> None:
    config = ServerConfig(initial_window_size=65535, connection_window_increment=0,
                          max_frame_size=1 << 20)
    conn = connect(config=config)
    conn.receive_data(request_frames(1, ECHO, None, end_stream=False))
    # One frame larger than the connection window (padding counts too).
    goaway = goaway_of(conn, raw_frame(0x0, 0x8, 1, b"\xff" + b"\0" * 65535))
    assert goaway.error_code == FLOW_CONTROL_ERROR
    # Within the connection window but beyond the stream's: a stream error.
    config = ServerConfig(initial_window_size=65535, max_frame_size=1 << 20)
    conn = connect(config=config)
    conn.receive_data(request_frames(1, ECHO, None, end_stream=False))
    events = conn.receive_data(data_frame(1, b"\0" * 65536))
    assert events == [StreamReset(1, FLOW_CONTROL_ERROR)]
    assert rst_of(frames_out(conn), 1) == FLOW_CONTROL_ERROR


# ------------------------------------------------------------------------------- DATA


def test_padded_data_counts_padding_and_delivers_payload() -> None:
    conn = connect()
    conn.receive_data(request_frames(1, ECHO, None, end_stream=False))
    body = grpc_frame(b"hello")
    events = conn.receive_data(raw_frame(0x0, 0x8 | 0x1, 1, bytes([3]) + body + b"\0\0\0"))
    assert events == [MessageReceived(1, b"hello"), RequestEnded(1)]
    bad = raw_frame(0x0, 0x8, 3, bytes([5]) + b"1234")
    conn.receive_data(request_frames(3, ECHO, None, end_stream=False))
    assert goaway_of(conn, bad).error_code == PROTOCOL_ERROR


def test_data_on_stream_0_and_idle_stream() -> None:
    assert goaway_of(connect(), raw_frame(0x0, 0, 0, b"x")).error_code == PROTOCOL_ERROR
    assert goaway_of(connect(), data_frame(1, b"x")).error_code == PROTOCOL_ERROR


def test_data_after_end_stream_is_stream_closed() -> None:
    conn = connect()
    conn.receive_data(request_frames(1, "/test.Wire/Sleep"))  # half-closed (remote), running
    events = conn.receive_data(data_frame(1, b"late"))
    assert events == [StreamReset(1, STREAM_CLOSED)]
    assert rst_of(frames_out(conn), 1) == STREAM_CLOSED
    # Once we reset it, further frames on it are ignored quietly.
    assert conn.receive_data(data_frame(1, b"more") * 5) == []
    assert not any(isinstance(f, RstStreamFrame) for f in frames_out(conn))


def test_content_length_mismatch_is_malformed() -> None:
    conn = connect()
    block = hpack_block([*grpc_request_headers(ECHO), (b"content-length", b"3")])
    events = conn.receive_data(headers_frame(1, block) + data_frame(1, b"1234"))
    assert kinds(events) == [RequestReceived, StreamReset]
    assert rst_of(frames_out(conn), 1) == PROTOCOL_ERROR
    events = conn.receive_data(headers_frame(3, block, end_stream=True))
    assert kinds(events) == [RequestRejected]
    assert rst_of(frames_out(conn), 3) == PROTOCOL_ERROR


# ------------------------------------------------------------------------------- HEADERS


def test_headers_with_padding_and_priority() -> None:
    conn = connect()
    block = hpack_block(grpc_request_headers(ECHO))
    # PADDED | PRIORITY | END_HEADERS: pad length, 5 priority bytes, block, padding.
    payload = bytes([4]) + struct.pack(">IB", 0, 15) + block + b"\0" * 4
    events = conn.receive_data(raw_frame(0x1, 0x8 | 0x20 | 0x4, 1, payload)
                               + data_frame(1, grpc_frame(b"p"), end_stream=True))
    assert kinds(events) == [RequestReceived, MessageReceived, RequestEnded]


def test_stream_id_rules() -> None:
    assert goaway_of(connect(), request_frames(2)).error_code == PROTOCOL_ERROR  # even
    assert goaway_of(connect(), raw_frame(0x1, 0x4, 0, b"")).error_code == PROTOCOL_ERROR
    conn = connect()
    conn.receive_data(request_frames(5))
    goaway = goaway_of(conn, request_frames(3))  # lower than the highest
    assert goaway.error_code == PROTOCOL_ERROR
    assert goaway.last_stream_id == 5


def test_continuation_must_follow_on_the_same_stream() -> None:
    block = hpack_block(grpc_request_headers(ECHO))
    start = headers_frame(1, block[:5], end_headers=False)
    conn = connect()
    assert goaway_of(conn, start + ping_frame()).error_code == PROTOCOL_ERROR
    conn = connect()
    assert goaway_of(conn, start + continuation_frame(3, block[5:], end_headers=True)
                     ).error_code == PROTOCOL_ERROR
    assert goaway_of(connect(), continuation_frame(1, block)).error_code == PROTOCOL_ERROR
    conn = connect()
    events = conn.receive_data(start + continuation_frame(1, block[5:10])
                               + continuation_frame(1, block[10:], end_headers=True))
    assert kinds(events) == [RequestReceived]


def test_hpack_garbage_is_compression_error() -> None:
    conn = connect()
    assert goaway_of(conn, headers_frame(1, b"\xff\xff\xff\xff\xff")).error_code == \
        COMPRESSION_ERROR


@pytest.mark.parametrize(
    "headers",
    [
        [*grpc_request_headers(ECHO), (b"X-Upper", b"1")],
        [*grpc_request_headers(ECHO), (b"connection", b"close")],
        [*grpc_request_headers(ECHO), (b"transfer-encoding", b"chunked")],
        [*grpc_request_headers(ECHO), (b"x-bad", b"a\r\nb")],
        [*grpc_request_headers(ECHO), (b"x-space", b" padded")],
        [*grpc_request_headers(ECHO), (b"", b"empty name")],
        [*grpc_request_headers(ECHO), (b"x:colon", b"1")],
        [(k, b"gzip" if k == b"te" else v) for k, v in grpc_request_headers(ECHO)],
        [*grpc_request_headers(ECHO), (b":method", b"POST")],
        [*grpc_request_headers(ECHO), (b":status", b"200")],
        [(b"x-first", b"1"), *grpc_request_headers(ECHO)],
        [h for h in grpc_request_headers(ECHO) if h[0] != b":path"],
        [h for h in grpc_request_headers(ECHO) if h[0] != b":scheme"],
        [(k, b"" if k == b":path" else v) for k, v in grpc_request_headers(ECHO)],
    ],
    ids=["uppercase", "connection", "transfer-encoding", "crlf", "leading-space", "empty-name",
         "colon", "te-gzip", "repeated-pseudo", "response-pseudo", "pseudo-after-regular",
         "no-path", "no-scheme", "empty-path"],
)
def test_malformed_request_is_a_stream_error(headers: list[tuple[bytes, bytes]]) -> None:
    conn = connect()
    events = conn.receive_data(headers_frame(1, hpack_block(headers))
                               + data_frame(1, grpc_frame(b"x"), end_stream=True))
    assert kinds(events) == [RequestRejected]
    out = frames_out(conn)
    assert rst_of(out, 1) == PROTOCOL_ERROR
    assert not any(isinstance(f, HeadersFrame) for f in out)
    # The connection goes on.
    assert kinds(conn.receive_data(request_frames(3))) == [RequestReceived, MessageReceived,
                                                            RequestEnded]


def test_trailers_from_the_client_end_the_request() -> None:
    conn = connect()
    events = conn.receive_data(request_frames(1, ECHO, b"m", end_stream=False)
                               + headers_frame(1, hpack_block([(b"x-trailer", b"1")]),
                                               end_stream=True))
    assert kinds(events) == [RequestReceived, MessageReceived, RequestEnded]
    # Trailers without END_STREAM, or with pseudo-headers, are malformed.
    conn.receive_data(request_frames(3, ECHO, b"m", end_stream=False))
    events = conn.receive_data(headers_frame(3, hpack_block([(b"x-trailer", b"1")])))
    assert events == [StreamReset(3, PROTOCOL_ERROR)]
    conn.receive_data(request_frames(5, ECHO, b"m", end_stream=False))
    events = conn.receive_data(headers_frame(5, hpack_block([(b":path", b"/x")]),
                                             end_stream=True))
    assert events == [StreamReset(5, PROTOCOL_ERROR)]


def test_repeated_blocks_decode_once_and_track_the_dynamic_table() -> None:
    # A client that indexes its headers: the same block bytes mean the same list only while
    # the dynamic table is unchanged.
    enc = hpack.Encoder()
    conn = connect()
    seen = []
    for i, sid in enumerate((1, 3, 5, 7)):
        extra = [(b"x-n", b"%d" % (i // 2))]
        block = enc.encode([*grpc_request_headers(ECHO), *extra])
        events = conn.receive_data(headers_frame(sid, block)
                                   + data_frame(sid, grpc_frame(b"q"), end_stream=True))
        [req] = [e for e in events if isinstance(e, RequestReceived)]
        seen.append(req.metadata.get("x-n"))
    assert seen == ["0", "0", "1", "1"]


# ------------------------------------------------------------------------------- RST_STREAM, GOAWAY


def test_rst_stream_rules() -> None:
    assert goaway_of(connect(), rst_frame(1)).error_code == PROTOCOL_ERROR  # idle
    assert goaway_of(connect(), raw_frame(0x3, 0, 0, b"\0\0\0\x08")).error_code == PROTOCOL_ERROR
    conn = connect()
    conn.receive_data(request_frames(1, ECHO, None, end_stream=False))
    assert conn.receive_data(rst_frame(1, 8)) == [StreamReset(1, 8)]
    # A frame on the stream the peer reset: answered once with STREAM_CLOSED, then ignored.
    conn.receive_data(data_frame(1, b"x") * 3 + window_update_frame(1, 5))
    assert [rst_of(frames_out(conn), 1)] == [STREAM_CLOSED]
    assert conn.receive_data(rst_frame(1)) == []  # never answered


def test_goaway_last_stream_id_never_increases() -> None:
    conn = connect()
    conn.receive_data(request_frames(1, "/test.Wire/Sleep"))
    conn.start_drain()  # GOAWAY(2^31-1) and a PING
    conn.receive_data(request_frames(3))  # in flight: accepted
    conn.receive_data(PingFrame(0, flags=["ACK"], opaque_data=b"drain\0\0\0").serialize())
    conn.receive_data(request_frames(5))  # after the final GOAWAY: refused
    conn.close()
    goaways = [f for f in frames_out(conn) if isinstance(f, GoAwayFrame)]
    assert [g.last_stream_id for g in goaways] == [2**31 - 1, 3, 3]


def test_encode_headers_is_static_literal() -> None:
    block = encode_headers([(b":status", b"200"), (b"content-type", b"application/grpc"),
                            (b"grpc-status", b"0")])
    dec = hpack.Decoder()
    assert dec.decode(block, raw=True) == [(b":status", b"200"),
                                           (b"content-type", b"application/grpc"),
                                           (b"grpc-status", b"0")]
    assert len(dec.header_table.dynamic_entries) == 0
