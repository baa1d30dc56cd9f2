"""Hostile input: each gets a 4xx quickly, with bounded memory, and never a 5xx.

In-process for malformed bodies (TestClient; tracemalloc sees every Python and numpy
allocation, not the C++ ones of the plain JSON path's simdjson parser, measured in
tests/core/test_plain_json.py); against a real server process for what needs real sockets: a
slowly trickled body (slowloris), slow headers, and a declared Content-Length far beyond the
limit.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.integration.conftest import Server, start_server
from tests.logs import json_lines

NPY = {"Content-Type": "application/x-npy"}
JSON = {"Content-Type": "application/json"}
OCTET = {"Content-Type": "application/octet-stream"}
MAX_BODY = 4_000_000
# Peak Python + numpy allocation (client side included) while one request is handled, per byte
# of body: orjson's parser (yyjson) and the Python objects it builds take ~13-16x the JSON text;
# binary bodies are read into one buffer and viewed, not copied. SHAPE_DETECTOR_MAX_BODY_BYTES
# therefore bounds the memory of every request.
JSON_BYTES_PER_BYTE, BINARY_BYTES_PER_BYTE, BASE_BYTES = 20, 4, 8_000_000


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def npy_with_header(header: bytes, data: bytes = b"", version: int = 1) -> bytes:
    if version == 1:
        return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + data
    return b"\x93NUMPY" + bytes([version, 0]) + len(header).to_bytes(4, "little") + header + data


def padded(header: str) -> bytes:
    raw = header.encode("latin1")
    return raw + b" " * (63 - (len(raw) + 10) % 64) + b"\n"


class Exploit:
    """Unpickling this creates a directory: proof that something was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def pickled_npy(marker: Path) -> bytes:
    arr = np.empty(20, dtype=object)
    arr[:] = [Exploit(marker)] * 20
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def v2_json(shape: list[int], data: list[float] | None = None, **extra: Any) -> bytes:
    spec: dict[str, Any] = {"name": "signal", "shape": shape, "datatype": "FP32", **extra}
    if data is not None:
        spec["data"] = data
    return json.dumps({"inputs": [spec]}).encode()


def deep_json(depth: int) -> bytes:
    return b'{"signals": ' + b"[" * depth + b"]" * depth + b"}"


SIG = "[" + ",".join(["0.5"] * 100) + "]"

