"""The bare Trio + h2 floor: the least a Python gRPC server on h2 does for a unary Check.

    python bench/h2_floor.py --port 0     # prints "listening PORT", serves until killed

One task per connection: read, ``H2Connection.receive_data`` (h2's defaults for a server), and
for each request that ends, HEADERS + the SERVING message + ``grpc-status: 0`` trailers, then
one write. No request validation, no message parsing, no deadlines, no flow-control queueing:
only what h2 itself costs, to which bench/run.py compares our h2 engine (issue 10: within 1.3x).
"""

from __future__ import annotations

import argparse
import sys

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import trio

#: HealthCheckResponse{status: SERVING}, gRPC-framed.
SERVING = b"\x00\x00\x00\x00\x02\x08\x01"
HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc")]
TRAILERS = [(b"grpc-status", b"0")]


async def serve_connection(stream: trio.SocketStream) -> None:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False,
                                                                header_encoding=None))
    conn.initiate_connection()
    await stream.send_all(conn.data_to_send())
    while True:
        try:
            data = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            return
        if not data:
            return
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            await stream.send_all(conn.data_to_send())
            return
        for ev in events:
            if isinstance(ev, h2.events.DataReceived):
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                conn.send_headers(ev.stream_id, HEADERS)
                conn.send_data(ev.stream_id, SERVING)
                conn.send_headers(ev.stream_id, TRAILERS, end_stream=True)
        out = conn.data_to_send()
        if out:
            try:
                await stream.send_all(out)
            except trio.BrokenResourceError:
                return


async def main(port: int) -> None:
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    print(f"listening {listeners[0].socket.getsockname()[1]} bare Trio + h2 (floor)",
          flush=True)
    await trio.serve_listeners(serve_connection, listeners)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    trio.run(main, p.parse_args().port)
    sys.exit(0)
