"""The service as users run it: a real uvicorn process on a real port."""

import http.client
import io
import json
import os
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np

from tests.api.test_primer_figure import primer_signal
from tests.cpus import needs_two_cpus
from tests.integration.conftest import ROOT, start_server
from tests.integration.faulty import BUGGY
from tests.logs import json_lines


def test_serve_detect_and_stop_cleanly(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
        r = httpx.post(
            f"{server.url}/v1/detect",
            json={"signals": [primer_signal(1).tolist()]},
            headers={"X-Request-ID": "it-1"},
        )
        assert r.status_code == 200 and r.headers["x-request-id"] == "it-1"
        peaks = [p["index"] for p in r.json()["results"][0]["peaks"]]
        assert len(peaks) == 2 and abs(peaks[0] - 35) <= 2 and abs(peaks[1] - 255) <= 2
        buf = io.BytesIO()
        np.save(buf, np.stack([primer_signal(2), primer_signal(3)]).astype(np.float32))
        r = httpx.post(
            f"{server.url}/v1/models/bump/detect",
            content=buf.getvalue(),
            headers={"Content-Type": "application/x-npy"},
        )
        assert r.status_code == 200 and len(r.json()["results"]) == 2
        assert "shape_detector_requests_total" in httpx.get(f"{server.url}/metrics").text
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:  # refused by the parser
            sock.sendall(
                b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}"
            )
            malformed = sock.recv(65536)
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'shape_detector_requests_total{method="other",route="malformed",status="400"} 1.0' in metrics
    finally:
        code = server.stop()
    assert code == 0, server.log()
    log = server.log()
    assert [doc["status"] for doc in json_lines(log) if doc.get("request_id") == "it-1"] == [200], log
    head, _, body = malformed.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"content-type: application/json" in head
    assert "Duplicate Content-Length" in json.loads(body)["detail"]
    # Every line is JSON, uvicorn's own included (start, stop).
    lines = [line for line in log.splitlines() if line.strip()]
    assert len(json_lines(log)) == len(lines), log
    loggers = {doc["logger"] for doc in json_lines(log)}
    assert {"uvicorn.error", "shape_detector.access"} <= loggers, loggers
    # The refused request makes one line, the access line: uvicorn's warning about it is dropped.
    refusal = [
        doc
        for doc in json_lines(log)
        if doc.get("error") == "Duplicate Content-Length"
        or doc["message"] == "Invalid HTTP request received."
    ]
    assert [doc["logger"] for doc in refusal] == ["shape_detector.access"], log