# name: (path, body, headers, expected status, words the message holds)
CASES: dict[str, tuple[str, bytes, dict[str, str], int, str]] = {
    # .npy headers
    "npy magic only": ("/v1/detect", b"\x93NUMPY", NPY, 400, "not a .npy file"),
    "npy header length beyond body": (
        "/v1/detect",
        b"\x93NUMPY\x01\x00\xff\xff{'descr'",
        NPY,
        400,
        "truncated or too long",
    ),
    "npy v2 header cut": ("/v1/detect", b"\x93NUMPY\x02\x00\x10\x00", NPY, 400, "truncated"),
    "npy v2 header claims 2 GiB": (
        "/v1/detect",
        b"\x93NUMPY\x02\x00" + (2**31).to_bytes(4, "little") + b"{" * 100,
        NPY,
        400,
        "truncated or too long",
    ),
    "npy header of 70000 bytes": (
        "/v1/detect",
        npy_with_header(
            b"{'descr': '<f8', 'fortran_order': False, 'shape': (100,), }" + b" " * 70000, version=2
        ),
        NPY,
        400,
        "truncated or too long",
    ),
    "npy header nested 5000 deep": (
        "/v1/detect",
        npy_with_header(padded("{'descr': '<f8', 'shape': " + "(" * 5000 + ")" * 5000 + "}")),
        NPY,
        400,
        "header cannot be read: it is not a Python literal",
    ),
    "npy header with a 20000-digit number": (
        "/v1/detect",
        npy_with_header(
            padded("{'descr': '<f8', 'fortran_order': False, 'shape': (" + "9" * 20000 + ",), }")
        ),
        NPY,
        400,
        "header cannot be read: a number in it has more than 19 digits",
    ),
    "npy header is a function call": (
        "/v1/detect",
        npy_with_header(padded("__import__('os').system('true')")),
        NPY,
        400,
        "header cannot be read: it is not a Python literal",
    ),
    "npy shape claims terabytes": (
        "/v1/detect",
        npy_with_header(
            padded("{'descr': '<f8', 'fortran_order': False, 'shape': (100000, 10000000), }"), b"\0" * 64
        ),
        NPY,
        422,
        "the limit is",
    ),
    "npy shape claims 2**62 samples": (
        "/v1/detect",
        npy_with_header(
            padded("{'descr': '<f8', 'fortran_order': False, 'shape': (4611686018427387904,), }")
        ),
        NPY,
        422,
        "the limit is",
    ),
    "npy negative shape": (
        "/v1/detect",
        npy_with_header(padded("{'descr': '<f8', 'fortran_order': False, 'shape': (-5,), }")),
        NPY,
        400,
        "'shape' must be a tuple of non-negative integers, got (-5,)",
    ),
    "npy structured dtype": (
        "/v1/detect",
        npy(np.zeros(100, dtype=[("a", "<f4"), ("b", "<f4")])),
        NPY,
        422,
        "no pickle",
    ),
    "npy big-endian": ("/v1/detect", npy(np.zeros(100, dtype=">f8")), NPY, 200, ""),
    # JSON
    "json nested 100000 deep": ("/v1/detect", deep_json(100_000), JSON, 400, "not valid JSON"),
    "json objects nested 100000 deep": (
        "/v1/detect",
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        JSON,
        400,
        "not valid JSON",
    ),
    "v2 json nested 100000 deep": ("/v2/models/bump/infer", deep_json(100_000), JSON, 400, "not valid JSON"),
    "json 400-digit integer": (
        "/v1/detect",
        b'{"signals": [[' + b"9" * 400 + b"," + SIG[1:].encode() + b"]}",
        JSON,
        422,
        "beyond float64's range",
    ),
    "json 1e39 (beyond float32)": (
        "/v1/detect",
        b'{"signals": [[1e39,' + SIG[1:].encode() + b"]}",
        JSON,
        422,
        "float32 range",
    ),
    "json 1e400 (beyond float64)": (
        "/v1/detect",
        b'{"signals": [[1e400,' + SIG[1:].encode() + b"]}",
        JSON,
        422,
        "beyond float64's range",
    ),
    "json huge threshold": (
        "/v1/detect",
        b'{"signals": [' + SIG.encode() + b'], "threshold": 1e308}',
        JSON,
        422,
        "threshold",
    ),
    "json huge min_distance": (
        "/v1/detect",
        b'{"signals": [' + SIG.encode() + b'], "min_distance": 1' + b"0" * 30 + b"}",
        JSON,
        422,
        "min_distance",
    ),
    "json lone surrogate": ("/v1/detect", b'{"signals": [["\\ud800"]]}', JSON, 400, "not valid JSON"),
    "json invalid utf-8": ("/v1/detect", b'{"signals": [["\xff\xfe"]]}', JSON, 400, "not valid JSON"),
    "json 100000 empty signals": (
        "/v1/detect",
        b'{"signals": [' + b"[]," * 99_999 + b"[]]}",
        JSON,
        422,
        "100000 signals",
    ),
    "json 3.9 MB of one long string": (
        "/v1/detect",
        b'{"signals": ["' + b"a" * 3_900_000 + b'"]}',
        JSON,
        422,
        "must be a list",
    ),
    "json nul bytes": ("/v1/detect", b"\0" * 1000, JSON, 400, "not valid JSON"),
    # Open Inference Protocol: shapes that claim terabytes
    "v2 shape claims terabytes": (
        "/v2/models/bump/infer",
        v2_json([100_000, 10_000_000], [0.0] * 16),
        JSON,
        400,
        "the limit is",
    ),
    "v2 binary shape claims terabytes": (
        "/v2/models/bump/infer",
        v2_json([1, 2**40], parameters={"binary_data_size": 2**42}),
        {
            **OCTET,
            "Inference-Header-Content-Length": str(
                len(v2_json([1, 2**40], parameters={"binary_data_size": 2**42}))
            ),
        },
        400,
        "the limit is",
    ),
    "v2 binary size beyond body": (
        "/v2/models/bump/infer",
        v2_json([1, 100], parameters={"binary_data_size": 400}),
        {
            **OCTET,
            "Inference-Header-Content-Length": str(
                len(v2_json([1, 100], parameters={"binary_data_size": 400}))
            ),
        },
        400,
        "",
    ),
    "v2 header length 10**30": (
        "/v2/models/bump/infer",
        b"{}",
        {**OCTET, "Inference-Header-Content-Length": "1" + "0" * 30},
        400,
        "",
    ),
    # Compressed bodies: refused before they are read, never decompressed
    "gzip json": (
        "/v1/detect",
        b"\x1f\x8b\x08\x00" + b"\0" * 100,
        {**JSON, "Content-Encoding": "gzip"},
        415,
        "Content-Encoding 'gzip' is not supported",
    ),
    "deflate npy": (
        "/v1/detect",
        b"x\x9c" + b"\0" * 100,
        {**NPY, "Content-Encoding": "deflate"},
        415,
        "send the body uncompressed",
    ),
    "br json": ("/v1/detect", b"\0" * 10, {**JSON, "Content-Encoding": "br"}, 415, "not supported"),
    "gzip v2": (
        "/v2/models/bump/infer",
        b"\x1f\x8b\x08\x00" + b"\0" * 100,
        {**JSON, "Content-Encoding": "gzip"},
        400,
        "not supported",
    ),
    # Framing
    "content-length not a number": (
        "/v1/detect",
        b"{}",
        {**JSON, "Content-Length": "12abc"},
        400,
        "not a number",
    ),
}


