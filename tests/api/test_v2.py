"""/v2: the Open Inference Protocol (KServe v2) with the binary tensor data extension, by hand.

Raw requests in each form (JSON, JSON + binary data, raw binary), checked against /v1's
results for the same signals, and every error case: a 4xx with {"error": ...}, never a 5xx.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from httpx import Response
from jsonschema import Draft202012Validator

from app.core import oip
from app.core.batching import Batcher
from app.core.errors import Overloaded
from app.main import create_app
from app.settings import load_settings

INFER = "/v2/models/bump/infer"
HEADER = "Inference-Header-Content-Length"
NP_TYPES = {"FP32": "<f4", "FP64": "<f8", "BOOL": "?", "INT64": "<i8"}
DEFAULT = ["probability", "detected", "peak_signal", "peak_index", "peak_probability"]


def signals(n: int = 3, length: int = 400, seed: int = 0) -> np.ndarray:
    """Float32 signals (exactly representable, so /v1's JSON carries the same values)."""
    return np.random.default_rng(seed).standard_normal((n, length)).astype(np.float32)


def tensor(x: np.ndarray, datatype: str = "FP32", **extra: Any) -> dict[str, Any]:
    return {"name": "signal", "shape": list(x.shape), "datatype": datatype, **extra}


def json_request(x: np.ndarray, **fields: Any) -> dict[str, Any]:
    return {"inputs": [tensor(x, data=x.ravel().tolist())], **fields}


def with_binary(doc: dict[str, Any], *blobs: bytes) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(doc).encode()
    return header + b"".join(blobs), {HEADER: str(len(header))}


def binary_request(x: np.ndarray, datatype: str = "FP32", **fields: Any) -> tuple[bytes, dict[str, str]]:
    data = x.astype(NP_TYPES[datatype]).tobytes()
    doc = {"inputs": [tensor(x, datatype, parameters={"binary_data_size": len(data)})], **fields}
    return with_binary(doc, data)


def parse(r: Response) -> tuple[dict[str, Any], dict[str, np.ndarray], set[str]]:
    """The response document, its outputs as arrays, and the names sent as binary data."""
    assert r.status_code == 200, r.text
    length = r.headers.get(HEADER)
    if length is None:
        assert r.headers["content-type"] == "application/json"
        doc, blob = r.json(), b""
    else:
        assert r.headers["content-type"] == "application/octet-stream"
        doc, blob = json.loads(r.content[: int(length)]), r.content[int(length) :]
    arrays, binary, offset = {}, set(), 0
    for out in doc["outputs"]:
        dtype = NP_TYPES[out["datatype"]]
        if "data" in out:
            arr = np.array(out["data"], dtype=dtype)
        else:
            size = out["parameters"]["binary_data_size"]
            arr = np.frombuffer(blob[offset : offset + size], dtype=dtype)
            offset += size
            binary.add(out["name"])
        arrays[out["name"]] = arr.reshape(out["shape"])
    assert offset == len(blob), "binary data left over after the outputs"
    return doc, arrays, binary


def v1_results(client: TestClient, x: np.ndarray, **options: Any) -> list[dict[str, Any]]:
    r = client.post(
        "/v1/detect", json={"signals": x.astype(np.float64).tolist(), "return_scores": True, **options}
    )
    assert r.status_code == 200, r.text
    results: list[dict[str, Any]] = r.json()["results"]
    return results


def assert_same_as_v1(out: dict[str, np.ndarray], v1: list[dict[str, Any]]) -> None:
    np.testing.assert_allclose(out["probability"], [res["probability"] for res in v1], rtol=0, atol=1e-6)
    assert out["detected"].tolist() == [res["detected"] for res in v1]
    peaks = [(i, p["index"]) for i, res in enumerate(v1) for p in res["peaks"]]
    assert list(zip(out["peak_signal"].tolist(), out["peak_index"].tolist(), strict=True)) == peaks
    probs = [p["probability"] for res in v1 for p in res["peaks"]]
    np.testing.assert_allclose(out["peak_probability"], probs, rtol=0, atol=1e-6)
    if "scores" in out:
        np.testing.assert_allclose(out["scores"], [res["scores"] for res in v1], rtol=0, atol=1e-6)


# Server and model metadata, health


def test_server_metadata_and_health(client: TestClient) -> None:
    meta = client.get("/v2").json()
    assert meta == {"name": "shape-detector", "version": "0.1.0", "extensions": ["binary_tensor_data"]}
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200


def test_model_metadata(client: TestClient) -> None:
    meta = client.get("/v2/models/bump").json()
    assert meta["name"] == "bump" and meta["versions"] == ["0.0.1"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "signal", "datatype": "FP32", "shape": [-1, -1]}]
    assert {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]} == {
        "probability": ("FP32", [-1]),
        "detected": ("BOOL", [-1]),
        "peak_signal": ("INT64", [-1]),
        "peak_index": ("INT64", [-1]),
        "peak_probability": ("FP32", [-1]),
        "scores": ("FP32", [-1, -1]),
    }
    assert client.get("/v2/models/bump/versions/0.0.1").json() == meta
    assert client.get("/v2/models/other").json()["name"] == "other"


