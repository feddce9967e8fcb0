"""TLS for gRPC: contexts with ALPN ``h2``, TLS 1.2 or newer, optional client certificates;
a server configuration that follows its certificate files as they rotate.

gRPC over TLS requires HTTP/2 to be negotiated with ALPN (RFC 7540 section 3.3; grpc-go refuses
peers that do not). These helpers build ``ssl.SSLContext`` objects configured that way; the
server and the channel check after the handshake that ``h2`` was really selected. Under TLS 1.2
they offer only the cipher suites HTTP/2 allows (RFC 9113 section 9.2.2 and Appendix A), and no
compression or renegotiation (section 9.2.1).

Server contexts are ``AlertingContext`` objects: when a handshake fails (a client certificate
refused under mTLS, say), the TLS alert OpenSSL queued still reaches the client, where Trio's
``SSLStream`` would otherwise drop it and the client would see a bare reset.

``ServerTLS`` keeps a server's context in step with its files (cert-manager renews them): one
front context serves every listener, and each new handshake is switched to the context last
loaded from the files, which are checked cheaply when connections arrive and reloaded on
demand (SIGHUP). Connections already open keep the certificate they were made with.

Nothing here imports Trio: it is plain ``ssl``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import ssl
import time
from collections.abc import Callable
from typing import Any

__all__ = [
    "ALPN_H2",
    "HTTP2_TLS12_CIPHERS",
    "AlertingContext",
    "ServerTLS",
    "TLSConfigError",
    "client_context",
    "negotiated_h2",
    "peer_certificate",
    "server_context",
]

logger = logging.getLogger("wire.tls")

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
        # An encrypted key must not make OpenSSL prompt on the terminal (it would block the
        # server, at a reload too): with no password to give, it is simply refused.
        ctx.load_cert_chain(cert, key, password=_no_password)
    except FileNotFoundError as exc:
        raise TLSConfigError(f"cannot read certificate or key: {exc}") from None
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigError(_chain_problem(cert, key, exc)) from None


def _no_password() -> bytes:
    return b""


def _chain_problem(cert: str, key: str | None, exc: Exception) -> str:
    """Which of the two files ``load_cert_chain`` refused, and why (OpenSSL only says
    "PEM lib"). Names files, never their contents."""
    key_file = key if key is not None else cert
    if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH":
        return f"key file {key_file!r} does not match certificate file {cert!r}"
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cafile=cert)
    except (ssl.SSLError, OSError):
        return f"invalid certificate file {cert!r}: no complete PEM certificate in it"
    return f"invalid key file {key_file!r}: no usable unencrypted PEM private key in it"


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


class _AlertingSSLObject(ssl.SSLObject):
    """An ``SSLObject`` whose failed handshake first lets its caller send the queued alert."""

    outgoing: ssl.MemoryBIO | None = None
    _failure: ssl.SSLError | None = None

    def do_handshake(self) -> None:
        """``SSLObject.do_handshake``, except that a failure with an alert queued in the
        outgoing BIO is reported as "want read" once, and raised on the next call."""
        if self._failure is not None:
            raise self._failure
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as exc:
            if self.outgoing is None or not self.outgoing.pending:
                raise
            # Trio's SSLStream raises on an SSLError without sending what OpenSSL wrote to
            # the outgoing BIO (the alert: "certificate required", "unknown ca", ...), so the
            # client sees the connection reset. On "want read" it sends the BIO's bytes
            # first, then calls again, and only then hears of the failure (Trio 0.35's
            # SSLStream._retry; tests/wire/test_tls_reload.py checks the alert arrives).
            self._failure = exc
            raise ssl.SSLWantReadError(ssl.SSL_ERROR_WANT_READ,
                                       "sending the TLS alert first") from None


class AlertingContext(ssl.SSLContext):
    """An ``ssl.SSLContext`` whose failed handshakes still send their TLS alert (see
    ``_AlertingSSLObject``) through a caller that drives ``wrap_bio`` objects, as Trio does."""

    sslobject_class = _AlertingSSLObject

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO,
                 server_side: bool = False, server_hostname: str | bytes | None = None,
                 session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        """``SSLContext.wrap_bio``; the object keeps ``outgoing`` to see a queued alert."""
        obj = super().wrap_bio(incoming, outgoing, server_side=server_side,
                               server_hostname=server_hostname, session=session)
        if isinstance(obj, _AlertingSSLObject):
            obj.outgoing = outgoing
        return obj


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
    ctx = AlertingContext(ssl.PROTOCOL_TLS_SERVER)
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


#: What ``ServerTLS`` watches of each file: (inode, size, mtime in ns), None while missing.
_Stamp = tuple[tuple[int, int, int] | None, ...]


class ServerTLS:
    """A server's TLS configuration that follows its files: certificate, key and client CA.

    Serve with ``context``, one ``ssl.SSLContext`` for every listener (``server.serve_tcp(...,
    ssl_context=tls.context)``): at each new handshake, before a certificate is chosen, it
    switches the connection to ``current``, the context last built from the files. ``reload()``
    rebuilds it now (for SIGHUP); ``check()`` does so when a file's inode, size or mtime
    changed, looking at most once per ``check_interval`` seconds, and is called by every new
    handshake (a caller may also run it on a timer). A file that cannot be used keeps the
    previous context and logs one error naming the file. Connections already open keep the
    certificate they were made with. Bad files at construction raise ``TLSConfigError``.
    """

    def __init__(
        self,
        cert: str,
        key: str | None = None,
        *,
        client_ca: str | None = None,
        require_client_cert: bool = False,
        check_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cert = cert
        self.key = key
        self.client_ca = client_ca
        self.require_client_cert = require_client_cert
        self.check_interval = check_interval
        self._clock = clock
        self._paths = tuple(p for p in (cert, key, client_ca) if p is not None)
        # Stamp first, then contents: a change in between is seen by the next check.
        self._stamp = self._stat()
        self._digest = self._read_digest()
        self._current = self._build()
        self._next_check = clock() + check_interval
        #: The context to serve with; it hands each handshake over to ``current``.
        self.context: ssl.SSLContext = self._current
        self.context.sni_callback = self._on_client_hello

    @property
    def current(self) -> ssl.SSLContext:
        """The context built from the files as last loaded successfully."""
        return self._current

    def current_context(self) -> ssl.SSLContext:
        """``check()``, then the current context: for callers that wrap each stream themselves."""
        self.check()
        return self._current

    def check(self) -> bool:
        """Reload if a file changed (inode, size, mtime) -- looked at once per
        ``check_interval`` at most; True if a new context is now current."""
        now = self._clock()
        if now < self._next_check:
            return False
        self._next_check = now + self.check_interval
        if self._stat() == self._stamp:
            return False
        return self.reload()

    def reload(self) -> bool:
        """Re-read the files now; True if their contents changed and a new context is current.

        On a file that cannot be used the previous context stays and one error is logged; the
        files are not tried again by ``check()`` until they change again.
        """
        stamp = self._stat()
        try:
            digest = self._read_digest()
            if digest == self._digest:
                self._stamp = stamp
                return False
            ctx = self._build()
        except TLSConfigError as exc:
            self._stamp = stamp
            logger.error("TLS files not reloaded, still serving the previous certificate: %s",
                         exc)
            return False
        self._stamp, self._digest, self._current = stamp, digest, ctx
        logger.info("TLS certificate reloaded from %s", self.cert)
        return True

    def _build(self) -> ssl.SSLContext:
        return server_context(self.cert, self.key, client_ca=self.client_ca,
                              require_client_cert=self.require_client_cert)

    def _stat(self) -> _Stamp:
        stamps: list[tuple[int, int, int] | None] = []
        for path in self._paths:
            try:
                st = os.stat(path)
            except OSError:
                stamps.append(None)
            else:
                stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(stamps)

    def _read_digest(self) -> bytes:
        # A digest, so that the key's bytes are not kept around by us.
        h = hashlib.sha256()
        for path in self._paths:
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as exc:
                raise TLSConfigError(f"cannot read {path!r}: {exc.strerror}") from None
            h.update(len(data).to_bytes(8, "big"))
            h.update(data)
        return h.digest()

    def _on_client_hello(self, ssl_object: ssl.SSLObject, server_name: str | None,
                         ctx: ssl.SSLContext) -> None:
        # The SNI callback runs for every ClientHello (with or without a server name), before
        # the server picks its certificate: the moment to hand the connection to the newest
        # context. An exception here would fail the client's handshake instead.
        try:
            self.check()
        except Exception:
            logger.exception("checking the TLS files failed")
        current = self._current
        if ssl_object.context is not current:
            ssl_object.context = current
