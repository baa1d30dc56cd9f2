"""Incoming signals: decoding (JSON rows, .npy) and validation, with messages that tell the fix.

Everything here runs before any large allocation: sizes are checked against the limits from
the headers (.npy) or the parsed structure (JSON) first.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from app.core.errors import InvalidInput, MalformedBody

Signal = npt.NDArray[np.float64] | npt.NDArray[np.float32]
Body = bytes | bytearray
NPY_MAGIC = b"\x93NUMPY"
# The header np.save writes for a 1-D or 2-D array of a plain number type, read without
# ast.literal_eval (a quarter of the decoding time of a small body); any other header takes
# the general path.
_NPY_HEADER = re.compile(
    r"\{'descr': '(?P<descr>[<>|=]?[fiu][1248])', 'fortran_order': (?P<fortran>True|False), "
    r"'shape': \((?P<rows>[0-9]{1,18}),(?: (?P<length>[0-9]{1,18}))?\), \} *\n?"
)


@dataclass(frozen=True, slots=True)
class Limits:
    max_signals: int
    max_samples: int  # per request
    max_signal_length: int


# Commas a JSON request within the limits may hold beyond those between its numbers and rows:
# between names and options, in a shape, the protocol's fields, a /v2 request's free-text id.
COMMA_SLACK = 65536


def check_json_values(text: Body, end: int, limits: Limits, loc: tuple[str | int, ...]) -> None:
    """Refuse, before it is parsed, a JSON text (``text[:end]``) with more values than a request
    may hold.

    Parsing costs memory per value, not per byte: simdjson about 24 bytes per number (its tape
    entry and structural index), 13 bytes per byte of a text of numbers as short as ``0,``;
    orjson more (a Python float each). A request within the limits holds at most
    ``max_samples`` numbers in ``max_signals`` rows, so at most that many commas plus
    ``COMMA_SLACK``; a text with more is refused unparsed, and a refused request costs no more
    memory than one the limits allow. Only a text at least twice that long can hold so many
    commas: a shorter one is not scanned."""
    most = limits.max_samples + limits.max_signals + COMMA_SLACK
    if end <= 2 * most:
        return
    commas = text.count(b",", 0, end)  # one pass in C (pipeline.count_byte steps per occurrence)
    if commas > most:
        raise InvalidInput(
            f"the body has {commas} commas: more values than a request may hold (at most "
            f"{limits.max_samples} samples in {limits.max_signals} signals); split them over "
            "several requests",
            loc,
        )


# What to send instead of several signals of one sample each, one signal sent as a column
# (``x.reshape(-1, 1)``); {n}: the number of signals.
TRANSPOSED_ROWS = (
    "the list looks transposed (one inner list per sample, as np.array(x).reshape(-1, 1).tolist() "
    "gives): send each signal as one inner list of its samples, [[x0, x1, ...]]"
)
TRANSPOSED_NPY = (
    "the array, shape ({n}, 1), looks transposed: send one signal as a 1-D array (x.ravel()), "
    "several as shape (signals, samples)"
)


def transposed_hint(count: int, transposed: str, min_length: int, limits: Limits) -> str:
    """Said of ``count`` signals of one sample each when there are several: ``transposed``
    (``TRANSPOSED_ROWS``, ``TRANSPOSED_NPY``) with the count; nothing for one signal. If one
    signal of ``count`` samples would be refused too, too short for the model or too long for
    the limit, the hint says so: following it alone would only get that second refusal."""
    if not transposed or count < 2:
        return ""
    hint = f"; all {count} signals have one sample each: {transposed.format(n=count)}"
    if count < min_length:
        hint += (
            f"; sent so, the signal's {count} samples are still too few: this model needs at "
            f"least {min_length}"
        )
    elif count > limits.max_signal_length:
        hint += (
            f"; sent so, the signal's {count} samples are still too many: the limit is "
            f"{limits.max_signal_length}, cut it into shorter signals"
        )
    return hint


def check_count(count: int, limits: Limits, loc: tuple[str | int, ...], hint: str = "") -> None:
    """The number of signals against the limit (before a list of that many lengths is built);
    ``hint`` (``transposed_hint``) says what to send instead of splitting them."""
    if count == 0:
        raise InvalidInput("no signals: send at least one signal", loc)
    if count > limits.max_signals:
        raise InvalidInput(
            f"{count} signals in one request; the limit is {limits.max_signals}"
            + (hint or ": split them over several requests"),
            loc,
        )


def check_counts(
    lengths: list[int], limits: Limits, min_length: int, loc: tuple[str | int, ...], transposed: str = ""
) -> None:
    """Number of signals, each length, and the total, against the limits and the model. With
    several signals of one sample each, a refusal says ``transposed`` (``transposed_hint``)."""
    # A request of such signals is always refused (a model needs more than one sample); any
    # other is told at its first length.
    one_each = bool(transposed) and len(lengths) > 1 and lengths[0] == 1 and all(n == 1 for n in lengths)
    hint = transposed_hint(len(lengths), transposed, min_length, limits) if one_each else ""
    check_count(len(lengths), limits, loc, hint)
    for i, n in enumerate(lengths):
        where = (*loc, i)
        if n == 0:
            raise InvalidInput(f"signal {i} is empty: send at least {min_length} samples", where)
        if n < min_length:
            raise InvalidInput(
                f"signal {i} has {n} samples; this model needs at least {min_length}{hint}", where
            )
        if n > limits.max_signal_length:
            raise InvalidInput(
                f"signal {i} has {n} samples; the limit is {limits.max_signal_length}: "
                "cut it into shorter signals",
                where,
            )
    total = sum(lengths)
    if total > limits.max_samples:
        raise InvalidInput(
            f"{total} samples in one request; the limit is {limits.max_samples}: "
            "send fewer or shorter signals per request",
            loc,
        )


FLOAT32_MAX = float(np.finfo(np.float32).max)  # 3.4028234663852886e+38; as float32, 3.4028235e+38
# One float32 range for every body and path (the model computes in float32): a value is taken if
# and only if its float32 cast is finite. The cast rounds to nearest, so a value less than half a
# step (2**103) above FLOAT32_MAX becomes FLOAT32_MAX (3.4028235e38, float32's maximum as numpy
# prints it, among them); from half a step above (the tie rounds to even, 2**128) it becomes inf.
# What casts (JSON rows, ``pipeline.float32_holding_gil``) applies the rule as the cast's result;
# float64 arrays compare with FLOAT32_ROUNDS_TO_INF, the least float64 whose cast is inf: one
# comparison per value.
FLOAT32_ROUNDS_TO_INF = FLOAT32_MAX + 2.0**103  # 2**128 - 2**103 = 3.4028235677973366e+38, exact
FLOAT32_MAX_TEXT = str(np.finfo(np.float32).max)
FLOAT64_MAX = float(np.finfo(np.float64).max)


def finite_in_float32(values: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    """Finite in float32, elementwise: the float32 range rule above (training's data checks
    apply it too)."""
    # One pass: NaN fails the comparison too. float16/float32 values are always in range.
    ok: npt.NDArray[np.bool_] = (
        np.isfinite(values) if values.dtype.itemsize <= 4 else np.abs(values) < FLOAT32_ROUNDS_TO_INF
    )
    return ok


def _unusable(i: int, s: Signal, j: int, loc: tuple[str | int, ...]) -> InvalidInput:
    if np.isfinite(s[j]):
        why = (
            f"is outside the float32 range (±{FLOAT32_MAX_TEXT}; in float32 it would be infinite): "
            "rescale the signal"
        )
    else:
        why = "is not finite: send finite numbers only (no NaN or Infinity)"
    return InvalidInput(f"signal {i} has a value ({_shown(s[j])}) at index {j} that {why}", (*loc, i, j))


def _shown(value: np.floating[Any]) -> str:
    """A value for a message, as a Python float prints it (an f-string makes one of a numpy
    float), or, for a longdouble beyond float64's range, as numpy prints it (its float is inf)."""
    return str(value) if isinstance(value, np.longdouble) and abs(value) > FLOAT64_MAX else f"{value}"


