"""Sans-I/O tests: framing, compression, grpc-timeout, metadata and status mappings."""

from __future__ import annotations

import base64
import gzip
import itertools
import math
import struct
import tracemalloc

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from wire import RpcError, StatusCode
from wire.compression import (
    ACCEPT_ENCODING,
    compress,
    decompress,
    parse_accept_encoding,
)
from wire.framing import DEFAULT_MAX_MESSAGE_SIZE, MessageDecoder, encode_message
from wire.metadata import (
    Metadata,
    decode_bin,
    encode_bin,
    from_headers,
    percent_decode,
    percent_encode,
    to_headers,
    validate_key,
)
from wire.status import status_from_http, status_from_rst_stream
from wire.timeout import MAX_TIMEOUT_DIGITS, format_timeout, parse_timeout

# ---------------------------------------------------------------------------------- framing


def test_encode_message_layout() -> None:
    assert encode_message(b"abc") == b"\x00\x00\x00\x00\x03abc"
    assert encode_message(b"", compressed=True) == b"\x01\x00\x00\x00\x00"
    assert encode_message(b"x" * 256) == b"\x00\x00\x00\x01\x00" + b"x" * 256


def test_decoder_empty_message() -> None:
    dec = MessageDecoder()
    assert dec.feed(b"\x00\x00\x00\x00\x00") == [b""]
    assert dec.buffered == 0
    dec.end()


def test_decoder_several_messages_in_one_chunk() -> None:
    msgs = [b"one", b"", b"three" * 100, b"\x00\xff"]
    dec = MessageDecoder()
    assert dec.feed(b"".join(encode_message(m) for m in msgs)) == msgs
    assert dec.buffered == 0
    dec.end()


def test_decoder_chunk_ending_mid_prefix_of_next() -> None:
    dec = MessageDecoder()
    stream = encode_message(b"first") + encode_message(b"second")
    cut = len(encode_message(b"first")) + 3
    assert dec.feed(stream[:cut]) == [b"first"]
    assert dec.buffered == 3
    assert dec.feed(stream[cut:]) == [b"second"]
    assert dec.buffered == 0


@given(
    messages=st.lists(st.binary(max_size=300), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=20),
)
def test_decoder_any_split_yields_same_messages(messages: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode_message(m) for m in messages)
    points = sorted({c for c in cuts if c <= len(stream)} | {0, len(stream)})
    dec = MessageDecoder()
    out: list[bytes] = []
    for a, b in itertools.pairwise(points):
        out.extend(dec.feed(stream[a:b]))
    assert out == messages
    assert dec.buffered == 0
    dec.end()


@given(data=st.binary(max_size=2000), cuts=st.lists(st.integers(0, 2100), max_size=10))
def test_decoder_gzip_any_split(data: bytes, cuts: list[int]) -> None:
    stream = encode_message(compress("gzip", data), compressed=True) + encode_message(data)
    points = sorted({c for c in cuts if c <= len(stream)} | {0, len(stream)})
    dec = MessageDecoder(encoding="gzip")
    out: list[bytes] = []
    for a, b in itertools.pairwise(points):
        out.extend(dec.feed(stream[a:b]))
    assert out == [data, data]


def test_limit_decided_from_prefix_alone() -> None:
    # The largest length a prefix can announce (4 GiB - 1): refused on the 5th byte.
    dec = MessageDecoder()
    prefix = struct.pack(">BI", 0, 0xFFFFFFFF)
    assert dec.feed(prefix[:4]) == []
    with pytest.raises(RpcError) as info:
        dec.feed(prefix[4:])
    assert info.value.code is StatusCode.RESOURCE_EXHAUSTED
    assert info.value.message == (
        f"received message larger than max (4294967295 vs. {DEFAULT_MAX_MESSAGE_SIZE})"
    )
    assert dec.buffered <= 5


def test_limit_prefix_in_one_chunk() -> None:
    dec = MessageDecoder(max_message_size=10)
    with pytest.raises(RpcError) as info:
        dec.feed(struct.pack(">BI", 0, 11) + b"x" * 3)
    assert info.value.code is StatusCode.RESOURCE_EXHAUSTED


