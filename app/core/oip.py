"""The Open Inference Protocol (KServe v2) for the detector: metadata, request decoding and
response encoding, in JSON and with the binary tensor data extension.

One input, ``signal`` (FP32, FP64 accepted), shape ``[n, length]`` (``[length]``: one
signal). Outputs: ``probability`` FP32 ``[n]``, ``detected`` BOOL ``[n]``, the peaks of all
signals as ``peak_signal`` / ``peak_index`` INT64 ``[k]`` and ``peak_probability`` FP32
``[k]``, and, only when asked for, ``scores`` FP32 ``[n, length]``.

Requests come in three forms, told apart by the ``Inference-Header-Content-Length`` header:
absent, the body is the JSON request; ``h > 0``, the first ``h`` bytes are the JSON request
and the binary data of the inputs that declare ``binary_data_size`` follows it; ``0``, the
raw binary form: the whole body is the data of the one input, FP32, one signal (the model's
batch of one), and every default output comes back as binary data.

Sizes are checked against the limits from the declared shape before any array is built; the
binary data is viewed in place (``np.frombuffer``), not copied. Every error says what is
wrong and how to fix it. Nothing here knows about HTTP frameworks: the route passes the body
and the two headers in and sends ``Encoded`` out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import simdjson

from app.core.card import Card
from app.core.errors import InvalidInput, MalformedBody, ModelNotFound, listed
from app.core.model import Detection, Options, detections_per_request
from app.core.pipeline import (
    MAX_NAMES,
    UTF8_BOM,
    beyond_float64,
    check_min_distance,
    check_names_once,
    check_threshold,
    count_byte,
    float32_holding_gil,
    json_error_hint,
    only_numbers_in,
)
from app.core.signals import (
    Body,
    Limits,
    Signal,
    check_count,
    check_counts,
    check_finite,
    check_json_values,
    rows_from_json,
    short_repr,
    transposed_hint,
)
from app.core.windows import Float32Array

PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ("binary_tensor_data",)
HEADER_LENGTH = "Inference-Header-Content-Length"
INPUT = "signal"
# Little-endian, as the binary tensor data extension lays data out.
INPUT_DATATYPES: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8")}
RAW_DATATYPE = "FP32"  # the model's input type: what a raw binary body holds
OUTPUTS: dict[str, tuple[str, list[int]]] = {
    "probability": ("FP32", [-1]),
    "detected": ("BOOL", [-1]),
    "peak_signal": ("INT64", [-1]),
    "peak_index": ("INT64", [-1]),
    "peak_probability": ("FP32", [-1]),
    "scores": ("FP32", [-1, -1]),
}
DEFAULT_OUTPUTS = tuple(name for name in OUTPUTS if name != "scores")

REQUEST_FIELDS = {"id", "parameters", "inputs", "outputs", "model_name", "model_version"}
INPUT_FIELDS = {"name", "shape", "datatype", "parameters", "data"}
OUTPUT_FIELDS = {"name", "parameters"}
REQUEST_PARAMETERS = {"threshold", "min_distance", "binary_data_output"}
IGNORED_PARAMETERS = {"priority", "timeout"}  # Triton scheduling hints: accepted, no effect here
DATA_LOC: tuple[str | int, ...] = ("inputs", 0, "data")  # where a bad value is, in errors
INPUT_SHAPE_HINT = f"'{INPUT}' (FP32 or FP64, shape [n, length] or [length])"


def server_metadata(name: str, version: str) -> dict[str, Any]:
    return {"name": name, "version": version, "extensions": list(EXTENSIONS)}


def model_metadata(card: Card) -> dict[str, Any]:
    """Name, versions, platform and tensors; -1 marks a variable dimension."""
    return {
        "name": card.name,
        "versions": [card.version],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT, "datatype": "FP32", "shape": [-1, -1]}],
        "outputs": [
            {"name": name, "datatype": datatype, "shape": list(shape)}
            for name, (datatype, shape) in OUTPUTS.items()
        ],
    }


def check_version(card: Card, version: str | None) -> None:
    """A ``/versions/{v}`` path must name the version the model serves (404 otherwise)."""
    if version is not None and version != card.version:
        raise ModelNotFound(
            f"model {card.name!r} has no version {version!r}; it serves version {card.version!r}: "
            f"use /v2/models/{card.name}/versions/{card.version} or leave the version out"
        )


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(frozen=True, slots=True)
class InferRequest:
    """A validated inference request; options have the card's defaults filled in."""

    id: str | None
    signals: list[Signal]
    threshold: float
    min_distance: int
    outputs: tuple[RequestedOutput, ...]

    @property
    def samples(self) -> int:
        return sum(s.size for s in self.signals)

    def wants(self, output: str) -> bool:
        return any(o.name == output for o in self.outputs)


