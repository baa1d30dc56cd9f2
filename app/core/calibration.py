"""Calibration: raw model scores -> probabilities that mean what they say.

A model card may carry two monotone maps fitted on validation data by training:

- ``signal``: the curve's maximum -> the probability that the signal holds an event;
- ``peak``: a peak's score -> the probability that the peak is a true event (within the
  evaluation's match tolerance).

Each map is piecewise linear in logit space through knots ``(x, y)`` (both strictly
increasing), with slope 1 beyond the outer knots, so it is strictly increasing and invertible
everywhere: applying it never reorders scores, moves a peak or merges two peaks (the values
reported, float32, may tie where the raw scores do not: near 0 or 1). Peaks are
therefore found on the raw curve with the threshold mapped back (``peak.raw_threshold``), and only
the values reported are mapped. A card without maps reports raw scores (the identity).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

EPS = 1e-9  # probabilities are clipped to [EPS, 1 - EPS] before the logit
MAX_CACHED_INVERSES = 256  # thresholds remembered per map (a client may send any number)

FloatArray = npt.NDArray[np.float64]


# The finite float32s in order as integers (``_key_of``, ``_float32_of``): -FLOAT32_KEYS is
# -max, 0 is 0.0, FLOAT32_KEYS is max (the bits of float32's largest finite value).
FLOAT32_KEYS = 0x7F7FFFFF
NEAR_STEPS = 16  # float32s looked at on each side of inverse(q) in one step by ``raw_threshold``
NEAR = np.arange(-NEAR_STEPS, NEAR_STEPS + 1, dtype=np.int64)


def _key_of(value: np.float32) -> int:
    """A float32's place among the float32s (-0.0 is 0.0's); beyond the finite ones: clipped."""
    bits = int(value.view(np.int32))
    if bits & 0x7FFFFFFF > 0x7F800000:
        raise ValueError("a threshold maps back to a raw score, not NaN")
    return min(bits & 0x7FFFFFFF, FLOAT32_KEYS) * (-1 if bits < 0 else 1)


def _float32_of(keys: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
    """The float32s at these places (``_key_of`` reversed); ``keys`` sorted ascending."""
    out: npt.NDArray[np.float32] = np.abs(keys).astype(np.int32).view(np.float32)
    if keys[0] < 0:  # sorted: none negative unless the first
        np.negative(out, out=out, where=keys < 0)
    return out


def logit(p: npt.ArrayLike) -> FloatArray:
    # np.clip's value; np.clip itself passes through three Python layers, costly for few values.
    q = np.minimum(np.maximum(np.asarray(p, dtype=np.float64), EPS), 1.0 - EPS)
    out: FloatArray = np.log(q) - np.log1p(-q)
    return out


def sigmoid(z: npt.ArrayLike) -> FloatArray:
    return _sigmoid_of_negated(-np.asarray(z, dtype=np.float64))


def _sigmoid_of_negated(n: npt.ArrayLike) -> FloatArray:
    """sigmoid(-n), computed stably."""
    out: FloatArray = np.exp(-np.logaddexp(0.0, n))
    return out


def _minus_f(z: FloatArray, xs: FloatArray, negated_ys: FloatArray) -> FloatArray:
    """-f(z), f piecewise linear through (xs, ys) with slope 1 beyond the knots.

    f(z) = interp(c) + (z - c) with c = z clipped to the knots' range (the second term is 0
    inside it). Interpolated through the negated knots, it gives -f(z), which the logistic
    function takes; negating exact values is exact, so sigmoid(f(z)) comes out bit for bit
    in the fewest array operations (for a request's few values each costs more than its
    arithmetic)."""
    c = np.minimum(np.maximum(z, xs[0]), xs[-1])
    out: FloatArray = np.interp(c, xs, negated_ys) + (c - z)
    return out


@dataclass(frozen=True)
class MonotoneMap:
    """p -> sigmoid(f(logit p)), f piecewise linear through (x, y); no knots: the identity."""

    x: FloatArray = field(default_factory=lambda: np.empty(0))
    y: FloatArray = field(default_factory=lambda: np.empty(0))
    # Derived, not part of the value (equality and repr are the knots'): (-x, -y), and the
    # thresholds already mapped back by ``raw_threshold``.
    _negated: tuple[FloatArray, FloatArray] = field(init=False, repr=False, compare=False)
    _inverses: dict[float, float] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        x, y = np.asarray(self.x, dtype=np.float64), np.asarray(self.y, dtype=np.float64)
        if x.shape != y.shape or x.ndim != 1:
            raise ValueError("calibration knots x and y must be 1-D and of one length")
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            raise ValueError("calibration knots must be finite")
        if np.any(np.diff(x) <= 0) or np.any(np.diff(y) <= 0):
            raise ValueError("calibration knots must be strictly increasing in x and in y")
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y)
        object.__setattr__(self, "_negated", (-x, -y))

    @property
    def identity(self) -> bool:
        return self.x.size == 0

    def __call__(self, p: npt.ArrayLike) -> FloatArray:
        if self.identity:
            return np.asarray(p, dtype=np.float64)
        return _sigmoid_of_negated(self._minus_f(logit(p)))

    def inverse(self, q: npt.ArrayLike) -> FloatArray:
        if self.identity:
            return np.asarray(q, dtype=np.float64)
        return _sigmoid_of_negated(_minus_f(logit(q), self.y, self._negated[0]))

    def _minus_f(self, z: FloatArray) -> FloatArray:
        """-f(z) on the logit scale: the map before the logistic function, negated."""
        return _minus_f(z, self.x, self._negated[1])

    def raw_threshold(self, q: float) -> float:
        """A threshold ``q`` on this map's scale, mapped back to the scale of float32 raw scores:
        the least float32 ``r`` whose value as reported (``self(r)`` as float32, the peaks'
        probabilities and the returned curve) is at or above ``q``, as real numbers. A raw score
        ``x`` is then at or above it exactly when its reported value is at or above ``q``; with
        ``inverse(q)`` a score whose reported value is ``q`` itself fell below it about every
        other time (the float32 rounds up as often as down). ``inf`` if no float32 reaches ``q``.

        Remembered: a request's threshold is nearly always the card's, and mapping it back costs
        more than finding the peaks of a short signal."""
        if self.identity:
            return float(q)
        cache = self._inverses
        found = cache.get(q)
        if found is None:
            if len(cache) >= MAX_CACHED_INVERSES:
                cache.clear()
            found = cache[q] = self._least_reaching(q)
        return found

    def _reaches(self, keys: npt.NDArray[np.int64], q: float) -> npt.NDArray[np.bool_]:
        """Whether the float32s of ``keys`` (``_float32_of``) are reported at or above ``q``."""
        reported = self(_float32_of(keys)).astype(np.float32)
        reaches: npt.NDArray[np.bool_] = reported.astype(np.float64) >= q  # not q rounded to float32
        return reaches

    def _least_reaching(self, q: float) -> float:
        """``raw_threshold``'s value: the float32s near ``inverse(q)`` in one step, and if the
        change from below to at or above ``q`` is not among them, a bisection over all."""
        start = _key_of(np.float32(self.inverse(q)))  # a probability: no overflow
        near = NEAR + start
        if abs(start) > FLOAT32_KEYS - NEAR_STEPS:
            near = near[np.abs(near) <= FLOAT32_KEYS]
        reaches = self._reaches(near, q)
        lo, hi = -FLOAT32_KEYS - 1, FLOAT32_KEYS + 1  # beyond the finite float32s: below all, above all
        if reaches.any():
            hi = int(near[reaches.argmax()])
        if not reaches.all():
            lo = int(near[~reaches][-1])
        while hi - lo > 1:  # reaches(hi) and not reaches(lo); the map never decreases
            mid = (lo + hi) // 2
            if self._reaches(np.array([mid]), q)[0]:
                hi = mid
            else:
                lo = mid
        return float("inf") if hi > FLOAT32_KEYS else float(_float32_of(np.array([hi]))[0])

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> MonotoneMap:
        if not d:
            return cls()
        return cls(np.asarray(d["x"], dtype=np.float64), np.asarray(d["y"], dtype=np.float64))

    def to_dict(self) -> dict[str, list[float]]:
        return {"x": [float(v) for v in self.x], "y": [float(v) for v in self.y]}


@dataclass(frozen=True)
class Calibrator:
    """The two maps of one model."""

    signal: MonotoneMap = field(default_factory=MonotoneMap)
    peak: MonotoneMap = field(default_factory=MonotoneMap)

    def both(
        self, signal_values: npt.NDArray[np.floating], peak_values: npt.NDArray[np.floating]
    ) -> tuple[FloatArray, FloatArray]:
        """``(signal(signal_values), peak(peak_values))`` of two 1-D arrays, bit for bit, with
        the logit and the logistic function taken once over both: a request has a few values
        of each, and each array operation costs more than their arithmetic."""
        if self.signal.identity or self.peak.identity:
            return self.signal(signal_values), self.peak(peak_values)
        k = len(signal_values)
        z = logit(np.concatenate((signal_values, peak_values)))
        out = _sigmoid_of_negated(np.concatenate((self.signal._minus_f(z[:k]), self.peak._minus_f(z[k:]))))
        return out[:k], out[k:]


IDENTITY = Calibrator()
