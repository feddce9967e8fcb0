"""Regression tests for the native HTTP/2 engine's audit findings (issue 10, "Fix in the native
codec"), plus HTTP/2's TLS 1.2 cipher suite rules for ``wire.tls``.

Each finding was reproduced with raw frames sent to the running server. The tests here drive
the native codec (``wire.h2codec.H2ServerCodec``) directly with hand-made frames and a handler
that records what it hears, so they stay about the native engine whatever engine the server
uses by default; one loopback test sends the same frames to a running ``wire.Server`` that
serves with the native codec, and the TLS tests use a real TLS 1.2 client on loopback.
"""

from __future__ import annotations

import ssl
import struct
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme
from hyperframe.frame import Frame, GoAwayFrame, RstStreamFrame, WindowUpdateFrame

from wire import Server, ServerConfig, ServerConnection
from wire.h2codec import PROTOCOL_ERROR as OLD_NAME_PROTOCOL_ERROR
from wire.h2codec import H2ConnectionError, H2ServerCodec
from wire.http2 import EngineName
from wire.status import ErrorCode
from wire.tls import HTTP2_TLS12_CIPHERS, client_context, server_context

from .h2client import grpc_frame, grpc_request_headers
from .rawconn import (
    PREFACE,
    RawConn,
    data_frame,
    headers_frame,
    hpack_block,
    parse_frames,
    request_frames,
    rst_frame,
    settings_frame,
    window_update_frame,
)
from .service import ECHO, WireService

#: Safety bound on waits that should be quick (a failure bound, never a speed assertion).
BOUND = 10


# ------------------------------------------------------------------------- native codec rig


class Recorder:
    """An ``EngineHandler`` that records every callback as a tuple."""

    def __init__(self) -> None:
        self.heard: list[tuple[Any, ...]] = []

    def on_settings(self, initial_window_changed: bool) -> None:
        self.heard.append(("settings",))

    def on_request(self, stream_id: int, headers: list[tuple[bytes, bytes]],
                   end_stream: bool) -> None:
        self.heard.append(("request", stream_id, end_stream))

    def on_malformed(self, stream_id: int, reason: str) -> None:
        self.heard.append(("malformed", stream_id, reason))

    def on_data(self, stream_id: int, data: bytes, flow_length: int, end_stream: bool) -> None:
        self.heard.append(("data", stream_id, data, end_stream))

    def on_trailers(self, stream_id: int) -> None:
        self.heard.append(("trailers", stream_id))

    def on_stream_reset(self, stream_id: int, error_code: int, remote: bool) -> None:
        self.heard.append(("reset", stream_id, error_code, remote))

    def on_window_update(self, stream_id: int) -> None:
        self.heard.append(("window", stream_id))

    def on_ping(self) -> None:
        self.heard.append(("ping",))

    def on_goaway(self, error_code: int, last_stream_id: int, debug: bytes) -> None:
        self.heard.append(("goaway", error_code, last_stream_id))


def native_codec() -> tuple[H2ServerCodec, Recorder]:
    """A native codec past the preface and SETTINGS exchange, its output drained."""
    rec = Recorder()
    codec = H2ServerCodec(rec, max_concurrent_streams=100, max_header_list_size=16384,
                          header_block_limit=65536, initial_window_size=65535,
                          max_frame_size=16384, connection_window_increment=0)
    codec.receive_data(PREFACE + settings_frame())
    codec.data_to_send()
    rec.heard.clear()
    return codec, rec


def raw_frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((ftype, flags)) + struct.pack(
        ">I", sid) + payload


def out_frames(codec: H2ServerCodec) -> list[Frame]:
    return parse_frames(codec.data_to_send())


def connection_error(codec: H2ServerCodec, data: bytes) -> tuple[H2ConnectionError, GoAwayFrame]:
    """Feed ``data``, expecting a connection error; return it and the single GOAWAY sent."""
    with pytest.raises(H2ConnectionError) as info:
        codec.receive_data(data)
    assert codec.closed
    out = out_frames(codec)
    [goaway] = [f for f in out if isinstance(f, GoAwayFrame)]
    assert not any(isinstance(f, RstStreamFrame) for f in out)
    assert goaway.error_code == info.value.error_code
    return info.value, goaway


ECHO_BLOCK = hpack_block(grpc_request_headers(ECHO))
PADDED, PRIORITY, END_HEADERS, END_STREAM = 0x8, 0x20, 0x4, 0x1
_DATA, _HEADERS, _PRIORITY_TYPE = 0x0, 0x1, 0x2


