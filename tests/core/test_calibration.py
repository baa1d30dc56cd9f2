"""Calibration maps and their use by the one detection function the service and evaluation share."""

import numpy as np
import pytest

from app.core.calibration import IDENTITY, Calibrator, MonotoneMap, logit, sigmoid
from app.core.card import Calibration
from app.core.model import detections
from app.core.peaks import find_peaks

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
    assert calibrator.peak.inverse_scalar(threshold) > float(top)
    (d,) = detections([curve], threshold, 1, calibrator=calibrator)
    assert not d.detected and len(d.peaks) == 0
    (d,) = detections([curve], float(MAP(float(top))), 1, calibrator=calibrator)
    assert d.detected and d.peaks.index.tolist() == [1]
