"""Raw HTTP/2 helpers for the benchmark: capture what h2load sends, replay it, read the answer.

h2load only counts HTTP statuses, so before a server is measured ``run.py``:

1. ``capture_h2load_request`` runs ``h2load -n 1`` with the exact ``-d``/``-H`` arguments of the
   benchmark against a throw-away h2 server here and records the request's header list and body;
2. ``replay`` sends that same header list (only ``:authority`` adjusted) and body to the server
   under test with an ``h2`` client and decodes the gRPC response (HTTP status, content-type,
   messages, ``grpc-status``/``grpc-message``).

Runs in the project's venv (``h2`` is a dependency of the project); standard library otherwise.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events

STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def encode_check_request(service: str) -> bytes:
    """A length-prefixed, uncompressed ``HealthCheckRequest{service}`` (no protobuf needed)."""
    name = service.encode("utf-8")
    payload = b""
    if name:
        payload = b"\x0a" + _varint(len(name)) + name
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def parse_messages(data: bytes) -> list[bytes]:
    """Split a gRPC body into message payloads (raises ValueError on bad framing)."""
    out = []
    i = 0
    while i < len(data):
        if len(data) - i < 5:
            raise ValueError(f"truncated message prefix: {data[i:]!r}")
        flag = data[i]
        length = int.from_bytes(data[i + 1:i + 5], "big")
        if flag != 0:
            raise ValueError("compressed response message (not expected here)")
        if len(data) - i - 5 < length:
            raise ValueError("truncated message")
        out.append(data[i + 5:i + 5 + length])
        i += 5 + length
    return out


def health_status(payload: bytes) -> int:
    """The ``status`` field of a serialized HealthCheckResponse (0 when absent)."""
    i = 0
    status = 0
    while i < len(payload):
        key = payload[i]
        i += 1
        if key == 0x08:
            value = shift = 0
            while True:
                b = payload[i]
                i += 1
                value |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            status = value
        else:
            raise ValueError(f"unexpected field key {key:#x} in HealthCheckResponse")
    return status


@dataclass
class CapturedRequest:
    headers: list[tuple[bytes, bytes]]
    body: bytes


def capture_h2load_request(h2load_args: list[str], path: str, timeout: float = 20.0
                           ) -> CapturedRequest:
    """Run ``h2load -n 1 -c 1 -m 1 <h2load_args> http://127.0.0.1:P<path>`` against a capture
    server and return the request it sent."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    lsock.settimeout(timeout)
    port = lsock.getsockname()[1]
    result: dict[str, object] = {}

    def serve() -> None:
        try:
            sock, _ = lsock.accept()
        except OSError as exc:
            result["error"] = f"h2load never connected: {exc}"
            return
        sock.settimeout(timeout)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        body = bytearray()
        headers: list[tuple[bytes, bytes]] | None = None
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        headers = list(ev.headers or [])
                    elif isinstance(ev, h2.events.DataReceived):
                        body += ev.data or b""
                        conn.acknowledge_received_data(ev.flow_controlled_length or 0,
                                                       ev.stream_id)
                    elif isinstance(ev, h2.events.StreamEnded):
                        conn.send_headers(ev.stream_id, [(b":status", b"200"),
                                                         (b"content-type", b"application/grpc")])
                        conn.send_data(ev.stream_id, b"\x00\x00\x00\x00\x02\x08\x01")
                        conn.send_headers(ev.stream_id, [(b"grpc-status", b"0")],
                                          end_stream=True)
                        result["request"] = CapturedRequest(headers or [], bytes(body))
                sock.sendall(conn.data_to_send())
        except OSError:
            pass
        finally:
            sock.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    cmd = ["h2load", "-n", "1", "-c", "1", "-m", "1", *h2load_args,
           f"http://127.0.0.1:{port}{path}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    finally:
        thread.join(timeout)
        lsock.close()
    if "request" not in result:
        raise RuntimeError(f"could not capture h2load's request ({result.get('error')}); "
                           f"h2load said: {proc.stdout[-500:]} {proc.stderr[-500:]}")
    req = result["request"]
    assert isinstance(req, CapturedRequest)
    return req


@dataclass
class Reply:
    http_status: str | None = None
    content_type: str | None = None
    grpc_status: str | None = None
    grpc_message: str | None = None
    messages: list[bytes] = field(default_factory=list)
    reset: int | None = None

    def describe(self) -> str:
        statuses = [STATUS_NAMES.get(health_status(m), "?") for m in self.messages]
        return (f":status={self.http_status} content-type={self.content_type} "
                f"grpc-status={self.grpc_status} grpc-message={self.grpc_message!r} "
                f"messages={statuses} rst={self.reset}")


def replay(host: str, port: int, request: CapturedRequest, timeout: float = 10.0) -> Reply:
    """Send the captured request (``:authority`` set to host:port) and return the response."""
    headers = [(n, f"{host}:{port}".encode() if n == b":authority" else v)
               for n, v in request.headers]
    sock = socket.create_connection((host, port), timeout=timeout)
    deadline = time.monotonic() + timeout
    try:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, headers, end_stream=not request.body)
        if request.body:
            conn.send_data(sid, request.body, end_stream=True)
        sock.sendall(conn.data_to_send())
        reply = Reply()
        body = bytearray()
        done = False
        while not done:
            if time.monotonic() > deadline:
                raise TimeoutError("no complete response in time")
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection before the response ended")
            for ev in conn.receive_data(data):
                if isinstance(ev, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    for n, v in ev.headers or []:
                        name = n.decode() if isinstance(n, bytes) else n
                        value = v.decode() if isinstance(v, bytes) else v
                        if name == ":status":
                            reply.http_status = value
                        elif name == "content-type":
                            reply.content_type = value
                        elif name == "grpc-status":
                            reply.grpc_status = value
                        elif name == "grpc-message":
                            reply.grpc_message = value
                elif isinstance(ev, h2.events.DataReceived):
                    body += ev.data or b""
                    conn.acknowledge_received_data(ev.flow_controlled_length or 0, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                    done = True
                elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                    reply.reset = int(ev.error_code or 0)
                    done = True
            sock.sendall(conn.data_to_send())
        reply.messages = parse_messages(bytes(body))
        return reply
    finally:
        sock.close()
