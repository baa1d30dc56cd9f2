"""Property tests (Hypothesis): signal validation, windowed inference, peak picking.

Derandomized and bounded (max_examples per test), so every run checks the same cases.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any
from unittest.mock import patch

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from app.core import peaks as peaks_module
from app.core.card import Card, load_card
from app.core.errors import DetectorError, InvalidInput, MalformedBody
from app.core.model import InferenceOptions, OnnxModel
from app.core.peaks import find_peaks, find_peaks_many
from app.core.pipeline import Params, decode_request
from app.core.signals import FLOAT32_MAX, Limits, parse_npy, rows_from_json
from app.core.windows import WindowPlan

LIMITS = Limits(max_signals=8, max_samples=4000, max_signal_length=1000)
MIN_LENGTH = 16
FAST = settings(max_examples=150, deadline=None, derandomize=True, database=None)
MODEL = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Signal validation

finite = st.floats(min_value=-FLOAT32_MAX, max_value=FLOAT32_MAX, allow_nan=False, allow_infinity=False)
numbers = st.one_of(finite, st.integers(min_value=-(2**53), max_value=2**53))
valid_rows = st.lists(
    st.lists(numbers, min_size=MIN_LENGTH, max_size=200), min_size=1, max_size=LIMITS.max_signals
)
json_values = st.recursive(
    # JSON numbers: orjson writes 64-bit integers and floats (NaN and Infinity become null).
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=40) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=400,
)


@FAST
@given(valid_rows)
def test_valid_json_rows_are_kept_exactly(rows: list[list[float]]) -> None:
    # Both paths: the one vectorised pass for a document of numbers only, and the per-value one.
    for plain in (True, False):
        out = rows_from_json(rows, LIMITS, MIN_LENGTH, may_hold_bools=False, plain=plain)
        assert len(out) == len(rows)
        for arr, row in zip(out, rows, strict=True):
            # float32, the model's type: each value rounded once, as the model's input would be.
            assert arr.dtype == np.float32 and arr.shape == (len(row),)
            np.testing.assert_array_equal(arr, np.array(row, dtype=np.float64).astype(np.float32))


def accepted_or_refused_with_422(value: Any) -> None:
    try:
        out = rows_from_json(value, LIMITS, MIN_LENGTH)
    except InvalidInput as exc:
        assert exc.detail and exc.loc[:2] == ("body", "signals")
        return
    assert 1 <= len(out) <= LIMITS.max_signals
    for arr in out:
        assert arr.ndim == 1 and MIN_LENGTH <= arr.size <= LIMITS.max_signal_length
        assert np.all(np.abs(arr) <= FLOAT32_MAX)


@FAST
@given(json_values)
def test_any_json_signals_value_is_accepted_or_refused_with_422(value: Any) -> None:
    accepted_or_refused_with_422(value)


@FAST
@given(
    st.recursive(st.integers() | st.floats() | st.none() | st.booleans(), lambda c: st.lists(c, max_size=40))
)
def test_any_python_signals_value_is_accepted_or_refused_with_422(value: Any) -> None:
    """Also integers beyond any float (10**400) and NaN/Infinity, which a JSON parser never gives."""
    accepted_or_refused_with_422(value)


@pytest.fixture(scope="module")
def card(tiny_model_dir: Path) -> Card:
    return load_card(tiny_model_dir)


@MODEL
@given(json_values, st.sampled_from(["application/json", "application/x-npy", "text/plain", None]))
def test_any_body_is_decoded_or_refused_with_a_client_error(
    card: Card, value: Any, content_type: str | None
) -> None:
    body = orjson.dumps(
        {"signals": value} if not isinstance(value, dict) else value, option=orjson.OPT_NON_STR_KEYS
    )
    try:
        decode_request(card, content_type, body, Params(), LIMITS)
    except DetectorError as exc:
        assert 400 <= exc.status < 500 and exc.detail


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


# float16 inputs: see test_hostile.py::test_float16_npy_with_infinity_is_refused.
npy_dtypes = st.sampled_from(["<f4", ">f4", "<f8", ">f8", "<i2", "<i4", ">i8", "|u1", "<u4"])


@FAST
@given(
    npy_dtypes.flatmap(
        lambda dt: hnp.arrays(
            np.dtype(dt),
            st.one_of(
                st.integers(MIN_LENGTH, 300).map(lambda n: (n,)),
                st.tuples(st.integers(1, LIMITS.max_signals), st.integers(MIN_LENGTH, 300)),
            ),
            elements=(
                st.floats(-FLOAT32_MAX, FLOAT32_MAX, width=8 * np.dtype(dt).itemsize)
                if np.dtype(dt).kind == "f"
                else None
            ),
        )
    ),
    st.booleans(),
)
def test_valid_npy_round_trips(arr: np.ndarray, fortran: bool) -> None:
    if fortran:
        arr = np.asfortranarray(arr)
    out = parse_npy(npy_bytes(arr), LIMITS, MIN_LENGTH)
    rows = arr.reshape(1, -1) if arr.ndim == 1 else arr
    assert len(out) == rows.shape[0]
    for got, want in zip(out, rows, strict=True):
        assert got.dtype.kind == "f"
        if want.dtype.kind == "f":  # floats are viewed: exactly the values sent
            np.testing.assert_array_equal(got, want.astype(np.float64))
        # What the model gets (windows are cast to float32): the values read as float64, as
        # JSON's are, then cast once more (integers up to 32 bits are decoded as float32).
        np.testing.assert_array_equal(got.astype(np.float32), want.astype(np.float64).astype(np.float32))


@FAST
@given(
    st.binary(max_size=300),
    st.sampled_from([b"\x93NUMPY\x01\x00", b"\x93NUMPY\x02\x00", b"\x93NUMPY\x03\x00", b""]),
)
def test_any_npy_bytes_are_parsed_or_refused(tail: bytes, head: bytes) -> None:
    try:
        parse_npy(head + tail, LIMITS, MIN_LENGTH)
    except (MalformedBody, InvalidInput) as exc:
        assert exc.detail


@FAST
@given(
    st.dictionaries(
        st.sampled_from(["descr", "fortran_order", "shape", "other"]),
        st.one_of(
            st.sampled_from(["<f8", "<f4", "|O", "<c8", "<U3", "V8", "<f2x", "", "<i8"]),
            st.booleans(),
            st.lists(st.integers(-3, 2**63) | st.booleans(), max_size=3).map(tuple),
            st.integers(),
        ),
    ),
    st.binary(max_size=64),
)
def test_any_npy_header_is_parsed_or_refused(header: dict[str, Any], data: bytes) -> None:
    text = repr(header).encode("latin1")
    body = b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + data
    try:
        parse_npy(body, LIMITS, MIN_LENGTH)
    except (MalformedBody, InvalidInput) as exc:
        # What is wrong, not the name of an exception met while reading it.
        assert exc.detail and not exc.detail.rstrip(")").endswith("Error")


# Windowing: windowed inference equals whole-signal inference, whatever the lengths, window and
# batch size, and whatever the other signals in the call.


@pytest.fixture(scope="module")
def models(tiny_model_dir: Path, tiny_strided_model_dir: Path) -> dict[str, OnnxModel]:
    return {
        "plain": OnnxModel(tiny_model_dir, InferenceOptions(window=1 << 20)),
        "strided": OnnxModel(tiny_strided_model_dir, InferenceOptions(window=1 << 20)),
    }


@MODEL
@given(
    kind=st.sampled_from(["plain", "strided"]),
    lengths=st.lists(st.integers(MIN_LENGTH, 3000), min_size=1, max_size=4),
    extra_window=st.integers(0, 1500),
    max_batch=st.integers(1, 8000),
    seed=st.integers(0, 2**32 - 1),
)
def test_windowed_equals_whole(
    models: dict[str, OnnxModel], kind: str, lengths: list[int], extra_window: int, max_batch: int, seed: int
) -> None:
    whole = models[kind]
    card = whole.card
    margin = WindowPlan.for_model(1 << 20, card.receptive_radius, card.alignment).margin
    plan = WindowPlan.for_model(4 * margin + extra_window, card.receptive_radius, card.alignment)
    rng = np.random.default_rng(seed)
    signals = [
        (rng.standard_normal(n) * rng.uniform(0.1, 10) + rng.uniform(-50, 50)).astype(np.float32)
        for n in lengths
    ]
    from app.core.windows import score_pieces

    got = score_pieces(signals, plan, whole.run, max_batch)
    for x, curve in zip(signals, got, strict=True):
        ref = whole.run(x[None])[0]
        np.testing.assert_allclose(curve, ref, atol=1e-5, rtol=0)


# Peak picking, against a plain reference implementation of the documented rules.


def reference_peaks(x: np.ndarray, threshold: float, min_distance: int) -> list[int]:
    """Plateaus count once at their middle (rounded down); outside the signal is -inf; higher
    peaks win within min_distance, ties to the earlier one."""
    candidates = []
    i, n = 0, len(x)
    while i < n:
        j = i
        while j + 1 < n and x[j + 1] == x[i]:
            j += 1
        left = x[i - 1] if i > 0 else -math.inf
        right = x[j + 1] if j + 1 < n else -math.inf
        # float(): as real numbers (numpy alone would round the threshold to float32).
        if x[i] > left and x[i] > right and float(x[i]) >= threshold:
            candidates.append(i + (j - i) // 2)
        i = j + 1
    kept: list[int] = []
    for k in sorted(candidates, key=lambda k: (-float(x[k]), k)):
        if all(abs(k - m) >= min_distance for m in kept):
            kept.append(k)
    return sorted(kept)


curves = st.one_of(
    # Few distinct levels: plateaus and ties are common.
    st.lists(st.integers(0, 5), max_size=200).map(lambda v: np.array(v, dtype=np.float32) / 5),
    hnp.arrays(np.float32, st.integers(0, 300), elements=st.floats(0, 1, width=32)),
)


# Each peak test runs three times: as the service runs short curves, and as it runs long ones
# (every curve's peaks first settled in whole-array rounds; every curve searched in parts).
VARIANTS = pytest.mark.parametrize(
    "variant",
    [{"GREEDY_MAX_PEAKS": peaks_module.GREEDY_MAX_PEAKS}, {"GREEDY_MAX_PEAKS": 0}, {"PART_SAMPLES": 3}],
    ids=["short", "rounds", "parts"],
)


@VARIANTS
@FAST
@given(x=curves, threshold=st.floats(0, 1), min_distance=st.integers(1, 40))
def test_peaks_match_the_reference(
    variant: dict[str, int], x: np.ndarray, threshold: float, min_distance: int
) -> None:
    with patch.multiple(peaks_module, **variant):
        peaks = find_peaks(x, threshold, min_distance)
    expected = reference_peaks(x, threshold, min_distance)
    assert peaks.index.tolist() == expected
    np.testing.assert_array_equal(peaks.probability, x[expected].astype(np.float32))


@VARIANTS
@FAST
@given(xs=st.lists(curves, max_size=6), threshold=st.floats(0, 1), min_distance=st.integers(1, 400))
def test_peaks_of_many_curves_match_the_reference(
    variant: dict[str, int], xs: list[np.ndarray], threshold: float, min_distance: int
) -> None:
    # Short curves of few levels: peaks and plateaus sit at the curves' ends, next to the
    # next curve, and min_distance often exceeds a curve's length.
    with patch.multiple(peaks_module, **variant):
        found = find_peaks_many(xs, threshold, min_distance)
    assert len(found) == len(xs)
    for x, peaks in zip(xs, found, strict=True):
        expected = reference_peaks(x, threshold, min_distance)
        assert peaks.index.tolist() == expected
        np.testing.assert_array_equal(peaks.probability, x[expected].astype(np.float32))


@FAST
@given(curves, st.floats(0, 1), st.integers(1, 40))
def test_peak_invariants(x: np.ndarray, threshold: float, min_distance: int) -> None:
    idx = find_peaks(x, threshold, min_distance).index
    assert np.all(np.diff(idx) >= min_distance)  # sorted and spaced
    assert np.all(x[idx] >= threshold)
    # Raising min_distance never adds peaks; lowering the threshold never removes the highest.
    assert len(find_peaks(x, threshold, min_distance + 5)) <= len(idx)
    if len(idx):
        top = int(idx[np.argmax(x[idx])])
        assert top in find_peaks(x, threshold / 2, min_distance).index.tolist()