@pytest.fixture(scope="module")
def hostile_client(models_dir: Path) -> Iterator[TestClient]:
    from tests.reliability.conftest import app_client

    with app_client(
        models_dir, MAX_SIGNALS=16, MAX_SAMPLES=200_000, MAX_SIGNAL_LENGTH=100_000, MAX_BODY_BYTES=MAX_BODY
    ) as c:
        yield c


def message(r: Any) -> str:
    doc = r.json()
    if "error" in doc:
        return str(doc["error"])
    d = doc.get("detail", "")
    return d if isinstance(d, str) else " ".join(e["msg"] for e in d)


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_body_gets_a_quick_4xx_with_bounded_memory(hostile_client: TestClient, name: str) -> None:
    path, body, headers, status, words = CASES[name]
    tracemalloc.start()
    try:
        started = time.perf_counter()
        r = hostile_client.post(path, content=body, headers=headers)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.status_code == status, (name, r.status_code, r.text[:500])
    if status != 200:
        assert words in message(r), (name, r.text[:500])
    assert elapsed < 2.0, (name, elapsed)
    per_byte = (
        JSON_BYTES_PER_BYTE if headers.get("Content-Type") == "application/json" else BINARY_BYTES_PER_BYTE
    )
    assert peak < BASE_BYTES + per_byte * len(body), (name, peak, len(body))


def test_float16_npy_with_infinity_is_refused(hostile_client: TestClient) -> None:
    x = np.zeros(100, dtype=np.float16)
    x[10] = np.inf
    r = hostile_client.post("/v1/detect", content=npy(x), headers=NPY)
    assert r.status_code == 422 and "not finite" in message(r)