def test_limit_boundary() -> None:
    dec = MessageDecoder(max_message_size=10)
    assert dec.feed(encode_message(b"x" * 10)) == [b"x" * 10]
    with pytest.raises(RpcError) as info:
        dec.feed(encode_message(b"x" * 11))
    assert info.value.code is StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(
    ("tail", "detail"),
    [
        (b"\x00\x00", "2 of 5 prefix bytes"),
        (struct.pack(">BI", 0, 10) + b"abc", "3 of 10 bytes"),
        (struct.pack(">BI", 0, 1), "0 of 1 bytes"),
    ],
)
def test_truncated_message_is_internal_on_end(tail: bytes, detail: str) -> None:
    dec = MessageDecoder()
    assert dec.feed(encode_message(b"whole") + tail) == [b"whole"]
    with pytest.raises(RpcError) as info:
        dec.end()
    assert info.value.code is StatusCode.INTERNAL
    assert info.value.message == f"stream ended inside a message (received {detail})"


@pytest.mark.parametrize("encoding", [None, "identity"])
def test_compressed_flag_without_encoding_is_internal(encoding: str | None) -> None:
    dec = MessageDecoder(encoding=encoding)
    with pytest.raises(RpcError) as info:
        dec.feed(encode_message(compress("gzip", b"hi"), compressed=True))
    assert info.value.code is StatusCode.INTERNAL


def test_invalid_compressed_flag_is_internal() -> None:
    dec = MessageDecoder(encoding="gzip")
    with pytest.raises(RpcError) as info:
        dec.feed(b"\x02\x00\x00\x00\x00")
    assert info.value.code is StatusCode.INTERNAL
    assert info.value.message == "invalid compressed flag 2 in message prefix"


# ---------------------------------------------------------------------------------- compression


def test_gzip_round_trip_and_real_gzip_container() -> None:
    data = b"health " * 1000
    packed = compress("gzip", data)
    assert packed[:2] == b"\x1f\x8b"  # RFC 1952 magic, not raw deflate or zlib
    assert gzip.decompress(packed) == data
    assert decompress("gzip", gzip.compress(data), 1 << 20) == data
    assert decompress("gzip", packed, len(data)) == data  # exactly at the limit is fine
    assert compress("identity", data) == data


def test_gzip_bomb_is_bounded() -> None:
    limit = 1 << 20
    bomb = compress("gzip", bytes(64 << 20))  # 64 MiB of zeros in ~64 KiB
    assert len(bomb) < 1 << 17
    tracemalloc.start()
    try:
        with pytest.raises(RpcError) as info:
            decompress("gzip", bomb, limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.code is StatusCode.RESOURCE_EXHAUSTED
    assert peak < 4 * limit  # never inflated anywhere near the 64 MiB


def test_gzip_bomb_through_decoder() -> None:
    dec = MessageDecoder(max_message_size=1000, encoding="gzip")
    with pytest.raises(RpcError) as info:
        dec.feed(encode_message(compress("gzip", bytes(1001)), compressed=True))
    assert info.value.code is StatusCode.RESOURCE_EXHAUSTED
    ok = MessageDecoder(max_message_size=1000, encoding="gzip")
    assert ok.feed(encode_message(compress("gzip", bytes(1000)), compressed=True)) == [bytes(1000)]


@pytest.mark.parametrize(
    "payload",
    [b"not gzip at all", compress("gzip", b"x" * 100)[:-9], b""],
    ids=["garbage", "truncated", "empty"],
)
def test_corrupt_gzip_is_internal(payload: bytes) -> None:
    with pytest.raises(RpcError) as info:
        decompress("gzip", payload, 1 << 20)
    assert info.value.code is StatusCode.INTERNAL


def test_unknown_encoding() -> None:
    with pytest.raises(RpcError) as info:
        decompress("br", b"x", 10)
    assert info.value.code is StatusCode.UNIMPLEMENTED
    with pytest.raises(ValueError, match="unsupported encoding 'br'"):
        compress("br", b"x")


def test_accept_encoding() -> None:
    assert parse_accept_encoding(ACCEPT_ENCODING) == {"identity", "gzip"}
    assert parse_accept_encoding(" GZIP , deflate,,") == {"gzip", "deflate"}
    assert parse_accept_encoding("") == frozenset()
    assert parse_accept_encoding(None) == frozenset()


# ---------------------------------------------------------------------------------- grpc-timeout


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1H", 3600.0),
        ("1M", 60.0),
        ("1S", 1.0),
        ("1m", 0.001),
        ("1u", 0.000001),
        ("1n", 0.000000001),
        ("0S", 0.0),
        ("99999999S", 99999999.0),
        ("99999999H", 99999999 * 3600.0),
        ("00000001m", 0.001),
        ("100m", 0.1),
        (b"250m", 0.25),
    ],
)
def test_parse_timeout_valid(value: str | bytes, seconds: float) -> None:
    assert parse_timeout(value) == seconds


