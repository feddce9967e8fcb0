"""The liveness/readiness helpers."""

from __future__ import annotations

from health import HealthState, ServingStatus
from health.kubernetes import LIVENESS, READINESS, KubernetesProbes


def test_defaults_and_drain() -> None:
    state = HealthState()
    probes = KubernetesProbes(state)
    assert state.get(LIVENESS) is ServingStatus.SERVING
    assert state.get(READINESS) is ServingStatus.NOT_SERVING
    assert probes.live
    assert not probes.ready
    probes.set_ready(True)
    assert state.get(READINESS) is ServingStatus.SERVING
    assert probes.ready
    probes.drain()
    assert state.get(READINESS) is ServingStatus.NOT_SERVING
    assert state.get(LIVENESS) is ServingStatus.SERVING
    probes.set_live(False)
    assert state.get(LIVENESS) is ServingStatus.NOT_SERVING
    assert not probes.live


def test_custom_names() -> None:
    state = HealthState()
    KubernetesProbes(state, ready=True, liveness="app.live", readiness="app.ready")
    assert state.snapshot() == {"": ServingStatus.SERVING, "app.live": ServingStatus.SERVING,
                                "app.ready": ServingStatus.SERVING}
