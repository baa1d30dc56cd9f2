"""One detection request, from body bytes to response bytes: decode, validate, detect, encode.

``decode_request`` turns a body into validated signals and options; the model's batcher scores
them; ``respond_many`` turns the scores of a batch's requests into their JSON answers, with
peaks and calibration computed once for all. Nothing here knows about HTTP.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import simdjson

from app.core.card import MAX_MIN_DISTANCE, Card
from app.core.errors import InvalidInput, MalformedBody, UnsupportedMediaType, listed
from app.core.model import Detection, Options, detections_per_request
from app.core.peaks import Peaks
from app.core.signals import (
    FLOAT32_MAX_TEXT,
    TRANSPOSED_ROWS,
    Body,
    Limits,
    Signal,
    check_counts,
    check_json_values,
    parse_npy,
    rows_from_json,
    short_repr,
)
from app.core.windows import Float32Array

JSON_TYPES = ("application/json",)
NPY_TYPES = ("application/x-npy",)
BODY_FIELDS = {"signals", "threshold", "min_distance", "return_scores"}
PLAIN_VALUES = (int, float, bool, type(None))  # the option values the plain path takes
UTF8_BOM = b"\xef\xbb\xbf"
MAX_NAMES = 8  # no object of a valid request (/v1 or /v2) has more names
MAX_SEARCHED = 10_000  # objects and lists of objects a repeated name is searched in; a request has a few
NUMPY_GIL_FREE_ABOVE = 500  # numpy releases the interpreter lock for longer operations


@dataclass(frozen=True, slots=True)
class Params:
    """Per-request options; None means the card's default."""

    threshold: float | None = None
    min_distance: int | None = None
    return_scores: bool | None = None


def media_type(content_type: str | None) -> str:
    """``json`` or ``npy``. A charset parameter is not read: JSON is UTF-8 (RFC 8259 gives the
    parameter no meaning), and a body that is not says so in its 400."""
    base = (content_type or "").split(";", 1)[0].strip().lower()
    if base in JSON_TYPES:
        return "json"
    if base in NPY_TYPES:
        return "npy"
    raise UnsupportedMediaType(
        f"Content-Type {content_type or '(none)'!r} is not supported: send "
        "'application/json' or 'application/x-npy'"
    )


def json_error_hint(body: Body | memoryview, exc: Exception) -> str:
    """What to do about a JSON text orjson refused, for the cases that are not typos."""
    if "UTF-8" in str(exc):
        return "; JSON is UTF-8: send the text as UTF-8 (not compressed, not another charset)"
    # Where the parser stopped (a character offset: the byte offset in ASCII text, a little
    # before it after other characters).
    pos = getattr(exc, "pos", None)
    near = bytes(body[max(0, pos - 1) : pos + 64]) if isinstance(pos, int) else b""
    if b"NaN" in near or b"Infinity" in near:
        return "; NaN and Infinity are not JSON: send finite numbers"
    return ""


