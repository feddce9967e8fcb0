"""Micro-benchmark of the sans-I/O layer alone: ``wire.connection.ServerConnection`` answering
unary Checks, no sockets, no Trio.

    python bench/micro_wire.py [--requests 20000] [--batch 16] [--profile]

The client bytes are prepared beforehand (hpack + hyperframe, the same header list h2load sends,
batches of ``--batch`` requests like one read of an h2load 1x16 connection), then timed:
``receive_data(batch)`` -> for each request: parse the HealthCheckRequest (protobuf), queue the
pre-serialized SERVING response and status OK -> ``data_to_send()``. The result is the CPU cost
per Check of h2 + hpack + hyperframe + our connection layer + protobuf, to be compared with the
whole server's CPU/request from bench/run.py (the difference is Trio, the call tasks and the
socket system calls). ``--profile`` adds a cProfile breakdown by category.

``--variants`` also times what some cheap changes would save, by patching h2/hpack in this
process only (wire/ is not modified): h2's inbound header validation and in/outbound
normalization switched off, and hpack's per-integer ``log.debug`` calls stubbed out.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import pstats
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h2.config
import hpack
import hpack.hpack
from hyperframe.frame import DataFrame, Frame, HeadersFrame, SettingsFrame, WindowUpdateFrame

sys.path.insert(0, str(Path(__file__).resolve().parent))

from h2tools import encode_check_request

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# What h2load sends (bench/run.py logs the captured list), in its order.
HEADERS = [(b":path", b"/grpc.health.v1.Health/Check"), (b":scheme", b"http"),
           (b":authority", b"127.0.0.1:50051"), (b":method", b"POST"),
           (b"user-agent", b"h2load nghttp2/1.52.0"), (b"content-type", b"application/grpc"),
           (b"te", b"trailers"), (b"content-length", b"18")]


def client_bytes(requests: int, batch: int) -> tuple[bytes, list[bytes]]:
    enc = hpack.Encoder()
    body = encode_check_request("bench.check")
    settings = SettingsFrame(0)
    settings.settings = {SettingsFrame.INITIAL_WINDOW_SIZE: 2**30, SettingsFrame.ENABLE_PUSH: 0}
    ack = SettingsFrame(0, flags=["ACK"])
    window = WindowUpdateFrame(0, window_increment=2**31 - 1 - 65535)
    start = PREFACE + settings.serialize() + ack.serialize() + window.serialize()
    batches = []
    sid = 1
    for first in range(0, requests, batch):
        out = bytearray()
        for _ in range(min(batch, requests - first)):
            hf = HeadersFrame(sid, flags=["END_HEADERS"])
            hf.data = enc.encode(HEADERS)
            out += hf.serialize()
            out += DataFrame(sid, data=body, flags=["END_STREAM"]).serialize()
            sid += 2
        batches.append(bytes(out))
    return start, batches


def serve(start: bytes, batches: list[bytes], http2: str = "h2") -> tuple[int, int]:
    from health.protocol import check_response, parse_check_request
    from health.status import ServingStatus
    from wire.connection import ServerConfig, ServerConnection
    from wire.events import MessageReceived, RequestEnded
    from wire.status import StatusCode

    response = check_response(ServingStatus.SERVING)
    conn = ServerConnection(ServerConfig(http2=http2))  # type: ignore[arg-type]
    conn.receive_data(start)
    sent = len(conn.data_to_send())
    answered = 0
    requests: dict[int, bytes] = {}
    for data in batches:
        for ev in conn.receive_data(data):
            if isinstance(ev, MessageReceived):
                requests[ev.stream_id] = ev.data
            elif isinstance(ev, RequestEnded):
                parse_check_request(requests.pop(ev.stream_id))
                conn.send_message(ev.stream_id, response)
                conn.send_status(ev.stream_id, StatusCode.OK)
                answered += 1
        sent += len(conn.data_to_send())
    return answered, sent


class _NoLog:
    def debug(self, *args: object, **kwargs: object) -> None:
        pass


@contextlib.contextmanager
def patched(h2_flags: dict[str, bool], no_hpack_log: bool, no_repr: bool) -> Iterator[None]:
    """Force H2Configuration flags, silence hpack's logger, make ``repr(frame)`` free (h2
    formats every received frame for a trace log line nobody reads), in this process only."""
    original_config = h2.config.H2Configuration
    original_log = hpack.hpack.log
    original_repr = Frame.__repr__

    class Config(original_config):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.update(h2_flags)
            super().__init__(*args, **kwargs)

    h2.config.H2Configuration = Config  # type: ignore[misc]
    if no_hpack_log:
        hpack.hpack.log = _NoLog()  # type: ignore[assignment]
    if no_repr:
        Frame.__repr__ = lambda self: ""  # type: ignore[method-assign]
    try:
        yield
    finally:
        h2.config.H2Configuration = original_config  # type: ignore[misc]
        hpack.hpack.log = original_log
        Frame.__repr__ = original_repr  # type: ignore[method-assign]


VARIANTS: list[tuple[str, dict[str, bool], bool, bool]] = [
    ("as is", {}, False, False),
    ("h2 validate_inbound_headers=False", {"validate_inbound_headers": False}, False, False),
    ("h2 normalize_inbound_headers=False", {"normalize_inbound_headers": False}, False, False),
    ("h2 normalize_outbound_headers=False", {"normalize_outbound_headers": False}, False, False),
    ("hpack log.debug stubbed", {}, True, False),
    ("repr(frame) in h2's _receive_frame made free", {}, False, True),
    ("all of the above", {"validate_inbound_headers": False,
                          "normalize_inbound_headers": False,
                          "normalize_outbound_headers": False}, True, True),
]


def timed(start: bytes, batches: list[bytes], requests: int, repeat: int,
          http2: str = "h2") -> tuple[float, int]:
    best = float("inf")
    sent = 0
    for _ in range(repeat):
        t0 = time.process_time()
        answered, sent = serve(start, batches, http2)
        best = min(best, time.process_time() - t0)
        if answered != requests:
            raise SystemExit(f"only {answered} of {requests} answered")
    return best / requests * 1e6, sent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeat", type=int, default=3, help="report the best of this many")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--variants", action="store_true")
    p.add_argument("--http2", default="h2,native",
                   help="HTTP/2 engines to time, comma-separated (default: both)")
    args = p.parse_args()
    start, batches = client_bytes(args.requests, args.batch)
    for engine in args.http2.split(","):
        serve(*client_bytes(1000, args.batch), engine)  # warm-up: imports, caches
        us, sent = timed(start, batches, args.requests, args.repeat, engine)
        print(f"sans-I/O ServerConnection, http2={engine}: {us:.1f} µs CPU per Check "
              f"(best of {args.repeat}, {args.requests:,} requests in batches of {args.batch}; "
              f"{sent / args.requests:.0f} response bytes/request)")
    if args.variants:
        # Interleaved rounds, best of each: a burst of outside load then hits every variant.
        best = dict.fromkeys(range(len(VARIANTS)), float("inf"))
        for _ in range(args.repeat + 2):
            for i, (_name, flags, no_log, no_repr) in enumerate(VARIANTS):
                with patched(flags, no_log, no_repr):
                    serve(*client_bytes(200, args.batch))
                    v, _ = timed(start, batches, args.requests, 1)
                best[i] = min(best[i], v)
        print(f"\n| variant (patched in-process; best of {args.repeat + 2} interleaved rounds) "
              "| µs CPU/Check | saving |\n|---|---:|---:|")
        base = best[0]
        for i, (name, *_rest) in enumerate(VARIANTS):
            print(f"| {name} | {best[i]:.1f} | {(base - best[i]) / base * 100:.0f}% |")
    if args.profile:
        from profile_server import analyse_pstats

        prof = cProfile.Profile(time.process_time)
        prof.enable()
        serve(start, batches)
        prof.disable()
        print(analyse_pstats(pstats.Stats(prof), args.requests, 15))
    return 0


if __name__ == "__main__":
    sys.exit(main())
