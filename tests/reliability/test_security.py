"""API keys, CORS, security headers, and no internals in error responses."""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.core.model import OnnxModel
from app.main import create_app
from app.settings import SettingsError, load_settings
from tests.reliability.conftest import FILE_KEY, KEY_A, KEY_B, app_client

SIGNAL = {"signals": [[0.0] * 100]}
V2_BODY = {"inputs": [{"name": "signal", "shape": [1, 100], "datatype": "FP32", "data": [0.0] * 100}]}
# (method, path, JSON body or None): every kind of protected route.
PROTECTED = [
    ("POST", "/v1/detect", SIGNAL),
    ("POST", "/v1/models/bump/detect", SIGNAL),
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/bump", None),
    ("GET", "/v2", None),
    ("GET", "/v2/models/bump", None),
    ("GET", "/v2/models/bump/versions/0.0.1", None),
    ("GET", "/v2/models/bump/ready", None),
    ("POST", "/v2/models/bump/infer", V2_BODY),
    ("POST", "/v2/models/bump/versions/0.0.1/infer", V2_BODY),
]
OPEN = [
    "/healthz",
    "/readyz",
    "/v2/health/live",
    "/v2/health/ready",
    "/metrics",
    "/docs",
    "/redoc",
    "/openapi.json",
]


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys.txt"
    path.write_text(f"# one key per line\n\n  {FILE_KEY}  \n")
    return path


@pytest.fixture(scope="module")
def keyed(models_dir: Path, keys_file: Path) -> Iterator[TestClient]:
    with app_client(models_dir, API_KEYS=f"{KEY_A}, {KEY_B}", API_KEYS_FILE=keys_file) as client:
        yield client


