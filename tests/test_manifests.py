"""The Kubernetes manifests in examples/kubernetes/: valid for Kubernetes, and consistent with us.

Each document is parsed with PyYAML and validated, every field, against the Kubernetes OpenAPI
schema bundled by ``kubernetes-validate`` (strict: unknown fields are errors; no network), for
the oldest and the newest version it bundles. Then what only we know: the ConfigMap's TOML
loads with ``health.config``, the ports the probes and scrape annotations name are the ones the
config and the flags open, exec probes are valid probe command lines, every probed container
has a startupProbe, and ``terminationGracePeriodSeconds`` covers ``--shutdown-delay`` plus
``--grace``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml

from health.config import SidecarConfig, parse_config
from health.probe import parse_args

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((ROOT / "examples" / "kubernetes").glob("*.yaml"))
# The oldest schema kubernetes-validate bundles (the grpc probe itself is 1.24+) and the newest.
_BUNDLED = sorted(kubernetes_validate.utils.all_versions(),
                  key=lambda v: tuple(int(p) for p in v.split(".")))
VERSIONS = sorted({_BUNDLED[0], kubernetes_validate.latest_version()})
# Seconds a process needs to exit after its grace period, on top of delay + grace.
EXIT_MARGIN = 2
IMAGE_USER = 10001  # the Dockerfile's USER


def _documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                yield f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc


DOCUMENTS = dict(_documents())
DEPLOYMENTS = {k: d for k, d in DOCUMENTS.items() if d["kind"] == "Deployment"}


def test_both_examples_are_there() -> None:
    assert {p.name for p in MANIFESTS} == {"sidecar.yaml", "embedded.yaml"}
    assert len(DEPLOYMENTS) == 2


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_valid_against_the_kubernetes_schema(name: str, version: str) -> None:
    kubernetes_validate.validate(DOCUMENTS[name], version, strict=True)


def test_the_validator_catches_a_misspelt_field() -> None:
    doc = DOCUMENTS["sidecar.yaml:Deployment/orders"]
    broken = yaml.safe_load(yaml.safe_dump(doc))
    broken["spec"]["template"]["spec"]["containers"][1]["readinessProbe"]["grpc"]["servce"] = "x"
    with pytest.raises(kubernetes_validate.ValidationError, match="servce"):
        kubernetes_validate.validate(broken, VERSIONS[0], strict=True)


def _flags(container: dict[str, Any]) -> dict[str, str]:
    """``--name=value`` arguments of a container (bare ``--name`` maps to "")."""
    flags = {}
    for arg in [*container.get("command", []), *container.get("args", [])]:
        m = re.fullmatch(r"--([a-z-]+)(?:=(.*))?", arg)
        if m:
            flags[m.group(1)] = m.group(2) or ""
    return flags


def _ports(container: dict[str, Any]) -> set[int]:
    return {p["containerPort"] for p in container.get("ports", [])}


def _probes(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in container.items() if k.endswith("Probe")}


def _pod(deployment: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = deployment["spec"]["template"]
    return pod


def _sidecar_config() -> SidecarConfig:
    config_map = DOCUMENTS["sidecar.yaml:ConfigMap/orders-health"]
    return parse_config(config_map["data"]["health.toml"], file="health.toml")


def test_the_configmap_toml_loads_with_health_config() -> None:
    config = _sidecar_config()
    assert (config.host, config.port, config.admin_port, config.metrics) == (
        "0.0.0.0", 50051, 8081, True)
    names = {s.name for s in config.services}
    assert {"liveness", "orders"} <= names
    [check] = config.checks
    assert check.type == "http"
    assert check.service == "orders"


def test_sidecar_checks_the_app_container_it_runs_beside() -> None:
    pod = _pod(DEPLOYMENTS["sidecar.yaml:Deployment/orders"])["spec"]
    app, health = pod["containers"]
    config = _sidecar_config()
    [check] = config.checks
    url = check.params["url"]
    m = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/.*", url)
    assert m is not None, url
    assert int(m.group(1)) in _ports(app)
    # The sidecar reads the ConfigMap from where it is mounted.
    flags = _flags(health)
    mounts = {v["mountPath"]: v["name"] for v in health["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_dir = str(Path(flags["config"]).parent)
    assert volumes[mounts[config_dir]]["configMap"]["name"] == "orders-health"
    # Probes ask the services the config defines.
    services = {s.name for s in config.services}
    for probe in _probes(health).values():
        if "grpc" in probe:
            assert probe["grpc"]["service"] in services
            assert probe["grpc"]["port"] == config.port
    assert health["securityContext"]["runAsUser"] == IMAGE_USER


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_grace_period_covers_shutdown_delay_plus_grace(name: str) -> None:
    pod = _pod(DEPLOYMENTS[name])["spec"]
    served = [c for c in pod["containers"] if "shutdown-delay" in _flags(c)]
    assert served, "a container runs the health server with --shutdown-delay"
    for container in served:
        flags = _flags(container)
        needed = float(flags["shutdown-delay"]) + float(flags["grace"]) + EXIT_MARGIN
        assert pod["terminationGracePeriodSeconds"] >= needed, container["name"]


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_probes_native_grpc_and_exec_with_a_startup_probe(name: str) -> None:
    pod = _pod(DEPLOYMENTS[name])["spec"]
    kinds = set()
    for container in pod["containers"]:
        probes = _probes(container)
        if not probes:
            continue
        assert "startupProbe" in probes, container["name"]
        for probe in probes.values():
            if "grpc" in probe:
                kinds.add("grpc")
                assert probe["grpc"]["port"] in _ports(container)
            else:
                kinds.add("exec")
                command = probe["exec"]["command"]
                assert command[0] == "trio-grpc-health-probe"
                opts = parse_args(command[1:])  # a valid probe command line
                host, port = opts.addr.rsplit(":", 1)
                assert host == "127.0.0.1"
                assert int(port) in _ports(container)
                # The kubelet's timeout must not cut the probe's own timeouts short.
                assert probe["timeoutSeconds"] >= opts.connect_timeout + opts.rpc_timeout
    assert kinds == {"grpc", "exec"}


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_metrics_scrape_annotations_and_a_safe_admin_port(name: str) -> None:
    template = _pod(DEPLOYMENTS[name])
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    scrape_port = int(annotations["prometheus.io/port"])
    pod = template["spec"]
    [admin] = [c for c in pod["containers"] if "admin-host" in _flags(c)]
    flags = _flags(admin)
    assert flags["admin-host"] == "0.0.0.0"
    assert scrape_port in _ports(admin)
    admin_port = int(flags["admin-port"]) if "admin-port" in flags else _sidecar_config(
        ).admin_port
    assert admin_port == scrape_port
    # Open to the pod network, so the mutating endpoints need the token from a Secret.
    token_dir = str(Path(flags["admin-token-file"]).parent)
    mounts = {v["mountPath"]: v for v in admin["volumeMounts"]}
    assert mounts[token_dir]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "secretName" in volumes[mounts[token_dir]["name"]]["secret"]
    # The non-root image user reads the 0440 token file through its group.
    assert pod["securityContext"]["fsGroup"] == IMAGE_USER
