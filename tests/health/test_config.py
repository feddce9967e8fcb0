"""The sidecar config file (pure: TOML in, frozen dataclasses out): the example loads, and bad
files name the key and the line. Building and running a config is tested in test_sidecar.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from health import ServingStatus
from health.config import (
    CommandProbeConfig,
    ConfigError,
    HttpProbeConfig,
    SidecarConfig,
    TcpProbeConfig,
    TlsConfig,
    load_config,
    parse_config,
)

SERVING = ServingStatus.SERVING
NOT_SERVING = ServingStatus.NOT_SERVING
UNKNOWN = ServingStatus.UNKNOWN

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "health.toml"
REAL_TIMEOUT = 10.0


def bad(text: str, tmp_path: Path | None = None) -> ConfigError:
    """Parse ``text`` expecting a ConfigError, and return it."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, file="health.toml", base=tmp_path)
    return info.value


# ------------------------------------------------------------------ good files


def test_example_loads() -> None:
    config = load_config(EXAMPLE)
    assert config.port == 50051
    assert config.admin_port == 8081
    # On a base install: metrics need the extra, which the example says how to add.
    assert config.metrics is False
    names = {s.name: s for s in config.services}
    assert names["example.Static"].status is SERVING
    assert names["example.Static"].checks == ()
    assert [c.name for c in config.checks] == ["orders-db", "orders-api", "jobs-queue",
                                               "upstream-health"]
    assert {c.type for c in config.checks} == {"tcp", "http", "command", "grpc"}
    api = config.checks[1]
    assert api.interval == 5.0
    assert api.timeout == 2.0  # from [check_defaults]
    assert api.params["expect_status"] == (200, 299)
    assert api.params["headers"] == {"Accept": "application/json"}
    assert config.initial_statuses() == {
        "example.Static": SERVING,
        "example.Orders": NOT_SERVING,
        "example.Jobs": UNKNOWN,
        "": UNKNOWN,
    }
    assert config.managed_services() == ["example.Orders", "example.Jobs", ""]
    assert isinstance(api.probe, HttpProbeConfig)
    assert api.probe.headers == (("Accept", "application/json"),)


def test_empty_file_gives_the_serve_defaults() -> None:
    config = parse_config("")
    assert config == SidecarConfig()
    assert config.arg_defaults() == {"host": "127.0.0.1", "port": 50051, "unix": None,
                                     "admin_port": None, "admin_host": None,
                                     "admin_token_file": None, "grace": 5.0,
                                     "shutdown_delay": 0.0, "list_limit": 100,
                                     "metrics": False, "http2": "h2", "reflection": True,
                                     "tls_cert": None, "tls_key": None,
                                     "tls_client_ca": None, "require_client_cert": False}
    assert config.initial_statuses() == {}


def test_check_defaults_and_names(tmp_path: Path) -> None:
    config = parse_config("""
[check_defaults]
interval = 3
failure_threshold = 5

[services.""]
[[services."".checks]]
type = "tcp"
host = "localhost"
port = 1
failure_threshold = 1
""", base=tmp_path)
    (check,) = config.checks
    assert check.name == "/tcp0"
    assert check.service == ""
    assert (check.interval, check.timeout, check.failure_threshold,
            check.success_threshold) == (3.0, 1.0, 1, 1)
    assert check.probe == TcpProbeConfig("localhost", 1)
    assert check.params == {"host": "localhost", "port": 1}


def test_tls_files(tmp_path: Path) -> None:
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("x")
    config = parse_config("""
[server]
tls_cert = "cert.pem"
tls_key = "key.pem"
tls_client_ca = "ca.pem"
require_client_cert = true
""", base=tmp_path)
    assert config.tls == TlsConfig(tmp_path / "cert.pem", tmp_path / "key.pem",
                                   tmp_path / "ca.pem", True)


# ------------------------------------------------------------------- bad files


