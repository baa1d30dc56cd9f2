"""The plain JSON path (simdjson) decodes exactly what the general one (orjson) does, and leaves
every body it does not take, and every error but the names' and options', to it; the cast that
keeps the interpreter lock gives what one numpy cast gives."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any
from unittest import mock

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core import pipeline
from app.core.errors import DetectorError
from app.core.pipeline import Params, decode_json, decode_plain_json, float32_holding_gil
from app.core.signals import Limits
from tests.core.json_strategies import json_values, numbers

LIMITS = Limits(max_signals=4, max_samples=400, max_signal_length=200)
MIN_LENGTH = 3
CHECKS = settings(max_examples=300, deadline=None, derandomize=True, database=None)

Outcome = tuple[Any, ...]
NO_QUERY = Params()


def outcome(decode: Callable[[], tuple[list[Any], Params]]) -> Outcome:
    """What a decoder gave: the signals (dtype, shape, bytes) and options, or the error."""
    try:
        signals, params = decode()
    except DetectorError as exc:
        return (
            "error",
            type(exc).__name__,
            exc.status,
            exc.detail,
            getattr(exc, "loc", None),
            getattr(exc, "kind", None),
        )
    return ("ok", [(s.dtype.str, s.shape, s.tobytes()) for s in signals], params)


def both(body: bytes, query: Params = NO_QUERY) -> tuple[Outcome, Outcome, bool]:
    """``decode_json``'s outcome, the general path's alone, and whether the plain path took it."""
    taken = outcome(lambda: decode_json(body, query, LIMITS, MIN_LENGTH))
    with mock.patch.object(pipeline, "decode_plain_json", return_value=None):
        general = outcome(lambda: decode_json(body, query, LIMITS, MIN_LENGTH))
    try:
        plain = decode_plain_json(body, query, LIMITS, MIN_LENGTH) is not None
    except DetectorError:
        plain = True  # it raised: an error of the names, options or counts (callers compare outcomes)
    return taken, general, plain


ROW = "[1, 2.5, -0, 3e2, 1E-3, -7]"
TAKEN = {
    "floats and integers": f'{{"signals": [{ROW}]}}',
    "two rows of other lengths": f'{{"signals": [{ROW}, [1, 2, 3]]}}',
    "options": f'{{"signals": [{ROW}], "threshold": 0.25, "min_distance": 3, "return_scores": true}}',
    "null options": f'{{"threshold": null, "signals": [{ROW}], "min_distance": null}}',
    "whitespace": f'\n\t {{ "signals" :\n[ {ROW} ] }} \r\n',
    "integers beyond 2**53": '{"signals": [[9007199254740993, -9223372036854775808, 18446744073709551615]]}',
    "float32 underflow and subnormals": '{"signals": [[1e-400, 1e-45, 1.4e-45, -5e-324]]}',
    "largest float32 and its rounding": '{"signals": [[3.4028234663852886e38, 3.4028235e38, -3.40282356e38]]}',
    "escaped name": f'{{"sig\\u006eals": [{ROW}]}}',
    "long digit strings": '{"signals": [[0.1000000000000000055511151231257827, 123456789.123456789123, 1]]}',
}
GENERAL = {
    "byte order mark": "\ufeff" + TAKEN["floats and integers"],
    "repeated name": f'{{"signals": [{ROW}], "signals": [{ROW}]}}',
    "repeated name, one escaped": f'{{"signals": [{ROW}], "sig\\u006eals": [{ROW}]}}',
    "more names than a request has": f'{{"signals": [{ROW}]'
    + "".join(f', "n{i}": {i}' for i in range(len(pipeline.BODY_FIELDS)))
    + "}",
    "string value": '{"signals": [[1, "2", 3]]}',
    "string option": f'{{"signals": [{ROW}], "threshold": "0.5"}}',
    "nested list": '{"signals": [[1, [2], 3, 4]]}',
    "nested lists": '{"signals": [[[1], [2], [3]]]}',
    "null value": '{"signals": [[1, null, 3]]}',
    "boolean value": '{"signals": [[1, true, 3]]}',
    "object value": '{"signals": [[1, {}, 3]]}',
    "object option": f'{{"signals": [{ROW}], "threshold": {{}}}}',
    "list option": f'{{"signals": [{ROW}], "min_distance": [3]}}',
    "beyond float32": '{"signals": [[1, 3.5e38, 3]]}',
    "beyond float64": '{"signals": [[1, 1e400, 3]]}',
    "integer beyond 64 bits": '{"signals": [[1, 100000000000000000000, 3]]}',
    "NaN": '{"signals": [[1, NaN, 3]]}',
    "trailing comma": '{"signals": [[1, 2, 3,]]}',
    "trailing text": f'{{"signals": [{ROW}]}} x',
    "not an object": f"[{ROW}]",
    "missing signals": '{"threshold": 0.5}',
    "signals not a list": '{"signals": 3}',
    "a row not a list": f'{{"signals": [{ROW}, 3]}}',
    "truncated": '{"signals": [[1, 2',
    "invalid UTF-8": b'{"signals": [[1, 2, 3]], "\xff": 1}',
    "a name simdjson cannot look up": f'{{"signals": [{ROW}], "x\\u0000": 1}}',
}
# Names and options: raised by the plain path itself, with the general path's message.
RAISED = {
    "unknown name": f'{{"signals": [{ROW}], "thresold": 0.5}}',
    "threshold out of range": f'{{"signals": [{ROW}], "threshold": 1.5}}',
    "threshold a boolean": f'{{"signals": [{ROW}], "threshold": true}}',
    "min_distance a float": f'{{"signals": [{ROW}], "min_distance": 2.5}}',
    "return_scores a number": f'{{"signals": [{ROW}], "return_scores": 1}}',
    "no signals": '{"signals": []}',
    "an empty signal": f'{{"signals": [{ROW}, []]}}',
    "too short": '{"signals": [[1, 2]]}',
    "too many signals": f'{{"signals": [{", ".join([ROW] * 5)}]}}',
    "too long": f'{{"signals": [[{", ".join(["1"] * 201)}]]}}',
    "too many samples": f'{{"signals": [[{", ".join(["1"] * 150)}], [{", ".join(["1"] * 150)}], [{", ".join(["1"] * 150)}]]}}',
}


def encoded(body: str | bytes) -> bytes:
    return body if isinstance(body, bytes) else body.encode()


@pytest.mark.parametrize("name", list(TAKEN))
def test_plain_bodies_take_the_plain_path_and_decode_the_same(name: str) -> None:
    taken, general, plain = both(encoded(TAKEN[name]))
    assert plain and taken[0] == "ok"
    assert taken == general


@pytest.mark.parametrize("name", list(GENERAL))
def test_other_bodies_go_to_the_general_path(name: str) -> None:
    body = encoded(GENERAL[name])
    assert decode_plain_json(body, Params(), LIMITS, MIN_LENGTH) is None
    taken, general, _ = both(body)
    assert taken == general


@pytest.mark.parametrize("name", list(RAISED))
def test_errors_of_names_options_and_counts_are_the_general_paths(name: str) -> None:
    taken, general, plain = both(encoded(RAISED[name]))
    assert plain and taken[0] == "error"
    assert taken == general


def test_options_are_merged_with_the_query_the_same_way() -> None:
    body = encoded(TAKEN["options"])
    taken, general, _ = both(body, Params(threshold=0.5))  # given twice
    assert taken[0] == "error" and "both in the body and in the query" in taken[3]
    assert taken == general
    taken, general, plain = both(
        encoded(TAKEN["floats and integers"]), Params(threshold=0.5, return_scores=True)
    )
    assert plain and taken[2] == Params(threshold=0.5, return_scores=True)
    assert taken == general


def test_a_bytearray_body_decodes_as_bytes_do() -> None:
    body = encoded(TAKEN["options"])
    assert outcome(lambda: decode_json(bytearray(body), Params(), LIMITS, MIN_LENGTH)) == both(body)[0]


def number_text(draw: st.DrawFn) -> str:
    """A JSON number as a client may write it: Python's repr, fixed or exponent notation."""
    value = draw(numbers)
    if isinstance(value, int):
        return str(value)
    style = draw(st.sampled_from(["repr", "e", "E", "fixed"]))
    if style == "repr":
        return repr(value)
    if style == "fixed" and abs(value) < 1e30:
        return f"{value:.{draw(st.integers(0, 25))}f}"
    return f"{value:.{draw(st.integers(0, 20))}{'e' if style != 'E' else 'E'}}"


