"""Calibration maps and their use by the one detection function the service and evaluation share."""

from pathlib import Path

import numpy as np
import pytest

from app.core.calibration import IDENTITY, Calibrator, MonotoneMap, logit, sigmoid
from app.core.card import Calibration, load_card
from app.core.model import detections
from app.core.peaks import find_peaks

ROOT = Path(__file__).resolve().parents[2]
MAP = MonotoneMap(np.array([-3.0, 0.0, 2.0, 5.0]), np.array([-4.0, -1.0, 0.5, 3.0]))


def test_identity_returns_the_input_unchanged() -> None:
    p = np.array([0.0, 0.2, 1.0], dtype=np.float32)
    assert IDENTITY.peak.identity and np.array_equal(IDENTITY.peak(p), p)
    assert np.array_equal(IDENTITY.peak.inverse(p), p)


def test_map_goes_through_its_knots_and_extrapolates_with_slope_one() -> None:
    assert MAP(sigmoid(MAP.x)) == pytest.approx(sigmoid(MAP.y))
    assert logit(MAP(sigmoid(-5.0))) == pytest.approx(-6.0)  # y0 + (z - x0)
    assert logit(MAP(sigmoid(6.0))) == pytest.approx(4.0)
    assert logit(MAP(sigmoid(1.0))) == pytest.approx(-0.25)  # halfway between (0,-1) and (2,0.5)


