"""RequestOnlyRoute: the dependencies called directly, the same answers as FastAPI's solver,
and every route it cannot call that way served by FastAPI's own handler. DirectRoutes: the
app's leading such routes served before FastAPI's router, with the same answers and errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import fastapi.routing
import numpy as np
import pytest
from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.responses import Response
from fastapi.testclient import TestClient
from opentelemetry.trace import INVALID_SPAN_CONTEXT, NonRecordingSpan, NoOpTracer, TracerProvider

from app.api.deps import detect_call
from app.api.routing import DirectRoutes, HeadAsGet, RequestOnlyRoute, ServerErrors
from app.main import create_app
from app.settings import load_settings
from tests.api.conftest import wait_ready


async def who(request: Request) -> str:
    return request.headers.get("x-who", "nobody")


Who = Annotated[str, Depends(who)]
T = TypeVar("T")


def solver_forbidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make FastAPI's dependency solver fail, to show a route does not use it."""

    async def fail(**_: Any) -> None:
        raise AssertionError("FastAPI's dependency solver was called")

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", fail)


def app_with(router: APIRouter, **include: Any) -> FastAPI:
    app = FastAPI()
    app.include_router(router, **include)
    return app


def echo_router() -> APIRouter:
    router = APIRouter(prefix="/r", route_class=RequestOnlyRoute)

    @router.post("/{name}/echo")
    async def echo(name: str, request: Request, caller: Who) -> Response:
        body = await request.body()
        return Response(f"{name} {caller} {body.decode()}", media_type="text/plain")

    return router


def test_dependencies_are_called_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    client = TestClient(app_with(echo_router()))
    solver_forbidden(monkeypatch)
    r = client.post("/r/bump/echo", content=b"hello", headers={"x-who": "ada"})
    assert (r.status_code, r.text) == (200, "bump ada hello")
    assert client.post("/r/x/echo").text == "x nobody "


def test_overrides_take_fastapis_own_handler() -> None:
    app = app_with(echo_router())
    client = TestClient(app)

    async def someone_else() -> str:  # another signature: FastAPI solves it
        return "override"

    app.dependency_overrides[who] = someone_else
    assert client.post("/r/a/echo", content=b"b").text == "a override b"
    app.dependency_overrides.clear()
    assert client.post("/r/a/echo", content=b"b").text == "a nobody b"


def test_the_openapi_document_is_fastapis() -> None:
    plain = APIRouter(prefix="/r")

    @plain.post("/{name}/echo")
    async def echo(name: str, request: Request, caller: Who) -> Response:
        return Response()

    assert app_with(echo_router()).openapi()["paths"] == app_with(plain).openapi()["paths"]


async def with_yield(request: Request) -> AsyncIterator[str]:
    yield "yielded"


def sync_dependency(request: Request) -> str:
    return "sync"


async def nested(caller: Who) -> str:
    return f"nested {caller}"


async def with_query(request: Request, limit: int = 3) -> str:
    return f"limit {limit}"


def via_dependency(call: Any) -> APIRouter:
    router = APIRouter(route_class=RequestOnlyRoute)

    @router.get("/d")
    async def d(value: Any = Depends(call)) -> Response:  # noqa: B008 (a closure's dependency)
        return Response(str(value))

    return router


def query_param() -> APIRouter:
    router = APIRouter(route_class=RequestOnlyRoute)

    @router.get("/d")
    async def d(limit: int = 1) -> Response:
        return Response(f"limit {limit}")

    return router


def header_param() -> APIRouter:
    router = APIRouter(route_class=RequestOnlyRoute)

    @router.get("/d")
    async def d(x_who: Annotated[str | None, Header()] = None) -> Response:
        return Response(f"header {x_who}")

    return router


def int_path() -> APIRouter:
    router = APIRouter(route_class=RequestOnlyRoute)

    @router.get("/{n}")
    async def d(n: int) -> Response:
        return Response(f"int {n + 1}")

    return router


def sync_endpoint() -> APIRouter:
    router = APIRouter(route_class=RequestOnlyRoute)

    @router.get("/d")
    def d(request: Request) -> Response:
        return Response("sync endpoint")

    return router


def dict_endpoint() -> APIRouter:
    router = APIRouter(route_class=RequestOnlyRoute)

    @router.get("/d")
    async def d(request: Request) -> dict[str, str]:
        return {"serialised": "by FastAPI"}

    return router


