"""Fuzz health request decoding (HealthCheckRequest, HealthListRequest).

Invariant: a request either parses or fails with ``RpcError`` INTERNAL; nothing else escapes.
"""

from __future__ import annotations

from health.protocol import parse_check_request, parse_list_request
from wire import RpcError, StatusCode


def one_input(data: bytes) -> None:
    """Parse ``data`` as both request types."""
    for parse in (parse_check_request, parse_list_request):
        try:
            parse(data)
        except RpcError as exc:
            if exc.code is not StatusCode.INTERNAL:
                raise AssertionError(f"unexpected status {exc.code}") from None


if __name__ == "__main__":
    from _common import run

    run(one_input, "health_request")
