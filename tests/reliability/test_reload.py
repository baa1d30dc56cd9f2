"""Hot reload: POST /admin/models/{name}/reload verifies, loads, warms up and swaps atomically."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import os
import shutil
import signal
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.core import card as card_module
from app.core import heap
from app.core.batching import Batcher
from app.core.model import InferenceOptions, OnnxModel
from app.core.registry import Registry
from app.core.reload import ReloadConflict, reload_all, reload_model, reload_on_sighup
from app.main import create_app
from app.settings import load_settings
from tests.core.test_model import replaced_once_hashed
from tests.integration.conftest import ROOT, start_server
from tests.reliability.conftest import KEY_A, app_client
from tests.reliability.loadgen import run_load

SIGNAL = {"signals": [[0.0] * 300]}
HELD = 777


def set_version(model_dir: Path, version: str) -> None:
    path = model_dir / "card.json"
    card = json.loads(path.read_text())
    card["version"] = version
    path.write_text(json.dumps(card, indent=2) + "\n")


@pytest.fixture()
def own_models(models_dir: Path, tmp_path: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(models_dir, root)
    return root


@pytest.fixture()
def client(own_models: Path) -> Iterator[TestClient]:
    with app_client(own_models) as c:
        yield c


def version_of(r: Any) -> str:
    assert r.status_code == 200, r.text
    return str(r.json()["model"]["version"])


def test_reload_serves_the_new_version(client: TestClient, own_models: Path) -> None:
    assert version_of(client.post("/v1/detect", json=SIGNAL)) == "0.0.1"
    set_version(own_models / "bump", "0.0.2")
    assert version_of(client.post("/v1/detect", json=SIGNAL)) == "0.0.1"  # nothing changes by itself
    r = client.post("/admin/models/bump/reload")
    assert r.status_code == 200, r.text
    doc = r.json()
    assert (doc["name"], doc["version"], doc["previous_version"]) == ("bump", "0.0.2", "0.0.1")
    assert len(doc["sha256"]) == 64 and doc["seconds"] >= 0
    assert version_of(client.post("/v1/detect", json=SIGNAL)) == "0.0.2"
    v2 = client.post(
        "/v2/models/bump/infer",
        json={"inputs": [{"name": "signal", "shape": [1, 300], "datatype": "FP32", "data": [0.0] * 300}]},
    )
    assert v2.status_code == 200 and v2.json()["model_version"] == "0.0.2"
    assert client.get("/v2/models/bump").json()["versions"] == ["0.0.2"]
    assert client.get("/v2/models/bump/versions/0.0.1").status_code == 404
    assert [m["version"] for m in client.get("/v1/models").json()["models"]] == ["0.0.2", "0.0.1"]
    info = [
        line
        for line in client.get("/metrics").text.splitlines()
        if line.startswith("shape_detector_model_info{")
    ]
    assert [line for line in info if 'model="bump"' in line] == [
        'shape_detector_model_info{model="bump",version="0.0.2"} 1.0'
    ]
    assert client.get("/readyz").status_code == 200


def test_a_model_that_does_not_verify_is_not_swapped_in(client: TestClient, own_models: Path) -> None:
    with (own_models / "bump" / "model.onnx").open("ab") as fh:
        fh.write(b"tampered")
    set_version(own_models / "bump", "0.0.9")
    r = client.post("/admin/models/bump/reload")
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "version 0.0.1 keeps serving" in detail and "sha256" in detail
    assert str(own_models) not in r.text  # no absolute paths in responses
    assert version_of(client.post("/v1/detect", json=SIGNAL)) == "0.0.1"
    assert client.get("/readyz").status_code == 200


def test_a_model_file_replaced_after_its_check_is_not_what_serves(
    client: TestClient, own_models: Path, tiny_strided_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reload reads the model file once, checks the sha256 of those bytes and makes the
    session from them: a file replaced between the check and the load is not served."""
    signal = np.random.default_rng(0).standard_normal(1024).round(3).tolist()  # zeros tell them apart less
    scores = {"signals": [signal], "return_scores": True}
    before = client.post("/v1/detect", json=scores).json()["results"][0]["scores"]
    set_version(own_models / "bump", "0.0.2")
    path = own_models / "bump" / "model.onnx"
    monkeypatch.setattr(
        card_module,
        "hashlib",
        replaced_once_hashed(path, (tiny_strided_model_dir / "model.onnx").read_bytes()),
    )
    r = client.post("/admin/models/bump/reload")
    monkeypatch.undo()
    assert r.status_code == 200 and r.json()["version"] == "0.0.2", r.text
    served = client.post("/v1/detect", json=scores).json()
    assert served["model"]["version"] == "0.0.2" and served["results"][0]["scores"] == before
    refused = client.post("/admin/models/bump/reload")  # the file on disk now does not verify
    assert refused.status_code == 422 and "sha256" in refused.json()["detail"], refused.text


