"""``wire.oserrors.describe_os_error``: the most specific words for a failed connect or spawn."""

from __future__ import annotations

import errno
import os
import sys

from wire.oserrors import describe_os_error

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup


def _os_error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def test_an_os_error_speaks_for_itself() -> None:
    assert describe_os_error(_os_error(errno.ECONNREFUSED)) == os.strerror(errno.ECONNREFUSED)
    assert describe_os_error(OSError("no strerror here")) == "no strerror here"
    assert describe_os_error(RuntimeError()) == "RuntimeError"


def test_the_innermost_cause_wins_through_groups() -> None:
    # What trio.open_tcp_stream raises: "all attempts failed", the real errors as causes,
    # possibly inside a (single-member) exception group.
    inner = _os_error(errno.EHOSTUNREACH)
    group = BaseExceptionGroup("attempts", [inner])
    outer = OSError("all attempts to connect to h:1 failed")
    outer.__cause__ = group
    assert describe_os_error(outer) == os.strerror(errno.EHOSTUNREACH)


def test_a_long_chain_is_followed_only_so_far() -> None:
    # The walk is bounded: past eight links the deeper strerror is not reached.
    chain: BaseException = _os_error(errno.ETIMEDOUT)
    for i in range(10):
        link = RuntimeError(f"link {i}")
        link.__cause__ = chain
        chain = link
    assert describe_os_error(chain) == "link 9"


def test_wire_client_re_exports_the_one_definition() -> None:
    import wire.client

    assert wire.client.describe_os_error is describe_os_error
