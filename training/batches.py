"""Training batches: fixed-length signals with per-sample localisation targets."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from training.scenario import Dataset, Scenario, make_signal

TARGET_SIGMA = 1.5  # samples: width of the Gaussian bump a per-sample target puts on a centre


def target_reach(sigma: float = TARGET_SIGMA) -> int:
    """Samples from a centre beyond which its target bump is 0 in float32 (below float32's
    smallest subnormal, exp(-d^2 / 2 sigma^2) rounds to 0)."""
    return int(np.ceil(sigma * np.sqrt(2 * 104.0))) + 1


def target_curve(length: int, centres: npt.NDArray[np.int64], sigma: float = TARGET_SIGMA) -> np.ndarray:
    """Per-sample target: max over events of exp(-(t - c)^2 / 2 sigma^2), 0 where no event.

    Each event is written only where its bump is not 0 in float32 (about 15 sigma each side,
    ``reach``), so the cost follows the events, not length x events (a long recording with
    many events): bit for bit the max over all events of the whole curve.
    """
    y = np.zeros(length, dtype=np.float32)
    reach = target_reach(sigma)
    for c in np.asarray(centres, dtype=np.int64).tolist():
        lo, hi = max(c - reach, 0), min(c + reach + 1, length)
        if lo >= hi:
            continue
        t = np.arange(lo, hi, dtype=np.float64)  # float64 arithmetic, cast once, as before
        bump = np.exp(-((t - c) ** 2) / (2 * sigma**2)).astype(np.float32)
        np.maximum(y[lo:hi], bump, out=y[lo:hi])
    return y


class SyntheticBatches:
    """Endless batches drawn fresh from a scenario: (signals (B, T), targets (B, T))."""

    def __init__(self, scenario: Scenario, batch_size: int, lengths: tuple[int, int], seed: int) -> None:
        self.scenario = scenario
        self.batch_size = batch_size
        self.lengths = lengths
        self.rng = np.random.default_rng(seed)

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        T = int(self.rng.integers(self.lengths[0], self.lengths[1] + 1))
        xs = np.empty((self.batch_size, T), dtype=np.float32)
        ys = np.empty((self.batch_size, T), dtype=np.float32)
        for i in range(self.batch_size):
            x, c = make_signal(self.rng, self.scenario, T)
            xs[i] = x
            ys[i] = target_curve(T, c)
        return xs, ys


class CroppedBatches:
    """Endless batches of random crops of a user's annotated signals.

    A batch's first signal is drawn uniformly and caps the crop length; the others are drawn
    among the signals at least that long. A short signal makes short batches of its own
    instead of every crop as short as the data set's shortest signal.
    """

    def __init__(self, data: Dataset, batch_size: int, lengths: tuple[int, int], seed: int) -> None:
        self.data = data
        self.batch_size = batch_size
        self.lengths = lengths
        self.rng = np.random.default_rng(seed)
        self.sizes = np.array([len(s) for s in data.signals])
        self.reach = target_reach()

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        T = int(self.rng.integers(self.lengths[0], self.lengths[1] + 1))
        first = int(self.rng.integers(len(self.data)))
        T = min(T, int(self.sizes[first]))
        fits = np.flatnonzero(self.sizes >= T)
        xs = np.empty((self.batch_size, T), dtype=np.float32)
        ys = np.empty((self.batch_size, T), dtype=np.float32)
        for i in range(self.batch_size):
            k = first if i == 0 else int(fits[self.rng.integers(fits.size)])
            x, c = self.data.signals[k], self.data.events[k]
            a = int(self.rng.integers(0, len(x) - T + 1))
            xs[i] = x[a : a + T]
            # The crop's own events and its neighbours' tails: only those within reach, not every
            # event of a long recording (thousands of them, each looked at in Python).
            near = c[(c > a - self.reach - 1) & (c < a + T + self.reach)]
            ys[i] = target_curve(T, near - a)
        return xs, ys