@dataclass(frozen=True, slots=True)
class Encoded:
    """A response body; ``header_length`` is set when binary tensor data follows the JSON."""

    body: bytes
    header_length: int | None

    @property
    def media_type(self) -> str:
        return "application/json" if self.header_length is None else "application/octet-stream"


def decode_infer(
    card: Card,
    body: Body,
    limits: Limits,
    *,
    header_length: str | None = None,
    content_encoding: str | None = None,
    model_name: str | None = None,
) -> InferRequest:
    """Body bytes and the Inference-Header-Content-Length header -> a validated request."""
    if content_encoding is not None and content_encoding.strip().lower() not in ("", "identity"):
        raise MalformedBody(
            f"Content-Encoding {content_encoding!r} is not supported: send the body uncompressed"
        )
    if header_length is None:
        return _decode_json(card, body, len(body), limits, model_name)
    text = header_length.strip()
    if not (text.isascii() and text.isdigit()):  # isdigit alone accepts '²', which int() refuses
        raise MalformedBody(
            f"{HEADER_LENGTH} {header_length!r} is not a number: give the byte length of the JSON "
            "request at the start of the body, or 0 when the whole body is raw tensor data"
        )
    size = int(text)
    if size > len(body):
        raise MalformedBody(
            f"{HEADER_LENGTH} is {size} but the body has only {len(body)} bytes: give the byte "
            "length of the JSON request at the start of the body"
        )
    if size == 0:
        return _decode_raw(card, memoryview(body), limits)
    return _decode_json(card, body, size, limits, model_name)


def _decode_raw(card: Card, data: memoryview, limits: Limits) -> InferRequest:
    """The raw binary form: the body is one FP32 signal; all default outputs come back binary."""
    dtype = INPUT_DATATYPES[RAW_DATATYPE]
    if len(data) == 0:
        raise MalformedBody(
            f"empty body with {HEADER_LENGTH}: 0: send the signal's samples as little-endian "
            "FP32 bytes, or a JSON request"
        )
    if len(data) % dtype.itemsize:
        raise InvalidInput(
            f"a raw binary body must hold whole FP32 values ({dtype.itemsize} bytes each) but has "
            f"{len(data)} bytes: send the signal as little-endian float32 (numpy: "
            "x.astype('<f4').tobytes()), or a JSON request for FP64"
        )
    length = len(data) // dtype.itemsize
    check_counts([length], limits, card.min_length, ("body",))
    signal = np.frombuffer(data, dtype=dtype)
    signals: list[Signal] = [signal]
    check_finite(signals, ("body",))
    return InferRequest(
        id=None,
        signals=signals,
        threshold=card.threshold,
        min_distance=card.min_distance,
        outputs=tuple(RequestedOutput(name, binary=True) for name in DEFAULT_OUTPUTS),
    )


