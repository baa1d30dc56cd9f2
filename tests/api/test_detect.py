import io
import itertools
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.api.schemas import DetectResponse
from app.core.affinity import PROCESS_CPUS
from app.core.batching import Batcher
from app.main import create_app
from app.settings import load_settings
from tests.api.conftest import wait_ready
from tests.cpus import needs_two_cpus


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def test_json_detect_contract(client: TestClient) -> None:
    rng = np.random.default_rng(0)
    signals = [rng.standard_normal(n).round(4).tolist() for n in (300, 500, 64)]
    r = client.post("/v1/detect", json={"signals": signals, "return_scores": True})
    assert r.status_code == 200, r.text
    body = DetectResponse.model_validate(r.json())
    assert body.model.name == "bump" and body.model.version == "0.0.1"
    assert body.threshold == 0.5 and body.min_distance == 10  # the card's defaults
    assert len(body.results) == 3
    for sig, res in zip(signals, body.results, strict=True):
        assert res.scores is not None and len(res.scores) == len(sig)
        assert res.probability == pytest.approx(max(res.scores), abs=1e-6)
        assert res.detected == (res.probability >= body.threshold)
        idx = [p.index for p in res.peaks]
        assert idx == sorted(idx)
    assert "x-request-id" in r.headers


def test_a_peaks_probability_is_written_as_its_sample_in_scores(client: TestClient) -> None:
    """Both are the same float32: a client reading either gets the same number."""
    x = np.random.default_rng(1).standard_normal(400).tolist()
    r = client.post(
        "/v1/models/other/detect", json={"signals": [x], "threshold": 0.01, "return_scores": True}
    )
    (res,) = r.json()["results"]
    assert len(res["peaks"]) >= 3, "the test needs peaks"
    assert [p["probability"] for p in res["peaks"]] == [res["scores"][p["index"]] for p in res["peaks"]]


def test_scores_only_when_asked(client: TestClient) -> None:
    r = client.post("/v1/detect", json={"signals": [[0.0] * 100]})
    assert "scores" not in r.json()["results"][0]


def test_named_model_and_options(client: TestClient) -> None:
    x = np.random.default_rng(1).standard_normal(400).tolist()
    r = client.post("/v1/models/other/detect", json={"signals": [x], "threshold": 0.01, "min_distance": 3})
    assert r.status_code == 200
    body = r.json()
    assert body["model"]["name"] == "other" and body["threshold"] == 0.01 and body["min_distance"] == 3
    peaks = [p["index"] for p in body["results"][0]["peaks"]]
    assert all(b - a >= 3 for a, b in itertools.pairwise(peaks))


def test_npy_equals_json(client: TestClient) -> None:
    x = np.random.default_rng(2).standard_normal((3, 700))
    j = client.post("/v1/detect", json={"signals": x.tolist(), "return_scores": True}).json()
    for arr in (x, x.astype(np.float32)):
        r = client.post(
            "/v1/detect?return_scores=true", content=npy(arr), headers={"Content-Type": "application/x-npy"}
        )
        assert r.status_code == 200, r.text
        for a, b in zip(r.json()["results"], j["results"], strict=True):
            np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-5)
            assert [p["index"] for p in a["peaks"]] == [p["index"] for p in b["peaks"]]
    one = client.post("/v1/detect", content=npy(x[1]), headers={"Content-Type": "application/x-npy"})
    assert one.status_code == 200 and len(one.json()["results"]) == 1
    assert one.json()["results"][0]["probability"] == pytest.approx(j["results"][1]["probability"], abs=1e-5)


def test_result_independent_of_company_and_position(client: TestClient) -> None:
    rng = np.random.default_rng(3)
    target = rng.standard_normal(3000).tolist()  # longer than the 1024 window: windowed
    others = [rng.standard_normal(n).tolist() for n in (100, 3000, 1024, 2500)]
    alone = client.post("/v1/detect", json={"signals": [target], "return_scores": True}).json()["results"][0]
    for k in range(len(others) + 1):
        batch = [*others[:k], target, *others[k:]]
        res = client.post("/v1/detect", json={"signals": batch, "return_scores": True}).json()["results"][k]
        np.testing.assert_allclose(res["scores"], alone["scores"], atol=1e-5)
        assert res["peaks"] == alone["peaks"]


def test_models_and_cards(client: TestClient) -> None:
    r = client.get("/v1/models")
    assert r.status_code == 200
    names = [c["name"] for c in r.json()["models"]]
    assert names == ["bump", "other"]
    card = client.get("/v1/models/other").json()
    assert card["name"] == "other" and card["threshold"] == 0.5 and len(card["sha256"]) == 64
    assert client.get("/v1/models/nope").status_code == 404


