"""The /v1 detection API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response

from app.api.deps import DetectDep, RegistryDep, SettingsDep, query_parameters_doc
from app.api.routing import RequestOnlyRoute, add_leading_routes
from app.api.schemas import ERRORS, DetectRequest, DetectResponse, Message, ModelList, example_signal
from app.core.card import Card

router = APIRouter(prefix="/v1", tags=["v1"])

# Said in the schema's description: an example is sent as it is by "Try it out" and by
# contract tests, and no text is a .npy file.
_npy_doc = "The bytes np.save writes: a 1-D array for one signal, 2-D for several of one length."
DETECT_BODY: dict[str, Any] = {
    "parameters": query_parameters_doc(),
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": DetectRequest.model_json_schema(),
                "examples": {
                    "primer": {
                        "summary": "The primer's figure: two events and a spike",
                        "value": {"signals": [example_signal()], "return_scores": False},
                    },
                    "options": {
                        "summary": "Two signals, own threshold and spacing",
                        "value": {
                            "signals": [example_signal(), example_signal(256)],
                            "threshold": 0.6,
                            "min_distance": 30,
                        },
                    },
                },
            },
            "application/x-npy": {
                "schema": {"type": "string", "format": "binary", "description": _npy_doc},
            },
        },
    },
}
DETECT_DOC = dict(
    response_model=DetectResponse,
    # The route answers with a plain Response (the body is encoded by the pipeline), for which
    # FastAPI documents no content: the answer's JSON schema is given here.
    responses={
        200: {"model": DetectResponse, "description": "One result per signal, in request order."},
        **ERRORS,
    },
    openapi_extra=DETECT_BODY,
    response_class=Response,
)


async def detect(request: Request, call: DetectDep) -> Response:
    """Probability, decision and peak locations of each signal (JSON or .npy body)."""
    return await call(request)


async def detect_with(name: str, request: Request, call: DetectDep) -> Response:
    """Like /v1/detect, with the model named in the path."""
    return await call(request, name)


def add_detection_routes(app: FastAPI) -> None:
    """The detection routes, the hot path, on the app itself and ahead of the others, served
    by ``DirectRoutes`` (see ``add_leading_routes``)."""
    routes: list[tuple[str, Callable[..., Any], str]] = [
        ("/v1/detect", detect, "Detect events with the default model"),
        ("/v1/models/{name}/detect", detect_with, "Detect events with a named model"),
    ]
    add_leading_routes(app, routes, RequestOnlyRoute, tags=["v1"], **DETECT_DOC)


@router.get("/models", response_model=ModelList, summary="List the served models")
async def list_models(registry: RegistryDep, settings: SettingsDep) -> ModelList:
    """The card of every model that is loaded and serving, and which one /v1/detect uses."""
    return ModelList(default=settings.DEFAULT_MODEL, models=[m.card for m in registry.models()])


@router.get(
    "/models/{name}",
    response_model=Card,
    responses={
        404: ERRORS[404],
        503: {
            "model": Message,
            "description": (
                "The model is loading or failed to load (Retry-After: 5), or the server is shutting "
                "down (Retry-After: 1)."
            ),
        },
    },
    summary="One model's card",
)
def get_model(name: str, registry: RegistryDep) -> Card:
    """The model card: names, lengths, threshold, metrics, provenance."""
    return registry.get(name).card
