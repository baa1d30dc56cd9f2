"""Every client mistake gets a clear 4xx; never a 5xx."""

import io

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from app.core.pipeline import media_type

NPY = {"Content-Type": "application/x-npy"}


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def npy_with_header(header: str, data: bytes = np.zeros(64, dtype=np.float32).tobytes()) -> bytes:
    """A version 1.0 .npy body with this header text (padded as np.save pads it)."""
    raw = header.encode("latin1")
    raw += b" " * (63 - (len(raw) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(raw).to_bytes(2, "little") + raw + data


EXACT_KEYS = (
    "a header has exactly the keys 'descr', 'fortran_order' and 'shape' (np.load refuses any "
    "other), as in {'descr': '<f4', 'fortran_order': False, 'shape': (64,)}: send np.save output"
)


def detail(r) -> str:  # type: ignore[no-untyped-def]
    d = r.json()["detail"]
    return d if isinstance(d, str) else " ".join(e["msg"] for e in d)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"signals": []}, "no signals"),
        ({"signals": [[]]}, "signal 0 is empty"),
        (
            {"signals": [[1.0] * 100, [1.0, "x"] + [1.0] * 100]},
            "signal 1 has a non-numeric value ('x') at index 1",
        ),
        (
            {"signals": [[1.0] * 100, [True] + [1.0] * 100]},
            "signal 1 has a non-numeric value (True) at index 0",
        ),
        ({"signals": [[1.0] * 40 + [False] + [1.0] * 40]}, "non-numeric value (False) at index 40"),
        (
            {"signals": [[2.0] * 40 + [True]], "return_scores": False},
            "non-numeric value (True) at index 40",
        ),
        ({"signals": [[1.0] * 50 + [None] + [1.0] * 50]}, "non-numeric value (None) at index 50"),
        # A number written as a string is not a number (numpy would convert it silently).
        ({"signals": [[1.0] * 30 + ["1.5"] + [1.0] * 30]}, "non-numeric value ('1.5') at index 30"),
        ({"signals": [[1.0] * 30 + [[2.0]] + [1.0] * 30]}, "non-numeric value ([2.0]) at index 30"),
        ({"signals": [[[1.0]] * 100]}, "signal 0 is a list of lists"),
        ({"signals": [[[1.0] * 64]]}, "signal 0 is a list of lists: each signal is one flat list of numbers"),
        ({"signals": [[1.0] * 10]}, "signal 0 has 10 samples; this model needs at least 16"),
        ({"signals": [[1.0] * 100_001]}, "the limit is 100000"),
        ({"signals": [[1.0] * 100] * 17}, "17 signals in one request; the limit is 16"),
        ({"signals": [[1.0] * 50_000] * 5}, "250000 samples in one request; the limit is 200000"),
        ({"signals": [[1.0] * 100], "threshold": 1.0}, "threshold must be a number strictly between 0 and 1"),
        ({"signals": [[1.0] * 100], "threshold": 0}, "threshold"),
        ({"signals": [[1.0] * 100], "threshold": "high"}, "threshold"),
        ({"signals": [[1.0] * 100], "min_distance": 0}, "min_distance must be an integer from 1 to"),
        ({"signals": [[1.0] * 100], "min_distance": 2**63}, "min_distance must be an integer from 1 to"),
        ({"signals": [[1.0] * 100], "min_distance": 2.5}, "min_distance"),
        ({"signals": [[1.0] * 100], "return_scores": "yes"}, "return_scores"),
        ({"signals": [[1.0] * 100], "extra": 1}, "unknown field"),
        ({"signal": [[1.0] * 100]}, "unknown field"),
        ({"threshold": 0.5}, "'signals' is required"),
        ({"signals": "abc"}, "'signals' must be a list"),
        ({"signals": [5]}, "signal 0 must be a list"),
        ([1, 2, 3], "body must be a JSON object"),
    ],
)
def test_json_422(client: TestClient, body: object, message: str) -> None:
    r = client.post("/v1/detect", json=body)
    assert r.status_code == 422, r.text
    assert message in detail(r)


