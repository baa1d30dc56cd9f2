"""A full queue answers 503 with Retry-After at once, and the service recovers."""

import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.core.model import OnnxModel
from app.main import create_app
from app.settings import load_settings
from tests.api.conftest import wait_ready


def test_full_queue_gives_503_then_recovers(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate, entered = threading.Event(), threading.Event()
    original = OnnxModel.run

    def held_run(self: OnnxModel, batch: np.ndarray) -> np.ndarray:
        if batch.shape[1] == 777:  # only the test's marker length waits at the gate
            entered.set()
            gate.wait(20)
        return original(self, batch)

    monkeypatch.setattr(OnnxModel, "run", held_run)
    # INLINE_MAX_SAMPLES=0: the held request must wait in a worker, not on the event loop.
    settings = load_settings(MODEL_DIR=models_dir, MAX_QUEUE=1, INFERENCE_WORKERS=1, INLINE_MAX_SAMPLES=0)
    body = {"signals": [[0.0] * 777]}
    with TestClient(create_app(settings)) as c, ThreadPoolExecutor(2) as pool:
        wait_ready(c)
        running = pool.submit(c.post, "/v1/detect", json=body)
        assert entered.wait(10)
        queued = pool.submit(c.post, "/v1/detect", json=body)
        for _ in range(200):
            depth = re.search(r'shape_detector_queue_depth\{model="bump"\} (\S+)', c.get("/metrics").text)
            if depth and float(depth.group(1)) == 1:
                break
            time.sleep(0.05)
        refused = c.post("/v1/detect", json=body)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert (
            refused.json()["detail"] == "1 request is waiting for this model (the limit is 1); retry shortly"
        )
        # Refused before its body is read: a full queue holds no more bodies in memory.
        read: list[str] = []

        def chunks(route: str) -> Iterator[bytes]:
            read.append(route)
            yield b'{"signals": [[' + b"0," * 776 + b"0]]}"

        for route in ("/v1/detect", "/v2/models/bump/infer"):
            early = c.post(route, content=chunks(route), headers={"Content-Type": "application/json"})
            assert early.status_code == 503 and early.headers["retry-after"] == "1", early.text
        assert read == []
        gate.set()
        assert running.result(20).status_code == 200 and queued.result(20).status_code == 200
        assert c.post("/v1/detect", json=body).status_code == 200
