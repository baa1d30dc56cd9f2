"""Scores -> peaks: the one peak picker, used by the service and by training's evaluation.

A peak is a local maximum of the per-sample probability curve at or above the threshold.
A flat top (plateau) counts once, at its middle sample (rounded down). Samples outside the
signal count as -infinity, so the first and last samples can be peaks. When two peaks are
closer than ``min_distance`` samples, the higher one wins (ties: the earlier one).

``find_peaks_many`` finds the peaks of many curves in one vectorised pass (the batcher finishes
a whole batch of requests at once); ``find_peaks`` is the same function for one curve.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class Peaks:
    """Peak positions (sorted ascending) and the score at each."""

    index: npt.NDArray[np.int64]
    probability: npt.NDArray[np.float32]

    def __len__(self) -> int:
        return int(self.index.size)


def local_maxima(scores: npt.NDArray[np.floating], threshold: float) -> npt.NDArray[np.int64]:
    """Indices of local maxima (plateaus at their middle) with score >= threshold.

    Only samples at or above the threshold can belong to a peak, and a sample below it is
    lower than any of them: the search runs on those samples alone, with one -inf between
    runs that are not adjacent. Memory follows the number of samples above the threshold,
    not the signal's length.
    """
    x = np.asarray(scores)
    if x.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {x.shape}")
    above = np.flatnonzero(x >= threshold)
    if above.size == 0:
        return np.empty(0, dtype=np.int64)
    gap = np.flatnonzero(np.diff(above) > 1)  # a run of samples above ends after each gap
    # y: the samples above threshold, in order, with -inf where samples below were left out.
    where = np.arange(above.size) + np.searchsorted(gap, np.arange(above.size), side="left")
    y = np.full(above.size + gap.size, -np.inf, dtype=x.dtype if x.dtype.kind == "f" else np.float64)
    y[where] = x[above]
    position = np.full(y.size, -1, dtype=np.int64)
    position[where] = above
    change = np.flatnonzero(y[1:] != y[:-1]) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [y.size]))  # exclusive
    values = y[starts]
    left = np.concatenate(([-np.inf], values[:-1]))
    right = np.concatenate((values[1:], [-np.inf]))
    is_peak = (values > left) & (values > right) & (values >= threshold)
    peak_starts = position[starts[is_peak]]
    peak_ends = position[ends[is_peak] - 1]  # inclusive; a run above threshold is contiguous in x
    middle: npt.NDArray[np.int64] = (peak_starts + (peak_ends - peak_starts) // 2).astype(np.int64)
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
    # Fast path: nothing to suppress.
    if np.all(np.diff(index) >= min_distance):
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
        keep = _keep_by_distance(idx, x[idx], min_distance)
        if keep is not None:
            idx = idx[keep]
        return [Peaks(index=idx, probability=x[idx].astype(np.float32))]
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