def refused_start(**env: str) -> str:
    """``python -m app`` with these settings: it must exit 2 before serving; its stderr."""
    env = {"SHAPE_DETECTOR_MODEL_DIR": str(ROOT / "models"), "PATH": "/usr/bin:/bin", **env}
    r = subprocess.run(
        [sys.executable, "-m", "app"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2, r.stderr
    return r.stderr


def test_invalid_setting_stops_startup_with_a_message() -> None:
    assert "SHAPE_DETECTOR_MAX_SIGNALS='-5'" in refused_start(SHAPE_DETECTOR_MAX_SIGNALS="-5")


def test_a_shutdown_timeout_beyond_a_day_stops_startup_with_a_message() -> None:
    """Not a traceback: uvicorn's graceful-shutdown timeout, computed from it, cannot be infinite."""
    stderr = refused_start(SHAPE_DETECTOR_SHUTDOWN_TIMEOUT_S="inf")
    assert "SHAPE_DETECTOR_SHUTDOWN_TIMEOUT_S='inf': above 86400: after SIGTERM, the longest wait" in stderr
    assert "Traceback" not in stderr


def test_a_host_with_a_port_stops_startup_naming_the_variable() -> None:
    """Before the models load, saying what to give: not uvicorn's "Name or service not known"
    (exit code 3) once they have."""
    stderr = refused_start(SHAPE_DETECTOR_HOST="127.0.0.1:8000")
    assert "SHAPE_DETECTOR_HOST='127.0.0.1:8000': not an address to listen on" in stderr
    assert "without a port (that is SHAPE_DETECTOR_PORT)" in stderr


def test_a_window_the_models_cannot_run_in_stops_startup_naming_the_least() -> None:
    stderr = refused_start(SHAPE_DETECTOR_WINDOW="256")
    assert "SHAPE_DETECTOR_WINDOW: 256 samples is too short" in stderr
    assert "set at least 2681 (arrival needs 2681, bump needs 2265;" in stderr


def test_a_keys_file_without_a_key_stops_startup(tmp_path: Path) -> None:
    """Not a server without authentication: an empty (or comments-only) keys file exits 2."""
    keys = tmp_path / "keys"
    keys.write_text("# one key per line\n\n")
    stderr = refused_start(SHAPE_DETECTOR_API_KEYS_FILE=str(keys))
    assert f"SHAPE_DETECTOR_API_KEYS_FILE: '{keys}' holds no key" in stderr


JSON = {"Content-Type": "application/json"}


def exchange(
    conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()


def test_a_500_and_head_leave_the_connection_usable(tmp_path: Path) -> None:
    """One keep-alive connection, as a client's pool reuses it: an unexpected error answers 500
    with the headers of every response and the connection serves the next request (it was
    closed without a word, and the next request on it was reset); HEAD answers GET's status and
    headers with no body on the wire."""
    server = start_server(tmp_path, factory="tests.integration.faulty:app_from_env")
    conn = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=30)
    detect = json.dumps({"signals": [primer_signal(1).tolist()]}).encode()
    try:
        assert exchange(conn, "GET", "/healthz")[0] == 200
        sock = conn.sock
        for method, path, body in (
            ("POST", f"/v1/models/{BUGGY}/detect", detect),  # DirectRoutes
            ("GET", f"/v1/models/{BUGGY}", None),  # FastAPI's router
        ):
            request_id = f"it-{method}"
            status, headers, content = exchange(
                conn, method, path, body, **JSON, **{"X-Request-ID": request_id}
            )
            assert status == 500, content
            assert json.loads(content) == {"detail": "internal error; the request id is in X-Request-ID"}
            assert headers["x-request-id"] == request_id
            assert (headers["x-content-type-options"], headers["referrer-policy"]) == (
                "nosniff",
                "no-referrer",
            )
            assert "close" not in headers.get("connection", "")
            status, _, content = exchange(conn, "POST", "/v1/detect", detect, **JSON)
            assert status == 200 and json.loads(content)["results"], content
            assert conn.sock is sock, "the connection was closed"
        for path in ("/healthz", "/readyz", "/v2/models/bump", "/v1/models/bump", "/docs", "/"):
            got = exchange(conn, "GET", path)
            head = exchange(conn, "HEAD", path)
            assert (head[0], head[2]) == (got[0], b"") == (200, b""), path
            assert head[1]["content-length"] == got[1]["content-length"], path
            assert head[1]["content-type"] == got[1]["content-type"], path
        assert exchange(conn, "GET", "/healthz")[2] == b'{"status":"ok"}'  # nothing left on the wire
        assert conn.sock is sock, "the connection was closed"
    finally:
        conn.close()
        server.stop()
    log = server.log()
    errors = [doc for doc in json_lines(log) if doc.get("message") == "unhandled error"]
    assert [doc["request_id"] for doc in errors] == ["it-POST", "it-GET"], log
    assert all("RuntimeError: a bug injected into the lookup" in doc["exc"] for doc in errors), log
    assert "Exception in ASGI application" not in log  # answered by the app, not raised to the server


def test_both_shipped_models_detect_their_own_shape(tmp_path: Path) -> None:
    """/v1/models lists the two shipped models; each finds its own shape where it is.

    (Both shapes oscillate with a 16-sample period, so each model may also fire on the other's
    shape, as the matched filter would: no claim about that here.)
    """
    from training.scenario import BUMP
    from training.template import load_template

    arrival = load_template(ROOT / "training" / "templates" / "arrival.csv")
    rng = np.random.default_rng(11)

    def signal_with(values: np.ndarray, center: int, at: list[int]) -> list[float]:  # SNR 8
        x = rng.standard_normal(1200)
        for c in at:
            x[c - center : c - center + values.size] += 8.0 * values / np.linalg.norm(values)
        return x.tolist()

    server = start_server(tmp_path)
    try:
        models = httpx.get(f"{server.url}/v1/models").json()["models"]
        assert [m["name"] for m in models] == ["arrival", "bump"]
        assert all(m["calibration"] is not None for m in models)
        for name, tpl in (("arrival", arrival), ("bump", BUMP)):
            own = signal_with(tpl.values, tpl.center, [300, 800])
            quiet = rng.standard_normal(1200).tolist()
            r = httpx.post(f"{server.url}/v1/models/{name}/detect", json={"signals": [own, quiet]})
            assert r.status_code == 200, r.text
            doc = r.json()
            assert doc["model"]["name"] == name
            hit, miss = doc["results"]
            assert hit["detected"] and len(hit["peaks"]) == 2
            assert [abs(p["index"] - c) <= 2 for p, c in zip(hit["peaks"], [300, 800], strict=True)] == [
                True,
                True,
            ]
            assert all(0.5 < p["probability"] <= 1 for p in hit["peaks"])
            assert hit["probability"] > 0.9
            assert not miss["detected"] and miss["peaks"] == [] and miss["probability"] < 0.5
    finally:
        assert server.stop() == 0, server.log()


def _one_cpu_threads(pid: int) -> dict[int, set[int]]:
    """The threads of process ``pid`` allowed a single CPU, with that CPU."""
    out = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            cpus = os.sched_getaffinity(int(task))
        except ProcessLookupError:
            continue
        if len(cpus) == 1:
            out[int(task)] = cpus
    return out


@needs_two_cpus
def test_one_client_at_a_time_shares_a_cpu_and_a_second_client_ends_it(tmp_path: Path) -> None:
    """SAME_CPU_MAX_SAMPLES (opt-in): while one connection sends small requests one at a time,
    the event loop (the main thread) and an inference thread are pinned to one CPU; a request
    from another connection unpins every thread."""
    server = start_server(tmp_path, {"SHAPE_DETECTOR_SAME_CPU_MAX_SAMPLES": "16384"})
    pid = server.process.pid
    body = {"signals": [primer_signal(1).tolist()]}
    try:
        assert _one_cpu_threads(pid) == {}  # started with every CPU: nothing pinned yet
        with httpx.Client(base_url=server.url) as one:
            for _ in range(100):  # lone once no other connection sent a request for 0.1 s
                assert one.post("/v1/detect", json=body).status_code == 200
                if len(_one_cpu_threads(pid)) >= 2:
                    break
                time.sleep(0.02)
            pinned = _one_cpu_threads(pid)
            assert pid in pinned and len(pinned) >= 2, pinned  # the event loop and a worker
            assert len({cpu for cpus in pinned.values() for cpu in cpus}) == 1  # the same CPU
            with httpx.Client(base_url=server.url) as other:
                assert other.post("/v1/detect", json=body).status_code == 200
            assert _one_cpu_threads(pid) == {}
            assert one.post("/v1/detect", json=body).status_code == 200  # other sent one < 0.1 s ago
            assert _one_cpu_threads(pid) == {}
    finally:
        code = server.stop()
    assert code == 0, server.log()


def test_a_request_whose_body_is_read_holds_its_place_of_the_queue(tmp_path: Path) -> None:
    """With one place in the queue, a request still sending its body holds it: the next one is
    503 at once, its body unread. Every request that came while the queue had room used to read
    its body, so memory followed the number of connections, not MAX_QUEUE."""
    server = start_server(tmp_path, env={"SHAPE_DETECTOR_MAX_QUEUE": "1"})
    body = json.dumps({"signals": [[0.0] * 512]}).encode()
    try:
        with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=30) as slow:
            slow.sendall(
                b"POST /v1/detect HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body[:100]
            )
            refused = []
            for route, json_body in (
                ("/v1/detect", {"signals": [[0.0] * 512]}),
                (
                    "/v2/models/bump/infer",
                    {
                        "inputs": [
                            {"name": "signal", "shape": [1, 512], "datatype": "FP32", "data": [0.0] * 512}
                        ]
                    },
                ),
            ):
                deadline = time.monotonic() + 10
                while True:  # the slow request's headers may still be on their way
                    r = httpx.post(f"{server.url}{route}", json=json_body, timeout=30)
                    if r.status_code == 503 or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
                refused.append((r.status_code, r.headers.get("retry-after"), r.text))
            slow.sendall(body[100:])
            answer = slow.makefile("rb").readline()
        after = httpx.post(f"{server.url}/v1/detect", json={"signals": [[0.0] * 512]}, timeout=30)
    finally:
        server.stop()
    assert [status for status, _, _ in refused] == [503, 503], refused
    assert all(
        retry == "1" and "waiting for this model (the limit is 1)" in text for _, retry, text in refused
    )
    assert answer == b"HTTP/1.1 200 OK\r\n", answer
    assert after.status_code == 200, after.text


def _response(sock: socket.socket) -> tuple[int, str | None, bytes]:
    """The status, Retry-After and body of the answer on ``sock`` (the connection left open)."""
    r = http.client.HTTPResponse(sock)
    r.begin()
    return r.status, r.getheader("retry-after"), r.read()


def test_bodies_past_the_inflight_bytes_are_refused_unread(tmp_path: Path) -> None:
    """MAX_INFLIGHT_BYTES counts the bytes of the bodies held as they arrive: while a request has
    sent 3000 of its bytes, a second whose Content-Length would not fit is 503 at once, its body
    unread, and a chunked one as soon as its chunks pass the bound. Bytes only claimed are not
    held: clients that claim the largest body and send one byte kept every request out (503)."""
    server = start_server(
        tmp_path, env={"SHAPE_DETECTOR_MAX_BODY_BYTES": "4096", "SHAPE_DETECTOR_MAX_INFLIGHT_BYTES": "6000"}
    )
    port = int(server.url.rsplit(":", 1)[1])
    body = b'{"signals":[[' + b"0.0," * 776 + b"0.0]]}"
    head = b"POST /v1/detect HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"

    def held(size: int) -> None:
        deadline = time.monotonic() + 10
        while f"\nshape_detector_inflight_bytes {size}.0\n" not in httpx.get(f"{server.url}/metrics").text:
            assert time.monotonic() < deadline, f"not {size} bytes held"
            time.sleep(0.05)

    try:
        with ExitStack() as stack:
            claimers = [
                stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=30))
                for _ in range(4)
            ]
            for s in claimers:  # 4 x 4096 bytes claimed, 1 sent each
                s.sendall(head + b"Content-Length: 4096\r\n\r\n{")
            held(4)
            small = httpx.post(
                f"{server.url}/v1/detect", content=body, headers={"Content-Type": "application/json"}
            )
            for s in claimers:
                s.close()
            held(0)
            slow, unread, chunked = (
                stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=30))
                for _ in range(3)
            )
            slow.sendall(head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:3000])
            held(3000)  # what has come of the slow request's body
            unread.sendall(head + f"Content-Length: {len(body)}\r\n\r\n".encode())  # no body sent
            refused = _response(unread)  # at once, its body unsent: 3000 + 3123 > 6000
            chunked.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n" + b"7d0\r\n" + body[:2000] + b"\r\n")
            held(3000 + 2000)  # a chunked body's bytes as they come
            chunked.sendall(b"7d0\r\n" + body[:2000] + b"\r\n")  # 5000 + 2000 > 6000: refused here
            passed = _response(chunked)
            slow.sendall(body[3000:])
            answer = slow.makefile("rb").readline()
        metrics = httpx.get(f"{server.url}/metrics").text
    finally:
        server.stop()
    assert small.status_code == 200, small.text  # the claims held 4 bytes, not 16384
    for status, retry, _ in (refused, passed):
        assert (status, retry) == (503, "1")
    assert b"3000 bytes of request bodies are in flight and this request's 3123 more would pass" in refused[2]
    # its own first chunk held too
    assert b"5000 bytes of request bodies are in flight and this request's 2000 more would pass" in passed[2]
    assert answer == b"HTTP/1.1 200 OK\r\n", answer
    assert "\nshape_detector_inflight_bytes 0.0\n" in metrics