def _decode_json(
    card: Card, body: Body, header_end: int, limits: Limits, model_name: str | None
) -> InferRequest:
    """The JSON request in ``body[:header_end]``; binary tensor data, if any, after it."""
    view = memoryview(body)
    binary = view[header_end:]
    check_json_values(body, header_end, limits, ())
    doc = _plain_request(body, header_end)
    if doc is None:
        doc = _general_request(view[:header_end], len(binary))
        # 2 quotes per string of the parsed request and no more in the text: no name is repeated.
        # (It holds more with a repeated name, an escaped quote or a string in a list of numbers.)
        strings = _strings(doc)
        if count_byte(body, b'"', 2 * strings + 1, header_end) != 2 * strings:
            check_names_once(view[:header_end], ())
    if not isinstance(doc, dict):
        raise MalformedBody(
            f"the inference request must be a JSON object with 'inputs', got {type(doc).__name__}"
        )
    _check_fields(doc, REQUEST_FIELDS, "the inference request")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f"'id' must be a string, got {short_repr(request_id)}")
    for key, expected in (("model_name", model_name), ("model_version", card.version)):
        value = doc.get(key)
        if value is not None and expected is not None and value != expected:
            raise InvalidInput(
                f"'{key}' is {short_repr(value)} but the request is for {expected!r}: "
                f"drop '{key}' or make it match the URL"
            )
    threshold, min_distance, binary_output = _request_parameters(doc.get("parameters"))
    spec = _single_input(doc.get("inputs"))
    outputs = _requested_outputs(doc.get("outputs"), binary_output)
    # Data that can hold only numbers (or null) is converted in one vectorised pass; otherwise
    # JSON booleans among the numbers need a per-value scan, skipped when there can be none.
    data = spec.get("data")
    plain = isinstance(data, np.ndarray) or (  # an array: numbers only (``_plain_request``)
        isinstance(data, list) and only_numbers_in(body, header_end, doc, data)
    )
    may_hold_bools = not plain and (
        body.find(b"true", 0, header_end) >= 0 or body.find(b"false", 0, header_end) >= 0
    )
    signals = _input_signals(spec, binary, limits, card.min_length, may_hold_bools, plain)
    return InferRequest(
        id=request_id,
        signals=signals,
        threshold=card.threshold if threshold is None else threshold,
        min_distance=card.min_distance if min_distance is None else min_distance,
        outputs=outputs,
    )


# What to do about a number beyond float64's range in a request, wherever it is.
BEYOND_FLOAT64_FIX = (
    "in the input's data, rescale the signal; in its shape or binary_data_size, give integers; as "
    "the parameter threshold, a number strictly between 0 and 1; as min_distance, a positive integer"
)


def _general_request(header: memoryview, binary_bytes: int) -> Any:
    """The JSON request parsed by orjson: any valid JSON, every number a Python object."""
    try:
        return orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        if (beyond := beyond_float64(header, exc, BEYOND_FLOAT64_FIX)) is not None:
            raise beyond from None
        hint = (
            f"; with binary tensor data after the JSON, set {HEADER_LENGTH} to the JSON's length"
            if binary_bytes == 0
            else f"; check that {HEADER_LENGTH} is the JSON's length in bytes"
        )
        raise MalformedBody(
            f"the inference request is not valid JSON ({exc}){hint}{json_error_hint(header, exc)}"
        ) from None


class _NotPlain(Exception):
    """A request ``_plain_request`` leaves to the general parser."""


