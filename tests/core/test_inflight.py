"""The bound on the bytes of request bodies held at once (MAX_INFLIGHT_BYTES)."""

import pytest

from app.core.errors import Overloaded
from app.core.inflight import InFlightBytes


def test_bytes_are_held_until_released_once_and_a_request_past_the_bound_holds_none() -> None:
    bound = InFlightBytes(1000)
    with bound.hold() as first:
        first.grow(600)
        second = bound.hold()
        second.grow(300)
        assert bound.held == 900
        with pytest.raises(
            Overloaded,
            match=r"^900 bytes of request bodies are in flight and this request's 101 more would pass "
            r"the limit of 1000 \(SHAPE_DETECTOR_MAX_INFLIGHT_BYTES\); retry shortly",
        ):
            second.grow(101)
        assert bound.held == 900 and second.size == 300  # the refused bytes are not held
        second.grow(100)  # up to the bound exactly
        assert bound.held == 1000
        second.release()
        second.release()  # once only
        assert bound.held == 600
        with pytest.raises(RuntimeError):
            second.grow(1)  # released: holds nothing more
    assert bound.held == 0  # given back on the way out, an error or not


def test_a_holding_that_fails_gives_its_bytes_back() -> None:
    bound = InFlightBytes(100)
    with pytest.raises(ValueError), bound.hold() as held:
        held.grow(100)
        raise ValueError("a body that cannot be decoded")
    assert bound.held == 0
    with bound.hold() as held:
        held.grow(100)  # the whole bound again


def test_a_size_that_would_not_fit_now_is_refused_before_it_is_held() -> None:
    """A Content-Length is checked against the room left (``fits``), but only the bytes that
    come are held (``grow``): a claim alone holds nothing."""
    bound = InFlightBytes(1000)
    with bound.hold() as first, bound.hold() as second:
        first.fits(1000)  # the whole bound is free
        assert bound.held == 0
        first.grow(600)
        with pytest.raises(
            Overloaded, match=r"^600 bytes of request bodies are in flight and this request's 500 more"
        ):
            second.fits(500)
        second.fits(400)
        assert bound.held == 600
