from dataclasses import replace

import numpy as np
import pytest

from training.scenario import BUMP, EVAL_SEEDS, VALIDATION_SEEDS, Template, make_dataset, suites


def test_bump_template_is_the_reference() -> None:
    s = np.arange(-20, 21)
    np.testing.assert_allclose(BUMP.values, np.exp(-((s / 6) ** 2) / 2) * np.cos(2 * np.pi * s / 16))
    assert BUMP.values.size == 41 and BUMP.center == 20
    assert int(np.argmax(BUMP.values)) == BUMP.center


@pytest.mark.parametrize("suite", ["white", "lowsnr", "jitter", "nuisance"])
def test_lengths_spacing_and_event_counts(suite: str) -> None:
    data = make_dataset(suites()[suite], 600, seed=7)
    lengths = np.array([x.size for x in data.signals])
    assert lengths.min() >= 256 and lengths.max() <= 2048
    counts = np.array([e.size for e in data.events])
    assert 0.43 < (counts == 0).mean() < 0.57  # none with probability 0.5
    assert set(counts[counts > 0]) == {1, 2, 3}
    for x, e in zip(data.signals, data.events, strict=True):
        assert np.all(e >= 20) and np.all(e <= x.size - 21)
        assert np.all(np.diff(e) >= 41)


@pytest.mark.parametrize(("suite", "lo", "hi"), [("white", 4, 12), ("lowsnr", 3, 6)])
def test_snr_range(suite: str, lo: float, hi: float) -> None:
    """With the noise switched off, each event's amplitude gives its matched-filter SNR."""
    clean = replace(suites()[suite], noise=0.0, max_events=1)
    data = make_dataset(clean, 400, seed=3)
    snrs = np.array(
        [
            np.abs(x).max() / BUMP.values.max() * BUMP.norm
            for x, e in zip(data.signals, data.events, strict=True)
            if e.size
        ]
    )
    assert snrs.min() >= lo - 1e-9 and snrs.max() <= hi + 1e-9
    assert snrs.min() < lo + 0.3 and snrs.max() > hi - 0.3  # spans the range


def test_jitter_stretches_the_template_around_its_centre() -> None:
    shape, centre = BUMP.stretched(1.25)
    assert int(np.argmax(shape)) == centre
    assert shape.size > BUMP.values.size
    s = np.arange(shape.size) - centre
    expected = np.exp(-((s / 1.25 / 6) ** 2) / 2) * np.cos(2 * np.pi * s / 1.25 / 16)
    np.testing.assert_allclose(shape, expected, atol=1e-12)


def test_nuisance_applies_gain_and_offset() -> None:
    data = make_dataset(suites()["nuisance"], 300, seed=5)
    scales = np.array([np.std(x) for x in data.signals])
    assert scales.min() < 0.05 and scales.max() > 20


def test_seeds_are_fixed_and_disjoint() -> None:
    assert not set(EVAL_SEEDS.values()) & set(VALIDATION_SEEDS.values())
    a = make_dataset(suites()["white"], 5, seed=EVAL_SEEDS["white"])
    b = make_dataset(suites()["white"], 5, seed=EVAL_SEEDS["white"])
    for x, y in zip(a.signals, b.signals, strict=True):
        np.testing.assert_array_equal(x, y)


def test_any_template_works() -> None:
    tpl = Template(np.array([0.0, 1.0, 3.0, -1.0, 0.5]), center=2)
    data = make_dataset(replace(suites(tpl)["white"], length=(64, 80)), 50, seed=1)
    for x, e in zip(data.signals, data.events, strict=True):
        assert np.all(np.diff(e) >= 5) and np.all(e >= 2) and np.all(e <= x.size - 3)
