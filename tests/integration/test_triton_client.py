"""/v2 driven by NVIDIA's Triton client (tritonclient[http]) against a real server process
serving the shipped model: the Open Inference Protocol as a standard client speaks it.

Results must equal /v1's for the same signals: probabilities within 1e-6, identical peaks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.api.test_primer_figure import primer_signal
from tests.integration.conftest import Server

MODEL = "bump"
DEFAULT = ["probability", "detected", "peak_signal", "peak_index", "peak_probability"]


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(url=server.url.removeprefix("http://"), network_timeout=60.0)
    yield c
    c.close()


def primer_signals() -> np.ndarray:
    """Three of the primer's signals (two events and a spike each), as float32."""
    return np.stack([primer_signal(seed) for seed in (1, 2, 3)]).astype(np.float32)


def v1_results(server: Server, x: np.ndarray, **options: Any) -> list[dict[str, Any]]:
    body = {"signals": x.astype(np.float64).tolist(), "return_scores": True, **options}
    r = httpx.post(f"{server.url}/v1/models/{MODEL}/detect", json=body, timeout=60)
    assert r.status_code == 200, r.text
    results: list[dict[str, Any]] = r.json()["results"]
    return results


def signal_input(x: np.ndarray, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("signal", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def assert_same_as_v1(result: triton.InferResult, v1: list[dict[str, Any]], names: list[str]) -> None:
    out = {name: result.as_numpy(name) for name in names}
    assert all(v is not None for v in out.values()), f"missing outputs: {out}"
    np.testing.assert_allclose(out["probability"], [r["probability"] for r in v1], rtol=0, atol=1e-6)
    assert out["detected"].dtype == np.bool_
    assert out["detected"].tolist() == [r["detected"] for r in v1]
    peaks = [(i, p["index"]) for i, r in enumerate(v1) for p in r["peaks"]]
    assert list(zip(out["peak_signal"].tolist(), out["peak_index"].tolist(), strict=True)) == peaks
    np.testing.assert_allclose(
        out["peak_probability"], [p["probability"] for r in v1 for p in r["peaks"]], rtol=0, atol=1e-6
    )
    if "scores" in out:
        np.testing.assert_allclose(out["scores"], [r["scores"] for r in v1], rtol=0, atol=1e-6)


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert not client.is_model_ready("nope")
    server_meta = client.get_server_metadata()
    assert "binary_tensor_data" in server_meta["extensions"]
    meta = client.get_model_metadata(MODEL)
    assert meta["name"] == MODEL and meta["platform"] == "onnxruntime_onnx"
    (version,) = meta["versions"]
    assert client.is_model_ready(MODEL, model_version=version)
    assert not client.is_model_ready(MODEL, model_version=version + ".nope")
    assert client.get_model_metadata(MODEL, model_version=version) == meta
    assert meta["inputs"] == [{"name": "signal", "datatype": "FP32", "shape": [-1, -1]}]
    assert [o["name"] for o in meta["outputs"]] == [*DEFAULT, "scores"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_equals_v1(client: triton.InferenceServerClient, server: Server, binary: bool) -> None:
    x = primer_signals()
    expected = v1_results(server, x)
    assert sum(len(r["peaks"]) for r in expected) >= 6, "the primer's signals have two events each"
    # No outputs named: the client asks for every default output as binary data.
    result = client.infer(MODEL, [signal_input(x, binary)], request_id=f"it-{binary}")
    assert result.get_response()["id"] == f"it-{binary}"
    assert result.as_numpy("scores") is None, "scores only when asked for"
    assert_same_as_v1(result, expected, DEFAULT)
    # Named outputs, scores included, each as binary data or JSON.
    names = ["scores", "probability", "detected", "peak_signal", "peak_index", "peak_probability"]
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in names]
    result = client.infer(MODEL, [signal_input(x, binary)], outputs=outputs)
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == names
    assert all(("parameters" in o) == binary for o in response["outputs"])
    assert result.as_numpy("scores").shape == x.shape
    assert_same_as_v1(result, expected, names)


def test_selected_outputs_and_parameters(client: triton.InferenceServerClient, server: Server) -> None:
    x = primer_signals()
    options = {"threshold": 0.2, "min_distance": 5}
    expected = v1_results(server, x, **options)
    outputs = [
        triton.InferRequestedOutput("peak_index", binary_data=True),
        triton.InferRequestedOutput("peak_signal", binary_data=False),
    ]
    result = client.infer(MODEL, [signal_input(x, True)], outputs=outputs, parameters=options)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["peak_index", "peak_signal"]
    assert result.get_response()["parameters"] == options
    assert result.as_numpy("probability") is None
    peaks = [(i, p["index"]) for i, r in enumerate(expected) for p in r["peaks"]]
    got = zip(result.as_numpy("peak_signal").tolist(), result.as_numpy("peak_index").tolist(), strict=True)
    assert list(got) == peaks


def test_one_long_signal_with_a_version(client: triton.InferenceServerClient, server: Server) -> None:
    """Longer than the server's window (65536): windowed, stitched, and still equal to /v1."""
    x = np.tile(primer_signal(4), 250)[None, :70_000].astype(np.float32)
    version = client.get_model_metadata(MODEL)["versions"][0]
    result = client.infer(MODEL, [signal_input(x, True)], model_version=version)
    assert_same_as_v1(result, v1_results(server, x), DEFAULT)


def test_errors_reach_the_client(client: triton.InferenceServerClient) -> None:
    x = primer_signals()
    x[1, 17] = np.nan
    with pytest.raises(InferenceServerException) as err:
        client.infer(MODEL, [signal_input(x, True)])
    assert err.value.status() == "400"
    assert "signal 1 has a value (nan) at index 17 that is not finite" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        client.infer("nope", [signal_input(primer_signals(), True)])
    assert err.value.status() == "404" and "no model named 'nope'" in err.value.message()
    bad = triton.InferInput("signal", [3, 300], "INT32")
    bad.set_data_from_numpy(np.zeros((3, 300), dtype=np.int32))
    with pytest.raises(InferenceServerException) as err:
        client.infer(MODEL, [bad])
    assert err.value.status() == "400" and "datatype 'INT32'" in err.value.message()
