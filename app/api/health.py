"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import LifecycleDep, RegistryDep
from app.api.schemas import Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
def healthz() -> dict[str, str]:
    """200 while the process runs."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}}, summary="Readiness")
def readyz(registry: RegistryDep, lifecycle: LifecycleDep) -> JSONResponse:
    """200 when every model is loaded and answered a warm-up inference; else 503 and why.

    503 too once SIGTERM has arrived (draining): requests in flight finish, new ones go elsewhere.
    """
    draining = ["draining: the server is shutting down"] if lifecycle.draining else []
    body = Readiness(
        ready=registry.ready and not draining,
        models={name: s.state for name, s in registry.statuses.items()},
        reasons=draining + registry.problems(),
    )
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)
