"""Watch fan-out client: N Watch streams on one service, then the time the change reaches them.

    python bench/watch_client.py --port P --service NAME --watchers N [--per-conn 100]
        [--initial SERVING] [--change NOT_SERVING] [--ready-timeout S] [--change-timeout S]

Opens ceil(N / per-conn) HTTP/2 connections with up to ``per-conn`` Watch streams each (all
requests written at once), then prints, on stdout:

* ``ready <monotonic> <setup_seconds>`` once every stream has received its first message, which
  must be ``--initial``;
* ``done <monotonic_first> <monotonic_last> <count> <duplicates>`` once every stream has received
  a message with ``--change`` (the orchestrator triggers the change after ``ready`` and takes its
  own ``time.monotonic()`` just before: CLOCK_MONOTONIC is system-wide, so the two compare);
* or ``error <text>`` and exit status 1 (a reset stream, a GOAWAY, an early ``grpc-status``,
  a timeout...).

To keep the client's own cost small next to the server's, frames are parsed here by hand (9-byte
header, DATA payloads split into gRPC messages, the status read from the protobuf bytes) and only
HEADERS blocks go through ``hpack``. The client answers SETTINGS and PING, opens large
flow-control windows up front, and otherwise only reads. Runs in the project's venv.
"""

from __future__ import annotations

import argparse
import selectors
import socket
import sys
import time

from hpack import Decoder, Encoder

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
STATUS = {"UNKNOWN": 0, "SERVING": 1, "NOT_SERVING": 2, "SERVICE_UNKNOWN": 3}
WINDOW = 1 << 30

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH, PING, GOAWAY, WINDOW_UPDATE, CONT = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIO_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20


class ClientError(Exception):
    pass


def frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    head = len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big")
    return head + payload


def request_body(service: str) -> bytes:
    name = service.encode()
    payload = b""
    if name:
        n = len(name)
        vi = bytearray()
        while True:
            b, n = n & 0x7F, n >> 7
            vi.append(b | 0x80 if n else b)
            if not n:
                break
        payload = b"\x0a" + bytes(vi) + name
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


class Stream:
    __slots__ = ("buf", "statuses")

    def __init__(self) -> None:
        self.buf = b""
        self.statuses: list[int] = []


class Conn:
    def __init__(self, sock: socket.socket, nstreams: int) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.decoder = Decoder()
        self.streams = {2 * i + 1: Stream() for i in range(nstreams)}
        self.pending_headers: tuple[int, int, bytearray] | None = None
        self.out = bytearray()


