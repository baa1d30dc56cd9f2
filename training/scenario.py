"""The reference scenario: a template, its nuisances, and the held-out evaluation suites.

Reference scenario "bump": K(s) = exp(-(s/6)^2 / 2) * cos(2 pi s / 16), s = -20..20, in white
Gaussian noise (sigma = 1). An event's location is its centre sample (s = 0).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def bump(s: FloatArray) -> FloatArray:
    """K(s) = exp(-(s/6)^2 / 2) * cos(2 pi s / 16), s in samples from the centre."""
    return np.exp(-((s / 6.0) ** 2) / 2.0) * np.cos(2.0 * np.pi * s / 16.0)


def bump_template() -> FloatArray:
    return bump(np.arange(-20, 21, dtype=np.float64))


# A template's values as a card holds them and as computed again: equal but for rounding.
TEMPLATE_ATOL = 1e-9


@dataclass(frozen=True)
class Template:
    """A shape and the sample that marks an event's location in it."""

    values: FloatArray
    center: int
    fn: Callable[[FloatArray], FloatArray] | None = None  # K(s), s from the centre, if known

    @property
    def norm(self) -> float:
        return float(np.linalg.norm(self.values))

    def same_as(self, values: Sequence[float] | FloatArray, center: int | None) -> bool:
        """Whether a template written down (a card's ``template`` and ``template_center``) is
        this one: the same centre and length, the values within ``TEMPLATE_ATOL``. Not equal to
        the last bit: a shape computed by numpy's exp and cos on another CPU may differ there."""
        given = np.asarray(values, dtype=np.float64)
        return (
            center == self.center
            and given.shape == self.values.shape
            and bool(np.allclose(given, self.values, rtol=0, atol=TEMPLATE_ATOL))
        )

    def stretched(self, f: float) -> tuple[FloatArray, int]:
        """The template with its time axis stretched by ``f`` (K(s / f)), and its new centre."""
        if f == 1.0:
            return self.values, self.center
        n = self.values.size
        left = int(np.floor(self.center * f))
        right = int(np.floor((n - 1 - self.center) * f))
        s = np.arange(-left, right + 1, dtype=np.float64) / f  # K(s / f)
        if self.fn is not None:
            return self.fn(s), left
        return np.interp(s + self.center, np.arange(n), self.values), left


BUMP = Template(values=bump_template(), center=20, fn=bump)


# Above this, an inverted copy of a template fits some shifted (and stretched) upright copy
# about as well as the template itself: the two polarities cannot be told apart in noise.
POLARITY_AMBIGUOUS = 0.9


def _unit(v: FloatArray) -> FloatArray:
    v = v - v.mean()
    return v / max(float(np.linalg.norm(v)), 1e-12)


def _inverted_fit(template: Template, f: float) -> float:
    """The largest cosine similarity (means removed), over all lags, between the inverted
    template and the upright one stretched by ``f``."""
    inverted = _unit(-template.values)
    upright = _unit(template.stretched(f)[0])
    return float(np.correlate(np.pad(upright, inverted.size), inverted, mode="valid").max())


def inverted_match(template: Template, stretch: tuple[float, float] | None = None) -> tuple[float, float]:
    """How well an inverted copy of ``template`` looks like an upright event.

    The largest cosine similarity (means removed) between the inverted template and the
    upright one shifted by any lag and stretched by any factor in ``stretch`` (1 if None), and
    that factor. The reference bump gives 0.66: an inverted bump is clearly not a bump. The
    example chirp (training/templates/chirp.npy) gives 0.98 at a stretch of 0.95: with
    stretched events allowed, its inverted copy is a stretched upright one, and in noise no
    detector can reject the one without rejecting the other.
    """
    factors = [1.0]
    if stretch is not None:
        lo, hi = stretch
        factors += [float(f) for f in np.linspace(lo, hi, max(2, round((hi - lo) / 0.01) + 1))]
    fits = [_inverted_fit(template, f) for f in factors]
    best = int(np.argmax(fits))  # the first of equal fits, as before
    return fits[best], factors[best]


def polarity_stretch_limit(template: Template, widest: float = 0.5) -> float | None:
    """The largest d (in steps of 0.01, up to ``widest``) such that events stretched by any
    factor in [1 - d, 1 + d] still tell the polarities apart (``inverted_match`` below
    POLARITY_AMBIGUOUS); None if even unstretched events do not. The example chirp gives 0."""
    if _inverted_fit(template, 1.0) >= POLARITY_AMBIGUOUS:
        return None
    d = 0.0
    while d + 0.01 <= widest + 1e-9:
        step = round(d + 0.01, 2)
        if max(_inverted_fit(template, 1 - step), _inverted_fit(template, 1 + step)) >= POLARITY_AMBIGUOUS:
            break
        d = step
    return d