def set_min_length(model_dir: Path, min_length: int) -> None:
    path = model_dir / "card.json"
    card = json.loads(path.read_text())
    card["min_length"] = min_length
    path.write_text(json.dumps(card, indent=2) + "\n")


TOO_LONG = "min_length 3000000 is above SHAPE_DETECTOR_MAX_SIGNAL_LENGTH (100000)"


def test_a_model_no_request_could_reach_is_not_reloaded(own_models: Path) -> None:
    """A card whose shortest signal is longer than the longest a request may send would turn
    every request away (422) behind a ready /readyz: the reload is refused, saying why."""
    with app_client(own_models, MAX_SIGNAL_LENGTH=100_000) as c:
        set_min_length(own_models / "bump", 3_000_000)
        set_version(own_models / "bump", "0.0.2")
        r = c.post("/admin/models/bump/reload")
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert TOO_LONG in detail and "version 0.0.1 keeps serving" in detail, detail
        assert version_of(c.post("/v1/detect", json=SIGNAL)) == "0.0.1"
        assert c.get("/readyz").status_code == 200


def test_a_model_no_request_could_reach_does_not_load(own_models: Path) -> None:
    """At start-up the model fails to load, with the reason in /readyz; the others serve."""
    set_min_length(own_models / "other", 3_000_000)
    settings = load_settings(MODEL_DIR=own_models, WINDOW=1024, MAX_SIGNAL_LENGTH=100_000)
    with TestClient(create_app(settings)) as c:
        for _ in range(400):
            if "loading" not in c.get("/readyz").json()["models"].values():
                break
            time.sleep(0.025)
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["models"] == {"bump": "ready", "other": "failed"}
        (reason,) = r.json()["reasons"]
        assert (
            reason.startswith("other: failed (CardError: MODEL_DIR/other/card.json: ") and TOO_LONG in reason
        )
        bad = c.post("/v1/models/other/detect", json=SIGNAL)
        assert bad.status_code == 503 and TOO_LONG in bad.json()["detail"]
        assert version_of(c.post("/v1/detect", json=SIGNAL)) == "0.0.1"


def test_readiness_shows_the_latest_failure(own_models: Path) -> None:
    """A model that failed at start-up and then fails a reload for another reason: /readyz
    (and the model's 503) give the reload's reason, not the start-up's."""
    with (own_models / "other" / "model.onnx").open("ab") as fh:
        fh.write(b"tampered")
    with TestClient(create_app(load_settings(MODEL_DIR=own_models, WINDOW=1024))) as c:
        for _ in range(400):
            if "loading" not in c.get("/readyz").json()["models"].values():
                break
            time.sleep(0.025)
        assert "sha256" in c.get("/readyz").json()["reasons"][0]
        (own_models / "other" / "card.json").write_text("{not json")
        r = c.post("/admin/models/other/reload")
        assert r.status_code == 422 and "cannot read the model card" in r.json()["detail"], r.text
        ready = c.get("/readyz")
        assert ready.status_code == 503
        (reason,) = ready.json()["reasons"]
        assert reason.startswith("other: failed (CardError: MODEL_DIR/other/card.json: cannot read"), reason
        assert "sha256" not in reason
        assert "cannot read the model card" in c.post("/v1/models/other/detect", json=SIGNAL).json()["detail"]
        v2 = c.get("/v2/health/ready")
        assert v2.status_code == 503 and "cannot read the model card" in v2.text, v2.text


