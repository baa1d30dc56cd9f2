"""HTTP the framework leaves to the app: HEAD wherever GET is, routing errors (404, 405) in
each API's format, and an unexpected error (500) answered with every response's headers on a
connection that stays usable."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.api.deps import Runner
from app.core.registry import Registry
from app.main import create_app
from app.observability import JsonFormatter
from app.security import ApiKeys
from app.settings import load_settings
from tests.api.conftest import wait_ready

INTERNAL = "internal error; the request id is in X-Request-ID"
GET_PATHS = [
    "/healthz",
    "/readyz",
    "/v1/models",
    "/v1/models/bump",
    "/v2",
    "/v2/health/live",
    "/v2/health/ready",
    "/v2/models/bump",
    "/v2/models/bump/ready",
    "/v2/models/bump/versions/0.0.1",
    "/v2/models/bump/versions/0.0.1/ready",
    "/openapi.json",
    "/docs",
    "/redoc",
    "/",
    "/static/demo/demo.css",
]


def same_headers(r: httpx.Response) -> dict[str, str]:
    """The headers a HEAD must share with its GET (the request id differs by request)."""
    return {k: v for k, v in r.headers.items() if k != "x-request-id"}


@pytest.mark.parametrize("path", GET_PATHS)
def test_head_answers_as_get_without_a_body(client: TestClient, path: str) -> None:
    get, head = client.get(path), client.head(path)
    assert get.status_code == 200, get.text
    assert head.status_code == 200 and head.content == b""
    assert same_headers(head) == same_headers(get)
    assert "nosniff" in head.headers["x-content-type-options"]


def test_head_answers_every_status_as_get_does(client: TestClient) -> None:
    for path in ("/v1/models/nope", "/v2/models/nope", "/v2/nothing", "/nothing"):
        get, head = client.get(path), client.head(path)
        assert head.status_code == get.status_code == 404 and head.content == b"", path
        assert same_headers(head) == same_headers(get), path
    # A route that takes POST only answers HEAD as it answers GET.
    for path in ("/v1/detect", "/v2/models/bump/infer"):
        head = client.head(path)
        assert (head.status_code, head.headers["allow"]) == (405, "POST"), path


def test_metrics_answer_head(client: TestClient) -> None:
    head = client.head("/metrics")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"].startswith("text/plain")
    text = client.get("/metrics").text
    assert 'shape_detector_requests_total{method="HEAD",route="/healthz",status="200"}' in text


def test_allow_names_head_where_get_is_taken(client: TestClient) -> None:
    for path in ("/healthz", "/v1/models", "/v2/health/live"):
        r = client.post(path)
        assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD", path


def test_openapi_documents_no_head_operations(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p, ops in paths.items() if "head" in ops]


def test_a_header_that_may_come_once_given_twice_is_400(client: TestClient) -> None:
    """Two Content-Types (or two Inference-Header-Content-Lengths) leave the body's framing
    ambiguous: the request is refused, saying so, before its body is read."""
    body = json.dumps({"signals": [[0.0] * 300]}).encode()
    twice = [("Content-Type", "application/json"), ("Content-Type", "application/x-npy")]
    r = client.post("/v1/detect", content=body, headers=twice)
    assert r.status_code == 400, r.text
    assert r.json() == {"detail": "the Content-Type header is given 2 times; send it once"}
    assert client.post("/v1/detect", content=body, headers=twice[:1]).status_code == 200
    infer = json.dumps(
        {"inputs": [{"name": "signal", "shape": [1, 300], "datatype": "FP32", "data": [0.0] * 300}]}
    )
    twice = [("Inference-Header-Content-Length", str(len(infer)))] * 2
    r = client.post("/v2/models/bump/infer", content=infer.encode(), headers=twice)
    assert r.status_code == 400, r.text
    assert r.json() == {"error": "the Inference-Header-Content-Length header is given 2 times; send it once"}
    assert client.post("/v2/models/bump/infer", content=infer.encode(), headers=twice[:1]).status_code == 200


def test_v2_routing_errors_are_in_the_protocols_format(client: TestClient) -> None:
    for path in ("/v2/nothing", "/v2/models/bump/nothing", "/v2/models/bump/infer/more"):
        r = client.get(path)
        assert r.status_code == 404 and list(r.json()) == ["error"], path
        message = r.json()["error"]
        assert message.startswith(f"no route GET {path}: "), message
        assert "POST /v2/models/{name}[/versions/{version}]/infer" in message
    r = client.get("/v2/models/bump/infer")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json() == {"error": "GET is not allowed on /v2/models/bump/infer: use POST"}
    r = client.put("/v2/health/ready")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    assert r.json() == {"error": "PUT is not allowed on /v2/health/ready: use GET, HEAD"}


def test_other_routing_errors_keep_fastapis_format(client: TestClient) -> None:
    for path in ("/v1/nothing", "/nothing", "/v2x", "/static/nothing.css"):
        r = client.get(path)
        assert (r.status_code, r.json()) == (404, {"detail": "Not Found"}), path
    r = client.get("/v1/detect")
    assert (r.status_code, r.json(), r.headers["allow"]) == (405, {"detail": "Method Not Allowed"}, "POST")


# An unexpected error: a bug injected where a route calls into the service.


@pytest.fixture(scope="module")
def lenient(models_dir: Path) -> Iterator[TestClient]:
    """The service, its unexpected errors answered rather than raised into the test."""
    settings = load_settings(MODEL_DIR=models_dir, WINDOW=1024)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        wait_ready(c)
        yield c


@pytest.fixture
def error_log() -> Iterator[io.StringIO]:
    """The service's log lines (attached after ``create_app``, which sets the logger up)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("shape_detector")
    logger.addHandler(handler)
    yield stream
    logger.removeHandler(handler)


