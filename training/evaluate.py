"""Metrics of the exported model against the classical matched filter.

The model is evaluated as it ships: the exported ONNX file, run by the service's own code
(``app.core.model.OnnxModel``: windowing, onnxruntime) and peak picker (``app.core.peaks``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from app.core.model import OnnxModel, detections
from app.core.peaks import find_peaks
from training.scenario import Dataset, Template

MATCH_TOLERANCE = 5  # a detection matches a true event within +-5 samples
Curves = list[npt.NDArray[np.float32]]


def robust_normalise(x: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """(x - median) / (1.4826 * MAD): the matched filter's normalisation."""
    x = np.asarray(x, dtype=np.float64)
    med = np.median(x)
    mad = 1.4826 * np.median(np.abs(x - med))
    return (x - med) / (mad if mad > 0 else 1.0)


def matched_filter(
    x: npt.NDArray[np.floating], template: Template, two_sided: bool = False
) -> npt.NDArray[np.float32]:
    """Cross-correlation with the unit-norm template, aligned so that out[t] peaks at a centre.

    In units of the noise: for white noise the score is the matched-filter SNR. ``two_sided``
    (when inverted copies count as events): the absolute value.
    """
    k = template.values / template.norm
    z = robust_normalise(x)
    full = np.correlate(z, k, mode="full")  # full[j] = sum_n z[n + j - (W - 1)] k[n]
    start = k.size - 1 - template.center
    out = full[start : start + z.size]
    return (np.abs(out) if two_sided else out).astype(np.float32)


def matched_filter_curves(data: Dataset, template: Template, two_sided: bool = False) -> Curves:
    return [matched_filter(x, template, two_sided) for x in data.signals]


def model_curves(model: OnnxModel, data: Dataset) -> Curves:
    """Raw per-sample scores of the exported model, as the service computes them."""
    return model.scores(data.signals)


def calibrated_curves(model: OnnxModel, curves: Curves) -> Curves:
    """Raw curves on the card's calibrated peak scale: what the service reports.

    The map is strictly increasing, so peaks and their order are those of the raw curves and a
    threshold on this scale is the service's threshold (``app.core.model.detections``).
    """
    peak = model.card.calibrator.peak
    return curves if peak.identity else [peak(c).astype(np.float32) for c in curves]


