"""The Open Inference Protocol (KServe v2) REST API, with the binary tensor data extension.

Thin routes: decoding and encoding live in ``app.core.oip``; inference goes through the
model's batcher exactly as /v1's does, so both APIs give the same results. Errors answer
``{"error": "..."}`` as the protocol specifies: 400 for a bad request, 404 for an unknown
model or version, 413 for a body over the size limit, 503 (with Retry-After) while a model is
not ready or its queue is full. A ``/versions/{version}`` path must name the version the
model serves (its card's); any other version is 404.

The two inference routes are ``RequestOnlyRoute`` routes on the app itself, ahead of the
others (``add_infer_routes``): ``DirectRoutes`` serves them as it serves /v1's detection
routes, and their headers are read from the request, not solved by FastAPI.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from app.api.deps import LifecycleDep, RegistryDep, Runner, get_registry, get_runner, one_header
from app.api.routing import Handler, RequestOnlyRoute, add_leading_routes, direct_handler
from app.core import oip
from app.core.batching import Finish, Shared
from app.core.errors import BodyTooLarge, DetectorError, InvalidInput, ModelNotReady, Overloaded
from app.core.inflight import Held
from app.core.model import OnnxModel
from app.core.registry import Registry
from app.core.signals import Body

SERVER_NAME = "shape-detector"


def error_response(exc: DetectorError) -> JSONResponse:
    """A domain error in the protocol's format; unusable input is 400 here (422 in /v1)."""
    status = 400 if exc.status in (415, 422) else exc.status
    headers = {"Retry-After": "1" if isinstance(exc, Overloaded) else "5"} if status == 503 else None
    if status == 408:  # the rest of a slow body is not awaited: close the connection
        headers = {"Connection": "close"}
    return JSONResponse({"error": exc.detail}, status_code=status, headers=headers)


ROUTES = (
    "GET /v2, GET /v2/health/live, GET /v2/health/ready, GET /v2/models/{name}[/versions/{version}], "
    "GET /v2/models/{name}[/versions/{version}]/ready and POST /v2/models/{name}[/versions/{version}]/infer"
)


def routing_error(method: str, path: str, status: int, detail: str, allow: str | None) -> str:
    """The message of a routing error under /v2 (no route, or not this method), which
    Starlette's router raises before any route runs."""
    if status == 404:
        return f"no route {method} {path}: the Open Inference Protocol's routes are {ROUTES}"
    if status == 405 and allow:
        return f"{method} is not allowed on {path}: use {allow}"
    return detail


def answering_errors(handler: Handler) -> Handler:
    """``handler`` with its errors answered in the protocol's format."""

    async def handle(request: Request) -> Response:
        try:
            return await handler(request)
        except DetectorError as exc:
            return error_response(exc)
        except RequestValidationError as exc:
            msgs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            return JSONResponse({"error": msgs}, status_code=400)
        # Any other error is a bug: the app's handler of unexpected errors logs it and answers
        # 500 in the protocol's format (main.internal_error, through DirectRoutes or ServerErrors).

    return handle


class OipRoute(RequestOnlyRoute):
    """Answers errors as ``{"error": ...}`` for the /v2 routes only; /v1 keeps its handlers.

    A ``RequestOnlyRoute``: the inference routes, which read only the request, are called
    directly (by ``DirectRoutes`` when they lead the app's routes), their errors answered the
    same way."""

    def get_route_handler(self) -> Handler:
        return answering_errors(super().get_route_handler())

    @cached_property
    def direct(self) -> Handler | None:
        handler = direct_handler(self.dependant, self.path)
        return None if handler is None else answering_errors(handler)


router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"], route_class=OipRoute)


# Schemas, for the OpenAPI document (the protocol's JSON; tensors' data may also be binary).


class ErrorBody(BaseModel):
    error: str


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str = Field(examples=["FP32"])
    shape: list[int] = Field(description="-1 marks a variable dimension.")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class Liveness(BaseModel):
    live: bool


class Readiness(BaseModel):
    ready: bool


class ModelReadiness(BaseModel):
    name: str
    ready: bool


class RequestInput(BaseModel):
    name: str = Field(examples=["signal"])
    shape: list[int] = Field(description="[n, length] or [length].")
    datatype: str = Field(description="FP32 or FP64.")
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data_size: bytes of this input after the JSON (binary extension)."
    )
    data: list[Any] | None = Field(None, description="Row-major numbers, flat or nested as the shape.")


class RequestOutput(BaseModel):
    name: str = Field(description=", ".join(oip.OUTPUTS))
    parameters: dict[str, Any] | None = Field(None, description="binary_data: true for binary data.")