def test_model_ready(client: TestClient) -> None:
    for path in ("/v2/models/bump/ready", "/v2/models/bump/versions/0.0.1/ready"):
        r = client.get(path)
        assert r.status_code == 200 and r.json() == {"name": "bump", "ready": True}


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("GET", "/v2/models/nope", 404, "no model named 'nope'; available models: bump, other"),
        ("GET", "/v2/models/nope/ready", 404, "no model named 'nope'"),
        ("POST", "/v2/models/nope/infer", 404, "no model named 'nope'"),
        ("GET", "/v2/models/bump/versions/2", 404, "has no version '2'; it serves version '0.0.1'"),
        ("GET", "/v2/models/bump/versions/2/ready", 404, "has no version '2'"),
        ("POST", "/v2/models/bump/versions/2/infer", 404, "has no version '2'"),
    ],
)
def test_unknown_model_or_version_is_404(
    client: TestClient, method: str, path: str, status: int, message: str
) -> None:
    r = client.request(method, path, json=json_request(signals(1)))
    assert r.status_code == status and message in r.json()["error"], r.text


def test_a_version_not_served_is_404_before_the_bodys_refusals(client: TestClient) -> None:
    """A request to a version the model does not serve gets that 404 whatever its body: told
    first to shrink or uncompress its body, the client would only meet the 404 after."""
    path = "/v2/models/bump/versions/2/infer"
    for headers in (
        {"content-length": str(4_000_001)},  # over MAX_BODY_BYTES (413)
        {"content-encoding": "gzip"},  # refused coding (400)
        {"content-length": "ten"},  # no number (400)
    ):
        r = client.post(path, content=b"{}", headers=headers)
        assert r.status_code == 404 and "has no version '2'" in r.json()["error"], (headers, r.text)
    # The version served takes the same headers to their own refusals.
    r = client.post(
        "/v2/models/bump/versions/0.0.1/infer", content=b"{}", headers={"content-encoding": "gzip"}
    )
    assert r.status_code == 400 and "Content-Encoding" in r.json()["error"], r.text


# Inference: JSON


def test_json_infer_equals_v1(client: TestClient) -> None:
    x = signals()
    params = {"threshold": 0.05, "min_distance": 3}
    r = client.post(
        INFER,
        json=json_request(
            x,
            id="req-42",
            parameters=params,
            outputs=[{"name": n} for n in ["scores", *DEFAULT]],
        ),
    )
    doc, out, binary = parse(r)
    assert doc["id"] == "req-42" and not binary
    assert (doc["model_name"], doc["model_version"]) == ("bump", "0.0.1")
    assert doc["parameters"] == params
    assert [o["name"] for o in doc["outputs"]] == ["scores", *DEFAULT], "outputs in the requested order"
    assert out["scores"].shape == x.shape and out["probability"].shape == (3,)
    assert len(out["peak_index"]) > 0, "the test needs some peaks to compare"
    assert_same_as_v1(out, v1_results(client, x, **params))


def test_defaults_echo_and_output_selection(client: TestClient) -> None:
    x = signals(2, 300, seed=1)
    doc, out, _ = parse(client.post(INFER, json=json_request(x)))
    assert "id" not in doc
    assert list(out) == DEFAULT, "scores only when asked for"
    assert doc["parameters"] == {"threshold": 0.5, "min_distance": 10}, "the card's defaults"
    assert_same_as_v1(out, v1_results(client, x))
    doc, out, _ = parse(client.post(INFER, json=json_request(x, outputs=[{"name": "peak_index"}])))
    assert list(out) == ["peak_index"]
    doc, out, _ = parse(client.post(INFER, json=json_request(x, outputs=[])))
    assert list(out) == DEFAULT, "an empty outputs list means the defaults"


