"""grpcio as the peer of client-streaming and bidi calls, in both directions.

``GrpcioStreamingServer`` runs ``grpc.server`` in this process (its own threads) with one generic
handler and bytes in and out (no serializers), serving the same methods as
``tests.wire.streaming_service`` does on our server, so one test body can run against either:

* ``Count`` (client streaming): answers ``count_response(n, total)`` once the client half-closes.
* ``Echo`` (bidi): sends every request back as it arrives, so answers interleave with requests.
* ``Hang`` (bidi): reads nothing, sends nothing, until the call ends (client cancel or deadline);
  ``ended`` is set from grpcio's termination callback.

The client half (``count_call``, ``echo_call``) is a grpcio channel's blocking API; tests run it
in a worker thread (``trio.to_thread``). Only tests import this module.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from typing import Any

import grpc

SERVICE = "test.Streaming"
COUNT = f"/{SERVICE}/Count"
ECHO = f"/{SERVICE}/Echo"
HANG = f"/{SERVICE}/Hang"

#: A bound for every grpcio call and wait: protects against hangs, never asserted as a speed.
CALL_TIMEOUT = 20.0
#: Hang gives up by itself after this many seconds, so no server thread outlives a test.
HANG_LIMIT = 30.0


def count_response(count: int, total: int) -> bytes:
    """Count's answer: how many messages and how many payload bytes it received."""
    return struct.pack(">QQ", count, total)


def parse_count(data: bytes) -> tuple[int, int]:
    """The ``(count, total bytes)`` of a Count answer."""
    count, total = struct.unpack(">QQ", data)
    return int(count), int(total)


def message(index: int, size: int = 16) -> bytes:
    """The ``index``-th request of a test stream: recognisable, ``size`` bytes long."""
    head = index.to_bytes(4, "big")
    return (head * (size // 4 + 1))[:size]


class GrpcioStreamingServer:
    """A grpcio server on 127.0.0.1 serving Count, Echo and Hang; use as a context manager."""

    def __init__(self) -> None:
        self.port = 0
        self.counts: list[tuple[int, int]] = []
        self.echoed = 0
        self.hang_started = threading.Event()
        self.ended = threading.Event()
        self._server: Any = None

    def __enter__(self) -> GrpcioStreamingServer:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        handlers = {
            "Count": grpc.stream_unary_rpc_method_handler(self._count),
            "Echo": grpc.stream_stream_rpc_method_handler(self._echo),
            "Hang": grpc.stream_stream_rpc_method_handler(self._hang),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._server = server
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(None).wait(CALL_TIMEOUT)

    @property
    def target(self) -> str:
        """``127.0.0.1:PORT`` of the running server."""
        return f"127.0.0.1:{self.port}"

    def _count(self, requests: Iterator[bytes], context: Any) -> bytes:
        count = total = 0
        for request in requests:
            count += 1
            total += len(request)
        self.counts.append((count, total))
        return count_response(count, total)

    def _echo(self, requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        for request in requests:
            self.echoed += 1
            yield request

    def _hang(self, requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        context.add_callback(self.ended.set)
        self.hang_started.set()
        # Returns once the call is over (cancelled, deadline) or after the bound.
        self.ended.wait(HANG_LIMIT)
        return iter(())


def grpcio_channel(target: str) -> grpc.Channel:
    """A plaintext grpcio channel to a loopback target (no proxy from the environment)."""
    return grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)])


def count_call(channel: grpc.Channel, path: str = COUNT) -> Callable[..., Any]:
    """grpcio's client-streaming callable for ``path``, bytes in and out."""
    return channel.stream_unary(path, request_serializer=None, response_deserializer=None)


def echo_call(channel: grpc.Channel, path: str = ECHO) -> Callable[..., Any]:
    """grpcio's bidi callable for ``path``, bytes in and out."""
    return channel.stream_stream(path, request_serializer=None, response_deserializer=None)


class Lockstep:
    """A request iterator for grpcio's bidi call that waits for each answer before the next.

    It proves interleaving: request ``i + 1`` is produced only after the answer to request ``i``
    arrived (``answered`` is called by the reading side), so a server that buffered all
    requests before answering would deadlock (and the call's timeout would fail the test).
    """

    def __init__(self, messages: Iterable[bytes]) -> None:
        self._messages = list(messages)
        self._answered = threading.Semaphore(0)

    def answered(self) -> None:
        """The reader got one answer: let the next request go."""
        self._answered.release()

    def __iter__(self) -> Iterator[bytes]:
        for i, data in enumerate(self._messages):
            if i and not self._answered.acquire(timeout=CALL_TIMEOUT):
                return
            yield data