@pytest.mark.parametrize(
    ("router", "path", "answer", "invalid"),
    [
        (query_param, "/d?limit=7", "limit 7", "/d?limit=x"),
        (header_param, "/d", "header ada", None),
        (int_path, "/41", "int 42", "/x"),
        (sync_endpoint, "/d", "sync endpoint", None),
        (dict_endpoint, "/d", '{"serialised":"by FastAPI"}', None),
        (lambda: via_dependency(with_yield), "/d", "yielded", None),
        (lambda: via_dependency(sync_dependency), "/d", "sync", None),
        (lambda: via_dependency(nested), "/d", "nested ada", None),
        (lambda: via_dependency(with_query), "/d?limit=5", "limit 5", "/d?limit=x"),
    ],
)
def test_what_it_cannot_call_directly_fastapi_solves(
    router: Any, path: str, answer: str, invalid: str | None
) -> None:
    """Parsed, validated and serialised by FastAPI as for any route (422 for a bad value)."""
    client = TestClient(app_with(router()))
    assert client.get(path, headers={"x-who": "ada"}).text == answer
    if invalid is not None:
        assert client.get(invalid).status_code == 422


def test_a_dependency_of_the_including_router_still_runs() -> None:
    calls: list[str] = []

    async def audit(request: Request) -> None:
        calls.append(request.url.path)

    client = TestClient(app_with(echo_router(), dependencies=[Depends(audit)]))
    assert client.post("/r/a/echo", content=b"b").text == "a nobody b"
    assert calls == ["/r/a/echo"]


