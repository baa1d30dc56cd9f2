"""Health, readiness, metrics, logging, docs and settings through the app."""

import errno
import io
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator

from app.core.model import InferenceOptions
from app.core.registry import Registry
from app.main import create_app
from app.settings import SettingsError, load_settings
from tests.api.conftest import wait_ready


def test_health_and_ready(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"ready": True, "models": {"bump": "ready", "other": "ready"}, "reasons": []}


def test_metrics(client: TestClient) -> None:
    client.post("/v1/detect", json={"signals": [[0.0] * 100, [1.0] * 200]})
    client.post("/v1/detect", json={"signals": []})
    text = client.get("/metrics").text
    assert 'shape_detector_requests_total{method="POST",route="/v1/detect",status="200"}' in text
    assert 'shape_detector_requests_total{method="POST",route="/v1/detect",status="422"}' in text
    assert (
        'shape_detector_request_duration_seconds_bucket{le="0.005",method="POST",route="/v1/detect"}' in text
    )
    assert 'shape_detector_samples_total{model="bump"}' in text
    assert 'shape_detector_signals_total{model="bump"}' in text
    assert "shape_detector_inference_seconds_count" in text
    assert 'shape_detector_model_info{model="other",version="0.0.1"} 1.0' in text
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    batches = float(values['shape_detector_batches_total{model="bump"}'])
    batched = float(values['shape_detector_batched_requests_total{model="bump"}'])
    assert batched >= batches >= 1  # the request above was scored in a batch
    assert float(values['shape_detector_dropped_requests_total{model="bump"}']) == 0
    client.post("/v1/detect", json={"signals": [[0.0] * 100]})
    again = dict(line.rsplit(" ", 1) for line in client.get("/metrics").text.splitlines() if line[:1] != "#")
    assert float(again['shape_detector_batched_requests_total{model="bump"}']) == batched + 1


def test_requests_in_flight_does_not_count_the_scrape_reading_it(client: TestClient) -> None:
    """The gauge counts the requests the service is serving: with none, a scrape reads 0, not 1
    for itself (``tests/reliability/test_shutdown.py`` reads it with requests held in flight)."""
    for method in ("GET", "HEAD"):
        client.request(method, "/metrics")  # earlier scrapes leave nothing counted either
    text = client.get("/metrics").text
    (line,) = [line for line in text.splitlines() if line.startswith("shape_detector_requests_in_flight ")]
    assert line == "shape_detector_requests_in_flight 0.0"


def test_metrics_name_only_the_common_methods(client: TestClient) -> None:
    """Each method uvicorn parses would add series (with their buckets) to every route: any
    but GET, HEAD, POST, PUT, DELETE, OPTIONS and PATCH is counted as "other"."""
    for method in ("PROPFIND", "MKCOL", "PURGE", "LOCK", "SEARCH"):
        for path in ("/v1/detect", "/healthz", "/nothing"):
            client.request(method, path)
    for method in ("PUT", "DELETE", "OPTIONS", "PATCH"):
        client.request(method, "/healthz")
    text = client.get("/metrics").text
    methods = set(re.findall(r'^shape_detector_request[^{]*\{.*?method="([^"]*)"', text, re.MULTILINE))
    assert methods <= {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "other"}, methods
    assert {"other", "PUT", "DELETE", "OPTIONS", "PATCH"} <= methods
    assert 'shape_detector_requests_total{method="other",route="/v1/detect",status="405"} 5.0' in text
    assert 'shape_detector_requests_total{method="other",route="unmatched",status="404"} 5.0' in text


def test_metrics_name_the_docs_schema_and_static_files_by_their_templates(client: TestClient) -> None:
    """``/openapi.json`` and ``/static`` are plain Starlette routes, which FastAPI does not name in
    the request's scope: they are labelled by their templates, not as paths no route takes."""
    series = (
        'shape_detector_requests_total{method="GET",route="/openapi.json",status="200"}',
        'shape_detector_requests_total{method="GET",route="/static",status="404"}',
        'shape_detector_requests_total{method="GET",route="unmatched",status="404"}',
        'shape_detector_requests_total{method="HEAD",route="/openapi.json",status="200"}',
    )

    def counts() -> list[float]:
        lines = client.get("/metrics").text.splitlines()
        values = dict(line.rsplit(" ", 1) for line in lines if line and not line.startswith("#"))
        return [float(values.get(name, 0)) for name in series]

    before = counts()
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/static/demo/nothing.js").status_code == 404
    assert client.get("/nowhere").status_code == 404
    assert client.head("/openapi.json").status_code == 200
    assert [after - earlier for after, earlier in zip(counts(), before, strict=True)] == [1, 1, 1, 1]