def test_native_error_codes_are_error_code_members_and_old_names_import() -> None:
    assert OLD_NAME_PROTOCOL_ERROR is ErrorCode.PROTOCOL_ERROR
    codec, _ = native_codec()
    exc, _ = connection_error(codec, data_frame(1, b"x"))
    assert exc.error_code is ErrorCode.PROTOCOL_ERROR


# ------------------------------------------------------- 1. idle streams (sections 5.1, 5.1.1)

STREAM_FRAMES_ON_2 = {
    "DATA": data_frame(2, b"x"),
    "WINDOW_UPDATE": window_update_frame(2, 1),
    "RST_STREAM": rst_frame(2),
}


@pytest.mark.parametrize("frame", STREAM_FRAMES_ON_2.values(), ids=STREAM_FRAMES_ON_2.keys())
def test_native_even_stream_below_the_highest_is_idle(frame: bytes) -> None:
    # Stream 3 opens (and skips 1); stream 2 is one the server would initiate and never did,
    # so it is still idle: section 5.1 "idle": "Receiving any frame other than HEADERS or
    # PRIORITY on a stream in this state MUST be treated as a connection error ...
    # PROTOCOL_ERROR" (for RST_STREAM also section 6.4).
    codec, rec = native_codec()
    codec.receive_data(request_frames(3, ECHO, None, end_stream=False))
    assert rec.heard == [("request", 3, False)]
    out_frames(codec)
    exc, goaway = connection_error(codec, frame)
    assert exc.error_code == ErrorCode.PROTOCOL_ERROR
    assert "idle stream 2" in exc.message
    assert goaway.last_stream_id == 3
    assert rec.heard == [("request", 3, False)]  # nothing heard on stream 2


@pytest.mark.parametrize("frame", STREAM_FRAMES_ON_2.values(), ids=STREAM_FRAMES_ON_2.keys())
def test_native_even_stream_is_idle_before_any_stream(frame: bytes) -> None:
    codec, _ = native_codec()
    exc, _ = connection_error(codec, frame)
    assert exc.error_code == ErrorCode.PROTOCOL_ERROR


def test_native_headers_on_even_stream_below_the_highest() -> None:
    # Section 5.1 "idle": if the stream "is initiated by the server ... then receiving a
    # HEADERS frame MUST also be treated as a connection error ... PROTOCOL_ERROR".
    codec, _ = native_codec()
    codec.receive_data(request_frames(3))
    out_frames(codec)
    exc, _ = connection_error(codec, headers_frame(2, ECHO_BLOCK, end_stream=True))
    assert exc.error_code == ErrorCode.PROTOCOL_ERROR
    assert "even stream id 2" in exc.message


def test_native_priority_on_idle_even_stream_is_accepted() -> None:
    # Section 6.3: "The PRIORITY frame can be sent on a stream in any state, including "idle"
    # or "closed"."
    codec, rec = native_codec()
    codec.receive_data(request_frames(3, ECHO, None, end_stream=False))
    rec.heard.clear()
    out_frames(codec)
    codec.receive_data(raw_frame(_PRIORITY_TYPE, 0, 2, struct.pack(">IB", 0, 15))
                       + raw_frame(_PRIORITY_TYPE, 0, 8, struct.pack(">IB", 3, 15)))
    assert out_frames(codec) == []
    assert rec.heard == []
    assert not codec.closed


def test_native_skipped_odd_stream_is_closed_not_idle() -> None:
    # Section 5.1.1: opening stream 3 moves stream 1 from "idle" to "closed" ("the skipped
    # stream is immediately closed"). Closed-stream rules apply, not the idle ones.
    codec, rec = native_codec()
    codec.receive_data(request_frames(3, ECHO, None, end_stream=False))
    rec.heard.clear()
    out_frames(codec)
    # Section 6.1: DATA on a stream not "open" or "half-closed (local)": stream error
    # STREAM_CLOSED; the connection goes on.
    codec.receive_data(data_frame(1, b"late"))
    [rst] = out_frames(codec)
    assert isinstance(rst, RstStreamFrame)
    assert (rst.stream_id, rst.error_code) == (1, ErrorCode.STREAM_CLOSED)
    # WINDOW_UPDATE and RST_STREAM on a closed stream: ignored (section 5.1 "closed"), and
    # never an RST_STREAM in answer to an RST_STREAM (section 5.4.2).
    codec.receive_data(window_update_frame(1, 10) + rst_frame(1))
    assert out_frames(codec) == []
    assert not codec.closed
    # A HEADERS frame cannot reopen it: section 5.1.1, a new stream's identifier "MUST be
    # numerically greater than all streams that the initiating endpoint has opened".
    codec2, _ = native_codec()
    codec2.receive_data(request_frames(3))
    out_frames(codec2)
    exc, _ = connection_error(codec2, request_frames(1))
    assert exc.error_code == ErrorCode.PROTOCOL_ERROR


