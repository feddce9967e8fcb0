"""Fuzz ``grpc-timeout`` parsing.

Invariants: only ValueError escapes; accepted values match the grammar (1-8 ASCII digits and one
of ``H M S m u n``); a parsed timeout is non-negative and formats back to at most 8 digits and a
value no shorter than itself.
"""

from __future__ import annotations

import re

from wire.timeout import format_timeout, parse_timeout

_GRAMMAR = re.compile(rb"[0-9]{1,8}[HMSmun]")


def one_input(data: bytes) -> None:
    """Parse ``data`` as a grpc-timeout value and check the invariants."""
    try:
        seconds = parse_timeout(data)
    except ValueError:
        if _GRAMMAR.fullmatch(data):
            raise AssertionError(f"valid timeout {data!r} rejected") from None
        return
    if not _GRAMMAR.fullmatch(data):
        raise AssertionError(f"invalid timeout {data!r} accepted")
    if seconds < 0:
        raise AssertionError("negative timeout")
    text = format_timeout(seconds)
    if not _GRAMMAR.fullmatch(text.encode()):
        raise AssertionError(f"format_timeout produced {text!r}")
    if seconds > 0 and parse_timeout(text) < seconds * (1 - 1e-12):
        raise AssertionError(f"format_timeout({seconds}) = {text} is shorter")


if __name__ == "__main__":
    from _common import run

    run(one_input, "timeout")
