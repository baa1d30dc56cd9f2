from unittest.mock import patch

import numpy as np
import pytest

from app.core import peaks as peaks_module
from app.core.peaks import find_peaks, find_peaks_flat, find_peaks_many, local_maxima, select_by_distance


def f32(values: list[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def test_simple_maxima_above_threshold() -> None:
    s = f32([0, 0.2, 0.9, 0.3, 0.1, 0.6, 0.2, 0.45, 0.1])
    p = find_peaks(s, threshold=0.5, min_distance=1)
    assert p.index.tolist() == [2, 5]
    assert p.probability.tolist() == pytest.approx([0.9, 0.6])


def test_threshold_is_inclusive() -> None:
    s = f32([0.1, 0.5, 0.1])
    assert find_peaks(s, 0.5, 1).index.tolist() == [1]
    assert find_peaks(s, 0.5000001, 1).index.tolist() == []


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_a_threshold_between_two_floats_of_the_scores_type_is_not_rounded(dtype: type) -> None:
    """A threshold just above a score (by less than half the score's float spacing) leaves it
    out: NumPy alone compares in the scores' type, the threshold rounded down onto the score."""
    value = dtype(0.7)
    threshold = float(value) + float(np.spacing(value)) / 4  # rounds to ``value`` in ``dtype``
    s = np.asarray([0.1, value, 0.1], dtype=dtype)
    assert find_peaks(s, threshold, 1).index.tolist() == []
    assert [p.index.tolist() for p in find_peaks_many([s, s], threshold, 1)] == [[], []]
    assert find_peaks(s, float(value), 1).index.tolist() == [1]  # at the threshold: in


def test_plateau_counts_once_at_its_middle() -> None:
    s = f32([0.1, 0.8, 0.8, 0.8, 0.8, 0.1])  # plateau 1..4 -> middle rounded down: 2
    assert local_maxima(s, 0.5).tolist() == [2]
    s = f32([0.1, 0.8, 0.8, 0.8, 0.1])
    assert local_maxima(s, 0.5).tolist() == [2]


def test_plateau_on_a_slope_is_not_a_peak() -> None:
    s = f32([0.1, 0.7, 0.7, 0.9, 0.1])
    assert local_maxima(s, 0.5).tolist() == [3]


def test_edges_can_be_peaks() -> None:
    s = f32([0.9, 0.5, 0.2, 0.5, 0.95])
    assert local_maxima(s, 0.6).tolist() == [0, 4]
    assert local_maxima(f32([0.7]), 0.5).tolist() == [0]
    assert local_maxima(f32([0.7, 0.7, 0.7]), 0.5).tolist() == [1]


def test_nan_counts_as_below_the_threshold_and_integers_are_scores() -> None:
    s = f32([0.9, float("nan"), 0.8, 0.8, float("nan"), 0.6, 0.7])
    assert local_maxima(s, 0.5).tolist() == [0, 2, 6]
    assert local_maxima(np.array([0, 3, 1, 3, 3]), 2).tolist() == [1, 3]


def test_minus_infinity_at_an_end_with_a_threshold_of_minus_infinity() -> None:
    """A threshold of -inf takes every peak (as training's evaluation asks); a run of -inf
    samples at a curve's end, or an empty curve first or last among many (its -inf gap), is
    never a peak, and not a plateau whose end is never found."""
    inf = float("inf")
    for dtype in (np.float16, np.float32, np.float64):
        assert local_maxima(np.array([-inf, -inf, 1, -inf], dtype=dtype), -inf).tolist() == [2]
        assert local_maxima(np.array([0.5, -inf, -inf], dtype=dtype), -inf).tolist() == [0]
        assert local_maxima(np.array([-inf, 0.2, 0.1, 0.3], dtype=dtype), -inf).tolist() == [1, 3]
        assert local_maxima(np.array([-inf, -inf], dtype=dtype), -inf).tolist() == []
    x = f32([0.2, 0.6, 0.2])
    got = find_peaks_many([f32([]), x, f32([]), x, f32([])], -inf, 1)
    assert [p.index.tolist() for p in got] == [[], [1], [], [1], []]


def test_nothing_above_threshold() -> None:
    p = find_peaks(f32([0.1, 0.2, 0.1]), 0.5, 10)
    assert len(p) == 0 and p.index.dtype == np.int64


def test_min_distance_keeps_the_higher_peak() -> None:
    s = np.zeros(100, dtype=np.float32)
    s[[10, 14, 40, 47, 60]] = [0.6, 0.9, 0.7, 0.8, 0.95]
    assert find_peaks(s, 0.5, 1).index.tolist() == [10, 14, 40, 47, 60]
    assert find_peaks(s, 0.5, 5).index.tolist() == [14, 40, 47, 60]
    assert find_peaks(s, 0.5, 8).index.tolist() == [14, 47, 60]  # 40 (0.7) loses to 47 (0.8)
    assert find_peaks(s, 0.5, 14).index.tolist() == [14, 40, 60]


def test_min_distance_greedy_order() -> None:
    idx = np.array([10, 14, 40, 47, 60])
    val = np.array([0.6, 0.9, 0.7, 0.8, 0.95])
    # 60 kept; 14 kept; 47 is 13 from 60 -> out; 40 is 20 from 60, 26 from 14 -> kept;
    # 10 is 4 from 14 -> out.
    assert select_by_distance(idx, val, 14).tolist() == [14, 40, 60]


def test_equal_peaks_earlier_wins() -> None:
    idx = np.array([5, 8])
    assert select_by_distance(idx, np.array([0.7, 0.7]), 5).tolist() == [5]


def test_distance_exactly_min_distance_is_allowed() -> None:
    idx = np.array([5, 15])
    assert select_by_distance(idx, np.array([0.7, 0.9]), 10).tolist() == [5, 15]
    assert select_by_distance(idx, np.array([0.7, 0.9]), 11).tolist() == [15]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="1-D"):
        local_maxima(np.zeros((2, 2)), 0.5)
    with pytest.raises(ValueError, match="min_distance"):
        select_by_distance(np.array([1, 2]), np.array([0.5, 0.6]), 0)


def test_peaks_are_sorted_local_maxima_spaced_by_min_distance() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        s = rng.random(int(rng.integers(1, 300))).astype(np.float32)
        thr, dist = float(rng.uniform(0.2, 0.9)), int(rng.integers(1, 30))
        p = find_peaks(s, thr, dist)
        assert np.all(np.diff(p.index) >= dist)
        assert np.all(s[p.index] >= thr)
        for i in p.index:
            assert (i == 0 or s[i] > s[i - 1]) and (i == s.size - 1 or s[i] > s[i + 1])
        # Every local maximum above threshold is within min_distance of a kept peak at least as high.
        for i in local_maxima(s, thr):
            near = p.index[np.abs(p.index - i) < dist]
            assert near.size and s[near].max() >= s[i]


def test_memory_follows_the_samples_above_threshold() -> None:
    """A 10-million-sample curve with sparse events: the search does not copy the whole curve."""
    import tracemalloc

    rng = np.random.default_rng(0)
    x = (rng.random(10_000_000) * 0.3).astype(np.float32)
    x[rng.choice(x.size, 500, replace=False)] = 0.9
    tracemalloc.start()
    try:
        peaks = find_peaks(x, 0.5, 1)
        peak_bytes = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(peaks) == 500
    assert peak_bytes < 20 * 2**20  # the curve itself is 40 MB; a bool mask is 10 MB


def test_memory_follows_a_part_when_most_samples_are_above_threshold() -> None:
    """A 10-million-sample curve nearly all above the threshold (2.5 million local maxima): the
    search holds one part's arrays at a time (439 MiB when the whole curve was searched at once)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    x = np.convolve(rng.random(10_000_000), np.ones(5) / 5, mode="same").astype(np.float32)
    tracemalloc.start()
    try:
        maxima = local_maxima(x, 1e-6)
        peak_bytes = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert maxima.size > 2_000_000
    assert peak_bytes < 2.5 * maxima.nbytes + 40 * peaks_module.PART_SAMPLES  # the result twice, and a part


def test_many_curves_are_kept_apart() -> None:
    # A plateau across the end of one curve and the start of the next is two edge peaks, and
    # a peak never suppresses one of another curve, however large min_distance is.
    a, b = f32([0.1, 0.8, 0.8]), f32([0.8, 0.8, 0.1, 0.9])
    got = find_peaks_many([a, b], 0.5, 1000)
    assert [p.index.tolist() for p in got] == [[1], [3]]
    assert [p.index.tolist() for p in find_peaks_many([a, b], 0.5, 1)] == [[1], [0, 3]]
    assert got[1].probability.dtype == np.float32 and got[1].probability.tolist() == pytest.approx([0.9])


def test_many_curves_in_float64_and_none() -> None:
    x = np.array([0.2, 0.6, 0.2], dtype=np.float64)
    assert [p.index.tolist() for p in find_peaks_many([x, x[:2], x], 0.5, 2)] == [[1], [1], [1]]
    assert find_peaks_many([], 0.5, 3) == []
    with pytest.raises(ValueError, match="min_distance"):
        find_peaks_many([x], 0.5, 0)
    with pytest.raises(ValueError, match="1-D"):
        find_peaks_many([x, np.zeros((2, 2))], 0.5, 1)


def test_flat_peaks_give_each_curves_greatest_score_from_the_same_pass() -> None:
    nan, inf = float("nan"), float("inf")
    curves = [f32([0.1, 0.9, 0.2]), f32([-inf, -inf]), f32([0.3]), f32([0.7, nan, 0.8]), f32([0.6, 0.95])]
    flat = find_peaks_flat(curves, 0.5, 1, maxima=True)
    assert flat.maxima is not None
    assert (
        flat.maxima.tolist()[:3]
        == [c.max().item() for c in curves[:3]]
        == [f32([0.9]).item(), -inf, f32([0.3]).item()]
    )
    assert np.isnan(flat.maxima[3]) and flat.maxima[4] == f32([0.95])[0]
    assert [p.index.tolist() for p in flat.split()] == [
        p.index.tolist() for p in find_peaks_many(curves, 0.5, 1)
    ]
    # Values given to split stand in for the scores, peak by peak.
    stand_in = np.arange(flat.index.size, dtype=np.float32)
    assert np.concatenate([p.probability for p in flat.split(stand_in)]).tolist() == stand_in.tolist()
    (one,) = find_peaks_flat([curves[0]], 0.5, 1, maxima=True).maxima.tolist()  # type: ignore[union-attr]
    assert one == f32([0.9]).item()
    assert find_peaks_flat(curves, 0.5, 1).maxima is None
    # An empty curve has peaks (none), but no greatest score.
    assert [p.index.tolist() for p in find_peaks_many([f32([]), curves[0]], 0.5, 1)] == [[], [1]]
    for many in ([f32([]), curves[0]], [curves[0], f32([])], [f32([])]):
        with pytest.raises(ValueError, match="empty"):
            find_peaks_flat(many, 0.5, 1, maxima=True)


def test_a_distance_up_to_int64s_end_acts_as_one_past_the_signal() -> None:
    """The API takes min_distance up to 2**63 - 1: positions plus it must not overflow."""
    x = np.zeros(2000, dtype=np.float32)
    x[[300, 1000, 1700]] = [0.9, 0.8, 0.95]
    for distance in (2**63 - 1, 2**40, 2001):
        assert find_peaks(x, 0.5, distance).index.tolist() == [1700]
        assert [p.index.tolist() for p in find_peaks_many([x, x[:1200]], 0.5, distance)] == [[1700], [300]]
        assert select_by_distance(
            np.array([300, 1000, 1700]), np.array([0.9, 0.8, 0.95]), distance
        ).tolist() == [1700]


def _greedy_only(index: np.ndarray, values: np.ndarray, distance: int) -> list[int]:
    with patch.object(peaks_module, "GREEDY_MAX_PEAKS", index.size):
        return select_by_distance(index, values, distance).tolist()


@pytest.mark.parametrize("distance", [2, 5, 40, 1000, 10**6])
def test_many_peaks_are_settled_in_rounds_as_the_greedy_pass_settles_them(distance: int) -> None:
    """A low threshold on a long curve: about 50 000 peaks, most settled in whole-array rounds."""
    rng = np.random.default_rng(distance)
    x = np.convolve(rng.random(200_000), np.ones(3) / 3, mode="same").astype(np.float32)
    x[rng.choice(x.size, 2000)] = np.float32(0.5)  # ties between distant and near peaks
    idx = local_maxima(x, 0.0)
    assert idx.size > 20 * peaks_module.GREEDY_MAX_PEAKS
    kept = select_by_distance(idx, x[idx], distance).tolist()
    assert kept == _greedy_only(idx, x[idx], distance)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_rounds_rank_any_score_dtype_as_the_greedy_pass(dtype: type) -> None:
    """float32 scores are ranked by their bits: signs, -0.0 and ties must order as the values."""
    rng = np.random.default_rng(1)
    levels = np.array([-np.inf, -3.5, -1.0, -0.0, 0.0, 1e-30, 0.25, 2.0, np.inf])
    if dtype is np.int32:
        levels = np.arange(-4, 5)
    values = rng.choice(levels, 30_000).astype(dtype)
    idx = np.sort(rng.choice(100_000, values.size, replace=False))
    with patch.object(peaks_module, "GREEDY_MAX_PEAKS", 0):
        kept = select_by_distance(idx, values, 7).tolist()
    assert kept == _greedy_only(idx, values, 7)


def test_a_staircase_the_rounds_cannot_settle_goes_through_the_greedy_pass() -> None:
    """Each peak a little higher than the last, closer than the distance: a round settles only
    the top, so the rest goes through the greedy pass: every other peak kept."""
    idx = np.arange(0, 20_000, 2)
    values = np.linspace(0.1, 0.9, idx.size).astype(np.float32)
    kept = select_by_distance(idx, values, 3).tolist()
    assert kept == idx[::-1][::2][::-1].tolist()


def test_the_rounds_steps_match_their_definitions() -> None:
    """``_least_near`` and ``_near`` against brute force. A wrong one would not change the
    peaks kept (a peak it fails to settle goes on to the next round or the greedy pass), only
    how many the rounds settle."""
    rng = np.random.default_rng(2)
    for _ in range(300):
        n = int(rng.integers(1, 80))
        position = np.sort(rng.choice(int(rng.integers(n, 400)), n, replace=False)).astype(np.int64)
        # The undecided peaks' ranks in a later round: a subset of all the peaks' ranks, up
        # to several times more than the peaks searched.
        rank = rng.choice(int(rng.integers(n, 4 * n + 1)), n, replace=False).astype(np.int64)
        distance = int(rng.integers(1, 60))
        near = np.abs(position[:, None] - position[None, :]) < distance
        expected = np.where(near, rank[None, :], 4 * n).min(axis=1)
        assert peaks_module._least_near(position, rank, distance).tolist() == expected.tolist()
        centres = position[rng.random(n) < 0.3]
        expected_near = (np.abs(position[:, None] - centres[None, :]) < distance).any(axis=1)
        assert peaks_module._near(position, centres, distance).tolist() == expected_near.tolist()