@dataclass(frozen=True)
class Scenario:
    """How signals are made. Each nuisance is applied independently with its probability."""

    template: Template = BUMP
    length: tuple[int, int] = (256, 2048)  # signal length T, uniform integer, inclusive
    p_empty: float = 0.5  # probability that a signal has no event
    max_events: int = 3  # otherwise 1..max_events events, uniform
    snr: tuple[float, float] = (4.0, 12.0)  # matched-filter SNR A * ||K|| / sigma, uniform
    stretch: tuple[float, float] | None = None  # time stretch f, uniform; None: no stretch
    p_stretch: float = 1.0  # probability that a signal's events are stretched
    p_spikes: float = 0.0  # impulsive spikes: Poisson count, mean T / spike_every
    spike_every: float = 200.0
    spike_magnitude: tuple[float, float] = (5.0, 15.0)
    p_drift: float = 0.0  # baseline drift: 1-3 sinusoids
    drift_period: tuple[float, float] = (0.25, 4.0)  # in units of T
    drift_amplitude: tuple[float, float] = (0.0, 5.0)
    p_gain: float = 0.0  # x <- g * (x + c), g = 10 ** U(log_gain), c = U(offset)
    log_gain: tuple[float, float] = (-3.0, 3.0)
    offset: tuple[float, float] = (-100.0, 100.0)
    polarity: bool = False  # True: inverted events occur too (and count as events)
    p_inverted: float = 0.0  # polarity False: probability of inverted copies that are NOT events
    inverted_snr: tuple[float, float] | None = None  # their SNR range; None: ``snr``
    min_spacing: int = field(default=0)  # 0: the template's length
    noise: float = 1.0  # background sigma multiplier; 0 gives clean events (for tests)

    @property
    def spacing(self) -> int:
        return self.min_spacing or self.template.values.size


def signal_lengths(template: Template) -> tuple[int, int]:
    """Signal lengths for a template: 256-2048 samples, longer for templates over 42 samples."""
    n = template.values.size
    return max(256, 6 * n), max(2048, 12 * n)


def suites(template: Template = BUMP, polarity: bool = False) -> dict[str, Scenario]:
    """The four held-out evaluation suites (with ``polarity``, half the events are inverted)."""
    white = Scenario(template=template, length=signal_lengths(template), polarity=polarity)
    return {
        "white": white,
        "lowsnr": replace(white, snr=(3.0, 6.0)),
        "jitter": replace(white, stretch=(0.8, 1.25)),
        "nuisance": replace(white, p_spikes=0.5, p_drift=0.5, p_gain=0.5),
    }


TRAINING_SNR = (2.0, 10.0)
TRAINING_INVERTED = 0.25  # share of training signals with inverted decoys (polarity False)
# Decoys are clear ones: at low SNR an inverted copy can look like a shifted upright one, and
# learning to reject those would teach the model to miss faint events.
TRAINING_INVERTED_SNR = (6.0, 12.0)


def training_scenario(
    template: Template = BUMP,
    snr: tuple[float, float] = TRAINING_SNR,
    polarity: bool = False,
    **overrides: Any,
) -> Scenario:
    """A wider distribution than the suites: every nuisance half the time, lower SNR too.

    The SNR range leans low: strong events are easy, the hard cases decide the metrics. Without
    ``polarity`` a quarter of the signals also hold inverted copies of the shape that are not
    events, so the model learns to reject them. ``overrides``: any other ``Scenario`` field.
    """
    base = Scenario(
        template=template,
        length=signal_lengths(template),
        snr=snr,
        polarity=polarity,
        p_inverted=0.0 if polarity else TRAINING_INVERTED,
        inverted_snr=TRAINING_INVERTED_SNR,
        stretch=(0.75, 1.33),
        p_stretch=0.5,
        p_spikes=0.5,
        spike_magnitude=(3.0, 20.0),
        p_drift=0.5,
        drift_amplitude=(0.0, 6.0),
        p_gain=0.5,
    )
    return replace(base, **overrides)