def test_one_signal_nested_data_and_fp64(client: TestClient) -> None:
    x = signals(2, 256, seed=2)
    expected = v1_results(client, x)
    one = {"inputs": [{"name": "signal", "shape": [256], "datatype": "FP32", "data": x[0].tolist()}]}
    _, out, _ = parse(client.post(INFER, json=one))
    assert out["probability"].shape == (1,)
    assert_same_as_v1(out, expected[:1])
    nested = {"inputs": [tensor(x, data=x.tolist())]}
    _, out, _ = parse(client.post(INFER, json=nested))
    assert_same_as_v1(out, expected)
    fp64 = {"inputs": [tensor(x, "FP64", data=x.astype(np.float64).ravel().tolist())]}
    _, out, _ = parse(client.post(INFER, json=fp64))
    assert_same_as_v1(out, expected)


def test_model_name_and_version_in_the_body_may_match_the_url(client: TestClient) -> None:
    x = signals(1)
    r = client.post(INFER, json=json_request(x, model_name="bump", model_version="0.0.1"))
    assert r.status_code == 200
    assert client.post("/v2/models/bump/versions/0.0.1/infer", json=json_request(x)).status_code == 200


# Inference: the binary tensor data extension


def test_binary_input_and_outputs(client: TestClient) -> None:
    x = signals(3, 500, seed=3)
    expected = v1_results(client, x, threshold=0.05, min_distance=3)
    params = {"threshold": 0.05, "min_distance": 3}
    body, headers = binary_request(
        x,
        parameters={**params, "binary_data_output": True},
        outputs=[{"name": n} for n in [*DEFAULT, "scores"]],
    )
    r = client.post(INFER, content=body, headers=headers)
    doc, out, binary = parse(r)
    assert binary == {*DEFAULT, "scores"}
    assert doc["outputs"][1]["parameters"]["binary_data_size"] == 3, "BOOL: one byte per element"
    assert doc["outputs"][-1]["parameters"]["binary_data_size"] == x.size * 4
    assert_same_as_v1(out, expected)
    # Per output: binary_data overrides binary_data_output either way.
    outputs = [
        {"name": "probability", "parameters": {"binary_data": False}},
        {"name": "detected"},
        {"name": "peak_index", "parameters": {"binary_data": True}},
    ]
    body2, headers2 = binary_request(x, parameters={"binary_data_output": True}, outputs=outputs)
    _, _, binary = parse(client.post(INFER, content=body2, headers=headers2))
    assert binary == {"detected", "peak_index"}
    _, _, binary = parse(client.post(INFER, json=json_request(x, outputs=outputs)))
    assert binary == {"peak_index"}, "JSON input, one binary output"
    # No outputs listed, binary_data_output: every default output as binary data.
    _, out, binary = parse(client.post(INFER, json=json_request(x, parameters={"binary_data_output": True})))
    assert binary == set(DEFAULT)


def test_binary_fp64_and_large_body(client: TestClient) -> None:
    x = signals(2, 20_000, seed=4)  # 160 kB of FP32: decoded in a worker thread, windowed (1024)
    expected = v1_results(client, x)
    for datatype in ("FP32", "FP64"):
        body, headers = binary_request(x, datatype, outputs=[{"name": n} for n in [*DEFAULT, "scores"]])
        _, out, _ = parse(client.post(INFER, content=body, headers=headers))
        assert_same_as_v1(out, expected)


def test_binary_json_header_of_odd_length(client: TestClient) -> None:
    """The data after the JSON need not be aligned."""
    x = signals(1, 300, seed=5)
    for pad in range(4):
        data = x.tobytes()
        doc = {"id": "x" * pad, "inputs": [tensor(x, parameters={"binary_data_size": len(data)})]}
        body, headers = with_binary(doc, data)
        _, out, _ = parse(client.post(INFER, content=body, headers=headers))
        assert_same_as_v1(out, v1_results(client, x))


def test_null_data_or_binary_data_size_is_none(client: TestClient) -> None:
    """Clients that write every field of their structures send "data": null with binary data,
    as a null 'parameters' or 'outputs' is none (encoding/json without omitempty, Jackson)."""
    x = signals(2, 300, seed=6)
    data = x.tobytes()
    binary = tensor(x, data=None, parameters={"binary_data_size": len(data)})
    body, headers = with_binary({"inputs": [binary], "outputs": None, "parameters": None}, data)
    _, out, _ = parse(client.post(INFER, content=body, headers=headers))
    assert_same_as_v1(out, v1_results(client, x))
    in_json = tensor(x, data=x.ravel().tolist(), parameters={"binary_data_size": None})
    _, out, _ = parse(client.post(INFER, json={"inputs": [in_json]}))
    assert_same_as_v1(out, v1_results(client, x))
    r = client.post(INFER, json={"inputs": [tensor(x, data=None)]})
    assert r.status_code == 400 and r.json()["error"].startswith("input 'signal' has no data: give 'data'")


