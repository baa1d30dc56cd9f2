"""Administration: reload a model from disk (hot reload). Needs an API key when keys are set."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from pydantic import BaseModel, Field

from app.api.deps import RegistryDep, SettingsDep
from app.api.schemas import Message
from app.core.reload import ReloadConflict, reload_model

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
        409: {
            "model": Message,
            "description": (
                "Another reload runs, the models are still loading, or the server runs several "
                "worker processes (a reload would reach one of them)."
            ),
        },
        422: {"model": Message, "description": "The files do not load or verify; the old version serves on."},
        503: {"model": Message, "description": "The service is shutting down."},
    },
)
async def reload(name: str, registry: RegistryDep, settings: SettingsDep) -> ReloadResult:
    """Load `MODEL_DIR/{name}/` again: verify the model file's SHA-256 against its card, load and
    warm it up while the current version serves, then swap. Requests already queued finish on
    the old version; every response names the version that computed it."""
    if settings.WORKERS > 1:
        # Each worker process holds its own models: the one this request reached would serve the
        # new version, the others the old one, for as long as they run.
        raise ReloadConflict(
            f"this server runs {settings.WORKERS} worker processes (SHAPE_DETECTOR_WORKERS), each "
            "with its own models: a reload would reach only the one that took this request. Restart "
            "the server, or send SIGHUP to its main process (uvicorn replaces each worker with one "
            "that loads the models anew), or run one worker per instance"
        )
    done = await asyncio.to_thread(reload_model, registry, name)
    return ReloadResult(
        name=done.name,
        version=done.version,
        previous_version=done.previous_version,
        sha256=done.sha256,
        seconds=round(done.seconds, 3),
    )
