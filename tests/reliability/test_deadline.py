"""Per-request deadline: 504 when the result is late; a timed-out queued request never runs.

No timing luck: the model is held at a gate (as in tests/api/test_overload.py) for the test's
marker lengths, so a request is certainly late; the deadline is tiny.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.api.deps import WATCH_CLIENT_SAMPLES
from app.core.model import InferenceOptions, OnnxModel
from app.settings import load_settings
from tests.reliability.conftest import app_client

HELD, QUEUED, LATER = 777, 778, 779  # marker lengths


Gate = tuple[threading.Event, threading.Semaphore, list[int]]


@pytest.fixture()
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    """(gate, entered, widths run): batches of width HELD wait at the gate; ``entered`` is
    released once per batch held."""
    gate, entered = threading.Event(), threading.Semaphore(0)
    widths: list[int] = []
    original = OnnxModel.run

    def held_run(self: OnnxModel, batch: np.ndarray) -> np.ndarray:
        widths.append(batch.shape[1])
        if batch.shape[1] == HELD:
            entered.release()
            gate.wait(20)
        return original(self, batch)

    monkeypatch.setattr(OnnxModel, "run", held_run)
    yield gate, entered, widths
    gate.set()


def batcher_threads(models_dir: Path) -> int:
    """Batches one model computes at once (one if the setting does not exist)."""
    return int(getattr(load_settings(MODEL_DIR=models_dir), "INFERENCE_WORKERS", 1))


def hold_every_batcher_thread(
    c: TestClient, pool: ThreadPoolExecutor, entered: threading.Semaphore, n: int
) -> list[Future[Any]]:
    """One HELD request per batcher thread, each certainly running (held) before the next."""
    held = []
    for _ in range(n):
        held.append(pool.submit(c.post, "/v1/detect", json=signal(HELD)))
        assert entered.acquire(timeout=10)
    return held


def signal(n: int) -> dict[str, list[list[float]]]:
    return {"signals": [[0.0] * n]}


def v2_body(n: int) -> dict[str, object]:
    return {"inputs": [{"name": "signal", "shape": [1, n], "datatype": "FP32", "data": [0.0] * n}]}


def test_late_result_is_504_and_a_timed_out_queued_request_never_runs(models_dir: Path, gate: Gate) -> None:
    release, entered, widths = gate
    n = batcher_threads(models_dir)
    # INLINE_MAX_SAMPLES=0: held requests wait in the workers, never on the event loop.
    settings = {"REQUEST_TIMEOUT_S": 0.3, "INLINE_MAX_SAMPLES": 0}
    with app_client(models_dir, **settings) as c, ThreadPoolExecutor(n + 1) as pool:
        running = hold_every_batcher_thread(c, pool, entered, n)
        # Queued behind HELD: its deadline passes while it waits in the queue.
        queued = c.post("/v1/detect", json=signal(QUEUED))
        assert queued.status_code == 504, queued.text
        assert "SHAPE_DETECTOR_REQUEST_TIMEOUT_S" in queued.json()["detail"]
        assert "0.3 s" in queued.json()["detail"]
        # The running ones time out too, while the model still holds them.
        for f in running:
            r = f.result(10)
            assert r.status_code == 504 and r.headers["x-request-id"]
        # Same on /v2, in the protocol's error format.
        v2 = c.post("/v2/models/bump/infer", json=v2_body(QUEUED))
        assert v2.status_code == 504 and "SHAPE_DETECTOR_REQUEST_TIMEOUT_S" in v2.json()["error"]
        assert widths.count(HELD) == n
        release.set()
        # FIFO: once LATER has a result, the batcher has been past QUEUED's place in the queue.
        assert c.post("/v1/detect", json=signal(LATER)).status_code == 200
        assert QUEUED not in widths, "a request whose caller gave up must not run"
        assert widths.count(LATER) == 1
        metrics = c.get("/metrics").text
        assert f'route="/v1/detect",status="504"}} {n + 1}.0' in metrics


def test_the_deadline_leaves_the_batcher_usable(models_dir: Path, gate: Gate) -> None:
    """Many requests time out while the model is held; afterwards every new one succeeds."""
    release, entered, widths = gate
    n = batcher_threads(models_dir)
    settings = {"REQUEST_TIMEOUT_S": 0.2, "MAX_QUEUE": 8, "INLINE_MAX_SAMPLES": 0}  # held in workers only
    with app_client(models_dir, **settings) as c, ThreadPoolExecutor(n + 8) as pool:
        held = hold_every_batcher_thread(c, pool, entered, n)
        late = [pool.submit(c.post, "/v1/detect", json=signal(QUEUED)) for _ in range(6)]
        assert [f.result(10).status_code for f in late] == [504] * 6
        assert [f.result(10).status_code for f in held] == [504] * n
        release.set()
        results = [pool.submit(c.post, "/v1/detect", json=signal(LATER)) for _ in range(8)]
        assert [f.result(10).status_code for f in results] == [200] * 8
        assert QUEUED not in widths


@pytest.mark.parametrize("length", [40_000, WATCH_CLIENT_SAMPLES + 10_000])
def test_a_long_request_past_its_deadline_stops_before_its_next_call(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, length: int
) -> None:
    """A long signal runs in many onnxruntime calls; once its deadline passes (504) the calls
    not yet started are skipped: the CPU goes to requests someone still waits for. From
    WATCH_CLIENT_SAMPLES on, a request also watches for its client leaving while it waits."""
    window = OnnxModel(models_dir / "bump", InferenceOptions(window=1024)).plan.window
    gate, entered = threading.Event(), threading.Semaphore(0)
    widths: list[int] = []
    original = OnnxModel.run

    def held_run(self: OnnxModel, batch: np.ndarray) -> np.ndarray:
        widths.append(batch.shape[1])
        if batch.shape[1] == window and not gate.is_set():
            entered.release()
            gate.wait(20)
        return original(self, batch)

    # One window per call: a 40 000-sample signal is about 50 calls.
    calls_in_all = len(OnnxModel(models_dir / "bump", InferenceOptions(window=1024)).plan.split(0, length))
    settings = {"REQUEST_TIMEOUT_S": 0.3, "INLINE_MAX_SAMPLES": 0, "MAX_BATCH_SAMPLES": window}
    n = batcher_threads(models_dir)
    with app_client(models_dir, **settings) as c:
        monkeypatch.setattr(OnnxModel, "run", held_run)  # after the models' warm-up calls
        try:
            late = c.post("/v1/detect", json=signal(length))
            assert late.status_code == 504, late.text
            assert entered.acquire(timeout=0)  # its first call was held when its time ran out
        finally:
            gate.set()
        # FIFO: once this answer is back, the long request's worker is past it.
        assert c.post("/v1/detect", json=signal(LATER)).status_code == 200
        calls = widths.count(window)
        assert 1 <= calls <= n, f"{calls} calls ran for a request given up (at most {n} were running)"
        metrics = c.get("/metrics").text
        assert 'shape_detector_abandoned_requests_total{model="bump"} 1.0' in metrics
        # The same request, waited for, runs every call.
        assert c.post("/v1/detect", json=signal(length)).status_code == 200
        assert widths.count(window) - calls == calls_in_all - 1  # all but the longer last one
    # Nobody is left to read the abandoned request's outcome, and nothing complains of it
    # (asyncio complains when such a future is freed).
    gc.collect()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


def test_default_deadline_is_generous(models_dir: Path) -> None:
    s = load_settings(MODEL_DIR=models_dir)
    assert (s.REQUEST_TIMEOUT_S, s.BODY_TIMEOUT_S, s.SHUTDOWN_TIMEOUT_S) == (60.0, 60.0, 30.0)


def test_an_infinite_timeout_is_no_limit(models_dir: Path) -> None:
    """``inf`` for the body and request timeouts, documented as no limit, is taken and serves."""
    with app_client(models_dir, REQUEST_TIMEOUT_S="inf", BODY_TIMEOUT_S="inf") as c:
        assert c.post("/v1/detect", json={"signals": [[0.0] * 100]}).status_code == 200
