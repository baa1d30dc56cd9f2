"""Scores -> peaks: the one peak picker, used by the service and by training's evaluation.

A peak is a local maximum of the per-sample probability curve at or above the threshold (as
real numbers: a float32 score is never rounded against a threshold between two float32s).
A flat top (plateau) counts once, at its middle sample (rounded down). Samples outside the
signal count as -infinity, so the first and last samples can be peaks. When two peaks are
closer than ``min_distance`` samples, the higher one wins (ties: the earlier one).

``find_peaks_many`` finds the peaks of many curves in one vectorised pass (the batcher finishes
a whole batch of requests at once); ``find_peaks`` is the same function for one curve.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class Peaks:
    """Peak positions (sorted ascending) and the score at each."""

    index: npt.NDArray[np.int64]
    probability: npt.NDArray[np.float32]

    def __len__(self) -> int:
        return int(self.index.size)


def least_at_or_above(threshold: float, dtype: np.dtype[Any]) -> Any:
    """The least value of a floating ``dtype`` at or above ``threshold``: for any ``x`` of that
    dtype, ``x >= it`` exactly when ``x >= threshold`` as real numbers. (NumPy compares a
    float32 array with a Python float in float32, the float rounded to the nearest: a
    threshold just above a float32 value would take it in, where ``x >= threshold`` in
    float64, as a signal's decision is taken, does not.) Other dtypes: ``threshold``."""
    if dtype.kind != "f" or dtype.itemsize >= 8:
        return threshold
    rounded = dtype.type(threshold)
    if float(rounded) < threshold:
        rounded = np.nextafter(rounded, dtype.type(np.inf))
    return rounded


def local_maxima(scores: npt.NDArray[np.floating], threshold: float) -> npt.NDArray[np.int64]:
    """Indices of local maxima (plateaus at their middle) with score >= threshold.

    Only samples at or above the threshold can belong to a peak, and a sample below it (or
    NaN) is lower than any of them: the search looks at those samples and their two
    neighbours alone, so memory follows the number of samples above the threshold, not the
    signal's length. A plateau is a run of such samples of one value; one of them is the next
    sample's neighbour exactly when their values are equal, so the samples whose left (right)
    neighbour differs start (end) the plateaus, in order. A plateau is a peak when neither
    outer neighbour is higher. A curve's small fixed cost matters as much as its length (a
    request of one short signal): the steps are few whole-array operations, and fewer still
    when no two neighbours above the threshold are equal (no plateau), the usual case.
    """
    x = np.asarray(scores)
    if x.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {x.shape}")
    above = (x >= least_at_or_above(threshold, x.dtype)).nonzero()[0]
    if above.size == 0:
        return np.empty(0, dtype=np.int64)
    value = x[above]
    last = x.size - 1
    left = x[above - 1]  # copies; outside the signal counts as -inf
    right = x[np.minimum(above + 1, last)] if above[-1] == last else x[above + 1]
    if x.dtype.kind != "f":  # integer scores: room for -inf
        left, right = left.astype(np.float64), right.astype(np.float64)
    if above[0] == 0:
        left[0] = -np.inf
    if above[-1] == last:
        right[-1] = -np.inf
    higher_left, higher_right = left > value, right > value
    starts = left != value
    if starts.all():  # no plateau: every sample is its own
        peaks: npt.NDArray[np.int64] = above[~(higher_left | higher_right)]
        return peaks
    first = starts.nonzero()[0]
    final = (right != value).nonzero()[0]
    is_peak = ~(higher_left[first] | higher_right[final])
    lo, hi = above[first[is_peak]], above[final[is_peak]]
    middle: npt.NDArray[np.int64] = lo + (hi - lo) // 2
    return middle


def select_by_distance(
    index: npt.NDArray[np.int64], values: npt.NDArray[np.floating], min_distance: int
) -> npt.NDArray[np.int64]:
    """Keep the highest peaks so that no two kept peaks are closer than ``min_distance``."""
    if min_distance < 1:
        raise ValueError(f"min_distance must be >= 1, got {min_distance}")
    keep = _keep_by_distance(index, values, min_distance)
    return index if keep is None else index[keep]


def _keep_by_distance(
    index: npt.NDArray[np.int64], values: npt.NDArray[np.floating], min_distance: int
) -> npt.NDArray[np.bool_] | None:
    """Which of the sorted peaks ``index`` ``select_by_distance`` keeps; None: all of them."""
    if index.size <= 1 or min_distance == 1:
        return None
    # Any distance past the peaks' span acts as the span + 1 (every two are closer than it); so
    # capped, positions plus the distance stay far from int64's end (min_distance may be 2**63 - 1).
    min_distance = min(min_distance, int(index[-1] - index[0]) + 1)
    # Fast path: nothing to suppress.
    if (index[1:] - index[:-1] >= min_distance).all():
        return None
    # Greedy suppression, highest first; stable sort keeps the earlier of equal peaks first.
    order = np.argsort(-np.asarray(values, dtype=np.float64), kind="stable")
    keep = np.zeros(index.size, dtype=bool)
    suppressed = np.zeros(index.size, dtype=bool)
    for k in order:
        if suppressed[k]:
            continue
        keep[k] = True
        pos = index[k]
        lo = np.searchsorted(index, pos - min_distance + 1, side="left")
        hi = np.searchsorted(index, pos + min_distance - 1, side="right")
        suppressed[lo:hi] = True
    return keep


def find_peaks(scores: npt.NDArray[np.floating], threshold: float, min_distance: int) -> Peaks:
    """Peaks of a per-sample probability curve: the service's and the evaluation's definition."""
    return find_peaks_many([scores], threshold, min_distance)[0]


def find_peaks_many(
    curves: Sequence[npt.NDArray[np.floating]], threshold: float, min_distance: int
) -> list[Peaks]:
    """``find_peaks`` of each curve, computed for all of them at once.

    The curves are searched as one: laid end to end with one -inf sample between two curves,
    so no run of samples above the threshold continues into the next curve and a curve's
    first and last samples can still be peaks. For the suppression by distance, the curves
    are set ``min_distance`` apart, so a peak never suppresses one of another curve, and
    within a curve the order of the greedy pass (highest first, ties earlier) is unchanged.
    A distance longer than the longest curve acts as that length: any two peaks of a curve
    are closer than it either way.
    """
    if min_distance < 1:
        raise ValueError(f"min_distance must be >= 1, got {min_distance}")
    arrays = [np.asarray(c) for c in curves]
    for a in arrays:
        if a.ndim != 1:
            raise ValueError(f"scores must be 1-D, got shape {a.shape}")
    if len(arrays) == 1:  # the same steps, without the bookkeeping of several curves
        x = arrays[0]
        idx = local_maxima(x, threshold)
        values = x[idx]
        keep = _keep_by_distance(idx, values, min_distance)
        if keep is not None:
            idx, values = idx[keep], values[keep]
        return [Peaks(index=idx, probability=values.astype(np.float32, copy=False))]
    if not arrays:
        return []
    gap = np.full(1, -np.inf, dtype=np.result_type(*arrays, np.float32))
    x = np.concatenate([part for a in arrays for part in (a, gap)][:-1])
    idx = local_maxima(x, threshold)
    starts = np.cumsum([0] + [a.size + 1 for a in arrays[:-1]])
    owner = np.searchsorted(starts, idx, side="right") - 1
    spread = min(min_distance, max(a.size for a in arrays))
    keep = _keep_by_distance(idx + owner * spread, x[idx], spread)
    if keep is not None:
        idx, owner = idx[keep], owner[keep]
    probability = x[idx].astype(np.float32)
    bounds = np.searchsorted(owner, np.arange(len(arrays) + 1), side="left").tolist()
    return [
        Peaks(index=idx[lo:hi] - start, probability=probability[lo:hi])
        for start, lo, hi in zip(starts.tolist(), bounds[:-1], bounds[1:], strict=True)
    ]