def test_a_websocket_handshake_is_served_as_the_http_request_it_also_is(tmp_path: Path) -> None:
    """The service has no WebSocket routes. With a WebSocket library installed, uvicorn's
    WebSocket layer took handshakes itself and refused them, past the app's middleware: no
    security headers, no log line, no key check for a route that would have one."""
    server = start_server(tmp_path)
    port = int(server.url.rsplit(":", 1)[1])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(
                b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            )
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = s.recv(65536)
                if not chunk:
                    break
                head += chunk
    finally:
        server.stop()
    status_line, _, rest = head.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 200 OK", head
    assert b"x-content-type-options: nosniff" in rest.lower(), head


def _until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a timeout if it does not)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_no_response_names_the_server_software(tmp_path: Path) -> None:
    """No ``Server: uvicorn`` header: not on the app's answers (a 200, a 404), nor on the 400
    the server's HTTP parser answers itself."""
    server = start_server(tmp_path)
    port = int(server.url.rsplit(":", 1)[1])
    try:
        answers = [httpx.get(f"{server.url}{path}") for path in ("/healthz", "/no-such-path")]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHo st: test\r\n\r\n")  # refused by the parser
            refused = _until_closed(sock)
    finally:
        server.stop()
    assert [r.status_code for r in answers] == [200, 404]
    assert all("server" not in r.headers for r in answers), [r.headers for r in answers]
    head = refused.partition(b"\r\n\r\n")[0].lower().split(b"\r\n")
    assert head[0].startswith(b"http/1.1 400 ") and b"date" in {line.split(b":")[0] for line in head[1:]}
    assert not any(line.startswith(b"server:") for line in head[1:]), refused