def test_the_detection_routes_are_called_directly(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service's hot path takes the direct call and answers as FastAPI's solver does."""
    body = {"signals": [[0.0] * 300, [1.0] * 256]}
    requests = [
        ("/v1/detect", body),
        ("/v1/models/bump/detect?min_distance=5", body),
        ("/v1/detect?threshold=2", body),  # 422, from the dependency
        ("/v1/models/nope/detect", body),  # 404
        ("/v1/detect", {"signals": "no"}),  # 422, from the route
    ]

    def answers() -> list[tuple[int, Any]]:
        return [(r.status_code, r.json()) for r in (client.post(p, json=b) for p, b in requests)]

    by_fastapi = answered_alike_directly(client, monkeypatch, answers)
    assert [status for status, _ in by_fastapi] == [200, 200, 422, 404, 422]


def answered_alike_directly(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, answers: Callable[[], T]
) -> T:
    """``answers()`` from FastAPI's own handlers (an override set), then with FastAPI's solver
    and router made to fail (DirectRoutes serves the requests): the two must be equal."""
    app: FastAPI = client.app  # type: ignore[assignment]
    app.dependency_overrides[who] = who  # any override: every request takes FastAPI's handler
    try:
        by_fastapi = answers()
    finally:
        app.dependency_overrides.clear()
    solver_forbidden(monkeypatch)
    routes_forbidden(monkeypatch)  # DirectRoutes serves them, before FastAPI's router
    assert answers() == by_fastapi
    return by_fastapi


def routes_forbidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make FastAPI's route handling fail, to show DirectRoutes served a request."""

    async def fail(*_: Any) -> None:
        raise AssertionError("FastAPI's router handled the request")

    monkeypatch.setattr(fastapi.routing.APIRoute, "handle", fail)


class Teapot(Exception):
    pass


def direct_app(*, first: str | None = None, unexpected: Any = None) -> FastAPI:
    """An app as the service builds it: RequestOnlyRoutes on the app itself, DirectRoutes."""
    app = FastAPI()
    if first is not None:  # a route ahead of the direct ones

        @app.post(first)
        async def earlier() -> str:
            return "the earlier route"

    app.router.route_class = RequestOnlyRoute

    @app.post("/r/{name}/echo")
    async def echo(name: str, request: Request, caller: Who) -> Response:
        body = await request.body()
        return Response(f"{name} {caller} {body.decode()}", media_type="text/plain")

    @app.post("/r/{name}/fail")
    async def fail(name: str, request: Request) -> Response:
        if name == "teapot":
            raise Teapot(name)
        if name == "gone":
            raise fastapi.HTTPException(410, "gone")
        raise RuntimeError(name)

    app.add_middleware(DirectRoutes, owner=app, unexpected=unexpected)

    @app.exception_handler(Teapot)
    async def teapot(request: Request, exc: Teapot) -> Response:
        return Response(f"teapot {exc}", status_code=418)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        return Response(f"unexpected {exc}", status_code=500)

    return app


def test_direct_routes_serve_before_fastapis_router(monkeypatch: pytest.MonkeyPatch) -> None:
    client = TestClient(direct_app())
    routes_forbidden(monkeypatch)
    solver_forbidden(monkeypatch)
    r = client.post("/r/bump/echo", content=b"hello", headers={"x-who": "ada"})
    assert (r.status_code, r.text) == (200, "bump ada hello")


def test_direct_routes_send_errors_to_the_apps_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same answers as through FastAPI's router: a handled error, an HTTPException, and an
    unhandled one (the app's Exception handler, in Starlette's server-error middleware)."""

    def answers() -> list[tuple[int, str]]:
        client = TestClient(direct_app(), raise_server_exceptions=False)
        return [
            (r.status_code, r.text) for r in (client.post(f"/r/{n}/fail") for n in ("teapot", "gone", "boom"))
        ]

    monkeypatch.setattr(DirectRoutes, "_leading_routes", lambda self: [])  # FastAPI serves every request
    by_fastapi = answers()
    monkeypatch.undo()
    routes_forbidden(monkeypatch)
    assert answers() == by_fastapi
    assert by_fastapi == [(418, "teapot teapot"), (410, '{"detail":"gone"}'), (500, "unexpected boom")]


def test_direct_routes_answer_unexpected_errors_with_the_given_handler() -> None:
    """With ``unexpected`` (as the service sets it), an error without a handler is answered
    here, inside the app's middleware, not raised on to Starlette's server-error middleware."""
    seen: list[str] = []

    async def inner(request: Request, exc: Exception) -> Response:
        seen.append(str(exc))
        return Response(f"inner {exc}", status_code=500)

    client = TestClient(direct_app(unexpected=inner))  # an error raised past it fails the request
    r = client.post("/r/boom/fail")
    assert (r.status_code, r.text, seen) == (500, "inner boom", ["boom"])
    assert client.post("/r/teapot/fail").status_code == 418  # a handled error: its handler


def test_server_errors_answer_before_the_response_starts_and_never_after() -> None:
    """ServerErrors answers an error raised before the response started; after it finished,
    the error goes to the handler (which logs) and the answer stands; midway through, nothing
    can be answered and the error goes on (the server closes the connection)."""
    seen: list[str] = []

    async def unexpected(request: Request, exc: Exception) -> Response:
        seen.append(str(exc))
        return Response(f"500 {exc}", status_code=500)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/before":
            raise RuntimeError("before")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"o", "more_body": True})
        if scope["path"] == "/midway":
            raise RuntimeError("midway")
        await send({"type": "http.response.body", "body": b"k"})
        raise RuntimeError("after")

    client = TestClient(ServerErrors(app, unexpected))
    r = client.get("/before")
    assert (r.status_code, r.text) == (500, "500 before")
    r = client.get("/after")
    assert (r.status_code, r.text) == (200, "ok")
    with pytest.raises(RuntimeError, match="midway"):
        client.get("/midway")
    assert seen == ["before", "after"]


def test_head_is_served_as_get_on_a_copy_of_the_scope() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["method"])
        scope["route"] = "the route"
        await Response("hello")(scope, receive, send)

    outer = {"type": "http", "method": "HEAD", "path": "/", "headers": [], "query_string": b""}
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(HeadAsGet(app)(outer, receive, send))
    assert seen == ["GET"] and outer["method"] == "HEAD"  # the server's scope still says HEAD
    assert outer["route"] == "the route"  # for the metrics outside
    assert sent[0]["status"] == 200 and (b"content-length", b"5") in sent[0]["headers"]


def test_an_earlier_route_that_matches_wins() -> None:
    """As in FastAPI's router: the first route that fully matches serves the request."""
    client = TestClient(direct_app(first="/r/first/echo"))
    assert client.post("/r/first/echo").json() == "the earlier route"
    assert client.post("/r/second/echo").text == "second nobody "


def test_direct_routes_leave_the_rest_to_fastapi(monkeypatch: pytest.MonkeyPatch) -> None:
    app = direct_app()
    client = TestClient(app)
    assert client.get("/r/a/echo").status_code == 405  # the method: FastAPI's answer
    assert client.post("/r/a/echo/", follow_redirects=False).status_code == 307  # FastAPI's redirect
    assert client.post("/nowhere").status_code == 404

    async def someone_else() -> str:
        return "override"

    app.dependency_overrides[who] = someone_else  # any override: FastAPI serves every request
    assert client.post("/r/a/echo", content=b"b").text == "a override b"


def test_overrides_apply_to_the_detection_routes(client: TestClient) -> None:
    """The detection routes are on the app's own router: ``app.dependency_overrides`` reaches them."""

    async def teapot(request: Request) -> Any:
        async def call(request: Request, name: str | None = None) -> Response:
            return Response(f"overridden for {name}", status_code=418)

        return call

    app: FastAPI = client.app  # type: ignore[assignment]
    app.dependency_overrides[detect_call] = teapot
    try:
        r = client.post("/v1/models/bump/detect", json={"signals": [[0.0] * 300]})
    finally:
        app.dependency_overrides.clear()
    assert (r.status_code, r.text) == (418, "overridden for bump")


def test_direct_routes_behind_a_root_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a root path (a proxy's prefix) the routes match as in FastAPI's router."""
    client = TestClient(direct_app(), root_path="/api")
    routes_forbidden(monkeypatch)
    r = client.post("/r/bump/echo", content=b"hello")
    assert (r.status_code, r.text) == (200, "bump nobody hello")


def test_the_inference_routes_of_v2_are_called_directly(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/v2's inference routes take the direct call too, with the protocol's own error format,
    and answer as FastAPI's solver does (headers read from the request, as its Header did)."""
    doc = {"inputs": [{"name": "signal", "shape": [2, 300], "datatype": "FP32", "data": [0.5] * 600}]}
    raw = np.linspace(0, 1, 300, dtype="<f4").tobytes()
    binary_input = {
        "name": "signal",
        "shape": [1, 300],
        "datatype": "FP32",
        "parameters": {"binary_data_size": 1200},
    }
    header_json = json.dumps({"inputs": [binary_input]}).encode()
    length = "Inference-Header-Content-Length"
    requests: list[tuple[str, bytes, dict[str, str]]] = [
        ("/v2/models/bump/infer", json.dumps(doc).encode(), {}),
        ("/v2/models/bump/versions/0.0.1/infer", json.dumps(doc).encode(), {}),  # the tiny model's
        ("/v2/models/bump/versions/9/infer", json.dumps(doc).encode(), {}),  # 404
        ("/v2/models/nope/infer", json.dumps(doc).encode(), {}),  # 404
        ("/v2/models/bump/infer", raw, {length: "0"}),  # raw binary body
        ("/v2/models/bump/infer", header_json + raw, {length: str(len(header_json))}),
        ("/v2/models/bump/infer", raw, {length: "x"}),  # 400
        ("/v2/models/bump/infer", json.dumps(doc).encode(), {"Content-Encoding": "gzip"}),  # 400
        ("/v2/models/bump/infer", b"{", {}),  # 400
    ]

    def answers() -> list[tuple[int, bytes, str | None]]:
        out = []
        for path, body, headers in requests:
            r = client.post(path, content=body, headers={"Content-Type": "application/json", **headers})
            out.append((r.status_code, r.content, r.headers.get(length)))
        return out

    by_fastapi = answered_alike_directly(client, monkeypatch, answers)
    assert [status for status, _, _ in by_fastapi] == [200, 200, 404, 404, 200, 200, 400, 400, 400]
    assert all(list(json.loads(body)) == ["error"] for status, body, _ in by_fastapi if status != 200)
    assert by_fastapi[4][2] is not None  # binary outputs: the JSON's length in the header


class RecordedSpan(NonRecordingSpan):
    """A span that keeps its name and attributes (the API alone records nothing)."""

    def __init__(self, name: str, attributes: Any) -> None:
        super().__init__(INVALID_SPAN_CONTEXT)
        self.name, self.attributes = name, dict(attributes or {})

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def update_name(self, name: str) -> None:
        self.name = name


class RecordingTracer(NoOpTracer):
    def __init__(self) -> None:
        self.spans: list[RecordedSpan] = []

    def start_span(self, name: str, *args: Any, attributes: Any = None, **kwargs: Any) -> RecordedSpan:
        self.spans.append(RecordedSpan(name, attributes))
        return self.spans[-1]


class RecordingProvider(TracerProvider):
    def __init__(self) -> None:
        self.tracer = RecordingTracer()

    def get_tracer(self, *args: Any, **kwargs: Any) -> RecordingTracer:
        return self.tracer


def test_a_traced_request_names_its_route(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With FastAPI's OpenTelemetry on and a tracer configured, a detection request's span
    names its route: such requests go through FastAPI's router, which reports it."""
    from opentelemetry import trace

    provider = RecordingProvider()
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    app = create_app(load_settings(MODEL_DIR=models_dir, OPENTELEMETRY=True))
    with TestClient(app) as client:
        wait_ready(client)
        body = {"signals": [np.zeros(300).tolist()]}
        assert client.post("/v1/detect", json=body).status_code == 200
        assert client.post("/v1/models/bump/detect", json=body).status_code == 200
    server = [s for s in provider.tracer.spans if s.name.startswith("POST")]
    assert [(s.name, s.attributes.get("http.route")) for s in server] == [
        ("POST /v1/detect", "/v1/detect"),
        ("POST /v1/models/{name}/detect", "/v1/models/{name}/detect"),
    ]
