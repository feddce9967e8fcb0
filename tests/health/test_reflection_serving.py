"""Server reflection in the health server: on for ``python -m health serve`` unless turned off.

The wire protocol is tested against grpcurl and grpcio-reflection in tests/interop; here only
which switch turns what on: the TOML key, the sidecar, ``HealthServer(reflection=...)`` and
``HealthService.attach(server, reflection=registry)``.
"""

from __future__ import annotations

import pytest

from health.config import ConfigError, SidecarConfig, parse_config
from health.service import HealthServer, HealthService
from health.sidecar import SidecarProcess
from wire import Server
from wire.reflection import METHOD_PATHS, V1_SERVICE, V1ALPHA_SERVICE, add_reflection

HEALTH = "grpc.health.v1.Health"


def test_toml_turns_reflection_off_and_defaults_on() -> None:
    assert parse_config("").reflection is True
    assert parse_config("[server]\nreflection = false\n").reflection is False
    assert SidecarConfig().arg_defaults()["reflection"] is True


def test_toml_reflection_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError, match="reflection"):
        parse_config('[server]\nreflection = "no"\n')


def test_sidecar_follows_the_setting() -> None:
    on = SidecarProcess(SidecarConfig())
    assert on.server.reflection is not None
    assert on.server.reflection.service_names == (HEALTH, V1_SERVICE, V1ALPHA_SERVICE)
    assert set(METHOD_PATHS.values()) <= set(on.server.server.methods)
    off = SidecarProcess(SidecarConfig(reflection=False))
    assert off.server.reflection is None
    assert not set(METHOD_PATHS.values()) & set(off.server.server.methods)


def test_embedded_health_server_is_off_unless_asked() -> None:
    assert HealthServer().reflection is None
    registry = HealthServer(reflection=True).reflection
    assert registry is not None
    assert registry.file_containing_symbol("grpc.health.v1.HealthCheckRequest") == (
        "grpc/health/v1/health.proto")


def test_attach_describes_health_in_an_application_registry() -> None:
    server = Server()
    registry = add_reflection(server, versions=("v1alpha",))
    HealthService().attach(server, reflection=registry)
    assert registry.service_names == (HEALTH, V1ALPHA_SERVICE)
    assert METHOD_PATHS["v1alpha"] in server.methods
    assert METHOD_PATHS["v1"] not in server.methods
    # Health's file comes from its private pool: the same bytes as the generated module's.
    files = registry.serialized_files("grpc/health/v1/health.proto", set())
    assert files is not None
    assert len(files) == 1