@pytest.mark.parametrize(
    "value",
    [
        "",  # empty
        "S",  # 0 digits
        "m",
        "123456789S",  # 9 digits
        "000000000n",
        "1",  # no unit
        "10",
        "1s",  # bad units
        "1h",
        "1x",
        "1 S",
        " 1S",
        "1S ",
        "-1S",
        "+1S",
        "1.5S",
        "\u0661\u0662S",  # Arabic-Indic digits: str.isdigit() is True
        "\uff11S",  # fullwidth 1
        "\u00b2S",  # superscript 2
        "1\u00b5",  # micro sign as a unit
        b"1\xb5",  # non-ASCII bytes
        b"\xff\xffS",
    ],
)
def test_parse_timeout_invalid(value: str | bytes) -> None:
    with pytest.raises(ValueError, match=r"^grpc-timeout "):
        parse_timeout(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0n"),
        (-1, "0n"),
        (1e-9, "1n"),
        (1.5e-9, "2n"),  # rounds up
        (2**-20, "954n"),  # 953.67 ns, rounded up
        (0.0625, "62500000n"),
        (0.125, "125000u"),  # 125000000 ns needs 9 digits
        (0.1, "100000u"),
        (1, "1000000u"),
        (99, "99000000u"),
        (100, "100000m"),
        (100000, "100000S"),
        (99999999, "99999999S"),
        (100000000, "1666667M"),
        (99999999 * 3600, "99999999H"),
        (1e30, "99999999H"),  # capped
    ],
)
def test_format_timeout(seconds: float, text: str) -> None:
    assert format_timeout(seconds) == text


@given(st.floats(min_value=0.0, max_value=99999999 * 3600.0, allow_nan=False))
@example(0.1)  # 100000u: 100000 * 1e-6 in floats is 0.09999999999999999
@example(1.1)
@example(5e-324)
def test_format_timeout_round_trip_never_earlier(seconds: float) -> None:
    text = format_timeout(seconds)
    digits, unit = text[:-1], text[-1]
    assert 1 <= len(digits) <= MAX_TIMEOUT_DIGITS
    assert digits.isascii()
    assert digits.isdigit()
    assert unit in "HMSmun"
    back = parse_timeout(text)
    assert back >= seconds
    # Rounded up by at most one unit of the chosen (finest fitting) size.
    unit_s = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}[unit]
    assert back - seconds <= unit_s * 1.000001


@given(st.integers(min_value=0, max_value=10**8 - 1), st.sampled_from("HMSmun"))
def test_parse_timeout_any_valid(value: int, unit: str) -> None:
    scale = {"H": 3600, "M": 60, "S": 1, "m": 1e-3, "u": 1e-6, "n": 1e-9}[unit]
    assert math.isclose(parse_timeout(f"{value}{unit}"), value * scale, rel_tol=1e-12)


