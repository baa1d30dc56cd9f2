"""Training batches and their per-sample targets."""

import time
import tracemalloc

import numpy as np
import pytest

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


def test_a_crop_of_a_recording_with_many_events_looks_at_the_events_near_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each crop handed every event of its recording to the target (20 000 events of a 2 M-sample
    recording, each looked at in Python: 0.4 s per batch of 64, several times the training
    step); only those within the target's reach of the crop change it: the same batches."""
    import training.batches as batches

    lengths = np.random.default_rng(1).integers(2000, 3000, 20)
    signals = [10_000.0 * k + np.arange(n) for k, n in enumerate(lengths)]  # a sample says where it is
    events = [np.arange(10, n, 20, dtype=np.int64) for n in lengths]  # 100 to 150 per signal
    seen = []

    def counted(length: int, centres: np.ndarray) -> np.ndarray:
        seen.append(centres.size)
        return target_curve(length, centres)

    monkeypatch.setattr(batches, "target_curve", counted)
    crops = CroppedBatches(Dataset(signals, events), 8, (64, 700), seed=5)
    for _ in range(30):
        xs, ys = crops.next()
        for x, y in zip(xs, ys, strict=True):
            k, a = divmod(int(x[0]), 10_000)
            np.testing.assert_array_equal(y, target_curve(x.size, events[k] - a))
    assert max(seen) < min(e.size for e in events)  # a crop of 700 samples has about 35 near it
