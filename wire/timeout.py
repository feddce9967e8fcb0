"""The ``grpc-timeout`` header: parsing and formatting.

PROTOCOL-HTTP2.md: ``Timeout -> "grpc-timeout" TimeoutValue TimeoutUnit``, where TimeoutValue is
at most 8 ASCII digits and TimeoutUnit one of ``H M S m u n`` (hours, minutes, seconds,
milliseconds, microseconds, nanoseconds).
"""

from __future__ import annotations

__all__ = ["MAX_TIMEOUT_DIGITS", "format_timeout", "parse_timeout"]

MAX_TIMEOUT_DIGITS = 8

# Units in nanoseconds, finest first, for formatting with exact integer arithmetic. Parsing uses
# them too: a float scale such as 1e-6 can land one ulp low (100000 * 1e-6 == 0.09999999999999999,
# which would make parse(format(0.1)) earlier than 0.1).
_UNITS_NS = (("n", 1), ("u", 1_000), ("m", 1_000_000), ("S", 10**9), ("M", 60 * 10**9),
             ("H", 3600 * 10**9))
_UNIT_NS = dict(_UNITS_NS)
_MAX_VALUE = 10**MAX_TIMEOUT_DIGITS - 1


def parse_timeout(value: str | bytes) -> float:
    """Parse a ``grpc-timeout`` value into seconds; raise ValueError if it is malformed."""
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError("grpc-timeout is not ASCII") from None
    digits, unit = value[:-1], value[-1:]
    if not (1 <= len(digits) <= MAX_TIMEOUT_DIGITS):
        raise ValueError(f"grpc-timeout {value!r}: value must be 1 to 8 digits")
    # str.isdigit accepts non-ASCII digits; the grammar allows only 0-9.
    if not (digits.isascii() and digits.isdigit()):
        raise ValueError(f"grpc-timeout {value!r}: value must be ASCII digits")
    size = _UNIT_NS.get(unit)
    if size is None:
        raise ValueError(f"grpc-timeout {value!r}: unit must be one of H M S m u n")
    return int(digits) * size / 10**9  # int / int: the exact value, rounded once


def format_timeout(seconds: float) -> str:
    """Format a timeout for ``grpc-timeout``: the finest unit that fits in 8 digits.

    The value is rounded up, so the peer's deadline is never earlier than ours.
    """
    if seconds <= 0:
        return "0n"
    ns = int(-(-seconds * 1e9 // 1))  # ceil without float surprises at integer boundaries
    for unit, size in _UNITS_NS:
        value = -(-ns // size)
        if value <= _MAX_VALUE:
            return f"{value}{unit}"
    return f"{_MAX_VALUE}H"