class WatchFanout:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.initial = STATUS[args.initial]
        self.change = STATUS[args.change]
        self.conns: list[Conn] = []
        self.waiting_initial = 0
        self.waiting_change = 0
        self.first_change: float | None = None
        self.last_change: float | None = None
        self.duplicates = 0
        self.phase = "initial"

    # -------------------------------------------------------------------- setup

    def open(self) -> None:
        a = self.args
        body = request_body(a.service)
        remaining = a.watchers
        while remaining:
            n = min(a.per_conn, remaining)
            remaining -= n
            sock = socket.create_connection((a.host, a.port), timeout=a.ready_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Conn(sock, n)
            enc = Encoder()
            out = bytearray(PREFACE)
            # SETTINGS: ENABLE_PUSH=0, INITIAL_WINDOW_SIZE=2**30.
            out += frame(SETTINGS, 0, 0, b"\x00\x02\x00\x00\x00\x00"
                         + b"\x00\x04" + WINDOW.to_bytes(4, "big"))
            out += frame(WINDOW_UPDATE, 0, 0, (WINDOW - 65535).to_bytes(4, "big"))
            headers = [(":method", "POST"), (":scheme", "http"),
                       (":path", "/grpc.health.v1.Health/Watch"),
                       (":authority", f"{a.host}:{a.port}"),
                       ("content-type", "application/grpc"), ("te", "trailers")]
            for sid in conn.streams:
                out += frame(HEADERS, END_HEADERS, sid, enc.encode(headers))
                out += frame(DATA, END_STREAM, sid, body)
            sock.sendall(out)
            sock.setblocking(False)
            self.conns.append(conn)
        self.waiting_initial = a.watchers
        self.waiting_change = a.watchers

    # -------------------------------------------------------------------- frames

    def on_bytes(self, conn: Conn, data: bytes, now: float) -> None:
        buf = conn.buf
        buf += data
        pos = 0
        end = len(buf)
        while end - pos >= 9:
            length = int.from_bytes(buf[pos:pos + 3], "big")
            if end - pos - 9 < length:
                break
            ftype = buf[pos + 3]
            flags = buf[pos + 4]
            sid = int.from_bytes(buf[pos + 5:pos + 9], "big") & 0x7FFFFFFF
            payload = bytes(buf[pos + 9:pos + 9 + length])
            pos += 9 + length
            self.on_frame(conn, ftype, flags, sid, payload, now)
        if pos:
            del buf[:pos]

    def on_frame(self, conn: Conn, ftype: int, flags: int, sid: int, payload: bytes,
                 now: float) -> None:
        if ftype in (DATA, HEADERS, CONT):
            self.on_stream_frame(conn, ftype, flags, sid, payload, now)
        else:
            self.on_control_frame(conn, ftype, flags, sid, payload)

    def on_stream_frame(self, conn: Conn, ftype: int, flags: int, sid: int, payload: bytes,
                        now: float) -> None:
        """DATA, HEADERS and CONTINUATION."""
        if ftype == DATA:
            if flags & PADDED:
                payload = payload[1:len(payload) - payload[0]]
            stream = conn.streams.get(sid)
            if stream is None:
                raise ClientError(f"DATA on unknown stream {sid}")
            self.on_data(stream, sid, payload, now)
            if flags & END_STREAM:
                raise ClientError(f"stream {sid} ended by DATA END_STREAM")
        elif ftype == HEADERS:
            if flags & PADDED:
                payload = payload[1:len(payload) - payload[0]]
            if flags & PRIO_FLAG:
                payload = payload[5:]
            if flags & END_HEADERS:
                self.on_headers(conn, sid, flags, payload)
            else:
                conn.pending_headers = (sid, flags, bytearray(payload))
        elif ftype == CONT:
            if conn.pending_headers is None or conn.pending_headers[0] != sid:
                raise ClientError("unexpected CONTINUATION")
            conn.pending_headers[2].extend(payload)
            if flags & END_HEADERS:
                psid, pflags, block = conn.pending_headers
                conn.pending_headers = None
                self.on_headers(conn, psid, pflags, bytes(block))

    def on_control_frame(self, conn: Conn, ftype: int, flags: int, sid: int,
                         payload: bytes) -> None:
        """SETTINGS, PING, RST_STREAM, GOAWAY; the rest is ignored."""
        if ftype == SETTINGS:
            if not flags & ACK:
                conn.out += frame(SETTINGS, ACK, 0, b"")
        elif ftype == PING:
            if not flags & ACK:
                conn.out += frame(PING, ACK, 0, payload)
        elif ftype == RST_STREAM:
            raise ClientError(f"stream {sid} reset with error code "
                              f"{int.from_bytes(payload[:4], 'big')} during {self.phase}")
        elif ftype == GOAWAY:
            code = int.from_bytes(payload[4:8], "big")
            raise ClientError(f"GOAWAY error code {code} last stream "
                              f"{int.from_bytes(payload[:4], 'big') & 0x7FFFFFFF} "
                              f"{payload[8:]!r} during {self.phase}")
        # PRIORITY, WINDOW_UPDATE, unknown types: ignored.

    def on_headers(self, conn: Conn, sid: int, flags: int, block: bytes) -> None:
        headers = {bytes(n): bytes(v) for n, v in conn.decoder.decode(block, raw=True)}
        status = headers.get(b":status")
        if status is not None and status != b"200":
            raise ClientError(f"stream {sid}: HTTP status {status.decode()}")
        if b"grpc-status" in headers or flags & END_STREAM:
            raise ClientError(f"stream {sid} ended during {self.phase}: grpc-status "
                              f"{headers.get(b'grpc-status')!r} "
                              f"{headers.get(b'grpc-message', b'')!r}")

    def on_data(self, stream: Stream, sid: int, payload: bytes, now: float) -> None:
        buf = stream.buf + payload if stream.buf else payload
        i = 0
        while len(buf) - i >= 5:
            length = int.from_bytes(buf[i + 1:i + 5], "big")
            if len(buf) - i - 5 < length:
                break
            msg = buf[i + 5:i + 5 + length]
            i += 5 + length
            self.on_message(stream, sid, msg, now)
        stream.buf = buf[i:]

    def on_message(self, stream: Stream, sid: int, msg: bytes, now: float) -> None:
        status = msg[1] if msg[:1] == b"\x08" else 0
        statuses = stream.statuses
        if statuses and statuses[-1] == status:
            self.duplicates += 1
        statuses.append(status)
        if len(statuses) == 1:
            if status != self.initial:
                raise ClientError(f"stream {sid}: first status {status}, expected {self.initial}")
            self.waiting_initial -= 1
        elif status == self.change and self.change not in statuses[:-1]:
            if self.first_change is None:
                self.first_change = now
            self.last_change = now
            self.waiting_change -= 1

    # -------------------------------------------------------------------- loop

    def run_until(self, done: object, deadline: float, what: str) -> None:
        sel = self.selector
        while not done():  # type: ignore[operator]
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                raise ClientError(f"timed out waiting for {what}: {self.waiting_initial} "
                                  f"initial and {self.waiting_change} changes missing")
            for key, _ in sel.select(min(timeout, 1.0)):
                conn: Conn = key.data
                now = time.monotonic()
                while True:
                    try:
                        data = conn.sock.recv(262144)
                    except BlockingIOError:
                        break
                    if not data:
                        raise ClientError(f"server closed a connection during {what}")
                    self.on_bytes(conn, data, now)
                    if len(data) < 262144:
                        break
                if conn.out:
                    conn.sock.setblocking(True)
                    conn.sock.sendall(conn.out)
                    conn.sock.setblocking(False)
                    conn.out.clear()

    def main(self) -> int:
        t0 = time.monotonic()
        self.open()
        self.selector = selectors.DefaultSelector()
        for conn in self.conns:
            self.selector.register(conn.sock, selectors.EVENT_READ, conn)
        self.run_until(lambda: self.waiting_initial == 0, t0 + self.args.ready_timeout,
                       "the initial statuses")
        ready = time.monotonic()
        print(f"ready {ready:.6f} {ready - t0:.6f}", flush=True)
        self.phase = "the change"
        self.run_until(lambda: self.waiting_change == 0, ready + self.args.change_timeout,
                       "the change")
        print(f"done {self.first_change:.6f} {self.last_change:.6f} {self.args.watchers} "
              f"{self.duplicates}", flush=True)
        return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--service", default="bench.watch")
    p.add_argument("--watchers", type=int, required=True)
    p.add_argument("--per-conn", type=int, default=100)
    p.add_argument("--initial", default="SERVING", choices=STATUS)
    p.add_argument("--change", default="NOT_SERVING", choices=STATUS)
    p.add_argument("--ready-timeout", type=float, default=60.0)
    p.add_argument("--change-timeout", type=float, default=120.0)
    args = p.parse_args()
    try:
        return WatchFanout(args).main()
    except (ClientError, OSError) as exc:
        print(f"error {exc}", flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
