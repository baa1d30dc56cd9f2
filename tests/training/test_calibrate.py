"""Fitting calibration maps (isotonic regression) and measuring calibration (ECE)."""

import numpy as np
import pytest

from app.core.calibration import logit
from training.calibrate import fit_map, pav, peak_samples, reliability


def test_pav_is_the_isotonic_fit() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    y = np.array([0.0, 1.0, 0.0, 0.0, 1.0, 1.0])
    mx, my, n = pav(x, y)
    # Blocks: {1}, {2,3,4} pooled to 1/3, {5,6}.
    assert my.tolist() == pytest.approx([0.0, 1 / 3, 1.0])
    assert n.tolist() == [1, 3, 2] and mx.tolist() == pytest.approx([1.0, 3.0, 5.5])
    # Equal x values are pooled first: blocks have distinct, increasing means.
    mx, my, _ = pav(np.array([1.0, 1.0, 2.0, 2.0]), np.array([1.0, 0.0, 0.0, 1.0]))
    assert mx.tolist() == pytest.approx([1.5]) and my.tolist() == pytest.approx([0.5])


def test_pav_minimises_squared_error_among_monotone_fits() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=60)
    y = (rng.uniform(size=60) < 1 / (1 + np.exp(-2 * x))).astype(float)
    _, my, n = pav(x, y)
    assert np.all(np.diff(my) > 0) and n.sum() == 60
    fitted = np.repeat(my, n.astype(int))
    ys = y[np.argsort(x, kind="stable")]
    best = ((fitted - ys) ** 2).sum()
    for _ in range(200):  # random monotone competitors do no better
        other = np.sort(rng.uniform(size=60))
        assert ((other - ys) ** 2).sum() >= best - 1e-9


def test_reliability_ece() -> None:
    p = np.array([0.05, 0.05, 0.95, 0.95])
    assert reliability(p, np.array([0, 0, 1, 1]))["ece"] == pytest.approx(0.05)
    r = reliability(np.array([0.25, 0.25, 0.75, 1.0]), np.array([1, 0, 0, 1]))
    # bins: [0.2,0.3): mean 0.25 vs rate 0.5 (2 samples); [0.7,0.8): 0.75 vs 0; [0.9,1]: 1.0 vs 1.
    assert r["ece"] == pytest.approx((2 * 0.25 + 0.75 + 0.0) / 4)
    assert (
        r["bins"]["count"][2] == 2 and r["bins"]["count"][9] == 1 and r["bins"]["mean_probability"][0] is None
    )


def test_fit_map_fixes_a_miscalibrated_score() -> None:
    """Scores that are overconfident (true P = sigmoid(logit(s) / 3)) become calibrated."""
    rng = np.random.default_rng(5)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        z = rng.normal(0, 4, n)
        s = 1 / (1 + np.exp(-z))
        y = rng.uniform(size=n) < 1 / (1 + np.exp(-z / 3))
        return s, y

    s, y = draw(20000)
    m = fit_map(s, y)
    assert np.all(np.diff(m.x) > 0) and np.all(np.diff(m.y) > 0)
    s2, y2 = draw(20000)  # held out
    before, after = reliability(s2, y2)["ece"], reliability(m(s2), y2)["ece"]
    assert before > 0.08 and after < 0.02
    with pytest.raises(ValueError, match="both outcomes"):
        fit_map(s, np.ones_like(y))
    assert logit(m(0.5)) == pytest.approx(0.0, abs=0.3)


def test_peak_samples_label_each_peak() -> None:
    curve = np.zeros(100, dtype=np.float32)
    curve[[10, 40, 70]] = [0.9, 0.5, 0.03]
    values, hits = peak_samples([curve], [np.array([12, 90])], min_distance=5)
    assert values.tolist() == pytest.approx([0.9, 0.5, 0.03])
    assert hits.tolist() == [True, False, False]  # 40 and 70 are far from any event