class InferRequest(BaseModel):
    id: str | None = Field(None, description="Echoed in the response.")
    parameters: dict[str, Any] | None = Field(
        None, description="threshold, min_distance (default: the card's); binary_data_output."
    )
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = Field(
        None, description="Outputs to return; default: all but scores."
    )


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = Field(None, description="binary_data_size if binary.")
    data: list[Any] | None = Field(None, description="Row-major, flat (absent if binary).")


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] = Field(description="The threshold and min_distance used.")
    outputs: list[ResponseOutput]


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its $defs inlined (openapi_extra cannot point at them)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    result: dict[str, Any] = walk(schema)
    return result


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Bad request: the message says what is wrong."},
    404: {"model": ErrorBody, "description": "No such model or version."},
    413: {"model": ErrorBody, "description": "Body larger than the limit."},
    503: {
        "model": ErrorBody,
        "description": (
            "Model loading or failed, its queue full, the bodies in flight at MAX_INFLIGHT_BYTES, or the "
            "server shutting down (Retry-After)."
        ),
    },
}
_example_signal = [0.0, 0.1, 0.9, 2.0, 0.9, 0.1, 0.0, 0.0, -0.1, 0.0, 0.1, 0.0, 0.0, 0.1, 0.0, 0.0]
INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": _inline(InferRequest.model_json_schema()),
                "examples": {
                    "json": {
                        "summary": "One signal as JSON, scores included",
                        "value": {
                            "id": "req-1",
                            "parameters": {"threshold": 0.5},
                            "inputs": [
                                {
                                    "name": "signal",
                                    "shape": [1, len(_example_signal)],
                                    "datatype": "FP32",
                                    "data": _example_signal,
                                }
                            ],
                            "outputs": [{"name": "probability"}, {"name": "peak_index"}, {"name": "scores"}],
                        },
                    }
                },
            },
            "application/octet-stream": {  # described, not exemplified: no text is such a body
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": (
                        "Binary tensor data extension: the JSON request, then the inputs' bytes, with "
                        "Inference-Header-Content-Length giving the JSON's length; or, with "
                        "Inference-Header-Content-Length: 0, the little-endian FP32 samples of one signal."
                    ),
                },
            },
        },
    }
}
_HEADER_LENGTH_DOC = "Bytes of JSON at the start of the body (binary extension); 0: raw binary body."
HEADER_PARAMETERS: list[dict[str, Any]] = [  # read from the request; documented as FastAPI would
    {
        "name": oip.HEADER_LENGTH,
        "in": "header",
        "required": False,
        "schema": {
            "anyOf": [{"type": "string"}, {"type": "null"}],
            "description": _HEADER_LENGTH_DOC,
            "title": oip.HEADER_LENGTH,
        },
        "description": _HEADER_LENGTH_DOC,
    }
]


@router.get("", response_model=ServerMetadata, summary="Server metadata")
def server_metadata(request: Request) -> dict[str, Any]:
    """Name, version and protocol extensions (binary_tensor_data)."""
    return oip.server_metadata(SERVER_NAME, request.app.version)


@router.get("/health/live", response_model=Liveness, summary="Server liveness")
def live() -> dict[str, bool]:
    """200 while the process runs."""
    return {"live": True}


@router.get(
    "/health/ready", response_model=Readiness, responses={503: ERRORS[503]}, summary="Server readiness"
)
def ready(registry: RegistryDep, lifecycle: LifecycleDep) -> dict[str, bool]:
    """200 when every model is loaded and warm; else 503 and why (also while shutting down)."""
    if lifecycle.draining:
        raise ModelNotReady("the server is shutting down")
    if not registry.ready:
        raise ModelNotReady("the server is not ready: " + "; ".join(registry.problems()))
    return {"ready": True}


META = dict(response_model=ModelMetadata, responses={404: ERRORS[404], 503: ERRORS[503]})
READY = dict(response_model=ModelReadiness, responses={404: ERRORS[404], 503: ERRORS[503]})


@router.get("/models/{name}", summary="Model metadata", **META)  # type: ignore[arg-type]
def model_metadata(name: str, registry: RegistryDep) -> dict[str, Any]:
    """Versions, platform and the input and output tensors (datatype, shape)."""
    return oip.model_metadata(registry.get(name).card)


@router.get("/models/{name}/versions/{version}", summary="Model metadata (one version)", **META)  # type: ignore[arg-type]
def model_version_metadata(name: str, version: str, registry: RegistryDep) -> dict[str, Any]:
    """Like /v2/models/{name}; the version must be the one served."""
    card = registry.get(name).card
    oip.check_version(card, version)
    return oip.model_metadata(card)


@router.get("/models/{name}/ready", summary="Model readiness", **READY)  # type: ignore[arg-type]
def model_ready(name: str, registry: RegistryDep) -> dict[str, Any]:
    """200 when the model serves; 503 while it loads or if it failed; 404 if unknown."""
    return {"name": registry.get(name).name, "ready": True}