def check_finite(signals: list[Signal], loc: tuple[str | int, ...], first: int = 0) -> None:
    """Every value finite and within float32 range (the model computes in float32); signals
    are numbered from ``first`` in the message."""
    for i, s in enumerate(signals, start=first):
        ok = finite_in_float32(s)
        if not ok.all():
            raise _unusable(i, s, int(np.flatnonzero(~ok)[0]), loc)


def check_finite_rows(rows: npt.NDArray[np.floating], loc: tuple[str | int, ...]) -> None:
    """``check_finite`` for the rows of one 2-D array, in one vectorised pass (same message)."""
    ok = finite_in_float32(rows)
    if not ok.all():
        i, j = (int(k) for k in np.argwhere(~ok)[0])  # the first row with a bad value, its first one
        raise _unusable(i, rows[i], j, loc)


def rows_from_json(
    signals: Any,
    limits: Limits,
    min_length: int,
    *,
    may_hold_bools: bool = True,
    plain: bool = False,
    loc: tuple[str | int, ...] = ("body", "signals"),
) -> list[Signal]:
    """``signals`` from a parsed JSON body -> float32 arrays (what the model computes in), validated.

    ``plain=True``: the caller knows the parsed document holds no strings or booleans: each
    row is then converted in one vectorised pass (a null becomes NaN and fails it). Otherwise,
    or if that pass fails, each value is checked and the first bad one named.
    ``may_hold_bools=False`` (the body has no ``true``/``false`` token) skips the per-value
    scan that tells JSON booleans from numbers. ``loc``: where the signals are in the request.
    """
    if not isinstance(signals, list):
        raise InvalidInput(f"'signals' must be a list of lists of numbers, got {type(signals).__name__}", loc)
    for i, row in enumerate(signals):
        if not isinstance(row, list):
            raise InvalidInput(f"signal {i} must be a list of numbers, got {type(row).__name__}", (*loc, i))
        if row and isinstance(row[0], list):  # said before its length, which counts lists
            raise InvalidInput(
                f"signal {i} is a list of lists: each signal is one flat list of numbers "
                "(send [[...], [...]] for several signals, not [[[...]]])",
                (*loc, i),
            )
    check_counts([len(r) for r in signals], limits, min_length, loc, TRANSPOSED_ROWS)
    out: list[Signal] = []
    for i, row in enumerate(signals):
        arr = _plain_row(row) if plain else None
        if arr is None:
            exact = _exact_row(i, row, loc, may_hold_bools)
            check_finite([exact], loc, first=i)
            arr = exact.astype(np.float32)
        out.append(arr)
    return out