@st.composite
def number_bodies(draw: st.DrawFn) -> bytes:
    lengths = draw(st.lists(st.integers(MIN_LENGTH, 60), min_size=1, max_size=4))
    text = ", ".join("[" + ", ".join(number_text(draw) for _ in range(n)) + "]" for n in lengths)
    return f'{{"signals": [{text}]}}'.encode()


@CHECKS
@given(number_bodies())
def test_numbers_in_any_notation_decode_bit_for_bit_as_on_the_general_path(body: bytes) -> None:
    taken, general, plain = both(body)
    assert taken == general
    if taken[0] == "ok":
        assert plain


@CHECKS
@given(json_values, st.sampled_from(["signals", "threshold", "min_distance", "return_scores", "x"]))
def test_any_document_decodes_or_fails_as_on_the_general_path(value: Any, name: str) -> None:
    doc = {name: value} if name == "signals" else {"signals": [[1, 2, 3]], name: value}
    taken, general, _ = both(orjson.dumps(doc))
    assert taken == general


MEMORY = """
import resource, sys
from app.core.pipeline import Params, decode_plain_json
from app.core.signals import Limits
row = b"[" + b",".join([b"0.1234567"] * 10_000) + b"]"
body = b'{"signals": [' + b",".join([row] * 500) + b"]}"
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = decode_plain_json(body, Params(), Limits(1000, 10**8, 10**6), 16)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert out is not None and len(out[0]) == 500
print((after - before) * 1024 / len(body))
"""


