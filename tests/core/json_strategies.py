"""Hypothesis strategies shared by the tests of the plain JSON paths (``/v1`` and ``/v2``)."""

from __future__ import annotations

from hypothesis import strategies as st

from app.core.signals import FLOAT32_MAX

# A JSON number a client may send: any finite float64, any float32, any 64-bit integer.
numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.floats(min_value=-FLOAT32_MAX, max_value=FLOAT32_MAX, width=32),
    st.integers(-(2**63), 2**64 - 1),
)

# Any JSON document (NaN and infinities included: orjson writes them as null).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=20) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=100,
)
