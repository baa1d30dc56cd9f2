"""Graceful shutdown of a real server process (python -m app) on SIGTERM.

Requests are held in flight deterministically: their headers and half their body are sent
before SIGTERM, the rest after, so they are certainly running when the signal arrives. What
happens at the shutdown timeout is also tested on the drain layer alone, with no server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.batching import Batcher
from app.core.errors import ShuttingDown
from app.core.model import InferenceOptions, OnnxModel
from app.core.registry import Registry
from app.core.reload import reload_model
from app.lifecycle import DrainMiddleware, Lifecycle
from app.observability import AccessLog, Metrics, ObservabilityMiddleware
from tests.api.test_primer_figure import primer_signal
from tests.integration.conftest import Server, start_server
from tests.logs import json_lines

pytestmark = pytest.mark.slow


class HeldRequest:
    """POST /v1/detect over a raw socket: headers and half the body now, the rest on ``finish``.

    ``confirmed``: the headers ask for ``100 Continue``, which the server sends once the app
    starts reading the body; half the body goes only after it. The request is then certainly in
    flight, in the body read, whichever worker process took it (``/metrics`` may be answered by
    another one)."""

    def __init__(self, server: Server, seed: int, *, confirmed: bool = False) -> None:
        host, port = server.url.removeprefix("http://").split(":")
        self.body = json.dumps({"signals": [primer_signal(seed).tolist()]}).encode()
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        head = (
            b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(self.body)}\r\n".encode()
            + (b"Expect: 100-continue\r\n" if confirmed else b"")
            + b"\r\n"
        )
        if confirmed:
            self.sock.sendall(head)
            interim = bytearray()
            while not interim.endswith(b"\r\n\r\n"):
                interim.extend(self.sock.recv(1))  # byte by byte: nothing after it is consumed
            assert interim.startswith(b"HTTP/1.1 100 "), bytes(interim)
            head = b""
        self.sock.sendall(head + self.body[: len(self.body) // 2])

    def finish(self) -> tuple[int, dict[str, str], dict[str, object]]:
        self.sock.sendall(self.body[len(self.body) // 2 :])
        answer = self.response()
        self.sock.close()
        return answer

    def response(self) -> tuple[int, dict[str, str], dict[str, object]]:
        """The response's status, headers and JSON body (the socket is left open)."""
        data = bytearray()
        while b"\r\n\r\n" not in data:
            data.extend(self._recv())
        head, _, rest = bytes(data).partition(b"\r\n\r\n")
        lines = head.decode("latin1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        body = bytearray(rest)
        while len(body) < int(headers["content-length"]):
            body.extend(self._recv())
        return int(lines[0].split()[1]), headers, json.loads(body)

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise AssertionError("the server closed the connection without a complete response")
        return chunk


def in_flight(server: Server) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    match = re.search(r"^shape_detector_requests_in_flight (\S+)$", text, re.MULTILINE)
    assert match, "no in-flight gauge"
    return float(match.group(1))  # this /metrics request is not counted


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


# How the service is started: extra environment, uvicorn's app factory (None: python -m app), and
# the exit code of a clean stop (uvicorn's own command line re-raises the signal once stopped).
LAUNCHES = {
    "python -m app": ({}, None, 0),
    "uvicorn --factory": ({}, "app.main:app_from_env", -signal.SIGTERM),
    "two workers": ({"SHAPE_DETECTOR_WORKERS": "2"}, None, 0),
}


@pytest.mark.parametrize("launch", list(LAUNCHES))
def test_at_the_shutdown_timeout_requests_still_running_get_503_and_the_lifespan_shuts_down(
    tmp_path: Path, launch: str
) -> None:
    """A request still running at SHUTDOWN_TIMEOUT_S (here still receiving its body) is answered
    503, JSON, with Connection: close, and logged with that status; then the lifespan's shutdown
    runs (so no access log line is lost), nothing is logged as a traceback, the stop stays
    bounded and clean."""
    env, factory, clean_exit = LAUNCHES[launch]
    workers = int(env.get("SHAPE_DETECTOR_WORKERS", "1"))
    server = start_server(tmp_path, env={"SHAPE_DETECTOR_SHUTDOWN_TIMEOUT_S": "2", **env}, factory=factory)
    try:
        # Every worker serves the default model (the server is ready once one of them does).
        wait_until(lambda: len(re.findall(r'"model bump \S+ ready"', server.log())) == workers, 60)
        stuck = HeldRequest(server, 0, confirmed=True)  # its second half never comes
        sigterm_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        headers, body = answered_503_then_closed(stuck)
        code = server.process.wait(timeout=15)
        stopped_in = time.monotonic() - sigterm_at
    finally:
        if server.process.poll() is None:
            server.process.kill()
    log = server.log()
    assert "shutdown timeout" in str(body["detail"]) and "retry" in str(body["detail"])
    assert code == clean_exit, log
    assert 1.5 < stopped_in < 5, stopped_in
    # The access log has the request's line, with its status.
    lines = [d for d in json_lines(log) if d.get("request_id") == headers["x-request-id"]]
    assert [(d["logger"], d["path"], d["status"]) for d in lines] == [
        ("shape_detector.access", "/v1/detect", 503)
    ]
    assert "shutdown timeout: stopping with requests in flight" in log
    # The lifespan's shutdown ran to its end: once per worker process.
    assert log.count("shut down: models closed, access log flushed") == workers, log
    assert log.count("Application shutdown complete") == workers, log
    for sign in ("Traceback", "CancelledError", "Exception in ASGI application", "without completing"):
        assert sign not in log, log


SHUTTING_DOWN = '"message":"Shutting down"'  # uvicorn's line once told to stop: the port closes
# Stops beyond one SIGTERM, a request in flight: the shutdown timeout (seconds), the signals sent in
# turn, each with what the log shows once it has been acted on, and when the request is answered.
STOPS = {
    "Ctrl-C": ("2", [(signal.SIGINT, None)], "at the timeout"),
    "Ctrl-C twice": ("60", [(signal.SIGINT, SHUTTING_DOWN), (signal.SIGINT, None)], "at once"),
    "SIGTERM twice, then Ctrl-C": (
        "60",
        [(signal.SIGTERM, "SIGTERM: draining"), (signal.SIGTERM, SHUTTING_DOWN), (signal.SIGINT, None)],
        "at once",
    ),
}


@pytest.mark.parametrize("stop", list(STOPS))
def test_stopped_by_ctrl_c_or_signals_after_sigterm_requests_in_flight_get_503_not_500(
    tmp_path: Path, stop: str
) -> None:
    """uvicorn's own ways to end a request (its graceful shutdown's timeout after Ctrl-C, its force
    exit on a second Ctrl-C) cancel it: 500 and a traceback. The app ends it first, as at the
    shutdown timeout: 503, JSON, Retry-After, Connection: close, logged; then the lifespan's
    shutdown runs and the process exits 0. Ctrl-C closes the port at once and leaves the request
    until the shutdown timeout; Ctrl-C once the port is closed (uvicorn's force exit) ends it now."""
    timeout, signals, when = STOPS[stop]
    server = start_server(tmp_path, env={"SHAPE_DETECTOR_SHUTDOWN_TIMEOUT_S": timeout})
    try:
        stuck = HeldRequest(server, 0, confirmed=True)  # its second half never comes
        for sig, acted_on in signals:
            server.process.send_signal(sig)
            if acted_on is not None:  # a signal sent before the last is acted on would be lost
                wait_logged(server, acted_on)
        headers, body = answered_503_then_closed(stuck)
        code = server.process.wait(timeout=15)
    finally:
        if server.process.poll() is None:
            server.process.kill()
    log = server.log()
    expected = "shutdown timeout" if when == "at the timeout" else "stop at once"
    assert expected in str(body["detail"]) and "retry" in str(body["detail"]), body
    assert ("shutdown timeout: stopping with requests in flight" in log) is (when == "at the timeout"), log
    assert code == 0, log
    lines = [d for d in json_lines(log) if d.get("request_id") == headers["x-request-id"]]
    assert [(d["path"], d["status"]) for d in lines] == [("/v1/detect", 503)]
    assert "shut down: models closed, access log flushed" in log and "Application shutdown complete" in log
    for sign in ("Traceback", "CancelledError", "Exception in ASGI application", "without completing"):
        assert sign not in log, log


def answered_503_then_closed(stuck: HeldRequest) -> tuple[dict[str, str], dict[str, object]]:
    """The headers and body of the 503 (JSON, ``Retry-After: 1``, ``Connection: close``) a request cut off
    got, checked, after which its connection was closed."""
    status, headers, body = stuck.response()
    closed = stuck.sock.recv(1) == b""
    stuck.sock.close()
    assert status == 503, body
    assert headers["content-type"] == "application/json" and headers["retry-after"] == "1"
    assert headers["connection"] == "close" and closed
    return headers, body


def wait_logged(server: Server, text: str) -> None:
    wait_until(lambda: text in server.log())


class RecordedAccessLog(AccessLog):
    """The access log's lines, kept as their fields."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[dict[str, Any]] = []

    def add(self, fields: dict[str, Any]) -> None:
        self.lines.append(fields)


def served(lifecycle: Lifecycle, handler: ASGIApp) -> tuple[ASGIApp, Metrics, RecordedAccessLog]:
    """``handler`` inside the drain and observability layers, stacked as create_app stacks them."""
    metrics, access = Metrics(), RecordedAccessLog()
    return ObservabilityMiddleware(DrainMiddleware(handler, lifecycle), metrics, access), metrics, access


async def post(app: ASGIApp, path: str, sent: list[Message]) -> None:
    scope = {"type": "http", "method": "POST", "path": path, "headers": []}

    async def receive() -> Message:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(100):  # turns of the event loop: nothing here waits for time
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not met")


def test_cut_off_answers_503_to_the_requests_it_ends_and_to_no_other() -> None:
    """Past their body, in their handler (as in inference): ``cut_off`` ends the requests in
    flight, each answered 503 in its path's error format (logged and counted as any answer), or
    left unfinished when its response had begun; a cancellation from elsewhere (the server's
    own) goes through the drain layer as it came."""

    async def main() -> None:
        lifecycle = Lifecycle(timeout=0)
        release = asyncio.Event()

        async def handler(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["path"] == "/stream":
                await send({"type": "http.response.start", "status": 200, "headers": []})
            else:
                await receive()
            await release.wait()

        app, metrics, access = served(lifecycle, handler)
        other: list[Message] = []
        task = asyncio.create_task(post(app, "/v1/detect", other))
        await until(lambda: lifecycle.in_flight == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert other == [] and lifecycle.in_flight == 0

        sent: dict[str, list[Message]] = {"/v1/detect": [], "/v2/models/bump/infer": [], "/stream": []}
        tasks = [asyncio.create_task(post(app, path, messages)) for path, messages in sent.items()]
        await until(lambda: lifecycle.in_flight == 3)
        lifecycle.begin_drain()
        assert await lifecycle.cut_off()
        for task in tasks:  # ended without an error, and no cancellation left pending
            assert task.done() and task.exception() is None and task.cancelling() == 0
        for path, key in (("/v1/detect", "detail"), ("/v2/models/bump/infer", "error")):
            start, body = sent[path]
            assert start["status"] == 503
            assert {(b"connection", b"close"), (b"retry-after", b"1")} <= set(start["headers"])
            message = json.loads(body["body"])[key]
            assert "shutdown timeout" in message and "retry" in message
        assert [m["type"] for m in sent["/stream"]] == ["http.response.start"]  # nothing more
        assert {(line["path"], line["status"]) for line in access.lines[1:]} == {
            ("/v1/detect", 503),
            ("/v2/models/bump/infer", 503),
            ("/stream", 200),
        }
        labels = {"method": "POST", "route": "unmatched", "status": "503"}
        assert metrics.registry.get_sample_value("shape_detector_requests_total", labels) == 2
        assert lifecycle.in_flight == 0 and not lifecycle.requests and not lifecycle.cut_off_requests

    asyncio.run(main())


@pytest.mark.parametrize("ends", [True, False], ids=["requests end", "a request does not end"])
def test_at_the_timeout_the_server_is_told_to_stop_once_or_else_forced(
    ends: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """At the timeout, once the requests cut off have ended, the server's handler is called once
    (uvicorn then stops as after a drain and runs the lifespan's shutdown). A request that does
    not end when cancelled falls back to the forced stop (the handler again with SIGINT: uvicorn's
    "force exit"), with one warning."""

    async def main() -> list[int]:
        lifecycle = Lifecycle(timeout=0.1)
        lifecycle.cut_off_grace = 0.2
        release = asyncio.Event()

        async def handler(scope: Scope, receive: Receive, send: Send) -> None:
            while not release.is_set():
                try:
                    await release.wait()
                except asyncio.CancelledError:
                    if ends:
                        raise  # a stubborn request swallows it and waits on

        app, _, _ = served(lifecycle, handler)
        task = asyncio.create_task(post(app, "/v1/detect", []))
        await until(lambda: lifecycle.in_flight == 1)
        calls: list[int] = []
        lifecycle.begin_drain()
        await lifecycle._drain_then_stop(lambda sig, frame: calls.append(sig), signal.SIGTERM)
        release.set()
        await task
        return calls

    with caplog.at_level(logging.WARNING, logger="shape_detector"):
        calls = asyncio.run(main())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if ends:
        assert calls == [signal.SIGTERM] and warnings == []
    else:
        assert calls == [signal.SIGTERM, signal.SIGINT]
        assert len(warnings) == 1 and "did not end" in warnings[0]


TERM, INT = signal.SIGTERM, signal.SIGINT


@pytest.mark.parametrize(
    ("sent", "in_flight", "told"),
    [
        # The first SIGTERM drains (the server is not told); a second closes the port; a third is
        # nothing to uvicorn.
        ([TERM], False, []),
        ([TERM, TERM], False, [TERM]),
        ([TERM, TERM, TERM], False, [TERM]),
        # Ctrl-C closes the port at once; SIGTERM then is nothing.
        ([INT], False, [INT]),
        ([INT, TERM], False, [INT]),
        # Ctrl-C once the port is closed: uvicorn's force exit, passed on at once with nothing in
        # flight; with requests in flight they are ended first, and only a further Ctrl-C is.
        ([TERM, TERM, INT], False, [TERM, INT]),
        ([INT, INT], False, [INT, INT]),
        ([TERM, TERM, INT], True, [TERM]),
        ([INT, INT], True, [INT]),
        ([INT, INT, INT], True, [INT, INT]),
    ],
)
def test_each_signal_reaches_the_server_as_uvicorn_takes_it(
    sent: list[int], in_flight: bool, told: list[int]
) -> None:
    """The signals the server's handler (uvicorn's, one for SIGTERM and SIGINT) is given for
    those the process gets while draining (the drain held by its delay). Ctrl-C once the port is
    closed, with requests in flight, has them ended first (``_drain_then_stop``, as at the
    timeout, then forcing only if they do not end)."""
    calls: list[int] = []

    def server_handler(sig: int, frame: object) -> None:
        calls.append(sig)

    async def main() -> None:
        lifecycle = Lifecycle(timeout=60, delay=60)
        request = asyncio.create_task(asyncio.Event().wait())
        if in_flight:
            lifecycle.requests.add(request)
        assert lifecycle.install_signal_handler()
        try:
            for sig in sent:
                signal.raise_signal(sig)  # handled before the call returns (the main thread)
                await asyncio.sleep(0)
        finally:
            lifecycle.uninstall_signal_handler()
            request.cancel()
        # Each case with requests in flight has Ctrl-C once the port is closed: they are to end.
        assert lifecycle.draining and lifecycle.ending_now is in_flight
        assert signal.getsignal(TERM) is signal.getsignal(INT) is server_handler

    before = {sig: signal.signal(sig, server_handler) for sig in (TERM, INT)}
    try:
        asyncio.run(main())
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    assert calls == told


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