def test_raw_binary_request(client: TestClient) -> None:
    x = signals(1, 700, seed=6)
    r = client.post(INFER, content=x[0].tobytes(), headers={HEADER: "0"})
    doc, out, binary = parse(r)
    assert binary == set(DEFAULT), "a raw request gets every default output as binary data"
    assert out["probability"].shape == (1,)
    assert doc["parameters"] == {"threshold": 0.5, "min_distance": 10}
    assert_same_as_v1(out, v1_results(client, x))
    r = client.post(
        "/v2/models/other/versions/0.0.1/infer",
        content=x[0].tobytes(),
        headers={HEADER: "0", "Content-Type": "application/octet-stream"},
    )
    assert parse(r)[0]["model_name"] == "other"


# Errors: each a 4xx with {"error": ...}


def raw(body: bytes, header_length: str | None = None, **headers: str) -> tuple[bytes, dict[str, str]]:
    return body, ({HEADER: header_length} if header_length is not None else {}) | headers


def js(doc: Any) -> tuple[bytes, dict[str, str]]:
    return json.dumps(doc).encode(), {}


X = signals(2, 100, seed=7)
OK_INPUT = tensor(X, data=X.ravel().tolist())
X_BYTES = X.tobytes()
NAN = X.copy()
NAN[1, 7] = np.nan
INF = X.copy()
INF[0, 3] = np.inf


def data_input(shape: Any, data: Any, datatype: Any = "FP32") -> dict[str, Any]:
    return {"inputs": [{"name": "signal", "shape": shape, "datatype": datatype, "data": data}]}


def bin_input(shape: Any, size: Any, data: bytes, datatype: Any = "FP32") -> tuple[bytes, dict[str, str]]:
    doc = {
        "inputs": [
            {"name": "signal", "shape": shape, "datatype": datatype, "parameters": {"binary_data_size": size}}
        ]
    }
    return with_binary(doc, data)


# A datatype that is not a JSON string: refused like any other datatype, on the JSON and the
# binary path (it was once looked up in a dict, and a list or an object answered 500).
NOT_A_STRING: dict[str, Any] = {
    "list": ["FP32"],
    "object": {"t": "FP32"},
    "number": 32,
    "null": None,
    "bool": True,
}


def datatype_refused(value: Any) -> str:
    return f"input 'signal' has datatype {value!r}; send FP32 (the model's type) or FP64"


