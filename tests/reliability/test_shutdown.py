"""Graceful shutdown of a real server process (python -m app) on SIGTERM.

Requests are held in flight deterministically: their headers and half their body are sent
before SIGTERM, the rest after, so they are certainly running when the signal arrives.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.core.batching import Batcher
from app.core.errors import ShuttingDown
from app.core.model import InferenceOptions, OnnxModel
from app.core.registry import Registry
from app.core.reload import reload_model
from tests.api.test_primer_figure import primer_signal
from tests.integration.conftest import Server, start_server

pytestmark = pytest.mark.slow


class HeldRequest:
    """POST /v1/detect over a raw socket: headers and half the body now, the rest on ``finish``."""

    def __init__(self, server: Server, seed: int) -> None:
        host, port = server.url.removeprefix("http://").split(":")
        self.body = json.dumps({"signals": [primer_signal(seed).tolist()]}).encode()
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.sock.sendall(
            b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(self.body)}\r\n\r\n".encode()
            + self.body[: len(self.body) // 2]
        )

    def finish(self) -> tuple[int, dict[str, str], dict[str, object]]:
        self.sock.sendall(self.body[len(self.body) // 2 :])
        data = bytearray()
        while b"\r\n\r\n" not in data:
            data.extend(self.sock.recv(65536))
        head, _, rest = bytes(data).partition(b"\r\n\r\n")
        lines = head.decode("latin1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        body = bytearray(rest)
        while len(body) < int(headers["content-length"]):
            body.extend(self.sock.recv(65536))
        self.sock.close()
        return int(lines[0].split()[1]), headers, json.loads(body)


def in_flight(server: Server) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    match = re.search(r"^shape_detector_requests_in_flight (\S+)$", text, re.MULTILINE)
    assert match, "no in-flight gauge"
    return float(match.group(1)) - 1  # this /metrics request is in flight too


def wait_until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_sigterm_drains_then_exits_0(tmp_path: Path) -> None:
    server = start_server(tmp_path, env={"SHAPE_DETECTOR_SHUTDOWN_TIMEOUT_S": "20"})
    try:
        held = [HeldRequest(server, seed) for seed in range(3)]
        wait_until(lambda: in_flight(server) == 3)
        sigterm_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        # Readiness fails first; liveness and metrics still answer.
        wait_until(lambda: httpx.get(f"{server.url}/readyz", timeout=5).status_code == 503)
        ready = httpx.get(f"{server.url}/readyz", timeout=5).json()
        assert ready["ready"] is False and ready["reasons"][0].startswith("draining")
        assert httpx.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 503
        assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
        assert "shape_detector_draining 1.0" in httpx.get(f"{server.url}/metrics", timeout=5).text
        # New requests are refused with 503, Retry-After and Connection: close.
        refused = httpx.post(f"{server.url}/v1/detect", json={"signals": [[0.0] * 300]}, timeout=5)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.headers["connection"] == "close"
        assert "shutting down" in refused.json()["detail"]
        v2 = httpx.post(f"{server.url}/v2/models/bump/infer", json={"inputs": []}, timeout=5)
        assert v2.status_code == 503 and "shutting down" in v2.json()["error"]
        assert server.process.poll() is None  # still draining: three requests in flight
        # The requests in flight complete, with their own results.
        for request in held:
            status, headers, body = request.finish()
            assert status == 200, body
            assert headers["connection"] == "close"
            peaks = [p["index"] for p in body["results"][0]["peaks"]]  # type: ignore[index]
            assert len(peaks) == 2 and abs(peaks[0] - 35) <= 2 and abs(peaks[1] - 255) <= 2
        code = server.process.wait(timeout=20)
        stopped_in = time.monotonic() - sigterm_at
    finally:
        if server.process.poll() is None:
            server.process.kill()
    assert code == 0, server.log()
    assert stopped_in < 20
    log = server.log()
    assert "SIGTERM: draining" in log and "drained: stopping" in log
    assert "Application shutdown complete" in log


def test_shutdown_timeout_bounds_the_wait(tmp_path: Path) -> None:
    """A request that never completes does not keep the process alive past SHUTDOWN_TIMEOUT_S."""
    server = start_server(tmp_path, env={"SHAPE_DETECTOR_SHUTDOWN_TIMEOUT_S": "2"})
    try:
        stuck = HeldRequest(server, 0)  # its second half never comes
        wait_until(lambda: in_flight(server) == 1)
        sigterm_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=15)
        stopped_in = time.monotonic() - sigterm_at
        stuck.sock.close()
    finally:
        if server.process.poll() is None:
            server.process.kill()
    assert code == 0, server.log()
    assert 1.5 < stopped_in < 5, stopped_in
    assert "shutdown timeout: stopping with requests in flight" in server.log()


def test_shutdown_delay_keeps_readiness_failing_before_the_port_closes(tmp_path: Path) -> None:
    """With nothing in flight, SHUTDOWN_DELAY_S still gives load balancers time to see 503."""
    server = start_server(tmp_path, env={"SHAPE_DETECTOR_SHUTDOWN_DELAY_S": "1.5"})
    try:
        sigterm_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        wait_until(lambda: httpx.get(f"{server.url}/readyz", timeout=5).status_code == 503)
        assert time.monotonic() - sigterm_at < 1.0
        code = server.process.wait(timeout=15)
        stopped_in = time.monotonic() - sigterm_at
    finally:
        if server.process.poll() is None:
            server.process.kill()
    assert code == 0, server.log()
    assert 1.5 <= stopped_in < 6, stopped_in


def test_stopped_while_its_models_load_it_exits_cleanly() -> None:
    """The app stopped right after it started, its models still loading: the loader finishes
    the model it is loading and serves nothing more, and the process exits normally (it used
    to abort: the loader thread was still inside onnxruntime when the interpreter ended)."""
    script = (
        "from fastapi.testclient import TestClient\n"
        "from app.main import create_app\n"
        "with TestClient(create_app()) as client:\n"
        "    assert client.get('/readyz').status_code == 503  # still loading\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "terminate called" not in done.stderr


def test_a_closed_registry_swaps_nothing_in(models_dir: Path) -> None:
    registry = Registry(models_dir, InferenceOptions(intra_op_threads=1))
    registry.close()
    registry.load_all()  # stops at once
    assert all(s.state == "loading" and s.batcher is None for s in registry.statuses.values())
    model = OnnxModel(models_dir / "bump", InferenceOptions(intra_op_threads=1))
    batcher = registry.new_batcher("bump", model)
    with pytest.raises(ShuttingDown, match="shutting down"):
        registry.swap("bump", model, batcher)
    assert registry.statuses["bump"].batcher is None
    assert not any(t.is_alive() for t in batcher._threads)  # closed by the swap


def test_a_reload_refused_at_shutdown_says_so(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A reload asked once shutdown has begun is refused at once; one that finishes loading after
    it is refused at the swap, closes what it built, and is never logged as reloaded."""
    registry = Registry(models_dir, InferenceOptions(intra_op_threads=1))
    registry.load_all()
    serving = registry.statuses["bump"].model
    warm_up = OnnxModel.warm_up

    def warm_up_then_stop(model: OnnxModel) -> None:
        warm_up(model)
        registry.close()  # shutdown begins while the new version warms up

    monkeypatch.setattr(OnnxModel, "warm_up", warm_up_then_stop)
    built: list[Batcher] = []
    new_batcher = registry.new_batcher
    monkeypatch.setattr(registry, "new_batcher", lambda *a: built.append(new_batcher(*a)) or built[-1])
    with caplog.at_level("INFO", logger="shape_detector.models"), pytest.raises(ShuttingDown) as refused:
        reload_model(registry, "bump")
    assert refused.value.status == 503
    assert registry.statuses["bump"].model is serving  # nothing swapped in
    assert len(built) == 1 and not any(t.is_alive() for t in built[0]._threads)
    messages = [r.getMessage() for r in caplog.records]
    assert "model bump not reloaded: the service is shutting down" in messages
    assert not any(m.startswith("model bump reloaded") for m in messages)

    with pytest.raises(ShuttingDown):  # asked after shutdown began: refused before any loading
        reload_model(registry, "other")
    assert len(built) == 1