def _plain_request(body: Body, header_end: int) -> dict[str, Any] | None:
    """The JSON request in ``body[:header_end]`` as orjson parses it, but with its one input's
    ``data`` as a float64 array; None for any other request (orjson then parses it, and the
    checks name what is wrong).

    Plain: an object with one input whose ``data`` is a flat list of numbers, and no name
    repeated in any object. simdjson parses it and copies ``data`` straight into a float64
    buffer: no Python float per number (as ``decode_plain_json`` does for ``/v1``). 1×1024
    then decodes in about half the time, 64×1024 in under 40 % (``python -m benchmarks.decode``;
    benchmarks/README.md, "The same for /v2"). The rest of the request (names, shape,
    parameters, outputs) is made of the same Python values orjson gives, so the same checks run
    on it in the same order.
    """
    if body[:3] == UTF8_BOM:  # simdjson skips a byte order mark; JSON (and orjson) does not allow it
        return None
    try:
        doc = simdjson.Parser().parse(memoryview(body)[:header_end])  # a parser per call: thread-safe
        if not isinstance(doc, simdjson.Object):
            return None
        inputs = doc.get("inputs")
        if not isinstance(inputs, simdjson.Array) or len(inputs) != 1:
            return None
        spec = inputs[0]
        if not isinstance(spec, simdjson.Object):
            return None
        data = spec.get("data")
        if not isinstance(data, simdjson.Array):
            return None
        # Raises for a value that is not a number; flattens nested lists (refused below).
        values = np.frombuffer(data.as_buffer(of_type="d"), dtype=np.float64)
        brackets = [2, 0]  # the '[' of 'inputs' and of 'data'; none in strings yet
        request = {
            key: [{k: values if k == "data" else _python(spec[k], brackets) for k in _keys(spec, brackets)}]
            if key == "inputs"
            else _python(doc[key], brackets)
            for key in _keys(doc, brackets)
        }
    except (_NotPlain, ValueError, RuntimeError, TypeError, KeyError, UnicodeDecodeError):
        return None  # RecursionError is a RuntimeError
    # Every '[' of the text is an array of the document or inside a string: none is left for a
    # list nested in 'data'. A string's '[' is in its text too, unless written as an escape.
    if count_byte(body, b"[", brackets[0] + 1, header_end) != brackets[0] or (
        brackets[1] > 0 and body.find(b"\\", 0, header_end) != -1
    ):
        return None
    return request


def _keys(obj: Any, brackets: list[int]) -> list[str]:
    """A simdjson object's names (its values are looked up by name: ``items`` would convert them
    all, ``data`` included). Not plain: a repeated name (orjson keeps its last value; the general
    path refuses it), more than ``MAX_NAMES`` names (a lookup scans the names: the general path
    refuses the unknown ones in linear time). ``brackets`` counts the '[' of the names. A name
    simdjson cannot look up (one holding U+0000) raises KeyError."""
    keys = list(obj.keys())
    if len(keys) > MAX_NAMES or len(set(keys)) != len(keys):
        raise _NotPlain
    _count_in_strings(brackets, sum(key.count("[") for key in keys))
    return keys


def _python(value: Any, brackets: list[int]) -> Any:
    """A simdjson value as the Python value orjson gives; ``brackets`` counts its '[' (arrays,
    and in strings)."""
    if isinstance(value, simdjson.Object):
        return {key: _python(value[key], brackets) for key in _keys(value, brackets)}
    if isinstance(value, simdjson.Array):
        brackets[0] += 1
        return [_python(item, brackets) for item in value]
    if isinstance(value, str):
        _count_in_strings(brackets, value.count("["))
    return value


def _count_in_strings(brackets: list[int], count: int) -> None:
    """``brackets``: [every '[', the '[' in strings]."""
    brackets[0] += count
    brackets[1] += count


def _strings(doc: Any) -> int:
    """The strings of a parsed request: names and string values, but none in a list that starts
    with a number (``data``: checked value by value later)."""
    count = 0
    todo = [doc]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            count += len(node)
            todo.extend(node.values())
        elif isinstance(node, list):
            if node and not isinstance(node[0], int | float):
                todo.extend(node)
        elif isinstance(node, str):
            count += 1
    return count


def _check_fields(obj: dict[str, Any], allowed: set[str], what: str) -> None:
    unknown = set(obj) - allowed
    if unknown:
        raise InvalidInput(f"{what} has unknown field(s) {listed(unknown)}; allowed: {sorted(allowed)}")


def _parameters(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} 'parameters' must be a JSON object, got {type(value).__name__}")
    return value


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"parameter '{name}' must be true or false, got {short_repr(value)}")
    return value