@pytest.mark.parametrize("frame", [data_frame(5, b"x"), window_update_frame(5, 1), rst_frame(5)],
                         ids=["DATA", "WINDOW_UPDATE", "RST_STREAM"])
def test_native_odd_stream_above_the_highest_is_idle(frame: bytes) -> None:
    codec, _ = native_codec()
    codec.receive_data(request_frames(3))
    out_frames(codec)
    exc, _ = connection_error(codec, frame)
    assert exc.error_code == ErrorCode.PROTOCOL_ERROR


def test_native_unknown_frame_type_on_idle_stream_is_ignored() -> None:
    # Section 5.1: "The rules in this section only apply to frames defined in this document."
    codec, rec = native_codec()
    codec.receive_data(raw_frame(0xFA, 0, 2, b"ext") + raw_frame(0xFA, 0, 9, b"ext"))
    assert out_frames(codec) == []
    assert rec.heard == []
    assert not codec.closed


async def test_server_ends_connection_on_data_for_idle_even_stream(http2: EngineName) -> None:
    # The finding as reproduced: raw frames over loopback TCP to a running server, on both
    # engines. DATA on stream 2 after stream 3 used to get RST_STREAM(STREAM_CLOSED) from the
    # native codec; it must end the connection with PROTOCOL_ERROR.
    server = Server(WireService().handlers(), http2=http2)
    async with trio.open_nursery() as nursery:
        addr = await nursery.start(lambda task_status: server.serve_tcp(
            "127.0.0.1", 0, task_status=task_status))
        stream = await trio.open_tcp_stream("127.0.0.1", addr[1])
        raw = RawConn(stream)
        nursery.start_soon(raw.read_loop)
        await raw.handshake()
        await raw.send(request_frames(3, ECHO, b"three"))
        rec = await raw.wait_closed(3)
        assert rec.grpc_status == 0
        assert rec.payloads() == [b"three"]
        await raw.send(data_frame(2, grpc_frame(b"two")))
        await raw.wait_eof(BOUND)
        assert raw.goaway.error_code == ErrorCode.PROTOCOL_ERROR
        assert raw.goaway.last_stream_id == 3
        assert raw.rst_count[2] == 0
        await trio.aclose_forcefully(stream)
        await server.shutdown(1)
        nursery.cancel_scope.cancel()


# --------------------------------------------------- 2. several content-length fields (8.1.1)


def _cl_request(sid: int, *values: bytes, end_stream: bool = False) -> bytes:
    extra = [(b"content-length", v) for v in values]
    return headers_frame(sid, hpack_block([*grpc_request_headers(ECHO), *extra]),
                         end_stream=end_stream)


def test_native_repeated_equal_content_length_matching_the_data_is_accepted() -> None:
    codec, rec = native_codec()
    codec.receive_data(_cl_request(1, b"4", b"4") + data_frame(1, b"abcd", end_stream=True))
    assert rec.heard == [("request", 1, False), ("data", 1, b"abcd", True)]
    assert not any(isinstance(f, RstStreamFrame) for f in out_frames(codec))


def test_native_repeated_content_length_not_matching_the_data_is_malformed() -> None:
    codec, rec = native_codec()
    codec.receive_data(_cl_request(1, b"3", b"3") + data_frame(1, b"abcd", end_stream=True))
    assert rec.heard == [("request", 1, False),
                         ("reset", 1, ErrorCode.PROTOCOL_ERROR, False)]


@pytest.mark.parametrize("values", [(b"5", b"4"), (b"4", b"5"), (b"4", b"4", b"0")],
                         ids=["last-matches", "first-matches", "third-differs"])