def test_the_plain_path_takes_a_few_bytes_per_byte_of_body() -> None:
    # simdjson allocates in C++, out of tracemalloc's sight (tests/reliability/test_hostile.py):
    # the peak resident memory of a fresh process is measured instead. 50 MB of JSON.
    run = subprocess.run([sys.executable, "-c", MEMORY], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    per_byte = float(run.stdout)
    # Measured here: 2.9 bytes per byte of text (the parser's document and indexes, and the float32
    # signals); the general path (orjson and a Python float per number) 5.9, the same way.
    assert per_byte < 6, per_byte


# Keeping the interpreter lock: the same float32 values, in steps numpy does not release it for.


@pytest.mark.parametrize("size", [1, 499, 500, 501, 1024, 8000, 8001, 20_000])
def test_float32_holding_gil_casts_as_astype_and_refuses_overflow(size: int) -> None:
    rng = np.random.default_rng(size)
    values = rng.standard_normal(size) * 10.0 ** rng.integers(-40, 38, size)
    out = float32_holding_gil(values)
    assert out is not None and out.dtype == np.float32
    np.testing.assert_array_equal(out, values.astype(np.float32))
    for where in {0, size // 2, size - 1, min(500, size - 1)}:
        bad = values.copy()
        bad[where] = -3.5e38  # beyond float32: inf once cast
        assert float32_holding_gil(bad) is None
    edge = values.copy()
    edge[-1] = 3.4028235e38  # above the largest float32, but rounds down to it: kept
    assert float32_holding_gil(edge) is not None


@pytest.mark.parametrize(
    ("body", "name"),
    [
        (f'{{"signals": [{ROW}], "signals": [{ROW}]}}', "signals"),
        (f'{{"signals": [{ROW}], "sig\\u006eals": [{ROW}]}}', "signals"),
        (f'{{"signals": [{ROW}], "threshold": 0.2, "thr\\u0065shold": 0.9}}', "threshold"),
        (f'{{"signals": [{ROW}], "x": 1, "x": 2}}', "x"),
    ],
)
def test_a_name_given_twice_is_refused_however_it_is_written(body: str, name: str) -> None:
    taken, general, _ = both(body.encode())
    assert taken == general
    assert taken[0] == "error" and taken[3] == f"field {name!r} appears more than once: send each field once"
    assert taken[4] == ("body", name)


def test_many_unknown_names_are_listed_in_a_few() -> None:
    body = (f'{{"signals": [{ROW}]' + "".join(f', "n{i:05}": 0' for i in range(50_000)) + "}").encode()
    taken, general, plain = both(body)
    assert not plain and taken == general
    assert taken[3] == (
        "unknown field(s) ['n00000', 'n00001', 'n00002', 'n00003', 'n00004', … 49995 more]; "
        "allowed: ['min_distance', 'return_scores', 'signals', 'threshold']"
    )


def test_a_repeated_name_is_found_when_simdjson_refuses_the_text() -> None:
    """An integer beyond 64 bits: orjson reads it as a float, simdjson refuses the text; the
    search for a repeated name then takes the standard library's parser."""
    body = f'{{"threshold": 0.9, "signals": [{ROW[:-1]}, 100000000000000000000]], "threshold": 0.1}}'
    taken, general, _ = both(body.encode())
    assert taken == general
    assert taken[3] == "field 'threshold' appears more than once: send each field once"


def tree(depth: int, fan_out: int) -> Any:
    return {"a": 1} if depth == 0 else {"o": [tree(depth - 1, fan_out) for _ in range(fan_out)]}


def test_the_search_for_repeated_names_stops_at_a_requests_worth_of_objects() -> None:
    """A text with a string (so the quotes do not add up) and 8**5 small objects: searched no
    further than pipeline.MAX_SEARCHED objects, it is refused for them."""
    body = orjson.dumps({"signals": [[1.0, 2.0, 3.0]], "x": "y", "t": tree(5, 8)})
    taken, general, _ = both(body)
    assert taken == general
    assert taken[3] == "the JSON holds more than 10000 objects (and lists of them): a request has a few"
    with_big_integer = body.replace(b"[[1.0", b"[[100000000000000000000")
    assert both(with_big_integer)[0][3] == taken[3]  # the standard library's parser stops there too


def test_lists_nested_deep_in_a_text_with_a_string_are_not_searched() -> None:
    body = b'{"x": "y", "signals": ' + b"[" * 1000 + b"[]," * 20_000 + b"[]" + b"]" * 1000 + b"}"
    taken, general, _ = both(body)
    assert taken == general and taken[3].startswith("unknown field(s) ['x']")
