from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import load_settings


def wait_ready(client: TestClient) -> None:
    import time

    for _ in range(200):
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"not ready: {client.get('/readyz').json()}")


@pytest.fixture(scope="module")
def client(models_dir: Path) -> Iterator[TestClient]:
    settings = load_settings(
        MODEL_DIR=models_dir,
        MAX_SIGNALS=16,
        MAX_SAMPLES=200_000,
        MAX_SIGNAL_LENGTH=100_000,
        MAX_BODY_BYTES=4_000_000,
        WINDOW=1024,
    )
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        yield c