LOOKS_TRANSPOSED = (
    "the list looks transposed (one inner list per sample, as np.array(x).reshape(-1, 1).tolist() "
    "gives): send each signal as one inner list of its samples, [[x0, x1, ...]]"
)


def test_a_signal_sent_as_a_column_is_said_to_look_transposed(client: TestClient) -> None:
    """One signal sent as np.array(x).reshape(-1, 1).tolist() gives it (a list per sample), or
    as a .npy of shape (N, 1): refused as before (422, too short or too many signals), and the
    message says it looks transposed and what to send; and, when that one signal would be
    refused too (fewer samples than the model's 16, more than MAX_SIGNAL_LENGTH's 100000), that
    it would. One signal of one sample, or rows of which one is longer, are not said to be."""
    too_short = "signal 0 has 1 samples; this model needs at least 16"
    for n, refused, also in (
        (12, too_short, "; sent so, the signal's 12 samples are still too few: this model needs at least 16"),
        (16, too_short, ""),
        (40, "40 signals in one request; the limit is 16", ""),
        (
            100_001,
            "100001 signals in one request; the limit is 16",
            "; sent so, the signal's 100001 samples are still too many: the limit is 100000, cut it "
            "into shorter signals",
        ),
    ):
        column = np.linspace(0.0, 1.0, n).reshape(-1, 1)
        r = client.post("/v1/detect", json={"signals": column.tolist()})
        assert r.status_code == 422, r.text
        assert detail(r) == f"{refused}; all {n} signals have one sample each: {LOOKS_TRANSPOSED}{also}"
        r = client.post("/v1/detect", content=npy(column.astype(np.float32)), headers=NPY)
        assert r.status_code == 422, r.text
        assert detail(r) == (
            f"{refused}; all {n} signals have one sample each: the array, shape ({n}, 1), looks "
            f"transposed: send one signal as a 1-D array (x.ravel()), several as shape (signals, samples){also}"
        )
    for body in (
        {"signals": [[0.5]]},
        {"signals": [[0.5] * 20, [0.5]]},
        {"signals": [[0.5]] * 17 + [[0.5] * 20]},
    ):
        r = client.post("/v1/detect", json=body)
        assert r.status_code == 422 and "transposed" not in r.text, r.text
    r = client.post("/v1/detect", content=npy(np.zeros((1, 1), dtype=np.float32)), headers=NPY)
    assert r.status_code == 422 and "transposed" not in r.text, r.text


