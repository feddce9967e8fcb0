"""TLS contexts for gRPC: ALPN ``h2``, TLS 1.2 or newer, optional client certificates.

gRPC over TLS requires HTTP/2 to be negotiated with ALPN (RFC 7540 section 3.3; grpc-go refuses
peers that do not). These helpers build ``ssl.SSLContext`` objects configured that way; the
server and the channel check after the handshake that ``h2`` was really selected. Under TLS 1.2
they offer only the cipher suites HTTP/2 allows (RFC 9113 section 9.2.2 and Appendix A), and no
compression or renegotiation (section 9.2.1).
"""

from __future__ import annotations

import os
import ssl
from typing import Any

__all__ = [
    "ALPN_H2",
    "HTTP2_TLS12_CIPHERS",
    "TLSConfigError",
    "client_context",
    "negotiated_h2",
    "peer_certificate",
    "server_context",
]

ALPN_H2 = "h2"

#: The TLS 1.2 cipher suites (OpenSSL names) both contexts offer. RFC 9113 section 9.2.2: "A
#: deployment of HTTP/2 over TLS 1.2 SHOULD NOT use any of the prohibited cipher suites listed
#: in Appendix A", and the peer "MAY choose to generate a connection error ... of type
#: INADEQUATE_SECURITY if one of the prohibited cipher suites is negotiated". Appendix A lists
#: every suite without an AEAD cipher or without ephemeral key exchange, so what remains is
#: ECDHE with AES-GCM or ChaCha20-Poly1305 -- including the one section 9.2.2 makes mandatory,
#: "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 ... with P-256". (The AEAD DHE suites are allowed too;
#: like Go's crypto/tls, which grpc-go uses, we offer ECDHE only.) TLS 1.3 suites are all AEAD
#: with ephemeral keys and are not affected by this list.
HTTP2_TLS12_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
))


class TLSConfigError(ValueError):
    """A certificate, key or CA file cannot be used."""


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str | None) -> None:
    for path in (cert, key):
        # ssl reports a missing file without its name; check first to say which one.
        if path is not None and not os.path.isfile(path):
            raise TLSConfigError(f"cannot read certificate or key file {path!r}")
    try:
        ctx.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise TLSConfigError(f"cannot read certificate or key: {exc}") from None
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigError(f"invalid certificate/key pair {cert!r}, {key!r}: {exc}") from None


def _http2_policy(ctx: ssl.SSLContext) -> None:
    """TLS 1.2 or newer, HTTP/2's TLS 1.2 cipher suites, no compression or renegotiation."""
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(HTTP2_TLS12_CIPHERS)
    # Section 9.2.1: "Deployments of HTTP/2 over TLS 1.2 MUST disable compression" and "MUST
    # disable renegotiation".
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.set_alpn_protocols([ALPN_H2])


def _load_ca(ctx: ssl.SSLContext, ca: str) -> None:
    try:
        ctx.load_verify_locations(cafile=ca)
    except FileNotFoundError:
        raise TLSConfigError(f"cannot read CA file {ca!r}") from None
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigError(f"invalid CA file {ca!r}: {exc}") from None


def server_context(
    cert: str,
    key: str | None = None,
    *,
    client_ca: str | None = None,
    require_client_cert: bool = False,
) -> ssl.SSLContext:
    """A server context offering only ``h2``; with ``client_ca``, client certificates (mTLS).

    ``require_client_cert`` refuses clients without a certificate signed by ``client_ca``;
    without it a certificate is optional but verified when presented.
    """
    if require_client_cert and client_ca is None:
        raise TLSConfigError("require_client_cert needs client_ca to verify certificates with")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _http2_policy(ctx)
    _load_chain(ctx, cert, key)
    if client_ca is not None:
        _load_ca(ctx, client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def client_context(
    *,
    ca: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    verify: bool = True,
) -> ssl.SSLContext:
    """A client context offering only ``h2``: system roots or ``ca``, optional client cert."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _http2_policy(ctx)
    if verify:
        if ca is not None:
            _load_ca(ctx, ca)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        _load_chain(ctx, cert, key)
    elif key is not None:
        raise TLSConfigError("a client key was given without a client certificate")
    return ctx


def negotiated_h2(stream: Any) -> bool:
    """True when a completed TLS handshake on ``stream`` selected ALPN ``h2``."""
    selected = stream.selected_alpn_protocol()
    return bool(selected == ALPN_H2)


def peer_certificate(stream: Any) -> dict[str, Any] | None:
    """The verified peer certificate of a TLS stream (``ssl.getpeercert()`` form), if any."""
    try:
        cert = stream.getpeercert()
    except (ValueError, AttributeError):
        return None
    return dict(cert) if cert else None
