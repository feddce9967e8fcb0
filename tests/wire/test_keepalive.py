"""wire.keepalive: grpc-go's keepalive parameters and state machines, on a fake clock."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wire.keepalive import (
    MAX_PING_STRIKES,
    PING_INTERVAL_WITHOUT_STREAMS,
    TOO_MANY_PINGS,
    ClientKeepalive,
    ClientParameters,
    EnforcementPolicy,
    KeepaliveAction,
    PingEnforcer,
    ServerKeepalive,
    ServerParameters,
    is_too_many_pings,
    jittered_age,
)
from wire.status import ErrorCode

PING = KeepaliveAction.PING
DEAD = KeepaliveAction.CLOSE_DEAD
IDLE = KeepaliveAction.GOAWAY_IDLE
AGE = KeepaliveAction.GOAWAY_AGE
GRACE = KeepaliveAction.CLOSE_AGE_GRACE


def _half() -> float:
    return 0.5


# ---------------------------------------------------------------------- parameters


def test_defaults_are_grpc_gos_except_the_lenient_enforcement() -> None:
    client = ClientParameters()
    assert (client.time, client.timeout, client.permit_without_stream) == (math.inf, 20, False)
    assert not client.enabled
    server = ServerParameters()
    assert (server.time, server.timeout) == (7200, 20)
    assert server.max_connection_idle == server.max_connection_age == math.inf
    assert server.max_connection_age_grace == math.inf
    policy = EnforcementPolicy()
    # Today's server: 10 s, pings without calls allowed, more than 2 strikes end it.
    assert (policy.min_time, policy.permit_without_stream, policy.max_ping_strikes) == (
        10, True, MAX_PING_STRIKES)
    assert MAX_PING_STRIKES == 2
    assert PING_INTERVAL_WITHOUT_STREAMS == 7200


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ClientParameters(time=0), "time must be > 0"),
        (lambda: ClientParameters(time=-1), "time must be > 0"),
        (lambda: ClientParameters(time=float("nan")), "time must be a number"),
        (lambda: ClientParameters(time=True), "time must be a number"),
        (lambda: ClientParameters(timeout=math.inf), "timeout must be finite"),
        (lambda: ClientParameters(timeout=0), "timeout must be > 0"),
        (lambda: ServerParameters(max_connection_idle=0), "max_connection_idle must be > 0"),
        (lambda: ServerParameters(max_connection_age=-5), "max_connection_age must be > 0"),
        (lambda: ServerParameters(max_connection_age_grace=-1),
         "max_connection_age_grace must be >= 0"),
        (lambda: ServerParameters(time=0), "time must be > 0"),
        (lambda: ServerParameters(timeout=math.inf), "timeout must be finite"),
        (lambda: EnforcementPolicy(min_time=-1), "min_time must be >= 0"),
        (lambda: EnforcementPolicy(min_time=math.inf), "min_time must be finite"),
        (lambda: EnforcementPolicy(max_ping_strikes=-1), "max_ping_strikes"),
        (lambda: EnforcementPolicy(max_ping_strikes=1.5), "max_ping_strikes"),  # type: ignore[arg-type]
    ],
)
def test_bad_parameters_are_refused(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()  # type: ignore[operator]


def test_grace_zero_and_min_time_zero_are_allowed() -> None:
    assert ServerParameters(max_connection_age_grace=0).max_connection_age_grace == 0
    assert EnforcementPolicy(min_time=0).min_time == 0


def test_too_many_pings_doubles_the_client_time() -> None:
    params = ClientParameters(time=10, timeout=3, permit_without_stream=True)
    backed = params.backed_off()
    assert (backed.time, backed.timeout, backed.permit_without_stream) == (20, 3, True)
    assert backed.backed_off().time == 40
    assert ClientParameters().backed_off().time == math.inf


def test_is_too_many_pings() -> None:
    assert is_too_many_pings(ErrorCode.ENHANCE_YOUR_CALM, TOO_MANY_PINGS)
    assert not is_too_many_pings(ErrorCode.ENHANCE_YOUR_CALM, b"too many connections")
    assert not is_too_many_pings(ErrorCode.NO_ERROR, TOO_MANY_PINGS)


@pytest.mark.parametrize(("draw", "expected"), [(0.0, 90.0), (0.5, 100.0), (0.75, 105.0)])
def test_age_jitter_is_plus_minus_ten_percent(draw: float, expected: float) -> None:
    assert jittered_age(100, lambda: draw) == pytest.approx(expected)


def test_age_jitter_of_infinity_is_infinity() -> None:
    assert jittered_age(math.inf, lambda: 0.0) == math.inf


@given(st.floats(min_value=0.001, max_value=1e6), st.floats(min_value=0, max_value=0.999999))
def test_age_jitter_stays_within_ten_percent(age: float, draw: float) -> None:
    assert 0.9 * age - 1e-9 <= jittered_age(age, lambda: draw) <= 1.1 * age + 1e-9


def test_default_jitter_is_random() -> None:
    ages = {jittered_age(1000) for _ in range(20)}
    assert len(ages) > 1
    assert all(900 <= age <= 1100 for age in ages)


# ---------------------------------------------------------------------- server keepalive


def test_server_pings_a_quiet_connection_and_closes_it_unanswered() -> None:
    ka = ServerKeepalive(ServerParameters(time=10, timeout=5), now=100)
    assert ka.next_due() == 110
    assert ka.poll(109.9) == []
    assert ka.poll(110) == [PING]
    # The PING is out: nothing more until its timeout.
    assert ka.next_due() == 115
    assert ka.poll(114) == []
    assert ka.poll(115) == [DEAD]
    assert ka.done
    assert ka.next_due() == math.inf
    assert ka.poll(1000) == []


def test_server_ping_answered_starts_a_new_interval_from_the_read() -> None:
    ka = ServerKeepalive(ServerParameters(time=10, timeout=5), now=0)
    assert ka.poll(10) == [PING]
    ka.data_received(11)  # the ACK
    assert ka.next_due() == 21
    assert ka.poll(15) == []
    assert ka.poll(21) == [PING]
    assert not ka.done


def test_server_reads_postpone_the_ping() -> None:
    ka = ServerKeepalive(ServerParameters(time=10, timeout=5), now=0)
    for t in range(1, 50, 3):
        ka.data_received(t)
        assert ka.poll(t) == []
    assert ka.next_due() == 59
    # A read stamped earlier than the last one (clock jitter) never moves it back.
    ka.data_received(20)
    assert ka.next_due() == 59


def test_server_pings_with_streams_open_too() -> None:
    ka = ServerKeepalive(ServerParameters(time=10, timeout=5), now=0)
    ka.streams_changed(3, now=1)
    assert ka.poll(10) == [PING]


def test_idle_counts_from_the_start_without_streams() -> None:
    ka = ServerKeepalive(ServerParameters(max_connection_idle=30), now=0)
    assert ka.idle
    assert ka.next_due() == 30
    # Bytes without streams do not make a connection busy (grpc-go: no active streams).
    ka.data_received(29)
    assert ka.poll(30) == [IDLE]
    # Once sent, never again.
    assert ka.next_due() == 29 + 7200
    assert ka.poll(100) == []


def test_idle_counts_from_the_last_stream_ending() -> None:
    ka = ServerKeepalive(ServerParameters(max_connection_idle=30), now=0)
    ka.streams_changed(1, now=10)
    assert not ka.idle
    assert ka.poll(50) == []
    ka.streams_changed(2, now=55)
    ka.streams_changed(0, now=60)
    assert ka.next_due() == 90
    assert ka.poll(89) == []
    assert ka.poll(90) == [IDLE]


def test_an_open_watch_stream_is_never_idle() -> None:
    ka = ServerKeepalive(ServerParameters(max_connection_idle=30, time=math.inf), now=0)
    ka.streams_changed(1, now=0)
    assert ka.next_due() == math.inf
    assert ka.poll(10_000) == []


def test_age_goaway_then_close_after_the_grace() -> None:
    ka = ServerKeepalive(ServerParameters(max_connection_age=100, max_connection_age_grace=20,
                                          time=math.inf), now=0, rng=_half)
    assert ka.age_deadline == 100
    assert ka.next_due() == 100
    assert ka.poll(99) == []
    assert ka.poll(100) == [AGE]
    assert ka.next_due() == 120
    assert ka.poll(119) == []
    assert ka.poll(120) == [GRACE]
    assert ka.done
    assert ka.next_due() == math.inf


def test_age_jitter_moves_the_deadline() -> None:
    early = ServerKeepalive(ServerParameters(max_connection_age=100), now=5, rng=lambda: 0.0)
    late = ServerKeepalive(ServerParameters(max_connection_age=100), now=5, rng=lambda: 0.999)
    assert early.age_deadline == pytest.approx(95)
    assert late.age_deadline == pytest.approx(114.98)


def test_age_with_zero_grace_closes_at_once() -> None:
    ka = ServerKeepalive(ServerParameters(max_connection_age=10, max_connection_age_grace=0),
                         now=0, rng=_half)
    assert ka.poll(10) == [AGE, GRACE]


def test_infinite_grace_never_closes() -> None:
    ka = ServerKeepalive(ServerParameters(max_connection_age=10, time=math.inf), now=0, rng=_half)
    assert ka.poll(10) == [AGE]
    assert ka.next_due() == math.inf


def test_age_goaway_replaces_the_idle_goaway() -> None:
    ka = ServerKeepalive(ServerParameters(max_connection_age=10, max_connection_idle=10,
                                          max_connection_age_grace=5), now=0, rng=_half)
    assert ka.poll(10) == [AGE]
    assert ka.poll(15) == [GRACE]


def test_pings_continue_during_the_grace_and_can_find_the_peer_dead() -> None:
    ka = ServerKeepalive(ServerParameters(max_connection_age=10, max_connection_age_grace=100,
                                          time=20, timeout=5), now=0, rng=_half)
    assert ka.poll(10) == [AGE]
    assert ka.poll(20) == [PING]
    assert ka.poll(25) == [DEAD]
    assert ka.done


def test_several_actions_due_together_come_in_order() -> None:
    ka = ServerKeepalive(ServerParameters(max_connection_idle=5, time=5, timeout=1), now=0)
    assert ka.poll(5) == [IDLE, PING]
    assert ka.poll(6) == [DEAD]


_server_events = st.lists(
    st.tuples(st.sampled_from(["read", "streams", "poll", "due"]),
              st.floats(min_value=0, max_value=50), st.integers(min_value=0, max_value=3)),
    max_size=60)


@settings(max_examples=300, deadline=None)
@given(_server_events, st.floats(min_value=0, max_value=0.999))
def test_server_machine_invariants(events: list[tuple[str, float, int]], draw: float) -> None:
    """Whatever happens: poll before next_due does nothing, poll at it does something, a PING
    is never sent while one is in flight, and a connection is found dead only when nothing
    was read for the whole timeout after a PING."""
    params = ServerParameters(max_connection_idle=7, max_connection_age=40,
                              max_connection_age_grace=6, time=5, timeout=2)
    now = 0.0
    ka = ServerKeepalive(params, now=now, rng=lambda: draw)
    ping_at: float | None = None
    last_read = 0.0
    actions_seen: list[KeepaliveAction] = []
    for kind, step, streams in events:
        now += step / 10
        due = ka.next_due()
        if kind == "read":
            if due > now:
                ka.data_received(now)
                last_read, ping_at = now, None
            continue
        if kind == "streams":
            if due > now:
                ka.streams_changed(streams, now)
            continue
        if kind == "due":
            if math.isinf(due):
                continue
            now = max(now, due)
        got = ka.poll(now)
        if now < due:
            assert got == []
        elif not ka.done or got:
            assert got, (now, due)
        for action in got:
            actions_seen.append(action)
            if action is PING:
                assert ping_at is None
                ping_at = now
            elif action is DEAD:
                assert ping_at is not None
                assert now >= ping_at + params.timeout
                assert last_read <= ping_at
    assert actions_seen.count(AGE) <= 1
    assert actions_seen.count(IDLE) <= 1
    if GRACE in actions_seen:
        assert actions_seen.index(AGE) < actions_seen.index(GRACE)


# ---------------------------------------------------------------------- client keepalive


def test_client_keepalive_is_off_by_default() -> None:
    ka = ClientKeepalive(ClientParameters(), now=0)
    ka.streams_changed(1, now=0)
    assert ka.next_due() == math.inf
    assert ka.poll(1e9) == []


def test_client_pings_with_a_call_open_and_finds_the_server_dead() -> None:
    ka = ClientKeepalive(ClientParameters(time=10, timeout=5), now=0)
    ka.streams_changed(1, now=0)
    assert ka.next_due() == 10
    assert ka.poll(9) == []
    assert ka.poll(10) == [PING]
    assert ka.next_due() == 15
    assert ka.poll(15) == [DEAD]
    assert ka.done
    assert ka.poll(16) == []
    assert ka.next_due() == math.inf


def test_client_ack_resets_the_interval() -> None:
    ka = ClientKeepalive(ClientParameters(time=10, timeout=5), now=0)
    ka.streams_changed(1, now=0)
    assert ka.poll(10) == [PING]
    ka.data_received(10.2)
    assert ka.next_due() == pytest.approx(20.2)
    assert ka.poll(20.2) == [PING]


def test_client_rests_without_calls_then_pings_at_once_on_the_next_call() -> None:
    ka = ClientKeepalive(ClientParameters(time=10, timeout=5), now=0)
    assert ka.poll(10) == []
    assert ka.dormant
    assert ka.next_due() == math.inf
    assert ka.poll(500) == []
    ka.streams_changed(1, now=600)
    assert not ka.dormant
    assert ka.next_due() == 600
    assert ka.poll(600) == [PING]
    assert ka.poll(605) == [DEAD]


def test_client_forgets_a_ping_in_flight_when_it_goes_dormant() -> None:
    ka = ClientKeepalive(ClientParameters(time=10, timeout=5), now=0)
    ka.streams_changed(1, now=0)
    assert ka.poll(10) == [PING]
    ka.streams_changed(0, now=11)
    # The timeout comes with no call open: dormant, not dead.
    assert ka.poll(15) == []
    assert ka.dormant
    assert not ka.done
    ka.streams_changed(1, now=30)
    assert ka.poll(30) == [PING]
    ka.data_received(31)
    assert ka.poll(35) == []
    assert ka.next_due() == 41


def test_client_permit_without_stream_pings_an_unused_connection() -> None:
    ka = ClientKeepalive(ClientParameters(time=10, timeout=5, permit_without_stream=True), now=0)
    assert ka.poll(10) == [PING]
    assert ka.poll(15) == [DEAD]


def test_a_call_starting_while_awake_does_not_ping_early() -> None:
    ka = ClientKeepalive(ClientParameters(time=10, timeout=5), now=0)
    ka.streams_changed(1, now=2)
    ka.streams_changed(2, now=3)
    assert ka.next_due() == 10


# ---------------------------------------------------------------------- enforcement


def test_the_first_ping_is_never_a_strike() -> None:
    enforcer = PingEnforcer(EnforcementPolicy(min_time=10, permit_without_stream=False))
    assert not enforcer.ping_received(0, open_streams=0)
    assert enforcer.strikes == 0


def test_pings_at_min_time_are_fine_forever() -> None:
    enforcer = PingEnforcer(EnforcementPolicy(min_time=10))
    for n in range(100):
        assert not enforcer.ping_received(n * 10.0, open_streams=1)
    assert enforcer.strikes == 0


def test_too_frequent_pings_end_the_connection_after_the_strikes() -> None:
    enforcer = PingEnforcer(EnforcementPolicy(min_time=10))
    results = [enforcer.ping_received(t, open_streams=1) for t in (0, 1, 2, 3)]
    # Strikes 1 and 2 are tolerated; the third is one too many (grpc-go: strikes > 2).
    assert results == [False, False, False, True]
    assert enforcer.strikes == 3


def test_strikes_do_not_fade_with_time_alone() -> None:
    enforcer = PingEnforcer(EnforcementPolicy(min_time=10))
    enforcer.ping_received(0, 1)
    enforcer.ping_received(1, 1)
    enforcer.ping_received(2, 1)
    assert not enforcer.ping_received(100, 1)  # not a strike, but the two remain
    assert enforcer.strikes == 2
    assert enforcer.ping_received(101, 1)


def test_our_output_forgives_the_next_ping_and_clears_strikes() -> None:
    enforcer = PingEnforcer(EnforcementPolicy(min_time=10))
    enforcer.ping_received(0, 1)
    enforcer.ping_received(1, 1)
    enforcer.ping_received(2, 1)
    assert enforcer.strikes == 2
    enforcer.data_sent()
    assert not enforcer.ping_received(2.5, 1)
    assert enforcer.strikes == 0
    # Only the one PING after our output is forgiven.
    assert not enforcer.ping_received(3, 1)
    assert enforcer.strikes == 1


def test_bdp_style_pings_after_every_response_are_never_strikes() -> None:
    enforcer = PingEnforcer(EnforcementPolicy(min_time=10))
    for n in range(50):
        enforcer.data_sent()
        assert not enforcer.ping_received(n * 0.01, open_streams=1)


def test_without_permission_pings_with_no_stream_are_judged_against_two_hours() -> None:
    enforcer = PingEnforcer(EnforcementPolicy(min_time=10, permit_without_stream=False))
    assert not enforcer.ping_received(0, open_streams=0)
    assert not enforcer.ping_received(60, open_streams=0)  # strike 1
    assert enforcer.strikes == 1
    assert not enforcer.ping_received(60 + 7200, open_streams=0)
    assert enforcer.strikes == 1
    assert not enforcer.ping_received(7300, open_streams=0)  # strike 2
    assert enforcer.ping_received(7400, open_streams=0)  # strike 3


def test_with_permission_pings_with_no_stream_follow_min_time() -> None:
    enforcer = PingEnforcer(EnforcementPolicy(min_time=10, permit_without_stream=True))
    for n in range(10):
        assert not enforcer.ping_received(n * 10.0, open_streams=0)
    assert enforcer.strikes == 0


def test_a_ping_exactly_at_min_time_is_not_a_strike_and_just_under_is() -> None:
    enforcer = PingEnforcer(EnforcementPolicy(min_time=1))
    enforcer.ping_received(0, 1)
    enforcer.ping_received(1, 1)
    assert enforcer.strikes == 0
    enforcer.ping_received(1.999, 1)
    assert enforcer.strikes == 1


def test_zero_strikes_allowed_ends_at_the_first() -> None:
    enforcer = PingEnforcer(EnforcementPolicy(min_time=10, max_ping_strikes=0))
    assert not enforcer.ping_received(0, 1)
    assert enforcer.ping_received(1, 1)
