"""docker-compose.yml: valid against the Compose Specification, and shaped as deployed.

No Docker engine and no `docker compose` plugin here, so the file is validated against the
compose-spec JSON schema that check-jsonschema ships (`--builtin-schema vendor.compose-spec`,
offline), then its structure is checked against the Dockerfile and the nginx config.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.dockerfile import parse, stage
from tests.deploy.processes import ROOT
from tests.deploy.settings_env import assert_one_call_per_cpu, assert_valid_settings

COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
API, NGINX, TRAIN = SERVICES["api"], SERVICES["nginx"], SERVICES["train"]
STAGES = parse(ROOT / "Dockerfile")
NGINX_CONF = (ROOT / "deploy" / "nginx" / "default.conf").read_text()


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)]
    return subprocess.run(command, capture_output=True, text=True)


def test_valid_against_the_compose_specification() -> None:
    r = validate(COMPOSE_FILE)
    assert r.returncode == 0, (
        f"docker-compose.yml does not follow the Compose Specification:\n{r.stdout}{r.stderr}"
    )


def test_the_validation_rejects_a_misspelled_key(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_FILE.read_text().replace("read_only:", "readonly:", 1))
    r = validate(broken)
    assert r.returncode != 0 and "readonly" in r.stdout, (
        f"the schema check accepted a broken file:\n{r.stdout}"
    )


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Short-syntax volumes: container path -> (host path, mode)."""
    result = {}
    for volume in service.get("volumes", []):
        host, container, *mode = volume.split(":")
        result[container] = (host, mode[0] if mode else "rw")
    return result


def test_api_is_hardened_and_reached_through_nginx_only() -> None:
    assert API["build"]["target"] == "runtime"
    assert "ports" not in API, "api publishes a port: a scaled api would collide, and nginx is the entry"
    assert API["read_only"] is True
    assert any(t.split(":")[0] == "/tmp" for t in API["tmpfs"]), "read-only api without a /tmp tmpfs"
    assert API["cap_drop"] == ["ALL"] and "cap_add" not in API
    assert "no-new-privileges:true" in API["security_opt"]
    assert API["restart"] in {"always", "unless-stopped", "on-failure"}
    limits = API["deploy"]["resources"]["limits"]
    assert limits.get("cpus") and limits.get("memory"), f"api limits: {limits}"


def test_api_healthcheck_is_the_images() -> None:
    # test_runtime_install.py runs the Dockerfile's HEALTHCHECK against a real service.
    probe = stage(STAGES, "runtime").one("HEALTHCHECK").exec_form()
    assert API["healthcheck"]["test"] == ["CMD", *probe]


def test_api_settings_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    assert_valid_settings({k: str(v) for k, v in API["environment"].items()}, monkeypatch)


def test_an_inference_worker_per_cpu_of_the_limit() -> None:
    env = {k: str(v) for k, v in API["environment"].items()}
    assert_one_call_per_cpu(env, API["deploy"]["resources"]["limits"]["cpus"])


def test_train_profile_writes_where_the_api_reads() -> None:
    assert TRAIN["profiles"] == ["train"], "train must run only with --profile train"
    assert TRAIN["build"]["target"] == "train"
    model_dir = stage(STAGES, "runtime").env()["SHAPE_DETECTOR_MODEL_DIR"]
    out = stage(STAGES, "train").one("ENTRYPOINT").exec_form()[-1]
    api_host, api_mode = mounts(API)[model_dir]
    train_host, train_mode = mounts(TRAIN)[out]
    assert api_host == train_host, f"api reads {api_host}, train writes {train_host}"
    assert (api_mode, train_mode) == ("ro", "rw")


def in_nginx_conf(pattern: str) -> str:
    m = re.search(pattern, NGINX_CONF, re.MULTILINE)
    assert m, f"deploy/nginx/default.conf has no line matching {pattern!r}"
    return m[1]


def test_nginx_fronts_the_api() -> None:
    image = re.fullmatch(r"nginx:(\d+)\.(\d+)\.(\d+)-alpine", NGINX["image"])
    assert image, f"nginx image {NGINX['image']!r}: want an exact nginx:X.Y.Z-alpine"
    if " resolve" in NGINX_CONF:
        version = tuple(int(n) for n in image.groups())
        assert version >= (1, 27, 3), f"{NGINX['image']} predates the upstream `resolve` parameter"
    listen = in_nginx_conf(r"^\s*listen (\d+);")
    published = [p.rsplit(":", 1)[1] for p in NGINX["ports"]]
    assert published == [listen], f"nginx publishes {published} but listens on {listen}"
    assert mounts(NGINX)["/etc/nginx/conf.d/default.conf"] == ("./deploy/nginx/default.conf", "ro")
    assert NGINX["depends_on"]["api"]["condition"] == "service_healthy"
    upstream_port = in_nginx_conf(r"server api:(\d+) ")
    assert API["expose"] == [upstream_port], f"nginx's upstream port {upstream_port} is not the api's"


