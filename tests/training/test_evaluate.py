"""Training's evaluation helpers (training.evaluate) against direct computations."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from app.core.model import OnnxModel
from training import evaluate as ev
from training.scenario import make_dataset, suites


def _brute_operating_point(
    curves: list[np.ndarray],
    events: list[np.ndarray],
    thresholds: tuple[float, ...],
    distances: tuple[int, ...],
) -> tuple[float, int, float]:
    """The definition: event_counts (find_peaks at each threshold) for every pair."""
    best = (-1.0, 0.5, 20)
    for d in distances:
        for t in thresholds:
            f1 = ev.event_counts(curves, events, float(t), int(d)).f1
            if (f1, d, t) > (best[0], best[2], best[1]):
                best = (f1, float(t), int(d))
    return best[1], best[2], best[0]


def _curves(rng: np.random.Generator, n: int, dtype: type) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Noisy curves with bumps near some events, plateaus, values exactly at thresholds and
    peaks closer than the distances tried."""
    curves, events = [], []
    for _ in range(n):
        t = int(rng.integers(40, 200))
        x = rng.uniform(0, 0.6, t)
        centres = np.sort(rng.choice(np.arange(5, t - 5), size=int(rng.integers(0, 4)), replace=False))
        for c in centres:
            if rng.random() < 0.8:  # most events get a peak, a few samples off
                x[min(t - 1, c + int(rng.integers(-3, 4)))] = rng.uniform(0.3, 1.0)
        for _ in range(int(rng.integers(0, 4))):  # false alarms, some next to each other
            j = int(rng.integers(0, t - 1))
            x[j] = x[j + 1] = rng.uniform(0.3, 1.0)
        # exactly at a threshold: float32(0.35) is below 0.35, float32(0.3) above 0.3
        x[int(rng.integers(0, t))] = 0.35 if rng.random() < 0.5 else 0.3
        curves.append(x.astype(dtype))
        events.append(centres.astype(np.int64))
    return curves, events


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_operating_point_equals_event_counts_at_every_pair(dtype: type) -> None:
    rng = np.random.default_rng(7)
    curves, events = _curves(rng, 120, dtype)
    thresholds = (0.2, 0.3, 0.35, 0.5, 0.65, 0.8, 0.95)
    distances = (1, 3, 10)
    fast = ev.choose_operating_point(curves, events, thresholds, distances)
    assert fast == _brute_operating_point(curves, events, thresholds, distances)
    # every pair, not only the best one: each single pair is an operating point of its own
    for d in distances:
        for t in thresholds:
            expected = ev.event_counts(curves, events, t, d).f1
            assert ev.choose_operating_point(curves, events, (t,), (d,)) == (t, d, expected)


def test_operating_point_without_any_peak() -> None:
    curves = [np.zeros(50, dtype=np.float32), np.full(30, 0.1, dtype=np.float32)]
    events = [np.array([10]), np.array([], dtype=np.int64)]
    assert ev.choose_operating_point(curves, events, (0.5, 0.9), (5,)) == (0.9, 5, 0.0)
    assert ev.choose_operating_point(curves, [np.array([], dtype=np.int64)] * 2, (0.5,), (5,)) == (
        0.5,
        5,
        1.0,
    )


def test_best_f1_threshold_is_the_best_of_the_peak_values() -> None:
    """For scores on any scale (the matched filter's): no peak value as threshold does better."""
    rng = np.random.default_rng(4)
    curves, events = _curves(rng, 30, np.float32)
    curves = [c * 7.0 - 2.0 for c in curves]  # not probabilities
    t = ev.best_f1_threshold(curves, events, 10, levels=10_000)
    best = ev.event_counts(curves, events, t, 10).f1
    values = np.unique(np.concatenate([ev.find_peaks(c, -np.inf, 10).probability for c in curves]))
    assert all(ev.event_counts(curves, events, float(v), 10).f1 <= best + 1e-12 for v in values[::7])


