"""Building and running what a config describes: probes, CA files, checks and metrics.

The checks run against loopback servers (a Trio TCP listener, a child Python process and our
own health server).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio
import trio.testing

from health import HealthServer, HealthState, ServingStatus
from health.config import ConfigError, TlsConfig, load_config, parse_config
from health.sidecar import (
    SidecarProcess,
    StartupError,
    build_check,
    build_runner,
    run_sidecar,
)
from wire import ServerConfig

from .loopback import tcp_server

SERVING = ServingStatus.SERVING
NOT_SERVING = ServingStatus.NOT_SERVING
UNKNOWN = ServingStatus.UNKNOWN

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "health.toml"

#: For checks against real servers: long enough for a slow CI box, never reached when passing.
REAL_TIMEOUT = 10.0


def test_the_example_builds_a_runner() -> None:
    config = load_config(EXAMPLE)
    runner = build_runner(config, HealthState())
    assert [c.name for c in runner.checks] == [c.name for c in config.checks]
    assert runner.services() == config.managed_services()


def test_build_check_keeps_schedule_and_thresholds() -> None:
    config = parse_config("""
[check_defaults]
interval = 3

[[services."".checks]]
type = "tcp"
host = "localhost"
port = 1
failure_threshold = 1
""")
    built = build_check(config.checks[0])
    assert (built.name, built.service, built.interval) == ("/tcp0", "", 3.0)
    assert built.failure_threshold == 1
    assert built.threaded is False


def test_an_unloadable_ca_file_names_its_key_and_line(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate")
    for kind, extra in (("http", "url = 'https://h/'"), ("grpc", "target = 'h:1'")):
        config = parse_config(f"[[services.a.checks]]\ntype = '{kind}'\n{extra}\n"
                              "tls_ca = 'ca.pem'\n", file="health.toml", base=tmp_path)
        with pytest.raises(ConfigError, match="cannot load CA file") as info:
            build_check(config.checks[0])
        assert (info.value.file, info.value.line) == ("health.toml", 4)
        assert info.value.key == "services.a.checks[0].tls_ca"


def test_the_process_refuses_a_bad_certificate(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("x")
    config = parse_config("", base=tmp_path)
    bad_tls = TlsConfig(tmp_path / "cert.pem", None)
    with pytest.raises(StartupError, match=r"^--tls-cert: invalid certificate file .*cert\.pem"):
        SidecarProcess(type(config)(tls=bad_tls))


# ----------------------------------------------------------------- run_sidecar


async def test_run_sidecar_runs_the_checks(server_config: ServerConfig) -> None:
    async with tcp_server() as db_port, trio.open_nursery() as nursery:
        upstream = await nursery.start(HealthServer(config=server_config).serve_tcp, "127.0.0.1", 0)
        upstream.set("up", NOT_SERVING)
        config = parse_config(f"""
[server]
admin_port = 0
metrics = true

[services.static]
status = "SERVING"

[[services.db.checks]]
type = "tcp"
host = "127.0.0.1"
port = {db_port}
timeout = {REAL_TIMEOUT}

[[services.jobs.checks]]
type = "command"
argv = [{sys.executable!r}, "-c", "raise SystemExit(3)"]
timeout = {REAL_TIMEOUT}

[[services.up.checks]]
type = "grpc"
target = "127.0.0.1:{upstream.port}"
service = "up"
timeout = {REAL_TIMEOUT}
""")
        state = HealthState(config.initial_statuses())
        assert state.snapshot() == {"": UNKNOWN, "static": SERVING, "db": UNKNOWN,
                                    "jobs": UNKNOWN, "up": UNKNOWN}
        sidecar = await nursery.start(run_sidecar, config, state)
        assert state.snapshot() == {"": NOT_SERVING, "static": SERVING, "db": SERVING,
                                    "jobs": NOT_SERVING, "up": NOT_SERVING}
        routes = sidecar.admin_routes()
        status, _, body = routes["/metrics"]()
        assert status == 200
        assert b'grpc_health_check_healthy{check="db/tcp0",service="db"} 1.0' in body
        nursery.cancel_scope.cancel()


async def test_run_sidecar_without_checks_or_metrics(
        autojump_clock: trio.testing.MockClock) -> None:
    state = HealthState()
    async with trio.open_nursery() as nursery:
        sidecar = await nursery.start(run_sidecar, None, state)
        assert sidecar.runner is None
        assert sidecar.admin_routes() == {}
        assert state.snapshot() == {"": SERVING}
        nursery.cancel_scope.cancel()


async def test_run_sidecar_metrics_flag(autojump_clock: trio.testing.MockClock) -> None:
    state = HealthState()
    async with trio.open_nursery() as nursery:
        sidecar = await nursery.start(run_sidecar, None, state, None, True)
        assert set(sidecar.admin_routes()) == {"/metrics"}
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------- the whole process


async def test_the_process_serves_unix_and_admin_then_drains(tmp_path: Path) -> None:
    from health.client import HealthClient
    from wire import open_channel

    path = tmp_path / "health.sock"
    config = parse_config(f"""
[server]
unix = "{path}"
admin_port = 0
metrics = true
grace = 0

[services.static]
status = "SERVING"
""")
    process = SidecarProcess(config)
    lines: list[str] = []
    announced = trio.Event()

    def announce(line: str) -> None:
        lines.append(line)
        if line.startswith("admin"):
            announced.set()

    codes: list[int] = []
    with trio.fail_after(REAL_TIMEOUT):
        async with trio.open_nursery() as nursery:

            async def run() -> None:
                codes.append(await process.run(announce))

            nursery.start_soon(run)
            await announced.wait()
            assert lines[0] == f"listening {path}"
            assert lines[1].startswith("admin ")
            async with open_channel(f"unix:{path}", connect_timeout=REAL_TIMEOUT) as channel:
                assert await HealthClient(channel).check("static") is SERVING
            # What the admin API's shutdown (or a first signal) does: drain, then stop.
            process.stop.set()
    assert codes == [0]
    assert process.state.get("static") is NOT_SERVING


def test_metrics_without_prometheus_client_is_a_config_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes the import fail as if the package were not installed.
    monkeypatch.setitem(sys.modules, "health.metrics", None)
    with pytest.raises(ConfigError, match=r"metrics need prometheus_client"):
        SidecarProcess(parse_config("[server]\nadmin_port = 0\nmetrics = true\n"))



async def test_the_example_runs_on_a_base_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from health.client import HealthClient
    from wire import open_channel

    # None in sys.modules makes the import fail as if the extra were not installed.
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.setitem(sys.modules, "health.metrics", None)
    config = dataclasses.replace(load_config(EXAMPLE), port=0, admin_port=0)
    process = SidecarProcess(config)
    assert process.sidecar.metrics is None
    assert process.admin is not None
    announced = trio.Event()

    def announce(line: str) -> None:
        if line.startswith("admin"):
            announced.set()

    with trio.fail_after(REAL_TIMEOUT * 2):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(process.run, announce)
            await announced.wait()
            async with open_channel(f"127.0.0.1:{process.server.port}",
                                    connect_timeout=REAL_TIMEOUT) as channel:
                assert await HealthClient(channel).check("example.Static") is SERVING
            process.stop.set()
