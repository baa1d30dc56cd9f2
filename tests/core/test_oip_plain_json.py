"""The Open Inference Protocol's plain JSON path (simdjson) decodes exactly what the general one
(orjson) does, and leaves every request it does not take to it: the same signals, options and
outputs, or the same error."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core import oip
from app.core.card import load_card
from app.core.errors import DetectorError
from app.core.signals import Limits
from tests.core.json_strategies import json_values, numbers

CARD = load_card(Path(__file__).parents[2] / "models" / "bump")
LIMITS = Limits(max_signals=4, max_samples=400, max_signal_length=200)
CHECKS = settings(max_examples=300, deadline=None, derandomize=True, database=None)
MIN = CARD.min_length  # 16

Outcome = tuple[Any, ...]


def outcome(decode: Callable[[], oip.InferRequest]) -> Outcome:
    """What a decoder gave: the request with its signals as (dtype, shape, bytes), or the error."""
    try:
        request = decode()
    except DetectorError as exc:
        return ("error", type(exc).__name__, exc.status, exc.detail, getattr(exc, "loc", None))
    signals = [(s.dtype.str, s.shape, s.tobytes()) for s in request.signals]
    return ("ok", request.id, signals, request.threshold, request.min_distance, request.outputs)


def both(body: bytes, header_length: str | None = None) -> tuple[Outcome, Outcome, bool]:
    """``decode_infer``'s outcome, the general path's alone, and whether the plain path took it."""

    def decode() -> oip.InferRequest:
        return oip.decode_infer(CARD, body, LIMITS, header_length=header_length, model_name="bump")

    taken = outcome(decode)
    with mock.patch.object(oip, "_plain_request", return_value=None):
        general = outcome(decode)
    end = len(body) if header_length is None else int(header_length)
    return taken, general, oip._plain_request(body, end) is not None


def request(data: str, shape: str = f"[{MIN}]", **extra: str) -> bytes:
    fields = "".join(f', "{k}": {v}' for k, v in extra.items())
    text = (
        f'{{"inputs": [{{"name": "signal", "shape": {shape}, "datatype": "FP32", "data": {data}}}]{fields}}}'
    )
    return text.encode()


ROW = "[" + ", ".join(["1", "2.5", "-0", "3e2", "1E-3", "-7", "9007199254740993", "0.1"] * 2) + "]"
TWO = "[" + ", ".join([ROW[1:-1]] * 2) + "]"
TAKEN = {
    "one signal": request(ROW),
    "two signals, flat": request(TWO, f"[2, {MIN}]"),
    "FP64": request(ROW).replace(b'"FP32"', b'"FP64"'),
    "every field": request(
        ROW,
        id='"req [1]"',
        parameters='{"threshold": 0.25, "min_distance": 3, "binary_data_output": false}',
        outputs='[{"name": "probability"}, {"name": "scores", "parameters": {"binary_data": true}}]',
        model_name='"bump"',
        model_version=f'"{CARD.version}"',
    ),
    "Triton hints and null options": request(ROW, parameters='{"priority": 1, "timeout": null}'),
    "whitespace": b"\n\t " + request(ROW).replace(b": ", b" :\n ") + b" \r\n",
    "an escaped name": request(ROW).replace(b'"shape"', b'"sh\\u0061pe"'),
    "largest float32": request("[" + ", ".join(["3.4028234663852886e38"] * MIN) + "]"),
    "float32 underflow": request("[" + ", ".join(["1e-400", "1e-45", "-5e-324", "0"] * 4) + "]"),
}
GENERAL = {
    "byte order mark": "\ufeff".encode() + TAKEN["one signal"],
    "repeated name": request(ROW, shape=f'[{MIN}], "shape": [{MIN}]'),
    "repeated name in parameters": request(ROW, parameters='{"threshold": 0.2, "threshold": 0.3}'),
    "nested data": request("[" + ROW + "]", f"[1, {MIN}]"),
    "a list in the data": request(ROW.replace("-7", "[-7]")),
    "a one-value list in the data": request("[1, [2]" + ", 3" * (MIN - 2) + "]"),
    "a string in the data": request(ROW.replace("-7", '"-7"')),
    "null in the data": request(ROW.replace("-7", "null")),
    "a boolean in the data": request(ROW.replace("-7", "true")),
    "an object in the data": request(ROW.replace("-7", "{}")),
    "beyond float64": request(ROW.replace("-7", "1e400")),
    "an integer beyond 64 bits": request(ROW.replace("-7", "100000000000000000000")),
    "data not a list": request("3"),
    "no data": request(ROW).replace(b', "data": ' + ROW.encode(), b""),
    "two inputs": request(ROW).replace(b"}]", b'}, {"name": "signal"}]'),
    "inputs not a list": b'{"inputs": {"name": "signal"}}',
    "not an object": b"[1, 2, 3]",
    "NaN": request(ROW.replace("-7", "NaN")),
    "trailing text": request(ROW) + b" x",
    "truncated": request(ROW)[:-5],
    "invalid UTF-8": request(ROW)[:-1] + b', "\xff": 1}',
    "an escaped bracket in a string": request(ROW, id='"\\u005b"'),
    # The escape is one '[' in the parsed id and none in the text, where the nested row has one.
    "an escaped bracket in a string, nested data": request("[" + TWO + "]", f"[2, {MIN}]", id='"\\u005b"'),
    "more names than a request has": request(ROW, **{f"n{i}": "0" for i in range(oip.MAX_NAMES)}),
}
# Raised with the general path's message by the checks both paths share.
RAISED = {
    "unknown field": request(ROW, extra_field="1"),
    "an empty name": request(ROW, **{"": "1"}),
    "unknown input field": request(ROW).replace(b'"datatype"', b'"dtype": 1, "datatype"'),
    "id a number": request(ROW, id="3"),
    "another model": request(ROW, model_name='"arrival"'),
    "another version": request(ROW, model_version='"0.0.1"'),
    "threshold out of range": request(ROW, parameters='{"threshold": 1.5}'),
    "min_distance a float": request(ROW, parameters='{"min_distance": 2.5}'),
    "unknown parameter": request(ROW, parameters='{"thresold": 0.5}'),
    "unknown output": request(ROW, outputs='[{"name": "peaks"}]'),
    "wrong input name": request(ROW).replace(b'"signal"', b'"x"'),
    "wrong datatype": request(ROW).replace(b'"FP32"', b'"INT8"'),
    "datatype a list": request(ROW).replace(b'"FP32"', b'["FP32"]'),
    "datatype an object": request(ROW).replace(b'"FP32"', b'{"t": "FP32"}'),
    "shape against data": request(ROW, f"[2, {MIN}]"),
    "too short": request("[1, 2, 3]", "[3]"),
    "too long": request("[" + ", ".join(["1"] * 201) + "]", "[201]"),
    "too many signals": request("[" + ", ".join([ROW[1:-1]] * 5) + "]", f"[5, {MIN}]"),
    "beyond float32": request(ROW.replace("-7", "3.5e38")),
    "data and binary_data_size": request(ROW).replace(
        b'"datatype"', b'"parameters": {"binary_data_size": 64}, "datatype"'
    ),
}


@pytest.mark.parametrize("name", list(TAKEN))
def test_plain_requests_take_the_plain_path_and_decode_the_same(name: str) -> None:
    taken, general, plain = both(TAKEN[name])
    assert plain and taken[0] == "ok"
    assert taken == general


@pytest.mark.parametrize("name", list(GENERAL))
def test_other_requests_go_to_the_general_path(name: str) -> None:
    taken, general, plain = both(GENERAL[name])
    assert not plain
    assert taken == general


@pytest.mark.parametrize("name", list(RAISED))
def test_errors_of_plain_requests_are_the_general_paths(name: str) -> None:
    taken, general, plain = both(RAISED[name])
    assert plain and taken[0] == "error"
    assert taken == general


def test_a_value_beyond_float32_is_named_where_it_is() -> None:
    taken, _, _ = both(RAISED["beyond float32"])
    assert taken[4] == ("inputs", 0, "data", 0, 5) and "3.5e+38" in taken[3]


def test_a_json_header_before_binary_data_decodes_as_on_the_general_path() -> None:
    values = np.arange(2 * MIN, dtype="<f4")
    header = request("0", f"[2, {MIN}]").replace(
        b', "data": 0', f', "parameters": {{"binary_data_size": {values.nbytes}}}'.encode()
    )
    taken, general, plain = both(header + values.tobytes(), str(len(header)))
    assert not plain and taken[0] == "ok" and taken == general  # no 'data': the general path
    # A plain header with data: the bytes after it are refused the same way by both paths.
    body = request(ROW)
    taken, general, plain = both(body + b"\x00" * 8, str(len(body)))
    assert plain and taken[0] == "error" and taken == general


def test_a_bytearray_body_decodes_as_bytes_do() -> None:
    body = TAKEN["every field"]
    decoded = outcome(lambda: oip.decode_infer(CARD, bytearray(body), LIMITS, model_name="bump"))
    assert decoded == both(body)[0]


@CHECKS
@given(st.lists(numbers, min_size=MIN, max_size=3 * MIN), st.booleans())
def test_numbers_decode_bit_for_bit_as_on_the_general_path(values: list[Any], fp64: bool) -> None:
    body = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "signal",
                    "shape": [len(values)],
                    "datatype": "FP64" if fp64 else "FP32",
                    "data": values,
                }
            ]
        }
    )
    taken, general, plain = both(body)
    assert taken == general
    if taken[0] == "ok":
        assert plain


FIELDS = [
    "id",
    "parameters",
    "outputs",
    "model_name",
    "x",
    "inputs.name",
    "inputs.datatype",
    "inputs.shape",
    "inputs.data",
    "inputs.parameters",
]


@CHECKS
@given(json_values, st.sampled_from(FIELDS))
def test_any_document_decodes_or_fails_as_on_the_general_path(value: Any, field: str) -> None:
    spec: dict[str, Any] = {"name": "signal", "shape": [MIN], "datatype": "FP32", "data": list(range(MIN))}
    doc: dict[str, Any] = {"inputs": [spec]}
    if field.startswith("inputs."):
        spec[field.removeprefix("inputs.")] = value
    else:
        doc[field] = value
    taken, general, _ = both(orjson.dumps(doc))
    assert taken == general


def test_a_plain_request_is_decoded_without_orjson() -> None:
    with mock.patch.object(oip.orjson, "loads", side_effect=AssertionError("parsed by orjson")):
        decoded = outcome(lambda: oip.decode_infer(CARD, TAKEN["every field"], LIMITS, model_name="bump"))
    assert decoded == both(TAKEN["every field"])[1]


MEMORY = """
import resource
from pathlib import Path
from app.core import oip
from app.core.card import load_card
from app.core.signals import Limits
card = load_card(Path("models/bump"))
row = b",".join([b"0.1234567"] * 10_000)
body = b'{"inputs": [{"name": "signal", "shape": [500, 10000], "datatype": "FP32", "data": ['
body += b",".join([row] * 500) + b"]}]}"
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = oip.decode_infer(card, body, Limits(1000, 10**8, 10**6))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert len(out.signals) == 500
print((after - before) * 1024 / len(body))
"""


def test_the_plain_path_takes_a_few_bytes_per_byte_of_request() -> None:
    # As for /v1 (tests/core/test_plain_json.py): the peak resident memory of a fresh process
    # decoding 50 MB of JSON. Measured here: 3.2 bytes per byte of text; the general path 5.6.
    root = Path(__file__).parents[2]
    run = subprocess.run(
        [sys.executable, "-c", MEMORY], capture_output=True, text=True, timeout=120, cwd=root
    )
    assert run.returncode == 0, run.stderr
    per_byte = float(run.stdout)
    assert per_byte < 4.5, per_byte


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (GENERAL["repeated name"], "inputs.0.shape"),
        (GENERAL["repeated name in parameters"], "parameters.threshold"),
        (request(ROW, parameters='{"threshold": 0.2, "thr\\u0065shold": 0.3}'), "parameters.threshold"),
        (request(ROW, id='"a"', **{"i\\u0064": '"b"'}), "id"),
        (request(ROW)[:-1] + b', "inputs": []}', "inputs"),
    ],
)
def test_a_name_given_twice_is_refused_in_any_object(body: bytes, where: str) -> None:
    taken, general, plain = both(body)
    assert not plain and taken == general
    assert taken[0] == "error" and taken[3] == f"field {where!r} appears more than once: send each field once"


def test_a_name_given_twice_before_binary_data_is_refused() -> None:
    values = np.arange(MIN, dtype="<f4")
    header = request("0").replace(
        b', "data": 0', f', "parameters": {{"binary_data_size": {values.nbytes}}}'.encode()
    )
    header = header[:-1] + b', "id": "a", "id": "b"}'
    taken, general, plain = both(header + values.tobytes(), str(len(header)))
    assert not plain and taken == general
    assert taken[0] == "error" and "field 'id' appears more than once" in taken[3]


def test_many_unknown_names_are_listed_in_a_few() -> None:
    names = "".join(f', "n{i:05}": 0' for i in range(50_000))
    taken, general, plain = both(request(ROW)[:-1] + names.encode() + b"}")
    assert not plain and taken == general
    assert "unknown field(s) ['n00000', 'n00001', 'n00002', 'n00003', 'n00004', … 49995 more]" in taken[3]


def test_a_repeated_name_is_found_when_simdjson_refuses_the_text() -> None:
    body = request(
        ROW.replace("-7", "100000000000000000000"), parameters='{"threshold": 0.2, "threshold": 0.3}'
    )
    taken, general, plain = both(body)
    assert not plain and taken == general
    assert (
        taken[0] == "error" and taken[3] == "field 'threshold' appears more than once: send each field once"
    )
