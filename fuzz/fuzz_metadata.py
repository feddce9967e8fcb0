"""Fuzz header/metadata handling: ``-bin`` decoding, metadata extraction, ``grpc-message``.

Invariants: ``from_headers`` raises only ValueError (malformed ``-bin``); ``percent_decode`` never
raises; ``percent_encode`` output is printable ASCII and decodes back to the original text;
``-bin`` values round-trip through ``encode_bin``/``decode_bin``.
"""

from __future__ import annotations

from wire.metadata import decode_bin, encode_bin, from_headers, percent_decode, percent_encode


def _pairs(data: bytes) -> list[tuple[bytes, bytes]]:
    # Split into fields on 0x00 and name/value on the first 0x01.
    out = []
    for field in data.split(b"\x00"):
        name, _, value = field.partition(b"\x01")
        out.append((name, value))
    return out


def one_input(data: bytes) -> None:
    """Run the metadata functions on ``data`` and check the invariants."""
    try:
        from_headers(_pairs(data))
    except ValueError:
        pass
    decoded = percent_decode(data)
    encoded = percent_encode(decoded)
    if not all(0x20 <= ord(c) <= 0x7E for c in encoded):
        raise AssertionError(f"percent_encode produced non-printable {encoded!r}")
    if percent_decode(encoded) != decoded:
        raise AssertionError("percent_encode/percent_decode do not round-trip")
    if decode_bin(encode_bin(data)) != data:
        raise AssertionError("-bin round trip failed")
    try:
        decode_bin(data)
    except ValueError:
        pass


if __name__ == "__main__":
    from _common import run

    run(one_input, "metadata")