def _request_parameters(value: Any) -> tuple[float | None, int | None, bool]:
    params = _parameters(value, "the request's")
    unknown = set(params) - REQUEST_PARAMETERS - IGNORED_PARAMETERS
    if unknown:
        raise InvalidInput(
            f"unknown request parameter(s) {listed(unknown)}; this model takes {sorted(REQUEST_PARAMETERS)}"
        )
    threshold = params.get("threshold")
    if threshold is not None:
        threshold = check_threshold(threshold, ("parameters", "threshold"))
    min_distance = params.get("min_distance")
    if min_distance is not None:
        min_distance = check_min_distance(min_distance, ("parameters", "min_distance"))
    binary = params.get("binary_data_output")
    return threshold, min_distance, False if binary is None else _flag(binary, "binary_data_output")


def _single_input(value: Any) -> dict[str, Any]:
    if not isinstance(value, list) or not value:
        raise InvalidInput(f"'inputs' must be a list holding one tensor: {INPUT_SHAPE_HINT}")
    names = []
    for i, spec in enumerate(value):
        if not isinstance(spec, dict):
            raise InvalidInput(f"inputs[{i}] must be a JSON object with name, shape, datatype and data")
        name = spec.get("name")
        if name != INPUT:
            raise InvalidInput(
                f"unknown input {short_repr(name)} at inputs[{i}]: "
                f"this model takes one input, {INPUT_SHAPE_HINT}"
            )
        names.append(name)
    if len(names) > 1:
        raise InvalidInput(f"input '{INPUT}' is given {len(names)} times: send it once")
    first: dict[str, Any] = value[0]
    _check_fields(first, INPUT_FIELDS, f"input '{INPUT}'")
    return first


def _requested_outputs(value: Any, binary_default: bool) -> tuple[RequestedOutput, ...]:
    if value is None or value == []:
        return tuple(RequestedOutput(name, binary_default) for name in DEFAULT_OUTPUTS)
    if not isinstance(value, list):
        raise InvalidInput(f"'outputs' must be a list of {{'name': ...}} objects, got {type(value).__name__}")
    out: list[RequestedOutput] = []
    for i, spec in enumerate(value):
        if not isinstance(spec, dict):
            raise InvalidInput(f"outputs[{i}] must be a JSON object with a 'name'")
        name = spec.get("name")
        if not isinstance(name, str) or name not in OUTPUTS:
            raise InvalidInput(
                f"unknown output {short_repr(name)} at outputs[{i}]; this model gives {list(OUTPUTS)}"
            )
        if any(o.name == name for o in out):
            raise InvalidInput(f"output '{name}' is requested twice: request it once")
        _check_fields(spec, OUTPUT_FIELDS, f"output '{name}'")
        params = _parameters(spec.get("parameters"), f"output '{name}'")
        unknown = set(params) - {"binary_data"}
        if unknown:
            raise InvalidInput(
                f"unknown parameter(s) {listed(unknown)} for output '{name}'; the only one is 'binary_data'"
            )
        binary = params.get("binary_data")
        out.append(RequestedOutput(name, binary_default if binary is None else _flag(binary, "binary_data")))
    return tuple(out)


# Several signals of one sample each: one signal's shape given the wrong way round.
TRANSPOSED_SHAPE = "shape [{n}, 1] looks transposed: give [1, {n}] (or [{n}]) for one signal of {n} samples"


def _shape(value: Any, limits: Limits, min_length: int) -> tuple[int, int]:
    """The declared shape -> (rows, length), checked against the limits before any allocation."""
    if (
        not isinstance(value, list)
        or len(value) not in (1, 2)
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)
    ):
        raise InvalidInput(
            f"input '{INPUT}' has shape {short_repr(value)}; give [n, length] for n signals of one length "
            "or [length] for one signal (non-negative integers; no -1 in a request)"
        )
    rows, length = (1, value[0]) if len(value) == 1 else (value[0], value[1])
    loc: tuple[str | int, ...] = ("inputs", 0)
    hint = transposed_hint(rows, TRANSPOSED_SHAPE, min_length, limits) if length == 1 else ""
    check_count(rows, limits, loc, hint)  # before a list of `rows` lengths is built
    check_counts([length] * rows, limits, min_length, loc, TRANSPOSED_SHAPE)
    return rows, length