def test_a_copied_model_directory_says_how_to_serve_it(own_models: Path) -> None:
    """A model copied under another name keeps its card's name: the refusal says which name to
    change, and the fix it gives serves the copy under its directory's name."""
    shutil.copytree(own_models / "other", own_models / "mine")
    with TestClient(create_app(load_settings(MODEL_DIR=own_models, WINDOW=1024))) as c:
        for _ in range(400):
            if "loading" not in c.get("/readyz").json()["models"].values():
                break
            time.sleep(0.025)
        (reason,) = c.get("/readyz").json()["reasons"]
        assert reason == (
            "mine: failed (CardError: MODEL_DIR/mine/card.json: card name 'other' differs from its "
            "directory 'mine', the name the model is served under: set \"name\" in card.json to "
            "'mine')"  # not to rename it 'other': that is the model it was copied from
        ), reason
        card = json.loads((own_models / "mine" / "card.json").read_text())
        (own_models / "mine" / "card.json").write_text(json.dumps({**card, "name": "mine"}))
        r = c.post("/admin/models/mine/reload")
        assert r.status_code == 200, r.text
        assert c.get("/readyz").status_code == 200
        assert c.post("/v1/models/mine/detect", json=SIGNAL).json()["model"]["name"] == "mine"


def join_retired(name: str) -> None:
    """Wait for the threads that retire ``name``'s old versions (``app.core.reload._retire``)."""
    for thread in threading.enumerate():
        if thread.name.startswith(f"drain-{name}-"):
            thread.join(60)
            assert not thread.is_alive(), thread.name