def roc_auc(scores: npt.NDArray[np.floating], labels: npt.NDArray[np.bool_]) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties count half)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(scores.size, dtype=np.float64)
    sorted_scores = scores[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def match_pairs(
    peaks: npt.NDArray[np.int64], centres: npt.NDArray[np.int64], tol: int = MATCH_TOLERANCE
) -> list[tuple[int, int]]:
    """One-to-one (peak, centre) index pairs within ``tol``, closest pairs first (ties: the
    lower peak index, then the lower centre index).

    Only the pairs within ``tol`` are formed (each peak's centres by binary search), never the
    peaks x centres distance table: a long recording holds thousands of events and an untrained
    model's curve many more peaks, and that table took gigabytes and seconds per call.
    """
    if peaks.size == 0 or centres.size == 0:
        return []
    peaks, centres = np.asarray(peaks, dtype=np.int64), np.asarray(centres, dtype=np.int64)
    by_time = np.argsort(centres, kind="stable")
    lo = np.searchsorted(centres[by_time], peaks - tol, side="left")
    hi = np.searchsorted(centres[by_time], peaks + tol, side="right")
    counts = hi - lo
    p_idx = np.repeat(np.arange(peaks.size), counts)
    within = np.arange(p_idx.size) - np.repeat(np.cumsum(counts) - counts, counts)  # 0, 1, ... per peak
    c_idx = by_time[np.repeat(lo, counts) + within]
    dist = np.abs(peaks[p_idx] - centres[c_idx])
    order = np.lexsort((c_idx, p_idx, dist))
    used_p: set[int] = set()
    used_c: set[int] = set()
    out = []
    for p, c in zip(p_idx[order].tolist(), c_idx[order].tolist(), strict=True):
        if p in used_p or c in used_c:
            continue
        used_p.add(p)
        used_c.add(c)
        out.append((p, c))
    return out


def match_events(
    peaks: npt.NDArray[np.int64], centres: npt.NDArray[np.int64], tol: int = MATCH_TOLERANCE
) -> npt.NDArray[np.int64]:
    """Localisation errors of one-to-one matches (closest pairs first) within ``tol``."""
    return np.asarray(
        [abs(int(peaks[p]) - int(centres[c])) for p, c in match_pairs(peaks, centres, tol)], dtype=np.int64
    )


@dataclass
class EventCounts:
    detections: int
    events: int
    errors: npt.NDArray[np.int64]

    @property
    def f1(self) -> float:
        tp = self.errors.size
        denom = self.detections + self.events
        return 2.0 * tp / denom if denom else 1.0


def event_counts(
    curves: Curves, events: Sequence[npt.NDArray[np.int64]], threshold: float, min_distance: int
) -> EventCounts:
    detections = 0
    errs = []
    for curve, centres in zip(curves, events, strict=True):
        peaks = find_peaks(curve, threshold, min_distance).index
        detections += peaks.size
        errs.append(match_events(peaks, centres))
    return EventCounts(detections, int(sum(e.size for e in events)), np.concatenate(errs))


def metrics(
    curves: Curves, events: Sequence[npt.NDArray[np.int64]], threshold: float, min_distance: int
) -> dict[str, float | int | None]:
    """The card's per-suite metrics for one detector's score curves (the matched filter's)."""
    maxima = np.array([float(c.max()) for c in curves])
    counts = event_counts(curves, events, threshold, min_distance)
    return _summary(maxima, maxima >= threshold, events, counts, threshold)


def shipped_metrics(
    model: OnnxModel, data: Dataset, threshold: float, min_distance: int
) -> tuple[dict[str, float | int | None], Curves]:
    """The card's per-suite metrics of the model as the service answers, and its raw curves.

    The service's own detection function (``app.core.model.detections``) on the exported
    file's curves: its peaks (found on the raw curve at the threshold mapped back), its
    decisions and its signal probabilities, not peaks found again on calibrated float32 curves.
    """
    raw = model_curves(model, data)
    found = detections(raw, threshold, min_distance, calibrator=model.card.calibrator)
    errors = [match_events(d.peaks.index, c) for d, c in zip(found, data.events, strict=True)]
    counts = EventCounts(
        sum(len(d.peaks) for d in found), data.n_events, np.concatenate(errors or [np.empty(0, np.int64)])
    )
    scores = np.array([d.probability for d in found])
    detected = np.array([d.detected for d in found], dtype=bool)
    return _summary(scores, detected, data.events, counts, threshold), raw


def _summary(
    scores: npt.NDArray[np.float64],
    detected: npt.NDArray[np.bool_],
    events: Sequence[npt.NDArray[np.int64]],
    counts: EventCounts,
    threshold: float,
) -> dict[str, float | int | None]:
    labels = np.array([e.size > 0 for e in events], dtype=bool)
    tp = counts.errors.size
    empty = ~labels
    auc = roc_auc(scores, labels)
    return {
        "signals": len(events),
        "events": counts.events,
        "auc": auc if np.isfinite(auc) else None,  # undefined without both kinds of signal
        "threshold": float(threshold),
        "precision": tp / counts.detections if counts.detections else 0.0,
        "recall": tp / counts.events if counts.events else 1.0,
        "f1": counts.f1,
        "loc_error_median": float(np.median(counts.errors)) if tp else None,
        "loc_error_p95": float(np.percentile(counts.errors, 95)) if tp else None,
        "false_alarm_rate": float(detected[empty].mean()) if empty.any() else 0.0,
    }


def false_alarm_rate(curves: Curves, events: Sequence[npt.NDArray[np.int64]], threshold: float) -> float:
    maxima = np.array([float(c.max()) for c, e in zip(curves, events, strict=True) if e.size == 0])
    return float((maxima >= threshold).mean()) if maxima.size else 0.0


def threshold_for_rate(curves: Curves, events: Sequence[npt.NDArray[np.int64]], rate: float) -> float:
    """The lowest threshold whose false-alarm rate on event-free signals is <= ``rate``."""
    maxima = np.sort([float(c.max()) for c, e in zip(curves, events, strict=True) if e.size == 0])
    if maxima.size == 0:
        raise ValueError("need event-free signals to set a false-alarm rate")
    allowed = int(np.floor(rate * maxima.size + 1e-9))  # signals allowed above threshold
    if allowed >= maxima.size:
        return float(maxima[0])
    # Just above the (allowed+1)-th highest maximum.
    return float(np.nextafter(maxima[maxima.size - 1 - allowed], np.inf))


# Raw thresholds tried for the operating point: 0.05-0.95 in steps of 0.025, then a tail for
# models whose raw scores sit high (a matched-filter path adds to the logit).
RAW_THRESHOLDS = (
    *(float(t) for t in np.round(np.arange(0.05, 0.951, 0.025), 3)),
    *(0.97, 0.98, 0.99, 0.995, 0.998, 0.999),
)


def choose_operating_point(
    curves: Curves,
    events: Sequence[npt.NDArray[np.int64]],
    thresholds: Sequence[float] = RAW_THRESHOLDS,
    distances: Sequence[int] = (5, 10, 15, 20, 25, 30, 40),
) -> tuple[float, int, float]:
    """The (threshold, min_distance) pair with the best pooled event F1, and that F1.

    The same F1s as ``event_counts`` at every pair, with the peaks found once per distance:
    the peaks at a threshold t are those at the lowest threshold whose score is >= t (a local
    maximum stays one when lower samples drop out; the distance rule keeps the highest peaks
    first, so the peaks >= t are decided before any lower one), and a signal's matches are
    recounted only when its set of peaks changes.
    """
    levels = sorted(set(float(t) for t in thresholds))
    n_events = int(sum(np.asarray(e).size for e in events))
    best = (-1.0, 0.5, 20)
    for d in distances:
        detections = np.zeros(len(levels), dtype=np.int64)
        matched = np.zeros(len(levels), dtype=np.int64)
        for curve, centres in zip(curves, events, strict=True):
            x = np.asarray(curve)
            index = find_peaks(x, levels[0], int(d)).index
            if not index.size:
                continue
            values = x[index]  # compared with each level in the curve's dtype, as find_peaks does
            above = values[None, :] >= np.asarray(levels, dtype=values.dtype)[:, None]
            count = above.sum(axis=1)  # peaks >= each level (non-increasing along the levels)
            detections += count
            true = np.asarray(centres, dtype=np.int64)
            if true.size == 0:
                continue
            k = 0
            while k < len(levels) and count[k]:
                end = k + int(np.searchsorted(-count[k:], -count[k], side="right"))  # same set of peaks
                matched[k:end] += len(match_pairs(index[above[k]], true))
                k = end
        f1 = {
            t: (2.0 * tp / (det + n_events) if det + n_events else 1.0)
            for t, det, tp in zip(levels, detections.tolist(), matched.tolist(), strict=True)
        }
        for t in thresholds:
            # Prefer higher F1, then the larger distance and threshold (fewer duplicates).
            if (f1[float(t)], d, t) > (best[0], best[2], best[1]):
                best = (f1[float(t)], float(t), int(d))
    return best[1], best[2], best[0]


def best_f1_threshold(
    curves: Curves, events: Sequence[npt.NDArray[np.int64]], min_distance: int, levels: int = 200
) -> float:
    """The threshold with the best pooled event F1 at ``min_distance`` (``choose_operating_point``
    over ``levels`` quantiles of the curves' peak values): for scores on any scale, such as the
    matched filter's."""
    values = np.concatenate([find_peaks(c, -np.inf, min_distance).probability for c in curves])
    if values.size == 0:
        raise ValueError("need peaks to choose a threshold")
    grid = np.unique(np.quantile(values.astype(np.float64), np.linspace(0.0, 1.0, levels)))
    threshold, _, _ = choose_operating_point(curves, events, tuple(float(t) for t in grid), (min_distance,))
    return threshold
