"""Cross-check a server with a real gRPC client (grpcio, from ``bench/.venv-peers``).

    python bench/grpc_verify.py HOST:PORT SERVICE

Prints ``ok <STATUS>`` after a Check and the first message of a Watch, or ``error <text>`` and
exits 1.
"""

from __future__ import annotations

import sys


def main() -> int:
    target, service = sys.argv[1], sys.argv[2]
    try:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc
    except ImportError as exc:
        print(f"error grpcio or grpcio-health-checking missing: {exc}", flush=True)
        return 1
    names = health_pb2.HealthCheckResponse.ServingStatus
    try:
        with grpc.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            watch = stub.Watch(health_pb2.HealthCheckRequest(service=service), timeout=10)
            first = next(iter(watch))
            watch.cancel()
    except grpc.RpcError as exc:
        print(f"error {exc.code()} {exc.details()}", flush=True)
        return 1
    print(f"ok Check={names.Name(resp.status)} Watch={names.Name(first.status)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