# orjson's refusal of a number beyond float64's range (simdjson refuses it too: the plain
# paths leave such a text to orjson, which stops at it and gives its place).
BEYOND_FLOAT64_ERROR = "number is infinity when parsed as double"
_JSON_NUMBER = re.compile(rb"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


# What to do about such a number in a /v1 body: it is a signal's value or an option's.
BEYOND_FLOAT64_FIX = (
    "in a signal, rescale the signal; as an option's value, give one within that option's range"
)


def beyond_float64(
    text: Body | memoryview, exc: orjson.JSONDecodeError, fix: str = BEYOND_FLOAT64_FIX
) -> InvalidInput | None:
    """orjson's refusal ``exc`` of ``text`` as what the client's mistake is when orjson refused a
    number beyond float64's range (``1e400``; JSON sets no limit to numbers): a value beyond
    float32's range, the model's, as ``1e39`` is (422 on /v1, 400 on /v2), not malformed JSON.
    None for any other refusal. The number is found at orjson's position, without parsing the
    text again; the message names it with its line and column and ends with ``fix``, what to
    do wherever in the document it may be (orjson stops before the document says where)."""
    if not str(exc).startswith(BEYOND_FLOAT64_ERROR):
        return None
    # orjson counts characters; they are bytes when all before the number are ASCII (numbers
    # are): a match elsewhere is told apart by not overflowing float64.
    match = _JSON_NUMBER.match(bytes(text[exc.pos : exc.pos + 10_000]))
    number = match.group().decode() if match else ""
    shown = ""
    if number and math.isinf(float(number)):
        shown = f" ({number})" if len(number) <= 40 else f" ({number[:30]}..., {len(number)} characters)"
    return InvalidInput(
        f"the number{shown} at line {exc.lineno} column {exc.colno} is beyond float64's range, and "
        f"so outside float32's (±{FLOAT32_MAX_TEXT}; the model computes in float32): {fix}"
    )


def check_threshold(v: Any, loc: tuple[str | int, ...]) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < 1:
        raise InvalidInput(f"threshold must be a number strictly between 0 and 1, got {short_repr(v)}", loc)
    return float(v)


def check_min_distance(v: Any, loc: tuple[str | int, ...]) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_MIN_DISTANCE:
        raise InvalidInput(
            f"min_distance must be an integer from 1 to {MAX_MIN_DISTANCE}, got {short_repr(v)}"
            + (
                " (an integer this large is read as a float)"
                if isinstance(v, float) and v > MAX_MIN_DISTANCE
                else ""
            ),
            loc,
        )
    return int(v)


def _merge(body_value: Any, query_value: Any, name: str) -> Any:
    if body_value is not None and query_value is not None:
        raise InvalidInput(
            f"{name} is given both in the body and in the query: give it once", ("query", name)
        )
    return body_value if body_value is not None else query_value


def decode_json(body: Body, query: Params, limits: Limits, min_length: int) -> tuple[list[Signal], Params]:
    """A JSON body -> validated signals and options. A plain body (see ``decode_plain_json``)
    takes the fast path; any other takes this general one, which names what is wrong."""
    check_json_values(body, len(body), limits, ("body",))
    fast = decode_plain_json(body, query, limits, min_length)
    if fast is not None:
        return fast
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if (beyond := beyond_float64(body, exc)) is not None:
            raise beyond from None
        raise MalformedBody(f"body is not valid JSON ({exc}){json_error_hint(body, exc)}") from None
    if not isinstance(doc, dict):
        raise InvalidInput(f"body must be a JSON object with 'signals', got {type(doc).__name__}")
    # Every name in the body is a string: 2 quotes each, more with escaped quotes. Exactly 2 per
    # name of the parsed object: no name is repeated and the body holds no other string.
    if count_byte(body, b'"', 2 * len(doc) + 1) != 2 * len(doc):
        check_names_once(body, ("body",))
    params = _body_params(doc, query)
    rows = doc["signals"]
    plain = isinstance(rows, list) and only_numbers_in(body, len(body), doc, rows)
    # Otherwise booleans among the numbers need a per-value scan. A token can only occur where
    # its letters do: one scan for a byte (memchr) is much cheaper than a search for the word,
    # and a body of numbers has no 'u' and no 'f'.
    may_hold_bools = not plain and ((b"u" in body and b"true" in body) or (b"f" in body and b"false" in body))
    signals = rows_from_json(rows, limits, min_length, may_hold_bools=may_hold_bools, plain=plain)
    return signals, params


def _body_params(doc: Mapping[str, Any], query: Params) -> Params:
    """The body's fields checked (names, then options, in this order) and merged with the query's."""
    unknown = set(doc) - BODY_FIELDS
    if unknown:
        raise InvalidInput(f"unknown field(s) {listed(unknown)}; allowed: {sorted(BODY_FIELDS)}", ("body",))
    if "signals" not in doc:
        raise InvalidInput(
            "field 'signals' is required: a list of signals (lists of numbers)",
            ("body", "signals"),
            "missing",
        )
    threshold = doc.get("threshold")
    if threshold is not None:
        threshold = check_threshold(threshold, ("body", "threshold"))
    min_distance = doc.get("min_distance")
    if min_distance is not None:
        min_distance = check_min_distance(min_distance, ("body", "min_distance"))
    return_scores = doc.get("return_scores")
    if return_scores is not None and not isinstance(return_scores, bool):
        raise InvalidInput(
            f"return_scores must be true or false, got {short_repr(return_scores)}", ("body", "return_scores")
        )
    return Params(
        _merge(threshold, query.threshold, "threshold"),
        _merge(min_distance, query.min_distance, "min_distance"),
        _merge(return_scores, query.return_scores, "return_scores"),
    )


def decode_plain_json(
    body: Body, query: Params, limits: Limits, min_length: int
) -> tuple[list[Signal], Params] | None:
    """``decode_json`` of a plain body, or None for any other (the general path then decodes it).

    Plain: an object of distinct names with no string among its values, the options (if any)
    plain values, and ``signals`` a list of lists of numbers that are all finite in float32.
    simdjson parses it and copies each row straight into a float64 buffer: no Python object per
    number, where orjson makes one float each and numpy reads them back. ``decode_json`` of
    1×1024 then takes 21 µs instead of 51, of 64×1024 1.4 ms instead of 3.3
    (benchmarks/README.md, "JSON without a Python float per number"). Both parsers round every
    number correctly: the float32 values are the same (tests/core/test_plain_json.py).

    Errors of the names and options are raised here, by the same checks in the same order as on
    the general path; any other problem returns None, and the general path names it.
    """
    if body[:3] == UTF8_BOM:  # simdjson skips a byte order mark; JSON (and orjson) does not allow it
        return None
    try:
        doc = simdjson.Parser().parse(body)  # a parser per call: thread-safe, keeps no memory
    except (ValueError, RuntimeError, TypeError, UnicodeDecodeError):
        return None
    if not isinstance(doc, simdjson.Object):
        return None
    names = list(doc.keys())
    # 2 quotes per distinct name and none more: no repeated name, no string value. Few names: a
    # simdjson object finds a name's value by a scan of its names.
    if (
        len(names) > len(BODY_FIELDS)
        or len(set(names)) != len(names)
        or count_byte(body, b'"', 2 * len(names) + 1) != 2 * len(names)
    ):
        return None
    try:
        fields: dict[str, Any] = {name: doc[name] for name in names}
    except KeyError:  # a name simdjson cannot look up (one holding U+0000): the general path names it
        return None
    rows = fields.get("signals")
    if not isinstance(rows, simdjson.Array) or not all(
        isinstance(v, PLAIN_VALUES) for name, v in fields.items() if name != "signals"
    ):
        return None
    # No '[' but the list's and one per row: no list nested in a row (the option values are plain,
    # and a name of BODY_FIELDS holds none).
    if count_byte(body, b"[", len(rows) + 2) != len(rows) + 1:
        return None
    params = query if len(fields) == 1 else _body_params(fields, query)  # only 'signals': the query's
    arrays = [row for row in rows if isinstance(row, simdjson.Array)]
    if len(arrays) != len(rows):
        return None
    check_counts([len(row) for row in arrays], limits, min_length, ("body", "signals"), TRANSPOSED_ROWS)
    signals: list[Signal] = []
    for row in arrays:
        try:  # raises for a value that is not a number: null, true, false, an object
            values = np.frombuffer(row.as_buffer(of_type="d"), dtype=np.float64)
        except (TypeError, ValueError, RuntimeError):
            return None
        arr = float32_holding_gil(values)  # simdjson's numbers are finite: only float32 can overflow
        if arr is None:
            return None
        signals.append(arr)
    return signals, params


def float32_holding_gil(values: npt.NDArray[np.float64]) -> Float32Array | None:
    """``values`` as float32, or None if one is beyond the float32 range (it would become inf).

    numpy lets other threads take the interpreter lock during any operation on more than
    NUMPY_GIL_FREE_ABOVE elements. On the event loop each such release hands the lock to an
    inference thread waiting for it, and the loop then waits for its turn. A 1×1024 row cast and
    checked in one piece each (a cast, ``isfinite``, ``all``), with the request id's
    ``os.urandom``, cost one process about a tenth of its requests at concurrency 32
    (benchmarks/README.md, "The event loop keeps the interpreter lock"). So a short row is cast
    in steps that hold the lock, and the cast's own overflow flag replaces the check. A long row
    (decoded in a thread) is cast in one step.
    """
    out = np.empty(values.size, dtype=np.float32)
    step = NUMPY_GIL_FREE_ABOVE if values.size <= 16 * NUMPY_GIL_FREE_ABOVE else values.size
    try:
        with np.errstate(over="raise"):
            for start in range(0, values.size, step):
                out[start : start + step] = values[start : start + step]
    except FloatingPointError:
        return None
    return out


def check_names_once(text: Body | memoryview, loc: tuple[str | int, ...]) -> None:
    """Refuse a JSON text that gives a name twice in one object: JSON leaves its meaning
    undefined and the parsers keep the last value, so a request would silently lose one.

    simdjson keeps every name, decoded (``"sign\\u0061ls"`` is ``signals``). The search visits
    objects and lists of objects only (a list of numbers or of lists holds no name in a valid
    request, which is refused for them anyway), and not the values of an object with more than
    ``MAX_NAMES`` names or the items of a list of more than ``MAX_NAMES`` (refused for their
    unknown names or their count). Each value waiting to be searched holds a link to its
    parent's, not a copy of its path. A valid request has a few such objects and lists: more
    than ``MAX_SEARCHED`` are refused, so the search costs little whatever the text.
    A text simdjson refuses but orjson took (an integer beyond 64 bits) is searched by the
    standard library's parser instead.
    """
    try:
        doc = simdjson.Parser().parse(text)
    except (ValueError, RuntimeError, TypeError, UnicodeDecodeError):
        _check_names_once_slowly(text, loc)
        return
    todo: list[tuple[Any, Any]] = [(None, doc)]  # (link, value); a link: (the parent's link, name or index)
    searched = 0
    while todo:  # without recursion: a document may nest deeply
        link, node = todo.pop()
        searched += 1
        if searched > MAX_SEARCHED:
            raise _too_many_containers(loc)
        if isinstance(node, simdjson.Object):
            names = list(node.keys())
            if (name := _first_repeated(names)) is not None:
                raise _repeated(_path((link, name)), loc)
            if len(names) <= MAX_NAMES:
                with contextlib.suppress(KeyError):  # simdjson cannot look up a name holding U+0000
                    for name in names:
                        value = node[name]  # one lookup: a scan of the object's names
                        if _searched(value):
                            todo.append(((link, name), value))
        elif isinstance(node, simdjson.Array) and len(node) <= MAX_NAMES:
            todo.extend(((link, i), item) for i, item in enumerate(node) if isinstance(item, simdjson.Object))


def _first_repeated(names: Iterable[str]) -> str | None:
    """The first name that occurs a second time, or None."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return None


def _searched(value: Any) -> bool:
    """An object, or a list that starts with one: where a repeated name may hide."""
    return isinstance(value, simdjson.Object) or (
        isinstance(value, simdjson.Array) and len(value) > 0 and isinstance(value[0], simdjson.Object)
    )


def _path(link: Any) -> tuple[str | int, ...]:
    parts: list[str | int] = []
    while link is not None:
        link, part = link
        parts.append(part)
    return tuple(reversed(parts))


def _repeated(path: tuple[str | int, ...], loc: tuple[str | int, ...]) -> InvalidInput:
    where = ".".join(str(part) for part in path)
    return InvalidInput(f"field {where!r} appears more than once: send each field once", (*loc, *path))


def _too_many_containers(loc: tuple[str | int, ...]) -> InvalidInput:
    return InvalidInput(
        f"the JSON holds more than {MAX_SEARCHED} objects (and lists of them): a request has a few",
        loc,
    )


def _check_names_once_slowly(text: Body | memoryview, loc: tuple[str | int, ...]) -> None:
    """``check_names_once`` by the standard library's parser (numbers are not converted); it
    names the repeated field, not the object that holds it."""
    objects = 0

    def once(pairs: list[tuple[str, Any]]) -> None:
        nonlocal objects
        objects += 1
        if objects > MAX_SEARCHED:
            raise _too_many_containers(loc)
        if (name := _first_repeated(name for name, _ in pairs)) is not None:
            raise _repeated((name,), loc)

    try:
        json.loads(bytes(text), object_pairs_hook=once, parse_int=lambda _: 0, parse_float=lambda _: 0)
    except (ValueError, RecursionError):  # not JSON (orjson names it), or nested too deep to check
        return


def count_byte(body: Body, byte: bytes, most: int, end: int | None = None) -> int:
    """How many times ``byte`` occurs in ``body[:end]``, counting no further than ``most``. Each
    step is a ``find`` (memchr, vectorised): a body of numbers is scanned past the few quotes of
    its keys in about 1 µs where ``count`` took 5.6 µs for a 20 kB body."""
    stop = len(body) if end is None else end
    n, i = 0, body.find(byte, 0, stop)
    while i != -1 and n < most:
        n += 1
        i = body.find(byte, i + 1, stop)
    return n


def only_numbers_in(body: Body, end: int, doc: Any, data: list[Any]) -> bool:
    """True if ``data``, a list in ``doc`` (parsed from ``body[:end]``), can hold nothing but
    numbers and null: no string and no ``true`` or ``false`` among its values. Then its rows are
    converted in one vectorised pass (a null becomes NaN and goes to the per-value check).

    Shown by counting bytes of the text against the parsed document outside ``data``. With no
    backslash in the text no string holds an escape, so each string's text is its value: two
    '"' per string, and a 't' ('f') only in strings and ``true`` (``false``) tokens; numbers
    and null hold neither. Equal counts leave none for ``data``. Any other text, escapes
    included, answers False (the per-value path then checks every value)."""
    if body.find(b"\\", 0, end) != -1:
        return False
    strings = ts = fs = 0
    todo: list[Any] = [doc]
    while todo:  # without recursion: a document may nest deeply
        node = todo.pop()
        if node is data:
            continue
        if isinstance(node, dict):
            todo.extend(node)  # the keys: strings
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
        elif isinstance(node, str):
            strings += 1
            ts += node.count("t")
            fs += node.count("f")
        elif node is True:
            ts += 1
        elif node is False:
            fs += 1
    return (
        count_byte(body, b'"', 2 * strings + 1, end) == 2 * strings
        and count_byte(body, b"t", ts + 1, end) == ts
        and count_byte(body, b"f", fs + 1, end) == fs
    )


@dataclass(frozen=True, slots=True)
class Decoded:
    """A validated request: its signals and the options with the card's defaults filled in."""

    signals: list[Signal]
    threshold: float
    min_distance: int
    return_scores: bool

    @property
    def samples(self) -> int:
        return sum(s.size for s in self.signals)


def decode_request(
    card: Card, content_type: str | None, body: Body, query: Params, limits: Limits
) -> Decoded:
    """Body bytes -> validated signals and options (JSON or .npy)."""
    kind = media_type(content_type)
    if kind == "json":
        signals, params = decode_json(body, query, limits, card.min_length)
    else:
        if not body:
            raise MalformedBody("empty body: send a .npy file (np.save) as the body")
        signals, params = parse_npy(body, limits, card.min_length), query
    return Decoded(
        signals=signals,
        threshold=card.threshold if params.threshold is None else params.threshold,
        min_distance=card.min_distance if params.min_distance is None else params.min_distance,
        return_scores=bool(params.return_scores),
    )


def respond_many(card: Card, requests: Sequence[tuple[Decoded, list[Float32Array]]]) -> list[bytes]:
    """Per-sample curves of requests' signals -> their JSON response bodies. The requests go to
    one model (one batch, or one request); one ``detections`` pass covers the curves of all the
    requests that share their options."""
    found = detections_per_request(
        [(Options(r.threshold, r.min_distance, r.return_scores), curves) for r, curves in requests],
        calibrator=card.calibrator,
    )
    return [_answer(card, request, results) for (request, _), results in zip(requests, found, strict=True)]


def _answer(card: Card, request: Decoded, results: list[Detection]) -> bytes:
    out = []
    for d in results:
        item: dict[str, Any] = {
            "probability": d.probability,
            "detected": d.detected,
            "peaks": _peaks(d.peaks),
        }
        if d.scores is not None:
            item["scores"] = d.scores
        out.append(item)
    doc = {
        "model": {"name": card.name, "version": card.version},
        "threshold": request.threshold,
        "min_distance": request.min_distance,
        "results": out,
    }
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


# A signal's peaks are written this many at a time: an object per peak is made for these only.
PEAKS_PER_PART = 4096


def _peaks(peaks: Peaks) -> list[dict[str, Any]] | orjson.Fragment:
    """A signal's peaks as the answer's list of ``{"index", "probability"}`` objects.

    A peak's probability is a float32 (numpy's, which orjson writes as its shortest float32
    decimal): written as the same number as its sample in "scores" and as /v2's FP32
    peak_probability, not as the longer float64 decimal of that value. Many peaks (a low
    threshold on a long signal: millions) are written part by part, so the objects of one part
    only are held at once, not about 300 bytes of Python objects per peak.
    """
    if len(peaks) <= PEAKS_PER_PART:
        return _peak_objects(peaks.index, peaks.probability)
    text = [b"["]
    for lo in range(0, len(peaks), PEAKS_PER_PART):
        part = slice(lo, lo + PEAKS_PER_PART)
        objects = _peak_objects(peaks.index[part], peaks.probability[part])
        text += (orjson.dumps(objects, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1], b",")  # without brackets
    text[-1] = b"]"
    return orjson.Fragment(b"".join(text))


def _peak_objects(index: npt.NDArray[np.int64], probability: Float32Array) -> list[dict[str, Any]]:
    return [{"index": i, "probability": p} for i, p in zip(index.tolist(), probability, strict=True)]