def test_native_differing_content_length_values_are_malformed(values: tuple[bytes, ...]) -> None:
    # Section 8.1.1: a message is malformed if "the value of a content-length header field
    # does not equal the sum of the DATA frame payload lengths" -- each field's value, so a
    # request whose fields differ is malformed whatever its DATA; only the last one used to
    # be checked. Section 8.1.1: "Malformed requests ... MUST be treated as a stream error
    # ... of type PROTOCOL_ERROR"; the connection lives on.
    codec, rec = native_codec()
    codec.receive_data(_cl_request(1, *values) + data_frame(1, b"abcd", end_stream=True))
    assert rec.heard == [("malformed", 1, "conflicting content-length values")]
    [rst] = out_frames(codec)
    assert isinstance(rst, RstStreamFrame)
    assert (rst.stream_id, rst.error_code) == (1, ErrorCode.PROTOCOL_ERROR)
    codec.receive_data(_cl_request(3, b"4") + data_frame(3, b"abcd", end_stream=True))
    assert rec.heard[-2:] == [("request", 3, False), ("data", 3, b"abcd", True)]


@pytest.mark.parametrize("value", [b"4, 4", b"-4", b"4 ", b"\xd9\xa4"])
def test_native_content_length_that_is_not_digits_is_malformed(value: bytes) -> None:
    codec, rec = native_codec()
    codec.receive_data(_cl_request(1, value) + data_frame(1, b"abcd", end_stream=True))
    [(kind, sid, _)] = rec.heard
    assert (kind, sid) == ("malformed", 1)


# --------------------------------------------- 3. HEADERS with PADDED and PRIORITY (6.2, 4.2)


def _padded_priority_headers(pad_length: int, padding: int, *, sid: int = 1) -> bytes:
    """HEADERS with PADDED|PRIORITY|END_HEADERS|END_STREAM: the Pad Length field says
    ``pad_length``; ``padding`` zero bytes really follow the field block."""
    payload = bytes([pad_length]) + struct.pack(">IB", 0, 15) + ECHO_BLOCK + b"\0" * padding
    return raw_frame(_HEADERS, PADDED | PRIORITY | END_HEADERS | END_STREAM, sid, payload)


def test_native_padded_priority_headers_within_bounds_open_a_stream() -> None:
    codec, rec = native_codec()
    codec.receive_data(_padded_priority_headers(7, 7))
    assert rec.heard == [("request", 1, True)]


@pytest.mark.parametrize(
    "extra", [1, 3, 5, 6, 40],
    ids=["into-priority-by-1", "into-priority-by-3", "covers-priority", "whole-payload",
         "beyond-payload"])
def test_native_padded_priority_headers_with_too_much_padding_is_protocol_error(
        extra: int) -> None:
    # The padding claims more than the field block fragment and padding hold: ``extra`` bytes
    # more, reaching into the priority fields (1..5), to the whole payload (6: "the length of
    # the padding is the length of the frame payload", section 6.2) or past it. All of it is
    # padding too long -- PROTOCOL_ERROR, which used to come out as FRAME_SIZE_ERROR.
    pad = len(ECHO_BLOCK) + 2 + extra
    assert pad <= 255
    codec, _ = native_codec()
    exc, _ = connection_error(codec, _padded_priority_headers(pad, 2))
    assert exc.error_code == ErrorCode.PROTOCOL_ERROR
    assert "padding" in exc.message


def test_native_headers_too_short_for_its_fields_is_frame_size_error() -> None:
    # Section 4.2: a frame "too small to contain mandatory frame data" -- here the priority
    # fields, with a Pad Length of 0 -- is still FRAME_SIZE_ERROR.
    codec, _ = native_codec()
    exc, _ = connection_error(codec, raw_frame(_HEADERS, PADDED | PRIORITY | END_HEADERS, 1,
                                               b"\0\0\0"))
    assert exc.error_code == ErrorCode.FRAME_SIZE_ERROR


def test_native_padded_headers_without_priority_padding_rule() -> None:
    # Section 6.2: padding of the payload's length or more is PROTOCOL_ERROR.
    payload = bytes([len(ECHO_BLOCK) + 1]) + ECHO_BLOCK
    codec, _ = native_codec()
    exc, _ = connection_error(codec, raw_frame(_HEADERS, PADDED | END_HEADERS, 1, payload))
    assert exc.error_code == ErrorCode.PROTOCOL_ERROR
    # One less: the whole rest of the payload is padding, an empty field block fragment; legal
    # framing (the empty request is then malformed, a stream error).
    codec, rec = native_codec()
    payload = bytes([len(ECHO_BLOCK)]) + ECHO_BLOCK
    codec.receive_data(raw_frame(_HEADERS, PADDED | END_HEADERS, 1, payload))
    assert [h[:2] for h in rec.heard] == [("malformed", 1)]
    assert not codec.closed