def _input_signals(
    spec: dict[str, Any],
    binary: memoryview,
    limits: Limits,
    min_length: int,
    may_hold_bools: bool,
    plain: bool = False,
) -> list[Signal]:
    datatype = spec.get("datatype")
    # Any JSON value may come here: a list or an object cannot be looked up in a dict.
    if not isinstance(datatype, str) or datatype not in INPUT_DATATYPES:
        raise InvalidInput(
            f"input '{INPUT}' has datatype {short_repr(datatype)}; send FP32 (the model's type) or FP64"
            + ("" if isinstance(datatype, str) else ', a JSON string: "datatype": "FP32"')
        )
    rows, length = _shape(spec.get("shape"), limits, min_length)
    dtype = INPUT_DATATYPES[datatype]
    params = _parameters(spec.get("parameters"), f"input '{INPUT}'")
    unknown = set(params) - {"binary_data_size"}
    if unknown:
        raise InvalidInput(
            f"unknown parameter(s) {listed(unknown)} for input '{INPUT}'; the only one is "
            "'binary_data_size' (shared memory is not supported)"
        )
    expected = rows * length * dtype.itemsize
    # A null 'data' or binary_data_size is none, as a null 'parameters' or 'outputs' is (clients
    # that write every field of their structures send "data": null with binary data).
    data = spec.get("data")
    size = params.get("binary_data_size")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidInput(
                f"binary_data_size must be a byte count (integer >= 0), got {short_repr(size)}"
            )
        if data is not None:
            raise InvalidInput(f"input '{INPUT}' has both 'data' and binary_data_size: send the data one way")
        if size != expected:
            raise InvalidInput(
                f"input '{INPUT}' declares binary_data_size {size} but shape {spec['shape']} of "
                f"{datatype} needs {expected} bytes ({dtype.itemsize} per value): make them agree"
            )
        if len(binary) != size:
            raise InvalidInput(
                f"the body has {len(binary)} bytes of binary data after the JSON request but the "
                f"inputs declare {size}: check {HEADER_LENGTH} (the JSON's length) and the data"
            )
        arr = np.frombuffer(binary, dtype=dtype).reshape(rows, length)
        signals: list[Signal] = list(arr)
        check_finite(signals, ("inputs", 0))
    else:
        if len(binary):
            raise InvalidInput(
                f"the body has {len(binary)} bytes after the JSON request but no input declares "
                f"binary_data_size: declare it in the input's parameters, or drop {HEADER_LENGTH}"
            )
        if data is None:
            raise InvalidInput(
                f"input '{INPUT}' has no data: give 'data' (numbers, row-major) or "
                "parameters.binary_data_size with the bytes after the JSON"
            )
        signals = _rows_from_data(
            data, spec["shape"], rows, length, limits, min_length, may_hold_bools, plain
        )
    return signals


def _rows_from_data(
    data: Any,
    shape: list[int],
    rows: int,
    length: int,
    limits: Limits,
    min_length: int,
    may_hold_bools: bool,
    plain: bool = False,
) -> list[Signal]:
    """JSON 'data', flat (row-major) or nested as the shape, -> validated float32 rows
    (``plain``: see ``rows_from_json``). An array is flat data parsed by ``_plain_request``.
    ``shape`` as the request declares it (``[length]`` or ``[n, length]``), for the messages."""
    parsed = isinstance(data, np.ndarray)
    if not parsed and not isinstance(data, list):
        raise InvalidInput(
            f"input '{INPUT}' data must be a list of numbers (row-major), got {type(data).__name__}"
        )
    nested = not parsed and bool(data) and isinstance(data[0], list)
    if nested:
        if len(data) != rows or not all(isinstance(r, list) and len(r) == length for r in data):
            raise InvalidInput(
                f"input '{INPUT}' has nested data that is not {rows} rows of {length} values, as its "
                "shape says: make the shape match the data, or send the data flat (row-major)"
            )
        row_lists: list[Any] = data
    else:
        if len(data) != rows * length:
            raise InvalidInput(
                f"input '{INPUT}' has shape {shape} ({rows * length} values) but its data "
                f"holds {len(data)} values: make the shape match the data"
            )
        if parsed:
            return _rows_from_values(data, rows, length)
        # One row is the data itself, not a copy of it.
        row_lists = [data] if rows == 1 else [data[i * length : (i + 1) * length] for i in range(rows)]
    return rows_from_json(
        row_lists, limits, min_length, may_hold_bools=may_hold_bools, plain=plain, loc=DATA_LOC
    )