ERROR_CASES: dict[str, tuple[tuple[bytes, dict[str, str | bytes]], int, str]] = {
    # Malformed JSON or headers
    "not json": (raw(b'{"inputs": ['), 400, "not valid JSON"),
    "nan literal": (raw(b'{"inputs": [{"name": "signal", "data": [NaN]}]}'), 400, "not valid JSON"),
    "not an object": (js([1, 2]), 400, "must be a JSON object"),
    "empty body": (raw(b""), 400, "not valid JSON"),
    "header length not a number": (raw(b"{}", "ten"), 400, "'ten' is not a number"),
    "header length not ascii digits": ((b"{}", {HEADER: b"\xb2"}), 400, "is not a number"),  # '²'.isdigit()
    "header length beyond body": (raw(b"{}", "50"), 400, "the body has only 2 bytes"),
    "json cut by header length": (
        raw(json.dumps({"inputs": [OK_INPUT]}).encode(), "20"),
        400,
        "not valid JSON",
    ),
    "compressed": (
        raw(json.dumps({"inputs": [OK_INPUT]}).encode(), **{"Content-Encoding": "gzip"}),
        400,
        "not supported",
    ),
    # Request structure
    "unknown field": (js({"inputs": [OK_INPUT], "input": []}), 400, "unknown field(s) ['input']"),
    "no inputs": (js({"outputs": []}), 400, "'inputs' must be a list holding one tensor"),
    "empty inputs": (js({"inputs": []}), 400, "'inputs' must be a list"),
    "input not an object": (js({"inputs": [3]}), 400, "inputs[0] must be a JSON object"),
    "unknown input": (js({"inputs": [{**OK_INPUT, "name": "x"}]}), 400, "unknown input 'x'"),
    "two inputs": (js({"inputs": [OK_INPUT, OK_INPUT]}), 400, "given 2 times"),
    "unknown input field": (js({"inputs": [{**OK_INPUT, "dims": [1]}]}), 400, "unknown field(s) ['dims']"),
    "id not a string": (js({"id": 7, "inputs": [OK_INPUT]}), 400, "'id' must be a string"),
    "other model in body": (
        js({"model_name": "other", "inputs": [OK_INPUT]}),
        400,
        "'model_name' is 'other'",
    ),
    "other version in body": (
        js({"model_version": "9", "inputs": [OK_INPUT]}),
        400,
        "'model_version' is '9'",
    ),
    # Datatype and shape
    "int datatype": (
        js(data_input([2, 100], X.ravel().tolist(), "INT32")),
        400,
        "datatype 'INT32'; send FP32",
    ),
    "no datatype": (
        js({"inputs": [{"name": "signal", "shape": [2, 100], "data": [0.0] * 200}]}),
        400,
        "datatype None",
    ),
    **{
        f"{kind} datatype": (
            js(data_input([2, 100], X.ravel().tolist(), value)),
            400,
            datatype_refused(value),
        )
        for kind, value in NOT_A_STRING.items()
    },
    **{
        f"{kind} datatype, binary": (bin_input([2, 100], 800, X_BYTES, value), 400, datatype_refused(value))
        for kind, value in NOT_A_STRING.items()
    },
    "3-d shape": (js(data_input([1, 2, 100], X.ravel().tolist())), 400, "give [n, length]"),
    "negative shape": (js(data_input([-1, 100], X.ravel().tolist())), 400, "give [n, length]"),
    "bool in shape": (js(data_input([True, 100], X.ravel().tolist())), 400, "give [n, length]"),
    "shape not a list": (js(data_input("2x100", X.ravel().tolist())), 400, "give [n, length]"),
    "no rows": (js(data_input([0, 100], [])), 400, "no signals"),
    "too short": (js(data_input([1, 8], [0.0] * 8)), 400, "this model needs at least 16"),
    # One signal's shape given the wrong way round: said, with the shape to give, and whether
    # that shape is refused too (12 samples are too few, 100001 too many).
    "transposed shape": (
        js(data_input([12, 1], [0.0] * 12)),
        400,
        "signal 0 has 1 samples; this model needs at least 16; all 12 signals have one sample "
        "each: shape [12, 1] looks transposed: give [1, 12] (or [12]) for one signal of 12 samples; "
        "sent so, the signal's 12 samples are still too few: this model needs at least 16",
    ),
    "transposed shape, too long as one signal": (
        js(data_input([100_001, 1], [0.0])),  # refused on its shape, before its data is read
        400,
        "100001 signals in one request; the limit is 16; all 100001 signals have one sample each: "
        "shape [100001, 1] looks transposed: give [1, 100001] (or [100001]) for one signal of 100001 "
        "samples; sent so, the signal's 100001 samples are still too many: the limit is 100000, cut "
        "it into shorter signals",
    ),
    # Data against the shape
    "no data": (js({"inputs": [tensor(X)]}), 400, "has no data"),
    "data not a list": (js(data_input([2, 100], "1,2,3")), 400, "must be a list of numbers"),
    "data too short": (
        js(data_input([2, 100], X.ravel().tolist()[:-1])),
        400,
        "(200 values) but its data holds 199",
    ),
    "data too long": (
        js(data_input([100], X.ravel().tolist())),
        400,
        "has shape [100] (100 values) but its data holds 200",  # the shape as declared
    ),
    "nested rows wrong": (
        js(data_input([2, 100], [X[0].tolist(), X[1].tolist()[:50]])),
        400,
        "not 2 rows of 100",
    ),
    "string in data": (
        js(data_input([1, 16], [0.0] * 5 + ["a"] + [0.0] * 10)),
        400,
        "non-numeric value ('a') at index 5",
    ),
    "bool in data": (
        js(data_input([1, 16], [0.0] * 3 + [True] + [0.0] * 12)),
        400,
        "non-numeric value (True) at index 3",
    ),
    "null in data": (js(data_input([1, 16], [None] * 16)), 400, "non-numeric value (None)"),
    "beyond fp32": (js(data_input([1, 16], [0.0] * 15 + [1e39], "FP64")), 400, "outside the float32 range"),
    # Limits (16 signals, 100 000 samples per signal, 200 000 per request), before any allocation
    "too many signals": (js(data_input([17, 100], [])), 400, "17 signals in one request; the limit is 16"),
    "absurd row count": (
        js(data_input([10**15, 100], [])),
        400,
        "1000000000000000 signals in one request; the limit is 16",
    ),
    "signal too long": (bin_input([1, 100_001], 400_004, b""), 400, "the limit is 100000"),
    "too many samples": (
        js(data_input([16, 20_000], [])),
        400,
        "320000 samples in one request; the limit is 200000",
    ),
    # Binary tensor data
    "binary size vs shape": (
        bin_input([2, 100], 799, X_BYTES),
        400,
        "binary_data_size 799 but shape [2, 100] of FP32 needs 800",
    ),
    "binary size vs fp64": (bin_input([2, 100], 800, X_BYTES, "FP64"), 400, "needs 1600 bytes (8 per value)"),
    "binary data short": (
        bin_input([2, 100], 800, X_BYTES[:-4]),
        400,
        "the body has 796 bytes of binary data",
    ),
    "binary data long": (bin_input([2, 100], 800, X_BYTES + b"\0"), 400, "801 bytes of binary data"),
    "binary size not int": (
        bin_input([2, 100], "800", X_BYTES),
        400,
        "binary_data_size must be a byte count",
    ),
    "binary and data": (
        with_binary({"inputs": [{**OK_INPUT, "parameters": {"binary_data_size": 800}}]}, X_BYTES),
        400,
        "both 'data' and binary_data_size",
    ),
    "bytes without binary_data_size": (
        with_binary({"inputs": [OK_INPUT]}, X_BYTES),
        400,
        "no input declares binary_data_size",
    ),
    "binary nan": (
        bin_input([2, 100], 800, NAN.tobytes()),
        400,
        "signal 1 has a value (nan) at index 7 that is not finite",
    ),
    "binary inf": (
        bin_input([2, 100], 800, INF.tobytes()),
        400,
        "signal 0 has a value (inf) at index 3 that is not finite",
    ),
    "unknown input parameter": (
        js({"inputs": [{**OK_INPUT, "parameters": {"shared_memory_region": "r"}}]}),
        400,
        "shared memory is not supported",
    ),
    # Raw binary
    "raw empty": (raw(b"", "0"), 400, "empty body"),
    "raw not whole fp32": (raw(X_BYTES[:-1], "0"), 400, "must hold whole FP32 values"),
    "raw too short": (raw(X[0, :8].tobytes(), "0"), 400, "needs at least 16"),
    "raw nan": (raw(NAN[1].tobytes(), "0"), 400, "value (nan) at index 7 that is not finite"),
    # Outputs and parameters
    "unknown output": (
        js({"inputs": [OK_INPUT], "outputs": [{"name": "peaks"}]}),
        400,
        "unknown output 'peaks'",
    ),
    "output twice": (
        js({"inputs": [OK_INPUT], "outputs": [{"name": "scores"}, {"name": "scores"}]}),
        400,
        "requested twice",
    ),
    "outputs not a list": (js({"inputs": [OK_INPUT], "outputs": "scores"}), 400, "'outputs' must be a list"),
    "unknown output parameter": (
        js({"inputs": [OK_INPUT], "outputs": [{"name": "scores", "parameters": {"classification": 3}}]}),
        400,
        "unknown parameter(s) ['classification'] for output 'scores'",
    ),
    "binary_data not bool": (
        js({"inputs": [OK_INPUT], "outputs": [{"name": "scores", "parameters": {"binary_data": 1}}]}),
        400,
        "'binary_data' must be true or false",
    ),
    "threshold too high": (
        js({"inputs": [OK_INPUT], "parameters": {"threshold": 1.5}}),
        400,
        "threshold must be a number strictly between 0 and 1",
    ),
    "threshold a string": (
        js({"inputs": [OK_INPUT], "parameters": {"threshold": "0.5"}}),
        400,
        "threshold must be a number",
    ),
    "min_distance zero": (
        js({"inputs": [OK_INPUT], "parameters": {"min_distance": 0}}),
        400,
        "min_distance must be an integer from 1 to",
    ),
    "min_distance past 64 bits": (
        js({"inputs": [OK_INPUT], "parameters": {"min_distance": 2**63}}),
        400,
        "min_distance must be an integer from 1 to 9223372036854775807, got 9223372036854775808",
    ),
    "min_distance float": (
        js({"inputs": [OK_INPUT], "parameters": {"min_distance": 2.5}}),
        400,
        "min_distance must be an integer",
    ),
    "unknown parameter": (
        js({"inputs": [OK_INPUT], "parameters": {"treshold": 0.5}}),
        400,
        "unknown request parameter(s) ['treshold']",
    ),
    "parameters not an object": (
        js({"inputs": [OK_INPUT], "parameters": [1]}),
        400,
        "'parameters' must be a JSON object",
    ),
    "binary_data_output not bool": (
        js({"inputs": [OK_INPUT], "parameters": {"binary_data_output": "yes"}}),
        400,
        "'binary_data_output' must be true or false",
    ),
    # Size of the body (4 MB in these tests)
    "body too large": (
        raw(b" " * 4_000_001),
        413,
        "body larger than 4000000 bytes (SHAPE_DETECTOR_MAX_BODY_BYTES): send fewer signals per request, or binary tensor data",
    ),
}