def test_syntax_error_has_the_line() -> None:
    error = bad('[server]\nport = 50051\nhost = "unterminated\n')
    assert error.line == 3
    assert str(error).startswith("health.toml:3: invalid TOML")


def test_wrong_type_names_key_and_line() -> None:
    error = bad('[server]\nhost = "::1"\n\nport = "http"\n')
    assert (error.line, error.key) == (4, "server.port")
    assert str(error) == ("health.toml:4: server.port: must be an integer between 0 and "
                          "65535, got 'http'")


def test_unknown_key_is_rejected() -> None:
    error = bad("[server]\nport = 1\nadmin_prot = 2\n")
    assert (error.line, error.key) == (3, "server.admin_prot")
    assert "unknown key" in str(error)
    assert "admin_port" in str(error)  # the valid keys are listed


def test_unknown_top_level_table() -> None:
    error = bad("[server]\n\n[sevices.a]\nstatus = 'SERVING'\n")
    assert (error.line, error.key) == (3, "sevices")


def test_error_inside_second_check_points_at_its_line() -> None:
    error = bad("""[services."pkg.A"]
status = "SERVING"

[[services."pkg.A".checks]]
type = "tcp"
host = "db"
port = 5432

[[services."pkg.A".checks]]
type = "tcp"
host = "cache"
port = 70000
""")
    assert error.key == 'services."pkg.A".checks[1].port'
    assert error.line == 12


def test_missing_required_key_points_at_the_table() -> None:
    error = bad("""[services.a]

[[services.a.checks]]
type = "http"
""")
    assert error.line == 3
    assert "missing required key 'url'" in str(error)


def test_unknown_check_type() -> None:
    error = bad('[services.a]\nchecks = [{ type = "ping" }]\n')
    assert error.line == 2  # inside an inline table: the line of the enclosing key
    assert "unknown check type 'ping'" in str(error)
    assert "tcp, http, command, grpc" in str(error)


def test_duplicate_check_names() -> None:
    error = bad("""[[services.a.checks]]
type = "tcp"
name = "db"
host = "h"
port = 1

[[services.b.checks]]
type = "tcp"
name = "db"
host = "h"
port = 1
""")
    assert error.line == 9
    assert "duplicate check name 'db'" in str(error)


def test_bad_numbers() -> None:
    assert "> 0" in str(bad("[check_defaults]\ninterval = 0\n"))
    assert bad("[check_defaults]\ntimeout = nan\n").line == 2
    assert "true or false" in str(bad('[server]\nmetrics = "yes"\n'))
    assert bad("[server]\nlist_limit = -1\n").key == "server.list_limit"
    error = bad("[[services.a.checks]]\ntype = 'http'\nurl = 'http://h/'\n"
                "expect_status = [500, 200]\n")
    assert (error.line, error.key) == (4, "services.a.checks[0].expect_status")


def test_missing_tls_file(tmp_path: Path) -> None:
    error = bad('[server]\ntls_cert = "nope.pem"\ntls_key = "nope.key"\n', tmp_path)
    assert (error.line, error.key) == (2, "server.tls_cert")
    assert "file not found" in str(error)


def test_tls_pairs(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("x")
    (tmp_path / "ca.pem").write_text("x")
    error = bad('[server]\ntls_cert = "cert.pem"\n', tmp_path)
    assert "needs tls_key" in str(error)
    error = bad('[server]\nrequire_client_cert = true\n', tmp_path)
    assert "needs tls_cert" in str(error)
    error = bad('[server]\ntls_client_ca = "ca.pem"\n', tmp_path)
    assert "needs tls_cert" in str(error)


def test_metrics_need_the_admin_port() -> None:
    error = bad("[server]\n\nmetrics = true\n")
    assert (error.line, error.key) == (3, "server.metrics")


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"[server]\n# caf\xe9\n")
    with pytest.raises(ConfigError, match="UTF-8") as info:
        load_config(path)
    assert info.value.line == 2


