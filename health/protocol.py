"""The ``grpc.health.v1.Health`` protocol's names and messages, for both sides.

This module owns the method paths (defined here once), the encoding of requests and responses
and their parsing with the error gRPC wants for bad bytes: a protobuf ``DecodeError`` becomes
``RpcError(INTERNAL)`` (the spec's answer to an unparsable message) for the server's requests
and the client's responses alike. It does no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from wire.errors import RpcError
from wire.status import StatusCode

from ._health_pb2 import (
    HealthCheckRequest,
    HealthCheckResponse,
    HealthListRequest,
    HealthListResponse,
)
from .status import ServingStatus

__all__ = [
    "CHECK_PATH",
    "LIST_PATH",
    "SERVICE_NAME",
    "WATCH_PATH",
    "check_request",
    "check_response",
    "list_request",
    "list_response",
    "parse_check_request",
    "parse_check_response",
    "parse_list_request",
    "parse_list_response",
    "parse_message",
]

SERVICE_NAME = "grpc.health.v1.Health"
CHECK_PATH = f"/{SERVICE_NAME}/Check"
LIST_PATH = f"/{SERVICE_NAME}/List"
WATCH_PATH = f"/{SERVICE_NAME}/Watch"

M = TypeVar("M", bound=Message)

# The four possible Check/Watch answers, serialized once: a Check costs a dict lookup.
_RESPONSES: dict[ServingStatus, bytes] = {
    status: HealthCheckResponse(status=int(status)).SerializeToString()
    for status in ServingStatus
}


def parse_message(cls: type[M], data: bytes) -> M:
    """Parse ``data`` as ``cls``; unparsable bytes raise ``RpcError(INTERNAL)``."""
    message = cls()
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise RpcError(StatusCode.INTERNAL, f"cannot parse {cls.__name__}: {exc}") from None
    return message


def _to_status(number: int) -> ServingStatus:
    try:
        return ServingStatus(number)
    except ValueError:
        # proto3 enums are open: a newer server may send a value we do not know.
        return ServingStatus.UNKNOWN


def check_request(service: str) -> bytes:
    """The Check / Watch request for ``service``."""
    return HealthCheckRequest(service=service).SerializeToString()


def parse_check_request(data: bytes) -> str:
    """The service name a Check / Watch request asks about."""
    return parse_message(HealthCheckRequest, data).service


def check_response(status: ServingStatus) -> bytes:
    """The Check / Watch response carrying ``status`` (precomputed)."""
    return _RESPONSES[status]


def parse_check_response(data: bytes) -> ServingStatus:
    """The status a Check / Watch response carries (UNKNOWN for a number we do not know)."""
    return _to_status(int(parse_message(HealthCheckResponse, data).status))


def list_request() -> bytes:
    """The (empty) List request."""
    return HealthListRequest().SerializeToString()


def parse_list_request(data: bytes) -> None:
    """Check that ``data`` is a List request (it has no fields)."""
    parse_message(HealthListRequest, data)


def list_response(statuses: Mapping[str, ServingStatus]) -> bytes:
    """The List response for ``statuses``."""
    resp = HealthListResponse()
    for name, status in statuses.items():
        resp.statuses[name].status = int(status)  # type: ignore[assignment]
    return resp.SerializeToString()


def parse_list_response(data: bytes) -> dict[str, ServingStatus]:
    """Every service and status a List response carries."""
    resp = parse_message(HealthListResponse, data)
    return {name: _to_status(int(entry.status)) for name, entry in resp.statuses.items()}