@pytest.mark.parametrize(("request_", "status", "message"), ERROR_CASES.values(), ids=ERROR_CASES.keys())
def test_errors(
    client: TestClient, request_: tuple[bytes, dict[str, str | bytes]], status: int, message: str
) -> None:
    body, headers = request_
    r = client.post(INFER, content=body, headers=headers)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert list(r.json()) == ["error"] and message in r.json()["error"], r.json()


# The float32 range: one rule on every path, a value is taken iff its float32 cast is finite.
FLOAT32_EDGES = [
    3.4028235e38,  # float32's maximum as numpy prints it: rounds down to it
    -3.4028235e38,
    float(np.finfo(np.float32).max),
    3.4028235677973362e38,  # the largest float64 that rounds to a finite float32
    3.4028235677973366e38,  # half a step above float32's maximum: the tie rounds to inf
    -3.4028235677973366e38,
    3.5e38,
    -1e39,
]


@pytest.mark.parametrize("value", FLOAT32_EDGES)
def test_float32_range_is_the_same_on_every_path(client: TestClient, value: float) -> None:
    with np.errstate(over="ignore"):
        taken = bool(np.isfinite(np.float32(value)))
    x = np.zeros((2, 100))
    x[1, 20] = value
    npy = io.BytesIO()
    np.save(npy, x)  # float64
    v1 = {
        "JSON": client.post("/v1/detect", json={"signals": x.tolist()}),
        ".npy float64": client.post(
            "/v1/detect", content=npy.getvalue(), headers={"Content-Type": "application/x-npy"}
        ),
    }
    v2 = {
        f"JSON {datatype}": client.post(INFER, json={"inputs": [tensor(x, datatype, data=data)]})
        for datatype in ("FP64", "FP32")
        for data in (x.ravel().tolist(), x.tolist())  # flat, nested
    }
    body, headers = binary_request(x, "FP64")
    v2["binary FP64"] = client.post(INFER, content=body, headers=headers)
    message = (
        f"signal 1 has a value ({value!r}) at index 20 that is outside the float32 range "
        "(±3.4028235e+38; in float32 it would be infinite): rescale the signal"
    )
    for path, r in {**v1, **v2}.items():
        if taken:
            assert r.status_code == 200, (path, r.text)
        else:
            assert r.status_code == (422 if path in v1 else 400), (path, r.text)
            assert message in r.text, (path, r.text)


