"""Names that moved in the health/ split still work from their old homes for one release.

Modules that only re-export (``health.state``, ``health.watch``) raise no warning because other
modules of the package still import them; names resolved lazily from a module that no longer
holds them (``health.checks``, ``health.config``) warn, naming the new home.
"""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize(("old", "name", "new"), [
    ("health.checks", "tcp_check", "health.probes"),
    ("health.checks", "http_check", "health.probes"),
    ("health.checks", "command_check", "health.probes"),
    ("health.checks", "grpc_check", "health.probes"),
    ("health.config", "Sidecar", "health.sidecar"),
    ("health.config", "run_sidecar", "health.sidecar"),
])
def test_moved_names_warn_and_resolve(old: str, name: str, new: str) -> None:
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=rf"{old}\.{name} moved to {new}\.{name}"):
        moved = getattr(module, name)
    assert moved is getattr(importlib.import_module(new), name)


@pytest.mark.parametrize("old", ["health.checks", "health.config"])
def test_other_missing_names_are_still_attribute_errors(old: str) -> None:
    module = importlib.import_module(old)
    with pytest.raises(AttributeError, match=f"module '{old}' has no attribute 'nothing_here'"):
        _ = module.nothing_here


@pytest.mark.parametrize(("old", "name", "new", "new_name"), [
    ("health.state", "HealthState", "health.status_map", "HealthState"),
    ("health.state", "Watcher", "health.subscriptions", "Watcher"),
    ("health.state", "Subscription", "health.subscriptions", "Subscription"),
    ("health.state", "DEFAULT_MAX_WATCHERS", "health.subscriptions", "DEFAULT_MAX_WATCHERS"),
    ("health.watch", "HealthWatcher", "health.follow", "BackendFollower"),
    ("health.watch", "HealthReport", "health.follow", "HealthReport"),
    ("health", "Watcher", "health.subscriptions", "Watcher"),
])
def test_reexports_are_the_same_objects(old: str, name: str, new: str, new_name: str) -> None:
    assert getattr(importlib.import_module(old), name) is getattr(
        importlib.import_module(new), new_name)


def test_config_methods_that_built_things_warn_and_delegate() -> None:
    from health import HealthState
    from health.config import parse_config

    config = parse_config("[[services.a.checks]]\ntype = 'tcp'\nhost = 'h'\nport = 1\n")
    with pytest.warns(DeprecationWarning, match=r"health\.sidecar\.build_check"):
        check = config.checks[0].to_check()
    assert (check.name, check.service) == ("a/tcp0", "a")
    with pytest.warns(DeprecationWarning, match=r"health\.sidecar\.build_runner"):
        runner = config.check_runner(HealthState())
    assert [c.name for c in runner.checks] == ["a/tcp0"]
