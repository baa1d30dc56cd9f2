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

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
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


# local_maxima searches a long curve this many samples at a time (memory follows a part, not
# the whole curve, when most of its samples are above the threshold).
PART_SAMPLES = 1 << 20


def local_maxima(scores: npt.NDArray[np.floating], threshold: float) -> npt.NDArray[np.int64]:
    """Indices of local maxima (plateaus at their middle) with score >= threshold.

    A long curve is searched part by part, each part ending where two neighbours differ, so no
    plateau spans two parts: memory follows one part, not the whole curve (a part runs on to
    the end of a plateau that crosses its end: one plateau over the whole curve is one part).
    """
    x = np.asarray(scores)
    if x.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {x.shape}")
    least = least_at_or_above(threshold, x.dtype)
    if x.dtype.kind == "f":
        # A -inf sample is never a peak (outside the curve is -inf too): searched as below any
        # threshold, so that a run of them at an end (or a gap of find_peaks_many) is not taken
        # for a plateau whose end is never found.
        least = max(least, np.finfo(x.dtype).min)
    if x.size <= PART_SAMPLES:
        return _maxima_in(x, least, 0, x.size)
    parts = []
    start = 0
    while start < x.size:
        end = _next_step(x, start + PART_SAMPLES)
        parts.append(_maxima_in(x, least, start, end))
        start = end
    return np.concatenate(parts)


def _next_step(x: npt.NDArray[np.floating], i: int) -> int:
    """The first index from ``i`` on whose sample differs from the one before it (a part may
    end there: no plateau crosses it), or the curve's length."""
    look = 64  # usually the step is right there; a long plateau is looked through in growing strides
    while i < x.size:
        n = min(look, x.size - i)
        step = (x[i : i + n] != x[i - 1 : i - 1 + n]).nonzero()[0]
        if step.size:
            return i + int(step[0])
        i += n
        look = min(2 * look, PART_SAMPLES)
    return int(x.size)


def _maxima_in(x: npt.NDArray[np.floating], least: Any, start: int, end: int) -> npt.NDArray[np.int64]:
    """``local_maxima`` among ``x[start:end]``, a part no plateau crosses; ``least``: the least
    score at or above the threshold.

    Only samples at or above the threshold can belong to a peak, and a sample below it (or
    NaN) is lower than any of them: the search looks at those samples and their two
    neighbours alone, so memory follows the number of samples above the threshold, not the
    part's length. A plateau is a run of such samples of one value; one of them is the next
    sample's neighbour exactly when their values are equal, so the samples whose left (right)
    neighbour differs start (end) the plateaus, in order. A plateau is a peak when neither
    outer neighbour is higher. A curve's small fixed cost matters as much as its length (a
    request of one short signal): the steps are few whole-array operations, and fewer still
    when no two neighbours above the threshold are equal (no plateau), the usual case.
    """
    above = (x[start:end] >= least).nonzero()[0]
    if above.size == 0:
        return np.empty(0, dtype=np.int64)
    if start:
        above += start
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


# At most this many peaks go straight through the greedy pass of ``_keep_by_distance``; more
# (a low threshold on a long signal) are first settled in rounds of whole-array steps.
GREEDY_MAX_PEAKS = 2048


def _keep_by_distance(
    index: npt.NDArray[np.int64], values: npt.NDArray[np.floating], min_distance: int
) -> npt.NDArray[np.bool_] | None:
    """Which of the sorted peaks ``index`` ``select_by_distance`` keeps; None: all of them.

    The rule is a greedy pass: highest first (ties: the earlier), each peak kept unless a kept
    one is closer than ``min_distance``. It runs peak by peak, in Python; many peaks are first
    settled in rounds of whole-array steps, to the same result: a peak that ranks first among
    the undecided peaks near it is kept by the greedy pass (a higher one near it was
    suppressed, or it would have suppressed the peaks near it), and the undecided peaks near
    a kept one are suppressed. A round settles most of the peaks; the greedy pass then takes
    the few left, and needs only them.
    """
    if index.size <= 1 or min_distance == 1:
        return None
    # Any distance past the peaks' span acts as the span + 1 (every two are closer than it); so
    # capped, positions plus the distance stay far from int64's end (min_distance may be 2**63 - 1).
    min_distance = min(min_distance, int(index[-1] - index[0]) + 1)
    close = index[1:] - index[:-1] < min_distance
    if not close.any():  # nothing to suppress
        return None
    # Only a peak closer than min_distance to a neighbour can be suppressed, and only by such
    # peaks: the others are kept, and the greedy pass or the rounds take the crowded ones alone.
    crowded = np.zeros(index.size, dtype=bool)
    crowded[:-1] = close
    crowded[1:] |= close
    keep = ~crowded
    undecided = crowded.nonzero()[0]
    if undecided.size <= GREEDY_MAX_PEAKS:
        order = _greedy_order(np.asarray(values)[undecided])
        keep[undecided[_greedy(index[undecided], order, min_distance)]] = True
        return keep
    rank = np.empty(index.size, dtype=np.int64)
    rank[_greedy_order(values)] = np.arange(index.size)  # each peak's place in the greedy pass
    while undecided.size > GREEDY_MAX_PEAKS:
        position, own = index[undecided], rank[undecided]
        first = _least_near(position, own, min_distance) == own
        keep[undecided[first]] = True
        left = undecided[~_near(position, position[first], min_distance)]
        stalled = left.size * 4 > undecided.size * 3  # the round settled under a quarter
        undecided = left
        if stalled:
            break
    order = np.argsort(rank[undecided])
    keep[undecided[_greedy(index[undecided], order, min_distance)]] = True
    return keep


