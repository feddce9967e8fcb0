"""Custom metadata: validation, ``-bin`` values, and the ``grpc-message`` percent-encoding.

PROTOCOL-HTTP2.md: header names are lowercase ``0-9 a-z _ - .``; names ending in ``-bin`` carry
binary values, base64-encoded on the wire ("implementations MUST accept padded and un-padded
values and should emit un-padded values"); names starting with ``grpc-`` are reserved for gRPC
itself. ``grpc-message`` is percent-encoded UTF-8: bytes outside 0x20-0x7E, and ``%`` itself,
become ``%XX``; receivers decode leniently and never fail on it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

__all__ = [
    "Metadata",
    "MetadataLike",
    "MetadataValue",
    "decode_bin",
    "encode_bin",
    "from_headers",
    "percent_decode",
    "percent_encode",
    "to_headers",
    "validate_key",
]

MetadataValue = str | bytes
MetadataLike = Iterable[tuple[str, MetadataValue]]

# Request and response headers that gRPC or HTTP/2 define; they never appear as custom metadata.
_TRANSPORT_HEADERS = frozenset({
    b"content-type", b"te", b"grpc-timeout", b"grpc-encoding", b"grpc-accept-encoding",
    b"grpc-status", b"grpc-message", b"grpc-status-details-bin", b"connection",
    b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"host",
    b"content-length",
})
_KEY_CHARS = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyz_-.")


class Metadata(Sequence[tuple[str, MetadataValue]]):
    """An ordered, immutable list of (key, value) pairs; keys may repeat."""

    __slots__ = ("_items",)

    def __init__(self, items: MetadataLike = ()) -> None:
        self._items: tuple[tuple[str, MetadataValue], ...] = tuple(items)

    @overload
    def __getitem__(self, index: int) -> tuple[str, MetadataValue]: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[tuple[str, MetadataValue]]: ...
    def __getitem__(
        self, index: int | slice
    ) -> tuple[str, MetadataValue] | Sequence[tuple[str, MetadataValue]]:
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[tuple[str, MetadataValue]]:
        return iter(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Metadata):
            return self._items == other._items
        if isinstance(other, (tuple, list)):
            return self._items == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._items)

    def __repr__(self) -> str:
        return f"Metadata({list(self._items)!r})"

    def get(self, key: str, default: MetadataValue | None = None) -> MetadataValue | None:
        """The last value for ``key``, or ``default``."""
        for k, v in reversed(self._items):
            if k == key:
                return v
        return default

    def get_all(self, key: str) -> list[MetadataValue]:
        """Every value for ``key``, in order."""
        return [v for k, v in self._items if k == key]


def validate_key(key: str, *, allow_reserved: bool = False) -> None:
    """Raise ValueError unless ``key`` is a legal custom metadata name."""
    raw = key.encode("ascii", "replace")
    if not raw or not set(raw) <= _KEY_CHARS:
        raise ValueError(f"metadata key {key!r} must be non-empty lowercase 0-9 a-z _ - .")
    if not allow_reserved and raw.startswith(b"grpc-"):
        raise ValueError(f"metadata key {key!r} is reserved (grpc- prefix)")


def encode_bin(value: bytes) -> bytes:
    """Base64 for a ``-bin`` value, without padding (what the spec says to emit)."""
    return base64.b64encode(value).rstrip(b"=")


def decode_bin(value: bytes) -> bytes:
    """Decode a ``-bin`` value, padded or not; raise ValueError if it is not base64."""
    value = value.rstrip(b"=")
    if len(value) % 4 == 1:
        raise ValueError("invalid base64 length in -bin metadata")
    try:
        return base64.b64decode(value + b"=" * (-len(value) % 4), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"invalid base64 in -bin metadata: {exc}") from None


def to_headers(metadata: MetadataLike) -> list[tuple[bytes, bytes]]:
    """Validate custom metadata and encode it as HTTP/2 header fields."""
    out: list[tuple[bytes, bytes]] = []
    for key, value in metadata:
        validate_key(key)
        name = key.encode("ascii")
        if key.endswith("-bin"):
            if not isinstance(value, bytes):
                raise TypeError(f"metadata {key!r} ends in -bin, so its value must be bytes")
            out.append((name, encode_bin(value)))
        else:
            if not isinstance(value, str):
                raise TypeError(f"metadata {key!r} is not -bin, so its value must be str")
            raw = value.encode("ascii", "replace")
            if any(b < 0x20 or b > 0x7E for b in raw) or not value.isascii():
                raise ValueError(f"metadata {key!r} value must be printable ASCII")
            out.append((name, raw))
    return out


def from_headers(headers: Iterable[tuple[bytes, bytes]]) -> Metadata:
    """Custom metadata from received header fields, skipping transport and pseudo headers.

    Raises ValueError for a malformed ``-bin`` value.
    """
    items: list[tuple[str, MetadataValue]] = []
    for name, value in headers:
        if name[:1] == b":" or name in _TRANSPORT_HEADERS:
            continue
        key = name.decode("ascii", "replace")
        if name.endswith(b"-bin"):
            items.append((key, decode_bin(value)))
        else:
            items.append((key, value.decode("ascii", "replace")))
    return Metadata(items)


_UNRESERVED = frozenset(range(0x20, 0x7F)) - {ord("%")}
_PERCENT_TABLE = [chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in range(256)]


def percent_encode(message: str) -> str:
    """Percent-encode a status message for ``grpc-message``."""
    raw = message.encode("utf-8", "surrogatepass")
    if all(b in _UNRESERVED for b in raw):
        return message
    return "".join(_PERCENT_TABLE[b] for b in raw)


_HEX = frozenset(b"0123456789abcdefABCDEF")


def percent_decode(value: str | bytes) -> str:
    """Decode ``grpc-message`` leniently: bad escapes pass through, bad UTF-8 is replaced."""
    raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    if b"%" not in raw:
        return raw.decode("utf-8", "replace")
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        b = raw[i]
        if b == 0x25 and i + 2 < n and raw[i + 1] in _HEX and raw[i + 2] in _HEX:
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(b)
            i += 1
    return out.decode("utf-8", "replace")
