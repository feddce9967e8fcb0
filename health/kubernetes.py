"""Helpers for Kubernetes' liveness/readiness convention on one health server.

Kubernetes' native gRPC probes (``livenessProbe.grpc.service`` / ``readinessProbe.grpc.service``)
ask Check for a service name each. The convention this module keeps: ``liveness`` answers
whether the process should be restarted, ``readiness`` whether it should get traffic. Draining
for a rollout flips only ``readiness``, so the pod leaves the load balancers without being killed.
"""

from __future__ import annotations

from .status import ServingStatus
from .status_map import HealthState

__all__ = ["LIVENESS", "READINESS", "KubernetesProbes"]

LIVENESS = "liveness"
READINESS = "readiness"

_S = ServingStatus


class KubernetesProbes:
    """Owns the ``liveness`` and ``readiness`` entries of a ``HealthState``.

    Readiness starts NOT_SERVING (no traffic before the application says it is ready);
    liveness starts SERVING.
    """

    def __init__(self, state: HealthState, *, ready: bool = False, live: bool = True,
                 liveness: str = LIVENESS, readiness: str = READINESS) -> None:
        self.state = state
        self.liveness = liveness
        self.readiness = readiness
        self.set_live(live)
        self.set_ready(ready)

    @property
    def ready(self) -> bool:
        """True while readiness is SERVING."""
        return self.state.get(self.readiness) is _S.SERVING

    @property
    def live(self) -> bool:
        """True while liveness is SERVING."""
        return self.state.get(self.liveness) is _S.SERVING

    def set_ready(self, ready: bool) -> None:
        """Accept traffic (SERVING) or not (NOT_SERVING)."""
        self.state.set(self.readiness, _S.SERVING if ready else _S.NOT_SERVING)

    def set_live(self, live: bool) -> None:
        """Report the process healthy, or ask for a restart (NOT_SERVING)."""
        self.state.set(self.liveness, _S.SERVING if live else _S.NOT_SERVING)

    def drain(self) -> None:
        """Stop traffic but stay alive: readiness NOT_SERVING, liveness untouched."""
        self.set_ready(False)
