"""Administration: reload a model from disk (hot reload). Needs an API key when keys are set."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from pydantic import BaseModel, Field

from app.api.deps import RegistryDep
from app.api.schemas import Message
from app.core.reload import reload_model

router = APIRouter(prefix="/admin", tags=["admin"])


class ReloadResult(BaseModel):
    name: str
    version: str = Field(description="The version now serving (from its card).")
    previous_version: str | None = Field(description="The version it replaced (null if none served).")
    sha256: str = Field(description="The model file's SHA-256, verified against the card.")
    seconds: float = Field(description="Time to load, verify and warm up.")


@router.post(
    "/models/{name}/reload",
    response_model=ReloadResult,
    summary="Reload a model from disk",
    responses={
        404: {"model": Message, "description": "Unknown model."},
        409: {"model": Message, "description": "Another reload runs, or the models are still loading."},
        422: {"model": Message, "description": "The files do not load or verify; the old version serves on."},
        503: {"model": Message, "description": "The service is shutting down."},
    },
)
async def reload(name: str, registry: RegistryDep) -> ReloadResult:
    """Load `MODEL_DIR/{name}/` again: verify the model file's SHA-256 against its card, load and
    warm it up while the current version serves, then swap. Requests already queued finish on
    the old version; every response names the version that computed it."""
    done = await asyncio.to_thread(reload_model, registry, name)
    return ReloadResult(
        name=done.name,
        version=done.version,
        previous_version=done.previous_version,
        sha256=done.sha256,
        seconds=round(done.seconds, 3),
    )
