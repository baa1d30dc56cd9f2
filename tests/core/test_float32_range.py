"""The float32 range is one rule wherever a float64 value is checked: it is taken if and only if
its float32 cast is finite (values just above float32's maximum round down to it)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core.errors import InvalidInput
from app.core.pipeline import float32_holding_gil
from app.core.signals import (
    FLOAT32_MAX,
    FLOAT32_ROUNDS_TO_INF,
    Limits,
    check_finite,
    check_finite_rows,
    parse_npy,
    rows_from_json,
)

LIMITS = Limits(max_signals=4, max_samples=4000, max_signal_length=1000)
MIN_LENGTH = 3
EDGES = [
    FLOAT32_MAX,
    3.4028235e38,  # float32's maximum as numpy prints it
    np.nextafter(FLOAT32_ROUNDS_TO_INF, 0.0),
    FLOAT32_ROUNDS_TO_INF,
    np.nextafter(FLOAT32_ROUNDS_TO_INF, np.inf),
    3.5e38,
    1e39,
    1.7e308,
]


def cast_is_finite(value: float) -> bool:
    with np.errstate(over="ignore"):
        return bool(np.isfinite(np.float32(value)))


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def verdicts(value: float) -> dict[str, bool]:
    """Whether each check takes a row of float64 values holding ``value`` at index 2."""
    row = np.zeros(8)
    row[2] = value
    out = {"float32_holding_gil": float32_holding_gil(row) is not None}
    checks = {
        "check_finite": lambda: check_finite([row], ("body",)),
        "check_finite_rows": lambda: check_finite_rows(row.reshape(1, -1), ("body",)),
        "JSON row, one pass": lambda: rows_from_json([row.tolist()], LIMITS, MIN_LENGTH, plain=True),
        "JSON row, per value": lambda: rows_from_json([row.tolist()], LIMITS, MIN_LENGTH, plain=False),
        ".npy float64": lambda: parse_npy(npy(row), LIMITS, MIN_LENGTH),
        ".npy float64 big-endian": lambda: parse_npy(npy(row.astype(">f8")), LIMITS, MIN_LENGTH),
    }
    for name, check in checks.items():
        try:
            check()
            out[name] = True
        except InvalidInput as exc:
            assert f"value ({np.float64(value)}) at index 2 that is outside the float32 range" in exc.detail
            out[name] = False
    return out


def test_the_bound_is_the_least_float64_whose_cast_is_infinite() -> None:
    assert FLOAT32_ROUNDS_TO_INF == 2.0**128 - 2.0**103
    assert not cast_is_finite(FLOAT32_ROUNDS_TO_INF)
    assert cast_is_finite(np.nextafter(FLOAT32_ROUNDS_TO_INF, 0.0))


@pytest.mark.parametrize("value", EDGES)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_every_check_takes_a_value_iff_its_float32_cast_is_finite(value: float, sign: float) -> None:
    got = verdicts(sign * value)
    assert got == dict.fromkeys(got, cast_is_finite(sign * value))


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    st.floats(min_value=3.0e38, max_value=3.6e38)
    | st.floats(min_value=-3.6e38, max_value=-3.0e38)
    | st.floats(allow_nan=False, allow_infinity=False)
)
def test_the_checks_agree_with_the_cast_anywhere(value: float) -> None:
    got = verdicts(value)
    assert got == dict.fromkeys(got, cast_is_finite(value))


@pytest.mark.skipif(
    np.finfo(np.longdouble).max <= np.finfo(np.float64).max, reason="longdouble is float64 here"
)
@pytest.mark.parametrize("sign", ["", "-"])
def test_a_longdouble_beyond_float64_is_named_outside_float32_as_it_is(sign: str) -> None:
    """A .npy longdouble too large for float64 is finite: it is outside the float32 range and shown
    as numpy prints it, not as the inf of its float64 cast; one float64 holds is shown as before."""
    row = np.zeros(128, dtype=np.longdouble)
    row[99] = np.longdouble(f"{sign}1e4000")
    with pytest.raises(InvalidInput) as exc:
        parse_npy(npy(row), LIMITS, MIN_LENGTH)
    assert exc.value.detail.startswith(
        f"signal 0 has a value ({sign}1e+4000) at index 99 that is outside the float32 range"
    )
    assert exc.value.loc == ("body", 0, 99)
    row[99] = np.longdouble(f"{sign}1e39")
    with pytest.raises(
        InvalidInput, match=rf"signal 1 has a value \({sign}1e\+39\) at index 35 that is outside"
    ):
        parse_npy(npy(row.reshape(2, 64)), LIMITS, MIN_LENGTH)
    row[99] = np.longdouble("inf")
    with pytest.raises(InvalidInput, match=r"value \(inf\) at index 99 that is not finite"):
        parse_npy(npy(row), LIMITS, MIN_LENGTH)