# ------------------------------------------------- 4. priority self-dependency (5.3.2, 6.3)


def test_native_headers_depending_on_itself_is_accepted() -> None:
    # RFC 9113 keeps the priority fields' layout but not RFC 7540's "A stream cannot depend
    # on itself" (section 5.3.2 deprecates the scheme), so the request is served; it used to
    # be reset with PROTOCOL_ERROR while PRIORITY frames were not checked at all.
    codec, rec = native_codec()
    payload = struct.pack(">IB", 1, 15) + ECHO_BLOCK
    codec.receive_data(raw_frame(_HEADERS, PRIORITY | END_HEADERS, 1, payload)
                       + data_frame(1, grpc_frame(b"p"), end_stream=True))
    assert rec.heard == [("request", 1, False), ("data", 1, grpc_frame(b"p"), True)]
    assert out_frames(codec) == []


@pytest.mark.parametrize("exclusive", [False, True])
def test_native_priority_frame_depending_on_itself_is_ignored(exclusive: bool) -> None:
    codec, rec = native_codec()
    codec.receive_data(request_frames(1, ECHO, None, end_stream=False))
    rec.heard.clear()
    dependency = 1 | (0x80000000 if exclusive else 0)
    codec.receive_data(raw_frame(_PRIORITY_TYPE, 0, 1, struct.pack(">IB", dependency, 15))
                       + raw_frame(_PRIORITY_TYPE, 0, 7, struct.pack(">IB", 7, 15)))  # idle
    assert out_frames(codec) == []
    assert rec.heard == []
    codec.receive_data(data_frame(1, b"body", end_stream=True))
    assert rec.heard == [("data", 1, b"body", True)]


def test_native_server_connection_serves_self_dependent_headers() -> None:
    # The same through the gRPC layer: the call runs to its end.
    conn = ServerConnection(ServerConfig(http2="native"))
    conn.receive_data(PREFACE + settings_frame())
    conn.data_to_send()
    payload = struct.pack(">IB", 1, 15) + ECHO_BLOCK
    events = conn.receive_data(raw_frame(_HEADERS, PRIORITY | END_HEADERS, 1, payload)
                               + data_frame(1, grpc_frame(b"p"), end_stream=True))
    assert [type(e).__name__ for e in events] == ["RequestReceived", "MessageReceived",
                                                   "RequestEnded"]
    assert not any(isinstance(f, (RstStreamFrame, GoAwayFrame))
                   for f in parse_frames(conn.data_to_send()))


def test_native_window_update_on_cleanly_closed_stream_is_ignored() -> None:
    # A WINDOW_UPDATE for a stream we finished (both ends closed) is still fine: section 5.1
    # "closed" lets one arrive "in the time before the peer receives and processes the frame
    # that closes the stream". Checked so the idle rule above did not swallow it.
    codec, _ = native_codec()
    codec.receive_data(request_frames(1, ECHO, None, end_stream=True))
    codec.send_headers(1, b"\x88", end_stream=True)
    out_frames(codec)
    codec.receive_data(window_update_frame(1, 5))
    assert not any(isinstance(f, (RstStreamFrame, GoAwayFrame, WindowUpdateFrame))
                   for f in out_frames(codec))
    assert not codec.closed


# ------------------------------------------------------- 6. TLS 1.2 cipher suites (9.2.2, A)


@pytest.fixture(scope="module", params=[trustme.KeyType.ECDSA, trustme.KeyType.RSA],
                ids=["ecdsa", "rsa"])
