"""The service with a bug injected, for tests of what a real server answers to a 500.

Looking up the model named ``BUGGY`` fails with an unexpected error, so these requests answer
500: ``POST /v1/models/injected-bug/detect`` (the hot path, served by DirectRoutes) and
``GET /v1/models/injected-bug`` (a route FastAPI serves). Every other request is served as usual.
"""

from __future__ import annotations

from fastapi import FastAPI

from app.core.registry import ModelStatus, Registry
from app.main import app_from_env as service

BUGGY = "injected-bug"


def app_from_env() -> FastAPI:
    """``uvicorn --factory tests.integration.faulty:app_from_env``."""
    status = Registry.status  # every lookup of a model by name (``get`` too) starts here

    def failing_status(self: Registry, name: str) -> ModelStatus:
        if name == BUGGY:
            raise RuntimeError(f"a bug injected into the lookup of model {name!r}")
        return status(self, name)

    Registry.status = failing_status  # type: ignore[method-assign]
    return service()