def _plain_row(row: list[Any]) -> npt.NDArray[np.float32] | None:
    """A row of JSON numbers as float32 in one pass; None if it is not one (the caller then
    finds the bad value): nested lists, null (cast to NaN), or a value beyond the float32
    range (cast to inf)."""
    try:
        with np.errstate(all="ignore"):
            arr = np.array(row, dtype=np.float32)
    except (ValueError, TypeError, OverflowError):
        return None
    if arr.ndim != 1 or not np.isfinite(arr).all():
        return None
    return arr


def _exact_row(i: int, row: list[Any], loc: tuple[str | int, ...], may_hold_bools: bool) -> Signal:
    """One row checked value by value -> float64; raises naming the first non-number."""
    arr: Any = None
    try:
        arr = np.array(row)
        if arr.dtype.kind == "O" and not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in row
        ):
            arr = None  # None, nested lists or other objects among the numbers
        elif arr.dtype.kind in "iuO":
            arr = arr.astype(np.float64)
    except (ValueError, TypeError, OverflowError):
        arr = None
    if (
        arr is None
        or arr.ndim != 1
        or arr.dtype.kind != "f"
        or (may_hold_bools and any(v is True or v is False for v in row))
    ):
        j, v = next(
            ((j, v) for j, v in enumerate(row) if isinstance(v, bool) or not isinstance(v, int | float)),
            (0, row[0]),
        )
        raise InvalidInput(
            f"signal {i} has a non-numeric value ({short_repr(v)}) at index {j}: send numbers only",
            (*loc, i, j),
            "float_type",
        )
    exact: Signal = arr.astype(np.float64, copy=False)
    return exact


