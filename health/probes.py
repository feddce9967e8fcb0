"""The built-in probes: TCP connect, HTTP GET, a command's exit status, a gRPC health Check.

This module owns :func:`tcp_check`, :func:`http_check`, :func:`command_check` and
:func:`grpc_check`, each of which returns a ``health.checks.Probe`` (an async callable that
passes by returning and fails by raising ``CheckFailed`` with a reason for humans). It is the
one module of the server side that uses the gRPC client (``wire.open_channel`` and
``health.client``), for :func:`grpc_check`; importing it loads the client stack.
"""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Mapping, Sequence
from functools import partial
from typing import cast
from urllib.parse import urlsplit

import h11
import trio

from wire import RpcError, open_channel
from wire.oserrors import describe_os_error

from .checks import CheckFailed, Probe
from .client import HealthClient
from .status import ServingStatus

__all__ = ["command_check", "grpc_check", "http_check", "tcp_check"]

_MAX_STDERR_KEPT = 1024
_MAX_HTTP_HEADER_BYTES = 64 * 1024
# 1xx responses a server may send before the real one; more than this is not a real server.
_MAX_HTTP_INFORMATIONAL = 16


async def _connect(host: str, port: int) -> trio.SocketStream:
    """Open a TCP connection, or fail the check with the most specific reason."""
    try:
        return await trio.open_tcp_stream(host, port)
    except OSError as exc:
        why = describe_os_error(exc)
        raise CheckFailed(f"cannot connect to {host}:{port}: {why}") from None


def tcp_check(host: str, port: int) -> Probe:
    """A probe that passes when a TCP connection to ``host:port`` can be opened."""

    async def probe() -> None:
        await trio.aclose_forcefully(await _connect(host, port))

    return probe


