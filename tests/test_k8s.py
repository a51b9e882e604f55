"""The Kubernetes manifests: valid against the API schemas (offline), and wired to the server as it really is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from engine_server.config import Config

K8S = Path(__file__).resolve().parent.parent / "deploy" / "k8s"
MANIFESTS = sorted(K8S.glob("*.yaml"))
# The oldest Kubernetes the schemas ship with, and the newest: the manifests must suit both.
VERSIONS = ("1.25.0", kubernetes_validate.latest_version())


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(path: Path) -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in documents(path)}


def container(path: Path) -> dict[str, Any]:
    (main,) = by_kind(path)["Deployment"]["spec"]["template"]["spec"]["containers"]
    return main


def test_there_is_one_for_cpu_and_one_for_gaudi() -> None:
    assert [p.name for p in MANIFESTS] == ["cpu.yaml", "gaudi.yaml"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_valid_against_the_kubernetes_schema(path: Path, version: str) -> None:
    docs = documents(path)
    assert sorted(doc["kind"] for doc in docs) == ["Deployment", "Service"]
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)  # strict: unknown fields are errors too


def test_the_validator_catches_a_misspelt_field() -> None:
    doc = by_kind(MANIFESTS[0])["Deployment"]
    doc["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/health"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, VERSIONS[-1], strict=True)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_service_reaches_the_pods_on_the_server_port(path: Path) -> None:
    kinds = by_kind(path)
    deployment, service = kinds["Deployment"], kinds["Service"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = container(path)["ports"]
    assert port == {"name": "http", "containerPort": Config().port}
    assert service["spec"]["ports"] == [{"name": "http", "port": 9000, "targetPort": "http"}]
    assert deployment["spec"]["replicas"] >= 2  # many single-host replicas behind the Service


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_probes_use_health_and_leave_time_to_load_the_model(path: Path) -> None:
    main = container(path)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert main[probe]["httpGet"] == {"path": "/health", "port": "http"}
    startup = main["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30 * 60
    liveness = main["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 120


def test_gaudi_pods_get_cards_and_the_hpu_backend() -> None:
    path = K8S / "gaudi.yaml"
    main = container(path)
    assert main["args"][:2] == ["--hw-mode", "hpu"]
    resources = main["resources"]
    assert resources["limits"]["habana.ai/gaudi"] == resources["requests"]["habana.ai/gaudi"] >= 1
    env = {e["name"]: e.get("value") for e in main["env"]}
    assert int(env["PARALLEL_NUMBER"]) == resources["limits"]["habana.ai/gaudi"]
    # Habana's device plugin sets HABANA_VISIBLE_DEVICES to the cards it assigned: the pod must not override it.
    assert "HABANA_VISIBLE_DEVICES" not in env
    assert "SYS_NICE" in main["securityContext"]["capabilities"]["add"]


def test_cpu_pods_use_the_cpu_backend_without_accelerators() -> None:
    main = container(K8S / "cpu.yaml")
    assert main["args"][:2] == ["--hw-mode", "cpu"]
    assert not any("/" in name for name in main["resources"]["limits"])
