"""Pins the h2 private API that ``wire.client_connection._H2ClientConnection`` relies on.

The override is checked against the h2 versions in ``H2_VERSIONS_CHECKED``; an h2 outside that
range must be re-checked (and the range widened) before the client is trusted on it.
"""

from __future__ import annotations

import inspect

import h2
import h2.connection
from hyperframe.frame import GoAwayFrame, PingFrame

from wire.client_connection import H2_VERSIONS_CHECKED, ClientConnection


def _version() -> tuple[int, int]:
    major, minor = h2.__version__.split(".")[:2]
    return int(major), int(minor)


def test_installed_h2_is_in_the_checked_range() -> None:
    low, high = H2_VERSIONS_CHECKED
    assert low <= _version() <= high, (
        f"h2 {h2.__version__} is outside the range {low}..{high} that "
        "wire.client_connection._H2ClientConnection was checked against: re-read h2's "
        "H2Connection._receive_frame and _receive_goaway_frame, then widen the range")


def test_overridden_private_methods_still_exist_with_their_signatures() -> None:
    base = h2.connection.H2Connection
    members = vars(base)  # the private names, looked up the way a pin should: by name
    for name in ("_receive_frame", "_receive_goaway_frame"):
        assert name in members, f"h2 {h2.__version__} no longer has H2Connection.{name}"
        assert list(inspect.signature(members[name]).parameters) == ["self", "frame"]
    # receive_data is the method whose per-frame half we call: it must still go through
    # _receive_frame (one frame at a time) for our wrapping to mean the same thing.
    assert "_receive_frame" in inspect.getsource(base.receive_data)


def test_goaway_override_keeps_streams_and_ping_still_answered() -> None:
    conn = ClientConnection()
    settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    goaway = GoAwayFrame(0, last_stream_id=1, error_code=0).serialize()
    events = conn.receive_data(settings + goaway)
    assert conn.going_away
    assert not conn.closed
    assert [type(e).__name__ for e in events] == ["ConnectionReady", "ConnectionTerminated"]
    conn.data_to_send()
    conn.receive_data(PingFrame(0, opaque_data=b"12345678").serialize())
    # h2 did not move to CLOSED: the PING is still acknowledged.
    assert b"12345678" in conn.data_to_send()