def _rows_from_values(values: npt.NDArray[np.float64], rows: int, length: int) -> list[Signal]:
    """Flat float64 data of the shape's size -> float32 rows, with ``rows_from_json``'s errors."""
    signals: list[Signal] = []
    for i, row in enumerate(values.reshape(rows, length)):
        arr = float32_holding_gil(row)  # simdjson's numbers are finite: only float32 can overflow
        if arr is None:  # the float32 range rule (signals.FLOAT32_ROUNDS_TO_INF): this raises, naming it
            check_finite([row], DATA_LOC, first=i)
            raise AssertionError("check_finite passed a row whose float32 cast overflows")
        signals.append(arr)
    return signals


# Responses


def encode_infer_many(
    card: Card, requests: Sequence[tuple[InferRequest, list[Float32Array]]]
) -> list[Encoded]:
    """Per-sample curves of requests' signals -> their responses (JSON, maybe binary data after).
    The requests go to one model (one batch, or one request); one ``detections`` pass covers
    the curves of all the requests that share their options."""
    found = detections_per_request(
        [(Options(r.threshold, r.min_distance, r.wants("scores")), curves) for r, curves in requests],
        calibrator=card.calibrator,
    )
    return [_encode(card, request, results) for (request, _), results in zip(requests, found, strict=True)]


def _encode(card: Card, request: InferRequest, results: list[Detection]) -> Encoded:
    outputs: list[dict[str, Any]] = []
    blobs: list[memoryview] = []
    for requested in request.outputs:
        datatype, _ = OUTPUTS[requested.name]
        pieces, shape = _tensor(requested.name, results)
        tensor: dict[str, Any] = {"name": requested.name, "datatype": datatype, "shape": shape}
        if requested.binary:
            views = [p.data.cast("B") for p in pieces]
            tensor["parameters"] = {"binary_data_size": sum(v.nbytes for v in views)}
            blobs.extend(views)
        else:
            tensor["data"] = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        outputs.append(tensor)
    doc: dict[str, Any] = {"model_name": card.name, "model_version": card.version}
    if request.id is not None:
        doc["id"] = request.id
    doc["parameters"] = {"threshold": request.threshold, "min_distance": request.min_distance}
    doc["outputs"] = outputs
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return Encoded(header, None)
    return Encoded(b"".join([header, *blobs]), len(header))


def _tensor(name: str, results: list[Detection]) -> tuple[list[npt.NDArray[Any]], list[int]]:
    """One output as contiguous little-endian arrays (concatenated, they are the tensor) and its shape."""
    n = len(results)
    if name == "probability":
        return [np.array([d.probability for d in results], dtype="<f4")], [n]
    if name == "detected":
        return [np.array([d.detected for d in results], dtype=np.bool_)], [n]
    counts = [len(d.peaks) for d in results]
    k = sum(counts)
    if name == "peak_signal":
        return [np.repeat(np.arange(n, dtype="<i8"), counts)], [k]
    if name == "peak_index":
        return [_joined([d.peaks.index for d in results], "<i8")], [k]
    if name == "peak_probability":
        return [_joined([d.peaks.probability for d in results], "<f4")], [k]
    if name == "scores":
        curves = [np.ascontiguousarray(d.scores, dtype="<f4") for d in results if d.scores is not None]
        return curves, [n, len(curves[0]) if curves else 0]
    raise ValueError(f"unknown output {name!r}")


def _joined(parts: list[npt.NDArray[Any]], dtype: str) -> npt.NDArray[Any]:
    if not parts:
        return np.empty(0, dtype=dtype)
    return np.ascontiguousarray(np.concatenate(parts), dtype=dtype)
