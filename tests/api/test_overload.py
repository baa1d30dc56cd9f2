"""A full queue answers 503 with Retry-After at once, and the service recovers."""

import gc
import io
import re
import shutil
import threading
import time
import weakref
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi import Request
from fastapi.testclient import TestClient

from app.api.deps import Runner
from app.core import registry as registry_module
from app.core.inflight import Held
from app.core.model import OnnxModel
from app.main import create_app
from app.settings import load_settings
from tests.api.conftest import wait_ready

MARKER = 777  # the length of the test's held requests


def hold_marked_runs(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """onnxruntime calls on signals of MARKER samples wait at a gate: (gate, entered); set the
    gate to let them run. Other calls run at once."""
    gate, entered = threading.Event(), threading.Event()
    original = OnnxModel.run

    def held_run(self: OnnxModel, batch: np.ndarray) -> np.ndarray:
        if batch.shape[1] == MARKER:  # only the test's marker length waits at the gate
            entered.set()
            gate.wait(20)
        return original(self, batch)

    monkeypatch.setattr(OnnxModel, "run", held_run)
    return gate, entered


def fill_queue_of_one(
    c: TestClient, pool: ThreadPoolExecutor, body: dict[str, Any], entered: threading.Event
) -> tuple[Future[Any], Future[Any]]:
    """With MAX_QUEUE=1 and the marked runs held: one request running (held), one queued."""
    running = pool.submit(c.post, "/v1/detect", json=body)
    assert entered.wait(10)
    queued = pool.submit(c.post, "/v1/detect", json=body)
    for _ in range(200):
        depth = re.search(r'shape_detector_queue_depth\{model="bump"\} (\S+)', c.get("/metrics").text)
        if depth and float(depth.group(1)) == 1:
            break
        time.sleep(0.05)
    return running, queued


def test_full_queue_gives_503_then_recovers(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate, entered = hold_marked_runs(monkeypatch)
    # INLINE_MAX_SAMPLES=0: the held request must wait in a worker, not on the event loop.
    settings = load_settings(MODEL_DIR=models_dir, MAX_QUEUE=1, INFERENCE_WORKERS=1, INLINE_MAX_SAMPLES=0)
    body = {"signals": [[0.0] * MARKER]}
    with TestClient(create_app(settings)) as c, ThreadPoolExecutor(2) as pool:
        wait_ready(c)
        running, queued = fill_queue_of_one(c, pool, body, entered)
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


def test_with_the_queue_full_a_body_its_headers_refuse_is_refused_for_that_not_503(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body over MAX_BODY_BYTES by its Content-Length, or compressed, is refused whatever the
    queue: a full queue's 503 ("retry shortly") would send the client back with the same body
    for ever."""
    gate, entered = hold_marked_runs(monkeypatch)
    settings = load_settings(
        MODEL_DIR=models_dir, MAX_QUEUE=1, MAX_BODY_BYTES=16384, INFERENCE_WORKERS=1, INLINE_MAX_SAMPLES=0
    )
    body = {"signals": [[0.0] * MARKER]}
    json_type = {"Content-Type": "application/json"}
    with TestClient(create_app(settings)) as c, ThreadPoolExecutor(2) as pool:
        wait_ready(c)
        running, queued = fill_queue_of_one(c, pool, body, entered)
        assert c.post("/v1/detect", json=body).status_code == 503  # the queue is full
        large = b"[" + b"0," * 9000 + b"0]"
        for route, key in (("/v1/detect", "detail"), ("/v2/models/bump/infer", "error")):
            answer = c.post(route, content=large, headers=json_type)
            assert answer.status_code == 413, answer.text
            assert answer.json()[key].startswith(
                "body larger than 16384 bytes (SHAPE_DETECTOR_MAX_BODY_BYTES)"
            )
        for route, status, key in (("/v1/detect", 415, "detail"), ("/v2/models/bump/infer", 400, "error")):
            answer = c.post(route, content=b"{}", headers={**json_type, "Content-Encoding": "gzip"})
            assert answer.status_code == status, answer.text
            assert (
                answer.json()[key] == "Content-Encoding 'gzip' is not supported: send the body uncompressed"
            )
        gate.set()
        assert running.result(20).status_code == 200 and queued.result(20).status_code == 200


@pytest.mark.parametrize("state", ["loading", "failed"])
def test_while_its_model_loads_or_failed_a_body_its_headers_refuse_is_refused_for_that_not_503(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state: str
) -> None:
    """A body over MAX_BODY_BYTES by its Content-Length, or compressed, sent to a model still
    loading or that failed to load got the model's 503 ("retry"): the client would retry a
    request that can never succeed. It is refused for what it is, as with a full queue; a body
    the model could take still gets the 503."""
    root = tmp_path / "models"
    shutil.copytree(models_dir, root)
    loaded = threading.Event()  # held shut while the test runs: 'other' stays loading
    if state == "failed":
        with (root / "other" / "model.onnx").open("ab") as f:
            f.write(b"tampered")  # no longer the file its card's sha256 names
    else:

        class HeldLoading(OnnxModel):
            def __init__(self, model_dir: Path, *args: Any, **kwargs: Any) -> None:
                if model_dir.name == "other":
                    loaded.wait(20)
                super().__init__(model_dir, *args, **kwargs)

        monkeypatch.setattr(registry_module, "OnnxModel", HeldLoading)
    settings = load_settings(MODEL_DIR=root, MAX_BODY_BYTES=16384)
    json_type = {"Content-Type": "application/json"}
    with TestClient(create_app(settings)) as c:
        try:
            for _ in range(200):
                if c.get("/readyz").json()["models"] == {"bump": "ready", "other": state}:
                    break
                time.sleep(0.05)
            assert c.get("/readyz").json()["models"] == {"bump": "ready", "other": state}
            large = b"[" + b"0," * 9000 + b"0]"
            for route, key, coding_status in (
                ("/v1/models/other/detect", "detail", 415),
                ("/v2/models/other/infer", "error", 400),
            ):
                answer = c.post(route, content=b"{}", headers=json_type)
                assert answer.status_code == 503 and answer.headers["retry-after"] == "5", answer.text
                answer = c.post(route, content=large, headers=json_type)
                assert answer.status_code == 413, answer.text
                assert answer.json()[key].startswith(
                    "body larger than 16384 bytes (SHAPE_DETECTOR_MAX_BODY_BYTES)"
                )
                answer = c.post(route, content=b"{}", headers={**json_type, "Content-Encoding": "gzip"})
                assert answer.status_code == coding_status, answer.text
                assert (
                    answer.json()[key]
                    == "Content-Encoding 'gzip' is not supported: send the body uncompressed"
                )
            assert c.post("/v1/models/nope/detect", content=large, headers=json_type).status_code == 404
        finally:
            loaded.set()


class _Held(bytearray):
    """A body that can be watched (a plain bytearray takes no weak reference)."""


def test_a_queued_json_request_holds_its_signals_not_its_text(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a request is queued its JSON text is let go of (its signals are copies): a queue of
    large JSON requests holds their signals alone. A .npy body stays: its signals are views."""
    original_read = Runner.read_body
    bodies: dict[str, weakref.ref[_Held]] = {}

    async def watched_read(self: Runner, request: Request, held: Held) -> _Held:
        body = _Held(await original_read(self, request, held))
        bodies[request.url.path + request.headers["content-type"]] = weakref.ref(body)
        return body

    signal = np.random.default_rng(0).standard_normal(MARKER).astype(np.float32)
    expected = OnnxModel(models_dir / "bump").detect([signal])[0]
    gate, entered = hold_marked_runs(monkeypatch)
    monkeypatch.setattr(Runner, "read_body", watched_read)
    settings = load_settings(MODEL_DIR=models_dir, INFERENCE_WORKERS=1, INLINE_MAX_SAMPLES=0)
    buffer = io.BytesIO()
    np.save(buffer, signal[None])
    json_body = {"signals": [signal.tolist()]}
    v2_body = {
        "inputs": [{"name": "signal", "shape": [1, MARKER], "datatype": "FP32", "data": signal.tolist()}]
    }
    with TestClient(create_app(settings)) as c, ThreadPoolExecutor(3) as pool:
        wait_ready(c)
        running = pool.submit(c.post, "/v1/detect", json=json_body)
        assert entered.wait(10)
        queued = [
            pool.submit(c.post, "/v2/models/bump/infer", json=v2_body),
            pool.submit(
                c.post, "/v1/detect", content=buffer.getvalue(), headers={"Content-Type": "application/x-npy"}
            ),
        ]
        for _ in range(200):
            depth = re.search(r'shape_detector_queue_depth\{model="bump"\} (\S+)', c.get("/metrics").text)
            if depth and float(depth.group(1)) == 2:
                break
            time.sleep(0.05)
        gc.collect()
        alive = {key: ref() is not None for key, ref in bodies.items()}
        assert alive == {
            "/v1/detectapplication/json": False,  # scored now: its text is gone
            "/v2/models/bump/inferapplication/json": False,  # queued: its text is gone
            "/v1/detectapplication/x-npy": True,  # queued: its signals are views of the body
        }
        gate.set()
        answers = [running.result(20), *(f.result(20) for f in queued)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    for answer in (answers[0], answers[2]):
        (result,) = answer.json()["results"]
        assert result["probability"] == pytest.approx(expected.probability, abs=1e-6)
        assert [p["index"] for p in result["peaks"]] == expected.peaks.index.tolist()


def _inflight_bytes(c: TestClient) -> float:
    found = re.search(r"^shape_detector_inflight_bytes (\S+)$", c.get("/metrics").text, re.MULTILINE)
    assert found, "no shape_detector_inflight_bytes"
    return float(found.group(1))


def test_bodies_past_the_inflight_bytes_are_503_and_their_bytes_come_back(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MAX_INFLIGHT_BYTES bounds the bytes of bodies held at once, whatever their number: a
    request whose Content-Length would pass it is 503; a request's bytes are held until its
    answer is made, and given back on every path. (Unread bodies and chunked ones: a real
    server, tests/integration/test_server.py.)"""
    gate, entered = hold_marked_runs(monkeypatch)
    settings = load_settings(
        MODEL_DIR=models_dir,
        MAX_BODY_BYTES=4096,
        MAX_INFLIGHT_BYTES=6000,
        INFERENCE_WORKERS=1,
        INLINE_MAX_SAMPLES=0,
    )
    held_body = b'{"signals":[[' + b"0.0," * 776 + b"0.0]]}"  # 3123 bytes
    json_type = {"Content-Type": "application/json"}
    with TestClient(create_app(settings)) as c, ThreadPoolExecutor(2) as pool:
        wait_ready(c)
        assert _inflight_bytes(c) == 0
        running = pool.submit(c.post, "/v1/detect", content=held_body, headers=json_type)
        assert entered.wait(10)
        assert _inflight_bytes(c) == len(held_body)  # held while it is scored
        v2_body = {"inputs": [{"name": "signal", "shape": [1, 760], "datatype": "FP32", "data": [0.0] * 760}]}
        for route, body in (("/v1/detect", held_body), ("/v2/models/bump/infer", orjson.dumps(v2_body))):
            refused = c.post(route, content=body, headers=json_type)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1", refused.text
            assert (
                f"3123 bytes of request bodies are in flight and this request's {len(body)} more would "
                "pass the limit of 6000 (SHAPE_DETECTOR_MAX_INFLIGHT_BYTES)"
            ) in refused.text
        assert _inflight_bytes(c) == len(held_body)  # the refused bytes are not held
        gate.set()
        assert running.result(20).status_code == 200
        assert _inflight_bytes(c) == 0
        # Every path gives its bytes back: an answer, a body that is not JSON, one too large.
        assert c.post("/v1/detect", content=held_body, headers=json_type).status_code == 200
        assert c.post("/v1/detect", content=b"{" * 3000, headers=json_type).status_code == 400
        assert c.post("/v1/detect", content=b"0" * 5000, headers=json_type).status_code == 413
        assert c.post("/v1/detect", content=b"[" * 6000, headers=json_type).status_code == 413
        assert _inflight_bytes(c) == 0
        (result,) = c.post("/v1/detect", content=held_body + b" " * 900, headers=json_type).json()["results"]
        assert result["peaks"] == []  # room for the largest body again
