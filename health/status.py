"""Serving statuses of the gRPC health protocol, as a Python enum.

This module owns :class:`ServingStatus`, whose members and numbers mirror the
``grpc.health.v1.HealthCheckResponse.ServingStatus`` enum on the wire, and
:func:`parse_status`, which turns user input (names or numbers) into it.
"""

from __future__ import annotations

import enum

from health.errors import InvalidStatusError

__all__ = ["ServingStatus", "parse_status"]


class ServingStatus(enum.IntEnum):
    """Health of a service; the numbers are the protocol's wire values."""

    UNKNOWN = 0
    SERVING = 1
    NOT_SERVING = 2
    # Only meaningful on a Watch stream: the server has no such service.
    SERVICE_UNKNOWN = 3

    def __str__(self) -> str:
        """The name (``print(status)`` shows ``SERVING``, not IntEnum's ``1``)."""
        return self.name


_VALID_NAMES = ", ".join(member.name for member in ServingStatus)


def parse_status(value: str | int) -> ServingStatus:
    """Convert a status name (any case, ``-`` or ``_``) or wire number to a ServingStatus."""
    # bool is an int subclass; True silently meaning SERVING would hide bugs.
    if isinstance(value, bool):
        raise InvalidStatusError(f"not a serving status: {value!r}")
    if isinstance(value, int):
        try:
            return ServingStatus(value)
        except ValueError:
            raise InvalidStatusError(
                f"not a serving status number: {value!r} (expected 0-{len(ServingStatus) - 1})"
            ) from None
    if isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit():
            return parse_status(int(text))
        key = text.upper().replace("-", "_").replace(" ", "_")
        try:
            return ServingStatus[key]
        except KeyError:
            raise InvalidStatusError(
                f"not a serving status name: {value!r} (expected one of {_VALID_NAMES})"
            ) from None
    raise InvalidStatusError(f"not a serving status: {value!r}")