def short_repr(v: Any) -> str:
    """``repr(v)`` cut to 40 characters, for a message (any value a client may send)."""
    try:
        text = repr(v)
    except (ValueError, RecursionError):  # an integer of more than 4300 digits, a deep nesting
        return f"a {type(v).__name__} too large to show"
    return text if len(text) <= 40 else text[:37] + "..."


# A dimension NumPy can hold (intp) has at most 19 digits. Longer numbers are refused before
# ast.literal_eval parses them: beyond 4300 digits Python refuses to (int_max_str_digits).
MAX_DIMENSION = 2**63 - 1
_DIMENSION_DIGITS = len(str(MAX_DIMENSION))
_LONG_NUMBER = re.compile(f"[0-9](?:_?[0-9]){{{_DIMENSION_DIGITS}}}")  # Python allows 1_000
_HEADER_KEYS = ("descr", "fortran_order", "shape")
_EXAMPLE_HEADER = "{'descr': '<f4', 'fortran_order': False, 'shape': (64,)}"


def _bad_header(why: str) -> MalformedBody:
    return MalformedBody(f".npy header cannot be read: {why}: send np.save output")


def _npy_header(text: str) -> tuple[np.dtype[Any], bool, tuple[int, ...]]:
    """A .npy header's dtype, Fortran order and shape; raises MalformedBody saying what is wrong.

    np.save's own header is read with a regular expression; any other with ast.literal_eval
    (literals only: nothing is called or imported), after numbers too long for a dimension are
    refused; its keys, shape and Fortran order are then checked as numpy checks them (exactly
    'descr', 'fortran_order' and 'shape': np.load refuses a header with a key missing or one
    more), and 'descr' is whatever ``np.dtype`` makes of it.
    """
    if standard := _NPY_HEADER.fullmatch(text):  # np.save's own header: no parser needed
        shape = tuple(int(n) for n in (standard["rows"], standard["length"]) if n is not None)
        return _npy_dtype(standard["descr"]), standard["fortran"] == "True", shape
    if _LONG_NUMBER.search(text):
        raise _bad_header(
            f"a number in it has more than {_DIMENSION_DIGITS} digits; a dimension is at most 2**63 - 1"
        )
    try:
        header = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise _bad_header(f"it is not a Python literal like {_EXAMPLE_HEADER}") from None
    if not isinstance(header, dict):
        raise _bad_header(f"it is a {type(header).__name__}, not a dict like {_EXAMPLE_HEADER}")
    if header.keys() != set(_HEADER_KEYS):  # as np.load compares them
        raise _bad_header(_wrong_keys(header))
    shape, fortran = header["shape"], header["fortran_order"]
    # bool is an int in Python, and np.reshape refuses it: (True, 64) is not a shape.
    if not (isinstance(shape, tuple) and all(type(n) is int for n in shape)):
        raise _bad_header(f"'shape' must be a tuple of non-negative integers, got {short_repr(shape)}")
    if any(n > MAX_DIMENSION for n in shape):  # a hexadecimal literal: not printed, it may be huge
        raise _bad_header("'shape' has a dimension above 2**63 - 1, the most NumPy allows")
    if any(n < 0 for n in shape):
        raise _bad_header(f"'shape' must be a tuple of non-negative integers, got {short_repr(shape)}")
    if not isinstance(fortran, bool):  # numpy refuses any other value too
        raise _bad_header(f"'fortran_order' must be True or False, got {short_repr(fortran)}")
    return _npy_dtype(header["descr"]), fortran, shape


def _wrong_keys(header: dict[Any, Any]) -> str:
    """What is wrong with the keys of a header dict, and what is right (as np.load reads it)."""
    missing = [key for key in _HEADER_KEYS if key not in header]
    extra = [key for key in header if key not in _HEADER_KEYS]
    wrong = []
    if missing:
        wrong.append(f"lacks {' and '.join(map(repr, missing))}")
    if extra:  # any number of keys of any literal type: the first three shown, cut short
        names = [short_repr(key) for key in extra[:3]] + (
            [f"{len(extra) - 3} more"] if len(extra) > 3 else []
        )
        last = names.pop()
        wrong.append(f"has {', '.join(names)} and {last}" if names else f"has {last}")
    return (
        f"it {' and '.join(wrong)}: a header has exactly the keys 'descr', 'fortran_order' and "
        f"'shape' (np.load refuses any other), as in {_EXAMPLE_HEADER}"
    )