def test_load_config_resolves_paths_next_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "c.pem").write_text("x")
    (tmp_path / "certs" / "k.pem").write_text("x")
    path = tmp_path / "health.toml"
    path.write_text('[server]\ntls_cert = "certs/c.pem"\ntls_key = "certs/k.pem"\n')
    config = load_config(path)
    assert config.tls is not None
    assert config.tls.cert == tmp_path / "certs" / "c.pem"
    assert config.path == path


def test_parsing_is_pure_and_command_paths_resolve(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    config = parse_config("""
[[services.jobs.checks]]
type = "command"
argv = ["true"]
cwd = "work"
""", base=tmp_path)
    (check,) = config.checks
    assert check.probe == CommandProbeConfig(("true",), str(tmp_path / "work"))
    assert check.params == {"argv": ["true"], "cwd": str(tmp_path / "work")}
    # Equal files give equal, hashable values: nothing live was built.
    assert config == parse_config(
        '[[services.jobs.checks]]\ntype = "command"\nargv = ["true"]\ncwd = "work"\n',
        base=tmp_path)
    assert hash(config.checks) == hash(config.checks)


def test_status_overrides_win_over_the_file() -> None:
    config = parse_config('[services.a]\nstatus = "SERVING"\n')
    assert config.initial_statuses() == {"a": SERVING}
    overridden = SidecarConfig(services=config.services,
                               status_overrides=(("a", NOT_SERVING), ("b", UNKNOWN)))
    assert overridden.initial_statuses() == {"a": NOT_SERVING, "b": UNKNOWN}
    # The checks' own "until the first results" status still comes from the file.
    assert overridden.pending_statuses() == {"a": SERVING}


@pytest.mark.parametrize(("text", "key", "line", "why"), [
    ('[services.a]\nstatus = "HEALTHY"\n', "services.a.status", 2, "not a serving status name"),
    ("[[services.a.checks]]\ntype = 'http'\nurl = 'ftp://h/'\n",
     "services.a.checks[0].url", 3, "scheme must be http or https"),
    ("[[services.a.checks]]\ntype = 'http'\nurl = 'http://h:99999/'\n",
     "services.a.checks[0].url", 3, "out of range"),
    ("[[services.a.checks]]\ntype = 'http'\nurl = 'http:///x'\n",
     "services.a.checks[0].url", 3, "URL has no host"),
    ("[[services.a.checks]]\ntype = 'command'\nargv = []\n",
     "services.a.checks[0].argv", 3, "non-empty array of strings"),
    ("server = 1\n", "server", 1, "must be a table"),
    ("[[services.a.checks]]\ntype = 'tcp'\nhost = 1\nport = 1\n",
     "services.a.checks[0].host", 3, "must be a string"),
    ("[[services.a.checks]]\ntype = 'tcp'\nhost = 'h'\n",
     "services.a.checks[0]", 1, "missing required key 'port'"),
    ("[[services.a.checks]]\ntype = 'command'\n",
     "services.a.checks[0]", 1, "missing required key 'argv'"),
    ("[[services.a.checks]]\ntype = 'command'\nargv = ['x']\ncwd = 'no-such-dir'\n",
     "services.a.checks[0].cwd", 4, "not a directory"),
    ("[[services.a.checks]]\ntype = 'tcp'\nname = ''\nhost = 'h'\nport = 1\n",
     "services.a.checks[0].name", 3, "must not be empty"),
    ("[services.a]\nstatus = 1\n", "services.a.status", 2, "must be a status name"),
    ("[services.a]\nstatus = 'SERVICE_UNKNOWN'\n", "services.a.status", 2, "Watch-only"),
    ("[services.a]\nchecks = 1\n", "services.a.checks", 2, "array of tables"),
    ("[services.a]\nchecks = [1]\n", "services.a.checks", 2, "entry 0 must be a table"),
    ("[[services.a.checks]]\ntype = 'http'\nurl = 'http://h/'\nexpect_status = 'ok'\n",
     "services.a.checks[0].expect_status", 4, "status code or [low, high]"),
    ("[[services.a.checks]]\ntype = 'http'\nurl = 'http://h/'\n"
     "[services.a.checks.headers]\nX-A = 1\n",
     "services.a.checks[0].headers.X-A", 5, "must be a string"),
    ('[services]\n"quoted = odd" = { status = 7 }\n',
     'services."quoted = odd".status', 2, "must be a status name"),
    ("[[services.a.checks]]\ntype = 'command'\nargv = [\n  'x',  # a comment = here\n"
     "  ['nested'],\n]\n", "services.a.checks[0].argv", 3, "non-empty array of strings"),
    ('[[services.a.checks]]\ntype = "command"\nargv = ["""\nx y = z\n"""]\ntimeout = 0\n',
     "services.a.checks[0].timeout", 6, "> 0"),
])
def test_bad_values_name_key_and_line(tmp_path: Path, text: str, key: str, line: int,
                                      why: str) -> None:
    error = bad(text, tmp_path)
    assert (error.key, error.line) == (key, line)
    assert why in error.reason
    assert str(error).startswith(f"health.toml:{line}: {key}: ")


def test_more_good_values(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    config = parse_config("""
[[services.a.checks]]
type = "http"
url = "http://h/"
expect_status = 204

[[services.a.checks]]
type = "grpc"
target = "h:1"
tls_ca = "ca.pem"
""", base=tmp_path)
    http, grpc = config.checks
    assert http.params["expect_status"] == (204, 204)
    assert grpc.params == {"target": "h:1", "service": "", "tls": True,
                           "tls_ca": str(tmp_path / "ca.pem")}


def test_require_client_cert_needs_the_ca(tmp_path: Path) -> None:
    for name in ("cert.pem", "key.pem"):
        (tmp_path / name).write_text("x")
    error = bad('[server]\ntls_cert = "cert.pem"\ntls_key = "key.pem"\n'
                "require_client_cert = true\n", tmp_path)
    assert (error.key, error.line) == ("server.require_client_cert", 4)
    assert "needs tls_client_ca" in error.reason


def test_cluster_settings(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret\n")
    config = parse_config("""
[server]
admin_port = 8081
admin_host = "0.0.0.0"
admin_token_file = "token"
shutdown_delay = 5
http2 = "native"
""", base=tmp_path)
    assert (config.admin_host, config.admin_token_file) == ("0.0.0.0", tmp_path / "token")
    assert (config.shutdown_delay, config.http2) == (5.0, "native")
    defaults = config.arg_defaults()
    assert (defaults["admin_host"], defaults["shutdown_delay"], defaults["http2"]) == (
        "0.0.0.0", 5.0, "native")


@pytest.mark.parametrize(("text", "key", "why"), [
    ("[server]\nhttp2 = 'h3'\n", "server.http2", "must be one of 'h2', 'native', got 'h3'"),
    ("[server]\nshutdown_delay = -1\n", "server.shutdown_delay", ">= 0"),
    ("[server]\nadmin_port = 1\nadmin_token_file = 'nope'\n", "server.admin_token_file",
     "file not found"),
    ("[server]\nadmin_port = 1\nadmin_host = ''\n", "server.admin_host", "must not be empty"),
    ("[server]\nhost = ''\n", "server.host", "must not be empty"),
    ("[server]\nunix = 'x.sock'\nport = 1\n", "server.unix", "not both"),
    ("[services.a]\nstatus = 'MAYBE'\n", "services.a.status",
     "expected one of SERVING, NOT_SERVING, UNKNOWN"),
])
def test_bad_cluster_settings(tmp_path: Path, text: str, key: str, why: str) -> None:
    error = bad(text, tmp_path)
    assert error.key == key
    assert why in error.reason
    assert "SERVICE_UNKNOWN" not in str(error)