def http_check(
    url: str,
    *,
    expect_status: tuple[int, int] = (200, 399),
    ssl_context: ssl.SSLContext | None = None,
    headers: Sequence[tuple[str, str]] = (),
) -> Probe:
    """A probe that GETs ``url`` (http or https) and passes on a status in ``expect_status``.

    The range is inclusive; the default, 200-399, is what Kubernetes HTTP probes accept. Only
    the status line is waited for; the body is not read.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"URL scheme must be http or https: {url!r}")
    if not parts.hostname:
        raise ValueError(f"URL has no host: {url!r}")
    host = parts.hostname
    port = parts.port or (443 if scheme == "https" else 80)
    low, high = expect_status
    if not 100 <= low <= high <= 599:
        raise ValueError(f"expect_status must be a range within 100-599, got {expect_status!r}")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    host_header = parts.netloc.rpartition("@")[2]
    context = ssl_context
    if scheme == "https" and context is None:
        context = ssl.create_default_context()
    request_headers = [("Host", host_header), ("User-Agent", "trio-grpc-health-check"),
                       ("Accept", "*/*"), ("Connection", "close"), *headers]

    async def probe() -> None:
        tcp = await _connect(host, port)
        stream: trio.abc.Stream = tcp
        try:
            if context is not None:
                tls = trio.SSLStream(tcp, context, server_hostname=host, https_compatible=True)
                try:
                    await tls.do_handshake()
                except trio.BrokenResourceError as exc:
                    cause = exc.__cause__
                    raise CheckFailed(f"TLS handshake with {host}:{port} failed: "
                                      f"{cause or exc}") from None
                stream = tls
            status = await _http_status(stream, target, request_headers)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise CheckFailed(f"connection to {host}:{port} broke: {exc}") from None
        finally:
            await trio.aclose_forcefully(stream)
        if not low <= status <= high:
            raise CheckFailed(f"GET {url} answered HTTP {status}, expected {low}-{high}")

    return probe


async def _http_status(stream: trio.abc.Stream, target: str,
                       headers: list[tuple[str, str]]) -> int:
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HTTP_HEADER_BYTES)
    data = conn.send(h11.Request(method="GET", target=target, headers=headers))
    data = (data or b"") + (conn.send(h11.EndOfMessage()) or b"")
    await stream.send_all(data)
    informational = 0
    # Bounded by the header size cap (each pass consumes data or an event) and the 1xx cap.
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise CheckFailed(f"bad HTTP response: {exc}") from None
        if event is h11.NEED_DATA:
            chunk = await stream.receive_some(16 * 1024)
            try:
                conn.receive_data(bytes(chunk))
            except h11.RemoteProtocolError as exc:
                raise CheckFailed(f"bad HTTP response: {exc}") from None
            continue
        if isinstance(event, h11.InformationalResponse):
            informational += 1
            if informational > _MAX_HTTP_INFORMATIONAL:
                raise CheckFailed("too many 1xx responses")
            continue
        if isinstance(event, h11.Response):
            return int(event.status_code)
        # ConnectionClosed (or anything else) before a response.
        raise CheckFailed("connection closed before an HTTP response")


def command_check(argv: Sequence[str], *, cwd: str | None = None,
                  env: Mapping[str, str] | None = None) -> Probe:
    """A probe that runs ``argv`` and passes when it exits 0 (like a Kubernetes exec probe).

    The process is killed when the check times out; the start of its stderr goes into the
    failure reason.
    """
    args = list(argv)
    if not args or not all(isinstance(a, str) for a in args):
        raise ValueError(f"argv must be a non-empty list of strings, got {argv!r}")

    async def probe() -> None:
        code, stderr = await _run_command(args, cwd, env)
        if code != 0:
            text = stderr.decode("utf-8", "replace").strip()
            detail = f": {text}" if text else ""
            raise CheckFailed(f"{args[0]} exited with status {code}{detail}")

    return probe


async def _kill(process: trio.Process) -> None:
    """Kill a timed-out command at once (trio's default waits 5 s after SIGTERM)."""
    # The check has already failed; a probe must not outlive its timeout by seconds.
    process.kill()
    await trio.lowlevel.checkpoint()


async def _run_command(args: list[str], cwd: str | None,
                       env: Mapping[str, str] | None) -> tuple[int, bytes]:
    """Run ``args`` to completion; return its exit status and the start of its stderr."""
    kept = bytearray()
    failure: CheckFailed | None = None
    code = 0
    async with trio.open_nursery() as nursery:
        try:
            process: trio.Process = await nursery.start(partial(
                trio.run_process, args, check=False, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd,
                env=dict(env) if env is not None else None, deliver_cancel=_kill))
        except OSError as exc:
            # Raised after the nursery, so callers get CheckFailed, not an ExceptionGroup.
            failure = CheckFailed(f"cannot run {args[0]!r}: {describe_os_error(exc)}")
        else:
            # Never None: started with stderr=PIPE.
            stderr = cast(trio.abc.ReceiveStream, process.stderr)
            # Keep reading to EOF so the child never blocks on a full pipe, but keep only the
            # start; bounded by the check's timeout, which kills the process.
            async with stderr:
                while chunk := await stderr.receive_some(16 * 1024):
                    kept += chunk[: _MAX_STDERR_KEPT - len(kept)]
            code = await process.wait()
    if failure is not None:
        raise failure
    return code, bytes(kept)


def grpc_check(
    target: str,
    service: str = "",
    *,
    rpc_timeout: float | None = None,
    connect_timeout: float = 5.0,
    ssl_context: ssl.SSLContext | None = None,
) -> Probe:
    """A probe that passes when the gRPC health server at ``target`` says ``service`` is SERVING.

    ``target`` is ``host:port`` or ``unix:PATH``. Each run opens a fresh channel, as
    ``grpc_health_probe`` does, so it also checks that new connections are accepted.
    """
    async def probe() -> None:
        try:
            async with open_channel(target, connect_timeout=connect_timeout,
                                    ssl_context=ssl_context) as channel:
                status = await HealthClient(channel).check(service, timeout=rpc_timeout)
        except RpcError as exc:
            raise CheckFailed(f"health check of {service!r} at {target} failed: "
                              f"{exc.code.name}: {exc.message}") from None
        if status is not ServingStatus.SERVING:
            raise CheckFailed(f"{service!r} at {target} is {status.name}")

    return probe