def _npy_dtype(descr: Any) -> np.dtype[Any]:
    try:
        dtype: np.dtype[Any] = np.dtype(descr)
    except (TypeError, ValueError, OverflowError, MemoryError):
        raise _bad_header(f"'descr' {short_repr(descr)} is not a NumPy dtype (float32 is '<f4')") from None
    return dtype


def parse_npy(body: Body, limits: Limits, min_length: int) -> list[Signal]:
    """A NumPy .npy body (1-D: one signal; 2-D: several of one length) without pickle.

    The header is parsed and checked against the limits and the body's actual size before
    any array is allocated; the data is then viewed, not copied (integers: copied as floats).
    """
    loc: tuple[str | int, ...] = ("body",)
    if not body.startswith(NPY_MAGIC) or len(body) < 10:
        raise MalformedBody("body is not a .npy file (no \\x93NUMPY magic): send np.save output")
    major = body[6]
    if major == 1:
        header_len = int.from_bytes(body[8:10], "little")
        start = 10
    elif major in (2, 3):
        if len(body) < 12:
            raise MalformedBody(".npy header is truncated")
        header_len = int.from_bytes(body[8:12], "little")
        start = 12
    else:
        raise MalformedBody(f".npy format version {major} is not supported (use 1, 2 or 3)")
    if header_len > 65536 or start + header_len > len(body):
        raise MalformedBody(".npy header is truncated or too long")
    raw = body[start : start + header_len]
    try:  # version 3 is version 2 with its header in UTF-8 (np.save writes it for non-Latin-1 names)
        text = raw.decode("utf-8" if major == 3 else "latin1")
    except UnicodeDecodeError as exc:
        raise _bad_header(
            f"a version 3 header is UTF-8, and this one is not ({exc.reason} at byte {exc.start})"
        ) from None
    dtype, fortran, shape = _npy_header(text)
    if dtype.hasobject or dtype.kind not in "iuf" or dtype.names is not None or dtype.subdtype:
        raise InvalidInput(
            f".npy array has dtype {dtype}; send an array of floats or integers, such as float32 "
            "(no objects, no pickle)",
            loc,
            "dtype",
        )
    if len(shape) not in (1, 2):
        raise InvalidInput(
            f".npy array has {len(shape)} dimensions, shape {short_repr(shape)}; send 1-D (one "
            "signal) or 2-D (signals x samples)",
            loc,
        )
    rows, length = (1, shape[0]) if len(shape) == 1 else shape
    check_count(
        rows, limits, loc, transposed_hint(rows, TRANSPOSED_NPY, min_length, limits) if length == 1 else ""
    )
    check_counts([length] * rows, limits, min_length, loc, TRANSPOSED_NPY)
    data = memoryview(body)[start + header_len :]
    expected = rows * length * dtype.itemsize
    if len(data) != expected:
        raise MalformedBody(
            f".npy data has {len(data)} bytes but its header says {shape} of {dtype} "
            f"({expected} bytes): the file is truncated or has trailing data"
        )
    arr = np.frombuffer(data, dtype=dtype)
    arr = arr.reshape((rows, length), order="F" if fortran and len(shape) == 2 else "C")
    if dtype.kind != "f":
        # Integers are copied as floats: up to 32 bits as float32, one rounding as float64 then
        # float32 gives (half float64's memory: 4 bytes per sample, 8 for an int8 body's 1);
        # 64-bit ones as float64, as JSON integers are read, so both encodings agree.
        arr = arr.astype(np.float32 if dtype.itemsize <= 4 else np.float64)  # finite, as float32 too
    else:
        check_finite_rows(arr, loc)
    out: list[Signal] = list(arr)
    return out