@pytest.mark.parametrize("field", ["threshold", "min_distance", "return_scores"])
def test_an_option_nested_deep_is_refused_in_a_short_message(client: TestClient, field: str) -> None:
    """1000 levels of lists (within the JSON parser's 1024): too deep for repr, which the
    message once called (a 500); and a message that copies no more than a few dozen characters."""
    deep = b"[" * 1000 + b"]" * 1000
    body = b'{"signals": [[0.5, 0.25, 0.75, 0.5]], "' + field.encode() + b'": ' + deep + b"}"
    r = client.post("/v1/detect", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert f"{field} must be" in r.text and "too large to show" in r.text and len(r.content) < 600
    v2 = {"inputs": [{"name": "signal", "shape": [1, 4], "datatype": "FP32", "data": [0.5] * 4}]}
    if field != "return_scores":  # /v2 has no such parameter
        v2_body = orjson.dumps(v2 | {"parameters": {field: "DEEP"}}).replace(b'"DEEP"', deep)
        r = client.post(
            "/v2/models/bump/infer", content=v2_body, headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 400 and "too large to show" in r.json()["error"], r.text


def test_nan_and_infinity_tokens_are_refused(client: TestClient) -> None:
    for token in ("NaN", "Infinity", "-Infinity"):
        body = '{"signals": [[' + ", ".join(["1.0"] * 50 + [token] + ["1.0"] * 50) + "]]}"
        r = client.post("/v1/detect", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (token, r.text)
        assert "not valid JSON" in detail(r)


# Numbers JSON allows but float64 cannot hold: orjson and simdjson refuse to parse them.
BEYOND_FLOAT64 = {
    "1e400": "1e400",
    "-1e400": "-1e400",
    "1E+999": "1E+999",
    "400-digit integer": "9" * 400,
    "310 digits and a fraction": "-" + "1" * 310 + ".5",
}


@pytest.mark.parametrize("token", BEYOND_FLOAT64.values(), ids=BEYOND_FLOAT64.keys())
def test_a_number_beyond_float64_is_refused_as_beyond_float32(client: TestClient, token: str) -> None:
    """The mistake of 1e39's, a value the model cannot take: 422 on /v1 (400 on /v2), naming the
    number and where it is, not 400 for JSON that cannot be parsed."""
    values = ", ".join(["0.5"] * 60)
    shown = token if len(token) <= 40 else f"{token[:30]}..., {len(token)} characters"
    where = f"the number ({shown}) at line 1 column "
    v1 = {  # the number's column: 1 + the characters before it
        "signals": ('{"signals": [[' + values + ", " + token + "]]}", 14 + len(values) + 3),
        "option": ('{"threshold": ' + token + ', "signals": [[' + values + "]]}", 15),
    }
    for name, (body, column) in v1.items():
        r = client.post("/v1/detect", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 422, (name, r.text)
        assert detail(r).startswith(f"{where}{column} is beyond float64's range"), (name, detail(r))
        assert detail(r).endswith(
            "so outside float32's (±3.4028235e+38; the model computes in float32): in a signal, "
            "rescale the signal; as an option's value, give one within that option's range"
        ), name
    # /v2 has no options: the message says what each field where the number may be takes.
    data = "[" + values + ", " + token + "]"
    v2 = {
        "data": '{"inputs": [{"name": "signal", "shape": [61], "datatype": "FP64", "data": ' + data + "}]}",
        "shape": '{"inputs": [{"name": "signal", "shape": ['
        + token
        + '], "datatype": "FP64", "data": [0.5]}]}',
        "parameter": '{"parameters": {"threshold": ' + token + "}, "
        '"inputs": [{"name": "signal", "shape": [60], "datatype": "FP64", "data": [' + values + "]}]}",
    }
    for name, body in v2.items():
        r = client.post("/v2/models/bump/infer", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (name, r.text)
        error = r.json()["error"]
        assert error.startswith(f"{where}{body.index(token) + 1} is beyond float64's range"), (name, error)
        assert error.endswith(
            "so outside float32's (±3.4028235e+38; the model computes in float32): in the input's data, "
            "rescale the signal; in its shape or binary_data_size, give integers; as the parameter "
            "threshold, a number strictly between 0 and 1; as min_distance, a positive integer"
        ), (name, error)


def test_values_beyond_float32_are_refused(client: TestClient) -> None:
    r = client.post("/v1/detect", json={"signals": [[1.0] * 20 + [1e39] + [1.0] * 20]})
    assert r.status_code == 422
    assert "signal 0 has a value (1e+39) at index 20 that is outside the float32 range" in detail(r)
    x = np.ones((1, 100))
    x[0, 7] = -4e38
    r = client.post("/v1/detect", content=npy(x), headers=NPY)
    assert r.status_code == 422 and "index 7 that is outside the float32 range" in detail(r)
    ok = client.post("/v1/detect", json={"signals": [[1.0] * 20 + [3e38] + [1.0] * 20]})
    assert ok.status_code == 200


def test_nan_in_npy_names_signal_and_index(client: TestClient) -> None:
    x = np.zeros((2, 100))
    x[1, 42] = np.nan
    r = client.post("/v1/detect", content=npy(x), headers=NPY)
    assert r.status_code == 422
    assert "signal 1 has a value (nan) at index 42 that is not finite" in detail(r)
    assert r.json()["detail"][0]["loc"] == ["body", 1, 42]


@pytest.mark.parametrize(
    ("arr", "message"),
    [
        (np.zeros((2, 2, 50)), "send 1-D"),
        (np.zeros(100, dtype=np.complex64), "dtype complex64"),
        (np.array(["a"] * 100), "dtype <U1"),
        (np.zeros(100, dtype=bool), "dtype bool"),
        (np.zeros(10), "signal 0 has 10 samples"),
        (np.zeros((17, 100)), "17 signals"),
        (np.zeros((0, 100)), "no signals"),
    ],
)
def test_npy_422(client: TestClient, arr: np.ndarray, message: str) -> None:
    r = client.post("/v1/detect", content=npy(arr), headers=NPY)
    assert r.status_code == 422, r.text
    assert message in detail(r)


def test_npy_of_many_dimensions_is_refused_in_a_short_message(client: TestClient) -> None:
    """A header may claim any number of dimensions (up to the 64 KiB a header may take): the
    message gives their count and the shape cut short, not the whole of it."""
    shape = "(" + "1," * 30_000 + ")"  # 60 kB: within the 64 KiB a header may take
    raw = ("{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + ", }").encode("latin1")
    raw += b" " * (63 - (len(raw) + 12) % 64) + b"\n"
    body = b"\x93NUMPY\x02\x00" + len(raw).to_bytes(4, "little") + raw + np.zeros(1, np.float32).tobytes()
    r = client.post("/v1/detect", content=body, headers=NPY)
    assert r.status_code == 422, r.text[:300]
    assert detail(r).startswith(".npy array has 30000 dimensions, shape (1, 1, 1,"), detail(r)[:300]
    assert "send 1-D (one signal) or 2-D" in detail(r) and len(r.content) < 600


def npy_v3(header: str, data: bytes = np.zeros(64, dtype=np.float32).tobytes()) -> bytes:
    """A version 3.0 .npy body: version 2.0's layout, its header text in UTF-8."""
    raw = header.encode("utf-8")
    raw += b" " * (63 - (len(raw) + 12) % 64) + b"\n"
    return b"\x93NUMPY\x03\x00" + len(raw).to_bytes(4, "little") + raw + data


def test_npy_version_3_header_is_read_as_utf8(client: TestClient) -> None:
    ok = npy_v3("{'descr': '<f4', 'fortran_order': False, 'shape': (64,), }")
    assert client.post("/v1/detect", content=ok, headers=NPY).status_code == 200
    r = client.post(
        "/v1/detect",
        content=npy_v3("{'descr': '<f4', 'fortran_order': False, 'shape': (64,), 'é': 1}"),
        headers=NPY,
    )
    assert r.status_code == 400 and "has 'é'" in detail(r), r.text
    bad = npy_v3("{'descr': '<f4', 'fortran_order': False, 'shape': (64,), }").replace(b"'<f4'", b"'\xff<f'")
    r = client.post("/v1/detect", content=bad, headers=NPY)
    assert r.status_code == 400 and "a version 3 header is UTF-8, and this one is not" in detail(r), r.text


def test_npy_integers_are_numbers(client: TestClient) -> None:
    r = client.post("/v1/detect", content=npy(np.arange(100, dtype=np.int32)), headers=NPY)
    assert r.status_code == 200


def test_npy_object_array_is_refused_without_unpickling(client: TestClient) -> None:
    arr = np.empty(100, dtype=object)
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    r = client.post("/v1/detect", content=buf.getvalue(), headers=NPY)
    assert r.status_code == 422 and "no pickle" in detail(r)
    # What it says to send is what is taken: floats of any size and integers.
    assert "send an array of floats or integers" in detail(r), detail(r)
    for taken in (np.float16, np.int8, np.uint32):
        r = client.post("/v1/detect", content=npy(np.arange(100).astype(taken)), headers=NPY)
        assert r.status_code == 200, (taken, r.text)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty body"),
        (b"not an npy", "no \\x93NUMPY magic"),
        (npy(np.zeros(100))[:60], "truncated"),
        (npy(np.zeros(100))[:-8], "truncated or has trailing data"),
        (npy(np.zeros(100)) + b"\0" * 8, "trailing data"),
        (b"\x93NUMPY\x01\x00\x0f\x00{'descr': <f8,}", "header cannot be read: it is not a Python literal"),
        # A bool is an int to Python, not a dimension: a malformed header, not a count of True.
        *(
            (
                npy_with_header(f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"),
                f"'shape' must be a tuple of non-negative integers, got {shape}",
            )
            for shape in ("(True, 64)", "(True,)", "(1, True)", "(False, 64)")
        ),
        # Each malformed header says what is wrong in it, not which Python exception reading it raised.
        *(
            (
                npy_with_header(f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"),
                f"'shape' must be a tuple of non-negative integers, got {shape}: send np.save output",
            )
            for shape in ("(-5,)", "(1, -64)", "(64.0,)", "[2, 32]", "64", "None")
        ),
        # Exactly the three keys, as np.load reads a header: none missing, none besides.
        *(
            (npy_with_header(header), f"header cannot be read: it {wrong}: {EXACT_KEYS}")
            for header, wrong in [
                ("{'descr': '<f4', 'shape': (64,), }", "lacks 'fortran_order'"),
                ("{'fortran_order': False}", "lacks 'descr' and 'shape'"),
                ("{'descr': '<f4', 'fortran_order': False, 'shape': (64,), 'note': 'x', }", "has 'note'"),
                ("{'descr': '<f4', 'fortran_order': False, 'shape': (64,), 1: 2, }", "has 1"),
                (
                    "{'descr': '<f4', 'shape': (64,), 'Fortran_order': False}",
                    "lacks 'fortran_order' and has 'Fortran_order'",
                ),
                (
                    "{'descr': '<f4', 'fortran_order': False, 'shape': (64,), "
                    + ", ".join(f"'k{i}': 0" for i in range(9))
                    + "}",
                    "has 'k0', 'k1', 'k2' and 6 more",
                ),
            ]
        ),
        (
            npy_with_header("{'descr': 'zz', 'fortran_order': False, 'shape': (64,), }"),
            "'descr' 'zz' is not a NumPy dtype (float32 is '<f4'): send np.save output",
        ),
        (  # np.save's own layout (the regular expression's path), a type numpy does not have
            npy_with_header("{'descr': '<f1', 'fortran_order': False, 'shape': (64,), }"),
            "'descr' '<f1' is not a NumPy dtype",
        ),
        (npy_with_header("{'descr': 5, 'fortran_order': False, 'shape': (64,), }"), "'descr' 5 is not"),
        (npy_with_header("[1, 2]"), "header cannot be read: it is a list, not a dict like {'descr'"),
        (npy_with_header("'<f4'"), "it is a str, not a dict"),
        (npy_with_header("__import__('os').getcwd()"), "it is not a Python literal"),
        (
            npy_with_header("{'descr': '<f4', 'fortran_order': 'no', 'shape': (2, 32), }"),
            "'fortran_order' must be True or False, got 'no'",
        ),
        (
            npy_with_header("{'descr': '<f4', 'fortran_order': 0, 'shape': (64,), }"),
            "'fortran_order' must be True or False, got 0",
        ),
        *(
            (
                npy_with_header(f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({n},), }}"),
                "a number in it has more than 19 digits; a dimension is at most 2**63 - 1",
            )
            for n in ("9" * 5000, "1" + "0" * 19, "1_000" * 6)
        ),
        *(  # beyond what NumPy can hold, but short enough to read: a hexadecimal one may be huge
            (
                npy_with_header(f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({n},), }}"),
                "'shape' has a dimension above 2**63 - 1, the most NumPy allows",
            )
            for n in ("9" * 19, "0x8000000000000000", "0x" + "f" * 5000, "1, 0x" + "F" * 20)
        ),
    ],
)
def test_npy_400(client: TestClient, body: bytes, message: str) -> None:
    r = client.post("/v1/detect", content=body, headers=NPY)
    assert r.status_code == 400, r.text
    assert message in detail(r)


def test_npy_header_claiming_terabytes(client: TestClient) -> None:
    header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (100000, 10000000), }"
    header += b" " * (63 - len(header) % 64) + b"\n"
    body = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\0" * 64
    r = client.post("/v1/detect", content=body, headers=NPY)
    assert r.status_code == 422 and "100000 signals in one request; the limit is 16" in detail(r)


def test_malformed_json(client: TestClient) -> None:
    r = client.post("/v1/detect", content=b'{"signals": [[1, 2', headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in detail(r)


def test_unsupported_content_type(client: TestClient) -> None:
    for ct in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"Content-Type": ct} if ct else {}
        r = client.post("/v1/detect", content=b"1,2,3", headers=headers)
        assert r.status_code == 415 and "application/json" in detail(r)


def test_more_commas_than_a_request_may_hold_is_refused_before_parsing(client: TestClient) -> None:
    """A text of numbers as short as "0," costs the parser about 13 bytes per byte: more commas
    than samples and signals allowed (200 000 and 16 here, plus 65 536) are refused unparsed.
    The body is not even valid JSON: the parser never saw it."""
    zeros = b'{"signals": [[' + b"0," * 300_000  # unfinished
    r = client.post("/v1/detect", content=zeros, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body"]
    assert detail(r) == (
        "the body has 300000 commas: more values than a request may hold (at most 200000 samples "
        "in 16 signals); split them over several requests"
    )
    r = client.post("/v2/models/bump/infer", content=zeros, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"].startswith("the body has 300000 commas"), r.text
    # As many commas as a request within the limits can hold: parsed, and refused for its content.
    within = b'{"signals": [' + b",".join([b"[" + b"0," * 12_499 + b"0]"] * 16) + b"]" + b" " * 400_000
    r = client.post("/v1/detect", content=within + b"}", headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text


def test_body_too_large(client: TestClient) -> None:
    r = client.post(
        "/v1/detect", content=b"[" + b"1.0," * 1_500_000 + b"1]", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 413 and "SHAPE_DETECTOR_MAX_BODY_BYTES" in detail(r)
    assert detail(r).endswith("or use the more compact application/x-npy (4 bytes per sample)")
    npy = client.post(
        "/v1/detect", content=b"\x93NUMPY" + bytes(5_000_000), headers={"Content-Type": "application/x-npy"}
    )
    assert npy.status_code == 413 and detail(npy).endswith("send fewer signals per request"), detail(npy)

    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(100):
            yield b" " * 100_000

    r = client.post("/v1/detect", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_query_parameters_are_validated(client: TestClient) -> None:
    body = npy(np.zeros(100))
    for q in ("threshold=0", "threshold=1.5", "threshold=abc", "min_distance=0", "return_scores=maybe"):
        r = client.post(f"/v1/detect?{q}", content=body, headers=NPY)
        assert r.status_code == 422, q
    for q in ("threshold=nan", "threshold=inf"):
        r = client.post(f"/v1/detect?{q}", content=body, headers=NPY)
        assert r.status_code == 422 and "finite number" in detail(r), r.text
    # Past the 64-bit range answers would echo: refused before inference, not a 500 after it.
    for body_kind in ("npy", "json"):
        kw: dict = (
            {"content": body, "headers": NPY} if body_kind == "npy" else {"json": {"signals": [[0.0] * 100]}}
        )
        r = client.post(f"/v1/detect?min_distance={2**64}", **kw)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "min_distance"], r.text
    r = client.post(f"/v1/detect?min_distance={2**63 - 1}", content=body, headers=NPY)
    assert r.status_code == 200 and r.json()["min_distance"] == 2**63 - 1
    r = client.post("/v1/detect?threshold=0.3", json={"signals": [[0.0] * 100], "threshold": 0.4})
    assert r.status_code == 422 and "give it once" in detail(r)
    r = client.post("/v1/detect?threshold=0.3", json={"signals": [[0.0] * 100]})
    assert r.status_code == 200 and r.json()["threshold"] == 0.3


@pytest.mark.parametrize("path", ["/v1/detect", "/v1/models/other/detect"])
def test_unknown_or_repeated_query_parameters_are_refused(client: TestClient, path: str) -> None:
    """A misspelt option would be ignored and a repeated one decided by its last value: both
    are refused, as a misspelt or repeated field of a JSON body is."""
    body = npy(np.zeros(100))
    r = client.post(f"{path}?treshold=0.9", content=body, headers=NPY)
    assert r.status_code == 422, r.text
    assert [(e["loc"], e["msg"]) for e in r.json()["detail"]] == [
        (
            ["query", "treshold"],
            "unknown query parameter 'treshold'; the detection routes take threshold, min_distance, return_scores",
        )
    ]
    r = client.post(f"{path}?threshold=0.5&threshold=0.99", content=body, headers=NPY)
    assert r.status_code == 422, r.text
    assert [(e["loc"], e["msg"]) for e in r.json()["detail"]] == [
        (["query", "threshold"], "query parameter 'threshold' is given 2 times: give it once")
    ]
    r = client.post(
        f"{path}?min_distance=5&return_scores=true&minimum=1&return_scores=false",
        json={"signals": [[0.0] * 100]},
    )
    assert r.status_code == 422
    assert [e["loc"] for e in r.json()["detail"]] == [["query", "return_scores"], ["query", "minimum"]]
    r = client.post(f"{path}?threshold=0.4&min_distance=5&return_scores=false", content=body, headers=NPY)
    assert r.status_code == 200 and (r.json()["threshold"], r.json()["min_distance"]) == (0.4, 5)


def test_unknown_model(client: TestClient) -> None:
    r = client.post("/v1/models/nope/detect", json={"signals": [[0.0] * 100]})
    assert r.status_code == 404 and "available models: bump, other" in detail(r)


@pytest.mark.parametrize(
    ("body", "says", "does_not_say"),
    [
        (b'{"signals": [[1, 2', "not valid JSON", "NaN"),
        (b"", "not valid JSON", "NaN"),
        (b'{"signals": [[1, NaN, 3]]}', "NaN and Infinity are not JSON: send finite numbers", None),
        ('{"signals": [[1, 2]], "é": 1}'.encode("latin-1"), "JSON is UTF-8: send the text as UTF-8", "NaN"),
    ],
)
def test_a_json_syntax_error_says_what_to_do_about_it(
    client: TestClient, body: bytes, says: str, does_not_say: str | None
) -> None:
    r = client.post("/v1/detect", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and says in detail(r)
    assert does_not_say is None or does_not_say not in detail(r)


def test_a_charset_parameter_is_not_read() -> None:
    """RFC 8259: JSON is UTF-8 and the parameter has no meaning; a body that is not UTF-8 is
    told so by its 400."""
    for content_type in ("application/json; charset=latin-1", "application/json; charset=us-ascii"):
        assert media_type(content_type) == "json"


def test_a_latin1_body_is_told_to_be_utf8(client: TestClient) -> None:
    body = '{"signals": [[1, 2]], "é": 1}'.encode("latin-1")
    r = client.post("/v1/detect", content=body, headers={"Content-Type": "application/json; charset=latin-1"})
    assert r.status_code == 400 and "JSON is UTF-8" in detail(r)
    r = client.post(
        "/v1/detect",
        content=b'{"signals": [[' + b", ".join([b"1"] * 20) + b"]]}",
        headers={"Content-Type": "application/json; charset=us-ascii"},
    )
    assert r.status_code == 200


def test_a_nan_hint_only_where_the_parser_stopped_at_one(client: TestClient) -> None:
    r = client.post(
        "/v1/detect", content=b'{"x": "NaN", "signals": [[1, 2', headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400 and "NaN and Infinity" not in detail(r)
    r = client.post("/v1/detect", json={"signals": [[1.0] * 20], "min_distance": 2.5})
    assert r.status_code == 422 and detail(r).endswith("got 2.5")