def test_pickle_in_npy_is_never_unpickled(hostile_client: TestClient, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    body = pickled_npy(marker)
    pickle.loads(pickle.dumps(Exploit(marker)))  # the payload is live: unpickling it runs it
    assert marker.is_dir()
    marker.rmdir()
    for path, headers in (("/v1/detect", NPY), ("/v1/models/other/detect", NPY)):
        r = hostile_client.post(path, content=body, headers=headers)
        assert r.status_code == 422 and "no pickle" in message(r)
    assert not marker.exists()


def test_duplicate_keys_are_refused(hostile_client: TestClient) -> None:
    """JSON leaves repeated names undefined (parsers keep the last): refused, naming the field."""
    r = hostile_client.post(
        "/v1/detect",
        content=b'{"signals": [[1.0]], "threshold": 0.9, "threshold": 0.3, "signals": '
        + f"[{SIG}]".encode()
        + b"}",
        headers=JSON,
    )
    assert r.status_code == 422 and "appears more than once" in message(r)
    # The only field, twice: the body's quotes outnumber the parsed object's names.
    r = hostile_client.post(
        "/v1/detect", content=b'{"signals": [[1.0]],"signals":[' + SIG.encode() + b"]}", headers=JSON
    )
    assert r.status_code == 422 and "field 'signals' appears more than once" in message(r)
    r = hostile_client.post(
        "/v1/detect", content=b'{"signals": [' + SIG.encode() + b'], "threshold": 0.3}', headers=JSON
    )
    assert r.status_code == 200 and r.json()["threshold"] == 0.3


def test_identity_encoding_is_accepted(hostile_client: TestClient) -> None:
    r = hostile_client.post(
        "/v1/detect",
        content=b'{"signals": [' + SIG.encode() + b"]}",
        headers={**JSON, "Content-Encoding": "identity"},
    )
    assert r.status_code == 200


# A real server: sockets, slow clients, declared sizes.

BODY_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(
        tmp_path_factory.mktemp("hostile"),
        env={
            "SHAPE_DETECTOR_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
            "SHAPE_DETECTOR_MAX_BODY_BYTES": "4000000",
        },
    )
    yield server
    assert server.stop() == 0, server.log()


def host_port(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def ok_request(server: Server) -> float:
    started = time.perf_counter()
    r = httpx.post(f"{server.url}/v1/detect", json={"signals": [[0.0] * 300]}, timeout=10)
    assert r.status_code == 200, r.text
    return time.perf_counter() - started


def recv_all(sock: socket.socket, out: bytearray) -> None:
    try:
        while chunk := sock.recv(65536):
            out.extend(chunk)
    except OSError:  # reset once the server closed: what arrived before is kept
        pass


def test_an_unsupported_content_type_is_refused_before_the_body_is_read(real_server: Server) -> None:
    """415 on the headers alone: a client that declared 1 MB of a type the service cannot read
    is not kept sending it (nor waiting BODY_TIMEOUT_S for a 408)."""
    with socket.create_connection(host_port(real_server), timeout=BODY_TIMEOUT_S / 2) as sock:
        sock.sendall(
            b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
            b"Content-Length: 1000000\r\n\r\n0.5,"
        )
        head = sock.recv(65536)  # a timeout here: the server waits for the body
    assert head.startswith(b"HTTP/1.1 415"), head[:300]
    assert b"Content-Type 'text/csv' is not supported" in head


@pytest.mark.parametrize("path", ["/v1/detect", "/v2/models/bump/infer"])
def test_a_compressing_transfer_coding_is_refused_naming_it(real_server: Server, path: str) -> None:
    """The parser takes chunked framing off and leaves gzip on: refused saying so (415 on /v1,
    400 on /v2, as a compressed Content-Encoding is), not as a body that is not JSON."""
    body = gzip.compress(b'{"signals": [[' + b"0.5," * 299 + b"0.5]]}")
    chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    with socket.create_connection(host_port(real_server), timeout=10) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
            + b"Transfer-Encoding: gzip, chunked\r\n\r\n"
            + chunked
        )
        head = sock.recv(65536)
    status = b"415" if path.startswith("/v1") else b"400"
    assert head.startswith(b"HTTP/1.1 " + status), head[:300]
    assert b"Transfer-Encoding 'gzip, chunked' is not supported" in head, head[:500]


@pytest.mark.slow
def test_slowloris_body_gets_408_and_does_not_hold_up_others(real_server: Server) -> None:
    """Headers at once, then one byte every 0.1 s: 408 after BODY_TIMEOUT_S, connection closed;
    meanwhile normal requests are served as usual."""
    sock = socket.create_connection(host_port(real_server), timeout=30)
    sock.sendall(
        b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100000\r\n\r\n{"signals": [['
    )
    response = bytearray()
    reader = threading.Thread(target=recv_all, args=(sock, response))
    reader.start()
    stop = threading.Event()

    def trickle() -> None:
        for _ in range(600):  # at most 60 s
            if stop.wait(0.1):
                return
            try:
                sock.send(b"0,")
            except OSError:
                return

    writer = threading.Thread(target=trickle)
    started = time.monotonic()
    writer.start()
    try:
        latencies = [ok_request(real_server) for _ in range(10)]
        reader.join(BODY_TIMEOUT_S + 10)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        writer.join(5)
        sock.close()
    assert not reader.is_alive(), "the server did not close the slow connection"
    assert response.startswith(b"HTTP/1.1 408"), bytes(response[:300])
    assert b"SHAPE_DETECTOR_BODY_TIMEOUT_S" in response
    assert b"connection: close" in response.lower()
    assert BODY_TIMEOUT_S - 0.5 < elapsed < BODY_TIMEOUT_S + 5, elapsed
    assert max(latencies) < 2.0, latencies


@pytest.mark.slow
def test_slow_headers_do_not_hold_up_others(real_server: Server) -> None:
    """Twenty connections that never finish their headers: others are still served at once.
    (uvicorn has no header timeout: such connections cost a socket each until the client or a
    proxy in front, e.g. nginx's client_header_timeout, closes them.)"""
    socks = []
    try:
        for _ in range(20):
            s = socket.create_connection(host_port(real_server), timeout=5)
            s.sendall(b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            socks.append(s)
        assert max(ok_request(real_server) for _ in range(5)) < 2.0
    finally:
        for s in socks:
            s.close()


@pytest.mark.slow
def test_declared_size_beyond_the_limit_is_refused_before_the_body(real_server: Server) -> None:
    """Content-Length of 1 TB: 413 at once, nothing allocated, no body sent."""
    with socket.create_connection(host_port(real_server), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
            b"Content-Length: 1000000000000\r\n\r\n"
        )
        head = bytearray()
        while b"SHAPE_DETECTOR_MAX_BODY_BYTES" not in head and (chunk := sock.recv(65536)):
            head.extend(chunk)
    assert head.startswith(b"HTTP/1.1 413"), head[:200]
    assert b"SHAPE_DETECTOR_MAX_BODY_BYTES" in head
    ok_request(real_server)


@pytest.mark.slow
def test_a_client_that_leaves_mid_body_is_499_not_a_server_error(real_server: Server) -> None:
    with socket.create_connection(host_port(real_server), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'X-Request-ID: leaves-early\r\nContent-Length: 1000\r\n\r\n{"signals": [['
        )
        time.sleep(0.3)
    for _ in range(100):  # the access log line is written once the server noticed
        lines = [doc for doc in json_lines(real_server.log()) if doc.get("request_id") == "leaves-early"]
        if lines:
            break
        time.sleep(0.05)
    assert lines and lines[0]["status"] == 499, lines
    assert "unhandled error" not in real_server.log()
    ok_request(real_server)