def place_centres(
    rng: np.random.Generator, length: int, count: int, spacing: int, lo: int, hi: int
) -> IntArray:
    """``count`` centres uniform in [lo, hi], pairwise at least ``spacing`` apart."""
    if count == 0:
        return np.empty(0, dtype=np.int64)
    for _ in range(100):
        c = np.sort(rng.integers(lo, hi + 1, size=count))
        if count == 1 or np.all(np.diff(c) >= spacing):
            return c.astype(np.int64)
    # Crowded: draw directly among the valid placements (gaps shrunk by the spacing).
    slack = hi - lo - (count - 1) * spacing
    if slack < 0:
        raise ValueError(f"cannot place {count} events {spacing} apart in a signal of {length}")
    c = np.sort(rng.integers(0, slack + 1, size=count)) + lo + spacing * np.arange(count)
    return c.astype(np.int64)


def make_signal(
    rng: np.random.Generator, scenario: Scenario, length: int | None = None
) -> tuple[FloatArray, IntArray]:
    """One signal and the centres of its events."""
    sc = scenario
    tpl = sc.template
    T = int(rng.integers(sc.length[0], sc.length[1] + 1)) if length is None else length
    x = sc.noise * rng.standard_normal(T)
    n_events = 0 if rng.random() < sc.p_empty else int(rng.integers(1, sc.max_events + 1))
    lo = tpl.center
    hi = T - (tpl.values.size - tpl.center)
    n_decoys = 0
    if not sc.polarity and sc.p_inverted > 0 and rng.random() < sc.p_inverted:
        room = max(n_events, ((hi - lo) // sc.spacing + 1) // 2)  # keeps placement easy
        n_decoys = min(int(rng.integers(1, sc.max_events + 1)), room - n_events)
    placed = place_centres(rng, T, n_events + n_decoys, sc.spacing, lo, hi)
    inverted = np.zeros(placed.size, dtype=bool)
    if n_decoys:
        inverted[rng.permutation(placed.size)[:n_decoys]] = True
    centres = placed[~inverted]
    stretch_on = sc.stretch is not None and rng.random() < sc.p_stretch
    for c, decoy in zip(placed, inverted, strict=True):
        snr = sc.inverted_snr if decoy and sc.inverted_snr is not None else sc.snr
        amplitude = rng.uniform(*snr) / tpl.norm
        if decoy or (sc.polarity and rng.random() < 0.5):
            amplitude = -amplitude
        if stretch_on and sc.stretch is not None:
            shape, centre = tpl.stretched(rng.uniform(*sc.stretch))
        else:
            shape, centre = tpl.values, tpl.center
        a = c - centre
        b = a + shape.size
        sa, sb = max(a, 0), min(b, T)
        x[sa:sb] += amplitude * shape[sa - a : sb - a]
    if rng.random() < sc.p_spikes:
        n = rng.poisson(T / sc.spike_every)
        pos = rng.integers(0, T, size=n)
        x[pos] += rng.choice([-1.0, 1.0], size=n) * rng.uniform(*sc.spike_magnitude, size=n)
    if rng.random() < sc.p_drift:
        t = np.arange(T, dtype=np.float64)
        for _ in range(int(rng.integers(1, 4))):
            period = rng.uniform(sc.drift_period[0] * T, sc.drift_period[1] * T)
            amp = rng.uniform(*sc.drift_amplitude)
            x += amp * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
    if rng.random() < sc.p_gain:
        g = 10.0 ** rng.uniform(*sc.log_gain)
        x = g * (x + rng.uniform(*sc.offset))
    return x, centres


@dataclass
class Dataset:
    """Signals of any lengths with the centres of their events."""

    signals: list[FloatArray]
    events: list[IntArray]

    def __len__(self) -> int:
        return len(self.signals)

    @property
    def n_events(self) -> int:
        return int(sum(e.size for e in self.events))


def make_dataset(scenario: Scenario, n: int, seed: int, length: int | None = None) -> Dataset:
    rng = np.random.default_rng(seed)
    pairs = [make_signal(rng, scenario, length) for _ in range(n)]
    return Dataset([p[0] for p in pairs], [p[1] for p in pairs])


# Fixed seeds of the held-out evaluation and validation sets (never used for training).
EVAL_SEEDS = {"white": 1001, "lowsnr": 1002, "jitter": 1003, "nuisance": 1004}
VALIDATION_SEEDS = {"white": 2001, "lowsnr": 2002, "jitter": 2003, "nuisance": 2004}
