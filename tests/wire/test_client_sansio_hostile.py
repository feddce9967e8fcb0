"""The sans-I/O ``ClientConnection`` against hostile byte streams (issue 16), synchronously.

Bytes built by hand (``hostile_server``) go straight into ``receive_data``: the output backlog
caps, the outcome's independence from how bytes are split (a Hypothesis property), and the
frame checks made before h2 sees a frame.
"""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wire.client_connection import (
    CallEnded,
    ClientConfig,
    ClientConnection,
    ClientEvent,
    ServerProtocolError,
)
from wire.errors import LocalProtocolError
from wire.status import ErrorCode, StatusCode

from .hostile_server import (
    CONTINUATION,
    DATA,
    HEADERS,
    PADDED,
    PRIORITY,
    RESPONSE,
    data,
    frame,
    goaway,
    grpc_message,
    headers,
    literal,
    ok_response,
    ping,
    response_headers,
    rst_stream,
    trailers,
    window_update,
)
from .hostile_server import settings as settings_frame

SERVER_SETTINGS = settings_frame()


def connect(config: ClientConfig | None = None, calls: int = 1) -> tuple[ClientConnection,
                                                                           list[int]]:
    conn = ClientConnection(config)
    sids = []
    for _ in range(calls):
        sid = conn.start_call("/a.B/C")
        conn.send_message(sid, b"req")
        sids.append(sid)
    conn.receive_data(SERVER_SETTINGS)
    conn.data_to_send()
    return conn, sids


def goaway_code(out: bytes) -> int | None:
    """The error code of the last GOAWAY in ``out`` (None if there is none)."""
    code = None
    i = 0
    while i + 9 <= len(out):
        length = int.from_bytes(out[i:i + 3], "big")
        if out[i + 3] == 7:
            code = int.from_bytes(out[i + 13:i + 17], "big")
        i += 9 + length
    return code


def connection_error(conn: ClientConnection, raw: bytes) -> ServerProtocolError:
    with pytest.raises(ServerProtocolError) as info:
        conn.receive_data(raw)
    assert conn.closed
    assert goaway_code(conn.data_to_send()) == info.value.error_code
    return info.value


# ---------------------------------------------------------------- 1: output backlog