def test_map_is_bit_for_bit_the_plain_formula() -> None:
    """sigmoid(f(logit p)) with f written out as documented: interpolation, then slope 1 below
    the first knot and above the last. The map computes it in fewer steps, to the last bit."""

    def plain(p: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        z = logit(p)
        return sigmoid(np.interp(z, x, y) + np.minimum(z - x[0], 0.0) + np.maximum(z - x[-1], 0.0))

    rng = np.random.default_rng(2)
    p = np.concatenate([rng.uniform(0, 1, 5000), sigmoid(MAP.x), sigmoid(MAP.y), [0.0, 1.0, 1e-12]])
    for q in (p, p.astype(np.float32)):
        np.testing.assert_array_equal(MAP(q), plain(q, MAP.x, MAP.y))
        np.testing.assert_array_equal(MAP.inverse(q), plain(q, MAP.y, MAP.x))
    assert float(MAP(0.3)) == float(plain(np.array([0.3]), MAP.x, MAP.y)[0])


def test_both_maps_at_once_are_each_map_bit_for_bit() -> None:
    other = MonotoneMap(np.array([-2.0, 1.0]), np.array([-3.0, 2.0]))
    rng = np.random.default_rng(3)
    maxima = rng.uniform(0, 1, 4)
    for peaks in (rng.uniform(0, 1, 7).astype(np.float32), np.empty(0, np.float32)):
        for cal in (Calibrator(signal=other, peak=MAP), Calibrator(peak=MAP), Calibrator(signal=other)):
            signal_p, peak_p = cal.both(maxima, peaks)
            np.testing.assert_array_equal(signal_p, cal.signal(maxima))
            np.testing.assert_array_equal(peak_p, cal.peak(peaks))


def test_map_is_strictly_increasing_and_invertible() -> None:
    p = np.sort(np.random.default_rng(0).uniform(1e-6, 1 - 1e-6, 5000))
    q = MAP(p)
    assert np.all(np.diff(q) > 0)
    assert MAP.inverse(q) == pytest.approx(p, rel=1e-7, abs=1e-12)
    assert np.shape(MAP(0.3)) == () and 0 < float(MAP(0.3)) < 1
    assert MAP(np.array([0.0, 1.0])).tolist() == pytest.approx([sigmoid(logit(1e-9) - 1.0), 1.0], abs=1e-7)


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        ([0.0, 0.0], [0.0, 1.0], "strictly increasing"),
        ([0.0, 1.0], [1.0, 0.5], "strictly increasing"),
        ([0.0, 1.0], [0.0], "one length"),
        ([0.0, float("nan")], [0.0, 1.0], "finite"),
    ],
)
def test_bad_knots_are_refused(x: list[float], y: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MonotoneMap(np.array(x), np.array(y))
    with pytest.raises(ValueError, match=message):
        Calibration.model_validate({"signal": {"x": x, "y": y}, "peak": {"x": [0.0], "y": [0.0]}})


def test_detections_find_the_raw_peaks_and_report_calibrated_values() -> None:
    rng = np.random.default_rng(1)
    curves = [rng.uniform(0, 1, 500).astype(np.float32) ** 3 for _ in range(5)]
    signal_map = MonotoneMap(np.array([-2.0, 1.0]), np.array([-3.0, 2.0]))
    cal = Calibrator(signal=signal_map, peak=MAP)
    threshold = 0.3
    raw_threshold = float(MAP.inverse(threshold))
    got = detections(curves, threshold, 7, calibrator=cal, return_scores=True)
    for curve, d in zip(curves, got, strict=True):
        raw = find_peaks(curve, raw_threshold, 7)
        assert np.array_equal(d.peaks.index, raw.index)  # the map moves no peak
        assert d.peaks.probability == pytest.approx(MAP(raw.probability), rel=1e-6)
        assert np.all(d.peaks.probability >= threshold - 1e-6)
        assert d.probability == pytest.approx(float(signal_map(curve.max())))
        assert d.detected == (len(d.peaks) > 0)
        assert d.scores is not None and d.scores == pytest.approx(MAP(curve), rel=1e-6)
        # The same peaks as picking on the calibrated curve with the threshold as given.
        assert np.array_equal(find_peaks(d.scores, threshold, 7).index, d.peaks.index)


def test_detections_without_calibration_are_raw() -> None:
    curve = np.array([0.1, 0.7, 0.2, 0.6, 0.1], dtype=np.float32)
    (d,) = detections([curve], 0.5, 1, return_scores=True)
    assert d.probability == pytest.approx(0.7) and d.detected
    assert d.peaks.index.tolist() == [1, 3] and d.scores is curve


def test_detections_of_a_request_split_the_mapped_peaks_back_to_their_signals() -> None:
    """The peak map runs once over the request's peaks: each signal gets its own back."""
    quiet = np.full(50, 0.01, dtype=np.float32)
    one = quiet.copy()
    one[10] = 0.9
    two = quiet.copy()
    two[[5, 40]] = [0.8, 0.95]
    cal = Calibrator(peak=MAP)
    got = detections([quiet, two, quiet, one, quiet], 0.5, 3, calibrator=cal)
    assert [d.peaks.index.tolist() for d in got] == [[], [5, 40], [], [10], []]
    for curve, d in zip([quiet, two, quiet, one, quiet], got, strict=True):
        alone = detections([curve], 0.5, 3, calibrator=cal)[0]
        assert np.array_equal(d.peaks.probability, alone.peaks.probability)
        assert d.probability == alone.probability and d.detected == alone.detected
    assert got[1].peaks.probability == pytest.approx(MAP(np.array([0.8, 0.95])), rel=1e-6)


def test_a_peak_is_reported_exactly_when_the_signal_is_detected() -> None:
    """Both compare the raw curve with the threshold mapped back; a threshold whose raw value
    falls between two float32s must not let a peak through while the signal is not detected."""
    calibrator = Calibrator(signal=MAP, peak=MAP)
    top = np.float32(0.8)
    curve = np.asarray([0.1, top, 0.1], dtype=np.float32)
    raw = float(top) + float(np.spacing(top)) / 4  # above the peak's raw score, rounds onto it
    threshold = float(MAP(raw))
    assert calibrator.peak.raw_threshold(threshold) > float(top)
    (d,) = detections([curve], threshold, 1, calibrator=calibrator)
    assert not d.detected and len(d.peaks) == 0
    reported = float(MAP(float(top)).astype(np.float32))
    (d,) = detections([curve], reported, 1, calibrator=calibrator)
    assert d.detected and d.peaks.index.tolist() == [1] and float(d.peaks.probability[0]) == reported
    # The map's exact value at the peak is above its float32, the probability reported: a
    # threshold there is not reached, by the peak nor by the signal.
    assert float(MAP(float(top))) > reported
    (d,) = detections([curve], float(MAP(float(top))), 1, calibrator=calibrator)
    assert not d.detected and len(d.peaks) == 0


@pytest.mark.parametrize("name", ["bump", "arrival", "test map"])
def test_a_peak_whose_probability_is_the_threshold_reaches_it(name: str) -> None:
    """The threshold is on the scale of the probabilities reported (float32): a peak whose
    reported probability is the threshold itself is kept, and one just below it is not. With
    the threshold mapped back by the map's inverse, about every other such peak was dropped
    (its float32 rounded up, above its raw score's exact value)."""
    peak_map = MAP if name == "test map" else load_card(ROOT / "models" / name).calibrator.peak
    calibrator = Calibrator(peak=peak_map)
    rng = np.random.default_rng(4)
    curve = rng.uniform(0, 1, 4000).astype(np.float32)
    curve[::2] = 0  # every other sample a peak
    reported = peak_map(curve[1::2]).astype(np.float32)
    thresholds = [float(p) for p in reported[:200] if 0 < p < 1]
    for threshold in thresholds:
        raw = peak_map.raw_threshold(threshold)
        # Exactly the raw scores whose reported probability is at or above the threshold.
        assert np.array_equal(
            curve >= raw, peak_map(curve).astype(np.float32).astype(np.float64) >= threshold
        )
        (d,) = detections([curve], threshold, 1, calibrator=calibrator, return_scores=True)
        assert d.scores is not None
        assert d.peaks.index.tolist() == (d.scores >= np.float32(threshold)).nonzero()[0].tolist()
        assert d.detected and float(d.peaks.probability.min()) == threshold
        above = float(np.nextafter(threshold, 1.0))  # between this float32 and the next
        (d,) = detections([curve], above, 1, calibrator=calibrator)
        assert float(d.peaks.probability.min()) > above


def test_thresholds_beyond_the_reported_probabilities_map_back_beyond_every_score() -> None:
    low = MonotoneMap(np.array([0.0, 1.0]), np.array([-5.0, -4.0]))  # below 1 - 1e-7 at a raw 1.0
    top = float(low(np.float32(1.0)).astype(np.float32))
    beyond = float(np.nextafter(top, 1.0))
    assert top < beyond < 1 and low.raw_threshold(beyond) == float("inf")
    (d,) = detections([np.ones(5, dtype=np.float32)], beyond, 1, calibrator=Calibrator(peak=low))
    assert not d.detected and len(d.peaks) == 0
    (d,) = detections([np.ones(5, dtype=np.float32)], top, 1, calibrator=Calibrator(peak=low))
    assert d.detected and d.peaks.index.tolist() == [2]
    assert MAP.raw_threshold(1e-12) == -float(np.finfo(np.float32).max)  # every score reaches it
    assert IDENTITY.peak.raw_threshold(0.3) == 0.3
