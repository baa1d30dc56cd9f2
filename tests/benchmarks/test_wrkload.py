"""The load generators check every response: wrk's Lua script and the Python client's checks.

A stdlib HTTP server answers with a good, a wrong or a failing response; no assertion depends
on timing (only on which responses are counted as errors).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from benchmarks import loadgen, wrkload

GOOD = b'{"results": [{"peaks": []}, {"peaks": [{"index": 3, "probability": 0.9}]}]}'
ANSWERS = {
    "/good": (200, GOOD),
    "/same-shape": (200, GOOD.replace(b"0.9", b"0.8")),  # not identical, still one 'peaks' per signal
    "/short": (200, b'{"results": [{"peaks": []}]}'),
    "/error": (503, b'{"detail": "busy"}'),
}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        status, body = ANSWERS[self.path]
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class Server(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # wrk drops its connections when it is stopped


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def payload() -> loadgen.Payload:
    return loadgen.npy_payload(np.zeros((2, 16), dtype=np.float32))


def test_python_checked_requests(url: str, payload: loadgen.Payload) -> None:
    result, first = loadgen.checked_requests(url + "/good", payload, 3)
    assert (result.requests, result.errors, first) == (3, 0, GOOD)
    result, first = loadgen.checked_requests(url + "/short", payload, 2)
    assert (result.requests, result.errors, first) == (0, 2, None)
    assert "1 results for 2 signals" in result.error_examples[0]
    result, _ = loadgen.checked_requests(url + "/error", payload, 1)
    assert result.errors == 1 and "HTTP 503" in result.error_examples[0]


def test_parse_output() -> None:
    stats, example = wrkload.parse_output(
        'Running 1h test\n{"responses": 3, "ok": 2}\nexample: HTTP 500: x\n'
    )
    assert stats == {"responses": 3, "ok": 2} and example == "HTTP 500: x"
    with pytest.raises(RuntimeError, match="no result line"):
        wrkload.parse_output("unable to connect\n")


needs_wrk = pytest.mark.skipif(wrkload.executable() is None, reason="wrk is not installed (make wrk)")


def run(
    url: str, path: str, payload: loadgen.Payload, tmp_path: Path, measured: bool = True
) -> loadgen.PhaseResult:
    body, expected = tmp_path / "body", tmp_path / "expected"
    body.write_bytes(payload.body)
    expected.write_bytes(GOOD)
    return wrkload.run_phase(
        url + path, body, payload, 2, duration=0.3, timeout=5, expected_file=expected, measured=measured
    )


@needs_wrk
def test_wrk_counts_good_answers(url: str, payload: loadgen.Payload, tmp_path: Path) -> None:
    result = run(url, "/good", payload, tmp_path)
    assert result.errors == 0 and result.responses and result.identical == result.responses
    assert result.percentiles_ms is not None and result.requests <= result.responses
    same = run(url, "/same-shape", payload, tmp_path)
    assert same.errors == 0 and same.responses and same.identical == 0


@pytest.mark.parametrize(("path", "message"), [("/short", '1 "peaks" for 2 signals'), ("/error", "HTTP 503")])
@needs_wrk
def test_wrk_counts_wrong_answers_as_errors(
    url: str, payload: loadgen.Payload, tmp_path: Path, path: str, message: str
) -> None:
    result = run(url, path, payload, tmp_path, measured=False)
    assert result.responses and result.errors == result.responses and result.requests == 0
    assert message in result.error_examples[0]
    measured = run(url, path, payload, tmp_path)  # and no correct answer in the window: one more
    assert measured.responses and measured.errors == measured.responses + 1
    assert "no answer inside" in measured.error_examples[-1]
