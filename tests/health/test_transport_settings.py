"""Transport settings (keepalive, lifetimes, connection cap, TCP keepalive) as ``serve`` flags
and ``[server]`` TOML keys of the same names, and what they become on the ``wire`` server."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from health.__main__ import _config_from_args, _serve_parser, serve_main
from health.config import ConfigError, SidecarConfig, parse_config
from health.sidecar import transport_settings
from health.transport import (
    TRANSPORT_NAMES,
    TransportSettings,
    check_value,
    parse_flag_value,
)
from wire import ServerConfig, ServerOptions

FLAGS = ["--keepalive-time", "30.5", "--keepalive-timeout", "2.5", "--keepalive-min-time", "1",
         "--keepalive-permit-without-calls", "false", "--max-connection-idle", "600",
         "--max-connection-age", "3600", "--max-connection-age-grace", "0.5",
         "--max-connections", "500", "--tcp-keepalive", "on", "--tcp-keepalive-idle", "7",
         "--tcp-keepalive-interval", "2", "--tcp-keepalive-count", "4",
         "--tcp-user-timeout", "9.5"]
EXPECTED = {
    "keepalive_time": 30.5, "keepalive_timeout": 2.5, "keepalive_min_time": 1.0,
    "keepalive_permit_without_calls": False, "max_connection_idle": 600.0,
    "max_connection_age": 3600.0, "max_connection_age_grace": 0.5, "max_connections": 500,
    "tcp_keepalive": True, "tcp_keepalive_idle": 7.0, "tcp_keepalive_interval": 2.0,
    "tcp_keepalive_count": 4, "tcp_user_timeout": 9.5,
}


def test_defaults_are_the_librarys() -> None:
    settings = TransportSettings()
    server_config, options = transport_settings(SidecarConfig())
    library_options, library_config = ServerOptions(), ServerConfig()
    assert server_config == library_config
    for name in ("keepalive_time", "keepalive_timeout", "max_connection_idle",
                 "max_connection_age", "max_connection_age_grace", "max_connections",
                 "tcp_keepalive"):
        assert getattr(options, name) == getattr(library_options, name), name
    assert settings.max_connections == library_options.max_connections
    assert settings.keepalive_min_time == library_config.keepalive_min_time == 10
    assert math.isinf(settings.max_connection_age)


def test_every_setting_has_a_rule_and_a_flag() -> None:
    assert set(EXPECTED) == set(TRANSPORT_NAMES)
    for name in TRANSPORT_NAMES:
        check_value(name, getattr(TransportSettings(), name))
    assert {f"--{n.replace('_', '-')}" for n in TRANSPORT_NAMES} == set(FLAGS[::2])


def test_flags_reach_the_wire_server() -> None:
    args = _serve_parser().parse_args(FLAGS)
    config = _config_from_args(args, SidecarConfig())
    assert config.transport.values() == EXPECTED
    server_config, options = transport_settings(config)
    assert (server_config.keepalive_min_time, server_config.keepalive_permit_without_calls) == (
        1.0, False)
    assert (options.keepalive_time, options.keepalive_timeout) == (30.5, 2.5)
    assert (options.max_connection_idle, options.max_connection_age,
            options.max_connection_age_grace, options.max_connections) == (600, 3600, 0.5, 500)
    tcp = options.tcp_keepalive
    assert (tcp.enabled, tcp.idle, tcp.interval, tcp.count, tcp.user_timeout) == (
        True, 7, 2, 4, 9.5)


def test_toml_keys_have_the_same_names(tmp_path: Path) -> None:
    lines = []
    for name, value in EXPECTED.items():
        shown = str(value).lower() if isinstance(value, bool) else repr(value)
        lines.append(f"{name} = {shown}")
    config = parse_config("[server]\n" + "\n".join(lines) + "\n")
    assert config.transport.values() == EXPECTED


def test_inf_means_never_where_allowed() -> None:
    config = parse_config("[server]\nmax_connection_age = inf\nkeepalive_time = inf\n")
    assert math.isinf(config.transport.max_connection_age)
    assert parse_flag_value("max_connection_idle", "inf") == math.inf
    with pytest.raises(ValueError, match="finite"):
        parse_flag_value("keepalive_timeout", "inf")


def test_the_file_sets_flag_defaults_and_flags_win(tmp_path: Path) -> None:
    path = tmp_path / "health.toml"
    path.write_text("[server]\nkeepalive_time = 60\nmax_connections = 100\n")
    parser = _serve_parser()
    parser.set_defaults(**parse_config(path.read_text()).arg_defaults())
    args = parser.parse_args(["--max-connections", "7"])
    config = _config_from_args(args, SidecarConfig())
    assert (config.transport.keepalive_time, config.transport.max_connections) == (60, 7)


@pytest.mark.parametrize(("argv", "message"), [
    (["--keepalive-time", "0"], "argument --keepalive-time: must be > 0 seconds, got 0.0"),
    (["--keepalive-time", "soon"], "argument --keepalive-time: must be a number of seconds"),
    (["--keepalive-timeout", "-1"], "argument --keepalive-timeout: must be > 0 seconds"),
    (["--keepalive-min-time", "nan"], "argument --keepalive-min-time: must be a finite"),
    (["--keepalive-permit-without-calls", "maybe"],
     "argument --keepalive-permit-without-calls: must be true or false"),
    (["--max-connection-idle", "0"], "argument --max-connection-idle: must be > 0 seconds"),
    (["--max-connection-age-grace", "-0.5"], "argument --max-connection-age-grace: must be >= 0"),
    (["--max-connections", "0"], "argument --max-connections: must be >= 1, got 0"),
    (["--max-connections", "1.5"], "argument --max-connections: must be a whole number"),
    (["--tcp-keepalive", "2"], "argument --tcp-keepalive: must be true or false"),
    (["--tcp-keepalive-idle", "0.5"], "argument --tcp-keepalive-idle: must be >= 1 and <= 32767"),
    (["--tcp-keepalive-count", "200"], "argument --tcp-keepalive-count: must be >= 1 and <= 127"),
    (["--tcp-user-timeout", "-1"], "argument --tcp-user-timeout: must be >= 0"),
])
def test_a_bad_value_gets_one_line_naming_the_flag(
        capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as info:
        serve_main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1
    assert message in errors[0]
    assert "Traceback" not in err


@pytest.mark.parametrize(("text", "message"), [
    ("keepalive_time = 0", "server.keepalive_time: must be > 0 seconds"),
    ("keepalive_permit_without_calls = 1", "server.keepalive_permit_without_calls: must be true"),
    ("max_connections = 'many'", "server.max_connections: must be a number"),
    ("tcp_keepalive_count = 0", "server.tcp_keepalive_count: must be >= 1 and <= 127"),
])
def test_a_bad_key_names_file_line_and_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f"[server]\nport = 1\n{text}\n", file="health.toml")
    assert str(info.value).startswith("health.toml:3: ")
    assert message in str(info.value)


def test_settings_refuse_bad_values_directly() -> None:
    with pytest.raises(ValueError, match="tcp_keepalive_idle must be >= 1"):
        TransportSettings(tcp_keepalive_idle=0)
    with pytest.raises(ValueError, match="max_connections must be a whole number"):
        TransportSettings(max_connections=2.5)  # type: ignore[arg-type]