@pytest.mark.parametrize(
    "query", ["threshold=0.99", "min_distance=3&threshold=0.5", "x", "threshold=0.5&threshold=0.9"]
)
def test_query_parameters_are_refused(client: TestClient, query: str) -> None:
    """The protocol's options go in the request's "parameters"; one in the query would be
    ignored silently."""
    x = signals(1, 500)
    for path in (INFER, "/v2/models/bump/versions/0.0.1/infer"):
        for body, headers in (raw(x[0].tobytes(), "0"), binary_request(x), js(json_request(x))):
            r = client.post(f"{path}?{query}", content=body, headers=headers)
            assert r.status_code == 400 and list(r.json()) == ["error"], r.text
            message = r.json()["error"]
            assert message.startswith("this route reads no query parameters (the query gives "), message
            assert 'give threshold and min_distance in the request\'s "parameters"' in message


def test_scheduling_hints_are_accepted(client: TestClient) -> None:
    r = client.post(INFER, json={"inputs": [OK_INPUT], "parameters": {"priority": 1, "timeout": 1000}})
    assert r.status_code == 200, r.text


def test_v1_errors_keep_their_format(client: TestClient) -> None:
    r = client.post("/v1/detect", content=b"{", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "detail" in r.json()
    r = client.post("/v1/detect", json={"signals": [[0.0] * 8]})
    assert r.status_code == 422 and r.json()["detail"][0]["msg"]


def test_full_queue_is_503_with_retry_after(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(self: Batcher, *args: Any) -> Any:
        raise Overloaded(f"{self.max_queue} requests are waiting for this model; retry shortly")

    monkeypatch.setattr(Batcher, "submit", full)
    monkeypatch.setattr(Batcher, "run_now", lambda self, *args: (False, None))  # a queue waits: not at once
    r = client.post(INFER, json={"inputs": [OK_INPUT]})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert "retry shortly" in r.json()["error"]


def test_an_unexpected_error_is_500_in_the_protocol_format(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(oip, "encode_infer_many", broken)
    r = client.post(INFER, json={"inputs": [OK_INPUT]})
    assert r.status_code == 500 and r.json() == {"error": "internal error; the request id is in X-Request-ID"}


def test_not_ready_is_503(models_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(models_dir, root)
    with (root / "other" / "model.onnx").open("ab") as fh:
        fh.write(b"tampered")
    with TestClient(create_app(load_settings(MODEL_DIR=root))) as c:
        for _ in range(200):
            if "loading" not in c.get("/readyz").json()["models"].values():
                break
        r = c.get("/v2/health/ready")
        assert r.status_code == 503 and "other: failed" in r.json()["error"] and r.headers["retry-after"]
        assert c.get("/v2/health/live").status_code == 200
        for r in (
            c.get("/v2/models/other/ready"),
            c.get("/v2/models/other"),
            c.post("/v2/models/other/infer", json={"inputs": [OK_INPUT]}),
        ):
            assert r.status_code == 503 and "sha256" in r.json()["error"] and r.headers["retry-after"] == "5"
        assert c.get("/v2/models/bump/ready").status_code == 200
        assert c.post(INFER, json={"inputs": [OK_INPUT]}).status_code == 200


def test_openapi_builds_and_documents_v2(client: TestClient) -> None:
    r = client.get("/openapi.json")
    assert r.status_code == 200
    paths, schemas = r.json()["paths"], r.json()["components"]["schemas"]
    for path in (
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/versions/{version}",
        "/v2/models/{name}/versions/{version}/ready",
    ):
        assert "get" in paths[path], path
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
        op = paths[path]["post"]
        content = op["requestBody"]["content"]
        assert content["application/json"]["examples"] and "application/octet-stream" in content
        assert "$defs" not in json.dumps(content), "request schema refs must resolve"
        assert {"200", "400", "404", "413", "503"} <= set(op["responses"])
        assert any(p["name"] == HEADER for p in op["parameters"])
    # /v2 answers a bad request 400 {"error": ...}: never FastAPI's 422 {"detail": [...]}.
    for path, item in paths.items():
        if path.startswith("/v2"):
            for method, op in item.items():
                assert "422" not in op["responses"], f"{method.upper()} {path}"
                for status, response in op["responses"].items():
                    if status.startswith(("4", "5")):
                        schema = response["content"]["application/json"]["schema"]
                        schema = schemas[schema["$ref"].rsplit("/", 1)[1]] if "$ref" in schema else schema
                        assert list(schema["properties"]) == ["error"], (method, path, status)


def test_openapi_example_is_a_valid_request(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/v2/models/{name}/infer"]["post"]
    example = op["requestBody"]["content"]["application/json"]["examples"]["json"]["value"]
    doc, out, _ = parse(client.post(INFER, json=example))
    assert doc["id"] == "req-1" and list(out) == ["probability", "peak_index", "scores"]


def test_openapi_documents_the_json_answer_and_no_422(client: TestClient) -> None:
    """The document's example gets a JSON answer of the documented schema; a binary one is
    documented too; and no /v2 operation claims FastAPI's 422, which /v2 never sends (a request
    it cannot validate is a 400 with {"error": ...}, as any other bad request)."""
    spec = client.get("/openapi.json").json()
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
        op = spec["paths"][path]["post"]
        content = op["responses"]["200"]["content"]
        assert set(content) == {"application/json", "application/octet-stream"}
        answer = Draft202012Validator(
            {**content["application/json"]["schema"], "components": spec["components"]}
        )
        assert answer.schema["$ref"] == "#/components/schemas/InferResponse"
        example = op["requestBody"]["content"]["application/json"]["examples"]["json"]["value"]
        version = client.get("/v2/models/bump").json()["versions"][0]
        r = client.post(path.replace("{name}", "bump").replace("{version}", version), json=example)
        assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text
        answer.validate(r.json())
    for path, item in spec["paths"].items():
        if path == "/v2" or path.startswith("/v2/"):
            for method, op in item.items():
                assert "422" not in op["responses"], (method, path)
    assert client.post(INFER, json={"inputs": "not a list"}).status_code == 400


def test_oip_has_no_web_framework_imports() -> None:
    source = Path(oip.__file__).read_text()
    assert "fastapi" not in source and "starlette" not in source