def broken(*_: Any) -> Any:
    raise RuntimeError("injected bug")


async def broken_async(*_: Any) -> Any:
    raise RuntimeError("injected bug")


BUGS = {
    # the hot path, served by DirectRoutes
    "detect": ("POST", "/v1/detect", Runner, "detect", broken_async),
    # a route FastAPI serves
    "models": ("GET", "/v1/models", Registry, "models", broken),
    # the same route, asked with HEAD
    "models-head": ("HEAD", "/v1/models", Registry, "models", broken),
}


@pytest.mark.parametrize(("method", "path", "owner", "name", "bug"), BUGS.values(), ids=BUGS.keys())
def test_an_unexpected_error_is_500_with_every_responses_headers(
    lenient: TestClient,
    error_log: io.StringIO,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    path: str,
    owner: type,
    name: str,
    bug: Any,
) -> None:
    monkeypatch.setattr(owner, name, bug)
    body = {"signals": [[0.0] * 100]} if method == "POST" else None
    r = lenient.request(method, path, json=body, headers={"X-Request-ID": f"bug-{method}"})
    assert r.status_code == 500
    if method != "HEAD":
        assert r.json() == {"detail": INTERNAL}
    assert r.headers["x-request-id"] == f"bug-{method}"
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["referrer-policy"] == "no-referrer"
    assert "connection" not in r.headers  # answered inside the app: the connection stays open
    lines = [json.loads(line) for line in error_log.getvalue().splitlines()]
    (line,) = [doc for doc in lines if doc["message"] == "unhandled error"]
    assert line["request_id"] == f"bug-{method}" and "RuntimeError: injected bug" in line["exc"]
    monkeypatch.undo()
    assert lenient.request(method, path, json=body).status_code == 200


@pytest.fixture
def keyed_app(models_dir: Path) -> Any:
    return create_app(load_settings(MODEL_DIR=models_dir, API_KEYS="k" * 20))


def test_an_unexpected_error_in_a_middleware_closes_the_connection_and_says_so(
    keyed_app: Any, error_log: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error outside the routes (here in the key check) reaches Starlette's server-error
    middleware, outside every layer: its answer carries their headers itself, and says the
    server closes the connection."""
    app = keyed_app
    monkeypatch.setattr(ApiKeys, "check", broken)
    r = TestClient(app, raise_server_exceptions=False).get("/v1/models", headers={"X-Request-ID": "mw"})
    assert (r.status_code, r.json()) == (500, {"detail": INTERNAL})
    assert r.headers["x-request-id"] == "mw" and r.headers["connection"] == "close"
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["referrer-policy"] == "no-referrer"
    assert "RuntimeError: injected bug" in error_log.getvalue()