def test_long_signal_in_windows_equals_whole(client: TestClient, tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    """A 60k-sample signal through the API (window 1024: ~80 windows) equals whole-signal inference."""
    from app.core.model import InferenceOptions, OnnxModel
    from app.core.peaks import find_peaks

    rng = np.random.default_rng(4)
    x = (rng.standard_normal(60_013) + np.sin(np.arange(60_013) / 3000) * 5).astype(np.float32)
    r = client.post(
        "/v1/detect?return_scores=true&threshold=0.2&min_distance=5",
        content=npy(x),
        headers={"Content-Type": "application/x-npy"},
    )
    assert r.status_code == 200
    got = r.json()["results"][0]
    whole = OnnxModel(tiny_model_dir, InferenceOptions(window=1 << 17)).run(x[None])[0]
    np.testing.assert_allclose(got["scores"], whole, atol=1e-4, rtol=0)
    assert got["probability"] == pytest.approx(float(whole.max()), abs=1e-4)
    expected = find_peaks(whole, 0.2, 5).index.tolist()
    assert len(expected) > 10, "the check needs peaks to compare"
    assert [p["index"] for p in got["peaks"]] == expected


def test_a_lone_small_request_runs_at_once_with_the_same_answer(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """INLINE_MAX_SAMPLES: scored on the event loop when nothing else is in flight; same bytes."""
    ran_now: list[bool] = []
    original = Batcher.run_now

    def spy(self: Batcher, *args: Any) -> tuple[bool, Any]:
        done, result = original(self, *args)
        ran_now.append(done)
        return done, result

    monkeypatch.setattr(Batcher, "run_now", spy)
    rng = np.random.default_rng(7)
    small = {"signals": [rng.standard_normal(n).round(4).tolist() for n in (300, 500)], "return_scores": True}
    large = {"signals": [rng.standard_normal(3000).round(4).tolist()]}
    answers = {}
    for inline in (0, 1000):
        settings = load_settings(MODEL_DIR=models_dir, WINDOW=1024, INLINE_MAX_SAMPLES=inline)
        with TestClient(create_app(settings)) as c:
            wait_ready(c)
            for _ in range(1000):  # the batcher's workers wait for work (a request at once needs them idle)
                ran_now.clear()
                first = c.post("/v1/detect", json=small)
                if ran_now == [True] or not inline:
                    break
            answers[inline] = [first, c.post("/v1/detect", json=large)]
            assert all(r.status_code == 200 for r in answers[inline])
    assert ran_now == [True]  # the small one (800 samples <= 1000) at once; the large one queued, not tried
    assert [r.content for r in answers[0]] == [r.content for r in answers[1000]]


def test_queued_requests_finished_together_equal_one_by_one(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests queued behind a busy worker share one batch and one finishing call (peaks,
    calibration and encoding for all of them); each answer is the one it gets alone."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import app.api.deps as deps
    from app.core.model import OnnxModel

    gate, entered = threading.Event(), threading.Event()
    original_run, original_respond = OnnxModel.run, deps.respond_many
    finished_together: list[int] = []

    def held_run(self: OnnxModel, batch: np.ndarray) -> np.ndarray:
        if batch.shape[1] == 777:  # the request that keeps the worker busy
            entered.set()
            gate.wait(20)
        return original_run(self, batch)

    def counted_respond(card: Any, requests: Any) -> Any:
        finished_together.append(len(requests))
        return original_respond(card, requests)

    monkeypatch.setattr(OnnxModel, "run", held_run)
    monkeypatch.setattr(deps, "respond_many", counted_respond)
    rng = np.random.default_rng(5)
    bodies: list[dict[str, Any]] = [
        {"signals": [rng.standard_normal(500).tolist()], "threshold": 0.05},
        {"signals": [rng.standard_normal(300).tolist(), rng.standard_normal(640).tolist()], "threshold": 0.2},
        {"signals": [rng.standard_normal(500).tolist()], "threshold": 0.05, "min_distance": 200},
        {"signals": [rng.standard_normal(400).tolist()], "return_scores": True},
        {"signals": [rng.standard_normal(800).tolist()], "threshold": 0.05},
    ]
    settings = load_settings(MODEL_DIR=models_dir, INFERENCE_WORKERS=1)
    with TestClient(create_app(settings)) as c, ThreadPoolExecutor(len(bodies) + 1) as pool:
        wait_ready(c)
        held = pool.submit(c.post, "/v1/detect", json={"signals": [[0.0] * 777]})
        assert entered.wait(10)
        futures = [pool.submit(c.post, "/v1/detect", json=b) for b in bodies]
        for _ in range(200):
            if f'shape_detector_queue_depth{{model="bump"}} {len(bodies)}.0' in c.get("/metrics").text:
                break
            time.sleep(0.05)
        gate.set()
        together = [f.result(20) for f in futures]
        assert held.result(20).status_code == 200
        alone = [c.post("/v1/detect", json=b) for b in bodies]
    assert len(bodies) in finished_together, finished_together  # one call finished all of them
    assert [r.status_code for r in together] == [200] * len(bodies)
    assert [r.content for r in together] == [r.content for r in alone]
    docs = [r.json() for r in together]
    assert sum(len(res["peaks"]) for d in docs for res in d["results"]) >= 5, "the test needs peaks"
    assert [d["min_distance"] for d in docs] == [10, 10, 200, 10, 10]
    assert "scores" in docs[3]["results"][0] and "scores" not in docs[0]["results"][0]


@needs_two_cpus
def test_a_lone_small_request_is_scored_on_the_event_loops_cpu(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SAME_CPU_MAX_SAMPLES: the inference thread scores a lone small request pinned to the event
    loop's CPU, with the event loop pinned there too; a larger request unpins both. The answers
    are the ones given unpinned."""
    import threading

    from app.api.deps import Runner
    from app.core.model import OnnxModel

    loop_thread: list[int] = []
    seen: list[tuple[set[int], set[int]]] = []  # (the scoring thread's CPUs, the event loop's)
    place, scores = Runner._place, OnnxModel.scores

    def place_spy(self: Runner, *args: Any) -> None:
        loop_thread[:] = [threading.get_native_id()]
        place(self, *args)

    def scores_spy(self: OnnxModel, *args: Any, **kwargs: Any) -> Any:
        seen.append((os.sched_getaffinity(0), os.sched_getaffinity(loop_thread[0])))
        return scores(self, *args, **kwargs)

    monkeypatch.setattr(Runner, "_place", place_spy)
    monkeypatch.setattr(OnnxModel, "scores", scores_spy)
    rng = np.random.default_rng(3)
    small = {"signals": [rng.standard_normal(n).round(4).tolist() for n in (300, 500)], "return_scores": True}
    large = {"signals": [rng.standard_normal(3000).round(4).tolist()]}
    everywhere = set(PROCESS_CPUS)
    answers = {}
    for most in (0, 1000):
        settings = load_settings(MODEL_DIR=models_dir, WINDOW=1024, SAME_CPU_MAX_SAMPLES=most)
        with TestClient(create_app(settings)) as c:
            wait_ready(c)
            seen.clear()
            # Lone once no other client sent a request for 0.1 s and the workers are idle; off,
            # 10 requests over more than 0.1 s must stay unpinned.
            for _ in range(200 if most else 10):
                time.sleep(0.02)
                first = c.post("/v1/detect", json=small)
                if most and len(seen[-1][0]) == 1:
                    break
            pinned = seen[-1]
            answers[most] = [first, c.post("/v1/detect", json=large)]
            assert all(r.status_code == 200 for r in answers[most])
            if most:
                assert len(pinned[0]) == 1 and pinned[0] == pinned[1]  # one CPU, the loop's
                assert seen[-1] == (everywhere, everywhere)  # 3000 samples > 1000: unpinned
            else:
                assert all(s == (everywhere, everywhere) for s in seen)
    assert [r.content for r in answers[0]] == [r.content for r in answers[1000]]


def test_any_float32_amplitude_is_answered_as_an_ordinary_one(client: TestClient) -> None:
    """Every finite float32 signal the service takes gets numbers, never null, and a signal
    scaled by a power of two gets the same answer (the graph normalises, exactly)."""
    big = np.float32(np.finfo(np.float32).max)
    alternating = np.resize(np.array([big, -big], np.float32), 256)
    r = client.post(
        "/v1/detect?return_scores=true",
        content=npy(alternating),
        headers={"Content-Type": "application/x-npy"},
    )
    assert r.status_code == 200, r.text
    result = r.json()["results"][0]
    assert isinstance(result["probability"], float) and all(isinstance(v, float) for v in result["scores"])
    x = np.random.default_rng(3).standard_normal((2, 300)).astype(np.float32)
    answers = [
        client.post(
            "/v1/detect", content=npy(x * np.float32(2.0**e)), headers={"Content-Type": "application/x-npy"}
        ).json()["results"]
        for e in (0, 100, -100)
    ]
    assert answers[1] == answers[0] and answers[2] == answers[0]