def _greedy(index: npt.NDArray[np.int64], order: npt.NDArray[np.intp], min_distance: int) -> list[int]:
    """The greedy pass over the sorted peaks ``index`` in ``order``: the ones it keeps. Plain
    Python lists and ``bisect``: a NumPy call per peak cost about 5 µs, the pass over 63 peaks
    (a batch of 32 requests) 224 µs against 26."""
    position = index.tolist()
    kept = []
    suppressed = bytearray(len(position))
    for k in order.tolist():
        if suppressed[k]:
            continue
        kept.append(k)
        lo = bisect_left(position, position[k] - min_distance + 1)
        hi = bisect_right(position, position[k] + min_distance - 1)
        suppressed[lo:hi] = b"\1" * (hi - lo)
    return kept


def _greedy_order(values: npt.NDArray[np.floating]) -> npt.NDArray[np.intp]:
    """The peaks in the greedy pass's order: the highest first, the earlier of equal ones first.

    Many float32 scores (the model's) are ordered by sorting one int64 per peak, which NumPy
    sorts about twice as fast as it argsorts: the score's bits, ordered as the floats are, above
    the peak's position in ``values``. Otherwise: a stable argsort."""
    v = np.asarray(values)
    n = v.size
    if v.dtype == np.float32 and GREEDY_MAX_PEAKS < n < 1 << 31:
        bits = (v + np.float32(0)).view(np.int32).astype(np.int64)  # + 0: -0.0 becomes 0.0
        higher_first = np.where(bits < 0, bits & 0x7FFFFFFF, -bits)
        order: npt.NDArray[np.intp] = np.sort((higher_first << 32) | np.arange(n)) & 0xFFFFFFFF
        return order
    return np.argsort(-v.astype(np.float64), kind="stable")


def _least_near(
    position: npt.NDArray[np.int64], rank: npt.NDArray[np.int64], distance: int
) -> npt.NDArray[np.int64]:
    """For each of the peaks (sorted by position), the least rank among the peaks closer than
    ``distance`` to it, itself included.

    Positions fall into blocks of ``distance``: a peak's near ones are its whole block, a tail
    of the block before and a head of the block after. Running minima over each block, one
    forwards and one backwards, give those three parts' minima in whole-array steps (a block's
    running minimum does not carry into the next: each block's ranks are lowered, or raised,
    by more than any rank, block by block).
    """
    block = position // distance
    new = np.empty(block.size, dtype=bool)
    new[0] = True
    np.not_equal(block[1:], block[:-1], out=new[1:])
    # In place where it can be: a low threshold on a long signal makes millions of peaks.
    shift = np.cumsum(new)
    shift -= 1  # the block's number among the blocks that hold peaks...
    least: npt.NDArray[np.int64] = np.minimum.reduceat(rank, new.nonzero()[0])[shift]
    del new
    # ...times more than any rank (a later round's ranks, those of the undecided peaks, reach
    # past their number).
    shift *= int(rank.max()) + 1
    ahead = rank - shift  # the running minimum from the block's start
    np.minimum.accumulate(ahead, out=ahead)
    ahead += shift
    behind = rank + shift  # ... and from its end
    np.minimum.accumulate(behind[::-1], out=behind[::-1])
    behind -= shift
    del shift
    lo = np.searchsorted(position, position - distance + 1, side="left")
    other = block[lo]
    other += 1
    tail = (other == block).nonzero()[0]  # its near peaks reach into the block before
    least[tail] = np.minimum(least[tail], behind[lo[tail]])
    del behind, lo, tail
    hi = np.searchsorted(position, position + distance - 1, side="right")
    hi -= 1
    np.take(block, hi, out=other)
    other -= 1
    head = (other == block).nonzero()[0]  # ...into the block after
    least[head] = np.minimum(least[head], ahead[hi[head]])
    return least


