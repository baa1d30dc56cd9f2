"""Training batches and their per-sample targets."""

import time
import tracemalloc

import numpy as np

from training.batches import CroppedBatches, target_curve
from training.scenario import Dataset


def _dense_target(length: int, centres: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """The definition: max over events of exp(-(t - c)^2 / 2 sigma^2), as one (T, events) matrix."""
    if centres.size == 0:
        return np.zeros(length, dtype=np.float32)
    t = np.arange(length, dtype=np.float32)[:, None]
    return np.exp(-((t - centres[None, :]) ** 2) / (2 * sigma**2)).max(axis=1).astype(np.float32)


def test_target_curve_is_the_definition_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    for length in (1, 7, 300, 2048):
        for k in (0, 1, 3, 12):
            centres = np.unique(rng.integers(0, length, size=k)).astype(np.int64)
            np.testing.assert_array_equal(target_curve(length, centres), _dense_target(length, centres))
    # events close together, at the edges, and outside the signal (a crop's neighbours)
    centres = np.array([-30, -3, 0, 1, 2, 40, 41, 99, 104, 130], dtype=np.int64)
    np.testing.assert_array_equal(target_curve(100, centres), _dense_target(100, centres))


def test_long_recordings_with_many_events() -> None:
    """A user's recording of 200 000 samples with 200 events: the target was a (samples x
    events) matrix, 320 MB for each crop of it and for each validation pass (8 GB for a
    million samples with a thousand events)."""
    n, k = 200_000, 200
    centres = np.sort(np.random.default_rng(1).choice(n, size=k, replace=False)).astype(np.int64)
    tracemalloc.start()
    target_curve(n, centres)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 50e6
    data = Dataset([np.zeros(n)], [centres])
    batches = CroppedBatches(data, 16, (384, 1024), seed=0)
    started = time.perf_counter()
    xs, ys = batches.next()
    assert time.perf_counter() - started < 2.0 and ys.shape == xs.shape


def test_one_short_signal_does_not_shorten_every_crop() -> None:
    """Crops were cut to the data set's shortest signal: one 64-sample signal among 2000-sample
    ones made every training crop 64 samples long. A short signal makes short batches of its own;
    the others take the crop lengths asked for, and the short one is still trained on."""
    rng = np.random.default_rng(0)
    signals = [rng.standard_normal(64), *(rng.standard_normal(2000) for _ in range(29))]
    data = Dataset(signals, [np.array([32], dtype=np.int64)] + [np.array([1000], dtype=np.int64)] * 29)
    batches = CroppedBatches(data, 16, (384, 1024), seed=0)
    lengths = [batches.next()[0].shape[1] for _ in range(60)]
    assert 64 in lengths  # the short signal's own batches
    assert sum(length >= 384 for length in lengths) > 40
