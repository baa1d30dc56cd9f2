"""deploy/k8s/: valid against Kubernetes' schemas (offline, kubernetes-validate) and consistent
with each other, the image and the service."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import SchemaNotFoundError, latest_version

from app.settings import ENV_PREFIX, SettingsError, load_settings
from tests.deploy.dockerfile import parse, serve_pins, stage
from tests.deploy.processes import ROOT
from tests.deploy.settings_env import assert_one_call_per_cpu, assert_valid_settings

K8S = ROOT / "deploy" / "k8s"
FILES = sorted(K8S.glob("*.yaml"))
RESOURCES: list[tuple[Path, dict[str, Any]]] = [
    (path, doc) for path in FILES for doc in yaml.safe_load_all(path.read_text()) if doc
]
BY_KIND = {doc["kind"]: doc for _, doc in RESOURCES}
DEPLOYMENT, SERVICE, CONFIGMAP = BY_KIND["Deployment"], BY_KIND["Service"], BY_KIND["ConfigMap"]
POD = DEPLOYMENT["spec"]["template"]
(CONTAINER,) = POD["spec"]["containers"]
# The oldest Kubernetes these manifests are meant for, and the newest the package knows.
VERSIONS = ["1.28.0", latest_version()]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("path", "resource"), RESOURCES, ids=[f"{p.name}:{d['kind']}" for p, d in RESOURCES])
def test_valid_against_the_kubernetes_schema(path: Path, resource: dict[str, Any], version: str) -> None:
    # strict: unknown fields (a misspelt key that Kubernetes would drop silently) fail too.
    try:
        kubernetes_validate.validate(resource, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        location = ".".join(str(p) for p in e.path)
        pytest.fail(
            f"{path.name}: {resource['kind']} invalid for Kubernetes {version} at {location}: {e.message}"
        )
    except SchemaNotFoundError:
        pytest.fail(
            f"{path.name}: no schema for {resource['apiVersion']} {resource['kind']} in Kubernetes {version}"
        )


def test_the_validation_rejects_a_misspelled_field() -> None:
    broken = yaml.safe_load((K8S / "deployment.yaml").read_text())
    broken["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_every_piece_is_there() -> None:
    kinds = {(doc["apiVersion"], doc["kind"]) for _, doc in RESOURCES}
    assert kinds == {
        ("v1", "ConfigMap"),
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
        ("policy/v1", "PodDisruptionBudget"),
        ("networking.k8s.io/v1", "NetworkPolicy"),
    }


def probe_path(name: str) -> str:
    probe = CONTAINER[name]["httpGet"]
    assert probe["port"] in {"http", CONTAINER["ports"][0]["containerPort"]}, (
        f"{name} on port {probe['port']}"
    )
    return str(probe["path"])


def test_probes() -> None:
    assert probe_path("startupProbe") == "/healthz"
    assert probe_path("livenessProbe") == "/healthz", "liveness must not depend on models being loaded"
    assert probe_path("readinessProbe") == "/readyz"


def test_resources_have_requests_and_limits() -> None:
    resources = CONTAINER["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= resources[kind].keys(), f"resources.{kind}: {resources[kind]}"


def test_security_context() -> None:
    pod, container = POD["spec"].get("securityContext", {}), CONTAINER["securityContext"]
    assert container.get("runAsNonRoot", pod.get("runAsNonRoot")) is True
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"]["drop"] == ["ALL"]
    image_user = stage(parse(ROOT / "Dockerfile"), "runtime").all("USER")[-1].args
    assert f"{pod['runAsUser']}:{pod['runAsGroup']}" == image_user, "pod user differs from the image's"
    tmp = next(m for m in CONTAINER["volumeMounts"] if m["mountPath"] == "/tmp")
    volume = next(v for v in POD["spec"]["volumes"] if v["name"] == tmp["name"])
    assert "emptyDir" in volume, "/tmp must be a writable emptyDir on a read-only root"


def test_pieces_point_at_each_other() -> None:
    labels = POD["metadata"]["labels"]
    assert DEPLOYMENT["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert SERVICE["spec"]["selector"].items() <= labels.items(), "the Service selects no pod"
    pdb_selector = BY_KIND["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]
    assert pdb_selector.items() <= labels.items(), "the PodDisruptionBudget selects no pod"
    target = BY_KIND["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", DEPLOYMENT["metadata"]["name"])
    metrics = BY_KIND["HorizontalPodAutoscaler"]["spec"]["metrics"]
    assert [m["resource"]["name"] for m in metrics if m["type"] == "Resource"] == ["cpu"]
    assert CONTAINER["envFrom"] == [{"configMapRef": {"name": CONFIGMAP["metadata"]["name"]}}]
    port_names = {p["name"] for p in CONTAINER["ports"]}
    assert SERVICE["spec"]["ports"][0]["targetPort"] in port_names


def test_configmap_settings_are_valid_and_match_the_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = CONFIGMAP["data"]
    assert_valid_settings(settings, monkeypatch)
    assert settings["SHAPE_DETECTOR_HOST"] == "0.0.0.0"
    assert int(settings["SHAPE_DETECTOR_PORT"]) == CONTAINER["ports"][0]["containerPort"]
    image_env = stage(parse(ROOT / "Dockerfile"), "runtime").env()
    assert settings["SHAPE_DETECTOR_MODEL_DIR"] == image_env["SHAPE_DETECTOR_MODEL_DIR"], (
        "models not where the image has them"
    )


def test_an_inference_worker_per_cpu_of_the_limit() -> None:
    assert_one_call_per_cpu(CONFIGMAP["data"], CONTAINER["resources"]["limits"]["cpu"])


def test_image_tag_is_the_project_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert CONTAINER["image"] == compose["services"]["api"]["image"] == f"shape-detector:{version}"


def test_the_autoscaler_alone_sets_the_replica_count() -> None:
    # A Deployment's spec.replicas is applied as written: with it in the manifest, each
    # `kubectl apply -f deploy/k8s/` (a ConfigMap change, a new image) would set a fleet the
    # HorizontalPodAutoscaler had scaled up under load back to that count at once.
    target = BY_KIND["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert target["name"] == DEPLOYMENT["metadata"]["name"]
    assert "replicas" not in DEPLOYMENT["spec"], "spec.replicas fights the HorizontalPodAutoscaler"


def service_link_variables(service: dict[str, Any]) -> set[str]:
    """The variables Kubernetes puts into every pod of the namespace for a Service (unless the
    pod sets enableServiceLinks: false), e.g. SHAPE_DETECTOR_PORT=tcp://10.0.0.1:80."""
    prefix = service["metadata"]["name"].upper().replace("-", "_")
    names = {f"{prefix}_SERVICE_HOST", f"{prefix}_SERVICE_PORT", f"{prefix}_PORT"}
    for port in service["spec"]["ports"]:
        proto, number = port.get("protocol", "TCP"), port["port"]
        base = f"{prefix}_PORT_{number}_{proto}"
        names |= {base, f"{base}_PROTO", f"{base}_PORT", f"{base}_ADDR"}
        if "name" in port:
            names.add(f"{prefix}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}")
    return names