# ------------------------------------------------------------------------------ percent-encoding


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        ("", ""),
        ("plain ASCII ~ text", "plain ASCII ~ text"),
        ("100%", "100%25"),
        ("%", "%25"),
        ("%25", "%2525"),
        ("tab\there", "tab%09here"),
        ("nul\x00", "nul%00"),
        ("del\x7f", "del%7F"),
        ("caf\u00e9", "caf%C3%A9"),
        ("\u20ac 5", "%E2%82%AC 5"),
        ("\U0001f600", "%F0%9F%98%80"),
        (" ", " "),  # 0x20 is the first unencoded byte
        ("~", "~"),  # 0x7E the last
    ],
)
def test_percent_encode(message: str, wire: str) -> None:
    assert percent_encode(message) == wire
    assert percent_decode(wire) == message
    assert percent_decode(wire.encode("ascii")) == message


@given(st.text())
def test_percent_round_trip(message: str) -> None:
    wire = percent_encode(message)
    assert wire.isascii()
    assert all(0x20 <= ord(c) <= 0x7E for c in wire)
    # Every % on the wire starts an escape of two hex digits.
    for i, c in enumerate(wire):
        if c == "%":
            assert len(wire[i + 1 : i + 3]) == 2
            int(wire[i + 1 : i + 3], 16)
    assert percent_decode(wire) == message


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        ("%", "%"),
        ("100%", "100%"),
        ("%4", "%4"),
        ("a%4", "a%4"),
        ("%zz", "%zz"),
        ("%g1 ok", "%g1 ok"),
        ("%%41", "%A"),
        ("%e2%82%ac", "\u20ac"),  # lowercase hex is accepted
        ("%E2%82", "\ufffd"),  # truncated UTF-8
        ("%FF%FE", "\ufffd\ufffd"),  # not UTF-8 at all
        ("ok %C3", "ok \ufffd"),
        (b"raw \xff byte", "raw \ufffd byte"),
    ],
)
def test_percent_decode_lenient(wire: str | bytes, message: str) -> None:
    assert percent_decode(wire) == message


@given(st.binary())
def test_percent_decode_never_fails(wire: bytes) -> None:
    assert isinstance(percent_decode(wire), str)


# ---------------------------------------------------------------------------------- metadata


@pytest.mark.parametrize(
    ("raw", "b64"),
    [
        (b"", b""),
        (b"\x00", b"AA"),
        (b"\x00\x01", b"AAE"),
        (b"\x00\x01\x02", b"AAEC"),
        (b"\xff\xfe\xfd\xfc", b"//79/A"),
    ],
)
def test_bin_unpadded_out_padded_and_unpadded_in(raw: bytes, b64: bytes) -> None:
    assert encode_bin(raw) == b64
    assert b"=" not in encode_bin(raw)
    assert decode_bin(b64) == raw
    padded = base64.b64encode(raw)
    assert decode_bin(padded) == raw


@given(st.binary(max_size=100))
def test_bin_round_trip(raw: bytes) -> None:
    assert decode_bin(encode_bin(raw)) == raw
    assert decode_bin(base64.b64encode(raw)) == raw


@pytest.mark.parametrize(
    "bad",
    [b"A", b"AAAAA", b"!!!!", b"AA-_", b"AA A", b"A=AA", b"\xff\xff", b"AAAA\n"],
)
def test_bin_invalid_rejected(bad: bytes) -> None:
    with pytest.raises(ValueError, match=r"^invalid base64 .*in -bin metadata"):
        decode_bin(bad)


@pytest.mark.parametrize("key", ["x", "x-custom", "a.b_c-9", "x-bin", "0"])
def test_validate_key_ok(key: str) -> None:
    validate_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "", "X-Custom", "x-Upper", "grpc-foo", "grpc-status", "a b", "a:b", ":path", "caf\u00e9",
        "x/y",
    ],
)
def test_validate_key_rejected(key: str) -> None:
    with pytest.raises(ValueError, match=r"^metadata key "):
        validate_key(key)


def test_validate_key_reserved_allowed_when_asked() -> None:
    validate_key("grpc-status", allow_reserved=True)
    with pytest.raises(ValueError, match="must be non-empty lowercase"):
        validate_key("Grpc-Status", allow_reserved=True)


def test_to_headers() -> None:
    assert to_headers([("x-a", "1"), ("x-b-bin", b"\x00\x01"), ("x-a", "2")]) == [
        (b"x-a", b"1"),
        (b"x-b-bin", b"AAE"),
        (b"x-a", b"2"),
    ]


