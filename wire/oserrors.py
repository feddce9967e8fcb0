"""Turning a failed connect or spawn into the few words a person wants to read.

This module owns :func:`describe_os_error`, shared by the client channel (connect failures)
and by anything else that opens sockets or processes (health probes). It imports nothing but
the standard library, so either side may use it without loading the other.
"""

from __future__ import annotations

__all__ = ["describe_os_error"]

# How deep a chain of causes / single-member groups is followed; real chains are 2-3 long.
_MAX_DEPTH = 8


def describe_os_error(exc: BaseException) -> str:
    """The most specific text for a failed connect or spawn ("Connection refused")."""
    # trio.open_tcp_stream reports "all attempts failed" and keeps the real errors as causes,
    # possibly inside an exception group; the innermost strerror is what a reader wants.
    best = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
    node: BaseException | None = exc.__cause__
    for _ in range(_MAX_DEPTH):
        if node is None:
            break
        if isinstance(node, OSError) and node.strerror:
            best = node.strerror
        members = getattr(node, "exceptions", None)
        node = members[0] if members else node.__cause__
    return best