def test_a_request_the_parser_refuses_gets_the_cors_headers_of_its_allowed_origin(tmp_path: Path) -> None:
    """With CORS on, the server's own 400 and 431 carry the CORS headers an answer of the app
    would: a page of an allowed origin reads the error, not an opaque network error."""
    server = start_server(tmp_path, env={"SHAPE_DETECTOR_CORS_ORIGINS": "http://page.example"})
    port = int(server.url.rsplit(":", 1)[1])
    requests = {
        "bad header": b"GET /healthz HTTP/1.1\r\nOrigin: {origin}\r\nHost: test\r\nHo st: x\r\n\r\n",
        "head too large": b"GET /healthz HTTP/1.1\r\nOrigin: {origin}\r\nX-Long: "
        + b"a" * 70_000
        + b"\r\n\r\n",
    }
    heads: dict[tuple[str, str], list[bytes]] = {}
    try:
        for name, request in requests.items():
            for origin in ("http://page.example", "http://elsewhere.example"):
                with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                    sock.sendall(request.replace(b"{origin}", origin.encode()))
                    heads[name, origin] = _until_closed(sock).partition(b"\r\n\r\n")[0].split(b"\r\n")
    finally:
        server.stop()
    for (name, origin), head in heads.items():
        assert head[0].startswith(b"HTTP/1.1 4"), (name, head)
        allowed = b"access-control-allow-origin: http://page.example" in head
        assert allowed == (origin == "http://page.example"), (name, origin, head)
        assert b"vary: Origin" in head, (name, head)
