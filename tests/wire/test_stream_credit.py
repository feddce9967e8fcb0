"""Receive flow control of streaming requests, sans-I/O: ``ServerConnection.hold_credit_for``.

An h2 client connection is pumped against ``ServerConnection`` by hand (on both engines), so
each window is read off the client's own flow-control state: a call that holds credit keeps
its stream window shut until ``release_credit``, a message larger than the window still
arrives while the handler waits (``request_more``), and the connection window never depends
on a held stream. The client's side (``ClientConnection``) holds response credit the same way.
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import pytest
from hyperframe.frame import WindowUpdateFrame

from wire.client_connection import ClientConfig, ClientConnection, ResponseMessageReceived
from wire.connection import ServerConfig, ServerConnection
from wire.errors import LocalProtocolError
from wire.events import Event, MessageReceived, RequestReceived
from wire.framing import encode_message
from wire.h2codec import H2ServerCodec

from .rawconn import PREFACE, data_frame, parse_frames, request_frames, settings_frame
from .service import ECHO
from .test_client import Pair as ClientPair
from .test_client import RawServer
from .test_client import start as client_start
from .test_native_audit import Recorder

HELD = "/t.S/Held"
UNARY = "/t.S/Unary"
WINDOW = 4096


class Pair:
    """An h2 client and our server connection, with bytes moved by ``pump()``."""

    def __init__(self, http2: str) -> None:
        self.server = ServerConnection(ServerConfig(http2=http2, initial_window_size=WINDOW,
                                                    connection_window_increment=0))
        self.server.hold_credit_for(lambda path: path == HELD)
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.client.initiate_connection()
        self.events: list[Event] = []
        self.pump()

    def pump(self) -> None:
        for _ in range(10):  # bounded: each round moves what both sides have queued
            out = self.client.data_to_send()
            if out:
                self.events += self.server.receive_data(out)
            back = self.server.data_to_send()
            if back:
                self.client.receive_data(back)
            if not out and not back:
                return

    def start(self, path: str) -> int:
        sid: int = self.client.get_next_available_stream_id()
        self.client.send_headers(sid, [
            (":method", "POST"), (":scheme", "http"), (":path", path),
            (":authority", "x"), ("te", "trailers"), ("content-type", "application/grpc"),
        ])
        self.pump()
        assert any(isinstance(e, RequestReceived) and e.stream_id == sid for e in self.events)
        return sid

    def window(self, sid: int) -> int:
        """What the client may still send on ``sid`` (stream and connection windows)."""
        return int(self.client.local_flow_control_window(sid))

    def send(self, sid: int, data: bytes) -> int:
        """Send as much of ``data`` as the windows allow; return how much that was."""
        sent = 0
        while sent < len(data):
            n = min(self.window(sid), len(data) - sent, self.client.max_outbound_frame_size)
            if n <= 0:
                break
            self.client.send_data(sid, data[sent:sent + n])
            sent += n
            self.pump()
        return sent

    def messages(self, sid: int) -> list[MessageReceived]:
        return [e for e in self.events if isinstance(e, MessageReceived) and e.stream_id == sid]


@pytest.fixture
def pair(http2: str) -> Pair:
    return Pair(http2)


def test_credit_rides_on_the_last_message_of_a_frame(pair: Pair) -> None:
    sid = pair.start(HELD)
    assert pair.send(sid, b"".join(encode_message(b"m" * 100) for _ in range(3))) == 315
    got = pair.messages(sid)
    assert [len(m.data) for m in got] == [100, 100, 100]
    assert [m.credit for m in got] == [0, 0, 315]


def test_unconsumed_messages_keep_the_stream_window_shut(pair: Pair) -> None:
    sid = pair.start(HELD)
    message = encode_message(b"x" * 95)  # 100 bytes on the wire
    sent = pair.send(sid, message * 100)
    # The whole window went into complete messages nobody consumed: nothing more fits.
    assert sent == WINDOW
    assert pair.window(sid) == 0
    credit = sum(m.credit for m in pair.messages(sid))
    assert credit == sum(len(m.data) + 5 for m in pair.messages(sid))
    pair.server.release_credit(sid, credit)
    pair.pump()
    # Consumed: the window reopens (WINDOW_UPDATE once half of it is due).
    assert pair.window(sid) >= WINDOW // 2


def test_unheld_calls_get_their_window_back_at_once(pair: Pair) -> None:
    sid = pair.start(UNARY)
    # One message of three windows: it arrives whole although nobody acknowledges anything.
    payload = encode_message(b"u" * (3 * WINDOW))
    assert pair.send(sid, payload) == len(payload)
    assert [m.credit for m in pair.messages(sid)] == [0]


def test_message_larger_than_the_window_completes_while_the_handler_waits(pair: Pair) -> None:
    sid = pair.start(HELD)
    big = encode_message(b"b" * (3 * WINDOW))
    # A fresh call's handler waits for its first message: the partial bytes go back.
    assert pair.send(sid, big) == len(big)
    assert len(pair.messages(sid)) == 1
    # The next big one, while the first is still queued: held at (about) one window.
    sent = pair.send(sid, big)
    assert WINDOW // 2 < sent <= WINDOW
    assert len(pair.messages(sid)) == 1
    assert pair.window(sid) == 0
    # The handler takes the first message and waits again: the second can complete.
    pair.server.release_credit(sid, pair.messages(sid)[0].credit)
    pair.server.request_more(sid)
    pair.pump()
    rest = big[sent:]
    for _ in range(10):  # bounded: each pass moves one window of the rest
        rest = rest[pair.send(sid, rest):]
        if not rest:
            break
    assert not rest
    assert len(pair.messages(sid)) == 2


def test_held_streams_never_shut_the_connection_window(pair: Pair) -> None:
    # Twenty stalled handlers hold more than the whole connection window (65535 here)...
    held = [pair.start(HELD) for _ in range(20)]
    for sid in held:
        assert pair.send(sid, encode_message(b"h" * 95) * 100) == WINDOW
    assert 20 * WINDOW > 65535
    # ... and other calls still go through, as much again as the connection window.
    for _ in range(20):
        sid = pair.start(UNARY)
        payload = encode_message(b"o" * 5000)
        assert pair.send(sid, payload) == len(payload)
        pair.client.end_stream(sid)
        pair.pump()
    assert all(pair.window(sid) == 0 for sid in held)
    assert pair.client.outbound_flow_control_window > WINDOW


def test_release_after_the_call_is_gone_is_harmless(pair: Pair) -> None:
    sid = pair.start(HELD)
    pair.send(sid, encode_message(b"z" * 10))
    pair.server.reset(sid)
    pair.server.release_credit(sid, 15)
    pair.server.request_more(sid)
    pair.pump()
    assert not pair.server.closed


# ---------------------------------------------------------------------- the native codec alone


def _codec(manual: bool) -> H2ServerCodec:
    codec = H2ServerCodec(Recorder(), max_concurrent_streams=100, max_header_list_size=16384,
                          header_block_limit=65536, initial_window_size=65535,
                          max_frame_size=16384, connection_window_increment=0,
                          manual_stream_credit=manual)
    codec.receive_data(PREFACE + settings_frame())
    codec.receive_data(request_frames(1, ECHO, None, end_stream=False))
    codec.data_to_send()
    return codec


def _window_updates(codec: H2ServerCodec) -> dict[int, int]:
    return {f.stream_id: f.window_increment for f in parse_frames(codec.data_to_send())
            if isinstance(f, WindowUpdateFrame)}


@pytest.mark.parametrize("manual", [False, True], ids=["auto", "manual"])
def test_codec_stream_credit(manual: bool) -> None:
    codec = _codec(manual)
    codec.receive_data(data_frame(1, b"x" * 16384) + data_frame(1, b"y" * 16384))
    # The connection window reopens by itself either way; the stream's only if automatic.
    assert _window_updates(codec) == ({0: 32768} if manual else {0: 32768, 1: 32768})
    codec.acknowledge(1, 30000)
    assert _window_updates(codec) == ({1: 30000} if manual else {})
    codec.receive_data(data_frame(1, b"", end_stream=True))
    codec.acknowledge(1, 100)  # the client has ended its side: nothing to reopen
    codec.acknowledge(7, 100)  # never opened
    assert _window_updates(codec) == {}


# ---------------------------------------------------------------------- the client's side


def _client_pair() -> tuple[ClientPair, int]:
    server = RawServer()
    client = ClientConnection(ClientConfig(initial_window_size=WINDOW,
                                           connection_window_increment=0))
    pair = ClientPair(server, client)
    sid = client_start(pair)
    server.headers(sid)
    return pair, sid


def _server_window(pair: ClientPair, sid: int) -> int:
    assert isinstance(pair.server, RawServer)
    return int(pair.server.h2.local_flow_control_window(sid))


def _responses(pair: ClientPair) -> list[ResponseMessageReceived]:
    return [e for e in pair.events if isinstance(e, ResponseMessageReceived)]


def test_client_holds_unconsumed_responses_against_the_stream_window() -> None:
    pair, sid = _client_pair()
    server = pair.server
    assert isinstance(server, RawServer)
    # Messages spanning frames: the start of each is held too, not released on arrival.
    message = encode_message(b"r" * 995)  # 1000 bytes
    for _ in range(4):
        server.data_frame(sid, message[:600])
        pair.pump()
        server.data_frame(sid, message[600:])
        pair.pump()
    assert _server_window(pair, sid) == WINDOW - 4000
    held = _responses(pair)
    # The start of the first message was given back (the caller waits for a first message)
    # but not sent yet: WINDOW_UPDATE goes out half a window at a time.
    assert sum(m.flow_controlled_length for m in held) == 4000 - 600
    for m in held:
        pair.client.acknowledge_received(sid, m.flow_controlled_length)
    pair.pump()
    assert _server_window(pair, sid) == WINDOW


def test_client_lets_a_big_response_complete_while_the_caller_waits() -> None:
    pair, sid = _client_pair()
    server = pair.server
    assert isinstance(server, RawServer)
    first = encode_message(b"a" * 10)
    big = encode_message(b"b" * (3 * WINDOW))
    server.data_frame(sid, first)
    pair.pump()
    # The first message is queued, not consumed: the big one stops at about one window.
    sent = 0
    for _ in range(10):
        n = min(_server_window(pair, sid), len(big) - sent)
        if n <= 0:
            break
        server.data_frame(sid, big[sent:sent + n])
        sent += n
        pair.pump()
    assert sent < len(big)
    # The caller takes the first and waits for more: the big one's bytes go back as they come.
    pair.client.acknowledge_received(sid, _responses(pair)[0].flow_controlled_length)
    pair.client.request_more(sid)
    pair.pump()
    for _ in range(20):
        n = min(_server_window(pair, sid), len(big) - sent)
        if n > 0:
            server.data_frame(sid, big[sent:sent + n])
            sent += n
        pair.pump()
        if sent == len(big):
            break
    assert [len(m.data) for m in _responses(pair)] == [10, 3 * WINDOW]
    with pytest.raises(LocalProtocolError):
        pair.client.acknowledge_received(sid, -1)
