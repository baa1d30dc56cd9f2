"""Clients that give up: a real server while some clients leave long requests at random moments,
others check short ones, and the model is reloaded again and again.

The long requests are dropped from the queue or stopped between their onnxruntime calls
(``JobFuture.give_up``); nothing of them may stay behind. `make test` runs it for 10 s and checks
the answers and the log; `make soak` (marker `soak`) runs it for SHAPE_DETECTOR_SOAK_SECONDS and
checks the server's memory too: once quiet, it must be back near where it started (reference
cycles through the errors of abandoned requests once held their signals until the garbage
collector ran: 1 GiB after 40 s).
"""

from __future__ import annotations

import http.client
import io
import json
import os
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

from tests.integration.conftest import Server, start_server

SOAK_SECONDS = float(os.environ.get("SHAPE_DETECTOR_SOAK_SECONDS", "60"))
LONG = (200_000, 1_000_000, 3_000_000)  # samples of the requests clients leave


def npy(x: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, x.astype(np.float32)[None])
    return buffer.getvalue()


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[Server]:
    # A short deadline: requests also time out while they wait or run (504), the other way of
    # being given up.
    started = start_server(
        tmp_path, env={"SHAPE_DETECTOR_REQUEST_TIMEOUT_S": "0.5", "SHAPE_DETECTOR_MAX_QUEUE": "16"}
    )
    yield started
    assert started.stop() == 0, started.log()


def run(server: Server, seconds: float) -> tuple[Counter[object], list[str], float, float]:
    """Leavers, checkers and a reloader for ``seconds``: (outcomes, wrong answers, RSS at the
    start and after 8 quiet seconds, MiB)."""
    address = urlsplit(server.url)
    host, port = address.hostname or "127.0.0.1", address.port or 80
    pid = server.process.pid

    def post(path: str, body: bytes = b"") -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(host, port, timeout=60)
        try:
            connection.request("POST", path, body, {"Content-Type": "application/x-npy"})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    rng = np.random.default_rng(0)
    short = [npy(rng.standard_normal(1024 + 37 * i)) for i in range(6)]
    expected = []
    for body in short:
        status, answer = post("/v1/detect", body)
        assert status == 200, answer
        expected.append(json.loads(answer)["results"])
    start = rss_mib(pid)
    stop = time.monotonic() + seconds
    outcomes: Counter[object] = Counter()
    wrong: list[str] = []
    lock = threading.Lock()

    def count(outcome: object) -> None:
        with lock:
            outcomes[outcome] += 1

    def leaver(seed: int) -> None:
        r = random.Random(seed)
        while time.monotonic() < stop:
            body = npy(np.random.default_rng(r.randrange(100)).standard_normal(r.choice(LONG)))
            with socket.create_connection((host, port), timeout=30) as s:
                head = f"POST /v1/detect HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-npy\r\n"
                s.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
                time.sleep(r.uniform(0, 0.3))  # then leave, whatever the request's state
            count("left")

    def checker(seed: int) -> None:
        r = random.Random(seed)
        while time.monotonic() < stop:
            i = r.randrange(len(short))
            status, answer = post("/v1/detect", short[i])
            count(status)
            if status == 200 and json.loads(answer)["results"] != expected[i]:
                wrong.append(f"signal {i}: {answer[:200]!r}")

    def reloader() -> None:
        while time.monotonic() < stop:
            status, _ = post("/admin/models/bump/reload")
            count(f"reload {status}")
            time.sleep(1.0)

    threads = [threading.Thread(target=leaver, args=(s,)) for s in range(3)]
    threads += [threading.Thread(target=checker, args=(10 + s,)) for s in range(4)]
    threads.append(threading.Thread(target=reloader))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(8)  # quiet: what was given up has ended
    return outcomes, wrong, start, rss_mib(pid)


def check(server: Server, outcomes: Counter[object], wrong: list[str]) -> None:
    assert not wrong, wrong[:3]
    assert outcomes["left"] > 0 and outcomes[200] > 0, outcomes
    assert outcomes["reload 200"] > 0, outcomes
    # The checkers' short requests: answered, or 504/503 when they waited too long behind the
    # long ones; never a 5xx of another kind.
    assert not {k for k in outcomes if isinstance(k, int) and k >= 500} - {503, 504}, outcomes
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    bad = [line for line in lines if line["level"] in ("warning", "error", "critical")]
    assert not bad, bad[:3]
    address = urlsplit(server.url)
    metrics = http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port or 80, timeout=30)
    try:
        metrics.request("GET", "/metrics")
        text = metrics.getresponse().read().decode()
    finally:
        metrics.close()
    given_up = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(
            ("shape_detector_dropped_requests_total", "shape_detector_abandoned_requests_total")
        )
    )
    print(f"outcomes {dict(outcomes)}; given up since the last reload: {given_up:.0f}")


@pytest.mark.slow
def test_clients_that_leave_long_requests_leave_nothing_behind(server: Server) -> None:
    outcomes, wrong, start, quiet = run(server, 10.0)
    print(f"RSS {start:.0f} MiB at the start, {quiet:.0f} MiB once quiet")
    check(server, outcomes, wrong)


@pytest.mark.soak
def test_soak_clients_that_leave_long_requests(server: Server) -> None:
    outcomes, wrong, start, quiet = run(server, SOAK_SECONDS)
    print(f"RSS {start:.0f} MiB at the start, {quiet:.0f} MiB once quiet")
    check(server, outcomes, wrong)
    assert quiet < start + 300, f"RSS {start:.0f} MiB at the start, {quiet:.0f} MiB once quiet"
