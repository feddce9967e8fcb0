"""Message compression: the encodings we speak and bounded decompression.

Owns the ``grpc-encoding`` names we accept (``identity`` and ``gzip``), the value we advertise in
``grpc-accept-encoding``, and decompression that never inflates past the receive limit (a small
gzip bomb must not become a large allocation).
"""

from __future__ import annotations

import zlib

from .errors import RpcError
from .status import StatusCode

__all__ = [
    "ACCEPT_ENCODING",
    "SUPPORTED_ENCODINGS",
    "compress",
    "decompress",
    "parse_accept_encoding",
]

SUPPORTED_ENCODINGS = frozenset({"identity", "gzip"})
# What we put in grpc-accept-encoding; identity is always acceptable but listing it is harmless.
ACCEPT_ENCODING = "identity,gzip"

_GZIP_WBITS = 16 + zlib.MAX_WBITS  # the gzip container (RFC 1952), not raw deflate or zlib


def parse_accept_encoding(value: str | None) -> frozenset[str]:
    """Parse a ``grpc-accept-encoding`` value into the set of encodings the peer offers."""
    if not value:
        return frozenset()
    return frozenset(part.strip().lower() for part in value.split(",") if part.strip())


def compress(encoding: str, data: bytes) -> bytes:
    """Compress a message payload with ``encoding`` (``gzip``; ``identity`` returns it as is)."""
    if encoding == "gzip":
        c = zlib.compressobj(6, zlib.DEFLATED, _GZIP_WBITS)
        return c.compress(data) + c.flush()
    if encoding == "identity":
        return data
    raise ValueError(f"unsupported encoding {encoding!r}")


def decompress(encoding: str | None, data: bytes, limit: int) -> bytes:
    """Decompress a message that arrived with the compressed flag set.

    Raises RpcError INTERNAL when the flag is set without a usable encoding or the data is
    corrupt, and RESOURCE_EXHAUSTED when the result would exceed ``limit`` bytes.
    """
    if encoding is None or encoding == "identity":
        # PROTOCOL-HTTP2.md: a Compressed-Flag of 1 with no (or identity) Message-Encoding is an
        # error.
        raise RpcError(
            StatusCode.INTERNAL,
            "compressed flag set on a message but no grpc-encoding was negotiated",
        )
    if encoding != "gzip":
        raise RpcError(StatusCode.UNIMPLEMENTED, f"message encoding {encoding!r} is not supported")
    d = zlib.decompressobj(_GZIP_WBITS)
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as exc:
        raise RpcError(StatusCode.INTERNAL, f"could not decompress gzip message: {exc}") from None
    if len(out) > limit:
        raise RpcError(
            StatusCode.RESOURCE_EXHAUSTED,
            f"decompressed message larger than max ({limit} bytes)",
        )
    if not d.eof:
        raise RpcError(StatusCode.INTERNAL, "truncated gzip message")
    return out