@pytest.mark.parametrize("flood", [ping(b"pingping"), settings_frame()], ids=["ping", "settings"])
def test_flood_never_read_ends_with_enhance_your_calm(flood: bytes) -> None:
    config = ClientConfig(output_backlog_pause=32 * 1024, output_backlog_limit=128 * 1024)
    conn, _ = connect(config)
    seen = 0
    err = None
    for _ in range(200):  # bounded: 200 reads of 64 KiB of flood, never taking our output
        try:
            conn.receive_data(flood * (65536 // len(flood)))
        except ServerProtocolError as exc:
            err = exc
            break
        seen = max(seen, conn.output_backlog)
    assert err is not None
    assert err.error_code == ErrorCode.ENHANCE_YOUR_CALM
    assert seen <= config.output_backlog_limit
    # What is left to send is the GOAWAY alone, not a megabyte of acks.
    out = conn.data_to_send()
    assert len(out) < 512
    assert goaway_code(out) == ErrorCode.ENHANCE_YOUR_CALM


def test_flood_whose_answers_are_taken_is_served() -> None:
    conn, (sid,) = connect()
    for _ in range(10):  # bounded
        conn.receive_data(ping(b"pingping") * 3000)
        assert conn.output_backlog <= 3000 * 17
        conn.data_to_send()
    events = conn.receive_data(ok_response(sid, b"ok"))
    assert [e.code for e in events if isinstance(e, CallEnded)] == [StatusCode.OK]


def test_request_data_is_queued_only_up_to_half_the_pause() -> None:
    config = ClientConfig()
    conn = ClientConnection(config)
    # A server that opens its windows wide: the request could otherwise all be queued at once.
    conn.receive_data(settings_frame((4, 0x7FFFFFFF)) + window_update(0, 0x7FFFFFFF - 65535))
    conn.data_to_send()
    sid = conn.start_call("/a.B/C")
    payload = bytes(range(256)) * 8192  # 2 MiB
    conn.send_message(sid, payload)
    high = config.output_backlog_pause // 2 + 16384 + 64
    assert conn.output_backlog <= high
    sent = bytearray()
    for _ in range(1000):  # bounded: each pass takes at most ~2 x high
        chunk = conn.data_to_send()
        if not chunk:
            break
        assert len(chunk) <= 2 * high
        sent += chunk
    assert len(sent) > len(payload)
    assert payload[-1000:] in sent


# ---------------------------------------------------------------- 3: nothing lost on error


def test_events_before_the_bad_frame_are_kept() -> None:
    conn, (a, b) = connect(calls=2)
    with pytest.raises(ServerProtocolError) as info:
        conn.receive_data(ok_response(a, b"done") + window_update(0, 0) + ok_response(b))
    ended = [e for e in info.value.events if isinstance(e, CallEnded)]
    assert [(e.stream_id, e.code) for e in ended] == [(a, StatusCode.OK)]
    assert [e.stream_id for e in conn.connection_lost("gone")] == [b]


# ---------------------------------------------------------------- frame checks before h2


def test_frame_length_is_judged_from_the_header() -> None:
    conn, _ = connect()
    err = connection_error(conn, struct.pack(">I", 1 << 20)[1:] + bytes([DATA, 0]) +
                           struct.pack(">I", 1))
    assert err.error_code == ErrorCode.FRAME_SIZE_ERROR
    assert conn.input_buffered == 0


@pytest.mark.parametrize(("raw", "fragment"), [
    (data(5, b"x"), "DATA on idle stream 5"),
    (window_update(7, 1), "WINDOW_UPDATE on idle stream 7"),
    (rst_stream(2, 8), "RST_STREAM on idle stream 2"),
    (headers(4, RESPONSE), "HEADERS on idle stream 4"),
    (frame(CONTINUATION, 4, 1, b""), "CONTINUATION frame without a header block"),
    (headers(1, RESPONSE, end_headers=False) + data(1, b""), "inside the header block"),
    (headers(1, RESPONSE, end_headers=False) + frame(CONTINUATION, 4, 3, b""),
     "inside the header block"),
    (frame(DATA, PADDED, 1, b"\x09abc"), "invalid padding"),
])
def test_frame_rules_are_connection_errors(raw: bytes, fragment: str) -> None:
    conn, _ = connect()
    err = connection_error(conn, raw)
    assert err.error_code == ErrorCode.PROTOCOL_ERROR
    assert fragment in err.message


def test_priority_on_an_idle_stream_is_allowed() -> None:
    conn, (sid,) = connect()
    events = conn.receive_data(frame(PRIORITY, 0, 9, struct.pack(">IB", 0, 15)) +
                               ok_response(sid))
    assert [e.code for e in events if isinstance(e, CallEnded)] == [StatusCode.OK]


@pytest.mark.parametrize(("raw", "fragment"), [
    (headers(1, [(b":status", b"100")], end_stream=True), "malformed response"),
    (headers(1, [(b":status", b"103"), (b"X-Bad", b"v")]), "malformed header"),
    (headers(1, [(b":status", b"101")]), "Switching Protocols"),
    (headers(1, [*RESPONSE, (b"content-length", b"2")]) + data(1, b"12345"),
     "malformed response"),
    (headers(1, [*RESPONSE, (b"content-length", b"nope")]), "malformed response"),
])
def test_what_h2_rejects_on_a_call_is_a_stream_error(raw: bytes, fragment: str) -> None:
    conn, (a, b) = connect(calls=2)
    events = conn.receive_data(raw + ok_response(b, b"fine"))
    ended = {e.stream_id: e for e in events if isinstance(e, CallEnded)}
    assert ended[a].code is StatusCode.INTERNAL
    assert fragment in ended[a].message
    assert ended[a].reset_code == ErrorCode.PROTOCOL_ERROR
    assert ended[b].code is StatusCode.OK
    assert not conn.closed


def test_informational_response_then_answer() -> None:
    conn, (sid,) = connect()
    events = conn.receive_data(headers(sid, [(b":status", b"100")]) + ok_response(sid, b"x"))
    assert [e.code for e in events if isinstance(e, CallEnded)] == [StatusCode.OK]


def test_stream_reset_by_server_after_trailers_is_not_a_second_end() -> None:
    conn, (sid,) = connect()
    events = conn.receive_data(ok_response(sid) + rst_stream(sid, ErrorCode.NO_ERROR))
    assert len([e for e in events if isinstance(e, CallEnded)]) == 1


# ---------------------------------------------------------------- the split property

# Each call's answer is drawn from these; the stream may end with a connection error.
ANSWERS = {
    "ok": lambda s: ok_response(s, b"fine"),
    "trailers-only": lambda s: headers(s, [*RESPONSE, (b"grpc-status", b"5")], end_stream=True),
    "no-status": lambda s: headers(s, [(b"content-type", b"application/grpc")], end_stream=True),
    "bad-grpc-status": lambda s: response_headers(s) + trailers(s, b"0_0"),
    "reset": lambda s: rst_stream(s, ErrorCode.REFUSED_STREAM),
    "big": lambda s: response_headers(s) + data(s, grpc_message(b"", length=5 << 20)),
    "half": lambda s: response_headers(s) + data(s, grpc_message(b"m" * 300)[:100]),
    "no-trailers": lambda s: response_headers(s) + data(s, grpc_message(b"m"), end_stream=True),
    "trailers-no-end": lambda s: response_headers(s) + headers(s, [(b"grpc-status", b"0")]),
    "continued": lambda s: _continued(s) + data(s, grpc_message(b"c")) + trailers(s),
    "padded": lambda s: response_headers(s) + frame(DATA, PADDED, s, b"\x03" +
                                                    grpc_message(b"p") + b"\0\0\0") +
    trailers(s, b"3"),
    "pinged": lambda s: response_headers(s) + ping(b"interlea") + data(s, grpc_message(b"i"))
    + ping(b"interlea") + trailers(s),
}


def _continued(sid: int) -> bytes:
    block = literal([*RESPONSE, (b"x-long", b"v" * 300)])
    return headers(sid, [], block=block[:100], end_headers=False) + \
        frame(CONTINUATION, 0, sid, block[100:200]) + \
        frame(CONTINUATION, 4, sid, block[200:])
TAILS = {
    "none": b"",
    "bad-window": window_update(0, 0),
    "idle-rst": rst_stream(99, 0),
    "goaway": goaway(1, ErrorCode.NO_ERROR),
    "pings": ping(b"pingping") * 5,
    "frame-too-big": struct.pack(">I", 1 << 20)[1:] + bytes([HEADERS, 0]) + struct.pack(">I", 1),
}


def outcome(stream: bytes, cuts: list[int]) -> dict[int, tuple[StatusCode, str]]:
    conn, sids = connect(calls=2)
    events: list[ClientEvent] = []
    bounds = [0, *sorted(cuts), len(stream)]
    for lo, hi in itertools.pairwise(bounds):
        try:
            events.extend(conn.receive_data(stream[lo:hi]))
        except ServerProtocolError as exc:
            events.extend(exc.events)
            break
    events.extend(conn.connection_lost("lost"))
    ended = [e for e in events if isinstance(e, CallEnded)]
    assert sorted(e.stream_id for e in ended) == sids  # exactly one end per call
    return {e.stream_id: (e.code, e.message) for e in ended}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=st.sampled_from(sorted(ANSWERS)), second=st.sampled_from(sorted(ANSWERS)),
       tail=st.sampled_from(sorted(TAILS)), order=st.booleans(),
       data_=st.data())
def test_outcome_does_not_depend_on_how_bytes_are_split(first: str, second: str, tail: str,
                                                        order: bool, data_: st.DataObject) -> None:
    parts = [ANSWERS[first](1), ANSWERS[second](3)]
    if order:
        parts.reverse()
    stream = b"".join(parts) + TAILS[tail]
    cuts = data_.draw(st.lists(st.integers(0, len(stream)), max_size=12), label="cuts")
    assert outcome(stream, cuts) == outcome(stream, [])


def test_outcome_byte_by_byte_equals_one_chunk() -> None:
    stream = ok_response(1, b"a") + headers(3, [(b"content-type", b"x")], end_stream=True) + \
        window_update(0, 0)
    whole = outcome(stream, [])
    assert outcome(stream, list(range(len(stream)))) == whole
    assert whole[1][0] is StatusCode.OK
    assert whole[3][0] is StatusCode.INTERNAL


def test_malformed_trailers_on_a_cancelled_call_reset_only_that_stream() -> None:
    conn, (a, b) = connect(calls=2)
    conn.receive_data(response_headers(a))
    assert conn.cancel(a)
    conn.data_to_send()
    events = conn.receive_data(headers(a, [(b"grpc-status", b"0")]) + ok_response(b))
    assert [(e.stream_id, e.code) for e in events if isinstance(e, CallEnded)] == [
        (b, StatusCode.OK)]
    assert not conn.closed


def test_local_misuse_is_a_local_protocol_error() -> None:
    conn, _ = connect()
    with pytest.raises(LocalProtocolError, match="8 bytes"):
        conn.ping(b"short")
    conn.connection_lost()
    with pytest.raises(LocalProtocolError, match="closed"):
        conn.ping()


def test_header_block_buffering_stops_at_the_advertised_size() -> None:
    config = ClientConfig()
    conn, (sid,) = connect(config)
    chunk = b"\x00" * 16_000
    conn.receive_data(headers(sid, [], block=chunk, end_headers=False))
    high = conn.input_buffered

    def feed_until_refused() -> None:
        nonlocal high
        for _ in range(70):  # bounded: 70 x 16 KB would be the 1 MiB h2 alone would buffer
            conn.receive_data(frame(CONTINUATION, 0, sid, chunk))
            high = max(high, conn.input_buffered)

    with pytest.raises(ServerProtocolError) as info:
        feed_until_refused()
    assert info.value.error_code == ErrorCode.ENHANCE_YOUR_CALM
    assert high <= config.max_header_list_size
    ended = [e for e in info.value.events if isinstance(e, CallEnded)]
    assert [(e.stream_id, e.code) for e in ended] == [(sid, StatusCode.INTERNAL)]
