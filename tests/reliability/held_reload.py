"""The service with reloads that can be held, for a real server process:
``start_server(tmp_path, factory="tests.reliability.held_reload:app")``.

While ``<model dir>/hold`` exists, a reload of that model (not its load at start-up) waits once
it has read its files, and says so by creating ``<model dir>/held``: a test can then change the
files, or send signals, while the reload is known to run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from app.core import reload
from app.core.model import OnnxModel
from app.main import app_from_env

HOLD = "hold"
HELD = "held"
LONGEST_HOLD_S = 60.0  # a test that fails without removing the hold does not hang the server


class HeldReload(OnnxModel):
    def __init__(self, model_dir: Path, *args: Any, **kwargs: Any) -> None:
        super().__init__(model_dir, *args, **kwargs)  # the files are read
        if (model_dir / HOLD).exists():
            (model_dir / HELD).touch()
            deadline = time.monotonic() + LONGEST_HOLD_S
            while (model_dir / HOLD).exists() and time.monotonic() < deadline:
                time.sleep(0.02)


def app() -> FastAPI:
    reload.OnnxModel = HeldReload  # type: ignore[attr-defined]  # reloads only: start-up loads through the registry
    return app_from_env()