def _near(
    position: npt.NDArray[np.int64], centres: npt.NDArray[np.int64], distance: int
) -> npt.NDArray[np.bool_]:
    """Which of the sorted ``position`` are closer than ``distance`` to one of the sorted
    ``centres``."""
    lo = np.searchsorted(position, centres - distance + 1, side="left")
    hi = np.searchsorted(position, centres + distance - 1, side="right")
    inside = np.bincount(lo, minlength=position.size + 1)  # intervals begun, less those ended
    inside -= np.bincount(hi, minlength=position.size + 1)
    np.cumsum(inside, out=inside)
    near: npt.NDArray[np.bool_] = inside[:-1] > 0
    return near


def find_peaks(scores: npt.NDArray[np.floating], threshold: float, min_distance: int) -> Peaks:
    """Peaks of a per-sample probability curve: the service's and the evaluation's definition."""
    return find_peaks_many([scores], threshold, min_distance)[0]


@dataclass(frozen=True, slots=True)
class ManyPeaks:
    """The peaks of several curves in one pair of arrays: curve ``k``'s are
    ``[bounds[k], bounds[k + 1])``, each index in its own curve. ``maxima``: each curve's
    greatest score, if asked for (``find_peaks_flat``), else None."""

    index: npt.NDArray[np.int64]
    values: npt.NDArray[np.float32]
    bounds: list[int]
    maxima: npt.NDArray[np.floating] | None = None

    def split(self, values: npt.NDArray[np.float32] | None = None) -> list[Peaks]:
        """Each curve's ``Peaks``, with ``values`` (one per peak, in order) in place of the
        scores if given (the peaks' probabilities once calibrated)."""
        v = self.values if values is None else values
        return [Peaks(index=self.index[lo:hi], probability=v[lo:hi]) for lo, hi in pairwise(self.bounds)]


def find_peaks_many(
    curves: Sequence[npt.NDArray[np.floating]], threshold: float, min_distance: int
) -> list[Peaks]:
    """``find_peaks`` of each curve, computed for all of them at once (``find_peaks_flat``)."""
    return find_peaks_flat(curves, threshold, min_distance).split()


def find_peaks_flat(
    curves: Sequence[npt.NDArray[np.floating]], threshold: float, min_distance: int, *, maxima: bool = False
) -> ManyPeaks:
    """``find_peaks`` of each curve, computed for all of them at once, as one ``ManyPeaks``;
    with ``maxima``, each curve's greatest score too (NaN if it holds one; a curve must not be
    empty), from the same pass.

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
    if maxima and any(a.size == 0 for a in arrays):
        raise ValueError("a curve is empty: it has no greatest score")
    if len(arrays) == 1:  # the same steps, without the bookkeeping of several curves
        x = arrays[0]
        idx = local_maxima(x, threshold)
        values = x[idx]
        keep = _keep_by_distance(idx, values, min_distance)
        if keep is not None:
            idx, values = idx[keep], values[keep]
        top = x.max(keepdims=True) if maxima else None
        return ManyPeaks(idx, values.astype(np.float32, copy=False), [0, idx.size], top)
    if not arrays:
        empty = np.empty(0, dtype=np.int64)
        return ManyPeaks(empty, empty.astype(np.float32), [0], np.empty(0) if maxima else None)
    gap = np.full(1, -np.inf, dtype=np.result_type(*arrays, np.float32))
    x = np.concatenate([part for a in arrays for part in (a, gap)][:-1])
    idx = local_maxima(x, threshold)
    starts = np.cumsum([0] + [a.size + 1 for a in arrays[:-1]])
    # Each curve's greatest score: its samples and the -inf gap after it, which never wins.
    top = np.maximum.reduceat(x, starts) if maxima else None
    owner = np.searchsorted(starts, idx, side="right") - 1
    spread = min(min_distance, max(a.size for a in arrays))
    keep = _keep_by_distance(idx + owner * spread, x[idx], spread)
    if keep is not None:
        idx, owner = idx[keep], owner[keep]
    probability = x[idx].astype(np.float32)
    idx -= starts[owner]  # each peak's index in its own curve
    bounds = np.searchsorted(owner, np.arange(len(arrays) + 1), side="left").tolist()
    return ManyPeaks(idx, probability, bounds, top)
