"""deploy/k8s/kserve/: the KServe InferenceService (a custom predictor speaking /v2).

No KServe CRD schema ships offline, so: its pod part is checked strictly against Kubernetes'
own Pod schema (kubernetes-validate), its KServe fields against the v1beta1 API's field
names, and the rest for consistency with the image, the service and the plain manifests.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import latest_version

from app.main import create_app
from app.settings import ENV_PREFIX, load_settings
from tests.deploy.dockerfile import parse, stage
from tests.deploy.processes import ROOT
from tests.deploy.settings_env import assert_one_call_per_cpu, assert_valid_settings

K8S = ROOT / "deploy" / "k8s"
PATH = K8S / "kserve" / "inferenceservice.yaml"
(ISVC,) = [doc for doc in yaml.safe_load_all(PATH.read_text()) if doc]
PREDICTOR: dict[str, Any] = ISVC["spec"]["predictor"]
(CONTAINER,) = PREDICTOR["containers"]
ENV = {e["name"]: e["value"] for e in CONTAINER["env"]}
# serving.kserve.io/v1beta1 ComponentExtensionSpec: the predictor's fields beside its PodSpec.
EXTENSION_FIELDS = {
    "minReplicas",
    "maxReplicas",
    "scaleTarget",
    "scaleMetric",
    "containerConcurrency",
    "timeout",
    "canaryTrafficPercent",
    "logger",
    "batcher",
    "labels",
    "annotations",
    "deploymentStrategy",
}


def test_not_picked_up_by_the_plain_manifests_tests() -> None:
    assert PATH not in set(K8S.glob("*.yaml")), "tests/deploy/test_k8s.py validates those as plain Kubernetes"


def test_kind_and_name() -> None:
    assert (ISVC["apiVersion"], ISVC["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", ISVC["metadata"]["name"]), "KServe's name rule"
    assert set(ISVC["spec"]) == {"predictor"}
    mode = ISVC["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
    assert mode in {"RawDeployment", "Standard", "Serverless", "Knative"}


@pytest.mark.parametrize("version", ["1.28.0", latest_version()])
def test_pod_part_is_a_valid_pod_spec(version: str) -> None:
    """Everything but the KServe extension fields is a PodSpec: strict, so a misspelt field fails."""
    pod_spec = {k: v for k, v in PREDICTOR.items() if k not in EXTENSION_FIELDS}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"}, "spec": pod_spec}
    try:
        kubernetes_validate.validate(pod, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        pytest.fail(f"predictor pod spec invalid at {'.'.join(map(str, e.path))}: {e.message}")


def test_custom_container_speaks_v2() -> None:
    assert CONTAINER["name"] == "kserve-container", "KServe serves the container of that name"
    # A custom predictor has no protocolVersion field (model formats do): KServe reads this.
    assert ENV["PROTOCOL"] == "v2"
    assert "protocolVersion" not in PREDICTOR and "model" not in PREDICTOR


def test_image_port_and_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert CONTAINER["image"] == f"shape-detector:{version}"
    deployment = yaml.safe_load((K8S / "deployment.yaml").read_text())
    assert CONTAINER["image"] == deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    settings = {k: v for k, v in ENV.items() if k.startswith(ENV_PREFIX)}
    assert_valid_settings(settings, monkeypatch)
    (port,) = CONTAINER["ports"]
    assert int(settings["SHAPE_DETECTOR_PORT"]) == port["containerPort"]
    assert settings["SHAPE_DETECTOR_HOST"] == "0.0.0.0"
    image_env = stage(parse(ROOT / "Dockerfile"), "runtime").env()
    assert settings["SHAPE_DETECTOR_MODEL_DIR"] == image_env["SHAPE_DETECTOR_MODEL_DIR"]


def test_an_inference_worker_per_cpu_of_the_limit() -> None:
    settings = {k: v for k, v in ENV.items() if k.startswith(ENV_PREFIX)}
    assert_one_call_per_cpu(settings, CONTAINER["resources"]["limits"]["cpu"])


def test_probes_use_the_v2_health_endpoints() -> None:
    port = CONTAINER["ports"][0]["containerPort"]
    paths = {}
    for name in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = CONTAINER[name]["httpGet"]
        assert probe["port"] in {port, CONTAINER["ports"][0]["name"]}, f"{name} on port {probe['port']}"
        paths[name] = probe["path"]
    assert paths["readinessProbe"] == "/v2/health/ready"
    assert paths["livenessProbe"] == paths["startupProbe"] == "/v2/health/live"
    served = create_app(load_settings(MODEL_DIR=ROOT / "models")).openapi()["paths"]
    assert set(paths.values()) <= served.keys(), "the probes must hit the service's endpoints"


def test_hardened_like_the_plain_deployment() -> None:
    pod, container = PREDICTOR["securityContext"], CONTAINER["securityContext"]
    assert pod["runAsNonRoot"] is True and container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False and container["capabilities"]["drop"] == ["ALL"]
    image_user = stage(parse(ROOT / "Dockerfile"), "runtime").all("USER")[-1].args
    assert f"{pod['runAsUser']}:{pod['runAsGroup']}" == image_user
    tmp = next(m for m in CONTAINER["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in PREDICTOR["volumes"] if v["name"] == tmp["name"])
    assert {"cpu", "memory"} <= CONTAINER["resources"]["requests"].keys() & CONTAINER["resources"][
        "limits"
    ].keys()
    assert PREDICTOR["minReplicas"] <= PREDICTOR["maxReplicas"]


def test_plain_service_does_not_select_these_pods() -> None:
    selector = yaml.safe_load((K8S / "service.yaml").read_text())["spec"]["selector"]
    labels = {**ISVC["metadata"].get("labels", {}), **PREDICTOR.get("labels", {})}
    assert not selector.items() <= labels.items()
    # Nor does the plain NetworkPolicy: KServe's own traffic is not the plain pods'.
    policy = yaml.safe_load((K8S / "networkpolicy.yaml").read_text())["spec"]["podSelector"]["matchLabels"]
    assert not policy.items() <= labels.items()


def test_no_service_link_variables_among_the_settings() -> None:
    # KServe's Service (shape-detector-predictor) and the plain one, if in the same namespace,
    # would put SHAPE_DETECTOR_* variables into the pod: see tests/deploy/test_k8s.py.
    assert PREDICTOR.get("enableServiceLinks") is False
