"""Write the seed corpora under fuzz/corpus/ from valid traffic: ``python fuzz/make_corpus.py``.

Seeds are real inputs of each parser: framed messages (plain and gzip), grpc-timeout values,
metadata headers, the client side of a real HTTP/2 health Check, and health requests.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import h2.config
import h2.connection

from health._health_pb2 import HealthCheckRequest, HealthListRequest
from wire.compression import compress
from wire.framing import encode_message

CORPUS = Path(__file__).resolve().parent / "corpus"


def _write(name: str, seeds: list[bytes]) -> None:
    folder = CORPUS / name
    folder.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        (folder / hashlib.sha1(seed).hexdigest()[:16]).write_bytes(seed)


def _client_bytes(service: str, *, gzip: bool = False) -> bytes:
    """What a gRPC client sends after the preface for one Check (its SETTINGS included)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    data = conn.data_to_send()[len(preface):]
    headers = [(":method", "POST"), (":scheme", "http"), (":path", "/grpc.health.v1.Health/Check"),
               (":authority", "localhost"), ("te", "trailers"),
               ("content-type", "application/grpc"), ("grpc-timeout", "1S")]
    payload = HealthCheckRequest(service=service).SerializeToString()
    if gzip:
        headers.append(("grpc-encoding", "gzip"))
        body = encode_message(compress("gzip", payload), compressed=True)
    else:
        body = encode_message(payload)
    conn.send_headers(1, headers)
    conn.send_data(1, body, end_stream=True)
    return data + conn.data_to_send()


def main() -> None:
    """Regenerate every seed corpus."""
    check = HealthCheckRequest(service="grpc.health.v1.Health").SerializeToString()
    _write("framing", [
        b"\x00" + encode_message(check),
        b"\x40" + encode_message(compress("gzip", check), compressed=True),
        b"\x3f" + encode_message(b"a") + encode_message(b"") + encode_message(b"bc"),
    ])
    _write("timeout", [b"1S", b"100m", b"99999999n", b"5H", b"0u"])
    _write("metadata", [b"x-user\x01value\x00trace-bin\x01AAEC", b"caf%C3%A9 %25 done"])
    _write("server_connection", [_client_bytes(""), _client_bytes("svc", gzip=True)])
    _write("health_request", [check, HealthCheckRequest(service="").SerializeToString(),
                              HealthListRequest().SerializeToString()])


if __name__ == "__main__":
    main()