def test_requests_answered_before_the_router_are_counted_under_their_route(models_dir: Path) -> None:
    """A 401 without a key, a refused CORS preflight and a 503 while draining are answered before
    the router runs: they were all counted as route "unmatched", which is for a path no route
    takes, so a route's series missed them."""
    origin = "https://app.example.com"
    settings = load_settings(MODEL_DIR=models_dir, API_KEYS="k" * 24, CORS_ORIGINS=origin)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        assert c.post("/v1/detect", json={"signals": [[0.0] * 100]}).status_code == 401
        assert c.get("/v1/models/bump").status_code == 401
        assert c.post("/v1/models").status_code == 401  # the path of a GET route: still that route
        assert c.post("/admin/models/bump/reload").status_code == 401
        assert c.get("/nowhere").status_code == 401  # a path no route takes
        preflight = {"Origin": "https://evil.example.com", "Access-Control-Request-Method": "POST"}
        assert c.options("/v1/detect", headers=preflight).status_code == 400
        c.app_state["lifecycle"].begin_drain()
        assert c.post("/v2/models/bump/infer", json={}).status_code == 503
        text = c.get("/metrics").text
    counted = set(re.findall(r"^shape_detector_requests_total\{(.*)\} 1\.0$", text, re.MULTILINE))
    assert {labels for labels in counted if 'route="/readyz"' not in labels} == {
        'method="POST",route="/v1/detect",status="401"',
        'method="GET",route="/v1/models/{name}",status="401"',
        'method="POST",route="/v1/models",status="401"',
        'method="POST",route="/admin/models/{name}/reload",status="401"',
        'method="GET",route="unmatched",status="401"',
        'method="OPTIONS",route="/v1/detect",status="400"',
        'method="POST",route="/v2/models/{name}/infer",status="503"',
    }, text


def test_request_id_and_structured_log(client: TestClient) -> None:
    from app.observability import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    access = logging.getLogger("shape_detector.access")
    access.addHandler(handler)
    try:
        r = client.post(
            "/v1/detect", json={"signals": [[0.0] * 100] * 3}, headers={"X-Request-ID": "abc-123"}
        )
        # The line is written by the access log's thread, within its interval.
        deadline = time.monotonic() + 10
        while '"abc-123"' not in stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        access.removeHandler(handler)
    assert r.headers["x-request-id"] == "abc-123"
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    mine = [doc for doc in lines if doc.get("request_id") == "abc-123"]
    assert len(mine) == 1
    f = mine[0]
    assert (f["method"], f["path"], f["status"], f["signals"], f["samples"]) == (
        "POST",
        "/v1/detect",
        200,
        3,
        300,
    )
    assert f["duration_ms"] > 0 and f["logger"] == "shape_detector.access"
    generated = client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"}).headers["x-request-id"]
    assert len(generated) == 32 and generated != "bad id with spaces"


