"""Names health test modules share: the serving statuses by their spec names and the
example configuration shipped in ``examples/``."""

from __future__ import annotations

from pathlib import Path

from health.status import ServingStatus

SERVING = ServingStatus.SERVING
NOT_SERVING = ServingStatus.NOT_SERVING
UNKNOWN = ServingStatus.UNKNOWN
SERVICE_UNKNOWN = ServingStatus.SERVICE_UNKNOWN

#: examples/health.toml, which the config and sidecar tests load as it is.
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "health.toml"
