"""wire.sockopts: TCP keepalive settings, their validation, and what lands on a real socket."""

from __future__ import annotations

import socket

import pytest

from wire.sockopts import TcpKeepalive, apply_tcp_keepalive, tcp_keepalive_options


class _Recorder:
    """A socket stand-in that records every option set on it."""

    def __init__(self) -> None:
        self.options: list[tuple[int, int, int]] = []

    def setsockopt(self, level: int, optname: int, value: int, /) -> None:
        self.options.append((level, optname, value))


def test_defaults_find_a_dead_peer_within_30_seconds() -> None:
    ka = TcpKeepalive()
    assert (ka.enabled, ka.idle, ka.interval, ka.count, ka.user_timeout) == (True, 10, 5, 3, 20)
    assert ka.detection_time is not None
    assert ka.detection_time <= 30


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="no TCP_USER_TIMEOUT here")
def test_detection_time_follows_linux_user_timeout_rule() -> None:
    # Probes at 10 and 15 s; the timer at 20 s is past the user timeout with a probe out.
    assert TcpKeepalive().detection_time == 20
    # Linux ignores TCP_KEEPCNT when a user timeout is set: 60 s, not 10 + 3 * 5.
    assert TcpKeepalive(user_timeout=60).detection_time == 60
    # A user timeout below idle still needs one probe out: dropped one interval after it.
    assert TcpKeepalive(idle=10, interval=5, user_timeout=3).detection_time == 15
    assert TcpKeepalive(user_timeout=22).detection_time == 25


def test_detection_time_without_user_timeout_counts_probes() -> None:
    assert TcpKeepalive(user_timeout=0).detection_time == 25
    assert TcpKeepalive(idle=1, interval=2, count=4, user_timeout=0).detection_time == 9


def test_off_changes_nothing() -> None:
    off = TcpKeepalive.off()
    assert not off.enabled
    assert off.detection_time is None
    recorder = _Recorder()
    assert apply_tcp_keepalive(recorder, off) == []
    assert recorder.options == []


@pytest.mark.parametrize(
    ("field", "value"),
    [("idle", 0), ("idle", -1), ("idle", float("nan")), ("idle", float("inf")), ("idle", 40000),
     ("interval", 0.5), ("interval", True), ("count", 0), ("count", 128), ("count", 2.5),
     ("count", True), ("user_timeout", -0.1), ("user_timeout", float("inf")),
     ("user_timeout", 3e6)],
)
def test_bad_values_are_refused_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        TcpKeepalive(**{field: value})  # type: ignore[arg-type]


def test_fractions_round_up_and_user_timeout_is_in_milliseconds() -> None:
    triples, _missing = tcp_keepalive_options(
        TcpKeepalive(idle=1.2, interval=2.01, count=7, user_timeout=0.0015))
    by_name = {name: value for _level, name, value in triples}
    assert by_name[socket.SO_KEEPALIVE] == 1
    if hasattr(socket, "TCP_KEEPIDLE"):
        assert by_name[socket.TCP_KEEPIDLE] == 2
        assert by_name[socket.TCP_KEEPINTVL] == 3
        assert by_name[socket.TCP_KEEPCNT] == 7
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        assert by_name[socket.TCP_USER_TIMEOUT] == 2


def test_zero_user_timeout_is_not_set() -> None:
    triples, _missing = tcp_keepalive_options(TcpKeepalive(user_timeout=0))
    assert getattr(socket, "TCP_USER_TIMEOUT", None) not in {name for _l, name, _v in triples}


def test_missing_platform_options_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(socket, "TCP_KEEPIDLE", raising=False)
    monkeypatch.delattr(socket, "TCP_USER_TIMEOUT", raising=False)
    recorder = _Recorder()
    missing = apply_tcp_keepalive(recorder, TcpKeepalive())
    assert missing[:1] == ["TCP_KEEPIDLE"]
    assert "TCP_USER_TIMEOUT" in missing
    assert (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1) in recorder.options
    assert len(recorder.options) == 1 + 3 - len([m for m in missing if m != "TCP_USER_TIMEOUT"])


@pytest.mark.skipif(not hasattr(socket, "TCP_KEEPIDLE"), reason="no TCP_KEEPIDLE here")
def test_options_land_on_a_real_socket() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        assert apply_tcp_keepalive(sock, TcpKeepalive(idle=7, interval=3, count=4,
                                                      user_timeout=12.5)) == []
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 7
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 3
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 4
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 12500


def test_a_closed_socket_raises_oserror() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.close()
    with pytest.raises(OSError, match="Bad file descriptor"):
        apply_tcp_keepalive(sock, TcpKeepalive())