@pytest.mark.parametrize(
    ("pair", "error"),
    [
        (("grpc-x", "v"), ValueError),
        (("X-Up", "v"), ValueError),
        (("x-bin", "text"), TypeError),
        (("x-text", b"bytes"), TypeError),
        (("x-text", "new\nline"), ValueError),
        (("x-text", "caf\u00e9"), ValueError),
    ],
)
def test_to_headers_rejects(pair: tuple[str, str | bytes], error: type[Exception]) -> None:
    with pytest.raises(error):
        to_headers([pair])


def test_from_headers_skips_transport_and_decodes_bin() -> None:
    md = from_headers([
        (b":path", b"/a/b"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        (b"grpc-timeout", b"1S"),
        (b"grpc-encoding", b"gzip"),
        (b"x-a", b"1"),
        (b"user-agent", b"kube-probe/1.30"),
        (b"x-b-bin", b"AAE"),
        (b"x-b-bin", b"AAE="),
        (b"x-a", b"2"),
    ])
    assert md == Metadata([
        ("x-a", "1"),
        ("user-agent", "kube-probe/1.30"),
        ("x-b-bin", b"\x00\x01"),
        ("x-b-bin", b"\x00\x01"),
        ("x-a", "2"),
    ])
    assert md.get("x-a") == "2"
    assert md.get_all("x-b-bin") == [b"\x00\x01", b"\x00\x01"]
    assert md.get("missing") is None
    with pytest.raises(ValueError, match="invalid base64 in -bin metadata"):
        from_headers([(b"x-b-bin", b"!!")])


# ---------------------------------------------------------------------------------- status mapping


@pytest.mark.parametrize(
    ("http", "code"),
    [
        (400, StatusCode.INTERNAL),
        (401, StatusCode.UNAUTHENTICATED),
        (403, StatusCode.PERMISSION_DENIED),
        (404, StatusCode.UNIMPLEMENTED),
        (429, StatusCode.UNAVAILABLE),
        (431, StatusCode.INTERNAL),
        (502, StatusCode.UNAVAILABLE),
        (503, StatusCode.UNAVAILABLE),
        (504, StatusCode.UNAVAILABLE),
        (200, StatusCode.UNKNOWN),
        (405, StatusCode.UNKNOWN),
        (415, StatusCode.UNKNOWN),
        (500, StatusCode.UNKNOWN),
    ],
)
def test_status_from_http(http: int, code: StatusCode) -> None:
    assert status_from_http(http) is code


@pytest.mark.parametrize(
    ("h2_code", "code"),
    [
        (0x0, StatusCode.INTERNAL),  # NO_ERROR
        (0x1, StatusCode.INTERNAL),  # PROTOCOL_ERROR
        (0x2, StatusCode.INTERNAL),  # INTERNAL_ERROR
        (0x3, StatusCode.INTERNAL),  # FLOW_CONTROL_ERROR
        (0x6, StatusCode.INTERNAL),  # FRAME_SIZE_ERROR
        (0x7, StatusCode.UNAVAILABLE),  # REFUSED_STREAM
        (0x8, StatusCode.CANCELLED),  # CANCEL
        (0x9, StatusCode.INTERNAL),  # COMPRESSION_ERROR
        (0xB, StatusCode.RESOURCE_EXHAUSTED),  # ENHANCE_YOUR_CALM
        (0xC, StatusCode.PERMISSION_DENIED),  # INADEQUATE_SECURITY (PROTOCOL-HTTP2.md)
        (0xD, StatusCode.INTERNAL),  # HTTP_1_1_REQUIRED
        (0xFF, StatusCode.INTERNAL),  # unknown
    ],
)
def test_status_from_rst_stream(h2_code: int, code: StatusCode) -> None:
    assert status_from_rst_stream(h2_code) is code


def test_status_code_numbers() -> None:
    assert [c.name for c in StatusCode] == [
        "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
        "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
        "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
        "UNAUTHENTICATED",
    ]
    assert [int(c) for c in StatusCode] == list(range(17))