def test_no_service_link_variables_among_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # The Service shape-detector gives every pod SHAPE_DETECTOR_PORT=tcp://<ip>:80 and more
    # SHAPE_DETECTOR_* variables: the settings' namespace. The ConfigMap's own PORT wins today,
    # but without it the service would not start, and only on pods created after the Service.
    colliding = {v for v in service_link_variables(SERVICE) if v.startswith(ENV_PREFIX)}
    monkeypatch.setenv("SHAPE_DETECTOR_PORT", "tcp://10.0.0.1:80")
    with pytest.raises(SettingsError):
        load_settings(MODEL_DIR=ROOT / "models")
    if colliding:
        assert POD["spec"].get("enableServiceLinks") is False, (
            f"the Service's link variables {sorted(colliding)} fall among the settings: "
            "set enableServiceLinks: false"
        )


def test_pods_spread_over_nodes_where_they_can() -> None:
    # One node down takes as few pods as it can; a cluster of one node still runs them all.
    constraints = POD["spec"].get("topologySpreadConstraints", [])
    by_node = [c for c in constraints if c["topologyKey"] == "kubernetes.io/hostname"]
    assert len(by_node) == 1, f"pods not spread over nodes: {constraints}"
    (spread,) = by_node
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway", "DoNotSchedule leaves pods pending on one node"
    assert spread["maxSkew"] == 1
    assert spread["labelSelector"]["matchLabels"].items() <= POD["metadata"]["labels"].items(), (
        "the spread counts other pods than the Deployment's"
    )


def test_network_policy_lets_in_the_pods_port_only() -> None:
    policy = BY_KIND["NetworkPolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= POD["metadata"]["labels"].items(), (
        "the NetworkPolicy selects no pod"
    )
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    # The pod serves on one port: the API, the probes and /metrics alike, the Service's target.
    assert [p["name"] for p in CONTAINER["ports"]] == ["http"]
    assert SERVICE["spec"]["ports"][0]["targetPort"] == "http"
    assert policy["ingress"], "no ingress rule: nothing could reach the pods"
    for rule in policy["ingress"]:
        assert rule["ports"] == [{"port": "http", "protocol": "TCP"}], rule["ports"]
        # Pods of the namespace by default (a bare podSelector); other sources are named.
        assert rule.get("from"), "an ingress rule without `from` lets in every address"
        for peer in rule["from"]:
            assert "ipBlock" not in peer, f"addresses let in by range: {peer}"


def test_network_policy_lets_out_dns_only() -> None:
    # The service connects to nothing: it reads its models from the image or a volume, and the
    # image holds no OpenTelemetry SDK or exporter (only the API, which sends nothing).
    exporters = sorted(
        name for name in serve_pins() if name.startswith("opentelemetry-") and name != "opentelemetry-api"
    )
    assert not exporters, (
        f"the image holds {exporters}: let the pods reach the collector in networkpolicy.yaml, then update this test"
    )
    (rule,) = BY_KIND["NetworkPolicy"]["spec"]["egress"]
    assert sorted((p["protocol"], p["port"]) for p in rule["ports"]) == [("TCP", 53), ("UDP", 53)]
    for peer in rule["to"]:
        assert peer["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}, (
            f"DNS to other than the cluster's: {peer}"
        )
