"""The scaling manifests (deploy/k8s/scaling): valid offline, the built-in kinds against the Kubernetes API schemas
and the custom resources against their CRDs' schemas kept in deploy/k8s/schemas, and wired to deploy/k8s/cpu.yaml
and to the metric names the server exposes."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from backends.base import EngineStats
from engine_server.metrics import Metrics
from tests.test_k8s import K8S, VERSIONS, by_kind, container, documents

SCALING = K8S / "scaling"
SCHEMAS = K8S / "schemas"
MANIFESTS = sorted(SCALING.glob("*.yaml"))
BUILT_IN = {"ConfigMap", "HorizontalPodAutoscaler"}
# The custom resources, by apiVersion and kind: the schema file of each.
CUSTOM = {
    ("inference.networking.k8s.io/v1", "InferencePool"): "inferencepool-inference.networking.k8s.io-v1.json",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproute-gateway.networking.k8s.io-v1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring.coreos.com-v1.json",
}


def strict(node: Any) -> Any:
    """A CRD schema that refuses unknown fields, as kubernetes-validate's strict mode and `kubectl apply
    --validate=strict` do (the API server would drop them silently otherwise)."""
    if isinstance(node, list):
        return [strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {
        key: {name: strict(sub) for name, sub in value.items()} if key == "properties" else strict(value)
        for key, value in node.items()
    }
    open_ended = "additionalProperties" in node or node.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in node and not open_ended:
        out["additionalProperties"] = False
    return out


def validator(doc: dict[str, Any]) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / CUSTOM[doc["apiVersion"], doc["kind"]]).read_text())
    return jsonschema.validators.validator_for(schema)(strict(schema))


def all_documents() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{path.name}:{doc['kind']}", doc) for path in MANIFESTS for doc in documents(path)]


def params(built_in: bool) -> list[Any]:
    return [pytest.param(doc, id=name) for name, doc in all_documents() if (doc["kind"] in BUILT_IN) == built_in]


def custom(kind: str) -> dict[str, Any]:
    (doc,) = (doc for _, doc in all_documents() if doc["kind"] == kind)
    return doc


def adapter_rule() -> dict[str, Any]:
    (rule,) = yaml.safe_load(by_kind(SCALING / "autoscaling.yaml")["ConfigMap"]["data"]["config.yaml"])["rules"]
    return rule


def test_the_scaling_manifests_and_their_kinds() -> None:
    assert {p.name: sorted(by_kind(p)) for p in MANIFESTS} == {
        "autoscaling.yaml": ["ConfigMap", "HorizontalPodAutoscaler", "ServiceMonitor"],
        "inference-pool.yaml": ["HTTPRoute", "InferencePool"],
    }
    assert {doc["kind"] for _, doc in all_documents()} == BUILT_IN | {kind for _, kind in CUSTOM}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("doc", params(built_in=True))
def test_built_in_kinds_are_valid_against_the_kubernetes_schema(doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("doc", params(built_in=False))
def test_custom_resources_are_valid_against_their_crd_schema(doc: dict[str, Any]) -> None:
    validator(doc).validate(doc)


@pytest.mark.parametrize("schema", sorted(CUSTOM.values()))
def test_the_kept_schemas_are_schemas_and_their_source_is_noted(schema: str) -> None:
    loaded = json.loads((SCHEMAS / schema).read_text())
    jsonschema.validators.validator_for(loaded).check_schema(loaded)
    assert schema in (SCHEMAS / "README.md").read_text()
    assert (SCHEMAS / "LICENSE").read_text().lstrip().startswith("Apache License")


@pytest.mark.parametrize(
    "kind,path,bad",
    [
        pytest.param("InferencePool", ["spec", "targetPort"], [{"number": 9000}], id="pool-misspelt-field"),
        pytest.param("InferencePool", ["spec", "targetPorts"], [{"number": 70000}], id="pool-port-out-of-range"),
        pytest.param("InferencePool", ["spec", "endpointPickerRef", "failureMode"], "FailSoft", id="pool-bad-enum"),
        pytest.param("HTTPRoute", ["spec", "rules", 0, "backendRefs", 0, "nmae"], "x", id="route-misspelt-field"),
        pytest.param("ServiceMonitor", ["spec", "endpoints", 0, "intervall"], "5s", id="monitor-misspelt-field"),
    ],
)
def test_a_broken_custom_resource_is_refused(kind: str, path: list[str | int], bad: Any) -> None:
    doc = custom(kind)
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = bad
    with pytest.raises(jsonschema.ValidationError):
        validator(doc).validate(doc)


def test_a_broken_autoscaler_is_refused() -> None:
    hpa = by_kind(SCALING / "autoscaling.yaml")["HorizontalPodAutoscaler"]
    hpa["spec"]["metrics"][0]["object"]["target"]["averageValu"] = "8"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(hpa, VERSIONS[-1], strict=True)


def test_the_pool_and_its_route_reach_the_cpu_pods() -> None:
    deployment, service = by_kind(K8S / "cpu.yaml")["Deployment"], by_kind(K8S / "cpu.yaml")["Service"]
    pool, route = custom("InferencePool"), custom("HTTPRoute")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pool["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (port,) = container(K8S / "cpu.yaml")["ports"]
    assert pool["spec"]["targetPorts"] == [{"number": port["containerPort"]}]
    assert "port" in pool["spec"]["endpointPickerRef"]  # the CRD's own rule for a Service, which JSON Schema lacks
    (rule,) = route["spec"]["rules"]
    (backend,) = rule["backendRefs"]
    assert backend == {
        "group": "inference.networking.k8s.io",
        "kind": "InferencePool",
        "name": pool["metadata"]["name"],
    }
    assert pool["metadata"]["name"] == service["metadata"]["name"]


def test_the_autoscaler_scales_the_cpu_deployment_on_the_adapters_metric() -> None:
    cpu = by_kind(K8S / "cpu.yaml")
    kinds = by_kind(SCALING / "autoscaling.yaml")
    hpa, monitor = kinds["HorizontalPodAutoscaler"]["spec"], kinds["ServiceMonitor"]["spec"]
    deployment, service = cpu["Deployment"], cpu["Service"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert hpa["minReplicas"] == deployment["spec"]["replicas"] < hpa["maxReplicas"]
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Object"
    described = metric["object"]["describedObject"]
    assert described == {"apiVersion": "v1", "kind": "Service", "name": service["metadata"]["name"]}
    assert metric["object"]["target"]["type"] == "AverageValue"
    rule = adapter_rule()
    assert metric["object"]["metric"]["name"] == rule["name"]["as"]
    assert f'service="{service["metadata"]["name"]}"' in rule["seriesQuery"]
    assert rule["resources"]["overrides"]["service"] == {"resource": "service"}
    # Prometheus scrapes the Service's pods, which labels the series with the Service the rule selects.
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] and endpoint["path"] == "/metrics"


def test_the_adapter_rule_sums_running_and_waiting_as_the_server_names_them() -> None:
    rule = adapter_rule()
    assert rule["seriesQuery"].startswith('{__name__="vllm:num_requests_waiting"')
    assert rule["metricsQuery"].startswith("sum by (<<.GroupBy>>) (vllm:num_requests_running{<<.LabelMatchers>>} + ")
    assert rule["metricsQuery"].endswith("+ <<.Series>>{<<.LabelMatchers>>})")
    text = Metrics(lambda: EngineStats(1, 2), "tiny").render().decode()
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert types["vllm:num_requests_running"] == types["vllm:num_requests_waiting"] == "gauge"


def test_the_manifests_name_no_path_that_is_not_in_the_repository() -> None:
    root = K8S.parent.parent
    for path in MANIFESTS:
        for named in re.findall(r"\b(?:deploy|docs)/[\w./-]*\w", path.read_text()):
            assert (root / named).exists(), f"{path.name} names {named}"


def test_the_schema_files_are_what_from_crd_writes() -> None:
    """from_crd.py keeps the checks of a CRD's schema and drops only its descriptions."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("from_crd", SCHEMAS / "from_crd.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    crd = {
        "spec": {
            "group": "example.com",
            "names": {"kind": "Thing"},
            "versions": [
                {
                    "name": "v1",
                    "schema": {
                        "openAPIV3Schema": {
                            "description": "A thing.",
                            "type": "object",
                            "properties": {"description": {"type": "string", "description": "Its text."}},
                        }
                    },
                }
            ],
        }
    }
    assert module.crd_schema(crd, "v1") == {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "title": "example.com/v1 Thing",
        "type": "object",
        "properties": {"description": {"type": "string"}},
    }
