"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import RegistryDep
from app.api.schemas import Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
def healthz() -> dict[str, str]:
    """200 while the process runs."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}}, summary="Readiness")
def readyz(registry: RegistryDep) -> JSONResponse:
    """200 when every model is loaded and answered a warm-up inference; else 503 and why."""
    body = Readiness(
        ready=registry.ready,
        models={name: s.state for name, s in registry.statuses.items()},
        reasons=registry.problems(),
    )
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)
