"""Helpers for the reliability and security tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import load_settings
from tests.api.conftest import wait_ready

KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-0123456789abcdef"
FILE_KEY = "file-key-0123456789abcdef"


@contextmanager
def app_client(
    models_dir: Path, *, raise_server_exceptions: bool = True, **overrides: Any
) -> Iterator[TestClient]:
    """A TestClient (lifespan run, models ready) for the tiny test models and these settings."""
    settings = load_settings(MODEL_DIR=models_dir, WINDOW=1024, **overrides)
    with TestClient(create_app(settings), raise_server_exceptions=raise_server_exceptions) as client:
        wait_ready(client)
        yield client


@pytest.fixture(scope="module")
def client(models_dir: Path) -> Iterator[TestClient]:
    """Default settings (no keys, CORS off) on the tiny models."""
    with app_client(models_dir) as c:
        yield c