def test_a_reload_frees_the_old_version_then_trims_the_heap(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old version is freed as its batcher stops, not at the cyclic collector's next full
    pass (every old session stayed until then), and only then is the heap trimmed, once."""
    registry = Registry(models_dir, InferenceOptions(window=1024))
    registry.load_all()
    serving = weakref.ref(registry.statuses["bump"].model)  # type: ignore[arg-type]
    trims: list[bool] = []
    monkeypatch.setattr(heap, "trim", lambda: trims.append(serving() is None) or True)
    gc.disable()  # what is freed is freed by reference counting
    try:
        reload_model(registry, "bump")
        join_retired("bump")
        assert serving() is None
        assert trims == [True]  # once, after the old version was freed
    finally:
        gc.enable()
        registry.close()


def test_the_heap_is_trimmed_once_the_last_request_lets_go_of_the_old_version(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = Registry(models_dir, InferenceOptions(window=1024))
    registry.load_all()
    held = registry.get("bump")  # as a request being answered holds it
    trims: list[bool] = []
    monkeypatch.setattr(heap, "trim", lambda: trims.append(True) or True)
    try:
        earlier = set(threading.enumerate())
        reload_model(registry, "bump")
        (retiring,) = [t for t in set(threading.enumerate()) - earlier if t.name.startswith("drain-bump-")]
        retiring.join(0.5)
        assert retiring.is_alive() and trims == []  # it waits while the model is held
        del held
        join_retired("bump")
        assert trims == [True]
    finally:
        registry.close()


def rss_bytes() -> int:
    fields = Path("/proc/self/statm").read_text().split()
    return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(heap._malloc_trim() is None, reason="glibc's malloc_trim only (Linux)")
def test_reloads_do_not_grow_the_process(client: TestClient) -> None:
    """30 reloads of the tiny models: the process grew by about 700 MiB while old versions
    waited for the cyclic collector, by 80–105 MiB once they were freed at once, by less than
    1 MiB with the heap trimmed after each."""
    for name in ("bump", "other"):  # a first reload of each: what any reload allocates once
        assert client.post(f"/admin/models/{name}/reload").status_code == 200
        join_retired(name)
    before = rss_bytes()
    for i in range(30):
        name = ("bump", "other")[i % 2]
        assert client.post(f"/admin/models/{name}/reload").status_code == 200
    join_retired("bump")
    join_retired("other")
    grown = rss_bytes() - before
    assert grown < 32 * 2**20, f"RSS grew by {grown / 2**20:.0f} MiB over 30 reloads"


def test_unknown_model_is_404(client: TestClient, own_models: Path) -> None:
    r = client.post("/admin/models/nope/reload")
    assert r.status_code == 404 and "available models: bump, other" in r.json()["detail"]
    shutil.copytree(own_models / "other", own_models / "added")  # after start-up
    r = client.post("/admin/models/added/reload")
    assert r.status_code == 404 and r.json()["detail"] == (
        "no model named 'added'; available models: bump, other (models are found at start-up: "
        "restart the service to serve a model added since)"
    )


def test_with_several_worker_processes_a_reload_is_refused_saying_what_to_do(own_models: Path) -> None:
    """Each worker process holds its own models: a reload reached the one process that took the
    request and answered 200 with the new version, while the others served the old one on."""
    with app_client(own_models, WORKERS=2) as c:
        set_version(own_models / "bump", "9.9.9")
        r = c.post("/admin/models/bump/reload")
        assert r.status_code == 409
        assert r.json()["detail"] == (
            "this server runs 2 worker processes (SHAPE_DETECTOR_WORKERS), each with its own "
            "models: a reload would reach only the one that took this request. Restart the "
            "server, or send SIGHUP to its main process (uvicorn replaces each worker with one "
            "that loads the models anew), or run one worker per instance"
        )
        assert version_of(c.post("/v1/detect", json=SIGNAL)) != "9.9.9"  # nothing swapped in


def test_a_model_still_loading_is_not_reloaded_and_the_answer_says_when_to_retry(own_models: Path) -> None:
    """Not "when /readyz answers 200": with another model failed, it never does."""
    registry = Registry(own_models, InferenceOptions())  # not loaded yet: every model loading
    with pytest.raises(ReloadConflict) as err:
        reload_model(registry, "bump")
    assert err.value.detail == (
        "model 'bump' is still loading; retry once /readyz shows it ready or failed "
        "(/readyz answers 200 only when every model is ready)"
    )


def test_one_reload_at_a_time(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    gate, entered = threading.Event(), threading.Event()
    original = OnnxModel.warm_up

    def slow_warm_up(self: OnnxModel) -> None:
        entered.set()
        gate.wait(20)
        original(self)

    monkeypatch.setattr(OnnxModel, "warm_up", slow_warm_up)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/admin/models/bump/reload")
        assert entered.wait(10)
        second = client.post("/admin/models/other/reload")
        assert second.status_code == 409 and "another model reload" in second.json()["detail"]
        assert client.post("/v1/detect", json=SIGNAL).status_code == 200  # serving meanwhile
        gate.set()
        assert first.result(20).status_code == 200
    assert client.post("/admin/models/other/reload").status_code == 200


def test_requests_queued_on_the_old_version_finish_on_it(
    client: TestClient, own_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old batcher drains: requests queued before the swap are answered by the old version."""
    gate = threading.Event()
    inside: list[int] = []  # batches held at the gate
    original = OnnxModel.run

    def held_run(self: OnnxModel, batch: np.ndarray) -> np.ndarray:
        if batch.shape[1] == HELD:
            inside.append(len(batch))
            gate.wait(20)
        return original(self, batch)

    def queued() -> int:
        text = client.get("/metrics").text
        line = next(x for x in text.splitlines() if x.startswith('shape_detector_queue_depth{model="bump"}'))
        return int(float(line.split()[-1]))

    monkeypatch.setattr(OnnxModel, "run", held_run)
    monkeypatch.setattr(Batcher, "run_now", lambda self, *args: (False, None))  # held in workers only
    held = {"signals": [[0.0] * HELD]}
    workers = load_settings().INFERENCE_WORKERS  # what app_client runs with
    with ThreadPoolExecutor(8) as pool:
        # More held requests than batcher threads: every thread holds a batch, the rest wait in
        # the queue. A helper thread joins only after a request waited 20 ms (app.core.batching),
        # so requests are sent until both are so, not a fixed number of them.
        before = []
        while len(before) < 8 and not (len(inside) == workers and queued() >= 1):
            before.append(pool.submit(client.post, "/v1/detect", json=held))
            for _ in range(400):  # each is held or queued on the old version before the next
                if sum(inside) + queued() == len(before):
                    break
                time.sleep(0.025)
        assert len(inside) == workers and sum(inside) + queued() == len(before) and queued() >= 1
        set_version(own_models / "bump", "0.0.2")
        reloaded = client.post("/admin/models/bump/reload")
        assert reloaded.status_code == 200, reloaded.text
        after = client.post("/v1/detect", json=SIGNAL)  # the new batcher is free: not held
        assert version_of(after) == "0.0.2"
        gate.set()
        assert [version_of(f.result(20)) for f in before] == ["0.0.1"] * len(before)


def test_admin_needs_a_key_when_keys_are_set(own_models: Path) -> None:
    with app_client(own_models, API_KEYS=KEY_A) as c:
        r = c.post("/admin/models/bump/reload")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert (
            c.post("/admin/models/bump/reload", headers={"Authorization": f"Bearer {KEY_A}"}).status_code
            == 200
        )
        spec = c.get("/openapi.json").json()
        assert spec["paths"]["/admin/models/{name}/reload"]["post"]["security"]


@pytest.mark.slow
def test_load_across_a_reload_sees_no_failures(tmp_path: Path) -> None:
    """16 clients for 8 s; the card's version changes on disk and the model is reloaded after 3 s.
    Zero errors; every request sent after the reload answered is answered by the new version."""
    models = tmp_path / "models"
    shutil.copytree(ROOT / "models" / "bump", models / "bump")
    server = start_server(tmp_path, env={"SHAPE_DETECTOR_MODEL_DIR": str(models)})
    old = json.loads((models / "bump" / "card.json").read_text())["version"]
    new = old + "-reloaded"
    swapped_at: list[float] = []

    async def scenario() -> object:
        load = asyncio.create_task(run_load(server.url, server.process.pid, seconds=8.0, concurrency=16))
        await asyncio.sleep(3.0)
        set_version(models / "bump", new)
        async with httpx.AsyncClient(timeout=60) as client:
            r = await client.post(f"{server.url}/admin/models/bump/reload")
        assert r.status_code == 200, r.text
        swapped_at.append(time.monotonic())
        return await load

    try:
        report = asyncio.run(scenario())
    finally:
        code = server.stop()
    assert code == 0, server.log()
    assert not report.connection_errors, report.connection_errors[:5]  # type: ignore[attr-defined]
    assert report.server_errors() == 0 and not report.wrong, report.wrong[:5]  # type: ignore[attr-defined]
    versions = report.versions  # type: ignore[attr-defined]
    assert {v for _, v in versions} == {old, new}
    assert all(v == new for t, v in versions if t > swapped_at[0])
    assert any(v == old for t, v in versions if t < swapped_at[0])


def test_reloading_every_model_goes_on_past_one_that_fails(
    own_models: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What SIGHUP runs: a model whose files no longer verify keeps its version, logged; the
    others are reloaded."""
    registry = Registry(own_models, InferenceOptions(window=1024))
    registry.load_all()
    try:
        set_version(own_models / "other", "2.0.0")
        with (own_models / "bump" / "model.onnx").open("ab") as f:
            f.write(b"\0")  # no longer the file its card's sha256 names
        with caplog.at_level("WARNING", logger="shape_detector.models"):
            assert reload_all(registry) == ["other"]
        assert registry.get("other").version == "2.0.0"
        assert registry.get("bump").version == "0.0.1"  # serves on
        assert any("model bump not reloaded" in r.getMessage() for r in caplog.records)
    finally:
        registry.close()


def test_sighup_to_one_server_process_reloads_every_model(tmp_path: Path) -> None:
    """With one server process SIGHUP ended it at once, the request in flight with it (no
    handler: the signal's default). It loads every model anew instead, as uvicorn answers it
    with several workers, and the request in flight is answered."""
    models = tmp_path / "models"
    for name in ("bump", "arrival"):
        shutil.copytree(ROOT / "models" / name, models / name)
    server = start_server(tmp_path, env={"SHAPE_DETECTOR_MODEL_DIR": str(models)})
    signal_ = np.random.default_rng(0).standard_normal(4_000_000).astype(np.float32)
    try:
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(
                httpx.post,
                f"{server.url}/v1/detect",
                content=_npy(signal_),
                headers={"Content-Type": "application/x-npy"},
                timeout=60,
            )
            set_version(models / "bump", "9.9.9")
            time.sleep(0.2)  # the request on its way (a lost one would fail below either way)
            server.process.send_signal(signal.SIGHUP)
            answer = in_flight.result(60)
        deadline = time.monotonic() + 60
        while True:
            listed = {m["name"]: m["version"] for m in httpx.get(f"{server.url}/v1/models").json()["models"]}
            if listed["bump"] == "9.9.9" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert server.process.poll() is None, server.log()  # still serving
        after = httpx.post(f"{server.url}/v1/detect", json={"signals": [[0.0] * 1024]})
    finally:
        code = server.stop()
    assert answer.status_code == 200, answer.text
    assert listed == {
        "bump": "9.9.9",
        "arrival": json.loads((models / "arrival" / "card.json").read_text())["version"],
    }
    assert after.status_code == 200 and after.json()["model"]["version"] == "9.9.9"
    log = server.log()
    assert "SIGHUP: loading every model anew" in log
    assert "model bump reloaded" in log and "model arrival reloaded" in log
    assert code == 0, log


def test_sighups_during_a_reload_run_it_once_more_when_it_ends(tmp_path: Path) -> None:
    """A SIGHUP while a reload from one runs was logged and dropped: files replaced after that
    reload had read them were not served until the next SIGHUP. Now the reload runs once more
    when it ends, whatever the number of SIGHUPs meanwhile (here two), and the log says so."""
    models = tmp_path / "models"
    for name in ("arrival", "bump"):
        shutil.copytree(ROOT / "models" / name, models / name)
    bump = models / "bump"
    shipped = json.loads((bump / "card.json").read_text())["version"]
    server = start_server(
        tmp_path, env={"SHAPE_DETECTOR_MODEL_DIR": str(models)}, factory="tests.reliability.held_reload:app"
    )

    def sighup(taken: int) -> None:
        """SIGHUP, then wait until the log shows the ``taken``-th (the kernel merges a SIGHUP
        sent while another is still pending: one at a time)."""
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: server.log().count('"message":"SIGHUP: ') == taken, f"SIGHUP {taken} to be taken")

    listed: dict[str, str] = {}
    try:
        set_version(bump, "9.9.8")
        (bump / "hold").touch()  # the reload waits once it has read bump's files
        sighup(1)
        wait_for(lambda: (bump / "held").exists(), "the reload to read bump's files")
        set_version(bump, "9.9.9")  # replaced again, after the reload read them
        sighup(2)
        sighup(3)
        (bump / "hold").unlink()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            listed = {m["name"]: m["version"] for m in httpx.get(f"{server.url}/v1/models").json()["models"]}
            if listed["bump"] == "9.9.9":
                break
            time.sleep(0.1)
    finally:
        code = server.stop()
    log = server.log()
    assert listed["bump"] == "9.9.9", log
    assert log.count("SIGHUP: loading every model anew") == 1, log
    taken = "SIGHUP: the models are being reloaded already; they are loaded anew once more when it ends"
    assert log.count(taken) == 2, log
    assert log.count("SIGHUP during the reload: loading every model anew once more") == 1, log
    assert log.count(f"model bump reloaded: {shipped} -> 9.9.8") == 1, log
    assert log.count("model bump reloaded: 9.9.8 -> 9.9.9") == 1, log
    assert log.count("model arrival reloaded") == 2, log  # two reloads in all, not one per SIGHUP
    assert code == -signal.SIGTERM, log  # uvicorn's command line re-raises the signal once stopped


def test_a_sighup_during_an_http_reload_waits_for_it_then_reloads_every_model(tmp_path: Path) -> None:
    """A SIGHUP while a reload asked for over HTTP ran skipped every model ("another model
    reload is running": one reload at a time per registry), so files replaced after that
    reload had read them, and every other model's, were not loaded. The SIGHUP's reload waits
    for it to end, says so, then reloads every model."""
    models = tmp_path / "models"
    for name in ("arrival", "bump"):
        shutil.copytree(ROOT / "models" / name, models / name)
    bump, arrival = models / "bump", models / "arrival"
    shipped = json.loads((arrival / "card.json").read_text())["version"]
    server = start_server(
        tmp_path, env={"SHAPE_DETECTOR_MODEL_DIR": str(models)}, factory="tests.reliability.held_reload:app"
    )
    listed: dict[str, str] = {}
    try:
        set_version(bump, "9.9.8")
        (bump / "hold").touch()  # the HTTP reload waits once it has read bump's files
        with ThreadPoolExecutor(1) as pool:
            http_reload = pool.submit(httpx.post, f"{server.url}/admin/models/bump/reload", timeout=60)
            wait_for(lambda: (bump / "held").exists(), "the HTTP reload to read bump's files")
            set_version(bump, "9.9.9")  # replaced after the HTTP reload read them
            set_version(arrival, "7.7.7")
            server.process.send_signal(signal.SIGHUP)
            wait_for(lambda: "SIGHUP: loading every model anew" in server.log(), "the SIGHUP to be taken")
            time.sleep(0.5)  # the SIGHUP's reload meets the HTTP one still running
            (bump / "hold").unlink()
            answer = http_reload.result(60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            listed = {m["name"]: m["version"] for m in httpx.get(f"{server.url}/v1/models").json()["models"]}
            if listed == {"bump": "9.9.9", "arrival": "7.7.7"}:
                break
            time.sleep(0.1)
    finally:
        code = server.stop()
    log = server.log()
    assert answer.status_code == 200 and answer.json()["version"] == "9.9.8", answer.text
    assert listed == {"bump": "9.9.9", "arrival": "7.7.7"}, log
    assert "model arrival: another model reload is running; reloading once it has ended" in log
    assert log.count(f"model arrival reloaded: {shipped} -> 7.7.7") == 1, log
    assert log.count("model bump reloaded: 9.9.8 -> 9.9.9") == 1, log
    assert "not reloaded" not in log, log
    assert code == -signal.SIGTERM, log


def test_a_sighup_reload_waiting_for_another_stops_when_the_service_drains(tmp_path: Path) -> None:
    """The SIGHUP's reload waits for a running one only while the service serves: on SIGTERM it
    stops waiting at once, says so, and the process stops once the request in flight (the HTTP
    reload) is answered."""
    models = tmp_path / "models"
    for name in ("arrival", "bump"):
        shutil.copytree(ROOT / "models" / name, models / name)
    bump = models / "bump"
    server = start_server(
        tmp_path, env={"SHAPE_DETECTOR_MODEL_DIR": str(models)}, factory="tests.reliability.held_reload:app"
    )
    stopped = (
        "model arrival not reloaded: the service is shutting down (it was waiting for another reload to end)"
    )
    try:
        (bump / "hold").touch()
        with ThreadPoolExecutor(1) as pool:
            http_reload = pool.submit(httpx.post, f"{server.url}/admin/models/bump/reload", timeout=60)
            wait_for(lambda: (bump / "held").exists(), "the HTTP reload to read bump's files")
            server.process.send_signal(signal.SIGHUP)
            waiting = "model arrival: another model reload is running; reloading once it has ended"
            wait_for(lambda: waiting in server.log(), "the SIGHUP's reload to wait")
            server.process.send_signal(signal.SIGTERM)
            wait_for(lambda: stopped in server.log(), "the SIGHUP's reload to stop waiting", seconds=10)
            assert (bump / "hold").exists()  # the HTTP reload still runs: not waited for
            (bump / "hold").unlink()
            answer = http_reload.result(60)
        code = server.process.wait(30)
    finally:
        server.stop()
    log = server.log()
    assert answer.status_code == 200, answer.text
    assert "models bump not reloaded: the service is shutting down" in log, log
    assert log.count("model bump reloaded") == 1 and "model arrival reloaded" not in log, log
    assert code == -signal.SIGTERM, log


def wait_for(done: Callable[[], bool], what: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, f"waited {seconds} s for {what}"
        time.sleep(0.05)


def _npy(x: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, x)
    return buffer.getvalue()


def test_sighup_ignored_under_nohup_stays_ignored() -> None:
    """A server started under nohup ignores SIGHUP: a closing terminal must not reload its
    models. Otherwise the handler is installed, and put back when the service stops."""

    async def install() -> Any:
        return reload_on_sighup(Registry.__new__(Registry), lambda: False)

    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        assert asyncio.run(install()) is None
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        restore = asyncio.run(install())
        assert restore is not None and callable(signal.getsignal(signal.SIGHUP))
        restore()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGHUP, previous)