def test_openapi_documents_bodies_and_errors(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path in ("/v1/detect", "/v1/models/{name}/detect"):
        op = spec["paths"][path]["post"]
        content = op["requestBody"]["content"]
        assert content["application/json"]["examples"]
        assert "application/x-npy" in content
        assert {"200", "400", "404", "413", "415", "422", "503"} <= set(op["responses"])
    assert "404" in spec["paths"]["/v1/models/{name}"]["get"]["responses"]


def test_openapi_documents_no_422_where_no_request_can_fail_validation(client: TestClient) -> None:
    """GET /v1/models/{name} takes any name (one it does not know is its documented 404), so
    FastAPI's default 422 is not documented there, nor its schemas, which no operation sends;
    the 422s the service does send stay documented."""
    spec = client.get("/openapi.json").json()
    responses = spec["paths"]["/v1/models/{name}"]["get"]["responses"]
    assert set(responses) == {"200", "404", "503"}
    for name in ("nope", "%00", "a" * 300, "%C3%A9", "%20"):
        r = client.get(f"/v1/models/{name}")
        assert r.status_code == 404 and r.json()["detail"].startswith("no model named"), r.text
    assert not {"HTTPValidationError", "ValidationError"} & set(spec["components"]["schemas"])
    assert "422" in spec["paths"]["/v1/detect"]["post"]["responses"]
    assert "422" in spec["paths"]["/admin/models/{name}/reload"]["post"]["responses"]


def documented_answer(spec: dict[str, Any], path: str, method: str, status: str) -> Draft202012Validator:
    """A validator of the JSON answer the document gives for ``status``, its references resolved."""
    schema = spec["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
    return Draft202012Validator({**schema, "components": spec["components"]})


@pytest.mark.parametrize("path", ["/v1/detect", "/v1/models/{name}/detect"])
def test_openapi_documents_the_answer_its_examples_get(client: TestClient, path: str) -> None:
    """Each example request of the document, sent as it is, gets an answer of the documented
    shape (with return_scores too), field for field."""
    spec = client.get("/openapi.json").json()
    op = spec["paths"][path]["post"]
    answer = documented_answer(spec, path, "post", "200")
    assert answer.schema["$ref"] == "#/components/schemas/DetectResponse"
    for example in op["requestBody"]["content"]["application/json"]["examples"].values():
        for body in (example["value"], {**example["value"], "return_scores": True}):
            r = client.post(path.replace("{name}", "bump"), json=body)
            assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text
            answer.validate(r.json())
            results = r.json()["results"]
            assert len(results) == len(body["signals"])
            assert all(("scores" in result) == body.get("return_scores", False) for result in results)


def test_every_example_of_the_openapi_document_is_a_request_that_succeeds(client: TestClient) -> None:
    """Swagger UI's "Try it out" and the contract tests send a document's examples as they are:
    each one, of every body type, is a request the service answers 200."""
    spec = client.get("/openapi.json").json()
    version = client.get("/v2/models/bump").json()["versions"][0]
    sent = []
    for path, item in spec["paths"].items():
        url = path.replace("{name}", "bump").replace("{version}", version)
        for method, op in item.items():
            for media_type, content in op.get("requestBody", {}).get("content", {}).items():
                examples = [example["value"] for example in content.get("examples", {}).values()]
                examples += [content["example"]] if "example" in content else []
                for example in examples:
                    body = json.dumps(example) if media_type == "application/json" else example
                    r = client.request(method, url, content=body, headers={"Content-Type": media_type})
                    assert r.status_code == 200, (method, path, media_type, r.text)
                    sent.append((path, media_type))
    assert {path for path, _ in sent} >= {"/v1/detect", "/v1/models/{name}/detect", "/v2/models/{name}/infer"}


@pytest.mark.parametrize(
    ("headers", "status", "named"),
    [
        ({"Content-Type": "text/plain"}, 415, "Content-Type"),
        ({"Content-Type": "application/json", "Content-Encoding": "gzip"}, 415, "Content-Encoding"),
        (
            {"Content-Type": "application/json", "Transfer-Encoding": "gzip, chunked"},
            415,
            "Transfer-Encoding",
        ),
        ([("Content-Type", "application/json")] * 2, 400, "Content-Type header given twice"),
    ],
)
def test_openapi_describes_each_refusal_under_its_status(
    client: TestClient, headers: Any, status: int, named: str
) -> None:
    """What a client sees (the status of a refused request) is what the document describes."""
    r = client.post("/v1/detect", content=b'{"signals": [[0.0]]}', headers=headers)
    assert r.status_code == status, r.text
    description = client.get("/openapi.json").json()["paths"]["/v1/detect"]["post"]["responses"][str(status)]
    assert named in description["description"]


def test_docs_pages_use_local_assets(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assert "cdn.jsdelivr" not in html and "fonts.googleapis" not in html
    assert client.get("/static/vendor/swagger-ui/swagger-ui-bundle.js").status_code == 200
    assert client.get("/static/vendor/redoc/redoc.standalone.js").status_code == 200


def test_a_bad_model_is_not_served_but_the_others_are(models_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(models_dir, root)
    with (root / "other" / "model.onnx").open("ab") as fh:
        fh.write(b"tampered")
    settings = load_settings(MODEL_DIR=root)
    with TestClient(create_app(settings)) as c:
        for _ in range(200):
            states = c.get("/readyz").json()["models"]
            if "loading" not in states.values():
                break
        r = c.get("/readyz")
        assert r.status_code == 503
        assert r.json()["models"] == {"bump": "ready", "other": "failed"}
        assert "sha256" in r.json()["reasons"][0]
        assert c.post("/v1/detect", json={"signals": [[0.0] * 100]}).status_code == 200
        bad = c.post("/v1/models/other/detect", json={"signals": [[0.0] * 100]})
        assert bad.status_code == 503 and "sha256" in bad.json()["detail"]
        assert bad.headers["retry-after"]
        assert [m["name"] for m in c.get("/v1/models").json()["models"]] == ["bump"]
        metrics = c.get("/metrics").text.splitlines()
        assert 'shape_detector_model_ready{model="bump"} 1.0' in metrics
        assert 'shape_detector_model_ready{model="other"} 0.0' in metrics
        assert [line for line in metrics if line.startswith("shape_detector_model_info{")] == [
            'shape_detector_model_info{model="bump",version="0.0.1"} 1.0'
        ]
        assert not any(line.startswith('shape_detector_queue_depth{model="other"}') for line in metrics)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SHAPE_DETECTOR_MAX_SIGNALS": "0"}, "SHAPE_DETECTOR_MAX_SIGNALS='0'"),
        ({"SHAPE_DETECTOR_MAX_SIGNALS": "many"}, "SHAPE_DETECTOR_MAX_SIGNALS='many'"),
        ({"SHAPE_DETECTOR_MODEL_DIR": "/nonexistent"}, "MODEL_DIR: '/nonexistent' is not a directory"),
        ({"SHAPE_DETECTOR_DEFAULT_MODEL": "nope"}, "DEFAULT_MODEL: 'nope' is not a model directory"),
        ({"SHAPE_DETECTOR_LOG_LEVEL": "loud"}, "SHAPE_DETECTOR_LOG_LEVEL='loud'"),
        ({"SHAPE_DETECTOR_PORT": "70000"}, "SHAPE_DETECTOR_PORT='70000'"),
        # as many threads started with each model's session: 100 000 were taken
        (
            {"SHAPE_DETECTOR_INTRA_OP_THREADS": "100000"},
            "SHAPE_DETECTOR_INTRA_OP_THREADS='100000': above 64: onnxruntime threads per call, started "
            "with each model's session (0: onnxruntime's default, one per core); give at least 0 and at most 64",
        ),
        # A bound said bare, "Input should be greater than or equal to 1024": what it is for, and why.
        (
            {"SHAPE_DETECTOR_MAX_BODY_BYTES": "100"},
            "SHAPE_DETECTOR_MAX_BODY_BYTES='100': below 1024: the largest request body, in bytes (the "
            "default, 268435456, is 256 MiB); less than 1 KiB would refuse all but the smallest requests; "
            "give at least 1024",
        ),
        (
            {"SHAPE_DETECTOR_MAX_BATCH_SAMPLES": "512"},
            "SHAPE_DETECTOR_MAX_BATCH_SAMPLES='512': below 1024: samples per onnxruntime call",
        ),
        ({"SHAPE_DETECTOR_WINDOW": "100"}, "SHAPE_DETECTOR_WINDOW='100': below 256: the window length"),
        (
            {"SHAPE_DETECTOR_GC_THRESHOLD": "100000000"},
            "SHAPE_DETECTOR_GC_THRESHOLD='100000000': above 10000000: the garbage collector's first "
            "threshold",
        ),
        (
            {"SHAPE_DETECTOR_CPU_LATENCY_US": "3000000000"},
            "which the kernel takes as a 32-bit number; more than 2000000000 µs (over half an hour) is as "
            "good as none (leave it unset for no request); give at least 0 and at most 2000000000",
        ),
        # The tiny test models need 413 samples (WindowPlan), more than the least value 256.
        ({"SHAPE_DETECTOR_WINDOW": "256"}, "SHAPE_DETECTOR_WINDOW: 256 samples is too short"),
        ({"SHAPE_DETECTOR_WINDOW": "412"}, "set at least 413 (bump needs 413, other needs 413;"),
        # uvicorn could not resolve it once the models had loaded: "Name or service not known".
        (
            {"SHAPE_DETECTOR_HOST": "127.0.0.1:8000"},
            "SHAPE_DETECTOR_HOST='127.0.0.1:8000': not an address to",
        ),
        (
            {"SHAPE_DETECTOR_HOST": "999.1.1.1"},
            "SHAPE_DETECTOR_HOST='999.1.1.1': not an address to listen on",
        ),
        # An empty path is '.' to pathlib: models served from the directory the process started in.
        ({"SHAPE_DETECTOR_MODEL_DIR": ""}, "SHAPE_DETECTOR_MODEL_DIR='': empty: give the models' directory"),
        (
            {"SHAPE_DETECTOR_API_KEYS_FILE": " "},
            "SHAPE_DETECTOR_API_KEYS_FILE=' ': empty: give the keys file's",
        ),
        # Kubernetes' link variable for a Service named shape-detector, where the port was not given.
        (
            {"SHAPE_DETECTOR_PORT": "tcp://10.96.0.12:80"},
            "SHAPE_DETECTOR_PORT='tcp://10.96.0.12:80': Input should be a valid integer, unable to "
            "parse string as an integer; tcp://... is a Kubernetes service link for a Service named "
            "shape-detector: set enableServiceLinks: false in the pod's spec, or give SHAPE_DETECTOR_PORT",
        ),
        # Waits the server cannot hold: uvicorn's timeout (ceil of inf) and the loader's join
        # (beyond threading.TIMEOUT_MAX) failed with a traceback, at the start or at shutdown.
        (
            {"SHAPE_DETECTOR_SHUTDOWN_TIMEOUT_S": "inf"},
            "SHAPE_DETECTOR_SHUTDOWN_TIMEOUT_S='inf': above 86400: after SIGTERM, the longest wait for the "
            "requests in flight, in seconds; at most a day, a wait the server's timers and threads can "
            "hold; give at least 0 and at most 86400",
        ),
        (
            {"SHAPE_DETECTOR_SHUTDOWN_TIMEOUT_S": "1e10"},
            "SHAPE_DETECTOR_SHUTDOWN_TIMEOUT_S='1e10': above 86400: after SIGTERM, the longest wait",
        ),
        # NaN reads as a float and failed the first bound: "should be greater than 0".
        (
            {"SHAPE_DETECTOR_REQUEST_TIMEOUT_S": "nan"},
            "SHAPE_DETECTOR_REQUEST_TIMEOUT_S='nan': not a number: give a number of seconds above 0, "
            "or inf for no limit",
        ),
        (
            {"SHAPE_DETECTOR_BODY_TIMEOUT_S": "NaN"},
            "SHAPE_DETECTOR_BODY_TIMEOUT_S='NaN': not a number: give a number of seconds above 0, "
            "or inf for no limit",
        ),
        (
            {"SHAPE_DETECTOR_BATCH_WAIT_MS": "nan"},
            "SHAPE_DETECTOR_BATCH_WAIT_MS='nan': not a number: give a finite number of milliseconds, "
            "at least 0 and at most 1000",
        ),
        (
            {"SHAPE_DETECTOR_SWITCH_INTERVAL_MS": "nan"},
            "SHAPE_DETECTOR_SWITCH_INTERVAL_MS='nan': not a number: give a finite number of "
            "milliseconds, above 0 and at most 100",
        ),
        (
            {"SHAPE_DETECTOR_SHUTDOWN_TIMEOUT_S": "nan"},
            "SHAPE_DETECTOR_SHUTDOWN_TIMEOUT_S='nan': not a number: give a finite number of seconds, "
            "at least 0 and at most 86400",
        ),
        (
            {"SHAPE_DETECTOR_SHUTDOWN_DELAY_S": "-nan"},
            "SHAPE_DETECTOR_SHUTDOWN_DELAY_S='-nan': not a number: give a finite number of seconds, "
            "at least 0 and at most 86400",
        ),
        # The shutdown timeout ends the drain: the port closed then, before the delay had passed.
        (
            {"SHAPE_DETECTOR_SHUTDOWN_DELAY_S": "3", "SHAPE_DETECTOR_SHUTDOWN_TIMEOUT_S": "1"},
            "SHAPE_DETECTOR_SHUTDOWN_DELAY_S: 3 s exceeds SHUTDOWN_TIMEOUT_S 1 s, which bounds the "
            "whole shutdown (the port would close then); raise SHUTDOWN_TIMEOUT_S or lower SHUTDOWN_DELAY_S",
        ),
        # A body that large could never be let in. The least is MAX_BODY_BYTES, with its value:
        # below 1024 the message said "give at least 1024", a value refused too.
        (
            {"SHAPE_DETECTOR_MAX_BODY_BYTES": "4096", "SHAPE_DETECTOR_MAX_INFLIGHT_BYTES": "4095"},
            "SHAPE_DETECTOR_MAX_INFLIGHT_BYTES='4095': below 4096: the bytes of request bodies one "
            "server process holds at once (the default, 1073741824, is 1 GiB), at least MAX_BODY_BYTES; "
            "give at least 4096 (the value of MAX_BODY_BYTES), or lower MAX_BODY_BYTES too (at least 1024)",
        ),
        (
            {"SHAPE_DETECTOR_MAX_INFLIGHT_BYTES": "100"},
            "SHAPE_DETECTOR_MAX_INFLIGHT_BYTES='100': below 268435456: the bytes of request bodies one "
            "server process holds at once (the default, 1073741824, is 1 GiB), at least MAX_BODY_BYTES; "
            "give at least 268435456 (the value of MAX_BODY_BYTES), or lower MAX_BODY_BYTES too (at "
            "least 1024)",
        ),
        (
            {"SHAPE_DETECTOR_MAX_BODY_BYTES": "100", "SHAPE_DETECTOR_MAX_INFLIGHT_BYTES": "100"},
            "SHAPE_DETECTOR_MAX_INFLIGHT_BYTES='100': below 1024: the bytes of request bodies one server "
            "process holds at once (the default, 1073741824, is 1 GiB), at least MAX_BODY_BYTES; give at "
            "least MAX_BODY_BYTES (itself at least 1024)",
        ),
    ],
)
def test_invalid_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, models_dir: Path, env: dict[str, str], message: str
) -> None:
    monkeypatch.setenv("SHAPE_DETECTOR_MODEL_DIR", str(models_dir))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert message in str(err.value)


def test_the_default_model_dir_missing_says_where_it_was_looked_for(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An installed package started outside the repository: the default MODEL_DIR, models, is
    relative to a directory that has none."""
    for key in list(os.environ):
        if key.startswith("SHAPE_DETECTOR_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert (
        f"SHAPE_DETECTOR_MODEL_DIR: 'models' is not a directory (relative to the working directory "
        f"{tmp_path}): set SHAPE_DETECTOR_MODEL_DIR to the directory holding the models"
    ) in str(err.value)


@pytest.mark.parametrize(
    ("variable", "meant"),
    [
        ("SHAPE_DETECTOR_API_KEY", "SHAPE_DETECTOR_API_KEYS"),  # ignored: every route open
        ("SHAPE_DETECTOR_SHUTDOWN_TIMEOUT", "SHAPE_DETECTOR_SHUTDOWN_TIMEOUT_S"),
        ("SHAPE_DETECTOR_Models_Dir", "SHAPE_DETECTOR_MODEL_DIR"),  # read whatever its case
    ],
)
def test_a_misspelt_setting_stops_the_start_naming_the_setting_meant(
    monkeypatch: pytest.MonkeyPatch, models_dir: Path, variable: str, meant: str
) -> None:
    key = "k" * 24
    monkeypatch.setenv(variable, key)
    with pytest.raises(SettingsError) as err:
        load_settings(MODEL_DIR=models_dir)
    assert f"{variable} is not a setting; name it {meant} (as spelt, it is ignored)" in str(err.value)
    assert key not in str(err.value)  # its value may be a key


def test_other_variables_of_the_prefix_are_left_alone(
    monkeypatch: pytest.MonkeyPatch, models_dir: Path
) -> None:
    """Kubernetes' service links for a Service named shape-detector, a compose file's own."""
    for name in ("SERVICE_HOST", "SERVICE_PORT", "PORT_80_TCP_ADDR", "PUBLIC_PORT", "UID"):
        monkeypatch.setenv(f"SHAPE_DETECTOR_{name}", "1")
    monkeypatch.setenv("SHAPE_DETECTOR_API_KEY", "x")  # with the setting given too: not a misspelling
    monkeypatch.setenv("SHAPE_DETECTOR_API_KEYS", "k" * 24)
    assert load_settings(MODEL_DIR=models_dir).API_KEYS.get_secret_value() == "k" * 24


@pytest.mark.parametrize("default", ["", ".", "bump/", "../models/bump", "empty"])
def test_the_default_model_must_be_a_model(models_dir: Path, tmp_path: Path, default: str) -> None:
    """Not just any directory: with one that is no model the service would start, answer
    /readyz 200 and every POST /v1/detect 404."""
    root = tmp_path / "models"
    shutil.copytree(models_dir, root)
    (root / "empty").mkdir()
    with pytest.raises(SettingsError) as err:
        load_settings(MODEL_DIR=root, DEFAULT_MODEL=default)
    assert (
        f"SHAPE_DETECTOR_DEFAULT_MODEL: {default!r} is not a model "
        f"directory under {str(root)!r} (one holding card.json and model.onnx); its models: bump, other"
    ) in str(err.value)


def test_the_window_must_hold_the_shipped_models() -> None:
    """A window a model cannot run in stops the start, naming the least value, instead of
    every model failing to load and readiness staying 503."""
    shipped = Path(__file__).resolve().parents[2] / "models"
    with pytest.raises(SettingsError) as err:
        load_settings(MODEL_DIR=shipped, WINDOW=2680)
    assert "SHAPE_DETECTOR_WINDOW: 2680 samples is too short for the models under" in str(err.value)
    assert "set at least 2681 (arrival needs 2681;" in str(err.value)
    assert load_settings(MODEL_DIR=shipped, WINDOW=2681).WINDOW == 2681


def test_the_window_is_served_and_an_unreadable_card_is_left_to_its_load(
    models_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "models"
    shutil.copytree(models_dir, root)
    (root / "other" / "card.json").write_text("{")
    settings = load_settings(MODEL_DIR=root, WINDOW=413)  # the least the tiny model can run in
    with TestClient(create_app(settings)) as c:
        for _ in range(200):
            if "loading" not in c.get("/readyz").json()["models"].values():
                break
            time.sleep(0.05)
        assert c.get("/readyz").json()["models"] == {"bump": "ready", "other": "failed"}
        assert "cannot read the model card" in c.get("/readyz").json()["reasons"][0]
        r = c.post("/v1/detect", json={"signals": [[0.0] * 3000]})
        assert r.status_code == 200 and len(r.json()["results"]) == 1


def deny_looking_into(monkeypatch: pytest.MonkeyPatch, *dirs: Path) -> None:
    """``os.stat`` of anything inside ``dirs`` fails as for a directory the service's user may
    not search (another owner's, mode 0700): the tests may run as root, whom modes do not stop."""
    real = os.stat

    def stat(path: object, *args: object, **kwargs: object) -> os.stat_result:
        if isinstance(path, str | os.PathLike) and any(d in Path(os.fsdecode(path)).parents for d in dirs):
            raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
        return real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", stat)


def test_a_sub_directory_that_cannot_be_read_does_not_stop_the_start(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``lost+found`` on a mounted volume (root's, mode 0700) holds no model: it is passed over.
    One that could be a model's is listed, and its load says what is wrong."""
    root = tmp_path / "models"
    shutil.copytree(models_dir, root)
    (root / "lost+found").mkdir()
    (root / "locked").mkdir()
    deny_looking_into(monkeypatch, root / "lost+found", root / "locked")
    settings = load_settings(MODEL_DIR=root)
    assert list(Registry(settings.MODEL_DIR, InferenceOptions()).statuses) == ["bump", "locked", "other"]


def test_a_model_dir_that_cannot_be_read_stops_the_start_saying_so(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "models"
    shutil.copytree(models_dir, root)
    deny_looking_into(monkeypatch, root)

    def iterdir(self: Path) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "iterdir", iterdir)
    with pytest.raises(SettingsError) as err:
        load_settings(MODEL_DIR=root)
    assert f"MODEL_DIR: {str(root)!r} cannot be read: Permission denied" in str(err.value)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, models_dir: Path) -> None:
    monkeypatch.setenv("SHAPE_DETECTOR_MODEL_DIR", str(models_dir))
    monkeypatch.setenv("SHAPE_DETECTOR_DEFAULT_MODEL", "other")
    monkeypatch.setenv("SHAPE_DETECTOR_MAX_SIGNALS", "3")
    s = load_settings()
    assert (s.DEFAULT_MODEL, s.MAX_SIGNALS) == ("other", 3)
    with TestClient(create_app(s)) as c:
        wait_ready(c)
        r = c.post("/v1/detect", json={"signals": [[0.0] * 100]})
        assert r.json()["model"]["name"] == "other"
        assert c.post("/v1/detect", json={"signals": [[0.0] * 100] * 4}).status_code == 422


def test_json_log_lines_are_json() -> None:
    from app.observability import JsonFormatter

    rec = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    rec.fields = {"status": 200}
    doc = json.loads(JsonFormatter().format(rec))
    assert doc["message"] == "hello you" and doc["status"] == 200 and doc["level"] == "info"


def test_switch_interval_is_set_while_serving_and_restored(models_dir: Path) -> None:
    import sys

    before = sys.getswitchinterval()
    s = load_settings(MODEL_DIR=models_dir, SWITCH_INTERVAL_MS=0.3)
    with TestClient(create_app(s)) as c:
        wait_ready(c)
        assert sys.getswitchinterval() == pytest.approx(0.0003)
    assert sys.getswitchinterval() == before


@pytest.mark.parametrize("threshold", [0, 5000])
def test_gc_is_tuned_while_serving_and_restored(models_dir: Path, threshold: int) -> None:
    """Start-up's objects are frozen out of the collector and collections are rarer while the
    service runs; all as before once it stops. 0 leaves the collector alone."""
    import gc

    # Another test's app may still run (a module's client) and have frozen the heap: start
    # from a heap not frozen, as a process does, and put the other app's state back after.
    others_frozen = gc.get_freeze_count() > 0
    gc.unfreeze()
    try:
        before = gc.get_threshold()
        assert before[0] != 5000
        with TestClient(create_app(load_settings(MODEL_DIR=models_dir, GC_THRESHOLD=threshold))) as c:
            wait_ready(c)
            if threshold:
                assert gc.get_threshold() == (threshold, *before[1:]) and gc.get_freeze_count() > 10_000
            else:
                assert gc.get_threshold() == before and gc.get_freeze_count() == 0
        assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    finally:
        if others_frozen:
            gc.freeze()


@pytest.mark.parametrize("enabled", [False, True])
def test_opentelemetry_is_looked_for_only_when_enabled(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch, enabled: bool
) -> None:
    """Off (the default), FastAPI does not look for an OpenTelemetry provider on each request."""
    from opentelemetry import trace

    looked = []
    real = trace.get_tracer_provider
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: looked.append(1) or real())
    app = create_app(load_settings(MODEL_DIR=models_dir, OPENTELEMETRY=enabled))
    with TestClient(app) as client:
        wait_ready(client)
        before = len(looked)
        assert client.get("/healthz").status_code == 200
        assert (len(looked) > before) == enabled


def test_every_setting_is_documented_in_the_readme() -> None:
    from app.settings import ENV_PREFIX, Settings

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [f for f in Settings.model_fields if f"| `{ENV_PREFIX}{f}` |" not in readme]
    assert not missing, f"settings without a row in a README table: {missing}"


def test_every_setting_in_a_readme_table_exists() -> None:
    """The other direction: a row of a README table (the settings, production values) names
    settings the service reads, not ones renamed or removed."""
    from app.settings import ENV_PREFIX, Settings

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith(f"| `{ENV_PREFIX}")]
    first_cells = [row.split("|")[1] for row in rows]
    named = {name for cell in first_cells for name in re.findall(rf"`(?:{ENV_PREFIX})?_?([A-Z0-9_]+)`", cell)}
    assert rows and named
    unknown = sorted(name for name in named if name.lstrip("_") not in Settings.model_fields)
    assert not unknown, f"README table rows for settings that do not exist: {unknown}"


def test_the_readme_gives_each_settings_default() -> None:
    from app.settings import ENV_PREFIX, Settings

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    documented: dict[str, str] = {}
    for name, default in re.findall(rf"^\| `{ENV_PREFIX}(\w+)` \| ([^|]*) \|", readme, re.MULTILINE):
        documented.setdefault(name, default.strip())  # the first table that names it: Settings'
    wrong = {}
    for name, field in Settings.model_fields.items():
        value = field.default
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        if value is None:
            expected = "unset"
        elif value == "":
            expected = "empty"
        elif isinstance(value, bool):
            expected = f"`{str(value).lower()}`"
        elif isinstance(value, float) and value.is_integer():
            expected = f"`{int(value)}`"
        else:
            expected = f"`{value}`"
        if not documented.get(name, "").startswith(expected):
            wrong[name] = (documented.get(name), expected)
    assert not wrong, f"README default differs from the code's (README, code): {wrong}"