def call(client: TestClient, method: str, path: str, body: object, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return client.request(method, path, json=body, headers=headers or {})


def message(r) -> str:  # type: ignore[no-untyped-def]
    doc = r.json()
    return doc["error"] if r.url.path.startswith("/v2") else doc["detail"]


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
def test_no_key_is_401(keyed: TestClient, method: str, path: str, body: object) -> None:
    r = call(keyed, method, path, body)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    assert set(r.json()) == ({"error"} if path.startswith("/v2") else {"detail"})
    assert "an API key is required" in message(r) and "X-API-Key" in message(r)


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
def test_wrong_key_is_401(keyed: TestClient, method: str, path: str, body: object) -> None:
    for headers in (
        {"Authorization": f"Bearer {KEY_A}x"},
        {"X-API-Key": KEY_A[:-1]},
        {"Authorization": f"Basic {KEY_A}"},  # only the Bearer scheme carries a key
        {"Authorization": "Bearer"},
        {"X-API-Key": ""},
    ):
        r = call(keyed, method, path, body, headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ({"Authorization": f"Basic {KEY_A}"}, "the Authorization header is not 'Bearer <key>'"),
        ({"Authorization": KEY_A}, "the Authorization header is not 'Bearer <key>'"),  # no scheme
        ({"Authorization": f"Bearer\t{KEY_A}"}, "the Authorization header is not 'Bearer <key>'"),
        ({"Authorization": "Bearer "}, "the Authorization header is not 'Bearer <key>'"),
        ({"X-API-Key": ""}, "the X-API-Key header is empty"),
        ({"X-API-Key": f"{KEY_A}x"}, "the API key is not valid"),
    ],
)
def test_an_unusable_key_header_is_named_in_the_401(
    keyed: TestClient, headers: dict[str, str], problem: str
) -> None:
    """A client that sent a key header the service cannot use is told which header is at fault,
    not that no key was sent; the answer never repeats what the header holds."""
    for path in ("/v1/models", "/v2/models/bump"):
        r = keyed.get(path, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert message(r) == f"{problem}: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'", r.text
        assert KEY_A not in r.text


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
def test_valid_key_in_either_header(keyed: TestClient, method: str, path: str, body: object) -> None:
    for headers in (
        {"Authorization": f"Bearer {KEY_A}"},
        {"Authorization": f"bearer {KEY_B}"},  # the scheme is case-insensitive
        {"X-API-Key": KEY_B},
        {"X-API-Key": FILE_KEY},  # from the keys file
        {"Authorization": f"Bearer {FILE_KEY}"},
    ):
        r = call(keyed, method, path, body, headers)
        assert r.status_code == 200, (headers, r.text)
        # Given for a key: not for a shared cache, which with its defaults might keep a GET's
        # answer and give it to clients without one.
        assert r.headers.get("cache-control") == "private", (path, r.headers)


def test_open_routes_need_no_key(keyed: TestClient) -> None:
    for path in [*OPEN, "/static/vendor/swagger-ui/swagger-ui.css"]:
        assert keyed.get(path).status_code == 200, path


def test_an_open_path_with_a_trailing_slash_needs_no_key(keyed: TestClient) -> None:
    """``/docs/`` is redirected to ``/docs`` (as without keys), not refused 401 while ``/docs``
    is open; a protected path with a trailing slash still needs a key."""
    for path in OPEN:
        r = keyed.get(f"{path}/", follow_redirects=False)
        assert r.status_code == 307 and r.headers["location"].endswith(path), (path, r.text)
        assert keyed.get(f"{path}/").status_code == 200, path
    assert keyed.get("/docs//", follow_redirects=False).headers["location"].endswith("/docs")
    assert keyed.get("/v1/models/", follow_redirects=False).status_code == 401
    assert keyed.get("/v1/models/", headers={"X-API-Key": KEY_A}).status_code == 200


def test_unknown_paths_need_a_key_too(keyed: TestClient) -> None:
    """Deny by default: a route nobody listed as open is protected (and unknown ones are 401)."""
    assert keyed.get("/nope").status_code == 401
    assert keyed.post("/admin/anything").status_code == 401
    assert keyed.get("/nope", headers={"X-API-Key": KEY_A}).status_code == 404


def test_metrics_can_be_protected(models_dir: Path) -> None:
    with app_client(models_dir, API_KEYS=KEY_A, PROTECT_METRICS=True) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics/", follow_redirects=False).status_code == 401
        assert c.get("/metrics", headers={"X-API-Key": KEY_A}).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200


def test_without_keys_everything_is_open(client: TestClient) -> None:
    assert client.post("/v1/detect", json=SIGNAL).status_code == 200
    assert client.get("/v1/models").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "securitySchemes" not in spec.get("components", {})
    assert "security" not in spec["paths"]["/v1/detect"]["post"]


def test_openapi_declares_the_security_scheme(keyed: TestClient) -> None:
    spec = keyed.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "Authorization: Bearer <key>",
    }
    assert schemes["apiKeyHeader"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    for path, method in [("/v1/detect", "post"), ("/v1/models", "get"), ("/v2/models/{name}/infer", "post")]:
        op = spec["paths"][path][method]
        assert op["security"] == [{"bearerAuth": []}, {"apiKeyHeader": []}], path
        assert "401" in op["responses"]
    for path in ("/healthz", "/readyz", "/metrics", "/v2/health/ready"):
        assert "security" not in spec["paths"][path]["get"], path
    assert "Authorize" in spec["info"]["description"]
    # The 401 body on /v2 is the protocol's {"error": ...}.
    v2_401 = spec["paths"]["/v2/models/{name}/infer"]["post"]["responses"]["401"]
    assert v2_401["content"]["application/json"]["schema"]["required"] == ["error"]


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"API_KEYS": "short"}, "API_KEYS: key 1 is shorter than 16"),
        ({"API_KEYS": f"{KEY_A},with space inside key"}, "API_KEYS: key 2 has characters other than"),
        ({"API_KEYS_FILE": "/nonexistent/keys"}, "API_KEYS_FILE: '/nonexistent/keys' is not a file"),
        ({"CORS_ORIGINS": "https://ok.example.com,https://bad.example.com/"}, "is not an origin"),
        ({"CORS_ORIGINS": "example.com"}, "is not an origin"),
    ],
)
def test_bad_key_and_origin_settings_are_refused(
    models_dir: Path, overrides: dict[str, str], problem: str
) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(MODEL_DIR=models_dir, **overrides)
    assert problem in str(err.value)
    assert "with space inside key" not in str(err.value) and "short'" not in str(err.value)  # never echo keys


def test_a_bad_key_in_the_file_is_named_by_line(models_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"{FILE_KEY}\n# comment\ntoo-short\n")
    with pytest.raises(SettingsError) as err:
        load_settings(MODEL_DIR=models_dir, API_KEYS_FILE=path)
    assert "the key on line 3 is shorter" in str(err.value) and "too-short" not in str(err.value)


def test_a_keys_file_saved_with_a_bom_and_crlf_gives_its_keys(models_dir: Path, tmp_path: Path) -> None:
    """Windows editors (Notepad) start a UTF-8 file with a byte order mark and end lines with
    CRLF: neither is part of a key (the BOM made the first key "not visible ASCII", stopping the start)."""
    path = tmp_path / "keys"
    path.write_bytes(b"\xef\xbb\xbf" + f"{FILE_KEY}\r\n{KEY_A}\r\n".encode())
    with app_client(models_dir, API_KEYS_FILE=path) as c:
        for key in (FILE_KEY, KEY_A):
            assert c.get("/v1/models", headers={"X-API-Key": key}).status_code == 200
        assert c.get("/v1/models").status_code == 401


