"""The two bounds of a server process come back whole however its requests end.

``MAX_INFLIGHT_BYTES`` (the bytes of the bodies held, ``shape_detector_inflight_bytes``) and
``MAX_QUEUE`` (the places of a model's queue, taken before a body is read): a request that
kept either after it ended would, request after request, leave the server answering every
detection 503 for ever. A real server is put through every way a request can end (clients
that leave mid-body, with Content-Length or chunked, or while queued or scored; slow bodies,
408; deadlines, 504; 413, 415, 400 and 422 bodies on /v1 and /v2; 503s from a full queue or
from the bytes in flight; ``Expect: 100-continue``; pipelined requests), with reloads and
SIGHUP in the middle, then again without them (a reloaded model's queue starts empty, which
would hide places kept in the old one). Once quiet, nothing is held, each bound lets in exactly
what it should (bodies of the largest size up to ``MAX_INFLIGHT_BYTES``, ``MAX_QUEUE``
requests) and refuses one more at once, and SIGTERM drains a request still being read.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import random
import re
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.integration.conftest import Server, start_server

MAX_BODY = 2 << 20
MAX_INFLIGHT = 3 * MAX_BODY
MAX_QUEUE = 4
# Long enough for the checks' held requests to be sent whole, and a 408 still comes soon.
BODY_TIMEOUT_S = 3.0
HOST = "127.0.0.1"
# Warnings a reload storm may log: a reload asked for while another runs is refused, saying so.
RELOAD_CLASHES = ("another model reload is running", "the models are being reloaded already")


def npy(x: np.ndarray, dtype: type = np.float32) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, x.astype(dtype)[None])
    return buffer.getvalue()


def largest_json(size: int = MAX_BODY) -> bytes:
    """A /v1 JSON body of exactly ``size`` bytes (one short signal, then spaces): the largest
    a request may be, and quick to score."""
    body = b'{"signals": [[' + b"0.5," * 1023 + b'0.5]], "return_scores": false}'
    return body + b" " * (size - len(body))


RNG = np.random.default_rng(0)
SMALL = npy(RNG.standard_normal(2048))
BIG = npy(RNG.standard_normal((MAX_BODY - 128) // 4))  # watched for its client leaving (>= 131072)
# One byte a sample: the most samples a body may bring, longer to score than REQUEST_TIMEOUT_S.
LONG = npy(RNG.integers(-100, 100, MAX_BODY - 128), np.int8)
V2_BIG = RNG.standard_normal(300_000).astype("<f4").tobytes()


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[Server]:
    started = start_server(
        tmp_path,
        env={
            "SHAPE_DETECTOR_MAX_BODY_BYTES": str(MAX_BODY),
            "SHAPE_DETECTOR_MAX_INFLIGHT_BYTES": str(MAX_INFLIGHT),
            "SHAPE_DETECTOR_MAX_QUEUE": str(MAX_QUEUE),
            "SHAPE_DETECTOR_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
            "SHAPE_DETECTOR_REQUEST_TIMEOUT_S": "0.3",
        },
    )
    yield started
    if started.process.poll() is None:
        started.stop()


def port(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def head(path: str, content_type: str, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: x", f"Content-Type: {content_type}", *headers, "", ""]
    return "\r\n".join(lines).encode()


def answer(sock: socket.socket) -> int:
    """The status of the final answer on ``sock`` (after any 100 Continue); 0 if none came."""
    response = http.client.HTTPResponse(sock)
    try:
        response.begin()  # skips 100 Continue
        response.read()
    except (OSError, http.client.HTTPException):
        return 0
    return response.status


def metric(server: Server, name: str) -> float:
    connection = http.client.HTTPConnection(HOST, port(server), timeout=30)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found, f"no {name}"
    return float(found.group(1))


def gauge(server: Server) -> float:
    return metric(server, "shape_detector_inflight_bytes")


def quiet(server: Server) -> bool:
    """No bytes held and no request handled (the scrape is not counted): a client still to send
    its body holds no bytes (only those that arrive are held), but a place of the queue."""
    return gauge(server) == 0 and metric(server, "shape_detector_requests_in_flight") == 0


def readiness(server: Server) -> int:
    connection = http.client.HTTPConnection(HOST, port(server), timeout=30)
    try:
        connection.request("GET", "/readyz")
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def wait_for(what: Callable[[], bool], message: Callable[[], str], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            raise AssertionError(message())
        time.sleep(0.05)


def storm(server: Server, kinds: list[str], seed: int) -> Counter[tuple[str, int]]:
    """Each request of ``kinds`` from its own connection, ten at a time: (kind, status) counts,
    status 0 where the client left."""
    p = port(server)

    def one(item: tuple[int, str]) -> tuple[str, int]:
        i, kind = item
        r = random.Random(seed * 1000 + i)
        with socket.create_connection((HOST, p), timeout=30) as sock:

            def leave(data: bytes) -> tuple[str, int]:
                sock.sendall(data)
                time.sleep(r.uniform(0, 0.3))  # then leave: mid-body, queued, scored or answered
                return kind, 0

            cl = f"Content-Length: {len(BIG)}"
            if kind == "leave mid-body":
                return leave(head("/v1/detect", "application/x-npy", cl) + BIG[: r.randrange(len(BIG))])
            if kind == "leave mid-chunk":
                chunk = BIG[: r.randrange(1, 200_000)]
                framing = head("/v1/detect", "application/x-npy", "Transfer-Encoding: chunked")
                return leave(framing + f"{len(BIG):x}\r\n".encode() + chunk)
            if kind == "leave v2 binary mid-body":
                framing = head(
                    "/v2/models/bump/infer",
                    "application/octet-stream",
                    "Inference-Header-Content-Length: 0",
                    f"Content-Length: {len(V2_BIG)}",
                )
                return leave(framing + V2_BIG[: r.randrange(len(V2_BIG))])
            if kind == "leave queued or scored":
                return leave(head("/v1/detect", "application/x-npy", f"Content-Length: {len(LONG)}") + LONG)
            if kind == "leave before 100-continue body":
                return leave(head("/v1/detect", "application/x-npy", "Expect: 100-continue", cl))
            if kind == "leave pipelined":
                second = head("/v1/detect", "application/x-npy", f"Content-Length: {len(SMALL)}") + SMALL
                return leave(head("/v1/detect", "application/x-npy", cl) + BIG + second + second)
            if kind == "slow body":
                sock.sendall(head("/v1/detect", "application/x-npy", f"Content-Length: {len(SMALL)}"))
                sock.sendall(SMALL[:100])  # and no more: 408 (or 503 at once)
            elif kind == "large, deadline":
                sock.sendall(head("/v1/detect", "application/x-npy", f"Content-Length: {len(LONG)}") + LONG)
            elif kind == "chunked, large":
                framing = head("/v1/detect", "application/x-npy", "Transfer-Encoding: chunked")
                sock.sendall(framing + f"{len(BIG):x}\r\n".encode() + BIG + b"\r\n0\r\n\r\n")
            elif kind == "100-continue":
                sock.sendall(
                    head(
                        "/v1/detect",
                        "application/x-npy",
                        "Expect: 100-continue",
                        f"Content-Length: {len(SMALL)}",
                    )
                )
                sock.sendall(SMALL)
            elif kind == "413 declared":
                sock.sendall(
                    head("/v2/models/bump/infer", "application/json", f"Content-Length: {MAX_BODY + 1}")
                )
            elif kind == "413 chunked":
                over = b"0," * (MAX_BODY // 2 + 8)
                framing = head("/v1/detect", "application/json", "Transfer-Encoding: chunked")
                sock.sendall(framing + f"{len(over):x}\r\n".encode() + over + b"\r\n0\r\n\r\n")
            elif kind == "415":
                sock.sendall(head("/v1/detect", "text/csv", "Content-Length: 4") + b"0.5,")
            elif kind == "400 v2 header length":
                body = b'{"inputs": []}'
                framing = head(
                    "/v2/models/bump/infer",
                    "application/octet-stream",
                    "Inference-Header-Content-Length: 999",
                    f"Content-Length: {len(body)}",
                )
                sock.sendall(framing + body)
            elif kind == "422":
                body = b'{"signals": "none"}'
                sock.sendall(head("/v1/detect", "application/json", f"Content-Length: {len(body)}") + body)
            else:
                raise AssertionError(kind)
            return kind, answer(sock)

    items = list(enumerate(kinds))
    random.Random(seed).shuffle(items)
    with ThreadPoolExecutor(10) as pool:
        return Counter(pool.map(one, items))


LEAVING = [
    "leave mid-body",
    "leave mid-chunk",
    "leave v2 binary mid-body",
    "leave queued or scored",
    "leave before 100-continue body",
    "leave pipelined",
]
# What each kind may be answered: a full queue or the bytes in flight refuse before the body is
# read (503), except where the headers alone refuse it.
ANSWERS = {
    "slow body": {408, 503},
    "large, deadline": {200, 503, 504},
    "chunked, large": {200, 503, 504},
    "100-continue": {200, 503, 504},
    "413 declared": {413},
    "413 chunked": {413, 503},
    "415": {415},
    "400 v2 header length": {400, 503},
    "422": {422, 503},
}


def held_open(server: Server, size: int, sent: int) -> socket.socket:
    """A /v1 request of a ``size``-byte body (``largest_json``) with ``sent`` bytes of it sent."""
    sock = socket.create_connection((HOST, port(server)), timeout=30)
    sock.sendall(
        head("/v1/detect", "application/json", f"Content-Length: {size}") + largest_json(size)[:sent]
    )
    return sock


def check_bounds_whole(server: Server) -> None:
    """Nothing held; the bytes in flight let in three bodies of MAX_BODY and refuse a request
    whose Content-Length does not fit in what is left; the queue lets in MAX_QUEUE requests and
    refuses one more; each answered."""
    wait_for(lambda: quiet(server), lambda: f"{gauge(server)} bytes still held once quiet")
    # The bytes held are those that have arrived: all but the last 10 of each body.
    largest = [held_open(server, MAX_BODY, MAX_BODY - 10) for _ in range(MAX_INFLIGHT // MAX_BODY)]
    expected = MAX_INFLIGHT // MAX_BODY * (MAX_BODY - 10)
    wait_for(
        lambda: gauge(server) == expected,
        lambda: f"{gauge(server)} bytes held, not {expected}: a body refused?",
    )
    one_more = held_open(server, 1024, 10)
    assert answer(one_more) == 503  # refused at once: its Content-Length does not fit in what is left
    one_more.close()
    for sock in largest:
        sock.sendall(largest_json()[MAX_BODY - 10 :])
        assert answer(sock) == 200
        sock.close()
    wait_for(lambda: gauge(server) == 0, lambda: f"{gauge(server)} bytes still held after their answers")
    size = len(largest_json(4096))
    places = [held_open(server, size, 10) for _ in range(MAX_QUEUE)]
    wait_for(lambda: gauge(server) == MAX_QUEUE * 10, lambda: f"{gauge(server)} bytes held")
    extra = held_open(server, size, 10)
    assert answer(extra) == 503  # refused at once: the queue is full
    extra.close()
    for sock in places:
        sock.sendall(largest_json(4096)[10:])
        assert answer(sock) == 200
        sock.close()
    wait_for(lambda: gauge(server) == 0, lambda: f"{gauge(server)} bytes still held after the queue")


def reload_and_hup(server: Server, stop: threading.Event, outcomes: Counter[str]) -> None:
    while not stop.is_set():
        connection = http.client.HTTPConnection(HOST, port(server), timeout=60)
        try:
            connection.request("POST", "/admin/models/bump/reload")
            outcomes[f"reload {connection.getresponse().status}"] += 1
        finally:
            connection.close()
        os.kill(server.process.pid, signal.SIGHUP)  # one server process: every model reloads
        outcomes["sighup"] += 1
        stop.wait(0.3)


@pytest.mark.slow
def test_every_way_a_request_ends_gives_its_bytes_and_its_place_back(server: Server) -> None:
    quick = [kind for kind in ANSWERS if kind != "slow body"]
    kinds = [*LEAVING * 10, *quick * 10, *["slow body"] * 3]
    outcomes: Counter[str] = Counter()
    stop = threading.Event()
    reloader = threading.Thread(target=reload_and_hup, args=(server, stop, outcomes))
    reloader.start()
    try:
        answered = storm(server, kinds, seed=1)
    finally:
        stop.set()
        reloader.join()
    assert outcomes["reload 200"] > 0, outcomes
    # Once more without reloads: a new version's batcher starts with an empty queue, which
    # would hide places kept in the old one.
    answered += storm(server, kinds, seed=2)
    wrong = {
        (kind, status): n
        for (kind, status), n in answered.items()
        if kind in ANSWERS and status not in ANSWERS[kind]
    }
    assert not wrong, (wrong, answered)
    check_bounds_whole(server)

    # SIGTERM with a request being read: it is answered, then the process exits 0.
    reading = held_open(server, MAX_BODY, 10)
    wait_for(lambda: gauge(server) == 10, lambda: f"{gauge(server)} bytes held")  # what has arrived
    server.process.send_signal(signal.SIGTERM)
    wait_for(lambda: readiness(server) == 503, lambda: "readiness still 200 after SIGTERM")
    reading.sendall(largest_json()[10:])
    assert answer(reading) == 200
    reading.close()
    assert server.process.wait(timeout=30) == 0, server.log()
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    bad = [
        line
        for line in lines
        if line["level"] in ("warning", "error", "critical")
        and not any(clash in line["message"] for clash in RELOAD_CLASHES)
    ]
    assert not bad, bad[:3]