def test_card_metrics_are_those_of_the_service_detections(tmp_path: Path) -> None:
    """A peak map that lifts high scores past float32's 1.0: found on calibrated float32 curves,
    neighbouring peak values merge into plateaus and peaks move; the service finds them on
    the raw curve (app.core.model.detections). The card's metrics must be the service's."""
    model_dir = tmp_path / "bump"
    shutil.copytree(Path(__file__).resolve().parents[2] / "models" / "bump", model_dir)
    card = json.loads((model_dir / "card.json").read_text())
    card["calibration"]["peak"] = {"x": [-6.0, -2.0, 0.0], "y": [-6.0, 12.0, 16.0]}
    (model_dir / "card.json").write_text(json.dumps(card))
    model = OnnxModel(model_dir)
    data = make_dataset(suites()["white"], 200, seed=5)
    got, raw = ev.shipped_metrics(model, data, model.card.threshold, model.card.min_distance)
    assert len(raw) == len(data)
    shipped = model.detect(data.signals)
    errors = np.concatenate(
        [ev.match_events(d.peaks.index, c) for d, c in zip(shipped, data.events, strict=True)]
    )
    detections = sum(len(d.peaks) for d in shipped)
    labels = np.array([e.size > 0 for e in data.events])
    assert got["f1"] == 2 * errors.size / (detections + data.n_events)
    assert got["loc_error_median"] == np.median(errors) and got["loc_error_p95"] == np.percentile(errors, 95)
    assert got["auc"] == ev.roc_auc(np.array([d.probability for d in shipped]), labels)
    assert got["false_alarm_rate"] == np.mean(
        [d.detected for d, h in zip(shipped, labels, strict=True) if not h]
    )


def test_a_suite_without_event_free_signals_has_no_auc() -> None:
    """AUC needs signals of both kinds: without event-free ones it is null in the card, not
    NaN (which JSON does not have)."""
    curves = [np.zeros(100, np.float32) for _ in range(3)]
    for curve, centre in zip(curves, (20, 50, 80), strict=True):
        curve[centre] = 0.9
    events = [np.array([c], np.int64) for c in (20, 50, 80)]
    m = ev.metrics(curves, events, 0.5, 10)
    assert m["auc"] is None and m["f1"] == 1.0
    m = ev.metrics([*curves, np.zeros(100, np.float32)], [*events, np.empty(0, np.int64)], 0.5, 10)
    assert m["auc"] == 1.0


def _table_match_pairs(peaks: np.ndarray, centres: np.ndarray, tol: int) -> list[tuple[int, int]]:
    """The definition: every (peak, centre) pair within ``tol`` by distance, ties in index order,
    taken greedily."""
    dist = np.abs(peaks[:, None] - centres[None, :])
    pairs = sorted((int(d), p, c) for (p, c), d in np.ndenumerate(dist) if d <= tol)
    used_p, used_c, out = set(), set(), []
    for _, p, c in pairs:
        if p not in used_p and c not in used_c:
            used_p.add(p)
            used_c.add(c)
            out.append((p, c))
    return out


def test_match_pairs_is_the_greedy_closest_first_matching() -> None:
    rng = np.random.default_rng(3)
    for _ in range(500):
        span = int(rng.integers(5, 60))
        peaks = rng.integers(0, span, int(rng.integers(0, 12)))  # unsorted, repeated values too
        centres = rng.integers(0, span, int(rng.integers(0, 12)))
        tol = int(rng.integers(0, 8))
        assert ev.match_pairs(peaks, centres, tol) == _table_match_pairs(peaks, centres, tol)


def test_match_pairs_on_a_long_recording_with_many_events() -> None:
    """100 000 events and 200 000 peaks in one signal: a peaks x centres table would be 160 GB."""
    centres = np.arange(100_000, dtype=np.int64) * 10
    peaks = np.arange(0, 1_000_000, 5, dtype=np.int64)
    pairs = ev.match_pairs(peaks, centres)
    assert len(pairs) == centres.size and all(peaks[p] == centres[c] for p, c in pairs[:100])