@pytest.mark.parametrize("text", ["", "\n\n", "# the keys\n  # go here\n\n"])
def test_a_keys_file_without_a_key_is_refused(models_dir: Path, tmp_path: Path, text: str) -> None:
    """A keys file that is set but holds no key would leave every route open: the start stops."""
    path = tmp_path / "keys"
    path.write_text(text)
    for overrides in ({}, {"API_KEYS": KEY_A}):  # whatever else is set: the file is wrong
        with pytest.raises(SettingsError) as err:
            load_settings(MODEL_DIR=models_dir, API_KEYS_FILE=path, **overrides)
        assert f"SHAPE_DETECTOR_API_KEYS_FILE: '{path}' holds no key" in str(err.value)


def test_keys_are_not_shown_by_the_settings(models_dir: Path) -> None:
    s = load_settings(MODEL_DIR=models_dir, API_KEYS=KEY_A)
    assert KEY_A not in repr(s) and KEY_A not in str(s.model_dump())


# CORS


def test_cors_is_off_by_default(client: TestClient) -> None:
    r = client.post("/v1/detect", json=SIGNAL, headers={"Origin": "https://app.example.com"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    pre = client.options(
        "/v1/detect",
        headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in pre.headers


def test_cors_allow_list(models_dir: Path) -> None:
    allowed = "https://app.example.com"
    with app_client(models_dir, CORS_ORIGINS=f"{allowed}, http://localhost:3000", API_KEYS=KEY_A) as c:
        # A preflight carries no key: it is answered before the key check.
        pre = c.options(
            "/v1/detect",
            headers={
                "Origin": allowed,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert pre.status_code == 200, pre.text
        assert pre.headers["access-control-allow-origin"] == allowed
        # No body (Starlette's is a text/plain "OK"): every other answer is JSON or empty.
        assert pre.content == b"" and pre.headers["content-length"] == "0"
        assert "content-type" not in pre.headers
        assert "authorization" in pre.headers["access-control-allow-headers"].lower()
        assert "access-control-allow-credentials" not in pre.headers
        r = c.post("/v1/detect", json=SIGNAL, headers={"Origin": allowed, "X-API-Key": KEY_A})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == allowed
        assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
        # A browser can read the 401 too, so it can tell the user to give a key.
        r = c.post("/v1/detect", json=SIGNAL, headers={"Origin": allowed})
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == allowed
        # Any other origin: no CORS headers, preflight refused.
        other = "https://evil.example.com"
        r = c.post("/v1/detect", json=SIGNAL, headers={"Origin": other, "X-API-Key": KEY_A})
        assert "access-control-allow-origin" not in r.headers
        pre = c.options("/v1/detect", headers={"Origin": other, "Access-Control-Request-Method": "POST"})
        assert pre.status_code == 400 and "access-control-allow-origin" not in pre.headers


def test_a_refused_preflight_is_a_json_400_that_names_what_was_refused_and_the_fix(models_dir: Path) -> None:
    """As the service's other 400s: JSON in the path's error format (``error`` under /v2), saying
    what the preflight asked for that is not allowed and how to allow it; the status and the
    CORS headers stay Starlette's (no Access-Control-Allow-Origin for an origin not listed)."""
    allowed, other = "https://app.example.com", "https://evil.example.com"
    with app_client(models_dir, CORS_ORIGINS=allowed) as c:

        def preflight(path: str, origin: str, method: str = "POST", headers: str | None = None):  # type: ignore[no-untyped-def]
            asked = {"Origin": origin, "Access-Control-Request-Method": method}
            if headers is not None:
                asked["Access-Control-Request-Headers"] = headers
            r = c.options(path, headers=asked)
            assert r.status_code == 400 and r.headers["content-type"] == "application/json", r.text
            assert r.headers["x-content-type-options"] == "nosniff"
            assert "Origin" in r.headers["vary"]
            assert r.headers["content-length"] == str(len(r.content))
            return r

        r = preflight("/v1/detect", other)
        assert "access-control-allow-origin" not in r.headers
        assert r.json() == {
            "detail": (
                f"CORS preflight refused: origin {other!r} may not call this API from a browser "
                "(add it to the server's SHAPE_DETECTOR_CORS_ORIGINS, comma-separated "
                "scheme://host[:port])"
            )
        }
        r = preflight("/v1/detect", allowed, method="PUT", headers="Content-Type, X-Trace, Authorization")
        assert r.headers["access-control-allow-origin"] == allowed  # the origin is allowed
        assert r.json() == {
            "detail": (
                "CORS preflight refused: method 'PUT' is not allowed (ask for one of GET, POST); "
                "request headers ['X-Trace'] are not allowed (send only "
                + r.headers["access-control-allow-headers"]
                + ")"
            )
        }
        r = preflight("/v2/models/bump/infer", other, headers="x-a, x-b")
        message = r.json()["error"]
        assert f"origin {other!r}" in message and "SHAPE_DETECTOR_CORS_ORIGINS" in message
        assert "request headers ['x-a', 'x-b'] are not allowed" in message
        # Allowed, it is answered as before.
        ok = c.options("/v1/detect", headers={"Origin": allowed, "Access-Control-Request-Method": "POST"})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == allowed


def test_cors_and_draining_answers_have_the_security_headers(models_dir: Path) -> None:
    """CORS answers preflights, and draining refuses requests, before the app's routes: their
    answers carry nosniff and no-referrer as every other does."""
    allowed = "https://app.example.com"
    with app_client(models_dir, CORS_ORIGINS=allowed) as c:
        answers = [
            c.options("/v1/detect", headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
            for origin in (allowed, "https://evil.example.com")
        ]
        assert [r.status_code for r in answers] == [200, 400]
        c.app_state["lifecycle"].begin_drain()
        answers.append(c.post("/v1/detect", json=SIGNAL))
        assert answers[-1].status_code == 503
    for r in answers:
        assert r.headers["x-content-type-options"] == "nosniff", r.headers
        assert r.headers["referrer-policy"] == "no-referrer", r.headers


# Security headers


def test_docs_pages_have_a_csp_that_allows_only_their_own_inline_script(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        r = client.get(page)
        assert r.status_code == 200
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["x-frame-options"] == "DENY"
        assert int(r.headers["content-length"]) == len(r.content)
        csp = dict(d.strip().split(" ", 1) for d in r.headers["content-security-policy"].split(";"))
        assert csp["default-src"] == "'self'" and csp["frame-ancestors"] == "'none'"
        assert csp["object-src"] == "'none'" and csp["base-uri"] == "'none'"
        assert "'unsafe-inline'" not in csp["script-src"] and "'unsafe-eval'" not in csp["script-src"]
        inline = re.findall(r"<script>(.*?)</script>", r.text, re.DOTALL)
        assert len(inline) == (1 if page == "/docs" else 0)
        for script in inline:
            digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
            assert f"'sha256-{digest}'" in csp["script-src"]


def test_every_response_has_nosniff(client: TestClient) -> None:
    for r in (client.get("/healthz"), client.post("/v1/detect", json={"signals": []}), client.get("/nope")):
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert "content-security-policy" not in r.headers  # JSON is not rendered: CSP is for pages


# No internals in responses


@pytest.fixture()
def failing_model(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: OnnxModel, batch: np.ndarray) -> np.ndarray:
        if batch.shape[1] == 333:
            raise RuntimeError("boom in /srv/secret/app/core/model.py line 42")
        return original(self, batch)

    original = OnnxModel.run
    monkeypatch.setattr(OnnxModel, "run", broken)


def assert_opaque(r, key: str) -> None:  # type: ignore[no-untyped-def]
    assert r.status_code == 500, r.text
    assert r.json() == {key: "internal error; the request id is in X-Request-ID"}
    assert r.headers["x-request-id"]
    for leak in ("/srv/secret", "boom", "Traceback", "RuntimeError", "model.py"):
        assert leak not in r.text


@pytest.mark.usefixtures("failing_model")
def test_internal_errors_show_no_internals(models_dir: Path) -> None:
    with app_client(models_dir, raise_server_exceptions=False) as c:
        assert_opaque(c.post("/v1/detect", json={"signals": [[0.0] * 333]}), "detail")
        v2 = {"inputs": [{"name": "signal", "shape": [1, 333], "datatype": "FP32", "data": [0.0] * 333}]}
        assert_opaque(c.post("/v2/models/bump/infer", json=v2), "error")
        # The service still works.
        assert c.post("/v1/detect", json=SIGNAL).status_code == 200


def test_readiness_reasons_name_no_absolute_paths(models_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(models_dir, root)
    with (root / "other" / "model.onnx").open("ab") as fh:
        fh.write(b"tampered")
    with TestClient(create_app(load_settings(MODEL_DIR=root))) as c:
        for _ in range(200):
            if "loading" not in c.get("/readyz").json()["models"].values():
                break
        r = c.get("/readyz")
        assert r.status_code == 503
        reason = r.json()["reasons"][0]
        assert "MODEL_DIR/other/model.onnx: sha256" in reason, reason
        assert str(tmp_path) not in r.text
        bad = c.post("/v1/models/other/detect", json=SIGNAL)
        assert bad.status_code == 503 and str(tmp_path) not in bad.text and "sha256" in bad.text
