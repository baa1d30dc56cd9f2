"""Fitting the card's calibration maps and measuring calibration (ECE, reliability bins).

The maps are isotonic regression (pool adjacent violators) of the outcome on the logit of
the raw score, with the knots at the pooled blocks' mean logits: strictly increasing by
construction, applied by ``app.core.calibration`` in the service and in evaluation alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from app.core.calibration import MonotoneMap, logit
from app.core.peaks import find_peaks
from training.evaluate import match_pairs

BINS = 10
PEAK_FLOOR = 0.02  # raw score: peaks below it are neither calibrated on nor reported by default
RATE_CLIP = 1e-4  # block rates are clipped to [RATE_CLIP, 1 - RATE_CLIP] before the logit

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


def pav(x: FloatArray, y: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Isotonic (non-decreasing) regression of y on x: per block, mean x, mean y, count.

    Equal x values are pooled first, so the blocks' mean x values are strictly increasing;
    adjacent blocks have strictly increasing mean y.
    """
    order = np.argsort(x, kind="stable")
    xs, ys = x[order], y[order]
    ux, start = np.unique(xs, return_index=True)
    counts = np.diff(np.append(start, xs.size)).astype(np.float64)
    sums_y = np.add.reduceat(ys, start)
    sums_x = ux * counts
    # Stack of blocks: (sum_x, sum_y, count).
    bx: list[float] = []
    by: list[float] = []
    bn: list[float] = []
    for sx, sy, n in zip(sums_x, sums_y, counts, strict=True):
        bx.append(sx)
        by.append(sy)
        bn.append(n)
        while len(bn) > 1 and by[-2] / bn[-2] >= by[-1] / bn[-1]:
            sy2, sx2, n2 = by.pop(), bx.pop(), bn.pop()
            by[-1] += sy2
            bx[-1] += sx2
            bn[-1] += n2
    n_arr = np.asarray(bn)
    return np.asarray(bx) / n_arr, np.asarray(by) / n_arr, n_arr


def fit_map(raw: npt.ArrayLike, outcome: npt.ArrayLike) -> MonotoneMap:
    """The map raw score -> P(outcome), isotonic in the raw score's logit."""
    z = logit(raw)
    y = np.asarray(outcome, dtype=np.float64)
    if z.size == 0 or y.min() == y.max():
        raise ValueError("calibration needs both outcomes among its samples")
    mx, my, _ = pav(z, y)
    ly = logit(np.clip(my, RATE_CLIP, 1 - RATE_CLIP))
    # Clipping can tie neighbouring blocks at the ends: keep the first of each tied run.
    keep = np.concatenate(([True], np.diff(ly) > 0))
    return MonotoneMap(mx[keep], ly[keep])


def reliability(p: npt.ArrayLike, outcome: npt.ArrayLike, bins: int = BINS) -> dict[str, Any]:
    """Expected calibration error over ``bins`` equal-width bins, and the bins themselves."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(outcome, dtype=np.float64)
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    count = np.bincount(which, minlength=bins)
    sum_p = np.bincount(which, weights=p, minlength=bins)
    sum_y = np.bincount(which, weights=y, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p, rate = sum_p / count, sum_y / count
    ece = float(np.nansum(count * np.abs(mean_p - rate)) / max(p.size, 1))
    return {
        "ece": ece,
        "samples": int(p.size),
        "bins": {
            "count": count.tolist(),
            "mean_probability": [
                None if c == 0 else round(float(v), 5) for c, v in zip(count, mean_p, strict=True)
            ],
            "observed_rate": [
                None if c == 0 else round(float(v), 5) for c, v in zip(count, rate, strict=True)
            ],
        },
    }


def signal_samples(
    curves: Sequence[npt.NDArray[np.float32]], events: Sequence[npt.NDArray[np.int64]]
) -> tuple[FloatArray, BoolArray]:
    """Each signal's raw maximum and whether it holds an event."""
    return (
        np.array([float(c.max()) for c in curves], dtype=np.float64),
        np.array([e.size > 0 for e in events], dtype=bool),
    )


def peak_samples(
    curves: Sequence[npt.NDArray[np.float32]],
    events: Sequence[npt.NDArray[np.int64]],
    min_distance: int,
    floor: float = PEAK_FLOOR,
) -> tuple[FloatArray, BoolArray]:
    """Every peak at or above ``floor`` (raw) and whether it matches a true event.

    Matching is the evaluation's: one-to-one, closest pairs first, within the tolerance.
    """
    values: list[npt.NDArray[np.float32]] = []
    hits: list[BoolArray] = []
    for curve, centres in zip(curves, events, strict=True):
        peaks = find_peaks(curve, floor, min_distance)
        hit = np.zeros(len(peaks), dtype=bool)
        for p, _ in match_pairs(peaks.index, centres):
            hit[p] = True
        values.append(peaks.probability)
        hits.append(hit)
    return np.concatenate(values).astype(np.float64), np.concatenate(hits)