@router.get("/models/{name}/versions/{version}/ready", summary="Model readiness (one version)", **READY)  # type: ignore[arg-type]
def model_version_ready(name: str, version: str, registry: RegistryDep) -> dict[str, Any]:
    """Like /v2/models/{name}/ready; the version must be the one served."""
    oip.check_version(registry.get(name).card, version)
    return {"name": name, "ready": True}


INFER = dict(
    response_model=InferResponse,
    responses={
        200: {
            "description": (
                "JSON; with binary outputs, the JSON then their bytes "
                "(Inference-Header-Content-Length gives the JSON's length)."
            ),
            "model": InferResponse,  # the schema of the JSON form
            "content": {
                "application/json": {},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        **ERRORS,
    },
    openapi_extra=INFER_BODY,
    response_class=Response,
)


async def infer(name: str, request: Request, call: OipDep) -> Response:
    """Probability, decision and peaks of each signal; the per-sample scores on request."""
    return await _infer(request, call.registry, call.runner, name, None)


async def infer_version(name: str, version: str, request: Request, call: OipDep) -> Response:
    """Like /v2/models/{name}/infer; the version must be the one served."""
    return await _infer(request, call.registry, call.runner, name, version)


@dataclass(frozen=True, slots=True)
class OipCall:
    """What the inference routes need from the lifespan: one dependency, called directly."""

    registry: Registry
    runner: Runner


async def oip_call(request: Request) -> OipCall:
    return OipCall(await get_registry(request), await get_runner(request))


OipDep = Annotated[OipCall, Depends(oip_call)]


def add_infer_routes(app: FastAPI) -> None:
    """The inference routes on the app itself, among its leading routes, served by
    ``DirectRoutes`` as /v1's detection routes are (see ``add_leading_routes``)."""
    routes: list[tuple[str, Callable[..., Any], str]] = [
        ("/v2/models/{name}/infer", infer, "Inference"),
        ("/v2/models/{name}/versions/{version}/infer", infer_version, "Inference (one version)"),
    ]
    doc = {**INFER, "openapi_extra": {**INFER_BODY, "parameters": HEADER_PARAMETERS}}
    add_leading_routes(app, routes, OipRoute, tags=list(router.tags), **doc)


def query_not_read(request: Request) -> str:
    names = ", ".join(repr(name) for name in dict.fromkeys(request.query_params.keys())) or "''"
    return (
        f"this route reads no query parameters (the query gives {names}): give threshold and "
        'min_distance in the request\'s "parameters", as in {"parameters": {"threshold": 0.5}, '
        '"inputs": [...]} (with binary tensor data too, in its JSON part)'
    )


async def _infer(
    request: Request, registry: Registry, runner: Runner, name: str, version: str | None
) -> Response:
    """Read, decode, queue for the model's batcher (as /v1 does), encode."""
    if request.scope.get("query_string"):  # an option here would be ignored: say where it goes
        raise InvalidInput(query_not_read(request))
    header_length = one_header(request, oip.HEADER_LENGTH)
    content_encoding = request.headers.get("content-encoding")
    status = registry.status(name)  # 404 before reading the body
    if status.model is not None:  # a version it does not serve: 404 before the body's refusals
        oip.check_version(status.model.card, version)

    def too_large() -> BodyTooLarge:  # /v1's message suggests .npy; say what helps here
        return BodyTooLarge(
            f"body larger than {runner.max_body_bytes} bytes (SHAPE_DETECTOR_MAX_BODY_BYTES): send "
            "fewer signals per request, or binary tensor data (4 bytes per FP32 sample) instead of JSON"
        )

    try:  # 413 or 400 before the model's 503 and the queue's: those say retry, no retry cures these
        runner.check_head(request)
    except BodyTooLarge:
        raise too_large() from None
    oip.check_version(registry.get(name).card, version)  # 404 or 503 before reading the body

    async def read(held: Held) -> Body:
        try:
            return await runner.read_body(request, held)
        except BodyTooLarge:
            raise too_large() from None

    def decode(model: OnnxModel, body: Body) -> oip.InferRequest:
        oip.check_version(model.card, version)  # the model may have been reloaded meanwhile
        return oip.decode_infer(
            model.card,
            body,
            runner.limits,
            header_length=header_length,
            content_encoding=content_encoding,
            model_name=name,
        )

    def finish(model: OnnxModel, decoded: oip.InferRequest) -> Finish:
        return Shared(oip.encode_infer_many, model.card, decoded)

    # 503 before reading the body if the queue is full, or its bytes would pass the bound
    with registry.admit(name) as admission, runner.inflight.hold() as held:
        encoded: oip.Encoded = await runner.run(
            request, registry, name, read(held), decode, finish, admission=admission
        )
    headers = None if encoded.header_length is None else {oip.HEADER_LENGTH: str(encoded.header_length)}
    return Response(encoded.body, media_type=encoded.media_type, headers=headers)