def test_nginx_runs_with_only_the_capabilities_it_needs() -> None:
    # The image starts nginx as root: it creates its temporary directories and hands them to
    # the worker user (CHOWN), then starts the workers as that user (SETGID, SETUID).
    # test_nginx.py runs nginx with exactly this set, and shows each one is needed.
    assert NGINX["cap_drop"] == ["ALL"]
    needed = {"CHOWN", "SETGID", "SETUID"}
    if int(in_nginx_conf(r"^\s*listen (\d+);")) < 1024:
        needed.add("NET_BIND_SERVICE")
    assert sorted(NGINX["cap_add"]) == sorted(needed), f"nginx's capabilities: {NGINX['cap_add']}"
    assert "no-new-privileges:true" in NGINX["security_opt"]
    assert NGINX["read_only"] is True
    assert NGINX["deploy"]["resources"]["limits"].get("memory"), "nginx without a memory limit"


def test_nginx_body_limit_matches_the_api() -> None:
    size = int(in_nginx_conf(r"client_max_body_size (\d+)m;")) * 2**20
    api = int(API["environment"]["SHAPE_DETECTOR_MAX_BODY_BYTES"])
    assert size == api, f"nginx accepts bodies up to {size} bytes, the api up to {api}"


def compose_bytes(value: str) -> int:
    """A Compose byte value: 64m, 1g, 128mb, 512k, 1024."""
    m = re.fullmatch(r"(\d+)([kmg]?)b?", value.strip().lower())
    assert m, f"not a byte value: {value!r}"
    return int(m[1]) * 1024 ** " kmg".index(m[2] or " ")


def k8s_bytes(value: str) -> int:
    """A Kubernetes memory quantity in binary units: 512Mi, 1Gi."""
    m = re.fullmatch(r"(\d+)([KMG])i", value)
    assert m, f"not a binary memory quantity: {value!r}"
    return int(m[1]) * 1024 ** " KMG".index(m[2])


def test_api_reserves_and_may_use_what_a_kubernetes_pod_requests_and_may_use() -> None:
    """One container, one footprint: the memory a replica holds once it has served (well above
    the 200 MiB of a fresh start) is what the Deployment requests; a reservation below it lets
    the host reclaim a busy replica's memory under pressure."""
    pod = yaml.safe_load((ROOT / "deploy" / "k8s" / "deployment.yaml").read_text())
    resources = pod["spec"]["template"]["spec"]["containers"][0]["resources"]
    compose = API["deploy"]["resources"]
    assert compose_bytes(compose["reservations"]["memory"]) == k8s_bytes(resources["requests"]["memory"]), (
        f"compose reserves {compose['reservations']['memory']}, a pod requests {resources['requests']['memory']}"
    )
    assert compose_bytes(compose["limits"]["memory"]) == k8s_bytes(resources["limits"]["memory"])
    assert float(compose["limits"]["cpus"]) == float(resources["limits"]["cpu"])


def test_nginx_buffers_request_bodies_outside_its_memory_limit() -> None:
    # nginx writes each request body larger than 16 KiB (up to client_max_body_size) to a file
    # under /var/cache/nginx before passing it on, so that it can retry it on another replica.
    # A tmpfs there is memory charged to the container: a few large uploads at once would
    # exceed the limit and the kernel would kill nginx, and with it every connection.
    limit = compose_bytes(NGINX["deploy"]["resources"]["limits"]["memory"])
    tmpfs = {entry.split(":")[0]: entry for entry in NGINX.get("tmpfs", [])}
    if "/var/cache/nginx" in tmpfs:
        size = re.search(r"size=(\w+)", tmpfs["/var/cache/nginx"])
        assert size, "an unbounded tmpfs for nginx's request bodies"
        assert compose_bytes(size[1]) + 64 * 2**20 <= limit, (
            "nginx's tmpfs for bodies can fill its memory limit"
        )
    else:
        assert "/var/cache/nginx" in mounts(NGINX), "nginx cannot write its request bodies (read-only root)"


def seconds(duration: str) -> float:
    """A Compose duration: 40s, 1m30s, 500ms."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def test_nginx_lets_requests_in_flight_finish_when_it_stops() -> None:
    # The nginx image stops on SIGQUIT, gracefully: it finishes the requests in flight, which
    # last as long as they do on the api. Docker kills it after 10 s unless told otherwise.
    assert seconds(NGINX.get("stop_grace_period", "10s")) >= seconds(API["stop_grace_period"])