def pki(request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    key_type = request.param
    ca = trustme.CA(key_type=key_type)
    leaf = ca.issue_cert("localhost", "127.0.0.1", key_type=key_type)
    d = tmp_path_factory.mktemp("pki")
    paths = {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    leaf.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    leaf.private_key_pem.write_to_path(str(paths["key"]))
    auth = "ECDSA" if key_type == trustme.KeyType.ECDSA else "RSA"
    return {"auth": auth, **{k: str(v) for k, v in paths.items()}}


def _tls12_client(pki: dict[str, Any], ciphers: str) -> ssl.SSLContext:
    """A plain TLS 1.2-only client (not ``client_context``) offering only ``ciphers``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki["ca"])
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(ciphers)
    ctx.set_alpn_protocols(["h2"])
    return ctx


@pytest.fixture
async def tls_server(pki: dict[str, Any], http2: EngineName) -> AsyncIterator[int]:
    server = Server(WireService().handlers(), http2=http2)
    async with trio.open_nursery() as nursery:
        addr = await nursery.start(lambda task_status: server.serve_tcp(
            "127.0.0.1", 0, ssl_context=server_context(pki["cert"], pki["key"]),
            task_status=task_status))
        yield addr[1]
        await server.shutdown(1)
        nursery.cancel_scope.cancel()


async def _handshake(port: int, ctx: ssl.SSLContext) -> trio.SSLStream[trio.SocketStream]:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, ctx, server_hostname="localhost")
    with trio.fail_after(BOUND):
        await stream.do_handshake()
    return stream


# Appendix A examples: CBC (no AEAD) with ephemeral keys, and AEAD without ephemeral keys.
PROHIBITED = {"ECDSA": ["ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA",
                        "ECDHE-ECDSA-AES256-SHA384"],
              "RSA": ["ECDHE-RSA-AES128-SHA256", "ECDHE-RSA-AES128-SHA", "AES128-GCM-SHA256",
                      "AES256-SHA256"]}
ALLOWED = {"ECDSA": ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"],
           "RSA": ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384"]}


async def test_tls12_client_offering_only_prohibited_suites_is_refused(
        pki: dict[str, Any], tls_server: int) -> None:
    for cipher in PROHIBITED[pki["auth"]]:
        ctx = _tls12_client(pki, cipher)
        tcp = await trio.open_tcp_stream("127.0.0.1", tls_server)
        stream = trio.SSLStream(tcp, ctx, server_hostname="localhost")
        with trio.fail_after(BOUND), pytest.raises(trio.BrokenResourceError) as info:
            await stream.do_handshake()
        assert isinstance(info.value.__cause__, ssl.SSLError), cipher
        await trio.aclose_forcefully(stream)


async def test_tls12_client_with_an_allowed_suite_is_served(
        pki: dict[str, Any], tls_server: int) -> None:
    for cipher in ALLOWED[pki["auth"]]:
        stream = await _handshake(tls_server, _tls12_client(pki, cipher))
        assert stream.cipher()[:2] == (cipher, "TLSv1.2")
        assert stream.selected_alpn_protocol() == "h2"
        raw = RawConn(stream)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(raw.read_loop)
            await raw.handshake()
            await raw.send(request_frames(1, ECHO, b"tls12"))
            rec = await raw.wait_closed(1)
            assert rec.payloads() == [b"tls12"]
            nursery.cancel_scope.cancel()
        await trio.aclose_forcefully(stream)


async def test_tls13_is_unaffected(pki: dict[str, Any], tls_server: int) -> None:
    stream = await _handshake(tls_server, client_context(ca=pki["ca"]))
    assert stream.cipher()[1] == "TLSv1.3"
    await trio.aclose_forcefully(stream)


def test_contexts_offer_only_aead_ephemeral_suites_under_tls12(pki: dict[str, Any],
                                                              tmp_path: Path) -> None:
    for ctx in (server_context(pki["cert"], pki["key"]), client_context(ca=pki["ca"])):
        tls12 = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
        assert tls12 == set(HTTP2_TLS12_CIPHERS.split(":"))
        for c in ctx.get_ciphers():
            if c["protocol"] == "TLSv1.2":
                assert c["aead"], c["name"]
                assert c["kea"] == "kx-ecdhe", c["name"]
        assert ctx.options & ssl.OP_NO_COMPRESSION
        assert ctx.options & ssl.OP_NO_RENEGOTIATION
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


async def test_client_context_refuses_server_with_only_prohibited_suites(
        pki: dict[str, Any]) -> None:
    # The client side of the same rule, against a plain TLS 1.2 server.
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki["cert"], pki["key"])
    server_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    server_ctx.set_ciphers(PROHIBITED[pki["auth"]][0])

    async def handler(tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, server_ctx, server_side=True)
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError:
            pass
        await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream = trio.SSLStream(tcp, client_context(ca=pki["ca"]), server_hostname="localhost")
        with trio.fail_after(BOUND), pytest.raises(trio.BrokenResourceError):
            await stream.do_handshake()
        await trio.aclose_forcefully(stream)
        nursery.cancel_scope.cancel()
